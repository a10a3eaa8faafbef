//! The one view model every rendering (text, HTML, PDF) is drawn from: the invoice's facts as
//! display strings, in display order. Building it is the only place that formats amounts, so
//! the renderings cannot disagree. Reads the invoice only; never storage.

use crate::invoice::{Invoice, InvoiceLine, LineKind};

/// An invoice ready to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// `Invoice INV-…` or `Draft invoice`.
    pub title: String,
    pub number: String,
    pub status: String,
    pub invoice_id: String,
    /// Name, address lines, tax id.
    pub issuer: Vec<String>,
    pub customer: String,
    pub period: String,
    pub issued: String,
    pub due: String,
    pub terms: String,
    pub plan: String,
    pub currency: String,
    pub lines: Vec<ViewLine>,
    /// Subtotal, discounts, tax per rate, total, credits, amount due.
    pub totals: Vec<TotalRow>,
}

/// One invoice line.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewLine {
    pub no: String,
    pub description: String,
    /// The arithmetic: tiers, discount steps, tax, plan version, charge id.
    pub details: Vec<String>,
    pub quantity: String,
    pub amount: String,
}

/// One row of the totals block.
#[derive(Debug, Clone, PartialEq)]
pub struct TotalRow {
    pub label: String,
    pub amount: String,
    /// Drawn emphasized (total, amount due).
    pub strong: bool,
}

/// The view of an invoice.
pub fn view(inv: &Invoice) -> View {
    let money = |minor: i64| inv.currency.amount(minor);
    let mut issuer = vec![inv.issuer.name.clone()];
    issuer.extend(inv.issuer.address.iter().cloned());
    if !inv.issuer.tax_id.is_empty() {
        issuer.push(format!("Tax id {}", inv.issuer.tax_id));
    }
    issuer.retain(|l| !l.is_empty());
    let number = inv
        .number
        .clone()
        .unwrap_or_else(|| "not yet numbered".into());
    let mut totals = vec![row("Subtotal", money(inv.subtotal_minor), false)];
    if inv.discount_minor != 0 {
        totals.push(row("Discounts", money(-inv.discount_minor), false));
        totals.push(row("Net", money(inv.net_minor), false));
    }
    for t in &inv.taxes {
        totals.push(row(
            &format!("Tax {}% on {}", t.rate_percent, money(t.taxable_minor)),
            money(t.tax_minor),
            false,
        ));
    }
    totals.push(row("Total", money(inv.total_minor), true));
    if inv.credits_applied_minor != 0 {
        totals.push(row(
            "Prepaid credits",
            money(-inv.credits_applied_minor),
            false,
        ));
    }
    totals.push(row("Amount due", money(inv.amount_due_minor), true));
    if let Some(left) = inv.credit_balance_minor {
        totals.push(row("Prepaid credit remaining", money(left), false));
    }
    View {
        title: match &inv.number {
            Some(n) => format!("Invoice {n}"),
            None => "Draft invoice".into(),
        },
        number,
        status: inv.status.as_str().to_owned(),
        invoice_id: inv.invoice_id.clone(),
        issuer,
        customer: inv.customer.to_string(),
        period: format!(
            "{} to {} (UTC)",
            day(&inv.period_start),
            day(&inv.period_end)
        ),
        issued: day(&inv.issued_at),
        due: day(&inv.due_date),
        terms: format!("Net {} days", inv.payment_terms_days),
        plan: format!("{} v{}", inv.plan_id, inv.plan_version),
        currency: inv.currency.to_string(),
        lines: inv.lines.iter().map(|l| line(l, &money)).collect(),
        totals,
    }
}

fn row(label: &str, amount: String, strong: bool) -> TotalRow {
    TotalRow {
        label: label.to_owned(),
        amount,
        strong,
    }
}

/// `2026-11-01T00:00:00Z` → `2026-11-01 00:00` (the time only when not midnight).
fn day(rfc3339: &str) -> String {
    let date = rfc3339.get(..10).unwrap_or(rfc3339);
    match rfc3339.get(11..16) {
        Some("00:00") | None => date.to_owned(),
        Some(time) => format!("{date} {time}"),
    }
}

fn line(l: &InvoiceLine, money: &dyn Fn(i64) -> String) -> ViewLine {
    let mut details = Vec::new();
    let arithmetic = match l.tiers.as_array() {
        Some(parts) if !parts.is_empty() => parts.iter().map(part).collect::<Vec<_>>(),
        _ if !l.unit_price.is_empty() => {
            vec![format!("{} x {}", l.quantity.normalize(), l.unit_price)]
        }
        _ => vec![],
    };
    details.extend(arithmetic);
    if l.discount_minor != 0 {
        details.push(format!("discounts {}", money(-l.discount_minor)));
    }
    if !l.tax_rate.is_empty() {
        details.push(format!("tax {}% {}", l.tax_rate, money(l.tax_minor)));
    }
    let mut source = format!("plan {} v{}, {}", l.plan_id, l.plan_version, l.price_model);
    if l.kind == LineKind::Adjustment {
        source.push_str(&format!(
            ", adjusts {}",
            l.adjusts_invoice_id
                .as_deref()
                .unwrap_or("an earlier period")
        ));
    }
    source.push_str(&format!(", charge {}", l.charge_id));
    details.push(source);
    ViewLine {
        no: l.line_no.to_string(),
        description: match l.kind {
            LineKind::Usage => l.description.clone(),
            LineKind::Adjustment => format!("Adjustment: {}", l.description),
        },
        details,
        quantity: l.quantity.normalize().to_string(),
        amount: money(l.amount_minor),
    }
}

/// One step of a line's arithmetic: a tier (`quantity x price = amount`) or an adjustment
/// such as a discount (`LAUNCH10 -19.45`).
pub fn part(t: &serde_json::Value) -> String {
    match t.get("kind").and_then(|k| k.as_str()) {
        Some(kind) => {
            let label = t
                .get("label")
                .and_then(|l| l.as_str())
                .filter(|l| !l.is_empty())
                .unwrap_or(kind);
            format!("{label} {}", field(t, "amount"))
        }
        None => format!(
            "{} x {} = {}",
            field(t, "quantity"),
            field(t, "unit_price"),
            field(t, "amount")
        ),
    }
}

fn field(v: &serde_json::Value, name: &str) -> String {
    match &v[name] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
