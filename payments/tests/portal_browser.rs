//! The customer portal in headless Chromium (Debian's `chromium`, driven over the DevTools
//! pipe): a signed link opens the customer's page with the right invoices (status, amounts)
//! and this period's usage by agent and meter with a chart; the PDF link downloads a real PDF
//! of the invoice; the same signature does not open another customer's page, an invoice of
//! another customer is not served, and an expired link is refused.

mod support;

use support::cdp::Browser;
use support::*;
use tally_payments::portal::link;
use tally_payments::signature::Secret;
use tally_platform::testkit::TestEnv;

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Committed usage, as the aggregator writes it: one reading per event plus the batch marker.
async fn usage(db: &clickhouse::Client, customer: &str, rows: &[(i64, &str, &str, &str, i64)]) {
    let values: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, (window_ms, agent, meter, aggregation, q))| {
            format!(
                "('{customer}', '{agent}', 'ev_{customer}_{i}', '{meter}', '{aggregation}', toDateTime({secs}), 60, \
                 {window_ms}, [], [], '{{}}', toDecimal128({q}, 9), '', 'b_{customer}', now())",
                secs = window_ms / 1000
            )
        })
        .collect();
    db.query(&format!(
        "INSERT INTO usage_meter_readings (customer, agent, event_id, meter, aggregation, \
         window_start, window_secs, time_ms, group_names, group_values, group_key, value, \
         unique_value, batch_id, inserted_at) VALUES {}",
        values.join(", ")
    ))
    .execute()
    .await
    .expect("usage readings");
    tally_platform::testkit::fold_readings(db, &format!("b_{customer}")).await;
}

