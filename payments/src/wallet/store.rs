//! The wallet's ClickHouse reads and appends (migration 0051). Every read names one customer
//! (the first column of the sorting keys of `wallet_grants`, `wallet_movements`, `charges` and
//! `invoices`) or a list of invoice ids (`invoice_transitions`' first key column), and charges
//! only of periods that ended within [`LOOKBACK_MS`]: a pass reads what one customer's open
//! periods need, never the whole history. Base tables are read with the views' rule (the
//! earliest record of an id wins), since ClickHouse 18.16 does not push predicates into views.

use std::collections::{BTreeMap, BTreeSet};

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use tally_domain::{Currency, CustomerId, InvoiceStatus};
use tally_platform::store::datetime_secs;

use super::consume::{Period, PeriodState};
use super::{Grant, GrantKind, Movement, MovementKind, WalletError};
use crate::Error;

/// Periods that ended longer ago than this are not read for usage (their invoices were
/// finalized long before: the invoicer's default lookback is 3 days).
pub const LOOKBACK_MS: i64 = 93 * 86_400_000;

#[derive(clickhouse::Row, Serialize, Deserialize)]
struct GrantRow {
    grant_id: String,
    customer: String,
    currency: String,
    amount_minor: i64,
    kind: String,
    priority: u8,
    expires_at_ms: i64,
    reason: String,
    actor: String,
    created_at_ms: i64,
    created_at: u32,
}

/// A grant as stored, with its reason and actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredGrant {
    #[serde(flatten)]
    pub grant: Grant,
    pub reason: String,
    pub actor: String,
}

/// `(?, ?, ...)` for `n` values (ClickHouse 18.16 does not take an array after `IN`).
pub fn placeholders(n: usize) -> String {
    format!("({})", vec!["?"; n.max(1)].join(", "))
}

/// `query` with each of `values` bound in turn.
fn bind_all(mut query: clickhouse::query::Query, values: &[String]) -> clickhouse::query::Query {
    for v in values {
        query = query.bind(v);
    }
    query
}

fn corrupt(what: String) -> Error {
    Error::Corrupt(WalletError::Corrupt(what).to_string())
}

/// Appends a grant. Its id is the caller's idempotency key: a grant whose id exists is kept
/// as first recorded (the views keep the earliest record).
pub async fn append_grant(db: &Client, g: &Grant, reason: &str, actor: &str) -> Result<(), Error> {
    let mut insert = db.insert::<GrantRow>("wallet_grants").await?;
    insert
        .write(&GrantRow {
            grant_id: g.grant_id.clone(),
            customer: g.customer.to_string(),
            currency: g.currency.to_string(),
            amount_minor: g.amount_minor,
            kind: g.kind.as_str().to_owned(),
            priority: g.priority,
            expires_at_ms: g.expires_at_ms.unwrap_or(0),
            reason: reason.to_owned(),
            actor: actor.to_owned(),
            created_at_ms: g.created_at_ms,
            created_at: datetime_secs(g.created_at_ms),
        })
        .await?;
    insert.end().await?;
    Ok(())
}

