//! Explaining a charge: the lines, the single rounding, discounts and tax sum exactly to the
//! stored amounts, and a tampered amount is flagged. The last test stores a charge in a real
//! ClickHouse (its own database) and reads it back through `v_charges`.

mod common;

use common::{catalog, d, plan, usage};
use tally_rater::rating::charge::compute;
use tally_rater::rating::explain::{explain, load, WindowUsage};
use tally_rater::store::charges::row;

const PRICE: &str = r#"model = "graduated", free_units = "50", minimum = "1",
    tiers = [{ up_to = "100", unit_price = "0.02" }, { up_to = "1000", unit_price = "0.015" }, { unit_price = "0.01" }]"#;

fn window(minute: u32, q: &str) -> WindowUsage {
    WindowUsage {
        window_start: (common::JAN_2026_MS / 1000) as u32 + minute * 60,
        agent: "bot".into(),
        group_key: "{}".into(),
        quantity: d(q),
    }
}

#[test]
fn an_explanation_shows_each_tier_and_the_rounding_and_balances() {
    let c = catalog("USD", PRICE);
    // 1250.5 units: 50 free; then 100 x 0.02 + 900 x 0.015 + 200.5 x 0.01 = 17.505 -> 17.51
    let charge = compute(&usage(d("1250.5")), plan(&c))
        .expect("prices")
        .expect("priced");
    assert_eq!(charge.amount_minor, 1751);
    let e = explain(
        &row(&charge, 0),
        vec![window(0, "1000"), window(1, "250.5")],
        true,
    )
    .expect("readable");
    let text = e.lines.join("\n");
    assert!(e.balanced, "{text}");
    for expected in [
        "usage: 2 windows",
        "sum to 1250.5",
        "free allowance: 50 units = 0",
        "tier 1 (above 0 up to and including 100): 100 x 0.02 = 2.00",
        "tier 2 (above 100 up to and including 1000): 900 x 0.015 = 13.500",
        "tier 3 (above 1000 and up): 200.5 x 0.01 = 2.005",
        "lines sum to 17.505; rounded once to 2 decimals, half away from zero: 17.51 USD",
        "total 17.51 USD (1751 minor units)",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn amounts_that_do_not_follow_from_the_lines_or_windows_are_flagged() {
    let c = catalog("JPY", r#"model = "per_unit", unit_price = "0.0004""#);
    let charge = compute(&usage(d("1250")), plan(&c))
        .expect("prices")
        .expect("priced");
    let mut stored = row(&charge, 0);
    assert!(
        explain(&stored, vec![window(0, "1250")], true)
            .expect("readable")
            .balanced
    );
    assert!(
        !explain(&stored, vec![window(0, "1249")], true)
            .expect("readable")
            .balanced
    );
    stored.amount_minor += 1;
    stored.amount_with_tax_minor += 1;
    let e = explain(&stored, vec![window(0, "1250")], true).expect("readable");
    assert!(!e.balanced);
    assert!(e.lines.last().expect("a total").contains("MISMATCH"));
}

#[tokio::test]
async fn a_stored_charge_is_read_back_and_explained() {
    let env = tally_platform::testkit::TestEnv::new("rater_explain").await;
    let db = env.db();
    let c = catalog("BHD", PRICE);
    let charge = compute(&usage(d("100.5")), plan(&c))
        .expect("prices")
        .expect("priced");
    tally_rater::store::charges::write(&db, std::slice::from_ref(&charge), common::JAN_2026_MS)
        .await
        .expect("stored");
    let (stored, windows) = load(&db, &charge.charge_id).await.expect("found");
    assert!(windows.is_empty()); // no usage was committed in this database
    assert_eq!(stored.amount_before_discounts_minor, charge.amount_minor);
    let e = explain(&stored, windows, false).expect("readable");
    assert!(e.balanced, "{:?}", e.lines);
    assert!(matches!(
        load(&db, "chg_missing").await,
        Err(tally_rater::rating::explain::ExplainError::NotFound(_))
    ));
    env.cleanup().await;
}
