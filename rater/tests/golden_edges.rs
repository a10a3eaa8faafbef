//! Golden charges at the edges, completing `golden.rs` so that every model is shown in each of
//! JPY (0 decimals), USD (2) and BHD (3) at its boundary, at zero usage, at 10^12 units and at
//! a fractional quantity; and coupons of each duration in USD and BHD. Every expected amount
//! was computed by hand (the arithmetic is in the comment); a charge is rounded once, half
//! away from zero, to the currency's minor units.

mod common;

use common::{catalog, d, file_catalog, plan, row, usage};
use tally_rater::rating::charge::{compute, compute_with};
use tally_rater::rating::usage::fold;

const TERA: &str = "1000000000000";

#[test]
fn every_model_at_its_edges_in_each_currency() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str, i64, &str)] = &[
        // (currency, price, quantity, amount_minor, arithmetic)
        // per unit
        ("JPY", r#"model = "per_unit", unit_price = "0.0004""#, "0", 0, "zero usage"),
        ("JPY", r#"model = "per_unit", unit_price = "0.0004""#, "1250.5", 1, "0.5002 -> 1"),
        ("BHD", r#"model = "per_unit", unit_price = "0.0125""#, "0", 0, "zero usage"),
        ("BHD", r#"model = "per_unit", unit_price = "0.0125""#, "0.04", 1, "0.0005 -> 0.001, half away from zero"),
        ("BHD", r#"model = "per_unit", unit_price = "0.0125""#, TERA, 12_500_000_000_000, "10^12 x 0.0125 = 12,500,000,000.000"),
        // graduated
        ("JPY", r#"model = "graduated", tiers = [{ up_to = "500", unit_price = "3" }, { unit_price = "1.5" }]"#, "0", 0, "zero usage"),
        ("JPY", r#"model = "graduated", tiers = [{ up_to = "500", unit_price = "3" }, { unit_price = "1.5" }]"#, "500.4", 1501, "1500 + 0.4 x 1.5 = 1500.6 -> 1501"),
        ("JPY", r#"model = "graduated", tiers = [{ up_to = "500", unit_price = "3" }, { unit_price = "1.5" }]"#, TERA, 1_500_000_000_750, "1500 + (10^12 - 500) x 1.5"),
        ("BHD", r#"model = "graduated", tiers = [{ up_to = "10", unit_price = "0.1005" }, { unit_price = "0.05" }]"#, "0", 0, "zero usage"),
        ("BHD", r#"model = "graduated", tiers = [{ up_to = "10", unit_price = "0.1005" }, { unit_price = "0.05" }]"#, "10.001", 1005, "1.005 + 0.00005 = 1.00505 -> 1.005"),
        ("BHD", r#"model = "graduated", tiers = [{ up_to = "10", unit_price = "0.1005" }, { unit_price = "0.05" }]"#, TERA, 50_000_000_000_505, "1.005 + (10^12 - 10) x 0.05 = 50,000,000,000.505"),
        ("USD", r#"model = "graduated", tiers = [{ up_to = "100", unit_price = "0.02" }, { unit_price = "0.01" }]"#, "0", 0, "zero usage"),
        // volume
        ("USD", r#"model = "volume", tiers = [{ up_to = "100", unit_price = "0.02" }, { unit_price = "0.015" }]"#, "100.5", 151, "100.5 x 0.015 = 1.5075 -> 1.51"),
        ("JPY", r#"model = "volume", tiers = [{ up_to = "500", unit_price = "3" }, { unit_price = "1.5" }]"#, "500", 1500, "the bound is in tier 1: 500 x 3"),
        ("JPY", r#"model = "volume", tiers = [{ up_to = "500", unit_price = "3" }, { unit_price = "1.5" }]"#, "0", 0, "zero usage"),
        ("JPY", r#"model = "volume", tiers = [{ up_to = "500", unit_price = "3" }, { unit_price = "1.5" }]"#, "500.5", 751, "500.5 x 1.5 = 750.75 -> 751"),
        ("JPY", r#"model = "volume", tiers = [{ up_to = "500", unit_price = "3" }, { unit_price = "1.5" }]"#, TERA, 1_500_000_000_000, "10^12 x 1.5"),
        ("BHD", r#"model = "volume", tiers = [{ up_to = "10", unit_price = "0.1005" }, { unit_price = "0.05" }]"#, "10", 1005, "the bound is in tier 1: 10 x 0.1005"),
        ("BHD", r#"model = "volume", tiers = [{ up_to = "10", unit_price = "0.1005" }, { unit_price = "0.05" }]"#, "0", 0, "zero usage"),
        ("BHD", r#"model = "volume", tiers = [{ up_to = "10", unit_price = "0.1005" }, { unit_price = "0.05" }]"#, TERA, 50_000_000_000_000, "10^12 x 0.05"),
        // package
        ("USD", r#"model = "package", package_size = "1000000", package_price = "0.75""#, TERA, 75_000_000, "10^6 packages x 0.75"),
        ("USD", r#"model = "package", package_size = "1000000", package_price = "0.75""#, "1000000000000.5", 75_000_075, "10^6 + 1 packages x 0.75"),
        ("JPY", r#"model = "package", package_size = "1000", package_price = "100""#, "0", 0, "no package"),
        ("JPY", r#"model = "package", package_size = "1000", package_price = "100""#, "1000", 100, "exactly one package"),
        ("JPY", r#"model = "package", package_size = "1000", package_price = "100""#, "0.5", 100, "a started package"),
        ("JPY", r#"model = "package", package_size = "1000", package_price = "100""#, TERA, 100_000_000_000, "10^9 packages x 100"),
        ("BHD", r#"model = "package", package_size = "0.25", package_price = "1.2345""#, "0", 0, "no package"),
        ("BHD", r#"model = "package", package_size = "0.25", package_price = "1.2345""#, "0.25", 1235, "exactly one package: 1.2345 -> 1.235"),
        ("BHD", r#"model = "package", package_size = "0.25", package_price = "1.2345""#, TERA, 4_938_000_000_000_000, "4 x 10^12 packages x 1.2345"),
        // flat
        ("USD", r#"model = "flat", amount = "49.99""#, TERA, 4999, "the fee, whatever the usage"),
        ("JPY", r#"model = "flat", amount = "980""#, "0", 980, "the fee, even for zero"),
        ("JPY", r#"model = "flat", amount = "980""#, "0.5", 980, "the fee"),
        ("BHD", r#"model = "flat", amount = "5.2345""#, TERA, 5235, "5.2345 -> 5.235"),
        // free allowance ("up to and including": the allowance itself is free)
        ("USD", r#"model = "per_unit", unit_price = "0.01", free_units = "1000""#, TERA, 999_999_999_000, "(10^12 - 1000) x 0.01"),
        ("USD", r#"model = "per_unit", unit_price = "0.01", free_units = "1000""#, "1000.5", 1, "0.5 x 0.01 = 0.005 -> 0.01"),
        ("JPY", r#"model = "per_unit", unit_price = "0.5", free_units = "1000""#, "1000", 0, "all free"),
        ("JPY", r#"model = "per_unit", unit_price = "0.5", free_units = "1000""#, "1001", 1, "0.5 -> 1"),
        ("JPY", r#"model = "per_unit", unit_price = "0.5", free_units = "1000""#, "0", 0, "zero usage"),
        ("JPY", r#"model = "per_unit", unit_price = "0.5", free_units = "1000""#, TERA, 499_999_999_500, "(10^12 - 1000) x 0.5"),
        ("BHD", r#"model = "per_unit", unit_price = "0.0015", free_units = "0.5""#, "0.5", 0, "all free"),
        ("BHD", r#"model = "per_unit", unit_price = "0.0015", free_units = "0.5""#, "1.75", 2, "1.25 x 0.0015 = 0.001875 -> 0.002"),
        ("BHD", r#"model = "per_unit", unit_price = "0.0015", free_units = "0.5""#, TERA, 1_499_999_999_999, "(10^12 - 0.5) x 0.0015 = 1,499,999,999.99925"),
        // minimum (true-up)
        ("JPY", r#"model = "per_unit", unit_price = "0.3", minimum = "1000""#, "0", 1000, "trued up from 0"),
        ("JPY", r#"model = "per_unit", unit_price = "0.3", minimum = "1000""#, "3333", 1000, "999.9 trued up to 1000"),
        ("JPY", r#"model = "per_unit", unit_price = "0.3", minimum = "1000""#, "3335", 1001, "1000.5 -> 1001, above the minimum"),
        ("USD", r#"model = "per_unit", unit_price = "0.01", minimum = "10""#, "1000", 1000, "exactly the minimum: no true-up"),
        ("BHD", r#"model = "per_unit", unit_price = "0.001", minimum = "2.5""#, TERA, 1_000_000_000_000, "10^9 is above the minimum"),
        // maximum (cap)
        ("JPY", r#"model = "per_unit", unit_price = "2", maximum = "5000""#, "2500", 5000, "exactly the cap"),
        ("JPY", r#"model = "per_unit", unit_price = "2", maximum = "5000""#, "2501", 5000, "5002 capped"),
        ("JPY", r#"model = "per_unit", unit_price = "2", maximum = "5000""#, TERA, 5000, "2 x 10^12 capped"),
        ("BHD", r#"model = "per_unit", unit_price = "0.0005", maximum = "1.2345""#, "0", 0, "zero usage"),
        ("BHD", r#"model = "per_unit", unit_price = "0.0005", maximum = "1.2345""#, TERA, 1235, "capped at 1.2345, rounded once: 1.235"),
        ("USD", r#"model = "per_unit", unit_price = "0.01", maximum = "20""#, "2000.5", 2000, "20.005 capped at 20"),
    ];
    for (currency, price, qty, minor, why) in cases {
        let c = catalog(currency, price);
        let charge = compute(&usage(d(qty)), plan(&c))
            .expect("prices")
            .expect("the meter is priced");
        assert_eq!(
            charge.amount_minor, *minor,
            "{currency} {price} x {qty}: {why}"
        );
        assert_eq!(charge.currency, *currency);
        assert_eq!(charge.quantity, d(qty), "{why}");
        let lines: rust_decimal::Decimal = charge.tiers.iter().map(|t| t.amount).sum();
        assert_eq!(
            plan(&c).currency.round(lines),
            charge.amount,
            "the lines explain the amount: {why}"
        );
    }
}

#[test]
fn a_price_book_at_its_edges_in_bhd_and_jpy() {
    let bhd = catalog(
        "BHD",
        r#"model = "dimensional", dimensions = ["model", "kind"], default_unit_price = "0.000001",
           rates = [{ values = ["gpt-4o", "input"], unit_price = "0.0000025" }]"#,
    );
    let rows = vec![
        row("acme", "gpt-4o", "input", 0, TERA), // 10^12 x 0.0000025 = 2,500,000.000
        row("acme", "gpt-4o", "output", 0, "2500.5"), // default: 0.0025005 -> 0.003
        row("acme", "small", "output", 0, "1500"), // default: 0.0015 -> 0.002
        row("acme", "small", "input", 0, "0"),   // zero usage: 0
    ];
    let tally_rater::rating::usage::Folded { usages, .. } = fold(&rows, &bhd);
    let got: Vec<(String, i64)> = usages
        .values()
        .map(|u| {
            let ch = compute(u, plan(&bhd)).expect("prices").expect("priced");
            (ch.group_key, ch.amount_minor)
        })
        .collect();
    let s = |x: &str| x.to_owned();
    assert_eq!(
        got,
        vec![
            (s(r#"{"kind":"input","model":"gpt-4o"}"#), 2_500_000_000),
            (s(r#"{"kind":"input","model":"small"}"#), 0),
            (s(r#"{"kind":"output","model":"gpt-4o"}"#), 3),
            (s(r#"{"kind":"output","model":"small"}"#), 2),
        ]
    );
    let jpy = catalog(
        "JPY",
        r#"model = "dimensional", dimensions = ["model"], rates = [{ values = ["big"], unit_price = "0.0004" }]"#,
    );
    let tally_rater::rating::usage::Folded { usages, .. } =
        fold(&[row("acme", "big", "input", 0, TERA)], &jpy);
    let ch = compute(usages.values().next().expect("one"), plan(&jpy))
        .expect("prices")
        .expect("priced");
    assert_eq!(ch.amount_minor, 400_000_000); // 10^12 x 0.0004
}

#[test]
fn coupons_of_every_duration_in_usd_and_bhd() {
    let c = file_catalog(
        r#"
        [[plans]]
        id = "usd"
        version = 1
        currency = "USD"
        effective_from = "2026-01-01T00:00:00Z"
        prices = [{ model = "per_unit", meter = "tokens", unit_price = "0.01" }]
        [[plans]]
        id = "bhd"
        version = 1
        currency = "BHD"
        effective_from = "2026-01-01T00:00:00Z"
        prices = [{ model = "per_unit", meter = "tokens", unit_price = "0.1005" }]
        [[subscriptions]]
        customer = "acme"
        plan = "usd"
        coupons = [{ id = "LOYAL", percent_off = "12.5", starts = "2026-01-01T00:00:00Z", duration = "forever" }]
        [[subscriptions]]
        customer = "manama-co"
        plan = "bhd"
        coupons = [
          { id = "HELLO", amount_off = "0.3335", meter = "tokens", starts = "2026-01-01T00:00:00Z", duration = "once" },
          { id = "TWO", percent_off = "10", starts = "2026-02-01T00:00:00Z", duration = "repeating", periods = 1 },
        ]
        "#,
    )
    .expect("valid");
    let (feb, mar) = (31 * 1440, 59 * 1440);
    let mut rows = vec![];
    for minute in [0, feb, mar] {
        rows.push(row("acme", "m", "input", minute, "1000")); // 10.00 USD
        rows.push(row("manama-co", "m", "input", minute, "10")); // 1.005 BHD
    }
    let tally_rater::rating::usage::Folded { usages, .. } = fold(&rows, &c);
    let got: Vec<(&str, i64, i64)> = usages
        .values()
        .map(|u| {
            let sub = c.subscription(&u.customer).expect("subscribed");
            let p = c.plan_at(&sub.plan, u.period.start_ms).expect("plan");
            let terms = c.terms(&sub, p, &u.period, &u.meter);
            let ch = compute_with(u, p, &terms).expect("prices").expect("priced");
            (
                ch.currency,
                ch.amount_before_discounts_minor,
                ch.amount_minor,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("USD", 1000, 875),  // January: 10.00 - 12.5% = 8.75
            ("USD", 1000, 875),  // February: forever
            ("USD", 1000, 875),  // March: forever
            ("BHD", 1005, 672),  // January: 1.005 - 0.3335 = 0.6715 -> 0.672
            ("BHD", 1005, 905),  // February: 1.005 - 10% = 0.9045 -> 0.905
            ("BHD", 1005, 1005), // March: both are over
        ]
    );
}
