//! Golden charges: every pricing model in USD, JPY and BHD, at tier boundaries, zero usage,
//! 10^12 tokens and fractional quantities. Every expected amount was computed by hand (the
//! arithmetic is in the comment); a charge is rounded once, half away from zero, to the
//! currency's minor units.

mod common;

use common::{catalog, d, plan, row, usage};
use tally_rater::rating::charge::compute;
use tally_rater::rating::usage::fold;

const GRADUATED_USD: &str = r#"model = "graduated", tiers = [{ up_to = "100", unit_price = "0.02" }, { up_to = "1000", unit_price = "0.015" }, { unit_price = "0.01" }]"#;
const GRADUATED_JPY: &str =
    r#"model = "graduated", tiers = [{ up_to = "500", unit_price = "3" }, { unit_price = "1.5" }]"#;
const GRADUATED_BHD: &str = r#"model = "graduated", tiers = [{ up_to = "10", unit_price = "0.1005" }, { unit_price = "0.05" }]"#;
const VOLUME_USD: &str = r#"model = "volume", tiers = [{ up_to = "100", unit_price = "0.02" }, { up_to = "1000", unit_price = "0.015" }, { unit_price = "0.01" }]"#;

#[test]
fn every_model_in_every_currency_matches_the_hand_computed_amount() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str, i64, &str)] = &[
        // (currency, price, quantity, amount_minor, arithmetic)
        ("USD", r#"model = "per_unit", unit_price = "0.000003""#, "1000000000000", 300_000_000, "10^12 x 0.000003 = 3,000,000.00"),
        ("USD", r#"model = "per_unit", unit_price = "0.000003""#, "1234567", 370, "3.703701 -> 3.70"),
        ("USD", r#"model = "per_unit", unit_price = "0.000003""#, "0", 0, "zero usage"),
        ("USD", r#"model = "per_unit", unit_price = "0.003""#, "0.5", 0, "0.0015 -> 0.00"),
        ("USD", r#"model = "per_unit", unit_price = "0.003""#, "2.5", 1, "0.0075 -> 0.01"),
        ("USD", GRADUATED_USD, "100", 200, "100 x 0.02, the bound is in tier 1"),
        ("USD", GRADUATED_USD, "101", 202, "2 + 0.015 = 2.015 -> 2.02, half away from zero"),
        ("USD", GRADUATED_USD, "1000", 1550, "2 + 900 x 0.015 = 15.50"),
        ("USD", GRADUATED_USD, "1000000000000", 1_000_000_000_550, "15.5 + (10^12 - 1000) x 0.01"),
        ("USD", GRADUATED_USD, "100.5", 201, "2 + 0.5 x 0.015 = 2.0075 -> 2.01"),
        ("USD", VOLUME_USD, "100", 200, "100 x 0.02"),
        ("USD", VOLUME_USD, "101", 152, "101 x 0.015 = 1.515 -> 1.52"),
        ("USD", VOLUME_USD, "1001", 1001, "1001 x 0.01"),
        ("USD", VOLUME_USD, "0", 0, "zero usage"),
        ("USD", VOLUME_USD, "1000000000000", 1_000_000_000_000, "10^12 x 0.01"),
        ("USD", r#"model = "package", package_size = "1000", package_price = "0.50""#, "2500", 150, "3 packages x 0.50"),
        ("USD", r#"model = "package", package_size = "1000", package_price = "0.50""#, "1000", 50, "exactly one package"),
        ("USD", r#"model = "package", package_size = "1000", package_price = "0.50""#, "0", 0, "no package"),
        ("USD", r#"model = "flat", amount = "49.99""#, "123456", 4999, "the fee"),
        ("USD", r#"model = "flat", amount = "49.99""#, "0", 4999, "the fee, even for zero"),
        ("USD", r#"model = "per_unit", unit_price = "0.01", free_units = "1000""#, "1500", 500, "(1500 - 1000) x 0.01"),
        ("USD", r#"model = "per_unit", unit_price = "0.01", free_units = "1000""#, "1000", 0, "all free"),
        ("USD", r#"model = "per_unit", unit_price = "0.01", minimum = "10""#, "0", 1000, "trued up from 0 to 10"),
        ("USD", r#"model = "per_unit", unit_price = "0.01", minimum = "10""#, "500", 1000, "5 trued up to 10"),
        ("USD", r#"model = "per_unit", unit_price = "0.01", minimum = "10""#, "1500", 1500, "15 is above the minimum"),
        ("USD", r#"model = "per_unit", unit_price = "0.01", maximum = "20""#, "5000", 2000, "50 capped at 20"),
        ("USD", r#"model = "graduated", tiers = [{ up_to = "100", unit_price = "1" }, { unit_price = "0.5" }], free_units = "50", maximum = "100""#, "400", 10000, "350 billable: 100 + 125 = 225, capped at 100"),
        ("JPY", r#"model = "per_unit", unit_price = "0.0004""#, "1000000000000", 400_000_000, "10^12 x 0.0004"),
        ("JPY", r#"model = "per_unit", unit_price = "0.0004""#, "1250", 1, "0.5 -> 1, half away from zero"),
        ("JPY", r#"model = "per_unit", unit_price = "0.0004""#, "1249", 0, "0.4996 -> 0"),
        ("JPY", GRADUATED_JPY, "500", 1500, "500 x 3"),
        ("JPY", GRADUATED_JPY, "501", 1502, "1500 + 1.5 -> 1502"),
        ("JPY", r#"model = "volume", tiers = [{ up_to = "500", unit_price = "3" }, { unit_price = "1.5" }]"#, "501", 752, "501 x 1.5 = 751.5 -> 752"),
        ("JPY", r#"model = "package", package_size = "1000", package_price = "100""#, "1001", 200, "2 packages"),
        ("JPY", r#"model = "flat", amount = "980""#, "7", 980, "the fee"),
        ("BHD", r#"model = "per_unit", unit_price = "0.0125""#, "1", 13, "0.0125 -> 0.013"),
        ("BHD", GRADUATED_BHD, "10", 1005, "10 x 0.1005 = 1.005"),
        ("BHD", GRADUATED_BHD, "10.5", 1030, "1.005 + 0.025"),
        ("BHD", r#"model = "volume", tiers = [{ up_to = "10", unit_price = "0.1005" }, { unit_price = "0.05" }]"#, "10.5", 525, "10.5 x 0.05"),
        ("BHD", r#"model = "package", package_size = "0.25", package_price = "1.2345""#, "1.1", 6173, "5 x 1.2345 = 6.1725 -> 6.173"),
        ("BHD", r#"model = "flat", amount = "5.2345""#, "0", 5235, "5.2345 -> 5.235"),
        ("BHD", r#"model = "per_unit", unit_price = "0.001", minimum = "2.5""#, "1000", 2500, "1 trued up to 2.5"),
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
        let lines: rust_decimal::Decimal = charge.tiers.iter().map(|t| t.amount).sum();
        assert_eq!(
            plan(&c).currency.round(lines),
            charge.amount,
            "the lines explain the amount: {why}"
        );
    }
}

#[test]
fn a_price_book_prices_each_model_and_token_kind_at_its_own_rate() {
    let c = catalog(
        "USD",
        r#"model = "dimensional", dimensions = ["model", "kind"], rates = [
            { values = ["gpt-4o", "input"], unit_price = "0.0000025" },
            { values = ["gpt-4o", "output"], unit_price = "0.00001" } ]"#,
    );
    let rows = vec![
        row("acme", "gpt-4o", "output", 0, "400000"),
        row("acme", "gpt-4o", "output", 1, "600000"), // 10^6 x 0.00001 = 10.00
        row("acme", "gpt-4o", "input", 0, "3000001"), // 7.5000025 -> 7.50
        row("acme", "mystery", "input", 0, "5"),      // no rate: unpriced
    ];
    let tally_rater::rating::usage::Folded {
        usages, skipped, ..
    } = fold(&rows, &c);
    assert_eq!(skipped, Default::default());
    let charges: Vec<_> = usages
        .values()
        .filter_map(|u| compute(u, plan(&c)).expect("prices"))
        .collect();
    let by_group: Vec<(&str, i64, u32)> = charges
        .iter()
        .map(|c| (c.group_key.as_str(), c.amount_minor, c.windows))
        .collect();
    assert_eq!(
        by_group,
        vec![
            (r#"{"kind":"input","model":"gpt-4o"}"#, 750, 1),
            (r#"{"kind":"output","model":"gpt-4o"}"#, 1000, 2),
        ]
    );
    assert!(charges.iter().all(|c| c.price_model == "dimensional"));
    assert_ne!(charges[0].charge_id, charges[1].charge_id);
    assert_eq!(charges[1].unit_price, Some(d("0.00001")));
}

#[test]
fn a_price_book_with_a_default_rate_prices_every_group() {
    let c = catalog(
        "JPY",
        r#"model = "dimensional", dimensions = ["model"], default_unit_price = "0.001",
           rates = [{ values = ["big"], unit_price = "0.01" }]"#,
    );
    let rows = vec![
        row("acme", "big", "input", 0, "150"),    // 1.5 -> 2
        row("acme", "small", "input", 0, "499"),  // 0.499 -> 0
        row("acme", "small", "output", 0, "500"), // 0.5 -> 1
    ];
    let tally_rater::rating::usage::Folded { usages, .. } = fold(&rows, &c);
    let minor: Vec<i64> = usages
        .values()
        .map(|u| {
            compute(u, plan(&c))
                .expect("prices")
                .expect("priced")
                .amount_minor
        })
        .collect();
    assert_eq!(minor, vec![2, 0, 1]);
}

#[test]
fn prices_per_meter_fold_every_group_into_one_charge() {
    let c = catalog("USD", r#"model = "per_unit", unit_price = "0.01""#);
    let rows = vec![
        row("acme", "gpt-4o", "output", 0, "100"),
        row("acme", "gpt-4o", "input", 0, "50"),
    ];
    let tally_rater::rating::usage::Folded { usages, .. } = fold(&rows, &c);
    assert_eq!(usages.len(), 1);
    let u = usages.values().next().expect("one");
    assert_eq!((u.group_key.as_str(), u.quantity), ("{}", d("150")));
}

#[test]
fn coupons_discount_charges_for_their_duration_and_record_the_amount_before() {
    let c = common::file_catalog(
        r#"
        [[plans]]
        id = "p"
        version = 1
        currency = "JPY"
        effective_from = "2026-01-01T00:00:00Z"
        prices = [{ model = "per_unit", meter = "tokens", unit_price = "1" }]
        [[subscriptions]]
        customer = "acme"
        plan = "p"
        coupons = [
          { id = "WELCOME15", percent_off = "15", starts = "2026-01-20T00:00:00Z", duration = "repeating", periods = 2 },
          { id = "LAUNCH", amount_off = "100", meter = "tokens", starts = "2026-01-01T00:00:00Z", duration = "once" },
        ]
        "#,
    )
    .expect("valid");
    let (jan, feb, mar) = (0, 31 * 1440, 59 * 1440);
    let rows: Vec<_> = [jan, feb, mar]
        .map(|minute| row("acme", "m", "input", minute, "1001"))
        .into();
    let tally_rater::rating::usage::Folded { usages, .. } = fold(&rows, &c);
    let sub = c
        .subscription(&tally_domain::CustomerId::new("acme").expect("id"))
        .expect("subscribed");
    let got: Vec<(i64, i64)> = usages
        .values()
        .map(|u| {
            let terms = c.terms(&sub, plan(&c), &u.period, &u.meter);
            let ch = tally_rater::rating::charge::compute_with(u, plan(&c), &terms)
                .expect("prices")
                .expect("priced");
            (ch.amount_before_discounts_minor, ch.amount_minor)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1001, 751),  // 1001 - 15% = 850.85, - 100 = 750.85 -> 751
            (1001, 851),  // 850.85 -> 851
            (1001, 1001), // both coupons are over
        ]
    );
}

/// A catalog with taxes: plan `p` in USD at 0.01 per token; `acme` in region DE (19%, 16%
/// from July 2026), `exempt-co` in DE but exempt, `nowhere` without a region.
fn taxed_catalog() -> Result<tally_rater::Catalog, tally_platform::ConfigError> {
    common::file_catalog(
        r#"
        [[plans]]
        id = "p"
        version = 1
        currency = "USD"
        effective_from = "2026-01-01T00:00:00Z"
        prices = [{ model = "per_unit", meter = "tokens", unit_price = "0.01" }]
        [[subscriptions]]
        customer = "acme"
        plan = "p"
        tax_region = "DE"
        coupons = [{ id = "HALF", percent_off = "50", starts = "2026-07-01T00:00:00Z", duration = "once" }]
        [[subscriptions]]
        customer = "exempt-co"
        plan = "p"
        tax_region = "DE"
        tax_exempt = true
        [[subscriptions]]
        customer = "nowhere"
        plan = "p"
        [[tax_rates]]
        region = "DE"
        rate_percent = "19"
        effective_from = "2020-01-01T00:00:00Z"
        [[tax_rates]]
        region = "DE"
        rate_percent = "16"
        effective_from = "2026-07-01T00:00:00Z"
        "#,
    )
}

#[test]
fn tax_is_per_line_by_region_and_date_on_the_discounted_amount() {
    let c = taxed_catalog().expect("valid");
    let july = 181 * 1440; // 2026-07-01, in minutes from January 1st
    let rows = vec![
        row("acme", "m", "input", 0, "999"), // 9.99, 19% = 1.8981 -> 1.90
        row("acme", "m", "input", july, "999"), // 9.99 - 50% = 4.995 -> 5.00, 16% = 0.80
        row("exempt-co", "m", "input", 0, "999"), // exempt: 0
        row("nowhere", "m", "input", 0, "999"), // no region: no tax
    ];
    let tally_rater::rating::usage::Folded { usages, .. } = fold(&rows, &c);
    let got: Vec<(String, i64, i64, i64, String)> = usages
        .values()
        .map(|u| {
            let sub = c.subscription(&u.customer).expect("subscribed");
            let terms = c.terms(&sub, plan(&c), &u.period, &u.meter);
            let ch = tally_rater::rating::charge::compute_with(u, plan(&c), &terms)
                .expect("prices")
                .expect("priced");
            assert_eq!(ch.amount_with_tax_minor, ch.amount_minor + ch.tax_minor);
            (
                ch.customer,
                ch.amount_minor,
                ch.tax_minor,
                ch.amount_with_tax_minor,
                ch.tax_code,
            )
        })
        .collect();
    let s = |x: &str| x.to_owned();
    assert_eq!(
        got,
        vec![
            (s("acme"), 999, 190, 1189, s("standard")),
            (s("acme"), 500, 80, 580, s("standard")),
            (s("exempt-co"), 999, 0, 999, s("standard:exempt")),
            (s("nowhere"), 999, 0, 999, s("")),
        ]
    );
}

#[test]
fn with_the_tax_feature_off_no_charge_carries_tax() {
    let c = taxed_catalog().expect("valid").without_tax();
    let rows = vec![
        row("acme", "m", "input", 0, "999"),
        row("exempt-co", "m", "input", 0, "999"),
    ];
    let tally_rater::rating::usage::Folded { usages, .. } = fold(&rows, &c);
    assert_eq!(usages.len(), 2);
    for u in usages.values() {
        let sub = c.subscription(&u.customer).expect("subscribed");
        let terms = c.terms(&sub, plan(&c), &u.period, &u.meter);
        let ch = tally_rater::rating::charge::compute_with(u, plan(&c), &terms)
            .expect("prices")
            .expect("priced");
        assert_eq!(
            (
                ch.amount_minor,
                ch.tax_minor,
                ch.amount_with_tax_minor,
                ch.tax_code.as_str()
            ),
            (999, 0, 999, ""),
            "{}",
            ch.customer
        );
    }
}

#[test]
fn a_plan_is_billed_in_another_currency_at_the_dated_rate_then_rounded_once() {
    #[derive(serde::Deserialize)]
    struct F {
        plans: Vec<tally_rater::config::PlanSpec>,
        subscriptions: Vec<tally_rater::config::SubscriptionSpec>,
        fx_rates: Vec<tally_rater::catalog::fx::FxRateSpec>,
    }
    let f: F = toml::from_str(
        r#"
        [[plans]]
        id = "p"
        version = 1
        currency = "USD"
        effective_from = "2026-01-01T00:00:00Z"
        prices = [{ model = "per_unit", meter = "tokens", unit_price = "0.000003" }]
        [[subscriptions]]
        customer = "tokyo-co"
        plan = "p"
        currency = "JPY"
        [[subscriptions]]
        customer = "manama-co"
        plan = "p"
        currency = "BHD"
        [[fx_rates]]
        from = "USD"
        to = "JPY"
        rate = "156.37"
        effective_from = "2026-01-01T00:00:00Z"
        [[fx_rates]]
        from = "USD"
        to = "BHD"
        rate = "0.376"
        effective_from = "2026-02-01T00:00:00Z"
        "#,
    )
    .expect("TOML");
    let c = tally_rater::Catalog::new(
        f.plans,
        f.subscriptions,
        &Default::default(),
        &common::meters(),
    )
    .expect("valid")
    .with_fx(tally_rater::catalog::fx::FxTable::new(f.fx_rates).expect("rates"))
    .expect("every pair has rates");
    let feb = 31 * 1440;
    let rows = vec![
        row("tokyo-co", "m", "input", 0, "1234567"), // 3.703701 USD x 156.37 = 579.1477... -> 579 JPY
        row("manama-co", "m", "input", 0, "1234567"), // no USD->BHD rate in January: unpriced
        row("manama-co", "m", "input", feb, "1234567"), // 3.703701 x 0.376 = 1.392591576 -> 1.393 BHD
    ];
    let tally_rater::rating::usage::Folded { usages, .. } = fold(&rows, &c);
    let got: Vec<Option<(&str, &str, i64)>> = usages
        .values()
        .map(|u| {
            let sub = c
                .subscription_at(&u.customer, u.segment_from_ms)
                .expect("subscribed");
            let terms = c.terms(&sub, plan(&c), &u.period, &u.meter);
            tally_rater::rating::charge::compute_with(u, plan(&c), &terms)
                .expect("prices")
                .map(|ch| (ch.currency, ch.price_currency, ch.amount_minor))
        })
        .collect();
    assert_eq!(
        got,
        vec![None, Some(("BHD", "USD", 1393)), Some(("JPY", "USD", 579))]
    );
    // a billing currency no rate converts to is refused at start, naming the subscription
    let mut sub = tally_rater::config::SubscriptionSpec {
        customer: "paris-co".into(),
        plan: "p".into(),
        billing_anchor_day: 1,
        coupons: vec![],
        tax_region: None,
        tax_exempt: false,
        effective_from: None,
        currency: Some("EUR".into()),
        time_zone: None,
        ends_at: None,
        state: Default::default(),
        trial: None,
        interval: None,
        billing_anchor_month: None,
        usage_interval: None,
        line: None,
        plan_version: None,
    };
    let plans = || {
        toml::from_str::<F>(
            "subscriptions = []\nfx_rates = []\n[[plans]]\nid = \"p\"\nversion = 1\ncurrency = \"USD\"\n\
             effective_from = \"2026-01-01T00:00:00Z\"\nprices = []\n",
        )
        .expect("TOML")
        .plans
    };
    let err = tally_rater::Catalog::new(
        plans(),
        vec![sub.clone()],
        &Default::default(),
        &common::meters(),
    )
    .expect("valid")
    .with_fx(tally_rater::catalog::fx::FxTable::default())
    .expect_err("no USD->EUR rate")
    .to_string();
    assert!(err.contains("subscriptions.paris-co.currency"), "{err}");
    sub.currency = Some("EURO".into());
    let err = tally_rater::Catalog::new(plans(), vec![sub], &Default::default(), &common::meters())
        .expect_err("unknown currency")
        .to_string();
    assert!(err.contains("subscriptions[0].currency"), "{err}");
}
