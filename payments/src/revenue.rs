//! The revenue report: per period (UTC month or day) and currency, what was billed, collected,
//! credited and is outstanding, computed from the ledger's journals posted in `[from, to)`.
//!
//! Every figure is a sum of journal lines, in integer minor units with checked arithmetic:
//!
//! | figure | lines |
//! |---|---|
//! | `billed_minor` | receivable debits of finalizations, less what voids reverse (their revenue and tax debits) |
//! | `collected_minor` | receivable credits of payments |
//! | `credit_notes_minor` | receivable credits of credit notes |
//! | `prepaid_applied_minor` | receivable credits of prepaid credit (wallet or grants) applied, less the credit a void returns |
//! | `credited_minor` | `credit_notes_minor + prepaid_applied_minor` |
//! | `outstanding_minor` | `billed − collected − credited` (what the period's billing left unpaid, written off included) |
//! | `written_off_minor` | receivable credits of write-offs (part of what is outstanding, not expected any more) |
//! | `receivable_change_minor` | receivable debits minus credits, every kind |
//! | `refunded_minor` | refunds (cash returned; they do not reopen what was billed) |
//! | `disputes_lost_minor` | disputes lost (cash returned to card holders) |
//!
//! A period reconciles when `receivable_change = outstanding − written_off`: the figures are
//! the receivable account's own movements, classified (`reconciles` in each row). The report is
//! a flow over the range; journals are attributed to the period of their posting time.
//!
//! Reads scale with the range: `ledger_entries_by_time` is sorted by time, and only the range
//! asked is read (the earliest record of each line wins, as in `v_ledger_entries`).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use clickhouse::Client;
use serde::{Deserialize, Serialize};
use tally_domain::Currency;

use crate::Error;

/// How the range is divided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Month,
    Day,
}

impl std::str::FromStr for Granularity {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "month" => Ok(Granularity::Month),
            "day" => Ok(Granularity::Day),
            _ => Err(Error::Invalid(format!(
                "period {s:?}: expected month or day"
            ))),
        }
    }
}

/// One ledger line as the report reads it; its currency as stored, typed one line at a time
/// by [`report`] (a line in a currency that does not parse is logged and left out).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, clickhouse::Row)]
pub struct Line {
    pub entry_id: String,
    pub journal_id: String,
    pub kind: String,
    pub account: String,
    pub currency: String,
    pub debit_minor: i64,
    pub credit_minor: i64,
    pub at_ms: i64,
}

/// The figures of a period and currency (see the module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Figures {
    pub billed_minor: i64,
    pub collected_minor: i64,
    pub credit_notes_minor: i64,
    pub prepaid_applied_minor: i64,
    pub credited_minor: i64,
    pub outstanding_minor: i64,
    pub written_off_minor: i64,
    pub receivable_change_minor: i64,
    pub refunded_minor: i64,
    pub disputes_lost_minor: i64,
    pub reconciles: bool,
}

/// A period's figures in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeriodFigures {
    pub start: String,
    pub end: String,
    pub start_ms: i64,
    pub end_ms: i64,
    /// Serialized as its code.
    pub currency: Currency,
    #[serde(flatten)]
    pub figures: Figures,
}

/// The whole range's figures in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Serialized as its code.
    pub currency: Currency,
    #[serde(flatten)]
    pub figures: Figures,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub from: String,
    pub to: String,
    pub period: Granularity,
    /// The filter as asked (a well-formed code, known or not: an unknown one reports nothing).
    pub currency: Option<String>,
    /// By period, then currency; a period without journals in a currency is left out.
    pub periods: Vec<PeriodFigures>,
    /// By currency.
    pub totals: Vec<Totals>,
}

fn overflow() -> Error {
    Error::Invalid("the report's sums overflow".into())
}

fn add(a: &mut i64, v: i64) -> Result<(), Error> {
    *a = a.checked_add(v).ok_or_else(overflow)?;
    Ok(())
}

/// `debit − credit` of a line (or the reverse), checked.
fn net(l: &Line, debit_side: bool) -> Result<i64, Error> {
    let (a, b) = if debit_side {
        (l.debit_minor, l.credit_minor)
    } else {
        (l.credit_minor, l.debit_minor)
    };
    a.checked_sub(b).ok_or_else(overflow)
}

