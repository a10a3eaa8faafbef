//! What a verified payment event does, whatever gateway sent it: record the payment, post the
//! ledger journal, move the invoice's lifecycle. Also write-offs and the ledger sync that posts
//! finalized invoices, voids and credit notes.
//!
//! Safety argument. Every effect has a deterministic id (payment id from the gateway's
//! reference, journal id from the operation, lifecycle transition id from the target status),
//! so applying an event twice appends nothing the views do not collapse; the event id is
//! recorded last, and a delivery whose id is already recorded returns at once. Lifecycle
//! moves only forward (`paid` is terminal), so a late `payment_failed` after `succeeded`
//! records the failed attempt and leaves the invoice paid. Within one process all changes are
//! serialized by one mutex. Sums of amounts are checked (`checked_add`): an event or request
//! whose amounts would overflow is refused with [`Error::Invalid`] before anything is stored.
//! This module never trusts an event that was not verified by its adapter, and never edits a
//! row.

use clickhouse::Client;
use tally_domain::InvoiceStatus;
use tally_invoicer::lifecycle::{self, Recorded};
use tokio::sync::Mutex;

use crate::gateway::{Effect, GatewayEvent};
use crate::ledger::{self, Operation};
use crate::store::{self, InvoiceFacts, PaymentRow};
use crate::{metrics, Error};

/// The actor of the changes the ledger sync makes on its own.
pub const SYNC_ACTOR: &str = "payments:sync";

/// `amounts` summed, or [`Error::Invalid`] naming `what` when the sum overflows.
pub fn checked_sum(what: &str, amounts: impl IntoIterator<Item = i64>) -> Result<i64, Error> {
    amounts
        .into_iter()
        .try_fold(0i64, i64::checked_add)
        .ok_or_else(|| Error::Invalid(format!("{what}: the sum overflows")))
}

/// Money received for an invoice so far: its `payment` rows, but the one with `except` id.
fn paid_except(payments: &[PaymentRow], except: &str) -> Result<i64, Error> {
    let received = payments
        .iter()
        .filter(|p| p.kind == "payment" && p.payment_id != except)
        .map(|p| p.amount_minor);
    checked_sum("the payments of the invoice", received)
}

/// Applies events and operator actions one at a time.
pub struct Settler {
    pub db: Client,
    lock: Mutex<()>,
}

/// What applying an event did (stored as `webhook_events.outcome`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    pub outcome: String,
    pub invoice_id: String,
    pub duplicate: bool,
}

impl Settler {
    pub fn new(db: Client) -> Settler {
        Settler {
            db,
            lock: Mutex::new(()),
        }
    }

    /// Applies a verified event from `gateway` on behalf of `actor`.
    pub async fn apply(
        &self,
        gateway: &str,
        actor: &str,
        event: &GatewayEvent,
        payload: &str,
        now_ms: i64,
    ) -> Result<Applied, Error> {
        let _guard = self.lock.lock().await;
        if let Some(outcome) = store::event_outcome(&self.db, gateway, &event.event_id).await? {
            metrics::webhook("duplicate");
            tracing::info!(gateway, event_id = %event.event_id, %outcome, "duplicate event ignored");
            return Ok(Applied {
                outcome,
                invoice_id: String::new(),
                duplicate: true,
            });
        }
        let (outcome, invoice_id) = match &event.effect {
            None => ("ignored_type".to_owned(), String::new()),
            Some(effect) => self.effect(gateway, actor, event, effect, now_ms).await?,
        };
        store::append_event(
            &self.db,
            &store::EventRecord {
                event_id: &event.event_id,
                gateway,
                event_type: &event.event_type,
                invoice_id: &invoice_id,
                outcome: &outcome,
                payload,
            },
            now_ms,
        )
        .await?;
        metrics::webhook(&outcome);
        tracing::info!(gateway, actor, event_id = %event.event_id, event_type = %event.event_type,
            invoice_id = %invoice_id, %outcome, at_ms = now_ms, "payment event applied");
        Ok(Applied {
            outcome,
            invoice_id,
            duplicate: false,
        })
    }

