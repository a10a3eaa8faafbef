//! Declaring the JetStream streams of the storage contract: `USAGE` over
//! `<subject_prefix>.>` (with partitions, the mapped `<subject_prefix>_p.>`) and the
//! dead-letter stream over `<dlq_subject_prefix>.>`, both file storage with limits retention,
//! each with its own duplicate window and size limits; and connecting to NATS (as the
//! service's user, with its own reply subjects, over TLS when configured).
//!
//! Declaring is idempotent and makes an existing stream match the configuration: the
//! settings JetStream can change (duplicate window, maximum age, bytes and messages, discard
//! policy) are updated, each change logged; one it cannot change (storage, retention) or
//! must not change under a running deployment (its subjects: messages on the old ones would
//! no longer be consumed) stops the service with an error naming the setting
//! ([`StreamError::Drift`]). Replicas follow `nats.replicas` upwards (JetStream adds copies
//! in place); fewer replicas than the stream has stop the service naming the setting, since
//! a configuration mistake must never drop copies of stored usage.

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
    #[error(
        "stream {stream} has {have} where setting `{setting}` wants {want}, and this cannot be \
         changed in place (docs/OPERATIONS.md, \"Changing stream settings\")"
    )]
    Drift {
        stream: String,
        setting: &'static str,
        have: String,
        want: String,
    },
}

/// The reply-subject prefix of `user`: `_INBOX.<user>`, the only replies its NATS
/// permissions let it receive (`nats-config`); `_INBOX` without a user.
pub fn inbox_prefix(user: &str) -> String {
    if user.is_empty() {
        "_INBOX".to_owned()
    } else {
        format!("_INBOX.{user}")
    }
}

/// Connects to the configured NATS server, as `nats.user` when one is set. `nats.url` may
/// name several servers, comma-separated (the nodes of a cluster): the client starts with
/// any that answers and fails over to the others (and to those the cluster advertises).
pub async fn connect(cfg: &NatsConfig) -> Result<async_nats::Client, StreamError> {
    let mut options = if cfg.user.is_empty() {
        async_nats::ConnectOptions::new()
    } else {
        async_nats::ConnectOptions::with_user_and_password(cfg.user.clone(), cfg.password.clone())
    };
    // replies (JetStream acks, pulled messages, KV reads) arrive under the user's own prefix:
    // no other user may subscribe there
    options = options.custom_inbox_prefix(inbox_prefix(&cfg.user));
    if !cfg.tls_ca_file.is_empty() {
        options = options.add_root_certificates(cfg.tls_ca_file.clone().into());
    }
    if !cfg.tls_cert_file.is_empty() {
        options = options.add_client_certificate(
            cfg.tls_cert_file.clone().into(),
            cfg.tls_key_file.clone().into(),
        );
    }
    options
        .require_tls(cfg.tls_required)
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

/// Declares the usage and dead-letter streams, creating or updating them to match `cfg`
/// (see the module docs); returns the usage stream.
pub async fn ensure(
    js: &jetstream::Context,
    cfg: &NatsConfig,
) -> Result<stream::Stream, StreamError> {
    let usage = declare(js, usage_config(cfg), Kind::Usage).await?;
    declare(js, dead_letter_config(cfg), Kind::DeadLetter).await?;
    Ok(usage)
}

/// The usage stream as `cfg` configures it: discard new, so a full stream refuses events
/// instead of dropping any.
pub fn usage_config(cfg: &NatsConfig) -> stream::Config {
    stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![cfg.stream_subjects()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: Duration::from_secs(cfg.duplicate_window_secs),
        max_age: Duration::from_secs(cfg.max_age_secs),
        max_bytes: cfg.max_bytes,
        max_messages: cfg.max_msgs,
        discard: stream::DiscardPolicy::New,
        num_replicas: cfg.replicas.max(1),
        ..Default::default()
    }
}

/// The dead-letter stream as `cfg` configures it: its own duplicate window, discard old, so
/// refusals never stop the aggregator.
pub fn dead_letter_config(cfg: &NatsConfig) -> stream::Config {
    stream::Config {
        name: cfg.dlq_stream.clone(),
        subjects: vec![format!("{}.>", cfg.dlq_subject_prefix)],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: Duration::from_secs(cfg.dlq_duplicate_window_secs),
        max_age: Duration::from_secs(cfg.max_age_secs),
        max_bytes: cfg.dlq_max_bytes,
        max_messages: -1,
        discard: stream::DiscardPolicy::Old,
        num_replicas: cfg.replicas.max(1),
        ..Default::default()
    }
}

/// Which of the two streams a configuration is for (their settings have their own names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Usage,
    DeadLetter,
}

