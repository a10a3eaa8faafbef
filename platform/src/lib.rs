//! The plumbing every Tally stage shares, so no stage writes it twice.
//!
//! It owns: loading configuration (file plus `TALLY_...` environment overrides, with errors that
//! name the setting), the authentication of every HTTP API and the judging of secrets, the
//! ClickHouse client and the numbered migrations, the JetStream stream declarations, logging
//! and the Prometheus exporter, and the one shutdown signal.
//!
//! It does not own any business rule: what an event means, how usage is priced or invoiced
//! lives in the domain crate and in the stage crates.
//!
//! # Layout
//! - [`auth`]: bearer tokens, roles and the audit of changes, for every HTTP API.
//! - [`secrets`]: secrets in configuration: never printed, weak ones refused outside `dev`.
//! - [`access`]: one ClickHouse user per service with least rights (SQL RBAC or 18.16 users.xml).
//! - `own_server` (feature `testkit`): servers a test starts for itself (binary lookup, free
//!   ports, cleanup).
//! - [`private_file`]: writing generated credentials with mode 0600.
//! - [`args`]: `--name value` flags for the binaries.
//! - [`config`]: the shared sections (`[nats]`, `[clickhouse]`, `[telemetry]`) and the loader.
//! - [`features`]: billing feature flags (`[features]`).
//! - [`store`]: connecting to ClickHouse.
//! - [`migrate`]: the embedded, numbered migrations and the runner that applies them.
//! - [`openapi`]: route tables, and the OpenAPI documents checked against them.
//! - [`streams`]: declaring the `USAGE` and dead-letter streams.
//! - [`lease`]: one active instance per partition: a compare-and-set key in NATS KV.
//! - [`feed`]: the live usage feed: each committed batch's partials, for the spend deciders.
//! - [`telemetry`]: logs and the Prometheus endpoint.
//! - [`shutdown`]: SIGTERM/SIGINT to a cancellation token.
//! - `testkit` (feature `testkit`): per-test streams and databases for tests against the real
//!   servers. Test-only code: the crates' tests enable the feature in their
//!   `[dev-dependencies]`, so it is never compiled into a production binary.
//! - [`usage`]: reading committed usage for a range, bounded by what it asks for.

pub mod access;
pub mod args;
pub mod auth;
pub mod clock;
pub mod config;
pub mod features;
pub mod feed;
pub mod http;
pub mod lease;
pub mod migrate;
pub mod openapi;
#[cfg(feature = "testkit")]
pub mod own_server;
pub mod peers;
pub mod private_file;
pub mod secrets;
pub mod shutdown;
pub mod store;
pub mod streams;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod usage;

pub use config::{
    ClickHouseConfig, ConfigError, NatsConfig, Profile, SecurityConfig, TelemetryConfig,
};
pub use features::Features;
