//! Private servers for fault-injection tests: a nats-server and a clickhouse-server of the
//! test's own, on free loopback ports with data in a temporary folder, so a test can kill and
//! restart them without touching the shared local stack other tests run against. Both are
//! killed and their folder removed on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tally_platform::own_server;

/// The synthetic fleet's meters as configuration: tokens summed, tool calls counted.
pub const METERS_TOML: &str = r#"
[[meters]]
slug = "llm_tokens"
event_type = "llm.tokens"
aggregation = "SUM"
value_property = "$.tokens"

[[meters]]
slug = "tool_calls"
event_type = "tool.call"
aggregation = "COUNT"
"#;

/// Writes `aggregator.toml` into `dir` for the real binary: the test's streams and database
/// (every `[nats]` setting the test's own declaration used, so the binary finds the streams
/// as configured and changes nothing), `[aggregator]` with `aggregator` added, then `meters`.
pub fn write_config(
    dir: &Path,
    env: &tally_platform::testkit::TestEnv,
    aggregator: &str,
    meters: &str,
) -> PathBuf {
    let n = &env.nats;
    let text = format!(
        r#"
[nats]
url = "{url}"
stream = "{stream}"
subject_prefix = "{prefix}"
dlq_stream = "{dlq}"
dlq_subject_prefix = "{dlq_prefix}"
duplicate_window_secs = {window}
dlq_duplicate_window_secs = {dlq_window}
max_age_secs = {max_age}
max_bytes = {max_bytes}
max_msgs = {max_msgs}
dlq_max_bytes = {dlq_max_bytes}

[clickhouse]
url = "{ch_url}"
database = "{db}"

[aggregator]
metrics_addr = "127.0.0.1:0"
lease_secs = 1
{aggregator}
{meters}"#,
        url = n.url,
        stream = n.stream,
        prefix = n.subject_prefix,
        dlq = n.dlq_stream,
        dlq_prefix = n.dlq_subject_prefix,
        window = n.duplicate_window_secs,
        dlq_window = n.dlq_duplicate_window_secs,
        max_age = n.max_age_secs,
        max_bytes = n.max_bytes,
        max_msgs = n.max_msgs,
        dlq_max_bytes = n.dlq_max_bytes,
        ch_url = env.clickhouse.url,
        db = env.clickhouse.database,
    );
    std::fs::create_dir_all(dir).expect("temp dir");
    let config = dir.join("aggregator.toml");
    std::fs::write(&config, text).expect("config file");
    config
}

/// Two meters over the synthetic fleet's events: tokens summed, tool calls counted.
pub fn meters() -> Vec<tally_domain::Meter> {
    let specs: Vec<tally_domain::meter::MeterSpec> = serde_json::from_value(serde_json::json!([
        {"slug": "llm_tokens", "event_type": "llm.tokens", "aggregation": "SUM", "value_property": "$.tokens"},
        {"slug": "tool_calls", "event_type": "tool.call", "aggregation": "COUNT"}
    ]))
    .expect("meter specs");
    tally_domain::meter::validate_meters(specs).expect("valid meters")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    own_server::free_port().expect("a free port")
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} did not come up within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn http_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

fn temp_dir(tag: &str) -> PathBuf {
    own_server::temp_dir(tag).expect("temp dir")
}

/// A nats-server with JetStream.
pub struct Nats {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Extra nats-server configuration (e.g. subject mappings).
    extra: String,
}

impl Nats {
    pub fn start() -> Nats {
        Nats::start_with("")
    }

    /// Starts a server whose configuration file ends with `extra`.
    pub fn start_with(extra: &str) -> Nats {
        let mut n = Nats {
            port: free_port(),
            dir: temp_dir("nats"),
            child: None,
            extra: extra.to_owned(),
        };
        n.spawn();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("nats.log")).expect("log");
        let conf = self.dir.join("nats.conf");
        let store = self.dir.join("store");
        let text = format!(
            "listen: \"127.0.0.1:{}\"\njetstream {{ store_dir: \"{}\", max_file_store: {} }}\n{}\n",
            self.port,
            store.display(),
            own_server::TEST_MAX_FILE_STORE,
            self.extra
        );
        std::fs::write(&conf, text).expect("nats.conf");
        let binary =
            own_server::find_binary("nats-server").unwrap_or_else(|| PathBuf::from("nats-server"));
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server is installed (scripts/stack.sh up installs it)");
        self.child = Some(child);
        let port = self.port;
        wait_until("nats-server", Duration::from_secs(20), || port_open(port));
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A clickhouse-server (18.16 from Debian in CI).
pub struct ClickHouse {
    pub http_port: u16,
    tcp_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl ClickHouse {
    pub fn start() -> ClickHouse {
        let mut c = ClickHouse {
            http_port: free_port(),
            tcp_port: free_port(),
            dir: temp_dir("clickhouse"),
            child: None,
        };
        c.write_config();
        c.spawn();
        c
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn write_config(&self) {
        let d = &self.dir;
        let path = |p: &str| d.join(p).display().to_string();
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{log}</log><errorlog>{err}</errorlog></logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http}</http_port>
    <tcp_port>{tcp}</tcp_port>
    <path>{data}/</path>
    <tmp_path>{tmp}/</tmp_path>
    <user_files_path>{files}/</user_files_path>
    <users_config>{users}</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
    <mlock_executable>false</mlock_executable>
</yandex>
"#,
            log = path("server.log"),
            err = path("server.err.log"),
            http = self.http_port,
            tcp = self.tcp_port,
            data = path("data"),
            tmp = path("tmp"),
            files = path("user_files"),
            users = path("users.xml"),
        );
        let users = r#"<?xml version="1.0"?>
<yandex>
    <profiles><default></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
    <quotas><default></default></quotas>
</yandex>
"#;
        std::fs::write(d.join("config.xml"), config).expect("config");
        std::fs::write(d.join("users.xml"), users).expect("users");
    }