/// Raw sums, before the derived figures.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    billed: i64,
    collected: i64,
    credit_notes: i64,
    prepaid: i64,
    written_off: i64,
    receivable: i64,
    refunded: i64,
    disputes_lost: i64,
}

impl Sums {
    fn add_line(&mut self, l: &Line) -> Result<(), Error> {
        let receivable = l.account == "receivable";
        if receivable {
            add(&mut self.receivable, net(l, true)?)?;
        }
        match (l.kind.as_str(), l.account.as_str()) {
            ("invoice_finalized", "receivable") => add(&mut self.billed, net(l, true)?),
            // a void reverses the finalization (its revenue and tax debits are the total)
            ("void", "revenue" | "tax_payable") => add(&mut self.billed, net(l, false)?),
            // ... and returns the prepaid credit the invoice applied
            ("void", "customer_credit") => add(&mut self.prepaid, net(l, true)?),
            ("credit_applied", "receivable") => add(&mut self.prepaid, net(l, false)?),
            ("credit_note", "receivable") => add(&mut self.credit_notes, net(l, false)?),
            ("payment", "receivable") => add(&mut self.collected, net(l, false)?),
            ("write_off", "receivable") => add(&mut self.written_off, net(l, false)?),
            ("refund", "refunds") => add(&mut self.refunded, net(l, true)?),
            ("dispute_lost", "dispute_losses") => add(&mut self.disputes_lost, net(l, true)?),
            _ => Ok(()),
        }
    }

    fn plus(&mut self, o: &Sums) -> Result<(), Error> {
        for (a, b) in [
            (&mut self.billed, o.billed),
            (&mut self.collected, o.collected),
            (&mut self.credit_notes, o.credit_notes),
            (&mut self.prepaid, o.prepaid),
            (&mut self.written_off, o.written_off),
            (&mut self.receivable, o.receivable),
            (&mut self.refunded, o.refunded),
            (&mut self.disputes_lost, o.disputes_lost),
        ] {
            add(a, b)?;
        }
        Ok(())
    }

    fn figures(&self) -> Result<Figures, Error> {
        let credited = self
            .credit_notes
            .checked_add(self.prepaid)
            .ok_or_else(overflow)?;
        let outstanding = self
            .billed
            .checked_sub(self.collected)
            .and_then(|v| v.checked_sub(credited))
            .ok_or_else(overflow)?;
        let reconciles = outstanding.checked_sub(self.written_off) == Some(self.receivable);
        Ok(Figures {
            billed_minor: self.billed,
            collected_minor: self.collected,
            credit_notes_minor: self.credit_notes,
            prepaid_applied_minor: self.prepaid,
            credited_minor: credited,
            outstanding_minor: outstanding,
            written_off_minor: self.written_off,
            receivable_change_minor: self.receivable,
            refunded_minor: self.refunded,
            disputes_lost_minor: self.disputes_lost,
            reconciles,
        })
    }
}

fn utc(ms: i64) -> Result<DateTime<Utc>, Error> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| Error::Invalid(format!("time {ms} ms is out of range")))
}

