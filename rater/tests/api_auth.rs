//! Issue 16, finding 5: the rater's API answered anyone. Now every route but the OpenAPI
//! document needs a bearer token whose role allows it, and every change is audited with the
//! token's actor. Over a real socket and a real ClickHouse (the test's own database).

mod common;

use common::http::{request_as, start, token};
use tally_platform::auth::{audit, Role};

fn plan(version: u32) -> String {
    serde_json::json!({
        "id": "hostile", "version": version, "currency": "USD",
        "effective_from": "2026-01-01T00:00:00Z",
        "prices": [{"meter": "tokens", "model": "per_unit", "unit_price": "0"}]
    })
    .to_string()
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
    let (addr, stop, server) = start(db.clone()).await;
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
    let seen: Vec<(&str, &str, &str, &str, u16)> = rows
        .iter()
        .map(|r| {
            (
                r.actor.as_str(),
                r.role.as_str(),
                r.method.as_str(),
                r.path.as_str(),
                r.status,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("api:erin", "catalog_editor", "POST", "/v1/plans", 0),
            ("api:erin", "catalog_editor", "POST", "/v1/plans", 201),
        ],
        "refused requests change nothing and are not changes"
    );
    assert_eq!(rows[0].request_id, rows[1].request_id);

    // corrections and backfills change what is billed: an invoice operator's, not a catalog
    // editor's (nor a reader's); the operator gets past the role check to the validation
    let void = r#"{"kind":"void","customer":"acme","source":"s","id":"e-1","time":"2026-11-02T00:00:00Z"}"#;
    for path in ["/v1/corrections", "/v1/backfill"] {
        for t in [&editor, &reader, &keys] {
            let (status, body) = request_as(addr, Some(t), "POST", path, void).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (403, Some("forbidden")),
                "{path}: {body}"
            );
        }
        let (status, body) = request_as(addr, Some(&operator), "POST", path, void).await;
        assert_ne!(status, 403, "{path}: {body}");
        assert_ne!(status, 401, "{path}: {body}");
    }

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
