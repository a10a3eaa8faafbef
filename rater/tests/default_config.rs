//! The shipped `config/tally.toml` (what `scripts/demo.sh` runs) builds a valid catalog.

use serde::Deserialize;
use tally_domain::meter::{validate_meters, MeterSpec};
use tally_rater::catalog::customers::CustomerSpec;
use tally_rater::catalog::registry::Registry;
use tally_rater::catalog::tax::{TaxRateSpec, TaxTable};
use tally_rater::config::{PlanSpec, SubscriptionSpec};
use tally_rater::{Catalog, RaterConfig};

#[derive(Deserialize)]
struct CatalogSections {
    rater: RaterConfig,
    meters: Vec<MeterSpec>,
    plans: Vec<PlanSpec>,
    subscriptions: Vec<SubscriptionSpec>,
    tax_rates: Vec<TaxRateSpec>,
    customers: Vec<CustomerSpec>,
}

#[test]
fn the_shipped_configuration_has_a_valid_catalog_with_a_price_book() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/tally.toml");
    let text = std::fs::read_to_string(path).expect("config/tally.toml");
    let table: toml::Table = toml::from_str(&text).expect("TOML");
    let sections: CatalogSections = toml::Table::from_iter(
        [
            "rater",
            "meters",
            "plans",
            "subscriptions",
            "tax_rates",
            "customers",
        ]
        .into_iter()
        .filter_map(|k| table.get(k).map(|v| (k.to_owned(), v.clone()))),
    )
    .try_into()
    .expect("catalog sections");
    let meters = validate_meters(sections.meters).expect("meters");
    let mut registry = Registry::default();
    for (i, c) in sections.customers.iter().enumerate() {
        registry
            .add_customer(c, &format!("customers[{i}]"))
            .expect("valid customers");
    }
    assert!(
        !sections.customers.is_empty(),
        "the demo declares a customer"
    );
    // what the catalog store keeps (JSON) reads back as the same catalog
    let plans_json = serde_json::to_string(&sections.plans).expect("plans serialize");
    let subs_json =
        serde_json::to_string(&sections.subscriptions).expect("subscriptions serialize");
    let stored = Catalog::new(
        serde_json::from_str(&plans_json).expect("plans read back"),
        serde_json::from_str(&subs_json).expect("subscriptions read back"),
        &sections.rater,
        &meters,
    )
    .expect("the stored form is valid");
    assert_eq!(
        stored.plans().collect::<Vec<_>>(),
        Catalog::new(
            sections.plans.clone(),
            sections.subscriptions.clone(),
            &sections.rater,
            &meters
        )
        .expect("valid")
        .plans()
        .collect::<Vec<_>>()
    );
    let catalog = Catalog::new(
        sections.plans,
        sections.subscriptions,
        &sections.rater,
        &meters,
    )
    .expect("plans and subscriptions")
    .with_taxes(TaxTable::new(sections.tax_rates).expect("tax rates"))
    .expect("every taxed subscription has rates");
    let jan_2027 = 1_798_761_600_000;
    let v2 = catalog.plan_at("ai-standard", jan_2027).expect("version 2");
    assert_eq!(v2.version, 2);
    assert!(v2.prices.values().any(|p| p.model.per_group()));
}
