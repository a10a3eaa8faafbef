//! Customers, agents and meters in the stored catalog, over a real ClickHouse (its own
//! database per test): bootstrapped from the file once, immutable versions, the rater pricing
//! with the stored meters, and the `/v1/customers` and `/v1/meters` API routes.

mod common;

use common::http::{get, post, start};
use serde_json::json;
use tally_domain::meter::MeterSpec;
use tally_rater::catalog::customers::CustomerSpec;
use tally_rater::config::PlanSpec;
use tally_rater::store::catalog;
use tally_rater::store::registry::{bootstrap, load, Appended};
use tally_rater::store::{CatalogSource, CatalogStoreError};

#[derive(serde::Deserialize)]
struct F {
    #[serde(default)]
    meters: Vec<MeterSpec>,
    #[serde(default)]
    customers: Vec<CustomerSpec>,
    #[serde(default)]
    plans: Vec<PlanSpec>,
}

const FILE: &str = r#"
[[meters]]
slug = "calls"
event_type = "tool.call"
aggregation = "COUNT"
group_by = { tool = "$.tool" }

[[customers]]
id = "acme"
name = "Acme Corp"
agents = [{ id = "bot-1", name = "support bot" }, { id = "bot-2" }]

[[plans]]
id = "p"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [{ model = "per_unit", meter = "calls", unit_price = "0.01" }]
"#;

fn file(text: &str) -> F {
    toml::from_str(text).expect("TOML")
}

fn source() -> CatalogSource {
    CatalogSource {
        rater: tally_rater::RaterConfig::default(),
        features: tally_platform::Features::default(),
    }
}

#[tokio::test]
async fn the_file_bootstraps_customers_agents_and_meters_once_and_changes_are_refused() {
    let env = tally_platform::testkit::TestEnv::new("rater_registry_file").await;
    let db = env.db();
    let f = file(FILE);
    let first = bootstrap(&db, &f.customers, &f.meters, 0)
        .await
        .expect("stored");
    assert_eq!(
        first,
        Appended {
            customers: 1,
            agents: 2,
            meters: 1
        }
    );
    let again = bootstrap(&db, &f.customers, &f.meters, 0)
        .await
        .expect("idempotent");
    assert_eq!(again, Appended::default());

    let renamed = file(&FILE.replace("Acme Corp", "Acme Inc"));
    match bootstrap(&db, &renamed.customers, &[], 0).await {
        Err(CatalogStoreError::Conflict { setting, detail }) => {
            assert_eq!(setting, "customers[0]");
            assert!(detail.contains("immutable"), "{detail}");
        }
        other => panic!("a changed customer version must be refused: {other:?}"),
    }
    let agent_renamed = file(&FILE.replace("support bot", "sales bot"));
    match bootstrap(&db, &agent_renamed.customers, &[], 0).await {
        Err(CatalogStoreError::Conflict { setting, .. }) => {
            assert_eq!(setting, "customers[0].agents[0]");
        }
        other => panic!("a changed agent version must be refused: {other:?}"),
    }
    let regrouped = file(&FILE.replace("tool = \"$.tool\"", "name = \"$.name\""));
    match bootstrap(&db, &[], &regrouped.meters, 0).await {
        Err(CatalogStoreError::Conflict { setting, detail }) => {
            assert_eq!(setting, "meters[0]");
            assert!(detail.contains("as version 2"), "{detail}");
        }
        other => panic!("a file meter that differs from the stored one is refused: {other:?}"),
    }
    let bad = file(&FILE.replace("id = \"bot-2\"", "id = \"bot 2\""));
    let err = bootstrap(&db, &bad.customers, &[], 0)
        .await
        .expect_err("an invalid agent id");
    assert!(
        err.to_string().contains("customers[0].agents[1].id"),
        "{err}"
    );
    // version 2 of the customer, from a later file: the stored version 1 stays readable
    let v2 = file(&FILE.replace("name = \"Acme Corp\"", "version = 2\nname = \"Acme Inc\""));
    let added = bootstrap(&db, &v2.customers, &[], 0)
        .await
        .expect("a new version");
    assert_eq!(added.customers, 1);
    let r = load(&db).await.expect("loads");
    let acme = tally_domain::CustomerId::new("acme").expect("id");
    let versions: Vec<(u32, &str)> = r
        .customer_versions(&acme)
        .iter()
        .map(|c| (c.version, c.name.as_str()))
        .collect();
    assert_eq!(versions, vec![(1, "Acme Corp"), (2, "Acme Inc")]);
    assert_eq!(r.agents_of(&acme).len(), 2);
    env.cleanup().await;
}

