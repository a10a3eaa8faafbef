//! The customer portal in headless Chromium (Debian's `chromium`, driven over the DevTools
//! pipe): a signed link opens the customer's page under its catalog name with the right
//! invoices (status, amounts with separators), live spend and budgets from a stand-in spend
//! decider on NATS, cost per day by meter and by agent and usage per day per meter (SVG
//! charts with axes and legends) over several days, two agents and two meters, prepaid
//! credits, the prepaid wallet (what is left of each grant, one expiring soon flagged); a
//! screenshot of the page is a real PNG of the page's size; without a decider the
//! page says "live spend unavailable"; the PDF link downloads a real PDF of the invoice; the
//! same signature does not open another customer's page, an invoice of another customer is
//! not served, and an expired link is refused.

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

/// A charge of the period `[from_ms, to_ms)` as the rater stores it.
async fn charge(
    db: &clickhouse::Client,
    customer: &str,
    (from_ms, to_ms): (i64, i64),
    meter: &str,
    quantity: i64,
    amount_minor: i64,
) {
    db.query(&format!(
        "INSERT INTO charges (charge_id, customer, period_start, period_end, meter, group_key, \
         group_names, group_values, plan_id, plan_version, price_model, currency, quantity, \
         unit_price, tiers, amount_minor, windows, usage_from, usage_to, computed_at, version) \
         VALUES ('ch_{customer}_{meter}', '{customer}', toDateTime({from}), toDateTime({to}), \
         '{meter}', '{{}}', [], [], 'pro', 1, 'graduated', 'USD', toDecimal128({quantity}, 9), \
         '', '[]', {amount_minor}, 1, toDateTime({from}), now(), now(), 1)",
        from = from_ms / 1000,
        to = to_ms / 1000,
    ))
    .execute()
    .await
    .expect("charge");
}

