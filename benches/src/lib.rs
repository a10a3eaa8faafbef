//! Benchmarks of Tally, reported as figures plus hdrhistogram percentiles. This crate holds
//! the measurements; `src/bin/tally-bench.rs` is the command that runs them. Benchmarks never
//! run inside the test suite: timings on shared machines are noisy, so every figure is
//! reported next to what limits it (see docs/BENCHMARKS.md).
//!
//! # Layout
//! - [`alloc`]: a counting global allocator, for bytes-per-id figures.
//! - [`aggregator_cpu`]: parse + validate + dedup + window per event, in process.
//! - [`pipeline`]: end-to-end throughput against raw JetStream, and latency to `v_usage`.
//! - [`invoicing`]: one invoicing pass over many customers.
//! - [`insert`]: the aggregator's ClickHouse commit against a plain insert of the same rows.
//! - [`gateway`]: HTTP gateway batches into JetStream against the direct publisher.
//! - [`rating`]: usage rows folded and priced into charges per second, in process.

pub mod aggregator_cpu;
pub mod alloc;
pub mod gateway;
pub mod insert;
pub mod invoicing;
pub mod pipeline;
pub mod rating;
