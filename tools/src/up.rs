//! `tiflow up`: a TI-flow stack on a TUN device of a live host, forwarding
//! ports both ways so unmodified programs get resilient connections.
//!
//! Owns the TUN device's kernel-side setup (address, MTU, link state, and on
//! request NAT rules), the [`Runtime`] on the device, the kernel listeners of
//! `--forward`, the stack listeners of `--serve`, two copy threads per carried
//! connection, the control socket's handler, and the orderly shutdown on
//! SIGINT/SIGTERM. Everything it changed on the host is reverted at exit
//! ([`host::Undo`]); the TUN device disappears with the process.
//!
//! It never makes a protocol decision (the stack does), and never leaves a
//! loop unbounded by the stop flag: every blocking call it makes has a timeout
//! of at most 200 ms, except writes into a TI-flow, which end when the flow
//! fails or is aborted, or the stack stops.
//!
//! Ends pass through as what they are (DESIGN §4 "Abort"; see `relay`): FIN
//! for FIN, and a reset for a reset, a failed write to the local program,
//! an aborted or a lost flow; never a clean end of stream for a
//! conversation that did not end.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Args;
use smoltcp::phy::Device;
use ti_stack::device::Wait;
use ti_stack::device::pcap_tap::PcapTap;
use ti_stack::device::tun::TunDevice;
use ti_stack::{
    Mode, Resources, Runtime, StackConfig, StreamError, StreamId, StreamInfo, StreamMode, TiStream,
};
use tifid::handshake::LostCause;
use tracing::{debug, info, warn};

use crate::control::{
    self, ControlError, ControlServer, FlowStatus, Reply, Request, ResourceStatus, StatusReport,
};
use crate::host::{self, CommandError, Ipv4Cidr, MissingTools, PrivilegeError, Undo};

/// Longest a copy or accept loop blocks before it looks at the stop flag.
const TICK: Duration = Duration::from_millis(200);
/// Copy buffer size.
const COPY_BUF: usize = 64 * 1024;
/// At shutdown, how long connections get to pass their last bytes and FINs.
const GRACE: Duration = Duration::from_secs(3);
/// How often `tiflow up` looks whether its streams have all gone, to return
/// freed memory to the system.
const TRIM_EVERY: Duration = Duration::from_secs(2);
/// How long a `--serve` connection to its local target may take.
const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Help shown after `tiflow up`'s options.
pub const UP_HELP: &str = "\
Addressing:
  The stack and the kernel each have an address on the TUN device's subnet.
  --address 10.0.2.1/24 is the stack's: TI-flows leave from it and arrive at it.
  The kernel side of the TUN takes the highest host address of that subnet
  (10.0.2.254 here; --kernel-address to choose) and is the stack's gateway: the
  kernel routes the stack's packets to its peers with its own routing table
  (tiflow up turns net.ipv4.ip_forward on while it runs). Peers must be able to
  answer the stack's address: route that subnet to this host, or use
  --masquerade (flows we open leave with this host's address) and --expose
  (a port of this host is forwarded to a --serve port of the stack).

Example (ssh through TI-flows; server host 192.0.2.10):
  server# tiflow up --address 10.0.2.1/24 --serve 22=127.0.0.1:22 --expose 2222=22
  client# tiflow up --address 10.0.1.1/24 --masquerade --forward 127.0.0.1:2222=192.0.2.10:2222
  client$ ssh -p 2222 user@127.0.0.1
  client# tiflow status; tiflow fail --all

Exit codes:
  0  stopped cleanly (SIGINT or SIGTERM; a second one exits at once)
  1  runtime error (no CAP_NET_ADMIN, TUN name taken, port in use, missing
     command, control socket in use)
  2  usage error (bad arguments)";

/// A `--forward LISTEN=REMOTE` rule: kernel TCP accepted on `listen` is
/// carried as a TI-flow to `remote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// Kernel address to listen on.
    pub listen: SocketAddrV4,
    /// The remote end, reached through the stack.
    pub remote: SocketAddrV4,
}

impl FromStr for Forward {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (listen, remote) = s.split_once('=').ok_or_else(|| {
            format!("{s:?} is not LISTEN=REMOTE (like 127.0.0.1:2222=10.0.2.2:22)")
        })?;
        let listen = endpoint(listen, "LISTEN")?;
        let remote: SocketAddrV4 = remote
            .parse()
            .map_err(|_| format!("REMOTE {remote:?} is not IPV4:PORT (like 10.0.2.2:22)"))?;
        if remote.port() == 0 || remote.ip().is_unspecified() {
            return Err(format!("REMOTE {remote} needs an address and a port"));
        }
        Ok(Forward { listen, remote })
    }
}

/// A `--serve PORT=TARGET` rule: TI-flows (or plain TCP) arriving at the
/// stack's `port` are connected to `target` with kernel TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Serve {
    /// The stack's port.
    pub port: u16,
    /// The local program to connect to.
    pub target: SocketAddrV4,
}

impl FromStr for Serve {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (port, target) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not PORT=TARGET (like 22=127.0.0.1:22)"))?;
        let port = port_number(port, "PORT")?;
        let target = endpoint(target, "TARGET")?;
        Ok(Serve { port, target })
    }
}

/// An `--expose HOSTPORT[=PORT]` rule: TCP arriving at this host's
/// `host_port` (not through the TUN) is sent to the stack's `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expose {
    /// The host's port.
    pub host_port: u16,
    /// The stack's port.
    pub port: u16,
}

impl FromStr for Expose {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, stack) = s.split_once('=').unwrap_or((s, s));
        Ok(Expose {
            host_port: port_number(host, "HOSTPORT")?,
            port: port_number(stack, "PORT")?,
        })
    }
}

fn port_number(s: &str, what: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{what} {s:?} is not a port number (1-65535)")),
    }
}

