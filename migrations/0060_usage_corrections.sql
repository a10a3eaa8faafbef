-- Corrections of committed events (issue 17 item 7; the argument is in docs/INGEST.md,
-- "Corrections"). A correction voids an event, named by its identity (customer, source, id),
-- after it was committed, with an actor and a reason. Append-only: the event's raw row and
-- readings are never changed; a correction adds what it takes away.
--
-- One row per correction: its identity (customer, correction_id), the event it corrects,
-- its revision of that event (1 for the first correction), who made it and why.
-- Of two corrections recorded for the same (customer, agent, event_id, revision), only the
-- one with the smallest correction_id counts (a race between two API instances resolves the
-- same way for every reader).
CREATE TABLE IF NOT EXISTS usage_corrections (
    correction_id String,
    customer String,
    agent String,
    event_id String,
    event_time_ms Int64,
    revision UInt32,
    kind String,
    actor String,
    reason String,
    created_ms Int64,
    created_at DateTime
) ENGINE = MergeTree()
ORDER BY (customer, agent, event_id, revision, correction_id);

-- What a correction changes, per (meter, group, window) of the corrected event: the
-- difference it makes to the usage (a void: minus each of the event's readings). Billing
-- reads add these to the partials and sealed days (platform/src/usage.rs), bounded like the
-- partials by hour then customer.
CREATE TABLE IF NOT EXISTS usage_correction_deltas (
    correction_id String,
    customer String,
    agent String,
    event_id String,
    revision UInt32,
    meter String,
    aggregation String,
    window_start DateTime,
    window_secs UInt32,
    group_names Array(String),
    group_values Array(String),
    group_key String,
    events Int64,
    value Decimal(38, 9),
    created_at DateTime
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(window_start)
ORDER BY (toStartOfHour(window_start), customer, meter, correction_id, group_key);
