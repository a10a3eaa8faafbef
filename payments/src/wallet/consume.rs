//! The pure decision of a wallet pass: given one customer's grants, the movements already
//! recorded, the state of its periods and the time, the movements still to append. No I/O, no
//! clock.
//!
//! Steps, in this order:
//! 1. **arrivals**: a grant that became available (a promotional grant at once, a top-up when
//!    paid) and has no `grant` movement gets one (`grant:<grant>`). A voided grant never
//!    arrives.
//! 2. **periods**: finalized and void ones first, then open ones whose usage went down, then
//!    open ones whose usage grew, oldest first within each (so what one period gives back is
//!    used by the others in the same decision). `reserved` is what the period's usage took
//!    from the grants so far (consume minus release and restore):
//!    - *open* (no finalized invoice yet): the usage (charges with their tax) above `reserved`
//!      is consumed from the grants in the order of consumption (priority 0 first, then the
//!      soonest expiry, a grant that never expires last, then the oldest, then the grant id),
//!      using only grants of the period's currency that are available, not expired at `now`
//!      and not voided; usage below `reserved` (charges recomputed lower) releases the
//!      difference back, to the grants it came from, the last consumed first;
//!    - *finalized*: the invoice applied `credits_applied` (at most `reserved`); the rest is
//!      released, and one `invoiced` movement (`inv:<invoice>`) turns the reservation into
//!      the invoice's credit; nothing moves for the period afterwards;
//!    - *void*: a reservation still held is released (the invoice never applied it), or, when
//!      the invoice had applied it, `restore` movements give it back to its grants (the
//!      invoice's void journal returned it in the ledger).
//! 3. **sweep**: what is left of a voided grant is voided, of an expired grant expires (each a
//!    movement with its own journal; credit given back to a grant after its expiry expires
//!    again on the same pass).
//!
//! Ids are deterministic from the state: `use:`, `rel:` and `res:<invoice>:<n>:<grant>` with
//! `n` the number of movements the period had before (each step appends at least one, so `n`
//! never repeats), `exp:` and `void:<grant>:<k>` with `k` the number of movements of the
//! grant before. Deciding again from the state a decision produced decides nothing.

use std::collections::{BTreeMap, BTreeSet};

use tally_domain::{Currency, CustomerId};

use super::{remaining, Grant, Movement, MovementKind, WalletError};

/// Where a period's invoice is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodState {
    /// Not finalized: `usage_minor` is the period's rated usage so far, tax included (the sum
    /// of its charges' `amount_minor + tax_minor`).
    Open { usage_minor: i64 },
    /// Finalized (or paid, uncollectible): the credit its invoice applied.
    Finalized { credits_applied_minor: i64 },
    /// Voided.
    Void,
}

/// One billing period of the customer in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// The period's invoice id (`tally_invoice::invoice::invoice_id`).
    pub invoice_id: String,
    pub currency: Currency,
    pub period_start_ms: i64,
    pub state: PeriodState,
}

/// Everything one decision reads.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub customer: &'a CustomerId,
    pub grants: &'a [Grant],
    pub movements: &'a [Movement],
    pub periods: &'a [Period],
    /// Grants an operator is voiding now (their void is decided with the rest).
    pub voiding: &'a BTreeSet<String>,
    pub now_ms: i64,
}

struct State<'a> {
    customer: &'a CustomerId,
    now_ms: i64,
    all: Vec<Movement>,
    left: BTreeMap<String, i64>,
    out: Vec<Movement>,
}

impl State<'_> {
    fn overflow(&self, what: &'static str) -> WalletError {
        WalletError::Overflow {
            customer: self.customer.to_string(),
            what,
        }
    }

    fn push(&mut self, m: Movement) -> Result<(), WalletError> {
        if !m.grant_id.is_empty() {
            let left = self.left.entry(m.grant_id.clone()).or_default();
            *left = left
                .checked_add(m.effect_minor())
                .ok_or(WalletError::Overflow {
                    customer: self.customer.to_string(),
                    what: "a grant's remaining credit",
                })?;
        }
        self.all.push(m.clone());
        self.out.push(m);
        Ok(())
    }

    fn left(&self, grant_id: &str) -> i64 {
        self.left.get(grant_id).copied().unwrap_or(0).max(0)
    }

    fn voided(&self, grant_id: &str, voiding: &BTreeSet<String>) -> bool {
        voiding.contains(grant_id)
            || self
                .all
                .iter()
                .any(|m| m.kind == MovementKind::Void && m.grant_id == grant_id)
    }

    fn movement(
        &self,
        id: String,
        grant: &str,
        currency: Currency,
        kind: MovementKind,
        amount_minor: i64,
        invoice_id: &str,
    ) -> Movement {
        Movement {
            movement_id: id,
            customer: self.customer.clone(),
            grant_id: grant.to_owned(),
            currency,
            kind,
            amount_minor,
            invoice_id: invoice_id.to_owned(),
            at_ms: self.now_ms,
        }
    }
}

