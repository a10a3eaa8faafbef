//! Issue 15, item 6: the usage query (`GET /v1/meters/{slug}/query`) over what a real
//! aggregator wrote. Events of two customers over the last 50 hours (some re-sent: counted
//! once) go through NATS JetStream into an in-process aggregator; once it has drained and
//! stopped, the days before today (UTC) are sealed as the aggregator seals them. The rater's
//! API then answers per HOUR, per DAY in UTC (sealed days and today's partials) and in
//! Asia/Kolkata (every UTC day cut at 18:30), and for the whole range per agent, and every
//! answer equals what the test computes from the events it sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use tally_aggregator::AggregatorConfig;
use tally_e2e::{aggregator_config, meter_specs, start_aggregator, wait_drained};
use tally_platform::auth::{Authenticator, Role};
use tally_platform::shutdown::Shutdown;
use tally_platform::testkit::TestEnv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DAY: i64 = 86_400;
const KOLKATA: i64 = 19_800;

struct Sent {
    customer: &'static str,
    agent: &'static str,
    meter: &'static str,
    time: i64,
    group: (String, String),
    quantity: Decimal,
}

async fn get(addr: std::net::SocketAddr, token: &str, path: &str) -> (u16, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("writes");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("reads");
    let status: u16 = text[9..12].parse().expect("a status");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

fn iso(t: i64) -> String {
    DateTime::<Utc>::from_timestamp(t, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn kolkata(t: i64) -> String {
    DateTime::<Utc>::from_timestamp(t + KOLKATA, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S+05:30")
        .to_string()
}

/// (window start, group value) to value, from an answer.
fn answered(body: &serde_json::Value, group: Option<&str>) -> BTreeMap<(String, String), Decimal> {
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data: {body}"))
        .iter()
        .map(|r| {
            let g = group.map_or(String::new(), |g| {
                r["group_by"][g].as_str().unwrap().to_owned()
            });
            let v: Decimal = r["value"]
                .as_str()
                .expect("a decimal string")
                .parse()
                .unwrap();
            ((r["window_start"].as_str().unwrap().to_owned(), g), v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_query_answers_what_the_aggregator_committed() {
    let env = TestEnv::new("e2e_usage_query").await;
    let db = env.db();
    tally_rater::store::registry::bootstrap(&db, &[], &meter_specs(), 0)
        .await
        .expect("stored meters");
    let client = async_nats::connect(&env.nats.url)
        .await
        .expect("NATS answers");
    let js = async_nats::jetstream::new(client);
    tally_platform::streams::ensure(&js, &env.nats)
        .await
        .expect("streams");
    let cfg = AggregatorConfig {
        allowed_lateness_secs: 3 * DAY as u64,
        dedup_horizon_secs: 4 * DAY as u64,
        ..aggregator_config()
    };
    let stop = Shutdown::new();
    let aggregator = start_aggregator(&env, cfg, stop.clone()).await;

    let now = Utc::now().timestamp();
    let mut rng = StdRng::seed_from_u64(15);
    let mut sent = Vec::new();
    let p = &env.nats.subject_prefix;
    for i in 0..2000 {
        let customer = if rng.random_range(0..4) == 0 {
            "other"
        } else {
            "acme"
        };
        let agent = ["bot-a", "bot-b"][rng.random_range(0..2)];
        let time = now - rng.random_range(60..50 * 3600);
        let (meter, ty, group, quantity, data) = if rng.random_range(0..3) == 0 {
            let tool = ["search", "code"][rng.random_range(0..2)];
            (
                "tool_calls",
                "tool.call",
                ("tool".to_owned(), tool.to_owned()),
                Decimal::ONE,
                serde_json::json!({"tool": tool}),
            )
        } else {
            let model = ["gpt-4o", "gpt-4o-mini"][rng.random_range(0..2)];
            let tokens = Decimal::new(rng.random_range(1..100_000), 1);
            (
                "llm_tokens",
                "llm.tokens",
                ("model".to_owned(), model.to_owned()),
                tokens,
                serde_json::json!({"tokens": tokens.to_string(), "model": model, "kind": "input"}),
            )
        };
        let id = format!("q{i}");
        let body = serde_json::json!({"specversion": "1.0", "id": id, "source": agent,
            "subject": customer, "type": ty, "time": iso(time), "data": data})
        .to_string();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            tally_domain::nats_msg_id(customer, agent, &id).as_str(),
        );
        let copies = if i % 50 == 0 { 2 } else { 1 };
        for _ in 0..copies {
            js.publish_with_headers(
                format!("{p}.{customer}.{agent}"),
                headers.clone(),
                body.clone().into(),
            )
            .await
            .expect("publish")
            .await
            .expect("ack");
        }
        sent.push(Sent {
            customer,
            agent,
            meter,
            time,
            group,
            quantity,
        });
    }
    wait_drained(&env, "aggregator", Duration::from_secs(120)).await;
    stop.cancel();
    aggregator
        .await
        .expect("joins")
        .expect("the aggregator stops cleanly");
    // the days before today (UTC) sealed in order, as the aggregator seals final days
    let today = now - now.rem_euclid(DAY);
    for d in (1..=3).rev() {
        tally_aggregator::seal::seal_day(&db, &format!("seal-{d}"), 0, (today - d * DAY) as u32, 0)
            .await
            .expect("sealed");
    }
    let sealed: u64 = db
        .query("SELECT count() FROM usage_days")
        .fetch_one()
        .await
        .unwrap();
    assert!(sealed > 0, "the days before today are sealed");

    // the rater's API
    let admin = tally_platform::auth::store::create(&db, "admin", Role::Reader, "test", 0)
        .await
        .expect("token")
        .0;
    let auth = Arc::new(Authenticator::new("rater", db.clone()));
    auth.reload().await.expect("tokens");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let api_stop = Shutdown::new();
    let state = Arc::new(tally_rater::api::ApiState {
        source: tally_rater::store::CatalogSource {
            rater: tally_rater::RaterConfig::default(),
            features: tally_platform::Features::default(),
        },
        db: db.clone(),
        now_ms: || 0,
        auth,
        backfill_horizon_secs: tally_rater::backfill::HORIZON_SECS.unsigned_abs(),
    });
    let server = tokio::spawn(tally_rater::api::serve(listener, state, api_stop.clone()));

    let window = |t: i64| t - t.rem_euclid(60);
    let expect =
        |meter: &str, label: &dyn Fn(i64) -> Option<String>, by: &dyn Fn(&Sent) -> String| {
            let mut out: BTreeMap<(String, String), Decimal> = BTreeMap::new();
            for s in sent
                .iter()
                .filter(|s| s.customer == "acme" && s.meter == meter)
            {
                if let Some(l) = label(window(s.time)) {
                    *out.entry((l, by(s))).or_default() += s.quantity;
                }
            }
            out
        };
    let (from, to) = (today - 3 * DAY, today + DAY);
    let by_group = |s: &Sent| s.group.1.clone();

    // per HOUR in UTC, by model
    let path = format!(
        "/v1/meters/llm_tokens/query?customer=acme&from={}&to={}&window_size=HOUR&group_by=model",
        iso(from),
        iso(to)
    );
    let (status, body) = get(addr, &admin, &path).await;
    assert_eq!(status, 200, "{body}");
    let want = expect(
        "llm_tokens",
        &|w| Some(iso(w - w.rem_euclid(3600))),
        &by_group,
    );
    assert!(want.len() > 50);
    assert_eq!(answered(&body, Some("model")), want, "{path}");

    // per DAY in UTC (sealed days, today from the partials), by tool
    let path = format!(
        "/v1/meters/tool_calls/query?customer=acme&from={}&to={}&window_size=DAY&group_by=tool",
        iso(from),
        iso(to)
    );
    let (status, body) = get(addr, &admin, &path).await;
    assert_eq!(status, 200, "{body}");
    let want = expect(
        "tool_calls",
        &|w| Some(iso(w - w.rem_euclid(DAY))),
        &by_group,
    );
    assert_eq!(answered(&body, Some("tool")), want, "{path}");

    // per DAY in Kolkata: its midnights are 18:30 UTC
    let (kfrom, kto) = (from - KOLKATA, to - KOLKATA);
    let path = format!(
        "/v1/meters/llm_tokens/query?customer=acme&from={}&to={}&window_size=DAY&window_time_zone=Asia/Kolkata",
        iso(kfrom),
        iso(kto)
    );
    let (status, body) = get(addr, &admin, &path).await;
    assert_eq!(status, 200, "{body}");
    let want = expect(
        "llm_tokens",
        &|w| {
            (w >= kfrom && w < kto).then(|| {
                let local = w + KOLKATA;
                kolkata(local - local.rem_euclid(DAY) - KOLKATA)
            })
        },
        &|_| String::new(),
    );
    assert_eq!(answered(&body, None), want, "{path}");

    // the whole range, per agent; re-sent events counted once
    let path = format!(
        "/v1/meters/llm_tokens/query?customer=acme&from={}&to={}&group_by=agent",
        iso(from),
        iso(to)
    );
    let (status, body) = get(addr, &admin, &path).await;
    assert_eq!(status, 200, "{body}");
    let want = expect("llm_tokens", &|_| Some(iso(from)), &|s| s.agent.to_owned());
    assert_eq!(want.len(), 2);
    assert_eq!(answered(&body, Some("agent")), want, "{path}");

    api_stop.cancel();
    server.await.expect("the API stops");
    env.cleanup().await;
}
