//! Property: whatever sequence of operations is posted (finalizations, payments, refunds,
//! credit notes, write-offs, voids, prepaid credit grants (raised and lowered) and their
//! application on invoices, in several currencies, with replays), the ledger is balanced in
//! every currency, cash equals payments minus refunds (grants never touch cash), and the credit
//! source equals what the grants added.

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;
use tally_payments::ledger::{post, Account, Operation, TrialBalance};

const CURRENCIES: [&str; 3] = ["USD", "JPY", "BHD"];

fn operation() -> impl Strategy<Value = (usize, Operation)> {
    let inv = (0u8..6).prop_map(|i| format!("inv_{i}"));
    let amount = 0i64..1_000_000;
    let currency = 0usize..CURRENCIES.len();
    prop_oneof![
        (
            currency.clone(),
            inv.clone(),
            amount.clone(),
            0u32..=100,
            0u32..=100
        )
            .prop_map(|(c, i, total, tax_pct, due_pct)| {
                (
                    c,
                    Operation::InvoiceFinalized {
                        invoice_id: i,
                        total_minor: total,
                        tax_minor: total * i64::from(tax_pct) / 100,
                        amount_due_minor: total * i64::from(due_pct) / 100,
                    },
                )
            }),
        (currency.clone(), inv.clone(), amount.clone(), 0u16..50).prop_map(|(c, i, a, n)| {
            (
                c,
                Operation::Payment {
                    payment_id: format!("pay_{i}_{n}"),
                    invoice_id: i,
                    amount_minor: a,
                },
            )
        }),
        (currency.clone(), inv.clone(), amount.clone(), 0u16..50).prop_map(|(c, i, a, n)| {
            (
                c,
                Operation::Refund {
                    refund_id: format!("re_{i}_{n}"),
                    invoice_id: i,
                    amount_minor: a,
                },
            )
        }),
        (
            currency.clone(),
            inv.clone(),
            amount.clone(),
            0u32..=100,
            0u16..50
        )
            .prop_map(|(c, i, a, pct, n)| {
                (
                    c,
                    Operation::CreditNote {
                        credit_note_id: format!("cn_{i}_{n}"),
                        invoice_id: i,
                        amount_minor: a,
                        tax_minor: a * i64::from(pct) / 100,
                    },
                )
            }),
        (currency.clone(), inv.clone(), amount.clone()).prop_map(|(c, i, a)| {
            (
                c,
                Operation::WriteOff {
                    invoice_id: i,
                    amount_minor: a,
                },
            )
        }),
        (currency.clone(), inv.clone(), amount.clone()).prop_map(|(c, i, a)| {
            (
                c,
                Operation::CreditApplied {
                    invoice_id: i,
                    amount_minor: a,
                },
            )
        }),
        (currency.clone(), 0u8..6, -1_000_000i64..1_000_000, 0i64..4).prop_map(|(c, g, d, v)| {
            (
                c,
                Operation::CreditGranted {
                    customer: "customer".into(),
                    grant_id: format!("grant_{g}"),
                    version_ms: v,
                    delta_minor: d,
                },
            )
        }),
        (currency, inv, amount, 0u32..=100).prop_map(|(c, i, total, tax_pct)| {
            (
                c,
                Operation::Void {
                    invoice_id: i,
                    total_minor: total,
                    tax_minor: total * i64::from(tax_pct) / 100,
                    amount_due_minor: total,
                },
            )
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_sequence_of_operations_leaves_every_currency_balanced(
        ops in proptest::collection::vec(operation(), 0..200)
    ) {
        let mut tb = TrialBalance::default();
        let mut posted = HashSet::new();
        let mut cash: BTreeMap<&str, i128> = BTreeMap::new();
        let mut source: BTreeMap<&str, i128> = BTreeMap::new();
        for (c, op) in &ops {
            let currency = CURRENCIES[*c];
            let journal = post(op, currency.parse().expect("a known currency")).expect("generated operations are valid");
            prop_assert!(tally_payments::ledger::is_balanced(&journal.lines));
            // a journal id is posted once, as the store does (replays post nothing)
            if !posted.insert(journal.journal_id.clone()) {
                continue;
            }
            match op {
                Operation::Payment { amount_minor, .. } => *cash.entry(currency).or_default() += i128::from(*amount_minor),
                Operation::Refund { amount_minor, .. } => *cash.entry(currency).or_default() -= i128::from(*amount_minor),
                Operation::CreditGranted { delta_minor, .. } => *source.entry(currency).or_default() += i128::from(*delta_minor),
                _ => {}
            }
            tb.add_journal(&journal);
            prop_assert_eq!(tb.difference_minor(currency), 0);
        }
        prop_assert!(tb.is_balanced());
        for c in CURRENCIES {
            let booked = tb.currencies.get(c).and_then(|a| a.get(&Account::Cash)).map_or(0, |t| t.balance_minor());
            prop_assert_eq!(booked, cash.get(c).copied().unwrap_or(0));
            let granted = tb.currencies.get(c).and_then(|a| a.get(&Account::CreditSource)).map_or(0, |t| t.balance_minor());
            prop_assert_eq!(granted, source.get(c).copied().unwrap_or(0));
        }
    }
}
