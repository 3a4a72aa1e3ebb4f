//! The replay harness: a recorded conversation's peer packets driven into a
//! fresh [`Stack`] in virtual time, and the stack's answers captured.
//!
//! Owns [`read_trace`] (pcap to IP packets, IPv4 and IPv6), [`ReplayDevice`]
//! (a smoltcp [`Device`] fed from a trace), its [`Rewriter`] and the
//! [`Replay`] driver. Traces of either family replay into a stack of that
//! family (our address decides; IPv6 TCP behind extension headers is left
//! as recorded).
//!
//! A trace is seen from one host, *ours*: packets whose IP source is our
//! recorded address are what our side sent then (kept only as a reference),
//! packets addressed to it are the *peer's*, and those are injected, in
//! order, each at its recorded time relative to the trace's first packet
//! (virtual time, passed to [`Stack::poll`]), at most one per poll, so the
//! stack answers each before the next arrives (a capture's timestamps are
//! its poll times: a SYN and the ACK of our SYN-ACK may share one).
//! Everything our fresh stack sends is captured as an answer.
//!
//! The fresh stack makes its own random choices, so the recorded peer
//! packets are rewritten, when released, to match them (learnt by comparing
//! each answer with the recorded packet it stands for):
//! - addresses: our recorded address becomes the replay's, and any peer
//!   address may be mapped to another ([`ReplayConfig::peer_addresses`]);
//! - our TCP ISN: the peer's acknowledgement numbers (and SACK blocks) are
//!   shifted by (our new ISN - recorded ISN), per connection; a connection we
//!   initiate is paired with our recorded SYNs in order, one we accept with
//!   our recorded SYN-ACK to the same peer endpoint;
//! - our ephemeral port, when our side initiates;
//! - in the peer's flow options: our TIFID half becomes our new half; a
//!   TIAck that echoes the TISeq of our handshake option on the same
//!   connection (the confirmation of a SYN-ACK, the SYN-ACK to a SYN) becomes
//!   our new one, and any other TIAck (always a position in our TI sequence
//!   space) is shifted by (our new TI ISN - recorded TI ISN); a RST's TIAck
//!   (zero) is left. The echo rule matters where our side's state decided
//!   the value: a responder that had not yet processed an ACK in the same
//!   batch as a resume SYN announced an older `snd_una` than a fresh replay
//!   does.
//!
//! IP and TCP checksums are recomputed with smoltcp's wire types. TCP
//! timestamps are not rewritten (smoltcp does not check echoed values).
//! Nothing here panics on any input: a packet that cannot be parsed is
//! injected as recorded, and a trace that cannot be read is an error.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration as StdDuration;

use pcap_file::DataLink;
use pcap_file::pcap::PcapReader;
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, TcpSeqNumber};
use ti_stack::segment::Segment;
use ti_stack::{Ipv6Addressing, Stack, StackConfig};
use tifid::option::{OPTION_LEN, OptionWalker};
use tifid::seq::SEQ48_MODULUS;
use tifid::{DEFAULT_KIND, FlowOption, FlowOptionRepr, Half, Seq48, Tifid};

use crate::exchange::{App, AppError, AppProgress};
use crate::paper_traces::{Trace, TracePacket};

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be read.
    #[error("cannot read trace: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a pcap capture.
    #[error("not a readable pcap capture: {0}")]
    Pcap(String),
    /// The capture's link type is not one the harness reads.
    #[error("link type {0} not supported (RAW, IPV4, ETHERNET, LINUX_SLL, LINUX_SLL2 are)")]
    LinkType(u32),
}

/// Reads a pcap capture (link type RAW, IPV4, IPV6, ETHERNET, LINUX_SLL or
/// LINUX_SLL2) into its IP packets (IPv4 and IPv6), in file order. Frames
/// that carry neither are skipped.
pub fn read_trace(bytes: &[u8]) -> Result<Vec<TracePacket>, TraceError> {
    Ok(read_frames(bytes)?.into_iter().flatten().collect())
}

