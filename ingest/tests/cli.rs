//! The command lines of `tally-agents` and `tally-gateway`: help with every flag and its
//! default, the version, unknown flags refused, `--config` with its `TALLY_CONFIG` fallback,
//! and the flags reaching what they set (no server needed).

#[path = "../../platform/tests/cli_support/mod.rs"]
mod cli_support;

use cli_support::{
    check, check_config_source, check_version, run, text, Case, CONFIG, CONFIG_HELP,
};

const AGENTS: &str = env!("CARGO_BIN_EXE_tally-agents");
const GATEWAY: &str = env!("CARGO_BIN_EXE_tally-gateway");

#[test]
fn help_version_and_unknown_flags() {
    let cases = [
        Case {
            bin: AGENTS,
            command: &[],
            help: &[
                "--customers <N>",
                "[default: 3]",
                "--agents <N>",
                "[default: 2]",
                "--seconds <SECS>",
                "[default: 5]",
                "--rate <PER_SEC>",
                "[default: 400]",
                "--duplicate-share <SHARE>",
                "[default: 0.05]",
                "--seed <N>",
                "[default: 1]",
                "--run-id <ID>",
                "--wait-for-consumer <NAME>",
            ],
        },
        Case {
            bin: AGENTS,
            command: &[],
            help: CONFIG_HELP,
        },
        Case {
            bin: GATEWAY,
            command: &[],
            help: &[
                "serve",
                "keys-create",
                "keys-list",
                "keys-revoke",
                "nats-config",
                "--config <FILE>",
                "[env: TALLY_CONFIG=]",
            ],
        },
        Case {
            bin: GATEWAY,
            command: &["serve"],
            help: CONFIG_HELP,
        },
        Case {
            bin: GATEWAY,
            command: &["keys-create"],
            help: &[
                "--customer <ID>",
                "--agents <a,b>",
                "--label <TEXT>",
                "[default: \"\"]",
            ],
        },
        Case {
            bin: GATEWAY,
            command: &["keys-list"],
            help: &["--config <FILE>"],
        },
        Case {
            bin: GATEWAY,
            command: &["keys-revoke"],
            help: &["--key-id <ID>"],
        },
        Case {
            bin: GATEWAY,
            command: &["nats-config"],
            help: &[
                "--customers <a,b>",
                "--invoice-bucket <NAME>",
                "--out-dir <DIR>",
                "[default: .]",
            ],
        },
    ];
    cases.iter().for_each(check);
    check_version(AGENTS, "tally-agents");
    check_version(GATEWAY, "tally-gateway");
}

#[test]
fn config_comes_from_the_flag_else_tally_config() {
    check_config_source(AGENTS, &[]);
    check_config_source(GATEWAY, &[]);
    check_config_source(GATEWAY, &["keys-list"]);
}

#[test]
fn nats_config_writes_the_users_of_the_customers_given() {
    let dir = std::env::temp_dir().join(format!("tally-gateway-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let args = [
        "nats-config",
        "--customers",
        "acme, globex,",
        "--invoice-bucket",
        "CLI_NUMBERS",
        "--out-dir",
        dir.to_str().unwrap(),
        "--config",
        CONFIG,
    ];
    let out = run(GATEWAY, &args, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("nats-auth.conf"), "{stdout}");
    let conf = std::fs::read_to_string(dir.join("nats-auth.conf")).unwrap();
    let creds = std::fs::read_to_string(dir.join("nats-credentials.txt")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    for user in ["agent-acme", "agent-globex"] {
        assert!(conf.contains(user), "{user} missing:\n{conf}");
        assert!(creds.lines().any(|l| l.starts_with(&format!("{user} "))));
    }
    assert!(
        conf.contains("CLI_NUMBERS"),
        "the bucket flag is not used:\n{conf}"
    );
    // a list with no customer in it is refused naming the flag
    let out = run(
        GATEWAY,
        &["nats-config", "--customers", " , ", "--config", CONFIG],
        &[],
    );
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("--customers"), "{stderr}");
}

#[test]
fn agents_refuse_a_duplicate_share_outside_0_1() {
    let args = ["--duplicate-share", "1.5", "--config", CONFIG];
    let out = run(AGENTS, &args, &[]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--duplicate-share must be in [0, 1)"),
        "{stderr}"
    );
    // a value that is not a number is refused by the parser, naming the flag
    let out = run(AGENTS, &["--rate", "fast"], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("invalid value 'fast' for '--rate <PER_SEC>'"),
        "{stderr}"
    );
}