/// `IP:PORT`, or `PORT` alone for 127.0.0.1.
fn endpoint(s: &str, what: &str) -> Result<SocketAddrV4, String> {
    if let Ok(port) = s.parse::<u16>() {
        return port_number(s, what).map(|_| SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    }
    let addr: SocketAddrV4 = s
        .parse()
        .map_err(|_| format!("{what} {s:?} is not IPV4:PORT or PORT"))?;
    if addr.port() == 0 {
        return Err(format!("{what} {s:?} needs a port other than 0"));
    }
    Ok(addr)
}

/// Parses `500ms`, `3s`, `2m` or a bare number of seconds; zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (like 500ms, 3s, 2m)");
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    if !value.is_finite() || value <= 0.0 || value * scale > 86_400.0 * 365.0 {
        return Err(format!("{s:?} must be more than zero (and under a year)"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

/// Checks an option kind: 2-255, but not one TCP itself uses in handshakes.
pub fn parse_option_kind(s: &str) -> Result<u8, String> {
    let kind: u8 = s
        .parse()
        .map_err(|_| format!("{s:?} is not an option kind (2-255)"))?;
    let taken = match kind {
        0 => Some("end of option list"),
        1 => Some("no-operation"),
        2 => Some("maximum segment size"),
        3 => Some("window scale"),
        4 => Some("SACK permitted"),
        5 => Some("SACK"),
        8 => Some("timestamps"),
        _ => None,
    };
    match taken {
        Some(name) => Err(format!(
            "kind {kind} is TCP's {name} option; choose another in 2-255 (default 253)"
        )),
        None => Ok(kind),
    }
}

/// Checks an interface name: 1-15 letters, digits, `-`, `_` or `.`.
pub fn parse_tun_name(s: &str) -> Result<String, String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if s.is_empty() || s.len() > 15 || !s.chars().all(valid) || s == "." || s == ".." {
        return Err(format!(
            "{s:?} is not an interface name (1-15 letters, digits, '-', '_' or '.')"
        ));
    }
    Ok(s.to_owned())
}

fn parse_stack_address(s: &str) -> Result<Ipv4Cidr, String> {
    let cidr: Ipv4Cidr = s.parse()?;
    if cidr.prefix > 30 {
        return Err(format!(
            "/{} leaves no room for the kernel side of the TUN: use /30 or shorter",
            cidr.prefix
        ));
    }
    if !cidr.is_host(cidr.addr) {
        return Err(format!(
            "{} is the network or broadcast address of {}/{}",
            cidr.addr,
            cidr.network(),
            cidr.prefix
        ));
    }
    Ok(cidr)
}

/// Arguments of `tiflow up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Name of the TUN device to create.
    #[arg(long, value_name = "NAME", default_value = "tiflow0", value_parser = parse_tun_name)]
    pub tun: String,

    /// The stack's address and prefix on the TUN device (see Addressing below).
    #[arg(long, value_name = "ADDR/PREFIX", default_value = "10.0.2.1/24", value_parser = parse_stack_address)]
    pub address: Ipv4Cidr,

    /// The kernel side of the TUN device [default: the highest host address
    /// of --address's subnet].
    #[arg(long, value_name = "ADDR")]
    pub kernel_address: Option<Ipv4Addr>,

    /// MTU of the TUN device (kernel and stack side).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u16).range(576..=9000))]
    pub mtu: u16,

    /// Carry kernel TCP connections accepted at LISTEN (IP:PORT, or PORT for
    /// 127.0.0.1) to REMOTE (IPV4:PORT) as TI-flows. Repeatable.
    #[arg(long = "forward", value_name = "LISTEN=REMOTE")]
    pub forwards: Vec<Forward>,

    /// Accept TI-flows (and plain TCP) on the stack's PORT and connect each
    /// to TARGET (IP:PORT, or PORT for 127.0.0.1) with kernel TCP. Repeatable.
    #[arg(long = "serve", value_name = "PORT=TARGET")]
    pub serves: Vec<Serve>,

    /// Masquerade the stack's outgoing connections with this host's address
    /// (iptables NAT), so peers need no route back to --address.
    #[arg(long)]
    pub masquerade: bool,

    /// Forward TCP arriving at this host's HOSTPORT to the stack's PORT
    /// (iptables DNAT; PORT defaults to HOSTPORT). Repeatable.
    #[arg(long = "expose", value_name = "HOSTPORT[=PORT]")]
    pub exposes: Vec<Expose>,

    /// Data outstanding without acknowledgement this long means the TCP
    /// connection died (the flow resumes).
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub stall_timeout: Duration,

    /// How long a detached flow waits for (or keeps trying) a resume.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub resume_timeout: Duration,

    /// A plain TCP connection (a peer or path without TI-flows) whose sent
    /// data stays unacknowledged this long fails: the local program's
    /// connection is reset (like TCP_USER_TIMEOUT).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub user_timeout: Duration,

    /// Keepalive interval on idle TI connections.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub keepalive: Duration,

    /// Latency tuning: 1 ns timer slack and polling instead of sleeping
    /// through the last 100 us before a timer (tens of microseconds less
    /// per timed event, more CPU while timers are near).
    #[arg(long)]
    pub low_latency: bool,

    /// Accept resumes from a new peer address (the default).
    #[arg(long, overrides_with = "no_migration")]
    pub allow_migration: bool,

    /// Refuse resumes from a peer address other than the flow's.
    #[arg(long, overrides_with = "allow_migration")]
    pub no_migration: bool,

    /// TCP option kind of the flow option (2-255, not one TCP uses).
    #[arg(long, value_name = "N", default_value = "253", value_parser = parse_option_kind)]
    pub option_kind: u8,

    /// Plain TCP only: neither offer nor accept TI-flows.
    #[arg(long)]
    pub no_ti: bool,

    /// Record every packet of the TUN device to this pcap file.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,

    /// The control socket for `tiflow status` and `tiflow fail`
    /// [default: /run/tiflow/NAME.sock, NAME from --tun].
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Stop when standard input closes (for a parent process such as `tiflow demo`).
    #[arg(long, hide = true)]
    pub exit_on_stdin_close: bool,
}

impl UpArgs {
    /// The kernel side of the TUN device.
    pub fn kernel_address(&self) -> Ipv4Addr {
        self.kernel_address
            .unwrap_or_else(|| match self.address.last_host() {
                Some(last) if last != self.address.addr => last,
                _ => self.address.first_host().unwrap_or(self.address.addr),
            })
    }

    /// The control socket path.
    pub fn control_path(&self) -> PathBuf {
        self.control
            .clone()
            .unwrap_or_else(|| control::default_path(&self.tun))
    }

    /// Checks what clap cannot see one argument at a time. The message is
    /// for a usage error (exit code 2).
    pub fn validate(&self) -> Result<(), String> {
        let kernel = self.kernel_address();
        if kernel == self.address.addr {
            return Err(format!(
                "--kernel-address {kernel} is the stack's own address (--address)"
            ));
        }
        if !self.address.is_host(kernel) {
            return Err(format!(
                "--kernel-address {kernel} is not a host address of {}/{}",
                self.address.network(),
                self.address.prefix
            ));
        }
        let mut ports = std::collections::HashSet::new();
        for s in &self.serves {
            if !ports.insert(s.port) {
                return Err(format!("--serve port {} given twice", s.port));
            }
        }
        let mut listens = std::collections::HashSet::new();
        for f in &self.forwards {
            if !listens.insert(f.listen) {
                return Err(format!("--forward listens on {} twice", f.listen));
            }
            if *f.remote.ip() == self.address.addr {
                return Err(format!(
                    "--forward to {} would reach the stack itself; give the peer's address",
                    f.remote
                ));
            }
        }
        let mut hosts = std::collections::HashSet::new();
        for e in &self.exposes {
            if !hosts.insert(e.host_port) {
                return Err(format!("--expose host port {} given twice", e.host_port));
            }
            if !ports.contains(&e.port) {
                return Err(format!(
                    "--expose {}={} points at stack port {}, which no --serve listens on",
                    e.host_port, e.port, e.port
                ));
            }
        }
        Ok(())
    }

    /// The stack's settings.
    pub fn stack_config(&self) -> StackConfig {
        let mut config = StackConfig::new(self.address.addr);
        config.prefix_len = self.address.prefix;
        config.gateway = Some(self.kernel_address());
        config.ti_enabled = !self.no_ti;
        config.option_kind = self.option_kind;
        config.stall_timeout = self.stall_timeout;
        config.resume_timeout = self.resume_timeout;
        config.keepalive = self.keepalive;
        config.user_timeout = self.user_timeout;
        config.allow_migration = !self.no_migration;
        config.low_latency = self.low_latency;
        config
    }
}

/// Why `tiflow up` failed.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// Arguments that do not fit together.
    #[error("{0}")]
    Usage(String),
    /// Not privileged.
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
    /// A command it needs is not installed.
    #[error(transparent)]
    MissingTools(#[from] MissingTools),
    /// A `--forward` address cannot be listened on.
    #[error("cannot listen on {addr} for --forward: {source}{}", port_hint(.source))]
    Listen {
        /// The address.
        addr: SocketAddrV4,
        /// Why.
        source: io::Error,
    },
    /// The control socket.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The TUN device name is in use.
    #[error(
        "TUN device name {name:?} is taken: {detail} (another `tiflow up` running? \
         choose another name with --tun)"
    )]
    TunTaken {
        /// The name.
        name: String,
        /// What holds it.
        detail: String,
    },
    /// The TUN device could not be created.
    #[error("cannot create TUN device {name:?}: {source}")]
    Tun {
        /// The name.
        name: String,
        /// Why.
        source: io::Error,
    },
    /// A configuration command failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// IPv4 forwarding could not be turned on.
    #[error("cannot turn on IPv4 forwarding (net.ipv4.ip_forward): {0}")]
    Forwarding(io::Error),
    /// The capture file.
    #[error("cannot create capture file {}: {source}", path.display())]
    Pcap {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The stack could not start.
    #[error("cannot start the stack: {0}")]
    Start(io::Error),
    /// A `--serve` port could not be listened on.
    #[error("cannot listen on stack port {port} for --serve: {source}")]
    Serve {
        /// The port.
        port: u16,
        /// Why.
        source: StreamError,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install SIGINT/SIGTERM handlers: {0}")]
    Signals(io::Error),
}

fn port_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::AddrInUse => " (another program listens there: pick another port)",
        io::ErrorKind::AddrNotAvailable => " (no interface of this host has that address)",
        io::ErrorKind::PermissionDenied => " (ports below 1024 need root)",
        _ => "",
    }
}

