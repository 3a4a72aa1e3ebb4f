//! The stack: smoltcp + the boundary + the flow table, driven by `poll(now)`.
//!
//! Owns every connection and every TI stream: moves bytes between the
//! application-facing TI buffers and the smoltcp sockets, runs the handshakes
//! through `tifid`'s state machines on segments the boundary shows it, detects
//! failed connections (RST, stall, idle path, explicit request), resumes
//! flows (initiator) or waits for a resume (responder), and keeps invariants
//! I1 to I3 of DESIGN §4. It never reads a clock: time is passed in, so a
//! simulation can drive it in virtual time. It never blocks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as SmolDuration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use tifid::handshake::{
    ConfirmOutcome, FallbackCause, Initiator, LostCause, Mode, RefuseReason, Responder,
    ResponderPolicy, RstOutcome, SynAckOutcome, SynDecision,
};
use tifid::{Flow, FlowTable, Role, Seq48, TableConfig, Tifid, Timestamp};
use tracing::{debug, info, warn};

use crate::boundary::{Boundary, BoundaryStats, EgressEvent};
use crate::config::StackConfig;
use crate::error::{StreamError, StreamEvent};
use crate::segment::{self, FourTuple, Segment, refusal_rst};

/// Identifies a stream inside a [`Stack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(u64);

/// Identifies a listener inside a [`Stack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(u16);

/// What a stream's mode is, as far as the stack knows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMode {
    /// The handshake has not finished.
    Connecting,
    /// Decided.
    Known(Mode),
}

/// Counters for a stream, for `tiflow status` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Bytes the application wrote.
    pub bytes_written: u64,
    /// Bytes delivered to the application's receive buffer.
    pub bytes_received: u64,
    /// Successful resumes.
    pub resumes: u64,
    /// Downtime of the last resume.
    pub last_downtime: Option<Duration>,
    /// Bytes resent over all resumes.
    pub resent_bytes: u64,
}

/// A snapshot of one stream for status displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    /// The stream.
    pub id: StreamId,
    /// Its mode.
    pub mode: StreamMode,
    /// The original peer.
    pub peer: SocketAddrV4,
    /// Counters.
    pub stats: StreamStats,
    /// A live TCP connection carries it now (not a resume attempt).
    pub attached: bool,
}

#[derive(Debug)]
enum Phase {
    /// Our SYN is out.
    SynSent(Option<Initiator>),
    /// Initiator, TI: attaching the confirmation until the peer's first segment.
    Confirming(Initiator),
    /// Responder: our SYN-ACK is out (None: legacy).
    SynReceived(Option<Responder>),
    /// Handshake over.
    Open,
}

#[derive(Debug)]
struct Conn {
    tuple: FourTuple,
    stream: Option<StreamId>,
    phase: Phase,
    /// Bytes written into this socket.
    written: u64,
    /// Of those, acknowledged by TCP.
    acked: u64,
    /// TI position of the socket's first byte.
    base: Seq48,
    fin_pushed: bool,
    rst_seen: bool,
    was_last_ack: bool,
    last_rx: Instant,
    created: Instant,
}

#[derive(Debug)]
struct ResumeState {
    attempt: u32,
    next_attempt: Instant,
    deadline: Instant,
}

#[derive(Debug)]
struct StreamState {
    mode: StreamMode,
    role: Role,
    peer: SocketAddrV4,
    tifid: Option<Tifid>,
    conn: Option<SocketHandle>,
    /// Bytes from `snd_una` on (TI mode) or from the oldest unacknowledged byte.
    send_buf: VecDeque<u8>,
    /// TI position one past the highest byte ever handed to a socket.
    sent_high: Seq48,
    recv_buf: VecDeque<u8>,
    shutdown_write: bool,
    eof: bool,
    fin_acked: bool,
    error: Option<StreamError>,
    events: VecDeque<StreamEvent>,
    stats: StreamStats,
    failed_at: Option<Instant>,
    resume: Option<ResumeState>,
    last_progress: Instant,
    fail_requested: bool,
    /// The application dropped its handle.
    abandoned: bool,
}

impl StreamState {
    /// A resume handshake succeeded on `handle`: the peer holds everything
    /// before `send_from` (`dropped` sequence numbers newly known delivered).
    /// Drops those bytes, attaches the connection, records the resume.
    /// Returns the downtime and the bytes to be sent again.
    fn reattach(
        &mut self,
        now: Instant,
        handle: SocketHandle,
        send_from: Seq48,
        dropped: u64,
    ) -> (Duration, u64) {
        let drop_bytes = (dropped as usize).min(self.send_buf.len());
        self.send_buf.drain(..drop_bytes);
        let resent = self.sent_high.bytes_since(send_from).unwrap_or(0);
        let downtime = self.failed_at.map_or(Duration::ZERO, |t| std_dur(now - t));
        self.conn = Some(handle);
        self.resume = None;
        self.failed_at = None;
        self.last_progress = now;
        self.stats.resumes += 1;
        self.stats.last_downtime = Some(downtime);
        self.stats.resent_bytes += resent;
        self.events.push_back(StreamEvent::Resumed {
            downtime,
            resent_bytes: resent,
        });
        (downtime, resent)
    }
}

#[derive(Debug, Default)]
struct ListenerState {
    accept_queue: VecDeque<StreamId>,
}

/// One host's stack: smoltcp interface, sockets, boundary and flow table.
pub struct Stack<D: Device> {
    config: StackConfig,
    iface: Interface,
    device: Boundary<D>,
    sockets: SocketSet<'static>,
    table: FlowTable,
    rng: StdRng,
    conns: HashMap<SocketHandle, Conn>,
    by_tuple: HashMap<FourTuple, SocketHandle>,
    pending: HashMap<FourTuple, Option<Responder>>,
    fresh_listeners: Vec<(SocketHandle, u16)>,
    streams: HashMap<StreamId, StreamState>,
    by_tifid: HashMap<Tifid, StreamId>,
    listeners: HashMap<u16, ListenerState>,
    recent_ports: VecDeque<u16>,
    recent_port_set: HashSet<u16>,
    next_stream: u64,
    epoch: Instant,
}

/// Ports remembered as recently used so a resume never reuses one the peer
/// may hold in TIME_WAIT.
const RECENT_PORTS: usize = 8192;
/// Packets inspected per poll before smoltcp runs.
const INGRESS_BATCH: usize = 256;

fn tsval() -> u32 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    start.elapsed().as_millis() as u32
}

fn smol(d: Duration) -> SmolDuration {
    SmolDuration::from_micros(d.as_micros() as u64)
}

fn std_dur(d: SmolDuration) -> Duration {
    Duration::from_micros(d.total_micros())
}

