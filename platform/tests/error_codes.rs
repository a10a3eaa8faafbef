//! The one list of shared public error codes (issue 19, item 4): `http::ErrorCode` and
//! docs/ERRORS.md are the same list, and no service's source spells one of these codes with a
//! status other than its own (the disagreement this list ended: `unavailable` as 502 and 503,
//! `storage_unavailable` and `store` for an unavailable store).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tally_platform::http::ErrorCode;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The rows `| `code` | status | ...` of docs/ERRORS.md.
fn documented() -> BTreeSet<(String, u16)> {
    let page = std::fs::read_to_string(root().join("docs/ERRORS.md")).expect("docs/ERRORS.md");
    page.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let code = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let status = cells.get(2)?.parse().ok()?;
            Some((code.to_owned(), status))
        })
        .collect()
}

#[test]
fn every_shared_code_is_documented_with_its_status_and_nothing_else_is() {
    let listed: BTreeSet<(String, u16)> = ErrorCode::ALL
        .iter()
        .map(|c| (c.as_str().to_owned(), c.status().as_u16()))
        .collect();
    assert_eq!(documented(), listed);
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs" || x == "json") {
            out.push(p);
        }
    }
}

/// Every `StatusCode::NAME, "code"` in `text` (a status and a code written together).
fn status_code_pairs(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("StatusCode::") {
        rest = &rest[at + "StatusCode::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || *c == '_')
            .collect();
        let after = rest[name.len()..].trim_start();
        let Some(after) = after.strip_prefix(',') else {
            continue;
        };
        let Some(quoted) = after.trim_start().strip_prefix('"') else {
            continue;
        };
        if let Some(end) = quoted.find('"') {
            pairs.push((name, quoted[..end].to_owned()));
        }
    }
    pairs
}

#[test]
fn no_service_spells_a_shared_code_with_another_status() {
    let crates = [
        "domain",
        "platform",
        "ingest",
        "aggregator",
        "rater",
        "invoice",
        "invoicer",
        "payments",
    ];
    let mut files = Vec::new();
    for c in crates {
        sources(&root().join(c).join("src"), &mut files);
    }
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut wrong = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for retired in [
            "\"storage_unavailable\"",
            "(storage_unavailable)",
            "(store)",
        ] {
            if text.contains(retired) {
                wrong.push(format!("{}: retired code {retired}", f.display()));
            }
        }
        for (status, code) in status_code_pairs(&text) {
            let Some(shared) = ErrorCode::ALL.iter().find(|c| c.as_str() == code) else {
                continue;
            };
            let name = format!("{:?}", shared.status());
            // `StatusCode`'s Debug is "404 Not Found": compare the canonical reason instead
            let expected = shared
                .status()
                .canonical_reason()
                .unwrap_or_default()
                .to_ascii_uppercase()
                .replace([' ', '-'], "_");
            if status != expected {
                wrong.push(format!("{}: {code} with {status} (is {name})", f.display()));
            }
        }
    }
    assert_eq!(wrong, Vec::<String>::new());
}

#[test]
fn the_pairs_are_found() {
    let text = r#"error(StatusCode::BAD_GATEWAY, "unavailable", e) StatusCode::OK; StatusCode::NOT_FOUND,
        "not_found","#;
    assert_eq!(
        status_code_pairs(text),
        vec![
            ("BAD_GATEWAY".to_owned(), "unavailable".to_owned()),
            ("NOT_FOUND".to_owned(), "not_found".to_owned()),
        ]
    );
}
