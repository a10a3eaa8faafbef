-- Dunning (tally-payments): payment retries and overdue reminders sent as signed webhooks to a
-- URL per customer, append-only.
--
-- notifications: one row per notification decided (deterministic id: kind, invoice, step), with
-- the exact body every delivery attempt sends. notification_deliveries: one row per attempt
-- (HTTP status or error), the delivery log. Rows are never updated or deleted.

CREATE TABLE IF NOT EXISTS notifications (
    notification_id String,
    customer String,
    invoice_id String,
    kind String,
    step UInt32,
    url String,
    body String,
    actor String,
    created_at_ms Int64,
    created_at DateTime
) ENGINE = MergeTree
ORDER BY (customer, notification_id);

CREATE TABLE IF NOT EXISTS notification_deliveries (
    notification_id String,
    attempt UInt32,
    url String,
    status_code UInt16,
    delivered UInt8,
    error String,
    at_ms Int64,
    at DateTime
) ENGINE = MergeTree
ORDER BY (notification_id, attempt);
