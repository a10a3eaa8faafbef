-- The rest of the rater's catalog, append-only and versioned like migration 0008: customers,
-- their agents and meters, each as the validated JSON of one version. An identity
-- (customer, version), (customer, agent, version) or (meter, version) is immutable: writers
-- append a row only if none exists for it, or an identical one does (idempotent bootstraps
-- and re-posts); a different body for an existing identity is refused, never stored over. The
-- current entry is the highest version.
CREATE TABLE IF NOT EXISTS catalog_customers (
    customer String,
    version UInt32,
    body String,
    recorded_at DateTime
) ENGINE = MergeTree()
ORDER BY (customer, version);

CREATE TABLE IF NOT EXISTS catalog_agents (
    customer String,
    agent String,
    version UInt32,
    body String,
    recorded_at DateTime
) ENGINE = MergeTree()
ORDER BY (customer, agent, version);

CREATE TABLE IF NOT EXISTS catalog_meters (
    meter String,
    version UInt32,
    body String,
    recorded_at DateTime
) ENGINE = MergeTree()
ORDER BY (meter, version);
