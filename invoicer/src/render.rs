//! Rendering invoices for people. Text for terminals (the demo, the CLI); the HTML and PDF
//! renderings will live here too. Rendering reads the invoice document only, never storage.

use std::fmt::Write;

use crate::invoice::Invoice;

/// A plain-text invoice: header, one line per charge with its tier arithmetic, total.
pub fn text(inv: &Invoice) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}  {}  {}  {} .. {}  plan {} v{}",
        inv.invoice_id,
        inv.customer,
        inv.status.as_str(),
        inv.period_start,
        inv.period_end,
        inv.plan_id,
        inv.plan_version
    );
    for l in &inv.lines {
        let arithmetic = match l.tiers.as_array() {
            Some(parts) if !parts.is_empty() => {
                parts.iter().map(part).collect::<Vec<_>>().join(" + ")
            }
            _ => format!("{} x {}", l.quantity.normalize(), l.unit_price),
        };
        let _ = writeln!(
            out,
            "  {:>2}. {:<12} {:<60} {:>12} {}",
            l.line_no, l.meter, arithmetic, l.amount, inv.currency
        );
    }
    let _ = writeln!(
        out,
        "      {:<73} {:>12} {}  (due {})",
        "total", inv.total, inv.currency, inv.due_date
    );
    out
}

/// One step of a line's arithmetic: a tier (`quantity x price = amount`) or an adjustment
/// such as a discount (`LAUNCH10 -19.45`).
fn part(t: &serde_json::Value) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invoice::{build, ChargeLine};
    use rust_decimal::Decimal;
    use tally_domain::Period;

    #[test]
    fn shows_tier_arithmetic_and_total() {
        let charge = ChargeLine {
            charge_id: "chg_1".into(),
            customer: "acme".into(),
            period: Period { start_ms: 0, end_ms: 1000 },
            meter: "tool_calls".into(),
            group_key: "{}".into(),
            plan_id: "p".into(),
            plan_version: 1,
            price_model: "graduated".into(),
            currency: "USD".into(),
            quantity: Decimal::from(150),
            unit_price: String::new(),
            tiers_json: r#"[{"quantity":"100","unit_price":"0.02","amount":"2.00"},{"quantity":"50","unit_price":"0.015","amount":"0.750"}]"#.into(),
            amount_minor: 275,
        };
        let text = text(&build(&[charge], 0, 0, 30).unwrap());
        assert!(
            text.contains("100 x 0.02 = 2.00 + 50 x 0.015 = 0.750"),
            "{text}"
        );
        assert!(text.contains("2.75 USD"), "{text}");
    }

    #[test]
    fn shows_discounts_by_their_label() {
        let charge = ChargeLine {
            charge_id: "chg_2".into(),
            customer: "acme".into(),
            period: Period { start_ms: 0, end_ms: 1000 },
            meter: "llm_tokens".into(),
            group_key: "{}".into(),
            plan_id: "p".into(),
            plan_version: 1,
            price_model: "per_unit".into(),
            currency: "JPY".into(),
            quantity: Decimal::from(486_197),
            unit_price: "0.0004".into(),
            tiers_json: r#"[{"quantity":"486197","unit_price":"0.0004","amount":"194.4788"},{"kind":"discount","label":"LAUNCH10","quantity":"0","unit_price":"-19.447880","amount":"-19.447880"}]"#.into(),
            amount_minor: 175,
        };
        let text = text(&build(&[charge], 0, 0, 30).unwrap());
        assert!(
            text.contains("486197 x 0.0004 = 194.4788 + LAUNCH10 -19.447880"),
            "{text}"
        );
    }
}
