//! The one list of public error codes (issue 19, item 4): docs/ERRORS.md lists every code an
//! API answers with, one HTTP status each, and every reason code an answer carries.
//!
//! - The table under "Codes every API shares" and `http::ErrorCode` are the same list.
//! - No code is documented twice with a status (so never with two statuses).
//! - Every code the services' non-test sources write into an error answer is documented with a
//!   status, and where the source writes the status next to it, with that status (the
//!   disagreement this list ended: `unavailable` as 502 and 503, `storage_unavailable` and
//!   `store` for an unavailable store).
//! - Every code of the other tables with a status is answered somewhere (no stale row).
//! - Every reason code (per event, per span, per imported event, per spend decision) is in a
//!   reason table.
//!
//! How codes are found in the sources (the extraction rule; each form has a test below). Only
//! `.rs` files under `<crate>/src` of the service crates count, without files named
//! `tests.rs`, directories named `tests` and anything after a `#[cfg(test)]` module. A code is
//! a string literal in snake case (`[a-z][a-z0-9]*(_[a-z0-9]+)*`) written:
//! 1. right after `StatusCode::NAME,` (any call: the status and the code written together);
//! 2. as the first snake-case literal argument of a call to a helper that takes a code:
//!    `error(` anywhere (the shared `http::error`, payments' `server::error`), and the
//!    rater's `parse(`/`appended_reply(` (400) and its query's `bad(` (400) and
//!    `unprocessable(` (422), see [`HELPERS`];
//! 3. as `"code": "..."` (an answer written with `json!`);
//! 4. as an arm `=> "..."` (or `=> { "..." }`) of a function that maps an error to its
//!    code, see [`ARMS`];
//! 5. in [`INDIRECT`]: codes chosen through a variable or a constant the forms above cannot
//!    see, each checked to still be written in its file.
//!
//! A new way of answering with a code must be added here (a form or an entry), or its codes
//! go unchecked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hyper::StatusCode;
use tally_platform::http::ErrorCode;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The crates whose sources answer requests (or hold the codes they answer with).
const CRATES: [&str; 8] = [
    "domain",
    "platform",
    "ingest",
    "aggregator",
    "rater",
    "invoice",
    "invoicer",
    "payments",
];

/// The heading of the table of the codes every API shares.
const SHARED: &str = "Codes every API shares";

/// Form 2: (path prefix of the files, helper, the status it answers with when it fixes one).
const HELPERS: [(&str, &str, Option<u16>); 5] = [
    ("", "error", None),
    ("rater/src/", "parse", Some(400)),
    ("rater/src/", "appended_reply", Some(400)),
    ("rater/src/api/query.rs", "bad", Some(400)),
    ("rater/src/api/query.rs", "unprocessable", Some(422)),
];

/// Form 4: (file, function) whose `=> "code"` arms are the codes of HTTP error answers.
const ARMS: [(&str, &str); 4] = [
    ("ingest/src/gateway/error.rs", "code"),
    ("rater/src/corrections/mod.rs", "code"),
    ("platform/src/auth/authenticator.rs", "code"),
    ("rater/src/api/query.rs", "code_of"),
];

/// Form 5: (file, code) written through a variable or a constant.
const INDIRECT: [(&str, &str); 3] = [
    ("payments/src/http/routes.rs", "bad_signature"),
    ("payments/src/http/routes.rs", "bad_payload"),
    ("payments/src/revenue.rs", "range_too_long"),
];

/// Reason codes: (file, function) whose `=> "code"` arms are reason codes, which answers
/// carry inside a result (not as the code of an error answer).
const REASON_ARMS: [(&str, &str); 3] = [
    ("domain/src/reason.rs", "code"),
    ("ingest/src/gateway/otlp/genai.rs", "code"),
    ("rater/src/live/protocol.rs", "code"),
];

/// Reason codes of the backfill report: `refused("code", ...)` and `code: "code"` there.
const BACKFILL: [&str; 2] = ["rater/src/backfill/mod.rs", "rater/src/store/backfill.rs"];

/// One row `| `code` | second cell | ...` of docs/ERRORS.md, under its `##` heading.
#[derive(Debug, Clone)]
struct Row {
    section: String,
    code: String,
    /// The HTTP status, when the second cell is one (reason tables have none).
    status: Option<u16>,
}

fn rows_of(page: &str) -> Vec<Row> {
    let mut section = String::new();
    let mut rows = Vec::new();
    for line in page.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            h.trim().clone_into(&mut section);
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(code) = cells
            .get(1)
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'))
        else {
            continue;
        };
        rows.push(Row {
            section: section.clone(),
            code: code.to_owned(),
            status: cells.get(2).and_then(|s| s.parse().ok()),
        });
    }
    rows
}

