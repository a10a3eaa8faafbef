//! Issue 17, item 9: each finalized invoice is emailed with its PDF to the customer's catalog
//! `billing_email` and sent as a signed `invoice.finalized` webhook, exactly once. Over the
//! real ClickHouse (invoices stored by the invoicer's code, the catalog as the rater stores it)
//! and NATS (the attempt claims' KV bucket), with a small SMTP sink written here (EHLO, MAIL,
//! RCPT, DATA, QUIT; it records every message and can refuse the first ones with a 451) and
//! the local HTTP receiver of the other notification tests.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rust_decimal::Decimal;
use support::{days_ago_ms, Received, DAY_MS};
use tally_domain::Period;
use tally_invoice::invoice::{build, ChargeLine, Terms};
use tally_invoice::Invoice;
use tally_payments::config::{DunningConfig, InvoiceDeliveryConfig, SecretString, SmtpTls};
use tally_payments::delivery::{self, claims::Claims, Delivery, PassReport};
use tally_payments::dunning::deliver;
use tally_payments::signature::Secret;
use tally_platform::testkit::TestEnv;
use tally_platform::Profile;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const MASTER: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const FROM: &str = "Tally Billing <billing@tally.example>";

/// One message the sink accepted or refused.
#[derive(Debug, Clone)]
struct Mail {
    from: String,
    to: Vec<String>,
    data: String,
    accepted: bool,
    /// Sent after STARTTLS.
    tls: bool,
    /// `AUTH PLAIN`'s decoded credentials (`\0user\0password`), empty without.
    auth: String,
}

impl Mail {
    fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}: ");
        self.data
            .split("\r\n\r\n")
            .next()?
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_owned))
    }

    /// The base64 body of the `application/pdf` part, decoded.
    fn pdf(&self) -> Vec<u8> {
        let at = self
            .data
            .find("Content-Type: application/pdf")
            .expect("a PDF part");
        let part = &self.data[at..];
        let body_at = part.find("\r\n\r\n").expect("part headers") + 4;
        let body = &part[body_at..];
        let end = body.find("\r\n--").expect("the closing boundary");
        support::cdp::base64_decode(&body[..end])
    }
}

/// A minimal SMTP server on a free loopback port: records every message; the first
/// `refuse_first` messages are refused after DATA with `451`.
async fn smtp_sink(refuse_first: usize) -> (u16, Arc<Mutex<Vec<Mail>>>) {
    smtp_sink_with(refuse_first, None).await
}

/// As [`smtp_sink`]; with `tls`, it offers `STARTTLS` and `AUTH PLAIN` (the credentials are
/// recorded with each message).
async fn smtp_sink_with(
    refuse_first: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (u16, Arc<Mutex<Vec<Mail>>>) {
    smtp_sink_slow(refuse_first, tls, Duration::ZERO).await
}

/// As [`smtp_sink_with`]; each message's answer after DATA is sent `delay` after the message
/// arrived (a slow SMTP server; the message counts as received at once).
async fn smtp_sink_slow(
    refuse_first: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
    delay: Duration,
) -> (u16, Arc<Mutex<Vec<Mail>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let got: Arc<Mutex<Vec<Mail>>> = Arc::default();
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (g, tls) = (g.clone(), tls.clone());
            tokio::spawn(async move {
                let upgrade = session(stream, tls.is_some(), false, &g, refuse_first, delay).await;
                if let (Some(tcp), Some(acceptor)) = (upgrade, tls) {
                    // a client that does not trust the certificate aborts the handshake here
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        session(stream, false, true, &g, refuse_first, delay).await;
                    }
                }
            });
        }
    });
    (port, got)
}

