-- Prepaid credits: grants (positive) per customer and currency, one row per grant_id (a
-- re-sent grant replaces itself). What finalized invoices applied is in
-- v_invoices.credits_applied_minor; the balance is grants minus that.
CREATE TABLE IF NOT EXISTS credit_grants (
    grant_id String,
    customer String,
    currency String,
    amount_minor Int64,
    reason String,
    granted_at_ms Int64,
    granted_at DateTime
) ENGINE = ReplacingMergeTree(granted_at_ms)
ORDER BY (customer, grant_id);
