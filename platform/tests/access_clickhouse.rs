//! Separation of duties on ClickHouse 18.16 (what the local stack and CI run), on a server of
//! this test's own configured with the generated `users.xml`: the migrator may create tables;
//! a service may read and insert in the Tally database but cannot drop, alter, create or
//! truncate a table nor touch another database; the reader cannot write; a wrong password does
//! not log in. The roles migration (`-- requires: sql_rbac`) is recorded as skipped there, not
//! applied, and a second run changes nothing.

mod support;

use support::{as_user, run, start};
use tally_platform::access::Service;
use tally_platform::{migrate, ClickHouseConfig};

#[tokio::test]
async fn each_service_is_refused_outside_its_rights() {
    let users: Vec<(Service, String)> = Service::ALL
        .iter()
        .map(|s| (*s, format!("pw-{}", s.user())))
        .collect();
    let server = start(&users).await;
    let pw = |s: Service| format!("pw-{}", s.user());
    let admin = clickhouse::Client::default().with_url(&server.url);
    run(&admin, "CREATE DATABASE other").await.unwrap();
    run(
        &admin,
        "CREATE TABLE other.secrets (x UInt8) ENGINE = MergeTree() ORDER BY x",
    )
    .await
    .unwrap();

    let migrator = ClickHouseConfig {
        url: server.url.clone(),
        database: "tally".into(),
        user: Service::Migrate.user().into(),
        password: pw(Service::Migrate),
        ..ClickHouseConfig::default()
    };
    let applied = migrate::apply(&migrator)
        .await
        .expect("the migrator creates the schema");
    // every `-- requires: sql_rbac` migration (the roles snapshots) is skipped on 18.16
    let conditional: Vec<u32> = migrate::MIGRATIONS
        .iter()
        .filter(|m| m.sql.starts_with("-- requires: sql_rbac"))
        .map(|m| m.version)
        .collect();
    assert!(!conditional.is_empty());
    assert!(
        conditional.iter().all(|v| !applied.contains(v)),
        "18.16 has no SQL RBAC: {applied:?}"
    );
    assert_eq!(applied.len(), migrate::MIGRATIONS.len() - conditional.len());
    let admin_db = admin.clone().with_database("tally").with_validation(false);
    let skipped: Vec<(u32, String)> = admin_db
        .query("SELECT version, reason FROM schema_migrations_skipped ORDER BY version")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        skipped.iter().map(|s| s.0).collect::<Vec<_>>(),
        conditional,
        "{skipped:?}"
    );
    assert!(
        skipped
            .iter()
            .all(|s| s.1.contains("requires sql_rbac and the server is 18.16")),
        "{skipped:?}"
    );
    let again = migrate::apply(&migrator).await.expect("a second run");
    assert!(again.is_empty(), "{again:?}");
    let recorded: u64 = admin_db
        .query("SELECT count() FROM schema_migrations_skipped")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        recorded,
        conditional.len() as u64,
        "a skip is recorded once"
    );

    let aggregator = as_user(
        &server,
        Service::Aggregator.user(),
        &pw(Service::Aggregator),
    );
    run(
        &aggregator,
        "INSERT INTO usage_events (customer, event_id) VALUES ('acme', 'e1')",
    )
    .await
    .expect("the aggregator inserts usage");
    let count: u64 = aggregator
        .query("SELECT count() FROM usage_events")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(count, 1);
    for forbidden in [
        "DROP TABLE usage_events",
        "ALTER TABLE usage_events DELETE WHERE 1 = 1",
        "CREATE TABLE t (x UInt8) ENGINE = MergeTree() ORDER BY x",
        "TRUNCATE TABLE usage_events",
        "SELECT count() FROM other.secrets",
        "INSERT INTO other.secrets VALUES (1)",
    ] {
        assert!(
            run(&aggregator, forbidden).await.is_err(),
            "aggregator ran: {forbidden}"
        );
    }
    // Known 18.16 limit: a session may ask for `allow_ddl = 1` and get it (no settings
    // constraints before 19.x), so this stops accidents, not a compromised service; current
    // ClickHouse with `tally-access sql` (SQL RBAC) stops both.

    let reader = as_user(&server, Service::Reader.user(), &pw(Service::Reader));
    let seen: u64 = reader
        .query("SELECT count() FROM usage_events")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(seen, 1);
    assert!(
        run(&reader, "INSERT INTO usage_events (customer) VALUES ('x')")
            .await
            .is_err()
    );
    assert!(run(&reader, "DROP TABLE usage_events").await.is_err());

    let wrong = as_user(&server, Service::Rater.user(), "not the password");
    assert!(wrong.query("SELECT 1").fetch_one::<u8>().await.is_err());
}
