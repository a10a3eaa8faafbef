-- Payment retries through the gateway (tally-payments dunning), append-only.
--
-- payments.payment_method: the provider's payment method of a payment or failed attempt (Stripe:
-- the `pm_...` of `last_payment_error.payment_method`), which a retry confirms again.
-- v_payments is recreated with that column appended (its other columns are unchanged).
-- gateway_requests: one row per request sent to a gateway's API (a retry), with its idempotency
-- key, the HTTP status and the provider's id of what it created; the retry log.

ALTER TABLE payments ADD COLUMN payment_method String;

DROP TABLE IF EXISTS v_payments;

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
    min(t) AS at,
    argMin(method, t_ms) AS payment_method
FROM
(
    SELECT payment_id, invoice_id, customer, gateway, gateway_ref, kind, status, amount_minor,
           currency, failure_reason, event_id, actor, at_ms AS t_ms, at AS t, payment_method AS method
    FROM payments
)
GROUP BY payment_id;

CREATE TABLE IF NOT EXISTS gateway_requests (
    idempotency_key String,
    invoice_id String,
    customer String,
    gateway String,
    path String,
    attempt UInt32,
    status_code UInt16,
    succeeded UInt8,
    response_ref String,
    error String,
    actor String,
    at_ms Int64,
    at DateTime
) ENGINE = MergeTree
ORDER BY (invoice_id, idempotency_key, attempt);
