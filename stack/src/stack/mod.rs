//! The stack: smoltcp + the boundary + the flow table, driven by `poll(now)`.
//!
//! Owns every connection and every TI stream: moves bytes between the
//! application-facing TI buffers and the smoltcp sockets, runs the handshakes
//! through `tifid`'s state machines on segments the boundary shows it, detects
//! failed connections (RST, stall, idle path, explicit request), resumes
//! flows (initiator) or waits for a resume (responder), and keeps invariants
//! I1 to I3 of DESIGN §4. It never reads a clock: time is passed in, so a
//! simulation can drive it in virtual time. It never blocks.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use smoltcp::phy::Device;
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as SmolDuration, Instant};
use smoltcp::wire::IpEndpoint;
use tifid::handshake::{
    ConfirmOutcome, FallbackCause, Initiator, LostCause, Mode, RefuseReason, Responder,
    ResponderPolicy, RstOutcome, SynAckOutcome, SynDecision,
};
use tifid::{Flow, FlowTable, Role, Seq48, TableConfig, Tifid, Timestamp};
use tracing::{debug, info, warn};

mod accept;
mod cells;
mod conns;
mod half_open;
mod handshake;
mod ingress;
mod lifecycle;
mod liveness;
mod metrics;
mod ports;
mod pump;
mod resources;
mod ring;
mod syn_queue;
mod timers;
mod validate;

pub use metrics::{DOWNTIME_BUCKETS, FlowMetrics};
pub use resources::Resources;

use accept::AdmissionStats;
use cells::{Addressing, Cells, ConnId};
use half_open::{Attempt, HalfOpen};
use ring::ByteRing;
use syn_queue::{RetryFilter, SynQueue};
use timers::{Timers, Wake};

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

/// The key of the any-port listener ([`Stack::listen_any`]) among the
/// listeners (no port listener can have it: port 0 is never listened on).
const ANY_PORT: u16 = 0;

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
    /// Downtime of the last resume: from the failure being noticed to the
    /// new connection carrying the flow.
    pub last_downtime: Option<Duration>,
    /// Time to detect the last failure: from the last byte carried to the
    /// failure being noticed.
    pub last_detect: Option<Duration>,
    /// The last outage as the program saw it: from the last byte carried
    /// (acknowledged or delivered) before the failure to the first byte
    /// after the resume.
    pub last_gap: Option<Duration>,
    /// Bytes resent over all resumes.
    pub resent_bytes: u64,
    /// Resume attempts (SYNs of resume connections) over the stream's life.
    pub resume_attempts: u64,
    /// Failures the old connection recovered from before a resume did
    /// (make before break: it carried data first and was kept).
    pub recoveries: u64,
    /// Failures of the connection carrying the flow detected at this end
    /// (stalls, silent paths, resets, ...), each followed by a resume, a
    /// recovery or the loss of the flow.
    pub failures: u64,
}

/// A snapshot of one stream for status displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    /// The stream.
    pub id: StreamId,
    /// Its mode.
    pub mode: StreamMode,
    /// The original peer.
    pub peer: SocketAddr,
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
    /// Responder: counted in the half-open table until the handshake ends.
    half_open: bool,
    /// Bytes written into this socket.
    written: u64,
    /// Of those, acknowledged by TCP.
    acked: u64,
    /// TI position of the socket's first byte.
    base: Seq48,
    fin_pushed: bool,
    /// An acceptable RST arrived (what it carried).
    reset: Option<ResetKind>,
    was_last_ack: bool,
    /// Last acceptable segment from the peer (a sign of life).
    last_rx: Instant,
    created: Instant,
    /// Our initial sequence number (TI connections, once known).
    iss: Option<u32>,
    /// The peer's initial sequence number (TI connections, once known).
    irs: Option<u32>,
    /// Bytes taken out of the socket's receive buffer.
    consumed: u64,
    /// Bytes at the start of this connection's stream the flow already has
    /// (a resume the old connection outran): dropped on receipt.
    skip_rx: u64,
    /// When we last sent a challenge ACK (RFC 5961 rate limit).
    last_challenge: Option<Instant>,
    /// When we last probed the peer.
    last_probe: Option<Instant>,
    /// That probe is unanswered (its answer is an RTT sample).
    probe_pending: bool,
    /// Probes answered with nothing new since the last progress: the probe
    /// interval doubles with each (idle flows stay quiet).
    probe_backoff: u32,
    /// The peer's last acceptable segment advertised a zero window: our
    /// queued data is not something it owes an answer to.
    peer_window_zero: bool,
    /// This connection's RTT (its handshake, answered probes).
    rtt: tifid::rtt::RttEstimator,
}

