//! Tax rates and FX rates in the stored catalog, over a real ClickHouse (its own database per
//! test): bootstrapped from the file once, immutable dated entries, the `/v1/tax_rates` and
//! `/v1/fx_rates` API routes, and the rater pricing with the stored rates (amounts by hand).

mod common;

use common::http::{get, post, start};
use common::{fold_one, row};
use serde_json::json;
use tally_rater::catalog::fx::FxRateSpec;
use tally_rater::catalog::tax::TaxRateSpec;
use tally_rater::store::rates::{bootstrap, load, RatesAppended};
use tally_rater::store::{CatalogSource, CatalogStoreError};

#[derive(serde::Deserialize)]
struct F {
    #[serde(default)]
    tax_rates: Vec<TaxRateSpec>,
    #[serde(default)]
    fx_rates: Vec<FxRateSpec>,
}

const FILE: &str = r#"
[[tax_rates]]
region = "DE"
rate_percent = "19"
effective_from = "2020-01-01T00:00:00Z"

[[tax_rates]]
region = "DE"
code = "digital"
rate_percent = "7"
effective_from = "2020-01-01T00:00:00Z"

[[fx_rates]]
from = "USD"
to = "EUR"
rate = "0.92"
effective_from = "2026-01-01T00:00:00Z"
"#;

fn file(text: &str) -> F {
    toml::from_str(text).expect("TOML")
}

