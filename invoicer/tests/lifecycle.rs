//! Lifecycle records against the real ClickHouse: transitions append, retries change nothing,
//! a finalized invoice cannot go back, and two writers racing agree on one status.

use tally_domain::InvoiceStatus::{self, *};
use tally_invoicer::lifecycle::{self, LifecycleError, Recorded};
use tally_platform::testkit::TestEnv;

#[tokio::test]
async fn transitions_append_with_actor_and_refuse_going_back() {
    let env = TestEnv::new("lifecycle_append").await;
    let db = env.db();
    let inv = "inv-1";
    assert_eq!(lifecycle::status(&db, inv).await.unwrap(), Draft);

    let r = lifecycle::record(
        &db,
        inv,
        Finalized,
        "invoicer",
        "grace period passed",
        1_000,
    )
    .await
    .unwrap();
    assert!(matches!(r, Recorded::Applied(_)));
    let again = lifecycle::record(&db, inv, Finalized, "invoicer:b", "rerun", 2_000)
        .await
        .unwrap();
    assert!(
        matches!(&again, Recorded::Already(t) if t.actor == "invoicer" && t.at_ms == 1_000),
        "a retried transition returns the first record: {again:?}"
    );
    let back = lifecycle::record(&db, inv, Draft, "api:mallory", "reopen", 3_000).await;
    assert!(
        matches!(
            back,
            Err(LifecycleError::Status { ref invoice_id, .. }) if invoice_id == inv
        ),
        "{back:?}"
    );
    lifecycle::record(&db, inv, Paid, "payments:stripe", "evt_1", 4_000)
        .await
        .unwrap();
    let late_failure =
        lifecycle::record(&db, inv, Uncollectible, "payments:stripe", "evt_0", 5_000).await;
    assert!(late_failure.is_err(), "a paid invoice is never reopened");

    let history = lifecycle::history(&db, inv).await.unwrap();
    let steps: Vec<(InvoiceStatus, InvoiceStatus, &str, i64)> = history
        .iter()
        .map(|t| (t.from, t.to, t.actor.as_str(), t.at_ms))
        .collect();
    assert_eq!(
        steps,
        vec![
            (Draft, Finalized, "invoicer", 1_000),
            (Finalized, Paid, "payments:stripe", 4_000)
        ]
    );
    assert_eq!(lifecycle::status(&db, inv).await.unwrap(), Paid);
    env.cleanup().await;
}

#[tokio::test]
async fn racing_writers_agree_on_one_status() {
    let env = TestEnv::new("lifecycle_race").await;
    let db = env.db();
    let inv = "inv-race";
    lifecycle::record(&db, inv, Finalized, "invoicer", "due", 1_000)
        .await
        .unwrap();
    // both see `finalized` and append: a payment and a void at nearly the same instant
    let (a, b) = tokio::join!(
        lifecycle::record(&db, inv, Paid, "payments:stripe", "evt_9", 2_001),
        lifecycle::record(&db, inv, Void, "api:ops", "duplicate invoice", 2_000),
    );
    assert!(a.is_ok() || b.is_ok());
    // whatever was appended, every reader folds to the earliest allowed transition
    let status = lifecycle::status(&db, inv).await.unwrap();
    let history = lifecycle::history(&db, inv).await.unwrap();
    assert_eq!(status, lifecycle::status_of(&history));
    assert_eq!(status, Void, "the earlier transition wins: {history:?}");
    env.cleanup().await;
}
