//! Classifying one message: either an accepted event with what each meter read from it, or a
//! rejection with its public reason code. Pure: the clock is an argument, nothing is stored.
//!
//! Checks, in order: size, nesting and string lengths (the gateway's limits), and envelope
//! (`too_large`, `malformed`), subject tokens
//! (`subject_mismatch`), the `Nats-Msg-Id` header against the identity (`msg_id_mismatch`),
//! event time (`too_late`, `too_early`), meters (`unknown_meter`), quantities
//! (`invalid_quantity`). An event is all or nothing: if one meter cannot read it,
//! no meter counts it.

use std::collections::HashMap;

use serde::Serialize;
use tally_domain::data::DataView;
use tally_domain::identity::{is_nats_msg_id, nats_msg_id};
use tally_domain::meter::MeterReading;
use tally_domain::shape::check_shape;
use tally_domain::subject::split_usage_subject;
use tally_domain::{EventView, Meter, Reason};

use crate::config::AggregatorConfig;
use crate::dedup::{event_key, payload_hash};
use crate::payload::{EventText, Payload};

/// An event that passed every check.
#[derive(Debug)]
pub struct Accepted {
    /// Its attributes, kept as ranges of the message payload.
    pub event: EventText,
    /// `(index into the classifier's meters, reading)` for every meter selecting the event.
    pub readings: Vec<(usize, MeterReading)>,
    /// Dedup key of the identity (customer, source, id).
    pub key: u128,
    /// Hash of what the event says (type, time, data), to tell a retry from a conflict.
    pub payload_hash: u64,
    /// When JetStream stored the message (ms since the epoch): the time lateness and
    /// tolerance were judged against, and the time the dedup horizon counts from.
    pub received_ms: i64,
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub reason: Reason,
    /// The offending attribute or property, when known.
    pub field: Option<String>,
    pub detail: String,
}

impl Rejection {
    fn new(reason: Reason, field: Option<String>, detail: impl ToString) -> Self {
        Rejection {
            reason,
            field,
            detail: detail.to_string(),
        }
    }
}

/// The validation rules of one aggregator.
pub struct Classifier {
    meters: Vec<Meter>,
    by_type: HashMap<String, Vec<usize>>,
    subject_prefix: String,
    max_event_bytes: usize,
    depth_max: usize,
    string_max_bytes: usize,
    lateness_ms: i64,
    tolerance_ms: i64,
    /// `aggregator.accept_legacy_msg_ids`: also accept a missing header or the bare event id
    /// (publishers of versions before the identity was namespaced), for an upgrade.
    accept_legacy_msg_ids: bool,
}

