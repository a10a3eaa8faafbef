//! Authentication and authorization of Tally's HTTP APIs: the rater's, the invoicer's, the
//! payments API and the ingest gateway's admin API all call this module, and none has a
//! scheme of its own.
//!
//! It owns: the bearer token format and its hashing ([`token`]), the closed set of roles and
//! what each may do ([`role`]), the decision for one request ([`authenticator`]), where tokens
//! are kept ([`store`]), the audit of every change ([`audit`]) and the two calls a hyper
//! router makes ([`hook`]). It does not own the other credentials: the gateway's customer API
//! keys, webhook signatures and portal links stay with their services.
//!
//! # Why the tokens live in ClickHouse (`api_tokens`) and not in the configuration file
//!
//! Both keep only SHA-256 hashes of 256-bit secrets, so neither place holds anything an
//! attacker could log in with. We store them in ClickHouse because:
//! 1. Revocation must not need a deployment. A leaked token is revoked with one command and
//!    stops working on every API within `security.token_refresh_secs` (at once on a reload
//!    triggered by an unknown id), as the gateway's API keys do; a hash in a file keeps
//!    working until every service has been redeployed with the edited file.
//! 2. Every API already depends on ClickHouse for every request, so the store adds no new
//!    way to fail; if it is unreachable at start a service holds no token and refuses
//!    everything (fail closed), and a failed refresh keeps the previous set.
//! 3. Creating a token needs the migrator's ClickHouse user (the only one that may insert
//!    into `api_tokens`, see [`crate::access`]): a compromised service cannot mint itself an
//!    admin token, while a configuration file is readable, and often writable, by the service.
//! 4. The audit of changes (`api_audit`) needs the database anyway.
//!
//! What it costs: an operator needs `tally-access tokens-create` (with the migrator's
//! credentials) instead of editing a file, and on ClickHouse 18.16, which cannot restrict
//! inserts per table, any service user could insert a token row (see docs/SECURITY.md).
//!
//! # Layout
//! - [`token`]: `tly_<id>_<secret>`, SHA-256, constant-time comparison.
//! - [`role`]: [`Role`], [`Permission`], what a method needs.
//! - [`authenticator`]: [`Authenticator`] (the decision, reloads), [`Principal`], [`AuthError`].
//! - [`store`]: `api_tokens`: create, revoke, load.
//! - [`audit`]: `api_audit`: the rows of every change.
//! - [`hook`]: [`hook::authorize`] and [`hook::audited`] for hyper routers.

pub mod audit;
pub mod authenticator;
pub mod hook;
pub mod role;
pub mod store;
pub mod token;

pub use authenticator::{AuthError, Authenticator, Principal};
pub use role::{Permission, Role};
pub use store::TokenRecord;
