//! Support for the real-kernel tests (`tests/kernel.rs`).
//!
//! Owns the test topologies: "hosts" (a namespace with a TUN whose kernel
//! side forwards, and one of our stacks on it, captured with a `PcapTap`), a
//! middlebox namespace running real netfilter between two hosts, a Linux TCP
//! peer next to one host, and an attacker namespace with a raw socket. Also
//! paced two-way transfers checked with SHA-256 on both ends, and pcap
//! reading. Packets are built with `ti_testnet::packet`.
//!
//! Everything lives in namespaces created here, deleted on drop (also while
//! a test panics); nothing is ever configured in the root namespace. Every
//! wait is bounded in time.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pcap_file::pcap::PcapReader;
use ti_stack::device::pcap_tap::PcapTap;
use ti_stack::device::tun::{OffloadRequest, Offloads, TunDevice, TunStats};
use ti_stack::segment::Segment;
use ti_stack::{Ipv6Addressing, Mode, Runtime, StackConfig, StreamEvent, TiListener, TiStream};
pub use ti_testnet::Middlebox;
use ti_testnet::netns::{self, NetNs};
pub use ti_testnet::payload::{StreamDigest, random_bytes, sha256};
use ti_testnet::topology::{self, INSIDE_IF, OUTSIDE_IF};

pub mod ipv6;
use ti_testnet::{Cidr, Cidr6, LinkEnd, TunSpec, middlebox};

/// The device under every stack here: a TUN, captured.
pub type Dev = PcapTap<TunDevice>;
/// A stack with its driver thread.
pub type Rt = Runtime<Dev>;

/// Our option's kind.
pub const KIND: u8 = tifid::DEFAULT_KIND;

/// Upper bound on any single wait of a test (a transfer, an accept, a join).
pub const DEADLINE: Duration = Duration::from_secs(60);

// Addresses. Each lives only inside namespaces a test creates, so tests
// running in parallel reuse them.

/// Kernel side of the client host's TUN.
pub const CLIENT_TUN: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
/// The client host's stack.
pub const CLIENT_STACK: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
/// Where the client host's stack moves to (address-change test).
pub const CLIENT_MOVED: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 2);
/// Client host's end of the link to the middlebox (or to the Linux peer).
const CLIENT_LINK: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);
/// Middlebox, client side.
const MB_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
/// Middlebox, server side (the NAT's outside address).
pub const MB_SERVER_SIDE: Ipv4Addr = Ipv4Addr::new(10, 3, 0, 1);
/// Server host's end of the link to the middlebox.
const SERVER_LINK: Ipv4Addr = Ipv4Addr::new(10, 3, 0, 2);
/// Kernel side of the server host's TUN.
pub const SERVER_TUN: Ipv4Addr = Ipv4Addr::new(10, 4, 0, 1);
/// The server host's stack.
pub const SERVER_STACK: Ipv4Addr = Ipv4Addr::new(10, 4, 0, 2);
/// Middlebox, attacker side.
const MB_ATTACKER_SIDE: Ipv4Addr = Ipv4Addr::new(10, 6, 0, 1);
/// The attacker namespace's address.
pub const ATTACKER: Ipv4Addr = Ipv4Addr::new(10, 6, 0, 2);
/// The Linux peer, next to the client host.
pub const LINUX: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);

/// Fails the test with what is missing (never passes silently): root or
/// the capabilities, iproute2, /dev/net/tun, iptables and conntrack.
pub fn require_privileges() {
    if let Err(e) = netns::check_privileges() {
        panic!("{e}");
    }
    for (tool, package) in [("iptables", "iptables"), ("conntrack", "conntrack")] {
        if let Err(e) = std::process::Command::new(tool).arg("--version").output() {
            panic!("cannot run `{tool}` ({e}): install package {package} (.ci/run does)");
        }
    }
}