/// What a carried connection is, for `tiflow status`.
struct ConnRecord {
    via: String,
    stream: Option<StreamId>,
    /// A handle to the kernel side, to close it at shutdown.
    kernel: Option<TcpStream>,
    started: Instant,
}

/// The carried connections, by number.
#[derive(Default)]
struct Registry {
    next: u64,
    conns: BTreeMap<u64, ConnRecord>,
    /// Resume attempts of the streams whose relay ended.
    ended_attempts: u64,
    /// Failures detected on the streams whose relay ended.
    ended_failures: u64,
}

impl Registry {
    /// Sums a counter over the streams in `infos` that a relay still
    /// carries.
    fn live_sum(
        &self,
        infos: &[StreamInfo],
        counter: impl Fn(&ti_stack::StreamStats) -> u64,
    ) -> u64 {
        infos
            .iter()
            .filter(|i| self.conns.values().any(|r| r.stream == Some(i.id)))
            .map(|i| counter(&i.stats))
            .sum()
    }
}

#[derive(Clone, Default)]
struct Conns(Arc<Mutex<Registry>>);

impl Conns {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, via: String, kernel: Option<TcpStream>) -> u64 {
        let mut reg = self.lock();
        reg.next += 1;
        let n = reg.next;
        reg.conns.insert(
            n,
            ConnRecord {
                via,
                stream: None,
                kernel,
                started: Instant::now(),
            },
        );
        n
    }

    fn set_stream(&self, n: u64, stream: Option<StreamId>, kernel: Option<TcpStream>) {
        if let Some(rec) = self.lock().conns.get_mut(&n) {
            rec.stream = stream;
            if kernel.is_some() {
                rec.kernel = kernel;
            }
        }
    }

    fn remove(&self, n: u64) {
        self.lock().conns.remove(&n);
    }

    /// Removes a connection whose relay ended, keeping its stream's resume
    /// attempts for the total (under one lock: counted once, never lost).
    fn finish(&self, n: u64, last: Option<StreamInfo>) {
        let mut reg = self.lock();
        reg.conns.remove(&n);
        reg.ended_attempts += last.map_or(0, |i| i.stats.resume_attempts);
        reg.ended_failures += last.map_or(0, |i| i.stats.failures);
    }

    /// Resume attempts since start: the ended relays' and those of the
    /// streams in `infos` that a relay still carries.
    fn resume_attempts(&self, infos: &[StreamInfo]) -> u64 {
        let reg = self.lock();
        reg.ended_attempts + reg.live_sum(infos, |s| s.resume_attempts)
    }

    /// Failures detected since start, as [`Self::resume_attempts`] counts.
    fn failures(&self, infos: &[StreamInfo]) -> u64 {
        let reg = self.lock();
        reg.ended_failures + reg.live_sum(infos, |s| s.failures)
    }

    fn is_empty(&self) -> bool {
        self.lock().conns.is_empty()
    }

    /// Closes every kernel side (at shutdown), so copy loops end.
    fn close_kernel_sides(&self) {
        for rec in self.lock().conns.values() {
            if let Some(k) = &rec.kernel {
                let _ = k.shutdown(Shutdown::Read);
            }
        }
    }

    /// What the stream is for, and its age in seconds.
    fn via_of(&self, id: StreamId) -> Option<(String, f64)> {
        self.lock()
            .conns
            .values()
            .find(|r| r.stream == Some(id))
            .map(|r| (r.via.clone(), r.started.elapsed().as_secs_f64()))
    }
}

/// A device whose capture (if any) can be flushed.
trait Flush {
    fn flush_capture(&self);
}

impl Flush for TunDevice {
    fn flush_capture(&self) {}
}

impl<D: Device> Flush for PcapTap<D> {
    fn flush_capture(&self) {
        if let Err(e) = self.flush() {
            warn!(error = %e, "cannot flush the capture file");
        }
    }
}

