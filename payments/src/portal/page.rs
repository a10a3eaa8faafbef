//! The customer's portal page, rendered on the server: the customer's catalog name, summary
//! cards (cost to date, prepaid credit, the budget closest to its limit, amount due), live
//! spend with budgets and entitlements (or "live spend unavailable"), cost per day by meter
//! and by agent, usage per day per meter by agent, usage and cost by agent and meter, prepaid
//! credits, the prepaid wallet ([`super::wallet`]), invoices with status and PDF download,
//! payments. Self-contained HTML (inline CSS
//! and SVG; no script, no external resource). Every value is escaped; amounts are in their
//! currency with separators and its minor digits ([`super::format`]). The page shows only
//! what [`super::CustomerView`] holds, which is loaded for one customer.
//! It never emits a script, an external URL or an unescaped value.

use std::collections::BTreeMap;
use std::fmt::Write;

use rust_decimal::Decimal;
use tally_domain::InvoiceStatus;
use tally_invoice::render::html::esc;

use super::chart::{self, Chart, Series};
use super::format::{self, money_minor};
use super::live::{Balance, BudgetUse, Entitlements, LimitUse};
use super::usage::additive;
use super::CustomerView;

const DAY_SECS: i64 = 86_400;

fn day(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

fn long_day(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%b %-d, %Y").to_string())
        .unwrap_or_default()
}

fn time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

const STYLE: &str = "\
:root{--ink:#1f2933;--muted:#52606d;--line:#e4e7eb;--bg:#f5f7fa;--ok:#2f855a;--warn:#c05621;--bad:#c53030}\
*{box-sizing:border-box}\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif;margin:0;background:var(--bg);color:var(--ink);line-height:1.4}\
main{max-width:1040px;margin:0 auto;padding:28px 24px 48px}\
h1{font-size:28px;margin:0 0 4px}h2{font-size:19px;margin:0 0 12px}\
.sub{color:var(--muted);margin:0 0 20px}.sub code{background:#e4e7eb;border-radius:4px;padding:1px 5px}\
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:18px 20px;margin:0 0 18px}\
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(220px,1fr));gap:14px;margin:0 0 18px}\
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:14px 16px}\
.card .label{color:var(--muted);font-size:13px;text-transform:uppercase;letter-spacing:.04em}\
.card .value{font-size:24px;font-weight:650;margin:4px 0 2px;font-variant-numeric:tabular-nums}\
.card .note{color:var(--muted);font-size:13px}\
table{border-collapse:collapse;width:100%;margin:4px 0 6px;font-size:14px}\
td,th{border-bottom:1px solid var(--line);padding:7px 8px;text-align:left;vertical-align:middle}\
th{color:var(--muted);font-weight:600;font-size:13px}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}\
tr.expiring td:last-child{color:var(--warn);font-weight:600}\
.note{color:var(--muted);font-size:13px;margin:6px 0}\
.unavailable{background:#fffaf0;border:1px solid #fbd38d;border-radius:8px;padding:10px 12px;color:#7b341e}\
.gauge{background:#edf2f7;border-radius:6px;height:12px;min-width:160px;overflow:hidden}\
.gauge>span{display:block;height:100%;border-radius:6px}\
.lvl-ok{background:var(--ok)}.lvl-warn{background:#dd6b20}.lvl-bad{background:var(--bad)}\
.pct{font-weight:600;white-space:nowrap}section>h2~h2{margin-top:20px}.tag{display:inline-block;font-size:12px;border-radius:10px;padding:1px 8px;background:#edf2f7;color:var(--muted)}\
.charts svg{display:block;width:100%;max-width:900px;height:auto;margin:8px 0 14px}\
.status-paid{color:var(--ok)}.status-finalized,.status-uncollectible{color:var(--warn)}";

/// The days drawn: from the period's first day to today (or the period's last day).
fn chart_days(v: &CustomerView) -> Vec<i64> {
    let start = v.period_start_ms.div_euclid(1000);
    let start = start - start.rem_euclid(DAY_SECS);
    let end = v
        .period_end_ms
        .div_euclid(1000)
        .min(v.now_ms.div_euclid(1000) - v.now_ms.div_euclid(1000).rem_euclid(DAY_SECS) + DAY_SECS);
    let mut days = Vec::new();
    let mut d = start;
    while d < end && days.len() < 400 {
        days.push(d);
        d += DAY_SECS;
    }
    if days.is_empty() {
        days.push(start);
    }
    days
}

fn series<K: AsRef<str>>(
    days: &[i64],
    rows: impl IntoIterator<Item = (K, Vec<(i64, Decimal)>)>,
) -> Vec<Series> {
    rows.into_iter()
        .map(|(name, per_day)| {
            let per_day: BTreeMap<i64, Decimal> = per_day.into_iter().collect();
            Series {
                name: name.as_ref().to_owned(),
                values: days
                    .iter()
                    .map(|d| per_day.get(d).copied().unwrap_or_default())
                    .collect(),
            }
        })
        .collect()
}

fn minor_series(
    days: &[i64],
    currency: &str,
    m: &BTreeMap<String, BTreeMap<i64, i64>>,
) -> Vec<Series> {
    let digits = format::minor_digits(currency);
    series(
        days,
        m.iter().map(|(k, per_day)| {
            (
                k,
                per_day
                    .iter()
                    .map(|(d, minor)| (*d, Decimal::new(*minor, digits)))
                    .collect(),
            )
        }),
    )
}

/// How full a budget or limit is: `(percent, css level)`.
fn level(used: Decimal, limit: Decimal) -> (Decimal, &'static str) {
    let pct = format::percent(used, limit).unwrap_or(Decimal::ONE_HUNDRED);
    let lvl = if pct >= Decimal::from(100) {
        "lvl-bad"
    } else if pct >= Decimal::from(80) {
        "lvl-warn"
    } else {
        "lvl-ok"
    };
    (pct, lvl)
}

fn progress(pct: Decimal, lvl: &str) -> String {
    format!(
        "<div class=\"gauge\"><span class=\"{lvl}\" style=\"width:{}%\"></span></div>",
        pct.min(Decimal::ONE_HUNDRED)
    )
}

/// The page of `v`; links are relative to `/portal/<token>`.
pub fn render(v: &CustomerView, token: &str) -> String {
    let mut h = String::new();
    let title = v.name.as_deref().unwrap_or(&v.customer);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>Billing: {t}</title>\
         <style>{STYLE}</style></head><body><main><h1 id=\"customer\" data-customer=\"{c}\">{t}</h1>\
         <p class=\"sub\">Customer <code>{c}</code> · billing period <span id=\"period\" data-from=\"{}\" data-to=\"{}\">{} to {}</span> (UTC)</p>",
        day(v.period_start_ms),
        day(v.period_end_ms),
        long_day(v.period_start_ms),
        long_day(v.period_end_ms - 1),
        c = esc(&v.customer),
        t = esc(title),
    );
    cards(&mut h, v);
    live(&mut h, v.live.as_ref());
    let days = chart_days(v);
    costs(&mut h, v, &days);
    usage(&mut h, v, &days);
    credits(&mut h, v);
    super::wallet::section(&mut h, &v.wallet, v.now_ms);
    invoices(&mut h, v, token);
    h.push_str("</main></body></html>");
    h
}