impl<D: Device> Stack<D> {
    /// A stack on `device`, started at `now`.
    pub fn new(config: StackConfig, device: D, now: Instant) -> Stack<D> {
        let mut device = Boundary::new(device, config.option_kind);
        let mut rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        // smoltcp derives TCP initial sequence numbers from this seed: a
        // constant one makes them predictable to off-path attackers.
        let mut iface_config = Config::new(HardwareAddress::Ip);
        iface_config.random_seed = rng.random();
        let mut iface = Interface::new(iface_config, &mut device, now);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(
                IpAddress::Ipv4(config.address),
                config.prefix_len,
            ));
        });
        if let Some(gw) = config.gateway {
            let _ = iface.routes_mut().add_default_ipv4_route(gw);
        }
        let table = FlowTable::new(TableConfig {
            max_flows: config.max_flows,
            resume_timeout: config.resume_timeout,
            max_resume_gap: config.send_buffer as u64 + config.socket_buffer as u64,
            allow_migration: config.allow_migration,
            ..TableConfig::default()
        });
        Stack {
            config,
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            table,
            rng,
            conns: HashMap::new(),
            by_tuple: HashMap::new(),
            pending: HashMap::new(),
            fresh_listeners: Vec::new(),
            streams: HashMap::new(),
            by_tifid: HashMap::new(),
            listeners: HashMap::new(),
            recent_ports: VecDeque::new(),
            recent_port_set: HashSet::new(),
            next_stream: 1,
            epoch: now,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &StackConfig {
        &self.config
    }

    /// The device below the boundary.
    pub fn device(&self) -> &D {
        self.device.inner()
    }

    /// The device below the boundary, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        self.device.inner_mut()
    }

    /// The boundary's counters.
    pub fn boundary_stats(&self) -> BoundaryStats {
        self.device.stats()
    }

    /// The flow table.
    pub fn flows(&self) -> &FlowTable {
        &self.table
    }

    fn ts(&self, now: Instant) -> Timestamp {
        Timestamp::from_micros((now - self.epoch).total_micros())
    }

    /// Moves the stack to a new address (the host moved). Connections on
    /// the old address are failed; TI-flows we initiated resume from the new
    /// address.
    pub fn set_address(&mut self, now: Instant, address: Ipv4Addr, prefix_len: u8) {
        info!(%address, "address changed");
        self.config.address = address;
        self.config.prefix_len = prefix_len;
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(address), prefix_len));
        });
        let handles: Vec<SocketHandle> = self.conns.keys().copied().collect();
        for handle in handles {
            self.fail_connection(now, handle, "address changed");
        }
    }

    // ---------------------------------------------------------------- API

    /// Opens a connection to `remote`, offering a TI-flow (if enabled).
    pub fn connect(&mut self, now: Instant, remote: SocketAddrV4) -> Result<StreamId, StreamError> {
        let id = self.new_stream(Role::Initiator, remote, now);
        let initiator = if self.config.ti_enabled {
            self.table
                .new_initiator_half(&mut self.rng)
                .map(|half| Initiator::new_flow(half, FlowTable::new_isn(&mut self.rng)))
        } else {
            None
        };
        self.open_connection(now, id, initiator)?;
        Ok(id)
    }

    /// Listens on `port`.
    pub fn listen(&mut self, port: u16) -> Result<ListenerId, StreamError> {
        if self.listeners.contains_key(&port) || port == 0 {
            return Err(StreamError::AddrInUse);
        }
        self.listeners.insert(port, ListenerState::default());
        Ok(ListenerId(port))
    }

    /// Stops listening; queued connections not yet accepted are closed.
    pub fn unlisten(&mut self, listener: ListenerId) {
        if let Some(state) = self.listeners.remove(&listener.0) {
            for id in state.accept_queue {
                self.close(id);
            }
        }
    }

    /// The next accepted connection, if one is ready.
    pub fn accept(&mut self, listener: ListenerId) -> Result<Option<StreamId>, StreamError> {
        let state = self
            .listeners
            .get_mut(&listener.0)
            .ok_or(StreamError::NoSuchStream)?;
        Ok(state.accept_queue.pop_front())
    }

    /// Queues bytes for sending; returns how many fit in the send buffer.
    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let limit = self.config.send_buffer;
        let s = self.streams.get_mut(&id).ok_or(StreamError::NoSuchStream)?;
        if let Some(e) = s.error {
            return Err(e);
        }
        if s.shutdown_write {
            return Err(StreamError::WriteAfterShutdown);
        }
        let n = data.len().min(limit.saturating_sub(s.send_buf.len()));
        s.send_buf.extend(&data[..n]);
        s.stats.bytes_written += n as u64;
        if let Some(flow) = s.tifid.and_then(|t| self.table.get_mut(t)) {
            let _ = flow.on_write(n as u64);
        }
        Ok(n)
    }

    /// Reads delivered bytes. `Ok(0)` with `data` non-empty means end of
    /// stream; `Err(WouldBlock)`-like `Ok(None)` means nothing yet.
    pub fn read(&mut self, id: StreamId, data: &mut [u8]) -> Result<Option<usize>, StreamError> {
        let s = self.streams.get_mut(&id).ok_or(StreamError::NoSuchStream)?;
        if !s.recv_buf.is_empty() {
            let n = data.len().min(s.recv_buf.len());
            let (front, back) = s.recv_buf.as_slices();
            let from_front = n.min(front.len());
            data[..from_front].copy_from_slice(&front[..from_front]);
            data[from_front..n].copy_from_slice(&back[..n - from_front]);
            s.recv_buf.drain(..n);
            return Ok(Some(n));
        }
        if s.eof {
            return Ok(Some(0));
        }
        if let Some(e) = s.error {
            return Err(e);
        }
        Ok(None)
    }

    /// Bytes ready to read.
    pub fn readable(&self, id: StreamId) -> usize {
        self.streams.get(&id).map_or(0, |s| s.recv_buf.len())
    }

    /// Room left in the send buffer.
    pub fn writable(&self, id: StreamId) -> usize {
        self.streams.get(&id).map_or(0, |s| {
            self.config.send_buffer.saturating_sub(s.send_buf.len())
        })
    }

    /// Bytes written but not yet acknowledged by the peer's TCP.
    pub fn unacknowledged(&self, id: StreamId) -> usize {
        self.streams.get(&id).map_or(0, |s| s.send_buf.len())
    }

    /// Ends our sending direction after the queued bytes (a TI FIN).
    pub fn shutdown_write(&mut self, id: StreamId) -> Result<(), StreamError> {
        let s = self.streams.get_mut(&id).ok_or(StreamError::NoSuchStream)?;
        if !s.shutdown_write {
            s.shutdown_write = true;
            if let Some(flow) = s.tifid.and_then(|t| self.table.get_mut(t)) {
                flow.queue_fin();
            }
        }
        Ok(())
    }

    /// The stream's mode.
    pub fn mode(&self, id: StreamId) -> Option<StreamMode> {
        self.streams.get(&id).map(|s| s.mode)
    }

    /// The stream's error, if it failed.
    pub fn error(&self, id: StreamId) -> Option<StreamError> {
        self.streams.get(&id).and_then(|s| s.error)
    }

    /// The connection is established (or failed: see [`Stack::error`]).
    pub fn is_connected(&self, id: StreamId) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|s| s.mode != StreamMode::Connecting)
    }

    /// The original peer, unchanged across resumes.
    pub fn peer_addr(&self, id: StreamId) -> Option<SocketAddrV4> {
        self.streams.get(&id).map(|s| s.peer)
    }

    /// Our end of the stream's current TCP connection.
    pub fn local_addr(&self, id: StreamId) -> Option<SocketAddrV4> {
        let s = self.streams.get(&id)?;
        s.conn
            .and_then(|h| self.conns.get(&h))
            .map(|c| c.tuple.local)
    }

    /// The next event of the stream.
    pub fn poll_event(&mut self, id: StreamId) -> Option<StreamEvent> {
        self.streams.get_mut(&id).and_then(|s| s.events.pop_front())
    }

    /// Counters and state of every stream.
    pub fn stream_infos(&self) -> Vec<StreamInfo> {
        let mut infos: Vec<StreamInfo> = self
            .streams
            .iter()
            .map(|(id, s)| StreamInfo {
                id: *id,
                mode: s.mode,
                peer: s.peer,
                stats: s.stats,
                attached: s.conn.is_some() && s.failed_at.is_none(),
            })
            .collect();
        infos.sort_by_key(|i| i.id);
        infos
    }

    /// Abandons the stream's TCP connection as if it had failed (the paper's
    /// sysctl): the flow resumes on a new connection.
    pub fn fail_transport(&mut self, id: StreamId) -> Result<(), StreamError> {
        let s = self.streams.get_mut(&id).ok_or(StreamError::NoSuchStream)?;
        s.fail_requested = true;
        Ok(())
    }

    /// The application is done with the stream: queued data is still sent
    /// (with a FIN) unless the stream failed; state is freed when done.
    pub fn close(&mut self, id: StreamId) {
        let _ = self.shutdown_write(id);
        if let Some(s) = self.streams.get_mut(&id) {
            s.abandoned = true;
            s.recv_buf.clear();
        }
    }

    /// When the stack next needs a poll, at the latest.
    pub fn poll_at(&mut self, now: Instant) -> Instant {
        let mut at = match self.iface.poll_delay(now, &self.sockets) {
            Some(d) => now + d,
            None => now + SmolDuration::from_millis(1000),
        };
        let stall = smol(self.config.stall_timeout);
        let keepalive = smol(self.config.keepalive);
        for s in self.streams.values() {
            if let Some(r) = &s.resume {
                for deadline in [r.next_attempt, r.deadline] {
                    if deadline > now {
                        at = at.min(deadline);
                    }
                }
            }
            if let Some(conn) = s.conn.and_then(|h| self.conns.get(&h)) {
                let outstanding = !s.send_buf.is_empty();
                let deadline = if outstanding {
                    s.last_progress + stall
                } else {
                    conn.last_rx + keepalive + stall
                };
                if deadline > now {
                    at = at.min(deadline);
                }
            }
        }
        if self.device.pending_ingress() > 0 {
            at = now;
        }
        at.max(now)
    }

    // --------------------------------------------------------------- poll

    /// Runs the stack at time `now`: takes in packets, runs smoltcp, moves
    /// bytes, detects failures, resumes. Returns true if anything happened.
    pub fn poll(&mut self, now: Instant) -> bool {
        let mut activity = false;
        for _ in 0..INGRESS_BATCH {
            let Some(packet) = self.device.receive_raw(now) else {
                break;
            };
            activity = true;
            self.on_ingress(now, packet);
        }
        activity |= self.iface.poll(now, &mut self.device, &mut self.sockets)
            != smoltcp::iface::PollResult::None;
        self.bind_fresh_listeners(now);
        self.service_connections(now);
        for event in self.device.take_events() {
            self.on_egress_event(now, event);
        }
        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for id in ids {
            self.service_stream(now, id);
        }
        activity |= self.iface.poll(now, &mut self.device, &mut self.sockets)
            != smoltcp::iface::PollResult::None;
        for tifid in self.table.expire(self.ts(now)) {
            debug!(%tifid, "flow entry removed");
            if let Some(id) = self.by_tifid.remove(&tifid)
                && let Some(s) = self.streams.get_mut(&id)
                && s.conn.is_none()
                && s.error.is_none()
                && !(s.eof && s.fin_acked)
            {
                warn!(%tifid, "detached flow expired: lost");
                s.error = Some(StreamError::FlowLost(LostCause::Timeout));
                s.events.push_back(StreamEvent::Lost(LostCause::Timeout));
            }
        }
        activity
    }

    // ------------------------------------------------------------ ingress

    fn on_ingress(&mut self, now: Instant, packet: Vec<u8>) {
        let Some(seg) = Segment::parse(&packet, self.device.kind()) else {
            self.device.deliver(packet);
            return;
        };
        // Act only on what smoltcp will accept too: a SYN or RST with a bad
        // checksum must not change any state (it is passed on and dropped there).
        if (seg.syn || seg.rst) && !segment::checksum_ok(&packet) {
            self.device.deliver(packet);
            return;
        }
        let tuple = seg.tuple_at_receiver();
        if let Some(&handle) = self.by_tuple.get(&tuple) {
            // A segment that may end a handshake phase must be one smoltcp accepts.
            let handshaking = self
                .conns
                .get(&handle)
                .is_some_and(|c| !matches!(c.phase, Phase::Open));
            if handshaking && !segment::checksum_ok(&packet) {
                self.device.deliver(packet);
                return;
            }
            if self.on_connection_segment(now, handle, &seg) {
                self.device.deliver(packet);
            } else {
                self.device.recycle(packet);
            }
            return;
        }
        let is_new_syn = seg.syn && !seg.ack && !seg.rst;
        let ours = *tuple.local.ip() == self.config.address;
        if is_new_syn && ours && self.listeners.contains_key(&tuple.local.port()) {
            if self.pending.contains_key(&tuple) {
                self.device.deliver(packet);
                return;
            }
            let half_open = self.pending.len()
                + self
                    .conns
                    .values()
                    .filter(|c| matches!(c.phase, Phase::SynReceived(_)))
                    .count();
            if half_open >= self.config.max_half_open {
                debug!(peer = %seg.src, half_open, "SYN dropped: too many half-open connections");
                self.device.recycle(packet);
                return;
            }
            if self.on_new_syn(now, &seg) {
                self.device.deliver(packet);
            } else {
                self.device.recycle(packet);
            }
            return;
        }
        self.device.deliver(packet);
    }

    /// A segment of a known connection. Returns whether smoltcp gets it.
    fn on_connection_segment(&mut self, now: Instant, handle: SocketHandle, seg: &Segment) -> bool {
        let max_gap = self.table.config().max_resume_gap;
        let Some(conn) = self.conns.get_mut(&handle) else {
            return true;
        };
        // A RST proves nothing about the path being alive (a host without
        // the connection sends them), so it does not count as a sign of life.
        if seg.rst {
            conn.rst_seen = true;
        } else {
            conn.last_rx = now;
        }
        let tuple = conn.tuple;
        let stream = conn.stream;
        match &mut conn.phase {
            Phase::SynSent(Some(initiator)) if seg.rst => {
                let outcome = initiator.on_rst(seg.option);
                let resume = initiator.is_resume();
                if !resume {
                    return true;
                }
                let Some(id) = stream else { return true };
                match outcome {
                    RstOutcome::Refused => {
                        let tifid = initiator.syn_option().tifid;
                        self.drop_connection(handle);
                        if self.only_our_fin_unconfirmed(id) {
                            // The peer had our every byte and sent its FIN: it
                            // finished the flow, and only the ACK of our FIN was
                            // lost with the path. The conversation is complete.
                            info!(%tifid, "resume refused after a complete exchange: closed");
                            self.finish_closed(id);
                        } else {
                            warn!(%tifid, "resume refused by peer");
                            self.lose_flow(id, LostCause::Refused);
                        }
                    }
                    RstOutcome::Transient => {
                        debug!("resume attempt reset (transient); will retry");
                        self.drop_connection(handle);
                    }
                }
                false
            }
            Phase::SynSent(Some(initiator)) if seg.syn && seg.ack => {
                let Some(id) = stream else { return true };
                let flow = self
                    .streams
                    .get(&id)
                    .and_then(|s| s.tifid)
                    .and_then(|t| self.table.get(t));
                let outcome = initiator.on_syn_ack(seg.option, flow, max_gap);
                let initiator = initiator.clone();
                self.on_syn_ack_outcome(now, handle, id, tuple, seg, initiator, outcome)
            }
            Phase::SynSent(None) if seg.syn && seg.ack => {
                if let Some(s) = stream.and_then(|id| self.streams.get_mut(&id)) {
                    s.mode = StreamMode::Known(Mode::Legacy);
                }
                conn.phase = Phase::Open;
                true
            }
            Phase::Confirming(initiator) => {
                if !seg.rst && initiator.on_peer_segment(seg.syn) {
                    debug!(tifid = %initiator.syn_option().tifid, "confirmation acknowledged by peer");
                    self.device.detach_option(&tuple);
                    conn.phase = Phase::Open;
                }
                true
            }
            Phase::SynReceived(Some(_)) if !seg.syn && !seg.rst && seg.ack => {
                let Phase::SynReceived(Some(responder)) =
                    std::mem::replace(&mut conn.phase, Phase::Open)
                else {
                    return true;
                };
                self.device.detach_option(&tuple);
                self.on_handshake_ack(now, handle, seg, responder)
            }
            _ => true,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_syn_ack_outcome(
        &mut self,
        now: Instant,
        handle: SocketHandle,
        id: StreamId,
        tuple: FourTuple,
        seg: &Segment,
        initiator: Initiator,
        outcome: SynAckOutcome,
    ) -> bool {
        match outcome {
            SynAckOutcome::Established { tifid, peer_isn } => {
                let isn = initiator.syn_option().tiseq;
                let peer = IpAddress::Ipv4(*seg.src.ip());
                let flow = Flow::new(tifid, Role::Initiator, isn, peer_isn, to_std_ip(peer));
                if self.table.insert(flow).is_err() {
                    warn!(%tifid, "flow table refused the flow: legacy");
                    self.fall_back(handle, id, FallbackCause::TableFull);
                    return true;
                }
                info!(%tifid, peer = %seg.src, "TI-flow established (initiator)");
                let confirm = initiator.confirm_option();
                if let Some(conn) = self.conns.get_mut(&handle) {
                    conn.base = isn;
                    conn.phase = Phase::Confirming(initiator);
                }
                if let Some(option) = confirm {
                    self.device.attach_option(tuple, option);
                }
                if let Some(s) = self.streams.get_mut(&id) {
                    s.tifid = Some(tifid);
                    s.mode = StreamMode::Known(Mode::Resilient { tifid });
                    s.sent_high = isn;
                    let flow = self.table.get_mut(tifid);
                    if let Some(flow) = flow {
                        let _ = flow.on_write(s.send_buf.len() as u64);
                        if s.shutdown_write {
                            flow.queue_fin();
                        }
                    }
                }
                self.by_tifid.insert(tifid, id);
                true
            }
            SynAckOutcome::Resumed { peer_rcv_nxt, .. } => {
                let Some(s) = self.streams.get_mut(&id) else {
                    return true;
                };
                let Some(tifid) = s.tifid else { return true };
                let Some(flow) = self.table.get_mut(tifid) else {
                    return true;
                };
                let dropped = flow.resume_from(peer_rcv_nxt).unwrap_or(0);
                flow.attach();
                let (downtime, resent) = s.reattach(now, handle, peer_rcv_nxt, dropped);
                info!(%tifid, ?downtime, resent, local = %tuple.local, "TI-flow resumed (initiator)");
                let confirm = initiator.confirm_option();
                if let Some(conn) = self.conns.get_mut(&handle) {
                    conn.base = peer_rcv_nxt;
                    conn.phase = Phase::Confirming(initiator);
                }
                if let Some(option) = confirm {
                    self.device.attach_option(tuple, option);
                }
                true
            }
            SynAckOutcome::FellBack(cause) => {
                info!(peer = %seg.src, %cause, "connection falls back to legacy TCP");
                self.fall_back(handle, id, cause);
                true
            }
            SynAckOutcome::Lost(cause) => {
                warn!(%cause, "resume failed: flow lost");
                self.drop_connection(handle);
                self.lose_flow(id, cause);
                false
            }
        }
    }

    fn fall_back(&mut self, handle: SocketHandle, id: StreamId, cause: FallbackCause) {
        if let Some(conn) = self.conns.get_mut(&handle) {
            conn.phase = Phase::Open;
            let tuple = conn.tuple;
            self.device.detach_option(&tuple);
        }
        if let Some(s) = self.streams.get_mut(&id) {
            if let Some(tifid) = s.tifid.take() {
                self.table.remove(tifid);
                self.by_tifid.remove(&tifid);
                s.events.push_back(StreamEvent::FellBack(cause));
            }
            s.mode = StreamMode::Known(Mode::Legacy);
        }
    }

    /// Everything we sent is acknowledged but our FIN, and the peer's FIN
    /// has arrived: a refused resume then means the peer finished the flow.
    fn only_our_fin_unconfirmed(&self, id: StreamId) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|s| s.eof && s.shutdown_write && s.send_buf.is_empty() && !s.fin_acked)
    }

    /// Ends a flow whose conversation completed (both FINs delivered).
    fn finish_closed(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.resume = None;
            s.fin_acked = true;
            if let Some(tifid) = s.tifid {
                if let Some(flow) = self.table.get_mut(tifid) {
                    flow.finish();
                }
                self.by_tifid.remove(&tifid);
            }
        }
    }

    fn lose_flow(&mut self, id: StreamId, cause: LostCause) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.resume = None;
            s.error = Some(StreamError::FlowLost(cause));
            s.events.push_back(StreamEvent::Lost(cause));
            if let Some(tifid) = s.tifid {
                if let Some(flow) = self.table.get_mut(tifid) {
                    flow.finish();
                }
                self.by_tifid.remove(&tifid);
            }
        }
    }

    /// A SYN for a listener, from a tuple we do not know. Returns whether
    /// smoltcp gets it.
    fn on_new_syn(&mut self, now: Instant, seg: &Segment) -> bool {
        let tuple = seg.tuple_at_receiver();
        if let Ok(Some(option)) = seg.option
            && option.tifid.is_complete()
        {
            // A resume: positions must be current before the checks.
            if let Some(&id) = self.by_tifid.get(&option.tifid) {
                self.sync_stream(now, id);
            }
        }
        let policy = ResponderPolicy {
            enabled: self.config.ti_enabled,
        };
        let ts = self.ts(now);
        let decision = Responder::on_syn(
            &mut self.table,
            policy,
            seg.option,
            to_std_ip(IpAddress::Ipv4(*seg.src.ip())),
            &mut self.rng,
            ts,
        );
        let responder = match decision {
            SynDecision::Legacy(cause) => {
                debug!(peer = %seg.src, %cause, "SYN accepted as legacy TCP");
                None
            }
            SynDecision::Accept(responder) => {
                if responder.is_resume() {
                    let tifid = responder.tifid();
                    if let Some(&id) = self.by_tifid.get(&tifid)
                        && let Some(old) = self.streams.get(&id).and_then(|s| s.conn)
                    {
                        info!(%tifid, "resume for an attached flow: abandoning its old connection");
                        self.fail_connection(now, old, "superseded by resume");
                    }
                    info!(%tifid, peer = %seg.src, "resume accepted");
                }
                self.device.attach_option(tuple, responder.syn_ack_option());
                Some(responder)
            }
            SynDecision::Refuse { reason, reply } => {
                self.refuse(now, seg, reason, reply);
                return false;
            }
        };
        self.pending.insert(tuple, responder);
        self.add_listener(tuple.local.port());
        true
    }

    fn refuse(
        &mut self,
        now: Instant,
        seg: &Segment,
        reason: RefuseReason,
        reply: Option<tifid::FlowOptionRepr>,
    ) {
        let tifid = seg.option.ok().flatten().map(|o| o.tifid);
        match reply {
            Some(reply) => {
                warn!(?tifid, peer = %seg.src, %reason, "resume refused");
                let rst = refusal_rst(seg, &reply, self.device.kind());
                self.device.send_raw(now, &rst);
            }
            None => warn!(?tifid, peer = %seg.src, %reason, "resume refused silently (rate limit)"),
        }
    }

    fn add_listener(&mut self, port: u16) {
        let mut socket = self.new_socket();
        if socket.listen(port).is_ok() {
            let handle = self.sockets.add(socket);
            self.fresh_listeners.push((handle, port));
        }
    }

    fn new_socket(&self) -> tcp::Socket<'static> {
        let size = self.config.socket_buffer;
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; size]),
            tcp::SocketBuffer::new(vec![0u8; size]),
        );
        socket.set_congestion_control(tcp::CongestionControl::Cubic);
        socket.set_tsval_generator(Some(tsval));
        socket.set_nagle_enabled(false);
        socket.set_ack_delay(None);
        socket.set_timeout(Some(smol(self.config.connect_timeout)));
        // Armed before the handshake: enabling it on an idle established
        // socket makes smoltcp send a probe at once.
        socket.set_keep_alive(Some(smol(self.config.keepalive)));
        socket
    }

    /// After smoltcp ran: listeners that took a SYN become connections.
    fn bind_fresh_listeners(&mut self, now: Instant) {
        for (handle, _port) in std::mem::take(&mut self.fresh_listeners) {
            let socket = self.sockets.get::<tcp::Socket>(handle);
            let tuple = match (
                socket.state(),
                socket.local_endpoint(),
                socket.remote_endpoint(),
            ) {
                (tcp::State::Listen, _, _) => None,
                (_, Some(local), Some(remote)) => endpoint_tuple(local, remote),
                _ => None,
            };
            let Some(tuple) = tuple else {
                // smoltcp rejected the SYN this listener was made for.
                self.sockets.remove(handle);
                continue;
            };
            let responder = self.pending.remove(&tuple).flatten();
            self.conns.insert(
                handle,
                Conn {
                    tuple,
                    stream: None,
                    phase: Phase::SynReceived(responder),
                    written: 0,
                    acked: 0,
                    base: Seq48::ZERO,
                    fin_pushed: false,
                    rst_seen: false,
                    was_last_ack: false,
                    last_rx: now,
                    created: now,
                },
            );
            self.by_tuple.insert(tuple, handle);
        }
        // Every SYN delivered this poll has been processed: handshakes smoltcp
        // did not take up leave no state behind (no rule, no entry).
        for (tuple, _) in std::mem::take(&mut self.pending) {
            self.device.detach_option(&tuple);
        }
    }

    /// The first segment completing a responder handshake.
    fn on_handshake_ack(
        &mut self,
        now: Instant,
        handle: SocketHandle,
        seg: &Segment,
        responder: Responder,
    ) -> bool {
        let tifid = responder.tifid();
        match responder.on_handshake_ack(seg.option) {
            ConfirmOutcome::Confirmed if responder.is_resume() => {
                let Some(&id) = self.by_tifid.get(&tifid) else {
                    self.drop_connection(handle);
                    return false;
                };
                let Some(flow) = self.table.get_mut(tifid) else {
                    self.drop_connection(handle);
                    return false;
                };
                let from = responder.resume_send_from();
                let dropped = flow.resume_from(from).unwrap_or(0);
                flow.attach();
                flow.set_peer(to_std_ip(IpAddress::Ipv4(*seg.src.ip())));
                let Some(s) = self.streams.get_mut(&id) else {
                    return true;
                };
                let (downtime, resent) = s.reattach(now, handle, from, dropped);
                if let Some(conn) = self.conns.get_mut(&handle) {
                    conn.stream = Some(id);
                    conn.base = from;
                }
                info!(%tifid, ?downtime, resent, "TI-flow resumed (responder)");
                true
            }
            ConfirmOutcome::Confirmed => {
                let (isn, peer_isn) = responder.isns();
                let peer = to_std_ip(IpAddress::Ipv4(*seg.src.ip()));
                let inserted = self
                    .table
                    .insert(Flow::new(tifid, Role::Responder, isn, peer_isn, peer))
                    .is_ok();
                let mode = if inserted {
                    info!(%tifid, peer = %seg.src, "TI-flow established (responder)");
                    Mode::Resilient { tifid }
                } else {
                    warn!(%tifid, "flow table refused the confirmed flow: legacy");
                    Mode::Legacy
                };
                self.accept_connection(now, handle, mode, inserted.then_some((tifid, isn)));
                true
            }
            ConfirmOutcome::Unconfirmed(cause) if responder.is_resume() => {
                warn!(%tifid, %cause, "resume not confirmed: connection dropped, flow stays detached");
                self.drop_connection(handle);
                false
            }
            ConfirmOutcome::Unconfirmed(cause) => {
                info!(%tifid, %cause, peer = %seg.src, "no confirmation: legacy TCP");
                self.accept_connection(now, handle, Mode::Legacy, None);
                true
            }
        }
    }

    /// A new responder-side stream for a connection, queued for `accept`.
    fn accept_connection(
        &mut self,
        now: Instant,
        handle: SocketHandle,
        mode: Mode,
        flow: Option<(Tifid, Seq48)>,
    ) {
        let Some(conn) = self.conns.get(&handle) else {
            return;
        };
        let port = conn.tuple.local.port();
        let peer = conn.tuple.remote;
        if !self.listeners.contains_key(&port) {
            self.drop_connection(handle);
            return;
        }
        let id = self.new_stream(Role::Responder, peer, now);
        if let Some(s) = self.streams.get_mut(&id) {
            s.mode = StreamMode::Known(mode);
            s.conn = Some(handle);
            if let Some((tifid, isn)) = flow {
                s.tifid = Some(tifid);
                s.sent_high = isn;
            }
        }
        if let Some((tifid, isn)) = flow {
            self.by_tifid.insert(tifid, id);
            if let Some(conn) = self.conns.get_mut(&handle) {
                conn.base = isn;
            }
        }
        if let Some(conn) = self.conns.get_mut(&handle) {
            conn.stream = Some(id);
        }
        if let Some(l) = self.listeners.get_mut(&port) {
            l.accept_queue.push_back(id);
        }
    }

    fn on_egress_event(&mut self, now: Instant, event: EgressEvent) {
        let EgressEvent::DoesNotFit(tuple) = event;
        let Some(&handle) = self.by_tuple.get(&tuple) else {
            return;
        };
        let Some(conn) = self.conns.get(&handle) else {
            return;
        };
        let resume =
            matches!(&conn.phase, Phase::Confirming(i) | Phase::SynSent(Some(i)) if i.is_resume());
        let stream = conn.stream;
        warn!(local = %tuple.local, "flow option did not fit a segment");
        if resume {
            self.fail_connection(now, handle, "confirmation did not fit");
        } else if let Some(id) = stream {
            self.fall_back(handle, id, FallbackCause::OptionDoesNotFit);
        }
    }

    // ------------------------------------------------------ connections

    fn fresh_port(&mut self) -> u16 {
        for _ in 0..1024 {
            let port = self.rng.random_range(49152..=65535u16);
            let in_use = self.by_tuple.keys().any(|t| t.local.port() == port)
                || self.listeners.contains_key(&port);
            if !in_use && !self.recent_port_set.contains(&port) {
                self.recent_ports.push_back(port);
                self.recent_port_set.insert(port);
                if self.recent_ports.len() > RECENT_PORTS
                    && let Some(old) = self.recent_ports.pop_front()
                {
                    self.recent_port_set.remove(&old);
                }
                return port;
            }
        }
        self.rng.random_range(49152..=65535u16)
    }

    fn open_connection(
        &mut self,
        now: Instant,
        id: StreamId,
        initiator: Option<Initiator>,
    ) -> Result<(), StreamError> {
        let peer = self
            .streams
            .get(&id)
            .map(|s| s.peer)
            .ok_or(StreamError::NoSuchStream)?;
        let port = self.fresh_port();
        let local = SocketAddrV4::new(self.config.address, port);
        let mut socket = self.new_socket();
        let remote = IpEndpoint::new(IpAddress::Ipv4(*peer.ip()), peer.port());
        let local_ep = IpEndpoint::new(IpAddress::Ipv4(*local.ip()), local.port());
        socket
            .connect(self.iface.context(), remote, local_ep)
            .map_err(|_| StreamError::ConnectionRefused)?;
        let handle = self.sockets.add(socket);
        let tuple = FourTuple {
            local,
            remote: peer,
        };
        if let Some(i) = &initiator {
            self.device.attach_option(tuple, i.syn_option());
        }
        self.conns.insert(
            handle,
            Conn {
                tuple,
                stream: Some(id),
                phase: Phase::SynSent(initiator),
                written: 0,
                acked: 0,
                base: Seq48::ZERO,
                fin_pushed: false,
                rst_seen: false,
                was_last_ack: false,
                last_rx: now,
                created: now,
            },
        );
        self.by_tuple.insert(tuple, handle);
        if let Some(s) = self.streams.get_mut(&id) {
            s.conn = Some(handle);
        }
        Ok(())
    }

    /// Removes a connection's socket and bookkeeping without touching its stream's flow.
    fn drop_connection(&mut self, handle: SocketHandle) {
        if let Some(conn) = self.conns.remove(&handle) {
            self.by_tuple.remove(&conn.tuple);
            self.device.detach_option(&conn.tuple);
            if let Some(s) = conn.stream.and_then(|id| self.streams.get_mut(&id))
                && s.conn == Some(handle)
            {
                s.conn = None;
            }
        }
        self.sockets.remove(handle);
    }

    /// The connection failed (or was abandoned): drain it (I1), drop it,
    /// and detach the flow (TI) or fail the stream (legacy).
    fn fail_connection(&mut self, now: Instant, handle: SocketHandle, why: &str) {
        let Some(conn) = self.conns.get(&handle) else {
            self.sockets.remove(handle);
            return;
        };
        let Some(id) = conn.stream else {
            self.drop_connection(handle);
            return;
        };
        let handshaking = matches!(conn.phase, Phase::SynSent(_));
        self.pump(now, id, handle, true);
        self.drop_connection(handle);
        let ts = self.ts(now);
        let resume_timeout = smol(self.config.resume_timeout);
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        match (s.mode, s.tifid) {
            (StreamMode::Known(Mode::Resilient { tifid }), Some(_)) => {
                if let Some(flow) = self.table.get_mut(tifid) {
                    flow.detach(ts);
                }
                if s.failed_at.is_none() {
                    s.failed_at = Some(now);
                    info!(%tifid, why, "TI connection failed: flow detached");
                }
                if s.role == Role::Initiator && s.error.is_none() {
                    let r = s.resume.get_or_insert(ResumeState {
                        attempt: 0,
                        next_attempt: now,
                        deadline: now + resume_timeout,
                    });
                    if !handshaking {
                        r.next_attempt = now;
                    }
                }
            }
            _ => {
                if s.error.is_none() && !(s.eof && s.fin_acked) {
                    debug!(why, "legacy connection failed");
                    s.error = Some(if handshaking {
                        StreamError::ConnectionRefused
                    } else {
                        StreamError::ConnectionReset
                    });
                }
                if s.mode == StreamMode::Connecting {
                    s.mode = StreamMode::Known(Mode::Legacy);
                }
            }
        }
    }

    /// Per-connection checks after smoltcp ran: handshakes that ended,
    /// connections that died.
    fn service_connections(&mut self, now: Instant) {
        let handles: Vec<SocketHandle> = self.conns.keys().copied().collect();
        for handle in handles {
            let Some(conn) = self.conns.get_mut(&handle) else {
                continue;
            };
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            let state = socket.state();
            if state == tcp::State::LastAck {
                conn.was_last_ack = true;
            }
            let synchronized = !matches!(
                state,
                tcp::State::Closed
                    | tcp::State::Listen
                    | tcp::State::SynSent
                    | tcp::State::SynReceived
            );
            if synchronized && socket.timeout().is_some() {
                socket.set_timeout(None);
            }
            // A RST in SYN-RECEIVED sends a smoltcp socket back to LISTEN: a
            // tracked connection must never become a listener for anyone else.
            if state == tcp::State::Listen {
                debug!(remote = %conn.tuple.remote, "handshake reset: connection dropped");
                self.drop_connection(handle);
                continue;
            }
            match (&conn.phase, conn.stream) {
                // Legacy responder connection established: hand it out.
                // (Data and FIN may have come with the handshake's ACK: any
                // synchronized state means smoltcp accepted the connection.)
                (Phase::SynReceived(None), None) if synchronized => {
                    conn.phase = Phase::Open;
                    self.accept_connection(now, handle, Mode::Legacy, None);
                }
                (Phase::Open | Phase::SynReceived(_), None) if state == tcp::State::Closed => {
                    self.drop_connection(handle);
                }
                (Phase::SynSent(None), Some(id)) if state == tcp::State::Established => {
                    conn.phase = Phase::Open;
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.mode = StreamMode::Known(Mode::Legacy);
                    }
                }
                _ => {}
            }
        }
    }

    // ------------------------------------------------------------ streams

    fn new_stream(&mut self, role: Role, peer: SocketAddrV4, now: Instant) -> StreamId {
        let id = StreamId(self.next_stream);
        self.next_stream += 1;
        self.streams.insert(
            id,
            StreamState {
                mode: StreamMode::Connecting,
                role,
                peer,
                tifid: None,
                conn: None,
                send_buf: VecDeque::new(),
                sent_high: Seq48::ZERO,
                recv_buf: VecDeque::new(),
                shutdown_write: false,
                eof: false,
                fin_acked: false,
                error: None,
                events: VecDeque::new(),
                stats: StreamStats::default(),
                failed_at: None,
                resume: None,
                last_progress: now,
                fail_requested: false,
                abandoned: false,
            },
        );
        id
    }

    /// Brings a flow's positions up to date with its connection (used
    /// before judging a resume of it).
    fn sync_stream(&mut self, now: Instant, id: StreamId) {
        if let Some(handle) = self.streams.get(&id).and_then(|s| s.conn) {
            self.pump(now, id, handle, true);
        }
    }

    /// Moves bytes between the stream's TI buffers and its socket.
    /// `draining`: take every received byte regardless of the receive
    /// buffer bound, and push nothing new (the connection is going away).
    fn pump(&mut self, now: Instant, id: StreamId, handle: SocketHandle, draining: bool) {
        let recv_limit = self.config.recv_buffer;
        let mtu = self.device.capabilities().max_transmission_unit;
        let Some(conn) = self.conns.get_mut(&handle) else {
            return;
        };
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        let flow = s.tifid.and_then(|t| self.table.get_mut(t));
        let mut flow = flow;

        // Acknowledged by TCP: drop from the send buffer (I2 keeps the rest).
        let in_socket = socket.send_queue() as u64;
        let acked_total = conn.written.saturating_sub(in_socket);
        let newly = acked_total.saturating_sub(conn.acked);
        if newly > 0 {
            conn.acked = acked_total;
            let n = (newly as usize).min(s.send_buf.len());
            s.send_buf.drain(..n);
            if let Some(flow) = flow.as_deref_mut() {
                let una = flow.positions().snd_una + newly;
                let _ = flow.on_acked(una);
            }
            s.last_progress = now;
        }
        if in_socket == 0 {
            s.last_progress = now;
        }

        // Push new bytes (the first flight is one MSS-20 segment while confirming).
        let established = matches!(
            socket.state(),
            tcp::State::Established | tcp::State::CloseWait
        );
        if !draining
            && established
            && !matches!(conn.phase, Phase::SynSent(_) | Phase::SynReceived(_))
        {
            let limit = match &conn.phase {
                Phase::Confirming(i) => i
                    .first_flight_limit(effective_mss(mtu))
                    .map(|l| (l as u64).saturating_sub(conn.written)),
                _ => None,
            };
            let unsent_from = in_socket as usize;
            if unsent_from < s.send_buf.len() {
                let (a, b) = s.send_buf.as_slices();
                let mut offset = unsent_from;
                let mut budget = limit.unwrap_or(u64::MAX);
                for part in [a, b] {
                    if offset >= part.len() {
                        offset -= part.len();
                        continue;
                    }
                    let chunk = &part[offset..];
                    offset = 0;
                    let chunk = &chunk[..chunk.len().min(budget as usize)];
                    let n = socket.send_slice(chunk).unwrap_or(0);
                    conn.written += n as u64;
                    budget -= n as u64;
                    let high = conn.base + conn.written;
                    if s.sent_high < high || s.tifid.is_none() {
                        s.sent_high = high;
                    }
                    if n < chunk.len() || budget == 0 {
                        break;
                    }
                }
            }
            let all_pushed = in_socket as usize + (conn.written - acked_total - in_socket) as usize
                >= s.send_buf.len();
            if s.shutdown_write && !conn.fin_pushed && all_pushed && limit.is_none() {
                socket.close();
                // Closing from CLOSE-WAIT enters LAST-ACK now; its ACK may come
                // before any later poll sees the state.
                if socket.state() == tcp::State::LastAck {
                    conn.was_last_ack = true;
                }
                conn.fin_pushed = true;
            }
        }

        // Receive (I1: when draining, everything TCP acknowledged).
        while socket.can_recv() && (draining || s.recv_buf.len() < recv_limit) {
            let room = if draining {
                usize::MAX
            } else {
                recv_limit - s.recv_buf.len()
            };
            let got = socket.recv(|data| {
                let n = data.len().min(room);
                s.recv_buf.extend(&data[..n]);
                (n, n)
            });
            match got {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    s.stats.bytes_received += n as u64;
                    if let Some(flow) = flow.as_deref_mut() {
                        let _ = flow.on_received(n as u64);
                    }
                }
            }
        }
        let state = socket.state();
        let fin_in = matches!(
            state,
            tcp::State::CloseWait
                | tcp::State::LastAck
                | tcp::State::Closing
                | tcp::State::TimeWait
        );
        if fin_in && socket.recv_queue() == 0 && !s.eof {
            s.eof = true;
            if let Some(flow) = flow.as_deref_mut() {
                flow.on_fin_received();
            }
        }
        let fin_acked = conn.fin_pushed
            && (matches!(state, tcp::State::FinWait2 | tcp::State::TimeWait)
                || (state == tcp::State::Closed && conn.was_last_ack && !conn.rst_seen));
        if fin_acked && !s.fin_acked {
            s.fin_acked = true;
            if let Some(flow) = flow {
                let end = flow.positions().snd_nxt;
                let _ = flow.on_acked(end);
            }
        }
    }

    fn service_stream(&mut self, now: Instant, id: StreamId) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        let stall = smol(self.config.stall_timeout);
        let keepalive = smol(self.config.keepalive);
        let connect_timeout = smol(self.config.connect_timeout);
        if let Some(handle) = s.conn {
            self.pump(now, id, handle, false);
            let Some(s) = self.streams.get_mut(&id) else {
                return;
            };
            let Some(conn) = self.conns.get(&handle) else {
                return;
            };
            let socket = self.sockets.get::<tcp::Socket>(handle);
            let state = socket.state();
            let ti =
                s.tifid.is_some() && matches!(s.mode, StreamMode::Known(Mode::Resilient { .. }));
            let done = s.eof && s.fin_acked;
            let handshaking = matches!(conn.phase, Phase::SynSent(_));
            let mut failure: Option<&str> = None;
            if std::mem::take(&mut s.fail_requested) && ti {
                failure = Some("explicit request");
            } else if state == tcp::State::Closed && !done {
                failure = Some(if conn.rst_seen { "reset" } else { "closed" });
            } else if ti
                && !handshaking
                && socket.send_queue() > 0
                && now >= s.last_progress + stall
            {
                failure = Some("stall");
            } else if ti
                && !handshaking
                && !s.eof
                && matches!(
                    state,
                    tcp::State::Established | tcp::State::FinWait1 | tcp::State::FinWait2
                )
                && now >= conn.last_rx + keepalive + stall
            {
                failure = Some("idle path: keepalives unanswered");
            } else if handshaking && s.resume.as_ref().is_some_and(|r| now >= r.next_attempt) {
                failure = Some("resume attempt unanswered");
            } else if handshaking && now >= conn.created + connect_timeout {
                failure = Some("handshake timed out");
            }
            if let Some(why) = failure {
                let connecting = s.mode == StreamMode::Connecting;
                self.fail_connection(now, handle, why);
                if connecting
                    && let Some(s) = self.streams.get_mut(&id)
                    && why == "handshake timed out"
                {
                    s.error = Some(StreamError::TimedOut);
                }
            } else if done && state == tcp::State::Closed {
                self.drop_connection(handle);
            }
        }
        // A detached flow we initiated resumes when due: in the same poll
        // that noticed the failure, so the SYN leaves at once.
        if let Some(s) = self.streams.get(&id).filter(|s| s.conn.is_none()) {
            {
                let due = s
                    .resume
                    .as_ref()
                    .map(|r| (now >= r.deadline, now >= r.next_attempt));
                match due {
                    Some((true, _)) => {
                        warn!(tifid = ?s.tifid, "resume timed out");
                        self.lose_flow(id, LostCause::Timeout);
                    }
                    Some((false, true)) => self.start_resume_attempt(now, id),
                    _ => {}
                }
            }
        }
        // Free streams the application dropped once nothing is left to do.
        let finished = self
            .streams
            .get(&id)
            .is_some_and(|s| s.abandoned && s.conn.is_none() && s.resume.is_none());
        if finished {
            if let Some(s) = self.streams.remove(&id)
                && let Some(tifid) = s.tifid
            {
                self.by_tifid.remove(&tifid);
                if let Some(flow) = self.table.get_mut(tifid)
                    && (flow.is_closed() || s.error.is_some() || s.role == Role::Initiator)
                {
                    flow.finish();
                }
            }
        } else if let Some(s) = self.streams.get(&id)
            && let Some(flow) = s.tifid.and_then(|t| self.table.get_mut(t))
            && flow.is_closed()
        {
            flow.finish();
        }
    }

    fn start_resume_attempt(&mut self, now: Instant, id: StreamId) {
        let backoff = self.config.resume_backoff;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let Some(tifid) = s.tifid else { return };
        let Some(flow) = self.table.get(tifid) else {
            self.lose_flow(id, LostCause::Timeout);
            return;
        };
        let initiator = Initiator::resume(flow);
        if let Some(r) = s.resume.as_mut() {
            let delay = backoff
                .saturating_mul(1 << r.attempt.min(16))
                .min(self.config.resume_timeout);
            r.attempt += 1;
            r.next_attempt = now + smol(delay);
            debug!(%tifid, attempt = r.attempt, "resume attempt");
        }
        if let Some(old) = s.conn {
            self.drop_connection(old);
        }
        if self.open_connection(now, id, Some(initiator)).is_err() {
            warn!(%tifid, "could not open a resume connection");
        }
    }
}

fn endpoint_tuple(local: IpEndpoint, remote: IpEndpoint) -> Option<FourTuple> {
    match (local.addr, remote.addr) {
        (IpAddress::Ipv4(l), IpAddress::Ipv4(r)) => Some(FourTuple {
            local: SocketAddrV4::new(l, local.port),
            remote: SocketAddrV4::new(r, remote.port),
        }),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

fn to_std_ip(addr: IpAddress) -> std::net::IpAddr {
    match addr {
        IpAddress::Ipv4(a) => std::net::IpAddr::V4(a),
        #[allow(unreachable_patterns)]
        IpAddress::Ipv6(a) => std::net::IpAddr::V6(a),
    }
}

/// Payload of a full segment with timestamps at this IP MTU.
fn effective_mss(ip_mtu: usize) -> usize {
    ip_mtu.saturating_sub(20 + 20 + 12)
}