/// Installs SIGINT and SIGTERM handlers that set `stop`; a second signal
/// exits at once with status 1.
pub fn stop_on_signals(stop: &Arc<AtomicBool>) -> io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone())?;
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard limit: every carried
/// connection holds a local socket (a login shell's soft limit is often
/// 1024, which stops `tiflow up` at a few hundred connections). Says what
/// it did; a failure leaves the limit as it was, with a warning.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        return; // Already unlimited.
    };
    if hard.is_some_and(|h| h <= soft) {
        info!(open_files = soft, "open-file limit");
        return;
    }
    let raised = rustix::process::Rlimit {
        current: hard,
        maximum: hard,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => info!(
            from = soft,
            to = hard.map_or_else(|| "unlimited".to_owned(), |h| h.to_string()),
            "raised the open-file limit (soft to hard)"
        ),
        Err(e) => warn!(open_files = soft, error = %e, "could not raise the open-file limit"),
    }
}

/// `tiflow up`: runs until SIGINT or SIGTERM (or stdin closing, when asked).
pub fn run(args: &UpArgs) -> Result<(), UpError> {
    args.validate().map_err(UpError::Usage)?;
    host::check_net_admin()?;
    let mut tools = vec![host::IP];
    if args.masquerade || !args.exposes.is_empty() {
        tools.push(host::IPTABLES);
    }
    host::require(&tools)?;

    raise_open_file_limit();
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(&stop).map_err(UpError::Signals)?;
    if args.exit_on_stdin_close {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("stdin-watch".into())
            .spawn(move || {
                let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
                info!("standard input closed: stopping");
                stop.store(true, Ordering::Release);
            })
            .map_err(UpError::Start)?;
    }

    // Everything that can fail for a reason the user controls, before the
    // host is changed: ports, the control socket, the TUN name.
    let mut listeners = Vec::new();
    for f in &args.forwards {
        let listener = TcpListener::bind(f.listen).map_err(|source| UpError::Listen {
            addr: f.listen,
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| UpError::Listen {
                addr: f.listen,
                source,
            })?;
        listeners.push((*f, listener));
    }
    let control = ControlServer::bind(&args.control_path())?;
    let mut undo = Undo::default();
    let tun = open_tun(args)?;
    configure_host(args, &mut undo)?;

    let setup = Setup {
        args: args.clone(),
        stop,
        listeners,
        control,
        started: Instant::now(),
    };
    let result = match &args.pcap {
        Some(path) => {
            let tap = PcapTap::create(tun, path).map_err(|source| UpError::Pcap {
                path: path.clone(),
                source,
            })?;
            serve(setup, tap)
        }
        None => serve(setup, tun),
    };
    drop(undo);
    result
}

fn open_tun(args: &UpArgs) -> Result<TunDevice, UpError> {
    let name = &args.tun;
    if std::path::Path::new("/sys/class/net").join(name).exists() {
        return Err(UpError::TunTaken {
            name: name.clone(),
            detail: "an interface of that name exists".into(),
        });
    }
    let tun = TunDevice::open(name).map_err(|source| {
        if source.kind() == io::ErrorKind::ResourceBusy {
            UpError::TunTaken {
                name: name.clone(),
                detail: source.to_string(),
            }
        } else {
            UpError::Tun {
                name: name.clone(),
                source,
            }
        }
    })?;
    if tun.name() != name {
        return Err(UpError::TunTaken {
            name: name.clone(),
            detail: format!("the kernel named it {:?}", tun.name()),
        });
    }
    Ok(tun.with_mtu(usize::from(args.mtu)))
}

/// Addresses, MTU and link state of the TUN's kernel side, forwarding, NAT.
fn configure_host(args: &UpArgs, undo: &mut Undo) -> Result<(), UpError> {
    let tun = args.tun.as_str();
    let kernel = format!("{}/{}", args.kernel_address(), args.address.prefix);
    let mtu = args.mtu.to_string();
    host::run("ip", &["link", "set", "dev", tun, "mtu", &mtu])?;
    host::run("ip", &["addr", "add", &kernel, "dev", tun])?;
    host::run("ip", &["link", "set", "dev", tun, "up"])?;
    // The stack speaks IPv4 only: keep the kernel's IPv6 chatter off the device.
    let _ = host::set_sysctl(&format!("net.ipv6.conf.{tun}.disable_ipv6"), "1");
    let forwarding = host::sysctl("net.ipv4.ip_forward").map_err(UpError::Forwarding)?;
    if forwarding != "1" {
        host::set_sysctl("net.ipv4.ip_forward", "1").map_err(UpError::Forwarding)?;
        undo.sysctl("net.ipv4.ip_forward", &forwarding);
        info!("IPv4 forwarding turned on (restored at exit)");
    }
    let mut rule = |table: &str, chain: &str, spec: Vec<String>| -> Result<(), UpError> {
        let spec: Vec<&str> = spec.iter().map(String::as_str).collect();
        let mut add = vec!["-w", "-t", table, "-I", chain];
        add.extend(&spec);
        host::run("iptables", &add)?;
        let mut del = vec!["-w", "-t", table, "-D", chain];
        del.extend(&spec);
        undo.run("iptables", &del);
        Ok(())
    };
    let net = format!("{}/{}", args.address.network(), args.address.prefix);
    if args.masquerade || !args.exposes.is_empty() {
        // Hosts whose FORWARD policy is DROP (Docker's) would drop the TUN's traffic.
        rule("filter", "FORWARD", owned(&["-i", tun, "-j", "ACCEPT"]))?;
        rule("filter", "FORWARD", owned(&["-o", tun, "-j", "ACCEPT"]))?;
    }
    if args.masquerade {
        rule(
            "nat",
            "POSTROUTING",
            owned(&["-s", &net, "!", "-o", tun, "-j", "MASQUERADE"]),
        )?;
    }
    for e in &args.exposes {
        let to = format!("{}:{}", args.address.addr, e.port);
        let dport = e.host_port.to_string();
        rule(
            "nat",
            "PREROUTING",
            owned(&[
                "!",
                "-i",
                tun,
                "-p",
                "tcp",
                "--dport",
                &dport,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ]),
        )?;
    }
    Ok(())
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

struct Setup {
    args: UpArgs,
    stop: Arc<AtomicBool>,
    listeners: Vec<(Forward, TcpListener)>,
    control: ControlServer,
    started: Instant,
}

fn serve<D>(setup: Setup, device: D) -> Result<(), UpError>
where
    D: Device + Wait + Flush + Send + 'static,
{
    let Setup {
        args,
        stop,
        listeners,
        control,
        started,
    } = setup;
    let runtime = Arc::new(Runtime::start(args.stack_config(), device).map_err(UpError::Start)?);
    let conns = Conns::default();
    let mut acceptors: Vec<JoinHandle<()>> = Vec::new();
    let mut ti_listeners = Vec::new();
    for s in &args.serves {
        let listener = runtime.listen(s.port).map_err(|source| UpError::Serve {
            port: s.port,
            source,
        })?;
        ti_listeners.push((*s, listener));
    }

    println!(
        "tiflow up: TUN {}, stack {}, kernel side {}, MTU {}, {}",
        args.tun,
        args.address,
        args.kernel_address(),
        args.mtu,
        if args.no_ti {
            "plain TCP (--no-ti)".to_owned()
        } else {
            format!("TI-flows on (option kind {})", args.option_kind)
        }
    );
    for (f, _) in &listeners {
        println!("  forward {} -> {}", f.listen, f.remote);
    }
    for (s, _) in &ti_listeners {
        println!("  serve   {}:{} -> {}", args.address.addr, s.port, s.target);
    }
    for e in &args.exposes {
        println!(
            "  expose  host port {} -> stack port {}",
            e.host_port, e.port
        );
    }
    if args.masquerade {
        println!("  masquerade {} behind this host's address", args.address);
    }
    if let Some(p) = &args.pcap {
        println!("  pcap    {}", p.display());
    }
    println!("  control {}", control.path().display());
    println!("tiflow up: ready (Ctrl-C to stop)");

    for (f, listener) in listeners {
        let (runtime, conns, stop) = (runtime.clone(), conns.clone(), stop.clone());
        acceptors.push(spawn("forward-accept", move || {
            accept_forwards(f, listener, &runtime, &conns, &stop);
        })?);
    }
    for (s, listener) in ti_listeners {
        let (conns, stop) = (conns.clone(), stop.clone());
        acceptors.push(spawn("serve-accept", move || {
            accept_serves(s, &listener, &conns, &stop);
        })?);
    }

    let trimmer = {
        let (runtime, stop) = (runtime.clone(), stop.clone());
        spawn("memory-trim", move || {
            release_memory_when_idle(&runtime, &stop)
        })?
    };
    control.serve(&stop, |req| handle(req, &args, &runtime, &conns, started));

    info!("stopping");
    for a in acceptors {
        let _ = a.join();
    }
    let _ = trimmer.join();
    conns.close_kernel_sides();
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline && !(conns.is_empty() && runtime.stream_infos().is_empty()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    runtime.with_stack(|stack, _| stack.device().flush_capture());
    match Arc::try_unwrap(runtime) {
        Ok(runtime) => runtime.stop(),
        Err(_) => warn!("connections still busy at exit; stopping anyway"),
    }
    drop(control);
    println!("tiflow up: stopped");
    Ok(())
}

/// Hands freed memory back to the system each time the stack's streams
/// have all gone (checked every [`TRIM_EVERY`]): the buffers of a burst of
/// connections, freed by many threads, otherwise stay resident in the
/// allocator's arenas.
fn release_memory_when_idle<D: Device + Wait + Send + 'static>(
    runtime: &Runtime<D>,
    stop: &AtomicBool,
) {
    let mut busy_since_trim = false;
    let mut next = Instant::now() + TRIM_EVERY;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + TRIM_EVERY;
        let streams = runtime.resources().streams;
        if streams > 0 {
            busy_since_trim = true;
        } else if busy_since_trim {
            busy_since_trim = false;
            let released = ti_stack::memory::release_free_memory();
            debug!(released, "idle: freed memory returned to the system");
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, UpError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(UpError::Start)
}

fn mode_name(mode: StreamMode) -> (&'static str, Option<String>) {
    match mode {
        StreamMode::Connecting => ("connecting", None),
        StreamMode::Known(Mode::Legacy) => ("legacy", None),
        StreamMode::Known(Mode::Resilient { tifid }) => ("resilient", Some(tifid.to_string())),
    }
}

fn handle<D: Device + Wait + Send + 'static>(
    req: Request,
    args: &UpArgs,
    runtime: &Runtime<D>,
    conns: &Conns,
    started: Instant,
) -> Reply {
    let infos = runtime.stream_infos();
    match req {
        Request::Status => Reply::Status(StatusReport {
            tun: args.tun.clone(),
            stack_address: args.address.to_string(),
            kernel_address: args.kernel_address().to_string(),
            ti_enabled: !args.no_ti,
            option_kind: args.option_kind,
            uptime_s: started.elapsed().as_secs_f64(),
            flows: infos.iter().map(|i| flow_status(i, conns)).collect(),
            resume_attempts: conns.resume_attempts(&infos),
            failures: conns.failures(&infos),
            resources: resource_status(runtime.resources()),
        }),
        Request::Fail { tifid } => {
            let wanted = match tifid.as_deref().map(control::parse_tifid) {
                None => None,
                Some(Ok(v)) => Some(v),
                Some(Err(message)) => return Reply::Error { message },
            };
            let targets: Vec<(StreamId, String)> = infos
                .iter()
                .filter_map(|i| match i.mode {
                    StreamMode::Known(Mode::Resilient { tifid }) => Some((i.id, tifid)),
                    _ => None,
                })
                .filter(|(_, t)| wanted.is_none_or(|w| t.value() == w))
                .map(|(id, t)| (id, t.to_string()))
                .collect();
            if let (Some(w), true) = (wanted, targets.is_empty()) {
                return Reply::Error {
                    message: format!("no TI-flow {w:012x} here (`tiflow status` lists them)"),
                };
            }
            let mut failed = Vec::new();
            for (id, t) in targets {
                match runtime.with_stack(|stack, _| stack.fail_transport(id)) {
                    Ok(()) => {
                        info!(tifid = %t, "transport abandoned on request");
                        failed.push(t);
                    }
                    Err(e) => debug!(tifid = %t, error = %e, "cannot fail"),
                }
            }
            Reply::Failed { tifids: failed }
        }
    }
}

fn resource_status(r: Resources) -> ResourceStatus {
    ResourceStatus {
        sockets: r.sockets,
        half_open: r.half_open,
        accept_queued: r.accept_queued,
        streams: r.streams,
        flows: r.flows,
        syns_dropped_backlog: r.syns_dropped_backlog,
        syns_dropped_overload: r.syns_dropped_overload,
        half_open_evicted: r.half_open_evicted,
        half_open_expired: r.half_open_expired,
    }
}

fn flow_status(info: &StreamInfo, conns: &Conns) -> FlowStatus {
    let (mode, tifid) = mode_name(info.mode);
    let (via, age_s) = conns
        .via_of(info.id)
        .unwrap_or_else(|| ("closing".into(), 0.0));
    FlowStatus {
        tifid,
        mode: mode.to_owned(),
        peer: info.peer.to_string(),
        via,
        sent: info.stats.bytes_written,
        received: info.stats.bytes_received,
        resumes: info.stats.resumes,
        resume_attempts: info.stats.resume_attempts,
        recoveries: info.stats.recoveries,
        failures: info.stats.failures,
        last_downtime_ms: info.stats.last_downtime.map(|d| d.as_secs_f64() * 1000.0),
        last_detect_ms: info.stats.last_detect.map(|d| d.as_secs_f64() * 1000.0),
        last_gap_ms: info.stats.last_gap.map(|d| d.as_secs_f64() * 1000.0),
        resent: info.stats.resent_bytes,
        attached: info.attached,
        age_s,
    }
}

fn accept_forwards<D: Device + Wait + Send + 'static>(
    forward: Forward,
    listener: TcpListener,
    runtime: &Arc<Runtime<D>>,
    conns: &Conns,
    stop: &Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Acquire) {
        let (kernel, client) = match listener.accept() {
            Ok(pair) => pair,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => {
                warn!(error = %e, listen = %forward.listen, "accept failed");
                std::thread::sleep(TICK);
                continue;
            }
        };
        let via = format!("forward {} <- {client}", forward.listen);
        let n = conns.add(via.clone(), kernel.try_clone().ok());
        let (runtime, conns, stop) = (runtime.clone(), conns.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name("forward".into())
            .spawn(move || {
                forward_one(forward, kernel, client, runtime, &conns, n, &stop);
                conns.remove(n);
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a connection thread");
        }
    }
}

fn forward_one<D: Device + Wait + Send + 'static>(
    forward: Forward,
    kernel: TcpStream,
    client: SocketAddr,
    runtime: Arc<Runtime<D>>,
    conns: &Conns,
    n: u64,
    stop: &Arc<AtomicBool>,
) {
    info!(%client, remote = %forward.remote, "forwarding a connection");
    let result = runtime.connect(forward.remote);
    drop(runtime);
    let ti = match result {
        Ok(ti) => ti,
        Err(e) => {
            warn!(%client, remote = %forward.remote, error = %e, "cannot reach the remote: resetting local connection");
            reset_on_close(&kernel);
            return;
        }
    };
    let mode = ti.mode();
    match mode {
        Mode::Resilient { tifid } => info!(%tifid, remote = %forward.remote, "TI-flow open"),
        Mode::Legacy => info!(remote = %forward.remote, "peer without TI: plain TCP"),
    }
    conns.set_stream(n, ti.info().map(|i| i.id), None);
    let last = relay(kernel, ti, stop);
    conns.finish(n, last);
}

fn accept_serves<D: Device + Wait + Send + 'static>(
    serve: Serve,
    listener: &ti_stack::TiListener<D>,
    conns: &Conns,
    stop: &Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Acquire) {
        let ti = match listener.accept_timeout(Some(TICK)) {
            Ok(Some(ti)) => ti,
            Ok(None) => continue,
            Err(e) => {
                warn!(port = serve.port, error = %e, "stack accept failed");
                return;
            }
        };
        let peer = ti.peer_addr();
        let via = format!("serve {} -> {}", serve.port, serve.target);
        let n = conns.add(via, None);
        conns.set_stream(n, ti.info().map(|i| i.id), None);
        let (conns, stop) = (conns.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name("serve".into())
            .spawn(move || {
                match ti.mode() {
                    Mode::Resilient { tifid } => info!(%tifid, ?peer, "TI-flow accepted"),
                    Mode::Legacy => info!(?peer, "plain TCP connection accepted"),
                }
                match TcpStream::connect_timeout(&serve.target.into(), TARGET_CONNECT_TIMEOUT) {
                    Ok(kernel) => {
                        conns.set_stream(n, ti.info().map(|i| i.id), kernel.try_clone().ok());
                        let last = relay(kernel, ti, &stop);
                        conns.finish(n, last);
                    }
                    Err(e) => {
                        warn!(target = %serve.target, error = %e, "cannot reach the local target: aborting flow");
                        if let Err(e) = ti.abort() {
                            debug!(error = %e, "cannot abort the flow");
                        }
                    }
                }
                conns.remove(n);
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a connection thread");
        }
    }
}

/// Makes closing `kernel` send a RST (`SO_LINGER` on, zero time): the local
/// program gets a reset, not a clean end of stream.
fn reset_on_close(kernel: &TcpStream) {
    if let Err(e) = rustix::net::sockopt::set_socket_linger(kernel, Some(Duration::ZERO)) {
        warn!(error = %e, "cannot make the local close a reset");
    }
}

/// Copies both ways between the local program's kernel TCP connection and a
/// TI stream until both directions are done, `stop`, or one end breaks
/// (DESIGN §4 "Abort"):
///
/// - an end of stream passes on as one: the local program's FIN as a TI FIN
///   (`shutdown(Write)`), the flow's as a kernel `shutdown(Write)`;
/// - the local program resetting its connection, or a write to it failing,
///   aborts the flow: the peer's program gets a reset;
/// - the flow aborted by its peer or lost (plain TCP: reset or timed out)
///   resets the local program's connection (`SO_LINGER` zero, then close):
///   a conversation that did not end never looks complete.
///
/// Both copy threads end promptly whichever way it ends: they poll a shared
/// flag every [`TICK`], the deciding one wakes a blocked kernel read with
/// `shutdown(Read)` (which sends nothing), and a blocked flow write fails
/// once the stream has failed or was aborted.
///
/// Returns the stream's counters at the end (for the status's totals).
fn relay<D: Device + Wait + Send + 'static>(
    kernel: TcpStream,
    ti: TiStream<D>,
    stop: &AtomicBool,
) -> Option<StreamInfo> {
    let relay = Relay::new(kernel, &ti, stop);
    let (ti_out, watch) = (ti.try_clone(), ti.try_clone());
    std::thread::scope(|s| {
        let back = std::thread::Builder::new()
            .name("ti-to-kernel".into())
            .spawn_scoped(s, || ti_to_kernel(&relay, ti_out));
        match back {
            Ok(_) => kernel_to_ti(&relay, ti),
            Err(e) => {
                warn!(flow = %relay.flow, error = %e, "cannot start a copy thread: aborting flow, resetting local connection");
                let _ = ti.abort();
                relay.reset_local();
            }
        }
    });
    let last = watch.info();
    if let Some(info) = &last {
        info!(
            flow = %relay.flow,
            resumes = info.stats.resumes,
            resume_attempts = info.stats.resume_attempts,
            recoveries = info.stats.recoveries,
            "relay ended"
        );
    }
    last
}

