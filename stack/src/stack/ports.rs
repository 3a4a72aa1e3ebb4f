//! Local ports for the connections the stack opens: random in the
//! ephemeral range, never one in use or listened on, and not one used
//! recently while another is free (a resume must not land on a 4-tuple the
//! peer may hold in TIME-WAIT).
//!
//! Owns [`Ports`]: which local ports the stack's connections hold (a
//! reference count per port, kept by the stack as connections come and
//! go), which ports it listens on, and the memory of recent ports. Handing
//! out a port never looks at the connections: random probes against those
//! sets find a free port in O(1) expected while the range is not nearly
//! exhausted; past [`PROBES`] misses a bounded walk of the range (at most
//! its size, whatever the number of connections) finds one if any is left;
//! and when every port of the range is held, [`NoFreePort`] says so
//! instead of handing out a port in use.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::RangeInclusive;

use rand::Rng;

/// Ports remembered as recently used.
const RECENT_PORTS: usize = 8192;
/// Random probes before walking the range.
const PROBES: usize = 64;

/// Every port of the ephemeral range is held by a connection or a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NoFreePort {
    /// Ports in the range.
    pub(super) ports: u32,
}

/// Hands out fresh local ports and knows which are taken.
#[derive(Debug)]
pub(super) struct Ports {
    range: RangeInclusive<u16>,
    /// Connections holding each local port (any port, in the range or not).
    in_use: HashMap<u16, u32>,
    /// Ports listened on.
    listening: HashSet<u16>,
    /// Ports of the range in use or listened on.
    taken: u32,
    recent: VecDeque<u16>,
    recent_set: HashSet<u16>,
}

impl Ports {
    /// Shrinks the tables to what they hold.
    pub(super) fn shrink_to_fit(&mut self) {
        self.in_use.shrink_to_fit();
        self.recent.shrink_to_fit();
        self.recent_set.shrink_to_fit();
    }

    /// No port taken; ports are handed out of `range`.
    pub(super) fn new(range: RangeInclusive<u16>) -> Ports {
        Ports {
            range,
            in_use: HashMap::new(),
            listening: HashSet::new(),
            taken: 0,
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
        }
    }

    /// Ports in the range.
    pub(super) fn size(&self) -> u32 {
        if self.range.is_empty() {
            0
        } else {
            u32::from(*self.range.end()) - u32::from(*self.range.start()) + 1
        }
    }

    /// A connection now holds `port` locally.
    pub(super) fn acquire(&mut self, port: u16) {
        let free = self.is_free(port);
        *self.in_use.entry(port).or_insert(0) += 1;
        if free && self.range.contains(&port) {
            self.taken += 1;
        }
    }

    /// A connection no longer holds `port` (one release per acquire).
    pub(super) fn release(&mut self, port: u16) {
        let Some(count) = self.in_use.get_mut(&port) else {
            debug_assert!(false, "port {port} released but not held");
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.in_use.remove(&port);
            if self.is_free(port) && self.range.contains(&port) {
                self.taken -= 1;
            }
        }
    }

    /// The stack now listens on `port`: it is never handed out.
    pub(super) fn listen(&mut self, port: u16) {
        let free = self.is_free(port);
        if self.listening.insert(port) && free && self.range.contains(&port) {
            self.taken += 1;
        }
    }

    /// The stack no longer listens on `port`.
    pub(super) fn unlisten(&mut self, port: u16) {
        if self.listening.remove(&port) && self.is_free(port) && self.range.contains(&port) {
            self.taken -= 1;
        }
    }

    /// Connections holding `port`.
    #[cfg(test)]
    pub(super) fn holders(&self, port: u16) -> u32 {
        self.in_use.get(&port).copied().unwrap_or(0)
    }

    /// A random port of the range that is neither in use nor listened on
    /// and was not handed out among the last [`RECENT_PORTS`]; O(1)
    /// expected. When [`PROBES`] random probes miss (the range is nearly
    /// exhausted), a walk of the range from a random point takes the first
    /// such port, or, as the last resort, the first port that is free but
    /// was used recently (better a recent port than no connection: only
    /// then may a resume meet a tuple the peer still holds in TIME-WAIT).
    /// Fails only when every port of the range is in use or listened on.
    pub(super) fn fresh(&mut self, rng: &mut impl Rng) -> Result<u16, NoFreePort> {
        let size = self.size();
        if self.taken >= size {
            return Err(NoFreePort { ports: size });
        }
        for _ in 0..PROBES {
            let port = rng.random_range(self.range.clone());
            if self.is_free(port) && !self.recent_set.contains(&port) {
                self.remember(port);
                return Ok(port);
            }
        }
        let (start, first) = (u32::from(*self.range.start()), rng.random_range(0..size));
        let mut recent_free = None;
        for i in 0..size {
            let Ok(port) = u16::try_from(start + (first + i) % size) else {
                continue;
            };
            if !self.is_free(port) {
                continue;
            }
            if !self.recent_set.contains(&port) {
                self.remember(port);
                return Ok(port);
            }
            recent_free.get_or_insert(port);
        }
        match recent_free {
            Some(port) => {
                self.remember(port);
                Ok(port)
            }
            // Unreachable while `taken` is right: it said a port is free.
            None => Err(NoFreePort { ports: size }),
        }
    }

