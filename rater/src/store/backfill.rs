//! The storage side of a backfill (the rules are [`crate::backfill`]): parsing each event of
//! the input and importing them in batches of [`BATCH_EVENTS`]: loading what is stored about
//! them (their committed readings, bounded by the batch's hours and customers; the corrections
//! of their identities, this import's among them), deciding each (an identity committed live
//! at any time within the dedup horizon of the event's, [`backfill::committed_within`]), appending the `backfill`
//! corrections (their deltas, the events as imported, then the correction rows), and
//! re-reading the identities' corrections so that the loser of a race with another import is
//! reported as already present. A batch is imported under the corrections' lock (one per
//! process), so a correction and an import of the same event never interleave in a process.
//! The inputs: an array (the API), JSON lines ([`Importer::add_lines`], a file, line by line
//! under a bound) and a range of a JetStream stream ([`Importer::add_stream`]: the usage
//! stream's messages, or the dead-letter stream's records, each replayed from the usage
//! stream's whole message when it is still there).

use std::collections::HashMap;

use clickhouse::Client;
use serde::Deserialize;
use tally_domain::event::UsageEvent;
use tally_domain::shape::{check_shape, DEPTH_MAX, STRING_MAX_BYTES};
use tally_domain::Meter;
use tokio::io::AsyncBufReadExt;

use crate::backfill::{self, Decision, Facts, Import, Refusal, Report};
use crate::corrections::{self, Correction, CorrectionError, Delta};
use crate::store;

/// Largest event accepted, in bytes (the gateway's default event bound).
pub const EVENT_MAX_BYTES: usize = corrections::DATA_MAX_BYTES;

/// Why an import stopped (what it imported so far stays imported; re-run it).
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Store(#[from] CorrectionError),
    #[error("reading the input: {0}")]
    Io(#[from] std::io::Error),
    #[error("reading stream {stream:?}: {detail}")]
    Stream { stream: String, detail: String },
}

/// A dead-letter record's fields the replay needs (the aggregator's public record format).
#[derive(Deserialize)]
struct DeadLetter {
    reason: String,
    subject: String,
    stream_seq: u64,
    payload: String,
    truncated: bool,
}

/// Events imported together: their facts read in three queries, their rows written in three
/// inserts.
pub const BATCH_EVENTS: usize = 500;

/// A parsed event waiting for its batch.
struct Pending {
    at: u64,
    event: UsageEvent,
    text: String,
}

/// One import in progress: feed it the input's events with [`Importer::add`].
pub struct Importer<'a> {
    db: &'a Client,
    import: Import,
    meters: Vec<Meter>,
    report: Report,
    pending: Vec<Pending>,
    /// The aggregator's dedup horizon, seconds ([`backfill::HORIZON_SECS`] unless set).
    horizon_secs: i64,
}

impl<'a> Importer<'a> {
    /// Starts `import` (checked) with the stored meters.
    pub async fn start(db: &'a Client, import: Import) -> Result<Importer<'a>, CorrectionError> {
        import
            .validate()
            .map_err(|backfill::ImportError::Invalid { field, detail }| {
                CorrectionError::Invalid { field, detail }
            })?;
        let meters = crate::store::registry::meters(db)
            .await
            .map_err(|e| CorrectionError::Meters(e.to_string()))?;
        let report = Report {
            import_id: import.import_id.clone(),
            ..Report::default()
        };
        Ok(Importer {
            db,
            import,
            meters,
            report,
            pending: Vec::new(),
            horizon_secs: backfill::HORIZON_SECS,
        })
    }

    /// Sets the horizon an identity committed live is found within, in seconds of event time
    /// either side of an imported event's: the aggregator's `aggregator.dedup_horizon_secs`
    /// (default [`backfill::HORIZON_SECS`]). Applies to the events not imported yet.
    pub fn set_horizon_secs(&mut self, secs: u64) {
        self.horizon_secs = i64::try_from(secs).unwrap_or(i64::MAX);
    }

    /// Imports one event (`bytes`, a CloudEvent as JSON) found at position `at` of the input.
    /// A refused event is counted in the report; only a storage failure is an error (the
    /// import can be re-run: what was imported stays imported).
    pub async fn add(&mut self, at: u64, bytes: &[u8]) -> Result<(), CorrectionError> {
        self.report.events += 1;
        match parse(bytes) {
            Ok(event) => self.pending.push(Pending {
                at,
                event,
                text: String::from_utf8_lossy(bytes).trim().to_owned(),
            }),
            Err(r) => {
                crate::metrics::backfill_events(r.code, 1);
                self.report.refuse(at, String::new(), r);
            }
        }
        if self.pending.len() >= BATCH_EVENTS {
            self.flush().await?;
        }
        Ok(())
    }

    /// Imports every non-blank line of `reader` (JSON lines: one CloudEvent a line), at
    /// positions counted from 0; a line over [`EVENT_MAX_BYTES`] is refused `malformed`
    /// without being held in memory.
    pub async fn add_lines<R: tokio::io::AsyncBufRead + Unpin>(
        &mut self,
        mut reader: R,
    ) -> Result<(), BackfillError> {
        let mut line = Vec::new();
        let mut at = 0u64;
        loop {
            line.clear();
            let (mut too_long, mut end) = (false, false);
            loop {
                let chunk = reader.fill_buf().await?;
                if chunk.is_empty() {
                    end = true;
                    break;
                }
                let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                    Some(i) => (i + 1, true),
                    None => (chunk.len(), false),
                };
                if line.len() + take > EVENT_MAX_BYTES + 2 {
                    too_long = true;
                } else {
                    line.extend_from_slice(&chunk[..take]);
                }
                reader.consume(take);
                if done {
                    break;
                }
            }
            if too_long {
                crate::metrics::backfill_events("malformed", 1);
                self.report.events += 1;
                self.report.refuse(
                    at,
                    String::new(),
                    Refusal {
                        code: "malformed",
                        detail: format!("a line over {EVENT_MAX_BYTES} bytes"),
                    },
                );
            } else if !line.trim_ascii().is_empty() {
                self.add(at, line.trim_ascii()).await?;
            }
            if end {
                return Ok(());
            }
            at += 1;
        }
    }

