//! Property test of the wallet's pure decision over random operation sequences (grants and
//! paid top-ups with priorities and expiries, usage growing and shrinking (refunds of usage),
//! finalizations applying what was reserved, invoice voids, grant voids, time passing): after
//! every step, deciding again decides nothing, no grant holds less than zero, the balance
//! equals what its ledger entries say the customer holds, and the trial balance is zero.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use tally_payments::ledger::{self, Account, Operation, TrialBalance};
use tally_payments::wallet::consume::{decide, Facts, Period, PeriodState};
use tally_payments::wallet::{balances, remaining, Grant, GrantKind, Movement};

fn acme() -> tally_domain::CustomerId {
    tally_domain::CustomerId::new("acme").unwrap()
}

fn usd() -> tally_domain::Currency {
    "USD".parse().unwrap()
}

const DAY: i64 = 86_400_000;

#[derive(Debug, Clone)]
enum Op {
    Grant {
        amount: i64,
        priority: u8,
        expires_in_days: Option<i64>,
        top_up: bool,
    },
    PayTopUps,
    Usage {
        period: usize,
        usage: i64,
    },
    Finalize {
        period: usize,
        less: i64,
    },
    VoidInvoice {
        period: usize,
    },
    VoidGrant {
        index: usize,
    },
    Wait {
        days: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            1i64..2_000,
            0u8..=100,
            proptest::option::of(1i64..20),
            any::<bool>()
        )
            .prop_map(|(amount, priority, expires_in_days, top_up)| Op::Grant {
                amount,
                priority,
                expires_in_days,
                top_up
            }),
        Just(Op::PayTopUps),
        (0usize..3, 0i64..3_000).prop_map(|(period, usage)| Op::Usage { period, usage }),
        (0usize..3, 0i64..100).prop_map(|(period, less)| Op::Finalize { period, less }),
        (0usize..3).prop_map(|period| Op::VoidInvoice { period }),
        (0usize..8).prop_map(|index| Op::VoidGrant { index }),
        (1i64..10).prop_map(|days| Op::Wait { days }),
    ]
}

struct Model {
    now: i64,
    grants: Vec<Grant>,
    movements: Vec<Movement>,
    periods: Vec<Period>,
    tb: TrialBalance,
    /// The customer's `customer_credit` per the ledger (credit minus debit).
    ledger_credit: i128,
}

impl Model {
    fn post(&mut self, op: &Operation) {
        let j = ledger::post(op, usd()).expect("posts");
        for l in &j.lines {
            if l.account == Account::CustomerCredit {
                self.ledger_credit += i128::from(l.credit_minor) - i128::from(l.debit_minor);
            }
        }
        self.tb.add_journal(&j);
    }

    fn step(&mut self, voiding: &BTreeSet<String>) {
        let decided = decide(&Facts {
            customer: &acme(),
            grants: &self.grants,
            movements: &self.movements,
            periods: &self.periods,
            voiding,
            now_ms: self.now,
        })
        .expect("decides");
        let kinds: BTreeMap<String, GrantKind> = self
            .grants
            .iter()
            .map(|g| (g.grant_id.clone(), g.kind))
            .collect();
        for m in &decided {
            if let Some(op) = m.operation(kinds.get(&m.grant_id).copied()) {
                self.post(&op);
            }
        }
        self.movements.extend(decided);
    }

