//! The cluster the tests run on, and the Tally processes they start on it.
//!
//! The cluster is `scripts/cluster.sh`'s (its `env` command exports the variables read here);
//! a node is killed and started again through that script, so the tests exercise the same
//! start-up the profile uses. Tally's binaries run as separate processes, each with its own
//! configuration file written from `config/tally.toml` (the demo's meters and plans).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tally_platform::ClickHouseConfig;

/// What `scripts/cluster.sh env` exported.
pub struct Cluster {
    /// One URL per NATS node.
    pub nats: Vec<String>,
    /// One URL per ClickHouse replica.
    pub clickhouse: Vec<String>,
    /// The NATS server's subject mapping: `usage.*.*` into this many partitions.
    pub partitions: u32,
}

impl Cluster {
    /// The cluster of the environment; panics naming the command when there is none (the
    /// tests are `#[ignore]`d and run by `scripts/cluster.sh test`).
    pub fn from_env() -> Cluster {
        let list = |var: &str| -> Vec<String> {
            std::env::var(var)
                .unwrap_or_else(|_| {
                    panic!("{var} is not set: run these tests with scripts/cluster.sh test")
                })
                .split(',')
                .map(str::to_owned)
                .collect()
        };
        let partitions = std::env::var("TALLY_CLUSTER_PARTITIONS")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(2);
        Cluster {
            nats: list("TALLY_TEST_CLUSTER_NATS_URLS"),
            clickhouse: list("TALLY_TEST_CLUSTER_CLICKHOUSE_URLS"),
            partitions,
        }
    }

    /// The ClickHouse settings of a process reaching the cluster through replica `i`.
    pub fn clickhouse_config(&self, i: usize, database: &str) -> ClickHouseConfig {
        ClickHouseConfig {
            url: self.clickhouse[i % self.clickhouse.len()].clone(),
            database: database.to_owned(),
            cluster: Some("tally".into()),
            insert_quorum: u32::try_from(self.clickhouse.len()).expect("a few replicas"),
            insert_quorum_timeout_secs: 10,
            ..ClickHouseConfig::default()
        }
    }

    /// `nats.url` for a process that prefers node `i`: every node, `i` first.
    pub fn nats_url(&self, i: usize) -> String {
        let n = self.nats.len();
        (0..n)
            .map(|k| self.nats[(i + k) % n].clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `scripts/cluster.sh <command> <kind> <node>` (1-based node), waiting for it.
    pub fn node(&self, command: &str, kind: &str, node: usize) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh");
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(script)
            .args([command, kind, &node.to_string()])
            .output()
            .expect("run scripts/cluster.sh");
        assert!(
            out.status.success(),
            "cluster.sh {command} {kind} {node}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "cluster: {command} {kind} {node} ({:.1}s)",
            started.elapsed().as_secs_f64()
        );
    }
}

/// A binary of the workspace, copied once into `dir` so every restart runs the same build.
pub fn binary(name: &str, dir: &Path) -> PathBuf {
    let built = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("{name} is not built: cargo build -p tally-aggregator -p tally-rater -p tally-invoicer -p tally-ingest --bins")
        });
    let copy = dir.join(name);
    if !copy.exists() {
        std::fs::copy(&built, &copy).expect("copy the binary");
    }
    copy
}

/// `config/tally.toml` with `set` applied: `(section, key, value)`.
pub fn config_file(path: &Path, set: &[(&str, &str, toml::Value)]) {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/tally.toml");
    let mut table: toml::Table = std::fs::read_to_string(base)
        .expect("config/tally.toml")
        .parse()
        .expect("config/tally.toml is TOML");
    for (section, key, value) in set {
        let entry = table
            .entry((*section).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        entry
            .as_table_mut()
            .expect("a section")
            .insert((*key).to_owned(), value.clone());
    }
    std::fs::write(path, toml::to_string(&table).expect("serialize")).expect("write config");
}

/// A Tally process: killed on drop.
pub struct Process {
    pub name: String,
    child: Child,
}

impl Process {
    /// Starts `binary args...` with `--config config`, logging to `<dir>/<name>.log`. The
    /// file is the whole configuration: the `TALLY_<SECTION>__<KEY>` overrides of the test's
    /// environment (`scripts/cluster.sh env` exports some, naming node 1 and replica 1) are
    /// not passed on.
    pub fn start(name: &str, binary: &Path, config: &Path, args: &[&str], dir: &Path) -> Process {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))
            .expect("log");
        let mut command = Command::new(binary);
        for (var, _) in std::env::vars_os() {
            if var
                .to_str()
                .is_some_and(|v| v.starts_with("TALLY_") && v.contains("__"))
            {
                command.env_remove(var);
            }
        }
        let child = command
            .args(args)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).expect("stdout file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Process {
            name: name.to_owned(),
            child,
        }
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and the exit status within `timeout`.
    pub fn terminate(mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.wait(timeout)
    }

    /// The exit status within `timeout`; `None` if it still runs (it is killed on drop).
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
