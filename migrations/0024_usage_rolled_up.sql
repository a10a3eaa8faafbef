-- Usage storage that reads cost what they ask for (issue 14) under the event identity
-- (customer, source, id) (issue 16). The argument is in aggregator/src/lib.rs.
--
-- Every aggregator batch is written under a fresh batch id after its intent won the
-- partition's compare-and-set in NATS KV (aggregator/src/lease.rs): raw events, per-event
-- meter readings and per-window partials. A batch counts unless its id is in usage_aborts
-- (written by whoever finds the batch unfinished: a retry after a failed insert, or the
-- instance that takes the partition over). Nothing else decides what counts, so readers
-- filter by one small set instead of grouping events by identity.
--
-- Once a UTC day can no longer change for a partition (every message JetStream received up
-- to its end plus the allowed lateness is acknowledged), the partition's aggregator seals it:
-- usage_days holds the day's usage per (customer, agent, meter, group), and a row in
-- usage_seals (written after the day's rows) makes the seal count. The aggregator refuses
-- events for a sealed day (reason window_sealed), so a sealed day's partials never change.
-- Billing reads sealed days from usage_days and the rest from usage_partials, each filtered
-- by its sorting key.
--
-- The tables of 0001-0023 (usage_events, usage_readings, usage_rollups) are no longer
-- written; the aggregator copies their committed rows here once, exactly once, at its first
-- start (aggregator/src/upgrade.rs).

-- Raw events, one row per accepted event: lineage, audit and the dedup set's recovery.
CREATE TABLE IF NOT EXISTS usage_raw (
    customer String,
    agent String,
    event_id String,
    event_type String,
    time DateTime,
    time_ms Int64,
    data String,
    payload_hash UInt64,
    stream_seq UInt64,
    received_at DateTime,
    batch_id String,
    part UInt32
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(time)
ORDER BY (toStartOfHour(time), customer, agent, event_id);

-- What each meter read from each event: the lineage of every invoice line.
CREATE TABLE IF NOT EXISTS usage_meter_readings (
    customer String,
    agent String,
    event_id String,
    meter String,
    aggregation String,
    window_start DateTime,
    window_secs UInt32,
    time_ms Int64,
    group_names Array(String),
    group_values Array(String),
    group_key String,
    value Decimal(38, 9),
    unique_value String,
    stream_seq UInt64,
    batch_id String,
    part UInt32,
    inserted_at DateTime
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(window_start)
ORDER BY (toStartOfHour(window_start), customer, meter, agent, event_id);

-- Per batch, the usage of each (customer, agent, meter, group, window) it touched.
CREATE TABLE IF NOT EXISTS usage_partials (
    window_start DateTime,
    window_secs UInt32,
    customer String,
    agent String,
    meter String,
    aggregation String,
    group_names Array(String),
    group_values Array(String),
    group_key String,
    events UInt64,
    value_sum Decimal(38, 9),
    value_min Decimal(38, 9),
    value_max Decimal(38, 9),
    latest_value Decimal(38, 9),
    latest_time_ms Int64,
    latest_event_id String,
    unique_values Array(String),
    batch_id String,
    part UInt32,
    inserted_at DateTime
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(window_start)
ORDER BY (toStartOfHour(window_start), customer, meter, group_key, agent, window_start);

-- A sealed day's usage per (customer, agent, meter, group), written by the day's seal.
CREATE TABLE IF NOT EXISTS usage_days (
    day Date,
    customer String,
    agent String,
    meter String,
    aggregation String,
    group_names Array(String),
    group_values Array(String),
    group_key String,
    events UInt64,
    value_sum Decimal(38, 9),
    value_min Decimal(38, 9),
    value_max Decimal(38, 9),
    latest_value Decimal(38, 9),
    latest_time_ms Int64,
    latest_event_id String,
    unique_values Array(String),
    seal_id String,
    part UInt32,
    sealed_at DateTime
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (day, customer, meter, group_key, agent);

-- One row per sealed (partition, day), written after the day's rows: the seal counts from
-- then on (unless its id is in usage_aborts). Days are sealed in order, so a partition's
-- sealed days are every day up to its newest seal.
CREATE TABLE IF NOT EXISTS usage_seals (
    part UInt32,
    day Date,
    seal_id String,
    rows UInt64,
    sealed_at DateTime
) ENGINE = MergeTree()
ORDER BY (part, day);

-- Batches and seals that never count: unfinished when found by a retry or a takeover.
CREATE TABLE IF NOT EXISTS usage_aborts (
    batch_id String,
    part UInt32,
    reason String,
    aborted_at DateTime
) ENGINE = MergeTree()
ORDER BY batch_id;

DROP TABLE IF EXISTS v_usage_readings;

-- Committed readings: one row per (customer, agent, event id, meter).
CREATE VIEW IF NOT EXISTS v_usage_readings AS
SELECT customer, event_id, meter, agent, aggregation, window_start, window_secs, time_ms,
    group_names, group_values, group_key, value, unique_value
FROM usage_meter_readings
WHERE batch_id NOT IN (SELECT batch_id FROM usage_aborts);

DROP TABLE IF EXISTS v_usage;

-- Committed usage per tumbling window of (customer, agent, meter, group), from the partials.
CREATE VIEW IF NOT EXISTS v_usage AS
SELECT
    window_start,
    window_start + window_secs AS window_end,
    customer,
    agent,
    meter,
    aggregation,
    group_key,
    group_names,
    group_values,
    multiIf(
        aggregation = 'SUM', sum(value_sum),
        aggregation = 'COUNT', toDecimal128(sum(events), 9),
        aggregation = 'MIN', min(value_min),
        aggregation = 'MAX', max(value_max),
        aggregation = 'UNIQUE_COUNT', toDecimal128(uniqExactArray(unique_values), 9),
        argMax(latest_value, (latest_time_ms, latest_event_id))
    ) AS quantity,
    sum(events) AS event_count
FROM usage_partials
WHERE batch_id NOT IN (SELECT batch_id FROM usage_aborts)
GROUP BY window_start, window_secs, customer, agent, meter, aggregation, group_key, group_names, group_values;
