//! The command line of `tally-payments`: help with every flag and its default, the version,
//! unknown flags and missing ones refused, `--config` with its `TALLY_CONFIG` fallback, and the
//! commands that need no server (portal-link, endpoint-secret) using the flags given.

#[path = "../../platform/tests/cli_support/mod.rs"]
mod cli_support;

use cli_support::{
    check, check_config_source, check_version, run, text, Case, CONFIG, CONFIG_HELP,
};

const PAYMENTS: &str = env!("CARGO_BIN_EXE_tally-payments");

/// A secret strong enough for every profile (made up for this test).
const SECRET: &str = "9e1f4c2a7b3d8e6f0a5c1b9d2e7f3a4c8b6d0e2f5a1c7b3d9e4f6a0c2b8d1e5f";

#[test]
fn help_version_and_unknown_flags() {
    let mut cases = vec![
        Case {
            bin: PAYMENTS,
            command: &[],
            help: &[
                "serve",
                "trial-balance",
                "sync-ledger",
                "dunning-once",
                "collect-once",
                "portal-link",
                "collect-request",
                "endpoint-secret",
                "[env: TALLY_CONFIG=]",
            ],
        },
        Case {
            bin: PAYMENTS,
            command: &["portal-link"],
            help: &["--customer <ID>"],
        },
        Case {
            bin: PAYMENTS,
            command: &["collect-request"],
            help: &["--invoice <ID>"],
        },
        Case {
            bin: PAYMENTS,
            command: &["endpoint-secret"],
            help: &["--customer <ID>"],
        },
    ];
    let config_only: [&'static [&'static str]; 5] = [
        &["serve"],
        &["trial-balance"],
        &["sync-ledger"],
        &["dunning-once"],
        &["collect-once"],
    ];
    for command in config_only {
        cases.push(Case {
            bin: PAYMENTS,
            command,
            help: CONFIG_HELP,
        });
    }
    cases.iter().for_each(check);
    check_version(PAYMENTS, "tally-payments");
}

#[test]
fn config_comes_from_the_flag_else_tally_config() {
    check_config_source(PAYMENTS, &[]);
    check_config_source(PAYMENTS, &["trial-balance"]);
    check_config_source(PAYMENTS, &["portal-link", "--customer", "acme"]);
}

#[test]
fn commands_refuse_a_missing_flag_naming_it() {
    for (command, flag) in [
        ("portal-link", "--customer <ID>"),
        ("endpoint-secret", "--customer <ID>"),
        ("collect-request", "--invoice <ID>"),
    ] {
        let out = run(PAYMENTS, &[command, "--config", CONFIG], &[]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(stderr.contains("required arguments were not provided"));
        assert!(stderr.contains(flag), "{command}: {stderr}");
    }
}

#[test]
fn portal_link_and_endpoint_secret_are_for_the_customer_given() {
    let env = [
        ("TALLY_PORTAL__SIGNING_SECRET", SECRET),
        ("TALLY_DUNNING__SIGNING_SECRET", SECRET),
    ];
    let print = |args: &[&str]| {
        let out = run(PAYMENTS, args, &env);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        stdout.trim().to_owned()
    };
    let link = print(&["portal-link", "--customer", "acme", "--config", CONFIG]);
    assert!(link.starts_with("http://127.0.0.1:8090/portal/"), "{link}");
    let bad = run(
        PAYMENTS,
        &["portal-link", "--customer", "no/such", "--config", CONFIG],
        &env,
    );
    assert!(
        !bad.status.success(),
        "a customer id out of [A-Za-z0-9_-] got a link"
    );
    // the config flag may stand before the command, too
    let acme = print(&["--config", CONFIG, "endpoint-secret", "--customer", "acme"]);
    let again = print(&["endpoint-secret", "--customer", "acme", "--config", CONFIG]);
    let globex = print(&[
        "endpoint-secret",
        "--customer",
        "globex",
        "--config",
        CONFIG,
    ]);
    assert_eq!(acme.len(), 64, "{acme}");
    assert!(acme.chars().all(|c| c.is_ascii_hexdigit()), "{acme}");
    assert_eq!(acme, again);
    assert_ne!(acme, globex);
}
