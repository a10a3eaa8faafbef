-- Tax rates and FX rates in the rater's catalog, append-only like migrations 0008 and 0010:
-- each row is the validated JSON of one dated entry (the configuration's `[[tax_rates]]` and
-- `[[fx_rates]]`, or `POST /v1/tax_rates` and `POST /v1/fx_rates`). An identity (region,
-- code, effective_from) or (from_currency, to_currency, effective_from) is immutable: writers
-- append a row only if none exists for it, or an identical one does (idempotent bootstraps
-- and re-posts); another rate for an existing identity is refused, never stored over. A
-- change of rate is a new entry with a later effective_from (RFC 3339, milliseconds, UTC).
CREATE TABLE IF NOT EXISTS catalog_tax_rates (
    region String,
    code String,
    effective_from String,
    body String,
    recorded_at DateTime
) ENGINE = MergeTree()
ORDER BY (region, code, effective_from);

CREATE TABLE IF NOT EXISTS catalog_fx_rates (
    from_currency String,
    to_currency String,
    effective_from String,
    body String,
    recorded_at DateTime
) ENGINE = MergeTree()
ORDER BY (from_currency, to_currency, effective_from);
