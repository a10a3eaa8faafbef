//! The generated NATS authorization with the real services, on a nats-server of the test's
//! own: the gateway (as `tally-gateway`), an agent publishing directly (as `agent-acme`) and
//! the aggregator (as `tally-aggregator`) each work with only their own rights, and each is
//! refused outside them: the aggregator cannot forge usage or delete the stream, the gateway
//! cannot consume it. The spend decider works as `tally-spend`, and acme's agent may ask it
//! for acme only.

use std::sync::Arc;
use std::time::Duration;

use tally_domain::{AgentId, CustomerId};
use tally_e2e::{aggregator_config, meters};
use tally_ingest::gateway::{self, key_store, Gateway, IngestConfig};
use tally_ingest::nats_auth::{render, users, Names, NatsUser};
use tally_ingest::sdk::{Agent, SdkConfig};
use tally_platform::own_server::start_nats;
use tally_platform::shutdown::Shutdown;
use tally_platform::streams;
use tally_platform::testkit::TestEnv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Connects as `u` the way every service does: `nats.user` and `nats.password`.
async fn connect(port: u16, u: &NatsUser) -> async_nats::Client {
    let cfg = tally_platform::NatsConfig {
        url: format!("nats://127.0.0.1:{port}"),
        user: u.user.clone(),
        password: u.password.clone(),
        ..Default::default()
    };
    streams::connect(&cfg).await.unwrap()
}

fn user<'a>(users: &'a [NatsUser], name: &str) -> &'a NatsUser {
    users.iter().find(|u| u.user == name).unwrap()
}

async fn acked(js: &async_nats::jetstream::Context, subject: String) -> bool {
    let Ok(ack) = js.publish(subject, "{}".into()).await else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ack).await,
        Ok(Ok(_))
    )
}

