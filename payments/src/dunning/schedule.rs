//! Which dunning notifications are due, and when a failed delivery is tried again. Pure: the
//! caller passes the invoice facts and `now`.
//!
//! A payment retry step `k` is due `retry_schedule_secs[k]` after the first failed payment of
//! an invoice that is still open; an overdue reminder step `k` is due
//! `reminder_schedule_secs[k]` after the due date of an invoice still open. Only the latest
//! due step of each kind is returned (after an outage the customer gets one notice, not a
//! burst). Ids are deterministic (`<kind>:<invoice>:<step>`), so a step is decided once.
//! It never performs I/O or reads the clock.

use serde::Serialize;
use tally_domain::{Currency, CustomerId};

/// The kinds of notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    PaymentRetry,
    OverdueReminder,
}

impl Kind {
    /// Every kind dunning decides (and delivers).
    pub const ALL: [Kind; 2] = [Kind::PaymentRetry, Kind::OverdueReminder];

    /// The notification's `type` field and the id prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PaymentRetry => "invoice.payment_retry",
            Kind::OverdueReminder => "invoice.overdue",
        }
    }
}

/// An invoice still owed, as dunning sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owed {
    pub invoice_id: String,
    pub customer: CustomerId,
    pub currency: Currency,
    pub outstanding_minor: i64,
    pub due_at_ms: Option<i64>,
    /// The first failed payment attempt, if any.
    pub first_failure_ms: Option<i64>,
    /// The latest failed attempt (what a gateway retry tries again).
    pub last_failure: Option<Failure>,
    /// Whether any payment record (payment, attempt, refund) names the invoice: collection
    /// starts only for invoices nothing was tried on yet.
    pub has_payment_records: bool,
}

/// A failed payment attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub gateway: String,
    pub payment_ref: String,
    pub payment_method: String,
    pub at_ms: i64,
}

/// A notification to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueNotice {
    pub notification_id: String,
    pub kind: Kind,
    pub step: u32,
    pub invoice_id: String,
    pub customer: CustomerId,
}

fn latest_step(since_ms: i64, schedule_secs: &[i64], now_ms: i64) -> Option<u32> {
    schedule_secs
        .iter()
        .rposition(|s| since_ms.saturating_add(s.saturating_mul(1000)) <= now_ms)
        .map(|k| k as u32)
}

/// The notices due for `owed` at `now_ms`.
pub fn due(owed: &Owed, retry_secs: &[i64], reminder_secs: &[i64], now_ms: i64) -> Vec<DueNotice> {
    if owed.outstanding_minor <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let plans = [
        (Kind::PaymentRetry, owed.first_failure_ms, retry_secs),
        (Kind::OverdueReminder, owed.due_at_ms, reminder_secs),
    ];
    for (kind, since, schedule) in plans {
        if let Some(step) = since.and_then(|s| latest_step(s, schedule, now_ms)) {
            out.push(DueNotice {
                notification_id: format!("{}:{}:{step}", kind.as_str(), owed.invoice_id),
                kind,
                step,
                invoice_id: owed.invoice_id.clone(),
                customer: owed.customer.clone(),
            });
        }
    }
    out
}

/// When the next delivery attempt may start, after `attempts` failed ones (the last at
/// `last_ms`): `backoff_secs`, doubling per failure, capped at 2^10 times.
pub fn next_attempt_ms(attempts: u32, last_ms: i64, backoff_secs: i64) -> i64 {
    if attempts == 0 {
        return i64::MIN;
    }
    let factor = 1i64 << (attempts - 1).min(10);
    last_ms.saturating_add(backoff_secs.saturating_mul(1000).saturating_mul(factor))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn owed() -> Owed {
        Owed {
            invoice_id: "inv_1".into(),
            customer: CustomerId::new("acme").unwrap(),
            currency: "USD".parse().unwrap(),
            outstanding_minor: 100,
            due_at_ms: Some(10 * DAY),
            first_failure_ms: Some(2 * DAY),
            last_failure: None,
            has_payment_records: true,
        }
    }

    #[test]
    fn only_the_latest_due_step_of_each_kind_is_returned() {
        let retry = [DAY / 1000, 3 * DAY / 1000];
        let remind = [DAY / 1000, 7 * DAY / 1000];
        assert!(due(&owed(), &retry, &remind, 2 * DAY).is_empty());
        let d = due(&owed(), &retry, &remind, 3 * DAY);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].notification_id, "invoice.payment_retry:inv_1:0");
        let d = due(&owed(), &retry, &remind, 18 * DAY);
        let ids: Vec<&str> = d.iter().map(|n| n.notification_id.as_str()).collect();
        assert_eq!(
            ids,
            vec!["invoice.payment_retry:inv_1:1", "invoice.overdue:inv_1:1"]
        );
    }

    #[test]
    fn nothing_is_due_for_a_settled_invoice() {
        let settled = Owed {
            outstanding_minor: 0,
            ..owed()
        };
        assert!(due(&settled, &[0], &[0], 100 * DAY).is_empty());
    }

    #[test]
    fn delivery_backoff_doubles() {
        assert_eq!(next_attempt_ms(0, 5, 60), i64::MIN);
        assert_eq!(next_attempt_ms(1, 0, 60), 60_000);
        assert_eq!(next_attempt_ms(3, 0, 60), 240_000);
    }
}
