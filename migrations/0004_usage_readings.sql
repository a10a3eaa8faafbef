-- Usage readings: one row per (event, meter) with its window, group and value, written by the
-- aggregator in the same batch as the raw event and counted only once the batch's commit
-- marker exists. Their identity is (customer, event_id, meter): if two aggregator instances
-- ever commit the same event (a paused instance resuming after its messages were redelivered),
-- the public views count it once. v_usage is redefined on top of them; its columns are
-- unchanged. usage_rollups is no longer written (kept for history).

CREATE TABLE IF NOT EXISTS usage_readings (
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
    batch_id String,
    inserted_at DateTime
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(window_start)
ORDER BY (customer, meter, window_start, event_id);

-- Committed readings, each (customer, event_id, meter) once.
CREATE VIEW IF NOT EXISTS v_usage_readings AS
SELECT
    customer,
    event_id,
    meter,
    any(agent) AS agent,
    any(aggregation) AS aggregation,
    any(window_start) AS window_start,
    any(window_secs) AS window_secs,
    any(time_ms) AS time_ms,
    any(group_names) AS group_names,
    any(group_values) AS group_values,
    any(group_key) AS group_key,
    any(value) AS value,
    any(unique_value) AS unique_value
FROM usage_readings
WHERE batch_id IN (SELECT batch_id FROM usage_batches)
GROUP BY customer, event_id, meter;

DROP TABLE IF EXISTS v_usage;

-- Committed usage per tumbling window: the meter's aggregation over the window's readings.
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
        aggregation = 'SUM', sum(value),
        aggregation = 'COUNT', toDecimal128(count(), 9),
        aggregation = 'MIN', min(value),
        aggregation = 'MAX', max(value),
        aggregation = 'UNIQUE_COUNT', toDecimal128(uniqExact(unique_value), 9),
        argMax(value, (time_ms, event_id))
    ) AS quantity,
    count() AS event_count
FROM v_usage_readings
GROUP BY window_start, window_secs, customer, agent, meter, aggregation, group_key, group_names, group_values;