/// RFC 3339 of `ms`, UTC.
pub fn rfc3339(ms: i64) -> String {
    utc(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The start of the period containing `ms`.
fn period_start(ms: i64, g: Granularity) -> Result<i64, Error> {
    let t = utc(ms)?;
    let day = t.date_naive();
    let first = match g {
        Granularity::Day => day,
        Granularity::Month => day.with_day(1).unwrap_or(day),
    };
    Ok(first
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default()
        .and_utc()
        .timestamp_millis())
}

/// The start of the period after the one starting at `start_ms`.
fn period_end(start_ms: i64, g: Granularity) -> Result<i64, Error> {
    let day = utc(start_ms)?.date_naive();
    let next = match g {
        Granularity::Day => day.succ_opt(),
        Granularity::Month => {
            let (y, m) = if day.month() == 12 {
                (day.year() + 1, 1)
            } else {
                (day.year(), day.month() + 1)
            };
            NaiveDate::from_ymd_opt(y, m, 1)
        }
    }
    .ok_or_else(|| Error::Invalid("a period ends out of range".into()))?;
    Ok(next
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default()
        .and_utc()
        .timestamp_millis())
}

/// The report of `lines` (posted in `[from_ms, to_ms)`; others are ignored). Pure but for the
/// log of a line left out because its stored currency does not parse.
pub fn report(
    lines: &[Line],
    from_ms: i64,
    to_ms: i64,
    g: Granularity,
    currency: Option<&str>,
) -> Result<Report, Error> {
    // keyed by Currency, whose order is its code's: the same order as the stored strings'
    let mut by_period: BTreeMap<(i64, Currency), Sums> = BTreeMap::new();
    for l in lines {
        if l.at_ms < from_ms || l.at_ms >= to_ms || currency.is_some_and(|c| c != l.currency) {
            continue;
        }
        let cur = match l.currency.parse::<Currency>() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(table = "ledger_entries", entry_id = %l.entry_id,
                    journal_id = %l.journal_id, error = %e, "line left out of the revenue report: unknown currency");
                continue;
            }
        };
        let start = period_start(l.at_ms, g)?;
        by_period.entry((start, cur)).or_default().add_line(l)?;
    }
    let mut totals: BTreeMap<Currency, Sums> = BTreeMap::new();
    let mut periods = Vec::new();
    for ((start, cur), sums) in &by_period {
        totals.entry(*cur).or_default().plus(sums)?;
        let (start_ms, end_ms) = ((*start).max(from_ms), period_end(*start, g)?.min(to_ms));
        periods.push(PeriodFigures {
            start: rfc3339(start_ms),
            end: rfc3339(end_ms),
            start_ms,
            end_ms,
            currency: *cur,
            figures: sums.figures()?,
        });
    }
    Ok(Report {
        from: rfc3339(from_ms),
        to: rfc3339(to_ms),
        period: g,
        currency: currency.map(str::to_owned),
        periods,
        totals: totals
            .into_iter()
            .map(|(currency, s)| {
                Ok(Totals {
                    currency,
                    figures: s.figures()?,
                })
            })
            .collect::<Result<_, Error>>()?,
    })
}

/// A bound of the range: `YYYY-MM-DD` (midnight UTC) or RFC 3339, in whole seconds.
pub fn parse_time(field: &str, s: &str) -> Result<i64, Error> {
    let ms = if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        d.and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_utc()
            .timestamp_millis()
    } else {
        DateTime::parse_from_rfc3339(s)
            .map_err(|e| {
                Error::Invalid(format!("{field} {s:?}: not a date or RFC 3339 time ({e})"))
            })?
            .timestamp_millis()
    };
    if ms.rem_euclid(1000) != 0 || !(0..=i64::from(u32::MAX) * 1000).contains(&ms) {
        return Err(Error::Invalid(format!(
            "{field} {s:?}: whole seconds between 1970 and 2106"
        )));
    }
    Ok(ms)
}

/// The longest range a report covers: three years (1,098 days: any three calendar years, leap
/// days included). A longer range is refused (the API's code [`RANGE_TOO_LONG`]): a report
/// reads every ledger line of its range.
pub const MAX_RANGE_DAYS: i64 = 3 * 366;

/// The API's error code for a range longer than [`MAX_RANGE_DAYS`]; the refusal's message
/// starts with it.
pub const RANGE_TOO_LONG: &str = "range_too_long";

/// Refuses a range `[from_ms, to_ms)` longer than [`MAX_RANGE_DAYS`].
pub fn check_range(from_ms: i64, to_ms: i64) -> Result<(), Error> {
    let max_ms = MAX_RANGE_DAYS * 86_400_000;
    if to_ms.saturating_sub(from_ms) > max_ms {
        return Err(Error::Invalid(format!(
            "{RANGE_TOO_LONG}: from {} to {} is longer than {MAX_RANGE_DAYS} days (3 years); \
             ask for shorter ranges",
            rfc3339(from_ms),
            rfc3339(to_ms)
        )));
    }
    Ok(())
}

/// What a report asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub from_ms: i64,
    pub to_ms: i64,
    pub period: Granularity,
    pub currency: Option<String>,
}