/// What a relayed stream is, for logs: its TIFID (TI-flows) and its peer.
struct FlowLabel {
    tifid: Option<String>,
    peer: Option<SocketAddrV4>,
}

impl std::fmt::Display for FlowLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tifid {
            Some(tifid) => write!(f, "TI-flow {tifid}")?,
            None => write!(f, "plain TCP")?,
        }
        match self.peer {
            Some(peer) => write!(f, " with {peer}"),
            None => Ok(()),
        }
    }
}

/// One carried connection, shared by its two copy threads: the local
/// program's socket, what the flow is, and whether one of them ended it.
struct Relay<'a> {
    /// The local program's connection (both threads use it by reference).
    kernel: TcpStream,
    /// For logs.
    flow: FlowLabel,
    /// Set by the thread that decided an abnormal end (abort or reset).
    ended: AtomicBool,
    /// Set once the flow's end of stream was passed on (our FIN is out).
    fin_sent: AtomicBool,
    /// `tiflow up` is stopping.
    stop: &'a AtomicBool,
}

impl<'a> Relay<'a> {
    fn new<D: Device + Wait>(kernel: TcpStream, ti: &TiStream<D>, stop: &'a AtomicBool) -> Self {
        let _ = kernel.set_read_timeout(Some(TICK));
        let _ = kernel.set_write_timeout(Some(TICK));
        let tifid = match ti.mode() {
            Mode::Resilient { tifid } => Some(tifid.to_string()),
            Mode::Legacy => None,
        };
        Relay {
            kernel,
            flow: FlowLabel {
                tifid,
                peer: ti.peer_addr(),
            },
            ended: AtomicBool::new(false),
            fin_sent: AtomicBool::new(false),
            stop,
        }
    }

