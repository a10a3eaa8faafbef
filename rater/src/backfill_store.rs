//! The storage side of a backfill (the rules are [`crate::backfill`]): parsing each event of
//! the input, loading what is stored about it (its committed readings, the corrections of its
//! identity, this import's correction of it; the reads of [`crate::corrections_store::load`],
//! bounded by the event's time and customer), deciding, appending the `backfill` correction
//! (its deltas, the event as imported, then the correction row), and re-reading the event's
//! corrections so that the loser of a race with another import is reported as already
//! present. Events are imported one at a time with the corrections (one lock per process).
//! The inputs: an array (the API), JSON lines ([`Importer::add_lines`], a file, line by line
//! under a bound) and a range of a JetStream stream ([`Importer::add_stream`]: the usage
//! stream's messages, or the dead-letter stream's records, each replayed from the usage
//! stream's whole message when it is still there).

use clickhouse::Client;
use serde::Deserialize;
use tally_domain::event::UsageEvent;
use tally_domain::shape::{check_shape, DEPTH_MAX, STRING_MAX_BYTES};
use tally_domain::{EventId, Meter};
use tokio::io::AsyncBufReadExt;

use crate::backfill::{self, Decision, Facts, Import, Present, Refusal, Report};
use crate::corrections::{self, Change, CorrectionError, Valid};
use crate::corrections_store;

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

/// One import in progress: feed it the input's events with [`Importer::add`].
pub struct Importer<'a> {
    db: &'a Client,
    import: Import,
    meters: Vec<Meter>,
    report: Report,
}

impl<'a> Importer<'a> {
    /// Starts `import` (checked) with the stored meters.
    pub async fn start(db: &'a Client, import: Import) -> Result<Importer<'a>, CorrectionError> {
        import
            .validate()
            .map_err(|backfill::ImportError::Invalid { field, detail }| {
                CorrectionError::Invalid { field, detail }
            })?;
        let meters = crate::registry_store::meters(db)
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
        })
    }

    /// Imports one event (`bytes`, a CloudEvent as JSON) found at position `at` of the input.
    /// A refused event is counted in the report; only a storage failure is an error (the
    /// import can be re-run: what was imported stays imported).
    pub async fn add(&mut self, at: u64, bytes: &[u8]) -> Result<(), CorrectionError> {
        self.report.events += 1;
        let event = match parse(bytes) {
            Ok(e) => e,
            Err(r) => {
                self.report.refuse(at, String::new(), r);
                return Ok(());
            }
        };
        let name = format!("{}/{}", event.agent.as_str(), event.id.as_str());
        match self.one(&event, bytes).await? {
            Decision::Append(..) => self.report.imported += 1,
            Decision::Present(_) => self.report.already_present += 1,
            Decision::Refused(r) => self.report.refuse(at, name, r),
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
        let source = js
            .get_stream(stream)
            .await
            .map_err(|e| failed(stream, &e))?;
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

    /// Ends the import.
    pub fn finish(self) -> Report {
        self.report
    }

    async fn one(&self, event: &UsageEvent, bytes: &[u8]) -> Result<Decision, CorrectionError> {
        let id = backfill::correction_id(&self.import.import_id, event);
        let valid = Valid {
            correction_id: EventId::new(id).map_err(|e| CorrectionError::Invalid {
                field: "import_id",
                detail: e.to_string(),
            })?,
            customer: event.customer.clone(),
            agent: event.agent.clone(),
            event_id: event.id.clone(),
            time_ms: event.time_ms,
            reason: self.import.reason.clone(),
            change: Change::Void,
        };
        let _turn = corrections_store::ONE_AT_A_TIME.lock().await;
        let stored = corrections_store::load(self.db, &valid).await?;
        let facts = Facts {
            committed: !stored.readings.is_empty(),
            of_event: stored.of_event,
            same_id: stored.same_id.map(|(c, _)| c),
            target: backfill::readings(&self.meters, event),
        };
        let decision = backfill::decide(&self.import, event, &facts);
        let Decision::Append(ours, deltas) = &decision else {
            return Ok(decision);
        };
        let text = String::from_utf8_lossy(bytes);
        corrections_store::append(self.db, ours, deltas, text.trim()).await?;
        let after =
            corrections_store::of_event(self.db, &ours.customer, &ours.agent, &ours.event_id)
                .await?;
        match corrections::winner(&after, ours) {
            Some(w) if w.correction_id != ours.correction_id => Ok(Decision::Present(
                Present::Imported(w.correction_id.clone()),
            )),
            _ => Ok(decision),
        }
    }
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
