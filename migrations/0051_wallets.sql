-- Prepaid credit wallets (tally-payments, payments/src/wallet): grants and their movements,
-- append-only. A grant (promotional, or a top-up available once paid) is one row per
-- (customer, grant_id); what happens to it (it became available, usage of a period consumed
-- it or gave it back, the period's invoice took it, it expired, it was voided) is one row
-- per movement with a deterministic id, so a pass that runs again appends nothing the views
-- do not collapse (the earliest record of an id wins). Reads are per customer (the sorting
-- keys' first column).
CREATE TABLE IF NOT EXISTS wallet_grants (
    grant_id String,
    customer String,
    currency String,
    amount_minor Int64,
    kind String,
    priority UInt8,
    expires_at_ms Int64,
    reason String,
    actor String,
    created_at_ms Int64,
    created_at DateTime
) ENGINE = MergeTree
ORDER BY (customer, grant_id);

CREATE TABLE IF NOT EXISTS wallet_movements (
    movement_id String,
    customer String,
    grant_id String,
    currency String,
    kind String,
    amount_minor Int64,
    invoice_id String,
    actor String,
    at_ms Int64,
    at DateTime
) ENGINE = MergeTree
ORDER BY (customer, movement_id);

-- One row per grant (the earliest record).
CREATE VIEW IF NOT EXISTS v_wallet_grants AS
SELECT
    grant_id,
    customer,
    argMin(currency, t_ms) AS currency,
    argMin(amount_minor, t_ms) AS amount_minor,
    argMin(kind, t_ms) AS kind,
    argMin(priority, t_ms) AS priority,
    argMin(expires_at_ms, t_ms) AS expires_at_ms,
    argMin(reason, t_ms) AS reason,
    argMin(actor, t_ms) AS actor,
    min(t_ms) AS created_at_ms
FROM
(
    SELECT grant_id, customer, currency, amount_minor, kind, priority, expires_at_ms, reason,
           actor, created_at_ms AS t_ms
    FROM wallet_grants
)
GROUP BY customer, grant_id;

-- One row per movement (the earliest record).
CREATE VIEW IF NOT EXISTS v_wallet_movements AS
SELECT
    movement_id,
    customer,
    argMin(grant_id, t_ms) AS grant_id,
    argMin(currency, t_ms) AS currency,
    argMin(kind, t_ms) AS kind,
    argMin(amount_minor, t_ms) AS amount_minor,
    argMin(invoice_id, t_ms) AS invoice_id,
    argMin(actor, t_ms) AS actor,
    min(t_ms) AS at_ms
FROM
(
    SELECT movement_id, customer, grant_id, currency, kind, amount_minor, invoice_id, actor,
           at_ms AS t_ms
    FROM wallet_movements
)
GROUP BY customer, movement_id;
