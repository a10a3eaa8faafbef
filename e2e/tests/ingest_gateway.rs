//! Events sent through the HTTP gateway are billed exactly like events published directly:
//! two customers' agents post batches (and re-post them, as a retrying client does), one
//! body naming the other customer is refused, and the aggregator commits each accepted event
//! once under the customer of the API key.

use std::time::Duration;

use tally_e2e::{aggregator_config, start_aggregator, wait_drained};
use tally_ingest::gateway::{auth::KeyRecord, key_store, Gateway};
use tally_platform::shutdown::Shutdown;
use tally_platform::testkit::TestEnv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn event(id: &str, customer: &str, agent: &str, tokens: u64) -> String {
    let now = chrono::Utc::now().to_rfc3339();
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"{agent}","subject":"{customer}","type":"llm.tokens","time":"{now}","data":{{"tokens":{tokens},"model":"gpt-4o","kind":"output"}}}}"#
    )
}

/// One `POST /v1/events` batch on a fresh connection; returns the status and the JSON answer.
async fn post(
    addr: std::net::SocketAddr,
    key: &str,
    events: &[String],
) -> (u16, serde_json::Value) {
    let body = format!("[{}]", events.join(","));
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nhost: gw\r\nconnection: close\r\nauthorization: Bearer {key}\r\n\
         content-type: application/cloudevents-batch+json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let status = text[9..12].parse().unwrap();
    let json = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (
        status,
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

async fn key(env: &TestEnv, gw: &Gateway, customer: &str) -> String {
    let scope = key_store::scope_from(customer, &[], "e2e").unwrap();
    let (token, record): (String, KeyRecord) =
        key_store::create(&env.db(), scope, "e2e", 0).await.unwrap();
    gw.keys.upsert(record);
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_events_are_counted_once_under_the_keys_customer() {
    let env = TestEnv::new("e2e_ingest_gateway").await;
    let (gw, running, _js) = tally_e2e::start_gateway(&env).await;
    let acme = key(&env, &gw, "acme").await;
    let globex = key(&env, &gw, "globex").await;

    let acme_events: Vec<String> = (1..=50)
        .map(|i| event(&format!("a-{i}"), "acme", "bot-1", i))
        .collect();
    let globex_events: Vec<String> = (1..=20)
        .map(|i| event(&format!("g-{i}"), "globex", "bot-9", 100))
        .collect();
    for _ in 0..2 {
        assert_eq!(post(running.addr, &acme, &acme_events).await.0, 200);
        assert_eq!(post(running.addr, &globex, &globex_events).await.0, 200);
    }
    let (status, answer) = post(
        running.addr,
        &acme,
        &[event("x-1", "globex", "bot-1", 1_000_000)],
    )
    .await;
    assert_eq!((status, answer["rejected"].as_u64()), (400, Some(1)));

    let stop = Shutdown::new();
    let agg = start_aggregator(&env, aggregator_config(), stop.clone()).await;
    wait_drained(&env, "aggregator", Duration::from_secs(30)).await;
    stop.cancel();
    agg.await.unwrap().unwrap();
    running.stop().await;

    let rows: Vec<(String, String, u64)> = env
        .db()
        .query("SELECT customer, toString(sum(quantity)), sum(event_count) FROM v_usage WHERE meter = 'llm_tokens' GROUP BY customer ORDER BY customer")
        .fetch_all()
        .await
        .unwrap();
    let rows: Vec<(String, String, u64)> = rows
        .into_iter()
        .map(|(c, q, n)| {
            (
                c,
                q.parse::<rust_decimal::Decimal>()
                    .unwrap()
                    .normalize()
                    .to_string(),
                n,
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("acme".into(), "1275".into(), 50),
            ("globex".into(), "2000".into(), 20)
        ]
    );
    env.cleanup().await;
}
