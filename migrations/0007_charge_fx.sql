-- Charges billed in another currency than their plan's (rater: [[fx_rates]]): the plan's
-- currency of the lines and the rate they were converted with. Additive; rows written
-- before this migration were not converted (price_currency defaults to currency).
ALTER TABLE charges
    ADD COLUMN price_currency String DEFAULT currency,
    ADD COLUMN fx_rate String;

-- ClickHouse 18.16 expands `SELECT *` when a view is created: recreate v_charges.
DROP TABLE IF EXISTS v_charges;

CREATE VIEW IF NOT EXISTS v_charges AS
SELECT * FROM charges FINAL;