/// Reads a pcap capture like [`read_trace`], one entry per frame: the
/// IP packet it carries, or `None`. Entry `i` is the frame tcpdump's
/// `-#` numbers `i + 1`.
pub fn read_frames(bytes: &[u8]) -> Result<Vec<Option<TracePacket>>, TraceError> {
    let mut reader = PcapReader::new(bytes).map_err(|e| TraceError::Pcap(e.to_string()))?;
    let link = reader.header().datalink;
    let mut frames = Vec::new();
    while let Some(record) = reader.next_packet() {
        let record = record.map_err(|e| TraceError::Pcap(e.to_string()))?;
        let data: &[u8] = &record.data;
        let ip = match link {
            DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => Some(data),
            DataLink::ETHERNET => strip_link(data, 14, 12),
            DataLink::LINUX_SLL => strip_link(data, 16, 14),
            DataLink::LINUX_SLL2 => strip_link(data, 20, 0),
            other => return Err(TraceError::LinkType(u32::from(other))),
        };
        frames.push(
            ip.filter(|ip| ip.first().is_some_and(|b| matches!(b >> 4, 4 | 6)))
                .map(|ip| TracePacket {
                    time: record.timestamp,
                    bytes: ip.to_vec(),
                }),
        );
    }
    Ok(frames)
}

/// The payload of a link header of `len` bytes whose EtherType is at
/// `ethertype_at`, if it is IPv4 or IPv6.
fn strip_link(frame: &[u8], len: usize, ethertype_at: usize) -> Option<&[u8]> {
    let ethertype = frame.get(ethertype_at..ethertype_at + 2)?;
    (ethertype == [0x08, 0x00] || ethertype == [0x86, 0xdd])
        .then(|| frame.get(len..))
        .flatten()
}

/// Reads a trace file with [`read_trace`].
pub fn load_trace(path: impl AsRef<std::path::Path>) -> Result<Vec<TracePacket>, TraceError> {
    read_trace(&std::fs::read(path)?)
}

/// One packet of a replay: when it crossed the device, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Position among all packets of the replay, both directions, in the
    /// order they crossed the device.
    pub index: usize,
    /// Virtual time.
    pub time: Instant,
    /// The IP datagram (IPv4 or IPv6).
    pub bytes: Vec<u8>,
}

impl Packet {
    /// The packet as a TCP segment (our option of kind `kind` parsed),
    /// or `None` if it is not one.
    pub fn segment(&self, kind: u8) -> Option<Segment> {
        Segment::parse(&self.bytes, kind)
    }
}

/// How to replay a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayConfig {
    /// Our address in the trace: packets from it are our recorded side,
    /// packets to it the peer's.
    pub recorded_ours: IpAddr,
    /// Our address in the replay (the fresh stack's; of the trace's
    /// family).
    pub ours: IpAddr,
    /// Peer addresses to rewrite, recorded to replayed.
    pub peer_addresses: Vec<(IpAddr, IpAddr)>,
    /// Index of the first trace packet replayed; earlier ones are ignored,
    /// and virtual time zero is this packet's time.
    pub start: usize,
    /// The fresh stack's seed (ports, TIFID halves, TI ISNs).
    pub seed: u64,
    /// Our flow option's kind.
    pub kind: u8,
    /// How long the replay goes on after the trace's last packet.
    pub settle: Duration,
}

impl ReplayConfig {
    /// Replays the trace with our side at `ours`, unchanged addresses, from
    /// the first packet, with seed 1.
    pub fn new(ours: impl Into<IpAddr>) -> ReplayConfig {
        let ours = ours.into();
        ReplayConfig {
            recorded_ours: ours,
            ours,
            peer_addresses: Vec::new(),
            start: 0,
            seed: 1,
            kind: DEFAULT_KIND,
            settle: Duration::from_millis(50),
        }
    }

    /// The fresh stack's configuration: our replay address on a /24 (IPv4)
    /// or a /64 (IPv6, the stack IPv6-only), a gateway in it (so peers on
    /// other subnets are reachable), the seed.
    pub fn stack_config(&self) -> StackConfig {
        let mut config = match self.ours {
            IpAddr::V4(ours) => {
                let mut config = StackConfig::new(ours);
                config.prefix_len = 24;
                let [a, b, c, d] = ours.octets();
                config.gateway = Some(Ipv4Addr::new(a, b, c, if d == 1 { 254 } else { 1 }));
                config
            }
            IpAddr::V6(ours) => {
                let mut config = StackConfig::new_v6(ours);
                let mut gateway = ours.segments();
                gateway[7] = if gateway[7] == 1 { 0xfe } else { 1 };
                config.ipv6 = Some(Ipv6Addressing {
                    address: ours,
                    prefix_len: 64,
                    gateway: Some(Ipv6Addr::from(gateway)),
                });
                config
            }
        };
        config.seed = Some(self.seed);
        config.option_kind = self.kind;
        config
    }

