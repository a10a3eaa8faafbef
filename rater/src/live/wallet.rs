//! The prepaid wallet as the deciders see it: what a customer's grants (`wallet_grants`,
//! `wallet_movements`, written by tally-payments) leave for the current period, in the
//! billing currency. It becomes the limit of the customer's budgets of kind `wallet`, so an
//! authorize holds against the wallet as against any amount budget, and a top-up raises the
//! limit at the next refresh. It reads the two tables for the customers asked only (their
//! sorting keys' first column) and decides nothing else; it never writes.
//!
//! The budget's limit, for a customer, a currency and the period's invoice id:
//!
//! `limit = remaining + min(reserved, spent)`
//!
//! where `remaining` is what its grants in that currency not expired at now still hold (a
//! grant's remaining is the sum of its movements' effects: grant, release and restore add;
//! consume, expire and void take), `reserved` is what the current period's charges already
//! took from them (consume minus release and restore under the period's invoice id, of
//! grants in that currency), and `spent` is the decider's live usage spend of the period. The
//! decider subtracts `spent` and the holds, so usage the wallet pass has already consumed is
//! not counted twice and usage it has not seen yet counts at once; and what the pass took for
//! anything the decider does not count (flat fees and minimums billed without usage, tax on
//! the charges) is never given back to usage: `reserved` beyond `spent` stays taken. At a
//! period change `spent` starts at 0, so the previous period's reservation never counts.

use std::collections::{BTreeMap, BTreeSet};

use clickhouse::Client;
use rust_decimal::Decimal;
use serde::Deserialize;
use xxhash_rust::xxh3::xxh3_128;

/// One grant's facts that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantFact {
    pub grant_id: String,
    pub currency: String,
    /// `None`: never expires.
    pub expires_at_ms: Option<i64>,
}

/// One movement's facts that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovementFact {
    pub grant_id: String,
    pub kind: String,
    pub amount_minor: i64,
    pub invoice_id: String,
}

/// A customer's wallet as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wallet {
    pub grants: Vec<GrantFact>,
    pub movements: Vec<MovementFact>,
}

/// Why a wallet could not be read into an amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    #[error("wallet movement kind {0:?} is unknown")]
    UnknownKind(String),
    #[error("wallet amounts overflow")]
    Overflow,
}

/// The sign of a movement kind's effect on its grant; `None` for an unknown kind.
fn sign(kind: &str) -> Option<i64> {
    match kind {
        "grant" | "release" | "restore" => Some(1),
        "consume" | "expire" | "void" => Some(-1),
        "invoiced" => Some(0),
        _ => None,
    }
}

/// The invoice id of a customer's period: the rule of `tally_invoicer::invoice::invoice_id`
/// (the plain id of the period's home currency), which e2e/tests checks against it.
pub fn period_invoice_id(customer: &str, period_start_ms: i64) -> String {
    format!(
        "inv_{:032x}",
        xxh3_128(format!("{customer}\0{period_start_ms}").as_bytes())
    )
}

/// What a wallet holds for one period, in minor units of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Available {
    /// What its grants in the currency hold now (not expired).
    pub remaining_minor: i64,
    /// What the period's usage already took from them (consume minus release and restore).
    pub reserved_minor: i64,
}

