//! The customer's portal page, rendered on the server: usage of the current period by agent
//! and meter with a chart, invoices with status and PDF download, payments. Self-contained
//! HTML (inline CSS and SVG; no script, no external resource). Every value is escaped. The
//! page shows only what [`super::CustomerView`] holds, which is loaded for one customer.
//! It never emits a script, an external URL or an unescaped value.

use std::fmt::Write;

use tally_invoicer::render::html::esc;
use tally_invoicer::render::view::amount;

use super::{chart, CustomerView};

fn money(currency: &str, minor: i64) -> String {
    amount(currency.parse().ok(), currency, minor)
}

fn day(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}\
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}td.n{text-align:right}\
.status-paid{color:#17692b}.status-finalized,.status-uncollectible{color:#a0461b}.charts svg{margin-right:1em}";

/// The page of `v`; links are relative to `/portal/<token>`.
pub fn render(v: &CustomerView, token: &str) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Billing: {c}</title>\
         <style>{STYLE}</style></head><body><h1 id=\"customer\" data-customer=\"{c}\">Billing for {c}</h1>\
         <p>Current period: <span id=\"period\">{} to {}</span></p>",
        day(v.period_start_ms),
        day(v.period_end_ms),
        c = esc(&v.customer),
    );
    h.push_str("<h2>Usage this period</h2><table id=\"usage\"><tr><th>Agent</th><th>Meter</th><th>Quantity</th><th>Events</th></tr>");
    for u in &v.usage.by_agent_meter {
        let _ = write!(
            h,
            "<tr data-agent=\"{a}\" data-meter=\"{m}\"><td>{a}</td><td>{m}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            u.quantity,
            u.events,
            a = esc(&u.agent),
            m = esc(&u.meter)
        );
    }
    if v.usage.by_agent_meter.is_empty() {
        h.push_str("<tr><td colspan=\"4\">No usage yet this period.</td></tr>");
    }
    h.push_str("</table><div class=\"charts\">");
    for (meter, days) in &v.usage.by_meter_day {
        h.push_str(&chart::bars(meter, days));
    }
    h.push_str("</div><h2>Invoices</h2><table id=\"invoices\"><tr><th>Invoice</th><th>Period</th><th>Status</th><th>Total</th><th>Amount due</th><th>Paid</th><th>Due</th><th>Documents</th></tr>");
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
            money(&f.currency, f.total_minor),
            money(&f.currency, f.amount_due_minor),
            money(&f.currency, i.paid_minor),
            f.due_at_ms.map(day).unwrap_or_default(),
            s = i.status,
        );
    }
    if v.invoices.is_empty() {
        h.push_str("<tr><td colspan=\"8\">No invoices yet.</td></tr>");
    }
    h.push_str("</table><h2>Payments</h2><table id=\"payments\"><tr><th>Date</th><th>Invoice</th><th>Kind</th><th>Status</th><th>Amount</th><th>Via</th></tr>");
    for p in &v.payments {
        let _ = write!(
            h,
            "<tr class=\"payment\" data-status=\"{s}\"><td>{}</td><td>{}</td><td>{}</td><td>{s}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            day(p.at_ms),
            esc(&p.invoice_id),
            esc(&p.kind),
            money(&p.currency, p.amount_minor),
            esc(&p.gateway),
            s = esc(&p.status),
        );
    }
    if v.payments.is_empty() {
        h.push_str("<tr><td colspan=\"6\">No payments yet.</td></tr>");
    }
    h.push_str("</table></body></html>");
    h
}

/// The page shown for a refused link (no detail about why, to a stranger).
pub fn refused() -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Link not valid</title>\
         <style>{STYLE}</style></head><body><h1 id=\"refused\">This link is not valid or has expired.</h1>\
         <p>Ask your account contact for a new link.</p></body></html>"
    )
}
