//! Reads that follow what they ask for (issue 14): a rating pass over the same current period
//! with 1M, 10M and 100M events of stored history, and a rating pass over a month of 100M
//! events (full, then after 1M new events), with the pass's wall time and ClickHouse's peak
//! memory (`system.query_log`'s `memory_usage` of the pass's queries).
//!
//! The usage is written straight into the storage the aggregator writes (window partials, one
//! per event: the sparse case, where partials do not compress), and the days the aggregator
//! would have sealed are sealed with its own SQL (`tally_aggregator::seal::seal_day`). Nothing
//! here decides anything from a figure.

use std::time::Instant;

use clickhouse::Client;
use tally_platform::testkit::TestEnv;

const DAY: u32 = 86_400;

/// One rating pass: wall seconds, ClickHouse peak bytes, charges written, usage rows read.
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    pub seconds: f64,
    pub peak_bytes: u64,
    pub charges: usize,
    pub rows: usize,
}

/// Writes `events` usage events of `customers` customers (two meters, four groups of the
/// token meter) spread over `[from, from + days)`, one partial each, in chunks.
pub async fn write_usage(
    db: &Client,
    from: u32,
    days: u32,
    events: u64,
    customers: u64,
    offset: u64,
) -> anyhow::Result<()> {
    let chunk = 10_000_000u64;
    let span = u64::from(days) * u64::from(DAY);
    let mut done = 0u64;
    while done < events {
        let rows = chunk.min(events - done);
        let first = offset + done;
        db.query(&format!(
            "INSERT INTO usage_partials (window_start, window_secs, customer, agent, meter, \
             aggregation, group_names, group_values, group_key, events, value_sum, value_min, \
             value_max, latest_value, latest_time_ms, latest_event_id, unique_values, batch_id, \
             part, inserted_at) \
             SELECT toDateTime(t - t % 60), 60, concat('cust-', toString(n % {customers})), \
             'agent-1', m, if(m = 'llm_tokens', 'SUM', 'COUNT'), \
             if(m = 'llm_tokens', ['model'], emptyArrayString()), \
             if(m = 'llm_tokens', [g], emptyArrayString()), \
             if(m = 'llm_tokens', concat('{{\"model\":\"', g, '\"}}'), '{{}}'), \
             1, v, v, v, v, toInt64(t) * 1000, concat('e', toString(n)), emptyArrayString(), \
             'bench', 0, now() \
             FROM (SELECT number + {first} AS n, \
                   toUInt32({from} + intDiv((number + {done}) * {span}, {events})) AS t, \
                   if(intDiv(n, 7) % 2 = 0, 'llm_tokens', 'tool_calls') AS m, \
                   concat('model-', toString(intDiv(n, 3) % 4)) AS g, \
                   toDecimal128(if(m = 'llm_tokens', n % 1000 + 1, 1), 9) AS v \
                   FROM system.numbers LIMIT {rows})"
        ))
        .execute()
        .await?;
        done += rows;
    }
    Ok(())
}

/// Seals every day in `[from, to)` of partition 0 with the aggregator's SQL.
pub async fn seal_days(db: &Client, from: u32, to: u32) -> anyhow::Result<()> {
    let mut day = from - from % DAY;
    while day + DAY <= to {
        tally_aggregator::seal::seal_day(db, &format!("seal-{day}"), 0, day, 0).await?;
        day += DAY;
    }
    Ok(())
}

/// One rating pass at `now_secs` with the default plan of `tally_e2e`-like prices, logged
/// so its ClickHouse memory can be read back.
pub async fn rating_pass(env: &TestEnv, now_secs: u32) -> anyhow::Result<Pass> {
    let db = env.db().with_setting("log_queries", "1");
    let catalog = catalog()?;
    let rater = tally_rater::RaterConfig {
        default_plan: Some("bench".into()),
        ..Default::default()
    };
    let started = Instant::now();
    let report = tally_rater::rate_once(&db, &catalog, &rater, i64::from(now_secs) * 1000).await?;
    let seconds = started.elapsed().as_secs_f64();
    let peak_bytes = peak_memory(env, seconds).await.unwrap_or(0);
    Ok(Pass {
        seconds,
        peak_bytes,
        charges: report.charges.len(),
        rows: report.usage_rows,
    })
}

/// The largest `memory_usage` of the usage queries that finished in the last `seconds` (+1).
async fn peak_memory(env: &TestEnv, seconds: f64) -> anyhow::Result<u64> {
    let db = env.db();
    db.query("SYSTEM FLUSH LOGS").execute().await?;
    let since = (seconds.ceil() as u64) + 2;
    Ok(db
        .query(&format!(
            "SELECT toUInt64(max(memory_usage)) FROM system.query_log \
             WHERE type = 2 AND event_time >= now() - {since} \
             AND (query LIKE '%usage_partials%' OR query LIKE '%usage_seals%') \
             AND query NOT LIKE '%system.query_log%'"
        ))
        .fetch_one::<u64>()
        .await?)
}

