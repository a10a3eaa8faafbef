//! The examples in README.md and docs/*.md run, or say why not (issue 20, item 6).
//!
//! Every fenced snippet stands right after a marker (its last non-blank line before the fence):
//! - `<!-- not run: <reason> -->`: a command that needs a running stack, a release build or a
//!   machine's settings, an example answer, a diagram; the reason is required.
//! - `<!-- run: <path> -->`: the test at `<path>` runs it. A test elsewhere must name the
//!   document it reads (it extracts the snippet from it); `e2e/tests/docs.rs` (this file) runs
//!   `toml` snippets (parsed and validated with the real configuration types of every
//!   section) and `json` snippets (parsed as usage events by the domain's parser).
//!
//! Configuration tables (`| setting | default | ...` or `| key | default | ...`) hold TOML
//! too: a default written as TOML (`{ id = "tally", ... }`, or `k = v` pieces for a
//! `[section]` row) is parsed the same way, so a documented default the programs refuse fails
//! here. A snippet without a marker fails this test, so a new one is either run or explained.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use tally_platform::config::Profile;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const THIS_TEST: &str = "e2e/tests/docs.rs";

/// README.md's snippets outside the event contract section, which this change could not
/// touch (the rest of the README is edited elsewhere): (the snippet's first line, why it is
/// not run). The entries go once README carries the markers; the test fails for an entry whose
/// snippet has a marker or is gone.
const README_UNMARKED: &[(&str, &str)] = &[];

/// README.md's configuration defaults the invoicer refuses, fixed where the README is edited:
/// (the default cell, what the programs say). The test fails once one parses, so the entry
/// goes with the fix.
const README_REFUSED_DEFAULTS: &[(&str, &str)] = &[];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Marker {
    Run(String),
    NotRun(String),
    None,
}

#[derive(Debug)]
struct Snippet {
    doc: String,
    line: usize,
    lang: String,
    body: String,
    marker: Marker,
}

impl Snippet {
    fn at(&self) -> String {
        format!("{}:{} ({})", self.doc, self.line, self.lang)
    }
}

/// README.md and docs/*.md, as (path relative to the repository, text).
fn documents() -> Vec<(String, String)> {
    let mut paths = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| Path::new("docs").join(p.file_name().expect("name")))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(Path::new(ROOT).join(&p)).expect("readable");
            (p.to_string_lossy().into_owned(), text)
        })
        .collect()
}

fn marker(line: &str) -> Marker {
    let Some(inner) = line
        .trim()
        .strip_prefix("<!--")
        .and_then(|l| l.strip_suffix("-->"))
    else {
        return Marker::None;
    };
    let inner = inner.trim();
    if let Some(reason) = inner.strip_prefix("not run:") {
        return Marker::NotRun(reason.trim().to_owned());
    }
    match inner.strip_prefix("run:") {
        Some(path) => Marker::Run(path.trim().to_owned()),
        None => Marker::None,
    }
}

/// Every fenced block of a document (fences may be indented, as in lists).
fn snippets(doc: &str, text: &str) -> Vec<Snippet> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(lang) = lines[i].trim_start().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let close = (i + 1..lines.len())
            .find(|&j| lines[j].trim() == "```")
            .unwrap_or_else(|| panic!("{doc}:{}: the fence never closes", i + 1));
        let before = lines[..i].iter().rev().find(|l| !l.trim().is_empty());
        out.push(Snippet {
            doc: doc.to_owned(),
            line: i + 1,
            lang: lang.trim().to_owned(),
            body: lines[i + 1..close].join("\n"),
            marker: before.map_or(Marker::None, |l| marker(l)),
        });
        i = close + 1;
    }
    out
}

fn all_snippets() -> Vec<Snippet> {
    documents()
        .iter()
        .flat_map(|(doc, text)| snippets(doc, text))
        .collect()
}

fn section<T: DeserializeOwned>(name: &str, value: &toml::Value) -> Result<T, String> {
    value
        .clone()
        .try_into()
        .map_err(|e| format!("[{name}]: {e}"))
}

/// A section's validation outcome, or `Ok` when only parsing is asked for.
fn valid(validate: bool, name: &str, r: Result<(), impl std::fmt::Display>) -> Result<(), String> {
    match r {
        Err(e) if validate => Err(format!("[{name}]: {e}")),
        _ => Ok(()),
    }
}