impl Query {
    /// From the textual parameters (the API's query string, the command's flags).
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        period: Option<&str>,
        currency: Option<&str>,
    ) -> Result<Query, Error> {
        let need = |f: &str, v: Option<&str>| {
            v.filter(|v| !v.is_empty())
                .ok_or_else(|| Error::Invalid(format!("{f} is required")))
                .and_then(|v| parse_time(f, v))
        };
        let (from_ms, to_ms) = (need("from", from)?, need("to", to)?);
        if from_ms >= to_ms {
            return Err(Error::Invalid("from must be before to".into()));
        }
        check_range(from_ms, to_ms)?;
        let currency = match currency.filter(|c| !c.is_empty()) {
            Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) => {
                Some(c.to_owned())
            }
            Some(c) => {
                return Err(Error::Invalid(format!(
                    "currency {c:?}: an ISO 4217 code in upper case"
                )))
            }
            None => None,
        };
        Ok(Query {
            from_ms,
            to_ms,
            period: period.unwrap_or("month").parse()?,
            currency,
        })
    }
}

/// The parameters of the API's query string (`from`, `to`, `period`, `currency`), `%XX`
/// decoded (a `+` stays a plus, so `+01:00` offsets pass unescaped); another name is refused.
pub fn from_query_string(qs: &str) -> Result<Query, Error> {
    let mut got: BTreeMap<&str, String> = BTreeMap::new();
    for kv in qs.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if !["from", "to", "period", "currency"].contains(&k) {
            return Err(Error::Invalid(format!(
                "unknown parameter {k:?}: from, to, period, currency"
            )));
        }
        got.insert(k, percent_decode(k, v)?);
    }
    let get = |k: &str| got.get(k).map(String::as_str);
    Query::parse(get("from"), get("to"), get("period"), get("currency"))
}

