//! The invoice lifecycle: which statuses exist and which transitions are allowed.
//!
//! `draft → finalized → paid | void | uncollectible`, a draft may be voided, and an
//! uncollectible invoice may still be paid or voided. `paid` and `void` are terminal: refunds
//! and corrections are credit notes and ledger entries, never a status going back.
//!
//! Transitions are stored append-only (one record per transition, who caused it and when);
//! the current status is [`fold`] over those records, so two writers that append at the same
//! time still agree on one status. This module must never perform I/O.

use std::fmt;
use std::str::FromStr;

/// Where an invoice is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    Draft,
    Finalized,
    Paid,
    Void,
    Uncollectible,
}

/// A transition the lifecycle does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("unknown invoice status {0:?}; known: draft, finalized, paid, void, uncollectible")]
    Unknown(String),
    #[error("an invoice cannot go from {from} to {to}")]
    NotAllowed {
        from: InvoiceStatus,
        to: InvoiceStatus,
    },
}

impl InvoiceStatus {
    pub const ALL: [InvoiceStatus; 5] = [
        InvoiceStatus::Draft,
        InvoiceStatus::Finalized,
        InvoiceStatus::Paid,
        InvoiceStatus::Void,
        InvoiceStatus::Uncollectible,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::Finalized => "finalized",
            InvoiceStatus::Paid => "paid",
            InvoiceStatus::Void => "void",
            InvoiceStatus::Uncollectible => "uncollectible",
        }
    }

    /// Whether `self → to` is a transition of the lifecycle.
    pub fn can_become(self, to: InvoiceStatus) -> bool {
        use InvoiceStatus::*;
        matches!(
            (self, to),
            (Draft, Finalized | Void)
                | (Finalized, Paid | Void | Uncollectible)
                | (Uncollectible, Paid | Void)
        )
    }

    /// `Ok(to)` when allowed, else the error naming both ends.
    pub fn check(self, to: InvoiceStatus) -> Result<InvoiceStatus, StatusError> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(StatusError::NotAllowed { from: self, to })
        }
    }

    /// No transition leaves this status.
    pub fn is_terminal(self) -> bool {
        InvoiceStatus::ALL.iter().all(|&to| !self.can_become(to))
    }

    /// The amount is owed by the customer (finalized and not yet settled).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            InvoiceStatus::Finalized | InvoiceStatus::Uncollectible
        )
    }
}

impl fmt::Display for InvoiceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InvoiceStatus {
    type Err = StatusError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InvoiceStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StatusError::Unknown(s.to_owned()))
    }
}

/// The current status from stored transition targets, in the order they were recorded
/// (callers sort by time, then by sequence). A target that is not allowed from the status
/// reached so far is ignored (it lost a race), so every reader computes the same answer.
pub fn fold(
    start: InvoiceStatus,
    targets: impl IntoIterator<Item = InvoiceStatus>,
) -> InvoiceStatus {
    path(start, targets).last().copied().unwrap_or(start)
}

/// The statuses [`fold`] passes through, in order (the start excluded): the targets it
/// accepts. Its last element, if any, is what `fold` returns.
pub fn path(
    start: InvoiceStatus,
    targets: impl IntoIterator<Item = InvoiceStatus>,
) -> Vec<InvoiceStatus> {
    let mut at = start;
    let mut out = Vec::new();
    for to in targets {
        if at.can_become(to) {
            at = to;
            out.push(to);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use InvoiceStatus::*;

    #[test]
    fn the_path_is_what_the_fold_accepts() {
        let targets = [Finalized, Draft, Void, Paid, Finalized];
        assert_eq!(path(Draft, targets), vec![Finalized, Void]);
        assert_eq!(fold(Draft, targets), Void);
        assert_eq!(path(Draft, [Paid]), vec![]);
        assert_eq!(fold(Draft, [Paid]), Draft);
    }

    #[test]
    fn names_round_trip() {
        for s in InvoiceStatus::ALL {
            assert_eq!(s.as_str().parse::<InvoiceStatus>(), Ok(s));
        }
        assert_eq!(
            "open".parse::<InvoiceStatus>(),
            Err(StatusError::Unknown("open".into()))
        );
    }

    #[test]
    fn the_lifecycle_moves_forward_only() {
        assert!(Draft.can_become(Finalized));
        assert!(Finalized.can_become(Paid));
        assert!(Uncollectible.can_become(Paid));
        assert!(
            !Paid.can_become(Finalized),
            "a paid invoice is never reopened"
        );
        assert!(
            !Finalized.can_become(Draft),
            "a finalized invoice is immutable"
        );
        assert!(
            !Draft.can_become(Paid),
            "a draft is finalized before it is paid"
        );
        assert!(Paid.is_terminal() && Void.is_terminal());
        assert!(!Finalized.is_terminal());
        assert_eq!(
            Paid.check(Void),
            Err(StatusError::NotAllowed {
                from: Paid,
                to: Void
            })
        );
    }

    #[test]
    fn fold_ignores_a_transition_that_lost_the_race() {
        assert_eq!(fold(Draft, [Finalized, Paid, Void]), Paid);
        assert_eq!(fold(Draft, [Finalized, Void, Paid]), Void);
        assert_eq!(fold(Draft, [Paid]), Draft);
        assert_eq!(
            fold(Draft, [Finalized, Finalized, Uncollectible, Paid]),
            Paid
        );
    }
}