    /// The replay address of `recorded` (ours or a mapped peer).
    fn map_addr(&self, recorded: IpAddr) -> IpAddr {
        if recorded == self.recorded_ours {
            return self.ours;
        }
        self.peer_addresses
            .iter()
            .find(|(from, _)| *from == recorded)
            .map_or(recorded, |(_, to)| *to)
    }
}

/// One of our TCP connections: recorded port and ISN against the replay's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConnMap {
    /// The peer's endpoint (replay addresses).
    peer: SocketAddr,
    /// Our port in the trace.
    recorded_port: u16,
    /// Our port in the replay.
    port: u16,
    /// Our new TCP ISN minus the recorded one.
    delta: u32,
    /// The TISeq of our handshake option on this connection, recorded and
    /// new: the peer's handshake TIAck echoes it.
    ti_echo: Option<(Seq48, Seq48)>,
}

/// One of our TI-flows: recorded TIFID half and TI ISN against the replay's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowMap {
    /// Our half is the initiator's (first three bytes).
    initiator: bool,
    /// Our half in the trace.
    recorded_half: Half,
    /// Our half in the replay.
    half: Half,
    /// Our new TI ISN minus the recorded one, modulo 2^48.
    delta: u64,
}

/// What was learnt so far about our side's new choices, and the rewriting
/// of peer packets it implies. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Rewriter {
    kind: u8,
    /// Our recorded SYNs (no ACK), in order, and whether one was paired.
    recorded_syns: Vec<(Segment, bool)>,
    /// Our recorded SYN-ACKs, in order, and whether one was paired.
    recorded_syn_acks: Vec<(Segment, bool)>,
    conns: Vec<ConnMap>,
    flows: Vec<FlowMap>,
}

