//! Building catalogs and usage for the rater's pure tests.
#![allow(dead_code)]

pub mod http;

use rust_decimal::Decimal;
use tally_domain::meter::{validate_meters, MeterSpec};
use tally_domain::{Aggregation, CustomerId, Meter, MeterSlug, Period};
use tally_rater::catalog::Plan;
use tally_rater::config::{PlanSpec, SubscriptionSpec};
use tally_rater::rating::charge::MeterUsage;
use tally_rater::rating::usage::UsageRow;
use tally_rater::{Catalog, RaterConfig};

pub const JAN_2026_MS: i64 = 1_767_225_600_000;

pub fn d(s: &str) -> Decimal {
    s.parse().expect("a decimal literal")
}

/// `tokens` (SUM, by model and kind) and `calls` (COUNT), as declared in a file.
pub fn meter_specs() -> Vec<MeterSpec> {
    serde_json::from_str(
        r#"[{"slug":"tokens","event_type":"t","aggregation":"SUM","value_property":"$.n",
             "group_by":{"model":"$.model","kind":"$.kind"}},
            {"slug":"calls","event_type":"c","aggregation":"COUNT"}]"#,
    )
    .expect("meters")
}

/// [`meter_specs`], validated.
pub fn meters() -> Vec<Meter> {
    validate_meters(meter_specs()).expect("valid meters")
}

/// A catalog whose only plan, `p` version 1 in `currency`, prices `tokens` with `price`
/// (the inside of a TOML inline table, without the meter); every customer is on it.
pub fn catalog(currency: &str, price: &str) -> Catalog {
    #[derive(serde::Deserialize)]
    struct F {
        plans: Vec<PlanSpec>,
        #[serde(default)]
        subscriptions: Vec<SubscriptionSpec>,
    }
    let text = format!(
        "[[plans]]\nid = \"p\"\nversion = 1\ncurrency = \"{currency}\"\n\
         effective_from = \"2026-01-01T00:00:00Z\"\nprices = [{{ meter = \"tokens\", {price} }}]\n"
    );
    let f: F = toml::from_str(&text).expect("plan TOML");
    let rater = RaterConfig {
        default_plan: Some("p".into()),
        ..Default::default()
    };
    Catalog::new(f.plans, f.subscriptions, &rater, &meters()).expect("valid catalog")
}

pub fn plan(c: &Catalog) -> &Plan {
    c.plan_at("p", JAN_2026_MS).expect("plan p")
}

/// January 2026 usage of `tokens` by `acme`, all groups together.
pub fn usage(quantity: Decimal) -> MeterUsage {
    MeterUsage {
        customer: CustomerId::new("acme").expect("id"),
        period: Period {
            start_ms: JAN_2026_MS,
            end_ms: JAN_2026_MS + 31 * 86_400_000,
        },
        meter: MeterSlug::new("tokens").expect("slug"),
        aggregation: Aggregation::Sum,
        group_key: "{}".into(),
        group_names: vec![],
        group_values: vec![],
        segment_from_ms: JAN_2026_MS,
        segment_to_ms: JAN_2026_MS + 31 * 86_400_000,
        quantity,
        windows: 1,
        first_window_ms: JAN_2026_MS,
        last_window_end_ms: JAN_2026_MS + 60_000,
    }
}

