//! Support for the end-to-end tests in `tests/`: the meters and catalog the tests run with,
//! starting an aggregator in-process, waiting for the stream to drain, and certificates made
//! with `openssl` for the TLS tests. The expected
//! results themselves are computed inside each test, independently of the pipeline's code.

use std::time::Duration;

use tally_aggregator::AggregatorConfig;
use tally_domain::meter::{validate_meters, MeterSpec};
use tally_domain::Meter;
use tally_platform::shutdown::Shutdown;
use tally_platform::testkit::TestEnv;
use tally_rater::config::{PlanSpec, SubscriptionSpec};
use tally_rater::{Catalog, RaterConfig};

/// `llm_tokens` (SUM of `$.tokens` by model and kind) and `tool_calls` (COUNT by tool).
pub fn meters() -> Vec<Meter> {
    validate_meters(meter_specs()).expect("meters are valid")
}

/// The declarations of [`meters`] (what `tally-rater` stores from the file).
pub fn meter_specs() -> Vec<MeterSpec> {
    serde_json::from_value(serde_json::json!([
        {"slug": "llm_tokens", "event_type": "llm.tokens", "aggregation": "SUM",
         "value_property": "$.tokens", "group_by": {"model": "$.model", "kind": "$.kind"}},
        {"slug": "tool_calls", "event_type": "tool.call", "aggregation": "COUNT", "group_by": {"tool": "$.tool"}}
    ]))
    .expect("meter specs are valid JSON")
}

/// Plans as in `config/tally.toml`: `ai-standard` in USD (0.000003 per token; tool calls
/// graduated 0.02 up to 100, 0.015 up to 1000, then 0.01) for everyone, and `ai-yen` in JPY
/// (0.0004 per token; tool calls 3 up to 500, then 1.5) for `yen_customer`.
pub fn catalog(yen_customer: &str) -> Catalog {
    #[derive(serde::Deserialize)]
    struct File {
        plans: Vec<PlanSpec>,
        subscriptions: Vec<SubscriptionSpec>,
    }
    let text = format!(
        r#"
        [[plans]]
        id = "ai-standard"
        version = 1
        currency = "USD"
        effective_from = "2020-01-01T00:00:00Z"
        prices = [
          {{ model = "per_unit", meter = "llm_tokens", unit_price = "0.000003" }},
          {{ model = "graduated", meter = "tool_calls", tiers = [
             {{ up_to = "100", unit_price = "0.02" }}, {{ up_to = "1000", unit_price = "0.015" }}, {{ unit_price = "0.01" }} ] }},
        ]
        [[plans]]
        id = "ai-yen"
        version = 1
        currency = "JPY"
        effective_from = "2020-01-01T00:00:00Z"
        prices = [
          {{ model = "per_unit", meter = "llm_tokens", unit_price = "0.0004" }},
          {{ model = "graduated", meter = "tool_calls", tiers = [ {{ up_to = "500", unit_price = "3" }}, {{ unit_price = "1.5" }} ] }},
        ]
        [[subscriptions]]
        customer = "{yen_customer}"
        plan = "ai-yen"
        "#
    );
    let file: File = toml::from_str(&text).expect("catalog text is valid");
    let rater = RaterConfig {
        default_plan: Some("ai-standard".into()),
        ..RaterConfig::default()
    };
    Catalog::new(file.plans, file.subscriptions, &rater, &meters()).expect("catalog is valid")
}

/// Aggregator settings for tests: small batches, short waits.
pub fn aggregator_config() -> AggregatorConfig {
    AggregatorConfig {
        batch_max_events: 1000,
        batch_max_wait_ms: 100,
        // a restarted aggregator takes over from a killed one within a second
        lease_secs: 1,
        ..AggregatorConfig::default()
    }
}

/// Starts an aggregator on `env` in a task; cancel `stop` and await the handle to stop it.
pub async fn start_aggregator(
    env: &TestEnv,
    cfg: AggregatorConfig,
    stop: Shutdown,
) -> tokio::task::JoinHandle<Result<(), tally_aggregator::RunError>> {
    let client = async_nats::connect(&env.nats.url)
        .await
        .expect("NATS answers");
    let db = env.db();
    let nats_cfg = env.nats.clone();
    tokio::spawn(
        async move { tally_aggregator::run(client, db, &nats_cfg, &cfg, meters(), stop).await },
    )
}

/// Waits until the consumer has nothing pending and nothing unacknowledged.
pub async fn wait_drained(env: &TestEnv, consumer: &str, timeout: Duration) {
    let client = async_nats::connect(&env.nats.url)
        .await
        .expect("NATS answers");
    let js = async_nats::jetstream::new(client);
    let drained =
        tally_platform::streams::wait_drained(&js, &env.nats.stream, consumer, timeout).await;
    assert!(
        drained,
        "consumer {consumer} did not drain within {timeout:?}"
    );
}

