//! What a payment event decides, as pure functions over typed values: which row a payment,
//! failed attempt or refund is, what an invoice's recorded payments say about an incoming one,
//! and the outcome stored as `webhook_events.outcome`. No I/O, no clock: the caller
//! ([`super`]) loads the facts, calls these, then appends what they decided.
//!
//! Sums of amounts are checked: a sum that would overflow is refused with
//! [`Error::Invalid`] before anything is stored.

use std::fmt;

use tally_domain::InvoiceStatus;

use crate::store::PaymentRow;
use crate::Error;

/// The kind of a `payments` row (`payments.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentKind {
    /// Money received.
    Payment,
    /// A failed attempt to collect (no money moved).
    Attempt,
    /// Money returned.
    Refund,
}

/// The status of a `payments` row (`payments.status`): one per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    Succeeded,
    Failed,
    Refunded,
}

impl PaymentKind {
    pub const ALL: [PaymentKind; 3] = [Self::Payment, Self::Attempt, Self::Refund];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Payment => "payment",
            Self::Attempt => "attempt",
            Self::Refund => "refund",
        }
    }

    /// The kind a stored value names; `None` for a value this version does not know.
    pub fn parse(value: &str) -> Option<PaymentKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == value)
    }

    /// The status a row of this kind is stored with.
    pub fn status(self) -> PaymentStatus {
        match self {
            Self::Payment => PaymentStatus::Succeeded,
            Self::Attempt => PaymentStatus::Failed,
            Self::Refund => PaymentStatus::Refunded,
        }
    }
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Refunded => "refunded",
        }
    }
}

/// What applying an event or request did (stored as `webhook_events.outcome`, answered by the
/// API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An event type that moves no money.
    IgnoredType,
    UnknownInvoice,
    /// The event's currency is not the invoice's (or the top-up's).
    CurrencyMismatch,
    /// A wallet top-up was paid (the wallet pass makes the grant available).
    TopUpPaid,
    PartiallyPaid,
    /// The payments cover the amount due: the invoice moves to `paid`.
    Paid,
    /// A payment recorded against an invoice that is no longer open.
    RecordedOnClosed(InvoiceStatus),
    PaymentFailed,
    /// A late failure after success, or on a void invoice: logged, no effect.
    PaymentFailedOnClosed,
    RefundOfUnknownPayment,
    RefundExceedsPayments,
    Refunded,
    /// What [`crate::disputes`] decided (its own vocabulary).
    Dispute(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::IgnoredType => "ignored_type",
            Self::UnknownInvoice => "unknown_invoice",
            Self::CurrencyMismatch => "currency_mismatch",
            Self::TopUpPaid => "top_up_paid",
            Self::PartiallyPaid => "partially_paid",
            Self::Paid => "paid",
            Self::RecordedOnClosed(status) => {
                return write!(f, "payment_recorded_invoice_{status}");
            }
            Self::PaymentFailed => "payment_failed",
            Self::PaymentFailedOnClosed => "payment_failed_ignored_invoice_closed",
            Self::RefundOfUnknownPayment => "refund_of_unknown_payment",
            Self::RefundExceedsPayments => "refund_exceeds_payments",
            Self::Refunded => "refunded",
            Self::Dispute(outcome) => outcome,
        };
        f.write_str(s)
    }
}

/// A recorded `payments` row as the decisions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Movement<'a> {
    pub payment_id: &'a str,
    pub gateway_ref: &'a str,
    /// `None` for a kind this version does not know (it counts toward nothing).
    pub kind: Option<PaymentKind>,
    pub amount_minor: i64,
}

impl<'a> Movement<'a> {
    pub fn of(row: &'a PaymentRow) -> Movement<'a> {
        Movement {
            payment_id: &row.payment_id,
            gateway_ref: &row.gateway_ref,
            kind: PaymentKind::parse(&row.kind),
            amount_minor: row.amount_minor,
        }
    }
}

/// The typed view of an invoice's recorded rows.
pub fn movements(rows: &[PaymentRow]) -> Vec<Movement<'_>> {
    rows.iter().map(Movement::of).collect()
}