    /// Imports the messages of `stream` from sequence `from_seq` to `to_seq` (inclusive;
    /// positions are the sequences): usage messages as they are; dead-letter records (the
    /// aggregator's, e.g. `too_late` events of an outage) as the whole original message of
    /// the usage stream `usage_stream` when it is still there, else as the record's payload
    /// unless it was cut. A missing sequence (deleted, or past the end) is skipped.
    pub async fn add_stream(
        &mut self,
        js: &async_nats::jetstream::Context,
        stream: &str,
        usage_stream: &str,
        (from_seq, to_seq): (u64, u64),
    ) -> Result<(), BackfillError> {
        let failed = |stream: &str, e: &dyn std::fmt::Display| BackfillError::Stream {
            stream: stream.to_owned(),
            detail: e.to_string(),
        };
        let mut source = js
            .get_stream(stream)
            .await
            .map_err(|e| failed(stream, &e))?;
        // the range the stream holds: a mistyped `--to-seq` never walks millions of missing
        // sequences one request at a time
        let state = source
            .info()
            .await
            .map_err(|e| failed(stream, &e))?
            .state
            .clone();
        let (from_seq, to_seq) = (
            from_seq.max(state.first_sequence),
            to_seq.min(state.last_sequence),
        );
        let mut usage = None;
        for seq in from_seq..=to_seq {
            let Ok(msg) = source.get_raw_message(seq).await else {
                continue;
            };
            let record = serde_json::from_slice::<DeadLetter>(&msg.payload).ok();
            let (subject, bytes) = match record {
                None => (msg.subject.to_string(), msg.payload.to_vec()),
                Some(r) => {
                    if usage.is_none() {
                        usage = Some(
                            js.get_stream(usage_stream)
                                .await
                                .map_err(|e| failed(usage_stream, &e))?,
                        );
                    }
                    let original = match &usage {
                        Some(u) => u.get_raw_message(r.stream_seq).await.ok(),
                        None => None,
                    };
                    match original {
                        Some(m) => (r.subject, m.payload.to_vec()),
                        None if !r.truncated => (r.subject, r.payload.into_bytes()),
                        None => {
                            crate::metrics::backfill_events("malformed", 1);
                            self.report.events += 1;
                            self.report.refuse(
                                seq,
                                String::new(),
                                Refusal {
                                    code: "malformed",
                                    detail: format!(
                                        "dead letter ({}) of usage sequence {}: the message is \
                                         gone and the record holds only its start",
                                        r.reason, r.stream_seq
                                    ),
                                },
                            );
                            continue;
                        }
                    }
                }
            };
            if let Some(r) = subject_refusal(&subject, &bytes) {
                crate::metrics::backfill_events(r.code, 1);
                self.report.events += 1;
                self.report.refuse(seq, String::new(), r);
                continue;
            }
            self.add(seq, &bytes).await?;
        }
        Ok(())
    }