impl Classifier {
    pub fn new(meters: Vec<Meter>, subject_prefix: &str, cfg: &AggregatorConfig) -> Self {
        let mut by_type: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, m) in meters.iter().enumerate() {
            by_type.entry(m.event_type.clone()).or_default().push(i);
        }
        Classifier {
            meters,
            by_type,
            subject_prefix: subject_prefix.to_owned(),
            max_event_bytes: cfg.max_event_bytes,
            depth_max: cfg.depth_max,
            string_max_bytes: cfg.string_max_bytes,
            lateness_ms: i64::try_from(cfg.allowed_lateness_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            tolerance_ms: i64::try_from(cfg.future_tolerance_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            accept_legacy_msg_ids: cfg.accept_legacy_msg_ids,
        }
    }

    pub fn meters(&self) -> &[Meter] {
        &self.meters
    }

    /// Classifies the message published on `subject` with header `Nats-Msg-Id` = `msg_id` and
    /// `payload`, which JetStream stored at `received_ms`. The header must name the event's
    /// whole identity (`tally_domain::nats_msg_id`): JetStream deduplicates it across the
    /// stream, so any other value lets one customer's or agent's id suppress another's. Lateness and future tolerance are judged against that time, not
    /// against the moment the aggregator reads the message: a backlog (the aggregator or
    /// ClickHouse down for longer than the allowed lateness) never turns events that were on
    /// time into `too_late`, and a redelivered message is judged exactly as the first time.
    /// An accepted event keeps a shared handle on the payload (no copy when it is `Bytes`).
    pub fn classify<P: Payload + ?Sized>(
        &self,
        subject: &str,
        msg_id: Option<&str>,
        payload: &P,
        received_ms: i64,
    ) -> Result<Accepted, Rejection> {
        let bytes = payload.bytes();
        if bytes.len() <= self.max_event_bytes {
            // the gateway's limits too, so an event it refuses is not billed from NATS
            check_shape(bytes, self.depth_max, self.string_max_bytes)
                .map_err(|e| Rejection::new(Reason::Malformed, e.field().map(str::to_owned), &e))?;
        }
        let event = EventView::parse(bytes, self.max_event_bytes)
            .map_err(|e| Rejection::new(e.reason(), e.field().map(str::to_owned), &e))?;
        let Some((customer, agent)) = split_usage_subject(&self.subject_prefix, subject) else {
            return Err(Rejection::new(
                Reason::SubjectMismatch,
                None,
                format!(
                    "subject {subject:?} is not {}.<customer>.<agent>",
                    self.subject_prefix
                ),
            ));
        };
        event
            .check_subject(customer, agent)
            .map_err(|e| Rejection::new(e.reason(), e.field().map(str::to_owned), &e))?;
        self.check_msg_id(msg_id, customer, agent, &event.id)?;
        if event.time_ms < received_ms.saturating_sub(self.lateness_ms) {
            let detail = format!(
                "event time is {} ms before the stream received it, allowed lateness is {} ms",
                received_ms - event.time_ms,
                self.lateness_ms
            );
            return Err(Rejection::new(Reason::TooLate, Some("time".into()), detail));
        }
        if event.time_ms > received_ms.saturating_add(self.tolerance_ms) {
            let detail = format!(
                "event time is {} ms after the stream received it, tolerance is {} ms",
                event.time_ms - received_ms,
                self.tolerance_ms
            );
            return Err(Rejection::new(
                Reason::TooEarly,
                Some("time".into()),
                detail,
            ));
        }
        let Some(meter_ids) = self.by_type.get(event.event_type.as_ref()) else {
            let detail = format!("no meter selects event type {:?}", event.event_type);
            return Err(Rejection::new(
                Reason::UnknownMeter,
                Some("type".into()),
                detail,
            ));
        };
        let view = DataView::new(event.data)
            .map_err(|e| Rejection::new(Reason::Malformed, Some("data".into()), e))?;
        let mut readings = Vec::with_capacity(meter_ids.len());
        for &i in meter_ids {
            let reading = self.meters[i].read(&view).map_err(|e| {
                Rejection::new(
                    Reason::InvalidQuantity,
                    Some("data".into()),
                    format!("meter {}: {e}", self.meters[i].slug),
                )
            })?;
            readings.push((i, reading));
        }
        let key = event_key(&event.customer, &event.agent, &event.id);
        let payload_hash = payload_hash(&event.event_type, event.time_ms, event.data.get());
        Ok(Accepted {
            event: EventText::new(payload.shared(), &event),
            readings,
            key,
            payload_hash,
            received_ms,
        })
    }
}

impl Classifier {
    fn check_msg_id(
        &self,
        msg_id: Option<&str>,
        customer: &str,
        agent: &str,
        id: &str,
    ) -> Result<(), Rejection> {
        let legacy = self.accept_legacy_msg_ids && msg_id.is_none_or(|h| h == id);
        if legacy || msg_id.is_some_and(|h| is_nats_msg_id(h, customer, agent, id)) {
            return Ok(());
        }
        let expected = nats_msg_id(customer, agent, id);
        let detail = match msg_id {
            None => format!("header Nats-Msg-Id is missing, expected {expected:?}"),
            Some(h) => {
                format!("header Nats-Msg-Id is {h:?}, expected {expected:?} (customer:agent:id)")
            }
        };
        Err(Rejection::new(
            Reason::MsgIdMismatch,
            Some("Nats-Msg-Id".into()),
            detail,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_domain::meter::{validate_meters, MeterSpec};

    const NOW: i64 = 1_795_726_800_000; // 2026-11-26T21:00:00Z
    /// The `Nats-Msg-Id` of the test event `e1` of agent `bot` of customer `acme`.
    const ID: Option<&str> = Some("acme:bot:e1");

    fn classifier() -> Classifier {
        let specs: Vec<MeterSpec> = serde_json::from_str(
            r#"[{"slug":"tokens","event_type":"llm.tokens","aggregation":"SUM","value_property":"$.tokens","group_by":{"model":"$.model"}},
                {"slug":"token_events","event_type":"llm.tokens","aggregation":"COUNT"},
                {"slug":"tool_calls","event_type":"tool.call","aggregation":"COUNT"}]"#,
        )
        .unwrap();
        Classifier::new(
            validate_meters(specs).unwrap(),
            "usage",
            &AggregatorConfig::default(),
        )
    }

    fn event(time: &str, ty: &str, data: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"e1","source":"bot","subject":"acme","type":"{ty}","time":"{time}","data":{data}}}"#
        )
    }

