//! Payment disputes (Stripe `charge.dispute.*`): the disputed amount is held when the provider
//! withdraws it (cash → disputes), released when the dispute is won or the funds reinstated
//! (disputes → cash), and booked as a loss when it is lost (disputes → dispute losses; from
//! cash when nothing was held). The invoice's lifecycle is not moved: `paid` is terminal, and
//! a lost dispute is money returned to the card holder, as Stripe Billing leaves a disputed
//! invoice paid; the invoice's disputes and their states are shown with it (`GET
//! /v1/invoices/{id}`).
//!
//! Shaped like the ledger: [`load`] reads the facts (the disputed payment, the states the
//! dispute reached, its journals posted), [`decide`] is a pure function of those typed values
//! and the event, and [`apply`] appends what it decided: the journals first, then the new
//! states. Every state is a new row of `payment_disputes` (`version` 1, 2, ...), never an
//! update, written once per (dispute, status); every journal id is deterministic
//! (`dsp:hold:<dispute>`, `dsp:release:<dispute>`, `dsp:lost:<dispute>`). So the same webhook
//! twice (or the same state under another event id) decides nothing the second time, and a
//! crash between the journals and the states is completed by the redelivery without doubling
//! anything (a state is written after its journals, so a recorded final state always has its
//! journals). Once a dispute is closed (`won`, `lost`, `warning_closed`) later events change
//! nothing, so an out-of-order `created` after `closed` holds nothing.

use std::collections::BTreeSet;

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use tally_domain::Currency;

use crate::gateway::DisputeChange;
use crate::ledger::{DisputeStep, Operation};
use crate::store::{self, PaymentRow};
use crate::Error;

/// Statuses after which a dispute moves no more.
pub const CLOSED: [&str; 3] = ["won", "lost", "warning_closed"];

/// The payment a dispute is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisputedPayment {
    pub payment_id: String,
    pub invoice_id: String,
    pub currency: Currency,
    pub amount_minor: i64,
}

/// What is known of a dispute before an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub payment: DisputedPayment,
    /// The statuses recorded, in version order.
    pub states: Vec<String>,
    /// The amount recorded with the first state, if any (every journal moves this amount).
    pub recorded_amount_minor: Option<i64>,
    /// The dispute journals already posted.
    pub posted: BTreeSet<&'static str>,
}

/// A dispute event, as the gateway decoded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub dispute_id: String,
    pub amount_minor: i64,
    pub currency: Currency,
    pub change: DisputeChange,
}

/// What an event does: the outcome recorded with the webhook, the states to append (in
/// order) and the journals to post (in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: &'static str,
    pub states: Vec<String>,
    pub journals: Vec<Operation>,
}

impl Facts {
    pub fn is_closed(&self) -> bool {
        self.states.iter().any(|s| CLOSED.contains(&s.as_str()))
    }

    fn has(&self, step: DisputeStep) -> bool {
        self.posted.contains(step.kind())
    }

    /// The amount is held now: withdrawn, not released, not lost.
    fn held_now(&self) -> bool {
        self.has(DisputeStep::Held)
            && !self.has(DisputeStep::Released)
            && !self.has(DisputeStep::Lost { from_held: true })
    }
}

