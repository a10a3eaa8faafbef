//! Issue 16, finding 6: reply subjects are readable only by the user they are for. Every
//! non-admin NATS user could subscribe to `_INBOX.>`, where the aggregator's pull consumer
//! receives the usage it reads and the invoicer its KV reads: an agent of one customer
//! subscribed there received copies of every customer's usage and of invoice documents.
//!
//! On a nats-server of the test's own with the generated authorization, an agent of `globex`
//! subscribes to every reply subject it can name while `acme`'s agent publishes usage, the
//! real aggregator consumes it (as `tally-aggregator`) and the invoicer numbers and reads a
//! frozen invoice document (as `tally-invoicer`): the spy receives nothing, and every one of
//! them still gets its own replies (acks, pulled messages, KV reads) on its own prefix.

use std::time::Duration;

mod support;

use futures::StreamExt;
use tally_ingest::nats_auth::{render, users, Names, NatsUser};
use tally_platform::own_server::start_nats;
use tally_platform::streams;
use tally_platform::testkit::TestEnv;

/// Connects as `u` the way every service does (`streams::connect`: `nats.user`, its inbox).
async fn connect(port: u16, u: &NatsUser) -> async_nats::Client {
    let cfg = tally_platform::NatsConfig {
        url: format!("nats://127.0.0.1:{port}"),
        user: u.user.clone(),
        password: u.password.clone(),
        ..Default::default()
    };
    streams::connect(&cfg).await.expect("logs in")
}

fn user<'a>(users: &'a [NatsUser], name: &str) -> &'a NatsUser {
    users
        .iter()
        .find(|u| u.user == name)
        .expect("a generated user")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_subscribed_to_every_reply_subject_receives_nothing_of_others() {
    tally_platform::telemetry::init_logs(&Default::default());
    let env = TestEnv::new("e2e_nats_replies").await;
    let users = users(&["acme", "globex"]).expect("users");
    let auth = render(
        &users,
        &Names {
            prefix: &env.nats.subject_prefix,
            dlq_prefix: &env.nats.dlq_subject_prefix,
            stream: &env.nats.stream,
            spend_root: "tally",
        },
    );
    let (_server, port) = start_nats(&auth).await.expect("nats-server");

    // the spy: globex's agent, on every reply subject it can name
    let spy = connect(port, user(&users, "agent-globex")).await;
    let mut taps = Vec::new();
    for subject in [
        "_INBOX.>",
        "_INBOX.tally-aggregator.>",
        "_INBOX.tally-invoicer.>",
        "_INBOX.agent-acme.>",
        ">",
    ] {
        taps.push(spy.subscribe(subject).await.expect("subscribe is sent"));
    }
    let mut tapped = futures::stream::select_all(taps);
    spy.flush().await.expect("flushed");

    let admin_js = async_nats::jetstream::new(connect(port, user(&users, "tally-admin")).await);
    streams::ensure(&admin_js, &env.nats)
        .await
        .expect("streams");

    // acme's agent publishes and gets its acks on its own prefix
    let acme = connect(port, user(&users, "agent-acme")).await;
    support::publish_tokens(acme, &env.nats, "acme", "secret-model", 5).await;

    // the aggregator pulls and commits as tally-aggregator
    let agg_client = connect(port, user(&users, "tally-aggregator")).await;
    let (stop, agg) = support::aggregate_all(&env, &env.nats, agg_client, &admin_js).await;

    // the invoicer numbers and reads back an invoice document as tally-invoicer
    let bucket = env.nats.invoice_numbers_bucket();
    let numbers = tally_invoicer::numbering::Numbers::open_for(
        connect(port, user(&users, "tally-invoicer")).await,
        &bucket,
        1,
        &env.clickhouse.database,
    )
    .await
    .expect("the invoicer opens its bucket");
    numbers
        .assign("tally", &["inv-acme-1".to_owned()])
        .await
        .expect("numbered");
    let inv_js = async_nats::jetstream::new(connect(port, user(&users, "tally-invoicer")).await);
    let kv = inv_js.get_key_value(&bucket).await.expect("bucket");
    kv.create(
        "invoice.inv-acme-1",
        r#"{"customer":"acme","total_minor":123456}"#.into(),
    )
    .await
    .expect("frozen");
    let doc = kv
        .get("invoice.inv-acme-1")
        .await
        .expect("read")
        .expect("a document");
    assert!(String::from_utf8_lossy(&doc).contains("123456"));

    // globex's agent still works on its own prefix
    let globex_js = async_nats::jetstream::new(connect(port, user(&users, "agent-globex")).await);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        tally_domain::nats_msg_id("globex", "bot", "g-1").as_str(),
    );
    globex_js
        .publish_with_headers(
            format!("{}.globex.bot", env.nats.subject_prefix),
            headers,
            "{}".into(),
        )
        .await
        .expect("sent")
        .await
        .expect("globex's ack arrives");

    // the spy received nothing at all
    let mut leaked = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), tapped.next()).await {
        leaked.push(format!(
            "{}: {}",
            m.subject,
            String::from_utf8_lossy(&m.payload)
        ));
    }
    assert!(leaked.is_empty(), "the spy received {leaked:#?}");

    stop.cancel();
    let _ = agg.await;
    env.cleanup().await;
}
