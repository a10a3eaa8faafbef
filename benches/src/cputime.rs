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
