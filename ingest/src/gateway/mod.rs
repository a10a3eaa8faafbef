//! The HTTP gateway for agents that cannot speak NATS: `POST /v1/events` with one CloudEvent
//! or a batch, authenticated by API key, bounded by limits, published to JetStream with
//! `Nats-Msg-Id` and answered per event (accepted, duplicate, rejected with a reason and the
//! field, or failed). The contract is in docs/INGEST.md.
//!
//! It validates envelopes and scopes only; meters, lateness and dedup beyond JetStream's
//! window are the aggregator's. It never counts or stores usage itself.
//!
//! # Layout
//! - [`config`]: `[ingest]` settings and limits.
//! - [`decode`]: media types, gzip, batch splitting and per-event shape limits (pure).
//! - [`auth`]: API key format, hashing, scopes and the in-memory key ring.
//! - [`key_store`]: API keys in ClickHouse (append-only) and their management.
//! - [`rate_limit`]: per-key token buckets.
//! - [`events`]: the `POST /v1/events` handler.
//! - [`otlp`]: the `POST /v1/traces` handler: OpenTelemetry GenAI spans as usage (feature
//!   `otlp`, on by default).
//! - [`admin`]: the key management endpoints.
//! - [`spend`]: `POST /v1/authorize` and `GET /v1/balance`, passed to the spend deciders.
//! - [`server`]: HTTP/1.1 serving, timeouts, routing, graceful shutdown.
//! - [`response`], [`error`]: the JSON answers and stable codes.
//! - [`metrics`]: every gateway metric.

pub mod admin;
pub mod auth;
pub mod config;
pub mod decode;
pub mod error;
pub mod events;
pub mod key_store;
pub mod metrics;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod rate_limit;
pub mod response;
pub mod server;
pub mod spend;

pub use config::IngestConfig;
pub use server::{start, Gateway, Running};
