//! Checks of a binary's command line, shared by every crate's `tests/cli.rs` (each includes
//! this file with `#[path]`, as the binaries live in different crates): `--help` lists the
//! flags given with their defaults, `--version` prints the name and the workspace version, an
//! unknown flag is refused naming it.

#![allow(dead_code)] // each including test uses the part it needs

use std::process::{Command, Output};

/// The repository's shipped configuration file (the binaries' default is relative to the
/// repository root, and tests run in their crate's folder).
pub const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/tally.toml");

/// Runs `bin args...` without `TALLY_CONFIG` from the test's environment, plus `env`.
pub fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove("TALLY_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"))
}

/// What the process printed on stdout and stderr.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One command line to check: the binary, the subcommand path (empty for the top level) and
/// the lines its help must contain (flags with their value names, `[default: ...]`).
pub struct Case {
    pub bin: &'static str,
    pub command: &'static [&'static str],
    pub help: &'static [&'static str],
}

/// `--help` exits 0 on stdout with every expected line, `--bogus-flag` exits 2 naming it.
pub fn check(case: &Case) {
    let line = format!("{} {}", case.bin, case.command.join(" "));
    let mut args = case.command.to_vec();
    args.push("--help");
    let out = run(case.bin, &args, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{line} --help failed: {stderr}");
    for want in case.help {
        assert!(
            stdout.contains(want),
            "{line} --help does not show {want:?}:\n{stdout}"
        );
    }
    args.pop();
    args.push("--bogus-flag");
    let out = run(case.bin, &args, &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{line} --bogus-flag: {stderr}");
    assert!(
        stderr.contains("unexpected argument '--bogus-flag'"),
        "{line} --bogus-flag does not name it: {stderr}"
    );
}

/// `--version` prints `<name> <workspace version>` and exits 0.
pub fn check_version(bin: &str, name: &str) {
    let out = run(bin, &["--version"], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{name} --version failed: {stderr}");
    assert_eq!(stdout, format!("{name} {}\n", env!("CARGO_PKG_VERSION")));
}

/// `bin command...` reads the file `TALLY_CONFIG` names, and the one `--config` names when
/// both are given (both missing here, so the error names the one read).
pub fn check_config_source(bin: &str, command: &[&str]) {
    let env = [("TALLY_CONFIG", "/nonexistent/from-env.toml")];
    let out = run(bin, command, &env);
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{bin} {command:?} read no file");
    assert!(stderr.contains("/nonexistent/from-env.toml"), "{stderr}");
    let mut args = command.to_vec();
    args.extend(["--config", "/nonexistent/from-flag.toml"]);
    let out = run(bin, &args, &env);
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{bin} {args:?} read no file");
    assert!(stderr.contains("/nonexistent/from-flag.toml"), "{stderr}");
    assert!(!stderr.contains("from-env"), "{stderr}");
}

/// The `--config` line every binary's help shows: the flag, its variable and its default.
pub const CONFIG_HELP: &[&str] = &[
    "--config <FILE>",
    "[env: TALLY_CONFIG=]",
    "[default: config/tally.toml]",
];
