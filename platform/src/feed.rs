//! The live usage feed: what each committed batch of the aggregator added, published for the
//! spend deciders, which must see committed usage within a second without querying storage
//! per request.
//!
//! Each batch of a partition publishes, after its rows are written and before its commit in
//! the partition lease, a [`Notice`]: its partials (the rows billing reads, as
//! [`UsageRow`]s) and the spend holds its events settle, tagged with the batch id and its
//! sequence (`bseq`, the lease revision of the batch's intent, also written with its rows).
//! Large batches are split into chunks; a batch is complete when all its chunks arrived.
//! Messages go to the JetStream stream `<usage stream>_FEED` on `<subject_prefix>_feed.<part>`
//! with `Nats-Msg-Id` `<batch>.<chunk>`, so a retried publish is stored once.
//!
//! A notice is *not* a commit: the batch may still be aborted (a crash between the notice and
//! the commit, a fenced instance). A reader counts a batch like storage does: unless its id is
//! in `usage_aborts`. A reader that starts from storage reads every batch up to a sequence
//! (`bseq <= n`) there and takes later ones from the feed ([`join_point`]).
//!
//! This module owns the feed's stream, subjects, message format and publishing; it decides
//! nothing about usage or money.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::config::NatsConfig;
use crate::lease::LeaseValue;
use crate::usage::UsageRow;

/// The largest JSON body of one feed message (NATS refuses messages above 1 MiB by default).
pub const CHUNK_BYTES_MAX: usize = 512 * 1024;

/// Where the feed lives.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// Stream: `<usage stream>_FEED`.
    pub stream: String,
    /// Subject root: `<subject_prefix>_feed`; partition `p` publishes on `<root>.<p>`.
    pub subject_root: String,
    /// How long notices are kept. A reader that was away longer rebuilds from storage.
    pub max_age: Duration,
    /// JetStream's duplicate window for `Nats-Msg-Id`.
    pub duplicate_window: Duration,
    /// Replicas (a NATS cluster: 3).
    pub replicas: usize,
}

impl FeedConfig {
    /// The feed of the usage stream `nats` configures: kept one hour.
    pub fn for_nats(nats: &NatsConfig) -> FeedConfig {
        FeedConfig {
            stream: format!("{}_FEED", nats.stream),
            subject_root: format!("{}_feed", nats.subject_prefix),
            max_age: Duration::from_secs(3600),
            duplicate_window: Duration::from_secs(nats.duplicate_window_secs),
            replicas: nats.replicas.max(1),
        }
    }

    /// The subject of partition `part`'s notices.
    pub fn subject(&self, part: u32) -> String {
        format!("{}.{part}", self.subject_root)
    }
}

/// A spend hold settled by an event of the batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRef {
    pub customer: String,
    pub hold: String,
}

/// One chunk of a batch's notice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notice {
    pub part: u32,
    pub batch: String,
    /// The batch's sequence in its partition (the lease revision of its intent).
    pub bseq: u64,
    pub chunk: u32,
    pub chunks: u32,
    pub rows: Vec<UsageRow>,
    /// Holds settled by the batch's events (in chunk 0).
    pub holds: Vec<HoldRef>,
}

/// Why the feed could not be declared, published to or read.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("feed stream {stream}: {detail}")]
    Stream { stream: String, detail: String },
    #[error("publishing to the feed: {0}")]
    Publish(String),
    #[error("feed notice is not readable: {0}")]
    Malformed(String),
}

/// The feed stream as `cfg` configures it.
fn stream_config(cfg: &FeedConfig) -> stream::Config {
    stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![format!("{}.>", cfg.subject_root)],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: cfg.duplicate_window,
        max_age: cfg.max_age,
        max_bytes: 1 << 30,
        num_replicas: cfg.replicas.max(1),
        ..Default::default()
    }
}

