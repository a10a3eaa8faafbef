//! Property: any sequence of payments, refunds and dispute events (created as a dispute or an
//! inquiry, funds withdrawn or reinstated, closed won, lost or as an inquiry), in any order and
//! with replays, decided by `disputes::decide` and posted by `ledger::post`, keeps every
//! currency balanced; deciding the same event again decides nothing; `disputes` holds exactly
//! the disputes held now; cash is payments − refunds − held − lost.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use tally_payments::disputes::{decide, DisputedPayment, Event, Facts};
use tally_payments::gateway::DisputeChange;
use tally_payments::ledger::{self, Account, DisputeStep, Operation, TrialBalance};

const CURRENCIES: [&str; 2] = ["USD", "JPY"];

#[derive(Debug, Clone)]
enum Op {
    Pay {
        payment: usize,
        amount: i64,
    },
    Refund {
        payment: usize,
        amount: i64,
    },
    Dispute {
        payment: usize,
        dispute: usize,
        amount: i64,
        change: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..4usize, 1..100_000i64).prop_map(|(payment, amount)| Op::Pay { payment, amount }),
        (0..4usize, 1..50_000i64).prop_map(|(payment, amount)| Op::Refund { payment, amount }),
        (0..4usize, 0..2usize, 1..120_000i64, 0..7u8).prop_map(
            |(payment, dispute, amount, change)| Op::Dispute {
                payment,
                dispute,
                amount,
                change
            }
        ),
    ]
}

fn change(c: u8) -> DisputeChange {
    let status = |s: &str| s.to_owned();
    match c {
        0 => DisputeChange::Opened {
            status: status("needs_response"),
        },
        1 => DisputeChange::Opened {
            status: status("warning_needs_response"),
        },
        2 => DisputeChange::FundsWithdrawn,
        3 => DisputeChange::FundsReinstated,
        4 => DisputeChange::Closed {
            status: status("won"),
        },
        5 => DisputeChange::Closed {
            status: status("lost"),
        },
        _ => DisputeChange::Closed {
            status: status("warning_closed"),
        },
    }
}

/// The facts of a dispute as `disputes::load` would read them after `apply`.
struct Dispute {
    facts: Facts,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn disputes_payments_and_refunds_keep_the_ledger_balanced(ops in prop::collection::vec(op(), 1..80)) {
        let mut tb = TrialBalance::default();
        let mut paid: BTreeMap<usize, i64> = BTreeMap::new();
        let mut refunded: BTreeMap<usize, i64> = BTreeMap::new();
        let mut disputes: BTreeMap<(usize, usize), Dispute> = BTreeMap::new();
        let mut lost: BTreeMap<&str, i64> = BTreeMap::new();
        let cur = |p: usize| CURRENCIES[p % 2];
        for op in ops {
            match op {
                Op::Pay { payment, amount } => {
                    if paid.contains_key(&payment) {
                        continue; // one payment per id, as payments are keyed
                    }
                    paid.insert(payment, amount);
                    let j = ledger::post(&Operation::Payment {
                        payment_id: format!("p{payment}"),
                        invoice_id: format!("i{payment}"),
                        amount_minor: amount,
                    }, cur(payment).parse().unwrap()).unwrap();
                    tb.add_journal(&j);
                }
                Op::Refund { payment, amount } => {
                    let Some(p) = paid.get(&payment) else { continue };
                    let r = refunded.entry(payment).or_default();
                    if *r + amount > *p {
                        continue; // refused by settle: above the payments
                    }
                    *r += amount;
                    let j = ledger::post(&Operation::Refund {
                        refund_id: format!("r{payment}:{r}"),
                        invoice_id: format!("i{payment}"),
                        amount_minor: amount,
                    }, cur(payment).parse().unwrap()).unwrap();
                    tb.add_journal(&j);
                }
                Op::Dispute { payment, dispute, amount, change: c } => {
                    let Some(p) = paid.get(&payment) else { continue };
                    let d = disputes.entry((payment, dispute)).or_insert_with(|| Dispute {
                        facts: Facts {
                            payment: DisputedPayment {
                                payment_id: format!("p{payment}"),
                                invoice_id: format!("i{payment}"),
                                currency: cur(payment).parse().unwrap(),
                                amount_minor: *p,
                            },
                            states: vec![],
                            recorded_amount_minor: None,
                            posted: BTreeSet::new(),
                        },
                    });
                    let event = Event {
                        dispute_id: format!("dp{payment}_{dispute}"),
                        amount_minor: amount,
                        currency: cur(payment).parse().unwrap(),
                        change: change(c),
                    };
                    let decision = decide(&d.facts, &event);
                    for op in &decision.journals {
                        let j = ledger::post(op, cur(payment).parse().unwrap()).unwrap();
                        if let Operation::Dispute { step, amount_minor, .. } = op {
                            prop_assert!(d.facts.posted.insert(step.kind()), "{:?} posted twice", step);
                            if matches!(step, DisputeStep::Lost { .. }) {
                                *lost.entry(cur(payment)).or_default() += amount_minor;
                            }
                        }
                        tb.add_journal(&j);
                    }
                    if d.facts.recorded_amount_minor.is_none() && !decision.states.is_empty() {
                        d.facts.recorded_amount_minor = Some(amount);
                    }
                    d.facts.states.extend(decision.states.iter().cloned());
                    // the same event again decides nothing
                    let again = decide(&d.facts, &event);
                    prop_assert!(again.journals.is_empty() && again.states.is_empty(),
                        "replay decided {:?}", again);
                }
            }
            prop_assert!(tb.is_balanced(), "{}", tb.render());
        }
        for c in CURRENCIES {
            let get = |a: Account| tb.currencies.get(c).and_then(|m| m.get(&a))
                .map_or(0, |t| t.balance_minor());
            let held: i128 = disputes.values()
                .filter(|d| d.facts.payment.currency.code() == c)
                .filter(|d| {
                    let p = &d.facts.posted;
                    p.contains("dispute_held") && !p.contains("dispute_released")
                        && !p.contains("dispute_lost")
                })
                .map(|d| i128::from(d.facts.recorded_amount_minor.unwrap_or(0)))
                .sum();
            prop_assert_eq!(get(Account::Disputes), held);
            prop_assert!(held >= 0);
            let payments: i128 = paid.iter().filter(|(p, _)| cur(**p) == c)
                .map(|(_, a)| i128::from(*a)).sum();
            let refunds: i128 = refunded.iter().filter(|(p, _)| cur(**p) == c)
                .map(|(_, a)| i128::from(*a)).sum();
            let lost = i128::from(lost.get(c).copied().unwrap_or(0));
            prop_assert_eq!(get(Account::DisputeLosses), lost);
            prop_assert_eq!(get(Account::Cash), payments - refunds - held - lost);
        }
    }
}
