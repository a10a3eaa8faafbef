-- The invoice lifecycle, append-only: one row per transition (draft → finalized → paid / void /
-- uncollectible), with who or what caused it and why. Rows are never updated or deleted; the
-- current status is the fold of an invoice's rows ordered by (at_ms, seq) that skips a
-- transition the lifecycle does not allow from the status reached so far
-- (tally_domain::invoice_status::fold). A transition to a given status happens at most once
-- per invoice, so `transition_id` is deterministic (invoice, target status) and a retried
-- append collapses in the view (the earliest record of each transition wins).

CREATE TABLE IF NOT EXISTS invoice_transitions (
    transition_id String,
    invoice_id String,
    seq UInt32,
    from_status String,
    to_status String,
    actor String,
    reason String,
    at_ms Int64,
    at DateTime
) ENGINE = MergeTree
ORDER BY (invoice_id, transition_id);

CREATE VIEW IF NOT EXISTS v_invoice_transitions AS
SELECT
    transition_id,
    invoice_id,
    argMin(seq, t_ms) AS seq,
    argMin(from_status, t_ms) AS from_status,
    argMin(to_status, t_ms) AS to_status,
    argMin(actor, t_ms) AS actor,
    argMin(reason, t_ms) AS reason,
    min(t_ms) AS at_ms,
    min(t) AS at
FROM
(
    SELECT transition_id, invoice_id, seq, from_status, to_status, actor, reason, at_ms AS t_ms, at AS t
    FROM invoice_transitions
)
GROUP BY transition_id, invoice_id;
