//! Bulk throughput over TUN at MTU 1500, 1 MiB socket buffers: our stack to
//! a Linux peer and back, and between two of our stacks.
//!
//! Owns the bulk runs and their Linux peer (a sink and a source listening in
//! namespace A, reached through the TUN's kernel side). The modes:
//! - `smoltcp`: a plain smoltcp `Interface` and one TCP socket configured as
//!   the stack configures its own (Cubic, timestamps, no Nagle, no delayed
//!   ACK), on the same TUN, driven by a single-threaded loop: no boundary.
//! - `stack-legacy`, `stack-ti`: our `Stack` (boundary, TI buffers) with
//!   `ti_enabled` off / on, driven by the same single-threaded loop.
//! - `stack-legacy-no-offload`: `stack-legacy` on a TUN with its offloads
//!   forced off (every other mode uses them where the kernel allows). Against
//!   Linux a TI-enabled stack falls back to legacy after the handshake, so
//!   `stack-ti` is the boundary's cost on legacy traffic.
//! - `runtime-legacy`, `runtime-ti`: the same through the blocking
//!   `TiStream` API (a driver thread and an application thread).
//! - `pair-legacy`, `pair-ti`: two of our stacks (`Runtime`s, one per
//!   namespace, routed by the kernels over the veth), where `pair-ti` is a
//!   real TI-flow: the cost of TI mode itself.
//!
//! Throughput is bytes over the time from the sender's first write to the
//! receiver's last byte. Runs of all modes are interleaved, repetition by
//! repetition.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use ti_stack::device::tun::{OffloadRequest, TunDevice, wait_readable};
use ti_stack::{Mode, Runtime, Stack, StackConfig};

use super::net::{Site, Testbed, open_tun, open_tun_with};
use super::{BenchError, Progress};

/// The Linux sink's port (reads to end of stream).
const SINK_PORT: u16 = 7100;
/// The Linux source's port (writes the requested bytes, then closes).
const SOURCE_PORT: u16 = 7101;
/// Port of the server stack in the pair modes.
const PAIR_PORT: u16 = 7102;
/// Application chunk size.
const CHUNK: usize = 256 << 10;
/// Longest a driver loop sleeps.
const MAX_SLEEP: Duration = Duration::from_millis(5);
/// Longest one run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// A bulk mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkMode {
    /// Plain smoltcp, no boundary.
    Smoltcp,
    /// Our stack, TI off, single-threaded loop.
    StackLegacy,
    /// As `StackLegacy`, on a TUN with offloads forced off (plain
    /// 1500-byte packets): what the offloads are worth.
    StackLegacyNoOffload,
    /// Our stack, TI on, single-threaded loop.
    StackTi,
    /// Our stack, TI off, blocking API.
    RuntimeLegacy,
    /// Our stack, TI on, blocking API.
    RuntimeTi,
    /// Two of our stacks, TI off.
    PairLegacy,
    /// Two of our stacks, a TI-flow.
    PairTi,
}

impl BulkMode {
    /// Every mode, in run order.
    pub const ALL: [BulkMode; 8] = [
        BulkMode::Smoltcp,
        BulkMode::StackLegacy,
        BulkMode::StackLegacyNoOffload,
        BulkMode::StackTi,
        BulkMode::RuntimeLegacy,
        BulkMode::RuntimeTi,
        BulkMode::PairLegacy,
        BulkMode::PairTi,
    ];

    /// The mode's name in the CSV files.
    pub fn name(self) -> &'static str {
        match self {
            BulkMode::Smoltcp => "smoltcp",
            BulkMode::StackLegacy => "stack-legacy",
            BulkMode::StackLegacyNoOffload => "stack-legacy-no-offload",
            BulkMode::StackTi => "stack-ti",
            BulkMode::RuntimeLegacy => "runtime-legacy",
            BulkMode::RuntimeTi => "runtime-ti",
            BulkMode::PairLegacy => "pair-legacy",
            BulkMode::PairTi => "pair-ti",
        }
    }

    /// The TUN offloads of the mode's device.
    fn offload(self) -> OffloadRequest {
        match self {
            BulkMode::StackLegacyNoOffload => OffloadRequest::Off,
            _ => OffloadRequest::Auto,
        }
    }

    fn directions(self) -> &'static [Direction] {
        match self {
            BulkMode::PairLegacy | BulkMode::PairTi => &[Direction::Up],
            _ => &[Direction::Up, Direction::Down],
        }
    }
}