/// A customer's grants (the earliest record of each id), with the payment time of paid
/// top-ups. A stored grant that does not validate (an unknown kind or currency) fails the
/// read: the customer's wallet is not decided without it (leaving it out could spend its
/// credit again), and the pass goes on with the other customers.
pub async fn grants_of(db: &Client, customer: &CustomerId) -> Result<Vec<StoredGrant>, Error> {
    // aliases differ from the columns: ClickHouse 18.16 cannot alias an aggregate to the
    // name of a column it reads (rows are read by position)
    let rows: Vec<GrantRow> = db
        .query(
            "SELECT grant_id, any(customer) AS c, argMin(currency, created_at_ms) AS cur, \
             argMin(amount_minor, created_at_ms) AS amt, argMin(kind, created_at_ms) AS k, \
             argMin(priority, created_at_ms) AS p, argMin(expires_at_ms, created_at_ms) AS e, \
             argMin(reason, created_at_ms) AS r, argMin(actor, created_at_ms) AS a, \
             min(created_at_ms) AS t, toUInt32(0) AS z \
             FROM wallet_grants WHERE customer = ? GROUP BY grant_id ORDER BY grant_id",
        )
        .bind(customer.as_str())
        .fetch_all()
        .await?;
    let top_ups: Vec<String> = rows
        .iter()
        .filter(|r| r.kind == GrantKind::TopUp.as_str())
        .map(|r| super::grant::payable_id(customer, &r.grant_id))
        .collect();
    let paid = paid_top_ups(db, &top_ups).await?;
    rows.into_iter()
        .map(|r| {
            let kind = GrantKind::parse(&r.kind)
                .ok_or_else(|| corrupt(format!("grant {} kind {:?}", r.grant_id, r.kind)))?;
            let currency = r.currency.parse::<Currency>().map_err(|e| {
                corrupt(format!(
                    "grant {} currency {:?}: {e}",
                    r.grant_id, r.currency
                ))
            })?;
            let paid_at_ms = paid
                .get(&super::grant::payable_id(customer, &r.grant_id))
                .and_then(|(sum, at)| (*sum >= r.amount_minor).then_some(*at));
            Ok(StoredGrant {
                grant: Grant {
                    grant_id: r.grant_id,
                    customer: customer.clone(),
                    currency,
                    amount_minor: r.amount_minor,
                    kind,
                    priority: r.priority,
                    expires_at_ms: (r.expires_at_ms != 0).then_some(r.expires_at_ms),
                    created_at_ms: r.created_at_ms,
                    paid_at_ms,
                },
                reason: r.reason,
                actor: r.actor,
            })
        })
        .collect()
}

#[derive(clickhouse::Row, Deserialize)]
struct PaidRow {
    invoice_id: String,
    paid_minor: i64,
    at_ms: i64,
}

/// Received payments per top-up payable id: (sum, time of the last one).
async fn paid_top_ups(db: &Client, ids: &[String]) -> Result<BTreeMap<String, (i64, i64)>, Error> {
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let sql = format!(
        "SELECT invoice_id, toInt64(sum(amt)) AS paid, toInt64(max(t)) AS last FROM \
         (SELECT invoice_id, payment_id, argMin(amount_minor, at_ms) AS amt, min(at_ms) AS t \
          FROM payments WHERE invoice_id IN {} AND kind = 'payment' AND status = 'succeeded' \
          GROUP BY invoice_id, payment_id) GROUP BY invoice_id",
        placeholders(ids.len())
    );
    let rows: Vec<PaidRow> = bind_all(db.query(&sql), ids).fetch_all().await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.invoice_id, (r.paid_minor, r.at_ms)))
        .collect())
}

#[derive(clickhouse::Row, Serialize, Deserialize)]
struct MovementRow {
    movement_id: String,
    customer: String,
    grant_id: String,
    currency: String,
    kind: String,
    amount_minor: i64,
    invoice_id: String,
    actor: String,
    at_ms: i64,
    at: u32,
}