fn card(h: &mut String, id: &str, label: &str, value: &str, note: &str) {
    let _ = write!(
        h,
        "<div class=\"card\" id=\"{id}\"><div class=\"label\">{}</div><div class=\"value\">{}</div><div class=\"note\">{}</div></div>",
        esc(label),
        esc(value),
        esc(note)
    );
}

fn cards(h: &mut String, v: &CustomerView) {
    h.push_str("<div class=\"cards\">");
    cost_card(h, v);
    card(
        h,
        "credit-balance",
        "Prepaid credit",
        &amounts(v.credits.balances.iter().map(|(c, m)| (c.code(), *m))),
        "applied to invoices at finalization",
    );
    budget_card(h, v);
    card(
        h,
        "amount-due",
        "Amount due",
        &amounts(amount_due(v)),
        "finalized invoices not yet paid",
    );
    h.push_str("</div>");
}

/// Amounts in minor units per currency, joined with ` · `; `–` when there are none.
fn amounts<'a>(per_currency: impl IntoIterator<Item = (&'a str, i64)>) -> String {
    let parts: Vec<String> = per_currency
        .into_iter()
        .map(|(c, m)| money_minor(c, m))
        .collect();
    if parts.is_empty() {
        "–".to_owned()
    } else {
        parts.join(" · ")
    }
}