/// Which way the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From our (client) stack to the peer.
    Up,
    /// From the peer to our stack.
    Down,
}

impl Direction {
    /// The direction's name in the CSV files.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// One transfer.
#[derive(Debug, Clone, Copy)]
pub struct BulkRun {
    /// Mode.
    pub mode: BulkMode,
    /// Direction.
    pub direction: Direction,
    /// Repetition.
    pub rep: usize,
    /// Bytes moved.
    pub bytes: u64,
    /// First write to last byte received.
    pub elapsed: Duration,
}

impl BulkRun {
    /// Throughput in Gbit/s.
    pub fn gbit_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }
}

/// Runs every mode and direction `reps` times with `bytes` each.
pub fn run(bed: &Testbed, bytes: u64, reps: usize) -> Result<Vec<BulkRun>, BenchError> {
    let peer = LinuxPeer::start(bed)?;
    let plan: Vec<(BulkMode, Direction)> = BulkMode::ALL
        .iter()
        .flat_map(|&m| m.directions().iter().map(move |&d| (m, d)))
        .collect();
    let mut progress = Progress::new("bulk".into(), plan.len() * reps);
    let mut out = Vec::new();
    let mut result = Ok(());
    let mut counter = 0usize;
    'reps: for rep in 0..reps {
        for &(mode, direction) in &plan {
            if let Err(e) = super::check_interrupted() {
                result = Err(e);
                break 'reps;
            }
            counter += 1;
            match one_run(bed, &peer, mode, direction, bytes, counter) {
                Ok(elapsed) => out.push(BulkRun {
                    mode,
                    direction,
                    rep,
                    bytes,
                    elapsed,
                }),
                Err(e) => {
                    result = Err(e);
                    break 'reps;
                }
            }
            progress.step();
        }
    }
    progress.done();
    peer.stop(bed);
    result.map(|()| out)
}

/// The client site of run `n`: a fresh TUN each run.
fn client_site() -> Site {
    Site {
        gateway: Ipv4Addr::new(10, 71, 9, 1),
        address: Ipv4Addr::new(10, 71, 9, 2),
    }
}

fn server_site() -> Site {
    Site {
        gateway: Ipv4Addr::new(10, 72, 9, 1),
        address: Ipv4Addr::new(10, 72, 9, 2),
    }
}

fn one_run(
    bed: &Testbed,
    peer: &LinuxPeer,
    mode: BulkMode,
    direction: Direction,
    bytes: u64,
    n: usize,
) -> Result<Duration, BenchError> {
    let site = client_site();
    let tun = open_tun_with(&bed.a, &format!("tb{n}"), site, mode.offload())?;
    let linux = |port| SocketAddrV4::new(site.gateway, port);
    let what = format!("bulk {} {}", mode.name(), direction.name());
    let ctx = |e: BenchError| BenchError::Check(format!("{what}: {e}"));
    match (mode, direction) {
        (BulkMode::PairLegacy | BulkMode::PairTi, _) => {
            pair(bed, tun, mode == BulkMode::PairTi, bytes, n).map_err(ctx)
        }
        (_, Direction::Up) => {
            peer.drain_results();
            let remote = linux(SINK_PORT);
            let start = match mode {
                BulkMode::Smoltcp => plain_up(tun, site, remote, bytes, &peer.sink_done),
                BulkMode::StackLegacy | BulkMode::StackLegacyNoOffload | BulkMode::StackTi => {
                    stack_up(
                        tun,
                        site.config(mode == BulkMode::StackTi),
                        remote,
                        bytes,
                        &peer.sink_done,
                    )
                }
                _ => runtime_up(
                    tun,
                    site.config(mode == BulkMode::RuntimeTi),
                    remote,
                    bytes,
                    &peer.sink_done,
                ),
            }
            .map_err(ctx)?;
            let (got, last) = peer.sink_result().map_err(ctx)?;
            if got != bytes {
                return Err(ctx(BenchError::Check(format!(
                    "the Linux sink got {got} of {bytes} bytes"
                ))));
            }
            Ok(last.saturating_duration_since(start))
        }
        (_, Direction::Down) => {
            peer.drain_results();
            peer.source_bytes.store(bytes, Ordering::Release);
            let remote = linux(SOURCE_PORT);
            let end = match mode {
                BulkMode::Smoltcp => plain_down(tun, site, remote, bytes),
                BulkMode::StackLegacy | BulkMode::StackLegacyNoOffload | BulkMode::StackTi => {
                    stack_down(tun, site.config(mode == BulkMode::StackTi), remote, bytes)
                }
                _ => runtime_down(tun, site.config(mode == BulkMode::RuntimeTi), remote, bytes),
            }
            .map_err(ctx)?;
            let start = peer.source_start().map_err(ctx)?;
            Ok(end.saturating_duration_since(start))
        }
    }
}