/// The wallet's grants for the period whose invoice is `invoice_id`, in minor units of
/// `currency` (see the module docs). Pure.
pub fn available_minor(
    w: &Wallet,
    currency: &str,
    invoice_id: &str,
    now_ms: i64,
) -> Result<Available, WalletError> {
    let in_currency: BTreeSet<&str> = w
        .grants
        .iter()
        .filter(|g| g.currency == currency)
        .map(|g| g.grant_id.as_str())
        .collect();
    let mut remaining: BTreeMap<&str, i64> = BTreeMap::new();
    let mut reserved: i64 = 0;
    for m in &w.movements {
        let s = sign(&m.kind).ok_or_else(|| WalletError::UnknownKind(m.kind.clone()))?;
        let effect = s.checked_mul(m.amount_minor).ok_or(WalletError::Overflow)?;
        if !m.grant_id.is_empty() {
            let r = remaining.entry(m.grant_id.as_str()).or_insert(0);
            *r = r.checked_add(effect).ok_or(WalletError::Overflow)?;
        }
        if m.invoice_id == invoice_id
            && in_currency.contains(m.grant_id.as_str())
            && matches!(m.kind.as_str(), "consume" | "release" | "restore")
        {
            reserved = reserved.checked_sub(effect).ok_or(WalletError::Overflow)?;
        }
    }
    let mut total: i64 = 0;
    for g in &w.grants {
        let live = g.expires_at_ms.is_none_or(|e| e > now_ms);
        if g.currency != currency || !live {
            continue;
        }
        let left = remaining.get(g.grant_id.as_str()).copied().unwrap_or(0);
        total = total
            .checked_add(left.max(0))
            .ok_or(WalletError::Overflow)?;
    }
    Ok(Available {
        remaining_minor: total,
        reserved_minor: reserved.max(0),
    })
}

/// `minor` units of a currency with `minor_units` decimals, as an amount.
pub fn amount(minor: i64, minor_units: u32) -> Decimal {
    Decimal::new(minor, minor_units)
}

#[derive(clickhouse::Row, Deserialize)]
struct GrantRow {
    customer: String,
    grant_id: String,
    currency: String,
    expires_at_ms: i64,
}

#[derive(clickhouse::Row, Deserialize)]
struct MovementRow {
    customer: String,
    grant_id: String,
    kind: String,
    amount_minor: i64,
    invoice_id: String,
}

/// Customers per query: the list is written into the SQL (ClickHouse 18.16 takes no array
/// after `IN`), which `max_query_size` bounds.
const CUSTOMERS_PER_QUERY: usize = 1_000;

/// The wallets of `customers` (the earliest record of each grant and movement, as payments
/// reads them). Customers without grants are absent.
pub async fn load(
    db: &Client,
    customers: &BTreeSet<String>,
) -> Result<BTreeMap<String, Wallet>, clickhouse::error::Error> {
    let mut out: BTreeMap<String, Wallet> = BTreeMap::new();
    let all: Vec<&String> = customers.iter().collect();
    for chunk in all.chunks(CUSTOMERS_PER_QUERY) {
        load_chunk(db, chunk, &mut out).await?;
    }
    Ok(out)
}