/// The history scenario: the same current period (`period_events` events of `customers`
/// customers over the 20 days before `now`, all but the last two days sealed) with
/// `histories` events of history before it (cumulative: each size adds a block of 100 older
/// days, sealed as an aggregator would have sealed them; all before the period's lookback).
/// Returns (history events, pass) per size.
pub async fn history(
    env: &TestEnv,
    histories: &[u64],
    period_events: u64,
    customers: u64,
) -> anyhow::Result<Vec<(u64, Pass)>> {
    let db = env.db();
    // a fixed month: 2026-11-21, twenty days into November
    let period_start = 1_793_491_200u32; // 2026-11-01
    let now = period_start + 20 * DAY + 12 * 3600;
    write_usage(&db, period_start, 20, period_events, customers, 0).await?;
    seal_days(&db, period_start, period_start + 18 * DAY).await?;
    let mut out = Vec::new();
    let mut stored = 0u64;
    // history ends before the period's lookback (which starts 31 + 2 days before now)
    let mut block_end = period_start - 40 * DAY;
    for &size in histories {
        let add = size.saturating_sub(stored);
        if add > 0 {
            let from = block_end - 100 * DAY;
            write_usage(&db, from, 100, add, customers, 1_000_000_000 + stored).await?;
            seal_days(&db, from, block_end).await?;
            stored += add;
            block_end = from;
        }
        out.push((stored, rating_pass(env, now).await?));
    }
    Ok(out)
}

/// A catalog with one plan, `bench`, the default: tokens per unit, tool calls graduated.
pub fn catalog() -> anyhow::Result<tally_rater::Catalog> {
    #[derive(serde::Deserialize)]
    struct File {
        plans: Vec<tally_rater::config::PlanSpec>,
    }
    let file: File = toml::from_str(
        r#"
        [[plans]]
        id = "bench"
        version = 1
        currency = "USD"
        effective_from = "2020-01-01T00:00:00Z"
        prices = [
          { model = "per_unit", meter = "llm_tokens", unit_price = "0.000003" },
          { model = "graduated", meter = "tool_calls", tiers = [
             { up_to = "100", unit_price = "0.02" }, { unit_price = "0.01" } ] },
        ]
        "#,
    )?;
    let specs: Vec<tally_domain::meter::MeterSpec> = serde_json::from_value(serde_json::json!([
        {"slug": "llm_tokens", "event_type": "llm.tokens", "aggregation": "SUM",
         "value_property": "$.tokens", "group_by": {"model": "$.model"}},
        {"slug": "tool_calls", "event_type": "tool.call", "aggregation": "COUNT"}
    ]))?;
    let meters = tally_domain::meter::validate_meters(specs)?;
    let rater = tally_rater::RaterConfig {
        default_plan: Some("bench".into()),
        ..Default::default()
    };
    Ok(tally_rater::Catalog::new(
        file.plans,
        vec![],
        &rater,
        &meters,
    )?)
}

/// The big-period scenario at noon of the month's 30th day: a month of `events` events of
/// `customers` customers with the last two days unsealed (36 hours: an allowed lateness above
/// 12 hours), a full rating pass, then `more` new events in the unsealed days and another
/// pass; then the 29th day sealed, as the shipped lateness (1 hour) has it by noon of the
/// 30th (12 hours unsealed), and a third pass. Returns (full, incremental, incremental with
/// the shipped lateness).
pub async fn big_period(
    env: &TestEnv,
    events: u64,
    more: u64,
    customers: u64,
) -> anyhow::Result<(Pass, Pass, Pass)> {
    let db = env.db();
    let period_start = 1_793_491_200u32; // 2026-11-01
    let now = period_start + 29 * DAY + 12 * 3600;
    write_usage(&db, period_start, 30, events, customers, 0).await?;
    seal_days(&db, period_start, period_start + 28 * DAY).await?;
    let full = rating_pass(env, now).await?;
    write_usage(
        &db,
        period_start + 28 * DAY,
        2,
        more,
        customers,
        5_000_000_000,
    )
    .await?;
    let incremental = rating_pass(env, now).await?;
    seal_days(&db, period_start + 28 * DAY, period_start + 29 * DAY).await?;
    let shipped = rating_pass(env, now).await?;
    Ok((full, incremental, shipped))
}
