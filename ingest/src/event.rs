//! An outgoing usage event and its CloudEvents 1.0 JSON form (DESIGN.md section 2).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tally_domain::{AgentId, CustomerId, EventId};

/// One usage event as an agent sends it.
#[derive(Debug, Clone)]
pub struct OutgoingEvent {
    pub id: EventId,
    pub customer: CustomerId,
    pub agent: AgentId,
    pub event_type: String,
    pub time: DateTime<Utc>,
    /// Meter properties; quantities as JSON integers or decimal strings, never floats.
    pub data: serde_json::Value,
    /// The spend hold this usage settles (extension attribute `holdid`): the `hold_id` of the
    /// authorize answer that allowed the work this event reports.
    pub hold_id: Option<EventId>,
}

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    subject: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    time: String,
    datacontenttype: &'static str,
    data: &'a serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    holdid: Option<&'a str>,
}

impl OutgoingEvent {
    /// The structured-mode CloudEvents JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        let ce = CloudEvent {
            specversion: "1.0",
            id: self.id.as_str(),
            source: self.agent.as_str(),
            subject: self.customer.as_str(),
            event_type: &self.event_type,
            time: self.time.to_rfc3339_opts(SecondsFormat::Millis, true),
            datacontenttype: "application/json",
            data: &self.data,
            holdid: self.hold_id.as_ref().map(EventId::as_str),
        };
        serde_json::to_vec(&ce).expect("a CloudEvent of strings and a JSON value always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_domain::UsageEvent;

    #[test]
    fn round_trips_through_the_contract_parser() {
        let e = OutgoingEvent {
            id: EventId::new("e-1").unwrap(),
            customer: CustomerId::new("acme").unwrap(),
            agent: AgentId::new("bot").unwrap(),
            event_type: "llm.tokens".into(),
            time: DateTime::parse_from_rfc3339("2026-11-26T21:00:00.123Z")
                .unwrap()
                .with_timezone(&Utc),
            data: serde_json::json!({"tokens": 12, "model": "m"}),
            hold_id: None,
        };
        let parsed = UsageEvent::parse(&e.to_json(), 65536).unwrap();
        assert_eq!(parsed.id, e.id);
        assert_eq!(parsed.customer, e.customer);
        assert_eq!(parsed.agent, e.agent);
        assert_eq!(parsed.time_ms, e.time.timestamp_millis());
        assert_eq!(parsed.hold_id, None);
        assert!(!String::from_utf8_lossy(&e.to_json()).contains("holdid"));
        let held = OutgoingEvent {
            hold_id: Some(EventId::new("h-1").unwrap()),
            ..e
        };
        let parsed = UsageEvent::parse(&held.to_json(), 65536).unwrap();
        assert_eq!(
            parsed.hold_id, held.hold_id,
            "holdid goes out as the extension"
        );
    }
}
