//! The command line of `tally-aggregator`: help with `--config` and its default, the version,
//! unknown flags refused, and the file it names (flag, else `TALLY_CONFIG`) is the one read.

#[path = "../../platform/tests/cli_support/mod.rs"]
mod cli_support;

use cli_support::{check, check_config_source, check_version, Case, CONFIG_HELP};

const AGGREGATOR: &str = env!("CARGO_BIN_EXE_tally-aggregator");

#[test]
fn help_version_and_unknown_flags() {
    check(&Case {
        bin: AGGREGATOR,
        command: &[],
        help: CONFIG_HELP,
    });
    check_version(AGGREGATOR, "tally-aggregator");
}

#[test]
fn the_file_named_by_the_flag_or_the_variable_is_read() {
    check_config_source(AGGREGATOR, &[]);
}
