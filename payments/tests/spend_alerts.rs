//! Issue 15, item 3: a threshold crossing is a NATS alert (the spend decider's) and one signed
//! webhook to the customer's endpoint. Against the real NATS and ClickHouse: alerts are
//! published into the test's `<stream>_ALERTS` exactly as the decider publishes them (JSON of
//! its `Alert`, `Nats-Msg-Id` the alert id; the decider itself is not started), and the
//! payments consumer sends them over verified https to a rustls receiver (certificates made
//! with `openssl`).

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use support::tls::{certificates, tls_receiver, tls_receiver_answering};
use support::Received;
use tally_payments::config::{DunningConfig, PaymentsConfig, SecretString};
use tally_payments::dunning::{deliver, log};
use tally_payments::signature::Secret;
use tally_payments::spend_alerts::{self, AlertsSource, Deliverer, Outcome};
use tally_platform::own_server::temp_dir;
use tally_platform::shutdown::Shutdown;
use tally_platform::testkit::TestEnv;
use tally_platform::Profile;

/// The test's NATS: its alerts stream declared as the decider declares it.
struct Alerts {
    js: jetstream::Context,
    source: AlertsSource,
}

impl Alerts {
    async fn declare(env: &TestEnv) -> Alerts {
        let payments = PaymentsConfig {
            // a subject root of the test's own, like its stream
            spend_subject_root: format!("{}_spend", env.nats.subject_prefix),
            ..PaymentsConfig::default()
        };
        let source = AlertsSource::new(&env.nats, &payments);
        let client = async_nats::connect(&env.nats.url).await.expect("nats");
        let js = jetstream::new(client);
        js.get_or_create_stream(stream::Config {
            name: source.stream.clone(),
            subjects: vec![source.filter_subject()],
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(30 * 86_400),
            duplicate_window: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .expect("alerts stream");
        Alerts { js, source }
    }

    /// Publishes `alert` on its customer's subject, with the alert id as `Nats-Msg-Id` (as the
    /// decider does) or without one (a repeat JetStream cannot recognize).
    async fn publish(&self, alert: &serde_json::Value, msg_id: bool) {
        let mut headers = async_nats::HeaderMap::new();
        if msg_id {
            headers.insert("Nats-Msg-Id", alert["alert_id"].as_str().unwrap());
        }
        let subject = format!(
            "{}.{}",
            self.source.subject_root,
            alert["customer"].as_str().unwrap()
        );
        self.js
            .publish_with_headers(subject, headers, alert.to_string().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    async fn cleanup(self) {
        let _ = self.js.delete_stream(&self.source.stream).await;
    }
}

/// A crossing as the decider's `Alert` serializes it.
fn alert(customer: &str, budget: &str, threshold: u8) -> serde_json::Value {
    let period_start_ms = 1_798_761_600_000i64;
    serde_json::json!({
        "type": "spend.threshold_crossed",
        "alert_id": format!("{customer}.{budget}.{period_start_ms}.{threshold}"),
        "customer": customer,
        "budget_id": budget,
        "agent": "agent-1",
        "meter": null,
        "period_start_ms": period_start_ms,
        "period_end_ms": period_start_ms + 31 * 86_400_000i64,
        "threshold": threshold,
        "spent": format!("{threshold}.25"),
        "limit": "100",
        "kind": "amount",
        "currency": "USD",
        "crossed_at_ms": chrono::Utc::now().timestamp_millis(),
    })
}

fn dunning(master: &str, ca: &std::path::Path, port: u16, customers: &[&str]) -> DunningConfig {
    let cfg = DunningConfig {
        signing_secret: SecretString::new(master),
        endpoints: customers
            .iter()
            .map(|c| {
                (
                    (*c).to_owned(),
                    format!("https://127.0.0.1:{port}/hooks/{c}"),
                )
            })
            .collect::<BTreeMap<_, _>>(),
        ca_file: ca.display().to_string(),
        ..DunningConfig::default()
    };
    cfg.validate(Profile::Production)
        .expect("https endpoints, a strong secret");
    cfg
}

/// Starts the consumer under `consumer` with its own deliverer.
fn start(
    env: &TestEnv,
    alerts: &Alerts,
    cfg: &DunningConfig,
    consumer: &str,
) -> (Shutdown, tokio::task::JoinHandle<()>) {
    let stop = Shutdown::new();
    let deliverer = Deliverer::new(env.db(), cfg.clone(), stop.clone()).expect("deliverer");
    let source = AlertsSource {
        consumer: consumer.to_owned(),
        ..alerts.source.clone()
    };
    let task = tokio::spawn(spend_alerts::run(
        alerts.js.clone(),
        source,
        deliverer,
        stop.clone(),
    ));
    (stop, task)
}

/// Waits until `got` holds `n` requests matching `f` (at most `limit`).
async fn wait_for(
    got: &Arc<Mutex<Vec<Received>>>,
    n: usize,
    limit: Duration,
    f: impl Fn(&Received) -> bool,
) -> Vec<Received> {
    let until = Instant::now() + limit;
    loop {
        let matching: Vec<Received> = got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| f(r))
            .cloned()
            .collect();
        if matching.len() >= n || Instant::now() > until {
            return matching;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn body(r: &Received) -> serde_json::Value {
    serde_json::from_slice(&r.body).expect("json body")
}

async fn notification_rows(db: &clickhouse::Client) -> Vec<(String, String, String)> {
    db.query("SELECT notification_id, kind, actor FROM notifications ORDER BY notification_id")
        .fetch_all()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_alert_is_one_signed_https_webhook_whatever_is_redelivered_or_published_again() {
    let env = TestEnv::new("spend_alerts_once").await;
    let db = env.db();
    let alerts = Alerts::declare(&env).await;
    let dir = temp_dir("spend-alerts").unwrap();
    let (ca, cert, key) = certificates(&dir);
    let (addr, got, receiver) = tls_receiver(&cert, &key).await;
    let master = tally_platform::secrets::generate_hex(32).unwrap();
    let cfg = dunning(&master, &ca, addr.port(), &["acme", "globex", "initech"]);

    let sent = [
        alert("acme", "b1", 50),
        alert("acme", "b1", 80),
        alert("globex", "b7", 100),
        alert("hooli", "b2", 50), // no endpoint: nothing sent
    ];
    for a in &sent {
        alerts.publish(a, true).await;
    }
    let (stop, task) = start(&env, &alerts, &cfg, "payments-spend-alerts");
    let first = wait_for(&got, 3, Duration::from_secs(20), |_| true).await;
    assert_eq!(first.len(), 3, "one webhook per alert with an endpoint");
    let secrets: BTreeMap<&str, Secret> = ["acme", "globex"]
        .into_iter()
        .map(|c| (c, deliver::endpoint_secret(&master, c)))
        .collect();
    for a in &sent[..3] {
        let customer = a["customer"].as_str().unwrap();
        let id = format!(
            "spend.threshold_crossed:{}",
            a["alert_id"].as_str().unwrap()
        );
        let r: Vec<&Received> = first.iter().filter(|r| r.notification_id == id).collect();
        assert_eq!(r.len(), 1, "{id}");
        let r = r[0];
        assert_eq!(r.path, format!("/hooks/{customer}"));
        let b = body(r);
        assert_eq!(b["id"], id.as_str());
        assert_eq!(b["type"], "spend.threshold_crossed");
        assert_eq!(b["data"], *a, "the published alert, whole");
        for (c, secret) in &secrets {
            assert_eq!(
                r.verifies(secret),
                *c == customer,
                "{id} verifies with its own customer's secret only"
            );
        }
        assert!(
            !r.verifies(&Secret::new(&master)),
            "not with the signing secret"
        );
    }

    // the same alerts again: with their msg id (JetStream drops them), without (a repeat
    // outside the duplicate window reaches the consumer and is found in the log)
    alerts.publish(&sent[0], true).await;
    alerts.publish(&sent[0], false).await;
    alerts.publish(&sent[2], false).await;
    // and a new one, to know the repeats were consumed before it
    let later = alert("globex", "b7", 120);
    alerts.publish(&later, true).await;
    let now = wait_for(&got, 4, Duration::from_secs(20), |_| true).await;
    assert_eq!(now.len(), 4);
    assert_eq!(
        now[3].notification_id,
        format!(
            "spend.threshold_crossed:{}",
            later["alert_id"].as_str().unwrap()
        )
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        got.lock().unwrap().len(),
        4,
        "no second webhook for a repeat"
    );
    stop.cancel();
    task.await.unwrap();

    // a restart that gets every message again (a new consumer from the stream's start: the
    // worst redelivery, nothing acknowledged) sends nothing again
    let (stop, task) = start(&env, &alerts, &cfg, "payments-spend-alerts-again");
    let marker = alert("acme", "b1", 100);
    alerts.publish(&marker, true).await;
    let now = wait_for(&got, 5, Duration::from_secs(20), |_| true).await;
    assert_eq!(now.len(), 5);
    assert_eq!(now[4].path, "/hooks/acme");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        got.lock().unwrap().len(),
        5,
        "redelivered alerts are not sent again"
    );
    stop.cancel();
    task.await.unwrap();

    // a crash after the notification was recorded (and acknowledged) but before it was sent:
    // the next start finds it undelivered in the log and sends it, once
    let crashed = Shutdown::new();
    crashed.cancel();
    let dead = Deliverer::new(db.clone(), cfg.clone(), crashed).unwrap();
    let pending = alert("initech", "b3", 80);
    let (a, object) = spend_alerts::parse(
        &alerts.source,
        &format!("{}.initech", alerts.source.subject_root),
        pending.to_string().as_bytes(),
    )
    .unwrap();
    let outcome = spend_alerts::record(&dead, &a, &object, chrono::Utc::now().timestamp_millis())
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Recorded(_)), "{outcome:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        got.lock().unwrap().len(),
        5,
        "the crashed process sent nothing"
    );
    alerts.publish(&pending, true).await; // its message, redelivered after the crash
    let (stop, task) = start(&env, &alerts, &cfg, "payments-spend-alerts");
    let now = wait_for(&got, 6, Duration::from_secs(20), |_| true).await;
    assert_eq!(now.len(), 6);
    assert_eq!(now[5].path, "/hooks/initech");
    assert!(now[5].verifies(&deliver::endpoint_secret(&master, "initech")));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(got.lock().unwrap().len(), 6, "sent once");
    stop.cancel();
    task.await.unwrap();

    // the log: one notification per alert with an endpoint, each delivered at its first attempt
    let rows = notification_rows(&db).await;
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert!(rows
        .iter()
        .all(|(_, kind, actor)| kind == "spend.threshold_crossed"
            && actor == "payments:spend-alerts"));
    let deliveries: Vec<(String, u32, u8)> = db
        .query("SELECT notification_id, attempt, delivered FROM notification_deliveries ORDER BY notification_id")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 6, "{deliveries:?}");
    assert!(deliveries
        .iter()
        .all(|(_, attempt, ok)| *attempt == 1 && *ok == 1));
    assert!(log::undelivered(&db, &["spend.threshold_crossed"])
        .await
        .unwrap()
        .is_empty());
    receiver.cancel();
    alerts.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_delays_no_other_customer_and_is_retried_with_the_backoff() {
    let env = TestEnv::new("spend_alerts_isolation").await;
    let db = env.db();
    let alerts = Alerts::declare(&env).await;
    let dir = temp_dir("spend-alerts-iso").unwrap();
    let (ca, cert, key) = certificates(&dir);
    // broken: answers after 4 s (the client gives up at 2 s); flaky: 500 once, then 200
    let answer: support::tls::Answer = Arc::new(|path: &str, before: usize| match path {
        "/hooks/broken" => (200, Duration::from_secs(4)),
        "/hooks/flaky" if before == 0 => (500, Duration::ZERO),
        _ => (200, Duration::ZERO),
    });
    let (addr, got, receiver) = tls_receiver_answering(&cert, &key, answer).await;
    let master = tally_platform::secrets::generate_hex(32).unwrap();
    let cfg = DunningConfig {
        delivery_timeout_ms: 2_000,
        delivery_backoff_secs: 1,
        delivery_attempts_max: 2,
        ..dunning(&master, &ca, addr.port(), &["broken", "flaky", "acme"])
    };
    let (stop, task) = start(&env, &alerts, &cfg, "payments-spend-alerts");
    // the consumer is up once a first alert went through
    alerts.publish(&alert("acme", "warmup", 10), true).await;
    assert_eq!(
        wait_for(&got, 1, Duration::from_secs(20), |_| true)
            .await
            .len(),
        1
    );

    for threshold in [50, 80, 90, 100] {
        alerts
            .publish(&alert("broken", "b1", threshold), true)
            .await;
    }
    alerts.publish(&alert("flaky", "b1", 50), true).await;
    let published = Instant::now();
    alerts.publish(&alert("acme", "b1", 50), true).await;
    let acme = wait_for(&got, 2, Duration::from_secs(10), |r| {
        r.path == "/hooks/acme"
    })
    .await;
    assert_eq!(acme.len(), 2);
    let took = acme[1].at.duration_since(published);
    assert!(
        took < Duration::from_millis(1_500),
        "acme's webhook waited {took:?} behind broken's endpoint (each attempt 2 s)"
    );
    eprintln!("acme's webhook {took:?} after it was published, behind 4 alerts to a dead endpoint");
    // flaky: 500, then delivered a backoff (1 s) later
    let flaky = wait_for(&got, 2, Duration::from_secs(10), |r| {
        r.path == "/hooks/flaky"
    })
    .await;
    assert_eq!(flaky.len(), 2);
    assert_eq!(flaky[0].notification_id, flaky[1].notification_id);
    let gap = flaky[1].at.duration_since(flaky[0].at);
    assert!(
        gap >= Duration::from_millis(900),
        "retried after the backoff: {gap:?}"
    );
    assert!(flaky[1].verifies(&deliver::endpoint_secret(&master, "flaky")));
    // broken: one attempt at a time, each timed out and logged
    let broken = wait_for(&got, 2, Duration::from_secs(10), |r| {
        r.path == "/hooks/broken"
    })
    .await;
    assert!(broken.len() >= 2);
    stop.cancel();
    task.await.unwrap();
    let log: Vec<(String, u32, u8, String)> = db
        .query(
            "SELECT notification_id, attempt, delivered, error FROM notification_deliveries \
             ORDER BY notification_id, attempt",
        )
        .fetch_all()
        .await
        .unwrap();
    let flaky_log: Vec<_> = log.iter().filter(|r| r.0.contains(":flaky.")).collect();
    assert_eq!(
        flaky_log
            .iter()
            .map(|r| (r.1, r.2, r.3.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, 0, "HTTP 500"), (2, 1, "")]
    );
    let broken_log: Vec<_> = log.iter().filter(|r| r.0.contains(":broken.")).collect();
    assert!(!broken_log.is_empty());
    assert!(
        broken_log
            .iter()
            .all(|r| r.2 == 0 && r.3.contains("timed out")),
        "{broken_log:?}"
    );
    // broken's notifications stay undelivered in the log, for a later start to go on with
    let undelivered = log::undelivered(&db, &["spend.threshold_crossed"])
        .await
        .unwrap();
    assert_eq!(undelivered.len(), 4, "{undelivered:?}");
    assert!(undelivered.iter().all(|n| n.customer == "broken"));
    receiver.cancel();
    alerts.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

/// Many alerts at once (the consumer takes them in batches: one read of the log, one insert,
/// then the acks): 200 alerts of 50 customers, published before the consumer starts, plus two
/// repeats JetStream cannot recognize and one malformed message, are 200 notifications and
/// 200 webhooks, each once. Then a crash between a batch's insert and its acks: the
/// redelivered messages find their notifications and add none, and each is sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_alerts_is_recorded_in_batches_each_once() {
    let env = TestEnv::new("spend_alerts_burst").await;
    let db = env.db();
    let alerts = Alerts::declare(&env).await;
    let dir = temp_dir("spend-alerts-burst").unwrap();
    let (ca, cert, key) = certificates(&dir);
    let (addr, got, receiver) = tls_receiver(&cert, &key).await;
    let master = tally_platform::secrets::generate_hex(32).unwrap();
    let customers: Vec<String> = (0..50).map(|i| format!("c{i:02}")).collect();
    let names: Vec<&str> = customers.iter().map(String::as_str).collect();
    let cfg = dunning(&master, &ca, addr.port(), &names);

    let mut sent = Vec::new();
    for threshold in [25, 50, 80, 100] {
        for c in &customers {
            sent.push(alert(c, "b1", threshold));
        }
    }
    assert_eq!(sent.len(), 200);
    for (i, a) in sent.iter().enumerate() {
        alerts.publish(a, true).await;
        if i == 120 {
            // repeats outside JetStream's duplicate window, and c07's subject with c08's alert
            alerts.publish(&sent[0], false).await;
            alerts.publish(&sent[120], false).await;
            let subject = format!("{}.c07", alerts.source.subject_root);
            alerts
                .js
                .publish(subject, alert("c08", "b9", 50).to_string().into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
    }
    let (stop, task) = start(&env, &alerts, &cfg, "payments-spend-alerts");
    let all = wait_for(&got, 200, Duration::from_secs(60), |_| true).await;
    assert_eq!(all.len(), 200, "one webhook per alert");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let all = got.lock().unwrap().clone();
    assert_eq!(all.len(), 200, "no second webhook for a repeat");
    let mut by_id: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for r in &all {
        by_id.entry(r.notification_id.clone()).or_default().push(r);
    }
    assert_eq!(by_id.len(), 200);
    for a in &sent {
        let customer = a["customer"].as_str().unwrap();
        let id = format!(
            "spend.threshold_crossed:{}",
            a["alert_id"].as_str().unwrap()
        );
        let r = &by_id[&id];
        assert_eq!(r.len(), 1, "{id}");
        assert_eq!(r[0].path, format!("/hooks/{customer}"));
        assert_eq!(body(r[0])["data"], *a);
        assert!(r[0].verifies(&deliver::endpoint_secret(&master, customer)));
    }
    stop.cancel();
    task.await.unwrap();
    let rows = notification_rows(&db).await;
    assert_eq!(rows.len(), 200, "one notification per alert");
    // recorded in batches: the notifications of a batch share its time, one insert each
    let batches: u64 = db
        .query("SELECT uniqExact(created_at_ms) FROM notifications")
        .fetch_one()
        .await
        .unwrap();
    eprintln!("200 alerts recorded in {batches} inserts");
    assert!(batches <= 40, "{batches} inserts for 200 alerts");

    // a crash after a batch's insert, before its acks: 10 alerts recorded by a process that
    // stopped at once (it delivered nothing), their messages then redelivered
    let crashed = Shutdown::new();
    crashed.cancel();
    let dead = Deliverer::new(db.clone(), cfg.clone(), crashed).unwrap();
    let pending: Vec<serde_json::Value> = customers[..10]
        .iter()
        .map(|c| alert(c, "b1", 120))
        .collect();
    let parsed: Vec<_> = pending
        .iter()
        .map(|a| {
            let subject = format!(
                "{}.{}",
                alerts.source.subject_root,
                a["customer"].as_str().unwrap()
            );
            spend_alerts::parse(&alerts.source, &subject, a.to_string().as_bytes()).unwrap()
        })
        .collect();
    let recorded =
        spend_alerts::record_batch(&dead, &parsed, chrono::Utc::now().timestamp_millis())
            .await
            .unwrap();
    assert_eq!(recorded.new.len(), 10);
    assert!(recorded
        .outcomes
        .iter()
        .all(|o| matches!(o, Outcome::Recorded(_))));
    for a in &pending {
        alerts.publish(a, true).await;
    }
    let (stop, task) = start(&env, &alerts, &cfg, "payments-spend-alerts");
    let now = wait_for(&got, 210, Duration::from_secs(30), |_| true).await;
    assert_eq!(now.len(), 210);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let now = got.lock().unwrap().clone();
    assert_eq!(now.len(), 210, "each sent once");
    for a in &pending {
        let id = format!(
            "spend.threshold_crossed:{}",
            a["alert_id"].as_str().unwrap()
        );
        assert_eq!(
            now.iter().filter(|r| r.notification_id == id).count(),
            1,
            "{id}"
        );
    }
    stop.cancel();
    task.await.unwrap();
    assert_eq!(
        notification_rows(&db).await.len(),
        210,
        "no second notification"
    );
    let deliveries: Vec<(String, u32, u8)> = db
        .query("SELECT notification_id, attempt, delivered FROM notification_deliveries")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 210);
    assert!(deliveries
        .iter()
        .all(|(_, attempt, ok)| *attempt == 1 && *ok == 1));
    receiver.cancel();
    alerts.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

/// `tally-payments serve` with `payments.spend_alerts = true` (the dev profile, for an
/// `http://` receiver; the `dunning` feature off: alerts only need `[dunning]`'s secret and
/// endpoints): an alert published into the
/// stream arrives signed at the customer's endpoint, is counted in the metrics, and the
/// process stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sends_spend_alerts_when_switched_on() {
    use std::process::{Command, Stdio};
    use tally_platform::own_server::free_port;

    let env = TestEnv::new("spend_alerts_binary").await;
    let alerts = Alerts::declare(&env).await;
    let (hook_addr, got, receiver) = support::receiver(0).await;
    let dir = temp_dir("spend-alerts-binary").unwrap();
    let config = dir.join("tally.toml");
    let (port, metrics_port) = (free_port().unwrap(), free_port().unwrap());
    let root = alerts
        .source
        .subject_root
        .trim_end_matches(".alerts")
        .to_owned();
    std::fs::write(
        &config,
        format!(
            "[security]\nprofile = \"dev\"\n[features]\ndunning = false\n\
             [nats]\nurl = \"{}\"\nstream = \"{}\"\n\
             [payments]\nlisten_addr = \"127.0.0.1:{port}\"\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\n\
             spend_alerts = true\nspend_subject_root = \"{root}\"\n\
             [dunning]\nendpoints = {{ acme = \"http://{hook_addr}/hooks/acme\" }}\n",
            env.nats.url, env.nats.stream
        ),
    )
    .unwrap();
    let master = tally_platform::secrets::generate_hex(32).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally-payments"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("TALLY_CLICKHOUSE__URL", &env.clickhouse.url)
        .env("TALLY_CLICKHOUSE__DATABASE", &env.clickhouse.database)
        .env("TALLY_PAYMENTS__STRIPE_WEBHOOK_SECRET", "whsec_binary_test")
        .env("TALLY_DUNNING__SIGNING_SECRET", &master)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let a = alert("acme", "b9", 80);
    alerts.publish(&a, true).await;
    let r = wait_for(&got, 1, Duration::from_secs(30), |_| true).await;
    if r.is_empty() {
        let _ = child.kill();
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        panic!("no webhook for the alert; tally-payments said:\n{stderr}");
    }
    assert_eq!(r.len(), 1, "the alert's webhook");
    assert_eq!(r[0].path, "/hooks/acme");
    assert_eq!(body(&r[0])["data"], a);
    assert!(r[0].verifies(&deliver::endpoint_secret(&master, "acme")));
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let (_, text) = support::request(metrics, "GET", "/metrics", &[], Vec::new()).await;
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("tally_payments_spend_alerts_total{outcome=\"recorded\"} 1"),
        "{text}"
    );
    let (status, stderr) = support::sigterm(&mut child).await;
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(!stderr.contains(&master), "the signing secret was logged");
    assert_eq!(got.lock().unwrap().len(), 1);
    receiver.cancel();
    alerts.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}