impl Rewriter {
    /// A rewriter for option kind `kind` that pairs our answers with our
    /// recorded packets `ours` (IPv4 datagrams, replay addresses).
    pub fn new<'a>(kind: u8, ours: impl IntoIterator<Item = &'a [u8]>) -> Rewriter {
        let mut rewriter = Rewriter {
            kind,
            ..Rewriter::default()
        };
        for seg in ours.into_iter().filter_map(|p| Segment::parse(p, kind)) {
            match (seg.syn, seg.ack, seg.rst) {
                (true, false, false) => rewriter.recorded_syns.push((seg, false)),
                (true, true, false) => rewriter.recorded_syn_acks.push((seg, false)),
                _ => {}
            }
        }
        rewriter
    }

    /// Learns from a packet our fresh stack sent: a SYN or SYN-ACK pairs a
    /// new connection (and flow) with its recorded counterpart.
    pub fn learn(&mut self, answer: &[u8]) {
        let Some(seg) = Segment::parse(answer, self.kind) else {
            return;
        };
        if !seg.syn || seg.rst {
            return;
        }
        let known = self
            .conns
            .iter()
            .any(|c| c.port == seg.src.port() && c.peer == seg.dst);
        if known {
            return;
        }
        let recorded = if seg.ack {
            self.recorded_syn_acks
                .iter_mut()
                .find(|(r, used)| !used && r.src.port() == seg.src.port() && r.dst == seg.dst)
        } else {
            self.recorded_syns
                .iter_mut()
                .find(|(r, used)| !used && r.dst == seg.dst)
        };
        let Some((recorded, used)) = recorded else {
            return;
        };
        *used = true;
        let recorded = *recorded;
        let options = match (seg.option, recorded.option) {
            (Ok(Some(new)), Ok(Some(old))) => Some((new, old)),
            _ => None,
        };
        self.conns.push(ConnMap {
            peer: seg.dst,
            recorded_port: recorded.src.port(),
            port: seg.src.port(),
            delta: seg.seq.wrapping_sub(recorded.seq),
            ti_echo: options.map(|(new, old)| (old.tiseq, new.tiseq)),
        });
        if let Some((new, old)) = options {
            let initiator = !seg.ack;
            let half = |o: &FlowOptionRepr| {
                if initiator {
                    o.tifid.initiator_half()
                } else {
                    o.tifid.responder_half()
                }
            };
            let (recorded_half, half_new) = (half(&old), half(&new));
            let exists = self
                .flows
                .iter()
                .any(|f| f.initiator == initiator && f.recorded_half == recorded_half);
            if !exists && !recorded_half.is_zero() {
                self.flows.push(FlowMap {
                    initiator,
                    recorded_half,
                    half: half_new,
                    delta: new.tiseq.value().wrapping_sub(old.tiseq.value()) & (SEQ48_MODULUS - 1),
                });
            }
        }
    }

    /// Rewrites a recorded peer packet (replay addresses already) in place
    /// to answer our fresh stack's choices, and recomputes its TCP checksum
    /// (the IP header is not touched). A packet that is not TCP over IPv4 or
    /// IPv6 (no extension headers), or is truncated, is left as it is.
    pub fn rewrite(&self, packet: &mut [u8]) {
        let Some((src, dst, range)) = tcp_span(packet) else {
            return;
        };
        let Some(segment) = packet.get_mut(range) else {
            return;
        };
        let Ok(mut tcp) = TcpPacket::new_checked(&mut *segment) else {
            return;
        };
        let peer = SocketAddr::from((src, tcp.src_port()));
        let conn = self
            .conns
            .iter()
            .rev()
            .find(|c| c.peer == peer && c.recorded_port == tcp.dst_port())
            .copied();
        let rst = tcp.rst();
        if let Some(conn) = conn {
            tcp.set_dst_port(conn.port);
            if tcp.ack() {
                let ack = tcp.ack_number().0 as u32;
                tcp.set_ack_number(TcpSeqNumber(ack.wrapping_add(conn.delta) as i32));
            }
        }
        let options_len = usize::from(tcp.header_len()).saturating_sub(20);
        if let Some(options) = segment.get_mut(20..20 + options_len) {
            self.rewrite_options(options, conn, rst);
        }
        let Ok(mut tcp) = TcpPacket::new_checked(segment) else {
            return;
        };
        tcp.fill_checksum(&IpAddress::from(src), &IpAddress::from(dst));
    }

    /// SACK blocks shifted by the connection's TCP delta; our flow option's
    /// TIFID half and TIAck mapped.
    fn rewrite_options(&self, options: &mut [u8], conn: Option<ConnMap>, rst: bool) {
        let tcp_delta = conn.map(|c| c.delta);
        let ti_echo = conn.and_then(|c| c.ti_echo);
        let spans: Vec<(usize, u8, usize)> = OptionWalker::new(options)
            .map_while(Result::ok)
            .map(|o| (o.offset, o.kind, o.bytes.len()))
            .collect();
        for (offset, kind, len) in spans {
            let Some(bytes) = options.get_mut(offset..offset + len) else {
                continue;
            };
            if kind == SACK_KIND {
                if let Some(delta) = tcp_delta {
                    for edge in bytes[2..].chunks_exact_mut(4) {
                        let value = u32::from_be_bytes([edge[0], edge[1], edge[2], edge[3]]);
                        edge.copy_from_slice(&value.wrapping_add(delta).to_be_bytes());
                    }
                }
            } else if kind == self.kind && len == OPTION_LEN {
                self.rewrite_flow_option(bytes, ti_echo, rst);
            }
        }
    }

    /// Our half of the TIFID and the TIAck of one flow option (20 bytes).
    /// A TIAck equal to our recorded handshake TISeq on this connection
    /// (`ti_echo`) echoes it and becomes our new one; any other TIAck is a
    /// position in our TI space and is shifted by the flow's delta.
    fn rewrite_flow_option(&self, bytes: &mut [u8], ti_echo: Option<(Seq48, Seq48)>, rst: bool) {
        let Ok(repr) = FlowOption::new_checked(&*bytes).and_then(|o| FlowOptionRepr::parse(&o))
        else {
            return;
        };
        let (a, b) = (repr.tifid.initiator_half(), repr.tifid.responder_half());
        let flow = self.flows.iter().find(|f| {
            (f.initiator && f.recorded_half == a) || (!f.initiator && f.recorded_half == b)
        });
        let Some(flow) = flow else {
            return;
        };
        let tifid = if flow.initiator {
            Tifid::from_halves(flow.half, b)
        } else {
            Tifid::from_halves(a, flow.half)
        };
        let tiack = match ti_echo {
            _ if rst => repr.tiack,
            Some((recorded, new)) if repr.tiack == recorded => new,
            _ => repr.tiack + flow.delta,
        };
        let new = FlowOptionRepr {
            tifid,
            tiseq: repr.tiseq,
            tiack,
        };
        bytes.copy_from_slice(&new.to_bytes(self.kind));
    }
}

