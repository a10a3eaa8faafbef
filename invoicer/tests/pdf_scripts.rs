//! The PDF in every script: a Japanese, an Arabic and an accented Latin name are drawn with
//! embedded (subset) system fonts and come back exactly from poppler's `pdftotext`.
//! Needs fonts-dejavu-core and fonts-droid-fallback (scripts/stack.sh installs them with the
//! test tools) and poppler-utils.

use std::path::Path;
use std::process::Command;

use rust_decimal::Decimal;
use tally_domain::Period;
use tally_invoicer::invoice::{build, ChargeLine, Invoice, Issuer, Terms};
use tally_invoicer::render;
use tally_invoicer::render::pdf::{Fonts, DEFAULT_FONTS};
use tally_invoicer::render::view::View;

const JAPANESE: &str = "株式会社山田商事";
/// With the lam-alef ligature (one glyph for two letters) in السلام.
const ARABIC: &str = "شركة السلام للتجارة";
const LATIN: &str = "Łukasz Wąsowski-Đặng";

fn invoice() -> Invoice {
    let charge = ChargeLine {
        charge_id: "chg_llm_tokens".into(),
        customer: tally_domain::CustomerId::new("yamada").unwrap(),
        period: Period {
            start_ms: 1_788_220_800_000, // 2026-09-01
            end_ms: 1_790_812_800_000,   // 2026-10-01
        },
        meter: "llm_tokens".into(),
        group_key: r#"{"model":"gpt-4o"}"#.into(),
        group_names: vec!["model".into()],
        group_values: vec!["gpt-4o".into()],
        plan_id: "ai-standard".into(),
        plan_version: 3,
        price_model: "per_unit".into(),
        currency: "EUR".parse().unwrap(),
        quantity: Decimal::from(1_000),
        unit_price: "0.05".into(),
        tiers_json: r#"[{"quantity":"1000","unit_price":"0.05","amount":"50.00"}]"#.into(),
        amount_minor: 5_000,
        amount_before_discounts_minor: 5_000,
        tax_rate: "0".into(),
        tax_minor: 0,
    };
    let terms = Terms {
        grace_ms: 0,
        payment_terms_days: 14,
        issuer: Issuer {
            id: "tally-ae".into(),
            name: ARABIC.into(),
            address: vec![LATIN.into(), "Zoë Café".into()],
            tax_id: String::new(),
        },
        credit_available_minor: 0,
    };
    let mut inv = build(&[charge], vec![], &terms, 1_790_899_200_000).expect("builds");
    inv.number = Some("TALLY-AE-000007".into());
    inv
}

/// The view of [`invoice`], billed to a name in Japanese (a customer id is ASCII; the view is
/// what the renderings draw, so a display name in any script reaches the PDF through it).
fn view() -> View {
    let mut view = render::view::view(&invoice());
    view.customer = JAPANESE.into();
    view
}

/// `pdftotext` of a PDF, with extra arguments (each page ends with a form feed).
fn pdf_text(bytes: &[u8], args: &[&str]) -> String {
    let dir = std::env::temp_dir().join(format!("tally-pdf-scripts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{:x}-{}.pdf", bytes.len(), args.len()));
    std::fs::write(&path, bytes).expect("write pdf");
    let out = Command::new("pdftotext")
        .args(args)
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
    String::from_utf8(out.stdout).expect("pdftotext writes UTF-8")
}

fn fonts_installed() {
    for font in [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    ] {
        assert!(
            Path::new(font).exists(),
            "{font} is missing: apt-get install fonts-dejavu-core fonts-droid-fallback (TALLY_TEST_TOOLS=1 scripts/stack.sh up does)"
        );
    }
}

/// The cells of `pdftotext -layout`'s lines (text separated by two spaces or more).
fn cells(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|c| !c.is_empty())
        .collect()
}

#[test]
fn japanese_arabic_and_accented_names_extract_exactly() {
    fonts_installed();
    let bytes = render::pdf::document(&view()).expect("renders");
    let text = pdf_text(&bytes, &["-layout"]);
    let cells = cells(&text);
    // poppler gives right-to-left text in logical order (as typed), marked as such: between
    // U+202B RIGHT-TO-LEFT EMBEDDING and U+202C POP DIRECTIONAL FORMATTING.
    let arabic = format!("\u{202b}{ARABIC}\u{202c}");
    assert_eq!(
        cells[0],
        vec!["Invoice TALLY-AE-000007".to_owned(), arabic],
        "{text}"
    );
    assert_eq!(cells[1], vec![LATIN.to_owned()], "{text}");
    assert_eq!(cells[2], vec!["Zoë Café".to_owned()], "{text}");
    assert_eq!(
        cells[3],
        vec!["Invoice number".to_owned(), "TALLY-AE-000007".to_owned()],
        "{text}"
    );
    assert_eq!(
        cells[5],
        vec!["Bill to".to_owned(), JAPANESE.to_owned()],
        "{text}"
    );
    // The rest of the invoice as before.
    for want in [
        "llm_tokens {\"model\":\"gpt-4o\"}: 1000 units at 0.05 EUR",
        "Amount due",
        "50.00 EUR",
    ] {
        assert!(text.contains(want), "PDF text lacks {want:?}:\n{text}");
    }
}

