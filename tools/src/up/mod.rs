//! `tiflow up`: a TI-flow stack on a TUN device of a live host, forwarding
//! ports both ways so unmodified programs get resilient connections.
//!
//! Owns the [`Runtime`] on the device, the event loop that carries
//! connections (tokio: one relay task per connection, at most one worker
//! thread per core besides the stack's driver thread), and the orderly
//! shutdown on SIGINT/SIGTERM. The parts: [`args`] (the command line),
//! `host_setup` (the TUN device and the host's rules, reverted at exit by
//! [`host::Undo`]), `accept` (where connections come from), `relay` (how
//! bytes and ends pass), `registry` and `status` (what `tiflow status`
//! shows).
//!
//! It never makes a protocol decision (the stack does), and every task
//! ends when `tiflow up` stops.
//!
//! Ends pass through as what they are (DESIGN §4 "Abort"; see `relay`): FIN
//! for FIN, and a reset for a reset, a failed write to the local program,
//! an aborted or a lost flow; never a clean end of stream for a
//! conversation that did not end.

mod accept;
pub mod args;
pub mod config_file;
mod error;
mod host_setup;
mod metrics;
mod registry;
mod relay;
mod status;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use smoltcp::phy::Device;
use ti_stack::Runtime;
use ti_stack::device::Wait;
use ti_stack::device::pcap_tap::PcapTap;
use ti_stack::device::tun::TunDevice;
use tracing::{debug, info, warn};

pub use args::{
    Expose, Forward, Serve, UP_HELP, UpArgs, parse_duration, parse_option_kind, parse_tun_name,
};
pub use error::UpError;

use crate::cidr::IpCidr;
use crate::control::{ControlAddr, ControlServer};
use crate::host::{self, Undo};
use accept::{Carry, Descriptors, Inbound, Outbound, accept_outbound, accept_serves};
use host_setup::{configure_host, open_tun, raise_open_file_limit};
use registry::Conns;

/// At shutdown, how long connections get to pass their last bytes and FINs.
const GRACE: Duration = Duration::from_secs(3);
/// How often `tiflow up` looks whether its streams have all gone, to return
/// freed memory to the system.
const TRIM_EVERY: Duration = Duration::from_secs(2);
/// How often the stop flag (set by signal handlers) is looked at.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// `tiflow up` is stopping: a cheap handle every task holds.
#[derive(Clone)]
struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    /// Resolves once `tiflow up` stops.
    async fn stopped(&mut self) {
        // An error means the sender is gone: stopping too.
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}

/// `tiflow up`: runs until SIGINT or SIGTERM (or stdin closing, when asked).
pub fn run(args: &UpArgs) -> Result<(), UpError> {
    // Each --forward's remote of a family the stack has an address of.
    let args = &args.settled().map_err(UpError::Usage)?;
    host::check_net_admin()?;
    // The NAT rules go over netlink: iproute2's `ip` is the only command.
    host::require(&[host::IP])?;

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
    let (captures, capture_ports) = bind_capture_listeners(args)?;
    let metrics = match args.metrics {
        Some(addr) => {
            let listen_error = |source| UpError::Metrics { addr, source };
            let listener = TcpListener::bind(addr).map_err(listen_error)?;
            listener.set_nonblocking(true).map_err(listen_error)?;
            Some(listener)
        }
        None => None,
    };
    let control = ControlServer::bind(args.control_addr())?;
    let mut undo = Undo::default();
    let tun = open_tun(args)?;
    let offloads = host_setup::offload_text(tun.offloads());
    info!(tun = %args.tun, "{offloads}");
    configure_host(args, &capture_ports, &mut undo)?;

    let setup = Setup {
        args: args.clone(),
        stop,
        listeners,
        captures,
        metrics,
        control,
        offloads,
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

struct Setup {
    args: UpArgs,
    stop: Arc<AtomicBool>,
    listeners: Vec<(Forward, TcpListener)>,
    /// `--capture`: the listener (one per family) the kernel redirects
    /// captured connections to.
    captures: Vec<TcpListener>,
    /// `--metrics`: the endpoint's listener.
    metrics: Option<TcpListener>,
    control: ControlServer,
    /// How the TUN device moves packets.
    offloads: &'static str,
    started: Instant,
}

/// Worker threads for the relays: one per core, less the one the stack's
/// driver thread keeps busy; at least one.
fn relay_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_sub(1)
        .max(1)
}

/// The event loop: on one core's worth of machine or two, the calling
/// thread alone runs every relay; on more, a worker per core less one.
fn event_loop() -> io::Result<tokio::runtime::Runtime> {
    let threads = relay_threads();
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads).thread_name("tiflow-relay");
        b
    };
    builder.enable_all().build()
}

