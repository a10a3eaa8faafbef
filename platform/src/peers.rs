//! Per-peer connection admission for every HTTP listener: at most `per_peer_max` open
//! connections from one remote address, so one client (or one attacker trickling bodies)
//! cannot hold every connection slot of a listener. It owns only the counts; it never reads
//! or writes a socket, and it never blocks: a connection over the limit is refused at once
//! (the caller closes it).
//!
//! The limit is per connecting address, an IPv6 client counted by its /64 (one host holds a
//! whole /64 and could otherwise open each connection from another address; an IPv4 address
//! mapped into IPv6 counts as itself): behind a reverse proxy every client is the proxy's
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
        let peer = counted_as(peer);
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

    /// Connections open from `peer` now (from its /64, for IPv6).
    pub fn open_from(&self, peer: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&counted_as(peer)).copied().unwrap_or(0)
    }
}

/// The address a peer is counted under: itself for IPv4 (and IPv4 mapped into IPv6), its /64
/// for IPv6.
fn counted_as(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
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
    fn an_ipv6_host_is_counted_by_its_64_and_mapped_ipv4_as_itself() {
        let limit = PeerLimit::new(2);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _x = limit.admit(a).unwrap();
        let _y = limit.admit(b).unwrap();
        assert!(limit.admit(a).is_none(), "a third from the same /64");
        assert!(
            limit.admit(other).is_some(),
            "another /64 has its own slots"
        );
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        let v4: IpAddr = "10.0.0.7".parse().unwrap();
        let _m = limit.admit(mapped).unwrap();
        let _n = limit.admit(v4).unwrap();
        assert!(
            limit.admit(v4).is_none(),
            "mapped and plain IPv4 are one peer"
        );
    }

    #[test]
    fn a_zero_limit_still_admits_one() {
        let limit = PeerLimit::new(0);
        let a: IpAddr = "::1".parse().unwrap();
        let _s = limit.admit(a).unwrap();
        assert!(limit.admit(a).is_none());
    }
}
