//! Readiness for `/readyz`: a process is ready unless a component said it is not, or it is
//! draining after a shutdown signal. Liveness (`/healthz`) needs no state: answering is alive.
//!
//! Components mark themselves with [`set_ready`] (for example `set_ready("consumer", false)`
//! before a consumer is bound, `true` after). This module holds switches only; it never probes
//! anything itself.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static DRAINING: AtomicBool = AtomicBool::new(false);
/// Components that are not ready, by name (bounded by the code: names are `&'static str`).
static NOT_READY: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

/// Marks `component` ready or not ready.
pub fn set_ready(component: &'static str, ready: bool) {
    let mut not_ready = NOT_READY.lock().unwrap_or_else(|p| p.into_inner());
    if ready {
        not_ready.remove(component);
    } else {
        not_ready.insert(component);
    }
}

/// Marks the whole process as draining: `/readyz` answers 503 from now on.
pub fn set_draining() {
    DRAINING.store(true, Ordering::SeqCst);
}

/// `Ok(())` when ready, else the reasons (`draining`, then the components not ready).
pub fn readiness() -> Result<(), Vec<&'static str>> {
    let mut reasons = Vec::new();
    if DRAINING.load(Ordering::SeqCst) {
        reasons.push("draining");
    }
    let not_ready = NOT_READY.lock().unwrap_or_else(|p| p.into_inner());
    reasons.extend(not_ready.iter().copied());
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}
