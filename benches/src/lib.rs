//! Benchmarks of Tally, reported as figures plus hdrhistogram percentiles. This crate holds
//! the measurements; `src/bin/tally-bench.rs` is the command that runs them. Benchmarks never
//! decide a test outcome: timings on shared machines are noisy, so every figure is reported
//! next to a baseline of the same run and what limits it (see docs/BENCHMARKS.md); the only
//! test (`tests/report.rs`) runs the report at tiny sizes and checks its shape.
//!
//! # Layout
//! - [`report`]: every scenario with its same-run baseline, as markdown and JSON.
//! - [`cputime`]: wall and thread CPU time of a measured section.
//! - [`alloc`]: a counting global allocator, for bytes-per-id figures.
//! - [`aggregator_cpu`]: parse + validate + dedup + window per event, in process.
//! - [`pipeline`]: end-to-end throughput against raw JetStream, and latency to `v_usage`.
//! - [`invoicing`]: one invoicing pass over many customers.
//! - [`insert`]: the aggregator's ClickHouse commit against a plain insert of the same rows.
//! - [`spend`]: live spend control: authorize and release latency, freshness, false denials.
//! - [`spend_alerts`]: threshold crossed to NATS alert and signed webhook delivered, per alert.
//! - [`gateway`]: HTTP gateway batches into JetStream against the direct publisher.
//! - [`rating`]: usage rows folded and priced into charges per second, in process.
//! - [`history`]: rating passes over a fixed period as stored history grows, and over a big month.
//! - [`cluster`]: [`pipeline`]'s throughput and latency on the cluster profile (R3 streams,
//!   ClickHouse quorum writes) against raw JetStream R3 in the same run.

pub mod aggregator_cpu;
pub mod alloc;
pub mod cluster;
pub mod cputime;
pub mod gateway;
pub mod history;
pub mod insert;
pub mod invoicing;
pub mod pipeline;
pub mod rating;
pub mod report;
pub mod spend;
pub mod spend_alerts;
