//! In-memory network with a virtual clock and a programmable middlebox.
//!
//! Owns [`Network`]: the shared state of every endpoint ([`LinkDevice`], a
//! smoltcp [`Device`](smoltcp::phy::Device) with
//! [`Medium::Ip`](smoltcp::phy::Medium::Ip) carrying raw IPv4 packets), the
//! per-direction bottleneck queues, and one middlebox between side
//! [`Side::A`] ("inside", clients) and side [`Side::B`] ("outside", servers)
//! with its tables: blackholes, drop rules, stateful firewall, NAT,
//! connection tracker (for RST injection) and option stripping. It also owns
//! the counters ([`LinkStats`]) and the capture ([`CapturedPacket`]).
//!
//! The path of a packet an endpoint sends at `now`:
//!
//! ```text
//! MTU check -> random loss -> middlebox (decides at `now`) -> route to the
//! other side -> bottleneck queue (rate, queue limit) -> one-way delay -> inbox
//! ```
//!
//! Inside the middlebox, in order: blackhole; drop rules (they see the segment
//! as it entered); firewall and NAT (A->B: firewall then NAT, B->A: NAT then
//! firewall, so the firewall always sees side A's own addresses); connection
//! tracking; option stripping; checksum repair. Only unfragmented TCP is
//! inspected: other IPv4 traffic crosses untouched (not NATed, not filtered),
//! and anything that is not a well-formed IPv4 packet (IPv6, truncated,
//! garbage) is dropped as [`DropReason::Malformed`].
//!
//! The clock is the caller's: every method that depends on time takes `now`,
//! and [`Network::next_event`] / [`LinkDevice::next_arrival`] tell a
//! simulation loop where to jump. Randomness comes from one seeded
//! [`StdRng`]; tables that are iterated are ordered maps. Same seed and same
//! calls, same run.
//!
//! This module must never read a wall clock, spawn a thread, use an unseeded
//! random source, compute a checksum by hand, or panic on packet bytes.
//! It is single-threaded (`Rc<RefCell<_>>`): the predicates given to
//! [`Network::drop_matching`] run while the network is borrowed and must not
//! call back into it.
//!
//! Layout: `types` holds the configuration and the small public
//! types; `endpoint` the endpoints and [`LinkDevice`]; `lanes` the
//! bottleneck queues, the delay and the inboxes; `middlebox` the
//! middlebox's tables and verdict; `packet` the byte work (parsing through
//! [`crate::segment`], rewriting, RST forging). This file wires them into
//! the path above.

mod endpoint;
mod lanes;
mod middlebox;
mod packet;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
mod types;

use std::cell::RefCell;
use std::fmt;
use std::net::Ipv4Addr;
use std::rc::Rc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use smoltcp::time::{Duration, Instant};

pub use self::endpoint::{LinkDevice, LinkRxToken, LinkTxToken};
pub use self::middlebox::NAT_FIRST_PORT;
pub use self::types::{
    CapturePoint, CapturedPacket, Direction, DropReason, EndpointId, Fate, LinkConfig, LinkStats,
    SegmentInfo, Side, TcpFlags, TrackedConnection,
};
/// The two ends of a connection: the stack's own [`crate::segment::FourTuple`]
/// (`local` is the end whose view it is).
pub use crate::segment::FourTuple;

use self::endpoint::Endpoint;
use self::lanes::{InFlight, Inbox, Lane};
use self::middlebox::Middlebox;
use self::packet::ipv4_dst;

/// An in-memory network: endpoints on two sides of one programmable
/// middlebox, in virtual time. Cloning gives another handle to the same
/// network.
#[derive(Clone)]
pub struct Network {
    state: Rc<RefCell<State>>,
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state.try_borrow() {
            Ok(state) => f
                .debug_struct("Network")
                .field("config", &state.config)
                .field("endpoints", &state.endpoints.len())
                .field("stats", &state.stats)
                .finish_non_exhaustive(),
            Err(_) => f.write_str("Network { <borrowed> }"),
        }
    }
}

