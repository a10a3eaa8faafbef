//! A service's log written to a file carries no ANSI colour codes (issue 20, item 6): the
//! real `tally-gateway` binary, its stderr redirected to a file as a supervisor or
//! `2>gateway.log` does, serving until it has logged, then stopped.

use std::time::{Duration, Instant};

use tally_platform::testkit::TestEnv;

#[tokio::test]
async fn a_log_redirected_to_a_file_has_no_escape_codes() {
    let env = TestEnv::new("log_file").await;
    let dir = std::env::temp_dir().join(format!("tally-log-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tally.toml");
    std::fs::write(
        &config,
        format!(
            "[nats]\nurl = {:?}\nstream = {:?}\nsubject_prefix = {:?}\ndlq_stream = {:?}\n\
             dlq_subject_prefix = {:?}\n\n[clickhouse]\nurl = {:?}\ndatabase = {:?}\n\n\
             [telemetry]\nlog = \"info\"\n\n[ingest]\nlisten_addr = \"127.0.0.1:0\"\n\
             metrics_addr = \"127.0.0.1:0\"\n",
            env.nats.url,
            env.nats.stream,
            env.nats.subject_prefix,
            env.nats.dlq_stream,
            env.nats.dlq_subject_prefix,
            env.clickhouse.url,
            env.clickhouse.database,
        ),
    )
    .unwrap();
    let log = dir.join("gateway.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tally-gateway"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdout(std::fs::File::create(dir.join("stdout.log")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("tally-gateway starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = std::fs::read(&log).unwrap();
        if String::from_utf8_lossy(&text).contains("gateway listening") {
            break text;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "tally-gateway exited ({status}) before logging:\n{}",
                String::from_utf8_lossy(&text)
            );
        }
        assert!(Instant::now() < deadline, "no log line within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let shown = String::from_utf8_lossy(&text);
    assert!(shown.contains(" INFO "), "a plain level: {shown}");
    assert!(
        !text.contains(&0x1b),
        "the log file has ANSI escape codes:\n{shown:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    env.cleanup().await;
}
