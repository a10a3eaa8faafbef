//! The HTTP surface of tally-payments: gateway webhooks (`POST /webhooks/stripe`), the
//! payments API (`/v1/...`, bearer token), the customer portal (`/portal/<token>...`) and
//! `/healthz`.
//!
//! - [`server`]: the accept loop and response helpers.
//! - [`routes`]: the state and the routing table; webhooks.
//! - [`api`]: the operator API (manual payments, refunds, write-offs, links, ledger).
//! - [`portal`]: the portal pages and documents.

pub mod api;
pub mod portal;
pub mod routes;
pub mod server;

pub use routes::AppState;
pub use server::serve;
