-- Sealed rollups: once a tumbling window can no longer change (every message JetStream
-- received up to the window's end plus the allowed lateness is acknowledged, so every event
-- of the window is committed), the aggregator writes its usage into usage_rollups, one row
-- per (customer, agent, meter, window, group), under a fresh batch id, then a marker in
-- usage_batches (consumer 'sealer:<consumer>'): the final per-window record, with quantity
-- and sealed = 1. Rows of an unmarked seal are not part of it; if two sealers seal one
-- (customer, window), the seal with the smallest batch id is the record. v_usage (what the
-- rater bills) keeps folding the committed readings, so a seal never changes billed usage.
-- Rows from before 0004 have sealed = 0.

ALTER TABLE usage_rollups ADD COLUMN quantity Decimal(38, 9), ADD COLUMN sealed UInt8;