    async fn effect(
        &self,
        gateway: &str,
        actor: &str,
        event: &GatewayEvent,
        effect: &Effect,
        now_ms: i64,
    ) -> Result<(String, String), Error> {
        match effect {
            Effect::PaymentSucceeded {
                payment_ref,
                invoice_id,
                amount_minor,
                currency,
                payment_method,
            } => {
                let Some(inv) = store::invoice(&self.db, invoice_id).await? else {
                    // a wallet top-up is paid under its payable id; the wallet pass makes
                    // the grant available (and books the cash) once payments cover it
                    if let Some(top_up) = crate::wallet::store::top_up(&self.db, invoice_id).await?
                    {
                        if &top_up.currency != currency {
                            return Ok(("currency_mismatch".into(), invoice_id.clone()));
                        }
                        let row = PaymentRow {
                            payment_id: format!("{gateway}:{payment_ref}"),
                            invoice_id: invoice_id.clone(),
                            customer: top_up.customer,
                            gateway: gateway.to_owned(),
                            gateway_ref: payment_ref.clone(),
                            kind: "payment".into(),
                            status: "succeeded".into(),
                            amount_minor: *amount_minor,
                            currency: currency.clone(),
                            failure_reason: String::new(),
                            event_id: event.event_id.clone(),
                            actor: actor.to_owned(),
                            at_ms: now_ms,
                            at: tally_platform::store::datetime_secs(now_ms),
                            payment_method: payment_method.clone(),
                        };
                        store::append_payment(&self.db, &row).await?;
                        return Ok(("top_up_paid".into(), invoice_id.clone()));
                    }
                    return Ok(("unknown_invoice".into(), invoice_id.clone()));
                };
                if &inv.currency != currency {
                    return Ok(("currency_mismatch".into(), inv.invoice_id));
                }
                let mut row = self.row(
                    gateway,
                    actor,
                    event,
                    &inv,
                    now_ms,
                    payment_ref,
                    *amount_minor,
                );
                row.payment_method = payment_method.clone();
                let outcome = self.pay(&inv, row, actor, now_ms).await?;
                Ok((outcome, inv.invoice_id))
            }
            Effect::PaymentFailed {
                payment_ref,
                invoice_id,
                amount_minor,
                currency,
                reason,
                payment_method,
            } => {
                let Some(inv) = store::invoice(&self.db, invoice_id).await? else {
                    return Ok(("unknown_invoice".into(), invoice_id.clone()));
                };
                let status = lifecycle::status(&self.db, &inv.invoice_id).await?;
                let mut row = self.row(
                    gateway,
                    actor,
                    event,
                    &inv,
                    now_ms,
                    payment_ref,
                    *amount_minor,
                );
                row.payment_id = format!("{gateway}:{payment_ref}:failed:{}", event.event_id);
                row.kind = "attempt".into();
                row.status = "failed".into();
                row.currency = currency.clone();
                row.failure_reason = reason.clone();
                row.payment_method = payment_method.clone();
                store::append_payment(&self.db, &row).await?;
                let outcome = if status.is_open() || status == InvoiceStatus::Draft {
                    "payment_failed"
                } else {
                    // a late failure after success, or on a void invoice: logged, no effect
                    "payment_failed_ignored_invoice_closed"
                };
                Ok((outcome.into(), inv.invoice_id))
            }
            Effect::Refunded {
                refund_ref,
                payment_ref,
                amount_minor,
                currency,
            } => {
                let Some(paid) = store::payment_by_ref(&self.db, gateway, payment_ref).await?
                else {
                    return Ok(("refund_of_unknown_payment".into(), String::new()));
                };
                let refund = PaymentRow {
                    payment_id: format!("{gateway}:{refund_ref}"),
                    gateway_ref: refund_ref.clone(),
                    kind: "refund".into(),
                    status: "refunded".into(),
                    amount_minor: *amount_minor,
                    currency: currency.clone(),
                    event_id: event.event_id.clone(),
                    actor: actor.to_owned(),
                    at_ms: now_ms,
                    at: tally_platform::store::datetime_secs(now_ms),
                    ..paid
                };
                self.refund(refund).await
            }
            Effect::Disputed {
                dispute_ref,
                payment_ref,
                amount_minor,
                currency,
                reason,
                change,
            } => {
                let incoming = crate::disputes::Incoming {
                    gateway,
                    actor,
                    event_id: &event.event_id,
                    payment_ref,
                    reason,
                    event: crate::disputes::Event {
                        dispute_id: dispute_ref.clone(),
                        amount_minor: *amount_minor,
                        currency: currency.clone(),
                        change: change.clone(),
                    },
                };
                crate::disputes::apply(&self.db, &incoming, now_ms).await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        gateway: &str,
        actor: &str,
        event: &GatewayEvent,
        inv: &InvoiceFacts,
        now_ms: i64,
        payment_ref: &str,
        amount_minor: i64,
    ) -> PaymentRow {
        PaymentRow {
            payment_id: format!("{gateway}:{payment_ref}"),
            invoice_id: inv.invoice_id.clone(),
            customer: inv.customer.clone(),
            gateway: gateway.to_owned(),
            gateway_ref: payment_ref.to_owned(),
            kind: "payment".into(),
            status: "succeeded".into(),
            amount_minor,
            currency: inv.currency.clone(),
            failure_reason: String::new(),
            event_id: event.event_id.clone(),
            actor: actor.to_owned(),
            at_ms: now_ms,
            at: tally_platform::store::datetime_secs(now_ms),
            payment_method: String::new(),
        }
    }

    /// Records a successful payment, posts cash/receivable and marks the invoice paid once
    /// the payments cover the amount due.
    async fn pay(
        &self,
        inv: &InvoiceFacts,
        row: PaymentRow,
        actor: &str,
        now_ms: i64,
    ) -> Result<String, Error> {
        let (status, _) = ensure_finalized(&self.db, inv, now_ms).await?;
        let payments = store::payments_of(&self.db, &inv.invoice_id).await?;
        // checked before anything is stored: a payment that overflows the sum is refused
        let paid_minor = paid_except(&payments, &row.payment_id)?
            .checked_add(row.amount_minor)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "amount_minor {}: the invoice's payments would overflow",
                    row.amount_minor
                ))
            })?;
        if !payments.iter().any(|p| p.payment_id == row.payment_id) {
            store::append_payment(&self.db, &row).await?;
        }
        let op = Operation::Payment {
            payment_id: row.payment_id.clone(),
            invoice_id: inv.invoice_id.clone(),
            amount_minor: row.amount_minor,
        };
        post(&self.db, &op, &inv.currency, &inv.customer, actor, now_ms).await?;
        if paid_minor < inv.amount_due_minor {
            return Ok("partially_paid".into());
        }
        if !(status.is_open()) {
            return Ok(format!("payment_recorded_invoice_{status}"));
        }
        let reason = format!("payment {} via {}", row.gateway_ref, row.gateway);
        let r = lifecycle::record(
            &self.db,
            &inv.invoice_id,
            InvoiceStatus::Paid,
            actor,
            &reason,
            now_ms,
        )
        .await?;
        if let Recorded::Applied(t) = &r {
            tracing::info!(invoice_id = %t.invoice_id, from = %t.from, to = %t.to, actor = %t.actor,
                at_ms = t.at_ms, "invoice status changed");
        }
        Ok("paid".into())
    }

    /// Records a refund of a recorded payment and posts refunds/cash. The invoice keeps its
    /// status (a refund is money moving, not a reopened invoice).
    pub async fn refund(&self, refund: PaymentRow) -> Result<(String, String), Error> {
        let existing = store::payments_of(&self.db, &refund.invoice_id).await?;
        let paid = checked_sum(
            "the payments of the invoice",
            existing
                .iter()
                .filter(|p| p.kind == "payment" && p.gateway_ref != refund.gateway_ref)
                .map(|p| p.amount_minor),
        )?;
        let refunded = checked_sum(
            "the refunds of the invoice",
            existing
                .iter()
                .filter(|p| p.kind == "refund" && p.payment_id != refund.payment_id)
                .map(|p| p.amount_minor),
        )?;
        if refund.amount_minor <= 0 {
            return Err(Error::Invalid(format!(
                "amount_minor {}: a refund is positive",
                refund.amount_minor
            )));
        }
        // i64::MAX used to wrap `refunded + amount` negative, under any payment
        let after = refunded.checked_add(refund.amount_minor).ok_or_else(|| {
            Error::Invalid(format!(
                "amount_minor {}: the invoice's refunds would overflow",
                refund.amount_minor
            ))
        })?;
        if after > paid {
            return Ok(("refund_exceeds_payments".into(), refund.invoice_id));
        }
        if !existing.iter().any(|p| p.payment_id == refund.payment_id) {
            store::append_payment(&self.db, &refund).await?;
        }
        let op = Operation::Refund {
            refund_id: refund.payment_id.clone(),
            invoice_id: refund.invoice_id.clone(),
            amount_minor: refund.amount_minor,
        };
        post(
            &self.db,
            &op,
            &refund.currency,
            &refund.customer,
            &refund.actor,
            refund.at_ms,
        )
        .await?;
        Ok(("refunded".into(), refund.invoice_id))
    }

    /// Marks an open invoice uncollectible and writes off what is still owed.
    pub async fn write_off(
        &self,
        invoice_id: &str,
        actor: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<i64, Error> {
        let _guard = self.lock.lock().await;
        let inv = store::invoice(&self.db, invoice_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("invoice {invoice_id}")))?;
        ensure_finalized(&self.db, &inv, now_ms).await?;
        let payments = store::payments_of(&self.db, invoice_id).await?;
        let paid = paid_except(&payments, "")?;
        let outstanding = inv
            .amount_due_minor
            .checked_sub(paid)
            .ok_or_else(|| Error::Invalid("the outstanding amount overflows".into()))?
            .max(0);
        lifecycle::record(
            &self.db,
            invoice_id,
            InvoiceStatus::Uncollectible,
            actor,
            reason,
            now_ms,
        )
        .await?;
        let op = Operation::WriteOff {
            invoice_id: invoice_id.to_owned(),
            amount_minor: outstanding,
        };
        post(&self.db, &op, &inv.currency, &inv.customer, actor, now_ms).await?;
        tracing::info!(
            invoice_id,
            actor,
            reason,
            outstanding_minor = outstanding,
            at_ms = now_ms,
            "invoice written off"
        );
        Ok(outstanding)
    }

    /// Serialized manual refund (the API's entry point).
    pub async fn refund_locked(&self, refund: PaymentRow) -> Result<(String, String), Error> {
        let _guard = self.lock.lock().await;
        self.refund(refund).await
    }

    /// Posts what the ledger is missing: prepaid credit grants, finalizations of finalized
    /// invoices (and the prepaid credit they applied), voids of voided ones and credit notes (when
    /// `v_credit_notes` exists). Returns the journals stored, not counting credit applications
    /// (they go with their finalization).
    pub async fn sync_ledger(&self, now_ms: i64) -> Result<usize, Error> {
        let _guard = self.lock.lock().await;
        let posted = store::journal_ids(&self.db).await?;
        // every invoice's lifecycle status in one query (not one query per invoice)
        let statuses = store::statuses(&self.db).await?;
        let mut n = 0;
        for g in crate::grants::unposted(&self.db).await? {
            let (op, currency, customer) = (&g.op, &g.currency, &g.customer);
            n += usize::from(post(&self.db, op, currency, customer, SYNC_ACTOR, now_ms).await?);
        }
        for inv in store::finalized_invoices(&self.db).await? {
            let (status, booked) = if posted.contains(&format!("fin:{}", inv.invoice_id)) {
                // a crash between the finalization and its credit application: post the
                // latter (ensure_finalized below posts both itself)
                let applied = inv.total_minor - inv.amount_due_minor;
                if applied > 0 && !posted.contains(&format!("app:{}", inv.invoice_id)) {
                    let op = Operation::CreditApplied {
                        invoice_id: inv.invoice_id.clone(),
                        amount_minor: applied,
                    };
                    post(
                        &self.db,
                        &op,
                        &inv.currency,
                        &inv.customer,
                        SYNC_ACTOR,
                        now_ms,
                    )
                    .await?;
                }
                let status = statuses.get(&inv.invoice_id).copied();
                (status.unwrap_or(InvoiceStatus::Draft), true)
            } else {
                let (status, booked) = ensure_finalized(&self.db, &inv, now_ms).await?;
                n += usize::from(booked);
                (status, booked)
            };
            let void = Operation::Void {
                invoice_id: inv.invoice_id.clone(),
                total_minor: inv.total_minor,
                tax_minor: inv.tax_minor,
                amount_due_minor: inv.amount_due_minor,
            };
            // a draft voided before finalization was never booked: nothing to reverse
            if booked && status == InvoiceStatus::Void && !posted.contains(&void.journal_id()) {
                let (currency, customer) = (&inv.currency, &inv.customer);
                n += usize::from(
                    post(&self.db, &void, currency, customer, SYNC_ACTOR, now_ms).await?,
                );
            }
        }
        for cn in crate::credit_notes::unposted(&self.db, &posted).await? {
            let (op, currency, customer) = (&cn.op, &cn.currency, &cn.customer);
            n += usize::from(post(&self.db, op, currency, customer, SYNC_ACTOR, now_ms).await?);
        }
        Ok(n)
    }
}