    /// The report so far.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Imports what is buffered (at most [`BATCH_EVENTS`] events), then ends the import.
    pub async fn finish(mut self) -> Result<Report, CorrectionError> {
        self.flush().await?;
        Ok(self.report)
    }

    /// Imports the buffered events as one batch: their facts loaded in two queries, each
    /// decided, the appends written in three inserts (deltas, events, corrections), and the
    /// corrections of their identities read again (one query) for races with other imports.
    pub async fn flush(&mut self) -> Result<(), CorrectionError> {
        let batch = std::mem::take(&mut self.pending);
        if batch.is_empty() {
            return Ok(());
        }
        let _turn = store::corrections::ONE_AT_A_TIME.lock().await;
        let identities: Vec<Identity> = batch.iter().map(|p| identity(&p.event)).collect();
        let committed = committed(self.db, &batch, &identities, self.horizon_secs).await?;
        let mut of_events = corrections_of(self.db, &identities).await?;
        let mut appends: Vec<(usize, Correction, Vec<Delta>)> = Vec::new();
        for (i, p) in batch.iter().enumerate() {
            let key = &identities[i];
            let ours = backfill::correction_id(&self.import.import_id, &p.event);
            let of_event = of_events.get(key).cloned().unwrap_or_default();
            let facts = Facts {
                committed: committed.get(key).is_some_and(|times| {
                    backfill::committed_within(times, p.event.time_ms, self.horizon_secs)
                }),
                same_id: corrections::content_of(&of_event, &ours).cloned(),
                of_event,
                target: backfill::readings(&self.meters, &p.event),
            };
            match backfill::decide(&self.import, &p.event, &facts) {
                Decision::Append(c, deltas) => {
                    // a later copy in the batch finds this one
                    of_events.entry(key.clone()).or_default().push(c.clone());
                    appends.push((i, c, deltas));
                }
                Decision::Present(_) => {
                    crate::metrics::backfill_events("already_present", 1);
                    self.report.already_present += 1;
                }
                Decision::Refused(r) => {
                    crate::metrics::backfill_events(r.code, 1);
                    let name = format!("{}/{}", key.1, key.2);
                    self.report.refuse(p.at, name, r);
                }
            }
        }
        if appends.is_empty() {
            return Ok(());
        }
        append(self.db, &batch, &appends).await?;
        let written: Vec<Identity> = appends
            .iter()
            .map(|(i, ..)| identities[*i].clone())
            .collect();
        let after = corrections_of(self.db, &written).await?;
        for (i, ours, _) in &appends {
            let of_event = after.get(&identities[*i]).map_or(&[][..], Vec::as_slice);
            match corrections::winner(of_event, ours) {
                Some(w) if w.correction_id != ours.correction_id => {
                    crate::metrics::backfill_events("already_present", 1);
                    self.report.already_present += 1;
                }
                _ => {
                    crate::metrics::backfill_events("imported", 1);
                    self.report.imported += 1;
                }
            }
        }
        Ok(())
    }
}

/// (customer, agent, event id).
type Identity = (String, String, String);

fn identity(e: &UsageEvent) -> Identity {
    (
        e.customer.to_string(),
        e.agent.to_string(),
        e.id.to_string(),
    )
}

/// A ClickHouse string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `(customer, agent, event_id) IN (...)` of `ids`, and `customer IN (...)` before it (the
/// tables' sorting keys start with the customer).
fn identities_sql(ids: &[Identity]) -> String {
    let mut customers: Vec<&str> = ids.iter().map(|i| i.0.as_str()).collect();
    customers.sort_unstable();
    customers.dedup();
    let customers: Vec<String> = customers.into_iter().map(quote).collect();
    let tuples: Vec<String> = ids
        .iter()
        .map(|(c, a, e)| format!("({}, {}, {})", quote(c), quote(a), quote(e)))
        .collect();
    format!(
        "customer IN ({}) AND (customer, agent, event_id) IN ({})",
        customers.join(", "),
        tuples.join(", ")
    )
}

