-- Invoices carry their number (assigned once, at finalization), issuer, discounts, tax,
-- prepaid credits, amount due and due date; lines carry their kind (usage or adjustment),
-- group-by values, discount, tax and, for adjustments, the invoice they correct. Additive:
-- rows written before read with empty numbers and zero amounts.
ALTER TABLE invoices
    ADD COLUMN number String,
    ADD COLUMN issuer String,
    ADD COLUMN discount_minor Int64,
    ADD COLUMN tax_minor Int64,
    ADD COLUMN credits_applied_minor Int64,
    ADD COLUMN amount_due_minor Int64 DEFAULT total_minor,
    ADD COLUMN due_at DateTime DEFAULT period_end,
    ADD COLUMN payment_terms_days UInt32;

ALTER TABLE invoice_lines
    ADD COLUMN kind String,
    ADD COLUMN group_names Array(String),
    ADD COLUMN group_values Array(String),
    ADD COLUMN amount_before_discounts_minor Int64 DEFAULT amount_minor,
    ADD COLUMN discount_minor Int64,
    ADD COLUMN tax_rate String,
    ADD COLUMN tax_minor Int64,
    ADD COLUMN adjusts_invoice_id String;

-- v_invoices: the latest version of every invoice, its `status` taken from the lifecycle
-- (invoice_transitions) once one was recorded: the earliest paid/void record, else
-- uncollectible, else finalized; the status the invoicer stored otherwise. Same columns as
-- before, new ones after.
DROP TABLE IF EXISTS v_invoices;

CREATE VIEW IF NOT EXISTS v_invoices AS
SELECT
    invoice_id,
    customer,
    period_start,
    period_end,
    if(lifecycle_status = '', stored_status, lifecycle_status) AS status,
    currency,
    subtotal_minor,
    total_minor,
    line_count,
    plan_id,
    plan_version,
    issued_at,
    document,
    version,
    number,
    issuer,
    discount_minor,
    tax_minor,
    credits_applied_minor,
    amount_due_minor,
    due_at,
    payment_terms_days
FROM
(
    SELECT invoice_id, customer, period_start, period_end, status AS stored_status, currency, subtotal_minor,
        total_minor, line_count, plan_id, plan_version, issued_at, document, version, number, issuer,
        discount_minor, tax_minor, credits_applied_minor, amount_due_minor, due_at, payment_terms_days
    FROM invoices FINAL
) AS stored
ANY LEFT JOIN
(
    SELECT
        invoice_id,
        multiIf(terminal != '', terminal, uncollectible > 0, 'uncollectible', finalized > 0, 'finalized', '') AS lifecycle_status
    FROM
    (
        SELECT
            invoice_id,
            argMinIf(to_status, at_ms, to_status IN ('paid', 'void')) AS terminal,
            countIf(to_status = 'uncollectible') AS uncollectible,
            countIf(to_status = 'finalized') AS finalized
        FROM invoice_transitions
        GROUP BY invoice_id
    )
) AS lifecycle USING invoice_id;

DROP TABLE IF EXISTS v_invoice_lines;

CREATE VIEW IF NOT EXISTS v_invoice_lines AS
SELECT
    invoice_id, line_no, charge_id, meter, group_key, description, quantity, price_model, unit_price, tiers,
    amount_minor, currency, plan_id, plan_version, version, kind, group_names, group_values,
    amount_before_discounts_minor, discount_minor, tax_rate, tax_minor, adjusts_invoice_id
FROM invoice_lines FINAL;