/// Posts `op` unless its journal is already posted.
pub(crate) async fn post(
    db: &Client,
    op: &Operation,
    currency: &str,
    customer: &str,
    actor: &str,
    now_ms: i64,
) -> Result<bool, Error> {
    let journal = ledger::post(op, currency)?;
    // a zero amount (no credit applied, say) has no lines: nothing to store, and storing
    // nothing must not count or log as a posting
    if journal.lines.is_empty()
        || store::journal_exists(db, &journal.currency, &journal.journal_id).await?
    {
        return Ok(false);
    }
    store::append_journal(db, &journal, customer, actor, now_ms).await?;
    metrics::journal(journal.kind);
    tracing::info!(journal_id = %journal.journal_id, kind = journal.kind, customer, actor,
        at_ms = now_ms, "ledger journal posted");
    Ok(true)
}

/// Makes sure a finalized invoice is finalized in the lifecycle (recording the invoicer's
/// finalization when only `v_invoices` shows it) and its receivable is booked; returns the
/// lifecycle status and whether the invoice was ever finalized (and so is booked). A draft,
/// or a draft voided before finalization, is not booked.
pub async fn ensure_finalized(
    db: &Client,
    inv: &InvoiceFacts,
    now_ms: i64,
) -> Result<(InvoiceStatus, bool), Error> {
    let history = lifecycle::history(db, &inv.invoice_id).await?;
    // the lifecycle's fold, step by step: whether it ever passed through `finalized`
    let path =
        tally_domain::invoice_status::path(InvoiceStatus::Draft, history.iter().map(|t| t.to));
    let mut status = path.last().copied().unwrap_or(InvoiceStatus::Draft);
    let mut finalized = path.contains(&InvoiceStatus::Finalized);
    if status == InvoiceStatus::Draft && inv.invoicer_status == "finalized" {
        lifecycle::record(
            db,
            &inv.invoice_id,
            InvoiceStatus::Finalized,
            SYNC_ACTOR,
            "finalized in v_invoices by the invoicer",
            now_ms,
        )
        .await?;
        status = InvoiceStatus::Finalized;
        finalized = true;
    }
    if finalized {
        let op = Operation::InvoiceFinalized {
            invoice_id: inv.invoice_id.clone(),
            total_minor: inv.total_minor,
            tax_minor: inv.tax_minor,
            amount_due_minor: inv.amount_due_minor,
        };
        post(db, &op, &inv.currency, &inv.customer, SYNC_ACTOR, now_ms).await?;
        let applied = Operation::CreditApplied {
            invoice_id: inv.invoice_id.clone(),
            amount_minor: inv.total_minor - inv.amount_due_minor,
        };
        post(
            db,
            &applied,
            &inv.currency,
            &inv.customer,
            SYNC_ACTOR,
            now_ms,
        )
        .await?;
    }
    Ok((status, finalized))
}