impl Conn {
    fn new(tuple: FourTuple, stream: Option<StreamId>, phase: Phase, now: Instant) -> Conn {
        Conn {
            tuple,
            stream,
            phase,
            half_open: false,
            written: 0,
            acked: 0,
            base: Seq48::ZERO,
            fin_pushed: false,
            reset: None,
            was_last_ack: false,
            last_rx: now,
            created: now,
            iss: None,
            irs: None,
            consumed: 0,
            skip_rx: 0,
            last_challenge: None,
            last_probe: None,
            probe_pending: false,
            // Idle from the start: probe at the keepalive interval until the
            // first progress shows the flow is carrying data.
            probe_backoff: u32::MAX,
            peer_window_zero: false,
            rtt: tifid::rtt::RttEstimator::default(),
        }
    }

    /// Our initial sequence number: known for TI connections, else the one
    /// the boundary recorded from our SYN or SYN-ACK (TI, or a watched
    /// legacy handshake).
    fn our_isn<D: Device>(&self, device: &Boundary<D>) -> Option<u32> {
        self.iss.or_else(|| device.sent_isn(&self.tuple))
    }
}

/// What an acceptable RST on a TI connection said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResetKind {
    /// No option of this flow: a host or middlebox without the connection.
    Bare,
    /// Our option with positions: the peer abandoned the connection on
    /// purpose; the flow resumes at once.
    Abandoned,
    /// Our option with zero positions: the peer aborted the flow.
    Aborted,
}

/// A connection suspected dead, kept while the flow resumes (make before
/// break).
#[derive(Debug, Clone, Copy)]
struct Suspect {
    handle: ConnId,
    /// What made it suspect: a stall is cleared only by an acknowledgement,
    /// a silent path by anything new.
    cause: tifid::lifecycle::FailureCause,
}

#[derive(Debug)]
struct StreamState {
    mode: StreamMode,
    role: Role,
    peer: SocketAddr,
    tifid: Option<Tifid>,
    conn: Option<ConnId>,
    /// Initiator, make before break: the connection that stalled or went
    /// silent, kept while resume attempts run (in `conn`).
    suspect: Option<Suspect>,
    /// Bytes from `snd_una` on (TI mode) or from the oldest unacknowledged byte.
    send_buf: ByteRing,
    /// TI position one past the highest byte ever handed to a socket.
    sent_high: Seq48,
    recv_buf: VecDeque<u8>,
    shutdown_write: bool,
    eof: bool,
    fin_acked: bool,
    error: Option<StreamError>,
    events: VecDeque<StreamEvent>,
    stats: StreamStats,
    /// When the current outage was noticed (downtime is measured from here).
    failed_at: Option<Instant>,
    /// When the connection last carried a byte (either direction).
    last_progress_at: Instant,
    /// The last byte carried before the current outage, until the first
    /// byte after it (the program's view of the outage).
    gap_from: Option<Instant>,
    /// The lifecycle driver, from the first established connection on.
    life: Option<tifid::lifecycle::Lifecycle>,
    fail_requested: bool,
    /// The application dropped its handle.
    abandoned: bool,
    /// Waiting in a listener's accept queue: takes no bytes out of its
    /// socket (the socket's receive buffer bounds what a peer can send
    /// before the application accepts).
    awaiting_accept: bool,
}

impl StreamState {
    /// The stream no longer uses connection `handle` (attached, attempt or
    /// suspect).
    fn release(&mut self, handle: ConnId) {
        if self.conn == Some(handle) {
            self.conn = None;
        }
        if self.suspect.is_some_and(|s| s.handle == handle) {
            self.suspect = None;
        }
    }

    /// A resume handshake succeeded on `handle`: the peer holds everything
    /// before `send_from` (`dropped` sequence numbers newly known delivered).
    /// Drops those bytes, attaches the connection, records the resume.
    /// Returns the downtime and the bytes to be sent again.
    fn reattach(
        &mut self,
        now: Instant,
        handle: ConnId,
        send_from: Seq48,
        dropped: u64,
    ) -> (Duration, u64) {
        let drop_bytes = (dropped as usize).min(self.send_buf.len());
        self.send_buf.drain_front(drop_bytes);
        let resent = self.sent_high.bytes_since(send_from).unwrap_or(0);
        let downtime = self.failed_at.map_or(Duration::ZERO, |t| std_dur(now - t));
        let detect = match (self.gap_from, self.failed_at) {
            (Some(from), Some(noticed)) if noticed > from => std_dur(noticed - from),
            _ => Duration::ZERO,
        };
        self.stats.last_detect = Some(detect);
        self.conn = Some(handle);
        self.failed_at = None;
        self.stats.resumes += 1;
        self.stats.last_downtime = Some(downtime);
        self.stats.resent_bytes += resent;
        self.push_event(StreamEvent::Resumed {
            downtime,
            detect,
            resent_bytes: resent,
        });
        (downtime, resent)
    }

