//! Live spend control over the real servers (issue 15): spend deciders (`rater::live`) run
//! in-process against NATS JetStream and ClickHouse, an aggregator commits the usage the
//! agents report, and agents ask through the Rust SDK (`tally_ingest::spend`).
//!
//! - The overshoot bound: 1,000 concurrent authorize calls against headroom for exactly k,
//!   with three decider instances running (one holds the partition, two stand by, all
//!   subscribed), 100 times: exactly k admitted every time.
//! - An agent with a per-customer budget spends until it is denied; its usage settles the
//!   holds; another agent of the customer is denied too; billed usage respects the limit;
//!   thresholds fire once each (also across a restart of the decider); a top-up lets it
//!   resume; a restarted decider's balance equals the one before.
//! - Hostile input: malformed JSON, unknown meter, huge and negative quantities, an unknown
//!   hold, an oversized body, are each answered with their reason code.
//! - A prepaid wallet (grants written and made available by tally-payments' wallet pass)
//!   holds like a budget: an agent on a wallet budget is denied once its usage and holds
//!   reach the wallet, and resumes when a new grant arrives.
//! - A customer pinned to a plan version, with a second product line: each meter's requests
//!   are priced by its line and the pinned version against the customer's budget.
//! - A hold its usage reduced stays reduced once across a restart of the decider (the same
//!   batch read again from the feed does not reduce it again), and a released hold stays
//!   released.

use std::time::Duration;

use futures::StreamExt;
use rust_decimal::Decimal;
use tally_domain::{AgentId, CustomerId, EventId};
use tally_e2e::{aggregator_config, meter_specs, start_aggregator, wait_drained};
use tally_ingest::spend::{AuthorizeRequest, FailurePolicy, SpendClient};
use tally_ingest::{OutgoingEvent, Publisher};
use tally_platform::shutdown::Shutdown;
use tally_platform::testkit::TestEnv;
use tally_rater::live::budget::{self, Budget, Kind};
use tally_rater::live::run::{self, Spend};
use tally_rater::live::SpendConfig;
use tally_rater::store::CatalogSource;
use tally_rater::RaterConfig;

/// `ai-standard`: 0.000003 USD per token, tool calls 0.02 up to 100 (as `tally_e2e::catalog`);
/// entitled to the feature `web_search` and 5,000 tokens of `gpt-4o` a period.
const PLAN: &str = r#"
[[plans]]
id = "ai-standard"
version = 1
currency = "USD"
effective_from = "2020-01-01T00:00:00Z"
prices = [
  { model = "per_unit", meter = "llm_tokens", unit_price = "0.000003" },
  { model = "graduated", meter = "tool_calls", tiers = [
     { up_to = "100", unit_price = "0.02" }, { up_to = "1000", unit_price = "0.015" }, { unit_price = "0.01" } ] },
]
entitlements = { features = ["web_search"], limits = [{ meter = "llm_tokens", group = { model = "gpt-4o" }, limit = "5000" }] }
"#;