/// What finalized invoices still ask for, per currency (an overpaid one counts as zero).
fn amount_due(v: &CustomerView) -> BTreeMap<&str, i64> {
    let mut due: BTreeMap<&str, i64> = BTreeMap::new();
    for i in &v.invoices {
        if i.status == InvoiceStatus::Finalized {
            *due.entry(i.facts.currency.code()).or_default() +=
                i.facts.amount_due_minor.saturating_sub(i.paid_minor).max(0);
        }
    }
    due
}

/// The cost to date: live when a decider answered, else as last priced.
fn cost_card(h: &mut String, v: &CustomerView) {
    match &v.live {
        Some(b) => card(
            h,
            "cost-to-date",
            "Cost to date",
            &format::money(b.currency.as_deref().unwrap_or(v.costs.code()), b.spend),
            "live, before tax",
        ),
        None if v.costs.currency.is_some() => card(
            h,
            "cost-to-date",
            "Cost to date",
            &money_minor(v.costs.code(), v.costs.total_minor),
            &format!("priced {}, before tax", time(i64::from(v.costs.priced_at))),
        ),
        None => card(h, "cost-to-date", "Cost to date", "–", "nothing priced yet"),
    }
}

/// The budget closest to its limit (the fullest), or why there is none.
fn budget_card(h: &mut String, v: &CustomerView) {
    let closest = v.live.as_ref().and_then(|b| {
        b.budgets
            .iter()
            .max_by_key(|x| level(x.spent + x.held, x.limit).0)
    });
    let Some(b) = closest else {
        let note = if v.live.is_some() {
            "no budget set"
        } else {
            "live spend unavailable"
        };
        card(h, "closest-budget", "Closest budget", "–", note);
        return;
    };
    let (pct, _) = level(b.spent + b.held, b.limit);
    card(
        h,
        "closest-budget",
        "Closest budget",
        &format!("{pct} % used"),
        &format!(
            "{}: {} left",
            b.budget_id,
            budget_amount(v, b.kind.as_str(), b.meter.as_deref(), b.remaining)
        ),
    );
}

/// An amount of a budget of `kind`: money in the period's currency, or a quantity of `meter`.
fn budget_amount(v: &CustomerView, kind: &str, meter: Option<&str>, x: Decimal) -> String {
    if kind == "quantity" {
        format!("{} {}", format::quantity(x), meter.unwrap_or(""))
    } else {
        let currency = v
            .live
            .as_ref()
            .and_then(|b| b.currency.clone())
            .unwrap_or_else(|| v.costs.code().to_owned());
        format::money(&currency, x)
    }
}

fn live(h: &mut String, b: Option<&Balance>) {
    h.push_str("<section id=\"live\"><h2>Spend right now</h2>");
    let Some(b) = b else {
        h.push_str(
            "<p id=\"live-unavailable\" class=\"unavailable\">Live spend unavailable: budgets and \
             spend to the minute cannot be shown right now. The costs below are as last priced.</p></section>",
        );
        return;
    };
    let cur = b.currency.as_deref().unwrap_or("");
    let _ = write!(
        h,
        "<p>Spent this period: <strong id=\"live-spend\">{}</strong>{}</p>",
        esc(&format::money(cur, b.spend)),
        if b.holds > 0 {
            format!(
                " · {} reserved by {} request{} in progress",
                esc(&format::money(cur, b.held_amount)),
                b.holds,
                if b.holds == 1 { "" } else { "s" }
            )
        } else {
            String::new()
        }
    );
    if b.budgets.is_empty() {
        h.push_str("<p class=\"note\">No budget is set.</p>");
    } else {
        budgets(h, &b.budgets, cur);
    }
    entitlements(h, &b.entitlements);
    h.push_str("</section>");
}

