//! Per-peer connection admission for every HTTP listener: at most `per_peer_max` open
//! connections from one remote address, so one client (or one attacker trickling bodies)
//! cannot hold every connection slot of a listener. It owns only the counts; it never reads
//! or writes a socket, and it never blocks: a connection over the limit is refused at once
//! (the caller closes it).
//!
//! The limit is per connecting address: behind a reverse proxy every client is the proxy's
//! address, so the proxy must do its own per-client limiting (docs/SECURITY.md).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The open connections per remote address of one listener.
#[derive(Debug)]
pub struct PeerLimit {
    per_peer_max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it frees the peer's slot.
#[derive(Debug)]
pub struct PeerSlot {
    limit: Arc<PeerLimit>,
    peer: IpAddr,
}

impl PeerLimit {
    /// A limit of `per_peer_max` connections per address (at least one).
    pub fn new(per_peer_max: usize) -> Arc<Self> {
        Arc::new(Self {
            per_peer_max: per_peer_max.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection from `peer`, or `None` when it already holds
    /// `per_peer_max`.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<PeerSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(peer).or_insert(0);
        if *n >= self.per_peer_max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            limit: self.clone(),
            peer,
        })
    }

    /// Connections open from `peer` now.
    pub fn open_from(&self, peer: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&peer).copied().unwrap_or(0)
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self
            .limit
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // the map holds only peers with open connections: it never grows with history
                open.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_its_limit_and_a_slot_back_when_one_closes() {
        let limit = PeerLimit::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limit.admit(a).unwrap();
        let _second = limit.admit(a).unwrap();
        assert!(limit.admit(a).is_none(), "a third from the same address");
        let _other = limit.admit(b).expect("another address has its own slots");
        drop(first);
        assert_eq!(limit.open_from(a), 1);
        assert!(limit.admit(a).is_some());
    }

    #[test]
    fn closed_peers_are_forgotten() {
        let limit = PeerLimit::new(1);
        for i in 0..1000u32 {
            let slot = limit.admit(IpAddr::from(i.to_be_bytes())).unwrap();
            drop(slot);
        }
        assert!(limit.open.lock().unwrap().is_empty());
    }

    #[test]
    fn a_zero_limit_still_admits_one() {
        let limit = PeerLimit::new(0);
        let a: IpAddr = "::1".parse().unwrap();
        let _s = limit.admit(a).unwrap();
        assert!(limit.admit(a).is_none());
    }
}