/// One SMTP session on `stream`; returns the stream when the client asked for `STARTTLS`
/// (offered when `offer_tls`), after answering 220.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    offer_tls: bool,
    tls: bool,
    got: &Mutex<Vec<Mail>>,
    refuse_first: usize,
    delay: Duration,
) -> Option<S> {
    let mut io = BufReader::new(stream);
    if !tls {
        io.write_all(b"220 sink.test ESMTP\r\n").await.ok()?;
    }
    let (mut from, mut to, mut auth) = (String::new(), Vec::new(), String::new());
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await.unwrap_or(0) == 0 {
            return None;
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        let arg = |prefix: &str| {
            cmd[prefix.len()..]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        let reply: &[u8] = if upper.starts_with("EHLO") {
            match (offer_tls, tls) {
                (true, _) => b"250-sink.test\r\n250 STARTTLS\r\n",
                (false, true) => b"250-sink.test\r\n250 AUTH PLAIN LOGIN\r\n",
                (false, false) => b"250 sink.test\r\n",
            }
        } else if upper == "STARTTLS" && offer_tls {
            io.write_all(b"220 go ahead\r\n").await.ok()?;
            return Some(io.into_inner());
        } else if upper.starts_with("AUTH PLAIN ") && tls {
            auth = String::from_utf8_lossy(&support::cdp::base64_decode(&cmd[11..])).into_owned();
            b"235 2.7.0 authenticated\r\n"
        } else if upper.starts_with("HELO") || upper == "NOOP" || upper == "RSET" {
            b"250 ok\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = arg("MAIL FROM:");
            to.clear();
            b"250 ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            to.push(arg("RCPT TO:"));
            b"250 ok\r\n"
        } else if upper == "DATA" {
            io.write_all(b"354 end with .\r\n").await.ok()?;
            let mut data = String::new();
            loop {
                let mut l = String::new();
                if io.read_line(&mut l).await.unwrap_or(0) == 0 {
                    return None;
                }
                if l == ".\r\n" {
                    break;
                }
                data.push_str(l.strip_prefix('.').unwrap_or(&l));
            }
            let accepted = {
                let mut v = got.lock().expect("lock");
                let accepted = v.len() >= refuse_first;
                v.push(Mail {
                    from: from.clone(),
                    to: to.clone(),
                    data,
                    accepted,
                    tls,
                    auth: auth.clone(),
                });
                accepted
            };
            tokio::time::sleep(delay).await;
            if accepted {
                b"250 2.0.0 queued\r\n"
            } else {
                b"451 4.3.0 try again later\r\n"
            }
        } else if upper == "QUIT" {
            let _ = io.write_all(b"221 bye\r\n").await;
            return None;
        } else {
            b"502 not implemented\r\n"
        };
        io.write_all(reply).await.ok()?;
    }
}

/// A finalized invoice numbered `number` (built by the invoicer's code, stored as it stores
/// them), one line of `amount_minor` plus 10 % tax.
async fn finalized(
    db: &clickhouse::Client,
    customer: &str,
    start_ms: i64,
    amount_minor: i64,
    number: &str,
) -> Invoice {
    finalized_at(db, customer, start_ms, amount_minor, number, now_ms()).await
}

/// As [`finalized`], built (finalized) at `built_ms`.
async fn finalized_at(
    db: &clickhouse::Client,
    customer: &str,
    start_ms: i64,
    amount_minor: i64,
    number: &str,
    built_ms: i64,
) -> Invoice {
    let period = Period {
        start_ms,
        end_ms: start_ms + 30 * DAY_MS,
    };
    let charge = ChargeLine {
        charge_id: format!("chg_{customer}_{start_ms}"),
        customer: tally_domain::CustomerId::new(customer).unwrap(),
        period,
        meter: "llm_tokens".into(),
        group_key: "{}".into(),
        group_names: vec![],
        group_values: vec![],
        plan_id: "standard".into(),
        plan_version: 1,
        price_model: "per_unit".into(),
        currency: "USD".parse::<tally_domain::Currency>().unwrap(),
        quantity: Decimal::from(amount_minor),
        unit_price: "0.01".into(),
        tiers_json: "[]".into(),
        amount_minor,
        amount_before_discounts_minor: amount_minor,
        tax_rate: "10".into(),
        tax_minor: amount_minor / 10,
    };
    let terms = Terms {
        grace_ms: 0,
        payment_terms_days: 14,
        issuer: tally_invoice::invoice::Issuer {
            id: "tally".into(),
            name: "Tally Billing Ltd".into(),
            address: vec![],
            tax_id: String::new(),
        },
        ..Terms::default()
    };
    let now = built_ms;
    let mut inv = build(&[charge], vec![], &terms, now).expect("invoice builds");
    if now >= period.end_ms {
        inv.number = Some(number.to_owned());
    }
    tally_invoicer::store::write(db, std::slice::from_ref(&inv))
        .await
        .expect("invoice stored");
    inv
}

/// Stores a copy of the invoice `from` as `id` of `customer`, every other column as stored.
async fn copy_invoice(db: &clickhouse::Client, from: &str, id: &str, customer: &str) {
    let columns: Vec<String> = db
        .query(
            "SELECT name FROM system.columns WHERE database = currentDatabase() \
             AND table = 'invoices' AND default_kind NOT IN ('MATERIALIZED', 'ALIAS')",
        )
        .fetch_all()
        .await
        .expect("columns");
    let values: Vec<String> = columns
        .iter()
        .map(|c| match c.as_str() {
            // test constants: no quote to escape; aliases other than the columns' names (an
            // alias is visible in WHERE), the insert takes the values by position
            "invoice_id" => format!("'{id}' AS new_invoice_id"),
            "customer" => format!("'{customer}' AS new_customer"),
            c => c.to_owned(),
        })
        .collect();
    db.query(&format!(
        "INSERT INTO invoices ({}) SELECT {} FROM invoices WHERE invoice_id = ?",
        columns.join(", "),
        values.join(", ")
    ))
    .bind(from)
    .execute()
    .await
    .expect("invoice copied");
    let n: u64 = db
        .query("SELECT count() FROM invoices WHERE invoice_id = ? AND customer = ?")
        .bind(id)
        .bind(customer)
        .fetch_one()
        .await
        .expect("count");
    assert!(n > 0, "{from} copied as {id}");
}

#[derive(clickhouse::Row, serde::Serialize)]
struct CatalogCustomer {
    customer: String,
    version: u32,
    body: String,
    recorded_at: u32,
}

/// A customer's catalog version, as the rater stores it.
async fn catalog(db: &clickhouse::Client, customer: &str, version: u32, body: serde_json::Value) {
    let mut insert = db
        .insert::<CatalogCustomer>("catalog_customers")
        .await
        .expect("insert");
    insert
        .write(&CatalogCustomer {
            customer: customer.into(),
            version,
            body: body.to_string(),
            recorded_at: 1_800_000_000,
        })
        .await
        .expect("write");
    insert.end().await.expect("stored");
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn accepted(mails: &Arc<Mutex<Vec<Mail>>>) -> Vec<Mail> {
    mails
        .lock()
        .expect("lock")
        .iter()
        .filter(|m| m.accepted)
        .cloned()
        .collect()
}

fn nothing_done(r: &PassReport) -> bool {
    r.emails_decided + r.webhooks_decided + r.delivered + r.failed_attempts + r.abandoned_claims
        == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_finalized_invoice_is_emailed_with_its_pdf_and_sent_as_a_signed_webhook_once() {
    let env = TestEnv::new("invoice_delivery").await;
    let db = env.db();
    let (smtp_port, mails) = smtp_sink(1).await;
    let (hook_addr, hooks, hook_stop) = support::receiver(0).await;

    // the catalog: acme's contact arrives with its second version; globex has one; initech none
    catalog(
        &db,
        "acme",
        1,
        serde_json::json!({"id": "acme", "version": 1, "name": "Acme"}),
    )
    .await;
    catalog(
        &db,
        "acme",
        2,
        serde_json::json!({"id": "acme", "version": 2, "name": "Acme",
            "billing_email": "ap@acme.example"}),
    )
    .await;
    catalog(
        &db,
        "globex",
        1,
        serde_json::json!({"id": "globex", "version": 1, "name": "Globex",
            "billing_email": "invoices@globex.example"}),
    )
    .await;
    catalog(
        &db,
        "initech",
        1,
        serde_json::json!({"id": "initech", "version": 1, "name": "I"}),
    )
    .await;

    let acme_1 = finalized(&db, "acme", days_ago_ms(70), 10_000, "INV-000001").await;
    let acme_2 = finalized(&db, "acme", days_ago_ms(40), 25_050, "INV-000002").await;
    let globex = finalized(&db, "globex", days_ago_ms(40), 7_000, "INV-000003").await;
    let initech = finalized(&db, "initech", days_ago_ms(40), 1_000, "INV-000004").await;
    // the current period: a draft, never sent
    let draft = finalized(&db, "acme", days_ago_ms(5), 3_000, "-").await;
    assert_eq!(draft.number, None);
    // finalized two months ago: before the lookback, never sent
    let old = finalized_at(
        &db,
        "globex",
        days_ago_ms(100),
        500,
        "INV-000000",
        now_ms() - 60 * DAY_MS,
    )
    .await;

    // a stored finalized invoice whose customer id does not validate (a copy of globex's):
    // logged and not delivered, and it never stops the others' delivery
    copy_invoice(&db, &globex.invoice_id, "inv_bad_customer", "bad.id").await;

    let cfg = InvoiceDeliveryConfig {
        enabled: true,
        smtp_host: "127.0.0.1".into(),
        smtp_port,
        smtp_tls: SmtpTls::None,
        from: FROM.into(),
        backoff_secs: 1,
        attempts_max: 3,
        timeout_ms: 5_000,
        lookback_secs: 30 * 86_400,
        ..InvoiceDeliveryConfig::default()
    };
    cfg.validate(Profile::Dev, false).expect("valid in dev");
    let e = cfg
        .validate(Profile::Production, true)
        .expect_err("no TLS outside dev")
        .to_string();
    assert!(e.contains("invoice_delivery.smtp_tls"), "{e}");
    let dunning = DunningConfig {
        signing_secret: SecretString::new(MASTER),
        endpoints: BTreeMap::from([("acme".to_owned(), format!("http://{hook_addr}/billing"))]),
        ..DunningConfig::default()
    };
    let client = async_nats::connect(&env.nats.url).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    let open = |instance: &str| {
        Delivery::open(
            db.clone(),
            cfg.clone(),
            dunning.clone(),
            &env.nats,
            &js,
            instance.to_owned(),
        )
    };
    let a = open("instance-a").await.expect("sender");

    // first pass: three emails and two webhooks decided; the sink refuses the first email
    let r = a.pass(now_ms()).await.expect("pass");
    assert_eq!(
        (r.emails_decided, r.webhooks_decided, r.without_email),
        (3, 2, 1),
        "{r:?}"
    );
    assert_eq!((r.delivered, r.failed_attempts), (4, 1), "{r:?}");
    // after the backoff (1 s) the refused one is sent again
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let r = a.pass(now_ms()).await.expect("pass");
    assert_eq!((r.delivered, r.failed_attempts), (1, 0), "{r:?}");

    let got = accepted(&mails);
    assert_eq!(
        got.len(),
        3,
        "one email per finalized invoice with a contact"
    );
    assert_eq!(
        mails.lock().unwrap().len(),
        4,
        "the refused one and its retry"
    );
    let by_id = |inv: &Invoice| -> Mail {
        let id = format!("<invoice.email.{}@tally.example>", inv.invoice_id);
        let found: Vec<&Mail> = got
            .iter()
            .filter(|m| m.header("Message-ID").as_deref() == Some(id.as_str()))
            .collect();
        assert_eq!(found.len(), 1, "{id}");
        found[0].clone()
    };
    for (inv, to, number, due) in [
        (&acme_1, "ap@acme.example", "INV-000001", "110.00 USD"),
        (&acme_2, "ap@acme.example", "INV-000002", "275.55 USD"),
        (
            &globex,
            "invoices@globex.example",
            "INV-000003",
            "77.00 USD",
        ),
    ] {
        let m = by_id(inv);
        assert_eq!(m.from, "<billing@tally.example>");
        assert_eq!(m.to, vec![format!("<{to}>")]);
        assert_eq!(m.header("To").as_deref(), Some(to));
        assert_eq!(
            m.header("Subject").as_deref(),
            Some(format!("Invoice {number} from Tally Billing Ltd").as_str())
        );
        assert!(m
            .header("Content-Type")
            .is_some_and(|c| c.starts_with("multipart/mixed")));
        assert!(m.data.contains(&format!("Amount due: {due}")), "{}", m.data);
        assert!(m.data.contains(&format!("filename=\"{number}.pdf\"")));
        let pdf = m.pdf();
        assert!(pdf.starts_with(b"%PDF"), "a real PDF");
        assert_eq!(
            pdf,
            tally_invoice::render::pdf(inv).expect("render"),
            "the invoice's own PDF"
        );
    }

    // the webhooks: acme's two invoices, each verifying with acme's endpoint secret only
    let received: Vec<Received> = hooks.lock().unwrap().clone();
    assert_eq!(received.len(), 2);
    let acme_secret = deliver::endpoint_secret(MASTER, "acme");
    for inv in [&acme_1, &acme_2] {
        let id = delivery::webhook_id(&inv.invoice_id);
        let w: Vec<&Received> = received
            .iter()
            .filter(|w| w.notification_id == id)
            .collect();
        assert_eq!(w.len(), 1, "{id}");
        assert_eq!(w[0].path, "/billing");
        assert!(w[0].verifies(&acme_secret));
        assert!(!w[0].verifies(&deliver::endpoint_secret(MASTER, "globex")));
        assert!(!w[0].verifies(&Secret::new(MASTER)));
        let body: serde_json::Value = serde_json::from_slice(&w[0].body).unwrap();
        assert_eq!(body["type"], "invoice.finalized");
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["data"]["invoice_id"], inv.invoice_id.as_str());
        assert_eq!(body["data"]["number"], inv.number.clone().unwrap().as_str());
        assert_eq!(body["data"]["total_minor"], inv.total_minor);
        assert_eq!(body["data"]["amount_due_minor"], inv.amount_due_minor);
    }
    assert_eq!(acme_2.total_minor, 27_555, "25,050 + 10 % tax");

    // passes again, and a restarted sender (another instance name, same log and bucket),
    // send nothing
    assert!(nothing_done(&a.pass(now_ms()).await.unwrap()));
    let b = open("instance-b").await.expect("restarted");
    assert!(nothing_done(&b.pass(now_ms()).await.unwrap()));
    assert_eq!(mails.lock().unwrap().len(), 4);
    assert_eq!(hooks.lock().unwrap().len(), 2);

    // finalized after those passes (the process that finalized it sent nothing): sent by the
    // next pass, once, even with two instances passing at once
    let late = finalized(&db, "acme", days_ago_ms(100), 1_234, "INV-000005").await;
    let (ra, rb) = tokio::join!(a.pass(now_ms()), b.pass(now_ms()));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.delivered + rb.delivered, 2, "{ra:?} {rb:?}");
    assert_eq!(accepted(&mails).len(), 4);
    assert_eq!(hooks.lock().unwrap().len(), 3);
    by_id_in(&accepted(&mails), &late);
    assert!(nothing_done(&a.pass(now_ms()).await.unwrap()));
    assert!(nothing_done(&b.pass(now_ms()).await.unwrap()));

    // finalized while no sender ran: the next pass sends it
    let crashed = finalized(&db, "globex", days_ago_ms(130), 2_000, "INV-000006").await;
    let kv = tally_platform::streams::kv_bucket(&js, &cfg.claims_bucket(&env.nats), 1)
        .await
        .expect("bucket");
    let t0 = now_ms();
    let r = a.pass(t0).await.unwrap();
    assert_eq!((r.emails_decided, r.delivered), (1, 1), "{r:?}");
    // a process that claimed an attempt and stopped before logging it: nobody sends while the
    // claim may be in progress; once stale, the attempt is logged as failed and the next one
    // sends the email once
    let dead = Claims::new(kv.clone(), "dead-instance".into());
    let stuck = finalized(&db, "globex", days_ago_ms(190), 4_000, "INV-000008").await;
    // decided by a pass without delivery: the dead instance claims attempt 1 first
    dead.claim(&delivery::email_id(&stuck.invoice_id), 1, t0)
        .await
        .expect("claimed");
    let r = a.pass(t0).await.unwrap();
    assert_eq!(
        (r.emails_decided, r.claimed_elsewhere, r.delivered),
        (1, 1, 0),
        "{r:?}"
    );
    let r = b.pass(t0 + 10_000).await.unwrap();
    assert_eq!((r.claimed_elsewhere, r.delivered), (1, 0), "{r:?}");
    let stale_at = t0 + 5_000 + tally_payments::delivery::claims::STALE_AFTER_MS + 1_000;
    let r = b.pass(stale_at).await.unwrap();
    assert_eq!((r.abandoned_claims, r.delivered), (1, 0), "{r:?}");
    let r = b.pass(stale_at + 1_000).await.unwrap();
    assert_eq!(r.delivered, 1, "attempt 2 after the backoff: {r:?}");
    assert!(nothing_done(&a.pass(stale_at + 60_000).await.unwrap()));
    let got = accepted(&mails);
    assert_eq!(got.len(), 6);
    for inv in [&crashed, &stuck] {
        by_id_in(&got, inv);
    }

    // the log: one notification per invoice and channel, attempts numbered
    let rows: Vec<(String, u32, u8)> = db
        .query(
            "SELECT notification_id, attempt, delivered FROM notification_deliveries \
             WHERE notification_id = ? ORDER BY attempt",
        )
        .bind(delivery::email_id(&stuck.invoice_id))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(),
        vec![(1, 0), (2, 1)]
    );
    let decided: u64 = db
        .query("SELECT count(DISTINCT notification_id) FROM notifications WHERE has(?, kind)")
        .bind(&delivery::KINDS[..])
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(decided, 6 + 3, "six emails, three webhooks");
    assert!(
        !got.iter().any(|m| m.data.contains(&old.invoice_id)),
        "before the lookback"
    );
    assert!(!got.iter().any(|m| m.data.contains(&initech.invoice_id)));
    assert!(!got.iter().any(|m| m.data.contains(&draft.invoice_id)));

    hook_stop.cancel();
    let _ = js
        .delete_stream(format!("KV_{}", cfg.claims_bucket(&env.nats)))
        .await;
    env.cleanup().await;
}

