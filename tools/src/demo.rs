//! `tiflow demo`: one command that shows a TCP conversation surviving a
//! middlebox that loses its state, next to plain TCP that does not.
//!
//! Owns three network namespaces (client, NAT middlebox, server) and
//! everything in them: veth links, addresses, routes, the middlebox's
//! nftables table and conntrack table (both over netlink: no `iptables` or
//! `conntrack` command), two `tiflow up` processes (this binary,
//! run with `ip netns exec`), and the demo's own kernel-TCP sender and
//! receiver threads (sockets opened inside the namespaces). Everything is
//! removed on exit, on error and on Ctrl-C: the namespaces when their
//! [`NetNs`] guards drop, the processes when their guards do.
//!
//! It must never configure anything outside its namespaces, and every loop
//! is bounded by the run's deadline.
//!
//! ```text
//!  client ns                     middlebox ns                 server ns
//!  sender -> 127.0.0.1:6000      m0 10.10.1.1                 s0 10.10.2.2
//!  tiflow up (10.0.1.1, TUN)     NAT: masquerade out m1       tiflow up (10.0.2.1, TUN)
//!  c0 10.10.1.2  ------------->  m1 10.10.2.1 (+10.10.2.3) -> receivers
//! ```
//! Plain TCP goes from the client's kernel straight to 10.10.2.2:5001; the
//! TI-flow from 127.0.0.1:6000 (client `tiflow up --forward`) to
//! 10.10.2.2:5002 (server `tiflow up --expose`, `--serve` to 127.0.0.1:5002).
//! Mid-transfer the middlebox "reboots": its NAT rule now maps to 10.10.2.3
//! and its conntrack table is flushed, so every old mapping is gone.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Args;
use sha2::{Digest, Sha256};
use ti_testnet::middlebox::{self, Middlebox};
use ti_testnet::netns::{self, NetNs, NetnsError};
use ti_testnet::topology::{Cidr, Line, LinePlan};

use crate::control::{self, human_bytes, human_ms, table};
use crate::host::{self, MissingTools};

/// Ports and addresses of the demo's topology (inside its namespaces only).
const PLAIN_SINK: &str = "10.10.2.2:5001";
const TI_SINK: &str = "127.0.0.1:5002";
const TI_SOURCE: &str = "127.0.0.1:6000";
const NAT_ADDRESS_BEFORE: Ipv4Addr = Ipv4Addr::new(10, 10, 2, 1);
const NAT_ADDRESS_AFTER: Ipv4Addr = Ipv4Addr::new(10, 10, 2, 3);

/// Longest the demo waits for a `tiflow up` to answer on its control socket.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// After sending stops, longest the demo waits for the TI-flow to deliver.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Loop tick.
const TICK: Duration = Duration::from_millis(100);

/// Help shown after `tiflow demo`'s options.
pub const DEMO_HELP: &str = "\
What it does:
  Builds three network namespaces (client, a NAT middlebox with conntrack and a
  stateful firewall, server), starts `tiflow up` in the client and the server,
  and sends a paced byte stream from client to server twice at once: over plain
  kernel TCP, and over kernel TCP carried by a TI-flow. Part-way through, the
  middlebox loses its state (its NAT address changes and its conntrack table
  is flushed). Then it prints what each stream delivered, the TI-flow's
  resumes and downtime, and SHA-256 of both ends. Everything it creates is
  removed on exit and on Ctrl-C. Needs root and iproute2 (the middlebox's
  nftables rules and its conntrack flush go to the kernel over netlink).

Exit codes:
  0  the TI-flow resumed and survived byte-exact, and plain TCP did not
  1  it did not (or the run showed nothing: no resume, or plain TCP
     survived too), or the demo could not run (not root, missing command,
     interrupted)
  2  usage error (bad arguments)";

fn parse_duration_secs(s: &str) -> Result<u64, String> {
    match s.trim_end_matches('s').parse::<u64>() {
        Ok(v) if (2..=3600).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a duration in seconds (2-3600)")),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.01..=200.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a rate in MiB/s (0.01-200)")),
    }
}

