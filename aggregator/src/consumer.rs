//! The consume-fold-flush-ack loop: one task per aggregator (per partition).
//!
//! Messages come from a durable pull consumer with explicit acks. Each message is classified,
//! deduplicated and folded into the batch in flight. The batch is flushed when it holds
//! `batch_max_events` messages or `batch_max_wait_ms` after its first message: dead letters
//! first, then the ClickHouse commit (retried with capped backoff under a new batch id),
//! then the dedup set, then the acks. While a flush runs, no message is pulled, so a slow
//! ClickHouse slows consumption and memory stays bounded by one batch. On shutdown the batch
//! in flight, with every message already delivered to this instance, is flushed and acked (and
//! the acks confirmed by a request on the same connection); if that cannot finish, its
//! messages are left unacked for redelivery.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{
    self, consumer::pull, consumer::AckPolicy, consumer::Consumer, Message,
};
use clickhouse::Client;
use futures::StreamExt;
use tally_domain::{Meter, Reason};
use tally_platform::shutdown::Shutdown;
use tally_platform::store::datetime_secs;
use tally_platform::telemetry::health;
use tally_platform::{streams, NatsConfig};

use crate::batch::{Batch, Rejected};
use crate::classify::{Classifier, Rejection};
use crate::config::AggregatorConfig;
use crate::crash::{self, CrashPoint};
use crate::dedup::{Dedup, Seen};
use crate::{dead_letter, metrics, recovery, seal, sink};

/// Why the aggregator stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Streams(#[from] streams::StreamError),
    #[error("consumer {consumer}: {detail}")]
    Consumer { consumer: String, detail: String },
    #[error(
        "shut down before the batch in flight could be committed; its messages will be redelivered"
    )]
    ShutdownDuringFlush,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const EXPIRE_EVERY: Duration = Duration::from_secs(60);
const GAUGES_EVERY: Duration = Duration::from_secs(5);
const GAUGES_TIMEOUT: Duration = Duration::from_secs(1);
const PULL_EXPIRES: Duration = Duration::from_secs(5);
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// At shutdown, delivered messages are taken until none arrives for this long.
const DELIVERED_IDLE: Duration = Duration::from_millis(100);

/// Nanoseconds since the epoch (NATS timestamps) to milliseconds.
pub(crate) fn ms_from_nanos(nanos: i128) -> i64 {
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Aggregator<'a> {
    cfg: &'a AggregatorConfig,
    nats_cfg: &'a NatsConfig,
    nats: async_nats::Client,
    js: jetstream::Context,
    db: Client,
    classifier: Classifier,
    dedup: Dedup,
    shutdown: Shutdown,
    last_expiry: Instant,
    /// The dedup set holds every committed id received since this time (seconds).
    loaded_since: u32,
    /// The newest time JetStream received a message this instance has read (seconds): the
    /// dedup horizon counts back from it.
    newest_received: u32,
}

