//! Captures the stock-kernel traces under `pcap-tests/traces/`: our stack on
//! a TUN device inside network namespaces it creates, talking to the Linux
//! kernel's TCP and, through a Linux router, to another of our stacks.
//!
//! ```sh
//! # as root (namespaces, TUN devices, iptables in the router namespace)
//! CARGO_TARGET_DIR=/work/target-replay cargo run -p pcap-tests --example capture_traces
//! # only some scenarios, or another directory:
//! cargo run -p pcap-tests --example capture_traces -- --out /tmp/traces ti-flow-resume
//! # then refresh the golden dumps and review the diff:
//! TIFLOW_BLESS=1 cargo test -p pcap-tests --test golden
//! ```
//!
//! Scenarios (see `pcap_tests::scenarios`): (a) a Linux client to our
//! listener, (b) our stack to a Linux server, (c) two of our stacks set up a
//! TI-flow, (d) the same with `fail_transport` and a resume, (e) and (f) an
//! `iptables -t mangle -A FORWARD -i tia|tib -p tcp -j TCPOPTSTRIP
//! --strip-options 253` rule in the router on the forward and on the return
//! path; (g) to (i): (a), (b) and (d) over IPv6. Each of our stacks is
//! wrapped in a `PcapTap` (pcap LINKTYPE_RAW, the bytes on the wire, our
//! option included), driven by a bounded manual
//! loop (`Stack::poll` with a monotonic clock, `TunDevice::wait`) on a
//! thread of its own; the kernel side uses std sockets opened inside the
//! namespace. Every loop and wait is bounded in count and time; namespaces
//! are deleted on drop (also on panic); nothing is configured in the root
//! namespace. The `<!-- captured:begin -->` section of `traces/MANIFEST.md`
//! is rewritten with the kernel version, the date and each file's size and
//! SHA-256.
//!
//! Exits non-zero when a scenario does not go as the protocol says (a
//! finding: the trace is still written, for inspection).

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pcap_tests::exchange::{App, AppProgress};
use pcap_tests::paper_traces::traces_dir;
use pcap_tests::replay::load_trace;
use pcap_tests::scenarios::{self, ALL, Scenario, Side, Strip, Topology};
use sha2::{Digest, Sha256};
use smoltcp::time::Instant;
use ti_stack::device::pcap_tap::PcapTap;
use ti_stack::device::tun::{OffloadRequest, TunDevice};
use ti_stack::{Ipv6Addressing, Mode, Stack, StackConfig, StreamEvent, StreamMode};
use ti_testnet::middlebox;
use ti_testnet::netns::{self, NetNs};
use ti_testnet::topology::{self, Cidr6, TunSpec};

/// No scenario's network phase runs longer.
const DEADLINE: Duration = Duration::from_secs(20);
/// Upper bound on a host loop's iterations.
const MAX_ITERATIONS: usize = 200_000;
/// Longest wait for the device between two polls.
const MAX_WAIT: Duration = Duration::from_millis(10);
/// How long a host keeps polling after its script is done, so the TCP
/// close completes on the wire.
const LINGER: Duration = Duration::from_millis(300);

/// smoltcp time: the wall clock when the program started plus a monotonic
/// clock since, so capture timestamps are real dates and never go back.
#[derive(Debug, Clone, Copy)]
struct Clock {
    base_micros: i64,
    start: std::time::Instant,
}

impl Clock {
    fn start() -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Clock {
            base_micros: i64::try_from(wall.as_micros()).unwrap_or(0),
            start: std::time::Instant::now(),
        }
    }

    fn now(&self) -> Instant {
        let elapsed = i64::try_from(self.start.elapsed().as_micros()).unwrap_or(i64::MAX);
        Instant::from_micros(self.base_micros.saturating_add(elapsed))
    }
}

/// What one of our stacks saw.
#[derive(Debug)]
struct HostReport {
    side: Side,
    received: Vec<u8>,
    expected: Vec<u8>,
    mode: Option<StreamMode>,
    events: Vec<StreamEvent>,
    packets: u64,
}