/// Arguments of `tiflow demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// How long the sender sends, in seconds.
    #[arg(long, value_name = "SECONDS", default_value = "20", value_parser = parse_duration_secs)]
    pub duration: u64,

    /// Sending rate of each stream, in MiB/s.
    #[arg(long, value_name = "MIB_PER_S", default_value = "2", value_parser = parse_rate)]
    pub rate: f64,

    /// Keep the `tiflow up` logs even when the demo succeeds (they are kept
    /// on failure anyway; their directory is printed).
    #[arg(long)]
    pub keep_logs: bool,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Not root, no `ip`, no TUN.
    #[error("{0}")]
    Unsupported(NetnsError),
    /// `ip` missing.
    #[error(transparent)]
    MissingTools(#[from] MissingTools),
    /// Building the namespaces failed.
    #[error("cannot build the demo network: {0}")]
    Netns(#[from] NetnsError),
    /// A local I/O step failed.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: String,
        /// Why.
        source: io::Error,
    },
    /// A `tiflow up` did not come up.
    #[error("`tiflow up` in the {host} did not start: {detail} (its log: {})", log.display())]
    Up {
        /// `client` or `server`.
        host: &'static str,
        /// What went wrong.
        detail: String,
        /// Its log file.
        log: PathBuf,
    },
    /// SIGINT or SIGTERM.
    #[error("interrupted (its namespaces and processes are removed)")]
    Interrupted,
    /// The TI-flow did not survive byte-exact.
    #[error("the TI-flow did not survive byte-exact: {0}")]
    NotSurvived(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// The demo's network, a [`Line`]: client (c0 10.10.1.2) -- middlebox (m0
/// 10.10.1.1 | m1 10.10.2.1, a home router: masquerading NAT, only replies
/// get in) -- server (s0 10.10.2.2). Its namespaces are the line's fields
/// (`client`, `middlebox`, `server`). Also used by the tests.
pub struct NatTopology(Line);

impl std::ops::Deref for NatTopology {
    type Target = Line;

    fn deref(&self) -> &Line {
        &self.0
    }
}

impl NatTopology {
    /// Builds the three namespaces, named from `prefix`.
    pub fn build(prefix: &str) -> Result<NatTopology, DemoError> {
        let after = [Cidr::slash24(NAT_ADDRESS_AFTER)];
        let plan = LinePlan {
            client: Cidr::slash24(Ipv4Addr::new(10, 10, 1, 2)),
            inside: Cidr::slash24(Ipv4Addr::new(10, 10, 1, 1)),
            outside: Cidr::slash24(NAT_ADDRESS_BEFORE),
            outside_secondary: &after,
            server: Cidr::slash24(Ipv4Addr::new(10, 10, 2, 2)),
            server_gateway: Some(NAT_ADDRESS_BEFORE),
        };
        Ok(NatTopology(Line::build(
            prefix,
            &plan,
            &Middlebox::HomeRouter,
        )?))
    }

    /// The middlebox "reboots": its NAT maps to a new address and it
    /// forgets every connection.
    pub fn lose_state(&self) -> Result<(), DemoError> {
        middlebox::home_router_snat(&self.middlebox, NAT_ADDRESS_AFTER)?;
        middlebox::conntrack_flush(&self.middlebox)?;
        Ok(())
    }
}

/// A `tiflow up` child process in a namespace; stopped when dropped. Also
/// used by `tiflow bench recovery`.
pub(crate) struct UpProcess {
    host: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its log file (stdout and stderr).
    pub(crate) log: PathBuf,
    /// Its control socket.
    pub(crate) control: PathBuf,
}

impl UpProcess {
    /// Starts `tiflow -v up --exit-on-stdin-close --control DIR/HOST.sock
    /// args...` in `ns` (this executable), logging to `DIR/HOST.log`.
    pub(crate) fn spawn(
        ns: &NetNs,
        host: &'static str,
        dir: &Path,
        args: &[&str],
    ) -> Result<UpProcess, DemoError> {
        let exe = std::env::current_exe().map_err(io_err("cannot find this program"))?;
        let log = dir.join(format!("{host}.log"));
        let control = dir.join(format!("{host}.sock"));
        let out = File::create(&log).map_err(io_err(format!("cannot create {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io_err(format!("cannot open {}", log.display())))?;
        let mut child = Command::new(host::which("ip").unwrap_or_else(|| "ip".into()))
            .args(["netns", "exec", ns.name()])
            .arg(exe)
            .args(["-v", "up", "--exit-on-stdin-close", "--control"])
            .arg(&control)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io_err(format!("cannot start tiflow up in the {host}")))?;
        let stdin = child.stdin.take();
        Ok(UpProcess {
            host,
            child,
            stdin,
            log,
            control,
        })
    }

    /// The benches' `tiflow up` pair, both ready: in `server`, a stack at
    /// 10.0.2.1/24 serving its `port` to `target` (exposed on the host's
    /// `port`); in `client`, a stack at 10.0.1.1/24, masqueraded,
    /// forwarding `listen` to `remote`. Returns (server, client); `stop`
    /// interrupts the wait.
    pub(crate) fn spawn_pair(
        (client, server): (&NetNs, &NetNs),
        dir: &Path,
        (port, target): (u16, &str),
        (listen, remote): (&str, &str),
        stop: &AtomicBool,
    ) -> Result<(UpProcess, UpProcess), DemoError> {
        let serve = format!("{port}={target}");
        let expose = port.to_string();
        let forward = format!("{listen}={remote}");
        let mut server_up = UpProcess::spawn(
            server,
            "server",
            dir,
            &[
                "--address",
                "10.0.2.1/24",
                "--serve",
                &serve,
                "--expose",
                &expose,
            ],
        )?;
        let mut client_up = UpProcess::spawn(
            client,
            "client",
            dir,
            &[
                "--address",
                "10.0.1.1/24",
                "--masquerade",
                "--forward",
                &forward,
            ],
        )?;
        server_up.wait_ready(stop)?;
        client_up.wait_ready(stop)?;
        Ok((server_up, client_up))
    }

    /// Its process id (`ip netns exec` execs `tiflow` in place, so this
    /// is the `tiflow up` itself).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the control socket answers (bounded).
    pub(crate) fn wait_ready(&mut self, stop: &AtomicBool) -> Result<(), DemoError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if stop.load(Ordering::Acquire) {
                return Err(DemoError::Interrupted);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(DemoError::Up {
                    host: self.host,
                    detail: format!("it exited ({status}): {}", last_line(&self.log)),
                    log: self.log.clone(),
                });
            }
            if control::status(&self.control).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(DemoError::Up {
                    host: self.host,
                    detail: format!("no answer on its control socket in {READY_TIMEOUT:?}"),
                    log: self.log.clone(),
                });
            }
            std::thread::sleep(TICK);
        }
    }

    /// Closes its standard input (it stops), waits a bounded time, then
    /// kills it (our own child, by its id).
    fn stop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(8);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        tracing::warn!(
            host = self.host,
            "tiflow up did not stop in time: killing it"
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "no output".into())
}

/// Deterministic filler bytes (xorshift64*), so nothing is read from a
/// random source and both runs of one stream are comparable.
struct Pattern(u64);

impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Live counters of one end, for the progress lines.
#[derive(Debug, Default)]
struct Live {
    bytes: AtomicU64,
    failed: AtomicBool,
}

impl Live {
    fn show(&self) -> String {
        let bytes = human_bytes(self.bytes.load(Ordering::Relaxed));
        if self.failed.load(Ordering::Relaxed) {
            format!("{bytes} (failed)")
        } else {
            bytes
        }
    }
}

/// What one end of a stream saw.
#[derive(Debug, Clone, Default)]
struct EndReport {
    bytes: u64,
    sha: String,
    /// The first error, with the time it happened (seconds from start).
    error: Option<(f64, String)>,
    /// The receiver saw the sender's end of stream.
    eof: bool,
    /// Longest time without new data (receiver).
    longest_gap: Duration,
    /// When data last arrived (receiver).
    last_data: Option<Instant>,
}

fn describe_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::BrokenPipe => "broken pipe (reset)".into(),
        io::ErrorKind::ConnectionAborted => "connection aborted".into(),
        io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

/// Sends a paced stream on `stream` until `until`; then shuts down writing
/// and hands the socket back (the caller closes it later).
fn source(
    mut stream: TcpStream,
    rate: f64,
    start: Instant,
    until: Instant,
    progress: Arc<Live>,
    stop: Arc<AtomicBool>,
) -> (EndReport, TcpStream) {
    let mut report = EndReport::default();
    let mut hasher = Sha256::new();
    let mut pattern = Pattern(0x7469_666c_6f77_u64);
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: &[u8] = &[];
    let _ = stream.set_write_timeout(Some(TICK));
    let _ = stream.set_nodelay(true);
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= until {
            break;
        }
        let due = (rate * now.duration_since(start).as_secs_f64()) as u64;
        if pending.is_empty() {
            if report.bytes >= due {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            let want = ((due - report.bytes) as usize).min(buf.len());
            pattern.fill(&mut buf[..want]);
            pending = &buf[..want];
        }
        match stream.write(pending) {
            Ok(0) => {
                report.error = Some((start.elapsed().as_secs_f64(), "closed".into()));
                break;
            }
            Ok(n) => {
                hasher.update(&pending[..n]);
                pending = &pending[n..];
                report.bytes += n as u64;
                progress.bytes.store(report.bytes, Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                report.error = Some((start.elapsed().as_secs_f64(), describe_error(&e)));
                break;
            }
        }
    }
    if report.error.is_none() {
        let _ = stream.shutdown(Shutdown::Write);
    }
    report.sha = hex(&hasher.finalize());
    progress
        .failed
        .store(report.error.is_some(), Ordering::Relaxed);
    (report, stream)
}

/// Accepts one connection and reads it to its end (or an error, or `stop`).
fn sink(
    listener: TcpListener,
    start: Instant,
    progress: Arc<Live>,
    stop: Arc<AtomicBool>,
) -> EndReport {
    let mut report = EndReport::default();
    let mut hasher = Sha256::new();
    let _ = listener.set_nonblocking(true);
    let mut stream = loop {
        if stop.load(Ordering::Acquire) {
            report.sha = hex(&hasher.finalize());
            return report;
        }
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => {
                report.error = Some((start.elapsed().as_secs_f64(), e.to_string()));
                report.sha = hex(&hasher.finalize());
                return report;
            }
        }
    };
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(TICK));
    let mut buf = vec![0u8; 64 * 1024];
    let mut last = Instant::now();
    while !stop.load(Ordering::Acquire) {
        match stream.read(&mut buf) {
            Ok(0) => {
                report.eof = true;
                break;
            }
            Ok(n) => {
                let now = Instant::now();
                report.longest_gap = report.longest_gap.max(now - last);
                last = now;
                report.last_data = Some(now);
                hasher.update(&buf[..n]);
                report.bytes += n as u64;
                progress.bytes.store(report.bytes, Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                report.error = Some((start.elapsed().as_secs_f64(), describe_error(&e)));
                break;
            }
        }
    }
    report.sha = hex(&hasher.finalize());
    progress
        .failed
        .store(report.error.is_some(), Ordering::Relaxed);
    report
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the client's `tiflow up` said about the TI-flow, last time asked.
#[derive(Debug, Clone, Default)]
struct FlowSeen {
    tifid: Option<String>,
    mode: Option<String>,
    resumes: u64,
    last_downtime_ms: Option<f64>,
    resent: u64,
}

fn poll_flow(control: &Path, seen: &mut FlowSeen) {
    let Ok(report) = control::status(control) else {
        return;
    };
    let flow = report
        .flows
        .iter()
        .find(|f| f.tifid.is_some() && f.tifid == seen.tifid)
        .or_else(|| report.flows.first());
    if let Some(f) = flow {
        if seen.tifid.is_none() {
            seen.tifid = f.tifid.clone();
        }
        seen.mode = Some(f.mode.clone());
        seen.resumes = seen.resumes.max(f.resumes);
        if f.last_downtime_ms.is_some() {
            seen.last_downtime_ms = f.last_downtime_ms;
        }
        seen.resent = seen.resent.max(f.resent);
    }
}

/// `tiflow demo`.
pub fn run(args: &DemoArgs) -> Result<(), DemoError> {
    netns::check_privileges().map_err(DemoError::Unsupported)?;
    // The middlebox's NAT and conntrack flush go over netlink: only `ip`.
    host::require(&[host::IP])?;
    let stop = Arc::new(AtomicBool::new(false));
    crate::up::stop_on_signals(&stop).map_err(io_err("cannot install signal handlers"))?;

    let dir = std::env::temp_dir().join(format!("tiflow-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
    let result = run_in(args, &dir, &stop);
    match &result {
        Ok(()) if !args.keep_logs => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        _ => eprintln!(
            "tiflow demo: logs of the two `tiflow up` are in {}",
            dir.display()
        ),
    }
    result
}

fn run_in(args: &DemoArgs, dir: &Path, stop: &Arc<AtomicBool>) -> Result<(), DemoError> {
    let duration = Duration::from_secs(args.duration);
    let rate = args.rate * 1024.0 * 1024.0;
    let fail_at = duration.mul_f64(0.4);
    eprintln!("tiflow demo: building namespaces client, middlebox (NAT + conntrack), server");
    let net = NatTopology::build("tfdemo-")?;

    // Receivers in the server, listening before anything connects.
    let plain_listener = bind_in(&net.server, PLAIN_SINK)?;
    let ti_listener = bind_in(&net.server, TI_SINK)?;

    let mut server = UpProcess::spawn(
        &net.server,
        "server",
        dir,
        &[
            "--address",
            "10.0.2.1/24",
            "--serve",
            "5002=127.0.0.1:5002",
            "--expose",
            "5002=5002",
        ],
    )?;
    let mut client = UpProcess::spawn(
        &net.client,
        "client",
        dir,
        &[
            "--address",
            "10.0.1.1/24",
            "--masquerade",
            "--forward",
            &format!("{TI_SOURCE}=10.10.2.2:5002"),
        ],
    )?;
    server.wait_ready(stop)?;
    client.wait_ready(stop)?;
    eprintln!(
        "tiflow demo: tiflow up running in client and server; sending {:.1} MiB/s for {} s over each path",
        args.rate, args.duration
    );

    let sink_stop = Arc::new(AtomicBool::new(false));
    let plain_rx = Arc::new(Live::default());
    let ti_rx = Arc::new(Live::default());
    let plain_tx = Arc::new(Live::default());
    let ti_tx = Arc::new(Live::default());
    let start = Instant::now();
    let plain_sink = spawn_sink(plain_listener, start, &plain_rx, &sink_stop)?;
    let ti_sink = spawn_sink(ti_listener, start, &ti_rx, &sink_stop)?;

    let plain_conn = connect_in(&net.client, PLAIN_SINK)?;
    let ti_conn = connect_in(&net.client, TI_SOURCE)?;
    let until = start + duration;
    let plain_source = spawn_source(plain_conn, rate, start, until, &plain_tx, stop)?;
    let ti_source = spawn_source(ti_conn, rate, start, until, &ti_tx, stop)?;

    let mut seen = FlowSeen::default();
    let mut broke_at: Option<f64> = None;
    let mut next_progress = start + Duration::from_secs(1);
    let drain_deadline = until + DRAIN_TIMEOUT;
    loop {
        if stop.load(Ordering::Acquire) {
            sink_stop.store(true, Ordering::Release);
            return Err(DemoError::Interrupted);
        }
        let now = Instant::now();
        if broke_at.is_none() && now >= start + fail_at {
            net.lose_state()?;
            broke_at = Some(start.elapsed().as_secs_f64());
            eprintln!(
                "[{:>4.1}s] middlebox lost its state: conntrack flushed, NAT address {NAT_ADDRESS_BEFORE} -> {NAT_ADDRESS_AFTER}",
                start.elapsed().as_secs_f64()
            );
        }
        poll_flow(&client.control, &mut seen);
        if now >= next_progress {
            next_progress += Duration::from_secs(1);
            eprintln!(
                "[{:>4.1}s] plain TCP {:>10} sent {:>10} received | tiflow {:>10} sent {:>10} received{}",
                start.elapsed().as_secs_f64(),
                plain_tx.show(),
                plain_rx.show(),
                ti_tx.show(),
                ti_rx.show(),
                match seen.resumes {
                    0 => String::new(),
                    n => format!(", resumed {n}x"),
                }
            );
        }
        let sources_done = plain_source.is_finished() && ti_source.is_finished();
        if sources_done && (ti_sink.is_finished() || now >= drain_deadline) {
            break;
        }
        std::thread::sleep(TICK);
    }
    // The plain receiver may wait forever on a dead connection: give it a
    // moment after the TI-flow finished, then stop it.
    let plain_deadline = Instant::now() + Duration::from_secs(2);
    while !plain_sink.is_finished() && Instant::now() < plain_deadline {
        std::thread::sleep(TICK);
    }
    sink_stop.store(true, Ordering::Release);
    let (plain_sent, plain_sock) = join(plain_source)?;
    let (ti_sent, ti_sock) = join(ti_source)?;
    let plain_got = join(plain_sink)?;
    let ti_got = join(ti_sink)?;
    poll_flow(&client.control, &mut seen);
    drop((plain_sock, ti_sock));

    let ended = until;
    let outcome = Outcome {
        duration,
        rate: args.rate,
        broke_at: broke_at.unwrap_or(fail_at.as_secs_f64()),
        plain: (plain_sent, plain_got),
        ti: (ti_sent, ti_got),
        seen,
        ended,
    };
    print!("{}", outcome.render());
    drop(client);
    drop(server);
    drop(net);
    outcome.verdict()
}

fn bind_in(ns: &NetNs, addr: &str) -> Result<TcpListener, DemoError> {
    ns.enter(|| TcpListener::bind(addr))?
        .map_err(io_err(format!("cannot listen on {addr} in {}", ns.name())))
}

fn connect_in(ns: &NetNs, addr: &str) -> Result<TcpStream, DemoError> {
    let target: SocketAddr = addr
        .parse()
        .map_err(|_| io_err("bad address")(io::Error::other(addr.to_owned())))?;
    ns.enter(|| TcpStream::connect_timeout(&target, Duration::from_secs(10)))?
        .map_err(io_err(format!("cannot connect to {addr} in {}", ns.name())))
}

fn spawn_sink(
    listener: TcpListener,
    start: Instant,
    progress: &Arc<Live>,
    stop: &Arc<AtomicBool>,
) -> Result<JoinHandle<EndReport>, DemoError> {
    let (progress, stop) = (progress.clone(), stop.clone());
    std::thread::Builder::new()
        .name("demo-sink".into())
        .spawn(move || sink(listener, start, progress, stop))
        .map_err(io_err("cannot start a thread"))
}

fn spawn_source(
    stream: TcpStream,
    rate: f64,
    start: Instant,
    until: Instant,
    progress: &Arc<Live>,
    stop: &Arc<AtomicBool>,
) -> Result<JoinHandle<(EndReport, TcpStream)>, DemoError> {
    let (progress, stop) = (progress.clone(), stop.clone());
    std::thread::Builder::new()
        .name("demo-source".into())
        .spawn(move || source(stream, rate, start, until, progress, stop))
        .map_err(io_err("cannot start a thread"))
}

fn join<T>(handle: JoinHandle<T>) -> Result<T, DemoError> {
    handle
        .join()
        .map_err(|_| io_err("a demo thread panicked")(io::Error::other("panic")))
}

/// Everything the demo measured.
struct Outcome {
    duration: Duration,
    rate: f64,
    broke_at: f64,
    plain: (EndReport, EndReport),
    ti: (EndReport, EndReport),
    seen: FlowSeen,
    ended: Instant,
}

impl Outcome {
    fn exact(sent: &EndReport, got: &EndReport) -> bool {
        sent.error.is_none()
            && got.eof
            && got.error.is_none()
            && sent.bytes == got.bytes
            && sent.sha == got.sha
    }

    fn plain_outcome(&self) -> String {
        let (sent, got) = &self.plain;
        if Self::exact(sent, got) {
            return "survived (the middlebox kept its mapping)".into();
        }
        let stalled = got
            .last_data
            .map(|t| self.ended.saturating_duration_since(t));
        match (&sent.error, &got.error) {
            (Some((t, e)), _) => format!("failed at {t:.1} s: {e}"),
            (None, Some((t, e))) => format!("receiver failed at {t:.1} s: {e}"),
            (None, None) => match stalled {
                Some(s) => format!(
                    "stalled: nothing arrived for the last {:.1} s",
                    s.as_secs_f64()
                ),
                None => "nothing arrived".into(),
            },
        }
    }

    fn ti_outcome(&self) -> String {
        let (sent, got) = &self.ti;
        let exact = Self::exact(sent, got);
        let resumed = match self.seen.resumes {
            0 => "no resume".to_owned(),
            1 => "resumed once".to_owned(),
            n => format!("resumed {n} times"),
        };
        let legacy = self.seen.mode.as_deref() == Some("legacy");
        match (exact, legacy) {
            (true, false) => format!("survived byte-exact, {resumed}"),
            (true, true) => "delivered, but as plain TCP (no TI-flow)".into(),
            (false, _) => match (&sent.error, &got.error) {
                (Some((t, e)), _) | (None, Some((t, e))) => format!("failed at {t:.1} s: {e}"),
                _ => format!("incomplete ({resumed})"),
            },
        }
    }

    fn render(&self) -> String {
        let (ps, pr) = &self.plain;
        let (ts, tr) = &self.ti;
        let short = |r: &EndReport| {
            r.sha
                .get(..16)
                .map_or_else(String::new, |s| format!("{s}..."))
        };
        let bytes = |r: &EndReport| format!("{} ({} B)", human_bytes(r.bytes), r.bytes);
        let ti_name = match &self.seen.tifid {
            Some(t) => format!("tiflow (TI-flow {t})"),
            None => "tiflow".into(),
        };
        let rows = vec![
            vec![String::new(), "plain TCP".into(), ti_name],
            vec!["outcome".into(), self.plain_outcome(), self.ti_outcome()],
            vec!["sent".into(), bytes(ps), bytes(ts)],
            vec!["received".into(), bytes(pr), bytes(tr)],
            vec!["SHA-256 sent".into(), short(ps), short(ts)],
            vec!["SHA-256 received".into(), short(pr), short(tr)],
            vec![
                "byte-exact".into(),
                yes_no(Self::exact(ps, pr)),
                yes_no(Self::exact(ts, tr)),
            ],
            vec![
                "flow downtime".into(),
                "-".into(),
                self.seen.last_downtime_ms.map_or_else(
                    || "-".into(),
                    |ms| format!("{} (failure noticed -> resumed)", human_ms(ms)),
                ),
            ],
            vec![
                "longest pause".into(),
                pause(pr, self.ended),
                format!(
                    "{} (at the receiver)",
                    human_ms(tr.longest_gap.as_secs_f64() * 1000.0)
                ),
            ],
        ];
        format!(
            "\ntiflow demo: {} s at {:.1} MiB/s each, client -> NAT middlebox -> server; \
             the middlebox lost its state at {:.1} s\n\n{}\n{}\n",
            self.duration.as_secs(),
            self.rate,
            self.broke_at,
            table(&rows),
            match (self.verdict().is_ok(), Self::exact(ts, tr)) {
                (true, _) => {
                    "The TI-flow survived the middlebox's state loss byte-exact; plain TCP did not."
                }
                (false, true) =>
                    "The TI-flow was byte-exact, but the run showed nothing (see above).",
                (false, false) => "The TI-flow did NOT survive byte-exact.",
            }
        )
    }

    /// The demonstration holds only if the middlebox's state loss broke
    /// plain TCP, and the TI-flow resumed at least once and delivered every
    /// byte: a TI-flow that never resumed, or a plain connection that
    /// survived, shows nothing.
    fn verdict(&self) -> Result<(), DemoError> {
        let (ts, tr) = &self.ti;
        let (ps, pr) = &self.plain;
        if self.seen.mode.as_deref() == Some("legacy") {
            return Err(DemoError::NotSurvived(
                "the connection was plain TCP, not a TI-flow".into(),
            ));
        }
        if !Self::exact(ts, tr) {
            return Err(DemoError::NotSurvived(self.ti_outcome()));
        }
        if self.seen.resumes == 0 {
            return Err(DemoError::NotSurvived(
                "the TI-flow never resumed: the state loss did not reach it".into(),
            ));
        }
        if Self::exact(ps, pr) {
            return Err(DemoError::NotSurvived(
                "plain TCP survived too: the middlebox kept its mapping, nothing was shown".into(),
            ));
        }
        Ok(())
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

fn pause(got: &EndReport, ended: Instant) -> String {
    let tail = got
        .last_data
        .map(|t| ended.saturating_duration_since(t))
        .unwrap_or_default();
    let longest = if got.eof {
        got.longest_gap
    } else {
        got.longest_gap.max(tail)
    };
    let ms = human_ms(longest.as_secs_f64() * 1000.0);
    if got.eof {
        ms
    } else {
        format!("{ms} (never resumed)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_not_constant() {
        let mut a = vec![0u8; 1000];
        let mut b = vec![0u8; 1000];
        Pattern(1).fill(&mut a);
        Pattern(1).fill(&mut b);
        assert_eq!(a, b);
        assert!(a.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn durations_and_rates_are_checked() {
        assert_eq!(parse_duration_secs("6"), Ok(6));
        assert_eq!(parse_duration_secs("20s"), Ok(20));
        assert!(parse_duration_secs("1").is_err());
        assert!(parse_duration_secs("x").is_err());
        assert!(parse_rate("0").is_err());
        assert_eq!(parse_rate("2.5"), Ok(2.5));
    }

    fn end(bytes: u64, sha: &str, eof: bool, error: Option<&str>) -> EndReport {
        EndReport {
            bytes,
            sha: sha.into(),
            eof,
            error: error.map(|e| (3.0, e.to_owned())),
            ..EndReport::default()
        }
    }

    #[test]
    fn verdict_needs_a_byte_exact_ti_flow() {
        let now = Instant::now();
        let mut o = Outcome {
            duration: Duration::from_secs(6),
            rate: 1.0,
            broke_at: 2.4,
            plain: (
                end(10, "a", false, Some("connection reset")),
                end(5, "b", false, None),
            ),
            ti: (end(10, "a", false, None), end(10, "a", true, None)),
            seen: FlowSeen {
                tifid: Some("0a4530be79bf".into()),
                mode: Some("resilient".into()),
                resumes: 1,
                last_downtime_ms: Some(3.0),
                resent: 0,
            },
            ended: now,
        };
        assert!(o.verdict().is_ok());
        let text = o.render();
        assert!(text.contains("survived byte-exact, resumed once"), "{text}");
        assert!(text.contains("failed at 3.0 s: connection reset"), "{text}");
        assert!(text.contains("plain TCP did not"), "{text}");
        o.ti.1.sha = "c".into();
        assert!(o.verdict().is_err());
        o.ti.1.sha = "a".into();
        o.ti.1.eof = false;
        assert!(o.verdict().is_err());
        o.ti.1.eof = true;
        o.seen.mode = Some("legacy".into());
        assert!(o.verdict().is_err());
        o.seen.mode = Some("resilient".into());
        assert!(o.verdict().is_ok());
        // A TI-flow that never resumed shows nothing.
        o.seen.resumes = 0;
        assert!(o.verdict().is_err());
        o.seen.resumes = 1;
        // Nor does a run where plain TCP survived.
        o.plain = (end(10, "a", false, None), end(10, "a", true, None));
        assert!(o.verdict().is_err());
        assert!(o.render().contains("showed nothing"), "{}", o.render());
    }
}
