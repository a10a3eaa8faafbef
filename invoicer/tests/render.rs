//! Rendering: the PDF's extracted text (poppler's `pdftotext`) and the HTML page show the same
//! issuer, number, lines, discounts, tax per rate, totals, amount due and due date.

use std::process::Command;

use rust_decimal::Decimal;
use tally_domain::Period;
use tally_invoicer::invoice::{build, ChargeLine, Invoice, Issuer, Terms};
use tally_invoicer::render;

fn charge(meter: &str, before: i64, after: i64, rate: &str, tax: i64) -> ChargeLine {
    ChargeLine {
        charge_id: format!("chg_{meter}"),
        customer: tally_domain::CustomerId::new("acme-gmbh").unwrap(),
        period: Period {
            start_ms: 1_788_220_800_000, // 2026-09-01
            end_ms: 1_790_812_800_000,   // 2026-10-01
        },
        meter: meter.into(),
        group_key: r#"{"model":"gpt-4o"}"#.into(),
        group_names: vec!["model".into()],
        group_values: vec!["gpt-4o".into()],
        plan_id: "ai-standard".into(),
        plan_version: 3,
        price_model: "per_unit".into(),
        currency: "EUR".parse().unwrap(),
        quantity: Decimal::from(1_234_567),
        unit_price: "0.00002".into(),
        tiers_json: r#"[{"quantity":"1234567","unit_price":"0.00002","amount":"24.69134"},{"kind":"discount","label":"LAUNCH10","quantity":"0","unit_price":"-2.469134","amount":"-2.469134"}]"#.into(),
        amount_minor: after,
        amount_before_discounts_minor: before,
        tax_rate: rate.into(),
        tax_minor: tax,
    }
}

fn invoice() -> Invoice {
    let terms = Terms {
        grace_ms: 0,
        payment_terms_days: 14,
        issuer: Issuer {
            id: "tally-eu".into(),
            name: "Tally Europe GmbH".into(),
            address: vec!["Hauptstrasse 1".into(), "10115 Berlin".into()],
            tax_id: "DE123456789".into(),
        },
        credit_available_minor: 1_000,
    };
    let mut inv = build(
        &[
            charge("llm_tokens", 2_469, 2_222, "19", 422),
            charge("tool_calls", 5_000, 5_000, "7", 350),
            charge("agent_seconds", 1_000, 1_000, "19", 190),
        ],
        vec![],
        &terms,
        1_790_899_200_000,
    )
    .expect("builds");
    inv.number = Some("TALLY-EU-000042".into());
    inv
}

/// The text poppler extracts from a PDF (`pdftotext -layout`; each page ends with a form feed).
fn pdf_text(bytes: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("tally-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{:x}.pdf", bytes.len()));
    std::fs::write(&path, bytes).expect("write pdf");
    let out = Command::new("pdftotext")
        .arg("-layout")
        .arg(&path)
        .arg("-")
        .output()
        .expect("pdftotext is installed (poppler-utils)");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn pdf_text_shows_lines_tax_per_rate_and_totals() {
    let inv = invoice();
    assert_eq!(inv.subtotal_minor, 8_469);
    assert_eq!(inv.discount_minor, 247);
    assert_eq!(inv.tax_minor, 962);
    assert_eq!(inv.total_minor, 9_184);
    assert_eq!(inv.amount_due_minor, 8_184);
    let bytes = render::pdf(&inv).expect("renders");
    assert!(bytes.starts_with(b"%PDF-"));
    let text = pdf_text(&bytes);
    for want in [
        "Invoice TALLY-EU-000042",
        "Tally Europe GmbH",
        "DE123456789",
        "acme-gmbh",
        "2026-09-01 to 2026-10-01",
        "Due date",
        "2026-10-15",
        "Net 14 days",
        "llm_tokens",
        "tool_calls",
        "agent_seconds",
        "LAUNCH10 -2.469134",
        "22.22 EUR",
        "50.00 EUR",
        "Subtotal",
        "84.69 EUR",
        "Discounts",
        "-2.47 EUR",
        "Tax 19% on 32.22 EUR",
        "6.12 EUR",
        "Tax 7% on 50.00 EUR",
        "3.50 EUR",
        "Total",
        "91.84 EUR",
        "Prepaid credits",
        "-10.00 EUR",
        "Amount due",
        "81.84 EUR",
    ] {
        assert!(text.contains(want), "PDF text lacks {want:?}:\n{text}");
    }
}

#[test]
fn pdf_flows_onto_further_pages() {
    let mut inv = invoice();
    let line = inv.lines[0].clone();
    inv.lines = (1..=120)
        .map(|n| {
            let mut l = line.clone();
            l.line_no = n;
            l
        })
        .collect();
    let text = pdf_text(&render::pdf(&inv).expect("renders"));
    let pages = text.matches('\u{c}').count();
    assert!(pages >= 3, "{pages} pages");
    assert!(text.contains("(continued)"));
    assert!(text.contains("Amount due"));
}

#[test]
fn html_is_self_contained_and_shows_the_same_totals() {
    let html = render::html(&invoice());
    for want in [
        "Invoice TALLY-EU-000042",
        "Tally Europe GmbH",
        "Tax 19% on 32.22 EUR",
        "91.84 EUR",
        "Amount due",
        "81.84 EUR",
        "2026-10-15",
        "{&quot;model&quot;:&quot;gpt-4o&quot;}",
    ] {
        assert!(html.contains(want), "HTML lacks {want:?}");
    }
    for external in ["<script", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(external), "HTML has {external}");
    }
}