    /// Queues an event for the application, forgetting the oldest beyond
    /// [`MAX_EVENTS`] (a peer can resume a flow again and again).
    fn push_event(&mut self, event: StreamEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }
}

#[derive(Debug, Default)]
struct ListenerState {
    accept_queue: VecDeque<StreamId>,
}

/// One host's stack: smoltcp interface, sockets, boundary and flow table.
pub struct Stack<D: Device> {
    config: StackConfig,
    device: Boundary<D>,
    /// One smoltcp interface per connection, and the default one.
    cells: Cells,
    /// Every deadline, and what this poll must visit.
    timers: Timers,
    /// Streams serviced by polls since the last [`Stack::take_woken`]:
    /// whatever waits on them may go on.
    woken: BTreeSet<StreamId>,
    /// A connection joined an accept queue since the last
    /// [`Stack::take_accept_ready`].
    accept_ready: bool,
    table: FlowTable,
    rng: StdRng,
    conns: HashMap<ConnId, Conn>,
    by_tuple: HashMap<FourTuple, ConnId>,
    pending: HashMap<FourTuple, Option<Responder>>,
    /// The fresh listener of each SYN admitted in this poll.
    pending_cells: HashMap<FourTuple, ConnId>,
    /// Per listener (its key in `listeners`), legacy handshakes whose ACK
    /// was let through in this poll (they join the accept queue when
    /// smoltcp took it, later in the poll).
    completing_legacy: HashMap<u16, usize>,
    /// Per listener (its key in `listeners`), the latest segment of each
    /// handshake deferred
    /// because its accept queue was full, oldest first (at most one per
    /// half-open connection).
    deferred: HashMap<u16, VecDeque<(ConnId, FourTuple, Vec<u8>)>>,
    /// Deferred segments to inspect again at the next poll.
    replay: VecDeque<Vec<u8>>,
    fresh_listeners: Vec<(ConnId, u16)>,
    streams: HashMap<StreamId, StreamState>,
    by_tifid: HashMap<Tifid, StreamId>,
    /// Per port listened on, and [`ANY_PORT`] for the any-port listener.
    listeners: HashMap<u16, ListenerState>,
    /// The ports the any-port listener takes, if there is one (empty:
    /// every port no port listener holds).
    any_ports: Option<Vec<RangeInclusive<u16>>>,
    ports: ports::Ports,
    /// Connections reset by us whose RST (and option rule) is still needed.
    resetting: VecDeque<Resetting>,
    /// Handshakes in progress on our listeners, oldest first.
    half_open: HalfOpen,
    /// Sockets of dropped handshakes, reused as fresh listeners in this
    /// poll (freed at its end).
    spare_sockets: Vec<ConnId>,
    /// New SYNs read but not yet inspected.
    syn_queue: SynQueue,
    /// Tuples whose SYN was dropped unanswered lately.
    retry_filter: RetryFilter,
    admission: AdmissionStats,
    /// Counters for monitoring ([`Stack::metrics`]).
    metrics: FlowMetrics,
    /// This poll left segments of known connections unread in the device.
    ingress_backlogged: bool,
    /// When each peer address last sent an acceptable segment on any
    /// connection (see `liveness`: a path that answers on other
    /// connections is not dead).
    peers_heard: HashMap<IpAddr, Instant>,
    next_stream: u64,
    epoch: Instant,
}

/// Packets inspected per poll before smoltcp runs (besides new SYNs).
const INGRESS_BATCH: usize = 256;
/// Events kept per stream for the application; older ones are dropped.
const MAX_EVENTS: usize = 1024;
/// How long the option of a connection we reset stays attached to its
/// tuple (answers to challenge ACKs carry it).
const RESET_LINGER: SmolDuration = SmolDuration::from_secs(2);

/// A connection we reset: its socket until the RST is out, its tuple until
/// the option rule is dropped.
#[derive(Debug)]
struct Resetting {
    handle: Option<ConnId>,
    tuple: FourTuple,
    until: Instant,
    /// The tuple's local port stays held (not handed out to a new
    /// connection) until the entry goes: see [`Stack::reset_connection`].
    holds_port: bool,
}

