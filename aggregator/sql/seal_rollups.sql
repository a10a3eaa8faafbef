-- The rollup rows of every committed, not yet sealed window ending at or before the second
-- parameter (a Unix time), written under the batch id of the first parameter, with no marker
-- yet (aggregator/src/seal.rs writes it after). A window is (customer, window_start,
-- window_secs). Read by seal.rs (include_str!) and run on ClickHouse 18.16 and chdb by
-- tests/sql.
INSERT INTO usage_rollups (window_start, window_secs, customer, agent, meter, aggregation,
    group_names, group_values, group_key, events, batch_id, inserted_at, quantity, sealed)
SELECT window_start, toUInt32(window_end - window_start), customer, agent, meter, aggregation,
    group_names, group_values, group_key, event_count, ?, now(), quantity, 1
FROM v_usage
WHERE window_end <= toDateTime(?)
  AND (customer, window_start, toUInt32(window_end - window_start)) NOT IN (
    SELECT customer, window_start, window_secs FROM usage_rollups
    WHERE sealed = 1 AND batch_id IN (SELECT batch_id FROM usage_batches))