#[tokio::test]
async fn the_file_bootstraps_tax_and_fx_rates_once_and_changes_are_refused() {
    let env = tally_platform::testkit::TestEnv::new("rater_rates_file").await;
    let db = env.db();
    let f = file(FILE);
    let first = bootstrap(&db, &f.tax_rates, &f.fx_rates, 0)
        .await
        .expect("stored");
    assert_eq!(
        first,
        RatesAppended {
            tax_rates: 2,
            fx_rates: 1
        }
    );
    let again = bootstrap(&db, &f.tax_rates, &f.fx_rates, 0)
        .await
        .expect("idempotent");
    assert_eq!(again, RatesAppended::default());
    // the same rate written differently is the same entry
    let same = file(&FILE.replace("\"19\"", "\"19.000\""));
    assert_eq!(
        bootstrap(&db, &same.tax_rates, &[], 0).await.expect("same"),
        RatesAppended::default()
    );

    let changed = file(&FILE.replace("\"19\"", "\"16\""));
    match bootstrap(&db, &changed.tax_rates, &[], 0).await {
        Err(CatalogStoreError::Conflict { setting, detail }) => {
            assert_eq!(setting, "tax_rates[0].rate_percent");
            assert!(detail.contains("already stored as 19%"), "{detail}");
        }
        other => panic!("a changed tax rate must be refused: {other:?}"),
    }
    let moved = file(&FILE.replace("\"0.92\"", "\"0.95\""));
    match bootstrap(&db, &[], &moved.fx_rates, 0).await {
        Err(CatalogStoreError::Conflict { setting, .. }) => assert_eq!(setting, "fx_rates[0].rate"),
        other => panic!("a changed fx rate must be refused: {other:?}"),
    }
    // one bad entry refuses the whole file: the good new one before it is not appended
    let later = FILE.replace("2026-01-01", "2026-07-01");
    let bad = file(&format!(
        "{later}\n[[fx_rates]]\nfrom = \"USD\"\nto = \"ABC\"\nrate = \"1\"\n\
         effective_from = \"2026-01-01T00:00:00Z\"\n"
    ));
    let err = bootstrap(&db, &[], &bad.fx_rates, 0)
        .await
        .expect_err("an unknown currency");
    assert!(err.to_string().contains("fx_rates[1].to"), "{err}");
    assert_eq!(load(&db).await.expect("loads").fx_rates().count(), 1);

    // a later file with only a new rate appends it; the stored ones stay in force
    let next = file(
        "[[tax_rates]]\nregion = \"DE\"\nrate_percent = \"16\"\n\
         effective_from = \"2026-07-01T00:00:00Z\"\n",
    );
    let added = bootstrap(&db, &next.tax_rates, &[], 0).await.expect("new");
    assert_eq!(added.tax_rates, 1);
    let rates: Vec<String> = load(&db)
        .await
        .expect("loads")
        .tax_rates()
        .map(|r| {
            format!(
                "{}/{} {} {}",
                r.region, r.code, r.effective_from, r.rate_percent
            )
        })
        .collect();
    assert_eq!(
        rates,
        vec![
            "DE/digital 2020-01-01 00:00:00 UTC 7",
            "DE/standard 2020-01-01 00:00:00 UTC 19",
            "DE/standard 2026-07-01 00:00:00 UTC 16",
        ]
    );

    // two writers racing with different rates for one identity (issue 17): the rate recorded
    // first stays in force, the other is set aside, by name
    db.query(
        "INSERT INTO catalog_tax_rates (region, code, effective_from, body, recorded_at) VALUES \
         ('DE', 'standard', '2026-07-01T00:00:00.000Z', \
          '{\"region\":\"DE\",\"code\":\"standard\",\"rate_percent\":\"17\",\"effective_from\":\"2026-07-01T00:00:00Z\"}', now())",
    )
    .execute()
    .await
    .expect("a conflicting row");
    let (rates, set_aside) = tally_rater::store::rates::load_reported(&db)
        .await
        .expect("the rates still load");
    assert_eq!(rates.tax.iter().count(), 3);
    assert!(rates
        .tax
        .iter()
        .any(|r| r.effective_from.to_rfc3339().starts_with("2026-07-01")
            && r.rate_percent.to_string() == "16"));
    assert_eq!(set_aside.len(), 1, "{set_aside:?}");
    assert_eq!(
        set_aside[0].identity,
        "tax rate DE/standard from 2026-07-01T00:00:00.000Z"
    );
    assert!(
        set_aside[0].detail.contains("already stored as 16%"),
        "{}",
        set_aside[0].detail
    );
    assert_eq!(load(&db).await.expect("loads").tax.iter().count(), 3);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_manages_rates_and_the_rater_prices_with_the_stored_ones() {
    let env = tally_platform::testkit::TestEnv::new("rater_rates_api").await;
    let db = env.db();
    tally_rater::store::registry::bootstrap(&db, &[], &common::meter_specs(), 0)
        .await
        .expect("stored meters");
    let (addr, stop, server) = start(db.clone()).await;
    let plan = json!({
        "id": "p", "version": 1, "currency": "USD", "effective_from": "2026-01-01T00:00:00Z",
        "prices": [{"model": "per_unit", "meter": "tokens", "unit_price": "0.01"}]
    });
    assert_eq!(post(addr, "/v1/plans", &plan).await.0, 201);
    let sub = json!({"customer": "acme", "plan": "p", "tax_region": "DE", "currency": "EUR"});

    // a taxed subscription needs a stored rate for its region
    let (status, body) = post(addr, "/v1/subscriptions", &sub).await;
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("invalid_subscription"))
    );
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("subscriptions.acme.tax_region")),
        "{body}"
    );

    let de =
        json!({"region": "DE", "rate_percent": "19", "effective_from": "2020-01-01T00:00:00Z"});
    let (status, body) = post(addr, "/v1/tax_rates", &de).await;
    assert_eq!((status, &body["appended"]), (201, &json!(true)), "{body}");
    assert_eq!(
        body["entry"],
        json!({"region": "DE", "code": "standard", "effective_from": "2020-01-01T00:00:00.000Z"})
    );
    let mut same = de.clone();
    same["rate_percent"] = "19.00".into();
    same["code"] = "standard".into();
    assert_eq!(post(addr, "/v1/tax_rates", &same).await.0, 200);
    let mut changed = de.clone();
    changed["rate_percent"] = "16".into();
    let (status, body) = post(addr, "/v1/tax_rates", &changed).await;
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("version_exists")),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("tax_rate.rate_percent") && d.contains("19%")),
        "{body}"
    );
    for (bad, field) in [
        (
            json!({"region": "DE", "rate_percent": "119", "effective_from": "2026-01-01T00:00:00Z"}),
            "tax_rate.rate_percent",
        ),
        (
            json!({"region": "", "rate_percent": "19", "effective_from": "2026-01-01T00:00:00Z"}),
            "tax_rate.region",
        ),
        (
            json!({"region": "DE", "code": "", "rate_percent": "19", "effective_from": "2026-01-01T00:00:00Z"}),
            "tax_rate.code",
        ),
        (
            json!({"region": "DE", "effective_from": "2026-01-01T00:00:00Z"}),
            "rate_percent",
        ),
        (
            json!({"region": "DE", "rate_percent": 19.5, "effective_from": "2026-01-01T00:00:00Z"}),
            "float",
        ),
    ] {
        let (status, body) = post(addr, "/v1/tax_rates", &bad).await;
        assert_eq!(
            (status, &body["code"]),
            (400, &json!("invalid_tax_rate")),
            "{bad}: {body}"
        );
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains(field)),
            "{field}: {body}"
        );
    }

    // a subscription billed in EUR needs a stored USD -> EUR rate
    let (status, body) = post(addr, "/v1/subscriptions", &sub).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("subscriptions.acme.currency")),
        "{body}"
    );
    for (bad, field) in [
        (
            json!({"from": "USD", "to": "ABC", "rate": "1", "effective_from": "2026-01-01T00:00:00Z"}),
            "fx_rate.to",
        ),
        (
            json!({"from": "usd", "to": "EUR", "rate": "1", "effective_from": "2026-01-01T00:00:00Z"}),
            "fx_rate.from",
        ),
        (
            json!({"from": "USD", "to": "EUR", "rate": "0", "effective_from": "2026-01-01T00:00:00Z"}),
            "fx_rate.rate",
        ),
        (
            json!({"from": "USD", "to": "USD", "rate": "1", "effective_from": "2026-01-01T00:00:00Z"}),
            "fx_rate.to",
        ),
    ] {
        let (status, body) = post(addr, "/v1/fx_rates", &bad).await;
        assert_eq!(
            (status, &body["code"]),
            (400, &json!("invalid_fx_rate")),
            "{bad}: {body}"
        );
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains(field)),
            "{field}: {body}"
        );
    }
    let usd_eur = json!({"from": "USD", "to": "EUR", "rate": "0.9", "effective_from": "2020-01-01T00:00:00Z"});
    assert_eq!(post(addr, "/v1/fx_rates", &usd_eur).await.0, 201);
    assert_eq!(post(addr, "/v1/fx_rates", &usd_eur).await.0, 200);
    let mut moved = usd_eur.clone();
    moved["rate"] = "0.95".into();
    assert_eq!(post(addr, "/v1/fx_rates", &moved).await.0, 409);
    assert_eq!(post(addr, "/v1/subscriptions", &sub).await.0, 201);
    // the German rate drops to 16% from July 2026: a new, later entry
    let july =
        json!({"region": "DE", "rate_percent": "16", "effective_from": "2026-07-01T00:00:00Z"});
    assert_eq!(post(addr, "/v1/tax_rates", &july).await.0, 201);

    let (status, taxes) = get(addr, "/v1/tax_rates").await;
    assert_eq!(status, 200);
    assert_eq!(
        taxes,
        json!([
            {"region": "DE", "code": "standard", "rate_percent": "19", "effective_from": "2020-01-01T00:00:00Z"},
            {"region": "DE", "code": "standard", "rate_percent": "16", "effective_from": "2026-07-01T00:00:00Z"},
        ])
    );
    let (_, fx) = get(addr, "/v1/fx_rates").await;
    assert_eq!(
        fx,
        json!([{"from": "USD", "to": "EUR", "rate": "0.9", "effective_from": "2020-01-01T00:00:00Z"}])
    );
    let (_, doc) = get(addr, "/v1/openapi.json").await;
    for path in ["/v1/tax_rates", "/v1/fx_rates"] {
        assert!(
            doc["paths"][path]["post"].is_object(),
            "OpenAPI lacks {path}"
        );
    }
    stop.cancel();
    server.await.expect("the server stops");

    // the rater's catalog, as each pass reads it, prices with the stored rates
    let source = CatalogSource {
        rater: tally_rater::RaterConfig::default(),
        features: tally_platform::Features::default(),
    };
    let catalog = source.current(&db).await.expect("the stored catalog");
    let july_minute = 181 * 1440; // 2026-07-01, in minutes from January 1st
    let mut got = vec![];
    for minute in [0, july_minute] {
        let u = fold_one(&catalog, row("acme", "m", "input", minute, "999"));
        let sub = catalog
            .subscription_at(&u.customer, u.segment_from_ms)
            .expect("subscribed");
        let plan = catalog.plan_at(&sub.plan, u.segment_from_ms).expect("plan");
        let terms = catalog.terms(&sub, plan, &u.period, &u.meter);
        let ch = tally_rater::rating::charge::compute_with(&u, plan, &terms)
            .expect("prices")
            .expect("priced");
        got.push((
            ch.currency,
            ch.amount_minor,
            ch.tax_rate.map(|r| r.to_string()),
            ch.tax_minor,
            ch.amount_with_tax_minor,
        ));
    }
    assert_eq!(
        got,
        vec![
            // 999 x 0.01 = 9.99 USD x 0.9 = 8.991 EUR -> 8.99; 19% of 8.99 = 1.7081 -> 1.71
            ("EUR", 899, Some("19".to_owned()), 171, 1070),
            // July: 16% of 8.99 = 1.4384 -> 1.44
            ("EUR", 899, Some("16".to_owned()), 144, 1043),
        ]
    );
    env.cleanup().await;
}