fn d(s: &str) -> Decimal {
    s.parse().expect("decimal")
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn source() -> CatalogSource {
    CatalogSource {
        rater: RaterConfig {
            default_plan: Some("ai-standard".into()),
            ..RaterConfig::default()
        },
        features: tally_platform::Features::default(),
    }
}

/// Stores the meters and the plan, as `tally-rater` bootstraps them.
async fn store_catalog(env: &TestEnv) {
    store_catalog_with(env, "").await;
}

/// Stores the meters, the plan and the `[[plans]]` and `[[subscriptions]]` of `more` (TOML).
async fn store_catalog_with(env: &TestEnv, more: &str) {
    #[derive(serde::Deserialize)]
    struct F {
        plans: Vec<tally_rater::config::PlanSpec>,
        #[serde(default)]
        subscriptions: Vec<tally_rater::config::SubscriptionSpec>,
    }
    let f = toml::from_str::<F>(&format!("{PLAN}\n{more}")).expect("plan TOML");
    let db = env.db();
    tally_rater::store::registry::bootstrap(&db, &[], &meter_specs(), 0)
        .await
        .expect("stored meters");
    tally_rater::store::catalog::bootstrap(&db, &f.plans, &f.subscriptions, 0)
        .await
        .expect("stored plan");
}

fn spend_config(env: &TestEnv) -> SpendConfig {
    SpendConfig {
        subject_root: format!("{}_spend", env.nats.subject_prefix),
        lease_secs: 1,
        refresh_secs: 1,
        aborts_poll_ms: 200,
        hold_default_ms: 20_000,
        hold_grace_ms: 5_000,
        ..SpendConfig::default()
    }
}

/// Starts a decider on `env`; cancel `stop` to stop it.
async fn start_decider(
    env: &TestEnv,
    cfg: &SpendConfig,
    stop: Shutdown,
) -> tokio::task::JoinHandle<()> {
    let spend = Spend {
        db: env.db(),
        nats: async_nats::connect(&env.nats.url).await.expect("NATS"),
        nats_cfg: env.nats.clone(),
        cfg: cfg.clone(),
        source: source(),
        now_ms,
    };
    tokio::spawn(async move {
        run::run(spend, stop).await.expect("the decider runs");
    })
}

async fn sdk(env: &TestEnv, cfg: &SpendConfig) -> SpendClient {
    let client = async_nats::connect(&env.nats.url).await.expect("NATS");
    SpendClient::new(
        client,
        &cfg.subject_root,
        Duration::from_secs(5),
        FailurePolicy::Closed,
    )
}

fn customer(s: &str) -> CustomerId {
    CustomerId::new(s).expect("customer id")
}

fn agent(s: &str) -> AgentId {
    AgentId::new(s).expect("agent id")
}

/// Waits until a decider answers a balance request for `c`.
async fn wait_answering(sdk: &SpendClient, c: &CustomerId) -> serde_json::Value {
    for _ in 0..300 {
        if let Ok(Some(b)) = sdk.balance(c).await {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no decider answered within 30 s");
}

/// Polls the balance of `c` until `done` holds for it.
async fn wait_balance(
    sdk: &SpendClient,
    c: &CustomerId,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..300 {
        if let Ok(Some(b)) = sdk.balance(c).await {
            if done(&b) {
                return b;
            }
            last = b;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not reached within 30 s; last balance {last}");
}

fn dec(v: &serde_json::Value) -> Decimal {
    match v {
        serde_json::Value::String(s) => d(s),
        other => d(&other.to_string()),
    }
}

async fn drop_spend_streams(env: &TestEnv) {
    let js = async_nats::jetstream::new(async_nats::connect(&env.nats.url).await.expect("NATS"));
    let s = &env.nats.stream;
    for name in [
        format!("{s}_HOLDS"),
        format!("{s}_ALERTS"),
        format!("KV_{s}_SPEND"),
        format!("KV_{s}_SPEND_ALERTS"),
    ] {
        let _ = js.delete_stream(name).await;
    }
}

type Aggregator = tokio::task::JoinHandle<Result<(), tally_aggregator::RunError>>;

/// A test environment with the catalog stored, `acme`'s hard amount budget `monthly` of
/// `limit` (no thresholds) and an aggregator running (stop it with the returned shutdown).
async fn budgeted_env(name: &str, limit: &str) -> (TestEnv, Shutdown, Aggregator) {
    let env = TestEnv::new(name).await;
    store_catalog(&env).await;
    let b = budget("acme", "monthly", Kind::Amount, None, limit, vec![]);
    budget::put(&env.db(), &b, false, "test", now_ms())
        .await
        .expect("budget stored");
    let stop_agg = Shutdown::new();
    let agg = start_aggregator(&env, aggregator_config(), stop_agg.clone()).await;
    (env, stop_agg, agg)
}

/// Stops the decider (if any) and the aggregator, then removes the test's streams and data.
async fn stop_all(
    env: TestEnv,
    decider: Option<(Shutdown, tokio::task::JoinHandle<()>)>,
    stop_agg: Shutdown,
    agg: Aggregator,
) {
    if let Some((stop, decider)) = decider {
        stop.cancel();
        decider.await.expect("decider stopped");
    }
    stop_agg.cancel();
    let _ = agg.await;
    drop_spend_streams(&env).await;
    env.cleanup().await;
}

fn budget(
    c: &str,
    id: &str,
    kind: Kind,
    meter: Option<&str>,
    limit: &str,
    thresholds: Vec<u8>,
) -> Budget {
    Budget {
        customer: c.into(),
        budget_id: id.into(),
        agent: None,
        meter: meter.map(str::to_owned),
        kind,
        limit: d(limit),
        thresholds,
        hard: true,
    }
    .validated()
    .expect("a valid budget")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_across_three_instances_admit_exactly_the_headroom() {
    const ROUNDS: usize = 100;
    const CONCURRENT: usize = 1000;
    let env = TestEnv::new("spend_overshoot").await;
    store_catalog(&env).await;
    let db = env.db();
    // round r: customer r with headroom for exactly k(r) requests of 1,000 tokens (0.003 USD
    // each, unrounded), an amount budget of k x 0.003
    let k = |r: usize| 1 + (r * 37) % 500;
    for r in 0..ROUNDS {
        let limit = Decimal::from(k(r)) * d("0.003");
        let b = budget(
            &format!("c{r:03}"),
            "monthly",
            Kind::Amount,
            None,
            &limit.to_string(),
            vec![],
        );
        budget::put(&db, &b, false, "test", now_ms())
            .await
            .expect("budget stored");
    }
    let cfg = spend_config(&env);
    let stops: Vec<Shutdown> = (0..3).map(|_| Shutdown::new()).collect();
    let mut deciders = Vec::new();
    for s in &stops {
        deciders.push(start_decider(&env, &cfg, s.clone()).await);
    }
    let sdk = std::sync::Arc::new(sdk(&env, &cfg).await);
    wait_answering(&sdk, &customer("c000")).await;
    let started = std::time::Instant::now();
    for r in 0..ROUNDS {
        let c = customer(&format!("c{r:03}"));
        let asks = (0..CONCURRENT).map(|i| {
            let (sdk, c) = (sdk.clone(), c.clone());
            async move {
                let a = agent(&format!("bot-{}", i % 10));
                // a model without an entitlement limit (a request naming no model counts
                // against the plan's gpt-4o limit)
                let mut req = AuthorizeRequest::new("llm_tokens", d("1000"));
                req.group.insert("model".into(), "gpt-4o-mini".into());
                sdk.authorize(&c, &a, &req).await.expect("an answer")
            }
        });
        let answers = futures::future::join_all(asks).await;
        let allowed = answers.iter().filter(|a| a.allow).count();
        assert_eq!(allowed, k(r), "round {r}: exactly the headroom admitted");
        for a in answers.iter().filter(|a| !a.allow) {
            assert_eq!(
                a.reason.as_deref(),
                Some("budget_exceeded"),
                "round {r}: {a:?}"
            );
            assert!(!a.offline, "round {r}: every request answered by a decider");
        }
        let held: std::collections::BTreeSet<_> =
            answers.iter().filter_map(|a| a.hold_id.clone()).collect();
        assert_eq!(held.len(), k(r), "round {r}: one hold per admitted request");
    }
    eprintln!(
        "{ROUNDS} rounds of {CONCURRENT} concurrent requests in {:?}",
        started.elapsed()
    );
    for s in &stops {
        s.cancel();
    }
    for h in deciders {
        let _ = h.await;
    }
    drop_spend_streams(&env).await;
    env.cleanup().await;
}

/// Reports `n` tool calls of `a` settling `hold`.
async fn report_calls(
    p: &mut Publisher,
    c: &CustomerId,
    a: &AgentId,
    n: usize,
    hold: Option<&str>,
) {
    for _ in 0..n {
        let e = OutgoingEvent {
            id: EventId::new(uuid_like()).expect("id"),
            customer: c.clone(),
            agent: a.clone(),
            event_type: "tool.call".into(),
            time: chrono::Utc::now(),
            data: serde_json::json!({"tool": "search"}),
            hold_id: hold.map(|h| EventId::new(h).expect("hold id")),
        };
        p.publish(&e).await.expect("published");
    }
    p.flush().await.expect("acknowledged");
}

fn uuid_like() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_spends_until_denied_then_resumes_after_a_top_up() {
    let env = TestEnv::new("spend_e2e").await;
    store_catalog(&env).await;
    let db = env.db();
    let acme = customer("acme");
    let (bot1, bot2) = (agent("bot-1"), agent("bot-2"));
    // 0.60 USD: 30 tool calls at 0.02; notify at 50 % and 100 %
    let b = budget("acme", "monthly", Kind::Amount, None, "0.60", vec![50, 100]);
    budget::put(&db, &b, false, "test", now_ms())
        .await
        .expect("budget stored");

    let stop_agg = Shutdown::new();
    let agg = start_aggregator(&env, aggregator_config(), stop_agg.clone()).await;
    let cfg = spend_config(&env);
    let stop = Shutdown::new();
    let decider = start_decider(&env, &cfg, stop.clone()).await;
    let client = async_nats::connect(&env.nats.url).await.expect("NATS");
    let mut alerts = client
        .subscribe(format!("{}.alerts.acme", cfg.subject_root))
        .await
        .expect("subscribed to alerts");
    let sdk = sdk(&env, &cfg).await;
    wait_answering(&sdk, &acme).await;
    let js = async_nats::jetstream::new(client.clone());
    let mut publisher = Publisher::new(js, &env.nats.subject_prefix, 64);

    // the first piece of work declares 5 calls and uses 3: its hold settles to the 2 calls
    // the work may still use, until the agent gives them back
    let first = sdk
        .authorize(&acme, &bot1, &AuthorizeRequest::new("tool_calls", d("5")))
        .await
        .expect("answer");
    assert!(first.allow, "{first:?}");
    let first_hold = first.hold_id.clone().expect("a hold");
    report_calls(&mut publisher, &acme, &bot1, 3, Some(&first_hold)).await;
    wait_balance(&sdk, &acme, "first hold settled to what is left", |b| {
        b["holds"] == 1 && dec(&b["spend"]) == d("0.06") && dec(&b["held_amount"]) == d("0.04")
    })
    .await;
    assert!(sdk
        .release(&acme, &bot1, &first_hold)
        .await
        .expect("release answered"));
    wait_balance(&sdk, &acme, "first hold given back", |b| {
        b["holds"] == 0 && dec(&b["spend"]) == d("0.06")
    })
    .await;

    // then the agent loop: ask for 5 calls, use all 5, until denied
    let mut used = 3usize;
    let mut denied = None;
    for _ in 0..20 {
        let a = sdk
            .authorize(&acme, &bot1, &AuthorizeRequest::new("tool_calls", d("5")))
            .await
            .expect("answer");
        if !a.allow {
            denied = Some(a);
            break;
        }
        report_calls(&mut publisher, &acme, &bot1, 5, a.hold_id.as_deref()).await;
        used += 5;
    }
    let denied = denied.expect("the agent was stopped");
    assert_eq!(
        denied.reason.as_deref(),
        Some("budget_exceeded"),
        "{denied:?}"
    );
    // 3 + 5 x 5 = 28 calls = 0.56: a sixth request of 5 (0.10) would exceed 0.60
    assert_eq!(used, 28);
    let settled = wait_balance(&sdk, &acme, "every hold settled", |b| {
        b["holds"] == 0 && dec(&b["spend"]) == d("0.56")
    })
    .await;
    assert!(dec(&settled["spend"]) <= d("0.60"));
    // bot-2 of the same customer: what is left (2 calls) fits, 3 do not
    let a = sdk
        .authorize(&acme, &bot2, &AuthorizeRequest::new("tool_calls", d("3")))
        .await
        .expect("answer");
    assert_eq!(a.reason.as_deref(), Some("budget_exceeded"), "{a:?}");
    let two = sdk
        .authorize(&acme, &bot2, &AuthorizeRequest::new("tool_calls", d("2")))
        .await
        .expect("answer");
    assert!(two.allow, "{two:?}");
    let hold = two.hold_id.clone().expect("a hold");
    // cancelled work gives its hold back
    assert!(sdk
        .release(&acme, &bot2, &hold)
        .await
        .expect("release answered"));
    assert!(!sdk
        .release(&acme, &bot2, &hold)
        .await
        .expect("second release answered"));

    // the 50 % threshold crossed once (0.30 reached); 100 % not yet
    let first_alert = tokio::time::timeout(Duration::from_secs(10), alerts.next())
        .await
        .expect("an alert within 10 s")
        .expect("alert message");
    let alert: serde_json::Value =
        serde_json::from_slice(&first_alert.payload).expect("alert JSON");
    assert_eq!(alert["threshold"], 50, "{alert}");
    assert_eq!(alert["type"], "spend.threshold_crossed", "{alert}");
    assert_eq!(alert["kind"], "amount", "{alert}");

    // a restarted decider holds the same balance and does not notify 50 % again
    let before = sdk
        .balance(&acme)
        .await
        .expect("balance")
        .expect("answered");
    stop.cancel();
    decider.await.expect("decider stopped");
    let stop = Shutdown::new();
    let decider = start_decider(&env, &cfg, stop.clone()).await;
    let after = wait_answering(&sdk, &acme).await;
    assert_eq!(after["spend"], before["spend"]);
    assert_eq!(after["meters"], before["meters"]);
    assert_eq!(after["agents"], before["agents"]);
    assert_eq!(after["budgets"], before["budgets"]);

    // top-up: the budget raised to 1.00, the agent resumes and reaches 100 % of the new limit
    let b = budget("acme", "monthly", Kind::Amount, None, "1.00", vec![50, 100]);
    budget::put(&db, &b, false, "test", now_ms())
        .await
        .expect("budget raised");
    let mut resumed = None;
    for _ in 0..50 {
        let a = sdk
            .authorize(&acme, &bot1, &AuthorizeRequest::new("tool_calls", d("22")))
            .await
            .expect("answer");
        if a.allow {
            resumed = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resumed = resumed.expect("allowed again after the top-up");
    report_calls(&mut publisher, &acme, &bot1, 22, resumed.hold_id.as_deref()).await;
    wait_balance(&sdk, &acme, "top-up usage settled", |b| {
        b["holds"] == 0 && dec(&b["spend"]) == d("1.00")
    })
    .await;
    let hundred = tokio::time::timeout(Duration::from_secs(10), alerts.next())
        .await
        .expect("the 100 % alert within 10 s")
        .expect("alert message");
    let alert: serde_json::Value = serde_json::from_slice(&hundred.payload).expect("alert JSON");
    assert_eq!(alert["threshold"], 100, "{alert}");
    // nothing else: each threshold once per period, across the restart
    assert!(
        tokio::time::timeout(Duration::from_secs(3), alerts.next())
            .await
            .is_err(),
        "no further alert"
    );
    let rows: Vec<(String, u8)> = db
        .query("SELECT budget_id, threshold FROM spend_alerts FINAL WHERE customer = 'acme' ORDER BY threshold")
        .fetch_all()
        .await
        .expect("alerts stored");
    assert_eq!(
        rows,
        vec![("monthly".to_owned(), 50), ("monthly".to_owned(), 100)]
    );

    // billed usage respects the bound: committed usage equals what the agents reported
    wait_drained(&env, "aggregator", Duration::from_secs(30)).await;
    let calls: u64 = db
        .query("SELECT toUInt64(sum(events)) FROM usage_partials WHERE customer = 'acme' AND meter = 'tool_calls'")
        .fetch_one()
        .await
        .expect("usage read");
    assert_eq!(calls, 50);

    stop_all(env, Some((stop, decider)), stop_agg, agg).await;
}

/// The deciders compute the period's invoice id (whose wallet reservation they add back) with
/// the invoicer's rule.
#[test]
fn the_deciders_period_invoice_id_is_the_invoicers() {
    for (c, p) in [("acme", 0i64), ("globex", 1_764_547_200_000), ("a-b_c", -1)] {
        assert_eq!(
            tally_rater::live::wallet::period_invoice_id(c, p),
            tally_invoicer::invoice::invoice_id(c, p)
        );
    }
}

/// A promotional grant of `minor` US cents for `c`, made available by the wallet pass.
async fn grant(db: &clickhouse::Client, c: &str, id: &str, minor: i64) {
    use tally_payments::wallet::{store, Grant, GrantKind};
    let g = Grant {
        grant_id: id.into(),
        customer: tally_domain::CustomerId::new(c).expect("a customer id"),
        currency: "USD".parse().expect("a currency"),
        amount_minor: minor,
        kind: GrantKind::Promotional,
        priority: 0,
        expires_at_ms: None,
        created_at_ms: now_ms(),
        paid_at_ms: None,
    };
    store::append_grant(db, &g, "test credit", "test")
        .await
        .expect("grant stored");
    let report = tally_payments::wallet::pass::run(db, now_ms())
        .await
        .expect("wallet pass");
    assert_eq!(report.failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_a_prepaid_wallet_stops_when_it_is_used_and_resumes_with_a_new_grant() {
    let env = TestEnv::new("spend_wallet").await;
    store_catalog(&env).await;
    let db = env.db();
    let acme = customer("acme");
    let bot = agent("bot-1");
    // 0.40 USD of credit: 20 tool calls at 0.02
    grant(&db, "acme", "welcome", 40).await;
    let b = budget("acme", "prepaid", Kind::Wallet, None, "0", vec![100]);
    budget::put(&db, &b, false, "test", now_ms())
        .await
        .expect("wallet budget stored");

    let stop_agg = Shutdown::new();
    let agg = start_aggregator(&env, aggregator_config(), stop_agg.clone()).await;
    let cfg = spend_config(&env);
    let stop = Shutdown::new();
    let decider = start_decider(&env, &cfg, stop.clone()).await;
    let sdk = sdk(&env, &cfg).await;
    let first = wait_answering(&sdk, &acme).await;
    let wallet = &first["budgets"][0];
    assert_eq!(wallet["kind"], "wallet", "{first}");
    assert_eq!(dec(&wallet["limit"]), d("0.40"), "{first}");
    let client = async_nats::connect(&env.nats.url).await.expect("NATS");
    let mut publisher = Publisher::new(
        async_nats::jetstream::new(client),
        &env.nats.subject_prefix,
        64,
    );

    // ask for 3 calls (0.06) at a time and use them: 6 pieces of work fit (0.36), the 7th
    // would take the wallet to 0.42
    let mut done = 0;
    let denied = loop {
        let a = sdk
            .authorize(&acme, &bot, &AuthorizeRequest::new("tool_calls", d("3")))
            .await
            .expect("answer");
        if !a.allow {
            break a;
        }
        report_calls(&mut publisher, &acme, &bot, 3, a.hold_id.as_deref()).await;
        done += 1;
        assert!(done <= 6, "allowed past the wallet: {a:?}");
    };
    assert_eq!(done, 6);
    assert_eq!(
        denied.reason.as_deref(),
        Some("budget_exceeded"),
        "{denied:?}"
    );
    assert_eq!(
        denied.detail.as_deref(),
        Some("budget prepaid"),
        "{denied:?}"
    );
    assert_eq!(denied.remaining, Some(d("0.04")), "{denied:?}");
    // what is left (2 calls) still fits
    let two = sdk
        .authorize(&acme, &bot, &AuthorizeRequest::new("tool_calls", d("2")))
        .await
        .expect("answer");
    assert!(two.allow, "{two:?}");
    report_calls(&mut publisher, &acme, &bot, 2, two.hold_id.as_deref()).await;
    wait_balance(&sdk, &acme, "the wallet used up", |b| {
        b["holds"] == 0 && dec(&b["spend"]) == d("0.40")
    })
    .await;
    let none = sdk
        .authorize(&acme, &bot, &AuthorizeRequest::new("tool_calls", d("1")))
        .await
        .expect("answer");
    assert_eq!(none.reason.as_deref(), Some("budget_exceeded"), "{none:?}");

    // a new grant of 0.10 arrives: at the next refresh the agent may spend 5 more calls
    grant(&db, "acme", "top-up-1", 10).await;
    let mut resumed = None;
    for _ in 0..50 {
        let a = sdk
            .authorize(&acme, &bot, &AuthorizeRequest::new("tool_calls", d("5")))
            .await
            .expect("answer");
        if a.allow {
            resumed = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resumed = resumed.expect("allowed again after the new grant");
    let six = sdk
        .authorize(&acme, &bot, &AuthorizeRequest::new("tool_calls", d("1")))
        .await
        .expect("answer");
    assert_eq!(six.reason.as_deref(), Some("budget_exceeded"), "{six:?}");
    report_calls(&mut publisher, &acme, &bot, 5, resumed.hold_id.as_deref()).await;
    let last = wait_balance(&sdk, &acme, "the new grant used", |b| {
        b["holds"] == 0 && dec(&b["spend"]) == d("0.50")
    })
    .await;
    assert_eq!(dec(&last["budgets"][0]["limit"]), d("0.50"), "{last}");
    assert_eq!(dec(&last["budgets"][0]["remaining"]), d("0"), "{last}");

    stop_all(env, Some((stop, decider)), stop_agg, agg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_their_reason_codes() {
    let env = TestEnv::new("spend_hostile").await;
    store_catalog(&env).await;
    let cfg = spend_config(&env);
    let stop = Shutdown::new();
    let decider = start_decider(&env, &cfg, stop.clone()).await;
    let sdk = sdk(&env, &cfg).await;
    wait_answering(&sdk, &customer("acme")).await;
    let client = async_nats::connect(&env.nats.url).await.expect("NATS");
    let ask = |subject: String, body: Vec<u8>| {
        let client = client.clone();
        async move {
            let msg = client
                .request(subject, body.into())
                .await
                .expect("answered");
            serde_json::from_slice::<serde_json::Value>(&msg.payload).expect("JSON answer")
        }
    };
    let subject = format!("{}.authorize.acme.bot-1", cfg.subject_root);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "malformed JSON",
            b"{\"meter\": ".to_vec(),
            "invalid_request",
        ),
        ("not an object", b"[1,2]".to_vec(), "invalid_request"),
        (
            "unknown field",
            br#"{"meter":"tool_calls","max_quantity":"1","x":1}"#.to_vec(),
            "invalid_request",
        ),
        (
            "unknown meter",
            br#"{"meter":"gpu_hours","max_quantity":"1"}"#.to_vec(),
            "unknown_meter",
        ),
        (
            "negative",
            br#"{"meter":"tool_calls","max_quantity":"-1"}"#.to_vec(),
            "invalid_request",
        ),
        (
            "a float",
            br#"{"meter":"tool_calls","max_quantity":1.5e300}"#.to_vec(),
            "invalid_request",
        ),
        (
            "huge",
            br#"{"meter":"tool_calls","max_quantity":"79228162514264337593543950335"}"#.to_vec(),
            "quantity_too_large",
        ),
        (
            "unknown hold",
            br#"{"release":"nope"}"#.to_vec(),
            "unknown_hold",
        ),
        ("oversized", vec![b' '; 70_000], "invalid_request"),
    ];
    for (what, body, code) in cases {
        let a = ask(subject.clone(), body).await;
        assert_eq!(a["allow"], false, "{what}: {a}");
        assert_eq!(a["reason"], code, "{what}: {a}");
    }
    // a subject whose customer token is not an id
    let a = ask(
        format!("{}.authorize.a$b.bot-1", cfg.subject_root),
        br#"{"meter":"tool_calls","max_quantity":"1"}"#.to_vec(),
    )
    .await;
    assert_eq!(a["reason"], "invalid_request", "{a}");
    // entitlements of the plan: a feature it has and one it has not; its metered limit
    let feature = |f: &str| {
        ask(
            subject.clone(),
            format!(r#"{{"feature":"{f}"}}"#).into_bytes(),
        )
    };
    assert_eq!(feature("web_search").await["allow"], true);
    assert_eq!(feature("code_exec").await["reason"], "not_entitled");
    let gpt4o = |q: &str| {
        ask(
            subject.clone(),
            format!(r#"{{"meter":"llm_tokens","max_quantity":"{q}","group":{{"model":"gpt-4o","kind":"output"}}}}"#)
                .into_bytes(),
        )
    };
    assert_eq!(gpt4o("4000").await["allow"], true);
    // a request that names no model may be for gpt-4o: it counts against the limit
    let unnamed = ask(
        subject.clone(),
        br#"{"meter":"llm_tokens","max_quantity":"1001"}"#.to_vec(),
    )
    .await;
    assert_eq!(unnamed["reason"], "entitlement_exceeded", "{unnamed}");
    let over = gpt4o("1001").await;
    assert_eq!(over["reason"], "entitlement_exceeded", "{over}");
    assert_eq!(over["remaining"], "1000", "{over}");
    let balance = sdk
        .balance(&customer("acme"))
        .await
        .expect("balance")
        .expect("answered");
    assert_eq!(
        balance["entitlements"]["features"][0], "web_search",
        "{balance}"
    );
    assert_eq!(
        balance["entitlements"]["limits"][0]["held"], "4000",
        "{balance}"
    );
    // and the decider still answers a good request
    let ok = sdk
        .authorize(
            &customer("acme"),
            &agent("bot-1"),
            &AuthorizeRequest::new("tool_calls", d("1")),
        )
        .await
        .expect("answer");
    assert!(ok.allow, "{ok:?}");
    stop.cancel();
    decider.await.expect("decider stopped");
    drop_spend_streams(&env).await;
    env.cleanup().await;
}

/// One HTTP/1.1 request on a fresh connection; the status and the JSON answer.
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = key.map_or(String::new(), |k| format!("authorization: Bearer {k}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n{auth}\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8(raw).expect("UTF-8");
    let status = text[9..12].parse().expect("status");
    let json = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let answer = serde_json::from_str(json).unwrap_or(serde_json::Value::Null);
    // every exchange with a described route fits its OpenAPI document: the gateway's
    // (authorize, balance) or the spend API's (budgets, balance); their paths are disjoint
    let sent: Option<serde_json::Value> = serde_json::from_str(body).ok();
    for doc in [
        tally_ingest::gateway::server::OPENAPI_PUBLIC,
        tally_rater::live::api::OPENAPI,
    ] {
        let doc: serde_json::Value = serde_json::from_str(doc).expect("JSON");
        let fits = tally_platform::openapi::check_exchange(
            &doc,
            method,
            path,
            sent.as_ref(),
            status,
            &answer,
        );
        if let Err(e) = fits {
            panic!("the answer does not fit the OpenAPI document: {e}");
        }
    }
    (status, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_ask_over_http_with_their_api_key() {
    use tally_ingest::gateway::{self, auth::KeyRecord, key_store, Gateway, IngestConfig};
    let env = TestEnv::new("spend_http").await;
    store_catalog(&env).await;
    let db = env.db();
    let b = budget(
        "acme",
        "calls",
        Kind::Quantity,
        Some("tool_calls"),
        "2",
        vec![],
    );
    budget::put(&db, &b, false, "test", now_ms())
        .await
        .expect("budget stored");
    let cfg = spend_config(&env);
    let stop = Shutdown::new();
    let decider = start_decider(&env, &cfg, stop.clone()).await;
    wait_answering(&sdk(&env, &cfg).await, &customer("acme")).await;

    let js = async_nats::jetstream::new(
        tally_platform::streams::connect(&env.nats)
            .await
            .expect("NATS"),
    );
    tally_platform::streams::ensure(&js, &env.nats)
        .await
        .expect("streams");
    let gw_cfg = IngestConfig {
        listen_addr: "127.0.0.1:0".into(),
        spend_subject_root: cfg.subject_root.clone(),
        spend_timeout_ms: 500,
        ..IngestConfig::default()
    };
    let addr = gw_cfg.listen().expect("listen address");
    let gw = std::sync::Arc::new(Gateway::new(
        gw_cfg,
        js,
        &env.nats.subject_prefix,
        Some(env.db()),
    ));
    let running = gateway::start(gw.clone(), addr, Shutdown::new())
        .await
        .expect("gateway");
    let addr = running.addr;
    let scope = key_store::scope_from("acme", &["bot-1".to_owned()], "e2e").expect("scope");
    let (key, record): (String, KeyRecord) =
        key_store::create(&db, scope, "e2e", 0).await.expect("key");
    gw.keys.upsert(record);

    let ask = r#"{"agent":"bot-1","meter":"tool_calls","max_quantity":"2"}"#;
    let (status, a) = http(addr, "POST", "/v1/authorize", Some(&key), ask).await;
    assert_eq!(
        (status, &a["allow"]),
        (200, &serde_json::json!(true)),
        "{a}"
    );
    assert!(a["hold_id"].is_string(), "{a}");
    let (status, a) = http(addr, "POST", "/v1/authorize", Some(&key), ask).await;
    assert_eq!(status, 200, "a denial is an answer: {a}");
    assert_eq!(a["reason"], "budget_exceeded", "{a}");
    // an agent the key may not act for, no agent, no key
    let (status, a) = http(
        addr,
        "POST",
        "/v1/authorize",
        Some(&key),
        &ask.replace("bot-1", "bot-2"),
    )
    .await;
    assert_eq!(
        (status, a["error"]["code"].as_str()),
        (400, Some("invalid_field")),
        "{a}"
    );
    let (status, _) = http(
        addr,
        "POST",
        "/v1/authorize",
        Some(&key),
        r#"{"meter":"tool_calls"}"#,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = http(addr, "POST", "/v1/authorize", None, ask).await;
    assert_eq!(status, 401);
    // the balance of the key's customer: the hold and the budget
    let (status, bal) = http(addr, "GET", "/v1/balance", Some(&key), "").await;
    assert_eq!(status, 200, "{bal}");
    assert_eq!(bal["customer"], "acme");
    assert_eq!(bal["holds"], 1, "{bal}");
    assert_eq!(bal["budgets"][0]["budget_id"], "calls", "{bal}");
    assert_eq!(dec(&bal["budgets"][0]["remaining"]), Decimal::ZERO, "{bal}");
    // without a decider: 503, the client's failure policy decides
    stop.cancel();
    decider.await.expect("decider stopped");
    let (status, a) = http(addr, "POST", "/v1/authorize", Some(&key), ask).await;
    assert_eq!(
        (status, a["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{a}"
    );
    drop_spend_streams(&env).await;
    env.cleanup().await;
}

/// A `tally-spend` process (the workspace's binary), killed with SIGKILL on drop.
struct SpendProcess(std::process::Child);

impl SpendProcess {
    fn start(config: &std::path::Path) -> SpendProcess {
        let bin = std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.parent()?.parent()?.join("tally-spend")))
            .filter(|p| p.exists())
            .expect("tally-spend is built (cargo test --workspace, or cargo build -p tally-rater --bins)");
        let child = std::process::Command::new(bin)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("tally-spend starts");
        SpendProcess(child)
    }

    /// SIGKILL: no release of the lease, no flush of anything.
    fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for SpendProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The config file of a `tally-spend` process on `env` with `cfg`'s subjects and timings.
fn process_config(
    env: &TestEnv,
    cfg: &SpendConfig,
    dir: &std::path::Path,
    name: &str,
) -> std::path::PathBuf {
    let port = || tally_platform::own_server::free_port().expect("a free port");
    let text = format!(
        r#"
[nats]
url = "{nats}"
stream = "{stream}"
subject_prefix = "{prefix}"
dlq_stream = "{dlq}"
dlq_subject_prefix = "{dlq_prefix}"

[clickhouse]
url = "{ch}"
database = "{db}"

[rater]
default_plan = "ai-standard"

[spend]
subject_root = "{root}"
lease_secs = 1
refresh_secs = 1
aborts_poll_ms = 200
hold_default_ms = 8000
hold_grace_ms = 1000
api_addr = "127.0.0.1:{api}"
metrics_addr = "127.0.0.1:{metrics}"
"#,
        nats = env.nats.url,
        stream = env.nats.stream,
        prefix = env.nats.subject_prefix,
        dlq = env.nats.dlq_stream,
        dlq_prefix = env.nats.dlq_subject_prefix,
        ch = env.clickhouse.url,
        db = env.clickhouse.database,
        root = cfg.subject_root,
        api = port(),
        metrics = port(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("config written");
    path
}

fn api_addr(config: &std::path::Path) -> std::net::SocketAddr {
    let table: toml::Table = std::fs::read_to_string(config)
        .expect("config")
        .parse()
        .expect("TOML");
    table["spend"]["api_addr"]
        .as_str()
        .expect("api_addr")
        .parse()
        .expect("an address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_survive_kill_9_and_never_leak_and_a_restart_rebuilds_the_same_balance() {
    // 0.40 USD: 20 tool calls at 0.02
    let (env, stop_agg, agg) = budgeted_env("spend_kill", "0.40").await;
    let db = env.db();
    let acme = customer("acme");
    let bot = agent("bot-1");
    let cfg = spend_config(&env);
    let dir = std::env::temp_dir().join(format!("tally-spend-{}", env.nats.stream));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut a = SpendProcess::start(&process_config(&env, &cfg, &dir, "a"));
    let sdk = sdk(&env, &cfg).await;
    wait_answering(&sdk, &acme).await;
    let b_config = process_config(&env, &cfg, &dir, "b");
    let mut b = SpendProcess::start(&b_config);

    // four holds of 5 calls (0.10 each) fill the budget; a fifth request is denied
    let mut holds = Vec::new();
    for _ in 0..4 {
        let mut req = AuthorizeRequest::new("tool_calls", d("5"));
        // long enough for the standby to take over on a loaded machine, short enough to wait
        // for the one that expires
        req.deadline_ms = Some(8000);
        let ans = sdk.authorize(&acme, &bot, &req).await.expect("answer");
        assert!(ans.allow, "{ans:?}");
        holds.push(ans.hold_id.expect("a hold"));
    }
    let fifth = sdk
        .authorize(&acme, &bot, &AuthorizeRequest::new("tool_calls", d("1")))
        .await
        .expect("answer");
    assert_eq!(
        fifth.reason.as_deref(),
        Some("budget_exceeded"),
        "{fifth:?}"
    );

    // kill -9 of the deciding instance: the standby takes over with the journaled holds
    a.kill9();
    let after_kill = wait_balance(&sdk, &acme, "the standby answers", |b| b["holds"] == 4).await;
    assert_eq!(dec(&after_kill["held_amount"]), d("0.40"), "{after_kill}");
    let denied = sdk
        .authorize(&acme, &bot, &AuthorizeRequest::new("tool_calls", d("1")))
        .await
        .expect("answer");
    assert_eq!(
        denied.reason.as_deref(),
        Some("budget_exceeded"),
        "the holds still reserve: {denied:?}"
    );

    // the work of hold 1 used 5 calls, of hold 2 three (it keeps the 2 calls its work may
    // still use until it expires); hold 3 was cancelled; hold 4 never reports and expires
    // after its deadline and grace
    let client = async_nats::connect(&env.nats.url).await.expect("NATS");
    let mut publisher = Publisher::new(
        async_nats::jetstream::new(client),
        &env.nats.subject_prefix,
        64,
    );
    report_calls(&mut publisher, &acme, &bot, 5, Some(&holds[0])).await;
    report_calls(&mut publisher, &acme, &bot, 3, Some(&holds[1])).await;
    assert!(sdk
        .release(&acme, &bot, &holds[2])
        .await
        .expect("release answered"));
    let settled = wait_balance(
        &sdk,
        &acme,
        "every hold settled, released or expired",
        |b| b["holds"] == 0 && dec(&b["spend"]) == d("0.16"),
    )
    .await;
    assert_eq!(dec(&settled["held_amount"]), Decimal::ZERO);
    // what fits now is allowed: 12 calls (0.24) up to the limit exactly
    let fits = sdk
        .authorize(&acme, &bot, &AuthorizeRequest::new("tool_calls", d("12")))
        .await
        .expect("answer");
    assert!(fits.allow, "no leaked hold denies what fits: {fits:?}");
    assert!(sdk
        .release(&acme, &bot, fits.hold_id.as_deref().expect("a hold"))
        .await
        .expect("release answered"));

    // kill -9 of that one too: a fresh instance rebuilds the same balance from storage (the
    // release above is journaled in the background: give it a moment)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sdk
        .balance(&acme)
        .await
        .expect("balance")
        .expect("answered");
    b.kill9();
    let c_config = process_config(&env, &cfg, &dir, "c");
    let (token, _) = tally_platform::auth::store::create(
        &db,
        "e2e",
        tally_platform::auth::Role::Admin,
        "test",
        now_ms(),
    )
    .await
    .expect("an API token");
    let _c = SpendProcess::start(&c_config);
    let rebuilt = wait_balance(&sdk, &acme, "a fresh instance answers", |_| true).await;
    for field in [
        "spend",
        "meters",
        "agents",
        "budgets",
        "holds",
        "period_start",
    ] {
        assert_eq!(
            rebuilt[field], before[field],
            "{field}: {rebuilt} vs {before}"
        );
    }

    // its HTTP API: a top-up through PUT, read back; the balance; no token, no answer
    let api = api_addr(&c_config);
    let (status, _) = http(api, "GET", "/v1/customers/acme/budgets", None, "").await;
    assert_eq!(status, 401);
    // the document needs no token and is the one the routes are checked against
    let (status, doc) = http(api, "GET", "/v1/openapi.json", None, "").await;
    let described: serde_json::Value =
        serde_json::from_str(tally_rater::live::api::OPENAPI).expect("JSON");
    assert_eq!((status, &doc), (200, &described));
    let body = r#"{"kind":"amount","limit":"0.50","thresholds":[80],"hard":true}"#;
    let (status, put) = http(
        api,
        "PUT",
        "/v1/customers/acme/budgets/monthly",
        Some(&token),
        body,
    )
    .await;
    assert_eq!(status, 200, "{put}");
    let (status, list) = http(api, "GET", "/v1/customers/acme/budgets", Some(&token), "").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list[0]["limit"], "0.50", "{list}");
    let (status, bad) = http(
        api,
        "PUT",
        "/v1/customers/acme/budgets/b2",
        Some(&token),
        r#"{"kind":"quantity","limit":"5"}"#,
    )
    .await;
    assert_eq!(
        (status, bad["code"].as_str()),
        (400, Some("invalid_budget")),
        "{bad}"
    );
    let (status, bal) = http(api, "GET", "/v1/customers/acme/balance", Some(&token), "").await;
    assert_eq!(status, 200, "{bal}");
    assert_eq!(dec(&bal["spend"]), d("0.16"), "{bal}");
    // the decider loads the new limit: 17 calls (0.34, total 0.50) now fit
    let mut topped = None;
    for _ in 0..50 {
        let ans = sdk
            .authorize(&acme, &bot, &AuthorizeRequest::new("tool_calls", d("17")))
            .await
            .expect("answer");
        if ans.allow {
            topped = Some(ans);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(topped.is_some(), "the top-up applies within the refresh");

    stop_agg.cancel();
    let _ = agg.await;
    drop_spend_streams(&env).await;
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

/// A hold its usage reduced is reduced once, also across a restart of the decider: the
/// restarted decider replays the journal (the hold as reduced, with the batch that reduced
/// it) and re-reads the feed from 30 s before the join point, so the same batch settles the
/// hold again; it must leave it at what the work may still use. A released hold stays
/// released. Before, the hold of 5 calls reduced to 3 by 2 calls became 1 at the restart and
/// 6 calls were admitted against a 0.20 budget with 0.10 left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_settled_hold_is_not_reduced_again_after_a_restart() {
    // 0.20 USD: 10 tool calls at 0.02
    let (env, stop_agg, agg) = budgeted_env("spend_resettle", "0.20").await;
    let acme = customer("acme");
    let bot = agent("bot-1");
    let cfg = spend_config(&env);
    let stop = Shutdown::new();
    let decider = start_decider(&env, &cfg, stop.clone()).await;
    let client = async_nats::connect(&env.nats.url).await.expect("NATS");
    let sdk = sdk(&env, &cfg).await;
    wait_answering(&sdk, &acme).await;
    let js = async_nats::jetstream::new(client.clone());
    let mut publisher = Publisher::new(js, &env.nats.subject_prefix, 64);

    let mut req = AuthorizeRequest::new("tool_calls", d("5"));
    req.deadline_ms = Some(120_000);
    let work = sdk.authorize(&acme, &bot, &req).await.expect("answer");
    assert!(work.allow, "{work:?}");
    let hold = work.hold_id.clone().expect("a hold");
    // a second hold, given back
    let other = sdk
        .authorize(&acme, &bot, &AuthorizeRequest::new("tool_calls", d("1")))
        .await
        .expect("answer");
    let other_hold = other.hold_id.clone().expect("a hold");
    assert!(sdk
        .release(&acme, &bot, &other_hold)
        .await
        .expect("release answered"));
    report_calls(&mut publisher, &acme, &bot, 2, Some(&hold)).await;
    wait_balance(&sdk, &acme, "the hold settled to 3 calls", |b| {
        b["holds"] == 1 && dec(&b["spend"]) == d("0.04") && dec(&b["held_amount"]) == d("0.06")
    })
    .await;

    stop.cancel();
    decider.await.expect("decider stopped");
    let stop = Shutdown::new();
    let decider = start_decider(&env, &cfg, stop.clone()).await;
    wait_balance(&sdk, &acme, "rebuilt", |b| dec(&b["spend"]) == d("0.04")).await;
    // The feed's notices from 30 s before the join point are read again after the rebuild, in
    // stream order. A call without a hold, reported now, is noticed after them: once it is
    // counted, every notice re-read (the 2 calls of the hold among them) has been applied.
    report_calls(&mut publisher, &acme, &bot, 1, None).await;
    let after = wait_balance(&sdk, &acme, "the call after the restart", |b| {
        dec(&b["spend"]) == d("0.06")
    })
    .await;
    assert_eq!(after["holds"], 1, "{after}");
    assert_eq!(dec(&after["held_amount"]), d("0.06"), "{after}");
    // 0.20 − 0.06 spent − 0.06 held = 0.08: 5 calls (0.10) are denied, 4 fit
    let five = sdk
        .authorize(&acme, &bot, &AuthorizeRequest::new("tool_calls", d("5")))
        .await
        .expect("answer");
    assert_eq!(five.reason.as_deref(), Some("budget_exceeded"), "{five:?}");
    assert_eq!(five.remaining, Some(d("0.08")), "{five:?}");
    let four = sdk
        .authorize(&acme, &bot, &AuthorizeRequest::new("tool_calls", d("4")))
        .await
        .expect("answer");
    assert!(four.allow, "{four:?}");

    stop_all(env, Some((stop, decider)), stop_agg, agg).await;
}

/// `acme` has two product lines: `llm` pinned to version 1 (0.01 a token; version 2, in
/// force for everyone else, costs 0.02) and `tools` on its own line (0.02 a call). The
/// decider prices each meter by its line and the pinned version, as the rater bills them:
/// with a 1.00 budget, 51 calls (1.02) are denied and 50 fit, 100 tokens (1.00 at version 1)
/// fit and 101 do not. Before, the decider priced calls at 0 (only the first line counted)
/// and tokens at version 2 (100 tokens denied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_version_and_a_second_product_line_price_the_live_spend() {
    let env = TestEnv::new("spend_lines").await;
    store_catalog_with(
        &env,
        r#"
[[plans]]
id = "llm"
version = 1
currency = "USD"
effective_from = "2020-01-01T00:00:00Z"
prices = [{ model = "per_unit", meter = "llm_tokens", unit_price = "0.01" }]

[[plans]]
id = "llm"
version = 2
currency = "USD"
effective_from = "2020-06-01T00:00:00Z"
prices = [{ model = "per_unit", meter = "llm_tokens", unit_price = "0.02" }]

[[plans]]
id = "tools"
version = 1
currency = "USD"
effective_from = "2020-01-01T00:00:00Z"
prices = [{ model = "per_unit", meter = "tool_calls", unit_price = "0.02" }]
entitlements = { features = ["browse"] }

[[subscriptions]]
customer = "acme"
plan = "llm"
plan_version = 1
effective_from = "2020-01-01T00:00:00Z"

[[subscriptions]]
customer = "acme"
plan = "tools"
line = "tools"
effective_from = "2020-01-01T00:00:00Z"
"#,
    )
    .await;
    let b = budget("acme", "monthly", Kind::Amount, None, "1.00", vec![]);
    budget::put(&env.db(), &b, false, "test", now_ms())
        .await
        .expect("budget stored");
    let cfg = spend_config(&env);
    let stop = Shutdown::new();
    let decider = start_decider(&env, &cfg, stop.clone()).await;
    let sdk = sdk(&env, &cfg).await;
    let (acme, bot) = (customer("acme"), agent("bot-1"));
    let balance = wait_answering(&sdk, &acme).await;
    assert_eq!(
        balance["entitlements"]["plan"], "llm v1, tools v1",
        "{balance}"
    );
    let ask = |meter: &'static str, q: &'static str| {
        let (sdk, acme, bot) = (&sdk, &acme, &bot);
        async move {
            sdk.authorize(acme, bot, &AuthorizeRequest::new(meter, d(q)))
                .await
                .expect("answer")
        }
    };
    let denied = ask("tool_calls", "51").await;
    assert_eq!(
        denied.reason.as_deref(),
        Some("budget_exceeded"),
        "{denied:?}"
    );
    assert_eq!(denied.remaining, Some(d("1.00")), "{denied:?}");
    let calls = ask("tool_calls", "50").await;
    assert!(calls.allow, "{calls:?}");
    assert_eq!(calls.remaining, Some(d("0")), "{calls:?}");
    assert!(sdk
        .release(&acme, &bot, &calls.hold_id.expect("a hold"))
        .await
        .expect("release answered"));
    let denied = ask("llm_tokens", "101").await;
    assert_eq!(
        denied.reason.as_deref(),
        Some("budget_exceeded"),
        "{denied:?}"
    );
    let tokens = ask("llm_tokens", "100").await;
    assert!(tokens.allow, "{tokens:?}");
    assert_eq!(tokens.remaining, Some(d("0")), "{tokens:?}");

    stop.cancel();
    decider.await.expect("decider stopped");
    drop_spend_streams(&env).await;
    env.cleanup().await;
}