/// Runs one of our stacks on `tun` with the scenario's script for `side`,
/// capturing to `pcap`. Sends on `ready` after the first poll (the listener
/// exists then).
fn run_host(
    scenario: Scenario,
    side: Side,
    tun: TunDevice,
    pcap: PathBuf,
    clock: Clock,
    ready: mpsc::Sender<()>,
) -> Result<HostReport, String> {
    let config = match (scenario.our_addr(side), scenario.gateway(side)) {
        (IpAddr::V6(ours), gateway) => {
            let mut config = StackConfig::new_v6(ours);
            config.ipv6 = Some(Ipv6Addressing {
                address: ours,
                prefix_len: 64,
                gateway: match gateway {
                    Some(IpAddr::V6(g)) => Some(g),
                    _ => None,
                },
            });
            config
        }
        (IpAddr::V4(ours), gateway) => {
            let mut config = StackConfig::new(ours);
            config.prefix_len = 24;
            config.gateway = match gateway {
                Some(IpAddr::V4(g)) => Some(g),
                _ => None,
            };
            config
        }
    };
    let tap = PcapTap::create(tun, &pcap).map_err(|e| format!("{}: {e}", pcap.display()))?;
    let mut stack = Stack::new(config, tap, clock.now());
    let mut app = App::new(scenario.app_role(side), scenario.exchange());
    let started = std::time::Instant::now();
    let mut done_at: Option<std::time::Instant> = None;
    let mut ready = Some(ready);
    for _ in 0..MAX_ITERATIONS {
        if started.elapsed() > DEADLINE {
            return Err(format!(
                "{side:?}: script not done within {DEADLINE:?} (received {} of {} bytes, mode {:?})",
                app.received().len(),
                app.expected().len(),
                app.mode()
            ));
        }
        let now = clock.now();
        stack.poll(now);
        let progress = app
            .step(&mut stack, now)
            .map_err(|e| format!("{side:?}: {e}"))?;
        // Something happened in this poll (bytes delivered, packets sent):
        // let the script look again before sleeping on the device.
        let busy = stack.poll(now);
        if let Some(tx) = ready.take() {
            let _ = tx.send(());
        }
        if progress == AppProgress::Done && done_at.is_none() {
            done_at = Some(std::time::Instant::now());
        }
        if done_at.is_some_and(|t| t.elapsed() >= LINGER) {
            let packets = stack.device().packets();
            stack
                .device()
                .flush()
                .map_err(|e| format!("{}: {e}", pcap.display()))?;
            return Ok(HostReport {
                side,
                received: app.received().to_vec(),
                expected: app.expected(),
                mode: app.mode(),
                events: app.events().to_vec(),
                packets,
            });
        }
        if busy {
            continue;
        }
        let at = stack.poll_at(now);
        let wait = if at > now {
            Duration::from(at - now).min(MAX_WAIT)
        } else {
            Duration::ZERO
        };
        if !wait.is_zero() {
            stack
                .device()
                .inner()
                .wait(Some(wait))
                .map_err(|e| format!("{side:?}: poll(2) on the TUN: {e}"))?;
        }
    }
    Err(format!("{side:?}: more than {MAX_ITERATIONS} iterations"))
}

/// Spawns [`run_host`] on a thread; returns it once the stack has polled once.
fn spawn_host(
    scenario: Scenario,
    side: Side,
    tun: TunDevice,
    pcap: PathBuf,
    clock: Clock,
) -> Result<JoinHandle<Result<HostReport, String>>, String> {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || run_host(scenario, side, tun, pcap, clock, tx));
    match rx.recv_timeout(DEADLINE) {
        Ok(()) => Ok(handle),
        Err(_) => match handle.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(format!("{side:?}: host did not start")),
        },
    }
}

fn join_host(handle: JoinHandle<Result<HostReport, String>>) -> Result<HostReport, String> {
    handle
        .join()
        .unwrap_or_else(|_| Err("host thread panicked".into()))
}

/// What the kernel's side of a conversation read.
type KernelResult = Result<Vec<u8>, String>;

fn io_err(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("kernel {what}: {e}")
}

/// Linux as the initiator: connects from inside `ns`, writes each request
/// and reads its response, shuts down writing, reads to end of stream.
fn kernel_client(ns: &NetNs, scenario: Scenario) -> Result<JoinHandle<KernelResult>, String> {
    let remote = scenario.responder();
    let stream = ns
        .enter(|| TcpStream::connect_timeout(&remote, DEADLINE))
        .map_err(|e| e.to_string())?
        .map_err(io_err("connect"))?;
    let exchange = scenario.exchange();
    Ok(std::thread::spawn(move || {
        let mut stream = stream;
        stream
            .set_read_timeout(Some(DEADLINE))
            .map_err(io_err("timeout"))?;
        stream
            .set_write_timeout(Some(DEADLINE))
            .map_err(io_err("timeout"))?;
        let mut received = Vec::new();
        for round in &exchange.rounds {
            stream.write_all(&round.request).map_err(io_err("write"))?;
            let mut buf = vec![0; round.response.len()];
            stream.read_exact(&mut buf).map_err(io_err("read"))?;
            received.extend_from_slice(&buf);
        }
        stream
            .shutdown(std::net::Shutdown::Write)
            .map_err(io_err("shutdown"))?;
        stream
            .read_to_end(&mut received)
            .map_err(io_err("read to end"))?;
        Ok(received)
    }))
}

