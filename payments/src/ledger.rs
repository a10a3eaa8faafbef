//! The double-entry ledger's rules: which accounts an operation debits and credits, and the
//! trial balance. Pure: no I/O, no clock.
//!
//! | operation          | debit                                    | credit                          |
//! |--------------------|------------------------------------------|---------------------------------|
//! | invoice finalized  | receivable (total)                       | revenue (net), tax payable      |
//! | credit applied     | customer credit (prepaid part of an invoice) | receivable                  |
//! | credit granted     | credit source (what the grant came from) | customer credit                 |
//! | grant reduced      | customer credit                          | credit source                   |
//! | payment            | cash                                     | receivable                      |
//! | refund             | refunds (contra-revenue)                 | cash                            |
//! | credit note        | revenue (net), tax payable               | receivable                      |
//! | write-off          | bad debt                                 | receivable                      |
//! | void               | revenue (net), tax payable, (customer credit returned) | receivable, customer credit |
//! | wallet grant       | credit source                            | customer credit                 |
//! | wallet top-up paid | cash                                     | customer credit                 |
//! | wallet reserve     | customer credit                          | credit reserved                 |
//! | wallet release     | credit reserved                          | customer credit                 |
//! | wallet invoiced    | credit reserved                          | customer credit                 |
//! | wallet expire      | customer credit                          | credit breakage                 |
//! | wallet void        | customer credit                          | credit source                   |
//! | dispute held       | disputes (funds the provider holds)      | cash                            |
//! | dispute released   | cash                                     | disputes                        |
//! | dispute lost       | dispute losses                           | disputes (cash if not held)     |
//!
//! Wallet journals (`crate::wallet`): rated usage of an open period reserves credit as it
//! arrives (`credit_reserved`, a liability: credit consumed by usage not invoiced yet); when
//! the period's invoice is finalized the reservation returns to `customer_credit`, from which
//! the invoice's `credit applied` journal takes it, so an invoice applies its credit once
//! whichever way it came. What expires unused is `credit_breakage` (income).
//!
//! Every journal is balanced in its one currency by construction (asserted), so any sequence
//! of journals is balanced in every currency. Journal ids are deterministic (one per invoice,
//! payment, refund, credit note, or grant version), so posting the same operation twice posts
//! nothing new. `customer_credit` is a liability: its credit balance is the prepaid credit
//! customers still hold; `credit_source` is the clearing account grants are booked against
//! (cash received for bought credits, or promotional expense for free ones: `credit_grants`
//! does not say which).
//! This module must never post an unbalanced journal or a negative amount.

use std::collections::BTreeMap;

use serde::Serialize;
use tally_domain::Currency;

/// A ledger account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Account {
    Receivable,
    Revenue,
    TaxPayable,
    Cash,
    /// Prepaid credits the customer holds (a liability).
    CustomerCredit,
    /// Money returned to customers (contra-revenue).
    Refunds,
    BadDebt,
    /// Where prepaid credit grants come from (a clearing account, see the module doc).
    CreditSource,
    /// Wallet credit consumed by rated usage of periods not invoiced yet (a liability).
    CreditReserved,
    /// Wallet credit that expired unused (income).
    CreditBreakage,
    /// Money of a disputed payment the provider withdrew and holds until the dispute closes
    /// (an asset: it comes back as cash when the dispute is won).
    Disputes,
    /// Disputed payments lost (money returned to the card holder; contra-revenue).
    DisputeLosses,
}

impl Account {
    pub const ALL: [Account; 12] = [
        Account::Receivable,
        Account::Revenue,
        Account::TaxPayable,
        Account::Cash,
        Account::CustomerCredit,
        Account::Refunds,
        Account::BadDebt,
        Account::CreditSource,
        Account::CreditReserved,
        Account::CreditBreakage,
        Account::Disputes,
        Account::DisputeLosses,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Account::Receivable => "receivable",
            Account::Revenue => "revenue",
            Account::TaxPayable => "tax_payable",
            Account::Cash => "cash",
            Account::CustomerCredit => "customer_credit",
            Account::Refunds => "refunds",
            Account::BadDebt => "bad_debt",
            Account::CreditSource => "credit_source",
            Account::CreditReserved => "credit_reserved",
            Account::CreditBreakage => "credit_breakage",
            Account::Disputes => "disputes",
            Account::DisputeLosses => "dispute_losses",
        }
    }
}