fn serve<D>(setup: Setup, device: D) -> Result<(), UpError>
where
    D: Device + Wait + Flush + Send + 'static,
{
    let Setup {
        args,
        stop,
        listeners,
        captures,
        metrics,
        control,
        offloads,
        started,
    } = setup;
    let descriptors = Arc::new(Descriptors::reserve().map_err(UpError::Start)?);
    let events = event_loop().map_err(UpError::Start)?;
    let config = args.stack_config();
    let connect_limit = config.connect_timeout + Duration::from_secs(5);
    let runtime = Arc::new(Runtime::start(config, device).map_err(UpError::Start)?);
    let conns = Conns::default();
    let mut ti_listeners = Vec::new();
    for s in &args.serves {
        let listener = runtime.listen(s.port).map_err(|source| UpError::Serve {
            port: s.port,
            source,
        })?;
        ti_listeners.push((Inbound::Serve(*s), listener));
    }
    if args.serve_all {
        let ports = args
            .allowed_ports()
            .iter()
            .map(|r| r.first..=r.last)
            .collect();
        let listener = runtime.listen_any(ports).map_err(UpError::ServeAll)?;
        ti_listeners.push((Inbound::All, listener));
    }
    print_banner(
        &args,
        offloads,
        &listeners,
        &captures,
        &ti_listeners,
        &control,
    );

    let (stopping, stop_rx) = tokio::sync::watch::channel(false);
    let carry = Carry {
        runtime: runtime.clone(),
        conns: conns.clone(),
        stop: Stop(stop_rx),
        descriptors,
        connect_limit,
    };
    events.block_on(async {
        for (f, listener) in listeners {
            tokio::spawn(accept_outbound(
                Outbound::Forward(f),
                listener,
                carry.clone(),
            ));
        }
        let captured: Arc<[IpCidr]> = args.captures.clone().into();
        for listener in captures {
            let outbound = Outbound::Capture(captured.clone());
            tokio::spawn(accept_outbound(outbound, listener, carry.clone()));
        }
        for (s, listener) in ti_listeners {
            tokio::spawn(accept_serves(s, listener, carry.clone()));
        }
        if let Some(listener) = metrics {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    let (runtime, conns, args) = (runtime.clone(), conns.clone(), args.clone());
                    let snapshot = move || {
                        let request = crate::control::Request::Status;
                        match status::handle(request, &args, &runtime, &conns, started) {
                            crate::control::Reply::Status(report) => {
                                Some((report, runtime.metrics()))
                            }
                            _ => None,
                        }
                    };
                    tokio::spawn(metrics::serve(listener, snapshot, carry.stop.clone()));
                }
                Err(e) => warn!(error = %e, "cannot serve --metrics"),
            }
        }
        tokio::spawn(release_memory_when_idle(
            runtime.clone(),
            conns.clone(),
            carry.stop.clone(),
        ));
        let stopped = async {
            while !stop.load(Ordering::Acquire) {
                tokio::time::sleep(STOP_CHECK).await;
            }
        };
        control
            .serve(stopped, |req| {
                status::handle(req, &args, &runtime, &conns, started)
            })
            .await;
        info!("stopping");
        let _ = stopping.send(true);
        // Relays pass their ends on; give the flows time to deliver them.
        let deadline = tokio::time::Instant::now() + GRACE;
        while tokio::time::Instant::now() < deadline
            && !(conns.is_empty() && runtime.stream_infos().is_empty())
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    events.shutdown_timeout(Duration::from_secs(1));
    drop(carry);
    runtime.with_stack(|stack, _| stack.device().flush_capture());
    match Arc::try_unwrap(runtime) {
        Ok(runtime) => runtime.stop(),
        Err(_) => warn!("connections still busy at exit; stopping anyway"),
    }
    drop(control);
    println!("tiflow up: stopped");
    Ok(())
}