/// One committed window of `tokens` for `customer`, `minute` minutes into January 2026.
pub fn row(customer: &str, model: &str, kind: &str, minute: u32, quantity: &str) -> UsageRow {
    let start = (JAN_2026_MS / 1000) as u32 + minute * 60;
    let units = tally_platform::usage::Units(
        tally_platform::store::dec9::to_units(d(quantity)).expect("at most 9 decimal places"),
    );
    UsageRow {
        customer: customer.into(),
        agent: String::new(),
        meter: "tokens".into(),
        aggregation: "SUM".into(),
        group_key: format!(r#"{{"kind":"{kind}","model":"{model}"}}"#),
        group_names: vec!["kind".into(), "model".into()],
        group_values: vec![kind.into(), model.into()],
        start,
        end: start + 60,
        events: 1,
        sum: units,
        min: units,
        max: units,
        latest: units,
        latest_time_ms: i64::from(start) * 1000,
        latest_event_id: String::new(),
        unique_values: vec![],
    }
}

/// The usage of one committed window, folded as a rating pass folds it.
pub fn fold_one(c: &Catalog, r: UsageRow) -> MeterUsage {
    let folded = tally_rater::rating::usage::fold(&[r], c);
    folded
        .usages
        .into_values()
        .next()
        .expect("the window is rated")
}

/// The catalog of a file's `[[plans]]`, `[[subscriptions]]`, `[[tax_rates]]` and
/// `[[fx_rates]]` (each optional), validated against [`meters`] with no default plan.
pub fn file_catalog(text: &str) -> Result<Catalog, tally_platform::ConfigError> {
    #[derive(serde::Deserialize)]
    struct F {
        #[serde(default)]
        plans: Vec<PlanSpec>,
        #[serde(default)]
        subscriptions: Vec<SubscriptionSpec>,
        #[serde(default)]
        tax_rates: Vec<tally_rater::catalog::tax::TaxRateSpec>,
        #[serde(default)]
        fx_rates: Vec<tally_rater::catalog::fx::FxRateSpec>,
    }
    let f: F = toml::from_str(text).expect("catalog TOML");
    Catalog::new(f.plans, f.subscriptions, &RaterConfig::default(), &meters())?
        .with_taxes(tally_rater::catalog::tax::TaxTable::new(f.tax_rates)?)?
        .with_fx(tally_rater::catalog::fx::FxTable::new(f.fx_rates)?)
}

/// One committed window of `tokens` (SUM, by model and kind) for `customer` at `at` (secs).
pub async fn tokens(db: &clickhouse::Client, customer: &str, at: i64, value: &str, batch: &str) {
    db.query(&format!(
        "INSERT INTO usage_meter_readings (customer, agent, event_id, meter, aggregation, \
         window_start, window_secs, time_ms, group_names, group_values, group_key, value, \
         unique_value, stream_seq, batch_id, part, inserted_at) VALUES \
         ('{customer}', 'bot', 'e-{batch}', 'tokens', 'SUM', toDateTime({at}), 60, {ms}, \
          ['kind', 'model'], ['input', 'gpt-4o'], '{{\"kind\":\"input\",\"model\":\"gpt-4o\"}}', \
          toDecimal128('{value}', 9), '', 0, '{batch}', 0, now())",
        ms = at * 1000,
    ))
    .execute()
    .await
    .expect("readings");
    tally_platform::testkit::fold_readings(db, batch).await;
}

/// Stores the file's meters ([`meter_specs`]) and the plans and subscriptions of the TOML
/// `text` in `db`, as `tally-rater` bootstraps them; returns what was appended.
pub async fn store_catalog(
    db: &clickhouse::Client,
    text: &str,
) -> tally_rater::store::catalog::Bootstrapped {
    #[derive(serde::Deserialize)]
    struct F {
        plans: Vec<PlanSpec>,
        subscriptions: Vec<SubscriptionSpec>,
    }
    let f: F = toml::from_str(text).expect("catalog TOML");
    tally_rater::store::registry::bootstrap(db, &[], &meter_specs(), 0)
        .await
        .expect("stored meters");
    tally_rater::store::catalog::bootstrap(db, &f.plans, &f.subscriptions, 0)
        .await
        .expect("stored catalog")
}

/// The catalog as stored in `db` (default `[rater]` and features).
pub async fn stored_catalog(db: &clickhouse::Client) -> Catalog {
    tally_rater::store::CatalogSource {
        rater: RaterConfig::default(),
        features: tally_platform::Features::default(),
    }
    .current(db)
    .await
    .expect("stored catalog")
}

/// One rating pass at `now_secs` looking back `days` days; asserts no customer failed.
pub async fn rate_at(
    db: &clickhouse::Client,
    catalog: &Catalog,
    now_secs: i64,
    days: u64,
) -> tally_rater::RateReport {
    let cfg = RaterConfig {
        lookback_secs: days * 86_400,
        ..RaterConfig::default()
    };
    let report = tally_rater::rate_once(db, catalog, &cfg, now_secs * 1000)
        .await
        .expect("pass");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    report
}

/// The stored (latest) charges of the period starting at `start` (secs): (customer, amount).
pub async fn period(db: &clickhouse::Client, start: i64) -> Vec<(String, i64)> {
    db.query(
        "SELECT customer, amount_minor FROM v_charges \
         WHERE toUInt32(period_start) = ? ORDER BY customer",
    )
    .bind(start)
    .fetch_all()
    .await
    .expect("v_charges")
}
