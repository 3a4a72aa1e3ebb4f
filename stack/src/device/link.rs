//! In-memory network with a virtual clock and a programmable middlebox.
//!
//! Owns [`Network`]: the shared state of every endpoint ([`LinkDevice`], a
//! smoltcp [`Device`] with [`Medium::Ip`] carrying raw IPv4 packets), the
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

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;
use std::rc::Rc;

use etherparse::PacketBuilder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, TcpPacket};

/// TCP option kind: end of option list.
const TCP_OPT_EOL: u8 = 0;
/// TCP option kind: no-operation, the filler TCPOPTSTRIP writes.
const TCP_OPT_NOP: u8 = 1;
/// First public port the NAT hands out; ports go up from here, never reused.
pub const NAT_FIRST_PORT: u16 = 10_000;
/// TTL of the RSTs the middlebox crafts.
const RST_TTL: u8 = 64;

// ---------------------------------------------------------------------------
// Configuration and small public types
// ---------------------------------------------------------------------------

/// Parameters of a [`Network`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Propagation delay added to every packet, in each direction.
    pub one_way_delay: Duration,
    /// Probability (`0.0..=1.0`) that a packet sent by an endpoint is lost
    /// before it reaches the middlebox. Drawn from the seeded random source.
    pub loss: f64,
    /// Seed of the network's random source.
    pub seed: u64,
    /// IP MTU of every endpoint; larger packets are dropped
    /// ([`DropReason::Oversize`]).
    pub mtu: usize,
    /// Bottleneck rate of each direction, in bytes per second. Packets are
    /// serialized one after another, so they queue behind each other.
    /// `None` (or `Some(0)`): infinite, no serialization delay.
    pub rate_bytes_per_sec: Option<u64>,
    /// Packets a direction's bottleneck holds (waiting or being serialized)
    /// before it tail-drops ([`DropReason::QueueFull`]). Only meaningful with
    /// a rate.
    pub queue_limit: usize,
}

impl Default for LinkConfig {
    /// 10 ms one way, no loss, seed 0, MTU 1500, infinite rate, 1000 packets.
    fn default() -> Self {
        LinkConfig {
            one_way_delay: Duration::from_millis(10),
            loss: 0.0,
            seed: 0,
            mtu: 1500,
            rate_bytes_per_sec: None,
            queue_limit: 1000,
        }
    }
}

/// One side of the middlebox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// Inside: clients, behind the NAT and the firewall.
    A,
    /// Outside: servers.
    B,
}

impl Side {
    /// The other side.
    pub fn peer(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// Direction of the packets this side sends.
    pub fn outbound(self) -> Direction {
        match self {
            Side::A => Direction::AtoB,
            Side::B => Direction::BtoA,
        }
    }

    /// Direction of the packets this side receives.
    pub fn inbound(self) -> Direction {
        self.peer().outbound()
    }
}

/// Direction of travel through the middlebox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// From side A (inside) to side B (outside).
    AtoB,
    /// From side B (outside) to side A (inside).
    BtoA,
}

impl Direction {
    /// The side packets in this direction come from.
    pub fn source(self) -> Side {
        match self {
            Direction::AtoB => Side::A,
            Direction::BtoA => Side::B,
        }
    }

    /// The side packets in this direction go to.
    pub fn destination(self) -> Side {
        self.source().peer()
    }

    /// The opposite direction.
    pub fn reverse(self) -> Direction {
        self.destination().outbound()
    }

    fn index(self) -> usize {
        match self {
            Direction::AtoB => 0,
            Direction::BtoA => 1,
        }
    }
}

/// Identifies an endpoint of a [`Network`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(usize);

impl EndpointId {
    /// Position of the endpoint in creation order, from 0.
    pub fn index(self) -> usize {
        self.0
    }
}

/// Why a packet did not reach its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Larger than the MTU.
    Oversize,
    /// Random loss ([`LinkConfig::loss`]).
    Loss,
    /// Not a well-formed IPv4 packet (IPv6, truncated, garbage).
    Malformed,
    /// Inside a [`Network::blackhole`] period.
    Blackhole,
    /// Taken by a [`Network::drop_matching`] rule.
    Rule,
    /// The stateful firewall had no state for the connection.
    Firewall,
    /// Addressed to the NAT's public address with no mapping for it.
    NatNoMapping,
    /// The NAT ran out of never-used ports.
    NatPortsExhausted,
    /// No endpoint on the destination side owns the destination address
    /// (at send time, or any more when it arrived).
    NoRoute,
    /// Tail drop at a full bottleneck queue.
    QueueFull,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 10;
    /// Every reason, in declaration order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Oversize,
        DropReason::Loss,
        DropReason::Malformed,
        DropReason::Blackhole,
        DropReason::Rule,
        DropReason::Firewall,
        DropReason::NatNoMapping,
        DropReason::NatPortsExhausted,
        DropReason::NoRoute,
        DropReason::QueueFull,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// What happened to a packet handed to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It crossed the middlebox and will be receivable at `arrival`.
    Scheduled {
        /// When the receiver can take it.
        arrival: Instant,
    },
    /// It was dropped.
    Dropped(DropReason),
}

impl Fate {
    /// The arrival time, if the packet was scheduled.
    pub fn arrival(self) -> Option<Instant> {
        match self {
            Fate::Scheduled { arrival } => Some(arrival),
            Fate::Dropped(_) => None,
        }
    }
}

/// Counters of a [`Network`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets handed in by endpoints (device transmissions and `send_raw`).
    pub sent: u64,
    /// Packets crafted by the middlebox (RST injection).
    pub injected: u64,
    /// Packets that left the middlebox and were queued for delivery.
    pub scheduled: u64,
    /// Packets taken by their receivers.
    pub delivered: u64,
    /// TCP options replaced with NOPs.
    pub options_stripped: u64,
    /// Packets whose address or port the NAT rewrote.
    pub nat_translated: u64,
    dropped: [u64; DropReason::COUNT],
}

impl LinkStats {
    /// Packets dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.get(reason.index()).copied().unwrap_or(0)
    }

    /// Packets dropped for any reason.
    pub fn total_dropped(&self) -> u64 {
        self.dropped.iter().sum()
    }

    fn count_drop(&mut self, reason: DropReason) {
        if let Some(n) = self.dropped.get_mut(reason.index()) {
            *n += 1;
        }
    }
}

/// TCP flags a [`SegmentInfo`] exposes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpFlags {
    /// SYN.
    pub syn: bool,
    /// ACK.
    pub ack: bool,
    /// FIN.
    pub fin: bool,
    /// RST.
    pub rst: bool,
    /// PSH.
    pub psh: bool,
}

/// A TCP segment as it entered the middlebox, shown to drop rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Direction of travel.
    pub direction: Direction,
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number (meaningful when `flags.ack`).
    pub ack: u32,
    /// Flags.
    pub flags: TcpFlags,
    /// Payload bytes.
    pub payload_len: usize,
    /// The raw option bytes (padding included).
    pub options: Vec<u8>,
}

impl SegmentInfo {
    /// Length in sequence space: payload, plus one for SYN and one for FIN.
    pub fn seg_len(&self) -> u32 {
        let len = u32::try_from(self.payload_len).unwrap_or(u32::MAX);
        len.wrapping_add(u32::from(self.flags.syn))
            .wrapping_add(u32::from(self.flags.fin))
    }

    /// A SYN without ACK: the first segment of a handshake.
    pub fn is_syn(&self) -> bool {
        self.flags.syn && !self.flags.ack
    }

    /// A SYN-ACK.
    pub fn is_syn_ack(&self) -> bool {
        self.flags.syn && self.flags.ack
    }
}

/// The two ends of a TCP connection from one observer's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FourTuple {
    /// One end.
    pub src: SocketAddrV4,
    /// The other end.
    pub dst: SocketAddrV4,
}

impl FourTuple {
    /// A tuple from its two ends.
    pub fn new(src: SocketAddrV4, dst: SocketAddrV4) -> FourTuple {
        FourTuple { src, dst }
    }

    /// The same tuple seen from the other end.
    pub fn reversed(self) -> FourTuple {
        FourTuple {
            src: self.dst,
            dst: self.src,
        }
    }
}

/// A TCP connection the middlebox has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackedConnection {
    /// As side A sees it: `src` is the side-A endpoint, `dst` the side-B one.
    pub a_view: FourTuple,
    /// As side B sees it: `src` is side A's (possibly NATed) address and
    /// port, as in the last segment that crossed; `dst` the side-B endpoint.
    pub b_view: FourTuple,
    /// Next sequence number side A will send (highest seen end of segment).
    pub a_next_seq: Option<u32>,
    /// Next sequence number side B will send.
    pub b_next_seq: Option<u32>,
}