/// Logs to the test's output when `RUST_LOG` asks for them.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Waits for a thread at most until `deadline`; a panic in it is resumed here.
pub fn join_bounded<T>(handle: JoinHandle<T>, deadline: Instant, what: &str) -> T {
    loop {
        if handle.is_finished() {
            return handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not finish within the deadline"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `ready` every 5 ms until it holds; panics after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The median of `samples` (sorted in place).
pub fn median(samples: &mut [Duration]) -> Duration {
    assert!(!samples.is_empty(), "no samples");
    samples.sort();
    samples[samples.len() / 2]
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ------------------------------------------------------------------ pcap

/// A pcap file in the temp directory: removed on drop, kept (and its path
/// printed) when the test fails or `TI_KEEP_PCAP` is set.
pub struct CaptureFile {
    path: PathBuf,
}

impl CaptureFile {
    /// A new file name in the temp directory, tagged `tag`.
    pub fn new(tag: &str) -> CaptureFile {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("ti-kernel-{}-{n}-{tag}.pcap", std::process::id());
        CaptureFile {
            path: std::env::temp_dir().join(name),
        }
    }

    /// Where the capture is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CaptureFile {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("TI_KEEP_PCAP").is_some() {
            eprintln!("capture kept for inspection: {}", self.path.display());
        } else {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One TCP segment (IPv4 or IPv6) of a capture.
#[derive(Debug, Clone, Copy)]
pub struct Captured {
    /// The parsed segment.
    pub seg: Segment,
}

/// Every TCP segment (IPv4 or IPv6) in the pcap at `path` (other packets
/// skipped).
pub fn read_segments(path: &Path) -> Vec<Captured> {
    let file = std::fs::File::open(path).expect("open capture");
    let mut reader = PcapReader::new(file).expect("pcap header");
    let mut out = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.expect("well-formed pcap record");
        if let Some(seg) = Segment::parse(&packet.data, KIND) {
            out.push(Captured { seg });
        }
    }
    out
}

/// Asserts that of the segments `sender` sent in `segs`, only SYNs (and
/// SYN-ACKs) carry our option: what a connection that ended up legacy may
/// show (DESIGN §4: nothing after the fallback decision carries it).
pub fn assert_option_only_on_syns(segs: &[Captured], sender: impl Into<IpAddr>, what: &str) {
    let sender = sender.into();
    for c in segs.iter().filter(|c| c.seg.src.ip() == sender) {
        let has_option = !matches!(c.seg.option, Ok(None));
        assert!(
            c.seg.syn || !has_option,
            "{what}: a non-SYN segment from {sender} carries our option: {:?}",
            c.seg
        );
    }
}

// ------------------------------------------------------------------ hosts

/// The TUN offloads of hosts built without an explicit choice:
/// `TI_TUN_OFFLOAD=off` runs a suite with plain packets, anything else (or
/// nothing) with offloads where the kernel allows.
pub fn offload_from_env() -> OffloadRequest {
    match std::env::var("TI_TUN_OFFLOAD") {
        Ok(v) if v.eq_ignore_ascii_case("off") => OffloadRequest::Off,
        _ => OffloadRequest::Auto,
    }
}

/// A namespace with a TUN "ti0" (kernel side `tun_addr/24`, forwarding on,
/// IPv6 off) and one of our stacks on it at `stack_addr`, gateway the
/// kernel side. Drops the stack first, then the capture, then the namespace.
pub struct Host {
    runtime: Option<Rt>,
    capture: CaptureFile,
    ns: NetNs,
}

impl Host {
    /// Builds the host, its packets captured to a file or (`capture`
    /// false: a flood would fill the disk) to nowhere.
    fn build(
        prefix: &str,
        tun_addr: Ipv4Addr,
        stack_addr: Ipv4Addr,
        capture_to_file: bool,
        offload: OffloadRequest,
        tweak: impl FnOnce(&mut StackConfig),
    ) -> Host {
        Host::build_family(
            prefix,
            IpAddr::V4(tun_addr),
            IpAddr::V4(stack_addr),
            capture_to_file,
            offload,
            tweak,
        )
    }

    /// [`Host::build`] for either family: an IPv4 host as above, or an
    /// IPv6 one (namespace with IPv6 on, TUN kernel side `tun_addr/64`, the
    /// stack IPv6-only at `stack_addr/64`, gateway the kernel side).
    pub fn build_family(
        prefix: &str,
        tun_addr: IpAddr,
        stack_addr: IpAddr,
        capture_to_file: bool,
        offload: OffloadRequest,
        tweak: impl FnOnce(&mut StackConfig),
    ) -> Host {
        // As `tiflow` does at startup: socket buffers are not committed (and
        // cleared) at SYN time.
        ti_stack::memory::map_large_allocations();
        let ns = NetNs::create(prefix).expect("create host namespace");
        let (tun, mut config) = match (tun_addr, stack_addr) {
            (IpAddr::V4(tun_addr), IpAddr::V4(stack_addr)) => {
                ns.disable_ipv6().expect("disable IPv6");
                ns.enable_forwarding().expect("enable forwarding");
                let tun = topology::open_tun_with(&ns, &TunSpec::new("ti0", tun_addr), offload)
                    .expect("open TUN in namespace, kernel side as gateway");
                let mut config = StackConfig::new(stack_addr);
                config.prefix_len = 24;
                // Medium::Ip: no neighbour resolution, any kernel-side address works.
                config.gateway = Some(tun_addr);
                (tun, config)
            }
            (IpAddr::V6(tun_addr), IpAddr::V6(stack_addr)) => {
                ns.enable_ipv6().expect("enable IPv6");
                ns.enable_forwarding().expect("enable forwarding");
                let tun = topology::open_tun6(&ns, "ti0", 1500, Cidr6::slash64(tun_addr), offload)
                    .expect("open TUN in namespace, kernel side as IPv6 gateway");
                let mut config = StackConfig::new_v6(stack_addr);
                config.ipv6 = Some(Ipv6Addressing {
                    address: stack_addr,
                    prefix_len: 64,
                    gateway: Some(tun_addr),
                });
                (tun, config)
            }
            _ => panic!("the TUN and the stack must be of one family"),
        };
        let capture = CaptureFile::new(prefix);
        let device = if capture_to_file {
            PcapTap::create(tun, capture.path()).expect("create capture file")
        } else {
            PcapTap::new(tun, io::sink())
        };
        // Bounded: a lost flow fails its reads and writes within this.
        config.resume_timeout = Duration::from_secs(20);
        config.connect_timeout = Duration::from_secs(10);
        tweak(&mut config);
        let runtime = Runtime::start(config, device).expect("start stack");
        Host {
            runtime: Some(runtime),
            capture,
            ns,
        }
    }

    /// The host's namespace.
    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    /// The host's stack.
    pub fn runtime(&self) -> &Rt {
        self.runtime.as_ref().expect("runtime lives until drop")
    }

    /// The TUN's mode and counters.
    pub fn tun(&self) -> (Offloads, TunStats) {
        self.runtime().with_stack(|stack, _| {
            let tun = stack.device().inner();
            (tun.offloads(), tun.stats())
        })
    }

    /// Flushes the capture and reads it (the stack keeps running).
    pub fn segments(&self) -> Vec<Captured> {
        self.runtime()
            .with_stack(|stack, _| stack.device().flush())
            .expect("flush capture");
        read_segments(self.capture.path())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.stop();
        }
    }
}

// ------------------------------------------------------------- middlebox

/// Client host <-> middlebox namespace <-> server host, optionally with an
/// attacker namespace on a third leg of the middlebox.
///
/// ```text
/// stack 10.1.0.2 | ti0 10.1.0.1  [client ns]  10.2.0.1 -- 10.2.0.2 [middlebox] 10.3.0.1 -- 10.3.0.2 [server ns]  ti0 10.4.0.1 | stack 10.4.0.2
///                                                             10.6.0.1 -- 10.6.0.2 [attacker]
/// ```
pub struct Topology {
    /// The client host (initiator).
    pub client: Host,
    /// The server host (responder).
    pub server: Host,
    attacker: Option<NetNs>,
    middlebox: Option<NetNs>,
    kind: Middlebox,
    prefix: String,
    generation: u32,
}

impl Topology {
    /// Builds the three namespaces with default stack settings.
    pub fn new(prefix: &str, kind: Middlebox) -> Topology {
        Topology::with_configs(prefix, kind, |_| {}, |_| {})
    }

    /// Builds the three namespaces; the closures adjust the client's and the
    /// server's stack settings.
    pub fn with_configs(
        prefix: &str,
        kind: Middlebox,
        client_cfg: impl FnOnce(&mut StackConfig),
        server_cfg: impl FnOnce(&mut StackConfig),
    ) -> Topology {
        Topology::build(prefix, kind, true, client_cfg, server_cfg)
    }

    /// Builds the three namespaces with default stack settings, the hosts'
    /// packets not captured (for floods).
    pub fn uncaptured(prefix: &str, kind: Middlebox) -> Topology {
        Topology::build(prefix, kind, false, |_| {}, |_| {})
    }

    fn build(
        prefix: &str,
        kind: Middlebox,
        capture: bool,
        client_cfg: impl FnOnce(&mut StackConfig),
        server_cfg: impl FnOnce(&mut StackConfig),
    ) -> Topology {
        init_logs();
        let client = Host::build(
            &format!("{prefix}c"),
            CLIENT_TUN,
            CLIENT_STACK,
            capture,
            offload_from_env(),
            client_cfg,
        );
        let server = Host::build(
            &format!("{prefix}s"),
            SERVER_TUN,
            SERVER_STACK,
            capture,
            offload_from_env(),
            server_cfg,
        );
        let mut topology = Topology {
            client,
            server,
            attacker: None,
            middlebox: None,
            kind,
            prefix: prefix.to_owned(),
            generation: 0,
        };
        topology.build_middlebox();
        topology
    }

    fn client_if(&self) -> String {
        format!("c{}", self.generation)
    }

    fn server_if(&self) -> String {
        format!("s{}", self.generation)
    }

    /// Creates the middlebox namespace, its links to both hosts, routes and
    /// rules (for the current generation of interface names).
    fn build_middlebox(&mut self) {
        let mb = NetNs::create(&format!("{}m", self.prefix)).expect("create middlebox namespace");
        mb.disable_ipv6().expect("disable IPv6");
        // Forged sources from the attacker leg must pass (off-path spoofing).
        mb.sysctl("net.ipv4.conf.all.rp_filter", "0")
            .expect("rp_filter");
        mb.sysctl("net.ipv4.conf.default.rp_filter", "0")
            .expect("rp_filter");
        let (cif, sif) = (self.client_if(), self.server_if());
        let cns = self.client.ns();
        let sns = self.server.ns();
        topology::link(
            LinkEnd::new(cns, &cif, Cidr::slash24(CLIENT_LINK)),
            LinkEnd::new(&mb, INSIDE_IF, Cidr::slash24(MB_CLIENT_SIDE)),
        )
        .expect("link client-middlebox");
        topology::link(
            LinkEnd::new(&mb, OUTSIDE_IF, Cidr::slash24(MB_SERVER_SIDE)),
            LinkEnd::new(sns, &sif, Cidr::slash24(SERVER_LINK)),
        )
        .expect("link middlebox-server");
        cns.ip(&[
            "route",
            "replace",
            "default",
            "via",
            &MB_CLIENT_SIDE.to_string(),
        ])
        .expect("client default route");
        sns.ip(&[
            "route",
            "replace",
            "default",
            "via",
            &MB_SERVER_SIDE.to_string(),
        ])
        .expect("server default route");
        mb.add_route("10.1.0.0/16", &CLIENT_LINK.to_string())
            .expect("route to client host");
        mb.add_route("10.4.0.0/16", &SERVER_LINK.to_string())
            .expect("route to server host");
        self.kind
            .install(&mb)
            .unwrap_or_else(|e| panic!("middlebox rules {:?}: {e}", self.kind));
        if self.attacker.is_some() {
            self.link_attacker(&mb);
        }
        // Forwarding last: a rebuilt middlebox never passes a packet before
        // its NAT and filter rules are in place.
        mb.enable_forwarding().expect("enable forwarding");
        self.middlebox = Some(mb);
    }

    fn link_attacker(&self, mb: &NetNs) {
        let attacker = self.attacker.as_ref().expect("attacker namespace");
        let xif = format!("x{}", self.generation);
        topology::link(
            LinkEnd::new(mb, "m2", Cidr::slash24(MB_ATTACKER_SIDE)),
            LinkEnd::new(attacker, &xif, Cidr::slash24(ATTACKER)),
        )
        .expect("link middlebox-attacker");
        attacker
            .ip(&[
                "route",
                "replace",
                "default",
                "via",
                &MB_ATTACKER_SIDE.to_string(),
            ])
            .expect("attacker default route");
    }

    /// Adds the attacker namespace on a third leg of the middlebox.
    pub fn add_attacker(&mut self) -> &NetNs {
        let attacker = NetNs::create(&format!("{}x", self.prefix)).expect("attacker namespace");
        attacker.disable_ipv6().expect("disable IPv6");
        self.attacker = Some(attacker);
        let mb = self.middlebox.take().expect("middlebox");
        self.link_attacker(&mb);
        self.middlebox = Some(mb);
        self.attacker.as_ref().expect("just set")
    }

    /// The middlebox namespace.
    pub fn middlebox(&self) -> &NetNs {
        self.middlebox.as_ref().expect("middlebox exists")
    }

    /// Runs `iptables -w ARGS` in the middlebox.
    pub fn iptables(&self, args: &[&str]) {
        middlebox::iptables(self.middlebox(), args)
            .unwrap_or_else(|e| panic!("iptables {}: {e}", args.join(" ")));
    }

    /// Strips our option from TCP segments the middlebox forwards that came
    /// in on `inbound_if` (TCPOPTSTRIP).
    pub fn strip_option(&self, inbound_if: &str) {
        middlebox::strip_option(self.middlebox(), inbound_if, KIND).expect("TCPOPTSTRIP rule");
    }

    /// Empties the middlebox's conntrack table (`conntrack -F`).
    pub fn conntrack_flush(&self) {
        middlebox::conntrack_flush(self.middlebox()).expect("conntrack -F");
    }

    /// Entries in the middlebox's conntrack table.
    pub fn conntrack_list(&self) -> String {
        middlebox::conntrack_list(self.middlebox()).unwrap_or_default()
    }

    /// The middlebox loses all its state: its namespace (with its veths,
    /// rules and conntrack table) is deleted and built again from scratch.
    /// Returns how long the path was down.
    pub fn rebuild_middlebox(&mut self) -> Duration {
        let started = Instant::now();
        let (cif, sif) = (self.client_if(), self.server_if());
        drop(self.middlebox.take());
        // Namespace teardown is asynchronous: wait until the veth ends in the
        // hosts are gone with it.
        wait_until(Duration::from_secs(10), "old veths to disappear", || {
            self.client.ns().ip(&["link", "show", &cif]).is_err()
                && self.server.ns().ip(&["link", "show", &sif]).is_err()
        });
        self.generation += 1;
        self.build_middlebox();
        started.elapsed()
    }

    /// The server's listening address.
    pub fn server_at(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(SERVER_STACK, port)
    }
}

/// One of our hosts and a Linux namespace next to it:
/// `stack 10.1.0.2 | ti0 10.1.0.1 [host ns] 10.2.0.1 -- 10.2.0.2 [linux ns]`.
pub struct LinuxPeer {
    /// Our host.
    pub host: Host,
    /// The namespace whose kernel TCP is the peer.
    pub linux: NetNs,
}

impl LinuxPeer {
    /// Builds both namespaces; `tweak` adjusts our stack's settings.
    pub fn new(prefix: &str, tweak: impl FnOnce(&mut StackConfig)) -> LinuxPeer {
        LinuxPeer::with_offload(prefix, offload_from_env(), tweak)
    }

    /// [`LinuxPeer::new`], our host's TUN with offloads as `offload` says.
    pub fn with_offload(
        prefix: &str,
        offload: OffloadRequest,
        tweak: impl FnOnce(&mut StackConfig),
    ) -> LinuxPeer {
        init_logs();
        let host = Host::build(
            &format!("{prefix}h"),
            CLIENT_TUN,
            CLIENT_STACK,
            true,
            offload,
            tweak,
        );
        let linux = NetNs::create(&format!("{prefix}l")).expect("create Linux namespace");
        linux.disable_ipv6().expect("disable IPv6");
        topology::link(
            LinkEnd::new(host.ns(), "l0", Cidr::slash24(CLIENT_LINK)),
            LinkEnd::new(&linux, "l1", Cidr::slash24(LINUX)),
        )
        .expect("link host-Linux");
        linux
            .add_route("10.1.0.0/16", &CLIENT_LINK.to_string())
            .expect("route to our stack");
        LinuxPeer { host, linux }
    }

    /// A Linux listener at `LINUX:port`.
    pub fn listen(&self, port: u16) -> TcpListener {
        self.linux
            .enter(|| TcpListener::bind((LINUX, port)))
            .expect("enter Linux namespace")
            .expect("bind in Linux namespace")
    }

    /// Our stack's connection to a Linux listener at `LINUX:port`: plain
    /// TCP (Linux does not speak TI; asserted).
    pub fn connect_from_ours(&self, port: u16) -> TiStream<Dev> {
        let stream = self
            .host
            .runtime()
            .connect(SocketAddrV4::new(LINUX, port))
            .expect("connect to Linux");
        assert_eq!(stream.mode(), Mode::Legacy, "Linux does not speak TI");
        stream
    }

    /// A Linux connection to `to`.
    pub fn connect(&self, to: SocketAddrV4) -> TcpStream {
        self.linux
            .enter(|| TcpStream::connect_timeout(&to.into(), Duration::from_secs(10)))
            .expect("enter Linux namespace")
            .expect("Linux connect to our stack")
    }
}

/// Accepts one connection on a Linux listener within `timeout`.
pub fn accept_linux(listener: &TcpListener, timeout: Duration) -> TcpStream {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking stream");
                return stream;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no connection arrived");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

// -------------------------------------------------------------- transfers

/// One end of a two-way transfer: a reader, a writer and how to end the
/// writing direction.
pub struct End {
    reader: Box<dyn Read + Send>,
    writer: Box<dyn Write + Send>,
    finish: Box<dyn FnOnce() -> io::Result<()> + Send>,
}

impl End {
    /// An end over one of our streams.
    pub fn ti(stream: TiStream<Dev>) -> End {
        let mut reader = stream.try_clone();
        reader.set_read_timeout(Some(DEADLINE));
        let closer = stream.try_clone();
        End {
            reader: Box::new(reader),
            writer: Box::new(stream),
            finish: Box::new(move || closer.shutdown(Shutdown::Write).map_err(io::Error::from)),
        }
    }

    /// An end over a Linux TCP connection.
    pub fn tcp(stream: TcpStream) -> End {
        stream
            .set_read_timeout(Some(DEADLINE))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(DEADLINE))
            .expect("write timeout");
        let reader = stream.try_clone().expect("clone");
        let closer = stream.try_clone().expect("clone");
        End {
            reader: Box::new(reader),
            writer: Box::new(stream),
            finish: Box::new(move || closer.shutdown(Shutdown::Write)),
        }
    }
}

/// How fast an end writes: `chunk` bytes every `every` (zero: at once).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Bytes per write.
    pub chunk: usize,
    /// Pause between writes.
    pub every: Duration,
}

impl Pace {
    /// As fast as the stream takes it.
    pub const FULL: Pace = Pace {
        chunk: 256 << 10,
        every: Duration::ZERO,
    };
    /// About 4 MiB/s: slow enough that a few MiB take about a second, so a
    /// failure can be injected mid-transfer.
    pub const PACED: Pace = Pace {
        chunk: 64 << 10,
        every: Duration::from_millis(15),
    };
}

/// What one end received.
#[derive(Debug, Clone, Copy)]
pub struct EndReport {
    /// Bytes received before end of stream.
    pub received_len: usize,
    /// Their SHA-256.
    pub received_sha: [u8; 32],
}

impl EndReport {
    /// Asserts this end received exactly `sent` (length and SHA-256).
    pub fn assert_received(&self, sent: &[u8], what: &str) {
        assert_eq!(self.received_len, sent.len(), "{what}: every byte");
        assert_eq!(
            self.received_sha,
            sha256(sent),
            "{what}: exact bytes (SHA-256)"
        );
    }
}

/// Runs `end`: writes `data` at `pace` then shuts down writing, while
/// reading until end of stream; `received` counts bytes read so far.
pub fn run_end(
    end: End,
    data: Arc<Vec<u8>>,
    pace: Pace,
    received: Arc<AtomicU64>,
    name: &'static str,
) -> JoinHandle<EndReport> {
    let End {
        mut reader,
        mut writer,
        finish,
    } = end;
    std::thread::spawn(move || {
        let sender = std::thread::spawn(move || {
            for chunk in data.chunks(pace.chunk) {
                writer
                    .write_all(chunk)
                    .unwrap_or_else(|e| panic!("{name}: write failed: {e}"));
                if !pace.every.is_zero() {
                    std::thread::sleep(pace.every);
                }
            }
            finish().unwrap_or_else(|e| panic!("{name}: shutdown failed: {e}"));
            writer
        });
        let mut digest = StreamDigest::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    digest.update(&buf[..n]);
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => panic!("{name}: read failed after {} bytes: {e}", digest.len()),
            }
        }
        // Keep the writing handle until both directions are done.
        let writer = join_bounded(
            sender,
            Instant::now() + DEADLINE,
            &format!("{name}'s writer"),
        );
        drop(writer);
        let (total, sha) = digest.finish();
        EndReport {
            received_len: total as usize,
            received_sha: sha,
        }
    })
}