/// What a journal records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    InvoiceFinalized {
        invoice_id: String,
        total_minor: i64,
        tax_minor: i64,
        /// What the customer owes after prepaid credits (`<= total_minor`).
        amount_due_minor: i64,
    },
    Payment {
        payment_id: String,
        invoice_id: String,
        amount_minor: i64,
    },
    Refund {
        refund_id: String,
        invoice_id: String,
        amount_minor: i64,
    },
    CreditNote {
        credit_note_id: String,
        invoice_id: String,
        /// Gross, tax included.
        amount_minor: i64,
        tax_minor: i64,
    },
    WriteOff {
        invoice_id: String,
        amount_minor: i64,
    },
    Void {
        invoice_id: String,
        total_minor: i64,
        tax_minor: i64,
        amount_due_minor: i64,
    },
    /// Prepaid credit used on a finalized invoice (its `total - amount_due`).
    CreditApplied {
        invoice_id: String,
        amount_minor: i64,
    },
    /// A version of a prepaid credit grant: `delta_minor` is its amount minus what earlier
    /// versions of the same grant booked (negative: the grant was lowered).
    CreditGranted {
        customer: String,
        grant_id: String,
        version_ms: i64,
        delta_minor: i64,
    },
    /// A wallet movement (`crate::wallet`): its id is the movement's, `invoice_id` the
    /// period's invoice when the movement is usage of a period (empty otherwise).
    Wallet {
        journal_id: String,
        kind: WalletJournal,
        invoice_id: String,
        amount_minor: i64,
    },
    /// A step of a payment dispute (`crate::disputes`): the disputed amount held, released
    /// (won) or lost.
    Dispute {
        dispute_id: String,
        invoice_id: String,
        step: DisputeStep,
        amount_minor: i64,
    },
}

/// What a dispute journal records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisputeStep {
    /// The provider withdrew the disputed amount: cash to disputes.
    Held,
    /// The dispute was won (or the funds reinstated): disputes back to cash.
    Released,
    /// The dispute was lost: the amount is a loss, taken from what was held (`from_held`) or,
    /// when nothing is held (the funds were never withdrawn, or reinstated before), from cash.
    Lost { from_held: bool },
}

impl DisputeStep {
    pub fn kind(self) -> &'static str {
        match self {
            DisputeStep::Held => "dispute_held",
            DisputeStep::Released => "dispute_released",
            DisputeStep::Lost { .. } => "dispute_lost",
        }
    }

    fn id_part(self) -> &'static str {
        match self {
            DisputeStep::Held => "hold",
            DisputeStep::Released => "release",
            DisputeStep::Lost { .. } => "lost",
        }
    }

    /// (debit, credit) of the journal.
    fn accounts(self) -> (Account, Account) {
        match self {
            DisputeStep::Held => (Account::Disputes, Account::Cash),
            DisputeStep::Released => (Account::Cash, Account::Disputes),
            DisputeStep::Lost { from_held: true } => (Account::DisputeLosses, Account::Disputes),
            DisputeStep::Lost { from_held: false } => (Account::DisputeLosses, Account::Cash),
        }
    }
}

/// What a wallet journal records (see the module doc's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalletJournal {
    /// A promotional (or operator) grant became available.
    Granted,
    /// A paid top-up became available: its money is cash received.
    TopUpPaid,
    /// Rated usage of an open period consumed credit.
    Reserved,
    /// Usage of an open period went down: reserved credit returns.
    Released,
    /// The period's invoice was finalized: its reservation returns to customer credit, from
    /// which the invoice's `credit applied` journal takes it.
    Invoiced,
    /// What was left of a grant at its expiry.
    Expired,
    /// What was left of a grant when it was voided.
    Voided,
}