/// One setting of a stream that differs from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The configuration setting it comes from.
    pub setting: &'static str,
    pub have: String,
    pub want: String,
    /// Whether JetStream can change it in place.
    pub updatable: bool,
}

/// How the stream `have` differs from `want` in the settings Tally manages (pure); `kind`
/// names the settings (the dead-letter stream has its own duplicate window and size).
pub fn drift(have: &stream::Config, want: &stream::Config, kind: Kind) -> Vec<Change> {
    let dead_letter = kind == Kind::DeadLetter;
    let mut out = Vec::new();
    let mut check = |setting: &'static str, h: String, w: String, updatable: bool| {
        if h != w {
            out.push(Change {
                setting,
                have: h,
                want: w,
                updatable,
            });
        }
    };
    let (window, bytes) = if dead_letter {
        ("nats.dlq_duplicate_window_secs", "nats.dlq_max_bytes")
    } else {
        ("nats.duplicate_window_secs", "nats.max_bytes")
    };
    let subjects = if dead_letter {
        "nats.dlq_subject_prefix"
    } else {
        "nats.subject_prefix` / `nats.partitions"
    };
    check(
        subjects,
        format!("subjects {:?}", have.subjects),
        format!("subjects {:?}", want.subjects),
        false,
    );
    check(
        "nats (file storage)",
        format!("storage {:?}", have.storage),
        format!("storage {:?}", want.storage),
        false,
    );
    check(
        "nats (limits retention)",
        format!("retention {:?}", have.retention),
        format!("retention {:?}", want.retention),
        false,
    );
    let secs = |d: Duration| format!("{} s", d.as_secs_f64());
    check(
        window,
        secs(have.duplicate_window),
        secs(want.duplicate_window),
        true,
    );
    check(
        "nats.max_age_secs",
        secs(have.max_age),
        secs(want.max_age),
        true,
    );
    check(
        bytes,
        have.max_bytes.to_string(),
        want.max_bytes.to_string(),
        true,
    );
    if !dead_letter {
        check(
            "nats.max_msgs",
            have.max_messages.to_string(),
            want.max_messages.to_string(),
            true,
        );
    }
    check(
        "nats (discard policy)",
        format!("discard {:?}", have.discard),
        format!("discard {:?}", want.discard),
        true,
    );
    if let Some(c) = replicas_change(have, want) {
        out.push(c);
    }
    out
}

/// The replicas of `have` against `want`: more are added in place (JetStream copies the
/// stream to new peers); fewer are never applied by a service (it would drop copies of
/// stored usage on a configuration mistake: lower them by hand, docs/OPERATIONS.md). Pure.
pub fn replicas_change(have: &stream::Config, want: &stream::Config) -> Option<Change> {
    let (h, w) = (have.num_replicas.max(1), want.num_replicas.max(1));
    (h != w).then(|| Change {
        setting: "nats.replicas",
        have: format!("{h} replicas"),
        want: format!("{w} replicas"),
        updatable: w > h,
    })
}