/// The movements to append. See the module doc.
pub fn decide(f: &Facts<'_>) -> Result<Vec<Movement>, WalletError> {
    let mut s = State {
        customer: f.customer,
        now_ms: f.now_ms,
        all: f.movements.to_vec(),
        left: remaining(f.customer, f.movements)?,
        out: Vec::new(),
    };
    let mut grants: Vec<&Grant> = f.grants.iter().collect();
    grants.sort_by(|a, b| a.grant_id.cmp(&b.grant_id));

    // 1. arrivals
    for g in &grants {
        let arrived = s
            .all
            .iter()
            .any(|m| m.kind == MovementKind::Grant && m.grant_id == g.grant_id);
        let available = g.available_at_ms().is_some_and(|t| t <= f.now_ms);
        if !arrived && available && !s.voided(&g.grant_id, f.voiding) && g.amount_minor > 0 {
            let m = s.movement(
                format!("grant:{}", g.grant_id),
                &g.grant_id,
                g.currency,
                MovementKind::Grant,
                g.amount_minor,
                "",
            );
            s.push(m)?;
        }
    }

    // 2. periods
    let mut periods: Vec<&Period> = f.periods.iter().collect();
    periods.sort_by(|a, b| {
        (a.period_start_ms, &a.invoice_id).cmp(&(b.period_start_ms, &b.invoice_id))
    });
    let mut order: Vec<&Grant> = grants.clone();
    order.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    // what periods give back first (finalized and void ones, then usage that went down),
    // so the consumption of every open period, oldest first, can use it in this decision
    for phase in [Phase::Closed, Phase::Release, Phase::Consume] {
        for p in &periods {
            period(&mut s, f, &order, p, phase)?;
        }
    }

    // 3. sweep
    for g in &grants {
        let k = s.all.iter().filter(|m| m.grant_id == g.grant_id).count();
        let left = s.left(&g.grant_id);
        let already_void = s
            .all
            .iter()
            .any(|m| m.kind == MovementKind::Void && m.grant_id == g.grant_id);
        if f.voiding.contains(&g.grant_id) && !already_void || already_void && left > 0 {
            // a void with nothing left is still recorded: it marks the grant voided
            let m = s.movement(
                format!("void:{}:{k}", g.grant_id),
                &g.grant_id,
                g.currency,
                MovementKind::Void,
                left,
                "",
            );
            s.push(m)?;
        } else if left > 0 && g.expired(f.now_ms) {
            let m = s.movement(
                format!("exp:{}:{k}", g.grant_id),
                &g.grant_id,
                g.currency,
                MovementKind::Expire,
                left,
                "",
            );
            s.push(m)?;
        }
    }
    Ok(s.out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Release,
    Consume,
}

fn period(
    s: &mut State<'_>,
    f: &Facts<'_>,
    order: &[&Grant],
    p: &Period,
    phase: Phase,
) -> Result<(), WalletError> {
    let open = matches!(p.state, PeriodState::Open { .. });
    if open == (phase == Phase::Closed) {
        return Ok(());
    }
    let of_period: Vec<&Movement> = s
        .all
        .iter()
        .filter(|m| m.invoice_id == p.invoice_id)
        .collect();
    let n = of_period.len();
    let invoiced = of_period.iter().any(|m| m.kind == MovementKind::Invoiced);
    let Reserved {
        given,
        first_given,
        total: reserved,
    } = reserved(s, &of_period)?;
    // back to the grants this period's reservation came from
    let back = |s: &mut State<'_>, amount: i64, kind: MovementKind| {
        give_back(s, p, n, &given, &first_given, amount, kind)
    };
    match (p.state, invoiced) {
        (PeriodState::Open { usage_minor }, false) => {
            let usage = usage_minor.max(0);
            if usage > reserved && phase == Phase::Consume {
                consume(s, f, order, p, n, usage - reserved)?;
            } else if usage < reserved && phase == Phase::Release {
                back(s, reserved - usage, MovementKind::Release)?;
            }
        }
        (
            PeriodState::Finalized {
                credits_applied_minor,
            },
            false,
        ) => {
            let keep = reserved.min(credits_applied_minor.max(0));
            if reserved > keep {
                back(s, reserved - keep, MovementKind::Release)?;
            }
            let m = s.movement(
                format!("inv:{}", p.invoice_id),
                "",
                p.currency,
                MovementKind::Invoiced,
                keep,
                &p.invoice_id,
            );
            s.push(m)?;
        }
        (PeriodState::Void, invoiced) if reserved > 0 => {
            let kind = if invoiced {
                MovementKind::Restore
            } else {
                MovementKind::Release
            };
            back(s, reserved, kind)?;
        }
        _ => {}
    }
    Ok(())
}