/// Runs the aggregator until `shutdown` is cancelled, then flushes and returns.
pub async fn run(
    nats: async_nats::Client,
    db: Client,
    nats_cfg: &NatsConfig,
    cfg: &AggregatorConfig,
    meters: Vec<Meter>,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    cfg.validate_with(nats_cfg)
        .map_err(|e| RunError::Consumer {
            consumer: cfg.consumer_name(),
            detail: e.to_string(),
        })?;
    metrics::init();
    // `/readyz` says 503 until the dedup set is rebuilt and the consumer is bound
    health::set_ready("consumer", false);
    let js = jetstream::new(nats.clone());
    let mut agg = Aggregator {
        cfg,
        nats_cfg,
        nats,
        js,
        db,
        classifier: Classifier::new(meters, &nats_cfg.partition_root(cfg.partition), cfg),
        dedup: Dedup::new(),
        shutdown: shutdown.clone(),
        last_expiry: Instant::now(),
        loaded_since: u32::MAX,
        newest_received: 0,
    };
    match agg.recover().await {
        // stopped before consuming anything: nothing is in flight
        Err(RunError::ShutdownDuringFlush) => return Ok(()),
        other => other?,
    }
    // stopped with the loop, on every way out of this function
    let _sealer = cfg.seals().then(|| {
        let seal_cfg = seal::SealConfig {
            stream: nats_cfg.stream.clone(),
            consumers: cfg.all_consumer_names(nats_cfg),
            lateness_secs: cfg.allowed_lateness_secs,
            label: format!("sealer:{}", cfg.consumer),
        };
        let every = Duration::from_secs(cfg.seal_every_secs);
        AbortOnDrop(tokio::spawn(seal::run(
            agg.db.clone(),
            agg.js.clone(),
            seal_cfg,
            every,
            shutdown.clone(),
        )))
    });
    tracing::info!(consumer = %cfg.consumer_name(), stream = %nats_cfg.stream, "aggregator consuming");
    health::set_ready("consumer", true);

    // one batch reused across flushes: its vectors keep their room (no allocation per batch)
    let mut batch = Batch::with_capacity(cfg.batch_max_events);
    let mut deadline: Option<tokio::time::Instant> = None;
    // the lag and dead-letter gauges are sampled on their own clock, so they stay true while
    // the aggregator is idle (sampled only after flushes, they froze at the last busy moment)
    let mut gauges = tokio::time::interval(GAUGES_EVERY);
    gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'session: while !shutdown.is_cancelled() {
        let (mut consumer, mut messages) = match agg.open_messages().await {
            Ok(opened) => opened,
            // stopped while NATS was unreachable: flush what was consumed before, if anything
            Err(RunError::ShutdownDuringFlush) => break 'session,
            Err(e) => return Err(e),
        };
        loop {
            let flush_due = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // what the server already delivered to this instance is in flight too:
                    // fold it into the last batch rather than leave it for AckWait
                    agg.take_delivered(&mut batch, &mut messages).await;
                    break 'session;
                }
                _ = sleep_until(deadline) => true,
                _ = gauges.tick() => {
                    // bounded: an unanswered request must not hold a due flush or a SIGTERM
                    let _ = tokio::time::timeout(GAUGES_TIMEOUT, agg.sample_gauges(&mut consumer)).await;
                    false
                }
                next = messages.next() => match next {
                    Some(Ok(msg)) => {
                        if agg.handle(&mut batch, msg).await.is_err() {
                            // stopped while loading older ids: the message stays unacked
                            break 'session;
                        }
                        deadline.get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_millis(cfg.batch_max_wait_ms));
                        batch.len() >= cfg.batch_max_events
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "consumer stream error");
                        false
                    }
                    None => {
                        tracing::warn!("consumer stream ended; opening a new one");
                        break;
                    }
                },
            };
            if flush_due {
                agg.flush(&batch).await?;
                batch.clear();
                deadline = None;
            }
        }
    }
    agg.flush(&batch).await?;
    // the acks are written to the socket, not necessarily read by the server: closing now
    // could lose them (a close with unread input resets the connection). A request answered
    // on the same connection shows the server has read everything sent before it.
    if let Err(e) = agg.js.get_stream(&nats_cfg.stream).await {
        tracing::warn!(error = %e, "confirming the last acks; unconfirmed ones will be redelivered and deduplicated");
    }
    // unsubscribe cleanly so the server stops delivering to this instance
    if let Err(e) = agg.nats.drain().await {
        tracing::debug!(error = %e, "draining the NATS connection");
    }
    tracing::info!("aggregator stopped");
    Ok(())
}

/// Whether `customer`'s events come to the instance of `partition` (always, without
/// partitions).
fn owns(nats_cfg: &NatsConfig, partition: Option<u32>, customer: &str) -> bool {
    match nats_cfg.partition_of(customer) {
        Some(p) => partition == Some(p),
        None => true,
    }
}