/// Decides what `event` does to the dispute described by `facts`. Pure.
pub fn decide(facts: &Facts, event: &Event) -> Decision {
    let nothing = |outcome| Decision {
        outcome,
        states: vec![],
        journals: vec![],
    };
    if event.currency != facts.payment.currency {
        return nothing("currency_mismatch");
    }
    let amount = facts.recorded_amount_minor.unwrap_or(event.amount_minor);
    if amount <= 0 || amount > facts.payment.amount_minor {
        return nothing("dispute_exceeds_payment");
    }
    if facts.is_closed() {
        return nothing("dispute_already_closed");
    }
    let journal = |step| Operation::Dispute {
        dispute_id: event.dispute_id.clone(),
        invoice_id: facts.payment.invoice_id.clone(),
        step,
        amount_minor: amount,
    };
    let (outcome, status, step) = match &event.change {
        DisputeChange::Opened { status } => {
            // an inquiry (`warning_*`) withdraws nothing
            let withdrawn = !status.starts_with("warning_");
            let hold = withdrawn && !facts.has(DisputeStep::Held);
            (
                "dispute_opened",
                status.clone(),
                hold.then_some(DisputeStep::Held),
            )
        }
        DisputeChange::FundsWithdrawn => {
            let hold = !facts.has(DisputeStep::Held);
            (
                "dispute_funds_withdrawn",
                "funds_withdrawn".to_owned(),
                hold.then_some(DisputeStep::Held),
            )
        }
        DisputeChange::FundsReinstated => (
            "dispute_funds_reinstated",
            "funds_reinstated".to_owned(),
            facts.held_now().then_some(DisputeStep::Released),
        ),
        DisputeChange::Closed { status } if status == "lost" => (
            "dispute_lost",
            status.clone(),
            Some(DisputeStep::Lost {
                from_held: facts.held_now(),
            }),
        ),
        DisputeChange::Closed { status } => (
            if status == "won" {
                "dispute_won"
            } else {
                "dispute_closed"
            },
            status.clone(),
            facts.held_now().then_some(DisputeStep::Released),
        ),
    };
    Decision {
        outcome,
        states: if facts.states.contains(&status) {
            vec![]
        } else {
            vec![status]
        },
        journals: step.map(journal).into_iter().collect(),
    }
}

/// One recorded state of a dispute (table `payment_disputes`, in column order). Customer and
/// currency as stored: a reader types them one row at a time ([`views`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clickhouse::Row)]
pub struct DisputeRow {
    pub dispute_id: String,
    pub version: u32,
    pub status: String,
    pub invoice_id: String,
    pub payment_id: String,
    pub customer: String,
    pub gateway: String,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
    pub event_id: String,
    pub actor: String,
    pub at_ms: i64,
    pub at: u32,
}

const COLUMNS: &str = "SELECT dispute_id, argMin(version, at_ms) AS v, status, \
     argMin(invoice_id, at_ms), argMin(payment_id, at_ms), argMin(customer, at_ms), \
     argMin(gateway, at_ms), argMin(amount_minor, at_ms), argMin(currency, at_ms), \
     argMin(reason, at_ms), argMin(event_id, at_ms), argMin(actor, at_ms), min(at_ms), \
     toUInt32(min(at)) FROM payment_disputes";

/// The states of a dispute, in version order (the earliest record of each).
pub async fn states(db: &Client, dispute_id: &str) -> Result<Vec<DisputeRow>, Error> {
    Ok(db
        .query(&format!(
            "{COLUMNS} WHERE dispute_id = ? GROUP BY dispute_id, status ORDER BY v"
        ))
        .bind(dispute_id)
        .fetch_all()
        .await?)
}

/// The states of every dispute of an invoice, by dispute then version. A dispute's rows are
/// found by their invoice (a small table; one invoice has at most a few disputes).
pub async fn of_invoice(db: &Client, invoice_id: &str) -> Result<Vec<DisputeRow>, Error> {
    Ok(db
        .query(&format!(
            "{COLUMNS} WHERE dispute_id IN (SELECT dispute_id FROM payment_disputes \
             WHERE invoice_id = ?) GROUP BY dispute_id, status ORDER BY dispute_id, v"
        ))
        .bind(invoice_id)
        .fetch_all()
        .await?)
}

/// A dispute as the invoice API shows it: its latest status and every state it reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DisputeView {
    pub dispute_id: String,
    pub payment_id: String,
    /// The latest status (`funds_withdrawn` / `funds_reinstated` are states too).
    pub status: String,
    pub amount_minor: i64,
    /// Serialized as its code, as the stored string was.
    pub currency: Currency,
    pub reason: String,
    pub states: Vec<StateView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateView {
    pub version: u32,
    pub status: String,
    pub event_id: String,
    pub actor: String,
    pub at_ms: i64,
}

