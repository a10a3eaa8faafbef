-- The corrected data of an amend (issue 17 item 7; docs/INGEST.md, "Corrections"): the
-- event's `data` as the amend sent it, kept for audit and for recognizing a re-sent amend.
-- One row per amend (a void has none); append-only, keyed like usage_corrections.
CREATE TABLE IF NOT EXISTS usage_correction_data (
    customer String,
    correction_id String,
    data String,
    created_at DateTime
) ENGINE = MergeTree()
ORDER BY (customer, correction_id);