/// The bytes every sender writes (a repeating pattern).
fn pattern() -> Vec<u8> {
    (0..CHUNK).map(|i| (i * 7 + i / 1024) as u8).collect()
}

/// A clock in smoltcp's units for the single-threaded loops.
struct Clock(Instant);

impl Clock {
    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.0.elapsed().as_micros() as i64)
    }
}

/// Sleeps until the TUN is readable or `until` (at most [`MAX_SLEEP`]).
fn sleep_until(fd: &OwnedFd, now: SmolInstant, until: Option<SmolInstant>) {
    let wait = until.map_or(MAX_SLEEP, |t| {
        Duration::from_micros((t - now).total_micros()).min(MAX_SLEEP)
    });
    if !wait.is_zero() {
        let _ = wait_readable(fd.as_fd(), Some(wait));
    }
}

fn deadline_check(started: Instant) -> Result<(), BenchError> {
    if started.elapsed() > RUN_TIMEOUT {
        Err(BenchError::Check(format!(
            "no completion within {RUN_TIMEOUT:?}"
        )))
    } else {
        Ok(())
    }
}

fn tun_fd(tun: &TunDevice) -> Result<OwnedFd, BenchError> {
    tun.wait_fd()
        .map_err(|e| BenchError::io("duplicate the TUN fd", e))
}

// ------------------------------------------------------------ our Stack

/// Connects and runs the handshake in a single-threaded loop.
fn stack_connect(
    tun: TunDevice,
    config: StackConfig,
    remote: SocketAddrV4,
) -> Result<(Stack<TunDevice>, ti_stack::StreamId, OwnedFd, Clock), BenchError> {
    let fd = tun_fd(&tun)?;
    let clock = Clock(Instant::now());
    let mut stack = Stack::new(config, tun, clock.now());
    let id = stack
        .connect(clock.now(), remote)
        .map_err(BenchError::stream("connect"))?;
    let started = Instant::now();
    loop {
        let now = clock.now();
        stack.poll(now);
        if let Some(e) = stack.error(id) {
            return Err(BenchError::stream("connect")(e));
        }
        if stack.is_connected(id) {
            return Ok((stack, id, fd, clock));
        }
        deadline_check(started)?;
        let at = stack.poll_at(now);
        sleep_until(&fd, now, Some(at));
    }
}

fn stack_up(
    tun: TunDevice,
    config: StackConfig,
    remote: SocketAddrV4,
    bytes: u64,
    sink_done: &AtomicBool,
) -> Result<Instant, BenchError> {
    let (mut stack, id, fd, clock) = stack_connect(tun, config, remote)?;
    let data = pattern();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut shut = false;
    while !sink_done.load(Ordering::Acquire) {
        let now = clock.now();
        while sent < bytes {
            let off = (sent % CHUNK as u64) as usize;
            let len = ((bytes - sent) as usize).min(CHUNK - off);
            let n = stack
                .write(id, &data[off..off + len])
                .map_err(BenchError::stream("write"))?;
            if n == 0 {
                break;
            }
            sent += n as u64;
        }
        if sent == bytes && !shut {
            stack
                .shutdown_write(id)
                .map_err(BenchError::stream("shutdown"))?;
            shut = true;
        }
        if !stack.poll(now) {
            deadline_check(start)?;
            let at = stack.poll_at(now);
            sleep_until(&fd, now, Some(at));
        }
    }
    Ok(start)
}

fn stack_down(
    tun: TunDevice,
    config: StackConfig,
    remote: SocketAddrV4,
    bytes: u64,
) -> Result<Instant, BenchError> {
    let (mut stack, id, fd, clock) = stack_connect(tun, config, remote)?;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    let started = Instant::now();
    loop {
        let now = clock.now();
        let active = stack.poll(now);
        loop {
            match stack.read(id, &mut buf) {
                Ok(Some(0)) | Ok(None) => break,
                Ok(Some(n)) => got += n as u64,
                Err(e) => return Err(BenchError::stream("read")(e)),
            }
        }
        if got >= bytes {
            let end = Instant::now();
            stack.close(now, id);
            stack.poll(clock.now());
            return Ok(end);
        }
        if !active {
            deadline_check(started)?;
            let at = stack.poll_at(now);
            sleep_until(&fd, now, Some(at));
        }
    }
}