/// What a period's movements hold of each grant.
struct Reserved {
    /// What each grant gave the period (net of what came back).
    given: BTreeMap<String, i64>,
    /// The grants in the order they first gave.
    first_given: Vec<String>,
    /// The sum of what the grants hold for the period.
    total: i64,
}

fn reserved(s: &State<'_>, of_period: &[&Movement]) -> Result<Reserved, WalletError> {
    let mut given: BTreeMap<String, i64> = BTreeMap::new();
    let mut first_given: Vec<String> = Vec::new();
    for m in of_period {
        if m.grant_id.is_empty() {
            continue;
        }
        if m.kind == MovementKind::Consume && !first_given.contains(&m.grant_id) {
            first_given.push(m.grant_id.clone());
        }
        let e = given.entry(m.grant_id.clone()).or_default();
        *e = e
            .checked_sub(m.effect_minor())
            .ok_or_else(|| s.overflow("a period's reserved credit"))?;
    }
    let total = given
        .values()
        .try_fold(0i64, |a, v| a.checked_add((*v).max(0)))
        .ok_or_else(|| s.overflow("a period's reserved credit"))?;
    Ok(Reserved {
        given,
        first_given,
        total,
    })
}

/// Reserves `need` more of an open period's usage from the grants, in `order`, each as far as
/// it is usable now (its currency, available, not expired, not voided) and has credit left.
fn consume(
    s: &mut State<'_>,
    f: &Facts<'_>,
    order: &[&Grant],
    p: &Period,
    n: usize,
    mut need: i64,
) -> Result<(), WalletError> {
    for g in order {
        if need == 0 {
            break;
        }
        let usable = g.currency == p.currency
            && g.available_at_ms().is_some_and(|t| t <= f.now_ms)
            && !g.expired(f.now_ms)
            && !s.voided(&g.grant_id, f.voiding);
        let take = need.min(s.left(&g.grant_id));
        if usable && take > 0 {
            let m = s.movement(
                format!("use:{}:{n}:{}", p.invoice_id, g.grant_id),
                &g.grant_id,
                p.currency,
                MovementKind::Consume,
                take,
                &p.invoice_id,
            );
            s.push(m)?;
            need -= take;
        }
    }
    Ok(())
}