/// What a budget applies to: all usage, an agent, a meter or both.
fn budget_scope(x: &BudgetUse) -> String {
    match (&x.agent, &x.meter) {
        (None, None) => "all usage".to_owned(),
        (Some(a), None) => format!("agent {a}"),
        (None, Some(m)) => format!("meter {m}"),
        (Some(a), Some(m)) => format!("agent {a}, meter {m}"),
    }
}

/// The budgets' table: scope, gauge, spent, limit, left (money in `cur`, or a quantity of
/// the meter), and what happens at the limit.
fn budgets(h: &mut String, budgets: &[BudgetUse], cur: &str) {
    h.push_str("<table id=\"budgets\"><tr><th>Budget</th><th>Applies to</th><th>Used</th><th></th><th class=\"n\">Spent</th><th class=\"n\">Limit</th><th class=\"n\">Left</th><th>At the limit</th></tr>");
    for x in budgets {
        let amount = |d: Decimal| {
            if x.kind == "quantity" {
                format!(
                    "{} {}",
                    format::quantity(d),
                    x.meter.as_deref().unwrap_or("")
                )
            } else {
                format::money(cur, d)
            }
        };
        let (pct, lvl) = level(x.spent + x.held, x.limit);
        let _ = write!(
            h,
            "<tr class=\"budget\" data-budget=\"{id}\" data-percent=\"{pct}\"><td>{id}</td><td>{}</td><td>{}</td><td class=\"pct\">{pct} %</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td><span class=\"tag\">{}</span></td></tr>",
            esc(&budget_scope(x)),
            progress(pct, lvl),
            esc(&amount(x.spent)),
            esc(&amount(x.limit)),
            esc(&amount(x.remaining)),
            if x.hard { "stops requests" } else { "alerts only" },
            id = esc(&x.budget_id),
        );
    }
    h.push_str("</table>");
}

/// The plan's name, features and metered limits (nothing without features or limits).
fn entitlements(h: &mut String, e: &Entitlements) {
    if e.limits.is_empty() && e.features.is_empty() {
        return;
    }
    let _ = write!(
        h,
        "<h2>Plan{}</h2>",
        e.plan
            .as_deref()
            .map(|p| format!(" <span class=\"tag\">{}</span>", esc(p)))
            .unwrap_or_default()
    );
    if !e.features.is_empty() {
        let features: Vec<String> = e.features.iter().map(|f| esc(f)).collect();
        let _ = write!(
            h,
            "<p id=\"features\">Features: {}</p>",
            features.join(", ")
        );
    }
    if e.limits.is_empty() {
        return;
    }
    h.push_str("<table id=\"limits\"><tr><th>Limit</th><th>Used</th><th></th><th class=\"n\">Used</th><th class=\"n\">Limit</th><th class=\"n\">Left</th></tr>");
    for l in &e.limits {
        let (pct, lvl) = level(l.used + l.held, l.limit);
        let _ = write!(
            h,
            "<tr class=\"limit\"><td>{}</td><td>{}</td><td class=\"pct\">{pct} %</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&limit_name(l)),
            progress(pct, lvl),
            esc(&format::quantity(l.used)),
            esc(&format::quantity(l.limit)),
            esc(&format::quantity(l.remaining)),
        );
    }
    h.push_str("</table>");
}

/// A limit's meter, with its group when it has one: `tokens (model=gpt, region=eu)`.
fn limit_name(l: &LimitUse) -> String {
    let group: Vec<String> = l.group.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if group.is_empty() {
        l.meter.clone()
    } else {
        format!("{} ({})", l.meter, group.join(", "))
    }
}