/// Where a packet was captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapturePoint {
    /// As it entered the middlebox (after random loss, before any rewriting).
    Entering,
    /// As it left the middlebox toward its destination (after rewriting and
    /// routing, once admitted to the bottleneck queue: it will arrive).
    Leaving,
}

/// A packet recorded by the capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedPacket {
    /// When it passed the capture point (the send time).
    pub time: Instant,
    /// Direction of travel.
    pub direction: Direction,
    /// Capture point.
    pub point: CapturePoint,
    /// The raw IP packet.
    pub bytes: Vec<u8>,
}

// ---------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------

/// A connection's two ends, keyed by side: `a` is side A's own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Ends {
    a: SocketAddrV4,
    b: SocketAddrV4,
}

#[derive(Debug)]
struct Endpoint {
    side: Side,
    addrs: Vec<Ipv4Addr>,
    inbox: VecDeque<InFlight>,
}

#[derive(Debug)]
struct InFlight {
    arrival: Instant,
    dst: Ipv4Addr,
    bytes: Vec<u8>,
}

/// A direction's bottleneck: when it is free, and when queued packets finish.
#[derive(Debug, Default)]
struct Lane {
    busy_until: Option<Instant>,
    backlog: VecDeque<Instant>,
}

impl Lane {
    /// Admits a packet of `len` bytes at `now`; returns when its
    /// serialization ends, or `None` on tail drop.
    fn admit(&mut self, now: Instant, len: usize, config: &LinkConfig) -> Option<Instant> {
        let Some(rate) = config.rate_bytes_per_sec.filter(|r| *r > 0) else {
            return Some(now);
        };
        while self.backlog.front().is_some_and(|end| *end <= now) {
            self.backlog.pop_front();
        }
        if self.backlog.len() >= config.queue_limit {
            return None;
        }
        let start = self.busy_until.map_or(now, |busy| busy.max(now));
        let bytes = u64::try_from(len).unwrap_or(u64::MAX);
        let micros = bytes.saturating_mul(1_000_000).div_ceil(rate);
        let end = start + Duration::from_micros(micros);
        self.busy_until = Some(end);
        self.backlog.push_back(end);
        Some(end)
    }
}

#[derive(Debug, Clone, Copy)]
struct Blackhole {
    start: Instant,
    end: Instant,
    direction: Option<Direction>,
}

struct DropRule {
    direction: Direction,
    remaining: usize,
    predicate: Box<dyn FnMut(&SegmentInfo) -> bool>,
}

#[derive(Debug)]
struct Nat {
    public: Ipv4Addr,
    by_ends: BTreeMap<Ends, u16>,
    by_port: BTreeMap<u16, Ends>,
}

impl Nat {
    fn new(public: Ipv4Addr) -> Nat {
        Nat {
            public,
            by_ends: BTreeMap::new(),
            by_port: BTreeMap::new(),
        }
    }

    /// The public port of `ends`, allocating a never-used one if needed.
    fn outbound(&mut self, ends: Ends, next_port: &mut u32) -> Option<u16> {
        if let Some(port) = self.by_ends.get(&ends) {
            return Some(*port);
        }
        let port = u16::try_from(*next_port).ok()?;
        *next_port += 1;
        self.by_ends.insert(ends, port);
        self.by_port.insert(port, ends);
        tracing::debug!(inside = %ends.a, remote = %ends.b, public_port = port, "nat: new mapping");
        Some(port)
    }

    /// The inside address behind `port`, if `remote` is who it talks to.
    fn inbound(&self, port: u16, remote: SocketAddrV4) -> Option<SocketAddrV4> {
        let ends = self.by_port.get(&port)?;
        (ends.b == remote).then_some(ends.a)
    }
}

#[derive(Debug, Clone, Copy)]
struct Conn {
    /// Side A's address and port as side B sees them.
    outside_a: SocketAddrV4,
    /// Next sequence number per sending direction ([`Direction::index`]).
    next: [Option<u32>; 2],
}

struct Middlebox {
    blackholes: Vec<Blackhole>,
    rules: Vec<DropRule>,
    strip: [BTreeSet<u8>; 2],
    firewall: Option<BTreeSet<Ends>>,
    nat: Option<Nat>,
    nat_next_port: u32,
    conns: BTreeMap<Ends, Conn>,
}

impl Middlebox {
    fn new() -> Middlebox {
        Middlebox {
            blackholes: Vec::new(),
            rules: Vec::new(),
            strip: [BTreeSet::new(), BTreeSet::new()],
            firewall: None,
            nat: None,
            nat_next_port: u32::from(NAT_FIRST_PORT),
            conns: BTreeMap::new(),
        }
    }

    fn blackholed(&self, now: Instant, dir: Direction) -> bool {
        self.blackholes
            .iter()
            .any(|b| b.start <= now && now < b.end && b.direction.is_none_or(|d| d == dir))
    }

    /// Runs the drop rules; true if one took the segment.
    fn rule_drops(&mut self, info: &SegmentInfo) -> bool {
        let hit = self
            .rules
            .iter_mut()
            .position(|rule| rule.direction == info.direction && (rule.predicate)(info));
        let Some(index) = hit else {
            return false;
        };
        if let Some(rule) = self.rules.get_mut(index) {
            rule.remaining = rule.remaining.saturating_sub(1);
            if rule.remaining == 0 {
                self.rules.remove(index);
            }
        }
        true
    }

    fn firewall_admits(&mut self, dir: Direction, ends: Ends, flags: TcpFlags) -> bool {
        let Some(state) = &mut self.firewall else {
            return true;
        };
        if dir == Direction::AtoB && flags.syn && !flags.ack {
            state.insert(ends);
            return true;
        }
        state.contains(&ends)
    }

    fn track(&mut self, ends: Ends, outside_a: SocketAddrV4, info: &SegmentInfo) {
        let conn = self.conns.entry(ends).or_insert(Conn {
            outside_a,
            next: [None, None],
        });
        conn.outside_a = outside_a;
        if info.is_syn() {
            // A new connection attempt on this 4-tuple: forget the old one.
            conn.next = [None, None];
        }
        let end = info.seq.wrapping_add(info.seg_len());
        if let Some(next) = conn.next.get_mut(info.direction.index()) {
            *next = match *next {
                // Keep the highest end seen (wrapping compare): retransmissions
                // and reordering must not move it back.
                Some(prev) if !info.flags.syn && (end.wrapping_sub(prev) as i32) < 0 => Some(prev),
                _ => Some(end),
            };
        }
    }

    fn connections(&self) -> impl Iterator<Item = TrackedConnection> + '_ {
        self.conns.iter().map(|(ends, conn)| TrackedConnection {
            a_view: FourTuple::new(ends.a, ends.b),
            b_view: FourTuple::new(conn.outside_a, ends.b),
            a_next_seq: conn.next[Direction::AtoB.index()],
            b_next_seq: conn.next[Direction::BtoA.index()],
        })
    }
}

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