    fn spawn(&mut self) {
        let config = self.dir.join("config.xml");
        let child = Command::new(clickhouse_server())
            .arg(format!("--config-file={}", config.display()))
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("clickhouse-server is installed (scripts/stack.sh up installs it)");
        self.child = Some(child);
        let port = self.http_port;
        wait_until("clickhouse-server", Duration::from_secs(60), || {
            http_ok(port, "/ping")
        });
    }

    /// Kills the server (SIGKILL) and starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Kills the server (SIGKILL); [`ClickHouse::start_again`] brings it back.
    pub fn stop(&mut self) {
        self.kill();
    }

    pub fn start_again(&mut self) {
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let port = self.http_port;
        wait_until("clickhouse-server to stop", Duration::from_secs(30), || {
            !port_open(port)
        });
    }
}

fn clickhouse_server() -> PathBuf {
    own_server::find_binary("clickhouse-server")
        .unwrap_or_else(|| PathBuf::from("clickhouse-server"))
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An aggregator process (the real binary), killable with SIGKILL and pausable.
pub struct AggregatorProcess {
    child: Child,
}

impl AggregatorProcess {
    pub fn start(binary: &str, config: &Path, log: &Path) -> AggregatorProcess {
        Self::start_with_env(binary, config, log, "RUST_LOG", "warn")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// `kill -9`.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// SIGTERM, then waits for the exit status.
    /// Whether the process has installed its SIGTERM handler (bit 15 of `SigCgt` in /proc).
    pub fn catches_sigterm(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                let mask = s.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
                u64::from_str_radix(mask.trim(), 16).ok()
            })
            .is_some_and(|mask| mask & (1 << 14) != 0)
    }

    /// SIGTERM once the process catches it (a process still being exec'd would just die), then
    /// waits for the exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        wait_until(
            "the aggregator's SIGTERM handler",
            Duration::from_secs(30),
            || self.catches_sigterm(),
        );
        self.signal("TERM");
        self.child.wait().expect("wait for the aggregator")
    }
}

impl Drop for AggregatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AggregatorProcess {
    /// Starts the binary with one more environment variable (a crash point, for example).
    pub fn start_with_env(
        binary: &str,
        config: &Path,
        log: &Path,
        var: &str,
        value: &str,
    ) -> AggregatorProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log");
        let child = Command::new(binary)
            .args(["--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .env(var, value)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("aggregator binary");
        AggregatorProcess { child }
    }

    /// Waits up to `timeout` for the process to exit by itself; `None` if it is still running
    /// (it is then killed when dropped).
    pub fn wait_exit(mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Usage per (customer, agent, meter): (quantity, events), for the two meters of [`meters`].
pub type Totals =
    std::collections::BTreeMap<(String, String, String), (rust_decimal::Decimal, u64)>;

/// What [`meters`] bill for `events`, computed here (tokens summed, tool calls counted).
pub fn expected_totals(events: &[tally_ingest::OutgoingEvent]) -> Totals {
    use rust_decimal::Decimal;
    let mut t = Totals::new();
    for e in events {
        let (meter, q) = match e.event_type.as_str() {
            "llm.tokens" => (
                "llm_tokens",
                Decimal::from(e.data["tokens"].as_u64().expect("integer tokens")),
            ),
            _ => ("tool_calls", Decimal::ONE),
        };
        let entry = t
            .entry((
                e.customer.to_string(),
                e.agent.to_string(),
                meter.to_owned(),
            ))
            .or_default();
        entry.0 += q;
        entry.1 += 1;
    }
    t
}

/// Runs `sql`, which selects (customer, agent, meter, toString(quantity), events) grouped by
/// the first three, into [`Totals`].
pub async fn fetch_totals(db: &clickhouse::Client, sql: &str) -> Totals {
    let rows: Vec<(String, String, String, String, u64)> =
        db.query(sql).fetch_all().await.expect(sql);
    rows.into_iter()
        .map(|(c, a, m, q, n)| ((c, a, m), (q.parse().expect("decimal"), n)))
        .collect()
}
