//! Subscriptions over time: a plan change inside a billing period splits that period's
//! charges at the instant of the change (each part priced by its own plan, tiers applying
//! per part, flat fees and minimums prorated: tests/proration.rs); whole periods keep their
//! usual charge ids.

mod common;

use common::{meters, row, JAN_2026_MS};
use tally_rater::config::{PlanSpec, SubscriptionSpec};
use tally_rater::rating::charge::{charge_id, compute_with};
use tally_rater::rating::usage::fold;
use tally_rater::{Catalog, RaterConfig};

fn catalog(subscriptions: &str) -> Result<Catalog, tally_platform::ConfigError> {
    #[derive(serde::Deserialize)]
    struct F {
        plans: Vec<PlanSpec>,
        subscriptions: Vec<SubscriptionSpec>,
    }
    let f: F = toml::from_str(&format!(
        r#"
        [[plans]]
        id = "basic"
        version = 1
        currency = "USD"
        effective_from = "2026-01-01T00:00:00Z"
        prices = [{{ model = "per_unit", meter = "tokens", unit_price = "0.01" }}]
        [[plans]]
        id = "pro"
        version = 1
        currency = "USD"
        effective_from = "2026-01-01T00:00:00Z"
        prices = [{{ model = "per_unit", meter = "tokens", unit_price = "0.005", minimum = "1" }}]
        {subscriptions}
        "#
    ))
    .expect("TOML");
    let rater = RaterConfig {
        default_plan: Some("basic".into()),
        ..Default::default()
    };
    Catalog::new(f.plans, f.subscriptions, &rater, &meters())
}

/// (plan, amount_minor, charge_id) per charge, in fold order.
fn rate(c: &Catalog) -> Vec<(String, i64, String)> {
    let jan_20 = 19 * 1440;
    let feb_1 = 31 * 1440;
    let rows = vec![
        row("acme", "m", "input", 0, "1000"),
        row("acme", "m", "input", jan_20, "1000"),
        row("acme", "m", "input", feb_1, "1000"),
    ];
    let tally_rater::rating::usage::Folded {
        usages, skipped, ..
    } = fold(&rows, c);
    assert_eq!(skipped, Default::default());
    usages
        .values()
        .map(|u| {
            let sub = c
                .subscription_at(&u.customer, u.segment_from_ms)
                .expect("subscribed");
            let plan = c.plan_at(&sub.plan, u.segment_from_ms).expect("a version");
            let terms = c.terms(&sub, plan, &u.period, &u.meter);
            let ch = compute_with(u, plan, &terms)
                .expect("prices")
                .expect("priced");
            (ch.plan_id, ch.amount_minor, ch.charge_id)
        })
        .collect()
}

#[test]
fn a_plan_change_mid_period_splits_the_period_by_date() {
    let c = catalog(
        r#"
        [[subscriptions]]
        customer = "acme"
        plan = "basic"
        [[subscriptions]]
        customer = "acme"
        plan = "pro"
        effective_from = "2026-01-16T00:00:00Z"
        "#,
    )
    .expect("valid");
    let got = rate(&c);
    let amounts: Vec<(&str, i64)> = got.iter().map(|(p, a, _)| (p.as_str(), *a)).collect();
    assert_eq!(
        amounts,
        vec![
            ("basic", 1000), // January 1 to 15: 1000 x 0.01
            ("pro", 500),    // January 16 to 31: 1000 x 0.005 (the minimum 1 is met)
            ("pro", 500),    // February, whole
        ]
    );
    // a whole period keeps the id it would have without any change
    let feb_ms = JAN_2026_MS + 31 * 86_400_000;
    assert_eq!(
        got[2].2,
        charge_id("acme", feb_ms, "tokens", "{}", "pro", 1)
    );
    assert_ne!(got[0].2, got[1].2);
}

#[test]
fn before_its_first_subscription_a_customer_is_on_the_default_plan() {
    let c = catalog(
        r#"
        [[subscriptions]]
        customer = "acme"
        plan = "pro"
        effective_from = "2026-01-16T00:00:00Z"
        "#,
    )
    .expect("valid");
    let plans: Vec<String> = rate(&c).into_iter().map(|(p, _, _)| p).collect();
    assert_eq!(plans, vec!["basic", "pro", "pro"]);
}

#[test]
fn two_subscriptions_from_the_same_instant_are_refused() {
    let err = catalog(
        r#"
        [[subscriptions]]
        customer = "acme"
        plan = "basic"
        effective_from = "2026-01-16T00:00:00Z"
        [[subscriptions]]
        customer = "acme"
        plan = "pro"
        effective_from = "2026-01-16T00:00:00Z"
        "#,
    )
    .expect_err("refused")
    .to_string();
    assert!(err.contains("subscriptions[1].effective_from"), "{err}");
}

#[test]
fn periods_follow_the_subscription_time_zone() {
    let c = catalog(
        r#"
        [[subscriptions]]
        customer = "acme"
        plan = "basic"
        time_zone = "Asia/Tokyo"
        "#,
    )
    .expect("valid");
    // 2026-01-31T15:00Z is February 1st, 00:00 in Tokyo: a new period
    let jan_31_15h = 30 * 1440 + 15 * 60;
    let rows = vec![
        row("acme", "m", "input", jan_31_15h - 1, "1"),
        row("acme", "m", "input", jan_31_15h, "1"),
    ];
    let tally_rater::rating::usage::Folded { usages, .. } = fold(&rows, &c);
    let starts: Vec<i64> = usages.values().map(|u| u.period.start_ms).collect();
    let tokyo_feb_1 = JAN_2026_MS + 31 * 86_400_000 - 9 * 3_600_000;
    assert_eq!(starts, vec![JAN_2026_MS - 9 * 3_600_000, tokyo_feb_1]);
    let err = catalog(
        r#"
        [[subscriptions]]
        customer = "acme"
        plan = "basic"
        time_zone = "Mars/Olympus"
        "#,
    )
    .expect_err("unknown zone")
    .to_string();
    assert!(err.contains("subscriptions[0].time_zone"), "{err}");
}