/// `amounts` summed, or [`Error::Invalid`] naming `what` when the sum overflows.
pub fn checked_sum(what: &str, amounts: impl IntoIterator<Item = i64>) -> Result<i64, Error> {
    amounts
        .into_iter()
        .try_fold(0i64, i64::checked_add)
        .ok_or_else(|| Error::Invalid(format!("{what}: the sum overflows")))
}

/// The sum of the rows of `kind` that `keep` keeps.
fn sum_of(
    what: &str,
    recorded: &[Movement<'_>],
    kind: PaymentKind,
    keep: impl Fn(&Movement<'_>) -> bool,
) -> Result<i64, Error> {
    let amounts = recorded
        .iter()
        .filter(|m| m.kind == Some(kind) && keep(m))
        .map(|m| m.amount_minor);
    checked_sum(what, amounts)
}

/// Money received for an invoice so far: its payments, but the one with id `except`.
pub fn paid_except(recorded: &[Movement<'_>], except: &str) -> Result<i64, Error> {
    sum_of(
        "the payments of the invoice",
        recorded,
        PaymentKind::Payment,
        |m| m.payment_id != except,
    )
}

fn is_recorded(recorded: &[Movement<'_>], payment_id: &str) -> bool {
    recorded.iter().any(|m| m.payment_id == payment_id)
}

/// Where a successful payment goes, given what its id names and the event's currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payee<'a> {
    /// An invoice in `currency`.
    Invoice { currency: &'a str },
    /// A wallet top-up in `currency`.
    TopUp { currency: &'a str },
    /// Neither an invoice nor a top-up.
    Unknown,
}

/// Whether a payment in `currency` can be applied to `payee`: `Ok` to apply it, or the
/// outcome that refuses it.
pub fn admit(payee: Payee<'_>, currency: &str) -> Result<(), Outcome> {
    match payee {
        Payee::Unknown => Err(Outcome::UnknownInvoice),
        Payee::Invoice { currency: c } | Payee::TopUp { currency: c } if c != currency => {
            Err(Outcome::CurrencyMismatch)
        }
        Payee::Invoice { .. } | Payee::TopUp { .. } => Ok(()),
    }
}

/// What to do with a successful payment of an invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentDecision {
    /// Append the payment's row (false when a retry already did).
    pub append: bool,
    /// Move the invoice to `paid`.
    pub mark_paid: bool,
    pub outcome: Outcome,
}

/// A successful payment `payment_id` of `amount_minor` against an invoice whose lifecycle is
/// at `status`, with `amount_due_minor` due and `recorded` rows so far.
pub fn payment(
    status: InvoiceStatus,
    amount_due_minor: i64,
    recorded: &[Movement<'_>],
    payment_id: &str,
    amount_minor: i64,
) -> Result<PaymentDecision, Error> {
    let paid_minor = paid_except(recorded, payment_id)?
        .checked_add(amount_minor)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "amount_minor {amount_minor}: the invoice's payments would overflow"
            ))
        })?;
    let outcome = if paid_minor < amount_due_minor {
        Outcome::PartiallyPaid
    } else if !status.is_open() {
        Outcome::RecordedOnClosed(status)
    } else {
        Outcome::Paid
    };
    Ok(PaymentDecision {
        append: !is_recorded(recorded, payment_id),
        mark_paid: outcome == Outcome::Paid,
        outcome,
    })
}

/// A failed attempt against an invoice whose lifecycle is at `status` (the attempt is
/// recorded either way).
pub fn failure(status: InvoiceStatus) -> Outcome {
    if status.is_open() || status == InvoiceStatus::Draft {
        Outcome::PaymentFailed
    } else {
        Outcome::PaymentFailedOnClosed
    }
}

/// What to do with a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundDecision {
    /// Append the refund's row (false when a retry already did, or when refused).
    pub append: bool,
    /// Post the refund's journal (only when refunded).
    pub post: bool,
    pub outcome: Outcome,
}