/// Creates the stream `want` if it does not exist, else makes it match `want` (module docs).
async fn declare(
    js: &jetstream::Context,
    want: stream::Config,
    kind: Kind,
) -> Result<stream::Stream, StreamError> {
    let name = want.name.clone();
    let declare_err = |detail: String| StreamError::Declare {
        stream: name.clone(),
        detail,
    };
    let bytes_setting = match kind {
        Kind::Usage => "nats.max_bytes",
        Kind::DeadLetter => "nats.dlq_max_bytes",
    };
    let stream = get_or_create(js, &want).await.map_err(|e| {
        let detail = e.to_string();
        if detail.contains("insufficient storage") {
            // JetStream reserves a stream's max bytes on the server when creating it
            declare_err(format!(
                "{detail}: the server cannot reserve `{bytes_setting}` = {} bytes; lower \
                     it or give JetStream more storage (max_file_store)",
                want.max_bytes
            ))
        } else {
            declare_err(detail)
        }
    })?;
    let have = stream.cached_info().config.clone();
    let changes = drift(&have, &want, kind);
    if changes.is_empty() {
        return Ok(stream);
    }
    if let Some(refused) = refused_drift(&name, &changes, &want, &stream.cached_info().state, kind)
    {
        return Err(refused);
    }
    let updated = stream::Config {
        duplicate_window: want.duplicate_window,
        max_age: want.max_age,
        max_bytes: want.max_bytes,
        max_messages: want.max_messages,
        discard: want.discard,
        num_replicas: want.num_replicas.max(have.num_replicas),
        ..have
    };
    js.update_stream(&updated).await.map_err(|e| {
        declare_err(format!(
            "updating it to the configuration ({}) failed: {e}",
            changes
                .iter()
                .map(|c| format!("`{}` {} -> {}", c.setting, c.have, c.want))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    for c in &changes {
        tracing::info!(stream = %name, setting = c.setting, from = %c.have, to = %c.want, "stream setting changed to the configuration");
    }
    js.get_stream(&name)
        .await
        .map_err(|e| declare_err(e.to_string()))
}

/// The drift `declare` refuses to apply (pure): a setting that cannot change in place, or
/// (a usage stream) a limit below what the stream holds, which would make JetStream delete
/// its oldest messages at once, consumed or not: refused, never done silently.
fn refused_drift(
    name: &str,
    changes: &[Change],
    want: &stream::Config,
    state: &stream::State,
    kind: Kind,
) -> Option<StreamError> {
    if let Some(c) = changes.iter().find(|c| !c.updatable) {
        return Some(StreamError::Drift {
            stream: name.to_owned(),
            setting: c.setting,
            have: c.have.clone(),
            want: c.want.clone(),
        });
    }
    let below = |limit: i64, held: u64| limit > 0 && u64::try_from(limit).unwrap_or(0) < held;
    if kind == Kind::Usage && below(want.max_bytes, state.bytes) {
        return Some(StreamError::Drift {
            stream: name.to_owned(),
            setting: "nats.max_bytes",
            have: format!("{} bytes stored", state.bytes),
            want: want.max_bytes.to_string(),
        });
    }
    if kind == Kind::Usage && below(want.max_messages, state.messages) {
        return Some(StreamError::Drift {
            stream: name.to_owned(),
            setting: "nats.max_msgs",
            have: format!("{} messages stored", state.messages),
            want: want.max_messages.to_string(),
        });
    }
    None
}

/// How many times a stream creation is tried in all when the server answered "error creating
/// store for stream" (JetStream error 10049) or did not answer in time, and the pause before
/// the first retry (doubled each time: 0.1 + 0.2 + 0.4 + 0.8 s, plus the requests' own
/// timeouts).
const STORE_CREATE_TRIES: u32 = 5;
const STORE_CREATE_BACKOFF: Duration = Duration::from_millis(100);

/// `get_or_create_stream`, retried while the server answers 10049 or does not answer within
/// the context's timeout. The server hides the cause of 10049 behind one fixed sentence (it
/// logs it); it is transient (a store being torn down or set up under load, a busy disk), and
/// CI met it once creating a fresh stream under a unique name. On a cluster, creating a
/// replicated stream answers only once its group has elected a leader, which on a loaded
/// machine took over the client's 5 s (the chaos run's invoicer creating its R3 numbers
/// bucket); the stream is created all the same, and the retry's info request finds it. Any
/// other error is returned at once.
async fn get_or_create(
    js: &jetstream::Context,
    want: &stream::Config,
) -> Result<stream::Stream, jetstream::context::CreateStreamError> {
    let mut pause = STORE_CREATE_BACKOFF;
    let mut tries = 1;
    loop {
        match js.get_or_create_stream(want.clone()).await {
            Err(e) if tries < STORE_CREATE_TRIES && retried(&e) => {
                tracing::warn!(stream = %want.name, tries, error = %e, "the server did not create the stream; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
                tries += 1;
            }
            other => return other,
        }
    }
}

/// Whether a stream creation that failed with `e` is tried again: the server's "error creating
/// store for stream" (10049), or no answer in time.
fn retried(e: &jetstream::context::CreateStreamError) -> bool {
    match e.kind() {
        jetstream::context::CreateStreamErrorKind::JetStream(j) => {
            j.error_code() == jetstream::ErrorCode::STREAM_CREATE
        }
        jetstream::context::CreateStreamErrorKind::TimedOut => true,
        _ => false,
    }
}

/// Opens the KV bucket `bucket`, creating it if needed with the settings of a KV bucket
/// (`KV_<bucket>` on `$KV.<bucket>.>`, one value per key, rollups allowed, deletes denied,
/// discard new, direct gets, `replicas` copies). The stream is declared directly: the client's
/// `create_key_value` first asks for account info, which it cannot parse from NATS 2.9.
///
/// Returns once a read of the bucket answers (see [`wait_readable`]), whether this call
/// created the bucket or found it: on a cluster, a process that finds a bucket another one
/// has just created (two invoicers starting at once) would otherwise read before any replica
/// answers direct gets and fail with "no responders".
pub async fn kv_bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<jetstream::kv::Store, StreamError> {
    let err = |e: &dyn std::fmt::Display| StreamError::Declare {
        stream: format!("KV_{bucket}"),
        detail: e.to_string(),
    };
    let deadline = tokio::time::Instant::now() + KV_READABLE_WITHIN;
    let mut created = false;
    let kv = loop {
        match js.get_key_value(bucket).await {
            Ok(kv) => break kv,
            // on a cluster a stream just created (by this process or, at the same moment,
            // another) can answer "stream not found" to the next info request for a moment
            Err(e) if created && tokio::time::Instant::now() < deadline => {
                tracing::info!(bucket, error = %e, "the KV bucket just created is not found yet; asking again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) if created => return Err(err(&e)),
            Err(_) => {
                get_or_create(
                    js,
                    &stream::Config {
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
                    },
                )
                .await
                .map_err(|e| err(&e))?;
                created = true;
            }
        }
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    wait_readable(&kv, bucket, left.max(Duration::from_secs(1)))
        .await
        .map_err(|e| err(&e))?;
    Ok(kv)
}

/// How long [`kv_bucket`] waits in all for a bucket it created to be found and for a new or
/// found bucket to answer a read: a replicated bucket's group elects a leader and its
/// replicas subscribe to direct gets within seconds (about 6 s when a node has just died).
const KV_READABLE_WITHIN: Duration = Duration::from_secs(30);

/// Waits until a read of `kv` answers (the key read need not exist). A replicated bucket
/// answers reads only once its replicas serve direct gets: right after creation, or while its
/// group has no leader, a get meets "no responders" (or times out). The last error when
/// nothing answered within `within`.
async fn wait_readable(
    kv: &jetstream::kv::Store,
    bucket: &str,
    within: Duration,
) -> Result<(), jetstream::kv::EntryError> {
    let deadline = tokio::time::Instant::now() + within;
    let mut logged = false;
    loop {
        // a read that gets no answer at all is bounded by the client's request timeout
        let read = tokio::time::timeout(Duration::from_secs(2), kv.get("tally-created")).await;
        match read {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) if tokio::time::Instant::now() >= deadline => {
                return Err(jetstream::kv::EntryError::new(
                    jetstream::kv::EntryErrorKind::TimedOut,
                ))
            }
            other => {
                if !logged {
                    let error = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_owned(),
                    };
                    tracing::info!(bucket, %error, "the KV bucket does not answer reads yet; waiting");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Waits until the durable `consumer` of `stream` has acknowledged every message of the
/// stream it consumes (nothing pending, nothing unacknowledged, its ack floor at or past the
/// last of those messages). `false` on timeout.
///
/// The last message a consumer consumes is the stream's last one when it has no filter, else
/// the last one on its filter subjects: a filtered consumer's ack floor (a partition's) stops
/// at its own last message on nats-server 2.10 and later, while 2.9 moved it on to the
/// stream's last sequence; both reach that message.
pub async fn wait_drained(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
    timeout: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if drained(js, stream, consumer).await == Some(true) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One look for [`wait_drained`]: `None` when the server did not answer a question.
async fn drained(js: &jetstream::Context, stream: &str, consumer: &str) -> Option<bool> {
    let s = js.get_stream(stream).await.ok()?;
    let last_seq = s.cached_info().state.last_sequence;
    let info = s.consumer_info(consumer).await.ok()?;
    if info.num_pending != 0 || info.num_ack_pending != 0 {
        return Some(false);
    }
    // read after the consumer's info: a message stored in between is a later one
    let last = match consumer_filter(&info.config) {
        None => last_seq,
        Some(filter) => match s.get_last_raw_message_by_subject(filter).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => 0,
            Err(_) => return None,
        },
    };
    Some(info.ack_floor.stream_sequence >= last)
}

/// The subjects a consumer consumes: its filter subject; `None` when it takes the whole
/// stream. (Tally's consumers set one filter subject, never the `filter_subjects` list of
/// NATS 2.10.)
fn consumer_filter(config: &jetstream::consumer::Config) -> Option<&str> {
    let filter = config.filter_subject.as_str();
    (!filter.is_empty() && filter != ">").then_some(filter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};

    fn answered(json: &str) -> CreateStreamError {
        let e: jetstream::Error = serde_json::from_str(json).expect("a server error");
        CreateStreamError::new(CreateStreamErrorKind::JetStream(e))
    }

    #[test]
    fn replicas_are_added_in_place_and_never_removed_by_a_service() {
        let with = |n: usize| stream::Config {
            num_replicas: n,
            ..Default::default()
        };
        assert_eq!(replicas_change(&with(3), &with(3)), None);
        // 0 is what JetStream reports for a stream created without the setting: one copy
        assert_eq!(replicas_change(&with(0), &with(1)), None);
        let up = replicas_change(&with(1), &with(3)).unwrap();
        assert_eq!((up.setting, up.updatable), ("nats.replicas", true));
        assert_eq!(
            (up.have.as_str(), up.want.as_str()),
            ("1 replicas", "3 replicas")
        );
        let down = replicas_change(&with(3), &with(1)).unwrap();
        assert!(!down.updatable);
        let usage = drift(&with(3), &with(1), Kind::Usage);
        assert_eq!(usage.len(), 1);
        assert_eq!(usage[0].setting, "nats.replicas");
        assert!(!usage[0].updatable);
    }

    #[test]
    fn only_the_servers_store_failure_and_no_answer_are_retried() {
        let store = answered(
            r#"{"code":500,"err_code":10049,"description":"error creating store for stream"}"#,
        );
        assert!(retried(&store));
        assert!(retried(&CreateStreamError::new(
            CreateStreamErrorKind::TimedOut
        )));
        let overlap = answered(
            r#"{"code":400,"err_code":10065,"description":"subjects overlap with an existing stream"}"#,
        );
        assert!(!retried(&overlap));
        let storage = answered(
            r#"{"code":500,"err_code":10047,"description":"insufficient storage resources available"}"#,
        );
        assert!(!retried(&storage));
        assert!(!retried(&CreateStreamError::new(
            CreateStreamErrorKind::InvalidStreamName
        )));
    }

    #[test]
    fn a_consumer_consumes_its_filter_or_the_whole_stream() {
        use jetstream::consumer::Config;
        assert_eq!(consumer_filter(&Config::default()), None);
        let whole = Config {
            filter_subject: ">".into(),
            ..Config::default()
        };
        assert_eq!(consumer_filter(&whole), None);
        let partition = Config {
            filter_subject: "usage_p.1.>".into(),
            ..Config::default()
        };
        assert_eq!(consumer_filter(&partition), Some("usage_p.1.>"));
    }
}