    /// Neither stopping nor ended by the other thread.
    fn running(&self) -> bool {
        !self.ended.load(Ordering::Acquire) && !self.stop.load(Ordering::Acquire)
    }

    /// Marks the relay ended; true for the one caller that ended it.
    fn end(&self) -> bool {
        !self.ended.swap(true, Ordering::AcqRel)
    }

    /// The local program finished sending (a kernel read returned 0): a TI
    /// FIN, unless the relay already ended, or the 0 hides a reset whose
    /// error the other thread's write took.
    fn local_finished<D: Device + Wait>(&self, ti: &TiStream<D>) {
        if self.ended.load(Ordering::Acquire) {
            return;
        }
        if self.local_gone() {
            let reset = io::Error::new(io::ErrorKind::ConnectionReset, "local connection reset");
            return self.local_broke(ti, &reset);
        }
        info!(flow = %self.flow, "local program closed its side: FIN on the flow");
        if let Err(e) = ti.shutdown(Shutdown::Write) {
            debug!(flow = %self.flow, error = %e, "cannot shut the flow down for writing");
        }
    }

    /// The flow's peer finished sending: a FIN to the local program.
    fn flow_finished(&self) {
        info!(flow = %self.flow, "flow ended by peer: FIN to the local program");
        self.fin_sent.store(true, Ordering::Release);
        let _ = self.kernel.shutdown(Shutdown::Write);
    }