/// TCP option kind of SACK blocks.
const SACK_KIND: u8 = 5;

/// A smoltcp device fed from a trace: releases the peer's recorded packets
/// (rewritten) when their time comes, and captures every packet sent.
#[derive(Debug)]
pub struct ReplayDevice {
    mtu: usize,
    /// Peer packets not yet released: due time, replay addresses.
    pending: VecDeque<(Instant, Vec<u8>)>,
    rewriter: Rewriter,
    answers: Vec<Packet>,
    injected: Vec<Packet>,
    /// Peer packets [`Device::receive`] may still release before the next
    /// [`ReplayDevice::allow`].
    budget: usize,
}

impl ReplayDevice {
    /// Lets the next `packets` due peer packets be released. The driver
    /// allows one per poll, so the stack answers each before the next
    /// arrives, as on the wire (a capture's timestamps are the poll times,
    /// so a packet and the answer to our reply often share one).
    pub fn allow(&mut self, packets: usize) {
        self.budget = packets;
    }

    /// The next peer packet's due time.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.front().map(|(t, _)| *t)
    }

    /// Peer packets not yet released.
    pub fn remaining(&self) -> usize {
        self.pending.len()
    }

    /// Everything our stack sent, in order.
    pub fn answers(&self) -> &[Packet] {
        &self.answers
    }

    /// The peer packets released so far, as injected (rewritten).
    pub fn injected(&self) -> &[Packet] {
        &self.injected
    }

    /// The rewriting state.
    pub fn rewriter(&self) -> &Rewriter {
        &self.rewriter
    }
}

impl Device for ReplayDevice {
    type RxToken<'a>
        = ReplayRx
    where
        Self: 'a;
    type TxToken<'a>
        = ReplayTx<'a>
    where
        Self: 'a;

    fn receive(&mut self, timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.budget == 0 || self.next_due()? > timestamp {
            return None;
        }
        let (_, mut packet) = self.pending.pop_front()?;
        self.budget -= 1;
        self.rewriter.rewrite(&mut packet);
        self.injected.push(Packet {
            index: self.injected.len() + self.answers.len(),
            time: timestamp,
            bytes: packet.clone(),
        });
        Some((
            ReplayRx { packet },
            ReplayTx {
                answers: &mut self.answers,
                injected: self.injected.len(),
                rewriter: &mut self.rewriter,
                timestamp,
            },
        ))
    }

    fn transmit(&mut self, timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(ReplayTx {
            answers: &mut self.answers,
            injected: self.injected.len(),
            rewriter: &mut self.rewriter,
            timestamp,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

/// Receive token of a [`ReplayDevice`]: one rewritten peer packet.
#[derive(Debug)]
pub struct ReplayRx {
    packet: Vec<u8>,
}

impl phy::RxToken for ReplayRx {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.packet)
    }
}

/// Transmit token of a [`ReplayDevice`]: captures the answer and learns
/// from it.
#[derive(Debug)]
pub struct ReplayTx<'a> {
    answers: &'a mut Vec<Packet>,
    /// Peer packets injected so far (for [`Packet::index`]).
    injected: usize,
    rewriter: &'a mut Rewriter,
    timestamp: Instant,
}

impl phy::TxToken for ReplayTx<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut bytes = vec![0u8; len];
        let result = f(&mut bytes);
        self.rewriter.learn(&bytes);
        self.answers.push(Packet {
            index: self.injected + self.answers.len(),
            time: self.timestamp,
            bytes,
        });
        result
    }
}

