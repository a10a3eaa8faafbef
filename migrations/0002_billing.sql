-- Billing: charges computed by the rater and invoices produced by the invoicer.
-- Both are versioned: a recomputation appends a row with a higher version and the same
-- deterministic id; readers take the latest version (the v_* views do).

CREATE TABLE IF NOT EXISTS charges (
    charge_id String,
    customer String,
    period_start DateTime,
    period_end DateTime,
    meter String,
    group_key String,
    group_names Array(String),
    group_values Array(String),
    plan_id String,
    plan_version UInt32,
    price_model String,
    currency String,
    quantity Decimal(38, 9),
    unit_price String,
    tiers String,
    amount_minor Int64,
    windows UInt32,
    usage_from DateTime,
    usage_to DateTime,
    computed_at DateTime,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (customer, period_start, charge_id);

CREATE TABLE IF NOT EXISTS invoices (
    invoice_id String,
    customer String,
    period_start DateTime,
    period_end DateTime,
    status String,
    currency String,
    subtotal_minor Int64,
    total_minor Int64,
    line_count UInt32,
    plan_id String,
    plan_version UInt32,
    issued_at DateTime,
    document String,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY invoice_id;

CREATE TABLE IF NOT EXISTS invoice_lines (
    invoice_id String,
    line_no UInt32,
    charge_id String,
    meter String,
    group_key String,
    description String,
    quantity Decimal(38, 9),
    price_model String,
    unit_price String,
    tiers String,
    amount_minor Int64,
    currency String,
    plan_id String,
    plan_version UInt32,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (invoice_id, line_no);
