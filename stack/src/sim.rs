//! Deterministic simulation: stacks over an in-memory [`Network`] in virtual time.
//!
//! Owns [`Sim`]: a virtual clock, the network and the hosts on it. Each
//! [`Sim::step`] polls every host at the current virtual time, then jumps the
//! clock to the earliest next deadline (a host timer or a packet arrival).
//! Used by the simulation tests and the benches; no real time is involved,
//! so a run is a pure function of its seeds.

use std::net::Ipv4Addr;

use smoltcp::time::{Duration, Instant};

use crate::config::StackConfig;
use crate::device::link::{LinkDevice, Network, Side};
use crate::stack::Stack;

/// A host in the simulation.
pub type SimStack = Stack<LinkDevice>;

/// Stacks on a network, in virtual time.
pub struct Sim {
    /// The network (and its middlebox).
    pub net: Network,
    /// The hosts, in the order they were added.
    pub hosts: Vec<SimStack>,
    now: Instant,
    steps: u64,
    steps_at_now: u32,
}

/// Largest jump of the virtual clock in one step, so hosts are polled at
/// least this often.
const MAX_JUMP: Duration = Duration::from_millis(100);
/// Polls at one virtual instant before the clock is forced forward.
const MAX_STEPS_AT_ONE_TIME: u32 = 64;

impl Sim {
    /// An empty simulation on `net`, at time zero.
    pub fn new(net: Network) -> Sim {
        Sim {
            net,
            hosts: Vec::new(),
            now: Instant::from_millis(0),
            steps: 0,
            steps_at_now: 0,
        }
    }

    /// Adds a host on `side` with `config` (its address is routed to it).
    /// Returns its index.
    pub fn add_host(&mut self, side: Side, config: StackConfig) -> usize {
        let device = self.net.endpoint(side, &[config.address]);
        self.hosts.push(Stack::new(config, device, self.now));
        self.hosts.len() - 1
    }

    /// Moves host `index` to a new address (and reroutes it).
    pub fn move_host(&mut self, index: usize, address: Ipv4Addr) {
        let now = self.now;
        let host = &mut self.hosts[index];
        host.device().set_addresses(&[address]);
        let prefix = host.config().prefix_len;
        host.set_address(now, address, prefix);
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Polls every host once, then advances the clock to the next deadline.
    pub fn step(&mut self) {
        self.steps += 1;
        let now = self.now;
        for host in &mut self.hosts {
            host.poll(now);
        }
        let mut next = now + MAX_JUMP;
        for host in &mut self.hosts {
            next = next.min(host.poll_at(now));
        }
        // Only the hosts' own arrivals move the clock: packets waiting for a
        // raw endpoint that a test reads by hand must not pin it in place.
        for host in &self.hosts {
            if let Some(arrival) = host.device().next_arrival() {
                next = next.min(arrival);
            }
        }
        if next <= now && self.steps_at_now < MAX_STEPS_AT_ONE_TIME {
            // Something is ready right now: poll again without moving time.
            self.steps_at_now += 1;
        } else {
            self.steps_at_now = 0;
            self.now = next.max(now + Duration::from_micros(1));
        }
    }

    /// Steps until `done` holds or `limit` of virtual time passes (or a
    /// bounded number of steps). Returns whether `done` held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Sim) -> bool) -> bool {
        let deadline = self.now + limit;
        let max_steps = self.steps + 50_000_000;
        while self.now < deadline && self.steps < max_steps {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// Steps for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        self.run_until(duration, |_| false);
    }
}
