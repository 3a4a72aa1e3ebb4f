//! The half-open table: handshakes in progress on our listeners, oldest first.
//!
//! Owns [`HalfOpen`]: which four-tuples have a connection in SYN-RECEIVED,
//! since when, and whether their SYN was a first attempt or the
//! retransmission of a SYN we dropped ([`Attempt`]). Counting, admission,
//! eviction of the oldest and expiry cost O(1) amortized, never a scan of
//! the connections: entries wait in one queue per kind of attempt in
//! arrival order; an entry that leaves early (its handshake completed, its
//! connection was dropped) is only forgotten in the index, then skipped at
//! the front or compacted away, so each queue stays within twice its live
//! entries. Eviction takes the oldest first attempt, and a retransmission
//! only when no first attempt is left: spoofed SYNs are not retransmitted,
//! so under a flood the handshakes of clients that retried are kept. It
//! never touches a socket: the stack drops the connections it names.

use std::collections::{HashMap, VecDeque};

use smoltcp::time::{Duration, Instant};

use crate::segment::FourTuple;

/// Stale entries a queue may hold beyond twice its live ones before it is
/// compacted.
const SLACK: usize = 32;

/// What kind of SYN started a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attempt {
    /// A SYN we had not dropped before.
    First,
    /// A retransmission of a SYN we dropped unanswered.
    Retry,
}

impl Attempt {
    fn index(self) -> usize {
        match self {
            Attempt::First => 0,
            Attempt::Retry => 1,
        }
    }
}

/// Handshakes in progress, by arrival.
#[derive(Debug, Default)]
pub(super) struct HalfOpen {
    /// Arrival order, per kind of attempt.
    order: [VecDeque<Entry>; 2],
    /// Live entries per kind of attempt.
    counts: [usize; 2],
    /// Live entries: tuple -> serial of its entry, and its queue.
    live: HashMap<FourTuple, (u64, Attempt)>,
    next_serial: u64,
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

    /// `tuple` has a handshake in progress.
    pub(super) fn contains(&self, tuple: &FourTuple) -> bool {
        self.live.contains_key(tuple)
    }