// ------------------------------------------------------ plain smoltcp

fn tsval() -> u32 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u32
}

/// A plain smoltcp interface with one connecting socket, set up as
/// `ti_stack::Stack` sets up its own.
struct Plain {
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: smoltcp::iface::SocketHandle,
    tun: TunDevice,
    fd: OwnedFd,
    clock: Clock,
}

impl Plain {
    fn connect(mut tun: TunDevice, site: Site, remote: SocketAddrV4) -> Result<Plain, BenchError> {
        let fd = tun_fd(&tun)?;
        let clock = Clock(Instant::now());
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut tun, clock.now());
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(site.address), 24));
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(site.gateway)
            .map_err(|_| BenchError::Check("smoltcp route table full".into()))?;
        let size = StackConfig::new(site.address).socket_buffer;
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; size]),
            tcp::SocketBuffer::new(vec![0u8; size]),
        );
        socket.set_congestion_control(tcp::CongestionControl::Cubic);
        socket.set_tsval_generator(Some(tsval));
        socket.set_nagle_enabled(false);
        socket.set_ack_delay(None);
        let port =
            49152 + (std::process::id() as u16 ^ clock.0.elapsed().subsec_nanos() as u16) % 16000;
        socket
            .connect(
                iface.context(),
                IpEndpoint::new(IpAddress::Ipv4(*remote.ip()), remote.port()),
                port,
            )
            .map_err(|e| BenchError::Check(format!("smoltcp connect: {e}")))?;
        let mut sockets = SocketSet::new(Vec::new());
        let handle = sockets.add(socket);
        let mut plain = Plain {
            iface,
            sockets,
            handle,
            tun,
            fd,
            clock,
        };
        let started = Instant::now();
        loop {
            let now = plain.poll();
            let state = plain.socket().state();
            if state == tcp::State::Established {
                return Ok(plain);
            }
            if state == tcp::State::Closed {
                return Err(BenchError::Check("smoltcp connect refused".into()));
            }
            deadline_check(started)?;
            plain.sleep(now);
        }
    }

    fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.handle)
    }

    fn poll(&mut self) -> SmolInstant {
        let now = self.clock.now();
        self.iface.poll(now, &mut self.tun, &mut self.sockets);
        now
    }

    fn sleep(&mut self, now: SmolInstant) {
        let at = self.iface.poll_delay(now, &self.sockets).map(|d| now + d);
        sleep_until(&self.fd, now, at);
    }
}

fn plain_up(
    tun: TunDevice,
    site: Site,
    remote: SocketAddrV4,
    bytes: u64,
    sink_done: &AtomicBool,
) -> Result<Instant, BenchError> {
    let mut plain = Plain::connect(tun, site, remote)?;
    let data = pattern();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut closed = false;
    // Like `Stack::poll`, which refills its sockets between two interface
    // polls: fill, poll (ACKs in, data out), fill again, poll again.
    let mut fill = |plain: &mut Plain| {
        let mut progressed = false;
        let socket = plain.socket();
        while sent < bytes && socket.can_send() {
            let off = (sent % CHUNK as u64) as usize;
            let len = ((bytes - sent) as usize).min(CHUNK - off);
            let n = socket.send_slice(&data[off..off + len]).unwrap_or(0);
            if n == 0 {
                break;
            }
            sent += n as u64;
            progressed = true;
        }
        if sent == bytes && !closed {
            socket.close();
            closed = true;
        }
        progressed
    };
    while !sink_done.load(Ordering::Acquire) {
        let mut progressed = fill(&mut plain);
        plain.poll();
        progressed |= fill(&mut plain);
        let now = plain.poll();
        if !progressed {
            deadline_check(start)?;
            plain.sleep(now);
        }
    }
    Ok(start)
}

fn plain_down(
    tun: TunDevice,
    site: Site,
    remote: SocketAddrV4,
    bytes: u64,
) -> Result<Instant, BenchError> {
    let mut plain = Plain::connect(tun, site, remote)?;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    let started = Instant::now();
    loop {
        let now = plain.poll();
        let mut progressed = false;
        let socket = plain.socket();
        while socket.can_recv() {
            match socket.recv_slice(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got += n as u64;
                    progressed = true;
                }
            }
        }
        if got >= bytes {
            let end = Instant::now();
            plain.socket().close();
            plain.poll();
            return Ok(end);
        }
        if progressed {
            // Room opened in the receive buffer: announce the window now
            // (as the stack's second interface poll does).
            plain.poll();
        } else {
            deadline_check(started)?;
            plain.sleep(now);
        }
    }
}

