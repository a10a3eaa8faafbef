//! The consume-fold-flush-ack loop: one per aggregator instance, for the partition it holds.
//!
//! [`run`] waits as a standby until it holds its partition's lease (`lease.rs`), takes the
//! partition over (`takeover.rs`), then consumes until SIGTERM or until it finds itself
//! fenced (another instance took the partition over), in which case it drops what it holds,
//! acknowledges nothing and becomes a standby again.
//!
//! Messages come from a durable pull consumer with explicit acks. Each message is classified,
//! deduplicated and folded into the batch in flight. The batch is flushed when it holds
//! `batch_max_events` messages or `batch_max_wait_ms` after its first message: dead letters
//! first, then the commit (intent in the lease, rows, commit in the lease; a failed attempt is
//! aborted and retried under a new batch id, with capped backoff), then the dedup set, then
//! the acks. While a flush runs, no message is pulled, so a slow ClickHouse slows consumption
//! and memory stays bounded by one batch. Between batches, every `seal_every_secs`, the days
//! of the partition that became final are sealed (`seal.rs`).
//!
//! Messages are read in stream order: a takeover recreates the consumer at its ack floor, and
//! a delivery lost in transit (a gap in the consumer's delivery sequence) makes the loop
//! flush what came before it and recreate the consumer the same way, so the first copy of an
//! event JetStream received is always the one decided first.
//!
//! On shutdown the batch in flight, with every message already delivered to this instance,
//! is flushed and acked (the acks confirmed by a request on the same connection), and the
//! lease is released; if that cannot finish, its messages are left unacked for redelivery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::Consumer, Message};
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
use crate::lease::{Lease, LeaseError};
use crate::limits::{self, Bounds, Limits};
use crate::{dead_letter, metrics, recovery, seal, sink, takeover};
use tally_platform::feed::FeedConfig;

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
    #[error(
        "fenced: another instance took the partition over; nothing in flight was acknowledged"
    )]
    Fenced,
}

impl From<LeaseError> for RunError {
    fn from(e: LeaseError) -> RunError {
        match e {
            LeaseError::Fenced { .. } => RunError::Fenced,
            LeaseError::Shutdown => RunError::ShutdownDuringFlush,
            other => RunError::Consumer {
                consumer: String::new(),
                detail: other.to_string(),
            },
        }
    }
}

pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
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

pub(crate) use tally_platform::clock::now_ms;

/// The state of one session: from a takeover until shutdown or fencing.
pub(crate) struct Aggregator<'a> {
    pub(crate) cfg: &'a AggregatorConfig,
    pub(crate) nats_cfg: &'a NatsConfig,
    pub(crate) nats: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) db: Client,
    pub(crate) classifier: &'a Classifier,
    pub(crate) meters: &'a sink::Meters<'a>,
    pub(crate) lease: Arc<Lease>,
    pub(crate) dedup: Dedup,
    /// Per-customer bounds, judged against what was accepted before (`limits.rs`).
    pub(crate) limits: Limits,
    /// The limits hold every committed series and value of the days from this one on.
    pub(crate) groups_from_day: u32,
    pub(crate) shutdown: Shutdown,
    last_expiry: Instant,
    /// The dedup set holds every committed id received since this time (seconds).
    pub(crate) loaded_since: u32,
    /// The newest time JetStream received a message this instance has read (seconds): the
    /// dedup horizon counts back from it.
    newest_received: u32,
    /// Attempts whose intent was written but which did not commit: aborted before (or with)
    /// the next write.
    pending_aborts: Vec<String>,
    /// The newest sealed day of this partition (its start, seconds): events of it and of
    /// earlier days are refused as `window_sealed`.
    pub(crate) sealed_through: Option<u32>,
    /// Where sealing starts when nothing is sealed yet (the first partial's time).
    pub(crate) first_data: Option<u32>,
    /// The consumer delivery sequence of the last message handled (0: none since the
    /// consumer was opened); a jump means a delivery was lost.
    last_delivery: u64,
}

