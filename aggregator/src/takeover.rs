//! Taking a partition over, once its lease is held (`lease.rs`), before consuming:
//!
//! 1. Abort what the previous holder left unfinished (the batch or seal its last intent
//!    named, and earlier attempts it had not recorded yet), then wait a moment
//!    ([`ABORT_SETTLE`]), so no reader that read the abort list before it changed is still
//!    choosing its rows when batches of this instance start to count.
//! 2. Register the partition with the readers, then the upgrade from the storage of
//!    migrations 0001-0023 (`upgrade.rs`): partition 0 copies the legacy rows once; the other
//!    partitions wait until it has. Stop every aggregator of the old version first: it is not
//!    fenced by the lease, and what it commits after the copy is not copied.
//! 3. Read how far the partition is sealed (`seal.rs`); the partition was registered with
//!    the readers (once) before the upgrade copy, so no reader skips its rows.
//! 4. Rebuild the dedup set from the raw events that count (`recovery.rs`).
//! 5. Recreate the durable consumer at its ack floor, so every message not yet acknowledged
//!    is delivered again now and in stream order (not after AckWait, behind newer ones): the
//!    first copy JetStream received of an event is decided before any later copy, whatever
//!    crashed in between.
//!
//! Each step retries while ClickHouse or NATS is unavailable, and stops on shutdown or when
//! the instance is fenced meanwhile.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, Consumer, DeliverPolicy};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use tally_platform::streams;

use crate::consumer::{now_ms, owns, Aggregator, RunError, BACKOFF_MIN};
use crate::lease::Takeover;
use crate::limits::{self, Limits};
use crate::{metrics, recovery, seal, sink, upgrade};

/// How long a takeover waits after recording aborts before its own batches may count.
pub const ABORT_SETTLE: Duration = Duration::from_secs(1);

/// The takeover steps, in order.
pub(crate) async fn run(agg: &mut Aggregator<'_>, takeover: Takeover) -> Result<(), RunError> {
    abort_unfinished(agg, &takeover.unfinished).await?;
    register(agg).await?;
    upgrade_legacy(agg).await?;
    load_seals(agg).await?;
    recover(agg).await?;
    reset_consumer(agg).await
}

/// Retries `step` with backoff until it succeeds, or shutdown / fencing.
async fn retry<T, F, Fut>(agg: &Aggregator<'_>, what: &str, mut step: F) -> Result<T, RunError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut backoff = BACKOFF_MIN;
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) => tracing::warn!(step = what, error = %e, "takeover step failed, retrying"),
        }
        agg.pause(&mut backoff).await.ok_or_else(|| agg.stopped())?;
    }
}