fn rows() -> Vec<Row> {
    let page = std::fs::read_to_string(root().join("docs/ERRORS.md")).expect("docs/ERRORS.md");
    rows_of(&page)
}

/// Every code documented with a status, with its first status, and the rows that give a code
/// a second status.
fn statuses(rows: &[Row]) -> (BTreeMap<String, u16>, Vec<String>) {
    let mut by_code = BTreeMap::new();
    let mut twice = Vec::new();
    for r in rows {
        let Some(status) = r.status else { continue };
        match by_code.get(&r.code) {
            Some(first) => twice.push(format!("{} documented as {first} and as {status}", r.code)),
            None => {
                by_code.insert(r.code.clone(), status);
            }
        }
    }
    (by_code, twice)
}

#[test]
fn every_shared_code_is_documented_with_its_status_and_nothing_else_is() {
    let listed: BTreeSet<(String, u16)> = ErrorCode::ALL
        .iter()
        .map(|c| (c.as_str().to_owned(), c.status().as_u16()))
        .collect();
    let shared: BTreeSet<(String, u16)> = rows()
        .into_iter()
        .filter(|r| r.section == SHARED)
        .map(|r| (r.code, r.status.unwrap_or_default()))
        .collect();
    assert_eq!(shared, listed);
}

#[test]
fn no_code_is_documented_twice_with_a_status() {
    let rows = rows();
    assert!(rows.len() > 60, "found only {} rows", rows.len());
    assert_eq!(statuses(&rows).1, Vec::<String>::new());
}

#[test]
fn a_code_with_two_statuses_is_found() {
    let page = "## A\n| `x` | 400 | a |\n## B\n| `x` | 404 | gateway | b |\n| `r` | events | c |";
    let rows = rows_of(page);
    assert_eq!(rows[2].status, None);
    assert_eq!(
        statuses(&rows).1,
        vec!["x documented as 400 and as 404".to_owned()]
    );
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "tests") {
                sources(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs")
            && p.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(p);
        }
    }
}

/// The non-test source files: (path relative to the workspace, text without its test module).
fn service_sources() -> Vec<(String, String)> {
    let mut files = Vec::new();
    for c in CRATES {
        sources(&root().join(c).join("src"), &mut files);
    }
    let root = root();
    files
        .into_iter()
        .map(|f| {
            let rel = f
                .strip_prefix(&root)
                .unwrap_or(&f)
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            (rel, without_tests(&text).to_owned())
        })
        .collect()
}

fn without_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod ") {
        Some(at) => &text[..at],
        None => text,
    }
}

fn is_code(s: &str) -> bool {
    s.split('_').all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    }) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// The literal starting at `text[0] == '"'` and the rest after its closing quote.
fn literal(text: &str) -> Option<(&str, &str)> {
    let body = text.strip_prefix('"')?;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some((&body[..i], &body[i + 1..])),
            _ => escaped = false,
        }
    }
    None
}

/// A code found in a source: the code, the status written with it, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    code: String,
    status: Option<u16>,
    at: String,
}

/// The status `StatusCode::NAME` is.
fn status_named(name: &str) -> Option<u16> {
    (100..600).find(|s| {
        StatusCode::from_u16(*s)
            .ok()
            .and_then(|s| s.canonical_reason())
            .is_some_and(|r| r.to_ascii_uppercase().replace([' ', '-'], "_") == name)
    })
}

/// Form 1: every `StatusCode::NAME, "code"`.
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
        if let Some((code, _)) = literal(after.trim_start()) {
            if is_code(code) {
                pairs.push((name, code.to_owned()));
            }
        }
    }
    pairs
}

/// Form 2: the first snake-case literal among the arguments of each call `helper(` (not a
/// method call `.helper(`, not `#[helper(`, not a longer name ending in `helper`).
fn helper_codes<'a>(text: &'a str, helper: &str) -> Vec<&'a str> {
    let mut codes = Vec::new();
    let call = format!("{helper}(");
    let mut from = 0;
    while let Some(at) = text[from..].find(&call) {
        let start = from + at;
        from = start + call.len();
        let before = text[..start].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[')) {
            continue;
        }
        let mut depth = 1;
        let mut rest = &text[from..];
        while let Some(c) = rest.chars().next() {
            if c == '"' {
                let Some((lit, after)) = literal(rest) else {
                    break;
                };
                if depth == 1 && is_code(lit) {
                    codes.push(lit);
                    break;
                }
                rest = after;
                continue;
            }
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                break;
            }
            rest = &rest[c.len_utf8()..];
        }
    }
    codes
}