#[tokio::test]
async fn the_rater_prices_with_the_stored_meters_and_refuses_plans_on_unknown_ones() {
    let env = tally_platform::testkit::TestEnv::new("rater_registry_meters").await;
    let db = env.db();
    let f = file(FILE);
    // a plan on a meter the stored catalog lacks is refused, naming the field
    let err = source()
        .add_plan(&db, f.plans[0].clone(), 0)
        .await
        .expect_err("no stored meter");
    assert!(err.to_string().contains("plan.prices[0].meter"), "{err}");
    bootstrap(&db, &[], &f.meters, 0)
        .await
        .expect("stored meter");
    source()
        .add_plan(&db, f.plans[0].clone(), 0)
        .await
        .expect("now the meter is known");
    let catalog = source().current(&db).await.expect("the stored catalog");
    assert_eq!(catalog.plans().count(), 1);
    let records = catalog::load_records(&db).await.expect("plans");
    assert_eq!(records.plans.len(), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_manages_customers_agents_and_meters_as_immutable_versions() {
    let env = tally_platform::testkit::TestEnv::new("rater_registry_api").await;
    let (addr, stop, server) = start(env.db()).await;

    // customers: created with agents, identical re-post 200, change 409, new version 201
    let acme = json!({"id": "acme", "name": "Acme Corp", "agents": [{"id": "bot-1"}]});
    let (status, body) = post(addr, "/v1/customers", &acme).await;
    assert_eq!((status, &body["appended"]), (201, &json!(true)), "{body}");
    assert_eq!(post(addr, "/v1/customers", &acme).await.0, 200);
    let mut renamed = acme.clone();
    renamed["name"] = "Acme Inc".into();
    let (status, body) = post(addr, "/v1/customers", &renamed).await;
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("version_exists")),
        "{body}"
    );
    renamed["version"] = 2.into();
    assert_eq!(post(addr, "/v1/customers", &renamed).await.0, 201);
    let mut stale = renamed.clone();
    stale["version"] = 1.into();
    stale["name"] = "Acme Old".into();
    assert_eq!(post(addr, "/v1/customers", &stale).await.0, 409);
    let (status, list) = get(addr, "/v1/customers").await;
    assert_eq!(status, 200);
    assert_eq!(
        list,
        json!([{"id": "acme", "version": 2, "name": "Acme Inc"}])
    );
    let (_, versions) = get(addr, "/v1/customers/acme").await;
    assert_eq!(versions.as_array().map(Vec::len), Some(2));
    assert_eq!(get(addr, "/v1/customers/nobody").await.0, 404);
    assert_eq!(
        get(addr, "/v1/customers/no%20body").await.1["code"],
        "invalid_customer"
    );
    for (bad, field) in [
        (json!({"id": "ac me", "name": "A"}), "customer.id"),
        (json!({"id": "beta", "name": ""}), "customer.name"),
        (
            json!({"id": "beta", "version": 0, "name": "B"}),
            "customer.version",
        ),
        (
            json!({"id": "beta", "name": "B", "agents": [{"id": "x.y"}]}),
            "customer.agents[0].id",
        ),
    ] {
        let (status, body) = post(addr, "/v1/customers", &bad).await;
        assert_eq!(
            (status, &body["code"]),
            (400, &json!("invalid_customer")),
            "{body}"
        );
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(&format!("`{field}`")), "{bad}: {detail}");
    }
    let (status, body) = post(addr, "/v1/customers", &json!({"id": "b", "nom": "B"})).await;
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("invalid_customer")),
        "{body}"
    );

    // agents of a customer
    let bot2 = json!({"id": "bot-2", "name": "research bot"});
    assert_eq!(post(addr, "/v1/customers/acme/agents", &bot2).await.0, 201);
    assert_eq!(post(addr, "/v1/customers/acme/agents", &bot2).await.0, 200);
    let (status, body) = post(addr, "/v1/customers/acme/agents", &json!({"id": "bot-2"})).await;
    assert_eq!(status, 409, "{body}");
    let (status, agents) = get(addr, "/v1/customers/acme/agents").await;
    assert_eq!(status, 200);
    assert_eq!(
        agents,
        json!([{"id": "bot-1", "version": 1}, {"id": "bot-2", "version": 1, "name": "research bot"}])
    );
    let (status, body) = post(addr, "/v1/customers/nobody/agents", &bot2).await;
    assert_eq!(
        (status, &body["code"]),
        (404, &json!("not_found")),
        "{body}"
    );
    let (status, body) = post(addr, "/v1/customers/acme/agents", &json!({"id": ""})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("`agent.id`")),
        "{body}"
    );

    // meters: validated by the domain's rules, versioned, and what plans are checked against
    let calls = json!({"slug": "calls", "event_type": "tool.call", "aggregation": "COUNT"});
    assert_eq!(post(addr, "/v1/meters", &calls).await.0, 201);
    assert_eq!(post(addr, "/v1/meters", &calls).await.0, 200);
    let mut grouped = calls.clone();
    grouped["group_by"] = json!({"tool": "$.tool"});
    assert_eq!(post(addr, "/v1/meters", &grouped).await.0, 409);
    grouped["version"] = 2.into();
    assert_eq!(post(addr, "/v1/meters", &grouped).await.0, 201);
    let mut summed = grouped.clone();
    summed["version"] = 3.into();
    summed["aggregation"] = "SUM".into();
    summed["value_property"] = "$.n".into();
    let (status, body) = post(addr, "/v1/meters", &summed).await;
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("invalid_meter")),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("`meter.aggregation`")),
        "{body}"
    );
    for (bad, field) in [
        (
            json!({"slug": "a b", "event_type": "t", "aggregation": "COUNT"}),
            "meter.slug",
        ),
        (
            json!({"slug": "t", "event_type": "t", "aggregation": "SUM"}),
            "meter.value_property",
        ),
        (
            json!({"slug": "t", "event_type": "", "aggregation": "COUNT"}),
            "meter.event_type",
        ),
    ] {
        let (status, body) = post(addr, "/v1/meters", &bad).await;
        assert_eq!(status, 400, "{body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(&format!("`{field}`")), "{bad}: {detail}");
    }
    let (_, meters) = get(addr, "/v1/meters").await;
    assert_eq!(meters[0]["version"], 2);
    assert_eq!(meters[0]["group_by"], json!({"tool": "$.tool"}));
    assert_eq!(
        get(addr, "/v1/meters/calls")
            .await
            .1
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(get(addr, "/v1/meters/nope").await.0, 404);

    // a plan on an unknown meter is refused; on a stored one accepted
    let plan = |meter: &str| {
        json!({"id": "p", "version": 1, "currency": "USD", "effective_from": "2026-01-01T00:00:00Z",
               "prices": [{"model": "dimensional", "meter": meter, "dimensions": ["tool"],
                           "rates": [{"values": ["search"], "unit_price": "0.01"}]}]})
    };
    let (status, body) = post(addr, "/v1/plans", &plan("tokens")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("plan.prices[0].meter")),
        "{body}"
    );
    assert_eq!(post(addr, "/v1/plans", &plan("calls")).await.0, 201);
    // a meter version that would break a stored plan (its dimension) is refused
    let mut ungrouped = calls.clone();
    ungrouped["version"] = 3.into();
    let (status, body) = post(addr, "/v1/meters", &ungrouped).await;
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("invalid_meter")),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("dimensions")),
        "{body}"
    );

    // the OpenAPI document lists the routes
    let (_, doc) = get(addr, "/v1/openapi.json").await;
    for path in [
        "/v1/customers",
        "/v1/customers/{id}",
        "/v1/customers/{id}/agents",
        "/v1/meters",
        "/v1/meters/{slug}",
    ] {
        assert!(doc["paths"][path].is_object(), "OpenAPI lacks {path}");
    }
    stop.cancel();
    server.await.expect("the server stops");
    env.cleanup().await;
}

