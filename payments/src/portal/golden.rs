//! The portal page, byte for byte: a few views rendered and compared with
//! `testdata/portal.golden.html`, so that a change to how the page is built (not what it
//! shows) cannot change a byte. `TALLY_UPDATE_GOLDEN=1 cargo test -p tally-payments --lib
//! portal::golden` writes the file instead (for a change that means to alter the page).

use rust_decimal::Decimal;
use tally_domain::InvoiceStatus;

use super::chart::{self, Chart, Series};
use super::live::Balance;
use super::usage::{AgentMeter, Usage};
use super::{account, cost, page, CustomerView, PortalInvoice};
use crate::store::{InvoiceFacts, PaymentRow};

const DAY: i64 = 86_400;
// 2026-03-01
const MAR1: i64 = 1_772_323_200;

fn d(units: i64, scale: u32) -> Decimal {
    Decimal::new(units, scale)
}

/// A decider's answer with holds, budgets of every scope and kind, features and limits.
fn balance() -> Balance {
    super::live::parse(
        "acme & co",
        br#"{"customer":"acme & co","currency":"USD","spend":"1234.5678","holds":2,
            "held_amount":"12.5",
            "budgets":[
              {"budget_id":"all","kind":"amount","limit":"2000","spent":"1234.5678","held":"12.5","remaining":"752.9322","hard":true},
              {"budget_id":"bot <1>","agent":"bot-1","kind":"amount","limit":"100","spent":"85","remaining":"15"},
              {"budget_id":"tok","meter":"tokens","kind":"quantity","limit":"1000000","spent":"1200000","remaining":"0","hard":true},
              {"budget_id":"both","agent":"bot-2","meter":"tokens","kind":"quantity","limit":"500","spent":"1","held":"0.5","remaining":"498.5"}
            ],
            "entitlements":{"plan":"pro <x>","features":["sso","a&b"],
              "limits":[
                {"meter":"seats","limit":"10","used":"3","remaining":"7"},
                {"meter":"tokens","group":{"model":"gpt","region":"eu"},"limit":"100","used":"90","held":"5","remaining":"5"}
              ]}}"#,
    )
    .expect("the test balance parses")
}

fn usage() -> Usage {
    Usage {
        by_agent_meter: vec![
            AgentMeter {
                agent: "bot-1".into(),
                meter: "tokens".into(),
                quantity: d(15_005, 1),
                events: 12,
            },
            AgentMeter {
                agent: "bot-2".into(),
                meter: "seats".into(),
                quantity: d(3, 0),
                events: 2,
            },
        ],
        by_meter_day: [
            (
                "tokens".into(),
                [(MAR1, d(1500, 0)), (MAR1 + 3 * DAY, d(5, 1))].into(),
            ),
            ("seats".into(), [(MAR1 + DAY, d(3, 0))].into()),
        ]
        .into(),
        by_meter_agent_day: [
            (
                "tokens".into(),
                [
                    ("bot-1".into(), [(MAR1, d(1000, 0))].into()),
                    (
                        "bot-2".into(),
                        [(MAR1, d(500, 0)), (MAR1 + 3 * DAY, d(5, 1))].into(),
                    ),
                ]
                .into(),
            ),
            (
                "seats".into(),
                [("bot-2".into(), [(MAR1 + DAY, d(3, 0))].into())].into(),
            ),
        ]
        .into(),
        aggregations: [
            ("tokens".into(), "SUM".into()),
            ("seats".into(), "UNIQUE_COUNT".into()),
        ]
        .into(),
        cells: vec![],
    }
}

fn costs() -> cost::Costs {
    cost::Costs {
        currency: Some("USD".parse().expect("a currency")),
        total_minor: 123_456,
        by_meter_day: [
            (
                "tokens".into(),
                [(MAR1, 100_000), (MAR1 + 3 * DAY, 3_456)].into(),
            ),
            ("seats".into(), [(MAR1 + DAY, 19_500)].into()),
        ]
        .into(),
        by_agent_day: [
            ("bot-1".into(), [(MAR1, 60_000)].into()),
            (
                "bot-2".into(),
                [
                    (MAR1, 40_000),
                    (MAR1 + DAY, 19_500),
                    (MAR1 + 3 * DAY, 3_456),
                ]
                .into(),
            ),
        ]
        .into(),
        by_agent_meter: [(("bot-1".into(), "tokens".into()), 60_000)].into(),
        by_meter: [("tokens".into(), 103_456), ("seats".into(), 20_000)].into(),
        not_by_day: [("seats".into(), 500)].into(),
        priced_at: 1_772_330_000,
        other_currency: 1,
    }
}

fn invoice(id: &str, number: &str, status: InvoiceStatus, due: i64, paid: i64) -> PortalInvoice {
    PortalInvoice {
        facts: InvoiceFacts {
            invoice_id: id.into(),
            number: number.into(),
            customer: tally_domain::CustomerId::new("acme-co").expect("a customer id"),
            currency: "USD".parse().expect("a currency"),
            period_start_ms: (MAR1 - 28 * DAY) * 1000,
            period_end_ms: MAR1 * 1000,
            invoicer_status: "finalized".into(),
            total_minor: 50_000,
            tax_minor: 5_000,
            amount_due_minor: due,
            due_at_ms: Some((MAR1 + 14 * DAY) * 1000),
            document: String::new(),
        },
        status,
        paid_minor: paid,
    }
}

