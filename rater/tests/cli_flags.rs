//! The command lines of `tally-rater` and `tally-spend`: help with every flag and its default,
//! the version, unknown flags and bad values refused, and `--config` with its `TALLY_CONFIG`
//! fallback. (`cli.rs` runs the rater's commands against ClickHouse.)

#[path = "../../platform/tests/cli_support/mod.rs"]
mod cli_support;

use cli_support::{check, check_config_source, check_version, run, text, Case, CONFIG_HELP};

const RATER: &str = env!("CARGO_BIN_EXE_tally-rater");
const SPEND: &str = env!("CARGO_BIN_EXE_tally-spend");

#[test]
fn help_version_and_unknown_flags() {
    let cases = [
        Case {
            bin: RATER,
            command: &[],
            help: &[
                "serve",
                "once",
                "explain",
                "backfill",
                "[env: TALLY_CONFIG=]",
            ],
        },
        Case {
            bin: RATER,
            command: &["serve"],
            help: CONFIG_HELP,
        },
        Case {
            bin: RATER,
            command: &["once"],
            help: &["--at <RFC3339>", "[default: now]"],
        },
        Case {
            bin: RATER,
            command: &["explain"],
            help: &[
                "[CHARGE_ID]",
                "--charge <CHARGE_ID>",
                "--format <FORMAT>",
                "[default: text] [possible values: text, json]",
            ],
        },
        Case {
            bin: RATER,
            command: &["backfill"],
            help: &[
                "--import-id <ID>",
                "--file <FILE>",
                "--stream <NAME>",
                "--from-seq <N>",
                "--to-seq <M>",
                "--from <RFC3339>",
                "--to <RFC3339>",
                "--reason <REASON>",
                "[default: operator]",
            ],
        },
        Case {
            bin: SPEND,
            command: &[],
            help: &["serve", "[env: TALLY_CONFIG=]"],
        },
        Case {
            bin: SPEND,
            command: &["serve"],
            help: CONFIG_HELP,
        },
    ];
    cases.iter().for_each(check);
    check_version(RATER, "tally-rater");
    check_version(SPEND, "tally-spend");
}

#[test]
fn config_comes_from_the_flag_else_tally_config() {
    check_config_source(RATER, &[]);
    check_config_source(RATER, &["once", "--at", "2026-01-31T00:00:00Z"]);
    check_config_source(RATER, &["explain", "chg_1"]);
    check_config_source(RATER, &["explain", "--charge", "chg_1"]);
    check_config_source(SPEND, &[]);
}

#[test]
fn explain_needs_one_charge_id() {
    for (args, said) in [
        (&["explain"][..], "<CHARGE_ID>"),
        (
            &["explain", "chg_1", "--charge", "chg_2"][..],
            "cannot be used with '--charge <CHARGE_ID>'",
        ),
        (
            &["explain", "chg_1", "--format", "xml"][..],
            "'--format <FORMAT>'",
        ),
        (&["once", "--at", "tomorrow"][..], "'--at <RFC3339>'"),
    ] {
        let out = run(RATER, args, &[("TALLY_CONFIG", "/nonexistent.toml")]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
    }
}