fn by_id_in(got: &[Mail], inv: &Invoice) {
    let id = format!("<invoice.email.{}@tally.example>", inv.invoice_id);
    let n = got
        .iter()
        .filter(|m| m.header("Message-ID").as_deref() == Some(id.as_str()))
        .count();
    assert_eq!(n, 1, "{id}");
    let m = got
        .iter()
        .find(|m| m.header("Message-ID").as_deref() == Some(id.as_str()))
        .unwrap();
    assert!(m.pdf().starts_with(b"%PDF"));
}

/// A TLS acceptor presenting `cert` (made by `support::tls::certificates`).
fn acceptor(cert: &std::path::Path, key: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, PrivateKeyDer::from_pem_file(key).unwrap())
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// STARTTLS as production uses it: the server's certificate (made by `openssl`, signed by a
/// private CA) is refused without `smtp_ca_file` (nothing sent, the attempt logged) and
/// trusted with it; the password goes out after STARTTLS only, with AUTH PLAIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_trusts_the_ca_file_only_and_authenticates_after_it() {
    let env = TestEnv::new("invoice_delivery_tls").await;
    let db = env.db();
    let dir = tally_platform::own_server::temp_dir("invoice-delivery-tls").unwrap();
    let (ca, cert, key) = support::tls::certificates(&dir);
    let (smtp_port, mails) = smtp_sink_with(0, Some(acceptor(&cert, &key))).await;
    catalog(
        &db,
        "acme",
        1,
        serde_json::json!({"id": "acme", "version": 1, "name": "Acme",
            "billing_email": "ap@acme.example"}),
    )
    .await;
    let inv = finalized(&db, "acme", days_ago_ms(40), 10_000, "INV-000001").await;
    let base = InvoiceDeliveryConfig {
        enabled: true,
        webhook: false,
        smtp_host: "127.0.0.1".into(),
        smtp_port,
        smtp_tls: SmtpTls::Starttls,
        smtp_username: "billing".into(),
        smtp_password: SecretString::new("s3cret-smtp-password"),
        from: FROM.into(),
        backoff_secs: 1,
        attempts_max: 3,
        timeout_ms: 5_000,
        ..InvoiceDeliveryConfig::default()
    };
    base.validate(Profile::Production, true)
        .expect("STARTTLS with the password from the environment");
    let client = async_nats::connect(&env.nats.url).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    let open = |cfg: InvoiceDeliveryConfig| {
        Delivery::open(
            db.clone(),
            cfg,
            DunningConfig::default(),
            &env.nats,
            &js,
            "tls-test".to_owned(),
        )
    };

    let untrusting = open(base.clone()).await.expect("sender");
    let t0 = now_ms();
    let r = untrusting.pass(t0).await.expect("pass");
    assert_eq!(
        (r.emails_decided, r.delivered, r.failed_attempts),
        (1, 0, 1),
        "{r:?}"
    );
    assert!(
        mails.lock().unwrap().is_empty(),
        "nothing sent to an untrusted server"
    );
    let error: String = db
        .query("SELECT error FROM notification_deliveries WHERE notification_id = ?")
        .bind(delivery::email_id(&inv.invoice_id))
        .fetch_one()
        .await
        .unwrap();
    assert!(!error.is_empty() && !error.contains("s3cret"), "{error}");

    let trusting = open(InvoiceDeliveryConfig {
        smtp_ca_file: ca.to_str().unwrap().to_owned(),
        ..base.clone()
    })
    .await
    .expect("sender");
    let r = trusting.pass(t0 + 1_500).await.expect("pass");
    assert_eq!((r.delivered, r.failed_attempts), (1, 0), "attempt 2: {r:?}");
    let got = mails.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls, "sent after STARTTLS");
    assert_eq!(got[0].auth, "\0billing\0s3cret-smtp-password");
    assert_eq!(got[0].to, vec!["<ap@acme.example>".to_owned()]);
    assert!(got[0].pdf().starts_with(b"%PDF"));
    assert!(nothing_done(&trusting.pass(t0 + 60_000).await.unwrap()));

    let _ = js
        .delete_stream(format!("KV_{}", base.claims_bucket(&env.nats)))
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