fn payment() -> PaymentRow {
    PaymentRow {
        payment_id: "p1".into(),
        invoice_id: "inv-feb".into(),
        customer: "acme & co".into(),
        gateway: "stripe".into(),
        gateway_ref: "pi_1".into(),
        kind: "payment".into(),
        status: "succeeded".into(),
        amount_minor: 20_000,
        currency: "USD".into(),
        failure_reason: String::new(),
        event_id: "evt_1".into(),
        actor: "stripe".into(),
        at_ms: (MAR1 + 2 * DAY) * 1000,
        at: 0,
        payment_method: String::new(),
    }
}

/// Twenty-one days drawn, everything filled in, live spend with `live`.
fn view(live: Option<Balance>) -> CustomerView {
    CustomerView {
        customer: "acme & co".into(),
        name: Some("Acme <Labs>".into()),
        period_start_ms: MAR1 * 1000,
        period_end_ms: (MAR1 + 31 * DAY) * 1000,
        now_ms: (MAR1 + 20 * DAY) * 1000 + 5_000,
        usage: usage(),
        costs: costs(),
        live,
        credits: account::Credits {
            grants: vec![account::Grant {
                grant_id: "g1".into(),
                currency: "USD".into(),
                amount_minor: 2_500,
                reason: "welcome <gift>".into(),
                granted_at_ms: (MAR1 - DAY) * 1000,
            }],
            balances: vec![
                ("EUR".parse().expect("a currency"), 100),
                ("USD".parse().expect("a currency"), 2_500),
            ],
        },
        wallet: crate::wallet::http::WalletView {
            customer: tally_domain::CustomerId::new("acme-co").expect("a customer id"),
            balances: [("USD".parse().expect("a currency"), 1_000)].into(),
            grants: vec![],
            movements: vec![],
        },
        invoices: vec![
            invoice("inv-feb", "INV-7", InvoiceStatus::Finalized, 55_000, 20_000),
            invoice("inv-jan", "", InvoiceStatus::Paid, 10_000, 10_000),
            invoice("inv-old", "INV-5", InvoiceStatus::Finalized, 1_000, 2_000),
        ],
        payments: vec![payment()],
    }
}

/// An empty period: nothing priced, no usage, no invoice.
fn empty_view(live: Option<Balance>) -> CustomerView {
    CustomerView {
        usage: Usage::default(),
        costs: cost::Costs::default(),
        credits: account::Credits::default(),
        invoices: vec![],
        payments: vec![],
        name: None,
        ..view(live)
    }
}

fn charts() -> Vec<String> {
    let days: Vec<i64> = (0..31).map(|i| MAR1 + i * DAY).collect();
    let mut values = vec![Decimal::ZERO; 31];
    values[0] = d(1_000_000, 0);
    values[30] = d(1, 2);
    values[7] = d(-5, 0);
    let series = [
        Series {
            name: "m".into(),
            values,
        },
        Series {
            name: "<n> & \"q\"".into(),
            values: vec![d(3, 1); 10],
        },
    ];
    let plain = |v: Decimal| v.to_string();
    [&days[..], &days[..1], &[]]
        .into_iter()
        .map(|days| {
            chart::stacked_bars(&Chart {
                id: "a\"b",
                title: "Usage of <b>",
                y_label: "a & b",
                x_label: "Day",
                days,
                series: &series,
                format: &plain,
            })
        })
        .collect()
}

fn rendered() -> String {
    let live_empty = super::live::parse("acme & co", br#"{"customer":"acme & co","spend":"0"}"#)
        .expect("the empty balance parses");
    let mut docs = vec![
        page::render(&view(Some(balance())), "tok<&>"),
        page::render(&view(None), "tok"),
        page::render(&empty_view(Some(live_empty)), "tok"),
        page::render(&empty_view(None), "tok"),
        page::refused(),
    ];
    docs.extend(charts());
    docs.join("\n<!-- next -->\n")
}

#[test]
fn the_page_and_charts_are_byte_for_byte_the_golden_ones() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/portal/testdata/portal.golden.html"
    );
    let got = rendered();
    if std::env::var("TALLY_UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(path, &got).expect("writing the golden file");
        return;
    }
    let want = std::fs::read_to_string(path).expect("the golden file (TALLY_UPDATE_GOLDEN=1)");
    if got != want {
        let at = got
            .bytes()
            .zip(want.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        let from = at.saturating_sub(120);
        panic!(
            "the page differs from {path} at byte {at}:\n got: {}\nwant: {}",
            String::from_utf8_lossy(&got.as_bytes()[from..(at + 120).min(got.len())]),
            String::from_utf8_lossy(&want.as_bytes()[from..(at + 120).min(want.len())])
        );
    }
}
