//! Declaring the JetStream streams of the storage contract: `USAGE` over
//! `<subject_prefix>.>` (with partitions, the mapped `<subject_prefix>_p.>`) and the dead-letter stream over `<dlq_subject_prefix>.>`, both file
//! storage with limits retention. Declaring is idempotent; an existing stream is left as is.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::config::NatsConfig;

/// The default name of the invoicer's KV bucket of invoice numbers (`[invoicer]
/// numbers_bucket`), which the NATS users of `tally-gateway users` are scoped to.
pub const DEFAULT_INVOICE_NUMBER_BUCKET: &str = "INVOICE_NUMBERS";

/// A failure to reach NATS or declare a stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot connect to NATS at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("cannot declare stream {stream}: {detail}")]
    Declare { stream: String, detail: String },
}

/// Connects to the configured NATS server, as `nats.user` when one is set. `nats.url` may
/// name several servers, comma-separated (the nodes of a cluster): the client starts with
/// any that answers and fails over to the others (and to those the cluster advertises).
pub async fn connect(cfg: &NatsConfig) -> Result<async_nats::Client, StreamError> {
    let options = if cfg.user.is_empty() {
        async_nats::ConnectOptions::new()
    } else {
        async_nats::ConnectOptions::with_user_and_password(cfg.user.clone(), cfg.password.clone())
    };
    options
        .name("tally")
        .retry_on_initial_connect()
        .connect(server_urls(&cfg.url))
        .await
        .map_err(|e| StreamError::Connect {
            url: cfg.url.clone(),
            detail: e.to_string(),
        })
}

/// The server URLs of `nats.url`: one, or several separated by commas.
pub fn server_urls(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Creates the usage and dead-letter streams if they do not exist; returns the usage stream.
pub async fn ensure(
    js: &jetstream::Context,
    cfg: &NatsConfig,
) -> Result<stream::Stream, StreamError> {
    let usage = declare(js, &cfg.stream, cfg.stream_subjects(), cfg).await?;
    declare(
        js,
        &cfg.dlq_stream,
        format!("{}.>", cfg.dlq_subject_prefix),
        cfg,
    )
    .await?;
    Ok(usage)
}

async fn declare(
    js: &jetstream::Context,
    name: &str,
    subjects: String,
    cfg: &NatsConfig,
) -> Result<stream::Stream, StreamError> {
    js.get_or_create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![subjects],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: Duration::from_secs(cfg.duplicate_window_secs),
        max_age: Duration::from_secs(cfg.max_age_secs),
        num_replicas: cfg.replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|e| StreamError::Declare {
        stream: name.to_owned(),
        detail: e.to_string(),
    })
}

/// Opens the KV bucket `bucket`, creating it if needed with the settings of a KV bucket
/// (`KV_<bucket>` on `$KV.<bucket>.>`, one value per key, rollups allowed, deletes denied,
/// discard new, direct gets, `replicas` copies). The stream is declared directly: the client's
/// `create_key_value` first asks for account info, which it cannot parse from NATS 2.9.
pub async fn kv_bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<jetstream::kv::Store, StreamError> {
    if let Ok(kv) = js.get_key_value(bucket).await {
        return Ok(kv);
    }
    let err = |e: &dyn std::fmt::Display| StreamError::Declare {
        stream: format!("KV_{bucket}"),
        detail: e.to_string(),
    };
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_message_size: 1 << 20,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: replicas.max(1),
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| err(&e))?;
    let kv = js.get_key_value(bucket).await.map_err(|e| err(&e))?;
    // A replicated bucket answers reads only once its replicas have a leader: on a cluster
    // the first get right after creation meets "no responders". Wait for a read to answer.
    for _ in 0..100 {
        if kv.get("tally-created").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(kv)
}

/// Waits until the durable `consumer` of `stream` has acknowledged every message in the
/// stream (nothing pending, nothing unacknowledged). `false` on timeout.
pub async fn wait_drained(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
    timeout: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(mut s) = js.get_stream(stream).await {
            let last_seq = s
                .info()
                .await
                .map(|i| i.state.last_sequence)
                .unwrap_or(u64::MAX);
            if let Ok(info) = s.consumer_info(consumer).await {
                if info.num_pending == 0
                    && info.num_ack_pending == 0
                    && info.ack_floor.stream_sequence >= last_seq
                {
                    return true;
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
