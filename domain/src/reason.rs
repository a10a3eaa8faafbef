//! The stable reason codes for refusing an event. They are a public contract: they appear in
//! dead-letter records, in HTTP error bodies and as the `reason` label of rejection metrics.
//! Add codes; never rename or reuse one.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an event was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not JSON, not a CloudEvents 1.0 object, or a required attribute is missing or invalid.
    Malformed,
    /// The event is larger than the configured limit.
    TooLarge,
    /// The body's `subject`/`source` differ from the NATS subject's customer/agent tokens.
    SubjectMismatch,
    /// No declared meter selects the event's `type`.
    UnknownMeter,
    /// A meter's value property is missing, not a number, negative or too precise.
    InvalidQuantity,
    /// The event time is older than the allowed lateness.
    TooLate,
    /// The event time is further in the future than the clock tolerance.
    TooEarly,
    /// The same (customer, source, id) arrived again with a different payload.
    ConflictingDuplicate,
    /// The `Nats-Msg-Id` header is missing or is not `<customer>:<agent>:<id>` of the event.
    MsgIdMismatch,
    /// The event's UTC day is already sealed for its partition (only possible after the
    /// allowed lateness was raised): its usage is final and is not changed.
    WindowSealed,
}

impl Reason {
    /// Every reason, for metric pre-registration and documentation.
    pub const ALL: [Reason; 10] = [
        Reason::Malformed,
        Reason::TooLarge,
        Reason::SubjectMismatch,
        Reason::UnknownMeter,
        Reason::InvalidQuantity,
        Reason::TooLate,
        Reason::TooEarly,
        Reason::ConflictingDuplicate,
        Reason::MsgIdMismatch,
        Reason::WindowSealed,
    ];

    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::TooLarge => "too_large",
            Reason::SubjectMismatch => "subject_mismatch",
            Reason::UnknownMeter => "unknown_meter",
            Reason::InvalidQuantity => "invalid_quantity",
            Reason::TooLate => "too_late",
            Reason::TooEarly => "too_early",
            Reason::ConflictingDuplicate => "conflicting_duplicate",
            Reason::MsgIdMismatch => "msg_id_mismatch",
            Reason::WindowSealed => "window_sealed",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_serde_names() {
        for r in Reason::ALL {
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.code())
            );
        }
    }
}