fn costs(h: &mut String, v: &CustomerView, days: &[i64]) {
    let c = &v.costs;
    h.push_str("<section id=\"costs\" class=\"charts\"><h2>Cost per day</h2>");
    if c.currency.is_none() {
        h.push_str("<p class=\"note\">Nothing has been priced yet this period.</p></section>");
        return;
    }
    let cur = c.code();
    let fmt = move |d: Decimal| format::money(cur, d);
    let y = format!("Cost ({cur})");
    h.push_str(&chart::stacked_bars(&Chart {
        id: "cost-by-meter",
        title: "Cost per day by meter",
        y_label: &y,
        x_label: "Day (UTC)",
        days,
        series: &minor_series(days, c.code(), &c.by_meter_day),
        format: &fmt,
    }));
    h.push_str(&chart::stacked_bars(&Chart {
        id: "cost-by-agent",
        title: "Cost per day by agent",
        y_label: &y,
        x_label: "Day (UTC)",
        days,
        series: &minor_series(days, c.code(), &c.by_agent_day),
        format: &fmt,
    }));
    let _ = write!(
        h,
        "<p class=\"note\" id=\"priced\">Total {} (before tax), priced {}. Each meter's charge is divided over its days \
         and agents in proportion to their usage; the parts add up to the charge.</p>",
        esc(&money_minor(c.code(), c.total_minor)),
        esc(&time(i64::from(c.priced_at)))
    );
    if !c.not_by_day.is_empty() {
        let parts: Vec<String> = c
            .not_by_day
            .iter()
            .map(|(m, a)| format!("{} {}", esc(m), esc(&money_minor(c.code(), *a))))
            .collect();
        let _ = write!(
            h,
            "<p class=\"note\" id=\"not-by-day\">Not divided by day (fees, or meters that do not add up over days): {}.</p>",
            parts.join(", ")
        );
    }
    h.push_str("</section>");
}

fn usage(h: &mut String, v: &CustomerView, days: &[i64]) {
    let u = &v.usage;
    h.push_str("<section id=\"usage-per-day\" class=\"charts\"><h2>Usage per day</h2>");
    if u.by_meter_day.is_empty() {
        h.push_str("<p class=\"note\">No usage yet this period.</p>");
    }
    let fmt = |d: Decimal| format::quantity(d);
    for (meter, per_day) in &u.by_meter_day {
        let aggregation = u.aggregations.get(meter).map(String::as_str).unwrap_or("");
        // quantities that add up are stacked by agent; the others are the meter's own per day
        let s = match u.by_meter_agent_day.get(meter) {
            Some(agents) if additive(aggregation) => series(
                days,
                agents
                    .iter()
                    .map(|(a, d)| (a, d.iter().map(|(k, q)| (*k, *q)).collect())),
            ),
            _ => series(
                days,
                [(
                    "all agents",
                    per_day.iter().map(|(k, q)| (*k, *q)).collect::<Vec<_>>(),
                )],
            ),
        };
        let title = format!("{meter} per day by agent");
        let y = format!("{meter} ({})", aggregation.to_lowercase().replace('_', " "));
        h.push_str(&chart::stacked_bars(&Chart {
            id: &format!("usage-{meter}"),
            title: &title,
            y_label: &y,
            x_label: "Day (UTC)",
            days,
            series: &s,
            format: &fmt,
        }));
    }
    h.push_str("<h2>Usage and cost by agent and meter</h2><table id=\"usage\"><tr><th>Agent</th><th>Meter</th><th class=\"n\">Quantity</th><th class=\"n\">Events</th><th class=\"n\">Cost</th></tr>");
    for a in &u.by_agent_meter {
        let cost = v
            .costs
            .by_agent_meter
            .get(&(a.agent.clone(), a.meter.clone()))
            .map(|m| money_minor(v.costs.code(), *m))
            .unwrap_or_else(|| "–".into());
        let _ = write!(
            h,
            "<tr data-agent=\"{ag}\" data-meter=\"{m}\"><td>{ag}</td><td>{m}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&format::quantity(a.quantity)),
            esc(&format::quantity(Decimal::from(a.events))),
            esc(&cost),
            ag = esc(&a.agent),
            m = esc(&a.meter)
        );
    }
    if u.by_agent_meter.is_empty() {
        h.push_str("<tr><td colspan=\"5\">No usage yet this period.</td></tr>");
    }
    h.push_str("</table></section>");
}