    fn is_free(&self, port: u16) -> bool {
        !self.in_use.contains_key(&port) && !self.listening.contains(&port)
    }

    fn remember(&mut self, port: u16) {
        if self.recent_set.insert(port) {
            self.recent.push_back(port);
        }
        if self.recent.len() > RECENT_PORTS
            && let Some(old) = self.recent.pop_front()
        {
            self.recent_set.remove(&old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const EPHEMERAL: RangeInclusive<u16> = 49152..=65535;

    #[test]
    fn a_port_is_not_handed_out_again_while_recent() {
        let mut ports = Ports::new(EPHEMERAL);
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = HashSet::new();
        for _ in 0..RECENT_PORTS {
            assert!(seen.insert(ports.fresh(&mut rng).expect("free")));
        }
    }

    #[test]
    fn a_port_in_use_or_listened_on_is_never_handed_out() {
        let mut ports = Ports::new(EPHEMERAL);
        let mut rng = StdRng::seed_from_u64(2);
        for port in EPHEMERAL.step_by(2) {
            ports.acquire(port);
        }
        ports.listen(49153);
        for _ in 0..1000 {
            let port = ports.fresh(&mut rng).expect("free");
            assert_eq!(port % 2, 1);
            assert_ne!(port, 49153);
        }
    }

    #[test]
    fn the_walk_finds_the_last_free_port() {
        let mut ports = Ports::new(EPHEMERAL);
        let mut rng = StdRng::seed_from_u64(3);
        for port in EPHEMERAL {
            if port != 60_000 {
                ports.acquire(port);
            }
        }
        assert_eq!(ports.fresh(&mut rng), Ok(60_000));
        // Now it is the last free port and recent: the last resort.
        assert_eq!(ports.fresh(&mut rng), Ok(60_000));
    }

    #[test]
    fn a_full_range_is_an_error_and_releases_make_room() {
        let mut ports = Ports::new(1000..=1015);
        let mut rng = StdRng::seed_from_u64(4);
        let mut held = Vec::new();
        for _ in 0..15 {
            let port = ports.fresh(&mut rng).expect("free");
            assert!(!held.contains(&port));
            ports.acquire(port);
            held.push(port);
        }
        ports.listen(5000);
        let last = ports.fresh(&mut rng).expect("one left");
        ports.listen(last);
        assert_eq!(ports.fresh(&mut rng), Err(NoFreePort { ports: 16 }));
        // A port held twice is free only after both releases.
        ports.acquire(held[0]);
        ports.release(held[0]);
        assert_eq!(ports.fresh(&mut rng), Err(NoFreePort { ports: 16 }));
        ports.release(held[0]);
        assert_eq!(ports.holders(held[0]), 0);
        assert_eq!(ports.fresh(&mut rng), Ok(held[0]));
        ports.unlisten(last);
        ports.acquire(held[0]);
        assert_eq!(ports.fresh(&mut rng), Ok(last));
    }

    #[test]
    fn ports_outside_the_range_do_not_count() {
        let mut ports = Ports::new(1000..=1000);
        let mut rng = StdRng::seed_from_u64(5);
        ports.acquire(80);
        ports.listen(443);
        assert_eq!(ports.fresh(&mut rng), Ok(1000));
        ports.release(80);
        ports.unlisten(443);
        ports.acquire(1000);
        assert_eq!(ports.fresh(&mut rng), Err(NoFreePort { ports: 1 }));
    }

    #[test]
    fn an_empty_range_has_no_port() {
        #[allow(clippy::reversed_empty_ranges)]
        let mut ports = Ports::new(2000..=1000);
        let mut rng = StdRng::seed_from_u64(6);
        assert_eq!(ports.fresh(&mut rng), Err(NoFreePort { ports: 0 }));
    }

    #[test]
    fn the_common_case_probes_once_or_twice() {
        // O(1): with half the range held, few probes are needed. Counted
        // through the RNG: each probe draws once.
        let mut ports = Ports::new(EPHEMERAL);
        for port in EPHEMERAL.step_by(2) {
            ports.acquire(port);
        }
        let mut rng = CountingRng(StdRng::seed_from_u64(7), 0);
        for _ in 0..1000 {
            let port = ports.fresh(&mut rng).expect("free");
            ports.acquire(port);
            ports.release(port);
        }
        assert!(rng.1 < 4000, "{} draws for 1000 ports", rng.1);
    }

    struct CountingRng(StdRng, u64);

    impl rand::RngCore for CountingRng {
        fn next_u32(&mut self) -> u32 {
            self.1 += 1;
            self.0.next_u32()
        }
        fn next_u64(&mut self) -> u64 {
            self.1 += 1;
            self.0.next_u64()
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            self.1 += 1;
            self.0.fill_bytes(dst);
        }
    }
}
