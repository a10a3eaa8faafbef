//! The HTTP surface of tally-payments: gateway webhooks (`POST /webhooks/stripe`), the
//! payments API (`/v1/...`, the API tokens of `tally_platform::auth`), the customer portal
//! (`/portal/<token>...`) and `/healthz`. No route changes state without a verified signature
//! or a bearer token whose role allows it, and no portal page opens without a signed link.
//!
//! - [`server`]: serving through the shared server; response helpers.
//! - [`routes`]: the state and the routing table; webhooks.
//! - [`api`]: the operator API (manual payments, refunds, write-offs, links, ledger).
//! - [`portal`]: the portal pages and documents.

pub mod api;
pub mod portal;
pub mod routes;
pub mod server;

pub use routes::AppState;
pub use server::serve;