/// A stand-in spend decider: answers `<root>.balance.acme` with `answer` until dropped.
async fn decider(
    nats: &async_nats::Client,
    root: &str,
    answer: serde_json::Value,
) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    let mut sub = nats
        .subscribe(format!("{root}.balance.acme"))
        .await
        .expect("subscribe");
    nats.flush().await.expect("flush");
    let nats = nats.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = nats
                    .publish(reply, serde_json::to_vec(&answer).unwrap().into())
                    .await;
            }
        }
    })
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
    // the period (from the rater's charges): three days ago to 27 days ahead; usage on its
    // first three days, two agents, two meters
    let p = days_ago_ms(3);
    let period = (p, p + 30 * DAY_MS);
    usage(
        &db,
        "acme",
        &[
            (p + 3_600_000, "support-bot", "tokens", "SUM", 1_500),
            (
                p + DAY_MS + 3_600_000,
                "support-bot",
                "tokens",
                "SUM",
                2_500,
            ),
            (p + DAY_MS + 7_200_000, "research-bot", "tokens", "SUM", 700),
            (
                p + 2 * DAY_MS + 60_000,
                "research-bot",
                "tokens",
                "SUM",
                1_200_000,
            ),
            (p + 3_600_000, "research-bot", "tool_calls", "COUNT", 1),
            (p + 3_600_000, "research-bot", "tool_calls", "COUNT", 1),
            (p + 3_660_000, "research-bot", "tool_calls", "COUNT", 1),
            (
                p + 2 * DAY_MS + 120_000,
                "support-bot",
                "tool_calls",
                "COUNT",
                1,
            ),
            (
                p + 2 * DAY_MS + 180_000,
                "support-bot",
                "tool_calls",
                "COUNT",
                1,
            ),
        ],
    )
    .await;
    usage(
        &db,
        "globex",
        &[(p + 3_600_000, "spy-bot", "tokens", "SUM", 31_337)],
    )
    .await;
    charge(&db, "acme", period, "tokens", 1_204_700, 1_234_567).await;
    charge(&db, "acme", period, "tool_calls", 5, 250).await;
    charge(&db, "globex", period, "tokens", 31_337, 98_765).await;
    for (customer, name) in [("acme", "Acme Robotics"), ("globex", "Globex Corporation")] {
        db.query(&format!(
            "INSERT INTO catalog_customers (customer, version, body, recorded_at) VALUES \
             ('{customer}', 1, '{{\"id\": \"{customer}\", \"version\": 1, \"name\": \"{name}\"}}', now())"
        ))
        .execute()
        .await
        .expect("catalog customer");
    }
    tally_invoicer::store::grant_credit(
        &db,
        "welcome",
        "acme",
        "USD",
        50_000,
        "Welcome credit",
        now,
    )
    .await
    .expect("grant");
    // the prepaid wallet: a EUR grant expiring in 10 days (this period's usage is in USD, so
    // it stays whole) and a USD grant the period's usage uses up at the wallet pass
    for (id, currency, minor, expires) in [
        ("launch", "EUR", 25_000, Some(now + 10 * DAY_MS)),
        ("welcome-usd", "USD", 10_000, None),
    ] {
        let g = tally_payments::wallet::Grant {
            grant_id: id.into(),
            customer: tally_domain::CustomerId::new("acme").unwrap(),
            currency: currency.parse().unwrap(),
            amount_minor: minor,
            kind: tally_payments::wallet::GrantKind::Promotional,
            priority: 0,
            expires_at_ms: expires,
            created_at_ms: now,
            paid_at_ms: None,
        };
        tally_payments::wallet::store::append_grant(&db, &g, "Launch credit", "ops")
            .await
            .expect("wallet grant");
    }
    let pass = tally_payments::wallet::pass::run(&db, now)
        .await
        .expect("wallet pass");
    assert_eq!(pass.failed, 0);
    let nats = async_nats::connect(
        std::env::var("TALLY_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
    )
    .await
    .expect("nats");
    let root = format!("portaltest{}", std::process::id());
    let live = tally_payments::portal::live::LiveSpend {
        client: nats.clone(),
        subject_root: root.clone(),
        timeout: std::time::Duration::from_millis(2_000),
    };
    let answering = decider(
        &nats,
        &root,
        serde_json::json!({
            "customer": "acme", "period_start": "", "period_end": "", "currency": "USD",
            "spend": "12400.5", "meters": {}, "agents": {}, "holds": 1, "held_amount": "12.25",
            "budgets": [
                {"budget_id": "monthly", "agent": null, "meter": null, "kind": "amount",
                 "limit": "20000", "spent": "12400.5", "held": "12.25", "remaining": "7587.25", "hard": true},
                {"budget_id": "support-tokens", "agent": "support-bot", "meter": "tokens", "kind": "quantity",
                 "limit": "5000", "spent": "4000", "held": "0", "remaining": "1000", "hard": false}
            ],
            "entitlements": {"plan": "pro", "features": ["sso"], "limits": [
                {"meter": "tokens", "group": {"model": "gpt-4o"}, "limit": "1000000", "used": "250000", "held": "0", "remaining": "750000"}
            ]}
        }),
    )
    .await;
    let server = start_with_live(db.clone(), wall_ms, Some(live)).await;
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
    let shot_path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("portal.png");
    let (acme_again, shot_in) = (acme_url.clone(), shot_path.clone());
    let (to_browser, from_test) = std::sync::mpsc::channel::<()>();
    let (to_test, from_browser) = tokio::sync::oneshot::channel::<()>();
    let browsing = tokio::task::spawn_blocking(move || {
        let mut b = Browser::launch(&profile);
        b.allow_downloads(&downloads_in);
        b.open(&acme_url);
        let page = b.eval(PAGE);
        let png = b.screenshot(1100);
        std::fs::write(&shot_in, &png).expect("screenshot written");
        let laid_out = b.eval("document.documentElement.scrollHeight");
        // the test stops the decider, then the page is opened again
        let _ = to_test.send(());
        from_test.recv().expect("decider stopped");
        b.open(&acme_again);
        let without_decider = b.eval(PAGE);
        b.eval(&format!(
            "document.querySelector('tr[data-invoice=\"{open_in}\"] a.pdf').click(); true"
        ));
        b.open(&forged_in);
        let forged_text = b.eval("document.body.innerText");
        b.open(&expired);
        let expired_text = b.eval("document.body.innerText");
        b.open(&foreign_pdf);
        let foreign_text = b.eval("document.body.innerText");
        (
            page,
            (png, laid_out),
            without_decider,
            forged_text,
            expired_text,
            foreign_text,
        )
    });
    from_browser.await.expect("first page seen");
    answering.abort();
    let _ = answering.await;
    nats.flush().await.expect("flush");
    to_browser.send(()).expect("browser waiting");
    let seen = browsing.await.expect("browser session");
    let (page, (png, laid_out), without_decider, forged_text, expired_text, foreign_text) = seen;

    assert_eq!(page["customer"], "acme");
    assert_eq!(
        page["name"], "Acme Robotics",
        "the catalog name, not the id"
    );
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
            vec![
                "research-bot".to_owned(),
                "tokens".into(),
                "1,200,700".into(),
                "2".into(),
                "12,304.68 USD".into()
            ],
            vec![
                "research-bot".into(),
                "tool_calls".into(),
                "3".into(),
                "3".into(),
                "1.50 USD".into()
            ],
            vec![
                "support-bot".into(),
                "tokens".into(),
                "4,000".into(),
                "2".into(),
                "40.99 USD".into()
            ],
            vec![
                "support-bot".into(),
                "tool_calls".into(),
                "2".into(),
                "2".into(),
                "1.00 USD".into()
            ],
        ]
    );
    // charges divided over the days by usage, largest remainder: the days add up to them
    let charts: serde_json::Value = page["charts"].clone();
    let chart = |id: &str| {
        charts
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no chart {id}: {charts}"))
            .clone()
    };
    let by_meter = chart("cost-by-meter");
    assert_eq!(by_meter["title"], "Cost per day by meter");
    assert_eq!(
        by_meter["axes"],
        serde_json::json!(["Day (UTC)", "Cost (USD)"])
    );
    // one bar per day of the period so far (its first day to today)
    assert_eq!(
        by_meter["days"],
        serde_json::json!([
            [day(p), "16.87 USD"],
            [day(p + DAY_MS), "32.79 USD"],
            [day(p + 2 * DAY_MS), "12,298.51 USD"],
            [day(p + 3 * DAY_MS), "0.00 USD"]
        ])
    );
    assert_eq!(
        by_meter["legend"],
        serde_json::json!(["tokens 12,345.67 USD", "tool_calls 2.50 USD"])
    );
    assert_eq!(
        by_meter["ticks"],
        serde_json::json!(["0", "5,000", "10,000", "15,000"])
    );
    let by_agent = chart("cost-by-agent");
    assert_eq!(
        by_agent["legend"],
        serde_json::json!(["research-bot 12,306.18 USD", "support-bot 41.99 USD"])
    );
    let tokens = chart("usage-tokens");
    assert_eq!(
        tokens["axes"],
        serde_json::json!(["Day (UTC)", "tokens (sum)"])
    );
    assert_eq!(
        tokens["legend"],
        serde_json::json!(["research-bot 1,200,700", "support-bot 4,000"])
    );
    assert_eq!(tokens["days"].as_array().unwrap().len(), 4);
    assert_eq!(tokens["bars"], 4, "a bar part per agent and day with usage");
    let tools = chart("usage-tool_calls");
    assert_eq!(
        tools["axes"],
        serde_json::json!(["Day (UTC)", "tool_calls (count)"])
    );
    assert_eq!(
        tools["legend"],
        serde_json::json!(["research-bot 3", "support-bot 2"])
    );
    // live spend, budgets and how close each is, from the decider
    assert_eq!(page["live"], "12,400.50 USD");
    assert_eq!(
        page["budgets"],
        serde_json::json!([
            [
                "monthly",
                "62",
                "12,400.50 USD",
                "20,000.00 USD",
                "7,587.25 USD"
            ],
            [
                "support-tokens",
                "80",
                "4,000 tokens",
                "5,000 tokens",
                "1,000 tokens"
            ]
        ])
    );
    assert_eq!(page["cost_card"], "12,400.50 USD");
    assert_eq!(page["credit"], "500.00 USD");
    let text = page["text"].as_str().unwrap();
    assert!(text.contains("reserved by 1 request in progress"), "{text}");
    assert!(
        text.contains("tokens (model=gpt-4o)") && text.contains("1,000,000"),
        "{text}"
    );
    assert!(text.contains("Welcome credit"), "{text}");
    // the wallet: what is left of each grant, the one expiring within 30 days flagged
    let mut wallet: Vec<serde_json::Value> = page["wallet"].as_array().unwrap().clone();
    wallet.sort_by_key(|r| r[0].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        wallet,
        vec![
            serde_json::json!(["launch", "active", "250.00 EUR", true]),
            serde_json::json!(["welcome-usd", "used", "0.00 USD", false]),
        ]
    );
    assert!(
        page["wallet_balance"]
            .as_str()
            .unwrap_or_default()
            .contains("250.00 EUR"),
        "{}",
        page["wallet_balance"]
    );
    assert!(!text.contains("Live spend unavailable"));
    // without a decider: the same page, without the live part
    assert_eq!(without_decider["name"], "Acme Robotics");
    assert!(without_decider["text"]
        .as_str()
        .unwrap()
        .contains("Live spend unavailable"));
    assert_eq!(without_decider["budgets"], serde_json::json!([]));
    assert_eq!(without_decider["cost_card"], "12,348.17 USD");
    assert_eq!(without_decider["charts"].as_array().unwrap().len(), 4);
    // the screenshot: a PNG of the page laid out 1100 px wide, as tall as the page
    let (w, h) = support::cdp::png_size(&png);
    assert_eq!(w, 1100, "{shot_path:?}");
    let page_height = laid_out.as_f64().unwrap() as u32;
    assert!(
        h >= 1500 && h.abs_diff(page_height) <= 2,
        "{h} vs {page_height}: {shot_path:?}"
    );
    assert!(png.len() > 50_000, "{} bytes: {shot_path:?}", png.len());
    println!(
        "screenshot: {} ({} bytes, {w}x{h})",
        shot_path.display(),
        png.len()
    );
    assert_eq!(page["payments"], serde_json::json!(["succeeded"]));
    let text = page["text"].as_str().unwrap();
    assert!(
        !text.contains("globex")
            && !text.contains(&foreign_id)
            && !text.contains("spy-bot")
            && !text.contains("31337")
            && !text.contains("31,337")
            && !text.contains("Globex")
            && !text.contains("987.65")
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
    let _ = period;
    drop(server);
    env.cleanup().await;
}