/// A refund `refund_id` (gateway reference `refund_ref`) of `amount_minor` against an
/// invoice's `recorded` rows: refused when it would take back more than was paid.
pub fn refund(
    recorded: &[Movement<'_>],
    refund_id: &str,
    refund_ref: &str,
    amount_minor: i64,
) -> Result<RefundDecision, Error> {
    let paid = sum_of(
        "the payments of the invoice",
        recorded,
        PaymentKind::Payment,
        |m| m.gateway_ref != refund_ref,
    )?;
    let refunded = sum_of(
        "the refunds of the invoice",
        recorded,
        PaymentKind::Refund,
        |m| m.payment_id != refund_id,
    )?;
    if amount_minor <= 0 {
        return Err(Error::Invalid(format!(
            "amount_minor {amount_minor}: a refund is positive"
        )));
    }
    // i64::MAX used to wrap `refunded + amount` negative, under any payment
    let after = refunded.checked_add(amount_minor).ok_or_else(|| {
        Error::Invalid(format!(
            "amount_minor {amount_minor}: the invoice's refunds would overflow"
        ))
    })?;
    if after > paid {
        return Ok(RefundDecision {
            append: false,
            post: false,
            outcome: Outcome::RefundExceedsPayments,
        });
    }
    Ok(RefundDecision {
        append: !is_recorded(recorded, refund_id),
        post: true,
        outcome: Outcome::Refunded,
    })
}

/// What is still owed on an invoice with `amount_due_minor` due (never negative): the amount
/// a write-off books.
pub fn outstanding(amount_due_minor: i64, recorded: &[Movement<'_>]) -> Result<i64, Error> {
    let paid = paid_except(recorded, "")?;
    Ok(amount_due_minor
        .checked_sub(paid)
        .ok_or_else(|| Error::Invalid("the outstanding amount overflows".into()))?
        .max(0))
}

/// Who sent a payment event, when: what every row it writes repeats.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub gateway: &'a str,
    pub actor: &'a str,
    pub event_id: &'a str,
    pub at_ms: i64,
}

/// Whose money a row moves.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub invoice_id: &'a str,
    pub customer: &'a str,
    pub currency: &'a str,
}