    /// The local program reset its connection or no longer takes data: the
    /// flow ends at both ends (its peer's program gets a reset).
    fn local_broke<D: Device + Wait>(&self, ti: &TiStream<D>, error: &io::Error) {
        if self.end() {
            info!(flow = %self.flow, %error, "local program reset: aborting flow");
            if let Err(e) = ti.abort() {
                debug!(flow = %self.flow, error = %e, "cannot abort the flow");
            }
        }
        self.wake_kernel_reader();
    }

    /// The flow failed (aborted by its peer, lost, or as plain TCP reset or
    /// timed out): the local program's connection is reset. Our own abort
    /// ([`StreamError::Aborted`]) was handled by whoever aborted.
    fn flow_broke(&self, error: &io::Error) {
        let cause = stream_error(error);
        if cause == Some(StreamError::Aborted) || !self.end() {
            self.wake_kernel_reader();
            return;
        }
        if cause == Some(StreamError::FlowLost(LostCause::PeerAborted)) {
            info!(flow = %self.flow, "flow aborted by peer: resetting local connection");
        } else {
            info!(flow = %self.flow, %error, "flow failed: resetting local connection");
        }
        self.reset_local();
        self.wake_kernel_reader();
    }

    /// Makes the closing of the local connection a reset (`SO_LINGER` on
    /// with zero time): the RST leaves when its last descriptor closes,
    /// right after the relay.
    fn reset_local(&self) {
        reset_on_close(&self.kernel);
    }

    /// Ends a kernel read blocked in the other thread. `shutdown(Read)`
    /// puts nothing on the wire.
    fn wake_kernel_reader(&self) {
        let _ = self.kernel.shutdown(Shutdown::Read);
    }

    /// A reset of the local connection waiting to be read (POLLERR), found
    /// without taking the error, for a thread that is not reading it.
    fn local_error(&self) -> Option<io::Error> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let mut fds = [PollFd::new(&self.kernel, PollFlags::ERR)];
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match poll(&mut fds, Some(&now)) {
            Ok(n) if n > 0 && fds[0].revents().contains(PollFlags::ERR) => Some(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "local connection reset",
            )),
            _ => None,
        }
    }

    /// The local connection is closed although we sent no FIN: a reset
    /// whose error a write already took (`getpeername` fails once the
    /// socket is closed; after a FIN from the program alone it still works).
    fn local_gone(&self) -> bool {
        !self.fin_sent.load(Ordering::Acquire) && self.kernel.peer_addr().is_err()
    }
}

/// The stream error behind an I/O error of a TI stream, if any.
fn stream_error(e: &io::Error) -> Option<StreamError> {
    e.get_ref()?.downcast_ref::<StreamError>().copied()
}

/// The stream's error, if it has failed, without waiting.
fn flow_error<D: Device + Wait>(ti: &TiStream<D>) -> Option<io::Error> {
    ti.wait_acknowledged(Duration::ZERO)
        .err()
        .map(io::Error::from)
}

