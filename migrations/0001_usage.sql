-- Usage: raw events, rollups and the batch commit markers that make them visible.
-- Rows of a batch count only once its marker exists in usage_batches (see aggregator docs).

CREATE TABLE IF NOT EXISTS usage_events (
    customer String,
    agent String,
    event_id String,
    event_type String,
    time DateTime,
    time_ms Int64,
    data String,
    payload_hash UInt64,
    batch_id String,
    stream_seq UInt64,
    received_at DateTime
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(time)
ORDER BY (customer, event_id);

CREATE TABLE IF NOT EXISTS usage_rollups (
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
    batch_id String,
    inserted_at DateTime
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(window_start)
ORDER BY (customer, meter, window_start, agent, group_key);

CREATE TABLE IF NOT EXISTS usage_batches (
    batch_id String,
    consumer String,
    first_seq UInt64,
    last_seq UInt64,
    events UInt32,
    rollups UInt32,
    committed_at DateTime
) ENGINE = MergeTree()
ORDER BY batch_id;