/// A two-way transfer between the client and the server of a [`Topology`]
/// (a TI-flow, or legacy TCP where the path or a peer refuses the option).
pub struct RunningFlow {
    /// A handle on the client's stream (mode, events).
    pub client: TiStream<Dev>,
    /// A handle on the server's stream.
    pub server: TiStream<Dev>,
    /// Bytes the server has read so far.
    pub server_received: Arc<AtomicU64>,
    /// Events taken from the client's stream while the flow ran.
    pub client_events: Vec<StreamEvent>,
    client_job: JoinHandle<EndReport>,
    server_job: JoinHandle<EndReport>,
    client_data: Arc<Vec<u8>>,
    server_data: Arc<Vec<u8>>,
    // The listener must outlive the flow: resumes arrive on its port.
    _listener: TiListener<Dev>,
    started: Instant,
}

/// What a finished [`RunningFlow`] showed.
#[derive(Debug)]
pub struct FlowOutcome {
    /// The client's mode at the end.
    pub client_mode: Mode,
    /// The server's mode at the end.
    pub server_mode: Mode,
    /// Every event of the client's stream.
    pub client_events: Vec<StreamEvent>,
    /// Every event of the server's stream.
    pub server_events: Vec<StreamEvent>,
    /// From connect to both ends done.
    pub elapsed: Duration,
}