fn credits(h: &mut String, v: &CustomerView) {
    h.push_str("<section id=\"credits\"><h2>Prepaid credits</h2>");
    if v.credits.grants.is_empty() {
        h.push_str("<p class=\"note\">No prepaid credit.</p></section>");
        return;
    }
    let balances: Vec<String> = v
        .credits
        .balances
        .iter()
        .map(|(c, m)| esc(&money_minor(c.code(), *m)))
        .collect();
    let _ = write!(
        h,
        "<p>Balance: <strong id=\"credit\">{}</strong> <span class=\"note\">(grants less what invoices applied; grants do not expire)</span></p>\
         <table id=\"grants\"><tr><th>Granted</th><th>Reason</th><th class=\"n\">Amount</th></tr>",
        balances.join(" · ")
    );
    for g in &v.credits.grants {
        let _ = write!(
            h,
            "<tr class=\"grant\" data-grant=\"{}\"><td>{}</td><td>{}</td><td class=\"n\">{}</td></tr>",
            esc(&g.grant_id),
            day(g.granted_at_ms),
            esc(&g.reason),
            esc(&money_minor(&g.currency, g.amount_minor)),
        );
    }
    h.push_str("</table></section>");
}

fn invoices(h: &mut String, v: &CustomerView, token: &str) {
    h.push_str("<section id=\"billing\"><h2>Invoices</h2><table id=\"invoices\"><tr><th>Invoice</th><th>Period</th><th>Status</th><th class=\"n\">Total</th><th class=\"n\">Amount due</th><th class=\"n\">Paid</th><th>Due</th><th>Documents</th></tr>");
    let t = esc(token);
    for i in &v.invoices {
        let f = &i.facts;
        let id = esc(&f.invoice_id);
        let label = if f.number.is_empty() {
            id.clone()
        } else {
            esc(&f.number)
        };
        let _ = write!(
            h,
            "<tr class=\"invoice\" data-invoice=\"{id}\" data-status=\"{s}\"><td>{label}</td><td>{} to {}</td>\
             <td class=\"status-{s}\">{s}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td>\
             <td><a class=\"pdf\" href=\"/portal/{t}/invoices/{id}.pdf\" download>PDF</a> \
             <a href=\"/portal/{t}/invoices/{id}\">view</a></td></tr>",
            day(f.period_start_ms),
            day(f.period_end_ms),
            esc(&money_minor(f.currency.code(), f.total_minor)),
            esc(&money_minor(f.currency.code(), f.amount_due_minor)),
            esc(&money_minor(f.currency.code(), i.paid_minor)),
            f.due_at_ms.map(day).unwrap_or_default(),
            s = i.status,
        );
    }
    if v.invoices.is_empty() {
        h.push_str("<tr><td colspan=\"8\">No invoices yet.</td></tr>");
    }
    h.push_str("</table><h2>Payments</h2><table id=\"payments\"><tr><th>Date</th><th>Invoice</th><th>Kind</th><th>Status</th><th class=\"n\">Amount</th><th>Via</th></tr>");
    for p in &v.payments {
        let _ = write!(
            h,
            "<tr class=\"payment\" data-status=\"{s}\"><td>{}</td><td>{}</td><td>{}</td><td>{s}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            day(p.at_ms),
            esc(&p.invoice_id),
            esc(&p.kind),
            esc(&money_minor(&p.currency, p.amount_minor)),
            esc(&p.gateway),
            s = esc(&p.status),
        );
    }
    if v.payments.is_empty() {
        h.push_str("<tr><td colspan=\"6\">No payments yet.</td></tr>");
    }
    h.push_str("</table></section>");
}