impl WalletJournal {
    pub fn kind(self) -> &'static str {
        match self {
            WalletJournal::Granted => "wallet_grant",
            WalletJournal::TopUpPaid => "wallet_top_up",
            WalletJournal::Reserved => "wallet_reserve",
            WalletJournal::Released => "wallet_release",
            WalletJournal::Invoiced => "wallet_invoiced",
            WalletJournal::Expired => "wallet_expire",
            WalletJournal::Voided => "wallet_void",
        }
    }

    /// (debit, credit) of the journal.
    fn accounts(self) -> (Account, Account) {
        match self {
            WalletJournal::Granted => (Account::CreditSource, Account::CustomerCredit),
            WalletJournal::TopUpPaid => (Account::Cash, Account::CustomerCredit),
            WalletJournal::Reserved => (Account::CustomerCredit, Account::CreditReserved),
            WalletJournal::Released | WalletJournal::Invoiced => {
                (Account::CreditReserved, Account::CustomerCredit)
            }
            WalletJournal::Expired => (Account::CustomerCredit, Account::CreditBreakage),
            WalletJournal::Voided => (Account::CustomerCredit, Account::CreditSource),
        }
    }
}

impl Operation {
    /// The stable name stored in `ledger_entries.kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Operation::InvoiceFinalized { .. } => "invoice_finalized",
            Operation::Payment { .. } => "payment",
            Operation::Refund { .. } => "refund",
            Operation::CreditNote { .. } => "credit_note",
            Operation::WriteOff { .. } => "write_off",
            Operation::Void { .. } => "void",
            Operation::CreditApplied { .. } => "credit_applied",
            Operation::CreditGranted { .. } => "credit_grant",
            Operation::Wallet { kind, .. } => kind.kind(),
            Operation::Dispute { step, .. } => step.kind(),
        }
    }

    /// The deterministic journal id: the same operation always gets the same id.
    pub fn journal_id(&self) -> String {
        match self {
            Operation::InvoiceFinalized { invoice_id, .. } => format!("fin:{invoice_id}"),
            Operation::Payment { payment_id, .. } => format!("pay:{payment_id}"),
            Operation::Refund { refund_id, .. } => format!("ref:{refund_id}"),
            Operation::CreditNote { credit_note_id, .. } => format!("cn:{credit_note_id}"),
            Operation::WriteOff { invoice_id, .. } => format!("wo:{invoice_id}"),
            Operation::Void { invoice_id, .. } => format!("void:{invoice_id}"),
            Operation::CreditApplied { invoice_id, .. } => format!("app:{invoice_id}"),
            Operation::CreditGranted {
                customer,
                grant_id,
                version_ms,
                ..
            } => format!("grant:{customer}:{grant_id}:{version_ms}"),
            Operation::Wallet { journal_id, .. } => journal_id.clone(),
            Operation::Dispute {
                dispute_id, step, ..
            } => format!("dsp:{}:{dispute_id}", step.id_part()),
        }
    }

    pub fn invoice_id(&self) -> &str {
        match self {
            Operation::InvoiceFinalized { invoice_id, .. }
            | Operation::Payment { invoice_id, .. }
            | Operation::Refund { invoice_id, .. }
            | Operation::CreditNote { invoice_id, .. }
            | Operation::WriteOff { invoice_id, .. }
            | Operation::Void { invoice_id, .. }
            | Operation::CreditApplied { invoice_id, .. }
            | Operation::Wallet { invoice_id, .. }
            | Operation::Dispute { invoice_id, .. } => invoice_id,
            Operation::CreditGranted { .. } => "",
        }
    }
}

/// One side of a journal line: exactly one of debit and credit is non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Line {
    pub account: Account,
    pub debit_minor: i64,
    pub credit_minor: i64,
}

/// A balanced set of lines in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Journal {
    pub journal_id: String,
    pub kind: &'static str,
    pub currency: Currency,
    pub invoice_id: String,
    pub lines: Vec<Line>,
}

