-- The content digest of a correction (issue 17, "two instances, one new correction id, two
-- contents"; docs/INGEST.md, "Corrections"): on every correction row and on every delta row
-- it wrote. Two API instances racing with the same new correction id and different content
-- may both store their rows; per (customer, correction_id) only the content of the earliest
-- stored row counts (created_ms, ties by the smaller digest, then the smaller revision), and
-- only the deltas carrying that row's revision and digest are read. Additive: rows written
-- before this migration have digest '' (one content per id, as before).
ALTER TABLE usage_corrections
    ADD COLUMN digest String DEFAULT '';
ALTER TABLE usage_correction_deltas
    ADD COLUMN digest String DEFAULT '';
