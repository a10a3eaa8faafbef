//! The pipeline on a NATS cluster and a replicated ClickHouse (issue 18): the cluster of
//! `scripts/cluster.sh` (three JetStream nodes, ZooKeeper, two clickhouse-server 18.16
//! replicas). Every test here is `#[ignore]`d: `scripts/cluster.sh test` brings the cluster up
//! and runs them one at a time (they kill nodes); CI runs that step (docs/OPERATIONS.md).
//!
//! - [`quorum`]: what the exactly-once argument takes from a replicated ClickHouse, shown on
//!   the real replicas: a quorum write is on every replica when it returns, a write that
//!   cannot reach its quorum fails (and is later found written: a failed write is "unknown",
//!   never "absent"), a retried block is deduplicated only when it is byte-identical.
//! - [`publisher`]: an event sent twice at once to an R3 stream (its original still being
//!   replicated: nats-server 2.15 answers 409 "in process") is stored once and both sends are
//!   acknowledged, the second as a duplicate.
//! - [`chaos`]: events with duplicates published while a NATS node is killed and restarted,
//!   the stream leader moved, a ClickHouse replica killed and restarted and ZooKeeper
//!   restarted, consumed by two aggregator partitions (an active and a standby process each,
//!   each with its own configuration file), then rated by two raters and invoiced by two
//!   invoicers at once: nothing missing, nothing billed twice, one invoice per customer with
//!   gapless numbers, computed from the data.
//! - [`gateway`]: three `tally-gateway` processes, each on another NATS node, take the same
//!   events (each batch through two gateways at once, ids repeated in it) while a NATS node
//!   is killed and started again: a 409 "in process" is sent again, never a failure, and
//!   every event is committed once, computed from the data.

mod chaos;
mod gateway;
mod nodes;
mod publisher;
mod quorum;
