//! The agent SDK over real NATS JetStream: batched and bounded publishing, a graceful flush on
//! close, retries that reuse the event id, and duplicates recognised by the broker.

use std::time::Duration;

use tally_domain::{AgentId, CustomerId, EventId};
use tally_ingest::sdk::{Agent, SdkConfig};
use tally_ingest::OutgoingEvent;
use tally_platform::streams;
use tally_platform::testkit::TestEnv;

async fn stored(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

fn small() -> SdkConfig {
    SdkConfig {
        queue_max: 64,
        batch_max: 50,
        in_flight_max: 16,
        retries_max: 8,
        retry_backoff_ms: 50,
    }
}

#[tokio::test]
async fn close_flushes_every_recorded_event_through_a_small_queue() {
    let env = TestEnv::new("sdk_flush").await;
    let js = async_nats::jetstream::new(streams::connect(&env.nats).await.unwrap());
    streams::ensure(&js, &env.nats).await.unwrap();
    let sdk = Agent::start(js.clone(), &env.nats.subject_prefix, small());
    let rec = sdk.recorder(
        CustomerId::new("acme").unwrap(),
        AgentId::new("bot").unwrap(),
    );
    for i in 0..500u64 {
        if i % 2 == 0 {
            rec.llm_tokens("gpt-4o", "output", i + 1).await.unwrap();
        } else {
            rec.tool_call("search").await.unwrap();
        }
    }
    let stats = sdk.close().await.unwrap();
    assert_eq!((stats.stored, stats.duplicates, stats.failed), (500, 0, 0));
    assert_eq!(stored(&js, &env.nats.stream).await, 500);
    env.cleanup().await;
}

#[tokio::test]
async fn unacknowledged_events_are_retried_with_the_same_id_until_stored() {
    let env = TestEnv::new("sdk_retry").await;
    let js = async_nats::jetstream::new(streams::connect(&env.nats).await.unwrap());
    // No stream yet: every publish fails (no responders) until it exists.
    let sdk = Agent::start(js.clone(), &env.nats.subject_prefix, small());
    let rec = sdk.recorder(
        CustomerId::new("acme").unwrap(),
        AgentId::new("bot").unwrap(),
    );
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(rec.llm_tokens("m", "input", 5).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    streams::ensure(&js, &env.nats).await.unwrap();
    let stats = sdk.close().await.unwrap();
    assert!(stats.retries >= 10, "{stats:?}");
    assert_eq!((stats.stored, stats.failed), (10, 0), "{stats:?}");
    let stream = js.get_stream(&env.nats.stream).await.unwrap();
    for seq in 1..=10u64 {
        let msg = stream.get_raw_message(seq).await.unwrap();
        let id = msg.headers.get("Nats-Msg-Id").unwrap().as_str().to_owned();
        assert!(
            ids.iter().any(|i| format!("acme:bot:{i}") == id),
            "{id} was not recorded"
        );
    }
    env.cleanup().await;
}

#[tokio::test]
async fn an_event_recorded_twice_is_stored_once() {
    let env = TestEnv::new("sdk_dup").await;
    let js = async_nats::jetstream::new(streams::connect(&env.nats).await.unwrap());
    streams::ensure(&js, &env.nats).await.unwrap();
    let sdk = Agent::start(js.clone(), &env.nats.subject_prefix, SdkConfig::default());
    let event = OutgoingEvent {
        id: EventId::new("same-id").unwrap(),
        customer: CustomerId::new("acme").unwrap(),
        agent: AgentId::new("bot").unwrap(),
        event_type: "tool.call".into(),
        time: chrono::Utc::now(),
        data: serde_json::json!({"tool": "search"}),
        hold_id: None,
    };
    sdk.record(event.clone()).await.unwrap();
    sdk.record(event).await.unwrap();
    let stats = sdk.close().await.unwrap();
    assert_eq!((stats.stored, stats.duplicates), (1, 1));
    env.cleanup().await;
}