/// Form 3 (`prefix` `"code": "`) and the backfill's `code: "`: the literal after `prefix`.
fn after_prefix<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.match_indices(prefix)
        .filter(|(at, _)| {
            text[..*at]
                .chars()
                .next_back()
                .is_none_or(|c| !c.is_ascii_alphanumeric() && c != '_')
        })
        .filter_map(|(at, _)| literal(text[at + prefix.len()..].trim_start()))
        .map(|(lit, _)| lit)
        .filter(|lit| is_code(lit))
        .collect()
}

/// Form 4: the `=> "code"` (or `=> { "code" }`) arms in the body of `fn name(`; `None`
/// without such a function.
fn arm_codes<'a>(text: &'a str, name: &str) -> Option<Vec<&'a str>> {
    let at = text.find(&format!("fn {name}("))?;
    let open = at + text[at..].find('{')?;
    let mut depth = 0;
    let mut end = text.len();
    for (i, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    end = open + i;
                    break;
                }
            }
            _ => {}
        }
    }
    let body = &text[open..end];
    let codes = body
        .match_indices("=>")
        .filter_map(|(at, _)| {
            let arm = body[at + 2..].trim_start();
            // `=> "code"` or `=> { "code" }`
            let arm = arm.strip_prefix('{').map_or(arm, str::trim_start);
            literal(arm).map(|(lit, _)| lit)
        })
        .filter(|lit| is_code(lit))
        .collect();
    Some(codes)
}

/// Every code the services answer requests with (forms 1 to 5).
fn answered() -> Vec<Found> {
    let files = service_sources();
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut found = Vec::new();
    let mut add = |code: &str, status: Option<u16>, at: &str| {
        found.push(Found {
            code: code.to_owned(),
            status,
            at: at.to_owned(),
        });
    };
    for (path, text) in &files {
        for (name, code) in status_code_pairs(text) {
            let status = status_named(&name);
            assert!(status.is_some(), "{path}: StatusCode::{name} is no status");
            add(&code, status, path);
        }
        for (prefix, helper, status) in HELPERS {
            if path.starts_with(prefix) {
                for code in helper_codes(text, helper) {
                    add(code, status, path);
                }
            }
        }
        for code in after_prefix(text, "\"code\":") {
            add(code, None, path);
        }
    }
    let text_of = |path: &str| {
        files
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, t)| t.as_str())
            .unwrap_or_else(|| panic!("{path} is gone: update this test"))
    };
    for (path, name) in ARMS {
        let codes = arm_codes(text_of(path), name)
            .unwrap_or_else(|| panic!("{path} has no fn {name}: update this test"));
        assert!(!codes.is_empty(), "{path}: fn {name} has no code arms");
        for code in codes {
            add(code, None, path);
        }
    }
    for (path, code) in INDIRECT {
        assert!(
            text_of(path).contains(&format!("\"{code}\"")),
            "{path} no longer writes {code:?}: update this test"
        );
        add(code, None, path);
    }
    found
}

/// Every reason code the sources define.
fn reasons() -> Vec<Found> {
    let files = service_sources();
    let text_of = |path: &str| {
        files
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("{path} is gone: update this test"))
    };
    let mut found = Vec::new();
    for (path, name) in REASON_ARMS {
        let text = text_of(path);
        let codes = arm_codes(&text, name)
            .unwrap_or_else(|| panic!("{path} has no fn {name}: update this test"));
        assert!(!codes.is_empty(), "{path}: fn {name} has no code arms");
        for code in codes {
            found.push(Found {
                code: code.to_owned(),
                status: None,
                at: path.to_owned(),
            });
        }
    }
    for path in BACKFILL {
        let text = text_of(path);
        let codes: Vec<&str> = helper_codes(&text, "refused")
            .into_iter()
            .chain(after_prefix(&text, "code:"))
            .collect();
        assert!(!codes.is_empty(), "{path}: no refusal codes found");
        for code in codes {
            found.push(Found {
                code: code.to_owned(),
                status: None,
                at: path.to_owned(),
            });
        }
    }
    found
}

#[test]
fn every_code_an_api_answers_with_is_documented_with_its_status() {
    let (documented, _) = statuses(&rows());
    let found = answered();
    assert!(found.len() > 80, "found only {} codes", found.len());
    let mut wrong = BTreeSet::new();
    for f in &found {
        match (documented.get(&f.code), f.status) {
            (None, _) => {
                wrong.insert(format!("{}: {} is not in docs/ERRORS.md", f.at, f.code));
            }
            (Some(doc), Some(status)) if *doc != status => {
                wrong.insert(format!(
                    "{}: {} answered {status}, documented {doc}",
                    f.at, f.code
                ));
            }
            _ => {}
        }
    }
    assert_eq!(wrong, BTreeSet::new());
}