/// Largest virtual-time jump between two polls.
const MAX_JUMP: Duration = Duration::from_millis(10);
/// Upper bound on polls in one [`Replay::run`].
const MAX_STEPS: u64 = 1_000_000;
/// The device's MTU (a TUN's).
const MTU: usize = 1500;

/// A fresh stack and a trace's peer packets, stepped in virtual time.
pub struct Replay {
    stack: Stack<ReplayDevice>,
    config: ReplayConfig,
    now: Instant,
    end: Instant,
}

impl Replay {
    /// A fresh stack ([`ReplayConfig::stack_config`]) on a [`ReplayDevice`]
    /// holding the peer's packets of `trace` from `config.start` on.
    pub fn new(trace: &[TracePacket], config: ReplayConfig) -> Replay {
        let packets = trace.get(config.start..).unwrap_or_default();
        let origin = packets.first().map_or(StdDuration::ZERO, |p| p.time);
        let at = |p: &TracePacket| {
            let offset = p.time.saturating_sub(origin);
            Instant::from_micros(i64::try_from(offset.as_micros()).unwrap_or(i64::MAX))
        };
        let mut ours = Vec::new();
        let mut pending = VecDeque::new();
        for p in packets {
            let Some((src, dst)) = ip_addresses(&p.bytes) else {
                continue;
            };
            let mut bytes = p.bytes.clone();
            map_addresses(&mut bytes, &config);
            if src == config.recorded_ours {
                ours.push(bytes);
            } else if dst == config.recorded_ours {
                pending.push_back((at(p), bytes));
            }
        }
        let end = packets.last().map_or(Instant::ZERO, at) + config.settle;
        let rewriter = Rewriter::new(config.kind, ours.iter().map(Vec::as_slice));
        let device = ReplayDevice {
            mtu: MTU,
            pending,
            rewriter,
            answers: Vec::new(),
            injected: Vec::new(),
            budget: 0,
        };
        let stack = Stack::new(config.stack_config(), device, Instant::ZERO);
        Replay {
            stack,
            config,
            now: Instant::ZERO,
            end,
        }
    }

    /// The stack under test.
    pub fn stack(&self) -> &Stack<ReplayDevice> {
        &self.stack
    }

