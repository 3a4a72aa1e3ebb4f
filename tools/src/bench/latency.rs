//! Connect and reconnect times, legacy vs TI, over the real-kernel testbed
//! (paper §IV.B.1 and §IV.C).
//!
//! Owns the per-RTT hosts: a TI client and a legacy client in namespace A
//! (each on its own TUN with a delay line and a capture), a TI server and a
//! legacy server in namespace B, and the Linux peer (a std listener in B).
//! Every RTT point gets fresh TUNs, stacks and client addresses, so no state
//! (smoltcp TIME_WAIT, the kernel peer's TIME_WAIT) carries over.
//!
//! Methods:
//! - connect: the client takes a timestamp, connects, and blocks on `read`;
//!   the server drops the stream right after `accept`; the time ends when
//!   `read` returns end-of-stream. The capture gives SYN to third ACK too.
//! - reconnect, TI: on an established TI-flow to an echo server,
//!   `fail_transport()`, then write one byte and block until its echo: the
//!   time from the failure to the first byte on the new connection. Also the
//!   stack's `Resumed { downtime }` and SYN to ACK of the resume handshake.
//!   Consecutive TI samples start at least the storm guard's
//!   `min_resume_interval` apart (a flow resumes at most four times a
//!   second): the bench measures one reconnect, not the guard.
//! - reconnect, legacy: what a legacy application must do instead: drop the
//!   stream, connect anew, write one byte, wait for its echo.
//!
//! The modes of a point are interleaved sample by sample: connect in a
//! shuffled order each round, reconnect alternating which goes first.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ti_stack::device::pcap_tap::PcapTap;
use ti_stack::device::tun::TunDevice;
use ti_stack::{Mode, Runtime, StackConfig, StreamEvent, TiStream};

use super::net::{
    LatencyDevice, Site, Testbed, VETH_B, family_addr, family_sock, latency_device, open_tun,
};
use super::pcap::handshakes;
use super::{BenchError, Progress};

/// Port of the servers that close at once.
pub(super) const CLOSE_PORT: u16 = 7000;
/// Port of the echo servers.
pub(super) const ECHO_PORT: u16 = 7001;
/// Longest a sample may take beyond the RTTs it needs.
pub(super) const SAMPLE_TIMEOUT: Duration = Duration::from_secs(5);

/// A latency mode: who connects to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Legacy stack to legacy stack.
    Legacy,
    /// TI stack to TI stack.
    Ti,
    /// Legacy stack to the Linux peer.
    LegacyLinux,
    /// TI stack to the Linux peer (falls back to legacy).
    TiLinux,
}

impl Peer {
    /// The mode's name in the CSV files.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Legacy => "legacy",
            Peer::Ti => "ti",
            Peer::LegacyLinux => "legacy-linux",
            Peer::TiLinux => "ti-linux",
        }
    }

    fn ti_client(self) -> bool {
        matches!(self, Peer::Ti | Peer::TiLinux)
    }
}

/// Modes of the connect benchmark.
pub const CONNECT_MODES: [Peer; 4] = [Peer::Legacy, Peer::Ti, Peer::LegacyLinux, Peer::TiLinux];
/// Modes of the reconnect benchmark.
pub const RECONNECT_MODES: [Peer; 2] = [Peer::Legacy, Peer::Ti];

/// One measurement.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Emulated RTT.
    pub rtt: Duration,
    /// Mode.
    pub mode: Peer,
    /// Index within its mode and RTT.
    pub index: usize,
    /// Our end of the (new) connection.
    pub local: Option<SocketAddr>,
    /// The server.
    pub remote: SocketAddr,
    /// The application's time (connect: to end-of-stream; reconnect: to the
    /// first echoed byte).
    pub app: Duration,
    /// Reconnect, TI: the stack's `Resumed { downtime }`.
    pub downtime: Option<Duration>,
    /// SYN to third ACK in our capture.
    pub syn_ack: Option<Duration>,
}