impl Source<'_> {
    /// The deterministic id of a row of `kind` with the gateway's reference `gateway_ref`.
    pub fn payment_id(&self, kind: PaymentKind, gateway_ref: &str) -> String {
        match kind {
            PaymentKind::Payment | PaymentKind::Refund => format!("{}:{gateway_ref}", self.gateway),
            PaymentKind::Attempt => {
                format!("{}:{gateway_ref}:failed:{}", self.gateway, self.event_id)
            }
        }
    }

    /// The row of `kind` for `owner`, with the gateway's reference `gateway_ref`.
    pub fn row(
        &self,
        kind: PaymentKind,
        owner: Owner<'_>,
        gateway_ref: &str,
        amount_minor: i64,
    ) -> PaymentRow {
        PaymentRow {
            payment_id: self.payment_id(kind, gateway_ref),
            invoice_id: owner.invoice_id.to_owned(),
            customer: owner.customer.to_owned(),
            gateway: self.gateway.to_owned(),
            gateway_ref: gateway_ref.to_owned(),
            kind: kind.as_str().to_owned(),
            status: kind.status().as_str().to_owned(),
            amount_minor,
            currency: owner.currency.to_owned(),
            failure_reason: String::new(),
            event_id: self.event_id.to_owned(),
            actor: self.actor.to_owned(),
            at_ms: self.at_ms,
            at: tally_platform::store::datetime_secs(self.at_ms),
            payment_method: String::new(),
        }
    }

    /// The refund `refund_id` (reference `refund_ref`) of `amount_minor` of the recorded
    /// payment `paid`: its invoice, customer, gateway, currency and payment method.
    pub fn refund_of(
        &self,
        paid: PaymentRow,
        refund_id: String,
        refund_ref: &str,
        amount_minor: i64,
    ) -> PaymentRow {
        let kind = PaymentKind::Refund;
        PaymentRow {
            payment_id: refund_id,
            gateway_ref: refund_ref.to_owned(),
            kind: kind.as_str().to_owned(),
            status: kind.status().as_str().to_owned(),
            amount_minor,
            event_id: self.event_id.to_owned(),
            actor: self.actor.to_owned(),
            at_ms: self.at_ms,
            at: tally_platform::store::datetime_secs(self.at_ms),
            ..paid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InvoiceStatus::{Draft, Finalized, Paid, Uncollectible, Void};

    fn mv(
        payment_id: &'static str,
        gateway_ref: &'static str,
        kind: PaymentKind,
        amount_minor: i64,
    ) -> Movement<'static> {
        Movement {
            payment_id,
            gateway_ref,
            kind: Some(kind),
            amount_minor,
        }
    }

    /// One invoice's history: 300 paid (`s:pi_1`), a failed attempt of 900, 50 refunded.
    fn recorded() -> Vec<Movement<'static>> {
        vec![
            mv("s:pi_1", "pi_1", PaymentKind::Payment, 300),
            mv("s:pi_2:failed:evt_1", "pi_2", PaymentKind::Attempt, 900),
            mv("s:re_1", "re_1", PaymentKind::Refund, 50),
            Movement {
                kind: None,
                ..mv("s:x_1", "x_1", PaymentKind::Payment, 10_000)
            },
        ]
    }

    #[test]
    fn every_outcome_is_stored_under_its_name() {
        let cases = [
            (Outcome::IgnoredType, "ignored_type"),
            (Outcome::UnknownInvoice, "unknown_invoice"),
            (Outcome::CurrencyMismatch, "currency_mismatch"),
            (Outcome::TopUpPaid, "top_up_paid"),
            (Outcome::PartiallyPaid, "partially_paid"),
            (Outcome::Paid, "paid"),
            (
                Outcome::RecordedOnClosed(Void),
                "payment_recorded_invoice_void",
            ),
            (
                Outcome::RecordedOnClosed(Paid),
                "payment_recorded_invoice_paid",
            ),
            (Outcome::PaymentFailed, "payment_failed"),
            (
                Outcome::PaymentFailedOnClosed,
                "payment_failed_ignored_invoice_closed",
            ),
            (Outcome::RefundOfUnknownPayment, "refund_of_unknown_payment"),
            (Outcome::RefundExceedsPayments, "refund_exceeds_payments"),
            (Outcome::Refunded, "refunded"),
            (Outcome::Dispute("dispute_opened".into()), "dispute_opened"),
        ];
        for (outcome, name) in cases {
            assert_eq!(outcome.to_string(), name, "{outcome:?}");
        }
    }

    #[test]
    fn kinds_round_trip_and_each_has_one_status() {
        let cases = [
            (PaymentKind::Payment, "payment", "succeeded"),
            (PaymentKind::Attempt, "attempt", "failed"),
            (PaymentKind::Refund, "refund", "refunded"),
        ];
        for (kind, name, status) in cases {
            assert_eq!(kind.as_str(), name);
            assert_eq!(PaymentKind::parse(name), Some(kind));
            assert_eq!(kind.status().as_str(), status);
        }
        assert_eq!(PaymentKind::parse("dispute"), None);
    }

    #[test]
    fn admit_refuses_unknown_payees_and_other_currencies() {
        let cases = [
            (Payee::Invoice { currency: "USD" }, "USD", Ok(())),
            (Payee::TopUp { currency: "EUR" }, "EUR", Ok(())),
            (
                Payee::Invoice { currency: "USD" },
                "EUR",
                Err(Outcome::CurrencyMismatch),
            ),
            (
                Payee::TopUp { currency: "EUR" },
                "USD",
                Err(Outcome::CurrencyMismatch),
            ),
            (Payee::Unknown, "USD", Err(Outcome::UnknownInvoice)),
        ];
        for (payee, currency, want) in cases {
            assert_eq!(admit(payee, currency), want, "{payee:?} in {currency}");
        }
    }

    #[test]
    fn a_payment_pays_partially_fully_or_only_records_on_a_closed_invoice() {
        let r = recorded();
        // (status, due, incoming id, amount) -> (append, mark paid, outcome)
        let cases = [
            (
                Finalized,
                1_000,
                "s:pi_3",
                699,
                true,
                false,
                Outcome::PartiallyPaid,
            ),
            (Finalized, 1_000, "s:pi_3", 700, true, true, Outcome::Paid),
            (Finalized, 1_000, "s:pi_3", 900, true, true, Outcome::Paid),
            // a retry of a recorded payment counts it once and appends nothing
            (Finalized, 300, "s:pi_1", 300, false, true, Outcome::Paid),
            (
                Finalized,
                600,
                "s:pi_1",
                300,
                false,
                false,
                Outcome::PartiallyPaid,
            ),
            (
                Void,
                1_000,
                "s:pi_3",
                700,
                true,
                false,
                Outcome::RecordedOnClosed(Void),
            ),
            (
                Paid,
                1_000,
                "s:pi_3",
                700,
                true,
                false,
                Outcome::RecordedOnClosed(Paid),
            ),
            // an uncollectible invoice can still be paid
            (Uncollectible, 500, "s:pi_3", 700, true, true, Outcome::Paid),
            (
                Draft,
                1_000,
                "s:pi_3",
                700,
                true,
                false,
                Outcome::RecordedOnClosed(Draft),
            ),
            (
                Draft,
                1_000,
                "s:pi_3",
                1,
                true,
                false,
                Outcome::PartiallyPaid,
            ),
        ];
        for (status, due, id, amount, append, mark_paid, outcome) in cases {
            let want = PaymentDecision {
                append,
                mark_paid,
                outcome,
            };
            let got = payment(status, due, &r, id, amount).expect("decides");
            assert_eq!(got, want, "{status} due {due}: {id} of {amount}");
        }
    }

    #[test]
    fn a_payment_whose_sum_overflows_is_refused() {
        let r = recorded();
        let err = payment(Finalized, 1_000, &r, "s:pi_3", i64::MAX).expect_err("overflow");
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        let both = [
            mv("a", "a", PaymentKind::Payment, i64::MAX),
            mv("b", "b", PaymentKind::Payment, 1),
        ];
        let err = payment(Finalized, 1, &both, "c", 1).expect_err("overflow");
        assert!(matches!(err, Error::Invalid(_)), "{err}");
    }

    #[test]
    fn a_failure_counts_only_while_the_invoice_is_draft_or_open_or_uncollectible() {
        let cases = [
            (Draft, Outcome::PaymentFailed),
            (Finalized, Outcome::PaymentFailed),
            (Paid, Outcome::PaymentFailedOnClosed),
            (Void, Outcome::PaymentFailedOnClosed),
            (Uncollectible, Outcome::PaymentFailed),
        ];
        for (status, want) in cases {
            assert_eq!(failure(status), want, "{status}");
        }
    }

    #[test]
    fn a_refund_takes_back_at_most_what_was_paid() {
        let r = recorded();
        // paid 300, refunded 50: 250 can still be refunded
        let refunded = RefundDecision {
            append: true,
            post: true,
            outcome: Outcome::Refunded,
        };
        let exceeds = RefundDecision {
            append: false,
            post: false,
            outcome: Outcome::RefundExceedsPayments,
        };
        let retried = RefundDecision {
            append: false,
            ..refunded.clone()
        };
        let cases = [
            ("s:re_2", "re_2", 250, refunded.clone()),
            ("s:re_2", "re_2", 1, refunded),
            ("s:re_2", "re_2", 251, exceeds.clone()),
            // the retry of re_1 is not counted against itself
            ("s:re_1", "re_1", 50, retried.clone()),
            ("s:re_1", "re_1", 300, retried),
            ("s:re_1", "re_1", 301, exceeds.clone()),
            // a refund whose reference is the payment's own does not count that payment
            ("s:re_3", "pi_1", 1, exceeds),
        ];
        for (id, reference, amount, want) in cases {
            let got = refund(&r, id, reference, amount).expect("decides");
            assert_eq!(got, want, "{id} ({reference}) of {amount}");
        }
    }

    #[test]
    fn a_refund_that_is_not_positive_or_overflows_is_refused() {
        let r = recorded();
        for amount in [0, -1, i64::MIN] {
            let err = refund(&r, "s:re_2", "re_2", amount).expect_err("not positive");
            assert!(matches!(err, Error::Invalid(_)), "{amount}: {err}");
        }
        let big = [
            mv("p", "p", PaymentKind::Payment, i64::MAX),
            mv("r", "r", PaymentKind::Refund, 1),
        ];
        let err = refund(&big, "s:re_2", "re_2", i64::MAX).expect_err("overflow");
        assert!(matches!(err, Error::Invalid(_)), "{err}");
    }

    #[test]
    fn outstanding_is_what_payments_leave_owed_and_never_negative() {
        let r = recorded();
        let cases = [(1_000, 700), (300, 0), (100, 0), (0, 0)];
        for (due, want) in cases {
            assert_eq!(outstanding(due, &r).expect("sums"), want, "due {due}");
        }
        let err = outstanding(i64::MIN, &r).expect_err("overflow");
        assert!(matches!(err, Error::Invalid(_)), "{err}");
    }

    #[test]
    fn rows_carry_the_source_and_a_deterministic_id_per_kind() {
        let src = Source {
            gateway: "stripe",
            actor: "payments:stripe",
            event_id: "evt_9",
            at_ms: 1_700_000_000_123,
        };
        let owner = Owner {
            invoice_id: "inv_1",
            customer: "acme",
            currency: "USD",
        };
        let cases = [
            (PaymentKind::Payment, "stripe:pi_1", "payment", "succeeded"),
            (
                PaymentKind::Attempt,
                "stripe:pi_1:failed:evt_9",
                "attempt",
                "failed",
            ),
            (PaymentKind::Refund, "stripe:pi_1", "refund", "refunded"),
        ];
        for (kind, id, name, status) in cases {
            let row = src.row(kind, owner, "pi_1", 42);
            assert_eq!(
                (
                    row.payment_id.as_str(),
                    row.kind.as_str(),
                    row.status.as_str()
                ),
                (id, name, status)
            );
            assert_eq!(
                (row.invoice_id.as_str(), row.customer.as_str()),
                ("inv_1", "acme")
            );
            assert_eq!(
                (row.gateway.as_str(), row.gateway_ref.as_str()),
                ("stripe", "pi_1")
            );
            assert_eq!((row.amount_minor, row.currency.as_str()), (42, "USD"));
            assert_eq!(
                (row.event_id.as_str(), row.actor.as_str()),
                ("evt_9", "payments:stripe")
            );
            assert_eq!((row.at_ms, row.at), (1_700_000_000_123, 1_700_000_000));
        }
        let mut paid = src.row(PaymentKind::Payment, owner, "pi_1", 500);
        paid.payment_method = "pm_1".into();
        let by = Source {
            gateway: "manual",
            actor: "api:alice",
            event_id: "manual:refund:r1",
            at_ms: 1_700_000_100_000,
        };
        let refund = by.refund_of(paid, "manual:refund:r1".into(), "r1", 70);
        assert_eq!(refund.payment_id, "manual:refund:r1");
        assert_eq!(
            (refund.kind.as_str(), refund.status.as_str()),
            ("refund", "refunded")
        );
        // the refunded payment's invoice, customer, gateway, currency and method
        assert_eq!(
            (refund.gateway.as_str(), refund.payment_method.as_str()),
            ("stripe", "pm_1")
        );
        assert_eq!(
            (refund.invoice_id.as_str(), refund.currency.as_str()),
            ("inv_1", "USD")
        );
        assert_eq!(
            (refund.amount_minor, refund.actor.as_str()),
            (70, "api:alice")
        );
        assert_eq!(refund.at_ms, 1_700_000_100_000);
    }
}
