//! `GET /v1/meters/{slug}/query` over a real socket and the test's own ClickHouse database:
//! usage written as the aggregator writes it (readings folded into window partials per
//! batch, an aborted batch, two days sealed with the aggregator's own seal SQL), queried per
//! MINUTE, HOUR, DAY (Europe/Berlin across its daylight-saving change, Asia/Kolkata), MONTH
//! and the whole range, by group and agent, with filters, for SUM, COUNT, UNIQUE_COUNT, MAX
//! and LATEST meters; every answer is compared with values computed here from the events.
//! Then the refusals (401, 403, 404, 400 codes) and a store of 5,000,000 partials of other
//! customers and days, where a query of one customer and one day runs under
//! `max_memory_usage` and `max_rows_to_read` caps.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use common::http::{get, request_as, token};
use rust_decimal::Decimal;
use tally_platform::auth::Role;
use tally_platform::testkit::{fold_readings, TestEnv};

const SEAL_DAY_SQL: &str = include_str!("../../aggregator/sql/seal_day.sql");

/// 2026-03-27T00:00:00Z; Berlin moves to summer time on 2026-03-29 at 01:00 UTC.
const START: i64 = 1_774_569_600;
const DAY: i64 = 86_400;
const DAYS: i64 = 4;
const BERLIN_SUMMER: i64 = 1_774_746_000; // 2026-03-29T01:00:00Z

fn meter_specs() -> Vec<tally_domain::meter::MeterSpec> {
    serde_json::from_value(serde_json::json!([
        {"slug": "tokens", "event_type": "t", "aggregation": "SUM", "value_property": "$.n",
         "group_by": {"model": "$.model", "kind": "$.kind"}},
        {"slug": "calls", "event_type": "c", "aggregation": "COUNT", "group_by": {"tool": "$.tool"}},
        {"slug": "users", "event_type": "u", "aggregation": "UNIQUE_COUNT", "value_property": "$.user"},
        {"slug": "peak", "event_type": "p", "aggregation": "MAX", "value_property": "$.v"},
        {"slug": "last", "event_type": "l", "aggregation": "LATEST", "value_property": "$.v"}
    ]))
    .expect("meter specs")
}

