//! New SYNs waiting for their turn, and a memory of the ones dropped.
//!
//! Owns [`SynQueue`] (new SYNs for our listeners, read from the device but
//! not yet inspected: a bounded queue, retransmissions of dropped SYNs
//! first, the oldest ordinary SYN dropped when full) and [`RetryFilter`]
//! (which four-tuples had a SYN dropped in the last seconds: two rotating
//! Bloom filters of fixed size). Together they keep a SYN flood from
//! starving legitimate clients when SYNs arrive faster than the stack can
//! answer them: a client whose first SYN was dropped retransmits it about a
//! second later, and that retransmission jumps the queue; spoofed SYNs are
//! not retransmitted. Memory is fixed whatever arrives. Never inspects a
//! packet: the stack classifies them.

use std::collections::VecDeque;

use smoltcp::time::{Duration, Instant};

use crate::segment::FourTuple;

/// Most SYNs waiting.
const QUEUE_LIMIT: usize = 1024;

/// New SYNs waiting to be inspected, retransmissions first.
#[derive(Debug, Default)]
pub(super) struct SynQueue {
    retried: VecDeque<(FourTuple, Vec<u8>)>,
    fresh: VecDeque<(FourTuple, Vec<u8>)>,
}

impl SynQueue {
    /// SYNs waiting.
    pub(super) fn len(&self) -> usize {
        self.retried.len() + self.fresh.len()
    }

    /// No SYN waits.
    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a SYN (`retried`: its tuple had a SYN dropped recently). When
    /// full, drops the oldest first-time SYN (or, with none left, the
    /// oldest retransmission, or this one if it is a first-time SYN) and
    /// returns it.
    pub(super) fn push(
        &mut self,
        tuple: FourTuple,
        packet: Vec<u8>,
        retried: bool,
    ) -> Option<(FourTuple, Vec<u8>)> {
        let dropped = if self.len() < QUEUE_LIMIT {
            None
        } else if let Some(oldest) = self.fresh.pop_front() {
            Some(oldest)
        } else if retried {
            self.retried.pop_front()
        } else {
            return Some((tuple, packet));
        };
        if retried {
            self.retried.push_back((tuple, packet));
        } else {
            self.fresh.push_back((tuple, packet));
        }
        dropped
    }

    /// The next SYN to inspect: retransmissions first, oldest first.
    pub(super) fn pop(&mut self) -> Option<(FourTuple, Vec<u8>)> {
        self.retried.pop_front().or_else(|| self.fresh.pop_front())
    }
}

/// Bits in each of the two filters (2 MiB each, committed at the first
/// drop).
const FILTER_BITS: usize = 1 << 24;
/// Each filter's lifetime: a tuple is remembered for two to four seconds,
/// past a client's first SYN retransmission (1 s) and its second (3 s).
const GENERATION: Duration = Duration::from_secs(2);

/// Four-tuples whose SYN was dropped in the last seconds (false positives
/// possible: about 0.1% of tuples at 300,000 drops a second; no false
/// negatives while remembered).
#[derive(Debug)]
pub(super) struct RetryFilter {
    /// Bitsets, allocated at the first drop; `current` takes new entries.
    generations: [Vec<u64>; 2],
    current: usize,
    started: Instant,
    keys: [u64; 2],
}

impl RetryFilter {
    /// An empty filter; `keys` (random) make its hashing unpredictable.
    pub(super) fn new(keys: [u64; 2], now: Instant) -> RetryFilter {
        RetryFilter {
            generations: [Vec::new(), Vec::new()],
            current: 0,
            started: now,
            keys,
        }
    }

    /// Remembers that a SYN on `tuple` was dropped at `now`.
    pub(super) fn insert(&mut self, tuple: &FourTuple, now: Instant) {
        self.rotate(now);
        let bits = self.positions(tuple);
        let filter = &mut self.generations[self.current];
        if filter.is_empty() {
            filter.resize(FILTER_BITS / 64, 0);
        }
        for bit in bits {
            filter[bit / 64] |= 1 << (bit % 64);
        }
    }

    /// A SYN on `tuple` was dropped recently.
    pub(super) fn contains(&mut self, tuple: &FourTuple, now: Instant) -> bool {
        self.rotate(now);
        let bits = self.positions(tuple);
        self.generations.iter().any(|filter| {
            !filter.is_empty()
                && bits
                    .iter()
                    .all(|bit| filter[bit / 64] & (1 << (bit % 64)) != 0)
        })
    }