/// Groups the rows of [`of_invoice`] per dispute. A row whose stored currency does not parse
/// is logged and left out (the invoice and its other disputes are still shown).
pub fn views(rows: Vec<DisputeRow>) -> Vec<DisputeView> {
    let mut out: Vec<DisputeView> = Vec::new();
    for r in rows {
        let currency = match r.currency.parse::<Currency>() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(table = "payment_disputes", dispute_id = %r.dispute_id,
                    error = %e, "row left out: unknown currency");
                continue;
            }
        };
        let state = StateView {
            version: r.version,
            status: r.status.clone(),
            event_id: r.event_id,
            actor: r.actor,
            at_ms: r.at_ms,
        };
        match out.last_mut() {
            Some(d) if d.dispute_id == r.dispute_id => {
                d.status = r.status;
                d.states.push(state);
            }
            _ => out.push(DisputeView {
                dispute_id: r.dispute_id,
                payment_id: r.payment_id,
                status: r.status,
                amount_minor: r.amount_minor,
                currency,
                reason: r.reason,
                states: vec![state],
            }),
        }
    }
    out
}

/// The facts [`decide`] needs: the states recorded and the journals posted. A payment whose
/// stored currency does not parse is an error naming it (a single lookup: nothing else waits).
pub async fn load(
    db: &Client,
    payment: &PaymentRow,
    dispute_id: &str,
) -> Result<(Facts, Vec<DisputeRow>), Error> {
    let currency = payment.currency.parse::<Currency>().map_err(|e| {
        Error::Corrupt(format!(
            "payment {}: stored currency: {e}",
            payment.payment_id
        ))
    })?;
    let rows = states(db, dispute_id).await?;
    let mut posted = BTreeSet::new();
    for step in [
        DisputeStep::Held,
        DisputeStep::Released,
        DisputeStep::Lost { from_held: true },
    ] {
        let op = Operation::Dispute {
            dispute_id: dispute_id.to_owned(),
            invoice_id: String::new(),
            step,
            amount_minor: 0,
        };
        // a dispute's journals are posted in its payment's currency ([`apply`]): a lookup
        // on the ledger's sorting key
        if store::journal_exists(db, &payment.currency, &op.journal_id()).await? {
            posted.insert(step.kind());
        }
    }
    let facts = Facts {
        payment: DisputedPayment {
            payment_id: payment.payment_id.clone(),
            invoice_id: payment.invoice_id.clone(),
            currency,
            amount_minor: payment.amount_minor,
        },
        states: rows.iter().map(|r| r.status.clone()).collect(),
        recorded_amount_minor: rows.first().map(|r| r.amount_minor),
        posted,
    };
    Ok((facts, rows))
}

/// A verified dispute event from `gateway`: what to apply it to.
pub struct Incoming<'a> {
    pub gateway: &'a str,
    pub actor: &'a str,
    pub event_id: &'a str,
    pub payment_ref: &'a str,
    pub reason: &'a str,
    pub dispute_id: &'a str,
    pub amount_minor: i64,
    /// As the provider sent it: a code this service does not know cannot be the payment's
    /// currency (`currency_mismatch`, decided once the payment is found).
    pub currency: &'a str,
    pub change: &'a DisputeChange,
}

