//! The `[aggregator]` configuration section, validated before any I/O.

use serde::Deserialize;
use tally_platform::ConfigError;

/// `[aggregator]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfig {
    /// Durable consumer name. Default `aggregator`.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// Only consume subjects matching this filter (a partition of the subject space, for
    /// scale-out), e.g. `usage.acme.>`. Default: the whole stream.
    #[serde(default)]
    pub filter_subject: Option<String>,
    /// The partition this instance consumes when `nats.partitions` > 0 (0-based). Each
    /// partition has its own durable consumer `<consumer>-p<partition>`; run exactly one
    /// active instance per partition. Default none.
    #[serde(default)]
    pub partition: Option<u32>,
    /// Flush after this many messages. Default 50000: every flush writes three ClickHouse parts
    /// (events, readings, marker), and the end-to-end benchmark measured ClickHouse spending
    /// about 40% less CPU per event with batches of up to 50000 (5.4-7.8 us) than with the
    /// 10,000-15,000-event batches that a 20000 cap and a 100 ms wait gave (10.6-14.1 us);
    /// earlier, 20000 had given 65% more throughput than 5000. Memory holds about two batches
    /// of messages (the one flushing, and at most one more delivered unacknowledged), about
    /// 1 KiB per event.
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    /// Flush at least this often while messages are waiting, in milliseconds. Default 250.
    #[serde(default = "default_batch_max_wait_ms")]
    pub batch_max_wait_ms: u64,
    /// Tumbling window size in seconds. Default 60.
    #[serde(default = "default_window_secs")]
    pub window_secs: u32,
    /// How far an event time may be behind the time JetStream received the event, in seconds
    /// (the stream's timestamp, not the time the aggregator reads it, so a backlog in the
    /// stream never makes events late). Default 3600.
    #[serde(default = "default_allowed_lateness_secs")]
    pub allowed_lateness_secs: u64,
    /// How far an event time may be ahead of the time JetStream received the event, in
    /// seconds. Default 300.
    #[serde(default = "default_future_tolerance_secs")]
    pub future_tolerance_secs: u64,
    /// How long an id is remembered, in seconds of received time (JetStream's timestamps):
    /// a copy received within this long of the first is a duplicate. Default 86400.
    /// Must be at least `allowed_lateness_secs + future_tolerance_secs`.
    #[serde(default = "default_dedup_horizon_secs")]
    pub dedup_horizon_secs: u64,
    /// Largest accepted event, in bytes. Default 65536.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Deepest nesting of arrays and objects in an event (the gateway's `ingest.depth_max`,
    /// the same default): deeper events are refused as `malformed`. Default 8.
    #[serde(default = "default_depth_max")]
    pub depth_max: usize,
    /// Longest string in an event, in bytes (the gateway's `ingest.string_max_bytes`, the same
    /// default): longer ones are refused as `malformed`. Default 1024.
    #[serde(default = "default_string_max_bytes")]
    pub string_max_bytes: usize,
    /// JetStream AckWait for the consumer, in seconds. Default 60.
    #[serde(default = "default_ack_wait_secs")]
    pub ack_wait_secs: u64,
    /// Prometheus endpoint. Default `127.0.0.1:9101`.
    #[serde(default = "default_metrics_addr")]
    pub metrics_addr: String,
    /// How often each instance looks for days of its partition that became final and seals
    /// them into `usage_days` (between two batches), in seconds. Default 30.
    #[serde(default = "default_seal_every_secs")]
    pub seal_every_secs: u64,
    /// Days sealed at most per look, so a first start over a long history never holds
    /// consumption for long. Default 4.
    #[serde(default = "default_seal_days_max")]
    pub seal_days_max: u32,
    /// The partition lease: an instance that has not renewed it for this long has lost its
    /// partition (a standby takes over; the old one is fenced), in seconds. A restarted
    /// instance waits this long after a kill -9 of its predecessor; a clean stop releases the
    /// lease at once. Default 10.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// Replicas of the lease bucket (`<stream>_AGGREGATORS`): 3 on a NATS cluster, so the
    /// lease and its compare-and-set survive a server. Used when the bucket is created.
    /// Default 1.
    #[serde(default = "default_lease_replicas")]
    pub lease_replicas: usize,
    /// Publish each batch's partials to the live usage feed (`<stream>_FEED`, read by
    /// `tally-spend` for live balances and authorize decisions) before its commit. Default
    /// true; false saves a JetStream publish per batch where nothing uses live spend control.
    #[serde(default = "default_live_feed")]
    pub live_feed: bool,
    /// Also accept events whose `Nats-Msg-Id` is missing or is the bare event id (publishers
    /// from before the identity was namespaced as `<customer>:<agent>:<id>`), during an
    /// upgrade. Default false: such events are dead-lettered as `msg_id_mismatch`.
    #[serde(default)]
    pub accept_legacy_msg_ids: bool,
    /// New events per second one customer may send (on NATS as over HTTP: the gateway's
    /// `ingest.rate_per_key_per_sec` bounds each key), judged per UTC minute of the time
    /// JetStream received them: at most 60 times this many in each minute, the rest are
    /// dead-lettered as `rate_limited`. Default 5000.
    #[serde(default = "default_customer_events_per_sec")]
    pub customer_events_per_sec: u64,
    /// Distinct event ids one customer may have within the dedup horizon: its share of the
    /// dedup memory (about 22 bytes an id from 1M ids on; at most twice this many are held). Beyond it events
    /// are dead-lettered as `too_many_ids`. Default 10000000.
    #[serde(default = "default_customer_ids_max")]
    pub customer_ids_max: u64,
    /// Distinct series (agent and group-by values) per customer, meter and UTC day of event
    /// time: an event adding one more is dead-lettered as `too_many_groups`. Default 10000.
    #[serde(default = "default_groups_per_meter_day_max")]
    pub groups_per_meter_day_max: usize,
    /// Distinct values of a UNIQUE_COUNT meter per customer and UTC day of event time: an
    /// event adding one more is dead-lettered as `too_many_values`. Default 100000.
    #[serde(default = "default_unique_values_per_meter_day_max")]
    pub unique_values_per_meter_day_max: usize,
}