    /// A handshake on `tuple` started at `now` (no-op if one is known).
    pub(super) fn insert(&mut self, tuple: FourTuple, now: Instant, attempt: Attempt) {
        if self.live.contains_key(&tuple) {
            return;
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        self.live.insert(tuple, (serial, attempt));
        self.counts[attempt.index()] += 1;
        self.order[attempt.index()].push_back(Entry {
            serial,
            tuple,
            since: now,
        });
    }

    /// The handshake on `tuple` ended (completed or dropped). Returns
    /// whether it was in progress.
    pub(super) fn remove(&mut self, tuple: &FourTuple) -> bool {
        let Some((_, attempt)) = self.live.remove(tuple) else {
            return false;
        };
        let i = attempt.index();
        self.counts[i] -= 1;
        let live = &self.live;
        let queue = &mut self.order[i];
        if queue.len() > 2 * self.counts[i] + SLACK {
            queue.retain(|e| is_live(live, e));
        }
        while queue.front().is_some_and(|e| !is_live(live, e)) {
            queue.pop_front();
        }
        true
    }

    /// Removes and returns the oldest first attempt, or the oldest
    /// retransmission when no first attempt is left or retransmissions hold
    /// half the table or more (a false positive of the retry filter must
    /// not crowd out first attempts).
    pub(super) fn pop_oldest(&mut self) -> Option<FourTuple> {
        let retries_first = self.counts[1] * 2 >= self.len();
        let [first, retry] = &self.order;
        let oldest = if retries_first {
            retry.front().or_else(|| first.front())
        } else {
            first.front().or_else(|| retry.front())
        }
        .copied()?;
        self.remove(&oldest.tuple);
        Some(oldest.tuple)
    }

    /// Removes and returns the oldest handshake of either kind if it started
    /// `timeout` or longer before `now`.
    pub(super) fn pop_expired(&mut self, now: Instant, timeout: Duration) -> Option<FourTuple> {
        let oldest = self.oldest()?;
        if now < oldest.since + timeout {
            return None;
        }
        self.remove(&oldest.tuple);
        Some(oldest.tuple)
    }

    /// When the oldest handshake expires.
    pub(super) fn next_expiry(&self, timeout: Duration) -> Option<Instant> {
        self.oldest().map(|e| e.since + timeout)
    }

    /// The oldest entry of both queues (their fronts are always live).
    fn oldest(&self) -> Option<Entry> {
        self.order
            .iter()
            .filter_map(|q| q.front().copied())
            .min_by_key(|e| e.serial)
    }
}

fn is_live(live: &HashMap<FourTuple, (u64, Attempt)>, entry: &Entry) -> bool {
    live.get(&entry.tuple)
        .is_some_and(|(serial, _)| *serial == entry.serial)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::Attempt::{First, Retry};
    use super::*;

    fn tuple(local_port: u16, remote_port: u16) -> FourTuple {
        FourTuple {
            local: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), local_port).into(),
            remote: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), remote_port).into(),
        }
    }

    fn at(ms: i64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn counts_live_handshakes() {
        let mut t = HalfOpen::default();
        t.insert(tuple(80, 1), at(0), First);
        t.insert(tuple(80, 2), at(1), Retry);
        t.insert(tuple(443, 1), at(2), First);
        t.insert(tuple(80, 1), at(3), Retry);
        assert_eq!(t.len(), 3);
        assert!(t.remove(&tuple(80, 1)));
        assert!(!t.remove(&tuple(80, 1)));
        assert!(!t.contains(&tuple(80, 1)) && t.contains(&tuple(80, 2)));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn evicts_the_oldest_first_attempt_before_any_retry() {
        let mut t = HalfOpen::default();
        t.insert(tuple(80, 1), at(0), Retry);
        t.insert(tuple(80, 2), at(1), First);
        t.insert(tuple(443, 1), at(2), First);
        t.insert(tuple(80, 3), at(3), First);
        t.insert(tuple(80, 4), at(4), First);
        t.remove(&tuple(80, 2));
        assert_eq!(t.pop_oldest(), Some(tuple(443, 1)));
        assert_eq!(t.pop_oldest(), Some(tuple(80, 3)));
        assert_eq!(
            t.pop_oldest(),
            Some(tuple(80, 1)),
            "a retry holding half goes"
        );
        assert_eq!(t.pop_oldest(), Some(tuple(80, 4)));
        assert_eq!(t.pop_oldest(), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn retries_holding_half_the_table_are_evicted_first() {
        let mut t = HalfOpen::default();
        t.insert(tuple(80, 1), at(0), First);
        t.insert(tuple(80, 2), at(1), Retry);
        t.insert(tuple(80, 3), at(2), Retry);
        assert_eq!(t.pop_oldest(), Some(tuple(80, 2)));
        assert_eq!(t.pop_oldest(), Some(tuple(80, 3)), "one of two is half");
        assert_eq!(t.pop_oldest(), Some(tuple(80, 1)));
    }

    #[test]
    fn expires_in_order_of_arrival_of_either_kind() {
        let mut t = HalfOpen::default();
        let timeout = Duration::from_secs(3);
        t.insert(tuple(80, 1), at(0), Retry);
        t.insert(tuple(81, 1), at(1000), First);
        assert_eq!(t.next_expiry(timeout), Some(at(3000)));
        assert_eq!(t.pop_expired(at(2999), timeout), None);
        assert_eq!(t.pop_expired(at(3500), timeout), Some(tuple(80, 1)));
        assert_eq!(t.pop_expired(at(3500), timeout), None);
        assert_eq!(t.next_expiry(timeout), Some(at(4000)));
        assert_eq!(t.pop_expired(at(4000), timeout), Some(tuple(81, 1)));
        assert_eq!(t.next_expiry(timeout), None);
    }

    #[test]
    fn a_tuple_back_after_leaving_is_a_new_entry() {
        let mut t = HalfOpen::default();
        let timeout = Duration::from_secs(3);
        t.insert(tuple(80, 1), at(0), First);
        t.insert(tuple(80, 2), at(1), First);
        t.remove(&tuple(80, 1));
        t.insert(tuple(80, 1), at(5), First);
        // The stale entry at 0 must not make the new one look old.
        assert_eq!(t.pop_oldest(), Some(tuple(80, 2)));
        assert_eq!(t.next_expiry(timeout), Some(at(3005)));
        assert_eq!(t.pop_expired(at(3004), timeout), None);
        assert_eq!(t.pop_expired(at(3005), timeout), Some(tuple(80, 1)));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn queues_stay_within_twice_their_live_entries() {
        let mut t = HalfOpen::default();
        // One long-lived entry at the front; many that complete behind it.
        t.insert(tuple(80, 0), at(0), First);
        for i in 1..10_000u16 {
            t.insert(tuple(80, i), at(i64::from(i)), First);
            t.remove(&tuple(80, i));
            let queued = t.order[0].len();
            assert!(queued <= 2 * t.len() + SLACK + 1, "{queued} queued");
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.next_expiry(Duration::from_secs(1)), Some(at(1000)));
    }
}
