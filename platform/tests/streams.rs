//! Issue 16, findings 2 and 4, against the shared local NATS (each test its own streams):
//! declaring the streams makes an existing stream match the configuration (a changed
//! duplicate window, age or size limit used to do nothing at all), the dead-letter stream has
//! its own duplicate window (it used to share the usage stream's), a setting JetStream
//! cannot change stops the service naming the setting, a limit below what a stream holds is
//! refused rather than applied by deleting messages, and a full usage stream refuses new
//! events instead of dropping old ones.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tally_platform::streams::{self, StreamError};
use tally_platform::testkit::TestEnv;

async fn js(env: &TestEnv) -> jetstream::Context {
    jetstream::new(async_nats::connect(&env.nats.url).await.expect("NATS"))
}

async fn config_of(js: &jetstream::Context, name: &str) -> stream::Config {
    js.get_stream(name)
        .await
        .expect("stream")
        .cached_info()
        .config
        .clone()
}

#[tokio::test]
async fn a_changed_setting_is_applied_to_the_existing_stream_and_the_dead_letters_keep_their_own_window(
) {
    let mut env = TestEnv::new("streams_reconcile").await;
    let js = js(&env).await;
    streams::ensure(&js, &env.nats).await.expect("created");
    assert_eq!(
        config_of(&js, &env.nats.stream).await.duplicate_window,
        Duration::from_secs(120)
    );
    env.nats.duplicate_window_secs = 30;
    env.nats.dlq_duplicate_window_secs = 900;
    env.nats.max_age_secs = 86_400;
    env.nats.max_bytes = 64 << 20;
    env.nats.dlq_max_bytes = 16 << 20;
    streams::ensure(&js, &env.nats).await.expect("reconciled");
    let usage = config_of(&js, &env.nats.stream).await;
    assert_eq!(usage.duplicate_window, Duration::from_secs(30));
    assert_eq!(usage.max_age, Duration::from_secs(86_400));
    assert_eq!(usage.max_bytes, 64 << 20);
    assert_eq!(usage.discard, stream::DiscardPolicy::New);
    let dlq = config_of(&js, &env.nats.dlq_stream).await;
    assert_eq!(dlq.duplicate_window, Duration::from_secs(900));
    assert_eq!(dlq.max_bytes, 16 << 20);
    assert_eq!(dlq.discard, stream::DiscardPolicy::Old);
    // declaring again with the same configuration changes nothing
    streams::ensure(&js, &env.nats).await.expect("unchanged");
    assert_eq!(config_of(&js, &env.nats.stream).await, usage);
    env.cleanup().await;
}

