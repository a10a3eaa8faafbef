//! Re-running and racing migrations on ClickHouse 18.16 (the local stack's server): a run that
//! stopped after a migration's `ADD COLUMN` statements but before its record applies it again
//! and records it; two runners on a fresh database both succeed; an `ADD COLUMN` whose columns
//! are not all there is still an error. Each test has its own database (`testkit`).

use std::time::Duration;

use tally_platform::migrate::{self, added_columns, statements, MIGRATIONS};
use tally_platform::testkit::TestEnv;

/// The migrations that add columns to an existing table (0006, 0007, 0013, 0018, 0022, 0050,
/// 0064).
fn adding_columns() -> Vec<u32> {
    MIGRATIONS
        .iter()
        .filter(|m| statements(m.sql).iter().any(|s| added_columns(s).is_some()))
        .map(|m| m.version)
        .collect()
}

async fn recorded(db: &clickhouse::Client) -> Vec<u32> {
    db.query("SELECT DISTINCT version FROM schema_migrations ORDER BY version")
        .fetch_all()
        .await
        .expect("read schema_migrations")
}

/// Deletes the records of `versions`, as if the run had stopped before writing them.
async fn forget(db: &clickhouse::Client, versions: &[u32]) {
    let list = versions
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    db.query(&format!(
        "ALTER TABLE schema_migrations DELETE WHERE version IN ({list})"
    ))
    .execute()
    .await
    .expect("delete the records");
    // 18.16 runs mutations in the background: wait until they are gone
    for _ in 0..100 {
        if recorded(db).await.iter().all(|v| !versions.contains(v)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the records of {versions:?} were not deleted within 10 s");
}

#[tokio::test]
async fn add_column_migrations_rerun_after_a_stop_before_their_record() {
    let env = TestEnv::new("migrate_rerun_add_column").await;
    let db = env.db();
    let all = recorded(&db).await;
    let adding = adding_columns();
    assert_eq!(adding, vec![6, 7, 13, 18, 22, 50, 64]);

    forget(&db, &adding).await;
    let applied = migrate::apply(&env.clickhouse)
        .await
        .expect("columns already there count as added");
    assert_eq!(applied, adding, "applied again, statements and all");
    assert_eq!(recorded(&db).await, all, "and recorded");
    assert_eq!(
        migrate::apply(&env.clickhouse).await.expect("third run"),
        Vec::<u32>::new()
    );
    env.cleanup().await;
}

#[tokio::test]
async fn add_column_with_a_missing_column_is_still_an_error() {
    let env = TestEnv::new("migrate_rerun_missing_column").await;
    let db = env.db();
    // 0007 adds price_currency and fx_rate; one of them is gone (changed by hand)
    db.query("ALTER TABLE charges DROP COLUMN fx_rate")
        .execute()
        .await
        .expect("drop a column");
    forget(&db, &[7]).await;
    let err = migrate::apply(&env.clickhouse)
        .await
        .expect_err("price_currency exists but fx_rate does not");
    let text = err.to_string();
    assert!(
        text.contains("0007_charge_fx.sql statement 1") && text.contains("Code: 44"),
        "{text}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_racing_on_a_fresh_database_both_succeed() {
    let env = TestEnv::new("migrate_race").await;
    let expected = recorded(&env.db()).await;
    for round in 0..3 {
        tally_platform::store::server(&env.clickhouse)
            .query(&format!("DROP DATABASE {}", env.clickhouse.database))
            .execute()
            .await
            .expect("start from nothing");
        let runner = || {
            let cfg = env.clickhouse.clone();
            tokio::spawn(async move { migrate::apply(&cfg).await })
        };
        let (a, b) = tokio::join!(runner(), runner());
        let a = a
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}, runner a: {e}"));
        let b = b
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}, runner b: {e}"));
        let mut either: Vec<u32> = a.iter().chain(&b).copied().collect();
        either.sort_unstable();
        either.dedup();
        assert_eq!(either, expected, "round {round}: every migration applied");
        assert_eq!(
            recorded(&env.db()).await,
            expected,
            "round {round}: and recorded"
        );
        assert_eq!(
            migrate::apply(&env.clickhouse).await.expect("a third run"),
            Vec::<u32>::new()
        );
    }
    env.cleanup().await;
}