async fn load_chunk(
    db: &Client,
    customers: &[&String],
    out: &mut BTreeMap<String, Wallet>,
) -> Result<(), clickhouse::error::Error> {
    let list = format!("({})", vec!["?"; customers.len().max(1)].join(", "));
    let mut grants = db.query(&format!(
        "SELECT customer, grant_id, argMin(currency, created_at_ms) AS cur, \
         argMin(expires_at_ms, created_at_ms) AS e \
         FROM wallet_grants WHERE customer IN {list} GROUP BY customer, grant_id"
    ));
    let mut movements = db.query(&format!(
        "SELECT customer, argMin(grant_id, at_ms) AS g, argMin(kind, at_ms) AS k, \
         argMin(amount_minor, at_ms) AS amt, argMin(invoice_id, at_ms) AS i \
         FROM wallet_movements WHERE customer IN {list} GROUP BY customer, movement_id"
    ));
    for c in customers {
        grants = grants.bind(c.as_str());
        movements = movements.bind(c.as_str());
    }
    for g in grants.fetch_all::<GrantRow>().await? {
        out.entry(g.customer).or_default().grants.push(GrantFact {
            grant_id: g.grant_id,
            currency: g.currency,
            expires_at_ms: (g.expires_at_ms != 0).then_some(g.expires_at_ms),
        });
    }
    for m in movements.fetch_all::<MovementRow>().await? {
        out.entry(m.customer)
            .or_default()
            .movements
            .push(MovementFact {
                grant_id: m.grant_id,
                kind: m.kind,
                amount_minor: m.amount_minor,
                invoice_id: m.invoice_id,
            });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn grant(id: &str, currency: &str, expires: Option<i64>) -> GrantFact {
        GrantFact {
            grant_id: id.into(),
            currency: currency.into(),
            expires_at_ms: expires,
        }
    }

    fn mv(grant: &str, kind: &str, amount: i64, invoice: &str) -> MovementFact {
        MovementFact {
            grant_id: grant.into(),
            kind: kind.into(),
            amount_minor: amount,
            invoice_id: invoice.into(),
        }
    }

    #[test]
    fn what_is_left_plus_what_this_period_already_took() {
        let w = Wallet {
            grants: vec![
                grant("a", "USD", None),
                grant("b", "USD", Some(NOW + 1)),
                grant("old", "USD", Some(NOW)),
                grant("eur", "EUR", None),
            ],
            movements: vec![
                mv("a", "grant", 10_000, ""),
                mv("b", "grant", 5_000, ""),
                mv("old", "grant", 7_000, ""),
                mv("eur", "grant", 9_000, ""),
                // an earlier, finalized period used 2,000 of a
                mv("a", "consume", 2_000, "inv_prev"),
                mv("", "invoiced", 0, "inv_prev"),
                // this period: 3,000 from a and 1,000 from b, 500 given back to b
                mv("a", "consume", 3_000, "inv_now"),
                mv("b", "consume", 1_000, "inv_now"),
                mv("b", "release", 500, "inv_now"),
            ],
        };
        // a: 10,000 - 2,000 - 3,000 = 5,000; b: 5,000 - 1,000 + 500 = 4,500; old expired;
        // reserved this period: 3,000 + 1,000 - 500 = 3,500
        let a = |remaining_minor, reserved_minor| {
            Ok(Available {
                remaining_minor,
                reserved_minor,
            })
        };
        assert_eq!(
            available_minor(&w, "USD", "inv_now", NOW),
            a(5_000 + 4_500, 3_500)
        );
        // another period: nothing reserved
        assert_eq!(available_minor(&w, "USD", "inv_next", NOW), a(9_500, 0));
        assert_eq!(available_minor(&w, "EUR", "inv_now", NOW), a(9_000, 0));
        assert_eq!(available_minor(&w, "JPY", "inv_now", NOW), a(0, 0));
    }

    #[test]
    fn voided_expired_and_not_yet_arrived_grants_leave_nothing() {
        let w = Wallet {
            grants: vec![
                grant("voided", "USD", None),
                grant("swept", "USD", None),
                grant("unpaid", "USD", None),
            ],
            movements: vec![
                mv("voided", "grant", 1_000, ""),
                mv("voided", "void", 1_000, ""),
                mv("swept", "grant", 1_000, ""),
                mv("swept", "consume", 400, "inv_now"),
                mv("swept", "expire", 600, ""),
            ],
        };
        // the unpaid top-up has no grant movement; the swept one's 400 went to this period
        assert_eq!(
            available_minor(&w, "USD", "inv_now", NOW),
            Ok(Available {
                remaining_minor: 0,
                reserved_minor: 400
            })
        );
    }

    #[test]
    fn unknown_kinds_and_overflow_are_errors() {
        let w = Wallet {
            grants: vec![grant("a", "USD", None)],
            movements: vec![mv("a", "gift", 1, "")],
        };
        assert_eq!(
            available_minor(&w, "USD", "i", NOW),
            Err(WalletError::UnknownKind("gift".into()))
        );
        let w = Wallet {
            grants: vec![grant("a", "USD", None), grant("b", "USD", None)],
            movements: vec![
                mv("a", "grant", i64::MAX, ""),
                mv("b", "grant", i64::MAX, ""),
            ],
        };
        assert_eq!(
            available_minor(&w, "USD", "i", NOW),
            Err(WalletError::Overflow)
        );
    }

    #[test]
    fn amounts_have_the_currencys_decimals() {
        assert_eq!(amount(12_345, 2).to_string(), "123.45");
        assert_eq!(amount(500, 0).to_string(), "500");
    }
}