/// Each `--capture` network with the port of the listener its
/// connections are redirected to.
type CapturePorts = Vec<(IpCidr, u16)>;

/// The listeners `--capture`'s redirect sends connections to, on
/// loopback (one per family captured, on a port the kernel picks), and
/// each captured network with the port of its family's listener.
fn bind_capture_listeners(args: &UpArgs) -> Result<(Vec<TcpListener>, CapturePorts), UpError> {
    let mut listeners = Vec::new();
    let mut nets = Vec::new();
    for loopback in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        let family: Vec<IpCidr> = args
            .captures
            .iter()
            .copied()
            .filter(|n| n.addr().is_ipv6() == loopback.is_ipv6())
            .collect();
        if family.is_empty() {
            continue;
        }
        let addr = SocketAddr::new(loopback, 0);
        let listen_error = |source| UpError::CaptureListen { addr, source };
        let listener = TcpListener::bind(addr).map_err(listen_error)?;
        listener.set_nonblocking(true).map_err(listen_error)?;
        let port = listener.local_addr().map_err(listen_error)?.port();
        nets.extend(family.into_iter().map(|n| (n, port)));
        listeners.push(listener);
    }
    Ok((listeners, nets))
}

/// What `tiflow up` runs with, on standard output.
fn print_banner<D: Device + Wait>(
    args: &UpArgs,
    offloads: &str,
    listeners: &[(Forward, TcpListener)],
    captures: &[TcpListener],
    ti_listeners: &[(Inbound, ti_stack::TiListener<D>)],
    control: &ControlServer,
) {
    println!(
        "tiflow up: TUN {} ({}), stack {}, kernel side {}, MTU {}, {}",
        args.tun,
        offloads,
        args.address_list(),
        args.kernel_address_list(),
        args.mtu,
        if args.no_ti {
            "plain TCP (--no-ti)".to_owned()
        } else {
            format!("TI-flows on (option kind {})", args.option_kind)
        }
    );
    for (f, _) in listeners {
        println!("  forward {} -> {}", f.listen, f.remote);
    }
    for net in &args.captures {
        let listener = captures
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .find(|l| l.is_ipv6() == net.addr().is_ipv6());
        match listener {
            Some(l) => println!("  capture TCP to {net} (redirected to {l})"),
            None => println!("  capture TCP to {net}"),
        }
    }
    if !args.captures.is_empty() && !args.masquerade {
        println!(
            "  (captured connections leave from {}: without --masquerade, peers need a route back to it)",
            args.address_list()
        );
    }
    for (s, _) in ti_listeners {
        match s {
            Inbound::Serve(s) => {
                let stack: Vec<String> = args
                    .addresses()
                    .iter()
                    .map(|a| SocketAddr::new(a.addr(), s.port).to_string())
                    .collect();
                println!("  serve   {} -> {}", stack.join(", "), s.target);
            }
            Inbound::All => println!(
                "  serve   {} port {} -> the same port on 127.0.0.1 / ::1",
                args.address_list(),
                port_list_text(&args.allowed_ports())
            ),
        }
    }
    for e in &args.exposes {
        println!(
            "  expose  host port {} -> stack port {}",
            e.host_port, e.port
        );
    }
    if args.expose_all {
        println!(
            "  expose  this host's addresses, port {} -> the same port of the stack",
            port_list_text(&args.allowed_ports())
        );
    }
    if args.masquerade {
        println!(
            "  masquerade {} behind this host's address",
            args.address_list()
        );
    }
    println!(
        "  timeouts: stall {:?}, keepalive {:?}, resume {:?}, plain TCP user timeout {:?}",
        args.stall_timeout, args.keepalive, args.resume_timeout, args.user_timeout
    );
    if listeners.is_empty() && ti_listeners.is_empty() && captures.is_empty() {
        println!(
            "  nothing to forward or serve: add --forward LISTEN=REMOTE (client side) \
             or --capture PREFIX (client side), --serve PORT=TARGET or --serve-all \
             (server side); see tiflow up --help"
        );
    }
    if args.masquerade || !args.exposes.is_empty() || args.expose_all || !captures.is_empty() {
        println!(
            "  nat rules in nftables table {} {} (tiflow down removes it after a crash)",
            crate::netfilter::FAMILY.name(),
            crate::netfilter::table_name(&args.tun)
        );
    }
    println!(
        "  resumes from a new peer address: {}; latency tuning: {}",
        if args.no_migration {
            "refused (--no-migration)"
        } else {
            "accepted"
        },
        if args.low_latency { "on" } else { "off" }
    );
    if let Some(m) = args.metrics {
        println!("  metrics http://{m}/metrics");
    }
    if let Some(p) = &args.pcap {
        println!("  pcap    {}", p.display());
    }
    println!("  control {}", control_text(control.addr()));
    println!("tiflow up: ready (Ctrl-C to stop)");
}

