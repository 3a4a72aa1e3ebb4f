//! The isolation boundary as a smoltcp `Device` wrapper.
//!
//! Owns [`Boundary`]: the shim between smoltcp and the real device. On
//! egress it writes the flow option into the segments of connections the
//! stack registered (SYN, SYN-ACK, confirming segments) and reports segments
//! it could not fit the option into. On ingress it does nothing by itself:
//! the stack pulls raw packets with [`Boundary::receive_raw`], inspects them
//! before smoltcp discards our option, and hands them on with
//! [`Boundary::deliver`] (or [`Boundary::deliver_to`] a lane: the stack
//! runs one smoltcp interface per connection, and each interface's poll
//! takes only its own lane's packets, see [`Boundary::set_rx_lane`]). When
//! no connection needs an option (the steady state), egress is a zero-copy
//! pass-through. It never makes a protocol decision.

use std::collections::{HashMap, HashSet, VecDeque};

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use tifid::FlowOptionRepr;

use crate::segment::{AddOptionError, FourTuple, Segment, add_flow_option};

/// Something the boundary noticed on egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressEvent {
    /// A segment of this connection had to go without its option.
    DoesNotFit(FourTuple),
}

/// Counters of the boundary's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BoundaryStats {
    /// Segments that left with our option.
    pub options_added: u64,
    /// Segments that should have carried it but had no room.
    pub options_not_fitting: u64,
    /// Packets received from the device.
    pub received: u64,
    /// Packets sent to the device.
    pub sent: u64,
    /// Inspected packets dropped because smoltcp's queue was full.
    pub ingress_dropped: u64,
}

/// A smoltcp device wrapper that adds flow options on egress.
#[derive(Debug)]
pub struct Boundary<D> {
    inner: D,
    kind: u8,
    rx_queue: VecDeque<(Lane, Vec<u8>)>,
    /// `Some`: smoltcp's `receive` yields only packets of this lane.
    rx_lane: Option<Lane>,
    spare: Vec<Vec<u8>>,
    rules: HashMap<FourTuple, FlowOptionRepr>,
    /// Tuples without a rule whose SYN (or SYN-ACK) ISN is recorded too:
    /// legacy handshakes, whose completing ACK the stack judges.
    watched: HashSet<FourTuple>,
    isns: HashMap<FourTuple, u32>,
    events: Vec<EgressEvent>,
    scratch: Vec<u8>,
    rewritten: Vec<u8>,
    stats: BoundaryStats,
}

/// Which smoltcp interface an inspected packet is for (the stack's
/// connection cells); [`DEFAULT_LANE`] when nobody in particular.
pub type Lane = u32;

/// The lane of packets no connection takes ([`Boundary::deliver`]).
pub const DEFAULT_LANE: Lane = u32::MAX;

/// A lane no packet is ever delivered to: with it set, smoltcp's polls
/// only transmit.
pub const NO_LANE: Lane = u32::MAX - 1;

/// Most spare receive buffers kept for reuse.
const SPARE_BUFFERS: usize = 64;
/// Most inspected packets waiting for smoltcp (it takes them all on each
/// poll unless the device below refuses to transmit).
const RX_QUEUE_LIMIT: usize = 1024;