/// An operation that cannot be posted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("{journal}: {field} is negative ({value})")]
    Negative {
        journal: String,
        field: &'static str,
        value: i64,
    },
    #[error("{journal}: {field} ({value}) exceeds {limit_field} ({limit})")]
    Exceeds {
        journal: String,
        field: &'static str,
        value: i64,
        limit_field: &'static str,
        limit: i64,
    },
}

fn non_negative(journal: &str, field: &'static str, value: i64) -> Result<i64, LedgerError> {
    if value < 0 {
        return Err(LedgerError::Negative {
            journal: journal.to_owned(),
            field,
            value,
        });
    }
    Ok(value)
}

fn at_most(
    journal: &str,
    (field, value): (&'static str, i64),
    (limit_field, limit): (&'static str, i64),
) -> Result<(), LedgerError> {
    if value > limit {
        return Err(LedgerError::Exceeds {
            journal: journal.to_owned(),
            field,
            value,
            limit_field,
            limit,
        });
    }
    Ok(())
}

fn dr(account: Account, minor: i64) -> Line {
    Line {
        account,
        debit_minor: minor,
        credit_minor: 0,
    }
}

fn cr(account: Account, minor: i64) -> Line {
    Line {
        account,
        debit_minor: 0,
        credit_minor: minor,
    }
}

/// The journal of `op` in `currency`. Zero lines are dropped; a journal may end up empty
/// (a zero invoice), which is still balanced.
pub fn post(op: &Operation, currency: Currency) -> Result<Journal, LedgerError> {
    let id = op.journal_id();
    let lines = lines(op, &id)?;
    let journal = Journal {
        journal_id: id,
        kind: op.kind(),
        currency,
        invoice_id: op.invoice_id().to_owned(),
        lines: lines
            .into_iter()
            .filter(|l| l.debit_minor != 0 || l.credit_minor != 0)
            .collect(),
    };
    debug_assert!(is_balanced(&journal.lines), "unbalanced {journal:?}");
    Ok(journal)
}

/// The posting rule of each operation (journal `id`): its lines, zero ones included.
fn lines(op: &Operation, id: &str) -> Result<Vec<Line>, LedgerError> {
    // one amount from `debit` to `credit`
    let transfer = |amount_minor: i64, (debit, credit): (Account, Account)| {
        let a = non_negative(id, "amount_minor", amount_minor)?;
        Ok::<_, LedgerError>(vec![dr(debit, a), cr(credit, a)])
    };
    Ok(match op {
        Operation::InvoiceFinalized {
            total_minor,
            tax_minor,
            amount_due_minor,
            ..
        }
        | Operation::Void {
            total_minor,
            tax_minor,
            amount_due_minor,
            ..
        } => {
            let void = matches!(op, Operation::Void { .. });
            invoice_lines(id, void, *total_minor, *tax_minor, *amount_due_minor)?
        }
        Operation::CreditApplied { amount_minor, .. } => transfer(
            *amount_minor,
            (Account::CustomerCredit, Account::Receivable),
        )?,
        Operation::CreditGranted { delta_minor, .. } => {
            // i64::MIN has no positive counterpart: refused like any negative amount
            let a = non_negative(id, "delta_minor", delta_minor.checked_abs().unwrap_or(-1))?;
            let granted = vec![dr(Account::CreditSource, a), cr(Account::CustomerCredit, a)];
            if *delta_minor < 0 {
                granted.iter().map(reverse).collect()
            } else {
                granted
            }
        }
        Operation::Wallet {
            kind, amount_minor, ..
        } => transfer(*amount_minor, kind.accounts())?,
        Operation::Dispute {
            step, amount_minor, ..
        } => transfer(*amount_minor, step.accounts())?,
        Operation::Payment { amount_minor, .. } => {
            transfer(*amount_minor, (Account::Cash, Account::Receivable))?
        }
        Operation::Refund { amount_minor, .. } => {
            transfer(*amount_minor, (Account::Refunds, Account::Cash))?
        }
        Operation::CreditNote {
            amount_minor,
            tax_minor,
            ..
        } => {
            let a = non_negative(id, "amount_minor", *amount_minor)?;
            let tax = non_negative(id, "tax_minor", *tax_minor)?;
            at_most(id, ("tax_minor", tax), ("amount_minor", a))?;
            vec![
                dr(Account::Revenue, a - tax),
                dr(Account::TaxPayable, tax),
                cr(Account::Receivable, a),
            ]
        }
        Operation::WriteOff { amount_minor, .. } => {
            transfer(*amount_minor, (Account::BadDebt, Account::Receivable))?
        }
    })
}

/// A finalized invoice (receivable against revenue and tax), or its void: the finalization
/// and the credit application reversed, so the credit returns.
fn invoice_lines(
    id: &str,
    void: bool,
    total_minor: i64,
    tax_minor: i64,
    amount_due_minor: i64,
) -> Result<Vec<Line>, LedgerError> {
    let total = non_negative(id, "total_minor", total_minor)?;
    let tax = non_negative(id, "tax_minor", tax_minor)?;
    let due = non_negative(id, "amount_due_minor", amount_due_minor)?;
    at_most(id, ("tax_minor", tax), ("total_minor", total))?;
    at_most(id, ("amount_due_minor", due), ("total_minor", total))?;
    Ok(if void {
        vec![
            cr(Account::Receivable, due),
            cr(Account::CustomerCredit, total - due),
            dr(Account::Revenue, total - tax),
            dr(Account::TaxPayable, tax),
        ]
    } else {
        vec![
            dr(Account::Receivable, total),
            cr(Account::Revenue, total - tax),
            cr(Account::TaxPayable, tax),
        ]
    })
}

fn reverse(l: &Line) -> Line {
    Line {
        account: l.account,
        debit_minor: l.credit_minor,
        credit_minor: l.debit_minor,
    }
}

/// Debits equal credits (in i128, so no sum overflows).
pub fn is_balanced(lines: &[Line]) -> bool {
    let (d, c) = lines.iter().fold((0i128, 0i128), |(d, c), l| {
        (
            d + i128::from(l.debit_minor),
            c + i128::from(l.credit_minor),
        )
    });
    d == c
}

/// One account's totals in one currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AccountTotals {
    pub debit_minor: i128,
    pub credit_minor: i128,
}

impl AccountTotals {
    /// Debit minus credit.
    pub fn balance_minor(&self) -> i128 {
        self.debit_minor - self.credit_minor
    }
}

/// Totals per currency and account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TrialBalance {
    pub currencies: BTreeMap<String, BTreeMap<Account, AccountTotals>>,
}

