//! One invoice per currency: a customer's period whose charges are in several currencies (a
//! subscription change to a plan, or a billing currency, of another currency inside the
//! period) gets one invoice per currency, each with its own id, number, totals, tax and
//! credits, instead of no invoice.
//!
//! The rule, for the charges of one (customer, period):
//! - one currency: one invoice, id [`invoice_id`]`(customer, period start)`, as always;
//! - several: the period's *home* currency keeps that id, and each other currency's invoice is
//!   [`invoice_id_in`]`(customer, period start, currency)`. The home currency is the currency
//!   of the invoice already stored under the plain id (a draft or a finalized invoice: an id
//!   never changes currency once written); without one, the currency billed first in the
//!   period (the smallest `usage_from` of its charges: the earlier part of the period; for a
//!   part without usage, its start), then the smaller code.
//!
//! So a period's invoice keeps its id when a change to another currency arrives in it, and ids
//! are stable from pass to pass. Reads only for periods with several currencies, bounded by
//! their customers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use clickhouse::Client;
use serde::Deserialize;
use xxhash_rust::xxh3::xxh3_128;

use crate::invoice::{invoice_id, ChargeLine};

/// The id of a customer's invoice for a period in `currency` when that currency is not the
/// period's home currency (see the module docs).
pub fn invoice_id_in(customer: &str, period_start_ms: i64, currency: &str) -> String {
    format!(
        "inv_{:032x}",
        xxh3_128(format!("{customer}\0{period_start_ms}\0{currency}").as_bytes())
    )
}

/// The home currency of a period with several currencies: `stored` (the currency of the
/// invoice stored under the plain id), else the one with the earliest first usage (`first`:
/// currency and the smallest `usage_from` of its charges, ms), then the smaller code.
pub fn home(first: &[(String, i64)], stored: Option<&str>) -> Option<String> {
    if let Some(s) = stored {
        return Some(s.to_owned());
    }
    first
        .iter()
        .min_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)))
        .map(|(c, _)| c.clone())
}

/// Which invoice a charge goes on.
#[derive(Debug, Clone, Default)]
pub struct InvoiceIds {
    /// (customer, period start ms) -> home currency, for periods with several currencies.
    homes: HashMap<(String, i64), String>,
}

impl InvoiceIds {
    /// The periods with several currencies and their home currency.
    pub fn new(homes: HashMap<(String, i64), String>) -> InvoiceIds {
        InvoiceIds { homes }
    }

    /// The invoice id of the customer's period in `currency`.
    pub fn id(&self, customer: &str, period_start_ms: i64, currency: &str) -> String {
        match self.homes.get(&(customer.to_owned(), period_start_ms)) {
            Some(home) if home != currency => invoice_id_in(customer, period_start_ms, currency),
            _ => invoice_id(customer, period_start_ms),
        }
    }

    /// The invoice id of a charge.
    pub fn of(&self, c: &ChargeLine) -> String {
        self.id(c.customer.as_str(), c.period.start_ms, c.currency.code())
    }
}

/// The (customer, period start ms) of `charges` with several currencies, and those currencies.
pub fn mixed(charges: &[ChargeLine]) -> BTreeMap<(String, i64), BTreeSet<String>> {
    let mut all: BTreeMap<(String, i64), BTreeSet<String>> = BTreeMap::new();
    for c in charges {
        all.entry((c.customer.to_string(), c.period.start_ms))
            .or_default()
            .insert(c.currency.to_string());
    }
    all.retain(|_, currencies| currencies.len() > 1);
    all
}

#[derive(clickhouse::Row, Deserialize)]
struct StoredRow {
    invoice_id: String,
    // as stored: one invoice row's bad value must not fail the batch's read
    currency: String,
}

#[derive(clickhouse::Row, Deserialize)]
struct FirstRow {
    // as stored: a charge the reader left out (its customer or currency does not validate)
    // is in no mixed period, so it matches nothing below
    customer: String,
    period_start: u32,
    currency: String,
    first: u32,
}

/// Ids named in one query at the most: a pass's whole list would exceed ClickHouse's
/// `max_query_size` (256 KiB) with a few thousand mixed-currency periods.
const IDS_PER_QUERY: usize = 1_000;