fn default_consumer() -> String {
    "aggregator".into()
}
const fn default_batch_max_events() -> usize {
    50_000
}
const fn default_batch_max_wait_ms() -> u64 {
    250
}
const fn default_window_secs() -> u32 {
    60
}
const fn default_allowed_lateness_secs() -> u64 {
    3600
}
const fn default_future_tolerance_secs() -> u64 {
    300
}
const fn default_dedup_horizon_secs() -> u64 {
    86_400
}
const fn default_max_event_bytes() -> usize {
    65_536
}
const fn default_depth_max() -> usize {
    tally_domain::shape::DEPTH_MAX
}
const fn default_string_max_bytes() -> usize {
    tally_domain::shape::STRING_MAX_BYTES
}
const fn default_ack_wait_secs() -> u64 {
    60
}
const fn default_seal_every_secs() -> u64 {
    30
}
const fn default_seal_days_max() -> u32 {
    4
}
const fn default_lease_secs() -> u64 {
    10
}
const fn default_lease_replicas() -> usize {
    1
}
const fn default_live_feed() -> bool {
    true
}
const fn default_customer_events_per_sec() -> u64 {
    5_000
}
const fn default_customer_ids_max() -> u64 {
    10_000_000
}
const fn default_groups_per_meter_day_max() -> usize {
    10_000
}
const fn default_unique_values_per_meter_day_max() -> usize {
    100_000
}
fn default_metrics_addr() -> String {
    "127.0.0.1:9101".into()
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            consumer: default_consumer(),
            filter_subject: None,
            partition: None,
            batch_max_events: default_batch_max_events(),
            batch_max_wait_ms: default_batch_max_wait_ms(),
            window_secs: default_window_secs(),
            allowed_lateness_secs: default_allowed_lateness_secs(),
            future_tolerance_secs: default_future_tolerance_secs(),
            dedup_horizon_secs: default_dedup_horizon_secs(),
            max_event_bytes: default_max_event_bytes(),
            depth_max: default_depth_max(),
            string_max_bytes: default_string_max_bytes(),
            ack_wait_secs: default_ack_wait_secs(),
            metrics_addr: default_metrics_addr(),
            seal_every_secs: default_seal_every_secs(),
            seal_days_max: default_seal_days_max(),
            lease_secs: default_lease_secs(),
            lease_replicas: default_lease_replicas(),
            live_feed: default_live_feed(),
            accept_legacy_msg_ids: false,
            customer_events_per_sec: default_customer_events_per_sec(),
            customer_ids_max: default_customer_ids_max(),
            groups_per_meter_day_max: default_groups_per_meter_day_max(),
            unique_values_per_meter_day_max: default_unique_values_per_meter_day_max(),
        }
    }
}

