-- The seal of one UTC day of one partition: every counted partial (its batch not aborted) of
-- the partition whose window starts in the day, folded per (customer, agent, meter, group)
-- into usage_days under the seal's id. Parameters: seal id, partition, day start and the next
-- day's start (Unix seconds). The day is computed from the Unix time, never from the server's
-- time zone. Read by aggregator/src/seal.rs (include_str!) and run on ClickHouse 18.16 and
-- chdb by tests/sql.
INSERT INTO usage_days (day, customer, agent, meter, aggregation, group_names, group_values,
    group_key, events, value_sum, value_min, value_max, latest_value, latest_time_ms,
    latest_event_id, unique_values, seal_id, part, sealed_at)
SELECT toDate(intDiv(toUInt32(window_start), 86400)) AS d, customer, agent, meter, aggregation,
    group_names, group_values, group_key, sum(events), sum(value_sum), min(value_min),
    max(value_max), argMax(latest_value, (latest_time_ms, latest_event_id)),
    max(latest_time_ms), argMax(latest_event_id, (latest_time_ms, latest_event_id)),
    groupUniqArrayArray(unique_values), ?, part, now()
FROM usage_partials
WHERE part = ?
  AND toStartOfHour(window_start) >= toStartOfHour(toDateTime(?)) AND window_start >= toDateTime(?)
  AND toStartOfHour(window_start) <= toStartOfHour(toDateTime(?)) AND window_start < toDateTime(?)
  AND batch_id NOT IN (SELECT batch_id FROM usage_aborts)
GROUP BY d, customer, agent, meter, aggregation, group_names, group_values, group_key, part