/// Linux as the responder: a listener inside `ns`; accepts one connection,
/// reads each request and writes its response, reads to end of stream,
/// closes.
fn kernel_server(ns: &NetNs, scenario: Scenario) -> Result<JoinHandle<KernelResult>, String> {
    let local = scenario.responder();
    let listener = ns
        .enter(|| TcpListener::bind(local))
        .map_err(|e| e.to_string())?
        .map_err(io_err("bind"))?;
    listener
        .set_nonblocking(true)
        .map_err(io_err("nonblocking"))?;
    let exchange = scenario.exchange();
    Ok(std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if started.elapsed() > DEADLINE {
                        return Err("kernel accept: no connection".into());
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(format!("kernel accept: {e}")),
            }
        };
        stream.set_nonblocking(false).map_err(io_err("blocking"))?;
        stream
            .set_read_timeout(Some(DEADLINE))
            .map_err(io_err("timeout"))?;
        stream
            .set_write_timeout(Some(DEADLINE))
            .map_err(io_err("timeout"))?;
        let mut received = Vec::new();
        for round in &exchange.rounds {
            let mut buf = vec![0; round.request.len()];
            stream.read_exact(&mut buf).map_err(io_err("read"))?;
            received.extend_from_slice(&buf);
            stream.write_all(&round.response).map_err(io_err("write"))?;
        }
        stream
            .read_to_end(&mut received)
            .map_err(io_err("read to end"))?;
        Ok(received)
    }))
}

fn join_kernel(handle: JoinHandle<KernelResult>) -> KernelResult {
    handle
        .join()
        .unwrap_or_else(|_| Err("kernel thread panicked".into()))
}

/// A namespace with TUN `ti0`: kernel side 10.7.0.1/24, up, IPv6 off; or
/// for an IPv6 scenario kernel side fd00:7::1/64 and no IPv4 address.
fn kernel_namespace(ipv6: bool) -> Result<(NetNs, TunDevice), String> {
    let ns = NetNs::create("ticap").map_err(|e| e.to_string())?;
    let tun = if ipv6 {
        quiet_ipv6(&ns)?;
        topology::open_tun6(
            &ns,
            "ti0",
            1500,
            Cidr6::slash64(scenarios::KERNEL6),
            OffloadRequest::Auto,
        )
    } else {
        ns.disable_ipv6().map_err(|e| e.to_string())?;
        topology::open_tun(&ns, &TunSpec::new("ti0", scenarios::KERNEL))
    };
    Ok((ns, tun.map_err(|e| e.to_string())?))
}

