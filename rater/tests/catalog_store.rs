//! The catalog in ClickHouse (its own database per test): bootstrapping from the file is
//! idempotent, a changed plan version is refused naming the entry, and what is stored (even
//! if a later file omits it) builds the catalog.

use tally_domain::meter::{validate_meters, MeterSpec};
use tally_rater::config::{PlanSpec, SubscriptionSpec};
use tally_rater::store::catalog::{bootstrap, load_records, Bootstrapped};
use tally_rater::store::CatalogStoreError;
use tally_rater::{Catalog, RaterConfig};

#[derive(serde::Deserialize)]
struct F {
    plans: Vec<PlanSpec>,
    #[serde(default)]
    subscriptions: Vec<SubscriptionSpec>,
}

const FILE: &str = r#"
[[plans]]
id = "p"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [
  { model = "graduated", meter = "calls", tiers = [{ up_to = "100", unit_price = "0.02" }, { unit_price = "0.01" }], free_units = "10" },
]
[[subscriptions]]
customer = "acme"
plan = "p"
tax_exempt = true
coupons = [{ id = "TEN", percent_off = "10", starts = "2026-01-01T00:00:00Z", duration = "repeating", periods = 3 }]
"#;

fn file(text: &str) -> F {
    toml::from_str(text).expect("TOML")
}

#[tokio::test]
async fn the_file_bootstraps_the_stored_catalog_once_and_changes_are_refused() {
    let env = tally_platform::testkit::TestEnv::new("rater_catalog_store").await;
    let db = env.db();
    let f = file(FILE);
    let first = bootstrap(&db, &f.plans, &f.subscriptions, 0)
        .await
        .expect("stored");
    assert_eq!(
        first,
        Bootstrapped {
            plans_appended: 1,
            subscriptions_appended: 1
        }
    );
    let again = bootstrap(&db, &f.plans, &f.subscriptions, 0)
        .await
        .expect("idempotent");
    assert_eq!(again, Bootstrapped::default());

    let changed = file(&FILE.replace("\"0.02\"", "\"0.03\""));
    match bootstrap(&db, &changed.plans, &[], 0).await {
        Err(CatalogStoreError::Conflict { setting, detail }) => {
            assert_eq!(setting, "plans[0]");
            assert!(detail.contains("immutable"), "{detail}");
        }
        other => panic!("a changed version must be refused: {other:?}"),
    }

    // a later file with only a new version: the stored version 1 stays in force
    let v2 = file(&FILE.replace("version = 1", "version = 2").replace(
        "2026-01-01T00:00:00Z\"\nprices",
        "2026-06-01T00:00:00Z\"\nprices",
    ));
    bootstrap(&db, &v2.plans, &[], 0)
        .await
        .expect("a new version");
    let records = load_records(&db).await.expect("loads");
    assert!(records.conflicts.is_empty());
    let (plans, subs) = (records.plans, records.subscriptions);
    assert_eq!(
        plans.iter().map(|p| p.version).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let meters = validate_meters(
        serde_json::from_str::<Vec<MeterSpec>>(
            r#"[{"slug":"calls","event_type":"c","aggregation":"COUNT"}]"#,
        )
        .expect("meters"),
    )
    .expect("valid meters");
    let c = Catalog::new(plans, subs, &RaterConfig::default(), &meters).expect("a valid catalog");
    let feb = 1_769_904_000_000; // 2026-02-01
    assert_eq!(c.plan_at("p", feb).expect("v1").version, 1);
    let acme = tally_domain::CustomerId::new("acme").expect("id");
    let sub = c.subscription(&acme).expect("stored subscription");
    assert!(sub.tax_exempt);
    assert_eq!(sub.coupons[0].id, "TEN");
    env.cleanup().await;
}