/// Which benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Connect time.
    Connect,
    /// Reconnect time.
    Reconnect,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Reconnect => "reconnect",
        }
    }
}

/// Runs one latency benchmark over every RTT; captures go to `pcap_dir`.
pub fn run(
    bed: &Testbed,
    kind: Kind,
    rtts: &[Duration],
    samples: usize,
    pcap_dir: &Path,
) -> Result<Vec<Sample>, BenchError> {
    let linux = match kind {
        Kind::Connect => Some(LinuxCloser::start(bed)?),
        Kind::Reconnect => None,
    };
    let modes: &[Peer] = match kind {
        Kind::Connect => &CONNECT_MODES,
        Kind::Reconnect => &RECONNECT_MODES,
    };
    let mut out = Vec::new();
    let mut result = Ok(());
    for (i, &rtt) in rtts.iter().enumerate() {
        let label = format!("{} rtt {:>3} ms", kind.name(), rtt.as_millis());
        let mut progress = Progress::new(label, samples * modes.len());
        let point = Point::start(bed, kind, i, rtt, pcap_dir);
        let measured = point.and_then(|mut point| {
            let r = match kind {
                Kind::Connect => point.connect_samples(samples, &mut progress),
                Kind::Reconnect => point.reconnect_samples(samples, &mut progress),
            };
            let captured = point.finish();
            let mut samples = r?;
            captured?.apply(&mut samples)?;
            Ok(samples)
        });
        progress.done();
        match measured {
            Ok(samples) => out.extend(samples),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if let Some(linux) = linux {
        linux.stop(bed);
    }
    result.map(|()| out)
}

/// A server stack's device: a capture on the TUN (no delay line).
type ServerDevice = PcapTap<TunDevice>;

/// The hosts of one RTT point.
struct Point {
    rtt: Duration,
    ti_client: Runtime<LatencyDevice>,
    legacy_client: Runtime<LatencyDevice>,
    ti_client_addr: IpAddr,
    legacy_client_addr: IpAddr,
    ti_pcap: PathBuf,
    legacy_pcap: PathBuf,
    servers: Vec<(Runtime<ServerDevice>, Vec<JoinHandle<()>>)>,
}

/// What the captures said, to merge into the samples.
struct Captured {
    ti: std::collections::HashMap<(u16, SocketAddr), super::pcap::Handshake>,
    legacy: std::collections::HashMap<(u16, SocketAddr), super::pcap::Handshake>,
}

impl Captured {
    fn apply(&self, samples: &mut [Sample]) -> Result<(), BenchError> {
        for s in samples.iter_mut() {
            let table = if s.mode.ti_client() {
                &self.ti
            } else {
                &self.legacy
            };
            s.syn_ack = s
                .local
                .and_then(|l| table.get(&(l.port(), s.remote)))
                .and_then(|h| h.syn_to_ack());
        }
        Ok(())
    }
}

fn server_site(n: u8) -> Site {
    Site {
        gateway: Ipv4Addr::new(10, 72, n, 1),
        address: Ipv4Addr::new(10, 72, n, 2),
    }
}

fn client_site(n: u8, index: usize) -> Site {
    Site {
        gateway: Ipv4Addr::new(10, 71, n, 1),
        // A new address per RTT point: the Linux peer still holds the last
        // point's connections in TIME_WAIT.
        address: Ipv4Addr::new(10, 71, n, 10 + (index % 240) as u8),
    }
}

fn bench_config(site: Site, ti: bool) -> StackConfig {
    let mut config = site.config(ti);
    config.connect_timeout = SAMPLE_TIMEOUT;
    config
}

impl Point {
    fn start(
        bed: &Testbed,
        kind: Kind,
        index: usize,
        rtt: Duration,
        pcap_dir: &Path,
    ) -> Result<Point, BenchError> {
        let mut servers = Vec::new();
        for (n, ti) in [(1u8, true), (2u8, false)] {
            let site = server_site(n);
            let name = format!("{}{index}", if ti { "tit" } else { "til" });
            let tun = open_tun(&bed.b, &name, site)?;
            let path = pcap_dir.join(format!(
                "{}-rtt{}ms-{}-server.pcap",
                kind.name(),
                rtt.as_millis(),
                if ti { "ti" } else { "legacy" }
            ));
            let tun = PcapTap::create(tun, &path)
                .map_err(|e| BenchError::io(format!("create {}", path.display()), e))?;
            let rt = Runtime::start(bench_config(site, ti), tun)
                .map_err(|e| BenchError::io("start a server stack", e))?;
            let threads = serve_close_and_echo(&rt)?;
            servers.push((rt, threads));
        }
        let half = rtt / 2;
        let tag = format!("{}-rtt{}ms", kind.name(), rtt.as_millis());
        let ti_site = client_site(1, index);
        let legacy_site = client_site(2, index);
        let ti_pcap = pcap_dir.join(format!("{tag}-ti-client.pcap"));
        let legacy_pcap = pcap_dir.join(format!("{tag}-legacy-client.pcap"));
        let ti_tun = open_tun(&bed.a, &format!("tit{index}"), ti_site)?;
        let legacy_tun = open_tun(&bed.a, &format!("til{index}"), legacy_site)?;
        let ti_dev = latency_device(ti_tun, half, &ti_pcap)?;
        let legacy_dev = latency_device(legacy_tun, half, &legacy_pcap)?;
        let ti_client = Runtime::start(bench_config(ti_site, true), ti_dev)
            .map_err(|e| BenchError::io("start the TI client stack", e))?;
        let legacy_client = Runtime::start(bench_config(legacy_site, false), legacy_dev)
            .map_err(|e| BenchError::io("start the legacy client stack", e))?;
        Ok(Point {
            rtt,
            ti_client,
            legacy_client,
            ti_client_addr: family_addr(ti_site.address),
            legacy_client_addr: family_addr(legacy_site.address),
            ti_pcap,
            legacy_pcap,
            servers,
        })
    }

    fn target(&self, mode: Peer, port: u16) -> SocketAddr {
        match mode {
            Peer::Ti => family_sock(server_site(1).address, port),
            Peer::Legacy => family_sock(server_site(2).address, port),
            Peer::LegacyLinux | Peer::TiLinux => family_sock(VETH_B, port),
        }
    }

    fn client(&self, mode: Peer) -> &Runtime<LatencyDevice> {
        if mode.ti_client() {
            &self.ti_client
        } else {
            &self.legacy_client
        }
    }

    fn connect_samples(
        &mut self,
        samples: usize,
        progress: &mut Progress,
    ) -> Result<Vec<Sample>, BenchError> {
        let mut out = Vec::with_capacity(samples * CONNECT_MODES.len());
        let mut order = CONNECT_MODES;
        let mut rng = Shuffle(0x9e37_79b9_7f4a_7c15 ^ self.rtt.as_micros() as u64);
        for round in 0..samples {
            rng.shuffle(&mut order);
            super::check_interrupted()?;
            for mode in order {
                out.push(self.connect_once(mode, round)?);
                progress.step();
            }
        }
        Ok(out)
    }

    fn connect_once(&self, mode: Peer, index: usize) -> Result<Sample, BenchError> {
        let remote = self.target(mode, CLOSE_PORT);
        let client = self.client(mode);
        let start = Instant::now();
        let mut stream = client.connect(remote).map_err(BenchError::stream(format!(
            "{} connect to {remote}",
            mode.name()
        )))?;
        stream.set_read_timeout(Some(SAMPLE_TIMEOUT + self.rtt * 2));
        let local = stream.local_addr();
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).map_err(|e| {
            BenchError::io(format!("{} wait for the server's close", mode.name()), e)
        })?;
        let app = start.elapsed();
        if n != 0 {
            return Err(BenchError::Check(format!(
                "{}: the server sent {n} bytes instead of closing",
                mode.name()
            )));
        }
        check_mode(&stream, mode == Peer::Ti, mode)?;
        Ok(Sample {
            rtt: self.rtt,
            mode,
            index,
            local,
            remote,
            app,
            downtime: None,
            syn_ack: None,
        })
    }

    fn reconnect_samples(
        &mut self,
        samples: usize,
        progress: &mut Progress,
    ) -> Result<Vec<Sample>, BenchError> {
        let ti_remote = self.target(Peer::Ti, ECHO_PORT);
        let legacy_remote = self.target(Peer::Legacy, ECHO_PORT);
        let timeout = Some(SAMPLE_TIMEOUT + self.rtt * 4);
        let mut ti = self
            .ti_client
            .connect(ti_remote)
            .map_err(BenchError::stream("TI connect to the echo server"))?;
        ti.set_read_timeout(timeout);
        check_mode(&ti, true, Peer::Ti)?;
        echo_byte(&mut ti, 0)?;
        let mut legacy = Some(self.legacy_connect(legacy_remote, timeout)?);
        let mut out = Vec::with_capacity(samples * 2);
        let spacing = tifid::lifecycle::LifecycleConfig::default().min_resume_interval
            + Duration::from_millis(10);
        let mut last_resume: Option<Instant> = None;
        for round in 0..samples {
            super::check_interrupted()?;
            let byte = (round % 251) as u8 + 1;
            for k in 0..2 {
                let mode = RECONNECT_MODES[(round + k) % 2];
                let sample = match mode {
                    Peer::Ti => {
                        let _ = ti.events();
                        if let Some(wait) = last_resume.map(|t| spacing.saturating_sub(t.elapsed()))
                        {
                            std::thread::sleep(wait);
                        }
                        let start = Instant::now();
                        last_resume = Some(start);
                        ti.fail_transport()
                            .map_err(BenchError::stream("fail_transport"))?;
                        echo_byte(&mut ti, byte)?;
                        let app = start.elapsed();
                        let downtime = ti.events().into_iter().find_map(|e| match e {
                            StreamEvent::Resumed { downtime, .. } => Some(downtime),
                            _ => None,
                        });
                        if downtime.is_none() {
                            return Err(BenchError::Check(
                                "TI reconnect: the echo came back without a Resumed event".into(),
                            ));
                        }
                        Sample {
                            rtt: self.rtt,
                            mode,
                            index: round,
                            local: ti.local_addr(),
                            remote: ti_remote,
                            app,
                            downtime,
                            syn_ack: None,
                        }
                    }
                    _ => {
                        let start = Instant::now();
                        drop(legacy.take());
                        let mut fresh = self.legacy_connect(legacy_remote, timeout)?;
                        echo_byte(&mut fresh, byte)?;
                        let app = start.elapsed();
                        let local = fresh.local_addr();
                        legacy = Some(fresh);
                        Sample {
                            rtt: self.rtt,
                            mode,
                            index: round,
                            local,
                            remote: legacy_remote,
                            app,
                            downtime: None,
                            syn_ack: None,
                        }
                    }
                };
                out.push(sample);
                progress.step();
            }
        }
        Ok(out)
    }

    fn legacy_connect(
        &self,
        remote: SocketAddr,
        timeout: Option<Duration>,
    ) -> Result<TiStream<LatencyDevice>, BenchError> {
        let mut s = self
            .legacy_client
            .connect(remote)
            .map_err(BenchError::stream("legacy connect to the echo server"))?;
        s.set_read_timeout(timeout);
        Ok(s)
    }

    /// Stops every stack (flushing the captures) and reads the captures.
    fn finish(self) -> Result<Captured, BenchError> {
        let Point {
            ti_client,
            legacy_client,
            ti_client_addr,
            legacy_client_addr,
            ti_pcap,
            legacy_pcap,
            servers,
            ..
        } = self;
        ti_client.stop();
        legacy_client.stop();
        for (rt, threads) in servers {
            rt.stop();
            for t in threads {
                let _ = t.join();
            }
        }
        Ok(Captured {
            ti: handshakes(&ti_pcap, ti_client_addr)?,
            legacy: handshakes(&legacy_pcap, legacy_client_addr)?,
        })
    }
}

pub(super) fn check_mode(
    stream: &TiStream<LatencyDevice>,
    want_ti: bool,
    mode: Peer,
) -> Result<(), BenchError> {
    let ti = matches!(stream.mode(), Mode::Resilient { .. });
    if ti == want_ti {
        Ok(())
    } else {
        Err(BenchError::Check(format!(
            "{}: the connection is {:?}, expected {}",
            mode.name(),
            stream.mode(),
            if want_ti { "a TI-flow" } else { "legacy TCP" }
        )))
    }
}

/// A fixed-seed xorshift for the order of the modes within a round, so
/// whatever one sample leaves behind (a closing handshake still in flight)
/// falls on every mode alike.
struct Shuffle(u64);

impl Shuffle {
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            items.swap(i, (self.0 % (i as u64 + 1)) as usize);
        }
    }
}