    /// The stack under test, mutably.
    pub fn stack_mut(&mut self) -> &mut Stack<ReplayDevice> {
        &mut self.stack
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The configuration.
    pub fn config(&self) -> &ReplayConfig {
        &self.config
    }

    /// Everything our stack sent, in order.
    pub fn answers(&self) -> &[Packet] {
        self.stack.device().answers()
    }

    /// Our answers as TCP segments (those that are).
    pub fn answer_segments(&self) -> Vec<Segment> {
        let kind = self.config.kind;
        self.answers()
            .iter()
            .filter_map(|p| p.segment(kind))
            .collect()
    }

    /// The peer packets injected so far (rewritten).
    pub fn injected(&self) -> &[Packet] {
        self.stack.device().injected()
    }

    /// Runs until every peer packet is injected and `settle` has passed
    /// after the trace's last packet. Each step: `script` (the application:
    /// listen, accept, read, write, fail), a poll that may take in one due
    /// peer packet, `script` again, a poll that sends what it wrote. Time
    /// stays put while peer packets are due, then jumps to the next due
    /// packet or stack deadline. Returns false if the step bound was hit.
    pub fn run(&mut self, mut script: impl FnMut(&mut Stack<ReplayDevice>, Instant)) -> bool {
        for _ in 0..MAX_STEPS {
            let now = self.now;
            script(&mut self.stack, now);
            self.stack.device_mut().allow(1);
            self.stack.poll(now);
            self.stack.device_mut().allow(0);
            script(&mut self.stack, now);
            self.stack.poll(now);
            let due = self.stack.device().next_due();
            if due.is_some_and(|due| due <= now) {
                continue;
            }
            if due.is_none() && now >= self.end {
                return true;
            }
            let mut next = self.stack.poll_at(now).min(now + MAX_JUMP);
            next = match due {
                Some(due) => next.min(due),
                None => next.min(self.end),
            };
            self.now = next.max(now + Duration::from_micros(1));
        }
        false
    }

    /// Runs the trace with `app` as the application. Returns its first
    /// error; `Ok(true)` if it finished its script, `Ok(false)` if not.
    pub fn run_app(&mut self, app: &mut App) -> Result<bool, AppError> {
        let mut error = None;
        let mut done = false;
        let finished = self.run(|stack, now| {
            if error.is_some() {
                return;
            }
            match app.step(stack, now) {
                Ok(AppProgress::Done) => done = true,
                Ok(AppProgress::Running) => {}
                Err(e) => error = Some(e),
            }
        });
        match error {
            Some(e) => Err(e),
            None => Ok(done && finished),
        }
    }

    /// Both directions of the replay, in the order they crossed the device, as a pcap file
    /// (LINKTYPE_RAW; virtual time from the Unix epoch).
    pub fn transcript_pcap(&self) -> Vec<u8> {
        let mut packets: Vec<&Packet> = self.injected().iter().chain(self.answers()).collect();
        packets.sort_by_key(|p| p.index);
        let trace = Trace {
            name: "replay",
            packets: packets
                .into_iter()
                .map(|p| TracePacket {
                    time: StdDuration::from_micros(
                        u64::try_from(p.time.total_micros()).unwrap_or(0),
                    ),
                    bytes: p.bytes.clone(),
                })
                .collect(),
        };
        trace.pcap_bytes()
    }

    /// [`Replay::transcript_pcap`] as `tiflow dump` prints it, for test
    /// failure messages.
    pub fn transcript(&self) -> String {
        let mut out = Vec::new();
        let options = ti_tools::DumpOptions {
            kind: self.config.kind,
            ..ti_tools::DumpOptions::default()
        };
        match ti_tools::dump_bytes(&self.transcript_pcap(), &options, &mut out) {
            Ok(_) => String::from_utf8_lossy(&out).into_owned(),
            Err(e) => format!("(transcript not printable: {e})"),
        }
    }
}

/// Rewrites the addresses of a recorded packet to the replay's; fixes the
/// checksums (the TCP one covers the addresses). A mapping to the other
/// family is not applied.
fn map_addresses(packet: &mut [u8], config: &ReplayConfig) {
    let Some((src, dst)) = ip_addresses(packet) else {
        return;
    };
    let (new_src, new_dst) = (config.map_addr(src), config.map_addr(dst));
    if (new_src, new_dst) == (src, dst) {
        return;
    }
    match (new_src, new_dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let Ok(mut ip) = Ipv4Packet::new_checked(&mut *packet) else {
                return;
            };
            ip.set_src_addr(s);
            ip.set_dst_addr(d);
            ip.fill_checksum();
        }
        (IpAddr::V6(s), IpAddr::V6(d)) if src.is_ipv6() => {
            let Ok(mut ip) = Ipv6Packet::new_checked(&mut *packet) else {
                return;
            };
            ip.set_src_addr(s);
            ip.set_dst_addr(d);
        }
        _ => return,
    }
    if let Some((src, dst, range)) = tcp_span(packet)
        && let Some(segment) = packet.get_mut(range)
        && let Ok(mut tcp) = TcpPacket::new_checked(segment)
    {
        tcp.fill_checksum(&IpAddress::from(src), &IpAddress::from(dst));
    }
}

/// The source and destination of an IPv4 or IPv6 packet.
fn ip_addresses(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match packet.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            Some((ip.src_addr().into(), ip.dst_addr().into()))
        }
        6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            Some((ip.src_addr().into(), ip.dst_addr().into()))
        }
        _ => None,
    }
}

/// Where the TCP segment of an unfragmented TCP/IPv4 packet, or of a
/// TCP/IPv6 packet without extension headers, lies in `packet`, with the
/// packet's addresses; `None` for anything else.
fn tcp_span(packet: &[u8]) -> Option<(IpAddr, IpAddr, std::ops::Range<usize>)> {
    match packet.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            let header_len = usize::from(ip.header_len());
            let total = usize::from(ip.total_len()).min(packet.len());
            Some((
                ip.src_addr().into(),
                ip.dst_addr().into(),
                header_len..total.max(header_len),
            ))
        }
        6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let header_len = ip.header_len();
            let total = (header_len + usize::from(ip.payload_len())).min(packet.len());
            Some((
                ip.src_addr().into(),
                ip.dst_addr().into(),
                header_len..total.max(header_len),
            ))
        }
        _ => None,
    }
}