/// Creates the feed stream if it does not exist, else makes its duplicate window, age, size
/// and replicas match `cfg` (replicas only upwards, as the usage stream's:
/// [`crate::streams::replicas_change`]; fewer is an error naming `nats.replicas`).
pub async fn ensure(
    js: &jetstream::Context,
    cfg: &FeedConfig,
) -> Result<stream::Stream, FeedError> {
    let want = stream_config(cfg);
    let failed = |detail: String| FeedError::Stream {
        stream: cfg.stream.clone(),
        detail,
    };
    let stream = js
        .get_or_create_stream(want.clone())
        .await
        .map_err(|e| failed(e.to_string()))?;
    let have = stream.cached_info().config.clone();
    let replicas = crate::streams::replicas_change(&have, &want);
    if let Some(c) = replicas.as_ref().filter(|c| !c.updatable) {
        return Err(failed(format!(
            "it has {} where setting `{}` wants {}; lower them by hand (docs/OPERATIONS.md, \
             \"Changing stream settings\")",
            c.have, c.setting, c.want
        )));
    }
    let same = have.duplicate_window == want.duplicate_window
        && have.max_age == want.max_age
        && have.max_bytes == want.max_bytes
        && replicas.is_none();
    if same {
        return Ok(stream);
    }
    let updated = stream::Config {
        duplicate_window: want.duplicate_window,
        max_age: want.max_age,
        max_bytes: want.max_bytes,
        num_replicas: want.num_replicas.max(have.num_replicas),
        ..have
    };
    js.update_stream(&updated)
        .await
        .map_err(|e| failed(format!("updating it to the configuration failed: {e}")))?;
    tracing::info!(stream = %cfg.stream, "feed stream settings changed to the configuration");
    js.get_stream(&cfg.stream)
        .await
        .map_err(|e| failed(e.to_string()))
}

