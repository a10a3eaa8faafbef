-- Charges record the amount before discounts and the tax of each line (rater: coupons and
-- tax rates by region and code). Additive: `amount_minor` stays the amount after discounts
-- and before tax; rows written before this migration read as undiscounted and untaxed.
ALTER TABLE charges
    ADD COLUMN amount_before_discounts_minor Int64 DEFAULT amount_minor,
    ADD COLUMN tax_region String,
    ADD COLUMN tax_code String,
    ADD COLUMN tax_rate String,
    ADD COLUMN tax_minor Int64,
    ADD COLUMN amount_with_tax_minor Int64 DEFAULT amount_minor + tax_minor;

-- ClickHouse 18.16 expands `SELECT *` when a view is created: recreate v_charges so it shows
-- the new columns (same name, same columns first, new ones after).
DROP TABLE IF EXISTS v_charges;

CREATE VIEW IF NOT EXISTS v_charges AS
SELECT * FROM charges FINAL;
