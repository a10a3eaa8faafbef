//! Prepaid credit wallets (issue 15, item 2): per customer, grants (promotional grants and
//! paid top-ups) in a currency, with a priority and an optional expiry, consumed by the rated
//! usage of open periods in near real time, expired and voided; every movement a ledger
//! journal.
//!
//! The shape is the crate's: load the facts of one customer ([`store`]), decide in a pure
//! function over typed values ([`consume::decide`]), append what was decided (movements, then
//! their journals). Amounts are integer minor units of the grant's currency (the ledger's
//! unit); sums are checked. Credit units other than a currency are not built: a grant is in
//! one ISO 4217 currency and only pays for usage charged in that currency.
//!
//! # Facts and movements
//! A grant is a fact (`wallet_grants`); what happens to it is a list of movements
//! (`wallet_movements`), each with a signed effect on what is left of the grant:
//!
//! | movement | effect | journal |
//! |---|---|---|
//! | `grant` (the grant became available: at once, or a top-up when paid) | + amount | wallet grant / wallet top-up |
//! | `consume` (usage of an open period) | − | wallet reserve |
//! | `release` (usage of an open period went down, or its invoice applied less) | + | wallet release |
//! | `invoiced` (the period's invoice was finalized; one per invoice, no grant) | 0 | wallet invoiced |
//! | `restore` (the period's invoice was voided after it applied the credit) | + | none: the invoice's `void:` journal returns the credit |
//! | `expire` (what was left at the expiry) | − | wallet expire |
//! | `void` (what was left when the grant was voided) | − | wallet void |
//!
//! Every movement id is deterministic from the state it was decided from (see
//! [`consume::decide`]), so a pass run again, after a crash or a restart, decides the same ids
//! and appends nothing new; journals are posted only when their id is absent.

pub mod consume;
pub mod grant;
pub mod http;
pub mod pass;
pub mod store;

use serde::Serialize;
use tally_domain::{Currency, CustomerId};

use crate::ledger::{Operation, WalletJournal};

/// What a grant is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    /// Given by an operator (free credit): available when granted.
    Promotional,
    /// Bought: available once its payment is received.
    TopUp,
}

impl GrantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::Promotional => "promotional",
            GrantKind::TopUp => "top_up",
        }
    }

    pub fn parse(s: &str) -> Option<GrantKind> {
        match s {
            "promotional" => Some(GrantKind::Promotional),
            "top_up" => Some(GrantKind::TopUp),
            _ => None,
        }
    }
}

/// A grant of a customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub grant_id: String,
    pub customer: CustomerId,
    pub currency: Currency,
    /// What the grant adds, in minor units (> 0).
    pub amount_minor: i64,
    pub kind: GrantKind,
    /// 0 (consumed first) to 100 (consumed last), as Stripe's credit grants.
    pub priority: u8,
    /// `None`: never expires. Usage is not paid by a grant from its expiry on.
    pub expires_at_ms: Option<i64>,
    pub created_at_ms: i64,
    /// When a top-up's payment was received (`None`: not yet); promotional grants ignore it.
    pub paid_at_ms: Option<i64>,
}

impl Grant {
    /// When the grant's credit can be used, if it can.
    pub fn available_at_ms(&self) -> Option<i64> {
        match self.kind {
            GrantKind::Promotional => Some(self.created_at_ms),
            GrantKind::TopUp => self.paid_at_ms,
        }
    }

    /// Whether the grant has expired at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|e| e <= now_ms)
    }

    /// The order of consumption: priority, then soonest expiry (never last), then oldest,
    /// then grant id.
    pub fn order_key(&self) -> (u8, i64, i64, &str) {
        (
            self.priority,
            self.expires_at_ms.unwrap_or(i64::MAX),
            self.created_at_ms,
            &self.grant_id,
        )
    }
}

/// What a movement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MovementKind {
    Grant,
    Consume,
    Release,
    Invoiced,
    Restore,
    Expire,
    Void,
}