/// A slow SMTP server (each answer 3 s late) and two senders passing at once: the claims of
/// the attempts started late in a pass (after the first eight, which take the slow server's
/// 3 s) are stamped when they are made, not at the pass's start, so the other sender, whose
/// clock is at the stale bound of the pass's start, finds them in progress and sends nothing:
/// every invoice is accepted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_smtp_server_and_two_senders_never_send_an_invoice_twice() {
    let env = TestEnv::new("invoice_delivery_slow").await;
    let db = env.db();
    let delay = Duration::from_millis(3_000);
    let (smtp_port, mails) = smtp_sink_slow(0, None, delay).await;
    catalog(
        &db,
        "acme",
        1,
        serde_json::json!({"id": "acme", "version": 1, "name": "Acme",
            "billing_email": "ap@acme.example"}),
    )
    .await;
    let count = delivery::CONCURRENT_ATTEMPTS_MAX + 1;
    let mut invoices = Vec::new();
    for i in 0..count {
        let start = days_ago_ms(40 + 31 * i64::try_from(i).unwrap());
        let number = format!("INV-{:06}", i + 1);
        invoices.push(
            finalized(
                &db,
                "acme",
                start,
                1_000 + 100 * i64::try_from(i).unwrap(),
                &number,
            )
            .await,
        );
    }
    let cfg = InvoiceDeliveryConfig {
        enabled: true,
        webhook: false,
        smtp_host: "127.0.0.1".into(),
        smtp_port,
        smtp_tls: SmtpTls::None,
        from: FROM.into(),
        backoff_secs: 1,
        attempts_max: 3,
        timeout_ms: 5_000,
        lookback_secs: 30 * 86_400,
        ..InvoiceDeliveryConfig::default()
    };
    let client = async_nats::connect(&env.nats.url).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    let open = |instance: &str| {
        Delivery::open(
            db.clone(),
            cfg.clone(),
            DunningConfig::default(),
            &env.nats,
            &js,
            instance.to_owned(),
        )
    };
    let a = open("instance-a").await.expect("sender");
    let b = open("instance-b").await.expect("sender");
    let bound = tally_payments::delivery::claims::stale_after_ms(cfg.timeout_ms);

    let t0 = now_ms();
    let pass_a = tokio::spawn(async move { a.pass(t0).await.map(|r| (r, a)) });
    // the first eight are sent and logged after 3 s; the ninth is claimed then and runs to
    // about 6 s. b passes meanwhile, its clock past the bound of the pass's start (t0) but not
    // of the ninth claim's moment (t0 + 3 s)
    tokio::time::sleep(delay + Duration::from_millis(800)).await;
    let r = b.pass(t0 + bound + 500).await.expect("pass");
    assert_eq!(
        (r.claimed_elsewhere, r.abandoned_claims, r.delivered),
        (1, 0, 0),
        "the ninth attempt is in progress: {r:?}"
    );
    let r = b.pass(t0 + bound + 1_700).await.expect("pass");
    assert_eq!(
        (r.claimed_elsewhere, r.abandoned_claims, r.delivered),
        (1, 0, 0),
        "{r:?}"
    );
    let (r, a) = pass_a.await.expect("joined").expect("pass");
    assert_eq!((r.emails_decided, r.delivered), (count, count), "{r:?}");

    // later passes of both, at once, send nothing more
    let later = now_ms() + bound * 2;
    let (ra, rb) = tokio::join!(a.pass(later), b.pass(later));
    assert!(nothing_done(&ra.unwrap()));
    assert!(nothing_done(&rb.unwrap()));
    let got = accepted(&mails);
    assert_eq!(got.len(), count, "each invoice once");
    for inv in &invoices {
        by_id_in(&got, inv);
    }

    let _ = js
        .delete_stream(format!("KV_{}", cfg.claims_bucket(&env.nats)))
        .await;
    env.cleanup().await;
}