    fn rotate(&mut self, now: Instant) {
        if now < self.started + GENERATION {
            return;
        }
        if now >= self.started + GENERATION + GENERATION {
            for filter in &mut self.generations {
                filter.fill(0);
            }
            self.started = now;
        } else {
            self.current ^= 1;
            self.generations[self.current].fill(0);
            self.started += GENERATION;
        }
    }

    /// Three bit positions of `tuple`: keyed folded multiplies (as in
    /// wyhash) of the tuple's 96 bits (IPv6 addresses folded to 64).
    fn positions(&self, tuple: &FourTuple) -> [usize; 3] {
        let a = ip_word(tuple.remote.ip()).rotate_left(32)
            ^ (u64::from(tuple.remote.port()) << 16)
            ^ u64::from(tuple.local.port());
        let b = ip_word(tuple.local.ip());
        let h1 = fold_mul(a ^ self.keys[0], b ^ self.keys[1]);
        let h2 = fold_mul(h1 ^ self.keys[1], a ^ 0x9e37_79b9_7f4a_7c15);
        let mask = FILTER_BITS as u64 - 1;
        [
            (h1 & mask) as usize,
            (h2 & mask) as usize,
            ((h2 >> 32) & mask) as usize,
        ]
    }
}

fn fold_mul(x: u64, y: u64) -> u64 {
    let product = u128::from(x) * u128::from(y);
    (product as u64) ^ ((product >> 64) as u64)
}

/// An address as one word: IPv4 as is, IPv6 with its halves folded.
fn ip_word(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(v4) => u64::from(u32::from(v4)),
        std::net::IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            ((bits >> 64) as u64) ^ (bits as u64).rotate_left(17)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

    fn tuple(n: u32) -> FourTuple {
        FourTuple {
            local: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80).into(),
            remote: SocketAddrV4::new(Ipv4Addr::from(0x0a07_0000 + (n >> 16)), n as u16).into(),
        }
    }

    fn at(ms: i64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn retransmissions_go_first_and_a_full_queue_drops_the_oldest_fresh() {
        let mut q = SynQueue::default();
        for n in 0..QUEUE_LIMIT as u32 {
            assert_eq!(q.push(tuple(n), vec![], false), None);
        }
        let dropped = q.push(tuple(9999), vec![], true);
        assert_eq!(dropped.map(|d| d.0), Some(tuple(0)));
        let dropped = q.push(tuple(10_000), vec![], false);
        assert_eq!(dropped.map(|d| d.0), Some(tuple(1)));
        assert_eq!(q.len(), QUEUE_LIMIT);
        assert_eq!(q.pop().map(|p| p.0), Some(tuple(9999)));
        assert_eq!(q.pop().map(|p| p.0), Some(tuple(2)));
    }

    #[test]
    fn a_queue_of_retransmissions_drops_the_oldest_one_or_a_fresh_syn() {
        let mut q = SynQueue::default();
        for n in 0..QUEUE_LIMIT as u32 {
            q.push(tuple(n), vec![], true);
        }
        let dropped = q.push(tuple(5000), vec![], false);
        assert_eq!(dropped.map(|d| d.0), Some(tuple(5000)));
        let dropped = q.push(tuple(5001), vec![], true);
        assert_eq!(dropped.map(|d| d.0), Some(tuple(0)));
        assert_eq!(q.len(), QUEUE_LIMIT);
    }

    #[test]
    fn the_filter_remembers_for_two_to_four_seconds() {
        let mut f = RetryFilter::new([1, 2], at(0));
        assert!(!f.contains(&tuple(7), at(0)));
        f.insert(&tuple(7), at(1999));
        assert!(f.contains(&tuple(7), at(1999)));
        assert!(f.contains(&tuple(7), at(3000)), "one rotation later");
        assert!(f.contains(&tuple(7), at(3999)));
        assert!(!f.contains(&tuple(7), at(4000)), "two rotations later");
        f.insert(&tuple(8), at(4000));
        assert!(!f.contains(&tuple(8), at(10_000)), "long idle: forgotten");
    }

    #[test]
    fn the_filter_has_few_false_positives_under_a_flood() {
        let mut f = RetryFilter::new([0x1234_5678, 0x9abc_def0], at(0));
        // Two seconds of 300,000 drops a second in each generation.
        for n in 0..600_000 {
            f.insert(&tuple(n), at(0));
        }
        for n in 600_000..1_200_000 {
            f.insert(&tuple(n), at(2000));
        }
        let false_positives = (2_000_000..2_100_000)
            .filter(|&n| f.contains(&tuple(n), at(2000)))
            .count();
        assert!(false_positives < 300, "{false_positives} of 100,000");
        assert!((0..1000).all(|n| f.contains(&tuple(n), at(0))));
    }
}