/// What the middlebox decided to change in a TCP segment.
#[derive(Debug, Default)]
struct Rewrite {
    src: Option<SocketAddrV4>,
    dst: Option<SocketAddrV4>,
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
        if let Err(reason) = self.middlebox(now, dir, &mut bytes) {
            return self.drop_packet(reason, dir);
        }
        self.schedule(now, dir, bytes)
    }

    /// The middlebox's verdict on a packet; may rewrite it in place.
    fn middlebox(
        &mut self,
        now: Instant,
        dir: Direction,
        bytes: &mut [u8],
    ) -> Result<(), DropReason> {
        let parsed = parse_ipv4(bytes).ok_or(DropReason::Malformed)?;
        if self.mb.blackholed(now, dir) {
            return Err(DropReason::Blackhole);
        }
        let Some(range) = parsed.tcp.clone() else {
            return Ok(());
        };
        let Some(info) = segment_info(dir, bytes, &parsed) else {
            return Ok(());
        };
        if self.mb.rule_drops(&info) {
            return Err(DropReason::Rule);
        }
        let mut rewrite = Rewrite::default();
        let (ends, outside_a) = match dir {
            Direction::AtoB => {
                let ends = Ends {
                    a: info.src,
                    b: info.dst,
                };
                if !self.mb.firewall_admits(dir, ends, info.flags) {
                    return Err(DropReason::Firewall);
                }
                let mut outside_a = info.src;
                if let Some(nat) = self.mb.nat.as_mut() {
                    let port = nat
                        .outbound(ends, &mut self.mb.nat_next_port)
                        .ok_or(DropReason::NatPortsExhausted)?;
                    outside_a = SocketAddrV4::new(nat.public, port);
                    rewrite.src = Some(outside_a);
                }
                (ends, outside_a)
            }
            Direction::BtoA => {
                let mut inside = info.dst;
                if let Some(nat) = self.mb.nat.as_ref().filter(|n| *info.dst.ip() == n.public) {
                    inside = nat
                        .inbound(info.dst.port(), info.src)
                        .ok_or(DropReason::NatNoMapping)?;
                    rewrite.dst = Some(inside);
                }
                let ends = Ends {
                    a: inside,
                    b: info.src,
                };
                if !self.mb.firewall_admits(dir, ends, info.flags) {
                    return Err(DropReason::Firewall);
                }
                (ends, info.dst)
            }
        };
        self.mb.track(ends, outside_a, &info);
        if rewrite.src.is_some() || rewrite.dst.is_some() {
            self.stats.nat_translated += 1;
        }
        let strip = self.mb.strip.get(dir.index()).cloned().unwrap_or_default();
        let stripped = rewrite_tcp(bytes, range, &rewrite, &strip);
        if stripped > 0 {
            tracing::debug!(?dir, stripped, kinds = ?strip, "middlebox: stripped TCP options");
        }
        self.stats.options_stripped += u64::try_from(stripped).unwrap_or(u64::MAX);
        Ok(())
    }

    /// Routes a packet that left the middlebox at `now` and queues it.
    fn schedule(&mut self, now: Instant, dir: Direction, bytes: Vec<u8>) -> Fate {
        let Some(dst) = parse_ipv4(&bytes).map(|p| p.dst) else {
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
        let Some(serialized) = lane.admit(now, bytes.len(), &config) else {
            return self.drop_packet(DropReason::QueueFull, dir);
        };
        let arrival = serialized + config.one_way_delay;
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
        // Keep the inbox ordered by arrival, FIFO among equal times.
        let at = endpoint
            .inbox
            .iter()
            .rposition(|p| p.arrival <= arrival)
            .map_or(0, |i| i + 1);
        endpoint.inbox.insert(
            at,
            InFlight {
                arrival,
                dst,
                bytes,
            },
        );
        self.stats.scheduled += 1;
        Fate::Scheduled { arrival }
    }

    /// The next packet for `id` that has arrived by `now`.
    fn receive(&mut self, id: EndpointId, now: Instant) -> Option<Vec<u8>> {
        loop {
            let endpoint = self.endpoints.get_mut(id.0)?;
            if endpoint.inbox.front()?.arrival > now {
                return None;
            }
            let packet = endpoint.inbox.pop_front()?;
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
        let packets: Vec<Vec<u8>> = self
            .mb
            .connections()
            .filter(|c| only.is_none_or(|t| tuple_matches(c, t)))
            .filter_map(|c| craft_rst(&c, toward))
            .collect();
        let count = packets.len();
        for bytes in packets {
            self.stats.injected += 1;
            tracing::debug!(?toward, "middlebox: injecting RST");
            self.schedule(now, dir, bytes);
        }
        count
    }
}

/// True if `tuple` names `conn` in either view, in either orientation.
fn tuple_matches(conn: &TrackedConnection, tuple: FourTuple) -> bool {
    [conn.a_view, conn.b_view]
        .into_iter()
        .any(|view| view == tuple || view == tuple.reversed())
}

/// The RST a real peer would send toward `toward` for `conn`: its sequence
/// number is the peer's next one, and it acknowledges everything seen.
fn craft_rst(conn: &TrackedConnection, toward: Side) -> Option<Vec<u8>> {
    let (src, dst, seq, ack) = match toward {
        Side::A => (
            conn.a_view.dst,
            conn.a_view.src,
            conn.b_next_seq,
            conn.a_next_seq,
        ),
        Side::B => (
            conn.b_view.src,
            conn.b_view.dst,
            conn.a_next_seq,
            conn.b_next_seq,
        ),
    };
    if seq.is_none() && ack.is_none() {
        return None;
    }
    let mut builder = PacketBuilder::ipv4(src.ip().octets(), dst.ip().octets(), RST_TTL)
        .tcp(src.port(), dst.port(), seq.unwrap_or(0), 0)
        .rst();
    if let Some(ack) = ack {
        builder = builder.ack(ack);
    }
    let mut out = Vec::with_capacity(builder.size(0));
    builder.write_to_vec(&mut out, &[]).ok()?;
    Some(out)
}

/// A well-formed IPv4 packet's addresses, and where its TCP segment is if
/// it carries a whole, well-formed, unfragmented one.
#[derive(Debug, Clone)]
struct ParsedIpv4 {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    tcp: Option<Range<usize>>,
}

fn parse_ipv4(bytes: &[u8]) -> Option<ParsedIpv4> {
    let ip = Ipv4Packet::new_checked(bytes).ok()?;
    if ip.version() != 4 {
        return None;
    }
    let unfragmented = !ip.more_frags() && ip.frag_offset() == 0;
    let range = usize::from(ip.header_len())..usize::from(ip.total_len());
    let tcp = (ip.next_header() == IpProtocol::Tcp && unfragmented)
        .then_some(range)
        .filter(|r| {
            bytes
                .get(r.clone())
                .is_some_and(|seg| TcpPacket::new_checked(seg).is_ok())
        });
    Some(ParsedIpv4 {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        tcp,
    })
}

fn segment_info(dir: Direction, bytes: &[u8], parsed: &ParsedIpv4) -> Option<SegmentInfo> {
    let seg = TcpPacket::new_checked(bytes.get(parsed.tcp.clone()?)?).ok()?;
    Some(SegmentInfo {
        direction: dir,
        src: SocketAddrV4::new(parsed.src, seg.src_port()),
        dst: SocketAddrV4::new(parsed.dst, seg.dst_port()),
        seq: seg.seq_number().0 as u32,
        ack: seg.ack_number().0 as u32,
        flags: TcpFlags {
            syn: seg.syn(),
            ack: seg.ack(),
            fin: seg.fin(),
            rst: seg.rst(),
            psh: seg.psh(),
        },
        payload_len: seg.payload().len(),
        options: seg.options().to_vec(),
    })
}

/// Applies `rewrite` and strips the option `kinds` of the TCP segment at
/// `range` of the IPv4 packet `bytes` (both validated by [`parse_ipv4`]),
/// then refills the checksums it invalidated. A checksum that was wrong on
/// input stays wrong. Returns the number of options stripped.
fn rewrite_tcp(
    bytes: &mut [u8],
    range: Range<usize>,
    rewrite: &Rewrite,
    kinds: &BTreeSet<u8>,
) -> usize {
    let (old_src, old_dst, ip_ok) = {
        let ip = Ipv4Packet::new_unchecked(&*bytes);
        (ip.src_addr(), ip.dst_addr(), ip.verify_checksum())
    };
    let src = rewrite.src.map_or(old_src, |s| *s.ip());
    let dst = rewrite.dst.map_or(old_dst, |d| *d.ip());
    let Some(segment) = bytes.get_mut(range) else {
        return 0;
    };
    let Ok(mut seg) = TcpPacket::new_checked(segment) else {
        return 0;
    };
    let tcp_ok = seg.verify_checksum(&IpAddress::Ipv4(old_src), &IpAddress::Ipv4(old_dst));
    let stripped = if kinds.is_empty() {
        0
    } else {
        strip_options(seg.options_mut(), kinds).unwrap_or(0)
    };
    if let Some(s) = rewrite.src {
        seg.set_src_port(s.port());
    }
    if let Some(d) = rewrite.dst {
        seg.set_dst_port(d.port());
    }
    if stripped == 0 && rewrite.src.is_none() && rewrite.dst.is_none() {
        return 0;
    }
    seg.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
    if !tcp_ok {
        // Flipping the low bit never yields an equivalent ones'-complement value.
        let sum = seg.checksum();
        seg.set_checksum(sum ^ 1);
    }
    if src != old_src || dst != old_dst {
        let mut ip = Ipv4Packet::new_unchecked(&mut *bytes);
        ip.set_src_addr(src);
        ip.set_dst_addr(dst);
        ip.fill_checksum();
        if !ip_ok {
            let sum = ip.checksum();
            ip.set_checksum(sum ^ 1);
        }
    }
    stripped
}

/// Replaces every option whose kind is in `kinds` with NOPs, as Linux's
/// TCPOPTSTRIP does. The walk stops at End-of-List (what follows is
/// padding); kinds 0 and 1 are never stripped. Returns the number of options
/// replaced, or `None`, with `options` untouched, if the list is malformed
/// (a length below 2, or running past the end).
fn strip_options(options: &mut [u8], kinds: &BTreeSet<u8>) -> Option<usize> {
    let mut found: Vec<Range<usize>> = Vec::new();
    let mut at = 0;
    while let Some(&kind) = options.get(at) {
        match kind {
            TCP_OPT_EOL => break,
            TCP_OPT_NOP => at += 1,
            _ => {
                let len = usize::from(*options.get(at + 1)?);
                if len < 2 || at + len > options.len() {
                    return None;
                }
                if kinds.contains(&kind) {
                    found.push(at..at + len);
                }
                at += len;
            }
        }
    }
    for range in &found {
        if let Some(bytes) = options.get_mut(range.clone()) {
            bytes.fill(TCP_OPT_NOP);
        }
    }
    Some(found.len())
}

// ---------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------

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
            inbox: VecDeque::new(),
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
            .filter_map(|e| e.inbox.front().map(|p| p.arrival))
            .min()
    }

    /// Drops everything (or only `direction`) that reaches the middlebox in
    /// `[now, now + duration)`.
    pub fn blackhole(&self, now: Instant, duration: Duration, direction: Option<Direction>) {
        let mut state = self.state.borrow_mut();
        state.mb.blackholes.retain(|b| b.end > now);
        state.mb.blackholes.push(Blackhole {
            start: now,
            end: now + duration,
            direction,
        });
        tracing::debug!(?direction, ?duration, "middlebox: blackhole");
    }

    /// Ends every blackhole.
    pub fn clear_blackholes(&self) {
        self.state.borrow_mut().mb.blackholes.clear();
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
        let mut state = self.state.borrow_mut();
        if let Some(kinds) = state.mb.strip.get_mut(direction.index()) {
            if enabled {
                kinds.insert(kind);
            } else {
                kinds.remove(&kind);
            }
        }
        tracing::debug!(?direction, kind, enabled, "middlebox: option stripping");
    }

    /// Masquerades side A's TCP behind `public_addr`: each side-A 4-tuple
    /// gets a public port; side-B segments to `public_addr` are translated
    /// back, or dropped without a mapping. Other side-B traffic and non-TCP
    /// traffic cross untouched. Starts with an empty table.
    pub fn enable_nat(&self, public_addr: Ipv4Addr) {
        self.state.borrow_mut().mb.nat = Some(Nat::new(public_addr));
        tracing::debug!(%public_addr, "middlebox: NAT enabled");
    }

    /// Turns NAT off and forgets its table.
    pub fn disable_nat(&self) {
        self.state.borrow_mut().mb.nat = None;
    }

    /// Forgets every NAT mapping. Later segments get new ports (ports are
    /// never reused in a run), so side B sees new 4-tuples.
    pub fn nat_lose_state(&self) {
        if let Some(nat) = self.state.borrow_mut().mb.nat.as_mut() {
            nat.by_ends.clear();
            nat.by_port.clear();
            tracing::debug!("middlebox: NAT lost its state");
        }
    }

    /// Changes the NAT's public address. Mappings keep their ports, so side
    /// B sees a new source address; segments to the old one find no route.
    pub fn nat_set_public_addr(&self, addr: Ipv4Addr) {
        if let Some(nat) = self.state.borrow_mut().mb.nat.as_mut() {
            nat.public = addr;
            tracing::debug!(public_addr = %addr, "middlebox: NAT address changed");
        }
    }

    /// Turns on the stateful firewall: a connection gets state only from a
    /// side-A SYN (without ACK); TCP segments of connections without state
    /// are dropped, in both directions. Non-TCP traffic crosses. Starts empty.
    pub fn enable_firewall(&self) {
        self.state.borrow_mut().mb.firewall = Some(BTreeSet::new());
        tracing::debug!("middlebox: firewall enabled");
    }

    /// Turns the firewall off.
    pub fn disable_firewall(&self) {
        self.state.borrow_mut().mb.firewall = None;
    }

    /// Forgets every firewall state: mid-connection segments are dropped
    /// until a new SYN.
    pub fn firewall_lose_state(&self) {
        if let Some(state) = self.state.borrow_mut().mb.firewall.as_mut() {
            state.clear();
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
        self.state.borrow_mut().mb.rules.push(DropRule {
            direction,
            remaining: count,
            predicate: Box::new(predicate),
        });
    }

    /// Removes every drop rule.
    pub fn clear_drop_rules(&self) {
        self.state.borrow_mut().mb.rules.clear();
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

// ---------------------------------------------------------------------------
// LinkDevice
// ---------------------------------------------------------------------------

/// An endpoint of a [`Network`]: a smoltcp [`Device`] with [`Medium::Ip`].
/// Cloning gives another handle to the same endpoint.
#[derive(Debug, Clone)]
pub struct LinkDevice {
    net: Network,
    id: EndpointId,
    side: Side,
}

impl LinkDevice {
    /// This endpoint's identifier.
    pub fn id(&self) -> EndpointId {
        self.id
    }

    /// This endpoint's side.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The network this endpoint belongs to.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// This endpoint's addresses.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        self.net.addresses(self.id)
    }

    /// Replaces this endpoint's addresses (see [`Network::set_addresses`]).
    pub fn set_addresses(&self, addrs: &[Ipv4Addr]) {
        self.net.set_addresses(self.id, addrs);
    }

    /// The earliest pending delivery to this endpoint.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.net
            .state
            .borrow()
            .endpoints
            .get(self.id.0)
            .and_then(|e| e.inbox.front().map(|p| p.arrival))
    }

    /// Sends `bytes` (an IP packet, or anything) at `now` as if this
    /// endpoint had transmitted it.
    pub fn send_raw(&self, now: Instant, bytes: &[u8]) -> Fate {
        self.net
            .state
            .borrow_mut()
            .send(self.id, now, bytes.to_vec())
    }

    /// Takes the next packet that has arrived by `now`.
    pub fn recv_raw(&self, now: Instant) -> Option<Vec<u8>> {
        self.net.state.borrow_mut().receive(self.id, now)
    }
}