/// Parses a configuration text as the programs do: each section into its real type, then
/// (with `validate`) that type's validation, which a single documented setting may fail for
/// the settings it leaves out. The error names the section.
fn check_config(text: &str, validate: bool) -> Result<(), String> {
    use tally_platform::{ClickHouseConfig, NatsConfig, SecurityConfig, TelemetryConfig};
    let table: toml::Table = toml::from_str(text).map_err(|e| format!("not TOML: {e}"))?;
    for (name, value) in &table {
        match name.as_str() {
            "nats" => valid(
                validate,
                name,
                section::<NatsConfig>(name, value)?.validate(),
            )?,
            "clickhouse" => valid(
                validate,
                name,
                section::<ClickHouseConfig>(name, value)?.validate(),
            )?,
            "telemetry" => drop(section::<TelemetryConfig>(name, value)?),
            "security" => valid(
                validate,
                name,
                section::<SecurityConfig>(name, value)?.validate(),
            )?,
            "features" => drop(section::<tally_platform::Features>(name, value)?),
            "ingest" => valid(
                validate,
                name,
                section::<tally_ingest::gateway::IngestConfig>(name, value)?.validate(),
            )?,
            "aggregator" => valid(
                validate,
                name,
                section::<tally_aggregator::AggregatorConfig>(name, value)?.validate(),
            )?,
            "rater" => valid(
                validate,
                name,
                section::<tally_rater::RaterConfig>(name, value)?.validate(),
            )?,
            "invoicer" => valid(
                validate,
                name,
                section::<tally_invoicer::InvoicerConfig>(name, value)?.validate(),
            )?,
            "payments" => valid(
                validate,
                name,
                section::<tally_payments::config::PaymentsConfig>(name, value)?
                    .validate(Profile::Dev),
            )?,
            "portal" => valid(
                validate,
                name,
                section::<tally_payments::config::PortalConfig>(name, value)?
                    .validate(Profile::Dev),
            )?,
            "dunning" => valid(
                validate,
                name,
                section::<tally_payments::config::DunningConfig>(name, value)?
                    .validate(Profile::Dev),
            )?,
            "invoice_delivery" => valid(
                validate,
                name,
                section::<tally_payments::config::InvoiceDeliveryConfig>(name, value)?
                    .validate(Profile::Dev, false),
            )?,
            "spend" => valid(
                validate,
                name,
                section::<tally_rater::live::SpendConfig>(name, value)?.validate(),
            )?,
            "meters" => drop(section::<Vec<tally_domain::meter::MeterSpec>>(name, value)?),
            "customers" => {
                drop(section::<Vec<tally_rater::catalog::customers::CustomerSpec>>(name, value)?);
            }
            "plans" => drop(section::<Vec<tally_rater::config::PlanSpec>>(name, value)?),
            "subscriptions" => drop(section::<Vec<tally_rater::config::SubscriptionSpec>>(
                name, value,
            )?),
            "tax_rates" => drop(section::<Vec<tally_rater::catalog::tax::TaxRateSpec>>(
                name, value,
            )?),
            "fx_rates" => drop(section::<Vec<tally_rater::catalog::fx::FxRateSpec>>(
                name, value,
            )?),
            other => return Err(format!("unknown section [{other}]")),
        }
    }
    Ok(())
}

