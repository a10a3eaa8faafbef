-- Live spend control (rater::live, `tally-spend`).
--
-- Each batch's partials carry the batch's sequence in its partition (`bseq`: the lease
-- revision of the batch's intent, platform::lease). A spend decider that rebuilds from storage
-- reads every batch up to a sequence here and takes later ones from the live feed
-- (platform::feed), so no batch is counted twice or missed. Rows written before this
-- migration read as 0 (before any sequence).
ALTER TABLE usage_partials ADD COLUMN bseq UInt64 DEFAULT 0;

-- Budgets: per customer, optionally per agent and per meter, per billing period. `limit` is
-- an amount in the plan's currency (`kind` = 'amount', the usage charges of the period before
-- tax) or a quantity of `meter` (`kind` = 'quantity'). `thresholds` are percentages that
-- notify once each per period; `hard` denies authorize requests that would exceed the limit.
-- The latest version of (customer, budget_id) holds; `deleted` = 1 removes it.
CREATE TABLE IF NOT EXISTS spend_budgets (
    customer String,
    budget_id String,
    agent String,
    meter String,
    kind String,
    limit_value String,
    thresholds Array(UInt8),
    hard UInt8,
    deleted UInt8,
    version_ms Int64,
    actor String
) ENGINE = ReplacingMergeTree(version_ms)
ORDER BY (customer, budget_id);

-- Every threshold crossing notified (the NATS event and the webhook are sent from it): one row
-- per (customer, budget, period, threshold), written once (the decider creates the crossing's
-- key in NATS KV first, create-only, so two instances or a restart never notify twice).
CREATE TABLE IF NOT EXISTS spend_alerts (
    alert_id String,
    customer String,
    budget_id String,
    agent String,
    meter String,
    period_start DateTime,
    threshold UInt8,
    spent String,
    limit_value String,
    crossed_at_ms Int64
) ENGINE = ReplacingMergeTree()
ORDER BY (customer, alert_id);