/// Splits a batch's rows into notices of at most [`CHUNK_BYTES_MAX`] JSON bytes each (a
/// batch without rows still gets one notice, for its holds). Pure.
pub fn chunks(
    part: u32,
    batch: &str,
    bseq: u64,
    rows: Vec<UsageRow>,
    holds: Vec<HoldRef>,
) -> Vec<Notice> {
    let mut groups: Vec<Vec<UsageRow>> = vec![Vec::new()];
    let mut size = 0usize;
    for row in rows {
        // a row's JSON is a few hundred bytes; its serialization cannot fail
        let len = serde_json::to_vec(&row).map_or(0, |v| v.len()) + 1;
        if size + len > CHUNK_BYTES_MAX - 4096 && !groups.last().is_none_or(Vec::is_empty) {
            groups.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(last) = groups.last_mut() {
            last.push(row);
        }
    }
    let total = u32::try_from(groups.len()).unwrap_or(u32::MAX);
    let mut holds = Some(holds);
    groups
        .into_iter()
        .enumerate()
        .map(|(i, rows)| Notice {
            part,
            batch: batch.to_owned(),
            bseq,
            chunk: u32::try_from(i).unwrap_or(u32::MAX),
            chunks: total,
            rows,
            holds: holds.take().unwrap_or_default(),
        })
        .collect()
}

/// Publishes the notices of one batch and waits until JetStream stored every one.
pub async fn publish(
    js: &jetstream::Context,
    cfg: &FeedConfig,
    notices: &[Notice],
) -> Result<(), FeedError> {
    let mut acks = Vec::with_capacity(notices.len());
    for n in notices {
        let body = serde_json::to_vec(n).map_err(|e| FeedError::Publish(e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{}.{}", n.batch, n.chunk).as_str());
        let ack = js
            .publish_with_headers(cfg.subject(n.part), headers, body.into())
            .await
            .map_err(|e| FeedError::Publish(e.to_string()))?;
        acks.push(ack);
    }
    for ack in acks {
        ack.await.map_err(|e| FeedError::Publish(e.to_string()))?;
    }
    Ok(())
}

/// Reads one feed message.
pub fn parse(payload: &[u8]) -> Result<Notice, FeedError> {
    serde_json::from_slice(payload).map_err(|e| FeedError::Malformed(e.to_string()))
}

/// Where a reader that starts from storage joins the feed of one partition: storage holds
/// every batch with `bseq <= committed_through` that counts, the feed the later ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinPoint {
    pub committed_through: u64,
    /// When the lease key was last written (unix ms, the server's clock): every notice of a
    /// batch after the join point was published after it (a batch in flight at the join
    /// point wrote its intent then). `None`: the partition never wrote.
    pub since_ms: Option<i64>,
    /// A batch was in flight (its intent, possibly renewed, is the key's value).
    pub in_flight: bool,
}

/// Whether JetStream says the bucket's stream does not exist.
async fn bucket_missing(js: &jetstream::Context, bucket: &str) -> bool {
    use async_nats::jetstream::context::GetStreamErrorKind;
    match js.get_stream(format!("KV_{bucket}")).await {
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            GetStreamErrorKind::JetStream(j)
                if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
        ),
    }
}

/// The join point of a partition from its lease key (`bucket`, `key`): the key's revision
/// when nothing is in flight, else the revision before the in-flight intent (whose batch may
/// be in storage only in part). `committed_through` 0: the partition never wrote.
///
/// Read storage after this: every batch up to the point committed before it, so its rows are
/// all there; a batch after it has a higher `bseq` and its notice is in the feed.
pub async fn join_point(
    js: &jetstream::Context,
    bucket: &str,
    key: &str,
) -> Result<JoinPoint, FeedError> {
    let err = |e: &dyn std::fmt::Display| FeedError::Stream {
        stream: format!("KV_{bucket}"),
        detail: e.to_string(),
    };
    let store: kv::Store = match js.get_key_value(bucket).await {
        Ok(s) => s,
        // no bucket: no aggregator ever ran; any other error (a timeout, no permission) is
        // not "nothing committed": the caller retries
        Err(e) if !bucket_missing(js, bucket).await => return Err(err(&e)),
        Err(_) => {
            return Ok(JoinPoint {
                committed_through: 0,
                since_ms: None,
                in_flight: false,
            })
        }
    };
    let entry = store.entry(key).await.map_err(|e| err(&e))?;
    let Some(entry) = entry else {
        return Ok(JoinPoint {
            committed_through: 0,
            since_ms: None,
            in_flight: false,
        });
    };
    let in_flight = matches!(
        LeaseValue::parse(&entry.value),
        Some(LeaseValue::Intent { .. })
    );
    let since_ms = i64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000).ok();
    Ok(JoinPoint {
        committed_through: if in_flight {
            entry.revision.saturating_sub(1)
        } else {
            entry.revision
        },
        since_ms,
        in_flight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::Units;

    fn row(i: usize) -> UsageRow {
        UsageRow {
            customer: format!("c{i}"),
            agent: "a".into(),
            meter: "m".into(),
            aggregation: "SUM".into(),
            group_key: "{}".into(),
            group_names: vec![],
            group_values: vec![],
            start: 60,
            end: 120,
            events: 1,
            sum: Units(1_000_000_000),
            min: Units(1_000_000_000),
            max: Units(1_000_000_000),
            latest: Units(1_000_000_000),
            latest_time_ms: 61_000,
            latest_event_id: "x".repeat(100),
            unique_values: vec![],
        }
    }

    #[test]
    fn a_batch_is_split_into_chunks_that_fit_a_message_and_keep_every_row() {
        let rows: Vec<UsageRow> = (0..10_000).map(row).collect();
        let hold = HoldRef {
            customer: "c1".into(),
            hold: "h".into(),
        };
        let notices = chunks(3, "b", 7, rows, vec![hold.clone()]);
        assert!(notices.len() > 1);
        let n = notices.len() as u32;
        let mut seen = 0;
        for (i, notice) in notices.iter().enumerate() {
            let body = serde_json::to_vec(notice).unwrap();
            assert!(body.len() <= CHUNK_BYTES_MAX, "{}", body.len());
            assert_eq!((notice.chunk, notice.chunks), (i as u32, n));
            assert_eq!(notice.holds.is_empty(), i > 0, "holds only in chunk 0");
            let back = parse(&body).unwrap();
            assert_eq!(back.rows.len(), notice.rows.len());
            assert_eq!(back.rows[0].sum, Units(1_000_000_000));
            seen += notice.rows.len();
        }
        assert_eq!(seen, 10_000);
        let empty = chunks(0, "b", 1, vec![], vec![hold]);
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0].holds.len(), 1);
    }
}
