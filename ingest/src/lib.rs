//! Ingest: how usage gets into the `USAGE` stream.
//!
//! It owns the agent-side publisher (CloudEvents 1.0 JSON to `usage.<customer>.<agent>` with
//! `Nats-Msg-Id` set to the event's identity `<customer>:<agent>:<id>`, asynchronous with a bounded number of unacknowledged
//! publishes) and the synthetic agents that drive the demo and the tests. It does not
//! validate against meters or count anything: the aggregator does.
//!
//! # Layout
//! - [`event`]: building an outgoing CloudEvent.
//! - [`gateway`]: the HTTP gateway (API keys, limits, per-event answers).
//! - [`nats_auth`]: nats-server authorization confining each customer's agents.
//! - [`pseudonym`]: replacing customer and agent ids by keyed hashes before storage.
//! - [`sdk`]: the agent SDK: batched, bounded, retrying publishing with a graceful flush.
//! - [`publisher`]: the bounded in-flight JetStream publisher (the SDK publishes through it).
//! - [`spend`]: asking the spend deciders before spending (authorize, release, balance).
//! - [`synthetic`]: deterministic synthetic agents (LLM tokens and tool calls).

pub mod event;
pub mod gateway;
pub mod nats_auth;
pub mod pseudonym;
pub mod publisher;
pub mod sdk;
pub mod spend;
pub mod synthetic;

pub use event::OutgoingEvent;
pub use publisher::{PublishError, PublishStats, Publisher};