impl Network {
    /// A network with no endpoints and a transparent middlebox.
    pub fn new(config: LinkConfig) -> Network {
        Network {
            state: Rc::new(RefCell::new(State {
                config,
                rng: StdRng::seed_from_u64(config.seed),
                endpoints: Vec::new(),
                lanes: [Lane::default(), Lane::default()],
                mb: Middlebox::new(),
                stats: LinkStats::default(),
                capture_leaving: false,
                capture_entering: false,
                captured: Vec::new(),
            })),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> LinkConfig {
        self.state.borrow().config
    }

    /// Changes the random loss probability from now on.
    pub fn set_loss(&self, loss: f64) {
        self.state.borrow_mut().config.loss = loss;
    }

    /// Changes the one-way delay of packets sent from now on.
    pub fn set_one_way_delay(&self, delay: Duration) {
        self.state.borrow_mut().config.one_way_delay = delay;
    }

    /// Adds an endpoint on `side` owning `addrs`. When two endpoints of a
    /// side own an address, the older one receives.
    pub fn endpoint(&self, side: Side, addrs: &[Ipv4Addr]) -> LinkDevice {
        let mut state = self.state.borrow_mut();
        let id = EndpointId(state.endpoints.len());
        state.endpoints.push(Endpoint {
            side,
            addrs: addrs.to_vec(),
            inbox: Inbox::default(),
        });
        LinkDevice {
            net: self.clone(),
            id,
            side,
        }
    }

    /// Replaces the addresses of endpoint `id`. Packets already in flight to
    /// an address it gives up are dropped on arrival ([`DropReason::NoRoute`]).
    pub fn set_addresses(&self, id: EndpointId, addrs: &[Ipv4Addr]) {
        if let Some(endpoint) = self.state.borrow_mut().endpoints.get_mut(id.0) {
            tracing::debug!(endpoint = id.0, ?addrs, "link: addresses changed");
            endpoint.addrs = addrs.to_vec();
        }
    }

    /// The addresses of endpoint `id`.
    pub fn addresses(&self, id: EndpointId) -> Vec<Ipv4Addr> {
        self.state
            .borrow()
            .endpoints
            .get(id.0)
            .map(|e| e.addrs.clone())
            .unwrap_or_default()
    }

    /// The earliest pending delivery to any endpoint.
    pub fn next_event(&self) -> Option<Instant> {
        self.state
            .borrow()
            .endpoints
            .iter()
            .filter_map(|e| e.inbox.next_arrival())
            .min()
    }

    /// Drops everything (or only `direction`) that reaches the middlebox in
    /// `[now, now + duration)`.
    pub fn blackhole(&self, now: Instant, duration: Duration, direction: Option<Direction>) {
        self.state
            .borrow_mut()
            .mb
            .add_blackhole(now, duration, direction);
        tracing::debug!(?direction, ?duration, "middlebox: blackhole");
    }

    /// Ends every blackhole.
    pub fn clear_blackholes(&self) {
        self.state.borrow_mut().mb.clear_blackholes();
    }

    /// Sends, at `now`, a RST toward `toward` for every TCP connection the
    /// middlebox has seen, carrying the sequence number the other side would
    /// use next (and, when known, acknowledging `toward`'s next one), so the
    /// receiver accepts it as if its peer had reset. Returns how many.
    pub fn inject_rst(&self, now: Instant, toward: Side) -> usize {
        self.state.borrow_mut().inject_rst(now, toward, None)
    }

    /// As [`Network::inject_rst`], for the one connection `tuple` names (in
    /// either side's view, either orientation).
    pub fn inject_rst_for(&self, now: Instant, toward: Side, tuple: FourTuple) -> usize {
        self.state.borrow_mut().inject_rst(now, toward, Some(tuple))
    }

    /// The TCP connections the middlebox has seen, ordered by side A's view.
    pub fn connections(&self) -> Vec<TrackedConnection> {
        self.state.borrow().mb.connections().collect()
    }

    /// In `direction`, replaces (`enabled`) or stops replacing every TCP
    /// option of `kind` with NOPs, fixing the checksum. Segments whose
    /// option list is malformed cross unchanged.
    pub fn strip_option(&self, direction: Direction, kind: u8, enabled: bool) {
        self.state
            .borrow_mut()
            .mb
            .set_strip(direction, kind, enabled);
        tracing::debug!(?direction, kind, enabled, "middlebox: option stripping");
    }

    /// Masquerades side A's TCP behind `public_addr`: each side-A 4-tuple
    /// gets a public port; side-B segments to `public_addr` are translated
    /// back, or dropped without a mapping. Other side-B traffic and non-TCP
    /// traffic cross untouched. Starts with an empty table.
    pub fn enable_nat(&self, public_addr: Ipv4Addr) {
        self.state.borrow_mut().mb.enable_nat(public_addr);
        tracing::debug!(%public_addr, "middlebox: NAT enabled");
    }

    /// Turns NAT off and forgets its table.
    pub fn disable_nat(&self) {
        self.state.borrow_mut().mb.disable_nat();
    }

    /// Forgets every NAT mapping. Later segments get new ports (ports are
    /// never reused in a run), so side B sees new 4-tuples.
    pub fn nat_lose_state(&self) {
        if self.state.borrow_mut().mb.nat_lose_state() {
            tracing::debug!("middlebox: NAT lost its state");
        }
    }

    /// Changes the NAT's public address. Mappings keep their ports, so side
    /// B sees a new source address; segments to the old one find no route.
    pub fn nat_set_public_addr(&self, addr: Ipv4Addr) {
        if self.state.borrow_mut().mb.nat_set_public_addr(addr) {
            tracing::debug!(public_addr = %addr, "middlebox: NAT address changed");
        }
    }

    /// Turns on the stateful firewall: a connection gets state only from a
    /// side-A SYN (without ACK); TCP segments of connections without state
    /// are dropped, in both directions. Non-TCP traffic crosses. Starts empty.
    pub fn enable_firewall(&self) {
        self.state.borrow_mut().mb.enable_firewall();
        tracing::debug!("middlebox: firewall enabled");
    }

    /// Turns the firewall off.
    pub fn disable_firewall(&self) {
        self.state.borrow_mut().mb.disable_firewall();
    }

    /// Forgets every firewall state: mid-connection segments are dropped
    /// until a new SYN.
    pub fn firewall_lose_state(&self) {
        if self.state.borrow_mut().mb.firewall_lose_state() {
            tracing::debug!("middlebox: firewall lost its state");
        }
    }

    /// Drops the next `count` TCP segments in `direction` for which
    /// `predicate` is true. Rules are tried in the order they were added; a
    /// segment taken by one is not shown to the next. The predicate must not
    /// call back into the network.
    pub fn drop_matching<P>(&self, direction: Direction, count: usize, predicate: P)
    where
        P: FnMut(&SegmentInfo) -> bool + 'static,
    {
        if count == 0 {
            return;
        }
        self.state
            .borrow_mut()
            .mb
            .add_rule(direction, count, Box::new(predicate));
    }

    /// Removes every drop rule.
    pub fn clear_drop_rules(&self) {
        self.state.borrow_mut().mb.clear_rules();
    }

    /// The counters.
    pub fn stats(&self) -> LinkStats {
        self.state.borrow().stats.clone()
    }

    /// Records (or stops recording) packets as they leave the middlebox.
    pub fn set_capture(&self, on: bool) {
        self.state.borrow_mut().capture_leaving = on;
    }

    /// Records (or stops recording) packets as they enter the middlebox.
    pub fn set_capture_entering(&self, on: bool) {
        self.state.borrow_mut().capture_entering = on;
    }

    /// A copy of the capture so far.
    pub fn captured(&self) -> Vec<CapturedPacket> {
        self.state.borrow().captured.clone()
    }

    /// Takes the capture so far, leaving it empty.
    pub fn take_captured(&self) -> Vec<CapturedPacket> {
        std::mem::take(&mut self.state.borrow_mut().captured)
    }
}

/// The shared state of a [`Network`] and the path of a packet through it.
struct State {
    config: LinkConfig,
    rng: StdRng,
    endpoints: Vec<Endpoint>,
    lanes: [Lane; 2],
    mb: Middlebox,
    stats: LinkStats,
    capture_leaving: bool,
    capture_entering: bool,
    captured: Vec<CapturedPacket>,
}

impl State {
    fn drop_packet(&mut self, reason: DropReason, dir: Direction) -> Fate {
        self.stats.count_drop(reason);
        match reason {
            DropReason::Loss | DropReason::QueueFull => {
                tracing::trace!(?dir, ?reason, "link: packet dropped");
            }
            _ => tracing::debug!(?dir, ?reason, "link: packet dropped"),
        }
        Fate::Dropped(reason)
    }

    /// An endpoint hands in a packet at `now`.
    fn send(&mut self, from: EndpointId, now: Instant, mut bytes: Vec<u8>) -> Fate {
        self.stats.sent += 1;
        let Some(side) = self.endpoints.get(from.0).map(|e| e.side) else {
            return self.drop_packet(DropReason::NoRoute, Direction::AtoB);
        };
        let dir = side.outbound();
        if bytes.len() > self.config.mtu {
            return self.drop_packet(DropReason::Oversize, dir);
        }
        if self.config.loss > 0.0 && self.rng.random::<f64>() < self.config.loss {
            return self.drop_packet(DropReason::Loss, dir);
        }
        if self.capture_entering {
            self.captured.push(CapturedPacket {
                time: now,
                direction: dir,
                point: CapturePoint::Entering,
                bytes: bytes.clone(),
            });
        }
        if let Err(reason) = self.mb.inspect(now, dir, &mut bytes, &mut self.stats) {
            return self.drop_packet(reason, dir);
        }
        self.schedule(now, dir, bytes)
    }

    /// Routes a packet that left the middlebox at `now` and queues it.
    fn schedule(&mut self, now: Instant, dir: Direction, bytes: Vec<u8>) -> Fate {
        let Some(dst) = ipv4_dst(&bytes) else {
            return self.drop_packet(DropReason::Malformed, dir);
        };
        let to = dir.destination();
        let Some(index) = self
            .endpoints
            .iter()
            .position(|e| e.side == to && e.addrs.contains(&dst))
        else {
            return self.drop_packet(DropReason::NoRoute, dir);
        };
        let config = self.config;
        let Some(lane) = self.lanes.get_mut(dir.index()) else {
            return self.drop_packet(DropReason::NoRoute, dir);
        };
        let Some(arrival) = lane.transit(now, bytes.len(), &config) else {
            return self.drop_packet(DropReason::QueueFull, dir);
        };
        if self.capture_leaving {
            self.captured.push(CapturedPacket {
                time: now,
                direction: dir,
                point: CapturePoint::Leaving,
                bytes: bytes.clone(),
            });
        }
        let Some(endpoint) = self.endpoints.get_mut(index) else {
            return self.drop_packet(DropReason::NoRoute, dir);
        };
        endpoint.inbox.push(InFlight {
            arrival,
            dst,
            bytes,
        });
        self.stats.scheduled += 1;
        Fate::Scheduled { arrival }
    }

    /// The next packet for `id` that has arrived by `now`.
    fn receive(&mut self, id: EndpointId, now: Instant) -> Option<Vec<u8>> {
        loop {
            let endpoint = self.endpoints.get_mut(id.0)?;
            let packet = endpoint.inbox.pop_arrived(now)?;
            if endpoint.addrs.contains(&packet.dst) {
                self.stats.delivered += 1;
                return Some(packet.bytes);
            }
            // The endpoint gave up this address while the packet was in flight.
            let dir = endpoint.side.inbound();
            self.drop_packet(DropReason::NoRoute, dir);
        }
    }

    fn inject_rst(&mut self, now: Instant, toward: Side, only: Option<FourTuple>) -> usize {
        let dir = toward.inbound();
        let packets = self.mb.rsts(toward, only);
        let count = packets.len();
        for bytes in packets {
            self.stats.injected += 1;
            tracing::debug!(?toward, "middlebox: injecting RST");
            self.schedule(now, dir, bytes);
        }
        count
    }
}