async fn post(addr: std::net::SocketAddr, key: &str, body: &str) -> u16 {
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nhost: gw\r\nconnection: close\r\nauthorization: Bearer {key}\r\n\
         content-type: application/cloudevents-batch+json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    raw[9..12].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_works_with_its_own_nats_user_and_is_refused_outside_it() {
    let env = TestEnv::new("e2e_nats_services").await;
    let users = users(&["acme"]).unwrap();
    let auth = render(
        &users,
        &Names {
            prefix: &env.nats.subject_prefix,
            dlq_prefix: &env.nats.dlq_subject_prefix,
            stream: &env.nats.stream,
            spend_root: "tally",
        },
    );
    let (_server, port) = start_nats(&auth).await.expect("starting nats-server");
    let admin_js = async_nats::jetstream::new(connect(port, user(&users, "tally-admin")).await);

    // The gateway declares the streams and publishes for acme.
    let gw_js = async_nats::jetstream::new(connect(port, user(&users, "tally-gateway")).await);
    streams::ensure(&gw_js, &env.nats)
        .await
        .expect("the gateway may declare streams");
    let cfg = IngestConfig {
        listen_addr: "127.0.0.1:0".into(),
        ..IngestConfig::default()
    };
    let addr = cfg.listen().unwrap();
    let gw = Arc::new(Gateway::new(
        cfg,
        gw_js.clone(),
        &env.nats.subject_prefix,
        Some(env.db()),
    ));
    let running = gateway::start(gw.clone(), addr, Shutdown::new())
        .await
        .unwrap();
    let scope = key_store::scope_from("acme", &[], "e2e").unwrap();
    let (key, record) = key_store::create(&env.db(), scope, "e2e", 0).await.unwrap();
    gw.keys.upsert(record);
    let now = chrono::Utc::now().to_rfc3339();
    let events: Vec<String> = (1..=5)
        .map(|i| format!(r#"{{"specversion":"1.0","id":"h-{i}","source":"web","subject":"acme","type":"llm.tokens","time":"{now}","data":{{"tokens":10,"model":"m","kind":"input"}}}}"#))
        .collect();
    assert_eq!(
        post(running.addr, &key, &format!("[{}]", events.join(","))).await,
        200
    );

    // An agent publishes directly through the SDK.
    let agent_js = async_nats::jetstream::new(connect(port, user(&users, "agent-acme")).await);
    let sdk = Agent::start(agent_js, &env.nats.subject_prefix, SdkConfig::default());
    let rec = sdk.recorder(
        CustomerId::new("acme").unwrap(),
        AgentId::new("bot").unwrap(),
    );
    for _ in 0..5 {
        rec.llm_tokens("m", "output", 100).await.unwrap();
    }
    let stats = sdk.close().await.unwrap();
    assert_eq!((stats.stored, stats.failed), (5, 0));

    // The aggregator consumes, commits and acks as tally-aggregator.
    let agg_client = connect(port, user(&users, "tally-aggregator")).await;
    let stop = Shutdown::new();
    let (db, nats_cfg) = (env.db(), env.nats.clone());
    let agg = tokio::spawn(async move {
        tally_aggregator::run(
            agg_client,
            db,
            &nats_cfg,
            &aggregator_config(),
            meters(),
            stop.clone(),
        )
        .await
    });
    let drained = streams::wait_drained(
        &admin_js,
        &env.nats.stream,
        "aggregator",
        Duration::from_secs(30),
    )
    .await;
    assert!(drained, "the aggregator did not commit and ack everything");
    let (sum, n): (String, u64) = env
        .db()
        .query("SELECT toString(sum(quantity)), sum(event_count) FROM v_usage WHERE meter = 'llm_tokens'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        (
            sum.parse::<rust_decimal::Decimal>()
                .unwrap()
                .normalize()
                .to_string(),
            n
        ),
        ("550".into(), 10)
    );

    // Outside their rights.
    // Refused JetStream API calls get no answer: wait 2 s, not the default 5 s per call.
    let mut agg_js =
        async_nats::jetstream::new(connect(port, user(&users, "tally-aggregator")).await);
    agg_js.set_timeout(Duration::from_secs(2));
    let mut gw_js = gw_js.clone();
    gw_js.set_timeout(Duration::from_secs(2));
    let p = &env.nats.subject_prefix;
    assert!(
        !acked(&agg_js, format!("{p}.acme.bot")).await,
        "the aggregator forged usage"
    );
    assert!(
        agg_js.delete_stream(&env.nats.stream).await.is_err(),
        "the aggregator deleted the stream"
    );
    let consumer = gw_js
        .create_consumer_on_stream(
            async_nats::jetstream::consumer::pull::Config::default(),
            env.nats.stream.as_str(),
        )
        .await;
    assert!(consumer.is_err(), "the gateway may not consume the stream");

    // The invoicer numbers invoices in its KV bucket as tally-invoicer, and nothing else.
    let inv_client = connect(port, user(&users, "tally-invoicer")).await;
    let numbers = tally_invoicer::numbering::Numbers::open(
        inv_client.clone(),
        tally_ingest::nats_auth::DEFAULT_INVOICE_BUCKET,
    )
    .await
    .expect("the invoicer may declare and open its bucket");
    let assigned = numbers
        .assign("acme-issuer", &["inv-a".to_owned(), "inv-b".to_owned()])
        .await
        .expect("the invoicer may number invoices");
    let mut got: Vec<u64> = assigned.values().copied().collect();
    got.sort_unstable();
    assert_eq!(got, vec![1, 2]);
    let mut inv_js = async_nats::jetstream::new(inv_client);
    inv_js.set_timeout(Duration::from_secs(2));
    assert!(
        !acked(&inv_js, format!("{p}.acme.bot")).await,
        "the invoicer forged usage"
    );
    assert!(
        inv_js.delete_stream(&env.nats.stream).await.is_err(),
        "the invoicer deleted the usage stream"
    );

    // The spend decider works as tally-spend (the feed, its journal and buckets, the
    // aggregators' lease, answering requests); an agent asks for its own customer only.
    let plans: Vec<tally_rater::config::PlanSpec> = serde_json::from_value(serde_json::json!([
        {"id": "p", "version": 1, "currency": "USD", "effective_from": "2020-01-01T00:00:00Z",
         "prices": [{"model": "per_unit", "meter": "tool_calls", "unit_price": "0.01"}]}
    ]))
    .unwrap();
    tally_rater::store::registry::bootstrap(&env.db(), &[], &tally_e2e::meter_specs(), 0)
        .await
        .unwrap();
    tally_rater::store::catalog::bootstrap(&env.db(), &plans, &[], 0)
        .await
        .unwrap();
    let spend_stop = Shutdown::new();
    let spend = tally_rater::live::run::Spend {
        db: env.db(),
        nats: connect(port, user(&users, "tally-spend")).await,
        nats_cfg: env.nats.clone(),
        cfg: tally_rater::live::SpendConfig {
            lease_secs: 1,
            ..Default::default()
        },
        source: tally_rater::store::CatalogSource {
            rater: tally_rater::RaterConfig {
                default_plan: Some("p".into()),
                ..Default::default()
            },
            features: tally_platform::Features::default(),
        },
        now_ms: || chrono::Utc::now().timestamp_millis(),
    };
    let decider = tokio::spawn(tally_rater::live::run::run(spend, spend_stop.clone()));
    let asker = tally_ingest::spend::SpendClient::new(
        connect(port, user(&users, "agent-acme")).await,
        "tally",
        Duration::from_secs(2),
        tally_ingest::spend::FailurePolicy::Closed,
    );
    let ask = tally_ingest::spend::AuthorizeRequest::new("tool_calls", 1.into());
    let (acme, bot) = (
        CustomerId::new("acme").unwrap(),
        AgentId::new("bot").unwrap(),
    );
    let mut allowed = false;
    for _ in 0..60 {
        if asker.authorize(&acme, &bot, &ask).await.unwrap().allow {
            allowed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(allowed, "the decider answers as tally-spend");
    let balance = asker.balance(&acme).await.unwrap().expect("a balance");
    assert_eq!(balance["holds"], 1, "{balance}");
    let other = asker
        .authorize(&CustomerId::new("globex").unwrap(), &bot, &ask)
        .await;
    assert!(
        other.is_err() || other.as_ref().is_ok_and(|a| !a.allow && a.offline),
        "acme's agent asked for globex: {other:?}"
    );
    spend_stop.cancel();
    let _ = decider.await;

    agg.abort();
    running.stop().await;
    // The streams live on the test's own server, gone with it; drop the database.
    let _ = admin_js.delete_stream(&env.nats.stream).await;
    env.cleanup().await;
}