impl FlowOutcome {
    /// Resumes the client saw, with their downtimes.
    pub fn client_resumes(&self) -> Vec<Duration> {
        resumes(&self.client_events)
    }

    /// Resumes the server saw, with their downtimes.
    pub fn server_resumes(&self) -> Vec<Duration> {
        resumes(&self.server_events)
    }
}

/// The downtimes of the `Resumed` events in `events`.
pub fn resumes(events: &[StreamEvent]) -> Vec<Duration> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Resumed { downtime, .. } => Some(*downtime),
            _ => None,
        })
        .collect()
}

impl RunningFlow {
    /// Connects the topology's client to its server on `port` and starts
    /// sending `bytes` each way at `pace`.
    pub fn start(topology: &Topology, port: u16, bytes: usize, pace: Pace) -> RunningFlow {
        RunningFlow::start_between(
            topology.client.runtime(),
            topology.server.runtime(),
            Topology::server_at(port).into(),
            bytes,
            pace,
        )
    }

    /// Connects `client` to `server` listening at `to` (the port is
    /// `to`'s) and starts sending `bytes` each way at `pace`.
    pub fn start_between(
        client: &Rt,
        server: &Rt,
        to: SocketAddr,
        bytes: usize,
        pace: Pace,
    ) -> RunningFlow {
        let port = to.port();
        let listener = server.listen(port).expect("listen");
        let started = Instant::now();
        let client = client.connect(to).expect("connect through the middlebox");
        let server = listener
            .accept_timeout(Some(Duration::from_secs(10)))
            .expect("accept")
            .expect("a connection within 10 s");
        let client_data = Arc::new(random_bytes(u64::from(port), bytes));
        let server_data = Arc::new(random_bytes(u64::from(port) + 1, bytes));
        let server_received = Arc::new(AtomicU64::new(0));
        let client_job = run_end(
            End::ti(client.try_clone()),
            client_data.clone(),
            pace,
            Arc::new(AtomicU64::new(0)),
            "client",
        );
        let server_job = run_end(
            End::ti(server.try_clone()),
            server_data.clone(),
            pace,
            server_received.clone(),
            "server",
        );
        RunningFlow {
            client,
            server,
            server_received,
            client_events: Vec::new(),
            client_job,
            server_job,
            client_data,
            server_data,
            _listener: listener,
            started,
        }
    }