impl AggregatorConfig {
    /// Checks the settings that depend on `[nats]`: with partitions, exactly one valid
    /// partition; without, none.
    pub fn validate_with(&self, nats: &tally_platform::NatsConfig) -> Result<(), ConfigError> {
        match (nats.partitions, self.partition) {
            (0, Some(_)) => Err(ConfigError::invalid(
                "aggregator.partition",
                "is set but nats.partitions is 0",
            )),
            (n, None) if n > 0 => Err(ConfigError::invalid(
                "aggregator.partition",
                format!("must be set: nats.partitions is {n}"),
            )),
            (n, Some(p)) if p >= n => Err(ConfigError::invalid(
                "aggregator.partition",
                format!("is {p}, must be below nats.partitions = {n}"),
            )),
            (n, _) if n > 0 && self.filter_subject.is_some() => Err(ConfigError::invalid(
                "aggregator.filter_subject",
                "cannot be combined with partitions",
            )),
            _ => Ok(()),
        }
    }

    /// Every durable consumer the aggregators of this deployment use: one per partition.
    pub fn all_consumer_names(&self, nats: &tally_platform::NatsConfig) -> Vec<String> {
        if nats.partitions == 0 {
            return vec![self.consumer.clone()];
        }
        (0..nats.partitions)
            .map(|p| format!("{}-p{p}", self.consumer))
            .collect()
    }

    /// The partition number written with every row (`part`): the partition, or 0.
    pub fn part(&self) -> u32 {
        self.partition.unwrap_or(0)
    }

    /// Whether this instance seals its partition's days. Not with a hand-made
    /// `filter_subject`: several such instances would share `part` 0, and each would seal the
    /// others' rows (billing then reads their partials, which is exact, only slower).
    pub fn seals(&self) -> bool {
        self.filter_subject.is_none()
    }

    /// The durable consumer name: `<consumer>`, or `<consumer>-p<partition>`.
    pub fn consumer_name(&self) -> String {
        match self.partition {
            Some(p) => format!("{}-p{p}", self.consumer),
            None => self.consumer.clone(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |name: &str, v: u64| {
            if v == 0 {
                Err(ConfigError::invalid(
                    format!("aggregator.{name}"),
                    "must be positive",
                ))
            } else {
                Ok(())
            }
        };
        positive("batch_max_events", self.batch_max_events as u64)?;
        positive("batch_max_wait_ms", self.batch_max_wait_ms)?;
        positive("window_secs", u64::from(self.window_secs))?;
        positive("max_event_bytes", self.max_event_bytes as u64)?;
        positive("depth_max", self.depth_max as u64)?;
        positive("string_max_bytes", self.string_max_bytes as u64)?;
        positive("ack_wait_secs", self.ack_wait_secs)?;
        positive("seal_every_secs", self.seal_every_secs)?;
        positive("seal_days_max", u64::from(self.seal_days_max))?;
        positive("lease_secs", self.lease_secs)?;
        positive("lease_replicas", self.lease_replicas as u64)?;
        positive("customer_events_per_sec", self.customer_events_per_sec)?;
        positive("customer_ids_max", self.customer_ids_max)?;
        positive(
            "groups_per_meter_day_max",
            self.groups_per_meter_day_max as u64,
        )?;
        positive(
            "unique_values_per_meter_day_max",
            self.unique_values_per_meter_day_max as u64,
        )?;
        if 86_400 % self.window_secs != 0 {
            return Err(ConfigError::invalid(
                "aggregator.window_secs",
                format!("{} does not divide a day (86400 s); windows must never straddle a billing period", self.window_secs),
            ));
        }
        if self.batch_max_events > 100_000 {
            return Err(ConfigError::invalid(
                "aggregator.batch_max_events",
                "at most 100000",
            ));
        }
        let needed = self
            .allowed_lateness_secs
            .saturating_add(self.future_tolerance_secs);
        if self.dedup_horizon_secs < needed {
            return Err(ConfigError::invalid(
                "aggregator.dedup_horizon_secs",
                format!(
                    "is {} but must be at least allowed_lateness_secs + future_tolerance_secs = {needed}, \
                     or an id re-sent after the horizon could be counted twice",
                    self.dedup_horizon_secs
                ),
            ));
        }
        if self.consumer.is_empty()
            || !self
                .consumer
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::invalid(
                "aggregator.consumer",
                "must match [A-Za-z0-9_-]+",
            ));
        }
        self.metrics_addr
            .parse::<std::net::SocketAddr>()
            .map_err(|e| ConfigError::invalid("aggregator.metrics_addr", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        AggregatorConfig::default().validate().unwrap();
    }

    #[test]
    fn windows_divide_a_day() {
        assert!(AggregatorConfig {
            window_secs: 300,
            ..Default::default()
        }
        .validate()
        .is_ok());
        let err = AggregatorConfig {
            window_secs: 7,
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("aggregator.window_secs"), "{err}");
    }

    #[test]
    fn horizon_must_cover_lateness() {
        let cfg = AggregatorConfig {
            dedup_horizon_secs: 100,
            ..Default::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("aggregator.dedup_horizon_secs"), "{err}");
    }
}
