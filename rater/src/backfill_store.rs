//! The storage side of a backfill (the rules are [`crate::backfill`]): parsing each event of
//! the input, loading what is stored about it (its committed readings, the corrections of its
//! identity, this import's correction of it; the reads of [`crate::corrections_store::load`],
//! bounded by the event's time and customer), deciding, appending the `backfill` correction
//! (its deltas, the event as imported, then the correction row), and re-reading the event's
//! corrections so that the loser of a race with another import is reported as already
//! present. Events are imported one at a time with the corrections (one lock per process).

use clickhouse::Client;
use tally_domain::event::UsageEvent;
use tally_domain::shape::{check_shape, DEPTH_MAX, STRING_MAX_BYTES};
use tally_domain::{EventId, Meter};

use crate::backfill::{self, Decision, Facts, Import, Present, Refusal, Report};
use crate::corrections::{self, Change, CorrectionError, Valid};
use crate::corrections_store;

/// Largest event accepted, in bytes (the gateway's default event bound).
pub const EVENT_MAX_BYTES: usize = corrections::DATA_MAX_BYTES;

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