async fn abort_unfinished(agg: &mut Aggregator<'_>, ids: &[String]) -> Result<(), RunError> {
    if ids.is_empty() {
        return Ok(());
    }
    let (db, part) = (agg.db.clone(), agg.cfg.part());
    retry(agg, "abort", || {
        let db = db.clone();
        async move {
            sink::abort(&db, ids, part, "takeover", now_ms())
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await?;
    tracing::warn!(?ids, "aborted what the previous holder left unfinished");
    tokio::time::sleep(ABORT_SETTLE).await;
    Ok(())
}

async fn upgrade_legacy(agg: &mut Aggregator<'_>) -> Result<(), RunError> {
    let db = agg.db.clone();
    let state = || {
        let db = db.clone();
        async move { upgrade::state(&db).await.map_err(|e| e.to_string()) }
    };
    if retry(agg, "upgrade state", state).await? == upgrade::State::Done {
        return Ok(());
    }
    if agg.cfg.part() != 0 {
        // partition 0 copies the legacy ids; they must be in this partition's dedup set
        tracing::info!("waiting for partition 0 to copy the legacy usage");
        loop {
            let s = retry(agg, "upgrade state", state).await?;
            if s == upgrade::State::Done {
                return Ok(());
            }
            let mut wait = Duration::from_secs(2);
            agg.pause(&mut wait).await.ok_or_else(|| agg.stopped())?;
        }
    }
    tracing::info!("copying the usage of the storage before migration 0024 (once)");
    let id = agg
        .under_lease("upgrade", |db, id| async move {
            let now = tally_platform::store::datetime_secs(now_ms());
            upgrade::copy(&db, &id, now)
                .await
                .map_err(|e| e.to_string())
        })
        .await?;
    tracing::info!(batch_id = %id, "legacy usage copied");
    Ok(())
}

/// Registers the partition with the readers before it writes anything (the upgrade copy
/// included): a reader then reads all of its time from the partials until it seals.
async fn register(agg: &mut Aggregator<'_>) -> Result<(), RunError> {
    let (db, part) = (agg.db.clone(), agg.cfg.part());
    retry(agg, "register", || {
        let db = db.clone();
        async move {
            seal::register(&db, part, now_ms())
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await
}

async fn load_seals(agg: &mut Aggregator<'_>) -> Result<(), RunError> {
    let (db, part) = (agg.db.clone(), agg.cfg.part());
    let (through, first) = retry(agg, "seals", || {
        let db = db.clone();
        async move {
            let through = seal::sealed_through(&db, part)
                .await
                .map_err(|e| e.to_string())?;
            let first = match through {
                Some(_) => None,
                None => seal::first_data(&db, part)
                    .await
                    .map_err(|e| e.to_string())?,
            };
            Ok((through, first))
        }
    })
    .await?;
    agg.sealed_through = through;
    agg.first_data = first;
    // nothing sealed yet: the clock starts at the takeover (the TallySealingBehind alert
    // fires when three days pass without a seal)
    let today = tally_platform::store::datetime_secs(now_ms());
    metrics::sealed_through(through.unwrap_or(today - today % 86_400));
    Ok(())
}

/// Rebuilds the committed dedup set (ids received within the horizon of the wall clock,
/// from a whole minute on) and the per-customer limits from the same reads and from the
/// partials of the days not sealed yet.
async fn recover(agg: &mut Aggregator<'_>) -> Result<(), RunError> {
    let horizon = agg.horizon_secs();
    let since =
        limits::aligned(tally_platform::store::datetime_secs(now_ms()).saturating_sub(horizon));
    let (db, nats_cfg, partition) = (agg.db.clone(), agg.nats_cfg, agg.cfg.partition);
    let (bounds, meters) = (agg.limits.bounds(), agg.classifier.meters());
    // no event can be accepted for a sealed day: its series are not needed
    let first_day = limits::day_of_secs(since)
        .max(agg.sealed_through.map_or(0, |d| limits::day_of_secs(d) + 1));
    let (dedup, state) = retry(agg, "dedup recovery", || {
        let db = db.clone();
        async move {
            let mine = move |customer: &str| owns(nats_cfg, partition, customer);
            let mut state = Limits::new(bounds, meters);
            let dedup = recovery::load(&db, since, horizon, &mine, &mut state)
                .await
                .map_err(|e| e.to_string())?;
            recovery::load_days(&db, &mut state, meters, first_day, NO_DAY, &mine)
                .await
                .map_err(|e| e.to_string())?;
            Ok((dedup, state))
        }
    })
    .await?;
    tracing::info!(
        ids = dedup.committed_len(),
        customers = state.customers(),
        "dedup set and customer limits recovered"
    );
    metrics::dedup_size(dedup.committed_len(), dedup.committed_bytes());
    agg.dedup = dedup;
    agg.limits = state;
    agg.loaded_since = since;
    agg.groups_from_day = limits::day_of_secs(since);
    Ok(())
}

/// A day after every day an event may have (2106).
const NO_DAY: u32 = u32::MAX / 86_400;

/// After a backlog made `cover` load older ids: loads the series and values of the days
/// from `day` to the first one the limits already hold, so a message of the backlog is
/// judged against every event accepted before it.
pub(crate) async fn cover_days(agg: &mut Aggregator<'_>, day: u32) -> Result<(), RunError> {
    if day >= agg.groups_from_day {
        return Ok(());
    }
    let until = agg.groups_from_day;
    let (nats_cfg, partition) = (agg.nats_cfg, agg.cfg.partition);
    let mine = move |customer: &str| owns(nats_cfg, partition, customer);
    let mut backoff = BACKOFF_MIN;
    loop {
        // a failed read may have added some rows: adding them again changes nothing (sets)
        let meters = agg.classifier.meters();
        match recovery::load_days(&agg.db, &mut agg.limits, meters, day, until, &mine).await {
            Ok(rows) => {
                tracing::info!(rows, from_day = day, "older series loaded for a backlog");
                agg.groups_from_day = day;
                return Ok(());
            }
            Err(e) => tracing::warn!(error = %e, "loading older series failed, retrying"),
        }
        agg.pause(&mut backoff)
            .await
            .ok_or(RunError::ShutdownDuringFlush)?;
    }
}

/// The durable consumer's configuration, starting at `start` when it is created.
fn config(agg: &Aggregator<'_>, start: Option<u64>) -> pull::Config {
    let (cfg, nats_cfg) = (agg.cfg, agg.nats_cfg);
    let name = cfg.consumer_name();
    let filter_subject = if nats_cfg.partitions > 0 {
        format!("{}.>", nats_cfg.partition_root(cfg.partition))
    } else {
        cfg.filter_subject.clone().unwrap_or_default()
    };
    pull::Config {
        durable_name: Some(name),
        filter_subject,
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(cfg.ack_wait_secs),
        max_ack_pending: i64::try_from(cfg.batch_max_events * 2).unwrap_or(i64::MAX),
        deliver_policy: match start {
            Some(s) if s > 1 => DeliverPolicy::ByStartSequence { start_sequence: s },
            _ => DeliverPolicy::All,
        },
        ..Default::default()
    }
}

/// The durable consumer as [`reset_consumer`] created it. Never creates one: a consumer
/// created elsewhere (by a fenced instance reopening its stream, say) would start at the
/// beginning of the stream.
pub(crate) async fn consumer(agg: &Aggregator<'_>) -> Result<Consumer<pull::Config>, RunError> {
    let stream = streams::ensure(&agg.js, agg.nats_cfg).await?;
    stream
        .get_consumer(&agg.cfg.consumer_name())
        .await
        .map_err(|e| agg.consumer_err(&e))
}

/// Recreates the durable consumer at its ack floor: everything not yet acknowledged is
/// delivered again, now, in stream order (acknowledged messages above the floor come back
/// too and are duplicates of the dedup set).
pub(crate) async fn reset_consumer(agg: &mut Aggregator<'_>) -> Result<(), RunError> {
    let name = agg.cfg.consumer_name();
    let js = agg.js.clone();
    let nats_cfg = agg.nats_cfg;
    let start = retry(agg, "consumer reset", || {
        let (js, name) = (js.clone(), name.clone());
        async move {
            let stream = streams::ensure(&js, nats_cfg)
                .await
                .map_err(|e| e.to_string())?;
            // only a consumer that does not exist has no floor: any other error is retried
            // (taking it for "none" would keep the old consumer and lose the stream order)
            let floor = match stream.consumer_info(&name).await {
                Ok(info) => Some(info.ack_floor.stream_sequence),
                Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => None,
                Err(e) => return Err(e.to_string()),
            };
            if floor.is_some() {
                stream
                    .delete_consumer(&name)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(floor.map(|f| f + 1))
        }
    })
    .await?;
    let (js, cfg) = (agg.js.clone(), config(agg, start));
    retry(agg, "consumer create", || {
        let (js, name, cfg) = (js.clone(), name.clone(), cfg.clone());
        async move {
            let stream = streams::ensure(&js, nats_cfg)
                .await
                .map_err(|e| e.to_string())?;
            stream
                .get_or_create_consumer(&name, cfg)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await?;
    if start.is_some() {
        metrics::consumer_reset();
    }
    tracing::info!(consumer = %name, from = ?start, "consumer reading from its ack floor in stream order");
    Ok(())
}
