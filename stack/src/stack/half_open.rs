//! The half-open table: handshakes in progress on our listeners, oldest first.
//!
//! Owns [`HalfOpen`]: which four-tuples have a connection in SYN-RECEIVED,
//! since when, and how many on each listening port. Counting, admission,
//! eviction of the oldest (of all, or of one port) and expiry cost O(1)
//! amortized, never a scan of the connections: entries wait in one queue per
//! listening port in arrival order; an entry that leaves early (its handshake
//! completed, its connection was dropped) is only forgotten in the index,
//! then skipped at the front or compacted away, so every queue stays within
//! twice its live entries. It never touches a socket: the stack drops the
//! connections it names.

use std::collections::{HashMap, VecDeque};

use smoltcp::time::{Duration, Instant};

use crate::segment::FourTuple;

/// Stale entries a port's queue may hold beyond twice its live ones before
/// it is compacted.
const SLACK: usize = 32;

/// Handshakes in progress, by arrival.
#[derive(Debug, Default)]
pub(super) struct HalfOpen {
    ports: HashMap<u16, PortQueue>,
    /// Live entries: tuple -> serial of its entry in its port's queue.
    live: HashMap<FourTuple, u64>,
    next_serial: u64,
}

#[derive(Debug, Default)]
struct PortQueue {
    order: VecDeque<Entry>,
    live: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    serial: u64,
    tuple: FourTuple,
    since: Instant,
}

impl HalfOpen {
    /// Handshakes in progress.
    pub(super) fn len(&self) -> usize {
        self.live.len()
    }

    /// Handshakes in progress on local `port`.
    pub(super) fn on_port(&self, port: u16) -> usize {
        self.ports.get(&port).map_or(0, |q| q.live)
    }

    /// `tuple` has a handshake in progress.
    pub(super) fn contains(&self, tuple: &FourTuple) -> bool {
        self.live.contains_key(tuple)
    }