    /// The flow's TIFID (the connection must be a TI-flow).
    pub fn tifid(&self) -> tifid::Tifid {
        match self.client.mode() {
            Mode::Resilient { tifid } => tifid,
            Mode::Legacy => panic!("expected a TI-flow, got legacy TCP"),
        }
    }

    /// Waits (bounded) until the server has read `bytes`.
    pub fn wait_server_received(&self, bytes: u64) {
        wait_until(DEADLINE, "the server to receive data", || {
            self.server_received.load(Ordering::Relaxed) >= bytes
        });
    }

    /// Waits up to `timeout` for the client's next `Resumed` event; keeps
    /// every event seen. Returns when it came (None: it did not).
    pub fn wait_client_resumed(&mut self, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.client.next_event(left.min(Duration::from_millis(200))) {
                Ok(Some(event)) => {
                    self.client_events.push(event);
                    if matches!(event, StreamEvent::Resumed { .. }) {
                        return Some(Instant::now());
                    }
                }
                Ok(None) => {}
                Err(e) => panic!("client stream failed while waiting for a resume: {e}"),
            }
        }
    }

    /// Waits for both ends, checks both directions byte-exact (SHA-256) and
    /// collects modes and events.
    pub fn finish(mut self) -> FlowOutcome {
        let deadline = Instant::now() + DEADLINE;
        let client = join_bounded(self.client_job, deadline, "client end");
        let server = join_bounded(self.server_job, deadline, "server end");
        let elapsed = self.started.elapsed();
        server.assert_received(&self.client_data, "server got the client's bytes");
        client.assert_received(&self.server_data, "client got the server's bytes");
        self.client_events.extend(self.client.events());
        FlowOutcome {
            client_mode: self.client.mode(),
            server_mode: self.server.mode(),
            client_events: self.client_events,
            server_events: self.server.events(),
            elapsed,
        }
    }
}

// ------------------------------------------------------------ raw packets

/// A raw IPv4 socket (`IPPROTO_RAW`: we write the IP header) opened in a
/// namespace; sends from any thread.
pub struct RawSender {
    fd: OwnedFd,
}

impl RawSender {
    /// Opens the socket inside `ns`.
    pub fn open_in(ns: &NetNs) -> RawSender {
        let fd = ns
            .enter(|| {
                // SAFETY: socket(2) with constant arguments; it touches no memory
                // of ours.
                let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: `fd` was just returned by socket(2): open, valid, and
                // owned by nothing else, so `OwnedFd` may take it (and close it).
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            })
            .expect("enter attacker namespace")
            .expect("raw socket");
        RawSender { fd }
    }

    /// Sends one IPv4 packet (header included) towards its destination.
    pub fn send(&self, packet: &[u8]) -> io::Result<()> {
        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `packet` is a live slice for the call and its length is
        // passed with it; `addr` is a fully initialised sockaddr_in on this
        // frame and its exact size is passed; the fd is open (owned by self).
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
