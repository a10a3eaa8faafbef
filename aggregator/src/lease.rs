//! The aggregator's partition lease: the shared lease ([`tally_platform::lease`]) in the
//! bucket `<stream>_AGGREGATORS`, one key per partition's durable consumer.

use std::time::Duration;

pub use tally_platform::lease::*;

/// The lease of the partition `cfg` consumes: bucket `<stream>_AGGREGATORS`, key the
/// partition's consumer name, metrics `tally_aggregator_lease_acquired_total` and
/// `tally_aggregator_fenced_total`.
pub fn for_aggregator(
    nats: &tally_platform::NatsConfig,
    cfg: &crate::AggregatorConfig,
) -> LeaseConfig {
    LeaseConfig {
        bucket: format!("{}_AGGREGATORS", nats.stream),
        key: cfg.consumer_name(),
        ttl: Duration::from_secs(cfg.lease_secs),
        replicas: cfg.lease_replicas,
        metrics_prefix: "tally_aggregator",
    }
}