/// A customer's movements (the earliest record of each id), oldest first. A stored movement
/// that does not validate (an unknown kind or currency, a negative amount) fails the read,
/// as a bad grant does ([`grants_of`]).
pub async fn movements_of(db: &Client, customer: &CustomerId) -> Result<Vec<Movement>, Error> {
    let rows: Vec<MovementRow> = db
        .query(
            "SELECT movement_id, any(customer) AS c, argMin(grant_id, at_ms) AS g, \
             argMin(currency, at_ms) AS cur, argMin(kind, at_ms) AS k, \
             argMin(amount_minor, at_ms) AS amt, argMin(invoice_id, at_ms) AS i, \
             argMin(actor, at_ms) AS a, min(at_ms) AS t, toUInt32(0) AS z \
             FROM wallet_movements WHERE customer = ? GROUP BY movement_id ORDER BY t, movement_id",
        )
        .bind(customer.as_str())
        .fetch_all()
        .await?;
    rows.into_iter()
        .map(|r| {
            let kind = MovementKind::parse(&r.kind)
                .ok_or_else(|| corrupt(format!("movement {} kind {:?}", r.movement_id, r.kind)))?;
            if r.amount_minor < 0 {
                return Err(corrupt(format!(
                    "movement {} amount {}",
                    r.movement_id, r.amount_minor
                )));
            }
            let currency = r.currency.parse::<Currency>().map_err(|e| {
                corrupt(format!(
                    "movement {} currency {:?}: {e}",
                    r.movement_id, r.currency
                ))
            })?;
            Ok(Movement {
                movement_id: r.movement_id,
                customer: customer.clone(),
                grant_id: r.grant_id,
                currency,
                kind,
                amount_minor: r.amount_minor,
                invoice_id: r.invoice_id,
                at_ms: r.at_ms,
            })
        })
        .collect()
}

/// Appends movements in one insert.
pub async fn append_movements(
    db: &Client,
    movements: &[Movement],
    actor: &str,
) -> Result<(), Error> {
    if movements.is_empty() {
        return Ok(());
    }
    let mut insert = db.insert::<MovementRow>("wallet_movements").await?;
    for m in movements {
        insert
            .write(&MovementRow {
                movement_id: m.movement_id.clone(),
                customer: m.customer.to_string(),
                grant_id: m.grant_id.clone(),
                currency: m.currency.to_string(),
                kind: m.kind.as_str().to_owned(),
                amount_minor: m.amount_minor,
                invoice_id: m.invoice_id.clone(),
                actor: actor.to_owned(),
                at_ms: m.at_ms,
                at: datetime_secs(m.at_ms),
            })
            .await?;
    }
    insert.end().await?;
    Ok(())
}

/// Customers with at least one grant.
pub async fn customers(db: &Client) -> Result<Vec<String>, Error> {
    Ok(db
        .query("SELECT DISTINCT customer FROM wallet_grants ORDER BY customer")
        .fetch_all()
        .await?)
}

#[derive(clickhouse::Row, Deserialize)]
struct UsageRow {
    period_start: u32,
    currency: String,
    usage_minor: i64,
}

#[derive(clickhouse::Row, Deserialize)]
struct InvoiceStateRow {
    invoice_id: String,
    status: String,
    currency: String,
    period_start: u32,
    credits_applied_minor: i64,
}

#[derive(clickhouse::Row, Deserialize)]
struct TransitionRow {
    invoice_id: String,
    to_status: String,
}

/// The invoice ids the invoicer gives the customer's periods of `usage`
/// ([`tally_invoice::currency_split::resolve`], read only for periods with several currencies).
/// The invoicer leaves out a charge whose customer id or currency does not validate: such
/// usage is on no invoice, so it is not counted as a currency of its period here either.
async fn invoice_ids(
    db: &Client,
    customer: &CustomerId,
    usage: &[UsageRow],
) -> Result<tally_invoice::currency_split::InvoiceIds, Error> {
    let mut currencies: BTreeMap<u32, BTreeSet<Currency>> = BTreeMap::new();
    for u in usage {
        if let Ok(c) = u.currency.parse::<Currency>() {
            currencies.entry(u.period_start).or_default().insert(c);
        }
    }
    // only what `resolve` reads of a charge: its customer, period start and currency
    let lines: Vec<tally_invoice::invoice::ChargeLine> = currencies
        .iter()
        .filter(|(_, cs)| cs.len() > 1)
        .flat_map(|(start, cs)| {
            cs.iter().map(move |c| tally_invoice::invoice::ChargeLine {
                charge_id: String::new(),
                customer: customer.clone(),
                period: tally_domain::Period {
                    start_ms: i64::from(*start) * 1000,
                    end_ms: i64::from(*start) * 1000,
                },
                meter: String::new(),
                group_key: String::new(),
                group_names: Vec::new(),
                group_values: Vec::new(),
                plan_id: String::new(),
                plan_version: 0,
                price_model: String::new(),
                currency: *c,
                quantity: rust_decimal::Decimal::ZERO,
                unit_price: String::new(),
                tiers_json: String::new(),
                amount_minor: 0,
                amount_before_discounts_minor: 0,
                tax_rate: String::new(),
                tax_minor: 0,
            })
        })
        .collect();
    Ok(tally_invoice::currency_split::resolve(db, &lines).await?)
}

