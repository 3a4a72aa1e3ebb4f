//! The link's configuration and the small public types its users see.
//!
//! Owns [`LinkConfig`], the two [`Side`]s and [`Direction`]s of the
//! middlebox, [`EndpointId`], [`DropReason`] and [`Fate`] (what happened to
//! a packet), [`LinkStats`], the view of a segment drop rules get
//! ([`SegmentInfo`], [`TcpFlags`]), [`TrackedConnection`] and the capture
//! records ([`CapturePoint`], [`CapturedPacket`]). Behaviour lives elsewhere.

use std::net::SocketAddrV4;

use smoltcp::time::{Duration, Instant};

use crate::segment::FourTuple;

/// Parameters of a [`Network`](super::Network).
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

    /// Position in per-direction arrays.
    pub(super) fn index(self) -> usize {
        match self {
            Direction::AtoB => 0,
            Direction::BtoA => 1,
        }
    }
}

/// Identifies an endpoint of a [`Network`](super::Network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(pub(super) usize);

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
    /// Inside a [`Network::blackhole`](super::Network::blackhole) period.
    Blackhole,
    /// Taken by a [`Network::drop_matching`](super::Network::drop_matching) rule.
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

    /// Position in [`DropReason::ALL`].
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

/// Counters of a [`Network`](super::Network).
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

    /// Counts one packet dropped for `reason`.
    pub(super) fn count_drop(&mut self, reason: DropReason) {
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

/// A TCP connection the middlebox has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackedConnection {
    /// As side A sees it: `local` is the side-A endpoint, `remote` the
    /// side-B one.
    pub a_view: FourTuple,
    /// As side B sees it: `local` is the side-B endpoint, `remote` side A's
    /// (possibly NATed) address and port, as in the last segment that
    /// crossed.
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
