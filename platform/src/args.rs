//! Command lines of the binaries. Each binary declares its flags and subcommands with `clap`
//! (derive), so each answers `--help` (every flag with its default) and `--version`;
//! [`ConfigArg`] is the `--config FILE` they all take. (The hand-written parser they used
//! before is gone.)

use std::path::PathBuf;

/// `--config FILE`: the configuration file every binary reads. Global, so it may stand before
/// or after a subcommand; `TALLY_CONFIG` when the flag is absent, else `config/tally.toml`
/// (what [`crate::config::default_path`] answers).
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// The configuration file (TOML); `TALLY_<SECTION>__<KEY>` variables override its settings
    #[arg(
        long = "config",
        value_name = "FILE",
        global = true,
        env = "TALLY_CONFIG",
        default_value = "config/tally.toml"
    )]
    pub path: PathBuf,
}