fn month_start_ms(now_ms: i64) -> i64 {
    use chrono::{Datelike, TimeZone, Utc};
    let now = Utc.timestamp_millis_opt(now_ms).unwrap();
    Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .unwrap()
        .timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_sees_its_invoices_usage_and_pdf_and_nothing_else() {
    let env = TestEnv::new("portal_browser").await;
    let db = env.db();
    let now = wall_ms();
    let paid = invoice(
        &db,
        "acme",
        "USD",
        days_ago_ms(120),
        &[("tokens", 12_345, 1_234)],
        now,
    )
    .await;
    let open = past_invoice(
        &db,
        "acme",
        "USD",
        &[("tokens", 777, 0), ("tool_calls", 300, 0)],
    )
    .await;
    let foreign = past_invoice(&db, "globex", "USD", &[("tokens", 999_999, 0)]).await;
    let m = month_start_ms(now);
    usage(
        &db,
        "acme",
        &[
            (m + 3_600_000, "support-bot", "tokens", "SUM", 1_500),
            (
                m + DAY_MS + 3_600_000,
                "support-bot",
                "tokens",
                "SUM",
                2_500,
            ),
            (m + DAY_MS + 7_200_000, "research-bot", "tokens", "SUM", 700),
            (m + 3_600_000, "research-bot", "tool_calls", "COUNT", 1),
            (m + 3_600_000, "research-bot", "tool_calls", "COUNT", 1),
            (m + 3_660_000, "research-bot", "tool_calls", "COUNT", 1),
        ],
    )
    .await;
    usage(
        &db,
        "globex",
        &[(m + 3_600_000, "spy-bot", "tokens", "SUM", 31_337)],
    )
    .await;
    let server = start(db.clone(), wall_ms).await;
    let body = stripe_event(
        "evt_portal",
        "payment_intent.succeeded",
        payment_intent("pi_portal", &paid.invoice_id, paid.amount_due_minor, "usd"),
        now / 1000,
    );
    assert_eq!(
        post_webhook(server.addr, &body, WEBHOOK_SECRET, now / 1000)
            .await
            .1["outcome"],
        "paid"
    );

    // the operator issues a link through the API
    let (_, link_reply) = api(
        server.addr,
        "POST",
        "/v1/portal-links",
        serde_json::json!({"customer": "acme"}),
    )
    .await;
    let acme_url = link_reply["url"].as_str().expect("url").to_owned();
    let token = acme_url.rsplit('/').next().unwrap().to_owned();
    let signature = token.rsplit('.').next().unwrap().to_owned();
    let expires = link_reply["expires_at"].as_i64().unwrap();
    let base = format!("http://{}", server.addr);
    let forged = format!("{base}/portal/globex.{expires}.{signature}");
    let foreign_pdf = format!("{acme_url}/invoices/{}.pdf", foreign.invoice_id);
    let expired = format!(
        "{base}/portal/{}",
        link::token(&Secret::new(PORTAL_SECRET), "acme", now / 1000 - 1).unwrap()
    );

    let dir = tally_platform::own_server::temp_dir("portal-browser").expect("temp dir");
    let (profile, downloads) = (dir.join("profile"), dir.join("downloads"));
    std::fs::create_dir_all(&downloads).unwrap();
    let (paid_id, open_id, foreign_id) = (
        paid.invoice_id.clone(),
        open.invoice_id.clone(),
        foreign.invoice_id.clone(),
    );
    let downloads_in = downloads.clone();
    let (open_in, forged_in) = (open_id.clone(), forged.clone());
    let seen = tokio::task::spawn_blocking(move || {
        let mut b = Browser::launch(&profile);
        b.allow_downloads(&downloads_in);
        b.open(&acme_url);
        let page = b.eval(r#"({
            customer: document.getElementById('customer').dataset.customer,
            invoices: [...document.querySelectorAll('tr.invoice')].map(r => [r.dataset.invoice, r.dataset.status, r.cells[3].textContent, r.cells[5].textContent]),
            usage: [...document.querySelectorAll('#usage tr[data-agent]')].map(r => [r.dataset.agent, r.dataset.meter, r.cells[2].textContent]),
            charts: [...document.querySelectorAll('svg.chart')].map(s => [s.dataset.meter, s.querySelectorAll('rect').length]),
            payments: [...document.querySelectorAll('tr.payment')].map(r => r.dataset.status),
            text: document.body.innerText,
            scripts: document.scripts.length,
            external: [...document.querySelectorAll('[src],link[href]')].length,
        })"#);
        b.eval(&format!("document.querySelector('tr[data-invoice=\"{open_in}\"] a.pdf').click(); true"));
        b.open(&forged_in);
        let forged_text = b.eval("document.body.innerText");
        b.open(&expired);
        let expired_text = b.eval("document.body.innerText");
        b.open(&foreign_pdf);
        let foreign_text = b.eval("document.body.innerText");
        (page, forged_text, expired_text, foreign_text)
    })
    .await
    .expect("browser session");
    let (page, forged_text, expired_text, foreign_text) = seen;

    assert_eq!(page["customer"], "acme");
    assert_eq!(page["scripts"], 0, "the portal runs no script");
    assert_eq!(page["external"], 0, "the portal loads nothing external");
    let invoices: Vec<Vec<String>> = serde_json::from_value(page["invoices"].clone()).unwrap();
    assert_eq!(
        invoices,
        vec![
            vec![
                open_id.clone(),
                "finalized".into(),
                "10.77 USD".into(),
                "0.00 USD".into()
            ],
            vec![
                paid_id.clone(),
                "paid".into(),
                "135.79 USD".into(),
                "135.79 USD".into()
            ],
        ]
    );
    let usage: Vec<Vec<String>> = serde_json::from_value(page["usage"].clone()).unwrap();
    assert_eq!(
        usage,
        vec![
            vec!["research-bot".to_owned(), "tokens".into(), "700".into()],
            vec!["research-bot".into(), "tool_calls".into(), "3".into()],
            vec!["support-bot".into(), "tokens".into(), "4000".into()],
        ]
    );
    let charts: Vec<(String, u64)> = serde_json::from_value(page["charts"].clone()).unwrap();
    assert_eq!(
        charts,
        vec![("tokens".to_owned(), 2), ("tool_calls".to_owned(), 1)]
    );
    assert_eq!(page["payments"], serde_json::json!(["succeeded"]));
    let text = page["text"].as_str().unwrap();
    assert!(
        !text.contains("globex")
            && !text.contains(&foreign_id)
            && !text.contains("spy-bot")
            && !text.contains("31337")
    );

    // the download: a real PDF of that invoice
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let pdf = loop {
        let done: Vec<_> = std::fs::read_dir(&downloads)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pdf"))
            .collect();
        if let Some(p) = done.first() {
            break p.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no PDF downloaded");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let bytes = std::fs::read(&pdf).unwrap();
    assert!(bytes.starts_with(b"%PDF-"), "{pdf:?} is not a PDF");
    let out = std::process::Command::new("pdftotext")
        .arg(&pdf)
        .arg("-")
        .output()
        .expect("pdftotext");
    let pdf_text = String::from_utf8_lossy(&out.stdout);
    assert!(
        pdf_text.contains("10.77") && pdf_text.contains("acme"),
        "{pdf_text}"
    );

    // another customer's page with acme's signature, an expired link, another customer's invoice
    assert!(
        forged_text
            .as_str()
            .unwrap()
            .contains("not valid or has expired"),
        "{forged_text}"
    );
    assert!(!forged_text.as_str().unwrap().contains(&foreign_id));
    assert!(
        expired_text
            .as_str()
            .unwrap()
            .contains("not valid or has expired"),
        "{expired_text}"
    );
    assert!(
        foreign_text.as_str().unwrap().contains("not_found"),
        "{foreign_text}"
    );
    let (status, _) = request(
        server.addr,
        "GET",
        &forged.replace(&base, ""),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(status, hyper::StatusCode::FORBIDDEN);

    let _ = std::fs::remove_dir_all(&dir);
    drop(server);
    env.cleanup().await;
}