    fn reason(r: Result<Accepted, Rejection>) -> Reason {
        r.unwrap_err().reason
    }

    #[test]
    fn accepts_and_reads_every_meter_of_the_type() {
        let c = classifier();
        let a = c
            .classify(
                "usage.acme.bot",
                ID,
                event(
                    "2026-11-26T20:59:00Z",
                    "llm.tokens",
                    r#"{"tokens":5,"model":"m"}"#,
                )
                .as_bytes(),
                NOW,
            )
            .unwrap();
        assert_eq!(a.readings.len(), 2);
        assert_eq!(a.readings[0].1.value.to_string(), "5");
        assert_eq!(a.readings[0].1.group_values, vec!["m"]);
    }

    #[test]
    fn each_rule_has_its_reason() {
        let c = classifier();
        let ok = event("2026-11-26T20:59:00Z", "tool.call", "{}");
        assert_eq!(
            reason(c.classify("usage.other.bot", ID, ok.as_bytes(), NOW)),
            Reason::SubjectMismatch
        );
        assert_eq!(
            reason(c.classify("usage.acme", ID, ok.as_bytes(), NOW)),
            Reason::SubjectMismatch
        );
        assert_eq!(
            reason(c.classify("usage.acme.bot", ID, b"{", NOW)),
            Reason::Malformed
        );
        let late = event("2026-11-26T19:59:59Z", "tool.call", "{}");
        assert_eq!(
            reason(c.classify("usage.acme.bot", ID, late.as_bytes(), NOW)),
            Reason::TooLate
        );
        let early = event("2026-11-26T21:05:01Z", "tool.call", "{}");
        assert_eq!(
            reason(c.classify("usage.acme.bot", ID, early.as_bytes(), NOW)),
            Reason::TooEarly
        );
        let unknown = event("2026-11-26T20:59:00Z", "nope", "{}");
        assert_eq!(
            reason(c.classify("usage.acme.bot", ID, unknown.as_bytes(), NOW)),
            Reason::UnknownMeter
        );
        let bad_qty = event("2026-11-26T20:59:00Z", "llm.tokens", r#"{"tokens":"lots"}"#);
        assert_eq!(
            reason(c.classify("usage.acme.bot", ID, bad_qty.as_bytes(), NOW)),
            Reason::InvalidQuantity
        );
    }

    /// Issue 16, finding 1: the header must name the whole identity; a bare id (which
    /// JetStream would deduplicate against every other customer's) is refused.
    #[test]
    fn the_msg_id_header_must_name_the_identity() {
        let c = classifier();
        let ok = event("2026-11-26T20:59:00Z", "tool.call", "{}");
        for bad in [
            None,
            Some("e1"),
            Some("other:bot:e1"),
            Some("acme:bot2:e1"),
            Some("acme:bot:e2"),
        ] {
            let r = c
                .classify("usage.acme.bot", bad, ok.as_bytes(), NOW)
                .unwrap_err();
            assert_eq!(r.reason, Reason::MsgIdMismatch, "{bad:?}");
            assert_eq!(r.field.as_deref(), Some("Nats-Msg-Id"));
            assert!(r.detail.contains("acme:bot:e1"), "{}", r.detail);
        }
        let legacy = Classifier::new(
            c.meters().to_vec(),
            "usage",
            &AggregatorConfig {
                accept_legacy_msg_ids: true,
                ..AggregatorConfig::default()
            },
        );
        for old in [None, Some("e1"), ID] {
            assert!(
                legacy
                    .classify("usage.acme.bot", old, ok.as_bytes(), NOW)
                    .is_ok(),
                "{old:?}"
            );
        }
        assert!(legacy
            .classify("usage.acme.bot", Some("x"), ok.as_bytes(), NOW)
            .is_err());
    }

    #[test]
    fn identities_differ_by_customer_and_agent() {
        let c = classifier();
        let on = |subject: &str, customer: &str, agent: &str| {
            let body = format!(
                r#"{{"specversion":"1.0","id":"order-42","source":"{agent}","subject":"{customer}","type":"tool.call","time":"2026-11-26T20:59:00Z","data":{{}}}}"#
            );
            let id = nats_msg_id(customer, agent, "order-42");
            c.classify(subject, Some(&id), body.as_bytes(), NOW)
                .unwrap()
                .key
        };
        let a = on("usage.customer-1.agent-1", "customer-1", "agent-1");
        assert_ne!(a, on("usage.customer-2.agent-1", "customer-2", "agent-1"));
        assert_ne!(a, on("usage.customer-1.agent-2", "customer-1", "agent-2"));
    }

    /// Issue 16, finding 3: a `data` object nested 1,000 deep was billed from NATS although
    /// the gateway refuses nesting deeper than 8; one set of limits now.
    #[test]
    fn the_gateways_shape_limits_apply_on_nats_too() {
        let c = classifier();
        let deep = event(
            "2026-11-26T20:59:00Z",
            "tool.call",
            &format!("{}1{}", "[".repeat(1000), "]".repeat(1000)),
        );
        let r = c
            .classify("usage.acme.bot", ID, deep.as_bytes(), NOW)
            .unwrap_err();
        assert_eq!(
            (r.reason, r.field.as_deref()),
            (Reason::Malformed, Some("data"))
        );
        let long = event(
            "2026-11-26T20:59:00Z",
            "tool.call",
            &format!(r#"{{"note":"{}"}}"#, "x".repeat(5000)),
        );
        assert_eq!(
            reason(c.classify("usage.acme.bot", ID, long.as_bytes(), NOW)),
            Reason::Malformed
        );
    }

    #[test]
    fn lateness_limits_are_inclusive() {
        let c = classifier();
        let edge = event("2026-11-26T20:00:00Z", "tool.call", "{}");
        assert!(c
            .classify("usage.acme.bot", ID, edge.as_bytes(), NOW)
            .is_ok());
        let edge = event("2026-11-26T21:05:00Z", "tool.call", "{}");
        assert!(c
            .classify("usage.acme.bot", ID, edge.as_bytes(), NOW)
            .is_ok());
    }

    /// Any JSON value, nested a few levels (numbers as text so floats, huge and negative
    /// quantities all appear).
    fn json_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            "-?[0-9]{1,30}(\\.[0-9]{0,12})?([eE][+-]?[0-9]{1,3})?",
            "\"[a-z0-9 .\\\\\"\\u{0}-\\u{1f}\\u{7f}-\\u{2fff}]{0,12}\"",
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                proptest::collection::vec(
                    (
                        prop_oneof![Just("tokens"), Just("model"), Just("x"), Just("")],
                        inner
                    ),
                    0..4
                )
                .prop_map(|kv| {
                    let members: Vec<String> = kv
                        .into_iter()
                        .map(|(k, v)| format!("\"{k}\":{v}"))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    proptest::proptest! {
        /// The whole classification (envelope, subject, lateness, meter reads over any data)
        /// never panics: every input is accepted or refused with a reason.
        #[test]
        fn classifying_any_event_never_panics(
            ty in proptest::prop_oneof![
                proptest::strategy::Just("llm.tokens"),
                proptest::strategy::Just("tool.call"),
                proptest::strategy::Just("other")
            ],
            data in json_value(),
            // mostly the event's own subject, so the meters read the data
            subject in proptest::prop_oneof![
                3 => proptest::strategy::Just("usage.acme.bot".to_owned()),
                1 => "usage(\\.[a-z*>]{0,6}){0,4}",
            ],
            time in "2026-11-26T2[0-1]:[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})",
        ) {
            let c = classifier();
            if let Ok(acc) = c.classify(&subject, ID, event(&time, ty, &data).as_bytes(), NOW) {
                proptest::prop_assert!(!acc.readings.is_empty());
            }
        }

        /// Arbitrary bytes on a valid subject never panic either.
        #[test]
        fn classifying_any_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let c = classifier();
            let _ = c.classify("usage.acme.bot", ID, bytes.as_slice(), NOW);
        }
    }
}