// ------------------------------------------------------- blocking API

fn runtime_up(
    tun: TunDevice,
    config: StackConfig,
    remote: SocketAddrV4,
    bytes: u64,
    sink_done: &AtomicBool,
) -> Result<Instant, BenchError> {
    let rt = Runtime::start(config, tun).map_err(|e| BenchError::io("start the stack", e))?;
    let mut stream = rt.connect(remote).map_err(BenchError::stream("connect"))?;
    let start = send_all_acknowledged(&mut stream, bytes)?;
    // Keep the stack up until the sink saw our FIN.
    while !sink_done.load(Ordering::Acquire) {
        deadline_check(start)?;
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(stream);
    rt.stop();
    Ok(start)
}

fn runtime_down(
    tun: TunDevice,
    config: StackConfig,
    remote: SocketAddrV4,
    bytes: u64,
) -> Result<Instant, BenchError> {
    let rt = Runtime::start(config, tun).map_err(|e| BenchError::io("start the stack", e))?;
    let mut stream = rt.connect(remote).map_err(BenchError::stream("connect"))?;
    stream.set_read_timeout(Some(RUN_TIMEOUT));
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    while got < bytes {
        let n = stream
            .read(&mut buf)
            .map_err(|e| BenchError::io("read", e))?;
        if n == 0 {
            return Err(BenchError::Check(format!(
                "end of stream after {got} of {bytes} bytes"
            )));
        }
        got += n as u64;
    }
    let end = Instant::now();
    drop(stream);
    rt.stop();
    Ok(end)
}

/// Two of our stacks: client in namespace A, server in B.
fn pair(
    bed: &Testbed,
    client_tun: TunDevice,
    ti: bool,
    bytes: u64,
    n: usize,
) -> Result<Duration, BenchError> {
    let server_site = server_site();
    let server_tun = open_tun(&bed.b, &format!("tb{n}"), server_site)?;
    let server = Runtime::start(server_site.config(ti), server_tun)
        .map_err(|e| BenchError::io("start the server stack", e))?;
    let listener = server
        .listen(PAIR_PORT)
        .map_err(BenchError::stream("listen"))?;
    let receiver = std::thread::spawn(move || -> Result<(u64, Instant, Mode), BenchError> {
        let mut s = listener
            .accept_timeout(Some(RUN_TIMEOUT))
            .map_err(BenchError::stream("accept"))?
            .ok_or_else(|| BenchError::Check("no connection to accept".into()))?;
        s.set_read_timeout(Some(RUN_TIMEOUT));
        let mode = s.mode();
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        let mut last = Instant::now();
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok((got, last, mode)),
                Ok(n) => {
                    got += n as u64;
                    last = Instant::now();
                }
                Err(e) => return Err(BenchError::io("server read", e)),
            }
        }
    });
    let client = Runtime::start(client_site().config(ti), client_tun)
        .map_err(|e| BenchError::io("start the client stack", e))?;
    let sent = (|| -> Result<Instant, BenchError> {
        let mut stream = client
            .connect(SocketAddrV4::new(server_site.address, PAIR_PORT))
            .map_err(BenchError::stream("connect"))?;
        if matches!(stream.mode(), Mode::Resilient { .. }) != ti {
            return Err(BenchError::Check(format!(
                "client mode {:?}, expected TI {ti}",
                stream.mode()
            )));
        }
        send_all_acknowledged(&mut stream, bytes)
    })();
    let received = receiver
        .join()
        .map_err(|_| BenchError::Check("server thread panicked".into()))?;
    client.stop();
    server.stop();
    let start = sent?;
    let (got, last, mode) = received?;
    if got != bytes {
        return Err(BenchError::Check(format!(
            "the server stack got {got} of {bytes} bytes"
        )));
    }
    if matches!(mode, Mode::Resilient { .. }) != ti {
        return Err(BenchError::Check(format!(
            "server mode {mode:?}, expected TI {ti}"
        )));
    }
    Ok(last.saturating_duration_since(start))
}

// ---------------------------------------------------------- Linux peer

/// A Linux sink and source in namespace A.
struct LinuxPeer {
    stop: Arc<AtomicBool>,
    sink_done: Arc<AtomicBool>,
    source_bytes: Arc<AtomicU64>,
    sink_results: Receiver<(u64, Instant)>,
    source_starts: Receiver<Instant>,
    threads: Vec<JoinHandle<()>>,
}

