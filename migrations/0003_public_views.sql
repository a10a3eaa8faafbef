-- Public SQL views: a contract for dashboards, BI tools and outside tests. Keep names and
-- columns; change them only with a new migration and a documented deprecation.

-- Committed usage per tumbling window. Only rows of committed batches count.
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
        max(value_max)
    ) AS quantity,
    sum(events) AS event_count
FROM usage_rollups
WHERE batch_id IN (SELECT batch_id FROM usage_batches)
GROUP BY window_start, window_secs, customer, agent, meter, aggregation, group_key, group_names, group_values;

-- The latest version of every charge.
CREATE VIEW IF NOT EXISTS v_charges AS
SELECT * FROM charges FINAL;

-- The latest version of every invoice and invoice line.
CREATE VIEW IF NOT EXISTS v_invoices AS
SELECT * FROM invoices FINAL;

CREATE VIEW IF NOT EXISTS v_invoice_lines AS
SELECT * FROM invoice_lines FINAL;