fn percent_decode(field: &str, v: &str) -> Result<String, Error> {
    let bad = || Error::Invalid(format!("{field}: bad percent-encoding"));
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// The lines posted in the range (the earliest record of each line, which must itself be in
/// the range: a line appended again later, by a retry, counts where it was first posted).
pub async fn lines(db: &Client, q: &Query) -> Result<Vec<Line>, Error> {
    let (from_s, to_s) = (q.from_ms / 1000, q.to_ms / 1000);
    let currency_filter = if q.currency.is_some() {
        " AND currency = ?"
    } else {
        ""
    };
    let mut query = db
        .query(&format!(
            "SELECT entry_id, argMin(journal_id, at_ms), argMin(kind, at_ms), \
             argMin(account, at_ms), argMin(currency, at_ms), argMin(debit_minor, at_ms), \
             argMin(credit_minor, at_ms), min(at_ms) \
             FROM ledger_entries_by_time \
             WHERE at >= toDateTime(?) AND at < toDateTime(?) AND at_ms >= ? AND at_ms < ?{currency_filter} \
             GROUP BY entry_id ORDER BY entry_id"
        ))
        .bind(from_s)
        .bind(to_s)
        .bind(q.from_ms)
        .bind(q.to_ms);
    if let Some(c) = &q.currency {
        query = query.bind(c);
    }
    let rows: Vec<Line> = query.fetch_all().await?;
    // journals with a record before the range: read by (currency, journal id), the sorting key
    // of ledger_entries, so this reads only the journals found above
    let mut journals: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in &rows {
        journals
            .entry(&r.currency)
            .or_default()
            .insert(&r.journal_id);
    }
    let mut earlier: BTreeSet<String> = BTreeSet::new();
    for (cur, ids) in &journals {
        let ids: Vec<&str> = ids.iter().copied().collect();
        for chunk in ids.chunks(1_000) {
            let list = vec!["?"; chunk.len()].join(", ");
            let mut q2 = db
                .query(&format!(
                    "SELECT DISTINCT entry_id FROM ledger_entries \
                     WHERE currency = ? AND journal_id IN ({list}) AND at_ms < ?"
                ))
                .bind(*cur);
            for id in chunk {
                q2 = q2.bind(*id);
            }
            earlier.extend(q2.bind(q.from_ms).fetch_all::<String>().await?);
        }
    }
    Ok(rows
        .into_iter()
        .filter(|r| !earlier.contains(&r.entry_id))
        .collect())
}

/// Reads and computes the report of `q`.
pub async fn run(db: &Client, q: &Query) -> Result<Report, Error> {
    check_range(q.from_ms, q.to_ms)?;
    let lines = lines(db, q).await?;
    report(&lines, q.from_ms, q.to_ms, q.period, q.currency.as_deref())
}

/// The report as a table (the command's `--format table`).
pub fn render(r: &Report) -> String {
    let mut out = format!(
        "{:<20} {:<20} {:<4} {:>14} {:>14} {:>14} {:>14} {:>14} {:>12} {:>12}\n",
        "start",
        "end",
        "cur",
        "billed",
        "collected",
        "credited",
        "outstanding",
        "written_off",
        "refunded",
        "disputes_lost"
    );
    let row = |out: &mut String, start: &str, end: &str, cur: &str, f: &Figures| {
        out.push_str(&format!(
            "{start:<20} {end:<20} {cur:<4} {:>14} {:>14} {:>14} {:>14} {:>14} {:>12} {:>12}\n",
            f.billed_minor,
            f.collected_minor,
            f.credited_minor,
            f.outstanding_minor,
            f.written_off_minor,
            f.refunded_minor,
            f.disputes_lost_minor
        ));
    };
    for p in &r.periods {
        row(&mut out, &p.start, &p.end, p.currency.code(), &p.figures);
    }
    for t in &r.totals {
        row(&mut out, &r.from, &r.to, t.currency.code(), &t.figures);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_of_more_than_three_years_is_refused() {
        let q = |from: &str, to: &str| Query::parse(Some(from), Some(to), None, None);
        // 2024-01-01 + 1098 days = 2027-01-03: three calendar years, a leap day included, pass
        assert!(q("2024-01-01", "2027-01-01").is_ok());
        assert!(q("2024-01-01", "2027-01-03").is_ok());
        let e = q("2024-01-01", "2027-01-04").unwrap_err();
        assert!(
            matches!(&e, Error::Invalid(m) if m.starts_with("range_too_long: ")),
            "{e}"
        );
        assert!(q("1970-01-01", "2100-01-01").is_err());
        assert!(check_range(0, MAX_RANGE_DAYS * 86_400_000).is_ok());
        assert!(check_range(0, MAX_RANGE_DAYS * 86_400_000 + 1000).is_err());
    }

    fn line(kind: &str, account: &str, cur: &str, d: i64, c: i64, at_ms: i64) -> Line {
        Line {
            entry_id: format!("{kind}{account}{at_ms}{d}{c}"),
            journal_id: kind.into(),
            kind: kind.into(),
            account: account.into(),
            currency: cur.into(),
            debit_minor: d,
            credit_minor: c,
            at_ms,
        }
    }

    #[test]
    fn periods_split_by_month_and_reconcile_with_the_receivable() {
        let jan = parse_time("from", "2026-01-01").unwrap();
        let feb = parse_time("from", "2026-02-01").unwrap();
        let mar = parse_time("to", "2026-03-01").unwrap();
        let lines = [
            // January: 1,100 billed (100 tax), 300 prepaid, 500 paid, a 200 credit note
            line("invoice_finalized", "receivable", "USD", 1_100, 0, jan + 5),
            line("invoice_finalized", "revenue", "USD", 0, 1_000, jan + 5),
            line("invoice_finalized", "tax_payable", "USD", 0, 100, jan + 5),
            line("credit_applied", "receivable", "USD", 0, 300, jan + 6),
            line("credit_applied", "customer_credit", "USD", 300, 0, jan + 6),
            line("payment", "receivable", "USD", 0, 500, jan + 7),
            line("payment", "cash", "USD", 500, 0, jan + 7),
            line("credit_note", "receivable", "USD", 0, 200, jan + 8),
            // February: the void of a 400 invoice that applied 150 of credit, a write-off of 60
            line("void", "receivable", "USD", 0, 250, feb),
            line("void", "customer_credit", "USD", 0, 150, feb),
            line("void", "revenue", "USD", 400, 0, feb),
            line("write_off", "receivable", "USD", 0, 60, feb + 1),
            line("refund", "refunds", "USD", 70, 0, feb + 2),
            line("payment", "receivable", "USD", 0, 9, mar),
        ];
        let r = report(&lines, jan, mar, Granularity::Month, None).unwrap();
        let f: Vec<_> = r
            .periods
            .iter()
            .map(|p| (p.start.as_str(), p.figures))
            .collect();
        assert_eq!(f.len(), 2);
        let j = f[0].1;
        assert_eq!(f[0].0, "2026-01-01T00:00:00Z");
        assert_eq!(
            (
                j.billed_minor,
                j.collected_minor,
                j.credited_minor,
                j.outstanding_minor
            ),
            (1_100, 500, 500, 100)
        );
        assert!(j.reconciles);
        let fe = f[1].1;
        assert_eq!(
            (
                fe.billed_minor,
                fe.prepaid_applied_minor,
                fe.outstanding_minor,
                fe.written_off_minor
            ),
            (-400, -150, -250, 60)
        );
        assert_eq!((fe.receivable_change_minor, fe.refunded_minor), (-310, 70));
        assert!(fe.reconciles);
        assert_eq!(r.totals[0].figures.outstanding_minor, -150);
        assert!(r.totals[0].figures.reconciles);
    }

    #[test]
    fn a_line_in_an_unknown_currency_is_left_out_and_currencies_serialize_as_codes() {
        let lines = [
            line("payment", "receivable", "USD", 0, 500, 1_000),
            line("payment", "receivable", "ZZZ", 0, 700, 1_000),
            line("payment", "receivable", "EUR", 0, 300, 2_000),
        ];
        let r = report(&lines, 0, 10_000, Granularity::Day, None).unwrap();
        let got: Vec<_> = r
            .totals
            .iter()
            .map(|t| (t.currency.code(), t.figures.collected_minor))
            .collect();
        assert_eq!(got, [("EUR", 300), ("USD", 500)]);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["periods"][0]["currency"], "EUR");
        assert_eq!(json["totals"][1]["currency"], "USD");
        assert_eq!(json["totals"][1]["collected_minor"], 500);
        let table = render(&r);
        assert!(
            table.contains("1970-01-01T00:00:00Z 1970-01-01T00:00:10Z USD"),
            "{table}"
        );
        assert!(!table.contains("ZZZ"), "{table}");
    }

    #[test]
    fn the_query_string_is_decoded_and_checked() {
        let q =
            from_query_string("from=2026-01-01T00%3A00%3A00%2B01:00&to=2026-02-01&currency=USD")
                .unwrap();
        assert_eq!(
            q.from_ms,
            parse_time("from", "2025-12-31T23:00:00Z").unwrap()
        );
        assert_eq!(
            (q.period, q.currency.as_deref()),
            (Granularity::Month, Some("USD"))
        );
        assert!(from_query_string("from=2026-01-01&to=2026-02-01&cur=USD").is_err());
        assert!(from_query_string("from=2026-01-01&to=%zz").is_err());
    }

    #[test]
    fn sums_are_checked_and_bad_ranges_refused() {
        let lines = [
            line("payment", "receivable", "USD", 0, i64::MAX, 1_000),
            line("payment", "receivable", "USD", 0, 1, 2_000),
        ];
        assert!(matches!(
            report(&lines, 0, 10_000, Granularity::Day, None),
            Err(Error::Invalid(_))
        ));
        assert!(Query::parse(Some("2026-02-01"), Some("2026-01-01"), None, None).is_err());
        assert!(Query::parse(Some("2026-01-01"), None, None, None).is_err());
        assert!(Query::parse(Some("2026-01-01"), Some("2026-02-01"), Some("year"), None).is_err());
        assert!(Query::parse(Some("2026-01-01"), Some("2026-02-01"), None, Some("usd")).is_err());
        let q = Query::parse(
            Some("2026-01-01T00:00:00Z"),
            Some("2026-02-01"),
            Some("day"),
            Some("JPY"),
        )
        .unwrap();
        assert_eq!(
            (q.period, q.currency.as_deref()),
            (Granularity::Day, Some("JPY"))
        );
    }
}