/// A spawned task that stops when its owner goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Aggregator<'_> {
    /// Declares the streams and the durable consumer and opens its message stream, retrying
    /// with backoff while NATS is unavailable.
    async fn open_messages(&self) -> Result<(Consumer<pull::Config>, pull::Stream), RunError> {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.try_open_messages().await {
                Ok(messages) => return Ok(messages),
                Err(e) => tracing::warn!(error = %e, "cannot open the consumer, retrying"),
            }
            self.pause(&mut backoff)
                .await
                .ok_or(RunError::ShutdownDuringFlush)?;
        }
    }

    async fn try_open_messages(&self) -> Result<(Consumer<pull::Config>, pull::Stream), RunError> {
        let (cfg, nats_cfg) = (self.cfg, self.nats_cfg);
        let consumer_err = |e: &dyn std::fmt::Display| RunError::Consumer {
            consumer: cfg.consumer_name(),
            detail: e.to_string(),
        };
        let stream = streams::ensure(&self.js, nats_cfg).await?;
        let name = cfg.consumer_name();
        let filter_subject = if nats_cfg.partitions > 0 {
            format!("{}.>", nats_cfg.partition_root(cfg.partition))
        } else {
            cfg.filter_subject.clone().unwrap_or_default()
        };
        let consumer = stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(cfg.ack_wait_secs),
                    max_ack_pending: i64::try_from(cfg.batch_max_events * 2).unwrap_or(i64::MAX),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| consumer_err(&e))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(cfg.batch_max_events)
            // short-lived pull requests: one left behind by a stopped instance soon expires
            // instead of swallowing new messages until AckWait
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|e| consumer_err(&e))?;
        Ok((consumer, messages))
    }

    /// Consumer lag and dead-letter depth, each one request to NATS; a failed request leaves
    /// its gauge as it was (the next tick retries).
    async fn sample_gauges(&self, consumer: &mut Consumer<pull::Config>) {
        if let Ok(info) = consumer.info().await {
            metrics::lag(info.num_pending, info.num_ack_pending);
        }
        // get_stream is itself a STREAM.INFO request: its answer is the depth
        if let Ok(dlq) = self.js.get_stream(&self.nats_cfg.dlq_stream).await {
            metrics::dead_letter_depth(dlq.cached_info().state.messages);
        }
    }

    fn horizon_secs(&self) -> u32 {
        u32::try_from(self.cfg.dedup_horizon_secs).unwrap_or(u32::MAX)
    }

    /// Rebuilds the committed dedup set, retrying until ClickHouse answers.
    async fn recover(&mut self) -> Result<(), RunError> {
        let since = datetime_secs(now_ms()).saturating_sub(self.horizon_secs());
        let mut backoff = BACKOFF_MIN;
        loop {
            let (nats_cfg, partition) = (self.nats_cfg, self.cfg.partition);
            let mine = move |customer: &str| owns(nats_cfg, partition, customer);
            match recovery::load(&self.db, since, &mine).await {
                Ok(dedup) => {
                    tracing::info!(ids = dedup.committed_len(), "dedup set recovered");
                    metrics::dedup_size(dedup.committed_len(), dedup.committed_bytes());
                    self.dedup = dedup;
                    self.loaded_since = since;
                    return Ok(());
                }
                Err(e) => tracing::warn!(error = %e, "dedup recovery failed, retrying"),
            }
            self.pause(&mut backoff)
                .await
                .ok_or(RunError::ShutdownDuringFlush)?;
        }
    }

    /// Makes sure the dedup set holds every committed id a message received at `received`
    /// may repeat: those received since `received - horizon`. Recovery loads the horizon
    /// before the wall clock; a backlog (messages received long before they are read, after
    /// an outage) needs older ones, loaded here once per backlog.
    async fn cover(&mut self, received: u32) -> Result<(), RunError> {
        let needed = received.saturating_sub(self.horizon_secs());
        if needed >= self.loaded_since {
            return Ok(());
        }
        let mut backoff = BACKOFF_MIN;
        loop {
            let (nats_cfg, partition) = (self.nats_cfg, self.cfg.partition);
            let mine = move |customer: &str| owns(nats_cfg, partition, customer);
            let loaded =
                recovery::load_range(&self.db, &mut self.dedup, needed, self.loaded_since, &mine);
            match loaded.await {
                Ok(rows) => {
                    tracing::info!(
                        rows,
                        from = needed,
                        "older committed ids loaded for a backlog"
                    );
                    metrics::dedup_size(self.dedup.committed_len(), self.dedup.committed_bytes());
                    self.loaded_since = needed;
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "loading older committed ids failed, retrying")
                }
            }
            self.pause(&mut backoff)
                .await
                .ok_or(RunError::ShutdownDuringFlush)?;
        }
    }

    /// Sleeps the backoff (doubling it); `None` if shutdown came first.
    async fn pause(&self, backoff: &mut Duration) -> Option<()> {
        tokio::select! {
            _ = self.shutdown.cancelled() => None,
            _ = tokio::time::sleep(*backoff) => {
                *backoff = (*backoff * 2).min(BACKOFF_MAX);
                Some(())
            }
        }
    }

    /// Classifies, deduplicates and folds one message into the batch. Fails only when
    /// shutdown comes while older committed ids are being loaded (the message is then not in
    /// the batch and will be redelivered).
    async fn handle(&mut self, batch: &mut Batch, msg: Message) -> Result<(), RunError> {
        // when JetStream stored the message: what lateness and the horizon are measured from
        let (seq, received_ms) = msg
            .info()
            .map(|i| {
                let ms = ms_from_nanos(i.published.unix_timestamp_nanos());
                (i.stream_sequence, ms)
            })
            // every message of a JetStream consumer has its metadata; the clock is only a
            // fallback for a message without it, which never reaches this loop in practice
            .unwrap_or_else(|_| (0, now_ms()));
        let received = datetime_secs(received_ms);
        self.cover(received).await?;
        self.newest_received = self.newest_received.max(received);
        let subject: &str = &msg.subject;
        let payload = &msg.payload;
        let reject = |batch: &mut Batch, rejection: Rejection| {
            metrics::events("rejected", 1);
            metrics::rejected(rejection.reason);
            batch.add_rejected(Rejected {
                rejection,
                subject: subject.to_owned(),
                stream_seq: seq,
                payload: payload.clone(),
            });
        };
        match self.classifier.classify(subject, payload, received_ms) {
            Err(rejection) => reject(batch, rejection),
            Ok(acc) => {
                let (key, hash) = (acc.key, acc.payload_hash);
                match self.dedup.check(key, hash) {
                    Seen::New => {
                        batch.add_accepted(acc, seq, self.cfg.window_secs);
                        self.dedup.reserve(key, hash, received);
                    }
                    // accepted and duplicates are counted per batch at its flush
                    Seen::Committed | Seen::Pending => batch.duplicates += 1,
                    Seen::Conflict => reject(
                        batch,
                        Rejection {
                            reason: Reason::ConflictingDuplicate,
                            field: Some("id".into()),
                            detail:
                                "this id was already accepted with a different type, time or data"
                                    .into(),
                        },
                    ),
                }
            }
        }
        batch.track(msg, seq);
        Ok(())
    }

    /// At shutdown: takes into `batch` every message already delivered to this instance,
    /// until none arrives for a moment. Bounded: the server delivers at most
    /// `max_ack_pending` unacknowledged messages, and nothing is acknowledged meanwhile.
    async fn take_delivered(&mut self, batch: &mut Batch, messages: &mut pull::Stream) {
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(DELIVERED_IDLE, messages.next()).await {
            if self.handle(batch, msg).await.is_err() {
                return;
            }
        }
    }

    /// Dead letters, commit, dedup, acks — in that order.
    async fn flush(&mut self, batch: &Batch) -> Result<(), RunError> {
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        metrics::events("accepted", batch.events.len() as u64);
        metrics::events("duplicate", batch.duplicates);
        let mut backoff = BACKOFF_MIN;
        while !batch.rejected.is_empty() {
            match dead_letter::publish_all(
                &self.js,
                &self.nats_cfg.dlq_subject_prefix,
                &self.nats_cfg.stream,
                &batch.rejected,
            )
            .await
            {
                Ok(()) => break,
                Err(e) => tracing::warn!(error = %e, "dead-letter publish failed, retrying"),
            }
            self.pause(&mut backoff)
                .await
                .ok_or(RunError::ShutdownDuringFlush)?;
        }
        if !batch.rejected.is_empty() {
            crash::point(CrashPoint::AfterDeadLetters);
        }
        if !batch.events.is_empty() {
            self.commit(batch).await?;
            metrics::committed(batch.events.len(), batch.readings());
            if let Some(oldest) = batch.events.iter().map(|e| e.event.time_ms).min() {
                metrics::event_to_commit((now_ms() - oldest).max(0) as f64 / 1000.0);
            }
        }
        crash::point(CrashPoint::AfterMarker);
        self.dedup.commit_pending();
        let half = batch.to_ack.len() / 2;
        for (i, msg) in batch.to_ack.iter().enumerate() {
            if i == half && i > 0 {
                // the acks sent so far must reach the server before the crash they test
                let _ = self.nats.flush().await;
                crash::point(CrashPoint::MidAck);
            }
            if let Err(e) = msg.ack().await {
                tracing::warn!(error = %e, "ack failed; the message will be redelivered and deduplicated");
            }
        }
        if let Err(e) = self.nats.flush().await {
            tracing::warn!(error = %e, "flushing acks failed");
        }
        metrics::flushed(batch.len(), started.elapsed());
        self.expire_if_due();
        Ok(())
    }

    /// Commits the batch's rows, retrying under a new batch id until the marker is durable.
    async fn commit(&mut self, batch: &Batch) -> Result<(), RunError> {
        let meters = self.classifier.meters();
        let mut backoff = BACKOFF_MIN;
        loop {
            let batch_id = uuid::Uuid::new_v4().to_string();
            let result = sink::commit(
                &self.db,
                batch,
                meters,
                &batch_id,
                &self.cfg.consumer_name(),
                self.cfg.window_secs,
                now_ms(),
            )
            .await;
            match result {
                Ok(()) => return Ok(()),
                Err(sink::CommitError::InDoubt { batch_id, source }) => {
                    tracing::warn!(%batch_id, error = %source, "commit in doubt, asking ClickHouse");
                    if self.resolve_in_doubt(&batch_id).await? {
                        return Ok(());
                    }
                }
                Err(e) => {
                    metrics::commit_failed();
                    tracing::warn!(error = %e, "commit failed, retrying under a new batch id");
                }
            }
            self.pause(&mut backoff)
                .await
                .ok_or(RunError::ShutdownDuringFlush)?;
        }
    }

    /// Polls until ClickHouse says whether the marker of `batch_id` exists.
    async fn resolve_in_doubt(&self, batch_id: &str) -> Result<bool, RunError> {
        let mut backoff = BACKOFF_MIN;
        loop {
            if let Ok(exists) = sink::marker_exists(&self.db, batch_id).await {
                return Ok(exists);
            }
            self.pause(&mut backoff)
                .await
                .ok_or(RunError::ShutdownDuringFlush)?;
        }
    }

    fn expire_if_due(&mut self) {
        if self.last_expiry.elapsed() < EXPIRE_EVERY {
            return;
        }
        self.last_expiry = Instant::now();
        let horizon = self.horizon_secs();
        let dropped = self.dedup.expire(self.newest_received, horizon);
        // ids received before the cutoff are gone: a redelivered message that needs them
        // loads them again (`cover`)
        self.loaded_since = self
            .loaded_since
            .max(self.newest_received.saturating_sub(horizon));
        tracing::debug!(dropped, "dedup ids expired");
        metrics::dedup_size(self.dedup.committed_len(), self.dedup.committed_bytes());
    }
}