thread_local! {
    /// The polling stack's clock in milliseconds, for smoltcp's TCP
    /// timestamps (its generator is a plain `fn`): set before every smoltcp
    /// poll, so a simulation's captures are the same run to run and the
    /// peer's echoes measure RTT on our clock.
    static TS_CLOCK_MS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Our TCP timestamp clock: milliseconds of the stack's `now`.
fn ts_clock_ms(now: Instant) -> u32 {
    now.total_millis() as u32
}

fn tsval() -> u32 {
    TS_CLOCK_MS.with(std::cell::Cell::get)
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
        // smoltcp derives TCP initial sequence numbers from each
        // interface's seed: a constant one makes them predictable to
        // off-path attackers.
        let addressing = Addressing {
            address: config.address,
            prefix_len: config.prefix_len,
            gateway: config.gateway,
            ipv6: config.ipv6,
        };
        let cells = Cells::new(addressing, rng.random(), &mut device, now);
        // Its own generator: drawing from `rng` would change every later
        // port, TIFID and ISN of a seeded simulation.
        let mut filter_rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed ^ 0x5359_4e5f_5145_5545),
            None => StdRng::from_os_rng(),
        };
        let retry_filter = RetryFilter::new(filter_rng.random(), now);
        let table = FlowTable::new(TableConfig {
            max_flows: config.max_flows,
            resume_timeout: config.resume_timeout,
            max_resume_gap: config.send_buffer as u64 + config.socket_buffer as u64,
            allow_migration: config.allow_migration,
            ..TableConfig::default()
        });
        let ports = ports::Ports::new(config.ephemeral_ports.clone());
        Stack {
            config,
            device,
            cells,
            timers: Timers::default(),
            woken: BTreeSet::new(),
            accept_ready: false,
            table,
            rng,
            conns: HashMap::new(),
            by_tuple: HashMap::new(),
            pending: HashMap::new(),
            pending_cells: HashMap::new(),
            completing_legacy: HashMap::new(),
            deferred: HashMap::new(),
            replay: VecDeque::new(),
            fresh_listeners: Vec::new(),
            streams: HashMap::new(),
            by_tifid: HashMap::new(),
            listeners: HashMap::new(),
            any_ports: None,
            ports,
            resetting: VecDeque::new(),
            half_open: HalfOpen::default(),
            spare_sockets: Vec::new(),
            syn_queue: SynQueue::default(),
            retry_filter,
            admission: AdmissionStats::default(),
            metrics: FlowMetrics::default(),
            ingress_backlogged: false,
            peers_heard: HashMap::new(),
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

    /// Moves the stack to a new address of `address`'s family (the host
    /// moved; for IPv6, also a temporary address replaced). Connections on
    /// the old address are failed; TI-flows we initiated resume from the
    /// new address.
    pub fn set_address(&mut self, now: Instant, address: impl Into<IpAddr>, prefix_len: u8) {
        let address = address.into();
        info!(%address, "address changed");
        let old = match address {
            IpAddr::V4(v4) => {
                let old = IpAddr::V4(self.config.address);
                self.config.address = v4;
                self.config.prefix_len = prefix_len;
                old
            }
            IpAddr::V6(v6) => {
                let old = self.config.ipv6.map(|a| IpAddr::V6(a.address));
                let gateway = self.config.ipv6.and_then(|a| a.gateway);
                self.config.ipv6 = Some(crate::Ipv6Addressing {
                    address: v6,
                    prefix_len,
                    gateway,
                });
                old.unwrap_or(address)
            }
        };
        self.cells.set_addressing(Addressing {
            address: self.config.address,
            prefix_len: self.config.prefix_len,
            gateway: self.config.gateway,
            ipv6: self.config.ipv6,
        });
        let handles: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.tuple.local.ip() == old)
            .map(|(h, _)| *h)
            .collect();
        for handle in handles {
            self.connection_failed(now, handle, tifid::lifecycle::FailureCause::AddressChanged);
        }
        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for id in ids {
            self.wake_stream(id);
        }
    }

    // ---------------------------------------------------------------- API

    /// Opens a connection to `remote`, offering a TI-flow (if enabled).
    pub fn connect(
        &mut self,
        now: Instant,
        remote: impl Into<SocketAddr>,
    ) -> Result<StreamId, StreamError> {
        let remote = remote.into();
        if self.config.local_address_for(remote.ip()).is_none() {
            return Err(StreamError::NoAddressOfFamily);
        }
        let id = self.new_stream(Role::Initiator, remote, now);
        let initiator = if self.config.ti_enabled {
            self.table
                .new_initiator_half(&mut self.rng)
                .map(|half| Initiator::new_flow(half, FlowTable::new_isn(&mut self.rng)))
        } else {
            None
        };
        if let Err(e) = self.open_connection(now, id, initiator) {
            self.streams.remove(&id);
            return Err(e);
        }
        Ok(id)
    }

    /// Listens on `port`.
    pub fn listen(&mut self, port: u16) -> Result<ListenerId, StreamError> {
        if self.listeners.contains_key(&port) || port == 0 {
            return Err(StreamError::AddrInUse);
        }
        self.listeners.insert(port, ListenerState::default());
        self.ports.listen(port);
        Ok(ListenerId(port))
    }

    /// Listens on every port no [`Stack::listen`] listener holds, or, when
    /// `ports` is not empty, on those of them in one of its ranges: one
    /// accept queue for them all (a stream's [`Stack::stream_info`] tells
    /// which port it came to). For a host that serves whatever port a
    /// peer asks for (`tiflow up --serve-all`). The stack's own ports
    /// (those of connections it opened) stay its own: a segment of one of
    /// its connections never reaches a listener. At most one at a time.
    pub fn listen_any(
        &mut self,
        ports: Vec<RangeInclusive<u16>>,
    ) -> Result<ListenerId, StreamError> {
        if self.any_ports.is_some() {
            return Err(StreamError::AddrInUse);
        }
        self.any_ports = Some(ports);
        self.listeners.insert(ANY_PORT, ListenerState::default());
        Ok(ListenerId(ANY_PORT))
    }

    /// The listener that takes a new connection to `port`, as its key in
    /// `listeners`: the port's own listener, else the any-port one if it
    /// takes that port.
    fn listener_for(&self, port: u16) -> Option<u16> {
        if port != ANY_PORT && self.listeners.contains_key(&port) {
            return Some(port);
        }
        let any = self.any_ports.as_ref()?;
        let taken = any.is_empty() || any.iter().any(|r| r.contains(&port));
        (port != ANY_PORT && taken).then_some(ANY_PORT)
    }

    /// Stops listening; queued connections not yet accepted are closed.
    pub fn unlisten(&mut self, now: Instant, listener: ListenerId) {
        if let Some(state) = self.listeners.remove(&listener.0) {
            if listener.0 == ANY_PORT {
                self.any_ports = None;
            } else {
                self.ports.unlisten(listener.0);
            }
            for id in state.accept_queue {
                self.close(now, id);
            }
        }
    }

    /// The next accepted connection, if one is ready.
    pub fn accept(&mut self, listener: ListenerId) -> Result<Option<StreamId>, StreamError> {
        let state = self
            .listeners
            .get_mut(&listener.0)
            .ok_or(StreamError::NoSuchStream)?;
        let id = state.accept_queue.pop_front();
        let port = listener.0;
        if id.is_some() {
            self.replay_deferred(port);
        }
        if let Some(id) = id {
            if let Some(s) = self.streams.get_mut(&id) {
                s.awaiting_accept = false;
            }
            // Accepted: its socket's bytes may now come out.
            self.wake_stream(id);
        }
        Ok(id)
    }

    /// Queues bytes for sending; returns how many fit in the send buffer.
    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let mut written = 0;
        // Twice at most: the buffer's free space may wrap around its end.
        while written < data.len() {
            let rest = &data[written..];
            let n = self.write_in_place(id, rest.len(), |spare| {
                spare.copy_from_slice(&rest[..spare.len()]);
                spare.len()
            })?;
            if n == 0 {
                break;
            }
            written += n;
        }
        Ok(written)
    }

    /// Lends `source` free space of the send buffer (at most `max` bytes,
    /// at least one if there is room; none when the buffer is full) and
    /// queues the bytes it says it wrote there (its return value, at most
    /// what it was lent): a relay reads a kernel socket straight into the
    /// buffer. `source` is not called when there is no room. Returns how
    /// many bytes were queued.
    pub fn write_in_place(
        &mut self,
        id: StreamId,
        max: usize,
        source: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<usize, StreamError> {
        let limit = self.config.send_buffer;
        let s = self.streams.get_mut(&id).ok_or(StreamError::NoSuchStream)?;
        if let Some(e) = s.error {
            return Err(e);
        }
        if s.shutdown_write {
            return Err(StreamError::WriteAfterShutdown);
        }
        let room = max.min(limit.saturating_sub(s.send_buf.len()));
        if room == 0 {
            return Ok(0);
        }
        let spare = s.send_buf.spare_mut(room);
        let n = source(spare).min(spare.len());
        s.send_buf.commit(n);
        s.stats.bytes_written += n as u64;
        if let Some(flow) = s.tifid.and_then(|t| self.table.get_mut(t)) {
            let _ = flow.on_write(n as u64);
        }
        if n > 0 {
            self.wake_stream(id);
        }
        Ok(n)
    }

    /// Reads delivered bytes. `Ok(0)` with `data` non-empty means end of
    /// stream; `Err(WouldBlock)`-like `Ok(None)` means nothing yet.
    pub fn read(&mut self, id: StreamId, data: &mut [u8]) -> Result<Option<usize>, StreamError> {
        self.read_in_place(id, |front, back| {
            let n = data.len().min(front.len() + back.len());
            let from_front = n.min(front.len());
            data[..from_front].copy_from_slice(&front[..from_front]);
            data[from_front..n].copy_from_slice(&back[..n - from_front]);
            n
        })
    }

    /// Offers the delivered bytes to `sink` where they lie (the receive
    /// buffer's two halves, in order; the first is never empty) and
    /// consumes as many as `sink` returns (at most what it was offered):
    /// a relay writes them to a kernel socket without another copy.
    /// `sink` is not called when nothing is ready. Returns what
    /// [`Stack::read`] returns.
    pub fn read_in_place(
        &mut self,
        id: StreamId,
        sink: impl FnOnce(&[u8], &[u8]) -> usize,
    ) -> Result<Option<usize>, StreamError> {
        let s = self.streams.get_mut(&id).ok_or(StreamError::NoSuchStream)?;
        if !s.recv_buf.is_empty() {
            let (front, back) = s.recv_buf.as_slices();
            let n = sink(front, back).min(s.recv_buf.len());
            s.recv_buf.drain(..n);
            // Room in the receive buffer: more can come out of the socket.
            self.wake_stream(id);
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

    /// The peer ended its stream (bytes may still wait to be read).
    pub fn is_eof(&self, id: StreamId) -> bool {
        self.streams.get(&id).is_some_and(|s| s.eof)
    }

    /// Our sending direction was shut down ([`Stack::shutdown_write`]).
    pub fn is_write_shutdown(&self, id: StreamId) -> bool {
        self.streams.get(&id).is_some_and(|s| s.shutdown_write)
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
        self.wake_stream(id);
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

    /// Both directions ended and were acknowledged (the flow's entry goes
    /// when its TCP connection leaves TIME-WAIT).
    pub fn is_finished(&self, id: StreamId) -> bool {
        self.streams.get(&id).is_some_and(|s| s.eof && s.fin_acked)
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
    pub fn peer_addr(&self, id: StreamId) -> Option<SocketAddr> {
        self.streams.get(&id).map(|s| s.peer)
    }

    /// Our end of the stream's current TCP connection.
    pub fn local_addr(&self, id: StreamId) -> Option<SocketAddr> {
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
            .map(|(id, s)| stream_info(*id, s))
            .collect();
        infos.sort_by_key(|i| i.id);
        infos
    }

    /// Counters and state of one stream (no walk over the others).
    pub fn stream_info(&self, id: StreamId) -> Option<StreamInfo> {
        self.streams.get(&id).map(|s| stream_info(id, s))
    }

    /// Abandons the stream's TCP connection as if it had failed (the paper's
    /// sysctl): the flow resumes on a new connection.
    /// Only a connection that carries the flow now can be abandoned: a
    /// request while the flow is already detached or resuming does nothing
    /// (it must not fail the next connection the moment it resumes).
    pub fn fail_transport(&mut self, id: StreamId) -> Result<(), StreamError> {
        let s = self.streams.get(&id).ok_or(StreamError::NoSuchStream)?;
        let carried = s
            .conn
            .and_then(|h| self.conns.get(&h))
            .is_some_and(|c| matches!(c.phase, Phase::Open | Phase::Confirming(_)));
        if carried && let Some(s) = self.streams.get_mut(&id) {
            s.fail_requested = true;
            self.wake_stream(id);
        }
        Ok(())
    }

    /// Sends the flow's later resumes to `peer`, of either family: the
    /// peer's other address, when the path to the one it was reached at is
    /// gone (a host that moved to an IPv6-only network, a server
    /// renumbered). Only the initiator resumes; the responder takes a
    /// resume from a new address, of either family, only if it allows
    /// migration (DESIGN §4 "Address families"). The live connection, if
    /// any, is left alone. Fails for a responder's stream
    /// ([`StreamError::NotInitiator`]) and for a family we have no address
    /// of ([`StreamError::NoAddressOfFamily`]).
    pub fn set_resume_peer(
        &mut self,
        id: StreamId,
        peer: impl Into<SocketAddr>,
    ) -> Result<(), StreamError> {
        let peer = peer.into();
        if self.config.local_address_for(peer.ip()).is_none() {
            return Err(StreamError::NoAddressOfFamily);
        }
        let s = self.streams.get_mut(&id).ok_or(StreamError::NoSuchStream)?;
        if s.role != Role::Initiator {
            return Err(StreamError::NotInitiator);
        }
        info!(%peer, old = %s.peer, "resumes go to a new peer address");
        s.peer = peer;
        Ok(())
    }

    /// Ends the stream at both ends without resume (DESIGN §4 "Abort"): the
    /// live connection, if any, is reset with our option carrying the TIFID
    /// and zero positions, so the peer ends the flow too; queued data is
    /// discarded; later calls fail with [`StreamError::Aborted`].
    pub fn abort(&mut self, now: Instant, id: StreamId) -> Result<(), StreamError> {
        if !self.streams.contains_key(&id) {
            return Err(StreamError::NoSuchStream);
        }
        self.wake_stream(id);
        self.abort_stream(now, id);
        Ok(())
    }

    /// The application is done with the stream: queued data is still sent
    /// (with a FIN) unless the stream failed; state is freed when done.
    /// Closing with received data unread, or receiving data after the
    /// close, aborts the stream instead, as a kernel socket resets: the
    /// peer must not take a program that stopped reading for one that read
    /// everything.
    pub fn close(&mut self, now: Instant, id: StreamId) {
        let unread = self
            .streams
            .get(&id)
            .is_some_and(|s| !s.recv_buf.is_empty());
        if unread {
            debug!("closed with unread data: aborting");
            self.abort_stream(now, id);
        } else {
            let _ = self.shutdown_write(id);
        }
        if let Some(s) = self.streams.get_mut(&id) {
            s.abandoned = true;
            s.awaiting_accept = false;
        }
        self.wake_stream(id);
    }

    /// The streams polls visited since the last call (their bytes, events,
    /// errors or mode may have changed): a runtime wakes only what waits on
    /// them. Streams that no longer exist are left out.
    pub fn take_woken(&mut self) -> Vec<StreamId> {
        let woken = std::mem::take(&mut self.woken);
        woken
            .into_iter()
            .filter(|id| self.streams.contains_key(id))
            .collect()
    }

    /// Gives back memory held for connections and streams that have gone:
    /// every table shrinks to what it holds, the connection cells' slot
    /// table too once no connection is left. Costs a pass over what is
    /// left; `tiflow up` calls it when its streams have all gone.
    pub fn shrink_to_fit(&mut self) {
        self.cells.shrink_to_fit();
        self.timers.shrink_to_fit();
        self.table.shrink_to_fit();
        self.conns.shrink_to_fit();
        self.by_tuple.shrink_to_fit();
        self.pending.shrink_to_fit();
        self.pending_cells.shrink_to_fit();
        self.completing_legacy.shrink_to_fit();
        self.deferred.shrink_to_fit();
        self.replay.shrink_to_fit();
        self.fresh_listeners.shrink_to_fit();
        self.streams.shrink_to_fit();
        self.by_tifid.shrink_to_fit();
        self.listeners.shrink_to_fit();
        self.ports.shrink_to_fit();
        self.resetting.shrink_to_fit();
        self.spare_sockets.shrink_to_fit();
        self.peers_heard.shrink_to_fit();
    }

    /// Whether a connection joined an accept queue since the last call: a
    /// runtime wakes what waits on its listeners only then (waking them
    /// after every poll made a waiting accept task poll forever).
    pub fn take_accept_ready(&mut self) -> bool {
        std::mem::take(&mut self.accept_ready)
    }

    /// When the stack next needs a poll, at the latest (at most a second
    /// ahead). Costs no walk over connections: the timer table holds every
    /// deadline.
    pub fn poll_at(&mut self, now: Instant) -> Instant {
        let mut at = now + SmolDuration::from_millis(1000);
        if let Some(deadline) = self.timers.next() {
            at = at.min(deadline);
        }
        if let Some(deadline) = self.half_open_deadline() {
            at = at.min(deadline);
        }
        if self.device.pending_ingress() > 0
            || self.syns_waiting()
            || self.timers.anything_ready()
            || !self.replay.is_empty()
        {
            at = now;
        }
        at.max(now)
    }

    // --------------------------------------------------------------- poll

    /// Runs the stack at time `now`: takes in packets, runs smoltcp, moves
    /// bytes, detects failures, resumes. Returns true if anything happened.
    pub fn poll(&mut self, now: Instant) -> bool {
        TS_CLOCK_MS.with(|c| c.set(ts_clock_ms(now)));
        self.take_replays(now);
        let mut activity = self.take_ingress(now);
        self.timers.wake_due(now);
        activity |= self.poll_interfaces(now);
        self.bind_fresh_listeners(now);
        self.expire_half_open(now);
        self.reap_resets(now);
        self.service_connections(now);
        self.completing_legacy.clear();
        for event in self.device.take_events() {
            self.on_egress_event(now, event);
        }
        let streams = self.timers.take_ready_streams();
        self.woken.extend(streams.iter().copied());
        for &id in &streams {
            self.service_stream(now, id);
            self.mark_stream_conns(id);
        }
        activity |= self.poll_egress(now, &[]);
        for handle in self.timers.take_ready_conns() {
            let at = self.cells.poll_delay(handle, now).map(|d| now + d);
            self.timers.set(Wake::Conn(handle), at);
        }
        for id in streams {
            let at = self.stream_deadline(now, id);
            self.timers.set(Wake::Stream(id), at);
        }
        for tifid in self.table.expire(self.ts(now)) {
            debug!(%tifid, "flow entry removed");
            let Some(id) = self.by_tifid.remove(&tifid) else {
                continue;
            };
            self.wake_stream(id);
            if self.only_our_fin_unconfirmed(id) {
                // Every byte went both ways and the peer's FIN arrived: the
                // peer finished the flow and only the ACK of our FIN was lost
                // with the path (the initiator would have resumed for it).
                info!(%tifid, "detached flow expired after a complete exchange: closed");
                self.finish_closed(now, id);
                continue;
            }
            if let Some(s) = self.streams.get_mut(&id)
                && s.conn.is_none()
                && s.suspect.is_none()
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

    /// Runs smoltcp: each lane's waiting packets through its interface,
    /// in arrival order (their connections are marked for this poll), then
    /// the egress of every marked connection.
    fn poll_interfaces(&mut self, now: Instant) -> bool {
        let mut activity = false;
        // Their interface's poll just sent what they had to send.
        let mut polled = Vec::new();
        while let Some(lane) = self.device.next_rx_lane() {
            let waiting = self.device.pending_ingress();
            activity |= self.cells.poll_lane(lane, now, &mut self.device);
            if let Some(handle) = self.cells.conn_of_lane(lane) {
                self.timers.mark_conn(handle);
                polled.push(handle);
            }
            if self.device.pending_ingress() == waiting {
                // The device below refused to transmit: smoltcp takes no
                // packet until it has room (the next poll).
                break;
            }
        }
        polled.sort_unstable();
        activity | self.poll_egress(now, &polled)
    }

    /// Sends what the marked connections have to send, but for those in
    /// `skip` (sorted).
    fn poll_egress(&mut self, now: Instant, skip: &[ConnId]) -> bool {
        let mut activity = false;
        for handle in self.timers.ready_conns() {
            if skip.binary_search(&handle).is_err() {
                activity |= self.cells.poll_cell(handle, now, &mut self.device);
            }
        }
        activity
    }

    /// When a stream next needs a visit without a packet or a call: its
    /// driver's deadline, its next probe, the end of its connect timeout.
    fn stream_deadline(&self, now: Instant, id: StreamId) -> Option<Instant> {
        let s = self.streams.get(&id)?;
        let mut at = self
            .life_deadline(id)
            .map(|d| d.max(now + SmolDuration::from_micros(1)));
        if let Some(probe) = self.probe_deadline(now, id)
            && probe > now
        {
            at = Some(at.map_or(probe, |a| a.min(probe)));
        }
        if s.life.is_none()
            && let Some(conn) = s.conn.and_then(|h| self.conns.get(&h))
        {
            let timeout = conn.created + smol(self.config.connect_timeout);
            at = Some(at.map_or(timeout, |a| a.min(timeout)));
        }
        at
    }

    /// Marks a stream and its connections for the next poll (an
    /// application call changed what it has to do).
    fn wake_stream(&mut self, id: StreamId) {
        self.timers.mark_stream(id);
        self.mark_stream_conns(id);
    }

    /// Marks the stream's connections (attached or attempt, and suspect)
    /// for egress in this poll.
    fn mark_stream_conns(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get(&id) {
            for handle in s.conn.into_iter().chain(s.suspect.map(|s| s.handle)) {
                self.timers.mark_conn(handle);
            }
        }
    }

    // ------------------------------------------------------------ ingress

    // ------------------------------------------------------ connections

    // ------------------------------------------------------------ streams

    fn new_stream(&mut self, role: Role, peer: SocketAddr, _now: Instant) -> StreamId {
        let id = StreamId(self.next_stream);
        self.next_stream += 1;
        self.timers.mark_stream(id);
        self.streams.insert(
            id,
            StreamState {
                mode: StreamMode::Connecting,
                role,
                peer,
                tifid: None,
                conn: None,
                suspect: None,
                send_buf: ByteRing::new(),
                sent_high: Seq48::ZERO,
                recv_buf: VecDeque::new(),
                shutdown_write: false,
                eof: false,
                fin_acked: false,
                error: None,
                events: VecDeque::new(),
                stats: StreamStats::default(),
                failed_at: None,
                last_progress_at: _now,
                gap_from: None,
                life: None,
                fail_requested: false,
                abandoned: false,
                awaiting_accept: false,
            },
        );
        id
    }
}

fn stream_info(id: StreamId, s: &StreamState) -> StreamInfo {
    StreamInfo {
        id,
        mode: s.mode,
        peer: s.peer,
        stats: StreamStats {
            failures: s.life.as_ref().map_or(0, |l| l.failures()),
            ..s.stats
        },
        attached: s.conn.is_some() && s.failed_at.is_none(),
    }
}

fn endpoint_tuple(local: IpEndpoint, remote: IpEndpoint) -> Option<FourTuple> {
    let (local, remote) = (
        SocketAddr::new(local.addr.into(), local.port),
        SocketAddr::new(remote.addr.into(), remote.port),
    );
    (local.is_ipv4() == remote.is_ipv4()).then_some(FourTuple { local, remote })
}

/// Payload of a full segment with timestamps at this IP MTU, over the IP
/// version of `local` (an IPv6 header is 20 bytes longer).
fn effective_mss(ip_mtu: usize, local: IpAddr) -> usize {
    let ip_header = if local.is_ipv4() { 20 } else { 40 };
    ip_mtu.saturating_sub(ip_header + 20 + 12)
}
