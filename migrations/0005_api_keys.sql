-- Ingest API keys: append-only. Creating a key appends a row with revoked = 0; revoking it
-- appends a row with revoked = 1 (irreversible: a key is revoked if any of its rows is).
-- Only the SHA-256 of the secret is stored, never the secret.

CREATE TABLE IF NOT EXISTS api_keys (
    key_id String,
    customer String,
    agents Array(String),
    secret_sha256 String,
    label String,
    revoked UInt8,
    changed_at DateTime,
    changed_ms Int64
) ENGINE = MergeTree()
ORDER BY (key_id, changed_ms);