#[test]
fn fonts_are_subset_and_the_pdf_is_deterministic() {
    fonts_installed();
    let bytes = render::pdf::document(&view()).expect("renders");
    assert_eq!(
        bytes,
        render::pdf::document(&view()).expect("renders again")
    );
    let size = |p: &str| std::fs::metadata(p).expect("font file").len() as usize;
    let dejavu = size("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf");
    let droid = size("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf");
    // Three fonts are embedded (DejaVu Sans, its bold, Droid Sans Fallback: 4.8 MB as files),
    // each only with the glyphs drawn.
    let embedded = String::from_utf8_lossy(&bytes)
        .matches("/FontFile2")
        .count();
    assert_eq!(embedded, 3);
    assert!(
        bytes.len() < 64 * 1024 && bytes.len() * 10 < dejavu && bytes.len() * 50 < droid,
        "{} bytes (DejaVu Sans {dejavu}, Droid Sans Fallback {droid})",
        bytes.len()
    );
}

#[test]
fn latin_invoices_embed_no_font() {
    let mut inv = invoice();
    inv.issuer.name = "Tally Europe GmbH".into();
    inv.issuer.address = vec!["Hauptstraße 1".into()];
    let mut view = render::view::view(&inv);
    view.customer = "Zoë Café".into();
    let bytes = render::pdf::document(&view).expect("renders");
    assert!(!String::from_utf8_lossy(&bytes).contains("/FontFile2"));
    let text = pdf_text(&bytes, &["-layout"]);
    assert!(
        text.contains("Zoë Café") && text.contains("Hauptstraße 1"),
        "{text}"
    );
}

#[test]
fn without_fonts_other_scripts_print_as_question_marks() {
    let view = view();
    let missing = Fonts::new(
        vec!["/nonexistent/font.ttf".into()],
        vec!["/nonexistent/font-bold.ttf".into()],
    );
    assert!(missing.usable().is_empty());
    for fonts in [Fonts::none(), missing] {
        let bytes = render::pdf::document_with(&view, &fonts).expect("renders");
        let text = pdf_text(&bytes, &["-layout"]);
        let cells = cells(&text);
        assert_eq!(
            cells[5],
            vec!["Bill to".to_owned(), "????????".to_owned()],
            "{text}"
        );
        assert_eq!(cells[2], vec!["Zoë Café".to_owned()], "{text}");
    }
}

#[test]
fn the_default_search_names_debian_font_packages() {
    assert!(DEFAULT_FONTS
        .iter()
        .any(|p| p.ends_with("/dejavu/DejaVuSans.ttf")));
    assert!(DEFAULT_FONTS
        .iter()
        .any(|p| p.ends_with("/droid/DroidSansFallbackFull.ttf")));
}

#[test]
fn marks_and_mirrored_brackets_extract_exactly() {
    fonts_installed();
    let mut view = view();
    // Arabic with vowel marks (placed by the font's mark positioning), Latin with combining
    // marks (kept decomposed), Arabic in brackets (drawn mirrored), Japanese around Latin.
    view.issuer = vec![
        "مُحَمَّد".into(),
        "Ca\u{327}a\u{30a}".into(),
        "(فاتورة) رقم".into(),
    ];
    view.customer = "山田 (Yamada) 太郎".into();
    let bytes = render::pdf::document(&view).expect("renders");
    let text = pdf_text(&bytes, &["-layout"]);
    let cells = cells(&text);
    assert_eq!(cells[0][1], "\u{202b}مُحَمَّد\u{202c}", "{text}");
    assert_eq!(cells[1], vec!["Ca\u{327}a\u{30a}".to_owned()], "{text}");
    // (A bracket at the line's visual left end, "(فاتورة)" alone, comes out before the U+202B:
    // poppler orders neutral characters at a line's ends by position.)
    assert_eq!(
        cells[2],
        vec!["\u{202b}(فاتورة) رقم\u{202c}".to_owned()],
        "{text}"
    );
    assert_eq!(
        cells[5],
        vec!["Bill to".to_owned(), "山田 (Yamada) 太郎".to_owned()],
        "{text}"
    );
}