impl Device for LinkDevice {
    type RxToken<'a> = LinkRxToken;
    type TxToken<'a> = LinkTxToken<'a>;

    fn receive(&mut self, timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let bytes = self.recv_raw(timestamp)?;
        Some((
            LinkRxToken { bytes },
            LinkTxToken {
                device: self,
                now: timestamp,
            },
        ))
    }

    fn transmit(&mut self, timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(LinkTxToken {
            device: self,
            now: timestamp,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.net.config().mtu;
        caps
    }
}

/// A received packet, handed to smoltcp.
#[derive(Debug)]
pub struct LinkRxToken {
    bytes: Vec<u8>,
}

impl phy::RxToken for LinkRxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.bytes)
    }
}

/// Permission to send one packet at the token's time.
#[derive(Debug)]
pub struct LinkTxToken<'a> {
    device: &'a LinkDevice,
    now: Instant,
}

impl phy::TxToken for LinkTxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut bytes = vec![0; len];
        let result = f(&mut bytes);
        self.device
            .net
            .state
            .borrow_mut()
            .send(self.device.id, self.now, bytes);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
    use smoltcp::socket::tcp;
    use smoltcp::wire::{HardwareAddress, IpCidr};

    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const PUBLIC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);

    fn ms(n: i64) -> Instant {
        Instant::from_millis(n)
    }

    fn client(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(CLIENT, port)
    }

    fn server(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(SERVER, port)
    }

    /// A TCP segment to build with etherparse.
    #[derive(Clone, Copy, Default)]
    struct Seg<'a> {
        seq: u32,
        ack: Option<u32>,
        syn: bool,
        fin: bool,
        rst: bool,
        options: &'a [u8],
        payload: &'a [u8],
    }

    fn build(src: SocketAddrV4, dst: SocketAddrV4, s: Seg<'_>) -> Vec<u8> {
        let mut b = PacketBuilder::ipv4(src.ip().octets(), dst.ip().octets(), 64).tcp(
            src.port(),
            dst.port(),
            s.seq,
            4096,
        );
        if s.syn {
            b = b.syn();
        }
        if s.fin {
            b = b.fin();
        }
        if s.rst {
            b = b.rst();
        }
        if let Some(ack) = s.ack {
            b = b.ack(ack);
        }
        if !s.options.is_empty() {
            b = b.options_raw(s.options).expect("options fit");
        }
        let mut out = Vec::new();
        b.write_to_vec(&mut out, s.payload).expect("builds");
        out
    }

    fn data(src: SocketAddrV4, dst: SocketAddrV4, seq: u32, payload: &[u8]) -> Vec<u8> {
        build(
            src,
            dst,
            Seg {
                seq,
                ack: Some(1),
                payload,
                ..Seg::default()
            },
        )
    }

    /// Source, destination, and whether both checksums verify.
    fn inspect(bytes: &[u8]) -> (SocketAddrV4, SocketAddrV4, bool) {
        let ip = Ipv4Packet::new_checked(bytes).expect("ipv4");
        let seg = TcpPacket::new_checked(ip.payload()).expect("tcp");
        let (s, d) = (ip.src_addr(), ip.dst_addr());
        let ok =
            ip.verify_checksum() && seg.verify_checksum(&IpAddress::Ipv4(s), &IpAddress::Ipv4(d));
        (
            SocketAddrV4::new(s, seg.src_port()),
            SocketAddrV4::new(d, seg.dst_port()),
            ok,
        )
    }

    fn pair(config: LinkConfig) -> (Network, LinkDevice, LinkDevice) {
        let net = Network::new(config);
        let a = net.endpoint(Side::A, &[CLIENT]);
        let b = net.endpoint(Side::B, &[SERVER]);
        (net, a, b)
    }

    #[test]
    fn delivery_after_exactly_one_way_delay() {
        let (net, a, b) = pair(LinkConfig {
            one_way_delay: Duration::from_millis(25),
            ..LinkConfig::default()
        });
        let pkt = data(client(1000), server(80), 1, b"hello");
        assert_eq!(
            a.send_raw(ms(100), &pkt),
            Fate::Scheduled { arrival: ms(125) }
        );
        assert_eq!(b.next_arrival(), Some(ms(125)));
        assert_eq!(net.next_event(), Some(ms(125)));
        assert_eq!(a.next_arrival(), None);
        assert_eq!(b.recv_raw(ms(125) - Duration::from_micros(1)), None);
        assert_eq!(b.recv_raw(ms(125)), Some(pkt));
        assert_eq!(net.next_event(), None);
        let stats = net.stats();
        assert_eq!((stats.sent, stats.scheduled, stats.delivered), (1, 1, 1));
    }

    #[test]
    fn fifo_order_per_endpoint() {
        let (_net, a, b) = pair(LinkConfig::default());
        let packets: Vec<Vec<u8>> = (0..20u32)
            .map(|i| data(client(1000), server(80), i * 10, &[i as u8; 10]))
            .collect();
        for p in &packets {
            assert!(a.send_raw(ms(0), p).arrival().is_some());
        }
        let got: Vec<Vec<u8>> = (0..30).filter_map(|_| b.recv_raw(ms(1000))).collect();
        assert_eq!(got, packets);
    }

    fn loss_pattern(seed: u64) -> Vec<bool> {
        let (_net, a, _b) = pair(LinkConfig {
            loss: 0.3,
            seed,
            ..LinkConfig::default()
        });
        let pkt = data(client(1000), server(80), 1, b"x");
        (0..200)
            .map(|i| a.send_raw(ms(i), &pkt).arrival().is_some())
            .collect()
    }

    #[test]
    fn loss_is_deterministic_per_seed() {
        let first = loss_pattern(7);
        assert_eq!(first, loss_pattern(7));
        assert_ne!(first, loss_pattern(8));
        let lost = first.iter().filter(|ok| !**ok).count();
        assert!((30..90).contains(&lost), "lost {lost} of 200 at p=0.3");
    }

    #[test]
    fn blackhole_drops_for_the_period_then_resumes() {
        let (net, a, b) = pair(LinkConfig::default());
        let up = data(client(1000), server(80), 1, b"up");
        let down = data(server(80), client(1000), 1, b"down");
        net.blackhole(ms(100), Duration::from_millis(50), None);
        assert!(a.send_raw(ms(99), &up).arrival().is_some());
        assert_eq!(
            a.send_raw(ms(100), &up),
            Fate::Dropped(DropReason::Blackhole)
        );
        assert_eq!(
            b.send_raw(ms(149), &down),
            Fate::Dropped(DropReason::Blackhole)
        );
        assert!(a.send_raw(ms(150), &up).arrival().is_some());
        // One direction only.
        net.blackhole(ms(200), Duration::from_millis(50), Some(Direction::BtoA));
        assert!(a.send_raw(ms(210), &up).arrival().is_some());
        assert_eq!(
            b.send_raw(ms(210), &down),
            Fate::Dropped(DropReason::Blackhole)
        );
        assert_eq!(net.stats().dropped(DropReason::Blackhole), 3);
    }

    #[test]
    fn strip_option_replaces_with_nops_and_fixes_checksum() {
        let (net, a, b) = pair(LinkConfig::default());
        net.strip_option(Direction::AtoB, 253, true);
        net.set_capture(true);
        // MSS, NOP, WS, then our 20-byte option, padded with EOL.
        let mut options = vec![2, 4, 0x05, 0xb4, 1, 3, 3, 7];
        options.extend_from_slice(&[253, 20]);
        options.extend_from_slice(&[0xab; 18]);
        options.extend_from_slice(&[0, 0, 0, 0]);
        let syn = build(
            client(1000),
            server(80),
            Seg {
                seq: 100,
                syn: true,
                options: &options,
                ..Seg::default()
            },
        );
        a.send_raw(ms(0), &syn);
        let got = b.recv_raw(ms(100)).expect("delivered");
        let (_, _, ok) = inspect(&got);
        assert!(ok, "checksums verify after stripping");
        let ip = Ipv4Packet::new_checked(&got[..]).expect("ipv4");
        let seg = TcpPacket::new_checked(ip.payload()).expect("tcp");
        let mut expected = options[..8].to_vec();
        expected.extend_from_slice(&[TCP_OPT_NOP; 20]);
        expected.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(seg.options(), &expected[..]);
        assert_eq!(net.stats().options_stripped, 1);
        assert_eq!(net.captured().len(), 1);
        assert_eq!(net.captured()[0].bytes, got);

        // The other direction is untouched.
        let syn_ack = build(
            server(80),
            client(1000),
            Seg {
                seq: 500,
                ack: Some(101),
                syn: true,
                options: &options,
                ..Seg::default()
            },
        );
        b.send_raw(ms(0), &syn_ack);
        assert_eq!(a.recv_raw(ms(100)), Some(syn_ack));

        // A malformed list (length 0 after our option) crosses unchanged.
        let bad_options = [
            253, 20, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 8, 0, 0, 0,
        ];
        let bad = build(
            client(1000),
            server(80),
            Seg {
                seq: 101,
                ack: Some(501),
                options: &bad_options,
                ..Seg::default()
            },
        );
        a.send_raw(ms(1), &bad);
        assert_eq!(b.recv_raw(ms(100)), Some(bad));
        assert_eq!(net.stats().options_stripped, 1);

        // Turned off: passes.
        net.strip_option(Direction::AtoB, 253, false);
        a.send_raw(ms(2), &syn);
        assert_eq!(b.recv_raw(ms(100)), Some(syn));
    }

    #[test]
    fn strip_options_walker() {
        let kinds: BTreeSet<u8> = [8, 253].into_iter().collect();
        let mut ts = [1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(strip_options(&mut ts, &kinds), Some(1));
        assert_eq!(ts, [1; 12]);
        // Options after EOL are padding and stay.
        let mut after_eol = [0, 0, 8, 2];
        assert_eq!(strip_options(&mut after_eol, &kinds), Some(0));
        assert_eq!(after_eol, [0, 0, 8, 2]);
        // Overrun, length 1, missing length: untouched.
        for bad in [&[8u8, 10, 1, 2][..], &[253, 1, 8, 2], &[8, 2, 253]] {
            let mut copy = bad.to_vec();
            assert_eq!(strip_options(&mut copy, &kinds), None);
            assert_eq!(copy, bad);
        }
        // NOP and EOL kinds are never stripped.
        let nops: BTreeSet<u8> = [0, 1].into_iter().collect();
        let mut list = [1, 1, 0, 0];
        assert_eq!(strip_options(&mut list, &nops), Some(0));
    }

    #[test]
    fn bad_checksum_stays_bad_after_rewrite() {
        let (net, a, b) = pair(LinkConfig::default());
        net.enable_nat(PUBLIC);
        let mut pkt = data(client(1000), server(80), 1, b"payload");
        let last = pkt.len() - 1;
        pkt[last] ^= 0xff;
        a.send_raw(ms(0), &pkt);
        let got = b.recv_raw(ms(100)).expect("delivered");
        let (src, _, ok) = inspect(&got);
        assert_eq!(*src.ip(), PUBLIC);
        assert!(!ok, "a corrupt segment must not be repaired");
    }

    #[test]
    fn nat_rewrites_translates_back_and_state_loss_gives_new_port() {
        let (net, a, b) = pair(LinkConfig::default());
        net.enable_nat(PUBLIC);
        a.send_raw(ms(0), &data(client(1000), server(80), 1, b"a"));
        let got = b.recv_raw(ms(100)).expect("delivered");
        let (src, dst, ok) = inspect(&got);
        assert!(ok);
        assert_eq!(src, SocketAddrV4::new(PUBLIC, NAT_FIRST_PORT));
        assert_eq!(dst, server(80));

        // Same 4-tuple, same mapping.
        a.send_raw(ms(1), &data(client(1000), server(80), 2, b"b"));
        let (src_again, _, _) = inspect(&b.recv_raw(ms(100)).expect("delivered"));
        assert_eq!(src_again, src);

        // The reply is translated back.
        b.send_raw(ms(2), &data(server(80), src, 1, b"r"));
        let (rsrc, rdst, ok) = inspect(&a.recv_raw(ms(100)).expect("delivered"));
        assert!(ok);
        assert_eq!((rsrc, rdst), (server(80), client(1000)));

        // No mapping for that port, or from another remote: dropped.
        let other = SocketAddrV4::new(PUBLIC, 4242);
        assert_eq!(
            b.send_raw(ms(3), &data(server(80), other, 1, b"?")),
            Fate::Dropped(DropReason::NatNoMapping)
        );
        assert_eq!(
            b.send_raw(ms(3), &data(server(81), src, 1, b"?")),
            Fate::Dropped(DropReason::NatNoMapping)
        );

        // State loss: the old port is dead, the next segment gets a new one.
        net.nat_lose_state();
        assert_eq!(
            b.send_raw(ms(4), &data(server(80), src, 1, b"r")),
            Fate::Dropped(DropReason::NatNoMapping)
        );
        a.send_raw(ms(5), &data(client(1000), server(80), 3, b"c"));
        let (new_src, _, _) = inspect(&b.recv_raw(ms(100)).expect("delivered"));
        assert_eq!(new_src, SocketAddrV4::new(PUBLIC, NAT_FIRST_PORT + 1));

        // Public address change keeps the port, changes the address.
        let moved = Ipv4Addr::new(10, 0, 0, 98);
        net.nat_set_public_addr(moved);
        a.send_raw(ms(6), &data(client(1000), server(80), 4, b"d"));
        let (moved_src, _, ok) = inspect(&b.recv_raw(ms(100)).expect("delivered"));
        assert!(ok);
        assert_eq!(moved_src, SocketAddrV4::new(moved, NAT_FIRST_PORT + 1));
        assert_eq!(net.stats().nat_translated, 5);
    }

    #[test]
    fn firewall_drops_mid_connection_after_state_loss() {
        let (net, a, b) = pair(LinkConfig::default());
        net.enable_firewall();
        let mid = data(client(1000), server(80), 101, b"mid");
        let reply = data(server(80), client(1000), 501, b"reply");
        // No state yet: mid-connection segments die, both ways.
        assert_eq!(a.send_raw(ms(0), &mid), Fate::Dropped(DropReason::Firewall));
        assert_eq!(
            b.send_raw(ms(0), &reply),
            Fate::Dropped(DropReason::Firewall)
        );
        // A SYN from side B creates nothing.
        let syn_from_b = build(
            server(80),
            client(1000),
            Seg {
                seq: 1,
                syn: true,
                ..Seg::default()
            },
        );
        assert_eq!(
            b.send_raw(ms(0), &syn_from_b),
            Fate::Dropped(DropReason::Firewall)
        );
        // A side-A SYN opens it.
        let syn = build(
            client(1000),
            server(80),
            Seg {
                seq: 100,
                syn: true,
                ..Seg::default()
            },
        );
        assert!(a.send_raw(ms(1), &syn).arrival().is_some());
        assert!(b.send_raw(ms(2), &reply).arrival().is_some());
        assert!(a.send_raw(ms(3), &mid).arrival().is_some());
        // State loss.
        net.firewall_lose_state();
        assert_eq!(a.send_raw(ms(4), &mid), Fate::Dropped(DropReason::Firewall));
        assert_eq!(
            b.send_raw(ms(4), &reply),
            Fate::Dropped(DropReason::Firewall)
        );
        assert!(a.send_raw(ms(5), &syn).arrival().is_some());
        assert!(a.send_raw(ms(6), &mid).arrival().is_some());
        assert_eq!(net.stats().dropped(DropReason::Firewall), 5);
        // Non-TCP crosses.
        let mut udp = Vec::new();
        PacketBuilder::ipv4(CLIENT.octets(), SERVER.octets(), 64)
            .udp(5, 6)
            .write_to_vec(&mut udp, b"udp")
            .expect("builds");
        net.firewall_lose_state();
        assert!(a.send_raw(ms(7), &udp).arrival().is_some());
    }

    /// Runs a handshake and some data through the network by hand; returns
    /// (client's next seq, server's next seq).
    fn handshake_and_data(a: &LinkDevice, b: &LinkDevice, public: SocketAddrV4) -> (u32, u32) {
        let syn = Seg {
            seq: 1000,
            syn: true,
            ..Seg::default()
        };
        a.send_raw(ms(0), &build(client(1000), server(80), syn));
        let syn_ack = Seg {
            seq: 5000,
            ack: Some(1001),
            syn: true,
            ..Seg::default()
        };
        b.send_raw(ms(1), &build(server(80), public, syn_ack));
        a.send_raw(ms(2), &data(client(1000), server(80), 1001, &[7; 300]));
        // A retransmission of older data must not move the tracker back.
        a.send_raw(ms(3), &data(client(1000), server(80), 1001, &[7; 100]));
        b.send_raw(ms(4), &data(server(80), public, 5001, &[9; 42]));
        let fin = Seg {
            seq: 5043,
            ack: Some(1301),
            fin: true,
            ..Seg::default()
        };
        b.send_raw(ms(5), &build(server(80), public, fin));
        (1301, 5044)
    }

    #[test]
    fn inject_rst_carries_the_peers_next_seq() {
        let (net, a, b) = pair(LinkConfig::default());
        let (a_next, b_next) = handshake_and_data(&a, &b, client(1000));
        for _ in 0..10 {
            a.recv_raw(ms(100));
            b.recv_raw(ms(100));
        }
        assert_eq!(
            net.connections(),
            vec![TrackedConnection {
                a_view: FourTuple::new(client(1000), server(80)),
                b_view: FourTuple::new(client(1000), server(80)),
                a_next_seq: Some(a_next),
                b_next_seq: Some(b_next),
            }]
        );
        net.set_capture(true);
        assert_eq!(net.inject_rst(ms(200), Side::A), 1);
        let rst = a.recv_raw(ms(210)).expect("rst delivered");
        let (src, dst, ok) = inspect(&rst);
        assert!(ok, "checksums verify");
        assert_eq!((src, dst), (server(80), client(1000)));
        let ip = Ipv4Packet::new_checked(&rst[..]).expect("ipv4");
        let seg = TcpPacket::new_checked(ip.payload()).expect("tcp");
        assert!(seg.rst() && seg.ack() && !seg.syn() && !seg.fin());
        assert_eq!(seg.seq_number().0 as u32, b_next);
        assert_eq!(seg.ack_number().0 as u32, a_next);
        assert_eq!(net.captured()[0].direction, Direction::BtoA);

        // Toward B, named by the tuple in the other orientation: A's next seq.
        let tuple = FourTuple::new(server(80), client(1000));
        assert_eq!(net.inject_rst_for(ms(200), Side::B, tuple), 1);
        let rst = b.recv_raw(ms(210)).expect("rst delivered");
        let (src, dst, ok) = inspect(&rst);
        assert!(ok);
        assert_eq!((src, dst), (client(1000), server(80)));
        let ip = Ipv4Packet::new_checked(&rst[..]).expect("ipv4");
        let seg = TcpPacket::new_checked(ip.payload()).expect("tcp");
        assert_eq!(seg.seq_number().0 as u32, a_next);
        assert_eq!(
            net.inject_rst_for(ms(200), Side::B, FourTuple::new(client(9), server(80))),
            0
        );
        assert_eq!(net.stats().injected, 2);
    }

    #[test]
    fn inject_rst_toward_b_uses_the_nat_view() {
        let (net, a, b) = pair(LinkConfig::default());
        net.enable_nat(PUBLIC);
        let public = SocketAddrV4::new(PUBLIC, NAT_FIRST_PORT);
        let (a_next, _) = handshake_and_data(&a, &b, public);
        assert_eq!(net.stats().dropped(DropReason::NatNoMapping), 0);
        assert_eq!(net.connections()[0].b_view.src, public);
        assert_eq!(
            net.inject_rst_for(ms(10), Side::B, FourTuple::new(public, server(80))),
            1
        );
        let received: Vec<Vec<u8>> = (0..20).map_while(|_| b.recv_raw(ms(100))).collect();
        let rst = received.last().expect("rst delivered");
        let (src, dst, ok) = inspect(rst);
        assert!(ok);
        assert_eq!((src, dst), (public, server(80)));
        let ip = Ipv4Packet::new_checked(&rst[..]).expect("ipv4");
        let seg = TcpPacket::new_checked(ip.payload()).expect("tcp");
        assert!(seg.rst());
        assert_eq!(seg.seq_number().0 as u32, a_next);
    }

    #[test]
    fn inject_rst_during_handshake_acks_the_syn() {
        let (net, a, _b) = pair(LinkConfig::default());
        let syn = Seg {
            seq: 77,
            syn: true,
            ..Seg::default()
        };
        a.send_raw(ms(0), &build(client(1000), server(80), syn));
        assert_eq!(net.inject_rst(ms(1), Side::A), 1);
        let rst = a.recv_raw(ms(100)).expect("rst delivered");
        let ip = Ipv4Packet::new_checked(&rst[..]).expect("ipv4");
        let seg = TcpPacket::new_checked(ip.payload()).expect("tcp");
        assert!(seg.rst() && seg.ack());
        assert_eq!(seg.ack_number().0 as u32, 78);
        assert_eq!(net.inject_rst(ms(1), Side::B), 1);
    }

    #[test]
    fn drop_matching_drops_exactly_count() {
        let (net, a, b) = pair(LinkConfig::default());
        let seen = Rc::new(RefCell::new(Vec::new()));
        let log = Rc::clone(&seen);
        net.drop_matching(Direction::AtoB, 2, move |s: &SegmentInfo| {
            log.borrow_mut().push(s.seq);
            s.payload_len == 5
        });
        let mut fates = Vec::new();
        for i in 0..6u32 {
            let payload: &[u8] = if i % 2 == 0 { b"match" } else { b"no" };
            fates.push(a.send_raw(
                ms(i64::from(i)),
                &data(client(1000), server(80), i, payload),
            ));
        }
        let dropped: Vec<bool> = fates
            .iter()
            .map(|f| *f == Fate::Dropped(DropReason::Rule))
            .collect();
        assert_eq!(dropped, [true, false, true, false, false, false]);
        // The rule is gone once spent; it saw only segments until then.
        assert_eq!(*seen.borrow(), vec![0, 1, 2]);
        // The other direction is never matched.
        net.drop_matching(Direction::AtoB, 1, |s: &SegmentInfo| s.is_syn_ack());
        let syn_ack = Seg {
            seq: 1,
            ack: Some(1),
            syn: true,
            ..Seg::default()
        };
        assert!(
            b.send_raw(ms(10), &build(server(80), client(1000), syn_ack))
                .arrival()
                .is_some()
        );
        // A boxed predicate works too.
        net.clear_drop_rules();
        let boxed: Box<dyn FnMut(&SegmentInfo) -> bool> = Box::new(|s| s.flags.fin);
        net.drop_matching(Direction::BtoA, 1, boxed);
        let fin = Seg {
            seq: 2,
            ack: Some(1),
            fin: true,
            ..Seg::default()
        };
        let fin = build(server(80), client(1000), fin);
        assert_eq!(b.send_raw(ms(11), &fin), Fate::Dropped(DropReason::Rule));
        assert!(b.send_raw(ms(12), &fin).arrival().is_some());
        assert_eq!(net.stats().dropped(DropReason::Rule), 3);
    }

    #[test]
    fn garbage_does_not_panic() {
        let (net, a, b) = pair(LinkConfig::default());
        net.enable_nat(PUBLIC);
        net.enable_firewall();
        net.strip_option(Direction::AtoB, 253, true);
        net.strip_option(Direction::BtoA, 2, true);
        net.drop_matching(Direction::AtoB, 1000, |s: &SegmentInfo| {
            s.payload_len > 9000
        });
        net.set_capture(true);
        net.set_capture_entering(true);
        let mut rng = StdRng::seed_from_u64(99);
        let valid = build(
            client(1000),
            server(80),
            Seg {
                seq: 1,
                syn: true,
                options: &[
                    2, 4, 5, 0xb4, 253, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
                payload: b"data",
                ..Seg::default()
            },
        );
        for i in 0..2000i64 {
            let mut bytes = match i % 4 {
                0 => (0..rng.random_range(0..80)).map(|_| rng.random()).collect(),
                1 => valid[..rng.random_range(0..=valid.len())].to_vec(),
                _ => {
                    let mut v = valid.clone();
                    for _ in 0..rng.random_range(1..4) {
                        let at = rng.random_range(0..v.len());
                        v[at] = rng.random();
                    }
                    v
                }
            };
            if i % 7 == 0 {
                // Look like IPv4 more often.
                if let Some(first) = bytes.first_mut() {
                    *first = 0x45;
                }
            }
            a.send_raw(ms(i), &bytes);
            b.send_raw(ms(i), &bytes);
        }
        // An IPv6 packet is dropped, not panicked on.
        let mut v6 = Vec::new();
        PacketBuilder::ipv6([1; 16], [2; 16], 64)
            .tcp(1, 2, 3, 4)
            .write_to_vec(&mut v6, b"x")
            .expect("builds");
        assert_eq!(
            a.send_raw(ms(3000), &v6),
            Fate::Dropped(DropReason::Malformed)
        );
        for _ in 0..5000 {
            if a.recv_raw(ms(10_000)).is_none() && b.recv_raw(ms(10_000)).is_none() {
                break;
            }
        }
        net.inject_rst(ms(10_000), Side::A);
        net.inject_rst(ms(10_000), Side::B);
        let stats = net.stats();
        assert_eq!(stats.sent, 4001);
        assert!(stats.dropped(DropReason::Malformed) > 0);
    }

    #[test]
    fn oversize_and_unknown_destination_are_dropped() {
        let (net, a, _b) = pair(LinkConfig {
            mtu: 100,
            ..LinkConfig::default()
        });
        let big = data(client(1000), server(80), 1, &[0; 200]);
        assert_eq!(a.send_raw(ms(0), &big), Fate::Dropped(DropReason::Oversize));
        let stray = data(
            client(1000),
            SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 80),
            1,
            b"",
        );
        assert_eq!(
            a.send_raw(ms(0), &stray),
            Fate::Dropped(DropReason::NoRoute)
        );
        // Side A does not reach side A.
        let sideways = data(client(1000), client(1001), 1, b"");
        assert_eq!(
            a.send_raw(ms(0), &sideways),
            Fate::Dropped(DropReason::NoRoute)
        );
        assert_eq!(net.stats().total_dropped(), 3);
    }

    #[test]
    fn rate_serializes_and_tail_drops() {
        // 1000 bytes/s: a 100-byte packet takes 100 ms on the wire.
        let (net, a, b) = pair(LinkConfig {
            one_way_delay: Duration::from_millis(10),
            rate_bytes_per_sec: Some(1000),
            queue_limit: 3,
            ..LinkConfig::default()
        });
        let pkt = data(client(1000), server(80), 1, &[0; 60]);
        assert_eq!(pkt.len(), 100);
        let arrivals: Vec<Fate> = (0..4).map(|_| a.send_raw(ms(0), &pkt)).collect();
        assert_eq!(
            arrivals,
            [
                Fate::Scheduled { arrival: ms(110) },
                Fate::Scheduled { arrival: ms(210) },
                Fate::Scheduled { arrival: ms(310) },
                Fate::Dropped(DropReason::QueueFull),
            ]
        );
        // Once the first has left the queue, there is room again.
        assert_eq!(a.send_raw(ms(100), &pkt).arrival(), Some(ms(410)));
        // The other direction has its own queue.
        let back = data(server(80), client(1000), 1, &[0; 60]);
        assert_eq!(b.send_raw(ms(0), &back).arrival(), Some(ms(110)));
        assert_eq!(net.stats().dropped(DropReason::QueueFull), 1);
    }

    #[test]
    fn address_change_redirects_delivery() {
        let (net, a, b) = pair(LinkConfig::default());
        let b2 = net.endpoint(Side::B, &[Ipv4Addr::new(10, 0, 0, 3)]);
        let pkt = data(client(1000), server(80), 1, b"x");
        a.send_raw(ms(0), &pkt);
        // In flight when the address moves to another endpoint: lost.
        b.set_addresses(&[Ipv4Addr::new(10, 0, 0, 4)]);
        assert_eq!(b.recv_raw(ms(100)), None);
        assert_eq!(net.stats().dropped(DropReason::NoRoute), 1);
        b2.set_addresses(&[Ipv4Addr::new(10, 0, 0, 3), SERVER]);
        assert!(a.send_raw(ms(1), &pkt).arrival().is_some());
        assert_eq!(b2.recv_raw(ms(100)), Some(pkt));
        assert_eq!(b2.addresses(), vec![Ipv4Addr::new(10, 0, 0, 3), SERVER]);
        assert_eq!(b2.id().index(), 2);
    }

    #[test]
    fn capture_records_both_points() {
        let (net, a, b) = pair(LinkConfig::default());
        net.enable_nat(PUBLIC);
        net.set_capture(true);
        net.set_capture_entering(true);
        let pkt = data(client(1000), server(80), 1, b"x");
        a.send_raw(ms(5), &pkt);
        let got = b.recv_raw(ms(100)).expect("delivered");
        let cap = net.take_captured();
        assert_eq!(cap.len(), 2);
        assert_eq!(
            (cap[0].point, &cap[0].bytes),
            (CapturePoint::Entering, &pkt)
        );
        assert_eq!((cap[1].point, &cap[1].bytes), (CapturePoint::Leaving, &got));
        assert!(
            cap.iter()
                .all(|c| c.time == ms(5) && c.direction == Direction::AtoB)
        );
        assert!(net.captured().is_empty());
    }

    // -- smoltcp end to end --------------------------------------------------

    struct Host {
        dev: LinkDevice,
        iface: Interface,
        sockets: SocketSet<'static>,
        handle: SocketHandle,
    }

    impl Host {
        fn new(dev: LinkDevice, addr: Ipv4Addr, seed: u64) -> Host {
            let mut dev = dev;
            let mut config = Config::new(HardwareAddress::Ip);
            config.random_seed = seed;
            let mut iface = Interface::new(config, &mut dev, Instant::ZERO);
            iface.update_ip_addrs(|addrs| {
                addrs
                    .push(IpCidr::new(IpAddress::Ipv4(addr), 24))
                    .expect("room for one address");
            });
            let socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 64 * 1024]),
                tcp::SocketBuffer::new(vec![0; 64 * 1024]),
            );
            let mut sockets = SocketSet::new(Vec::new());
            let handle = sockets.add(socket);
            Host {
                dev,
                iface,
                sockets,
                handle,
            }
        }

        fn poll(&mut self, now: Instant) {
            self.iface.poll(now, &mut self.dev, &mut self.sockets);
        }

        fn poll_at(&mut self, now: Instant) -> Option<Instant> {
            self.iface.poll_at(now, &self.sockets)
        }

        fn socket(&mut self) -> &mut tcp::Socket<'static> {
            self.sockets.get_mut::<tcp::Socket>(self.handle)
        }
    }

    /// Client on side A, server on side B, connected through `net`.
    fn hosts(net: &Network) -> (Host, Host) {
        let mut a = Host::new(net.endpoint(Side::A, &[CLIENT]), CLIENT, 1);
        let mut b = Host::new(net.endpoint(Side::B, &[SERVER]), SERVER, 2);
        b.socket().listen(80).expect("listen");
        let cx = a.iface.context();
        a.sockets
            .get_mut::<tcp::Socket>(a.handle)
            .connect(cx, (IpAddress::Ipv4(SERVER), 80), 49152)
            .expect("connect");
        (a, b)
    }

    /// Polls both hosts, lets `app` act, then jumps to the next event.
    /// Returns the time at which `app` returned true, or None.
    fn run(
        net: &Network,
        a: &mut Host,
        b: &mut Host,
        start: Instant,
        steps: usize,
        mut app: impl FnMut(Instant, &mut Host, &mut Host) -> bool,
    ) -> Option<Instant> {
        let mut now = start;
        for _ in 0..steps {
            a.poll(now);
            b.poll(now);
            if app(now, a, b) {
                return Some(now);
            }
            a.poll(now);
            b.poll(now);
            let next = [net.next_event(), a.poll_at(now), b.poll_at(now)]
                .into_iter()
                .flatten()
                .min();
            now = next
                .filter(|t| *t > now)
                .unwrap_or(now + Duration::from_millis(1));
        }
        None
    }

    #[test]
    fn smoltcp_pair_transfers_over_the_link() {
        let net = Network::new(LinkConfig {
            one_way_delay: Duration::from_millis(20),
            seed: 3,
            ..LinkConfig::default()
        });
        check_transfer(&net, 30_000, 20_000);
        assert_eq!(net.stats().total_dropped(), 0);
    }

    #[test]
    fn smoltcp_pair_survives_nat_firewall_stripping_loss_and_rate() {
        let net = Network::new(LinkConfig {
            one_way_delay: Duration::from_millis(5),
            loss: 0.05,
            seed: 11,
            rate_bytes_per_sec: Some(1_000_000),
            queue_limit: 20,
            ..LinkConfig::default()
        });
        net.enable_nat(PUBLIC);
        net.enable_firewall();
        net.strip_option(Direction::AtoB, 2, true); // MSS
        net.strip_option(Direction::BtoA, 4, true); // SACK permitted
        net.set_capture(true);
        let (_, mut b) = check_transfer(&net, 50_000, 200_000);
        assert_eq!(
            b.socket().remote_endpoint(),
            Some((IpAddress::Ipv4(PUBLIC), NAT_FIRST_PORT).into())
        );
        let stats = net.stats();
        assert!(stats.dropped(DropReason::Loss) > 0);
        assert!(stats.options_stripped >= 2, "{stats:?}");
        assert!(stats.nat_translated > 10);
        // Every packet that left the middlebox has valid checksums.
        for c in net.captured() {
            assert!(inspect(&c.bytes).2);
        }
    }

    #[test]
    fn same_seed_same_run() {
        let capture = |seed: u64| {
            let net = Network::new(LinkConfig {
                one_way_delay: Duration::from_millis(3),
                loss: 0.1,
                seed,
                rate_bytes_per_sec: Some(500_000),
                queue_limit: 10,
                ..LinkConfig::default()
            });
            net.set_capture(true);
            check_transfer(&net, 20_000, 100_000);
            (net.captured(), net.stats())
        };
        let first = capture(5);
        assert_eq!(first, capture(5));
        assert_ne!(first.0, capture(6).0);
    }

    /// Client sends `total` bytes to the server; checks they arrive intact.
    fn check_transfer(net: &Network, total: usize, steps: usize) -> (Host, Host) {
        let (mut a, mut b) = hosts(net);
        let payload: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let mut sent = 0;
        let mut received = Vec::new();
        let done = run(net, &mut a, &mut b, Instant::ZERO, steps, |_, a, b| {
            let c = a.socket();
            if c.can_send() && sent < total {
                sent += c.send_slice(&payload[sent..]).expect("send");
            }
            let s = b.socket();
            if s.can_recv() {
                s.recv(|buf| {
                    received.extend_from_slice(buf);
                    (buf.len(), ())
                })
                .expect("recv");
            }
            received.len() == total
        });
        assert!(
            done.is_some(),
            "transfer finished: {} of {total}",
            received.len()
        );
        assert_eq!(received, payload);
        (a, b)
    }

    #[test]
    fn smoltcp_accepts_injected_rsts() {
        let net = Network::new(LinkConfig::default());
        let (mut a, mut b) = check_transfer(&net, 5_000, 10_000);
        // Let everything settle (all data acknowledged).
        let idle = run(
            &net,
            &mut a,
            &mut b,
            Instant::from_secs(5),
            10_000,
            |_, a, _| a.socket().send_queue() == 0,
        )
        .expect("idle");
        let idle = run(&net, &mut a, &mut b, idle, 1_000, |now, _, _| {
            net.next_event().is_none() && now > idle + Duration::from_millis(100)
        })
        .expect("quiet");
        assert_eq!(a.socket().state(), tcp::State::Established);
        assert_eq!(b.socket().state(), tcp::State::Established);
        assert_eq!(net.inject_rst(idle, Side::A), 1);
        assert_eq!(net.inject_rst(idle, Side::B), 1);
        let closed = run(&net, &mut a, &mut b, idle, 1_000, |_, a, b| {
            a.socket().state() == tcp::State::Closed && b.socket().state() == tcp::State::Closed
        });
        assert!(closed.is_some(), "both sides accepted the RST");
    }
}