impl<D: Device> Boundary<D> {
    /// Wraps `inner`; our option uses `kind`.
    pub fn new(inner: D, kind: u8) -> Boundary<D> {
        Boundary {
            inner,
            kind,
            rx_queue: VecDeque::new(),
            rx_lane: None,
            spare: Vec::new(),
            rules: HashMap::new(),
            watched: HashSet::new(),
            isns: HashMap::new(),
            events: Vec::new(),
            scratch: Vec::new(),
            rewritten: Vec::new(),
            stats: BoundaryStats::default(),
        }
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The wrapped device, mutably.
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    /// The option kind in use.
    pub fn kind(&self) -> u8 {
        self.kind
    }

    /// Counters.
    pub fn stats(&self) -> BoundaryStats {
        self.stats
    }

    /// Takes the next packet from the device, copied into a reusable buffer.
    pub fn receive_raw(&mut self, now: Instant) -> Option<Vec<u8>> {
        let (rx, _tx) = self.inner.receive(now)?;
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        phy::RxToken::consume(rx, |data| buf.extend_from_slice(data));
        self.stats.received += 1;
        Some(buf)
    }

    /// Queues an inspected packet for smoltcp on [`DEFAULT_LANE`]; drops
    /// it (as a full NIC ring would) when [`Boundary::ingress_full`].
    pub fn deliver(&mut self, packet: Vec<u8>) {
        self.deliver_to(DEFAULT_LANE, packet);
    }

    /// Queues an inspected packet for the smoltcp interface of `lane`;
    /// drops it when [`Boundary::ingress_full`].
    pub fn deliver_to(&mut self, lane: Lane, packet: Vec<u8>) {
        if self.ingress_full() {
            self.stats.ingress_dropped += 1;
            self.recycle(packet);
            return;
        }
        self.rx_queue.push_back((lane, packet));
    }

    /// The lane of the oldest packet waiting for smoltcp.
    pub fn next_rx_lane(&self) -> Option<Lane> {
        self.rx_queue.front().map(|(lane, _)| *lane)
    }

    /// Restricts smoltcp's `receive` to packets of `lane` at the front of
    /// the queue (`None`: any packet, for a single interface).
    pub fn set_rx_lane(&mut self, lane: Option<Lane>) {
        self.rx_lane = lane;
    }

    /// Drops the packets of `lane` at the front of the queue (their
    /// interface is gone); returns how many.
    pub fn drop_front_lane(&mut self, lane: Lane) -> usize {
        let mut dropped = 0;
        while self.rx_queue.front().is_some_and(|(l, _)| *l == lane) {
            if let Some((_, packet)) = self.rx_queue.pop_front() {
                self.recycle(packet);
                dropped += 1;
            }
        }
        dropped
    }

    /// smoltcp's queue is full: take no more packets from the device.
    pub fn ingress_full(&self) -> bool {
        self.rx_queue.len() >= RX_QUEUE_LIMIT
    }

    /// Returns a buffer that will not be delivered, for reuse.
    pub fn recycle(&mut self, packet: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS {
            self.spare.push(packet);
        }
    }

    /// Packets waiting for smoltcp.
    pub fn pending_ingress(&self) -> usize {
        self.rx_queue.len()
    }

    /// Sends a packet the stack built itself (a refusal RST). Returns false
    /// when the device had no room (the packet is dropped, as on a wire).
    pub fn send_raw(&mut self, now: Instant, packet: &[u8]) -> bool {
        let Some(tx) = self.inner.transmit(now) else {
            return false;
        };
        phy::TxToken::consume(tx, packet.len(), |buf| buf.copy_from_slice(packet));
        self.stats.sent += 1;
        true
    }

    /// Attaches `option` to every segment sent on `tuple` until
    /// [`Boundary::detach_option`].
    pub fn attach_option(&mut self, tuple: FourTuple, option: FlowOptionRepr) {
        self.rules.insert(tuple, option);
    }

    /// Stops attaching an option to `tuple`'s segments (and forgets its ISN
    /// and any [`Boundary::watch_isn`]).
    pub fn detach_option(&mut self, tuple: &FourTuple) {
        self.rules.remove(tuple);
        self.watched.remove(tuple);
        self.isns.remove(tuple);
    }

    /// Records the ISN of the SYN (or SYN-ACK) sent on `tuple` though no
    /// option is attached to it, until [`Boundary::detach_option`].
    pub fn watch_isn(&mut self, tuple: FourTuple) {
        self.watched.insert(tuple);
    }

    /// The sequence number of the last SYN (or SYN-ACK) sent on `tuple`
    /// while an option was attached or its ISN watched: our initial sequence number, which the
    /// stack needs to judge the peer's answer before smoltcp does.
    pub fn sent_isn(&self, tuple: &FourTuple) -> Option<u32> {
        self.isns.get(tuple).copied()
    }

    /// The option currently attached to `tuple`'s segments.
    pub fn attached_option(&self, tuple: &FourTuple) -> Option<FlowOptionRepr> {
        self.rules.get(tuple).copied()
    }

    /// Takes what egress noticed since the last call.
    pub fn take_events(&mut self) -> Vec<EgressEvent> {
        std::mem::take(&mut self.events)
    }
}

/// Receive token: an inspected packet; its buffer returns to the pool.
#[derive(Debug)]
pub struct BoundaryRx<'a> {
    packet: Vec<u8>,
    spare: &'a mut Vec<Vec<u8>>,
}

impl phy::RxToken for BoundaryRx<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let result = f(&self.packet);
        if self.spare.len() < SPARE_BUFFERS {
            self.spare.push(self.packet);
        }
        result
    }
}

