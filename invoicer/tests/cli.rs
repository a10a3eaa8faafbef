//! The command line of `tally-invoicer`: help with every flag and its default, the version,
//! unknown flags and bad values refused, and `--config` with its `TALLY_CONFIG` fallback.

#[path = "../../platform/tests/cli_support/mod.rs"]
mod cli_support;

use cli_support::{check, check_config_source, check_version, run, text, Case, CONFIG_HELP};

const INVOICER: &str = env!("CARGO_BIN_EXE_tally-invoicer");

#[test]
fn help_version_and_unknown_flags() {
    let cases = [
        Case {
            bin: INVOICER,
            command: &[],
            help: &["serve", "once", "reconcile", "[env: TALLY_CONFIG=]"],
        },
        Case {
            bin: INVOICER,
            command: &["serve"],
            help: CONFIG_HELP,
        },
        Case {
            bin: INVOICER,
            command: &["once"],
            help: &[
                "--at <RFC3339>",
                "[default: now]",
                "--out <DIR>",
                "--format <FORMAT>",
                "[default: json] [possible values: json, text]",
            ],
        },
        Case {
            bin: INVOICER,
            command: &["reconcile"],
            help: &["--at <RFC3339>", "[default: now]"],
        },
    ];
    cases.iter().for_each(check);
    check_version(INVOICER, "tally-invoicer");
}

#[test]
fn config_comes_from_the_flag_else_tally_config() {
    check_config_source(INVOICER, &[]);
    check_config_source(INVOICER, &["once", "--at", "2026-01-31T00:00:00Z"]);
    check_config_source(INVOICER, &["reconcile"]);
}

#[test]
fn bad_values_are_refused_before_anything_runs() {
    for (args, named) in [
        (&["once", "--at", "2026-01-31"][..], "'--at <RFC3339>'"),
        (&["once", "--format", "pdf"][..], "'--format <FORMAT>'"),
        (&["reconcile", "--out", "x"][..], "'--out'"),
    ] {
        let out = run(INVOICER, args, &[("TALLY_CONFIG", "/nonexistent.toml")]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}