/// What the test reads from the page.
const PAGE: &str = r#"({
    customer: document.getElementById('customer').dataset.customer,
    name: document.getElementById('customer').textContent,
    invoices: [...document.querySelectorAll('tr.invoice')].map(r => [r.dataset.invoice, r.dataset.status, r.cells[3].textContent, r.cells[5].textContent]),
    usage: [...document.querySelectorAll('#usage tr[data-agent]')].map(r => [r.dataset.agent, r.dataset.meter, r.cells[2].textContent, r.cells[3].textContent, r.cells[4].textContent]),
    charts: [...document.querySelectorAll('svg.chart')].map(s => ({
        id: s.dataset.chart,
        title: s.querySelector('.chart-title').textContent,
        axes: [...s.querySelectorAll('.axis-label')].map(t => t.textContent),
        ticks: [...s.querySelectorAll('.y-tick')].map(t => t.textContent),
        days: [...s.querySelectorAll('g.day')].map(g => [g.dataset.day, g.dataset.total]),
        bars: s.querySelectorAll('rect.bar').length,
        legend: [...s.querySelectorAll('.legend-entry')].map(e => e.textContent),
    })),
    live: (document.getElementById('live-spend') || {}).textContent || null,
    budgets: [...document.querySelectorAll('tr.budget')].map(r => [r.dataset.budget, r.dataset.percent, r.cells[4].textContent, r.cells[5].textContent, r.cells[6].textContent]),
    cost_card: document.querySelector('#cost-to-date .value').textContent,
    credit: document.querySelector('#credit-balance .value').textContent,
    payments: [...document.querySelectorAll('tr.payment')].map(r => r.dataset.status),
    wallet: [...document.querySelectorAll('tr.wallet-grant')].map(r => [r.dataset.grant, r.dataset.status, r.cells[2].textContent, r.classList.contains('expiring')]),
    wallet_balance: (document.getElementById('wallet-balance') || {}).textContent || null,
    text: document.body.innerText,
    scripts: document.scripts.length,
    external: [...document.querySelectorAll('[src],link[href]')].length,
})"#;

fn day(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}
