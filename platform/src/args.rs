//! Command lines of the binaries. Each binary declares its flags and subcommands with `clap`
//! (derive), so each answers `--help` (every flag with its default) and `--version`;
//! [`ConfigArg`] is the `--config FILE` they all take.
//!
//! [`Args`], the hand-written `--name value` parser they used before, is left only because
//! [`crate::config::path`] still takes one; no binary calls either. Remove both together.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

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

/// Parsed flags (the former parser; see the module documentation).
#[derive(Debug, Default)]
pub struct Args {
    values: BTreeMap<String, String>,
}

/// A bad command line.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("unknown flag {flag}; known flags: {known}")]
    Unknown { flag: String, known: String },
    #[error("flag {0} needs a value")]
    MissingValue(String),
    #[error("flag --{flag}: {value:?} is not valid: {detail}")]
    Invalid {
        flag: String,
        value: String,
        detail: String,
    },
}

impl Args {
    /// Parses `args` (without the program name); `known` lists the accepted flag names.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        known: &[&str],
    ) -> Result<Args, ArgsError> {
        let mut values = BTreeMap::new();
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .filter(|n| known.contains(n))
                .ok_or_else(|| ArgsError::Unknown {
                    flag: flag.clone(),
                    known: known
                        .iter()
                        .map(|k| format!("--{k}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                })?;
            let value = it
                .next()
                .ok_or_else(|| ArgsError::MissingValue(flag.clone()))?;
            values.insert(name.to_owned(), value);
        }
        Ok(Args { values })
    }

    /// Parses `<command> [--flag value]...`; the command must be one of `commands` and defaults
    /// to the first one when the line starts with a flag or is empty.
    pub fn parse_command(
        args: impl IntoIterator<Item = String>,
        commands: &[&str],
        known: &[&str],
    ) -> Result<(String, Args), ArgsError> {
        let mut it = args.into_iter().peekable();
        let command = match it.peek() {
            Some(first) if !first.starts_with("--") => {
                let c = it.next().unwrap_or_default();
                if !commands.contains(&c.as_str()) {
                    return Err(ArgsError::Unknown {
                        flag: c,
                        known: commands.join(" "),
                    });
                }
                c
            }
            _ => commands.first().copied().unwrap_or_default().to_owned(),
        };
        Ok((command, Args::parse(it, known)?))
    }

    /// The value of `--name`, or `default`.
    pub fn get<T: FromStr>(&self, name: &str, default: T) -> Result<T, ArgsError>
    where
        T::Err: std::fmt::Display,
    {
        match self.values.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e: T::Err| ArgsError::Invalid {
                flag: name.to_owned(),
                value: v.clone(),
                detail: e.to_string(),
            }),
        }
    }

    /// The raw value of `--name`, if given.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, ArgsError> {
        Args::parse(
            s.split_whitespace().map(str::to_owned),
            &["config", "seconds"],
        )
    }

    #[test]
    fn parses_known_flags_with_defaults() {
        let a = parse("--seconds 5").unwrap();
        assert_eq!(a.get("seconds", 1u64).unwrap(), 5);
        assert_eq!(a.get("other", 7u64).unwrap(), 7);
        assert!(a.raw("config").is_none());
    }

    #[test]
    fn commands_come_first() {
        let (c, a) = Args::parse_command(
            ["once".to_owned(), "--seconds".to_owned(), "2".to_owned()],
            &["serve", "once"],
            &["seconds"],
        )
        .unwrap();
        assert_eq!((c.as_str(), a.get("seconds", 0u32).unwrap()), ("once", 2));
        let (c, _) = Args::parse_command(Vec::<String>::new(), &["serve", "once"], &[]).unwrap();
        assert_eq!(c, "serve");
        assert!(Args::parse_command(["bogus".to_owned()], &["serve"], &[]).is_err());
    }

    #[test]
    fn refuses_bad_lines() {
        assert!(matches!(parse("--nope 1"), Err(ArgsError::Unknown { .. })));
        assert!(matches!(
            parse("--seconds"),
            Err(ArgsError::MissingValue(_))
        ));
        assert!(matches!(
            parse("--seconds x").unwrap().get("seconds", 1u64),
            Err(ArgsError::Invalid { .. })
        ));
    }
}
