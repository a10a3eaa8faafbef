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
//!
//! Shape: each entry point loads the facts (the invoice or top-up, its recorded payments, its
//! lifecycle status), decides in a pure function of [`decide`] over typed values (payment
//! kind and status, [`Outcome`]), then appends what was decided.

use clickhouse::Client;
use tally_domain::{Currency, InvoiceStatus};
use tally_invoice::lifecycle::{self, Recorded};
use tokio::sync::Mutex;

use crate::gateway::{Effect, GatewayEvent};
use crate::ledger::{self, Operation};
use crate::store::{self, InvoiceFacts, PaymentRow};
use crate::wallet::store::TopUpDue;
use crate::{metrics, Error};

pub mod decide;

pub use decide::{checked_sum, Outcome, PaymentKind, PaymentStatus, Source};
use decide::{movements, Owner, Payee};

/// The actor of the changes the ledger sync makes on its own.
pub const SYNC_ACTOR: &str = "payments:sync";

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

/// What a successful payment's id names, as loaded.
enum Target {
    Invoice(InvoiceFacts),
    TopUp(TopUpDue),
    Unknown,
}

impl Target {
    fn payee(&self) -> Payee<'_> {
        match self {
            Target::Invoice(inv) => Payee::Invoice {
                currency: inv.currency.code(),
            },
            Target::TopUp(t) => Payee::TopUp {
                currency: t.currency.code(),
            },
            Target::Unknown => Payee::Unknown,
        }
    }
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
        let src = Source {
            gateway,
            actor,
            event_id: &event.event_id,
            at_ms: now_ms,
        };
        let (outcome, invoice_id) = match &event.effect {
            None => (Outcome::IgnoredType, String::new()),
            Some(effect) => self.effect(&src, effect).await?,
        };
        let outcome = outcome.to_string();
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

    async fn effect(&self, src: &Source<'_>, effect: &Effect) -> Result<(Outcome, String), Error> {
        match effect {
            Effect::PaymentSucceeded {
                payment_ref,
                invoice_id,
                amount_minor,
                currency,
                payment_method,
            } => {
                let mut row = src.row(
                    PaymentKind::Payment,
                    Owner {
                        invoice_id,
                        customer: "",
                        currency,
                    },
                    payment_ref,
                    *amount_minor,
                );
                row.payment_method.clone_from(payment_method);
                self.succeeded(row).await
            }
            Effect::PaymentFailed {
                payment_ref,
                invoice_id,
                amount_minor,
                currency,
                reason,
                payment_method,
            } => {
                let owner = Owner {
                    invoice_id,
                    customer: "",
                    currency,
                };
                let mut row = src.row(PaymentKind::Attempt, owner, payment_ref, *amount_minor);
                row.failure_reason.clone_from(reason);
                row.payment_method.clone_from(payment_method);
                self.failed(row).await
            }
            Effect::Refunded {
                refund_ref,
                payment_ref,
                amount_minor,
                currency,
            } => {
                let (refund_ref, payment_ref) = (refund_ref.as_str(), payment_ref.as_str());
                self.refunded(src, refund_ref, payment_ref, *amount_minor, currency)
                    .await
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
                    gateway: src.gateway,
                    actor: src.actor,
                    event_id: src.event_id,
                    payment_ref,
                    reason,
                    dispute_id: dispute_ref,
                    amount_minor: *amount_minor,
                    currency,
                    change,
                };
                let (outcome, invoice_id) =
                    crate::disputes::apply(&self.db, &incoming, src.at_ms).await?;
                Ok((Outcome::Dispute(outcome), invoice_id))
            }
        }
    }

    /// A successful payment `row` (its customer still to fill in): to the invoice or wallet
    /// top-up its invoice id names, when the currencies agree.
    async fn succeeded(&self, mut row: PaymentRow) -> Result<(Outcome, String), Error> {
        let target = match store::invoice(&self.db, &row.invoice_id).await? {
            Some(inv) => Target::Invoice(inv),
            // a wallet top-up is paid under its payable id; the wallet pass makes the grant
            // available (and books the cash) once payments cover it
            None => match crate::wallet::store::top_up(&self.db, &row.invoice_id).await? {
                Some(t) => Target::TopUp(t),
                None => Target::Unknown,
            },
        };
        if let Err(outcome) = decide::admit(target.payee(), &row.currency) {
            return Ok((outcome, row.invoice_id));
        }
        match target {
            Target::Invoice(inv) => {
                row.customer = inv.customer.to_string();
                let outcome = self.pay(&inv, row).await?;
                Ok((outcome, inv.invoice_id))
            }
            Target::TopUp(t) => {
                row.customer = t.customer.to_string();
                store::append_payment(&self.db, &row).await?;
                Ok((Outcome::TopUpPaid, row.invoice_id))
            }
            Target::Unknown => Ok((Outcome::UnknownInvoice, row.invoice_id)),
        }
    }

    /// A failed attempt `row` (its customer still to fill in): recorded against the invoice
    /// its invoice id names, whatever the invoice's status.
    async fn failed(&self, mut row: PaymentRow) -> Result<(Outcome, String), Error> {
        let Some(inv) = store::invoice(&self.db, &row.invoice_id).await? else {
            return Ok((Outcome::UnknownInvoice, row.invoice_id));
        };
        let status = lifecycle::status(&self.db, &inv.invoice_id).await?;
        row.customer = inv.customer.to_string();
        store::append_payment(&self.db, &row).await?;
        Ok((decide::failure(status), inv.invoice_id))
    }

    /// A gateway's refund `refund_ref` of its recorded payment `payment_ref`.
    async fn refunded(
        &self,
        src: &Source<'_>,
        refund_ref: &str,
        payment_ref: &str,
        amount_minor: i64,
        currency: &str,
    ) -> Result<(Outcome, String), Error> {
        let Some(paid) = store::payment_by_ref(&self.db, src.gateway, payment_ref).await? else {
            return Ok((Outcome::RefundOfUnknownPayment, String::new()));
        };
        // a refund is netted against its payment: in the payment's currency or not at all
        if currency != paid.currency {
            return Ok((Outcome::CurrencyMismatch, paid.invoice_id));
        }
        let id = src.payment_id(PaymentKind::Refund, refund_ref);
        let mut refund = src.refund_of(paid, id, refund_ref, amount_minor);
        currency.clone_into(&mut refund.currency);
        self.refund(refund).await
    }

    /// Records a successful payment, posts cash/receivable and marks the invoice paid once
    /// the payments cover the amount due.
    async fn pay(&self, inv: &InvoiceFacts, row: PaymentRow) -> Result<Outcome, Error> {
        let (status, _) = ensure_finalized(&self.db, inv, row.at_ms).await?;
        let recorded = store::payments_of(&self.db, &inv.invoice_id).await?;
        // decided before anything is stored: a payment that overflows the sum is refused
        let d = decide::payment(
            status,
            inv.amount_due_minor,
            &movements(&recorded),
            &row.payment_id,
            row.amount_minor,
        )?;
        if d.append {
            store::append_payment(&self.db, &row).await?;
        }
        let op = Operation::Payment {
            payment_id: row.payment_id.clone(),
            invoice_id: inv.invoice_id.clone(),
            amount_minor: row.amount_minor,
        };
        let (actor, now_ms) = (row.actor.as_str(), row.at_ms);
        post_invoice(&self.db, &op, inv, actor, now_ms).await?;
        if d.mark_paid {
            let reason = format!("payment {} via {}", row.gateway_ref, row.gateway);
            let to = InvoiceStatus::Paid;
            let r =
                lifecycle::record(&self.db, &inv.invoice_id, to, actor, &reason, now_ms).await?;
            if let Recorded::Applied(t) = &r {
                tracing::info!(invoice_id = %t.invoice_id, from = %t.from, to = %t.to,
                    actor = %t.actor, at_ms = t.at_ms, "invoice status changed");
            }
        }
        Ok(d.outcome)
    }

    /// Records a refund of a recorded payment and posts refunds/cash. The invoice keeps its
    /// status (a refund is money moving, not a reopened invoice). A refund in a currency this
    /// product does not know is neither recorded nor posted (`currency_mismatch`: its payment
    /// was in a known one).
    pub async fn refund(&self, refund: PaymentRow) -> Result<(Outcome, String), Error> {
        let Ok(currency) = refund.currency.parse::<Currency>() else {
            return Ok((Outcome::CurrencyMismatch, refund.invoice_id));
        };
        let recorded = store::payments_of(&self.db, &refund.invoice_id).await?;
        let d = decide::refund(
            &movements(&recorded),
            &refund.payment_id,
            &refund.gateway_ref,
            refund.amount_minor,
        )?;
        if d.append {
            store::append_payment(&self.db, &refund).await?;
        }
        if d.post {
            let op = Operation::Refund {
                refund_id: refund.payment_id.clone(),
                invoice_id: refund.invoice_id.clone(),
                amount_minor: refund.amount_minor,
            };
            post(
                &self.db,
                &op,
                currency,
                &refund.customer,
                &refund.actor,
                refund.at_ms,
            )
            .await?;
        }
        Ok((d.outcome, refund.invoice_id))
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
        let recorded = store::payments_of(&self.db, invoice_id).await?;
        let outstanding = decide::outstanding(inv.amount_due_minor, &movements(&recorded))?;
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
        post_invoice(&self.db, &op, &inv, actor, now_ms).await?;
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
    pub async fn refund_locked(&self, refund: PaymentRow) -> Result<(Outcome, String), Error> {
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
        let statuses = lifecycle::statuses(&self.db).await?;
        let mut n = 0;
        for g in crate::grants::unposted(&self.db).await? {
            let (op, currency, customer) = (&g.op, g.currency, g.customer.as_str());
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
                    post_invoice(&self.db, &op, &inv, SYNC_ACTOR, now_ms).await?;
                }
                let recorded = statuses.get(&inv.invoice_id).copied();
                let recorded = recorded.unwrap_or(InvoiceStatus::Draft);
                (lifecycle::current(recorded, inv.document_finalized()), true)
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
                n += usize::from(post_invoice(&self.db, &void, &inv, SYNC_ACTOR, now_ms).await?);
            }
        }
        for cn in crate::credit_notes::unposted(&self.db, &posted).await? {
            let (op, currency, customer) = (&cn.op, cn.currency, cn.customer.as_str());
            n += usize::from(post(&self.db, op, currency, customer, SYNC_ACTOR, now_ms).await?);
        }
        Ok(n)
    }
}