/// The customer's periods a pass decides on: those with rated usage that ended within
/// [`LOOKBACK_MS`] of `now_ms`, and those of `held` (invoices whose reservation the wallet
/// still holds or that applied wallet credit a void would return), each in the state of its
/// invoice.
pub async fn periods(
    db: &Client,
    customer: &CustomerId,
    held: &BTreeSet<String>,
    now_ms: i64,
) -> Result<Vec<Period>, Error> {
    let usage = usage_of(db, customer.as_str(), now_ms).await?;
    // one invoice per (customer, period, currency): a period with several currencies has one
    // id per currency, the one the invoicer gives it (`currency_split`), so each currency's
    // usage is reserved for (and credited to) its own invoice
    let ids_of = invoice_ids(db, customer, &usage).await?;
    let open = open_periods(customer.as_str(), usage, &ids_of);
    let ids: Vec<String> = open
        .keys()
        .chain(held.iter())
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let invoices = invoice_states(db, customer.as_str(), &ids).await?;
    let lifecycle = lifecycles(db, &ids).await?;
    Ok(decide_periods(open, invoices, &lifecycle))
}

/// The customer's rated usage (tax included) per period start and currency, of the periods
/// that ended within [`LOOKBACK_MS`] of `now_ms`.
async fn usage_of(db: &Client, customer: &str, now_ms: i64) -> Result<Vec<UsageRow>, Error> {
    let since_secs = (now_ms - LOOKBACK_MS).div_euclid(1000);
    Ok(db
        .query(
            "SELECT toUInt32(period_start) AS ps, currency, \
             toInt64(sum(amount_minor + tax_minor)) AS u \
             FROM charges FINAL WHERE customer = ? AND period_end > toDateTime(?) \
             GROUP BY period_start, currency ORDER BY ps, currency",
        )
        .bind(customer)
        .bind(since_secs)
        .fetch_all()
        .await?)
}

/// The latest state row of each of the customer's invoices `ids` that exists.
async fn invoice_states(
    db: &Client,
    customer: &str,
    ids: &[String],
) -> Result<Vec<InvoiceStateRow>, Error> {
    let sql = format!(
        "SELECT invoice_id, argMax(status, version) AS s, argMax(currency, version) AS c, \
         toUInt32(argMax(period_start, version)) AS ps, \
         argMax(credits_applied_minor, version) AS ca \
         FROM invoices WHERE customer = ? AND invoice_id IN {} GROUP BY invoice_id",
        placeholders(ids.len())
    );
    Ok(bind_all(db.query(&sql).bind(customer), ids)
        .fetch_all()
        .await?)
}

/// The lifecycle status of each of the invoices `ids` that has transitions: its transitions
/// (the earliest record of each) folded in order from draft.
async fn lifecycles(db: &Client, ids: &[String]) -> Result<BTreeMap<String, InvoiceStatus>, Error> {
    let sql = format!(
        "SELECT invoice_id, argMin(to_status, at_ms) AS s FROM invoice_transitions \
         WHERE invoice_id IN {} GROUP BY invoice_id, transition_id \
         ORDER BY invoice_id, min(at_ms), min(seq), transition_id",
        placeholders(ids.len())
    );
    let transitions: Vec<TransitionRow> = bind_all(db.query(&sql), ids).fetch_all().await?;
    let mut lifecycle: BTreeMap<String, InvoiceStatus> = BTreeMap::new();
    for t in transitions {
        let to: InvoiceStatus = t
            .to_status
            .parse()
            .map_err(|_| corrupt(format!("invoice {} status {:?}", t.invoice_id, t.to_status)))?;
        let at = lifecycle
            .entry(t.invoice_id)
            .or_insert(InvoiceStatus::Draft);
        *at = tally_domain::invoice_status::fold(*at, [to]);
    }
    Ok(lifecycle)
}