    fn reserved(&self, invoice: &str) -> i64 {
        self.movements
            .iter()
            .filter(|m| m.invoice_id == invoice && !m.grant_id.is_empty())
            .map(|m| -m.effect_minor())
            .sum()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_wallet_balance_is_its_ledger_and_the_books_balance(ops in proptest::collection::vec(op(), 1..60)) {
        let mut m = Model {
            now: 10 * DAY,
            grants: Vec::new(),
            movements: Vec::new(),
            periods: (0..3)
                .map(|i| Period {
                    invoice_id: format!("inv_{i}"),
                    currency: "USD".parse().unwrap(),
                    period_start_ms: i * 30 * DAY,
                    state: PeriodState::Open { usage_minor: 0 },
                })
                .collect(),
            tb: TrialBalance::default(),
            ledger_credit: 0,
        };
        for op in ops {
            let mut voiding = BTreeSet::new();
            match op {
                Op::Grant { amount, priority, expires_in_days, top_up } => {
                    let n = m.grants.len();
                    m.grants.push(Grant {
                        grant_id: format!("g{n}"),
                        customer: acme(),
                        currency: usd(),
                        amount_minor: amount,
                        kind: if top_up { GrantKind::TopUp } else { GrantKind::Promotional },
                        priority,
                        expires_at_ms: expires_in_days.map(|d| m.now + d * DAY),
                        created_at_ms: m.now,
                        paid_at_ms: None,
                    });
                }
                Op::PayTopUps => {
                    let now = m.now;
                    for g in m.grants.iter_mut().filter(|g| g.kind == GrantKind::TopUp) {
                        g.paid_at_ms.get_or_insert(now);
                    }
                }
                Op::Usage { period, usage } => {
                    if let PeriodState::Open { .. } = m.periods[period].state {
                        m.periods[period].state = PeriodState::Open { usage_minor: usage };
                    }
                }
                Op::Finalize { period, less } => {
                    if let PeriodState::Open { usage_minor } = m.periods[period].state {
                        // the invoice (total = usage) applies what the wallet reserved, or
                        // less when the invoice is smaller
                        let id = m.periods[period].invoice_id.clone();
                        let applied = (m.reserved(&id) - less).max(0).min(usage_minor);
                        m.post(&Operation::InvoiceFinalized { invoice_id: id.clone(), total_minor: usage_minor, tax_minor: 0, amount_due_minor: usage_minor - applied });
                        m.post(&Operation::CreditApplied { invoice_id: id, amount_minor: applied });
                        m.periods[period].state = PeriodState::Finalized { credits_applied_minor: applied };
                    }
                }
                Op::VoidInvoice { period } => {
                    match m.periods[period].state {
                        PeriodState::Finalized { credits_applied_minor } => {
                            let id = m.periods[period].invoice_id.clone();
                            // the total is not known here: the void's credit part is what matters
                            m.post(&Operation::Void { invoice_id: id, total_minor: credits_applied_minor, tax_minor: 0, amount_due_minor: 0 });
                            // (the finalization's receivable for the amount due stays: it
                            // balances on its own)
                            m.periods[period].state = PeriodState::Void;
                        }
                        PeriodState::Open { .. } => m.periods[period].state = PeriodState::Void,
                        PeriodState::Void => {}
                    }
                }
                Op::VoidGrant { index } => {
                    if let Some(g) = m.grants.get(index) {
                        voiding.insert(g.grant_id.clone());
                    }
                }
                Op::Wait { days } => m.now += days * DAY,
            }
            m.step(&voiding);
            // deciding again from the result decides nothing
            let again = decide(&Facts {
                customer: &acme(),
                grants: &m.grants,
                movements: &m.movements,
                periods: &m.periods,
                voiding: &BTreeSet::new(),
                now_ms: m.now,
            }).unwrap();
            prop_assert!(again.is_empty(), "decided again: {again:?}");
            let left = remaining(&acme(), &m.movements).unwrap();
            prop_assert!(left.values().all(|v| *v >= 0), "{left:?}");
            let ids: BTreeSet<&str> = m.movements.iter().map(|x| x.movement_id.as_str()).collect();
            prop_assert_eq!(ids.len(), m.movements.len(), "movement ids are unique");
            let balance = balances(&acme(), &m.movements).unwrap().get(&usd()).copied().unwrap_or(0);
            prop_assert_eq!(i128::from(balance), m.ledger_credit, "wallet = ledger");
            prop_assert!(m.tb.is_balanced(), "{}", m.tb.render());
            // an open period never holds more than its usage
            for p in &m.periods {
                if let PeriodState::Open { usage_minor } = p.state {
                    prop_assert!(m.reserved(&p.invoice_id) <= usage_minor);
                }
            }
        }
    }
}