impl LinuxPeer {
    fn start(bed: &Testbed) -> Result<LinuxPeer, BenchError> {
        let bind = |port| {
            bed.a
                .enter(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
                .map_err(BenchError::from)?
                .map_err(|e| BenchError::io(format!("bind the Linux peer to port {port}"), e))
        };
        let sink = bind(SINK_PORT)?;
        let source = bind(SOURCE_PORT)?;
        let stop = Arc::new(AtomicBool::new(false));
        let sink_done = Arc::new(AtomicBool::new(false));
        let source_bytes = Arc::new(AtomicU64::new(0));
        let (sink_tx, sink_results) = channel();
        let (source_tx, source_starts) = channel();
        let threads = vec![
            {
                let (stop, done) = (stop.clone(), sink_done.clone());
                std::thread::spawn(move || linux_sink(&sink, &stop, &done, &sink_tx))
            },
            {
                let (stop, bytes) = (stop.clone(), source_bytes.clone());
                std::thread::spawn(move || linux_source(&source, &stop, &bytes, &source_tx))
            },
        ];
        Ok(LinuxPeer {
            stop,
            sink_done,
            source_bytes,
            sink_results,
            source_starts,
            threads,
        })
    }

    fn drain_results(&self) {
        self.sink_done.store(false, Ordering::Release);
        while self.sink_results.try_recv().is_ok() {}
        while self.source_starts.try_recv().is_ok() {}
    }

    fn sink_result(&self) -> Result<(u64, Instant), BenchError> {
        self.sink_results
            .recv_timeout(RUN_TIMEOUT)
            .map_err(|e| recv_error("the Linux sink", e))
    }

    fn source_start(&self) -> Result<Instant, BenchError> {
        self.source_starts
            .recv_timeout(RUN_TIMEOUT)
            .map_err(|e| recv_error("the Linux source", e))
    }

    fn stop(self, bed: &Testbed) {
        self.stop.store(true, Ordering::Release);
        for port in [SINK_PORT, SOURCE_PORT] {
            let _ = bed.a.enter(|| {
                TcpStream::connect_timeout(
                    &SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into(),
                    Duration::from_secs(2),
                )
            });
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn recv_error(who: &str, e: RecvTimeoutError) -> BenchError {
    BenchError::Check(match e {
        RecvTimeoutError::Timeout => format!("{who} reported nothing within {RUN_TIMEOUT:?}"),
        RecvTimeoutError::Disconnected => format!("{who} stopped"),
    })
}

/// Reads each connection to its end; reports the bytes and the time of the
/// last one.
fn linux_sink(
    listener: &TcpListener,
    stop: &AtomicBool,
    done: &AtomicBool,
    results: &Sender<(u64, Instant)>,
) {
    let mut buf = vec![0u8; 1 << 20];
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(RUN_TIMEOUT));
        let mut got = 0u64;
        let mut last = Instant::now();
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            got += n as u64;
            last = Instant::now();
        }
        done.store(true, Ordering::Release);
        let _ = results.send((got, last));
    }
}

/// Writes the requested number of bytes on each connection, then closes;
/// reports when it started writing.
fn linux_source(
    listener: &TcpListener,
    stop: &AtomicBool,
    bytes: &AtomicU64,
    starts: &Sender<Instant>,
) {
    let data = pattern();
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_write_timeout(Some(RUN_TIMEOUT));
        let total = bytes.load(Ordering::Acquire);
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            let len = ((total - sent) as usize).min(CHUNK);
            if stream.write_all(&data[..len]).is_err() {
                break;
            }
            sent += len as u64;
        }
        let _ = stream.shutdown(Shutdown::Write);
        let _ = starts.send(start);
    }
}

/// Writes `bytes` of the pattern, shuts down writing and waits until the
/// peer acknowledged everything. Returns when the writing started.
fn send_all_acknowledged<D: smoltcp::phy::Device + ti_stack::device::Wait>(
    stream: &mut ti_stack::TiStream<D>,
    bytes: u64,
) -> Result<Instant, BenchError> {
    let data = pattern();
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let len = ((bytes - sent) as usize).min(CHUNK);
        stream
            .write_all(&data[..len])
            .map_err(|e| BenchError::io("write", e))?;
        sent += len as u64;
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(BenchError::stream("shutdown"))?;
    stream
        .wait_acknowledged(RUN_TIMEOUT)
        .map_err(BenchError::stream("wait for acknowledgements"))?;
    Ok(start)
}
