-- Sealed rollups: once a tumbling window can no longer change (every message JetStream
-- received up to the window's end plus the allowed lateness is acknowledged, so every event
-- of the window is committed), the aggregator writes its usage into usage_rollups, one row
-- per (customer, agent, meter, window, group), under a fresh batch id, then a marker in
-- usage_batches (consumer 'sealer:<consumer>'). v_usage then reads a sealed window from its
-- rollup rows and no longer from the readings: a copy of an event committed later (a paused
-- instance resuming) cannot change it. Rows of an unmarked seal count nowhere; if two sealers
-- seal one (customer, window), the seal with the smallest batch id is read. Readings stay for
-- lineage; the columns of v_usage are unchanged. Rows from before 0004 have sealed = 0 and
-- are not read.

ALTER TABLE usage_rollups ADD COLUMN quantity Decimal(38, 9), ADD COLUMN sealed UInt8;

DROP TABLE IF EXISTS v_usage;

-- Committed usage per tumbling window: sealed windows from their rollup rows, the others
-- from the committed readings (the meter's aggregation over the window's readings).
CREATE VIEW IF NOT EXISTS v_usage AS
SELECT
    window_start,
    window_end,
    customer,
    agent,
    meter,
    aggregation,
    group_key,
    group_names,
    group_values,
    quantity,
    event_count
FROM
(
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
        quantity,
        events AS event_count
    FROM usage_rollups
    WHERE sealed = 1
      AND (customer, window_start, batch_id) IN (
        SELECT customer, window_start, min(batch_id)
        FROM usage_rollups
        WHERE sealed = 1 AND batch_id IN (SELECT batch_id FROM usage_batches)
        GROUP BY customer, window_start
      )
    UNION ALL
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
    WHERE (customer, window_start) NOT IN (
        SELECT customer, window_start
        FROM usage_rollups
        WHERE sealed = 1 AND batch_id IN (SELECT batch_id FROM usage_batches)
    )
    GROUP BY window_start, window_secs, customer, agent, meter, aggregation, group_key, group_names, group_values
);