/// `--allow-ports` as the banner shows it: `22,8000-8100`, or `any`.
fn port_list_text(ports: &[crate::ports::PortRange]) -> String {
    if ports.is_empty() {
        return "any".into();
    }
    let each: Vec<String> = ports.iter().map(ToString::to_string).collect();
    each.join(",")
}

/// The banner's control socket: `@tiflow/tiflow0 (abstract, this network
/// namespace; tiflow status --tun tiflow0)` or the file.
fn control_text(addr: &ControlAddr) -> String {
    match addr {
        ControlAddr::Abstract(_) => format!("{addr} (abstract socket of this network namespace)"),
        ControlAddr::Path(_) => addr.to_string(),
    }
}

/// Hands freed memory back to the system each time the stack's streams
/// have all gone (checked every [`TRIM_EVERY`]): the tables sized for a
/// burst of connections shrink, and the allocator's free pages go back.
async fn release_memory_when_idle<D: Device + Wait + Send + 'static>(
    runtime: Arc<Runtime<D>>,
    conns: Conns,
    mut stop: Stop,
) {
    let mut busy_since_trim = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(TRIM_EVERY) => {}
            () = stop.stopped() => return,
        }
        forget_ended_streams(&runtime, &conns);
        let streams = runtime.resources().streams;
        if streams > 0 {
            busy_since_trim = true;
        } else if busy_since_trim {
            busy_since_trim = false;
            runtime.shrink_to_fit();
            conns.shrink_to_fit();
            let released = ti_stack::memory::release_free_memory();
            debug!(released, "idle: freed memory returned to the system");
        }
    }
}

/// Forgets the streams whose relay ended once the stack no longer holds
/// them (so the registry's list of them stays as short as the stack's
/// closing streams, even when nobody asks for the status).
fn forget_ended_streams<D: Device + Wait + Send + 'static>(runtime: &Runtime<D>, conns: &Conns) {
    let ended = conns.ended_streams();
    if ended.is_empty() {
        return;
    }
    let gone: Vec<_> = runtime.with_stack(|stack, _| {
        ended
            .into_iter()
            .filter(|id| stack.stream_info(*id).is_none())
            .collect()
    });
    conns.forget_ended(&gone);
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