#[test]
fn every_code_documented_for_one_api_is_answered_somewhere() {
    let found: BTreeSet<String> = answered().into_iter().map(|f| f.code).collect();
    let stale: Vec<String> = rows()
        .into_iter()
        .filter(|r| r.section != SHARED && r.status.is_some() && !found.contains(&r.code))
        .map(|r| r.code)
        .collect();
    assert_eq!(stale, Vec::<String>::new(), "documented, answered nowhere");
}

#[test]
fn every_reason_code_is_in_a_reason_table() {
    let documented: BTreeSet<String> = rows()
        .into_iter()
        .filter(|r| r.status.is_none())
        .map(|r| r.code)
        .collect();
    let found = reasons();
    assert!(found.len() > 25, "found only {} reason codes", found.len());
    let missing: BTreeSet<String> = found
        .iter()
        .filter(|f| !documented.contains(&f.code))
        .map(|f| format!("{}: {} is not in a reason table", f.at, f.code))
        .collect();
    assert_eq!(missing, BTreeSet::new());
}

#[test]
fn no_source_spells_a_retired_code() {
    let mut wrong = Vec::new();
    for (path, text) in service_sources() {
        for retired in [
            "\"storage_unavailable\"",
            "(storage_unavailable)",
            "(store)",
        ] {
            if text.contains(retired) {
                wrong.push(format!("{path}: retired code {retired}"));
            }
        }
    }
    // the OpenAPI documents, which name codes in parentheses
    for doc in [
        "invoicer/src/api_openapi.json",
        "payments/src/http/openapi.json",
        "rater/src/api/openapi.json",
        "rater/src/live/openapi.json",
    ] {
        let text = std::fs::read_to_string(root().join(doc)).unwrap_or_default();
        for retired in ["(storage_unavailable)", "(store)"] {
            if text.contains(retired) {
                wrong.push(format!("{doc}: retired code {retired}"));
            }
        }
    }
    assert_eq!(wrong, Vec::<String>::new());
}

#[test]
fn the_pairs_are_found() {
    let text = r#"error(StatusCode::BAD_GATEWAY, "unavailable", e) StatusCode::OK;
        StatusCode::NOT_FOUND,
        "not_found", StatusCode::OK, "application/json""#;
    assert_eq!(
        status_code_pairs(text),
        vec![
            ("BAD_GATEWAY".to_owned(), "unavailable".to_owned()),
            ("NOT_FOUND".to_owned(), "not_found".to_owned()),
        ]
    );
    assert_eq!(status_named("BAD_GATEWAY"), Some(502));
    assert_eq!(status_named("PAYLOAD_TOO_LARGE"), Some(413));
}

#[test]
fn the_helper_calls_are_found_and_nothing_else() {
    let text = r#"http::error(StatusCode::X, "a_code", format!("{}", f("no_code")));
        server::error(status, code, "see the log"); tracing::error!("not_code");
        #[error("thiserror_text")] x.error("method_call"); my_error("other_fn");
        parse(body, "invalid_plan") QueryError::bad(
            "invalid_from", "from is required")"#;
    assert_eq!(helper_codes(text, "error"), vec!["a_code"]);
    assert_eq!(helper_codes(text, "parse"), vec!["invalid_plan"]);
    assert_eq!(helper_codes(text, "bad"), vec!["invalid_from"]);
    assert_eq!(
        after_prefix(
            r#"json!({"error": {"code": "unknown_customer"}}); "code": c"#,
            "\"code\":"
        ),
        vec!["unknown_customer"]
    );
}

#[test]
fn the_arms_are_found() {
    let text = r#"
        fn code_of(name: &str) -> &'static str {
            match name { "customer" => "invalid_customer", _ => "unknown_parameter" }
        }
        fn code(&self) -> &'static str { match self { A => ErrorCode::X.as_str(), B => {
                "batch_too_large"
            } } }
        fn other() -> &'static str { match 1 { _ => "elsewhere" } }"#;
    assert_eq!(
        arm_codes(text, "code_of"),
        Some(vec!["invalid_customer", "unknown_parameter"])
    );
    assert_eq!(arm_codes(text, "code"), Some(vec!["batch_too_large"]));
    assert_eq!(arm_codes(text, "elsewhere"), None);
}

#[test]
fn test_modules_are_left_out() {
    let text = "fn a() {}\n#[cfg(test)]\nmod tests {\n error(StatusCode::OK, \"x\") }";
    assert_eq!(without_tests(text), "fn a() {}\n");
    assert!(is_code("too_many_ids") && is_code("internal") && is_code("e2e"));
    assert!(!is_code("not found") && !is_code("_x") && !is_code("x_") && !is_code("USD"));
    assert!(!is_code("application/json") && !is_code("a__b") && !is_code(""));
}