/// The batch's identities committed by the aggregator, with the event times they were
/// committed at: one read of `usage_meter_readings` (aborted batches left out), bounded by
/// the hours the windows of a commit within `horizon_secs` of a batch's event can be in, and
/// by the batch's customers and identities.
async fn committed(
    db: &Client,
    batch: &[Pending],
    ids: &[Identity],
    horizon_secs: i64,
) -> Result<HashMap<Identity, Vec<i64>>, CorrectionError> {
    let secs = batch.iter().map(|p| p.event.time_ms.div_euclid(1000));
    let (lo, hi) = (secs.clone().min().unwrap_or(0), secs.max().unwrap_or(0));
    // DateTime is 32 bits unsigned: a horizon past it reads every hour
    let (lo, hi) = (
        lo.saturating_sub(horizon_secs)
            .saturating_sub(store::corrections::WINDOW_MAX_SECS)
            .clamp(0, i64::from(u32::MAX)),
        hi.saturating_add(horizon_secs)
            .clamp(0, i64::from(u32::MAX)),
    );
    let rows: Vec<(String, String, String, i64)> = db
        .query(&format!(
            "SELECT DISTINCT customer, agent, event_id, time_ms FROM usage_meter_readings \
             WHERE toStartOfHour(window_start) >= toStartOfHour(toDateTime({lo})) \
               AND toStartOfHour(window_start) <= toStartOfHour(toDateTime({hi})) AND {} \
               AND batch_id NOT IN (SELECT batch_id FROM usage_aborts)",
            identities_sql(ids)
        ))
        .fetch_all()
        .await?;
    let mut out: HashMap<Identity, Vec<i64>> = HashMap::new();
    for (c, a, e, t) in rows {
        out.entry((c, a, e)).or_default().push(t);
    }
    Ok(out)
}

/// Every correction recorded for the identities (counted or not), by identity.
async fn corrections_of(
    db: &Client,
    ids: &[Identity],
) -> Result<HashMap<Identity, Vec<Correction>>, CorrectionError> {
    let rows: Vec<Correction> = db
        .query(&format!(
            "SELECT correction_id, customer, agent, event_id, event_time_ms, revision, kind, \
                    actor, reason, created_ms, toUInt32(created_at), digest \
             FROM usage_corrections \
             WHERE {} ORDER BY revision, correction_id, created_ms, digest \
             LIMIT 1 BY customer, correction_id, agent, event_id, revision, digest, created_ms",
            identities_sql(ids)
        ))
        .fetch_all()
        .await?;
    let mut out: HashMap<Identity, Vec<Correction>> = HashMap::new();
    for c in rows {
        out.entry((c.customer.clone(), c.agent.clone(), c.event_id.clone()))
            .or_default()
            .push(c);
    }
    Ok(out)
}

/// The event as imported (`usage_correction_data`, for audit and for an amend's type).
#[derive(clickhouse::Row, serde::Serialize)]
struct ImportedRow<'a> {
    customer: &'a str,
    correction_id: &'a str,
    data: &'a str,
    created_at: u32,
}

/// Appends a batch's corrections: every delta, then every event as imported, then the
/// correction rows (a delta without its row never counts; see [`store::corrections::append`]).
async fn append(
    db: &Client,
    batch: &[Pending],
    appends: &[(usize, Correction, Vec<Delta>)],
) -> Result<(), clickhouse::error::Error> {
    let mut insert = db.insert::<Delta>("usage_correction_deltas").await?;
    for d in appends.iter().flat_map(|(_, _, deltas)| deltas) {
        insert.write(d).await?;
    }
    insert.end().await?;
    let mut insert = db
        .insert::<ImportedRow<'_>>("usage_correction_data")
        .await?;
    for (i, c, _) in appends {
        insert
            .write(&ImportedRow {
                customer: &c.customer,
                correction_id: &c.correction_id,
                data: &batch[*i].text,
                created_at: c.created_at,
            })
            .await?;
    }
    insert.end().await?;
    let mut insert = db.insert::<Correction>("usage_corrections").await?;
    for (_, c, _) in appends {
        insert.write(c).await?;
    }
    insert.end().await
}

/// Parses one CloudEvent under the gateway's bounds.
fn parse(bytes: &[u8]) -> Result<UsageEvent, Refusal> {
    let malformed = |detail: String| Refusal {
        code: "malformed",
        detail,
    };
    if bytes.len() > EVENT_MAX_BYTES {
        return Err(malformed(format!("larger than {EVENT_MAX_BYTES} bytes")));
    }
    check_shape(bytes, DEPTH_MAX, STRING_MAX_BYTES).map_err(|e| malformed(e.to_string()))?;
    UsageEvent::parse(bytes, EVENT_MAX_BYTES).map_err(|e| malformed(e.to_string()))
}

/// A usage message whose body names another customer or agent than its subject
/// (`<prefix>.<customer>.<agent>`): refused `subject_mismatch`, as the aggregator does.
fn subject_refusal(subject: &str, bytes: &[u8]) -> Option<Refusal> {
    let event = parse(bytes).ok()?;
    let mut tokens = subject.rsplit('.');
    let (agent, customer) = (tokens.next()?, tokens.next()?);
    event.check_subject(customer, agent).err().map(|e| Refusal {
        code: "subject_mismatch",
        detail: e.to_string(),
    })
}