/// IPv6 on in `ns` with less of the kernel's own chatter on the TUNs
/// opened after: no link-local address (`addr_gen_mode` 1), so no router
/// solicitations; the multicast listener report for the kernel side's
/// address (from `::`) may still appear in a capture (non-TCP: the replay
/// ignores it, `tiflow dump` counts it as other IP).
fn quiet_ipv6(ns: &NetNs) -> Result<(), String> {
    ns.enable_ipv6().map_err(|e| e.to_string())?;
    for conf in ["all", "default"] {
        ns.sysctl(&format!("net.ipv6.conf.{conf}.addr_gen_mode"), "1")
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The router namespace: TUNs `tia` (10.7.1.1/24) and `tib` (10.7.2.1/24),
/// IPv4 forwarding on, and the TCPOPTSTRIP rule if asked.
fn router_namespace(strip: Option<Strip>) -> Result<(NetNs, TunDevice, TunDevice), String> {
    let ns = NetNs::create("tirouter").map_err(|e| e.to_string())?;

    ns.disable_ipv6().map_err(|e| e.to_string())?;
    ns.sysctl("net.ipv4.ip_forward", "1")
        .map_err(|e| e.to_string())?;
    let a = topology::open_tun(&ns, &TunSpec::new("tia", scenarios::GATEWAY_A))
        .map_err(|e| e.to_string())?;
    let b = topology::open_tun(&ns, &TunSpec::new("tib", scenarios::GATEWAY_B))
        .map_err(|e| e.to_string())?;
    if let Some(strip) = strip {
        let inbound = match strip {
            Strip::Forward => "tia",
            Strip::Return => "tib",
        };
        middlebox::strip_option(&ns, inbound, tifid::DEFAULT_KIND).map_err(|e| e.to_string())?;
    }
    Ok((ns, a, b))
}

/// The IPv6 router namespace: TUNs `tia` (fd00:7:1::1/64) and `tib`
/// (fd00:7:2::1/64), IPv6 forwarding on, and the TCPOPTSTRIP rule
/// (ip6tables) if asked.
fn router_namespace6(strip: Option<Strip>) -> Result<(NetNs, TunDevice, TunDevice), String> {
    let ns = NetNs::create("tirouter6").map_err(|e| e.to_string())?;
    quiet_ipv6(&ns)?;
    ns.enable_forwarding().map_err(|e| e.to_string())?;
    let open = |name, gateway| {
        topology::open_tun6(
            &ns,
            name,
            1500,
            Cidr6::slash64(gateway),
            OffloadRequest::Auto,
        )
        .map_err(|e| e.to_string())
    };
    let a = open("tia", scenarios::GATEWAY_A6)?;
    let b = open("tib", scenarios::GATEWAY_B6)?;
    if let Some(strip) = strip {
        let inbound = match strip {
            Strip::Forward => "tia",
            Strip::Return => "tib",
        };
        middlebox::strip_option6(&ns, inbound, tifid::DEFAULT_KIND).map_err(|e| e.to_string())?;
    }
    Ok((ns, a, b))
}

/// The mode the protocol requires at each side of a scenario.
fn expect_resilient(scenario: Scenario) -> bool {
    matches!(scenario.topology, Topology::TwoStacks(None))
}

/// Checks one of our hosts against the protocol; a finding is an `Err`.
fn check_host(scenario: Scenario, report: &HostReport) -> Result<(), String> {
    let side = report.side;
    if report.received != report.expected {
        return Err(format!(
            "{side:?} received {} bytes, expected {}",
            report.received.len(),
            report.expected.len()
        ));
    }
    let resilient = matches!(report.mode, Some(StreamMode::Known(Mode::Resilient { .. })));
    let legacy = report.mode == Some(StreamMode::Known(Mode::Legacy));
    if expect_resilient(scenario) && !resilient {
        return Err(format!(
            "{side:?} mode {:?}, expected Resilient",
            report.mode
        ));
    }
    if !expect_resilient(scenario) && !legacy {
        return Err(format!("{side:?} mode {:?}, expected Legacy", report.mode));
    }
    let resumed = report
        .events
        .iter()
        .any(|e| matches!(e, StreamEvent::Resumed { .. }));
    if scenario.fail_after_round.is_some() != resumed {
        return Err(format!("{side:?} events {:?}", report.events));
    }
    Ok(())
}

/// Runs one scenario; writes its trace files into `out`.
fn capture(scenario: Scenario, out: &Path, clock: Clock) -> Result<Vec<HostReport>, String> {
    let path = |side| out.join(scenario.file_name(side));
    let exchange = scenario.exchange();
    match scenario.topology {
        Topology::LinuxClient => {
            let (ns, tun) = kernel_namespace(scenario.ipv6)?;
            let host = spawn_host(scenario, Side::Responder, tun, path(Side::Responder), clock)?;
            let kernel = kernel_client(&ns, scenario);
            let report = join_host(host);
            let kernel = join_kernel(kernel?)?;
            if kernel != exchange.responses() {
                return Err(format!("Linux client read {} bytes", kernel.len()));
            }
            drop(ns);
            Ok(vec![report?])
        }
        Topology::LinuxServer => {
            let (ns, tun) = kernel_namespace(scenario.ipv6)?;
            let kernel = kernel_server(&ns, scenario)?;
            let host = spawn_host(scenario, Side::Initiator, tun, path(Side::Initiator), clock)?;
            let report = join_host(host);
            let kernel = join_kernel(kernel)?;
            if kernel != exchange.requests() {
                return Err(format!("Linux server read {} bytes", kernel.len()));
            }
            drop(ns);
            Ok(vec![report?])
        }
        Topology::TwoStacks(strip) => {
            let (ns, tun_a, tun_b) = if scenario.ipv6 {
                router_namespace6(strip)?
            } else {
                router_namespace(strip)?
            };
            let b = spawn_host(
                scenario,
                Side::Responder,
                tun_b,
                path(Side::Responder),
                clock,
            )?;
            let a = spawn_host(
                scenario,
                Side::Initiator,
                tun_a,
                path(Side::Initiator),
                clock,
            );
            let b = join_host(b);
            let a = join_host(a?);
            drop(ns);
            Ok(vec![a?, b?])
        }
    }
}

/// `uname -r`.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Today's date (UTC), `YYYY-MM-DD`.
fn utc_date() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

const BEGIN: &str = "<!-- captured:begin -->";
const END: &str = "<!-- captured:end -->";

/// The generated MANIFEST section: kernel, date, one row per file.
/// `subset`: the scenarios captured now when not all were (the others'
/// files were captured by an earlier run).
fn manifest_section(out: &Path, files: &[(Scenario, Side)], subset: &[String]) -> String {
    let scope = if subset.is_empty() {
        String::new()
    } else {
        format!(
            ": only {} (kernel and date of this run; the other files come from an earlier run, see the git history)",
            subset.join(", ")
        )
    };
    let mut text = format!(
        "{BEGIN}\n<!-- Generated by capture/capture_traces.rs; do not edit by hand. -->\n\n\
         - **Kernel:** Linux `{}` (`uname -r`)\n- **Captured:** {} (UTC){scope}\n\n\
         | File | Captured at | Packets | Bytes | SHA-256 |\n|---|---|---|---|---|\n",
        kernel_release(),
        utc_date()
    );
    for (scenario, side) in files {
        let name = scenario.file_name(*side);
        let bytes = std::fs::read(out.join(&name)).unwrap_or_default();
        let packets = load_trace(out.join(&name)).map_or(0, |p| p.len());
        let sha: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let at = match side {
            Side::Initiator => "initiator",
            Side::Responder => "responder",
        };
        text.push_str(&format!(
            "| `{name}` | {at} ({}) | {packets} | {} | `{sha}` |\n",
            scenario.our_addr(*side),
            bytes.len()
        ));
    }
    text.push_str(END);
    text
}

/// Replaces the generated section of `MANIFEST.md` (appends it if absent).
fn update_manifest(manifest: &Path, section: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(manifest).unwrap_or_default();
    let updated = match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{section}{}", &text[..b], &text[e + END.len()..])
        }
        _ => format!("{}\n{section}\n", text.trim_end()),
    };
    std::fs::write(manifest, updated).map_err(|e| format!("{}: {e}", manifest.display()))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut out = traces_dir();
    let mut only = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => match args.next() {
                Some(dir) => out = PathBuf::from(dir),
                None => {
                    eprintln!("--out needs a directory");
                    return ExitCode::FAILURE;
                }
            },
            "-h" | "--help" => {
                println!(
                    "capture_traces [--out DIR] [SCENARIO...]\n\
                     Captures the stock-kernel traces (as root). Scenarios:"
                );
                for s in ALL {
                    println!("  {:22} {}", s.name, s.summary);
                }
                return ExitCode::SUCCESS;
            }
            name => only.push(name.to_owned()),
        }
    }
    if let Err(e) = netns::check_privileges() {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let clock = Clock::start();
    let mut ok = true;
    let mut files = Vec::new();
    for scenario in ALL {
        if !only.is_empty() && !only.iter().any(|n| n == scenario.name) {
            continue;
        }
        println!("== {}: {}", scenario.name, scenario.summary);
        match capture(scenario, &out, clock) {
            Ok(reports) => {
                for report in &reports {
                    let verdict = check_host(scenario, report);
                    println!(
                        "   {:?}: {} packets, mode {:?}, events {:?}: {}",
                        report.side,
                        report.packets,
                        report.mode,
                        report.events,
                        verdict
                            .as_ref()
                            .map_or_else(|e| format!("FINDING: {e}"), |()| "ok".into())
                    );
                    ok &= verdict.is_ok();
                }
            }
            Err(e) => {
                println!("   FAILED: {e}");
                ok = false;
            }
        }
        for side in scenario.sides() {
            files.push((scenario, *side));
        }
    }
    if out == traces_dir() {
        if !only.is_empty() {
            // A subset: the section lists every scenario's files, the ones
            // not captured now with what is on disk.
            files = ALL
                .iter()
                .flat_map(|s| s.sides().iter().map(move |side| (*s, *side)))
                .collect();
        }
        let section = manifest_section(&out, &files, &only);
        if let Err(e) = update_manifest(&out.join("MANIFEST.md"), &section) {
            eprintln!("{e}");
            ok = false;
        }
    }
    println!("kernel {}, captured {}", kernel_release(), utc_date());
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
