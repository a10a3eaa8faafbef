//! What the stored catalog does with records that conflict (issue 17): two API instances can
//! each check a change against the catalog they read and both append, leaving records that
//! the rules would never have accepted together. Building the stored catalog never fails as a
//! whole because of them; it decides, the same way on every instance and every restart:
//!
//! 1. **One identity, several bodies** (a plan version, a subscription record, a customer,
//!    agent or meter version, a tax or FX rate): the record recorded first wins (the earliest
//!    `recorded_at`; within one second, the smallest body, byte by byte); the others are set
//!    aside: ignored, and reported.
//! 2. **Plan versions that do not fit together** (two at one instant, a later
//!    `effective_from` without a higher version): a plan's versions are taken in recorded
//!    order, and a version that does not fit those recorded before it is set aside, as the
//!    API would have refused it had the two changes come one at a time.
//! 3. **A customer whose subscription records do not build** (two lines pricing one meter,
//!    a record pinning a version that was set aside, a taxed record without a rate, a body
//!    that no longer parses), **or whose plan has a version that no longer parses or
//!    validates against the stored meters** (that version may have been in force: pricing
//!    with another one would change charges already written): the customer is quarantined:
//!    left out of rating (no charge is written or changed for it, and it is not billed on the
//!    default plan either), reported at every pass and retried at the next; every other
//!    customer is rated. When that plan is the default plan, the customers on the default
//!    plan are quarantined.
//!
//! It owns these rules and the report ([`Conflict`]), pure over typed values; it never reads
//! storage ([`crate::store`] reads the rows with their `recorded_at` and calls it).

use std::collections::BTreeMap;

/// The kind of stored record a conflict is about (the `kind` label of
/// `tally_rater_catalog_conflicts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConflictKind {
    Plan,
    Subscription,
    Customer,
    Agent,
    Meter,
    TaxRate,
    FxRate,
}

impl ConflictKind {
    /// Every kind, for declaring the metric's series.
    pub const ALL: [ConflictKind; 7] = [
        ConflictKind::Plan,
        ConflictKind::Subscription,
        ConflictKind::Customer,
        ConflictKind::Agent,
        ConflictKind::Meter,
        ConflictKind::TaxRate,
        ConflictKind::FxRate,
    ];

    /// The metric label and log field.
    pub fn code(self) -> &'static str {
        match self {
            ConflictKind::Plan => "plan",
            ConflictKind::Subscription => "subscription",
            ConflictKind::Customer => "customer",
            ConflictKind::Agent => "agent",
            ConflictKind::Meter => "meter",
            ConflictKind::TaxRate => "tax_rate",
            ConflictKind::FxRate => "fx_rate",
        }
    }
}

/// What the build did about a conflicting record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// The record is ignored; the one recorded first is in force (rules 1 and 2).
    SetAside,
    /// The customer named by `identity` is left out of rating (rule 3); of kind `Plan`, the
    /// customers on that plan (the reader names the plan id, the catalog the default plan's
    /// customers).
    Quarantined,
}

impl Outcome {
    /// The metric label and log field.
    pub fn code(self) -> &'static str {
        match self {
            Outcome::SetAside => "set_aside",
            Outcome::Quarantined => "quarantined",
        }
    }
}

/// One conflicting stored record (or quarantined customer), as logged and counted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Conflict {
    pub kind: ConflictKind,
    pub outcome: Outcome,
    /// The record (`plan pro v2`, `subscription of acme from "2026-01-01T00:00:00.000Z"`), or,
    /// quarantined, the customer id.
    pub identity: String,
    /// Why: what it conflicts with.
    pub detail: String,
}

/// One stored row: its identity, when it was first recorded (seconds) and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded<K> {
    pub identity: K,
    pub recorded_at: u32,
    pub body: String,
}

/// What rule 1 decides: the winners, and each set-aside row with its winner's `recorded_at`.
pub type Decided<K> = (Vec<Recorded<K>>, Vec<(Recorded<K>, u32)>);

/// Rule 1: per identity, the row recorded first (earliest `recorded_at`, then smallest body)
/// and, set aside, every other body of that identity with the winner's `recorded_at`. Rows
/// of one identity with the same body are one record (its earliest `recorded_at` counts).
/// The result does not depend on the order of `rows`; the winners come by identity.
pub fn first_recorded<K: Ord + Clone>(rows: Vec<Recorded<K>>) -> Decided<K> {
    let mut by_identity: BTreeMap<K, Vec<Recorded<K>>> = BTreeMap::new();
    for r in rows {
        by_identity.entry(r.identity.clone()).or_default().push(r);
    }
    let mut winners = Vec::with_capacity(by_identity.len());
    let mut losers = Vec::new();
    for (_, mut rows) in by_identity {
        rows.sort_by(|a, b| (a.recorded_at, &a.body).cmp(&(b.recorded_at, &b.body)));
        let mut rows = rows.into_iter();
        let Some(first) = rows.next() else { continue };
        let mut seen = vec![first.body.clone()];
        for r in rows {
            if !seen.contains(&r.body) {
                seen.push(r.body.clone());
                losers.push((r, first.recorded_at));
            }
        }
        winners.push(first);
    }
    (winners, losers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, at: u32, body: &str) -> Recorded<String> {
        Recorded {
            identity: id.into(),
            recorded_at: at,
            body: body.into(),
        }
    }

    #[test]
    fn the_first_recorded_body_wins_whatever_the_read_order() {
        let rows = vec![
            row("acme", 20, "a-later"),
            row("acme", 10, "z-first"),
            row("beta", 5, "only"),
            row("acme", 30, "z-first"),
        ];
        let mut reversed = rows.clone();
        reversed.reverse();
        let (winners, losers) = first_recorded(rows);
        assert_eq!(
            winners,
            vec![row("acme", 10, "z-first"), row("beta", 5, "only")]
        );
        assert_eq!(losers, vec![(row("acme", 20, "a-later"), 10)]);
        assert_eq!(first_recorded(reversed), (winners, losers));
    }

    #[test]
    fn within_one_second_the_smallest_body_wins() {
        let (winners, losers) = first_recorded(vec![row("k", 7, "b"), row("k", 7, "a")]);
        assert_eq!(winners, vec![row("k", 7, "a")]);
        assert_eq!(losers, vec![(row("k", 7, "b"), 7)]);
    }

    #[test]
    fn a_body_recorded_twice_is_one_record() {
        let (winners, losers) = first_recorded(vec![row("k", 9, "x"), row("k", 3, "x")]);
        assert_eq!(winners, vec![row("k", 3, "x")]);
        assert!(losers.is_empty());
    }
}