/// `<name>.pem` and `<name>.key` in `dir`: a P-256 certificate for `/CN=<cn>`, self-signed
/// (a CA) when `ca` is none, else signed by the CA `<ca>.pem` in one step (OpenSSL 3's
/// `req -x509 -CA`), with `extensions` added.
pub fn certificate(
    dir: &std::path::Path,
    name: &str,
    cn: &str,
    ca: Option<&str>,
    extensions: &[&str],
) {
    let mut openssl = std::process::Command::new("openssl");
    openssl
        .current_dir(dir)
        .args(["req", "-x509", "-days", "2", "-nodes", "-subj"])
        .arg(format!("/CN={cn}"))
        .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .arg("-keyout")
        .arg(format!("{name}.key"))
        .arg("-out")
        .arg(format!("{name}.pem"));
    if let Some(ca) = ca {
        openssl
            .arg("-CA")
            .arg(format!("{ca}.pem"))
            .arg("-CAkey")
            .arg(format!("{ca}.key"));
    }
    for ext in extensions {
        openssl.args(["-addext", ext]);
    }
    let out = openssl
        .output()
        .expect("openssl runs (the test makes its certificates with it)");
    assert!(
        out.status.success(),
        "openssl for {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A gateway serving `env`'s streams (declared here) on a free loopback port, with the key
/// store of `env`'s database and the default ingest settings; with the JetStream context.
pub async fn start_gateway(
    env: &TestEnv,
) -> (
    std::sync::Arc<tally_ingest::gateway::Gateway>,
    tally_ingest::gateway::Running,
    async_nats::jetstream::Context,
) {
    use tally_ingest::gateway::{self, Gateway, IngestConfig};
    let js = async_nats::jetstream::new(
        tally_platform::streams::connect(&env.nats)
            .await
            .expect("NATS"),
    );
    tally_platform::streams::ensure(&js, &env.nats)
        .await
        .expect("streams");
    let cfg = IngestConfig {
        listen_addr: "127.0.0.1:0".into(),
        ..IngestConfig::default()
    };
    let addr = cfg.listen().expect("a loopback address");
    let gw = std::sync::Arc::new(Gateway::new(
        cfg,
        js.clone(),
        &env.nats.subject_prefix,
        Some(env.db()),
    ));
    let running = gateway::start(gw.clone(), addr, Shutdown::new())
        .await
        .expect("the gateway listens");
    (gw, running, js)
}

/// A request to an API at `addr`, with `Authorization: Bearer <token>` when a token is given:
/// a GET when `body` is null, else a POST of it as JSON; (status, JSON body or null).
pub async fn api_call(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let method = if body.is_null() { "GET" } else { "POST" };
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{authorization}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    s.write_all(req.as_bytes()).await.expect("writes");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("reads");
    let status: u16 = text[9..12].parse().expect("a status");
    let answer = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(answer).unwrap_or_default())
}

/// The rater API over `env`'s database on a free port with the clock `now_ms`, and an
/// `admin` token of actor `alice`.
pub async fn start_rater_api(
    env: &TestEnv,
    stop: &Shutdown,
    now_ms: fn() -> i64,
) -> (std::net::SocketAddr, String, tokio::task::JoinHandle<()>) {
    use tally_platform::auth::{self, Authenticator, Role};
    let db = env.db();
    let (token, _) = auth::store::create(&db, "alice", Role::Admin, "test", 0)
        .await
        .expect("token");
    let auth = std::sync::Arc::new(Authenticator::new("rater", db.clone()));
    auth.reload().await.expect("tokens load");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("address");
    let state = std::sync::Arc::new(tally_rater::api::ApiState {
        source: tally_rater::store::CatalogSource {
            rater: RaterConfig::default(),
            features: tally_platform::Features::default(),
        },
        db,
        now_ms,
        auth,
        backfill_horizon_secs: tally_rater::backfill::HORIZON_SECS.unsigned_abs(),
    });
    (
        addr,
        token,
        tokio::spawn(tally_rater::api::serve(listener, state, stop.clone())),
    )
}

/// The invoice numbers of `env` (a NATS KV bucket of its own, `N<stream>`) and the bucket's
/// name, for the test to delete at its end.
pub async fn invoice_numbers(env: &TestEnv) -> (tally_invoicer::numbering::Numbers, String) {
    let bucket = format!("N{}", env.nats.stream);
    let numbers = tally_invoicer::numbering::Numbers::open(
        async_nats::connect(&env.nats.url).await.expect("NATS"),
        &bucket,
    )
    .await
    .expect("numbers bucket");
    (numbers, bucket)
}
