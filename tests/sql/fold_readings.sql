-- Test fixtures only: the window partials of one batch of readings that a fixture inserted
-- into usage_meter_readings, folded the way the aggregator folds a batch (aggregator/src/
-- partials.rs) before it writes usage_partials. Parameter: the batch id. Used by
-- platform::testkit::fold_readings and by tests/sql on both engines.
INSERT INTO usage_partials (window_start, window_secs, customer, agent, meter, aggregation,
    group_names, group_values, group_key, events, value_sum, value_min, value_max, latest_value,
    latest_time_ms, latest_event_id, unique_values, batch_id, part, inserted_at)
SELECT window_start, window_secs, customer, agent, meter, aggregation, group_names,
    group_values, group_key, count(), sum(value), min(value), max(value),
    argMax(value, (time_ms, event_id)), max(time_ms), argMax(event_id, (time_ms, event_id)),
    groupUniqArrayIf(unique_value, aggregation = 'UNIQUE_COUNT'), batch_id, part, now()
FROM usage_meter_readings WHERE batch_id = ?
GROUP BY window_start, window_secs, customer, agent, meter, aggregation, group_names,
    group_values, group_key, batch_id, part
