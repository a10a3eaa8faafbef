-- The rater's catalog, append-only: plan versions and subscriptions as validated JSON
-- documents (the configuration's `[[plans]]` and `[[subscriptions]]` entries). A plan version
-- (plan_id, version) and a subscription (customer, effective_from) are immutable: writers
-- append a row only if none exists for the identity, or an identical one does (idempotent
-- bootstraps); a different body for an existing identity is refused, never stored over.
CREATE TABLE IF NOT EXISTS catalog_plans (
    plan_id String,
    version UInt32,
    body String,
    recorded_at DateTime
) ENGINE = MergeTree
ORDER BY (plan_id, version);

CREATE TABLE IF NOT EXISTS catalog_subscriptions (
    customer String,
    effective_from String,
    body String,
    recorded_at DateTime
) ENGINE = MergeTree
ORDER BY (customer, effective_from);