/// One reading as the aggregator stores it.
#[derive(Debug, Clone)]
struct Ev {
    customer: &'static str,
    agent: &'static str,
    id: String,
    meter: &'static str,
    aggregation: &'static str,
    time_ms: i64,
    groups: Vec<(&'static str, String)>,
    value: Decimal,
    unique: String,
    batch: String,
}

impl Ev {
    fn window(&self) -> i64 {
        let t = self.time_ms.div_euclid(1000);
        t - t.rem_euclid(60)
    }
    fn group(&self, name: &str) -> String {
        self.groups
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

/// A deterministic sequence of events of both customers over [`DAYS`] days.
fn events() -> Vec<Ev> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut out = Vec::new();
    let mut t_ms = START * 1000;
    let mut k = 0;
    while t_ms < (START + DAYS * DAY) * 1000 {
        t_ms += 30_000 + next(240_000) as i64;
        if t_ms >= (START + DAYS * DAY) * 1000 {
            break;
        }
        k += 1;
        let customer = if next(4) == 0 { "other" } else { "acme" };
        let agent = ["bot-a", "bot-b", "bot-c"][next(3) as usize];
        let batch = format!("b{}", (t_ms / 1000 - START) / 20_000);
        let (meter, aggregation, groups, value, unique) = match next(5) {
            0 => (
                "tokens",
                "SUM",
                vec![
                    ("kind", ["input", "output"][next(2) as usize].to_owned()),
                    ("model", ["m1", "m2", "m3"][next(3) as usize].to_owned()),
                ],
                Decimal::new(next(100_000) as i64 + 1, 2),
                String::new(),
            ),
            1 => (
                "calls",
                "COUNT",
                vec![("tool", ["search", "code"][next(2) as usize].to_owned())],
                Decimal::ONE,
                String::new(),
            ),
            2 => (
                "users",
                "UNIQUE_COUNT",
                vec![],
                Decimal::ONE,
                format!("u{}", next(40)),
            ),
            3 => (
                "peak",
                "MAX",
                vec![],
                Decimal::from(next(1000)),
                String::new(),
            ),
            _ => (
                "last",
                "LATEST",
                vec![],
                Decimal::from(next(1000)),
                String::new(),
            ),
        };
        out.push(Ev {
            customer,
            agent,
            id: format!("e{k}"),
            meter,
            aggregation,
            time_ms: t_ms,
            groups,
            value,
            unique,
            batch,
        });
    }
    out
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

async fn write(db: &clickhouse::Client, evs: &[Ev]) {
    let mut batches: BTreeMap<&str, Vec<&Ev>> = BTreeMap::new();
    for e in evs {
        batches.entry(&e.batch).or_default().push(e);
    }
    for (batch, evs) in batches {
        let values: Vec<String> = evs
            .iter()
            .map(|e| {
                let names: Vec<String> = e.groups.iter().map(|(n, _)| quote(n)).collect();
                let vals: Vec<String> = e.groups.iter().map(|(_, v)| quote(v)).collect();
                let key: BTreeMap<&str, &str> =
                    e.groups.iter().map(|(n, v)| (*n, v.as_str())).collect();
                format!(
                    "({c}, {a}, {id}, {m}, {agg}, toDateTime({w}), 60, {ms}, [{names}], [{vals}], \
                     {key}, toDecimal128('{v}', 9), {u}, 0, {b}, 0, now())",
                    c = quote(e.customer),
                    a = quote(e.agent),
                    id = quote(&e.id),
                    m = quote(e.meter),
                    agg = quote(e.aggregation),
                    w = e.window(),
                    ms = e.time_ms,
                    names = names.join(","),
                    vals = vals.join(","),
                    key = quote(&serde_json::to_string(&key).unwrap()),
                    v = e.value,
                    u = quote(&e.unique),
                    b = quote(batch),
                )
            })
            .collect();
        db.query(&format!(
            "INSERT INTO usage_meter_readings (customer, agent, event_id, meter, aggregation, \
             window_start, window_secs, time_ms, group_names, group_values, group_key, value, \
             unique_value, stream_seq, batch_id, part, inserted_at) VALUES {}",
            values.join(", ")
        ))
        .execute()
        .await
        .expect("readings");
        fold_readings(db, batch).await;
    }
}

/// Seals day `day` of partition 0 as the aggregator does (its seal SQL, then the seal row).
async fn seal(db: &clickhouse::Client, day: i64) {
    let (day, end) = (day as u32, (day + DAY) as u32);
    let seal_id = format!("seal-{day}");
    db.query(SEAL_DAY_SQL)
        .bind(&seal_id)
        .bind(0u32)
        .bind(day)
        .bind(day)
        .bind(end)
        .bind(end)
        .execute()
        .await
        .expect("seal");
    db.query("INSERT INTO usage_seals (part, day, seal_id, rows, sealed_at) VALUES (0, toDate(intDiv(?, 86400)), ?, 0, now())")
        .bind(day)
        .bind(&seal_id)
        .execute()
        .await
        .expect("seal row");
}

/// The fold of a meter's aggregation, computed here from the events.
#[derive(Default, Clone)]
struct Expect {
    sum: Decimal,
    n: u64,
    max: Option<Decimal>,
    latest: Option<(i64, String, Decimal)>,
    users: BTreeSet<String>,
}

impl Expect {
    fn add(&mut self, e: &Ev) {
        self.sum += e.value;
        self.n += 1;
        self.max = Some(self.max.map_or(e.value, |m| m.max(e.value)));
        let key = (e.time_ms, e.id.clone(), e.value);
        if self
            .latest
            .as_ref()
            .is_none_or(|l| (l.0, &l.1) < (key.0, &key.1))
        {
            self.latest = Some(key);
        }
        self.users.insert(e.unique.clone());
    }
    fn value(&self, aggregation: &str) -> String {
        match aggregation {
            "SUM" => self.sum,
            "COUNT" => Decimal::from(self.n),
            "MAX" => self.max.unwrap_or_default(),
            "LATEST" => self.latest.as_ref().map_or(Decimal::ZERO, |l| l.2),
            "UNIQUE_COUNT" => Decimal::from(self.users.len()),
            _ => unreachable!(),
        }
        .normalize()
        .to_string()
    }
}

/// (window label, group values) to value, from the API's answer.
fn answered(body: &serde_json::Value, names: &[&str]) -> BTreeMap<(String, Vec<String>), String> {
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data: {body}"))
        .iter()
        .map(|r| {
            let groups = names
                .iter()
                .map(|n| r["group_by"][n].as_str().expect("group value").to_owned())
                .collect();
            (
                (r["window_start"].as_str().unwrap().to_owned(), groups),
                r["value"].as_str().expect("a decimal string").to_owned(),
            )
        })
        .collect()
}

fn label(t: i64, offset: i64) -> String {
    let local = DateTime::<Utc>::from_timestamp(t + offset, 0).unwrap();
    let sign = if offset < 0 { '-' } else { '+' };
    if offset == 0 {
        local.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        format!(
            "{}{sign}{:02}:{:02}",
            local.format("%Y-%m-%dT%H:%M:%S"),
            offset.abs() / 3600,
            offset.abs() % 3600 / 60
        )
    }
}

/// Expected rows: events of `acme`'s `meter` kept by `keep`, each window labelled by `window`
/// (None: not in the range).
fn expected(
    evs: &[Ev],
    meter: &str,
    names: &[&str],
    keep: impl Fn(&Ev) -> bool,
    window: impl Fn(i64) -> Option<String>,
) -> BTreeMap<(String, Vec<String>), String> {
    let mut folds: BTreeMap<(String, Vec<String>), Expect> = BTreeMap::new();
    let mut aggregation = "";
    for e in evs
        .iter()
        .filter(|e| e.customer == "acme" && e.meter == meter && keep(e))
    {
        aggregation = e.aggregation;
        let Some(w) = window(e.window()) else {
            continue;
        };
        let groups = names
            .iter()
            .map(|n| {
                if *n == "agent" {
                    e.agent.to_owned()
                } else {
                    e.group(n)
                }
            })
            .collect();
        folds.entry((w, groups)).or_default().add(e);
    }
    folds
        .into_iter()
        .map(|(k, f)| (k, f.value(aggregation)))
        .collect()
}

fn iso(t: i64) -> String {
    label(t, 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_query_answers_per_window_and_group_as_computed_from_the_events() {
    let env = TestEnv::new("rater_usage_query").await;
    let db = env.db();
    tally_rater::store::registry::bootstrap(&db, &[], &meter_specs(), 0)
        .await
        .expect("stored meters");
    let evs = events();
    assert!(evs.len() > 1000, "{} events", evs.len());
    // an aborted batch: written, folded, then aborted; it never counts
    let mut aborted: Vec<Ev> = evs.iter().take(40).cloned().collect();
    for (i, e) in aborted.iter_mut().enumerate() {
        e.batch = "aborted".into();
        e.id = format!("x{i}");
        e.value += Decimal::from(1000);
    }
    write(&db, &evs).await;
    write(&db, &aborted).await;
    db.query("INSERT INTO usage_aborts (batch_id, part, reason, aborted_at) VALUES ('aborted', 0, 'test', now())")
        .execute()
        .await
        .unwrap();
    // the partition is registered, its first two days sealed
    db.query("INSERT INTO usage_seals (part, day, seal_id, rows, sealed_at) VALUES (0, toDate(0), 'registered', 0, now())")
        .execute()
        .await
        .unwrap();
    seal(&db, START).await;
    seal(&db, START + DAY).await;
    // tokens created before the server loads them
    let keys = token(&db, "kim", Role::KeyAdmin).await;
    let reader = token(&db, "rita", Role::Reader).await;
    let (addr, stop, server) = common::http::start(db.clone()).await;

    let all = |_: &Ev| true;
    let berlin = |t: i64| if t >= BERLIN_SUMMER { 7200 } else { 3600 };
    let query =
        |meter: &str, params: &str| format!("/v1/meters/{meter}/query?customer=acme&{params}");
    let end = START + DAYS * DAY;

    // DAY in Berlin: 27th and 28th (+01:00), 29th (23 hours), 30th (+02:00); the range starts
    // and ends at Berlin midnights, so it cuts the UTC days at both ends and inside
    let (from, to) = (START - 3600, end - 7200);
    for (meter, names, filter, keep) in [
        (
            "tokens",
            vec!["model"],
            "&filter_group_kind=input",
            (|e: &Ev| e.group("kind") == "input") as fn(&Ev) -> bool,
        ),
        ("calls", vec!["agent"], "", all as fn(&Ev) -> bool),
        ("users", vec![], "", all as fn(&Ev) -> bool),
        ("peak", vec![], "", all as fn(&Ev) -> bool),
        (
            "last",
            vec!["agent"],
            "&filter_group_agent=bot-a&filter_group_agent=bot-c",
            (|e: &Ev| e.agent != "bot-b") as fn(&Ev) -> bool,
        ),
    ] {
        let group_by: String = names.iter().map(|n| format!("&group_by={n}")).collect();
        let path = query(
            meter,
            &format!(
                "from={}&to={}&window_size=DAY&window_time_zone=Europe/Berlin{group_by}{filter}",
                iso(from),
                iso(to)
            ),
        );
        let (status, body) = get(addr, &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let want = expected(&evs, meter, &names, keep, |w| {
            if w < from || w >= to {
                return None;
            }
            let local = w + berlin(w);
            let day = local - local.rem_euclid(DAY);
            // the day's start in Berlin (its offset at midnight, which is before 02:00)
            let start = day - berlin(day - 3600);
            Some(label(start, berlin(start)))
        });
        assert_eq!(answered(&body, &names), want, "{path}");
        assert_eq!(
            want.keys().map(|k| &k.0).collect::<BTreeSet<_>>().len(),
            4,
            "{path}"
        );
        // each window's end is the next one's start; the DST day has 23 hours
        let data = body["data"].as_array().unwrap();
        let dst = data
            .iter()
            .find(|r| r["window_start"] == "2026-03-29T00:00:00+01:00")
            .expect("the DST day");
        assert_eq!(dst["window_end"], "2026-03-30T00:00:00+02:00");
    }

    // HOUR in UTC over a sealed and an unsealed day, per tool and agent
    let (from, to) = (START + DAY + 20 * 3600, START + 2 * DAY + 5 * 3600);
    let path = query(
        "calls",
        &format!(
            "from={}&to={}&window_size=HOUR&group_by=tool&group_by=agent",
            iso(from),
            iso(to)
        ),
    );
    let (status, body) = get(addr, &path).await;
    assert_eq!(status, 200, "{body}");
    let want = expected(&evs, "calls", &["tool", "agent"], all, |w| {
        (w >= from && w < to).then(|| iso(w - w.rem_euclid(3600)))
    });
    assert!(want.len() > 20);
    assert_eq!(answered(&body, &["tool", "agent"]), want);

    // MINUTE in Kolkata (+05:30) over two hours
    let (from, to) = (
        START + 2 * DAY + 3 * 3600 + 1800,
        START + 2 * DAY + 5 * 3600 + 1800,
    );
    let path = query(
        "tokens",
        &format!(
            "from={}&to={}&window_size=MINUTE&window_time_zone=Asia/Kolkata",
            iso(from),
            iso(to)
        ),
    );
    let (status, body) = get(addr, &path).await;
    assert_eq!(status, 200, "{body}");
    let want = expected(&evs, "tokens", &[], all, |w| {
        (w >= from && w < to).then(|| label(w, 19_800))
    });
    assert!(!want.is_empty());
    assert_eq!(answered(&body, &[]), want);

    // DAY in Kolkata: every UTC day is cut at 18:30
    let (from, to) = (START - 19_800 + DAY, end - 19_800);
    let path = query(
        "users",
        &format!(
            "from={}&to={}&window_size=DAY&window_time_zone=Asia/Kolkata",
            iso(from),
            iso(to)
        ),
    );
    let (status, body) = get(addr, &path).await;
    assert_eq!(status, 200, "{body}");
    let want = expected(&evs, "users", &[], all, |w| {
        (w >= from && w < to).then(|| {
            let local = w + 19_800;
            label(local - local.rem_euclid(DAY) - 19_800, 19_800)
        })
    });
    assert_eq!(answered(&body, &[]), want);

    // MONTH in UTC and the whole range: sealed days folded per month on the server, the
    // rest from the partials; UNIQUE_COUNT counts each user once over the whole range
    for meter in ["tokens", "calls", "users", "peak", "last"] {
        for params in [
            "from=2026-03-01T00:00:00Z&to=2026-05-01T00:00:00Z&window_size=MONTH&group_by=agent"
                .to_owned(),
            format!("from={}&to={}&group_by=agent", iso(START), iso(end)),
        ] {
            let path = query(meter, &params);
            let (status, body) = get(addr, &path).await;
            assert_eq!(status, 200, "{body}");
            let first = if params.contains("MONTH") {
                "2026-03-01T00:00:00Z".to_owned()
            } else {
                iso(START)
            };
            let want = expected(&evs, meter, &["agent"], all, |_| Some(first.clone()));
            assert_eq!(want.len(), 3, "{path}");
            assert_eq!(answered(&body, &["agent"]), want, "{path}");
            assert_eq!(
                body["aggregation"],
                match meter {
                    "tokens" => "SUM",
                    "calls" => "COUNT",
                    "users" => "UNIQUE_COUNT",
                    "peak" => "MAX",
                    _ => "LATEST",
                }
            );
        }
    }
    // a range cut inside the windows: from a sealed day's 10:00 to the last day's 13:37
    let (from, to) = (START + DAY + 10 * 3600, end - DAY + 13 * 3600 + 37 * 60);
    let path = query(
        "tokens",
        &format!(
            "from={}&to={}&group_by=model&group_by=kind",
            iso(from),
            iso(to)
        ),
    );
    let (status, body) = get(addr, &path).await;
    assert_eq!(status, 200, "{body}");
    let want = expected(&evs, "tokens", &["model", "kind"], all, |w| {
        (w >= from && w < to).then(|| iso(from))
    });
    assert_eq!(answered(&body, &["model", "kind"]), want);
    assert_eq!(
        body["data"][0]["window_end"].as_str(),
        Some(iso(to).as_str())
    );

    // the refusals
    let ok = format!("from={}&to={}", iso(START), iso(end));
    for (path, status, code) in [
        (format!("/v1/meters/nope/query?customer=acme&{ok}"), 404, "not_found"),
        (format!("/v1/meters/tokens/query?{ok}"), 400, "invalid_customer"),
        ("/v1/meters/tokens/query?customer=acme".to_owned(), 400, "invalid_from"),
        (format!("/v1/meters/tokens/query?customer=acme&{ok}&window_size=WEEK"), 400, "invalid_window_size"),
        (format!("/v1/meters/tokens/query?customer=acme&{ok}&window_time_zone=Nowhere"), 400, "invalid_window_time_zone"),
        (format!("/v1/meters/tokens/query?customer=acme&{ok}&group_by=tool"), 400, "invalid_group_by"),
        (format!("/v1/meters/tokens/query?customer=acme&{ok}&filter_group_tool=x"), 400, "invalid_filter"),
        (format!("/v1/meters/tokens/query?customer=acme&{ok}&subject=acme"), 400, "unknown_parameter"),
        (format!("/v1/meters/tokens/query?customer=acme&from={}&to={}", iso(START), iso(START)), 400, "invalid_range"),
        ("/v1/meters/tokens/query?customer=acme&from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z&window_size=MINUTE".to_owned(), 400, "too_many_windows"),
    ] {
        let (s, body) = get(addr, &path).await;
        assert_eq!((s, body["code"].as_str()), (status, Some(code)), "{path}: {body}");
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    let path = format!("/v1/meters/tokens/query?customer=acme&{ok}");
    let (s, body) = request_as(addr, None, "GET", &path, "").await;
    assert_eq!((s, body["code"].as_str()), (401, Some("missing_token")));
    let (s, body) = request_as(addr, Some(&keys), "GET", &path, "").await;
    assert_eq!((s, body["code"].as_str()), (403, Some("forbidden")));
    let (s, _) = request_as(addr, Some(&reader), "GET", &path, "").await;
    assert_eq!(s, 200);
    let (s, body) = request_as(addr, Some(&reader), "POST", &path, "").await;
    assert_eq!(s, 403, "{body}");
    let (_, doc) = get(addr, "/v1/openapi.json").await;
    let op = &doc["paths"]["/v1/meters/{slug}/query"]["get"];
    assert!(op.is_object(), "the OpenAPI document lists the query");
    let documented: BTreeSet<&str> = op["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for p in [
        "slug",
        "customer",
        "from",
        "to",
        "window_size",
        "window_time_zone",
        "group_by",
    ] {
        assert!(documented.contains(p), "OpenAPI lacks parameter {p}");
    }

    stop.cancel();
    server.await.expect("the server stops");
    env.cleanup().await;
}

const HISTORY_PARTIALS: u64 = 5_000_000;
const MEMORY_MAX: &str = "268435456";
const ROWS_MAX: &str = "500000";

/// 5,000,000 partials of 1,000 other customers: half on the queried day itself, half over the
/// 100 days before it; then a query of one customer and one day, capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_of_one_customer_and_day_reads_that_not_the_store() {
    let env = TestEnv::new("rater_usage_query_scale").await;
    let db = env.db();
    tally_rater::store::registry::bootstrap(&db, &[], &meter_specs(), 0)
        .await
        .expect("stored meters");
    let day = START + 2 * DAY;
    let started = std::time::Instant::now();
    for (first, span, batch) in [
        (day, DAY, "same-day"),
        (day - 100 * DAY, 100 * DAY, "before"),
    ] {
        db.query(&format!(
            "INSERT INTO usage_partials (window_start, window_secs, customer, agent, meter, \
             aggregation, group_names, group_values, group_key, events, value_sum, value_min, \
             value_max, latest_value, latest_time_ms, latest_event_id, unique_values, batch_id, \
             part, inserted_at) \
             SELECT toDateTime(t - t % 60), 60, concat('hist-', toString(n % 1000)), 'bot', \
             'tokens', 'SUM', ['kind', 'model'], ['input', if(n % 2 = 0, 'm1', 'm2')], \
             if(n % 2 = 0, '{{\"kind\":\"input\",\"model\":\"m1\"}}', '{{\"kind\":\"input\",\"model\":\"m2\"}}'), \
             1, toDecimal128(n % 1000 + 1, 9), toDecimal128(n % 1000 + 1, 9), \
             toDecimal128(n % 1000 + 1, 9), toDecimal128(n % 1000 + 1, 9), toInt64(t) * 1000, \
             concat('h', toString(n)), emptyArrayString(), '{batch}', 0, now() \
             FROM (SELECT number AS n, toUInt32({first} + intDiv(number * {span}, {half})) AS t \
                   FROM system.numbers LIMIT {half})",
            half = HISTORY_PARTIALS / 2,
        ))
        .execute()
        .await
        .expect("history partials");
    }
    let stored: u64 = db
        .query("SELECT count() FROM usage_partials")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(stored, HISTORY_PARTIALS);
    println!(
        "{stored} partials of other customers written in {:?}",
        started.elapsed()
    );
    // the customer's usage of the day: one event a minute, 1.5 tokens each, models
    // alternating (a name of this run, to find its queries in the query log)
    let customer: &'static str = Box::leak(format!("big{}", std::process::id()).into_boxed_str());
    let evs: Vec<Ev> = (0..1440)
        .map(|m| Ev {
            customer,
            agent: "bot",
            id: format!("a{m}"),
            meter: "tokens",
            aggregation: "SUM",
            time_ms: (day + m * 60 + 7) * 1000,
            groups: vec![
                ("kind", "input".into()),
                ("model", if m % 2 == 0 { "m1" } else { "m2" }.into()),
            ],
            value: Decimal::new(15, 1),
            unique: String::new(),
            batch: "acme".into(),
        })
        .collect();
    write(&db, &evs).await;

    // the API (its tokens and catalog too) reads through a client capped in memory and in
    // rows read, logging its queries
    let capped = env
        .db()
        .with_setting("max_memory_usage", MEMORY_MAX)
        .with_setting("max_rows_to_read", ROWS_MAX)
        .with_setting("log_queries", "1");
    let (addr, stop, server) = common::http::start(capped).await;
    let (from, to) = (iso(day), iso(day + DAY));
    for (params, rows, per_row) in [
        (format!("from={from}&to={to}&group_by=model"), 2, "1080"),
        (
            format!("from={from}&to={to}&window_size=DAY&group_by=model"),
            2,
            "1080",
        ),
        (format!("from={from}&to={to}&window_size=HOUR"), 24, "90"),
        (
            format!("from={from}&to={to}&window_size=MINUTE&group_by=model"),
            1440,
            "1.5",
        ),
        // the queried day is Berlin's 23-hour day: 22 of acme's hours fall in it
        (
            format!(
                "from={}&to={}&window_size=DAY&window_time_zone=Europe/Berlin",
                iso(day - 3600),
                iso(day + DAY - 7200)
            ),
            1,
            "1980",
        ),
    ] {
        let path = format!("/v1/meters/tokens/query?customer={customer}&{params}");
        let t0 = std::time::Instant::now();
        let (status, body) = get(addr, &path).await;
        let took = t0.elapsed();
        assert_eq!(
            status, 200,
            "{path} within {MEMORY_MAX} bytes and {ROWS_MAX} rows: {body}"
        );
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), rows, "{path}");
        assert!(data.iter().all(|r| r["value"] == per_row), "{path}: {body}");
        println!("{path}: {rows} rows in {took:?}");
    }
    // what ClickHouse read for those queries (rows and peak memory of each), from its log
    let _ = db.query("SYSTEM FLUSH LOGS").execute().await;
    let logged: Vec<(u64, i64, u64)> = db
        .query(
            "SELECT read_rows, memory_usage, query_duration_ms FROM system.query_log \
             WHERE type = 2 AND event_date >= yesterday() AND query LIKE '%FROM usage_partials%' \
             AND position(query, ?) > 0 ORDER BY event_time",
        )
        .bind(format!("customer = '{customer}'"))
        .fetch_all()
        .await
        .unwrap_or_default();
    for (rows, memory, ms) in &logged {
        println!("usage read: {rows} rows read, {memory} bytes peak memory, {ms} ms");
        assert!(*rows < HISTORY_PARTIALS / 10, "{rows} rows read");
    }
    stop.cancel();
    server.await.unwrap();
    env.cleanup().await;
}