/// Transmit token: adds our option where a rule says so.
pub struct BoundaryTx<'a, T> {
    token: T,
    kind: u8,
    mtu: usize,
    rules: &'a HashMap<FourTuple, FlowOptionRepr>,
    watched: &'a HashSet<FourTuple>,
    isns: &'a mut HashMap<FourTuple, u32>,
    events: &'a mut Vec<EgressEvent>,
    scratch: &'a mut Vec<u8>,
    rewritten: &'a mut Vec<u8>,
    stats: &'a mut BoundaryStats,
}

impl<T: phy::TxToken> phy::TxToken for BoundaryTx<'_, T> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        self.stats.sent += 1;
        if self.rules.is_empty() && self.watched.is_empty() {
            return self.token.consume(len, f);
        }
        self.scratch.clear();
        self.scratch.resize(len, 0);
        let result = f(self.scratch);
        let segment = Segment::parse(self.scratch, self.kind);
        let tuple = segment.map(|seg| seg.tuple_at_sender());
        if let (Some(seg), Some(tuple)) = (segment, tuple)
            && seg.syn
            && self.watched.contains(&tuple)
        {
            self.isns.insert(tuple, seg.seq);
        }
        let rule = tuple.and_then(|tuple| self.rules.get_key_value(&tuple));
        let out: &[u8] = match rule {
            Some((tuple, option)) => {
                if let Some(seg) = segment.filter(|seg| seg.syn) {
                    self.isns.insert(*tuple, seg.seq);
                }
                match add_flow_option(self.scratch, option, self.kind, self.mtu, self.rewritten) {
                    Ok(_) => {
                        self.stats.options_added += 1;
                        self.rewritten
                    }
                    Err(
                        AddOptionError::DoesNotFit
                        | AddOptionError::Malformed
                        | AddOptionError::NotTcp,
                    ) => {
                        self.stats.options_not_fitting += 1;
                        self.events.push(EgressEvent::DoesNotFit(*tuple));
                        self.scratch
                    }
                }
            }
            None => self.scratch,
        };
        self.token
            .consume(out.len(), |buf| buf.copy_from_slice(out));
        result
    }

    /// Passes smoltcp's metadata (the segment size of a TCP segment the
    /// device is to cut) on. A segment that large never gets our option:
    /// options ride only on handshake and confirming segments, which the
    /// stack keeps within one MSS, and `add_flow_option` refuses a packet
    /// over the MTU (the segment then leaves without it and the flow falls
    /// back to legacy, never an invalid header).
    fn set_meta(&mut self, meta: phy::PacketMeta) {
        self.token.set_meta(meta);
    }
}

impl<D: Device> Device for Boundary<D> {
    type RxToken<'a>
        = BoundaryRx<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = BoundaryTx<'a, D::TxToken<'a>>
    where
        Self: 'a;

    fn receive(&mut self, timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if let Some(lane) = self.rx_lane
            && self.rx_queue.front().is_none_or(|(l, _)| *l != lane)
        {
            return None;
        }
        let (lane, packet) = self.rx_queue.pop_front()?;
        let mtu = self.inner.capabilities().max_transmission_unit;
        let Some(token) = self.inner.transmit(timestamp) else {
            self.rx_queue.push_front((lane, packet));
            return None;
        };
        Some((
            BoundaryRx {
                packet,
                spare: &mut self.spare,
            },
            BoundaryTx {
                token,
                kind: self.kind,
                mtu,
                rules: &self.rules,
                watched: &self.watched,
                isns: &mut self.isns,
                events: &mut self.events,
                scratch: &mut self.scratch,
                rewritten: &mut self.rewritten,
                stats: &mut self.stats,
            },
        ))
    }

    fn transmit(&mut self, timestamp: Instant) -> Option<Self::TxToken<'_>> {
        let mtu = self.inner.capabilities().max_transmission_unit;
        let token = self.inner.transmit(timestamp)?;
        Some(BoundaryTx {
            token,
            kind: self.kind,
            mtu,
            rules: &self.rules,
            watched: &self.watched,
            isns: &mut self.isns,
            events: &mut self.events,
            scratch: &mut self.scratch,
            rewritten: &mut self.rewritten,
            stats: &mut self.stats,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = self.inner.capabilities();
        caps.medium = Medium::Ip;
        caps
    }
}