/// Resolves the invoice ids of `charges`: for the periods with several currencies, reads the
/// currency stored under each plain id (`invoices`, by id) and the first usage of each
/// currency (`charges`, by customer).
pub async fn resolve(
    db: &Client,
    charges: &[ChargeLine],
) -> Result<InvoiceIds, clickhouse::error::Error> {
    let mixed = mixed(charges);
    if mixed.is_empty() {
        return Ok(InvoiceIds::default());
    }
    let plain: Vec<String> = mixed.keys().map(|(c, s)| invoice_id(c, *s)).collect();
    let mut stored: HashMap<String, String> = HashMap::new();
    // bounded id lists: a whole pass's list would pass ClickHouse's `max_query_size`
    for chunk in plain.chunks(IDS_PER_QUERY) {
        let sql = format!(
            "SELECT invoice_id, argMax(currency, version) FROM invoices WHERE invoice_id IN ({}) \
             GROUP BY invoice_id",
            vec!["?"; chunk.len()].join(", ")
        );
        let mut q = db.query(&sql);
        for id in chunk {
            q = q.bind(id);
        }
        for r in q.fetch_all::<StoredRow>().await? {
            stored.insert(r.invoice_id, r.currency);
        }
    }
    let customers: BTreeSet<&str> = mixed.keys().map(|(c, _)| c.as_str()).collect();
    let since = mixed
        .keys()
        .map(|(_, s)| *s)
        .min()
        .unwrap_or(0)
        .div_euclid(1000);
    let customers: Vec<&str> = customers.into_iter().collect();
    let mut first: BTreeMap<(String, i64), Vec<(String, i64)>> = BTreeMap::new();
    for chunk in customers.chunks(IDS_PER_QUERY) {
        let sql = format!(
            "SELECT customer, toUInt32(period_start), currency, toUInt32(min(usage_from)) \
             FROM charges WHERE customer IN ({}) AND period_start >= toDateTime(?) \
             GROUP BY customer, period_start, currency",
            vec!["?"; chunk.len()].join(", ")
        );
        let mut q = db.query(&sql);
        for c in chunk {
            q = q.bind(*c);
        }
        for r in q.bind(since).fetch_all::<FirstRow>().await? {
            let key = (r.customer, i64::from(r.period_start) * 1000);
            if mixed.get(&key).is_some_and(|cs| cs.contains(&r.currency)) {
                first
                    .entry(key)
                    .or_default()
                    .push((r.currency, i64::from(r.first) * 1000));
            }
        }
    }
    let mut homes = HashMap::new();
    for (key, currencies) in &mixed {
        let stored = stored.get(&invoice_id(&key.0, key.1)).map(String::as_str);
        let firsts = first
            .get(key)
            .cloned()
            .unwrap_or_else(|| currencies.iter().map(|c| (c.clone(), i64::MAX)).collect());
        if let Some(h) = home(&firsts, stored) {
            homes.insert(key.clone(), h);
        }
    }
    Ok(InvoiceIds::new(homes))
}

#[cfg(test)]
mod tests {
    use tally_domain::CustomerId;

    use super::*;
    use crate::invoice::tests::charge;

    fn s(t: &str) -> String {
        t.to_owned()
    }

    #[test]
    fn the_stored_currency_keeps_the_plain_id_else_the_first_billed() {
        let first = [(s("USD"), 5_000), (s("EUR"), 1_000)];
        assert_eq!(home(&first, None), Some(s("EUR")));
        assert_eq!(home(&first, Some("USD")), Some(s("USD")));
        // a tie goes to the smaller code
        assert_eq!(home(&[(s("USD"), 0), (s("EUR"), 0)], None), Some(s("EUR")));
        assert_eq!(home(&[], None), None);
    }

    #[test]
    fn only_periods_with_several_currencies_get_other_ids() {
        let usd = charge("a", 1);
        let mut eur = charge("b", 2);
        eur.currency = "EUR".parse().unwrap();
        let mut other = charge("a", 3);
        other.customer = CustomerId::new("globex").unwrap();
        let mixed = mixed(&[usd.clone(), eur.clone(), other.clone()]);
        assert_eq!(mixed.len(), 1);
        let mut homes = HashMap::new();
        homes.insert((s("acme"), 0), s("USD"));
        let ids = InvoiceIds::new(homes);
        assert_eq!(ids.of(&usd), invoice_id("acme", 0));
        assert_eq!(ids.of(&eur), invoice_id_in("acme", 0, "EUR"));
        assert_ne!(ids.of(&eur), ids.of(&usd));
        assert_eq!(ids.of(&other), invoice_id("globex", 0));
        // without a second currency, the id is the one it always was
        assert_eq!(InvoiceIds::default().of(&eur), invoice_id("acme", 0));
    }
}
