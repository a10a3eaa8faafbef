//! API tokens over a real ClickHouse (the test's own database): a token created after an API
//! started works at once (one reload for an unknown id), a revoked one stops at the next
//! reload, only hashes are stored, and a change is audited before it is made.

use std::sync::Arc;

use tally_platform::auth::{audit, hook, store, AuthError, Authenticator, Permission, Role};
use tally_platform::testkit::TestEnv;

#[tokio::test]
async fn tokens_are_created_found_revoked_and_stored_only_as_hashes() {
    let env = TestEnv::new("auth_store").await;
    let db = env.db();
    let auth = Arc::new(Authenticator::new("invoicer", db.clone()));
    assert_eq!(auth.reload().await.expect("loads"), 0);

    let (bearer, record) = store::create(&db, "olga", Role::InvoiceOperator, "ops", 1_000)
        .await
        .expect("created");
    let header = format!("Bearer {bearer}");
    // unknown to the running API until now: one reload finds it
    let who = auth
        .authorize(Some(&header), Permission::OperateInvoices)
        .await
        .expect("authorized");
    assert_eq!(
        (who.actor.as_str(), who.role),
        ("olga", Role::InvoiceOperator)
    );
    assert_eq!(who.token_id, record.token_id);
    assert_eq!(
        auth.authorize(Some(&header), Permission::EditCatalog).await,
        Err(AuthError::Forbidden {
            role: Role::InvoiceOperator,
            permission: Permission::EditCatalog
        })
    );

    let stored: Vec<String> = db
        .query("SELECT concat(token_id, actor, role, secret_sha256, changed_by) FROM api_tokens")
        .fetch_all()
        .await
        .expect("rows");
    let secret = &bearer[bearer.rfind('_').expect("secret") + 1..];
    assert!(
        stored.iter().all(|r| !r.contains(secret)),
        "the secret is never stored"
    );

    store::revoke(&db, &record.token_id, "ops", 2_000)
        .await
        .expect("revoked");
    assert!(
        auth.authorize(Some(&header), Permission::Read)
            .await
            .is_ok(),
        "until the next reload"
    );
    auth.reload().await.expect("reloads");
    assert_eq!(
        auth.authorize(Some(&header), Permission::Read).await,
        Err(AuthError::Revoked)
    );
    let listed = store::load(&db).await.expect("listed");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].revoked && listed[0].created_by == "ops");
    assert!(store::create(&db, "bad actor", Role::Reader, "ops", 0)
        .await
        .is_err());
    env.cleanup().await;
}

#[tokio::test]
async fn a_change_is_audited_before_it_runs_and_reads_are_not() {
    let env = TestEnv::new("auth_audit").await;
    let db = env.db();
    let (bearer, _) = store::create(&db, "erin", Role::CatalogEditor, "ops", 0)
        .await
        .expect("created");
    let auth = Authenticator::new("rater", db.clone());
    auth.reload().await.expect("loads");
    let who = auth
        .authorize(Some(&format!("Bearer {bearer}")), Permission::EditCatalog)
        .await
        .expect("authorized");

    let db2 = db.clone();
    let answer = hook::audited(&auth, &who, "POST", "/v1/plans", async move {
        // the arrival row is already stored when the handler runs
        let rows = audit::of_service(&db2, "rater").await.expect("audit");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].status, 0);
        tally_platform::http::json(hyper::StatusCode::CREATED, &serde_json::json!({}))
    })
    .await;
    assert_eq!(answer.status(), 201);
    hook::audited(&auth, &who, "GET", "/v1/plans", async {
        tally_platform::http::json(hyper::StatusCode::OK, &serde_json::json!([]))
    })
    .await;
    let rows = audit::of_service(&db, "rater").await.expect("audit");
    let seen: Vec<(&str, &str, &str, u16)> = rows
        .iter()
        .map(|r| {
            (
                r.actor.as_str(),
                r.role.as_str(),
                r.method.as_str(),
                r.status,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("api:erin", "catalog_editor", "POST", 0),
            ("api:erin", "catalog_editor", "POST", 201)
        ]
    );

    // no store to audit into: the change is refused and never runs
    let offline = Authenticator::with_records("rater", vec![]);
    let answer = hook::audited(&offline, &who, "POST", "/v1/plans", async {
        panic!("a change that cannot be audited must not run")
    })
    .await;
    assert_eq!(answer.status(), 503);
    env.cleanup().await;
}
