//! The `charges` row declared once (`store::charges::ChargeRow`): what the rater writes with
//! it the invoicer reads back with `SELECT ?fields`, every column, on ClickHouse 18.16 (the
//! local stack's server), from the table and through `v_charges`. Each test has its own
//! database (`testkit`).

use rust_decimal::Decimal;
use tally_platform::store::charges::ChargeRow;
use tally_platform::testkit::TestEnv;

fn row(version: u64, amount_minor: i64) -> ChargeRow {
    ChargeRow {
        charge_id: "chg_1".into(),
        customer: "acme-1".into(),
        period_start: 1_767_225_600, // 2026-01-01
        period_end: 1_769_904_000,   // 2026-02-01
        meter: "llm_tokens".into(),
        group_key: r#"{"model":"gpt-4o"}"#.into(),
        group_names: vec!["model".into()],
        group_values: vec!["gpt-4o".into()],
        plan_id: "ai-standard".into(),
        plan_version: 3,
        price_model: "per_unit".into(),
        currency: "BHD".into(),
        quantity: Decimal::new(1_234_567_891, 9), // 1.234567891
        unit_price: "0.0005".into(),
        tiers: "[]".into(),
        amount_minor,
        amount_before_discounts_minor: amount_minor + 25,
        tax_region: "DE".into(),
        tax_code: "std".into(),
        tax_rate: "19".into(),
        tax_minor: 190,
        amount_with_tax_minor: amount_minor + 190,
        price_currency: "USD".into(),
        fx_rate: "0.376".into(),
        windows: 7,
        usage_from: 1_767_225_660,
        usage_to: 1_769_903_940,
        computed_at: 1_769_904_100,
        version,
    }
}

async fn write(db: &clickhouse::Client, rows: &[ChargeRow]) {
    let mut insert = db.insert::<ChargeRow>("charges").await.expect("insert");
    for r in rows {
        insert.write(r).await.expect("write");
    }
    insert.end().await.expect("end");
}

#[tokio::test]
async fn what_the_writer_stores_the_reader_reads_back_whole() {
    let env = TestEnv::new("charge_row_round_trip").await;
    let db = env.db();
    // a recomputation: version 2 of the same charge, 1000 minor units instead of 900
    write(&db, &[row(1, 900), row(2, 1_000)]).await;
    let latest: Vec<ChargeRow> = db
        .query("SELECT ?fields FROM v_charges WHERE period_end > toDateTime(?)")
        .bind(1_767_225_600)
        .fetch_all()
        .await
        .expect("read v_charges");
    assert_eq!(latest, vec![row(2, 1_000)]);
    let mut cursor = db
        .query("SELECT ?fields FROM charges FINAL WHERE customer = ? ORDER BY version")
        .bind("acme-1")
        .fetch::<ChargeRow>()
        .expect("cursor");
    let first = cursor.next().await.expect("read charges").expect("a row");
    assert_eq!(
        (
            first.amount_minor,
            first.amount_with_tax_minor,
            first.version
        ),
        (1_000, 1_190, 2)
    );
    assert_eq!(first.quantity.to_string(), "1.234567891");
    env.cleanup().await;
}