#[tokio::test]
async fn a_setting_that_cannot_change_in_place_stops_the_service_naming_it() {
    let env = TestEnv::new("streams_drift").await;
    let js = js(&env).await;
    // a stream of that name made by hand in memory
    js.create_stream(stream::Config {
        name: env.nats.stream.clone(),
        subjects: vec![env.nats.stream_subjects()],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .expect("hand-made stream");
    let err = streams::ensure(&js, &env.nats).await.unwrap_err();
    assert!(
        matches!(&err, StreamError::Drift { setting, .. } if setting.contains("file storage")),
        "{err}"
    );
    js.delete_stream(&env.nats.stream).await.expect("deleted");

    // the subjects: partitions turned on under a running deployment
    streams::ensure(&js, &env.nats).await.expect("created");
    let partitioned = tally_platform::NatsConfig {
        partitions: 2,
        ..env.nats.clone()
    };
    let err = streams::ensure(&js, &partitioned).await.unwrap_err();
    assert!(err.to_string().contains("nats.partitions"), "{err}");
    assert_eq!(
        config_of(&js, &env.nats.stream).await.subjects,
        vec![env.nats.stream_subjects()],
        "left as it was"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_limit_below_what_the_stream_holds_is_refused_and_nothing_is_deleted() {
    let mut env = TestEnv::new("streams_shrink").await;
    let js = js(&env).await;
    streams::ensure(&js, &env.nats).await.expect("created");
    let subject = format!("{}.acme.bot", env.nats.subject_prefix);
    for i in 0..20 {
        js.publish(subject.clone(), format!("event {i}").into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    env.nats.max_msgs = 10;
    let err = streams::ensure(&js, &env.nats).await.unwrap_err();
    assert!(err.to_string().contains("nats.max_msgs"), "{err}");
    let mut usage = js.get_stream(&env.nats.stream).await.expect("stream");
    assert_eq!(usage.info().await.expect("info").state.messages, 20);
    env.cleanup().await;
}

#[tokio::test]
async fn a_full_usage_stream_refuses_new_events_and_keeps_every_stored_one() {
    let mut env = TestEnv::new("streams_full").await;
    env.nats.max_bytes = 1 << 20;
    let js = js(&env).await;
    streams::ensure(&js, &env.nats).await.expect("created");
    let subject = format!("{}.acme.bot", env.nats.subject_prefix);
    let body = vec![b'x'; 16 << 10];
    let mut stored = 0u64;
    let mut refused = false;
    for _ in 0..200 {
        let ack = js
            .publish(subject.clone(), body.clone().into())
            .await
            .expect("sent");
        match ack.await {
            Ok(_) => stored += 1,
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "a full stream refuses the publish");
    let mut usage = js.get_stream(&env.nats.stream).await.expect("stream");
    let state = usage.info().await.expect("info").state.clone();
    assert_eq!(
        (state.messages, state.first_sequence),
        (stored, 1),
        "nothing stored was dropped"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_size_limit_the_server_cannot_reserve_is_refused_naming_the_setting() {
    let mut env = TestEnv::new("streams_reserve").await;
    // far beyond any test server's JetStream storage
    env.nats.max_bytes = 1 << 50;
    let js = js(&env).await;
    let err = streams::ensure(&js, &env.nats).await.unwrap_err();
    assert!(err.to_string().contains("`nats.max_bytes`"), "{err}");
    env.nats.max_bytes = -1;
    env.nats.dlq_max_bytes = 1 << 50;
    let err = streams::ensure(&js, &env.nats).await.unwrap_err();
    assert!(err.to_string().contains("`nats.dlq_max_bytes`"), "{err}");
    env.cleanup().await;
}

/// Replicas follow the configuration upwards, never downwards. A single server either
/// records the higher count (NATS 2.9 does: it keeps one copy in non-clustered mode) or
/// refuses it (newer releases), and a refusal names the setting; once the stream has more
/// replicas than the configuration, declaring stops with an error naming `nats.replicas`
/// instead of dropping copies. Before, replicas were never looked at.
#[tokio::test]
async fn replicas_follow_the_configuration_upwards_and_are_never_lowered() {
    let mut env = TestEnv::new("streams_replicas").await;
    let js = js(&env).await;
    streams::ensure(&js, &env.nats).await.expect("created");
    env.nats.replicas = 3;
    match streams::ensure(&js, &env.nats).await {
        Ok(_) => assert_eq!(config_of(&js, &env.nats.stream).await.num_replicas, 3),
        Err(e) => {
            let err = e.to_string();
            assert!(
                err.contains("`nats.replicas` 1 replicas -> 3 replicas"),
                "{err}"
            );
            env.cleanup().await;
            return;
        }
    }
    env.nats.replicas = 1;
    let err = streams::ensure(&js, &env.nats)
        .await
        .expect_err("fewer replicas are never applied")
        .to_string();
    assert!(err.contains("`nats.replicas`"), "{err}");
    assert!(err.contains("3 replicas"), "{err}");
    assert_eq!(config_of(&js, &env.nats.stream).await.num_replicas, 3);
    env.cleanup().await;
}

/// The live feed's settings follow the configuration too (its duplicate window is the usage
/// stream's `nats.duplicate_window_secs`); it used to keep those it was created with.
#[tokio::test]
async fn the_feed_follows_the_configured_duplicate_window() {
    use tally_platform::feed::{self, FeedConfig};
    let mut env = TestEnv::new("streams_feed").await;
    let js = js(&env).await;
    feed::ensure(&js, &FeedConfig::for_nats(&env.nats))
        .await
        .expect("created");
    let name = FeedConfig::for_nats(&env.nats).stream;
    assert_eq!(
        config_of(&js, &name).await.duplicate_window,
        Duration::from_secs(env.nats.duplicate_window_secs)
    );
    env.nats.duplicate_window_secs = 45;
    feed::ensure(&js, &FeedConfig::for_nats(&env.nats))
        .await
        .expect("reconciled");
    let have = config_of(&js, &name).await;
    assert_eq!(have.duplicate_window, Duration::from_secs(45));
    // the same again changes nothing
    feed::ensure(&js, &FeedConfig::for_nats(&env.nats))
        .await
        .expect("unchanged");
    assert_eq!(config_of(&js, &name).await, have);
    // raised, then never lowered (as the usage stream; a single server may refuse 3)
    env.nats.replicas = 3;
    if feed::ensure(&js, &FeedConfig::for_nats(&env.nats))
        .await
        .is_ok()
    {
        assert_eq!(config_of(&js, &name).await.num_replicas, 3);
        env.nats.replicas = 1;
        let err = feed::ensure(&js, &FeedConfig::for_nats(&env.nats))
            .await
            .expect_err("fewer replicas are never applied")
            .to_string();
        assert!(err.contains("`nats.replicas`"), "{err}");
    }
    env.cleanup().await;
}