/// Two subscriptions that each pass the checks alone but not together (two product lines of
/// one customer pricing the same meter) sent at once: one is stored, the other refused, and
/// the stored catalog still builds. Checked and appended without a turn, both could be
/// stored, and then every catalog build (every customer's rating) failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_conflicting_catalog_changes_at_once_store_one() {
    let env = tally_platform::testkit::TestEnv::new("rater_registry_race").await;
    let db = env.db();
    let f = file(FILE);
    bootstrap(&db, &[], &f.meters, 0)
        .await
        .expect("stored meter");
    source()
        .add_plan(&db, f.plans[0].clone(), 0)
        .await
        .expect("plan");
    for round in 0..5 {
        let customer = format!("race-{round}");
        let line = |name: &str| -> tally_rater::config::SubscriptionSpec {
            serde_json::from_value(serde_json::json!({
                "customer": customer, "plan": "p", "line": name,
                "effective_from": "2026-02-01T00:00:00Z"
            }))
            .expect("a subscription")
        };
        let (one, other) = (source(), source());
        let (a, b) = tokio::join!(
            one.add_subscription(&db, line("a"), 0),
            other.add_subscription(&db, line("b"), 0)
        );
        assert_eq!(
            usize::from(a.is_ok()) + usize::from(b.is_ok()),
            1,
            "round {round}: {a:?} {b:?}"
        );
        source()
            .current(&db)
            .await
            .expect("the stored catalog still builds");
    }
    env.cleanup().await;
}
