//! Issue 16, finding 5: the rater's API answered anyone. Now every route but the OpenAPI
//! document needs a bearer token whose role allows it, and every change is audited with the
//! token's actor. Over a real socket and a real ClickHouse (the test's own database): an
//! invoice operator's correction and backfill are made (201 and 200, listed with their actor).

mod common;

use common::http::{request_as, start_at, token};
use tally_platform::auth::{audit, Role};

/// 2026-11-02T00:00:00Z, in seconds: when the voided event happened.
const NOV_2: i64 = 1_793_577_600;

/// The API's clock: 2026-11-10T00:00:00Z (the backfilled event of 2026-11-03 is not recent).
fn now_ms() -> i64 {
    1_794_268_800_000
}

fn plan(version: u32) -> String {
    serde_json::json!({
        "id": "hostile", "version": version, "currency": "USD",
        "effective_from": "2026-01-01T00:00:00Z",
        "prices": [{"meter": "tokens", "model": "per_unit", "unit_price": "0"}]
    })
    .to_string()
}

/// Each audit row as (actor, role, method, path, status).
fn audited(rows: &[audit::AuditRow]) -> Vec<(&str, &str, &str, &str, u16)> {
    rows.iter()
        .map(|r| {
            (
                r.actor.as_str(),
                r.role.as_str(),
                r.method.as_str(),
                r.path.as_str(),
                r.status,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_changes_only_for_a_catalog_editor_and_every_change_names_its_actor() {
    let env = tally_platform::testkit::TestEnv::new("rater_api_auth").await;
    let db = env.db();
    tally_rater::store::registry::bootstrap(&db, &[], &common::meter_specs(), 0)
        .await
        .expect("stored meters");
    let reader = token(&db, "rita", Role::Reader).await;
    let operator = token(&db, "otto", Role::InvoiceOperator).await;
    let editor = token(&db, "erin", Role::CatalogEditor).await;
    let keys = token(&db, "kim", Role::KeyAdmin).await;
    let (addr, stop, server) = start_at(db.clone(), now_ms).await;
    let wrong = format!("{}0", &editor[..editor.len() - 1]);
    let wrong = if wrong == editor {
        format!("{}1", &editor[..editor.len() - 1])
    } else {
        wrong
    };

    // strangers: no token, a wrong secret, a made-up token
    let made_up = format!("tly_0000000000000000_{}", "a".repeat(64));
    for (t, code) in [
        (None, "missing_token"),
        (Some(wrong.as_str()), "invalid_token"),
        (Some(made_up.as_str()), "invalid_token"),
    ] {
        for (method, path, body) in [
            ("GET", "/v1/plans", String::new()),
            ("GET", "/v1/customers", String::new()),
            ("POST", "/v1/plans", plan(1)),
            (
                "POST",
                "/v1/tax_rates",
                r#"{"region":"DE","rate_percent":"0","effective_from":"2026-01-01T00:00:00Z"}"#
                    .into(),
            ),
            (
                "POST",
                "/v1/subscriptions",
                r#"{"customer":"acme","plan":"hostile","tax_exempt":true}"#.into(),
            ),
        ] {
            let (status, body) = request_as(addr, t, method, path, &body).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (401, Some(code)),
                "{method} {path}"
            );
        }
    }

    // known principals beyond their role: 403, nothing stored
    for t in [&reader, &operator, &keys] {
        let (status, body) = request_as(addr, Some(t), "POST", "/v1/plans", &plan(1)).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("forbidden")),
            "{body}"
        );
    }
    let (status, body) = request_as(addr, Some(&keys), "GET", "/v1/plans", "").await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, plans) = request_as(addr, Some(&reader), "GET", "/v1/plans", "").await;
    assert_eq!((status, plans.as_array().map(Vec::len)), (200, Some(0)));

    // the editor changes the catalog; the audit names erin, before and after
    let (status, body) = request_as(addr, Some(&editor), "POST", "/v1/plans", &plan(1)).await;
    assert_eq!(status, 201, "{body}");
    let (status, plans) = request_as(addr, Some(&reader), "GET", "/v1/plans", "").await;
    assert_eq!((status, plans.as_array().map(Vec::len)), (200, Some(1)));
    let rows = audit::of_service(&db, "rater").await.expect("audit");
    assert_eq!(
        audited(&rows),
        [
            ("api:erin", "catalog_editor", "POST", "/v1/plans", 0),
            ("api:erin", "catalog_editor", "POST", "/v1/plans", 201),
        ],
        "refused requests change nothing and are not changes"
    );
    assert_eq!(rows[0].request_id, rows[1].request_id);

    // corrections and backfills change what is billed: an invoice operator's, not a catalog
    // editor's (nor a reader's); the operator's are made and name otto
    common::tokens(&db, "acme", NOV_2, "100", "b1").await; // event bot/e-b1, committed
    let void = serde_json::json!({"correction_id": "c-1", "kind": "void", "customer": "acme",
        "source": "bot", "id": "e-b1", "time": "2026-11-02T00:00:00Z", "reason": "duplicate"})
    .to_string();
    let event = serde_json::json!({"specversion": "1.0", "id": "h1", "source": "bot",
        "subject": "acme", "type": "t", "time": "2026-11-03T00:00:00Z",
        "data": {"n": 250, "model": "gpt-4o", "kind": "input"}});
    let import = serde_json::json!({"import_id": "imp-1", "reason": "migrated",
        "from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z", "events": [event]})
    .to_string();
    for (path, body) in [("/v1/corrections", &void), ("/v1/backfill", &import)] {
        for t in [&editor, &reader, &keys] {
            let (status, body) = request_as(addr, Some(t), "POST", path, body).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (403, Some("forbidden")),
                "{path}: {body}"
            );
        }
    }
    // the void: 201 with the correction, then in the customer's corrections
    let (status, voided) =
        request_as(addr, Some(&operator), "POST", "/v1/corrections", &void).await;
    let void_view = serde_json::json!({"correction_id": "c-1", "kind": "void",
        "customer": "acme", "source": "bot", "id": "e-b1", "time": "2026-11-02T00:00:00.000Z",
        "revision": 1, "actor": "api:otto", "reason": "duplicate",
        "created": "2026-11-10T00:00:00.000Z", "counts": true});
    assert_eq!((status, &voided), (201, &void_view));
    let (status, listed) = request_as(
        addr,
        Some(&reader),
        "GET",
        "/v1/customers/acme/corrections",
        "",
    )
    .await;
    assert_eq!((status, listed), (200, serde_json::json!([void_view])));
    // the import: 200 with its report, the event stored as a correction of kind `backfill`
    // (read from the store: the document's `kind` of the corrections list names only void and
    // amend, so the list's answer with it would not fit the document)
    let (status, report) = request_as(addr, Some(&operator), "POST", "/v1/backfill", &import).await;
    assert_eq!(
        (status, report),
        (
            200,
            serde_json::json!({"import_id": "imp-1", "events": 1, "imported": 1,
                "already_present": 0, "refused": {}, "examples": []})
        )
    );
    let stored = tally_rater::store::corrections::of_customer(&db, "acme", "", 10)
        .await
        .expect("corrections");
    let stored: Vec<(&str, &str, &str, &str)> = stored
        .iter()
        .map(|c| {
            (
                c.kind.as_str(),
                c.event_id.as_str(),
                c.actor.as_str(),
                c.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        stored,
        [
            ("backfill", "h1", "api:otto", "migrated"),
            ("void", "e-b1", "api:otto", "duplicate")
        ]
    );
    let rows = audit::of_service(&db, "rater").await.expect("audit");
    assert_eq!(
        audited(&rows)[2..],
        [
            ("api:otto", "invoice_operator", "POST", "/v1/corrections", 0),
            (
                "api:otto",
                "invoice_operator",
                "POST",
                "/v1/corrections",
                201
            ),
            ("api:otto", "invoice_operator", "POST", "/v1/backfill", 0),
            ("api:otto", "invoice_operator", "POST", "/v1/backfill", 200),
        ],
        "the refused requests of others are not changes"
    );

    // the document is public and states the scheme
    let (status, doc) = request_as(addr, None, "GET", "/v1/openapi.json", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"][0]["bearer"], serde_json::json!([]));

    stop.cancel();
    server.await.expect("the server stops");
    env.cleanup().await;
}
