-- Disputes and the time-ordered copy of the ledger (tally-payments), both append-only.
--
-- payment_disputes: one row per state a dispute reached (Stripe's `needs_response`,
-- `under_review`, `won`, `lost`, ..., and `funds_withdrawn` / `funds_reinstated`), `version`
-- counting from 1 in the order they were recorded; a state is never updated, a new one is a
-- new row. The row of a (dispute_id, status) is written once (a replay finds it and writes
-- nothing); readers keep the earliest record of each.
--
-- ledger_entries_by_time: the same rows as ledger_entries, written just before them by the
-- same append (so every row of ledger_entries is here), sorted by time, so a report over a
-- range reads that range only (ledger_entries is sorted by currency and journal id).
-- Journals posted before this migration are copied by `tally-payments index-ledger`.

CREATE TABLE IF NOT EXISTS payment_disputes (
    dispute_id String,
    version UInt32,
    status String,
    invoice_id String,
    payment_id String,
    customer String,
    gateway String,
    amount_minor Int64,
    currency String,
    reason String,
    event_id String,
    actor String,
    at_ms Int64,
    at DateTime
) ENGINE = MergeTree
ORDER BY (dispute_id, status);

CREATE TABLE IF NOT EXISTS ledger_entries_by_time (
    entry_id String,
    journal_id String,
    line_no UInt32,
    kind String,
    account String,
    currency String,
    debit_minor Int64,
    credit_minor Int64,
    invoice_id String,
    customer String,
    actor String,
    at_ms Int64,
    at DateTime
) ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (at, currency, journal_id, line_no);