    /// A handshake on `tuple` started at `now` (no-op if one is known).
    pub(super) fn insert(&mut self, tuple: FourTuple, now: Instant) {
        if self.live.contains_key(&tuple) {
            return;
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        self.live.insert(tuple, serial);
        let queue = self.ports.entry(tuple.local.port()).or_default();
        queue.order.push_back(Entry {
            serial,
            tuple,
            since: now,
        });
        queue.live += 1;
    }

    /// The handshake on `tuple` ended (completed or dropped). Returns
    /// whether it was in progress.
    pub(super) fn remove(&mut self, tuple: &FourTuple) -> bool {
        if self.live.remove(tuple).is_none() {
            return false;
        }
        let port = tuple.local.port();
        if let Some(queue) = self.ports.get_mut(&port) {
            queue.live -= 1;
            if queue.order.len() > 2 * queue.live + SLACK {
                let live = &self.live;
                queue
                    .order
                    .retain(|e| live.get(&e.tuple) == Some(&e.serial));
            }
        }
        self.prune(port);
        true
    }

    /// Removes and returns the oldest handshake on `port`, or of all ports
    /// when `None`.
    pub(super) fn pop_oldest(&mut self, port: Option<u16>) -> Option<FourTuple> {
        let port = match port {
            Some(port) => port,
            None => self.oldest()?.tuple.local.port(),
        };
        self.prune(port);
        let entry = self.ports.get(&port)?.order.front().copied()?;
        self.remove(&entry.tuple);
        Some(entry.tuple)
    }

    /// Removes and returns the oldest handshake if it started `timeout` or
    /// longer before `now`.
    pub(super) fn pop_expired(&mut self, now: Instant, timeout: Duration) -> Option<FourTuple> {
        let oldest = self.oldest()?;
        if now < oldest.since + timeout {
            return None;
        }
        self.remove(&oldest.tuple);
        Some(oldest.tuple)
    }

    /// When the oldest handshake expires (early when its port's queue
    /// starts with entries that already left: a harmless extra poll).
    pub(super) fn next_expiry(&self, timeout: Duration) -> Option<Instant> {
        self.ports
            .values()
            .filter_map(|q| q.order.front())
            .map(|e| e.since + timeout)
            .min()
    }

    /// The oldest live entry of all ports (one look per listening port).
    fn oldest(&mut self) -> Option<Entry> {
        let live = &self.live;
        self.ports.retain(|_, queue| {
            prune_front(queue, live);
            !queue.order.is_empty()
        });
        self.ports
            .values()
            .filter_map(|q| q.order.front().copied())
            .min_by_key(|e| (e.since, e.serial))
    }

    /// Drops entries that left from the front of `port`'s queue, and the
    /// queue itself once empty.
    fn prune(&mut self, port: u16) {
        let Some(queue) = self.ports.get_mut(&port) else {
            return;
        };
        prune_front(queue, &self.live);
        if queue.order.is_empty() {
            self.ports.remove(&port);
        }
    }
}

/// Drops entries that left from the front of `queue`.
fn prune_front(queue: &mut PortQueue, live: &HashMap<FourTuple, u64>) {
    while let Some(front) = queue.order.front()
        && live.get(&front.tuple) != Some(&front.serial)
    {
        queue.order.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

    fn tuple(local_port: u16, remote_port: u16) -> FourTuple {
        FourTuple {
            local: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), local_port),
            remote: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), remote_port),
        }
    }

    fn at(ms: i64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn counts_per_port_and_in_total() {
        let mut t = HalfOpen::default();
        t.insert(tuple(80, 1), at(0));
        t.insert(tuple(80, 2), at(1));
        t.insert(tuple(443, 1), at(2));
        t.insert(tuple(80, 1), at(3));
        assert_eq!((t.len(), t.on_port(80), t.on_port(443)), (3, 2, 1));
        assert!(t.remove(&tuple(80, 1)));
        assert!(!t.remove(&tuple(80, 1)));
        assert_eq!((t.len(), t.on_port(80), t.on_port(22)), (2, 1, 0));
    }

    #[test]
    fn evicts_the_oldest_of_all_or_of_a_port() {
        let mut t = HalfOpen::default();
        t.insert(tuple(80, 1), at(0));
        t.insert(tuple(443, 1), at(1));
        t.insert(tuple(80, 2), at(2));
        t.remove(&tuple(80, 1));
        assert_eq!(t.pop_oldest(None), Some(tuple(443, 1)));
        t.insert(tuple(443, 2), at(3));
        assert_eq!(t.pop_oldest(Some(443)), Some(tuple(443, 2)));
        assert_eq!(t.pop_oldest(Some(443)), None);
        assert_eq!(t.pop_oldest(None), Some(tuple(80, 2)));
        assert_eq!(t.pop_oldest(None), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn expires_in_order_of_arrival() {
        let mut t = HalfOpen::default();
        let timeout = Duration::from_secs(3);
        t.insert(tuple(80, 1), at(0));
        t.insert(tuple(81, 1), at(1000));
        assert_eq!(t.next_expiry(timeout), Some(at(3000)));
        assert_eq!(t.pop_expired(at(2999), timeout), None);
        assert_eq!(t.pop_expired(at(3500), timeout), Some(tuple(80, 1)));
        assert_eq!(t.pop_expired(at(3500), timeout), None);
        assert_eq!(t.pop_expired(at(4000), timeout), Some(tuple(81, 1)));
        assert_eq!(t.next_expiry(timeout), None);
    }

    #[test]
    fn a_tuple_back_after_leaving_is_a_new_entry() {
        let mut t = HalfOpen::default();
        t.insert(tuple(80, 1), at(0));
        t.insert(tuple(80, 2), at(1));
        t.remove(&tuple(80, 1));
        t.insert(tuple(80, 1), at(5));
        // The stale entry at 0 must not make the new one look old.
        assert_eq!(t.pop_oldest(Some(80)), Some(tuple(80, 2)));
        let timeout = Duration::from_secs(3);
        assert_eq!(
            t.pop_expired(at(3004), timeout),
            None,
            "the new entry started at 5 ms"
        );
        assert_eq!(t.pop_expired(at(3005), timeout), Some(tuple(80, 1)));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn queues_stay_within_twice_their_live_entries() {
        let mut t = HalfOpen::default();
        // One long-lived entry at the front; many that complete behind it.
        t.insert(tuple(80, 0), at(0));
        for i in 1..10_000u16 {
            t.insert(tuple(80, i), at(i64::from(i)));
            t.remove(&tuple(80, i));
            let queued = t.ports.get(&80).map_or(0, |q| q.order.len());
            assert!(queued <= 2 * t.on_port(80) + SLACK + 1, "{queued} queued");
        }
        assert_eq!(t.len(), 1);
    }
}