/// Gives `amount` of a period's reservation back to the grants it came from, the last one
/// to give first.
fn give_back(
    s: &mut State<'_>,
    p: &Period,
    n: usize,
    given: &BTreeMap<String, i64>,
    first_given: &[String],
    amount: i64,
    kind: MovementKind,
) -> Result<(), WalletError> {
    let prefix = if kind == MovementKind::Restore {
        "res"
    } else {
        "rel"
    };
    let mut rest = amount;
    for grant in first_given.iter().rev() {
        if rest == 0 {
            break;
        }
        let back = rest.min(given.get(grant).copied().unwrap_or(0).max(0));
        if back > 0 {
            let m = s.movement(
                format!("{prefix}:{}:{n}:{grant}", p.invoice_id),
                grant,
                p.currency,
                kind,
                back,
                &p.invoice_id,
            );
            s.push(m)?;
            rest -= back;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wallet::{balances, GrantKind};

    const DAY: i64 = 86_400_000;

    fn acme() -> CustomerId {
        CustomerId::new("acme").unwrap()
    }

    fn usd() -> Currency {
        "USD".parse().unwrap()
    }

    fn grant(id: &str, amount: i64, priority: u8, expires: Option<i64>, created: i64) -> Grant {
        Grant {
            grant_id: id.into(),
            customer: acme(),
            currency: usd(),
            amount_minor: amount,
            kind: GrantKind::Promotional,
            priority,
            expires_at_ms: expires,
            created_at_ms: created,
            paid_at_ms: None,
        }
    }

    fn open(invoice: &str, start: i64, usage: i64) -> Period {
        Period {
            invoice_id: invoice.into(),
            currency: "USD".parse().unwrap(),
            period_start_ms: start,
            state: PeriodState::Open { usage_minor: usage },
        }
    }

    /// Decides and applies until nothing more is decided; returns what was decided.
    fn run(
        grants: &[Grant],
        movements: &mut Vec<Movement>,
        periods: &[Period],
        now: i64,
    ) -> Vec<Movement> {
        let none = BTreeSet::new();
        let decided = decide(&Facts {
            customer: &acme(),
            grants,
            movements,
            periods,
            voiding: &none,
            now_ms: now,
        })
        .unwrap();
        movements.extend(decided.clone());
        let again = decide(&Facts {
            customer: &acme(),
            grants,
            movements,
            periods,
            voiding: &none,
            now_ms: now,
        })
        .unwrap();
        assert_eq!(
            again,
            vec![],
            "deciding again from the result decides nothing"
        );
        decided
    }

    fn left(movements: &[Movement]) -> BTreeMap<String, i64> {
        remaining(&acme(), movements).unwrap()
    }

    #[test]
    fn priority_then_soonest_expiry_then_oldest() {
        let grants = [
            grant("late_low", 100, 50, None, 1),
            grant("soon", 100, 50, Some(10 * DAY), 3),
            grant("later", 100, 50, Some(20 * DAY), 2),
            grant("first", 100, 10, None, 4),
            grant("old", 100, 50, Some(20 * DAY), 1),
        ];
        let mut mv = Vec::new();
        run(&grants, &mut mv, &[open("inv_1", 0, 350)], DAY);
        let l = left(&mv);
        assert_eq!(l["first"], 0, "priority 10 before 50");
        assert_eq!(l["soon"], 0, "then the soonest expiry");
        assert_eq!(l["old"], 0, "same expiry: the oldest");
        assert_eq!(l["later"], 50);
        assert_eq!(l["late_low"], 100, "never expiring: last");
        assert_eq!(balances(&acme(), &mv).unwrap()[&usd()], 150);
    }

    #[test]
    fn usage_is_consumed_as_it_grows_and_released_when_it_shrinks() {
        let grants = [grant("a", 100, 1, None, 0), grant("b", 100, 2, None, 0)];
        let mut mv = Vec::new();
        run(&grants, &mut mv, &[open("inv_1", 0, 60)], 1);
        run(&grants, &mut mv, &[open("inv_1", 0, 150)], 2);
        assert_eq!(
            left(&mv),
            BTreeMap::from([("a".into(), 0), ("b".into(), 50)])
        );
        // recomputed lower: the last consumed (b) gets back first
        let back = run(&grants, &mut mv, &[open("inv_1", 0, 30)], 3);
        assert!(back.iter().all(|m| m.kind == MovementKind::Release));
        assert_eq!(
            left(&mv),
            BTreeMap::from([("a".into(), 70), ("b".into(), 100)])
        );
        // and grows again to the same amount as before: new ids, nothing collapses
        run(&grants, &mut mv, &[open("inv_1", 0, 150)], 4);
        assert_eq!(
            left(&mv),
            BTreeMap::from([("a".into(), 0), ("b".into(), 50)])
        );
        let ids: BTreeSet<&str> = mv.iter().map(|m| m.movement_id.as_str()).collect();
        assert_eq!(ids.len(), mv.len(), "every id unique");
    }

    #[test]
    fn expiry_takes_what_is_left_and_an_expired_grant_pays_nothing() {
        let grants = [
            grant("g", 100, 1, Some(10 * DAY), 0),
            grant("h", 100, 2, None, 0),
        ];
        let mut mv = Vec::new();
        run(&grants, &mut mv, &[open("inv_1", 0, 40)], DAY);
        let at_expiry = run(&grants, &mut mv, &[open("inv_1", 0, 40)], 10 * DAY);
        assert_eq!(at_expiry.len(), 1);
        assert_eq!(
            (at_expiry[0].kind, at_expiry[0].amount_minor),
            (MovementKind::Expire, 60)
        );
        // usage after the expiry is paid by h only
        run(&grants, &mut mv, &[open("inv_1", 0, 90)], 11 * DAY);
        assert_eq!(
            left(&mv),
            BTreeMap::from([("g".into(), 0), ("h".into(), 50)])
        );
        // usage lowered after the expiry: what returns to g expires again at once
        let back = run(&grants, &mut mv, &[open("inv_1", 0, 0)], 12 * DAY);
        let kinds: Vec<_> = back
            .iter()
            .map(|m| (m.kind, m.grant_id.as_str(), m.amount_minor))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (MovementKind::Release, "h", 50),
                (MovementKind::Release, "g", 40),
                (MovementKind::Expire, "g", 40)
            ]
        );
        assert_eq!(balances(&acme(), &mv).unwrap()[&usd()], 100);
    }

    #[test]
    fn a_grant_is_used_across_two_periods_and_finalization_keeps_what_the_invoice_applied() {
        let grants = [grant("g", 1_000, 50, None, 0)];
        let mut mv = Vec::new();
        let p1 = open("inv_1", 0, 700);
        run(&grants, &mut mv, std::slice::from_ref(&p1), DAY);
        // period 1 finalized: its invoice applied the 700 reserved
        let fin = Period {
            state: PeriodState::Finalized {
                credits_applied_minor: 700,
            },
            ..p1.clone()
        };
        let p2 = open("inv_2", 30 * DAY, 500);
        let d = run(&grants, &mut mv, &[fin.clone(), p2.clone()], 31 * DAY);
        let kinds: Vec<_> = d.iter().map(|m| (m.kind, m.amount_minor)).collect();
        assert_eq!(
            kinds,
            vec![(MovementKind::Invoiced, 700), (MovementKind::Consume, 300)]
        );
        assert_eq!(left(&mv)["g"], 0);
        // period 1's usage changing after finalization moves nothing (late usage is the
        // invoicer's adjustments)
        let d = run(&grants, &mut mv, &[fin.clone(), p2.clone()], 32 * DAY);
        assert!(d.is_empty());
        // period 1 voided: the credit it applied returns to g, and period 2 takes it
        let void = Period {
            state: PeriodState::Void,
            ..p1
        };
        let d = run(&grants, &mut mv, &[void, p2], 33 * DAY);
        let kinds: Vec<_> = d.iter().map(|m| (m.kind, m.amount_minor)).collect();
        assert_eq!(
            kinds,
            vec![(MovementKind::Restore, 700), (MovementKind::Consume, 200)]
        );
        assert_eq!(left(&mv)["g"], 500);
    }

    #[test]
    fn an_invoice_applying_less_than_reserved_releases_the_rest() {
        let grants = [grant("g", 1_000, 50, None, 0)];
        let mut mv = Vec::new();
        let p = open("inv_1", 0, 700);
        run(&grants, &mut mv, std::slice::from_ref(&p), DAY);
        let fin = Period {
            state: PeriodState::Finalized {
                credits_applied_minor: 650,
            },
            ..p
        };
        let d = run(&grants, &mut mv, &[fin], 2 * DAY);
        let kinds: Vec<_> = d.iter().map(|m| (m.kind, m.amount_minor)).collect();
        assert_eq!(
            kinds,
            vec![(MovementKind::Release, 50), (MovementKind::Invoiced, 650)]
        );
        assert_eq!(left(&mv)["g"], 350);
    }

    #[test]
    fn voids_currency_and_unpaid_top_ups() {
        let mut top_up = grant("t", 500, 0, None, 0);
        top_up.kind = GrantKind::TopUp;
        let mut eur = grant("e", 500, 0, None, 0);
        eur.currency = "EUR".parse().unwrap();
        let grants = [top_up.clone(), eur, grant("p", 100, 50, None, 0)];
        let mut mv = Vec::new();
        run(&grants, &mut mv, &[open("inv_1", 0, 80)], DAY);
        assert_eq!(
            left(&mv)["p"],
            20,
            "the unpaid top-up and the EUR grant pay nothing"
        );
        assert!(!left(&mv).contains_key("t"));
        // paid: available from then on
        let paid = Grant {
            paid_at_ms: Some(2 * DAY),
            ..top_up
        };
        let grants = [paid, grants[1].clone(), grants[2].clone()];
        run(&grants, &mut mv, &[open("inv_1", 0, 300)], 3 * DAY);
        assert_eq!(left(&mv)["t"], 280);
        // voiding p: what is left of it is voided, once
        let voiding = BTreeSet::from(["p".to_owned()]);
        let d = decide(&Facts {
            customer: &acme(),
            grants: &grants,
            movements: &mv,
            periods: &[open("inv_1", 0, 300)],
            voiding: &voiding,
            now_ms: 4 * DAY,
        })
        .unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].kind, d[0].amount_minor),
            (MovementKind::Void, 20),
            "what was left of p"
        );
        mv.extend(d);
        // usage drops: credit back to p is voided at once, and stays with nobody else
        let d = run(&grants, &mut mv, &[open("inv_1", 0, 0)], 5 * DAY);
        assert_eq!(
            d.iter()
                .map(|m| (m.kind, m.grant_id.as_str(), m.amount_minor))
                .collect::<Vec<_>>(),
            vec![
                (MovementKind::Release, "t", 220),
                (MovementKind::Release, "p", 80),
                (MovementKind::Void, "p", 80),
            ]
        );
        assert_eq!(balances(&acme(), &mv).unwrap()[&usd()], 500);
    }
}