impl TrialBalance {
    pub fn add(&mut self, currency: &str, line: &Line) {
        let t = self
            .currencies
            .entry(currency.to_owned())
            .or_default()
            .entry(line.account)
            .or_default();
        t.debit_minor += i128::from(line.debit_minor);
        t.credit_minor += i128::from(line.credit_minor);
    }

    pub fn add_journal(&mut self, j: &Journal) {
        for l in &j.lines {
            self.add(j.currency.code(), l);
        }
    }

    /// Total debits minus total credits of `currency` (zero when balanced).
    pub fn difference_minor(&self, currency: &str) -> i128 {
        self.currencies.get(currency).map_or(0, |accounts| {
            accounts.values().map(|t| t.balance_minor()).sum()
        })
    }

    /// Whether every currency's difference is zero.
    pub fn is_balanced(&self) -> bool {
        self.currencies
            .keys()
            .all(|c| self.difference_minor(c) == 0)
    }

    /// The table `tally-payments trial-balance` prints.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "currency account           debit_minor     credit_minor     balance_minor\n",
        );
        for (currency, accounts) in &self.currencies {
            let (mut d, mut c) = (0i128, 0i128);
            for (account, t) in accounts {
                d += t.debit_minor;
                c += t.credit_minor;
                out.push_str(&format!(
                    "{currency:<8} {:<16} {:>12} {:>16} {:>17}\n",
                    account.as_str(),
                    t.debit_minor,
                    t.credit_minor,
                    t.balance_minor()
                ));
            }
            out.push_str(&format!(
                "{currency:<8} {:<16} {d:>12} {c:>16} {:>17}  difference {}\n",
                "TOTAL",
                d - c,
                d - c
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        "USD".parse().unwrap()
    }

    #[test]
    fn a_finalized_invoice_books_receivable_revenue_and_tax() {
        let j = post(
            &Operation::InvoiceFinalized {
                invoice_id: "inv_1".into(),
                total_minor: 1_190,
                tax_minor: 190,
                amount_due_minor: 1_000,
            },
            "EUR".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(j.journal_id, "fin:inv_1");
        assert_eq!(
            j.lines,
            vec![
                dr(Account::Receivable, 1_190),
                cr(Account::Revenue, 1_000),
                cr(Account::TaxPayable, 190),
            ]
        );
    }

    #[test]
    fn grants_and_their_use_move_the_credit_liability() {
        let mut tb = TrialBalance::default();
        for op in [
            Operation::CreditGranted {
                customer: "c1".into(),
                grant_id: "g1".into(),
                version_ms: 1,
                delta_minor: 500,
            },
            Operation::CreditGranted {
                customer: "c1".into(),
                grant_id: "g1".into(),
                version_ms: 2,
                delta_minor: -200,
            },
            Operation::InvoiceFinalized {
                invoice_id: "i".into(),
                total_minor: 1_000,
                tax_minor: 0,
                amount_due_minor: 700,
            },
            Operation::CreditApplied {
                invoice_id: "i".into(),
                amount_minor: 300,
            },
        ] {
            tb.add_journal(&post(&op, usd()).unwrap());
        }
        let usd = &tb.currencies["USD"];
        assert_eq!(
            usd[&Account::CustomerCredit].balance_minor(),
            0,
            "300 granted, 300 used"
        );
        assert_eq!(usd[&Account::CreditSource].balance_minor(), 300);
        assert_eq!(usd[&Account::Receivable].balance_minor(), 700);
        assert!(tb.is_balanced());
    }

    #[test]
    fn a_void_reverses_the_finalization() {
        let fin = Operation::InvoiceFinalized {
            invoice_id: "i".into(),
            total_minor: 500,
            tax_minor: 50,
            amount_due_minor: 500,
        };
        let void = Operation::Void {
            invoice_id: "i".into(),
            total_minor: 500,
            tax_minor: 50,
            amount_due_minor: 500,
        };
        let mut tb = TrialBalance::default();
        tb.add_journal(&post(&fin, usd()).unwrap());
        tb.add_journal(&post(&void, usd()).unwrap());
        assert!(tb.currencies["USD"]
            .values()
            .all(|t| t.balance_minor() == 0));
        // with prepaid credit applied, the void returns the credit
        let fin = Operation::InvoiceFinalized {
            invoice_id: "j".into(),
            total_minor: 500,
            tax_minor: 50,
            amount_due_minor: 120,
        };
        let app = Operation::CreditApplied {
            invoice_id: "j".into(),
            amount_minor: 380,
        };
        let void = Operation::Void {
            invoice_id: "j".into(),
            total_minor: 500,
            tax_minor: 50,
            amount_due_minor: 120,
        };
        for op in [fin, app, void] {
            tb.add_journal(&post(&op, usd()).unwrap());
        }
        assert!(tb.currencies["USD"]
            .values()
            .all(|t| t.balance_minor() == 0));
    }

    #[test]
    fn bad_amounts_are_refused_naming_the_field() {
        let e = post(
            &Operation::CreditNote {
                credit_note_id: "cn".into(),
                invoice_id: "i".into(),
                amount_minor: 10,
                tax_minor: 11,
            },
            usd(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("tax_minor (11) exceeds amount_minor (10)"),
            "{e}"
        );
        assert!(matches!(
            post(
                &Operation::Payment {
                    payment_id: "p".into(),
                    invoice_id: "i".into(),
                    amount_minor: -1
                },
                usd()
            ),
            Err(LedgerError::Negative { .. })
        ));
    }
}
