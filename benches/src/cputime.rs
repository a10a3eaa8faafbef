//! Wall time and this thread's CPU time around a measured section. On a shared 2-core
//! machine a thread often waits for a core; its CPU time (from `/proc/thread-self/schedstat`,
//! nanoseconds on the CPU) is what "per core" means, and the wait shows how noisy a run was.
//! Reading it never fails a benchmark: without the file only wall time is reported.

use std::time::Instant;

/// How long a section took.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Seconds of wall time.
    pub wall: f64,
    /// Seconds this thread ran on a CPU, when the kernel reports it.
    pub cpu: Option<f64>,
    /// Seconds this thread was runnable but waiting for a CPU, when reported.
    pub waited: Option<f64>,
}

impl Timing {
    /// `n` per second of CPU time (per core), or per wall second without CPU time.
    pub fn per_core(&self, n: usize) -> f64 {
        n as f64 / self.cpu.unwrap_or(self.wall).max(1e-9)
    }

    /// `n` per wall second.
    pub fn per_wall(&self, n: usize) -> f64 {
        n as f64 / self.wall.max(1e-9)
    }
}

/// (on-CPU, waiting) nanoseconds of the calling thread.
fn schedstat() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

/// Runs `f` on this thread and times it.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Timing) {
    let before = schedstat();
    let started = Instant::now();
    let out = f();
    let wall = started.elapsed().as_secs_f64();
    let after = schedstat();
    let (cpu, waited) = match (before, after) {
        (Some(b), Some(a)) if a.0 > b.0 => (
            Some((a.0 - b.0) as f64 / 1e9),
            Some(a.1.saturating_sub(b.1) as f64 / 1e9),
        ),
        _ => (None, None),
    };
    (out, Timing { wall, cpu, waited })
}

/// CPU seconds used so far by the processes a pipeline run involves: NATS, ClickHouse (found
/// by name in `/proc`, so only when they run on this machine) and this process. Differences
/// of two samples say where a run's CPU went; a figure is `None` when its process is not
/// visible.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessCpu {
    pub nats: Option<f64>,
    pub clickhouse: Option<f64>,
    pub this: Option<f64>,
}

impl ProcessCpu {
    /// Reads `/proc` now.
    pub fn sample() -> ProcessCpu {
        let (mut nats, mut clickhouse) = (None, None);
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let path = entry.path();
                let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
                    continue;
                };
                // the kernel truncates names to 15 bytes: "clickhouse-serv"
                let slot = match comm.trim() {
                    "nats-server" => &mut nats,
                    c if c.starts_with("clickhouse-serv") => &mut clickhouse,
                    _ => continue,
                };
                if let Some(s) = stat_seconds(&path.join("stat")) {
                    *slot = Some(slot.unwrap_or(0.0) + s);
                }
            }
        }
        ProcessCpu {
            nats,
            clickhouse,
            this: stat_seconds(std::path::Path::new("/proc/self/stat")),
        }
    }

    /// CPU seconds each used between `earlier` and `self`.
    pub fn since(&self, earlier: &ProcessCpu) -> ProcessCpu {
        let d = |a: Option<f64>, b: Option<f64>| Some((a? - b?).max(0.0));
        ProcessCpu {
            nats: d(self.nats, earlier.nats),
            clickhouse: d(self.clickhouse, earlier.clickhouse),
            this: d(self.this, earlier.this),
        }
    }

    /// The sum of the known figures.
    pub fn total(&self) -> f64 {
        [self.nats, self.clickhouse, self.this]
            .iter()
            .flatten()
            .sum()
    }
}

/// utime + stime of a `/proc/<pid>/stat` file, in seconds (clock ticks of 1/100 s, the value
/// of `CLK_TCK` on every Linux we run on).
fn stat_seconds(path: &std::path::Path) -> Option<f64> {
    parse_stat_seconds(&std::fs::read_to_string(path).ok()?)
}

fn parse_stat_seconds(s: &str) -> Option<f64> {
    // the command name in parentheses may hold spaces: fields count from after it
    let rest = &s[s.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_user_plus_system_seconds() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
        let line = "42 (tokio (rt) w) S 1 42 42 0 -1 4194560 10 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(parse_stat_seconds(line), Some(3.25));
        assert_eq!(parse_stat_seconds("42 (x) S 1"), None);
        assert_eq!(parse_stat_seconds("no parenthesis"), None);
    }

    #[test]
    fn this_process_is_always_visible_and_differences_never_go_negative() {
        let a = ProcessCpu::sample();
        assert!(a.this.is_some(), "/proc/self/stat is readable on Linux");
        let b = ProcessCpu::sample();
        let d = b.since(&a);
        assert!(d.this.is_some_and(|s| s >= 0.0));
        assert!(a.since(&b).total() >= 0.0);
    }
}
