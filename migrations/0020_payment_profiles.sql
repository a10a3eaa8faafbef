-- How each customer pays (tally-payments collection), append-only.
--
-- customer_payment_profiles: one row per change of a customer's payment settings, recorded
-- through the payments API (`PUT /v1/customers/{id}/payment-profile`) with its actor. The
-- latest row of a customer (largest at_ms) is in force. gateway 'stripe' with a Stripe
-- customer (`cus_...`) and payment method (`pm_...`) is charged automatically when an invoice
-- is finalized; 'manual' (bank transfer) gets no request. Never updated or deleted.

CREATE TABLE IF NOT EXISTS customer_payment_profiles (
    customer String,
    gateway String,
    provider_customer String,
    payment_method String,
    actor String,
    at_ms Int64,
    at DateTime
) ENGINE = MergeTree()
ORDER BY (customer, at_ms);