impl MovementKind {
    pub const ALL: [MovementKind; 7] = [
        MovementKind::Grant,
        MovementKind::Consume,
        MovementKind::Release,
        MovementKind::Invoiced,
        MovementKind::Restore,
        MovementKind::Expire,
        MovementKind::Void,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MovementKind::Grant => "grant",
            MovementKind::Consume => "consume",
            MovementKind::Release => "release",
            MovementKind::Invoiced => "invoiced",
            MovementKind::Restore => "restore",
            MovementKind::Expire => "expire",
            MovementKind::Void => "void",
        }
    }

    pub fn parse(s: &str) -> Option<MovementKind> {
        MovementKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The sign of the movement's effect on its grant (0: none).
    pub fn sign(self) -> i64 {
        match self {
            MovementKind::Grant | MovementKind::Release | MovementKind::Restore => 1,
            MovementKind::Consume | MovementKind::Expire | MovementKind::Void => -1,
            MovementKind::Invoiced => 0,
        }
    }
}

/// One movement of a wallet. `amount_minor` is never negative; its effect on the grant is
/// `kind.sign() * amount_minor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Movement {
    pub movement_id: String,
    pub customer: CustomerId,
    /// Empty for `invoiced` (a period's, not a grant's).
    pub grant_id: String,
    pub currency: Currency,
    pub kind: MovementKind,
    pub amount_minor: i64,
    /// The period's invoice (deterministic from customer and period start) for usage
    /// movements; empty otherwise.
    pub invoice_id: String,
    pub at_ms: i64,
}

impl Movement {
    /// The signed effect on the grant.
    pub fn effect_minor(&self) -> i64 {
        self.kind.sign() * self.amount_minor
    }

    /// The ledger operation of the movement, if it has its own journal (a `restore` has
    /// none: the invoice's void journal returns the credit). `grant_kind` is the kind of the
    /// movement's grant (for `grant` movements).
    pub fn operation(&self, grant_kind: Option<GrantKind>) -> Option<Operation> {
        let kind = match self.kind {
            MovementKind::Grant => match grant_kind? {
                GrantKind::Promotional => WalletJournal::Granted,
                GrantKind::TopUp => WalletJournal::TopUpPaid,
            },
            MovementKind::Consume => WalletJournal::Reserved,
            MovementKind::Release => WalletJournal::Released,
            MovementKind::Invoiced => WalletJournal::Invoiced,
            MovementKind::Expire => WalletJournal::Expired,
            MovementKind::Void => WalletJournal::Voided,
            MovementKind::Restore => return None,
        };
        Some(Operation::Wallet {
            journal_id: format!("w:{}", self.movement_id),
            kind,
            invoice_id: self.invoice_id.clone(),
            amount_minor: self.amount_minor,
        })
    }
}

/// Why a wallet operation cannot be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    #[error("wallet of {customer}: {what} overflows")]
    Overflow {
        customer: String,
        what: &'static str,
    },
    #[error("grant {grant_id}: {reason}")]
    InvalidGrant { grant_id: String, reason: String },
    #[error("no grant {grant_id} for {customer}")]
    UnknownGrant { customer: String, grant_id: String },
    #[error("stored wallet data is not valid: {0}")]
    Corrupt(String),
}

/// What is left of each grant (by grant id), from its movements.
pub fn remaining(
    customer: &CustomerId,
    movements: &[Movement],
) -> Result<std::collections::BTreeMap<String, i64>, WalletError> {
    let mut left = std::collections::BTreeMap::new();
    for m in movements.iter().filter(|m| !m.grant_id.is_empty()) {
        let e: &mut i64 = left.entry(m.grant_id.clone()).or_default();
        *e = e
            .checked_add(m.effect_minor())
            .ok_or_else(|| WalletError::Overflow {
                customer: customer.to_string(),
                what: "a grant's remaining credit",
            })?;
    }
    Ok(left)
}

/// The balance per currency: the sum of the movements' effects.
pub fn balances(
    customer: &CustomerId,
    movements: &[Movement],
) -> Result<std::collections::BTreeMap<Currency, i64>, WalletError> {
    let mut out = std::collections::BTreeMap::new();
    for m in movements {
        let e: &mut i64 = out.entry(m.currency).or_default();
        *e = e
            .checked_add(m.effect_minor())
            .ok_or_else(|| WalletError::Overflow {
                customer: customer.to_string(),
                what: "the balance",
            })?;
    }
    Ok(out)
}
