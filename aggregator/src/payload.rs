//! An accepted event's text kept where it arrived: ranges of its message payload (a shared,
//! reference-counted buffer) instead of one owned `String` per attribute, so accepting an
//! event allocates nothing for its id, customer, agent, type or data. A string the JSON wrote
//! with escapes is the only one owned. This module only holds and hands out text; it never
//! validates (that is `tally_domain::EventView`'s job).

use bytes::Bytes;
use tally_domain::EventView;

/// A message payload the classifier can keep without copying when it is already shared.
pub trait Payload {
    /// The bytes to parse.
    fn bytes(&self) -> &[u8];
    /// A shared handle on the same bytes (a copy only for plain slices).
    fn shared(&self) -> Bytes;
}

impl Payload for Bytes {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn shared(&self) -> Bytes {
        self.clone()
    }
}

impl Payload for [u8] {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn shared(&self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

impl<const N: usize> Payload for [u8; N] {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn shared(&self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

impl Payload for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn shared(&self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

/// One attribute: a byte range of the payload, or owned when it had escapes.
#[derive(Debug, Clone)]
enum Text {
    Range(u32, u32),
    Owned(Box<str>),
}

/// The attributes of an accepted event, backed by its payload.
#[derive(Debug, Clone)]
pub struct EventText {
    payload: Bytes,
    id: Text,
    customer: Text,
    agent: Text,
    event_type: Text,
    data: Text,
    /// Extension `holdid`, when the event settles a spend hold.
    hold: Option<Text>,
    /// Event time in milliseconds since the Unix epoch, UTC.
    pub time_ms: i64,
}

/// `s` as a range of `payload` when it points into it (it was borrowed from the payload),
/// else an owned copy (it was unescaped into a new string).
fn text_of(payload: &Bytes, s: &str) -> Text {
    let start = (s.as_ptr() as usize).wrapping_sub(payload.as_ptr() as usize);
    let end = start.wrapping_add(s.len());
    if start <= end && end <= payload.len() {
        if let (Ok(start), Ok(end)) = (u32::try_from(start), u32::try_from(end)) {
            return Text::Range(start, end);
        }
    }
    Text::Owned(s.into())
}

impl EventText {
    /// Keeps `view` (parsed from `payload`'s bytes) as ranges of `payload`.
    pub fn new(payload: Bytes, view: &EventView<'_>) -> EventText {
        EventText {
            id: text_of(&payload, &view.id),
            customer: text_of(&payload, &view.customer),
            agent: text_of(&payload, &view.agent),
            event_type: text_of(&payload, &view.event_type),
            data: text_of(&payload, view.data.get()),
            hold: view.hold_id.as_deref().map(|h| text_of(&payload, h)),
            time_ms: view.time_ms,
            payload,
        }
    }

    fn get<'s>(&'s self, t: &'s Text) -> &'s str {
        match t {
            // a range is only ever taken from a `&str` inside the payload, so it is UTF-8
            Text::Range(a, b) => {
                std::str::from_utf8(&self.payload[*a as usize..*b as usize]).unwrap_or_default()
            }
            Text::Owned(s) => s,
        }
    }

    /// CloudEvent `id`.
    pub fn id(&self) -> &str {
        self.get(&self.id)
    }

    /// CloudEvent `subject`.
    pub fn customer(&self) -> &str {
        self.get(&self.customer)
    }

    /// CloudEvent `source`.
    pub fn agent(&self) -> &str {
        self.get(&self.agent)
    }

    /// CloudEvent `type`.
    pub fn event_type(&self) -> &str {
        self.get(&self.event_type)
    }

    /// The `data` object as raw JSON text.
    pub fn data(&self) -> &str {
        self.get(&self.data)
    }

    /// Extension `holdid`: the spend hold this event settles.
    pub fn hold_id(&self) -> Option<&str> {
        self.hold.as_ref().map(|h| self.get(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_read_back_from_the_payload_or_owned_when_escaped() {
        let payload = Bytes::from_static(
            br#"{"specversion":"1.0","id":"e\u0031","source":"bot","subject":"acme","type":"t","time":"2026-11-26T21:00:00Z","data":{"a":1}}"#,
        );
        let view = EventView::parse(&payload, 4096).unwrap();
        let t = EventText::new(payload.clone(), &view);
        assert_eq!(
            (t.id(), t.customer(), t.agent(), t.event_type(), t.data()),
            ("e1", "acme", "bot", "t", r#"{"a":1}"#)
        );
        assert!(matches!(t.id, Text::Owned(_)));
        assert!(matches!(t.customer, Text::Range(..)));
        let absent = Bytes::from_static(
            br#"{"specversion":"1.0","id":"e1","source":"bot","subject":"acme","type":"t","time":"2026-11-26T21:00:00Z"}"#,
        );
        let view = EventView::parse(&absent, 4096).unwrap();
        assert_eq!(EventText::new(absent.clone(), &view).data(), "{}");
        assert_eq!(EventText::new(absent.clone(), &view).hold_id(), None);
        let held = Bytes::from_static(
            br#"{"specversion":"1.0","id":"e1","holdid":"h-1","source":"bot","subject":"acme","type":"t","time":"2026-11-26T21:00:00Z"}"#,
        );
        let view = EventView::parse(&held, 4096).unwrap();
        assert_eq!(EventText::new(held.clone(), &view).hold_id(), Some("h-1"));
    }
}
