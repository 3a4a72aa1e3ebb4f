//! Local ports for the connections the stack opens: random in the
//! ephemeral range, never one in use, and never one used recently (a resume
//! must not land on a 4-tuple the peer may hold in TIME-WAIT). Owns only
//! the memory of recent ports; it knows nothing of connections.

use std::collections::{HashSet, VecDeque};

use rand::Rng;

/// Ports remembered as recently used.
const RECENT_PORTS: usize = 8192;
/// The ephemeral range (RFC 6335).
const EPHEMERAL: std::ops::RangeInclusive<u16> = 49152..=65535;

/// Hands out fresh local ports.
#[derive(Debug, Default)]
pub(super) struct Ports {
    recent: VecDeque<u16>,
    recent_set: HashSet<u16>,
}

impl Ports {
    /// A random ephemeral port that is not `in_use` and was not
    /// handed out among the last [`RECENT_PORTS`]; after 1024 misses, any
    /// random one (the range is nearly exhausted).
    pub(super) fn fresh(&mut self, rng: &mut impl Rng, in_use: impl Fn(u16) -> bool) -> u16 {
        for _ in 0..1024 {
            let port = rng.random_range(EPHEMERAL);
            if !in_use(port) && !self.recent_set.contains(&port) {
                self.remember(port);
                return port;
            }
        }
        rng.random_range(EPHEMERAL)
    }

    fn remember(&mut self, port: u16) {
        self.recent.push_back(port);
        self.recent_set.insert(port);
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

    #[test]
    fn a_port_is_not_handed_out_again_while_recent() {
        let mut ports = Ports::default();
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = HashSet::new();
        for _ in 0..RECENT_PORTS {
            assert!(seen.insert(ports.fresh(&mut rng, |_| false)));
        }
    }

    #[test]
    fn a_port_in_use_is_never_handed_out() {
        let mut ports = Ports::default();
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..1000 {
            let port = ports.fresh(&mut rng, |p| p.is_multiple_of(2));
            assert_eq!(port % 2, 1);
        }
    }
}