/// The page shown for a refused link (no detail about why, to a stranger).
pub fn refused() -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Link not valid</title>\
         <style>{STYLE}</style></head><body><main><h1 id=\"refused\">This link is not valid or has expired.</h1>\
         <p>Ask your account contact for a new link.</p></main></body></html>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portal::{account, cost, usage};

    const DAY_MS: i64 = 86_400_000;
    // 2026-03-01
    const MAR1_MS: i64 = 1_772_323_200_000;

    fn view(name: Option<&str>, live: Option<Balance>) -> CustomerView {
        CustomerView {
            customer: "acme".into(),
            name: name.map(str::to_owned),
            period_start_ms: MAR1_MS,
            period_end_ms: MAR1_MS + 31 * DAY_MS,
            now_ms: MAR1_MS + 2 * DAY_MS + 5_000,
            usage: usage::Usage::default(),
            costs: cost::Costs {
                currency: Some("JPY".parse().unwrap()),
                total_minor: 1_234_567,
                by_meter_day: [("tokens".into(), [(MAR1_MS / 1000, 1_234_567)].into())].into(),
                priced_at: 1_772_330_000,
                ..cost::Costs::default()
            },
            live,
            credits: account::Credits::default(),
            wallet: crate::wallet::http::WalletView {
                customer: tally_domain::CustomerId::new("acme").unwrap(),
                balances: Default::default(),
                grants: vec![],
                movements: vec![],
            },
            invoices: vec![],
            payments: vec![],
        }
    }

    #[test]
    fn the_catalog_name_is_escaped_and_the_page_says_when_live_spend_is_unavailable() {
        let html = render(&view(Some("<script>alert(1)</script> & Co"), None), "tok");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co</h1>"));
        assert!(html.contains("Live spend unavailable"));
        // no live spend: the cost to date is the priced one, in yen without decimals
        assert!(
            html.contains("<div class=\"value\">1,234,567 JPY</div>"),
            "{html}"
        );
        // three days drawn: the period's first day to today
        let cost_chart = &html[html.find("data-chart=\"cost-by-meter\"").unwrap()..];
        let cost_chart = &cost_chart[..cost_chart.find("</svg>").unwrap()];
        assert_eq!(cost_chart.matches("<g class=\"day\"").count(), 3);
        assert!(cost_chart.contains(">Cost (JPY)</text>"));
        // without a catalog name, the id
        assert!(render(&view(None, None), "tok").contains("data-customer=\"acme\">acme</h1>"));
    }

    #[test]
    fn budgets_show_how_close_they_are() {
        let budget = |id: &str, kind: &str, limit: i64, spent: i64| BudgetUse {
            budget_id: id.into(),
            agent: None,
            meter: Some("tokens".into()),
            kind: kind.into(),
            limit: Decimal::from(limit),
            spent: Decimal::from(spent),
            held: Decimal::ZERO,
            remaining: Decimal::from((limit - spent).max(0)),
            hard: true,
        };
        let live = Balance {
            customer: "acme".into(),
            currency: Some("JPY".into()),
            spend: Decimal::from(1_500_000),
            meters: Default::default(),
            agents: Default::default(),
            holds: 0,
            held_amount: Decimal::ZERO,
            budgets: vec![
                budget("yen", "amount", 2_000_000, 1_500_000),
                budget("over", "quantity", 1_000, 1_200),
            ],
            entitlements: Entitlements::default(),
        };
        let html = render(&view(Some("Acme"), Some(live)), "tok");
        assert!(!html.contains("Live spend unavailable"));
        assert!(html.contains("<strong id=\"live-spend\">1,500,000 JPY</strong>"));
        assert!(html.contains("data-budget=\"yen\" data-percent=\"75\""));
        assert!(html.contains("<td class=\"n\">2,000,000 JPY</td>"));
        // past its limit: 120 %, the gauge full and red
        assert!(html.contains("data-budget=\"over\" data-percent=\"120\""));
        assert!(html.contains("class=\"lvl-bad\" style=\"width:100%\""));
        assert!(html.contains("<td class=\"n\">1,200 tokens</td>"));
        // the closest budget card names the fullest one
        assert!(html.contains("<div class=\"value\">120 % used</div>"));
    }
}
