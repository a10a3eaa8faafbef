//! The HTTP API over a real socket: the catalog as validated, a charge explained from a real
//! ClickHouse (its own database), stable error codes, and the OpenAPI document.

mod common;

use common::http::{get, request, start};
use common::{catalog, d, plan, usage};
use tally_rater::rating::charge::compute;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_shows_the_catalog_and_explains_a_stored_charge() {
    let env = tally_platform::testkit::TestEnv::new("rater_api").await;
    let db = env.db();
    let price = r#"model = "graduated", tiers = [{ up_to = "100", unit_price = "0.02" }, { unit_price = "0.01" }]"#;
    let c = catalog("USD", price);
    let spec_text = format!(
        "[[plans]]\nid = \"p\"\nversion = 1\ncurrency = \"USD\"\n\
         effective_from = \"2026-01-01T00:00:00Z\"\nprices = [{{ meter = \"tokens\", {price} }}]\n"
    );
    #[derive(serde::Deserialize)]
    struct F {
        plans: Vec<tally_rater::config::PlanSpec>,
    }
    let specs = toml::from_str::<F>(&spec_text).expect("TOML").plans;
    tally_rater::store::registry::bootstrap(&db, &[], &common::meter_specs(), 0)
        .await
        .expect("stored meters");
    tally_rater::store::catalog::bootstrap(&db, &specs, &[], 0)
        .await
        .expect("stored catalog");
    let charge = compute(&usage(d("150")), plan(&c))
        .expect("prices")
        .expect("priced");
    tally_rater::store::charges::write(&db, std::slice::from_ref(&charge), common::JAN_2026_MS)
        .await
        .expect("stored");
    let (addr, stop, server) = start(db).await;

    let (status, plans) = get(addr, "/v1/plans").await;
    assert_eq!(status, 200);
    assert_eq!(plans[0]["id"], "p");
    assert_eq!(plans[0]["currency"], "USD");
    assert_eq!(plans[0]["prices"][0]["model"], "graduated");
    assert_eq!(plans[0]["prices"][0]["tiers"][0]["up_to"], "100");

    let (status, e) = get(addr, &format!("/v1/charges/{}/explain", charge.charge_id)).await;
    assert_eq!(status, 200, "{e}");
    // no usage was committed in this database, so the windows (0) do not explain the
    // quantity (150): the API says so instead of vouching for the charge
    assert_eq!(e["balanced"], false);
    let lines = e["lines"].to_string();
    assert!(lines.contains("usage: 0 windows"), "{lines}");
    assert!(
        lines.contains("tier 2 (above 100 and up): 50 x 0.01 = 0.50"),
        "{lines}"
    );
    assert!(
        lines.contains("total 2.50 USD (250 minor units)"),
        "{lines}"
    );

    assert_eq!(get(addr, "/v1/charges/chg_nope/explain").await.0, 404);
    assert_eq!(get(addr, "/v1/plans/nope").await.1["code"], "not_found");
    assert_eq!(
        get(addr, "/v1/customers/acme/subscriptions").await.1,
        serde_json::json!([])
    );
    // a new version through the API: validated against the stored catalog, appended once
    let mut v2 = serde_json::to_value(&specs[0]).expect("JSON");
    v2["version"] = 2.into();
    v2["effective_from"] = "2026-06-01T00:00:00Z".into();
    let (status, body) = request(addr, "POST", "/v1/plans", &v2.to_string()).await;
    assert_eq!(
        (status, &body["appended"]),
        (201, &serde_json::json!(true)),
        "{body}"
    );
    assert_eq!(
        request(addr, "POST", "/v1/plans", &v2.to_string()).await.0,
        200
    );
    assert_eq!(
        get(addr, "/v1/plans/p").await.1.as_array().map(Vec::len),
        Some(2)
    );
    let mut changed = v2.clone();
    changed["prices"][0]["tiers"][0]["unit_price"] = "0.03".into();
    let (status, body) = request(addr, "POST", "/v1/plans", &changed.to_string()).await;
    assert_eq!(
        (status, &body["code"]),
        (409, &serde_json::json!("version_exists")),
        "{body}"
    );
    let mut overlapping = v2.clone();
    overlapping["version"] = 3.into();
    overlapping["effective_from"] = "2026-07-01T00:00:00Z".into();
    overlapping["prices"][0]["tiers"] = serde_json::json!([
        {"up_to": "100", "unit_price": "1"}, {"up_to": "50", "unit_price": "1"}, {"unit_price": "1"}
    ]);
    let (status, body) = request(addr, "POST", "/v1/plans", &overlapping.to_string()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("plan.prices[0].tiers")),
        "{body}"
    );

    for (field, value, named) in [
        ("currency", serde_json::json!("XYZ"), "plan.currency"),
        (
            "prices",
            serde_json::json!([{"model": "graduated", "meter": "tokens",
            "tiers": [{"up_to": "100", "unit_price": "-0.02"}, {"unit_price": "0.01"}]}]),
            "plan.prices[0].tiers",
        ),
        (
            "prices",
            serde_json::json!([{"model": "per_unit", "meter": "tokens", "unit_price": "-1"}]),
            "plan.prices[0].unit_price",
        ),
    ] {
        let mut bad = overlapping.clone();
        bad[field] = value;
        let (status, body) = request(addr, "POST", "/v1/plans", &bad.to_string()).await;
        assert_eq!(
            (status, &body["code"]),
            (400, &serde_json::json!("invalid_plan")),
            "{body}"
        );
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains(named)),
            "{named}: {body}"
        );
    }

    // subscriptions likewise: validated against the stored plans, appended, immutable
    let sub = serde_json::json!({"customer": "acme", "plan": "p",
        "effective_from": "2026-03-01T00:00:00Z", "tax_exempt": false});
    assert_eq!(
        request(addr, "POST", "/v1/subscriptions", &sub.to_string())
            .await
            .0,
        201
    );
    let subs = get(addr, "/v1/customers/acme/subscriptions").await.1;
    assert_eq!(subs[0]["plan"], "p");
    assert_eq!(subs[0]["effective_from"], "2026-03-01T00:00:00Z");
    let mut other_plan = sub.clone();
    other_plan["plan"] = "nope".into();
    let (status, body) = request(addr, "POST", "/v1/subscriptions", &other_plan.to_string()).await;
    assert_eq!(
        status, 409,
        "same customer and instant, different content: {body}"
    );
    other_plan["effective_from"] = "2026-04-01T00:00:00Z".into();
    let (status, body) = request(addr, "POST", "/v1/subscriptions", &other_plan.to_string()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("subscription.plan")),
        "{body}"
    );

    let (status, doc) = get(addr, "/v1/openapi.json").await;
    assert_eq!((status, doc["openapi"].as_str()), (200, Some("3.0.3")));

    stop.cancel();
    server.await.expect("the server stops");
    env.cleanup().await;
}
