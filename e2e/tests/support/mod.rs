//! What the NATS security tests (`nats_replies.rs`, `nats_tls.rs`) share: an agent publishing
//! through the SDK and the real aggregator, each on a client the test connected its own way
//! (as a NATS user, over TLS).

use std::time::Duration;

use tally_domain::{AgentId, CustomerId};
use tally_e2e::{aggregator_config, meters};
use tally_ingest::sdk::{Agent, SdkConfig};
use tally_platform::shutdown::Shutdown;
use tally_platform::streams;
use tally_platform::testkit::TestEnv;
use tally_platform::NatsConfig;

/// `customer`'s agent `bot` publishes `n` token events of 100 through the SDK on `client`;
/// every one is acknowledged as stored.
pub async fn publish_tokens(
    client: async_nats::Client,
    nats: &NatsConfig,
    customer: &str,
    model: &str,
    n: usize,
) {
    let sdk = Agent::start(
        async_nats::jetstream::new(client),
        &nats.subject_prefix,
        SdkConfig::default(),
    );
    let rec = sdk.recorder(
        CustomerId::new(customer).expect("id"),
        AgentId::new("bot").expect("id"),
    );
    for _ in 0..n {
        rec.llm_tokens(model, "output", 100)
            .await
            .expect("recorded");
    }
    let stats = sdk.close().await.expect("closed");
    assert_eq!(
        (stats.stored, stats.failed),
        (n as u64, 0),
        "{customer}'s acks arrive"
    );
}

/// Runs the aggregator on `client` until it has committed and acked everything in the
/// stream (asserted, 30 s at most, watched on `watch`); returns its stop and task.
pub async fn aggregate_all(
    env: &TestEnv,
    nats: &NatsConfig,
    client: async_nats::Client,
    watch: &async_nats::jetstream::Context,
) -> (
    Shutdown,
    tokio::task::JoinHandle<Result<(), tally_aggregator::RunError>>,
) {
    let stop = Shutdown::new();
    let (db, nats_cfg, agg_stop) = (env.db(), nats.clone(), stop.clone());
    let agg = tokio::spawn(async move {
        tally_aggregator::run(
            client,
            db,
            &nats_cfg,
            &aggregator_config(),
            meters(),
            agg_stop,
        )
        .await
    });
    assert!(
        streams::wait_drained(watch, &nats.stream, "aggregator", Duration::from_secs(30)).await,
        "the aggregator pulled, committed and acked everything"
    );
    (stop, agg)
}
