//! The command line of `tally-bench`: help with every scenario's flags and their defaults, the
//! version, unknown flags refused, and the flags reaching the scenario they size.

#[path = "../../platform/tests/cli_support/mod.rs"]
mod cli_support;

use cli_support::{check, check_version, run, text, Case};

const BENCH: &str = env!("CARGO_BIN_EXE_tally-bench");

#[test]
fn help_version_and_unknown_flags() {
    let cases = [
        Case {
            bin: BENCH,
            command: &[],
            help: &[
                "--events <N>",
                "--ids <N>",
                "[default: 1000000]",
                "report",
                "rating",
                "gateway",
                "pipeline",
                "invoicer",
                "insert",
                "history",
                "cluster",
                "spend",
                "TALLY_BENCH_BATCH",
            ],
        },
        Case {
            bin: BENCH,
            command: &["report"],
            help: &["--quick", "--out <DIR>", "[default: docs/bench]"],
        },
        Case {
            bin: BENCH,
            command: &["rating"],
            help: &[
                "--rows <N>",
                "[default: 1000000]",
                "--customers <N>",
                "[default: 1000]",
            ],
        },
        Case {
            bin: BENCH,
            command: &["gateway"],
            help: &[
                "--events <N>",
                "[default: 200000]",
                "--batch <N>",
                "[default: 100]",
                "--connections <N>",
                "[default: 4]",
            ],
        },
        Case {
            bin: BENCH,
            command: &["pipeline"],
            help: &[
                "--events <N>",
                "[default: 200000]",
                "--duplicate-share <SHARE>",
                "[default: 0.05]",
                "--latency-events <N>",
                "[default: 20000]",
            ],
        },
        Case {
            bin: BENCH,
            command: &["invoicer"],
            help: &[
                "--customers <N>",
                "[default: 10000]",
                "--meters <N>",
                "[default: 10]",
            ],
        },
        Case {
            bin: BENCH,
            command: &["insert"],
            help: &[
                "--events <N>",
                "[default: 100000]",
                "--batch <N>",
                "[default: 5000]",
            ],
        },
        Case {
            bin: BENCH,
            command: &["history"],
            help: &[
                "--histories <N,N>",
                "[default: 1000000,10000000,100000000]",
                "--period <N>",
                "--big <N>",
                "[default: 100000000]",
                "--more <N>",
                "--customers <N>",
                "[default: 10000]",
            ],
        },
        Case {
            bin: BENCH,
            command: &["cluster"],
            help: &[
                "--events <N>",
                "[default: 100000]",
                "--duplicate-share <SHARE>",
                "[default: 0]",
                "--latency-events <N>",
                "[default: 10000]",
            ],
        },
        Case {
            bin: BENCH,
            command: &["spend"],
            help: &[
                "--secs <SECS>",
                "[default: 5]",
                "--probes <N>",
                "[default: 200]",
                "--load <PER_SEC>",
                "--mixed <N>",
                "[default: 10000]",
            ],
        },
    ];
    cases.iter().for_each(check);
    check_version(BENCH, "tally-bench");
}

#[test]
fn the_default_scenario_is_sized_by_its_flags() {
    let out = run(BENCH, &["--events", "3000", "--ids", "1000"], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("1 thread, 3000 events of"), "{stdout}");
    assert!(
        stdout.contains("| dedup memory, 1000 committed ids |"),
        "{stdout}"
    );
    // the default scenario's flags do not go with a command
    let out = run(BENCH, &["--events", "5", "pipeline"], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("'pipeline' cannot be used with '--events <N>'"),
        "{stderr}"
    );
    // a list with something other than numbers is refused naming the flag
    let out = run(BENCH, &["history", "--histories", "1000,lots"], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("'--histories <N,N>'"), "{stderr}");
}
