//! Rendering invoices for people: text (terminals, the CLI), HTML (self-contained, for the
//! portal and the API) and PDF. All three are drawn from one [`view::View`] built from the
//! invoice document, so they show the same facts: issuer, customer, period, number, lines
//! with their arithmetic, discounts, tax per rate, totals, amount due and due date.
//! Rendering reads the invoice only, never storage.

pub mod html;
pub mod pdf;
pub mod view;

use std::fmt::Write;

use crate::invoice::Invoice;
pub use pdf::RenderError;

/// The invoice as a self-contained HTML page (inline CSS; no scripts, fonts or CDNs).
pub fn html(inv: &Invoice) -> String {
    html::page(&view::view(inv))
}

/// The invoice as a PDF document.
pub fn pdf(inv: &Invoice) -> Result<Vec<u8>, RenderError> {
    pdf::document(&view::view(inv))
}

/// A plain-text invoice: header, one line per charge with its arithmetic, totals.
pub fn text(inv: &Invoice) -> String {
    let v = view::view(inv);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}  {}  {}  {}  {}  plan {}",
        v.title, v.invoice_id, v.customer, v.status, v.period, v.plan
    );
    for l in &v.lines {
        let _ = writeln!(out, "  {:>2}. {:<60} {:>16}", l.no, l.description, l.amount);
        for d in &l.details {
            let _ = writeln!(out, "      {d}");
        }
    }
    for t in &v.totals {
        let _ = writeln!(out, "      {:<60} {:>16}", t.label, t.amount);
    }
    let _ = writeln!(out, "      due {} ({})", v.due, v.terms);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invoice::tests::charge;
    use crate::invoice::{build, Terms};
    use rust_decimal::Decimal;

    #[test]
    fn shows_tier_arithmetic_and_total() {
        let mut c = charge("tool_calls", 275);
        c.price_model = "graduated".into();
        c.quantity = Decimal::from(150);
        c.unit_price = String::new();
        c.tiers_json = r#"[{"quantity":"100","unit_price":"0.02","amount":"2.00"},{"quantity":"50","unit_price":"0.015","amount":"0.750"}]"#.into();
        let text = text(&build(&[c], vec![], &Terms::default(), 0).unwrap());
        assert!(
            text.contains("100 x 0.02 = 2.00 + 50 x 0.015 = 0.750")
                || (text.contains("100 x 0.02 = 2.00") && text.contains("50 x 0.015 = 0.750")),
            "{text}"
        );
        assert!(text.contains("2.75 USD"), "{text}");
    }

    #[test]
    fn shows_discounts_by_their_label() {
        let mut c = charge("llm_tokens", 175);
        c.currency = "JPY".parse().unwrap();
        c.amount_before_discounts_minor = 194;
        c.tiers_json = r#"[{"quantity":"486197","unit_price":"0.0004","amount":"194.4788"},{"kind":"discount","label":"LAUNCH10","quantity":"0","unit_price":"-19.447880","amount":"-19.447880"}]"#.into();
        let text = text(&build(&[c], vec![], &Terms::default(), 0).unwrap());
        assert!(text.contains("486197 x 0.0004 = 194.4788"), "{text}");
        assert!(text.contains("LAUNCH10 -19.447880"), "{text}");
        assert!(
            text.contains("Discounts") && text.contains("-19 JPY"),
            "{text}"
        );
    }
}