/// The open period of each (period start, currency) of `usage`, by the invoice id the
/// invoicer gives it.
fn open_periods(
    customer: &str,
    usage: Vec<UsageRow>,
    ids_of: &tally_invoice::currency_split::InvoiceIds,
) -> BTreeMap<String, Period> {
    let mut by_invoice: BTreeMap<String, Period> = BTreeMap::new();
    for u in usage {
        let start_ms = i64::from(u.period_start) * 1000;
        let currency = match u.currency.parse::<Currency>() {
            Ok(c) => c,
            Err(e) => {
                // the invoicer leaves such charges out too: on no invoice, nothing to pay
                tracing::error!(table = "charges", customer, error = %e, "usage left out: unknown currency");
                continue;
            }
        };
        let id = ids_of.id(customer, start_ms, &u.currency);
        by_invoice.insert(
            id.clone(),
            Period {
                invoice_id: id,
                currency,
                period_start_ms: start_ms,
                state: PeriodState::Open {
                    usage_minor: u.usage_minor,
                },
            },
        );
    }
    by_invoice
}

/// Each period in the state of its invoice: `open` (by invoice id) as is unless its invoice
/// left draft; a finalized (paid, uncollectible) invoice with the credit it applied, a voided
/// one void, also when only held (not in `open`); an invoice still a draft stays open.
fn decide_periods(
    mut by_invoice: BTreeMap<String, Period>,
    invoices: Vec<InvoiceStateRow>,
    lifecycle: &BTreeMap<String, InvoiceStatus>,
) -> Vec<Period> {
    for inv in invoices {
        let status = lifecycle.get(&inv.invoice_id).copied();
        let state = match status {
            Some(InvoiceStatus::Void) => PeriodState::Void,
            Some(InvoiceStatus::Draft) | None if inv.status == "draft" => continue,
            _ => PeriodState::Finalized {
                credits_applied_minor: inv.credits_applied_minor,
            },
        };
        if let Some(period) = by_invoice.get_mut(&inv.invoice_id) {
            period.state = state;
            continue;
        }
        let currency = match inv.currency.parse::<Currency>() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(table = "invoices", invoice_id = %inv.invoice_id, error = %e,
                    "held invoice left out: unknown currency");
                continue;
            }
        };
        by_invoice.insert(
            inv.invoice_id.clone(),
            Period {
                invoice_id: inv.invoice_id,
                currency,
                period_start_ms: i64::from(inv.period_start) * 1000,
                state,
            },
        );
    }
    // a draft voided before the invoicer finalized it
    for (id, status) in lifecycle {
        if *status == InvoiceStatus::Void {
            if let Some(p) = by_invoice.get_mut(id) {
                p.state = PeriodState::Void;
            }
        }
    }
    by_invoice.into_values().collect()
}

/// Which of `journal_ids` the ledger has.
pub async fn posted(db: &Client, journal_ids: &[String]) -> Result<BTreeSet<String>, Error> {
    if journal_ids.is_empty() {
        return Ok(BTreeSet::new());
    }
    let sql = format!(
        "SELECT DISTINCT journal_id FROM ledger_entries WHERE journal_id IN {}",
        placeholders(journal_ids.len())
    );
    let ids: Vec<String> = bind_all(db.query(&sql), journal_ids).fetch_all().await?;
    Ok(ids.into_iter().collect())
}

#[derive(clickhouse::Row, Deserialize)]
struct TopUpRow {
    customer: String,
    currency: String,
}

/// Who pays a top-up, in what currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopUpDue {
    pub customer: CustomerId,
    pub currency: Currency,
}

