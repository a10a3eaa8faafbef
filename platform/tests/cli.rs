//! The command lines of `tally-migrate` and `tally-access`: help with every flag and its
//! default, the version, unknown flags refused, and `--config` with its `TALLY_CONFIG`
//! fallback.

mod cli_support;

use cli_support::{
    check, check_config_source, check_version, run, text, Case, CONFIG, CONFIG_HELP,
};

const MIGRATE: &str = env!("CARGO_BIN_EXE_tally-migrate");
const ACCESS: &str = env!("CARGO_BIN_EXE_tally-access");

#[test]
fn help_version_and_unknown_flags() {
    let cases = [
        Case {
            bin: MIGRATE,
            command: &[],
            help: CONFIG_HELP,
        },
        Case {
            bin: ACCESS,
            command: &[],
            help: &[
                "sql",
                "users-xml",
                "roles-migration",
                "tokens-create",
                "tokens-list",
                "tokens-revoke",
                "[env: TALLY_CONFIG=]",
            ],
        },
        Case {
            bin: ACCESS,
            command: &["sql"],
            help: &["--out-dir <DIR>", "[default: .]", "--config <FILE>"],
        },
        Case {
            bin: ACCESS,
            command: &["users-xml"],
            help: &["--out-dir <DIR>", "[default: .]"],
        },
        Case {
            bin: ACCESS,
            command: &["tokens-create"],
            help: &["--actor <NAME>", "--role <ROLE>", "key_admin"],
        },
        Case {
            bin: ACCESS,
            command: &["tokens-revoke"],
            help: &["--token-id <ID>"],
        },
        Case {
            bin: ACCESS,
            command: &["roles-migration"],
            help: &["--help"],
        },
    ];
    cases.iter().for_each(check);
    check_version(MIGRATE, "tally-migrate");
    check_version(ACCESS, "tally-access");
}

#[test]
fn config_comes_from_the_flag_else_tally_config() {
    check_config_source(MIGRATE, &[]);
    check_config_source(ACCESS, &["tokens-list"]);
    check_config_source(ACCESS, &["sql"]);
}

#[test]
fn access_renders_with_flags_before_or_after_the_command() {
    for (i, order) in ["before", "after"].iter().enumerate() {
        let dir = std::env::temp_dir().join(format!("tally-access-cli-{}-{i}", std::process::id()));
        let dir_text = dir.to_str().unwrap();
        let args: Vec<&str> = if *order == "before" {
            vec!["--config", CONFIG, "users-xml", "--out-dir", dir_text]
        } else {
            vec!["users-xml", "--out-dir", dir_text, "--config", CONFIG]
        };
        std::fs::create_dir_all(&dir).unwrap();
        let out = run(ACCESS, &args, &[]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(stdout.contains("users.xml"), "{stdout}");
        let xml = std::fs::read_to_string(dir.join("users.xml")).unwrap();
        let creds = std::fs::read_to_string(dir.join("clickhouse-credentials.txt")).unwrap();
        assert!(xml.contains("tally_aggregator"), "{xml}");
        assert!(
            creds.lines().any(|l| l.starts_with("tally_aggregator ")),
            "{creds}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // roles-migration reads no configuration: a missing file does not matter
    let out = run(
        ACCESS,
        &["roles-migration", "--config", "/nonexistent.toml"],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("GRANT"), "{stdout}");
    // a role that does not exist is refused before anything is read, naming the roles
    let out = run(
        ACCESS,
        &["tokens-create", "--actor", "a", "--role", "root"],
        &[],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value 'root' for '--role <ROLE>'"),
        "{stderr}"
    );
    assert!(stderr.contains("key_admin"), "{stderr}");
}
