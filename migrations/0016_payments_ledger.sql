-- Payments and the double-entry ledger (tally-payments), all append-only.
--
-- webhook_events: every gateway event accepted (signature verified), by event id; a delivery
-- whose event id is already here changes nothing. payments: one row per payment, failed
-- attempt or refund, with the gateway, the gateway's reference and who recorded it.
-- ledger_entries: one row per journal line; a journal (deterministic id per invoice, payment,
-- refund or credit note) is balanced in its currency. Rows are never updated or deleted; a
-- retried append of the same id collapses in the views (the earliest record wins).

CREATE TABLE IF NOT EXISTS webhook_events (
    event_id String,
    gateway String,
    event_type String,
    invoice_id String,
    outcome String,
    payload String,
    received_at_ms Int64,
    received_at DateTime
) ENGINE = MergeTree
ORDER BY (gateway, event_id);

CREATE TABLE IF NOT EXISTS payments (
    payment_id String,
    invoice_id String,
    customer String,
    gateway String,
    gateway_ref String,
    kind String,
    status String,
    amount_minor Int64,
    currency String,
    failure_reason String,
    event_id String,
    actor String,
    at_ms Int64,
    at DateTime
) ENGINE = MergeTree
ORDER BY (invoice_id, payment_id);

CREATE TABLE IF NOT EXISTS ledger_entries (
    entry_id String,
    journal_id String,
    line_no UInt32,
    kind String,
    account String,
    currency String,
    debit_minor Int64,
    credit_minor Int64,
    invoice_id String,
    customer String,
    actor String,
    at_ms Int64,
    at DateTime
) ENGINE = MergeTree
ORDER BY (currency, journal_id, line_no);

-- One row per payment id (the earliest record).
CREATE VIEW IF NOT EXISTS v_payments AS
SELECT
    payment_id,
    argMin(invoice_id, t_ms) AS invoice_id,
    argMin(customer, t_ms) AS customer,
    argMin(gateway, t_ms) AS gateway,
    argMin(gateway_ref, t_ms) AS gateway_ref,
    argMin(kind, t_ms) AS kind,
    argMin(status, t_ms) AS status,
    argMin(amount_minor, t_ms) AS amount_minor,
    argMin(currency, t_ms) AS currency,
    argMin(failure_reason, t_ms) AS failure_reason,
    argMin(event_id, t_ms) AS event_id,
    argMin(actor, t_ms) AS actor,
    min(t_ms) AS at_ms,
    min(t) AS at
FROM
(
    SELECT payment_id, invoice_id, customer, gateway, gateway_ref, kind, status, amount_minor,
           currency, failure_reason, event_id, actor, at_ms AS t_ms, at AS t
    FROM payments
)
GROUP BY payment_id;

-- One row per journal line (the earliest record).
CREATE VIEW IF NOT EXISTS v_ledger_entries AS
SELECT
    entry_id,
    argMin(journal_id, t_ms) AS journal_id,
    argMin(line_no, t_ms) AS line_no,
    argMin(kind, t_ms) AS kind,
    argMin(account, t_ms) AS account,
    argMin(currency, t_ms) AS currency,
    argMin(debit_minor, t_ms) AS debit_minor,
    argMin(credit_minor, t_ms) AS credit_minor,
    argMin(invoice_id, t_ms) AS invoice_id,
    argMin(customer, t_ms) AS customer,
    argMin(actor, t_ms) AS actor,
    min(t_ms) AS at_ms,
    min(t) AS at
FROM
(
    SELECT entry_id, journal_id, line_no, kind, account, currency, debit_minor, credit_minor,
           invoice_id, customer, actor, at_ms AS t_ms, at AS t
    FROM ledger_entries
)
GROUP BY entry_id;