/// What the consuming loop does after a pull gave something (or ended).
enum Next {
    /// Read on.
    Read,
    /// Flush the batch (full, or a gap or the end of the pull comes next).
    Flush,
    /// Flush, then recreate the consumer at its ack floor and read on in stream order.
    Reset,
    /// Stop the session (shutdown while loading older ids): the message stays unacked.
    Stop,
}

/// A message could not be handled now.
enum Unhandled {
    /// A delivery before it was lost: flush, recreate the consumer, read on in order.
    Gap,
    /// Shutdown came while older ids were being loaded.
    Stopped,
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
    // `/readyz` says 503 until the partition is taken over and the consumer is bound
    health::set_ready("consumer", false);
    let js = jetstream::new(nats.clone());
    declare_streams(&js, nats_cfg).await?;
    let classifier = Classifier::new(meters, &nats_cfg.partition_root(cfg.partition), cfg);
    let meter_names = sink::Meters::new(classifier.meters());
    let holder = format!("{}/{}", cfg.consumer_name(), uuid::Uuid::new_v4());
    let lease_cfg = crate::lease::for_aggregator(nats_cfg, cfg);
    if cfg.live_feed {
        declare_feed(&js, nats_cfg, cfg).await?;
    }
    loop {
        tracing::info!(partition = %lease_cfg.key, %holder, "waiting for the partition lease");
        let (lease, takeover) =
            match Lease::acquire(&js, lease_cfg.clone(), holder.clone(), &shutdown).await {
                Ok(held) => held,
                Err(LeaseError::Shutdown) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the lease bucket, retrying");
                    tokio::time::sleep(BACKOFF_MAX).await;
                    continue;
                }
            };
        tracing::info!(previous = ?takeover.previous, unfinished = takeover.unfinished.len(), "partition lease held");
        let lease = Arc::new(lease);
        let renewing = Shutdown::new();
        let _renewer = AbortOnDrop(tokio::spawn({
            let (lease, stop) = (lease.clone(), renewing.clone());
            async move { lease.keep_renewed(stop).await }
        }));
        let mut agg = Aggregator::new(
            cfg,
            nats_cfg,
            &nats,
            &db,
            &classifier,
            &meter_names,
            lease.clone(),
            &shutdown,
        );
        let result = agg.session(takeover).await;
        renewing.cancel();
        health::set_ready("consumer", false);
        match result {
            Ok(()) => {
                lease.release().await;
                finish(&agg).await;
                return Ok(());
            }
            // stopped before anything could be committed: nothing in flight is acked
            Err(RunError::ShutdownDuringFlush) if shutdown.is_cancelled() => return Ok(()),
            Err(RunError::Fenced) => {
                tracing::warn!("fenced: dropping the batch in flight unacknowledged; standing by");
                continue;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Declares the streams at start. A stream that cannot be made to match the configuration
/// stops the aggregator, naming the setting; an unreachable NATS is waited for at the
/// takeover, as everywhere else.
async fn declare_streams(js: &jetstream::Context, nats_cfg: &NatsConfig) -> Result<(), RunError> {
    match streams::ensure(js, nats_cfg).await {
        Err(e @ streams::StreamError::Drift { .. }) => return Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot declare the streams yet; retrying at the takeover");
        }
        Ok(_) => {}
    }
    Ok(())
}

/// Declares the live feed: part of every commit from now on, so declared before the first
/// batch.
async fn declare_feed(
    js: &jetstream::Context,
    nats_cfg: &NatsConfig,
    cfg: &AggregatorConfig,
) -> Result<(), RunError> {
    tally_platform::feed::ensure(js, &FeedConfig::for_nats(nats_cfg))
        .await
        .map_err(|e| RunError::Consumer {
            consumer: cfg.consumer_name(),
            detail: e.to_string(),
        })?;
    Ok(())
}

/// After the last flush: confirms the acks and drains the connection.
async fn finish(agg: &Aggregator<'_>) {
    // the acks are written to the socket, not necessarily read by the server: closing now
    // could lose them (a close with unread input resets the connection). A request answered
    // on the same connection shows the server has read everything sent before it.
    if let Err(e) = agg.js.get_stream(&agg.nats_cfg.stream).await {
        tracing::warn!(error = %e, "confirming the last acks; unconfirmed ones will be redelivered and deduplicated");
    }
    // unsubscribe cleanly so the server stops delivering to this instance
    if let Err(e) = agg.nats.drain().await {
        tracing::debug!(error = %e, "draining the NATS connection");
    }
    tracing::info!("aggregator stopped");
}

/// Whether `customer`'s events come to the instance of `partition` (always, without
/// partitions).
pub(crate) fn owns(nats_cfg: &NatsConfig, partition: Option<u32>, customer: &str) -> bool {
    match nats_cfg.partition_of(customer) {
        Some(p) => partition == Some(p),
        None => true,
    }
}

/// A spawned task that stops when its owner goes.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
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

impl<'a> Aggregator<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: &'a AggregatorConfig,
        nats_cfg: &'a NatsConfig,
        nats: &async_nats::Client,
        db: &Client,
        classifier: &'a Classifier,
        meters: &'a sink::Meters<'a>,
        lease: Arc<Lease>,
        shutdown: &Shutdown,
    ) -> Aggregator<'a> {
        Aggregator {
            cfg,
            nats_cfg,
            nats: nats.clone(),
            js: jetstream::new(nats.clone()),
            db: db.clone(),
            classifier,
            meters,
            lease,
            dedup: Dedup::new(),
            limits: Limits::new(Bounds::from_config(cfg), classifier.meters()),
            groups_from_day: u32::MAX,
            shutdown: shutdown.clone(),
            last_expiry: Instant::now(),
            loaded_since: u32::MAX,
            newest_received: 0,
            pending_aborts: Vec::new(),
            sealed_through: None,
            first_data: None,
            last_delivery: 0,
        }
    }

    /// Takes the partition over, then consumes until shutdown (`Ok`) or fencing.
    async fn session(&mut self, takeover: crate::lease::Takeover) -> Result<(), RunError> {
        takeover::run(self, takeover).await?;
        tracing::info!(consumer = %self.cfg.consumer_name(), stream = %self.nats_cfg.stream, "aggregator consuming");
        health::set_ready("consumer", true);
        let fenced = self.lease.fenced();
        // one batch reused across flushes: its vectors keep their room (no allocation per batch)
        let mut batch = Batch::with_capacity(self.cfg.batch_max_events);
        let mut deadline: Option<tokio::time::Instant> = None;
        // the lag and dead-letter gauges are sampled on their own clock, so they stay true
        // while the aggregator is idle
        let mut gauges = tokio::time::interval(GAUGES_EVERY);
        gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sealing = tokio::time::interval(Duration::from_secs(self.cfg.seal_every_secs));
        sealing.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        'session: while !self.shutdown.is_cancelled() {
            let (mut consumer, mut messages) = match self.open_messages().await {
                Ok(opened) => opened,
                // stopped while NATS was unreachable: flush what was consumed before, if anything
                Err(RunError::ShutdownDuringFlush) => break 'session,
                Err(e) => return Err(e),
            };
            self.last_delivery = 0;
            loop {
                let mut reset = false;
                let flush_due = tokio::select! {
                    biased;
                    _ = fenced.cancelled() => return Err(RunError::Fenced),
                    _ = self.shutdown.cancelled() => {
                        // what the server already delivered to this instance is in flight
                        // too: fold it into the last batch rather than leave it for AckWait
                        self.take_delivered(&mut batch, &mut messages).await;
                        break 'session;
                    }
                    _ = sleep_until(deadline) => true,
                    _ = gauges.tick() => {
                        metrics::limit_usage(self.limits.usage(datetime_secs(now_ms())));
                        // bounded: an unanswered request must not hold a due flush or a SIGTERM
                        let _ = tokio::time::timeout(GAUGES_TIMEOUT, self.sample_gauges(&mut consumer)).await;
                        false
                    }
                    _ = sealing.tick(), if self.cfg.seals() => {
                        // between batches only: nothing in flight can add to a day being sealed
                        self.flush(&batch).await?;
                        batch.clear();
                        deadline = None;
                        self.seal_final_days().await?;
                        false
                    }
                    next = messages.next() => match self.on_next(&mut batch, next, &mut deadline).await {
                        Next::Read => false,
                        Next::Flush => true,
                        Next::Reset => {
                            reset = true;
                            true
                        }
                        Next::Stop => break 'session,
                    },
                };
                if flush_due {
                    self.flush(&batch).await?;
                    batch.clear();
                    deadline = None;
                }
                if reset {
                    tracing::warn!("a delivery was lost in transit; reading again from the ack floor, in stream order");
                    takeover::reset_consumer(self).await?;
                    break;
                }
            }
        }
        self.flush(&batch).await?;
        Ok(())
    }

    /// Folds what the pull gave into `batch` (starting the batch's clock on its first message)
    /// and says what the loop does next.
    async fn on_next(
        &mut self,
        batch: &mut Batch,
        next: Option<<pull::Stream as futures::Stream>::Item>,
        deadline: &mut Option<tokio::time::Instant>,
    ) -> Next {
        match next {
            Some(Ok(msg)) => match self.handle(batch, msg).await {
                Ok(()) => {
                    deadline.get_or_insert_with(|| {
                        tokio::time::Instant::now()
                            + Duration::from_millis(self.cfg.batch_max_wait_ms)
                    });
                    if batch.len() >= self.cfg.batch_max_events {
                        Next::Flush
                    } else {
                        Next::Read
                    }
                }
                Err(Unhandled::Gap) => Next::Reset,
                // stopped while loading older ids: the message stays unacked
                Err(Unhandled::Stopped) => Next::Stop,
            },
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer stream error");
                Next::Read
            }
            None => {
                // a delivery lost in the ended pull would not show as a gap in a new one:
                // read again from the ack floor, in stream order
                tracing::warn!("consumer stream ended; reading again from the ack floor");
                Next::Reset
            }
        }
    }

    /// Declares the streams and opens the durable consumer's message stream, retrying with
    /// backoff while NATS is unavailable.
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
        let consumer = takeover::consumer(self).await?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.cfg.batch_max_events)
            // short-lived pull requests: one left behind by a stopped instance soon expires
            // instead of swallowing new messages until AckWait
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|e| self.consumer_err(&e))?;
        Ok((consumer, messages))
    }

    pub(crate) fn consumer_err(&self, e: &dyn std::fmt::Display) -> RunError {
        RunError::Consumer {
            consumer: self.cfg.consumer_name(),
            detail: e.to_string(),
        }
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
            metrics::stream_size("dead_letter", dlq.cached_info());
        }
        if let Ok(usage) = self.js.get_stream(&self.nats_cfg.stream).await {
            metrics::stream_size("usage", usage.cached_info());
        }
    }

    pub(crate) fn horizon_secs(&self) -> u32 {
        u32::try_from(self.cfg.dedup_horizon_secs).unwrap_or(u32::MAX)
    }

    /// Makes sure the dedup set holds every committed id a message received at `received`
    /// may repeat: those received since `received - horizon`. The takeover loads the horizon
    /// before the wall clock; a backlog (messages received long before they are read, after
    /// an outage) needs older ones, loaded here once per backlog.
    async fn cover(&mut self, received: u32) -> Result<(), RunError> {
        // whole minutes, as the limits count them
        let needed = limits::aligned(received.saturating_sub(self.horizon_secs()));
        if needed >= self.loaded_since {
            return Ok(());
        }
        let mut backoff = BACKOFF_MIN;
        let horizon = self.horizon_secs();
        loop {
            let (nats_cfg, partition) = (self.nats_cfg, self.cfg.partition);
            let mine = move |customer: &str| owns(nats_cfg, partition, customer);
            let loaded = recovery::load_range(
                &self.db,
                &mut self.dedup,
                &mut self.limits,
                needed,
                self.loaded_since,
                horizon,
                &mine,
            );
            match loaded.await {
                Ok(rows) => {
                    tracing::info!(
                        rows,
                        from = needed,
                        "older committed ids loaded for a backlog"
                    );
                    metrics::dedup_size(self.dedup.committed_len(), self.dedup.committed_bytes());
                    self.loaded_since = needed;
                    return takeover::cover_days(self, limits::day_of_secs(needed)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "loading older committed ids failed, retrying");
                }
            }
            self.pause(&mut backoff)
                .await
                .ok_or(RunError::ShutdownDuringFlush)?;
        }
    }

    /// Sleeps the backoff (doubling it); `None` if shutdown or fencing came first.
    pub(crate) async fn pause(&self, backoff: &mut Duration) -> Option<()> {
        let fenced = self.lease.fenced();
        tokio::select! {
            _ = self.shutdown.cancelled() => None,
            _ = fenced.cancelled() => None,
            _ = tokio::time::sleep(*backoff) => {
                *backoff = (*backoff * 2).min(BACKOFF_MAX);
                Some(())
            }
        }
    }

    /// The error to return when [`Aggregator::pause`] gave up.
    pub(crate) fn stopped(&self) -> RunError {
        if self.lease.fenced().is_cancelled() {
            RunError::Fenced
        } else {
            RunError::ShutdownDuringFlush
        }
    }

    /// Classifies, deduplicates and folds one message into the batch.
    async fn handle(&mut self, batch: &mut Batch, msg: Message) -> Result<(), Unhandled> {
        // when JetStream stored the message: what lateness and the horizon are measured from
        let (seq, delivery, received_ms) = msg
            .info()
            .map(|i| {
                let ms = ms_from_nanos(i.published.unix_timestamp_nanos());
                (i.stream_sequence, i.consumer_sequence, ms)
            })
            // every message of a JetStream consumer has its metadata; the clock is only a
            // fallback for a message without it, which never reaches this loop in practice
            .unwrap_or_else(|_| (0, 0, now_ms()));
        if self.last_delivery != 0 && delivery != self.last_delivery + 1 {
            return Err(Unhandled::Gap);
        }
        self.last_delivery = delivery;
        let received = datetime_secs(received_ms);
        self.cover(received).await.map_err(|_| Unhandled::Stopped)?;
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
        let msg_id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str());
        match self
            .classifier
            .classify(subject, msg_id, payload, received_ms)
        {
            Err(rejection) => reject(batch, rejection),
            Ok(acc) => {
                let (key, hash) = (acc.key, acc.payload_hash);
                match self.dedup.check(key, hash) {
                    // a copy of a counted event is a duplicate even when its day is sealed
                    Seen::New if self.is_sealed(acc.event.time_ms) => {
                        reject(batch, self.sealed_rejection());
                    }
                    Seen::New => match self.limits.admit(&limits::Candidate {
                        customer: acc.event.customer(),
                        agent: acc.event.agent(),
                        time_ms: acc.event.time_ms,
                        received_secs: received,
                        readings: &acc.readings,
                    }) {
                        Ok(()) => {
                            batch.add_accepted(acc, seq, self.cfg.window_secs);
                            self.dedup.reserve(key, hash, received);
                        }
                        Err(rejection) => reject(batch, rejection),
                    },
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

    /// Whether an event at `time_ms` falls in a sealed day of this partition.
    fn is_sealed(&self, time_ms: i64) -> bool {
        self.sealed_through
            .is_some_and(|day| time_ms < (i64::from(day) + 86_400) * 1000)
    }

    fn sealed_rejection(&self) -> Rejection {
        Rejection {
            reason: Reason::WindowSealed,
            field: Some("time".into()),
            detail: format!(
                "the event's UTC day is sealed: every day through the one starting {} is final \
                 for this partition, and its usage can no longer change",
                tally_domain::period::rfc3339(i64::from(self.sealed_through.unwrap_or(0)) * 1000)
            ),
        }
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
                .ok_or_else(|| self.stopped())?;
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
            if cfg!(feature = "testkit") && i == half && i > 0 {
                // the acks sent so far must reach the server before the crash they test (only
                // a build with the crash points: `crate::crash`)
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

    /// Runs `write` as one op under the lease: intent (carrying the attempts still to abort),
    /// those aborts, the rows, commit. A failed write is aborted and retried under a new id
    /// until it commits; a lost lease stops everything (`Fenced`), with nothing acknowledged.
    pub(crate) async fn under_lease<F, Fut>(
        &mut self,
        what: &str,
        mut write: F,
    ) -> Result<String, RunError>
    where
        F: FnMut(Client, String) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        self.under_lease_seq(what, |db, id, _| write(db, id)).await
    }

    /// [`Self::under_lease`], `write` also given the op's sequence (the lease revision of its
    /// intent, `bseq`).
    pub(crate) async fn under_lease_seq<F, Fut>(
        &mut self,
        what: &str,
        mut write: F,
    ) -> Result<String, RunError>
    where
        F: FnMut(Client, String, u64) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let mut backoff = BACKOFF_MIN;
        loop {
            let id = uuid::Uuid::new_v4().to_string();
            let seq = self.write_intent(&id).await?;
            let written = async {
                sink::abort(
                    &self.db,
                    &self.pending_aborts,
                    self.cfg.part(),
                    "failed_attempt",
                    now_ms(),
                )
                .await
                .map_err(|e| e.to_string())?;
                write(self.db.clone(), id.clone(), seq).await
            }
            .await;
            match written {
                Ok(()) => {
                    self.pending_aborts.clear();
                    // the crash points are a batch's steps (a seal's are the same code)
                    if what == "batch" {
                        crash::point(CrashPoint::AfterRows);
                    }
                    self.write_commit().await?;
                    return Ok(id);
                }
                Err(e) => {
                    metrics::commit_failed();
                    tracing::warn!(op = what, error = %e, "write failed; aborting the attempt and retrying under a new id");
                    self.pending_aborts.push(id);
                }
            }
            self.pause(&mut backoff)
                .await
                .ok_or_else(|| self.stopped())?;
            // while the lease still names the failed attempt, record its abort before any new
            // intent: the list an intent carries never grows past what one attempt left
            self.abort_pending(&mut backoff).await?;
        }
    }

    /// Writes the pending aborts, retrying with backoff until ClickHouse takes them.
    async fn abort_pending(&mut self, backoff: &mut Duration) -> Result<(), RunError> {
        loop {
            let part = self.cfg.part();
            match sink::abort(
                &self.db,
                &self.pending_aborts,
                part,
                "failed_attempt",
                now_ms(),
            )
            .await
            {
                Ok(()) => {
                    self.pending_aborts.clear();
                    // as after a takeover: no read may mix the aborted rows with the retry's
                    tokio::time::sleep(crate::takeover::ABORT_SETTLE).await;
                    return Ok(());
                }
                Err(e) => tracing::warn!(error = %e, "recording an aborted attempt, retrying"),
            }
            self.pause(backoff).await.ok_or_else(|| self.stopped())?;
        }
    }

    /// The intent in the lease, retried while NATS cannot be reached; returns the op's
    /// sequence.
    async fn write_intent(&mut self, id: &str) -> Result<u64, RunError> {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.lease.intent(id, &self.pending_aborts).await {
                Ok(seq) => return Ok(seq),
                Err(LeaseError::Fenced { .. }) => return Err(RunError::Fenced),
                Err(e) => tracing::warn!(error = %e, "writing the intent, retrying"),
            }
            self.pause(&mut backoff)
                .await
                .ok_or_else(|| self.stopped())?;
        }
    }

    /// The commit in the lease, retried while NATS cannot be reached (the rows are durable;
    /// if the partition is taken over meanwhile, the new holder aborts them).
    async fn write_commit(&mut self) -> Result<(), RunError> {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.lease.commit().await {
                Ok(()) => return Ok(()),
                Err(LeaseError::Fenced { .. }) => return Err(RunError::Fenced),
                Err(e) => tracing::warn!(error = %e, "writing the commit, retrying"),
            }
            self.pause(&mut backoff)
                .await
                .ok_or_else(|| self.stopped())?;
        }
    }

    /// Commits the batch's rows under the lease; with the live feed on, publishes the batch's
    /// notice after its rows and before the commit (a notice of a batch that is then aborted
    /// is discounted by readers like its rows: `platform::feed`).
    async fn commit(&mut self, batch: &Batch) -> Result<(), RunError> {
        let (meters, cfg) = (self.meters, self.cfg);
        let consumer = cfg.consumer_name();
        let feed = cfg
            .live_feed
            .then(|| (self.js.clone(), FeedConfig::for_nats(self.nats_cfg)));
        self.under_lease_seq("batch", |db, id, bseq| {
            let consumer = consumer.clone();
            let feed = feed.clone();
            async move {
                let target = sink::Target {
                    batch_id: &id,
                    bseq,
                    part: cfg.part(),
                    consumer: &consumer,
                    window_secs: cfg.window_secs,
                    now_ms: now_ms(),
                };
                let partials = sink::write(&db, batch, meters, target)
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some((js, feed_cfg)) = feed {
                    let notices = crate::feed::notices(
                        batch,
                        &partials,
                        meters,
                        cfg.window_secs,
                        (cfg.part(), &id, bseq),
                    );
                    tally_platform::feed::publish(&js, &feed_cfg, &notices)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        })
        .await
        .map(|_| ())
    }

    /// Seals, in order, the days of this partition that became final (at most
    /// `seal_days_max`). A failed look is logged and retried at the next one.
    async fn seal_final_days(&mut self) -> Result<(), RunError> {
        let until = match seal::final_until(
            &self.js,
            &self.nats_cfg.stream,
            &self.cfg.consumer_name(),
        )
        .await
        {
            Ok(until) => until,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell which days are final; retrying at the next look");
                return Ok(());
            }
        };
        let last_final =
            until.and_then(|u| seal::last_final_day(u, self.cfg.allowed_lateness_secs));
        if self.sealed_through.is_none() {
            // nothing sealed yet: start at the first day with data now (it may have arrived
            // since the takeover), or at the last final day when there is none; every event
            // still to come is for a later day, or is refused
            match seal::first_data(&self.db, self.cfg.part()).await {
                Ok(first) => self.first_data = first.or(last_final),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read where sealing starts; retrying at the next look");
                    return Ok(());
                }
            }
        }
        let days = seal::days_to_seal(
            self.sealed_through,
            self.first_data,
            last_final,
            self.cfg.seal_days_max,
        );
        for day in days {
            let part = self.cfg.part();
            let rows = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let counted = rows.clone();
            self.under_lease("seal", move |db, id| {
                let counted = counted.clone();
                async move {
                    let n = seal::seal_day(&db, &id, part, day, now_ms())
                        .await
                        .map_err(|e| e.to_string())?;
                    counted.store(n, std::sync::atomic::Ordering::Relaxed);
                    Ok(())
                }
            })
            .await?;
            self.sealed_through = Some(day);
            let n = rows.load(std::sync::atomic::Ordering::Relaxed);
            metrics::sealed(1, n);
            metrics::sealed_through(day);
            tracing::info!(day, rows = n, "day sealed");
        }
        Ok(())
    }

    fn expire_if_due(&mut self) {
        if self.last_expiry.elapsed() < EXPIRE_EVERY {
            return;
        }
        self.last_expiry = Instant::now();
        let horizon = self.horizon_secs();
        // whole minutes, as the limits count them
        let cutoff = limits::aligned(self.newest_received.saturating_sub(horizon));
        let dropped = self.dedup.expire_before(cutoff);
        // ids received before the cutoff are gone: a redelivered message that needs them
        // loads them again (`cover`)
        self.loaded_since = self.loaded_since.max(cutoff);
        self.groups_from_day = self.groups_from_day.max(limits::day_of_secs(cutoff));
        let sealed = self.sealed_through.map(limits::day_of_secs);
        self.limits.expire(cutoff, self.groups_from_day, sealed);
        tracing::debug!(dropped, "dedup ids expired");
        metrics::dedup_size(self.dedup.committed_len(), self.dedup.committed_bytes());
    }
}
