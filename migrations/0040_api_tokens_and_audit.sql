-- Bearer tokens of the HTTP APIs (rater, invoicer, payments API, gateway admin API;
-- platform/src/auth): append-only. Creating a token appends a row with revoked = 0; revoking it
-- appends a row with revoked = 1 (irreversible: a token is revoked if any of its rows is). Only
-- the SHA-256 of the secret is stored, never the secret. Rows are written by
-- `tally-access tokens-create` / `tokens-revoke` as the migrator; services only read them.
CREATE TABLE IF NOT EXISTS api_tokens (
    token_id String,
    actor String,
    role String,
    secret_sha256 String,
    revoked UInt8,
    changed_by String,
    changed_ms Int64,
    changed_at DateTime
) ENGINE = MergeTree()
ORDER BY (token_id, changed_ms);

-- Who changed what through the APIs: for every authenticated request that may change state,
-- a row when it arrives (status 0, written before the change is made) and a row with the HTTP
-- status it was answered with. Append-only; no bodies, no secrets.
CREATE TABLE IF NOT EXISTS api_audit (
    request_id String,
    service String,
    actor String,
    role String,
    token_id String,
    method String,
    path String,
    status UInt16,
    at_ms Int64,
    at DateTime
) ENGINE = MergeTree()
ORDER BY (at, request_id);