/// Writes `byte` and waits for it to come back.
pub(super) fn echo_byte(stream: &mut TiStream<LatencyDevice>, byte: u8) -> Result<(), BenchError> {
    stream
        .write_all(&[byte])
        .map_err(|e| BenchError::io("write the echo byte", e))?;
    let mut back = [0u8; 1];
    stream
        .read_exact(&mut back)
        .map_err(|e| BenchError::io("read the echoed byte", e))?;
    if back[0] == byte {
        Ok(())
    } else {
        Err(BenchError::Check(format!(
            "echo returned {:#04x} for {byte:#04x}",
            back[0]
        )))
    }
}

/// Echoes everything until the stream ends or fails.
/// Listens on [`CLOSE_PORT`] (each connection closed right after accept)
/// and [`ECHO_PORT`] (each echoed on a worker thread); returns the two
/// accept threads, which end when the stack stops (the echo thread after
/// joining its workers, so the TUN is closed before the next point opens
/// one).
pub(super) fn serve_close_and_echo<D>(rt: &Runtime<D>) -> Result<Vec<JoinHandle<()>>, BenchError>
where
    D: smoltcp::phy::Device + ti_stack::device::Wait + Send + 'static,
{
    let closer = rt
        .listen(CLOSE_PORT)
        .map_err(BenchError::stream("listen"))?;
    let echo = rt.listen(ECHO_PORT).map_err(BenchError::stream("listen"))?;
    Ok(vec![
        std::thread::spawn(move || {
            while let Ok(stream) = closer.accept() {
                drop(stream);
            }
        }),
        std::thread::spawn(move || {
            let mut workers = Vec::new();
            while let Ok(stream) = echo.accept() {
                workers.push(std::thread::spawn(move || echo_loop(stream)));
            }
            for w in workers {
                let _ = w.join();
            }
        }),
    ])
}

pub(super) fn echo_loop<D: smoltcp::phy::Device + ti_stack::device::Wait>(mut stream: TiStream<D>) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// The Linux peer of the connect benchmark: accepts and closes at once.
struct LinuxCloser {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl LinuxCloser {
    fn start(bed: &Testbed) -> Result<LinuxCloser, BenchError> {
        let addr = family_sock(VETH_B, CLOSE_PORT);
        let listener = bed
            .b
            .enter(|| TcpListener::bind(addr))?
            .map_err(|e| BenchError::io(format!("bind the Linux peer to {addr}"), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::Acquire) {
                    return;
                }
                drop(stream);
            }
        });
        Ok(LinuxCloser { stop, thread })
    }

    /// Stops the accept loop: sets the flag, then wakes `accept` with a
    /// connection from inside the namespace.
    fn stop(self, bed: &Testbed) {
        self.stop.store(true, Ordering::Release);
        let addr = family_sock(VETH_B, CLOSE_PORT);
        if let Ok(Ok(_)) = bed
            .b
            .enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        {
            let _ = self.thread.join();
        }
    }
}