/// A top-up by the id it is paid under ([`super::grant::payable_id`]), if one exists: its
/// customer and currency (`None` also for a stored row that does not validate). Reads `wallet_grants` whole (one row per grant: small).
pub async fn top_up(db: &Client, payable_id: &str) -> Result<Option<TopUpDue>, Error> {
    if !payable_id.starts_with("topup_") {
        return Ok(None);
    }
    let row: Option<TopUpRow> = db
        .query(
            "SELECT customer, argMin(currency, created_at_ms) AS cur FROM wallet_grants \
             WHERE kind = 'top_up' AND concat('topup_', customer, '_', grant_id) = ? \
             GROUP BY customer, grant_id LIMIT 1",
        )
        .bind(payable_id)
        .fetch_optional()
        .await?;
    // a stored row that does not validate is logged and left out: its payment is unknown
    Ok(row.and_then(|r| {
        let (customer, currency) =
            tally_invoice::invoice::customer_currency("wallet_grants", r.customer, &r.currency)?;
        Some(TopUpDue { customer, currency })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn open(id: &str, usage_minor: i64) -> (String, Period) {
        let p = Period {
            invoice_id: id.to_owned(),
            currency: Currency::from_str("EUR").unwrap(),
            period_start_ms: 1_000,
            state: PeriodState::Open { usage_minor },
        };
        (id.to_owned(), p)
    }

    fn row(id: &str, status: &str, credits_applied_minor: i64) -> InvoiceStateRow {
        InvoiceStateRow {
            invoice_id: id.to_owned(),
            status: status.to_owned(),
            currency: "USD".to_owned(),
            period_start: 7,
            credits_applied_minor,
        }
    }

    #[test]
    fn periods_take_the_state_of_their_invoice() {
        let open_periods: BTreeMap<String, Period> = [
            open("a", 500),
            open("b", 300),
            open("c", 200),
            open("d", 100),
        ]
        .into();
        let invoices = vec![
            row("a", "draft", 0),
            row("b", "finalized", 120),
            row("c", "draft", 0),
            row("h", "finalized", 40),
            InvoiceStateRow {
                currency: "US D".to_owned(),
                ..row("x", "finalized", 10)
            },
        ];
        let lifecycle: BTreeMap<String, InvoiceStatus> = [
            ("c".to_owned(), InvoiceStatus::Void),
            ("d".to_owned(), InvoiceStatus::Void),
        ]
        .into();
        let got = decide_periods(open_periods, invoices, &lifecycle);
        let states: Vec<(&str, PeriodState)> = got
            .iter()
            .map(|p| (p.invoice_id.as_str(), p.state))
            .collect();
        assert_eq!(
            states,
            vec![
                ("a", PeriodState::Open { usage_minor: 500 }),
                (
                    "b",
                    PeriodState::Finalized {
                        credits_applied_minor: 120
                    }
                ),
                ("c", PeriodState::Void),
                ("d", PeriodState::Void),
                (
                    "h",
                    PeriodState::Finalized {
                        credits_applied_minor: 40
                    }
                ),
            ]
        );
        // a held invoice not in the usage comes from its own state row
        assert_eq!(got[4].currency, Currency::from_str("USD").unwrap());
        assert_eq!(got[4].period_start_ms, 7_000);
    }

    #[test]
    fn usage_in_an_unknown_currency_is_left_out() {
        let usage = vec![
            UsageRow {
                period_start: 100,
                currency: "EUR".to_owned(),
                usage_minor: 250,
            },
            UsageRow {
                period_start: 200,
                currency: "E1".to_owned(),
                usage_minor: 900,
            },
        ];
        let open = open_periods("acme", usage, &Default::default());
        let got: Vec<(i64, Currency, PeriodState)> = open
            .values()
            .map(|p| (p.period_start_ms, p.currency, p.state))
            .collect();
        assert_eq!(
            got,
            vec![(
                100_000,
                Currency::from_str("EUR").unwrap(),
                PeriodState::Open { usage_minor: 250 }
            )]
        );
    }
}