/// Posts `op` unless its journal is already posted.
pub(crate) async fn post(
    db: &Client,
    op: &Operation,
    currency: Currency,
    customer: &str,
    actor: &str,
    now_ms: i64,
) -> Result<bool, Error> {
    let journal = ledger::post(op, currency)?;
    // a zero amount (no credit applied, say) has no lines: nothing to store, and storing
    // nothing must not count or log as a posting
    if journal.lines.is_empty()
        || store::journal_exists(db, journal.currency.code(), &journal.journal_id).await?
    {
        return Ok(false);
    }
    store::append_journal(db, &journal, customer, actor, now_ms).await?;
    metrics::journal(journal.kind);
    tracing::info!(journal_id = %journal.journal_id, kind = journal.kind, customer, actor,
        at_ms = now_ms, "ledger journal posted");
    Ok(true)
}

/// [`post`] in `inv`'s currency, for its customer.
async fn post_invoice(
    db: &Client,
    op: &Operation,
    inv: &InvoiceFacts,
    actor: &str,
    now_ms: i64,
) -> Result<bool, Error> {
    post(db, op, inv.currency, inv.customer.as_str(), actor, now_ms).await
}

/// Makes sure a finalized invoice is finalized in the lifecycle (recording the invoicer's
/// finalization when only `v_invoices` shows it, [`lifecycle::record_document_finalized`]) and
/// its receivable is booked; returns the lifecycle status and whether the invoice was ever
/// finalized (and so is booked). A draft, or a draft voided before finalization, is not booked.
pub async fn ensure_finalized(
    db: &Client,
    inv: &InvoiceFacts,
    now_ms: i64,
) -> Result<(InvoiceStatus, bool), Error> {
    let (status, finalized) = lifecycle::record_document_finalized(
        db,
        &inv.invoice_id,
        inv.document_finalized(),
        SYNC_ACTOR,
        now_ms,
    )
    .await?;
    if finalized {
        let op = Operation::InvoiceFinalized {
            invoice_id: inv.invoice_id.clone(),
            total_minor: inv.total_minor,
            tax_minor: inv.tax_minor,
            amount_due_minor: inv.amount_due_minor,
        };
        post_invoice(db, &op, inv, SYNC_ACTOR, now_ms).await?;
        let applied = Operation::CreditApplied {
            invoice_id: inv.invoice_id.clone(),
            amount_minor: inv.total_minor - inv.amount_due_minor,
        };
        post_invoice(db, &applied, inv, SYNC_ACTOR, now_ms).await?;
    }
    Ok((status, finalized))
}
