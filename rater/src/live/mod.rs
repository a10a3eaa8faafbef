//! Live spend control: the rater's live half. Per partition of the usage stream, one
//! decider holds every customer's spend of the current period in memory, built from
//! committed usage (storage, then the live feed of each committed batch), and answers "may
//! this agent spend?" from it, placing holds so concurrent requests never overshoot a
//! budget together; it notifies each budget threshold once per period.
//!
//! It owns the live book, its rebuild and the spend API's decisions. It never writes charges
//! or invoices (the rating pass does, from the same usage) and never consumes raw events
//! (the aggregator commits them).
//!
//! # Layout
//! - [`config`]: the `[spend]` section.
//! - [`protocol`]: authorize requests and answers, reason codes (pure).
//! - [`budget`]: budgets, validated and stored.
//! - [`book`]: the live book and its decisions (pure).
//! - [`journal`]: the holds journal (holds survive a restart or a takeover).
//! - [`alerts`]: threshold crossings, notified once per period.
//! - [`decider`]: the task that owns a partition's book and answers.
//! - [`run`]: a decider's session: lease, rebuild, feed, subscriptions.
//! - [`metrics`]: the `tally_spend_*` metrics.
//! - [`api`]: the HTTP API for budgets and balances.

pub mod alerts;
pub mod api;
pub mod book;
pub mod budget;
pub mod config;
pub mod decider;
pub mod journal;
pub mod metrics;
pub mod protocol;
pub mod run;
pub mod wallet;

pub use config::SpendConfig;