/// Loads, decides, posts the journals, then appends the states. Returns the outcome and the
/// invoice. The caller serializes changes (the settler's lock).
pub async fn apply(db: &Client, i: &Incoming<'_>, now_ms: i64) -> Result<(String, String), Error> {
    let Some(payment) = store::payment_by_ref(db, i.gateway, i.payment_ref).await? else {
        return Ok(("dispute_of_unknown_payment".into(), String::new()));
    };
    let Ok(currency) = i.currency.parse::<Currency>() else {
        return Ok(("currency_mismatch".into(), payment.invoice_id));
    };
    let event = Event {
        dispute_id: i.dispute_id.to_owned(),
        amount_minor: i.amount_minor,
        currency,
        change: i.change.clone(),
    };
    let (facts, _) = load(db, &payment, &event.dispute_id).await?;
    let d = decide(&facts, &event);
    for op in &d.journals {
        crate::settle::post(
            db,
            op,
            facts.payment.currency,
            &payment.customer,
            i.actor,
            now_ms,
        )
        .await?;
    }
    let first_version = u32::try_from(facts.states.len()).unwrap_or(u32::MAX);
    let amount = facts.recorded_amount_minor.unwrap_or(event.amount_minor);
    for (k, status) in d.states.iter().enumerate() {
        let row = DisputeRow {
            dispute_id: event.dispute_id.clone(),
            version: first_version.saturating_add(k as u32 + 1),
            status: status.clone(),
            invoice_id: payment.invoice_id.clone(),
            payment_id: payment.payment_id.clone(),
            customer: payment.customer.clone(),
            gateway: i.gateway.to_owned(),
            amount_minor: amount,
            currency: payment.currency.clone(),
            reason: i.reason.to_owned(),
            event_id: i.event_id.to_owned(),
            actor: i.actor.to_owned(),
            at_ms: now_ms,
            at: tally_platform::store::datetime_secs(now_ms),
        };
        let mut insert = db.insert::<DisputeRow>("payment_disputes").await?;
        insert.write(&row).await?;
        insert.end().await?;
        tracing::info!(dispute_id = %row.dispute_id, version = row.version, status = %row.status,
            invoice_id = %row.invoice_id, actor = i.actor, at_ms = now_ms, "dispute state recorded");
    }
    Ok((d.outcome.to_owned(), payment.invoice_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{self, TrialBalance};

    fn facts() -> Facts {
        Facts {
            payment: DisputedPayment {
                payment_id: "stripe:pi_1".into(),
                invoice_id: "inv_1".into(),
                currency: "USD".parse().unwrap(),
                amount_minor: 1_000,
            },
            states: vec![],
            recorded_amount_minor: None,
            posted: BTreeSet::new(),
        }
    }

    fn event(change: DisputeChange) -> Event {
        Event {
            dispute_id: "dp_1".into(),
            amount_minor: 600,
            currency: "USD".parse().unwrap(),
            change,
        }
    }

    /// Applies the decision to the facts as [`apply`] and [`load`] would.
    fn step(f: &mut Facts, tb: &mut TrialBalance, e: &Event) -> Decision {
        let d = decide(f, e);
        for op in &d.journals {
            let j = ledger::post(op, "USD".parse().unwrap()).unwrap();
            tb.add_journal(&j);
            let Operation::Dispute { step, .. } = op else {
                unreachable!()
            };
            f.posted.insert(step.kind());
        }
        if f.recorded_amount_minor.is_none() && !d.states.is_empty() {
            f.recorded_amount_minor = Some(e.amount_minor);
        }
        f.states.extend(d.states.iter().cloned());
        d
    }

    fn row(dispute_id: &str, version: u32, status: &str, currency: &str) -> DisputeRow {
        DisputeRow {
            dispute_id: dispute_id.into(),
            version,
            status: status.into(),
            invoice_id: "inv_1".into(),
            payment_id: "stripe:pi_1".into(),
            customer: "acme".into(),
            gateway: "stripe".into(),
            amount_minor: 600,
            currency: currency.into(),
            reason: "fraudulent".into(),
            event_id: format!("evt_{version}"),
            actor: "stripe".into(),
            at_ms: i64::from(version) * 1_000,
            at: version,
        }
    }

    #[test]
    fn views_group_states_and_leave_out_a_row_in_an_unknown_currency() {
        let v = views(vec![
            row("dp_1", 1, "needs_response", "USD"),
            row("dp_1", 2, "won", "USD"),
            row("dp_2", 1, "needs_response", "ZZZ"),
            row("dp_3", 1, "lost", "JPY"),
        ]);
        let got: Vec<_> = v
            .iter()
            .map(|d| (d.dispute_id.as_str(), d.status.as_str(), d.states.len()))
            .collect();
        assert_eq!(got, [("dp_1", "won", 2), ("dp_3", "lost", 1)]);
        let json = serde_json::to_value(&v[1]).unwrap();
        assert_eq!(json["currency"], "JPY", "serialized as its code, as before");
    }

    fn opened() -> DisputeChange {
        DisputeChange::Opened {
            status: "needs_response".into(),
        }
    }

    fn closed(s: &str) -> DisputeChange {
        DisputeChange::Closed { status: s.into() }
    }

    #[test]
    fn a_won_dispute_holds_then_releases_and_a_replay_decides_nothing() {
        let (mut f, mut tb) = (facts(), TrialBalance::default());
        let d = step(&mut f, &mut tb, &event(opened()));
        assert_eq!(
            (d.outcome, d.states.len(), d.journals.len()),
            ("dispute_opened", 1, 1)
        );
        let d = step(&mut f, &mut tb, &event(DisputeChange::FundsWithdrawn));
        assert_eq!((d.states.len(), d.journals.len()), (1, 0), "held once");
        assert_eq!(
            tb.currencies["USD"][&ledger::Account::Disputes].balance_minor(),
            600
        );
        let d = step(&mut f, &mut tb, &event(closed("won")));
        assert_eq!((d.outcome, d.journals.len()), ("dispute_won", 1));
        assert_eq!(
            tb.currencies["USD"][&ledger::Account::Disputes].balance_minor(),
            0
        );
        assert_eq!(
            tb.currencies["USD"][&ledger::Account::Cash].balance_minor(),
            0
        );
        for e in [opened(), closed("won"), closed("lost")] {
            let d = step(&mut f, &mut tb, &event(e));
            assert_eq!(
                (d.outcome, d.states.len(), d.journals.len()),
                ("dispute_already_closed", 0, 0)
            );
        }
        assert_eq!(f.states, ["needs_response", "funds_withdrawn", "won"]);
        assert!(tb.is_balanced());
    }

    #[test]
    fn a_lost_dispute_is_a_loss_from_what_was_held_or_from_cash() {
        let (mut f, mut tb) = (facts(), TrialBalance::default());
        step(&mut f, &mut tb, &event(opened()));
        let d = step(&mut f, &mut tb, &event(closed("lost")));
        assert_eq!(d.outcome, "dispute_lost");
        let usd = &tb.currencies["USD"];
        assert_eq!(usd[&ledger::Account::DisputeLosses].balance_minor(), 600);
        assert_eq!(usd[&ledger::Account::Disputes].balance_minor(), 0);
        assert_eq!(usd[&ledger::Account::Cash].balance_minor(), -600);
        // closed before it was ever opened here (out of order): the loss comes from cash,
        // and the late `created` holds nothing
        let (mut f, mut tb) = (facts(), TrialBalance::default());
        step(&mut f, &mut tb, &event(closed("lost")));
        let d = step(&mut f, &mut tb, &event(opened()));
        assert_eq!((d.outcome, d.journals.len()), ("dispute_already_closed", 0));
        let usd = &tb.currencies["USD"];
        assert_eq!(usd[&ledger::Account::Cash].balance_minor(), -600);
        assert_eq!(usd.get(&ledger::Account::Disputes), None);
    }

    #[test]
    fn an_inquiry_holds_nothing_and_bad_events_change_nothing() {
        let (mut f, mut tb) = (facts(), TrialBalance::default());
        let d = step(
            &mut f,
            &mut tb,
            &event(DisputeChange::Opened {
                status: "warning_needs_response".into(),
            }),
        );
        assert_eq!((d.states.len(), d.journals.len()), (1, 0));
        let d = step(&mut f, &mut tb, &event(closed("warning_closed")));
        assert_eq!((d.outcome, d.journals.len()), ("dispute_closed", 0));
        let mut big = event(opened());
        big.amount_minor = 1_001;
        assert_eq!(decide(&facts(), &big).outcome, "dispute_exceeds_payment");
        let mut other = event(opened());
        other.currency = "EUR".parse().unwrap();
        assert_eq!(decide(&facts(), &other).outcome, "currency_mismatch");
    }
}
