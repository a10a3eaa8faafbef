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
    /// The customer's new events in this minute of received time reached
    /// `aggregator.customer_events_per_sec` × 60 (the NATS-side rate; the gateway also limits
    /// each key). Other customers are not affected.
    RateLimited,
    /// The customer's distinct event identities within the dedup horizon reached
    /// `aggregator.customer_ids_max`: its share of the dedup memory is full.
    TooManyIds,
    /// The event would add a (agent, group-by values) series beyond
    /// `aggregator.groups_per_meter_day_max` for its customer, meter and UTC day.
    TooManyGroups,
    /// The event would add a distinct value to a UNIQUE_COUNT meter beyond
    /// `aggregator.unique_values_per_meter_day_max` for its customer, meter and UTC day.
    TooManyValues,
}

impl Reason {
    /// Every reason, for metric pre-registration and documentation.
    pub const ALL: [Reason; 14] = [
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
        Reason::RateLimited,
        Reason::TooManyIds,
        Reason::TooManyGroups,
        Reason::TooManyValues,
    ];

    /// The reasons that are a customer reaching one of its bounds (not a bad event): the
    /// same event may pass later, and the `TallyCustomerLimited` alert watches them.
    pub const CUSTOMER_LIMITS: [Reason; 4] = [
        Reason::RateLimited,
        Reason::TooManyIds,
        Reason::TooManyGroups,
        Reason::TooManyValues,
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
            Reason::RateLimited => "rate_limited",
            Reason::TooManyIds => "too_many_ids",
            Reason::TooManyGroups => "too_many_groups",
            Reason::TooManyValues => "too_many_values",
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