/// Copies the local program's bytes into the flow.
fn kernel_to_ti<D: Device + Wait>(relay: &Relay<'_>, mut ti: TiStream<D>) {
    let mut kernel = &relay.kernel;
    let mut buf = vec![0u8; COPY_BUF];
    while relay.running() {
        match kernel.read(&mut buf) {
            Ok(0) => return relay.local_finished(&ti),
            Ok(n) => {
                if let Err(e) = ti.write_all(&buf[..n]) {
                    return relay.flow_broke(&e);
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => return relay.local_broke(&ti, &e),
        }
    }
    if !relay.ended.load(Ordering::Acquire) {
        // Stopping: pass the end of stream on, as at a FIN.
        let _ = ti.shutdown(Shutdown::Write);
    }
}

/// Copies the flow's bytes to the local program. While the flow is quiet it
/// also watches the local connection for a reset, which the other thread
/// misses while it is blocked writing into the flow.
fn ti_to_kernel<D: Device + Wait>(relay: &Relay<'_>, mut ti: TiStream<D>) {
    ti.set_read_timeout(Some(TICK));
    let mut buf = vec![0u8; COPY_BUF];
    while relay.running() {
        match ti.read(&mut buf) {
            Ok(0) => return relay.flow_finished(),
            Ok(n) => match write_all_until(relay, &ti, &buf[..n]) {
                Ok(()) => {}
                Err(Broken::Local(e)) => return relay.local_broke(&ti, &e),
                Err(Broken::Flow(e)) => return relay.flow_broke(&e),
                Err(Broken::Ended) => return,
            },
            Err(e) if is_timeout(&e) => {
                if let Some(e) = relay.local_error() {
                    return relay.local_broke(&ti, &e);
                }
            }
            Err(e) => return relay.flow_broke(&e),
        }
    }
}

/// Why a write to the local program stopped short.
enum Broken {
    /// The local connection failed (reset, or the program closed it).
    Local(io::Error),
    /// The flow failed while the program was not taking data.
    Flow(io::Error),
    /// Stopping, or the other thread ended the relay.
    Ended,
}

/// Writes all of `data` to the local program, retrying after write timeouts
/// (and checking the flow for a failure meanwhile) until the relay ends.
fn write_all_until<D: Device + Wait>(
    relay: &Relay<'_>,
    ti: &TiStream<D>,
    mut data: &[u8],
) -> Result<(), Broken> {
    let mut kernel = &relay.kernel;
    while !data.is_empty() {
        if !relay.running() {
            return Err(Broken::Ended);
        }
        match kernel.write(data) {
            Ok(0) => return Err(Broken::Local(io::ErrorKind::WriteZero.into())),
            Ok(n) => data = &data[n..],
            Err(e) if is_timeout(&e) => {
                if let Some(e) = flow_error(ti) {
                    return Err(Broken::Flow(e));
                }
            }
            Err(e) => return Err(Broken::Local(e)),
        }
    }
    Ok(())
}

/// A read or write that timed out (our own timeouts) rather than failed.
/// `TimedOut` is a failure: a kernel `ETIMEDOUT`, or a plain TCP flow's
/// user timeout.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        up: UpArgs,
    }

    fn parse(args: &[&str]) -> Result<UpArgs, String> {
        let argv = std::iter::once("up").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .map(|c| c.up)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_give_the_documented_addressing() {
        let a = parse(&[]).expect("defaults");
        assert_eq!(a.tun, "tiflow0");
        assert_eq!(a.address.to_string(), "10.0.2.1/24");
        assert_eq!(a.kernel_address(), Ipv4Addr::new(10, 0, 2, 254));
        assert_eq!(a.control_path(), PathBuf::from("/run/tiflow/tiflow0.sock"));
        let c = a.stack_config();
        assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 0, 2, 254)));
        assert!(c.ti_enabled && c.allow_migration);
        assert_eq!(c.option_kind, 253);
        assert_eq!(c.user_timeout, Duration::from_secs(30));
        assert_eq!(a.validate(), Ok(()));
    }

    #[test]
    fn stack_on_the_last_host_puts_the_kernel_on_the_first() {
        let a = parse(&["--address", "10.0.2.254/24"]).expect("parse");
        assert_eq!(a.kernel_address(), Ipv4Addr::new(10, 0, 2, 1));
    }

    #[test]
    fn forward_serve_and_expose_parse() {
        let a = parse(&[
            "--forward",
            "127.0.0.1:2222=10.0.2.2:22",
            "--forward",
            "8080=10.0.3.1:80",
            "--serve",
            "22=127.0.0.1:22",
            "--serve",
            "80=8080",
            "--expose",
            "2022=22",
            "--expose",
            "80",
        ])
        .expect("parse");
        assert_eq!(
            a.forwards[0].listen,
            "127.0.0.1:2222".parse().expect("addr")
        );
        assert_eq!(
            a.forwards[1].listen,
            "127.0.0.1:8080".parse().expect("addr")
        );
        assert_eq!(a.serves[1].target, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(
            a.exposes[0],
            Expose {
                host_port: 2022,
                port: 22
            }
        );
        assert_eq!(
            a.exposes[1],
            Expose {
                host_port: 80,
                port: 80
            }
        );
        assert_eq!(a.validate(), Ok(()));
    }

    #[test]
    fn bad_arguments_have_clear_messages() {
        let cases: [(&[&str], &str); 12] = [
            (&["--forward", "2222"], "is not LISTEN=REMOTE"),
            (&["--forward", "2222=10.0.2.2"], "is not IPV4:PORT"),
            (&["--forward", "0=10.0.2.2:22"], "not a port number"),
            (&["--serve", "22"], "is not PORT=TARGET"),
            (&["--serve", "x=22"], "not a port number"),
            (&["--address", "10.0.2.1"], "is not ADDRESS/PREFIX"),
            (&["--address", "10.0.2.1/31"], "leaves no room"),
            (&["--address", "10.0.2.0/24"], "network or broadcast"),
            (&["--option-kind", "1"], "no-operation"),
            (&["--option-kind", "8"], "timestamps"),
            (&["--stall-timeout", "0s"], "more than zero"),
            (&["--tun", "much-too-long-name"], "not an interface name"),
        ];
        for (args, want) in cases {
            let err = parse(args).expect_err("rejected");
            assert!(err.contains(want), "{args:?}: {err}");
        }
        assert!(parse(&["--option-kind", "256"]).is_err());
        assert!(parse(&["--mtu", "100"]).is_err());
    }

    #[test]
    fn arguments_that_do_not_fit_together_are_refused() {
        let cases: [(&[&str], &str); 5] = [
            (&["--kernel-address", "10.0.2.1"], "stack's own address"),
            (&["--kernel-address", "10.0.3.1"], "not a host address"),
            (&["--serve", "22=22", "--serve", "22=23"], "given twice"),
            (&["--forward", "1=10.0.2.1:22"], "reach the stack itself"),
            (&["--expose", "2022=22"], "no --serve listens"),
        ];
        for (args, want) in cases {
            let err = parse(args)
                .expect("parses")
                .validate()
                .expect_err("refused");
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn migration_flags_last_one_wins() {
        assert!(
            !parse(&["--no-migration"])
                .expect("p")
                .stack_config()
                .allow_migration
        );
        let a = parse(&["--no-migration", "--allow-migration"]).expect("p");
        assert!(a.stack_config().allow_migration);
    }

    #[test]
    fn user_timeout_reaches_the_stack() {
        let a = parse(&["--user-timeout", "3s"]).expect("parse");
        assert_eq!(a.stack_config().user_timeout, Duration::from_secs(3));
        let err = parse(&["--user-timeout", "0"]).expect_err("rejected");
        assert!(err.contains("more than zero"), "{err}");
    }

    #[test]
    fn latency_tuning_is_off_unless_asked() {
        assert!(!parse(&[]).expect("parse").stack_config().low_latency);
        let a = parse(&["--low-latency"]).expect("parse");
        assert!(a.stack_config().low_latency);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        for bad in ["", "s", "-1s", "abc", "0", "NaN"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