#[test]
fn every_snippet_is_run_by_a_test_or_says_why_not() {
    let snippets = all_snippets();
    assert!(snippets.len() > 20, "found {} snippets", snippets.len());
    let mut unmarked_readme_seen = Vec::new();
    let mut problems = Vec::new();
    for s in &snippets {
        match &s.marker {
            Marker::NotRun(reason) if reason.len() >= 8 => {}
            Marker::NotRun(reason) => problems.push(format!(
                "{}: `not run:` needs a reason, found {reason:?}",
                s.at()
            )),
            Marker::Run(path) if path == THIS_TEST => {
                if !["toml", "json"].contains(&s.lang.as_str()) {
                    problems.push(format!("{}: {THIS_TEST} runs toml and json only", s.at()));
                }
            }
            Marker::Run(path) => match std::fs::read_to_string(Path::new(ROOT).join(path)) {
                Ok(test) if test.contains(&s.doc) => {}
                Ok(_) => problems.push(format!(
                    "{}: {path} never names {} (a test that runs a snippet reads it there)",
                    s.at(),
                    s.doc
                )),
                Err(e) => problems.push(format!("{}: {path}: {e}", s.at())),
            },
            Marker::None => {
                let first = s.body.lines().next().unwrap_or("");
                match README_UNMARKED
                    .iter()
                    .find(|(start, _)| s.doc == "README.md" && first.starts_with(start))
                {
                    Some(entry) => unmarked_readme_seen.push(entry.0),
                    None => problems.push(format!(
                        "{}: no marker: add `<!-- not run: why -->` or `<!-- run: test path -->` \
                         on the line before the fence",
                        s.at()
                    )),
                }
            }
        }
    }
    for (start, _) in README_UNMARKED {
        if !unmarked_readme_seen.contains(start) {
            problems.push(format!(
                "README.md: the snippet starting {start:?} is marked or gone: remove it from \
                 README_UNMARKED"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn configuration_snippets_parse_with_the_real_configuration_types() {
    let toml: Vec<Snippet> = all_snippets()
        .into_iter()
        .filter(|s| s.lang == "toml")
        .collect();
    assert!(!toml.is_empty(), "the docs show configuration files");
    for s in &toml {
        assert_eq!(s.marker, Marker::Run(THIS_TEST.into()), "{}", s.at());
        if let Err(e) = check_config(&s.body, true) {
            panic!("{}: {e}\n{}", s.at(), s.body);
        }
    }
}

#[test]
fn the_example_events_are_valid_usage_events() {
    let events: Vec<Snippet> = all_snippets()
        .into_iter()
        .filter(|s| s.lang == "json" && s.marker == Marker::Run(THIS_TEST.into()))
        .collect();
    assert!(!events.is_empty(), "the README shows an event");
    for s in &events {
        let event = tally_domain::UsageEvent::parse(s.body.as_bytes(), 65536)
            .unwrap_or_else(|e| panic!("{}: {e}", s.at()));
        assert_eq!(event.customer.as_str(), "acme", "{}", s.at());
    }
}

/// The code spans of a table cell, in order.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// A configuration table row whose default is written as TOML: (where, setting path, the
/// TOML text of the setting, the default cell).
fn toml_defaults(doc: &str, text: &str) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    let mut heading_section: Option<String> = None;
    let mut in_config_table = false;
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            heading_section = code_spans(line)
                .into_iter()
                .find_map(|c| c.strip_prefix('[').and_then(|c| c.strip_suffix(']')))
                .map(str::to_owned);
        }
        if !line.starts_with('|') {
            in_config_table = false;
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() > 3 && ["setting", "key"].contains(&cells[1]) && cells[2] == "default" {
            in_config_table = true;
            continue;
        }
        if !in_config_table || cells.len() < 4 {
            continue;
        }
        let (key, default) = (cells[1], cells[2]);
        let spans = code_spans(default);
        let is_toml = spans
            .iter()
            .any(|c| c.contains(" = ") || c.trim_start().starts_with('{'));
        let Some(name) = code_spans(key).first().copied().filter(|_| is_toml) else {
            continue;
        };
        let (path, body) =
            if let Some(table) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
                (
                    table.to_owned(),
                    format!("[{table}]\n{}\n", spans.join("\n")),
                )
            } else {
                let dotted = match (&heading_section, name.contains('.')) {
                    (_, true) | (None, _) => name.to_owned(),
                    (Some(section), false) => format!("{section}.{name}"),
                };
                let (table, field) = dotted.rsplit_once('.').unwrap_or(("", &dotted));
                (
                    dotted.clone(),
                    format!("[{table}]\n{field} = {}\n", spans[0]),
                )
            };
        out.push((format!("{doc}:{}", n + 1), path, body, default.to_owned()));
    }
    out
}

#[test]
fn defaults_written_as_toml_in_configuration_tables_are_accepted() {
    let mut checked = 0;
    let mut problems = Vec::new();
    let mut pending_seen = Vec::new();
    for (doc, text) in documents() {
        for (at, path, body, cell) in toml_defaults(&doc, &text) {
            checked += 1;
            let pending = README_REFUSED_DEFAULTS
                .iter()
                .find(|(c, _)| doc == "README.md" && cell == *c);
            match (check_config(&body, false), pending) {
                (Ok(()), None) => {}
                (Err(_), Some((c, _))) => pending_seen.push(*c),
                (Ok(()), Some(_)) => problems.push(format!(
                    "{at}: `{path}` is accepted now: remove it from README_REFUSED_DEFAULTS"
                )),
                (Err(e), None) => problems.push(format!("{at}: `{path}`: {e}\n{body}")),
            }
        }
    }
    for (cell, _) in README_REFUSED_DEFAULTS {
        if !pending_seen.contains(cell) {
            problems.push(format!(
                "README.md: {cell} is no longer shown: remove it from README_REFUSED_DEFAULTS"
            ));
        }
    }
    assert!(checked >= 2, "found {checked} TOML defaults");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn an_issuer_without_address_and_tax_id_is_refused_as_the_issue_said() {
    let e = check_config(
        "[invoicer.issuer]\nid = \"tally\"\nname = \"Tally\"\n",
        true,
    )
    .unwrap_err();
    assert!(e.contains("address"), "{e}");
    check_config(
        "[invoicer.issuer]\nid = \"tally\"\nname = \"Tally\"\naddress = []\ntax_id = \"\"\n",
        true,
    )
    .unwrap();
}

#[test]
fn the_marker_rules_are_read_as_written() {
    let text = "a\n\n<!-- not run: needs Docker -->\n```sh\ndocker compose up\n```\n\
                <!-- run: e2e/tests/docs.rs -->\n\n```toml\n[nats]\n```\n```\nplain\n```\n";
    let found = snippets("x.md", text);
    let got: Vec<(&str, &Marker, usize)> = found
        .iter()
        .map(|s| (s.lang.as_str(), &s.marker, s.line))
        .collect();
    assert_eq!(
        got,
        [
            ("sh", &Marker::NotRun("needs Docker".into()), 4),
            ("toml", &Marker::Run(THIS_TEST.into()), 9),
            ("", &Marker::None, 12),
        ]
    );
    assert!(check_config("[nats]\nurl = 3\n", false).is_err());
    assert!(check_config("[nope]\n", false).is_err());
    let rows = toml_defaults(
        "x.md",
        "## Settings (`[invoicer]`)\n\n| key | default | meaning |\n|---|---|---|\n\
         | `schedule` | `*/5 * * * *` | cron |\n| `issuer` | `{ id = \"a\" }` | who |\n",
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, "invoicer.issuer");
    assert_eq!(rows[0].2, "[invoicer]\nissuer = { id = \"a\" }\n");
}
