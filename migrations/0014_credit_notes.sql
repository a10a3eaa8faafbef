-- Credit notes against finalized invoices (the invoice itself never changes). Append-only
-- with deterministic ids: a retried write collapses in the view (the earliest record wins).
-- The payments service reads v_credit_notes for ledger postings.
-- `charge_id` names the charge a late-usage credit note corrects (empty for manual ones);
-- amounts are positive: what is credited back, before tax (`amount_minor`) and the tax.
CREATE TABLE IF NOT EXISTS credit_notes (
    credit_note_id String,
    invoice_id String,
    charge_id String,
    customer String,
    currency String,
    amount_minor Int64,
    tax_minor Int64,
    reason String,
    lines String,
    actor String,
    issued_at_ms Int64,
    issued_at DateTime
) ENGINE = MergeTree
ORDER BY (customer, credit_note_id);

CREATE VIEW IF NOT EXISTS v_credit_notes AS
SELECT
    credit_note_id,
    argMin(note_invoice, t_ms) AS invoice_id,
    argMin(note_charge, t_ms) AS charge_id,
    argMin(note_customer, t_ms) AS customer,
    argMin(note_currency, t_ms) AS currency,
    argMin(note_amount, t_ms) AS amount_minor,
    argMin(note_tax, t_ms) AS tax_minor,
    argMin(note_reason, t_ms) AS reason,
    argMin(note_lines, t_ms) AS lines,
    argMin(note_actor, t_ms) AS actor,
    min(t_ms) AS issued_at_ms,
    min(t) AS issued_at
FROM
(
    SELECT credit_note_id, invoice_id AS note_invoice, charge_id AS note_charge, customer AS note_customer, currency AS note_currency,
        amount_minor AS note_amount, tax_minor AS note_tax, reason AS note_reason, lines AS note_lines,
        actor AS note_actor, issued_at_ms AS t_ms, issued_at AS t
    FROM credit_notes
)
GROUP BY credit_note_id;
