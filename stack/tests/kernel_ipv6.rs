//! ti-stack on TUN against the real Linux kernel over IPv6 (issue 16): the
//! IPv6 counterpart of `kernel.rs` and `offload.rs`.
//!
//! - Interop with stock Linux TCP over IPv6 both ways (our client to a
//!   Linux server, a Linux client to our listener): our SYN offers the
//!   option, Linux's SYN-ACK has none, both ends are legacy, nothing of ours
//!   after the SYN carries it; several MiB each way, byte-exact (SHA-256).
//!   With the TUN's offloads as `TI_TUN_OFFLOAD` says, and once each with
//!   offloads explicitly on and off (the device's counters checked).
//! - Two of our stacks through a Linux IPv6 router running real netfilter:
//!   NAT66 masquerade with its conntrack flushed mid-transfer, a stateful
//!   IPv6 firewall flushed mid-transfer, TCPOPTSTRIP each way (clean
//!   legacy), and the client's address replaced mid-transfer (a temporary
//!   address rotating within its /64, and a renumbering to another /64 with
//!   the kernel's routes following); each byte-exact with the expected
//!   resumes (one per disruption, on each end).
//!
//! Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN), iproute2, nft, ip6tables,
//! conntrack and /dev/net/tun: without them every test FAILS with what is
//! missing. Each test builds its own namespaces (unique names) and deletes
//! them, also on failure; nothing is configured in the root namespace.

// The support module is shared with `kernel.rs` and `offload.rs`; this
// file uses part of it.
#[allow(dead_code)]
mod kernel_support;

use std::net::{IpAddr, Ipv6Addr, SocketAddrV6, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use kernel_support::ipv6::{
    CLIENT_MOVED, CLIENT_RENUMBERED, CLIENT_STACK, LINUX, LinuxPeer6, MB_SERVER_SIDE, SERVER_STACK,
    Topology6,
};
use kernel_support::{
    Captured, DEADLINE, End, Pace, RunningFlow, accept_linux, assert_option_only_on_syns,
    join_bounded, ms, random_bytes, run_end, wait_until,
};
use ti_stack::device::tun::{OffloadOff, OffloadRequest, Offloads, TunStats};
use ti_stack::{Mode, StreamEvent};
use ti_testnet::Middlebox6;
use ti_testnet::netns;
use tifid::{FlowOptionRepr, Tifid};

/// Bytes each way in the transfers with Linux.
const INTEROP_BYTES: usize = 8 << 20;
/// Bytes each way in the transfers through middleboxes.
const FLOW_BYTES: usize = 4 << 20;
/// The failure is injected once the server has received this much.
const DISRUPT_AT: u64 = 1 << 20;
/// The path's MSS over IPv6: MTU 1500 less the IPv6 (40) and TCP (20)
/// headers.
const PATH_MSS6: u16 = 1440;

/// Fails the test with what is missing: root, iproute2, /dev/net/tun and
/// the middlebox commands.
fn require_privileges() {
    if let Err(e) = netns::check_privileges() {
        panic!("{e}");
    }
    for (tool, package) in ti_testnet::middlebox::COMMANDS {
        if let Err(e) = std::process::Command::new(tool).arg("--version").output() {
            panic!("cannot run `{tool}` ({e}): install package {package}");
        }
    }
}

/// The flow option of a captured segment, if it carries a valid one.
fn option_of(c: &Captured) -> Option<FlowOptionRepr> {
    c.seg.option.ok().flatten()
}

/// The TIFID of a resilient mode.
fn tifid_of(mode: Mode, what: &str) -> Tifid {
    match mode {
        Mode::Resilient { tifid } => tifid,
        Mode::Legacy => panic!("{what}: expected a TI-flow, got legacy TCP"),
    }
}

// -------------------------------------------------- interop with Linux

/// The MSS Linux uses to send on `stream` (`TCP_MAXSEG`): derived from
/// what our SYN or SYN-ACK advertised.
fn linux_mss(stream: &TcpStream) -> u16 {
    let mut mss: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `mss` and `len` are valid for writes and live for the call;
    // the fd is borrowed from `stream`, open for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&raw mut mss).cast(),
            &raw mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "getsockopt TCP_MAXSEG: {}",
        std::io::Error::last_os_error()
    );
    u16::try_from(mss).expect("an MSS fits 16 bits")
}

/// Both ends write `INTEROP_BYTES` at once and read until end of stream;
/// each must get the other's bytes exactly.
fn transfer_both_ways(ours: End, linux: End, seed: u64) -> Duration {
    let ours_data = Arc::new(random_bytes(seed, INTEROP_BYTES));
    let linux_data = Arc::new(random_bytes(seed + 1, INTEROP_BYTES));
    let started = Instant::now();
    let linux_job = run_end(
        linux,
        linux_data.clone(),
        Pace::FULL,
        Arc::new(AtomicU64::new(0)),
        "linux",
    );
    let our_job = run_end(
        ours,
        ours_data.clone(),
        Pace::FULL,
        Arc::new(AtomicU64::new(0)),
        "ours",
    );
    let deadline = Instant::now() + DEADLINE;
    let linux_report = join_bounded(linux_job, deadline, "linux end");
    let ours_report = join_bounded(our_job, deadline, "our end");
    linux_report.assert_received(&ours_data, "Linux got our bytes");
    ours_report.assert_received(&linux_data, "we got Linux's bytes");
    started.elapsed()
}

/// The legacy fallback on the wire of a connection we initiated to Linux:
/// our first SYN offers a new flow, Linux's SYN-ACK has no option, and no
/// later segment of ours (nor any of Linux's) carries it.
fn assert_legacy_on_the_wire_as_initiator(segs: &[Captured], port: u16) {
    let ours = |c: &Captured| c.seg.src.ip() == IpAddr::V6(CLIENT_STACK);
    let conn: Vec<&Captured> = segs
        .iter()
        .filter(|c| c.seg.src.port() == port || c.seg.dst.port() == port)
        .collect();
    let first = *conn.first().expect("something was captured");
    assert!(
        ours(first) && first.seg.syn && !first.seg.ack,
        "first packet is our SYN: {:?}",
        first.seg
    );
    assert!(first.seg.src.is_ipv6(), "over IPv6");
    let offer = option_of(first).expect("our SYN offers a TI-flow");
    assert!(
        !offer.tifid.initiator_half().is_zero() && offer.tifid.responder_half().is_zero(),
        "a new-flow request: {offer:?}"
    );
    let syn_ack = conn
        .iter()
        .find(|c| c.seg.syn && c.seg.ack)
        .expect("Linux's SYN-ACK");
    assert_eq!(syn_ack.seg.option, Ok(None), "Linux ignores our option");
    for c in conn.iter().filter(|c| ours(c)) {
        if !matches!(c.seg.option, Ok(None)) {
            assert!(
                c.seg.syn && !c.seg.ack && c.seg.seq == first.seg.seq,
                "only our initial SYN (or its retransmission) may carry the option: {:?}",
                c.seg
            );
        }
    }
    assert!(
        conn.iter()
            .filter(|c| c.seg.src.ip() == IpAddr::V6(LINUX))
            .all(|c| c.seg.option == Ok(None)),
        "Linux never sends our option"
    );
    assert!(
        conn.iter().filter(|c| ours(c) && !c.seg.syn).count() > 10,
        "our data segments were captured"
    );
}

/// Our stack connects to a Linux server over IPv6, then a Linux client
/// connects to our listener; both move `INTEROP_BYTES` each way, legacy,
/// byte-exact. Returns the TUN's mode and counters.
fn interop_both_ways(prefix: &str, offload: OffloadRequest) -> (Offloads, TunStats) {
    require_privileges();
    let peer = LinuxPeer6::with_offload(prefix, offload, |_| {});

    // Ours -> Linux.
    let port = 5201;
    let listener = peer.listen(port);
    let linux = std::thread::spawn(move || accept_linux(&listener, Duration::from_secs(10)));
    let stream = peer
        .host
        .runtime()
        .connect(SocketAddrV6::new(LINUX, port, 0, 0))
        .expect("connect to Linux over IPv6");
    assert_eq!(stream.mode(), Mode::Legacy, "Linux does not speak TI");
    let linux_stream = join_bounded(linux, Instant::now() + DEADLINE, "Linux accept");
    assert_eq!(
        linux_stream.peer_addr().expect("peer").ip(),
        IpAddr::V6(CLIENT_STACK),
        "Linux sees our IPv6 address"
    );
    let outbound_mss = linux_mss(&linux_stream);
    let outbound = transfer_both_ways(End::ti(stream.try_clone()), End::tcp(linux_stream), 61);
    assert_eq!(stream.mode(), Mode::Legacy);
    assert!(stream.events().is_empty(), "a legacy stream has no events");

    // Linux -> ours.
    let port = 5202;
    let listener = peer.host.runtime().listen(port).expect("listen");
    let linux_stream = peer.connect(SocketAddrV6::new(CLIENT_STACK, port, 0, 0).into());
    let accepted = listener
        .accept_timeout(Some(Duration::from_secs(10)))
        .expect("accept")
        .expect("Linux's connection");
    assert_eq!(accepted.mode(), Mode::Legacy);
    let inbound_mss = linux_mss(&linux_stream);
    let inbound = transfer_both_ways(End::ti(accepted.try_clone()), End::tcp(linux_stream), 71);
    assert_eq!(accepted.mode(), Mode::Legacy);
    assert!(accepted.events().is_empty());

    let segs = peer.host.segments();
    assert_legacy_on_the_wire_as_initiator(&segs, 5201);
    let inbound_segs: Vec<&Captured> = segs
        .iter()
        .filter(|c| c.seg.src.port() == 5202 || c.seg.dst.port() == 5202)
        .collect();
    assert!(
        inbound_segs
            .iter()
            .any(|c| c.seg.syn && c.seg.ack && c.seg.src.ip() == IpAddr::V6(CLIENT_STACK)),
        "our SYN-ACK was captured"
    );
    for c in &inbound_segs {
        assert_eq!(
            c.seg.option,
            Ok(None),
            "no segment of Linux's connection carries our option: {:?}",
            c.seg
        );
    }
    for (way, mss) in [("ours->Linux", outbound_mss), ("Linux->ours", inbound_mss)] {
        assert!(
            mss <= PATH_MSS6,
            "{way}: Linux sends us segments of {mss} bytes, more than the IPv6 path's MSS"
        );
    }
    let largest = segs
        .iter()
        .filter(|c| c.seg.src.ip() == IpAddr::V6(CLIENT_STACK))
        .map(|c| c.seg.payload_len)
        .max()
        .unwrap_or(0);
    assert!(
        largest <= usize::from(PATH_MSS6),
        "no segment of ours carries more than the path's MSS: {largest}"
    );
    let (mode, stats) = peer.host.tun();
    assert_eq!(stats.rx_bad_header, 0, "no header was refused: {stats:?}");
    assert_eq!(stats.tx_errors, 0, "no packet failed to leave: {stats:?}");
    let mib = (2 * INTEROP_BYTES) as f64 / f64::from(1 << 20);
    eprintln!(
        "[kernel-ipv6] interop {mode:?}: ours->Linux {:.0} MiB/s, Linux->ours {:.0} MiB/s \
         (both directions summed), legacy, byte-exact, {} segments captured; {stats:?}",
        mib / outbound.as_secs_f64(),
        mib / inbound.as_secs_f64(),
        segs.len(),
    );
    (mode, stats)
}

/// Legacy interop with Linux over IPv6 both ways, with the offloads
/// `TI_TUN_OFFLOAD` asks for (run the suite with `TI_TUN_OFFLOAD=off` for
/// plain packets).
#[test]
fn ipv6_interop_with_linux_both_ways_is_legacy_and_byte_exact() {
    interop_both_ways("k6i", kernel_support::offload_from_env());
}

/// The same with offloads on: TCP/IPv6 checksums left to the kernel, and
/// no segment from us larger than the path's MSS (smoltcp 0.14 cannot emit
/// IPv6 segments larger than the MTU: no TSO6 on egress); the kernel hands
/// us coalesced IPv6 segments (TSO6 on ingress).
#[test]
fn ipv6_interop_with_offloads_on() {
    let (mode, stats) = interop_both_ways("k6o", OffloadRequest::Auto);
    assert_eq!(
        mode,
        Offloads::Active,
        "this kernel supports IFF_VNET_HDR and TUNSETOFFLOAD"
    );
    assert_eq!(
        stats.tx_gso_packets, 0,
        "no IPv6 segment is left for the kernel to cut: {stats:?}"
    );
    assert!(
        stats.rx_checksums_completed > 0 || stats.rx_coalesced > 0,
        "the kernel left checksums to us: {stats:?}"
    );
    assert!(
        stats.rx_coalesced > 0,
        "the kernel handed us coalesced IPv6 segments: {stats:?}"
    );
}

/// The same with offloads forced off: plain packets only.
#[test]
fn ipv6_interop_with_offloads_off() {
    let (mode, stats) = interop_both_ways("k6f", OffloadRequest::Off);
    assert_eq!(mode, Offloads::Off(OffloadOff::NotRequested));
    assert_eq!(stats.tx_gso_packets, 0, "{stats:?}");
    assert_eq!(stats.rx_coalesced, 0, "{stats:?}");
    assert_eq!(stats.rx_checksums_completed, 0, "{stats:?}");
}

// ------------------------------------------- through a Linux IPv6 router

/// The resume SYNs (complete TIFID `tifid`, no ACK) in a capture.
fn resume_syns(segs: &[Captured], tifid: Tifid) -> Vec<Captured> {
    segs.iter()
        .filter(|c| c.seg.syn && !c.seg.ack)
        .filter(|c| option_of(c).is_some_and(|o| o.tifid == tifid))
        .copied()
        .collect()
}

/// Asserts a finished TI-flow kept its TIFID on both ends, resumed exactly
/// `resumes` times on each, and never lost or fell back.
fn assert_resumed(outcome: &kernel_support::FlowOutcome, tifid: Tifid, resumes: usize, name: &str) {
    assert_eq!(tifid_of(outcome.client_mode, "client"), tifid, "{name}");
    assert_eq!(tifid_of(outcome.server_mode, "server"), tifid, "{name}");
    let (c, s) = (outcome.client_resumes(), outcome.server_resumes());
    eprintln!(
        "[kernel-ipv6] {name}: byte-exact both ways ({} MiB each); client resumes {:?}, server \
         resumes {:?} (downtimes); total {:.2} s",
        FLOW_BYTES >> 20,
        c.iter()
            .map(|d| format!("{:.0} ms", ms(*d)))
            .collect::<Vec<_>>(),
        s.iter()
            .map(|d| format!("{:.0} ms", ms(*d)))
            .collect::<Vec<_>>(),
        outcome.elapsed.as_secs_f64(),
    );
    assert_eq!(c.len(), resumes, "{name}: client resumes");
    assert_eq!(s.len(), resumes, "{name}: server resumes");
    assert!(
        !outcome
            .client_events
            .iter()
            .chain(&outcome.server_events)
            .any(|e| matches!(e, StreamEvent::Lost(_) | StreamEvent::FellBack(_))),
        "{name}: no loss, no fallback: {:?} / {:?}",
        outcome.client_events,
        outcome.server_events
    );
}

/// Runs a paced IPv6 TI-flow (4 MiB each way) through `topology`, calls
/// `disrupt` once the server has 1 MiB, waits for the client to resume,
/// checks both directions byte-exact and exactly one resume on each end.
fn run_disrupted(topology: &Topology6, port: u16, name: &str, disrupt: impl FnOnce()) -> Tifid {
    let mut flow = RunningFlow::start_between(
        topology.client.runtime(),
        topology.server.runtime(),
        Topology6::server_at(port),
        FLOW_BYTES,
        Pace::PACED,
    );
    let tifid = flow.tifid();
    assert_eq!(tifid_of(flow.server.mode(), "server"), tifid);
    flow.wait_server_received(DISRUPT_AT);
    let started = Instant::now();
    disrupt();
    let resumed_at = flow
        .wait_client_resumed(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{name}: the client did not resume within 30 s"));
    eprintln!(
        "[kernel-ipv6] {name}: disruption -> resumed {:.0} ms",
        ms(resumed_at - started)
    );
    let outcome = flow.finish();
    assert_resumed(&outcome, tifid, 1, name);
    tifid
}

/// (a) NAT66 (masquerade, random ports) forgets its connections
/// mid-transfer: the old connection's next packet gets a new mapping on a
/// new port, the server's stack resets the unknown connection, and the
/// flow resumes through the NAT.
#[test]
fn nat66_conntrack_flush_mid_transfer_flow_resumes() {
    require_privileges();
    let topology = Topology6::new("k6n", Middlebox6::Nat66);
    let before = std::cell::Cell::new(0usize);
    let tifid = run_disrupted(&topology, 7101, "NAT66 conntrack -F", || {
        before.set(topology.conntrack_list().lines().count());
        topology.conntrack_flush();
    });
    assert!(
        before.get() >= 1,
        "the NAT tracked the connection before the flush"
    );
    let segs = topology.server.segments();
    assert!(
        segs.iter()
            .filter(|c| c.seg.dst.ip() == IpAddr::V6(SERVER_STACK))
            .all(|c| c.seg.src.ip() == IpAddr::V6(MB_SERVER_SIDE)),
        "the server only ever saw the NAT's outside address"
    );
    let first_port = segs
        .iter()
        .find(|c| c.seg.syn && !c.seg.ack)
        .map(|c| c.seg.src.port())
        .expect("the first SYN");
    let resumes = resume_syns(&segs, tifid);
    assert!(!resumes.is_empty(), "the server saw the resume SYN");
    assert!(
        resumes
            .iter()
            .all(|c| c.seg.src.ip() == IpAddr::V6(MB_SERVER_SIDE) && c.seg.src.port() != first_port),
        "the resume arrived through the NAT on a new port: {resumes:?}"
    );
}

/// (b) A stateful IPv6 firewall (default drop; tracked connections and new
/// SYNs from inside pass) forgets its connections: the old connection is
/// blackholed both ways, the stall is detected, the resume SYN passes.
#[test]
fn ipv6_firewall_conntrack_flush_mid_transfer_flow_resumes() {
    require_privileges();
    let topology = Topology6::new("k6w", Middlebox6::Firewall);
    let dropped_before = std::cell::Cell::new(0);
    let tifid = run_disrupted(&topology, 7102, "IPv6 firewall conntrack -F", || {
        dropped_before.set(topology.firewall_dropped());
        topology.conntrack_flush();
    });
    let dropped = topology.firewall_dropped() - dropped_before.get();
    eprintln!("[kernel-ipv6] IPv6 firewall dropped {dropped} packets of the old connection");
    assert!(
        dropped >= 1,
        "the firewall blackholed the old connection after the flush"
    );
    let segs = topology.server.segments();
    let resumes = resume_syns(&segs, tifid);
    assert!(
        !resumes.is_empty()
            && resumes
                .iter()
                .all(|c| c.seg.src.ip() == IpAddr::V6(CLIENT_STACK)),
        "the resume came from the client, not NATed: {resumes:?}"
    );
}

/// (c) ip6tables TCPOPTSTRIP of our kind on the path; returns both
/// captures after checking a clean legacy connection on both ends.
fn optstrip(prefix: &str, port: u16, in_if: &str, what: &str) -> (Vec<Captured>, Vec<Captured>) {
    require_privileges();
    let topology = Topology6::new(prefix, Middlebox6::Router);
    topology.strip_option(in_if);
    let flow = RunningFlow::start_between(
        topology.client.runtime(),
        topology.server.runtime(),
        Topology6::server_at(port),
        FLOW_BYTES,
        Pace::FULL,
    );
    assert_eq!(flow.client.mode(), Mode::Legacy, "{what}: client legacy");
    let outcome = flow.finish();
    assert_eq!(outcome.client_mode, Mode::Legacy, "{what}: client legacy");
    assert_eq!(outcome.server_mode, Mode::Legacy, "{what}: server legacy");
    assert!(
        outcome.client_resumes().is_empty() && outcome.server_resumes().is_empty(),
        "{what}: nothing to resume"
    );
    assert!(
        !outcome
            .client_events
            .iter()
            .chain(&outcome.server_events)
            .any(|e| matches!(e, StreamEvent::Lost(_))),
        "{what}: no failure"
    );
    let client_segs = topology.client.segments();
    let server_segs = topology.server.segments();
    for (segs, side) in [
        (&client_segs, "client capture"),
        (&server_segs, "server capture"),
    ] {
        assert_option_only_on_syns(segs, CLIENT_STACK, side);
        assert_option_only_on_syns(segs, SERVER_STACK, side);
    }
    eprintln!(
        "[kernel-ipv6] TCPOPTSTRIP {what}: legacy on both ends, byte-exact ({} MiB each way) in {:.2} s",
        FLOW_BYTES >> 20,
        outcome.elapsed.as_secs_f64(),
    );
    (client_segs, server_segs)
}

/// (c) The option is stripped from client to server: the server sees a
/// plain SYN and answers as legacy.
#[test]
fn ipv6_optstrip_forward_path_gives_clean_legacy() {
    let (client, server) = optstrip("k6s", 7103, "m0", "forward path");
    let sent = client
        .iter()
        .find(|c| c.seg.syn && !c.seg.ack && c.seg.src.ip() == IpAddr::V6(CLIENT_STACK))
        .expect("client SYN");
    assert!(option_of(sent).is_some(), "the client offered TI");
    let got = server
        .iter()
        .find(|c| c.seg.syn && !c.seg.ack)
        .expect("SYN at the server");
    assert_eq!(got.seg.option, Ok(None), "the middlebox stripped it");
    assert!(
        server.iter().all(|c| c.seg.option == Ok(None)),
        "nothing with the option ever reached or left the server"
    );
}

/// (c) The option is stripped from server to client: the client sees a
/// plain SYN-ACK and goes legacy; the server gets no confirmation and goes
/// legacy too.
#[test]
fn ipv6_optstrip_return_path_gives_clean_legacy() {
    let (client, server) = optstrip("k6r", 7104, "m1", "return path");
    let syn_ack_sent = server
        .iter()
        .find(|c| c.seg.syn && c.seg.ack && c.seg.src.ip() == IpAddr::V6(SERVER_STACK))
        .expect("server SYN-ACK");
    assert!(
        option_of(syn_ack_sent).is_some(),
        "the server accepted the offer"
    );
    let syn_ack_got = client
        .iter()
        .find(|c| c.seg.syn && c.seg.ack)
        .expect("SYN-ACK at the client");
    assert_eq!(
        syn_ack_got.seg.option,
        Ok(None),
        "the middlebox stripped it"
    );
    assert!(
        client
            .iter()
            .filter(|c| c.seg.src.ip() == IpAddr::V6(CLIENT_STACK) && !c.seg.syn)
            .all(|c| c.seg.option == Ok(None)),
        "the client never confirmed"
    );
}

/// (d) The client's IPv6 address is replaced mid-transfer by another one
/// in the same /64 (a temporary address rotating; the kernel's route to
/// the /64 already covers it): the flow resumes once from the new
/// address, the server's flow follows the new peer, data exact.
#[test]
fn ipv6_address_change_mid_transfer_resumes_from_new_address() {
    address_change("k6a", 7105, CLIENT_MOVED, false);
}

/// (d) The client's network is renumbered mid-transfer: its stack moves to
/// another /64, and the kernel's routes follow (the client host routes the
/// new prefix into the TUN; the middlebox already routes it to the client
/// host). The flow resumes once from the new address, data exact.
#[test]
fn ipv6_renumbering_mid_transfer_resumes_from_the_new_prefix() {
    address_change("k6p", 7106, CLIENT_RENUMBERED, true);
}

/// Moves the client's stack to `new_addr` (/64) once the server has
/// 1 MiB; `route` adds the kernel's route to the new /64 into the TUN
/// first. Checks one resume from the new address, byte-exact.
fn address_change(prefix: &str, port: u16, new_addr: Ipv6Addr, route: bool) {
    require_privileges();
    let topology = Topology6::new(prefix, Middlebox6::Router);
    let mut flow = RunningFlow::start_between(
        topology.client.runtime(),
        topology.server.runtime(),
        Topology6::server_at(port),
        FLOW_BYTES,
        Pace::PACED,
    );
    let tifid = flow.tifid();
    let old_local = flow.client.local_addr().expect("client connection");
    assert_eq!(old_local.ip(), IpAddr::V6(CLIENT_STACK));
    flow.wait_server_received(DISRUPT_AT);
    if route {
        topology
            .client
            .ns()
            .add_dev_route6(&format!("{new_addr}/64"), "ti0")
            .expect("kernel route to the new prefix");
    }
    let started = Instant::now();
    topology
        .client
        .runtime()
        .with_stack(|stack, now| stack.set_address(now, new_addr, 64));
    let resumed_at = flow
        .wait_client_resumed(Duration::from_secs(30))
        .expect("the client resumed after moving");
    let new_local = flow.client.local_addr().expect("resumed connection");
    assert_eq!(
        new_local.ip(),
        IpAddr::V6(new_addr),
        "resumed from the new address"
    );
    wait_until(
        Duration::from_secs(10),
        "the server's flow to see the new peer",
        || {
            topology.server.runtime().with_stack(|stack, _| {
                stack.flows().get(tifid).map(|f| f.peer()) == Some(IpAddr::V6(new_addr))
            })
        },
    );
    assert_eq!(
        flow.client.peer_addr(),
        Some(Topology6::server_at(port)),
        "the client's peer is unchanged"
    );
    let outcome = flow.finish();
    assert_resumed(
        &outcome,
        tifid,
        1,
        &format!("IPv6 address change to {new_addr}"),
    );
    let segs = topology.server.segments();
    assert!(
        resume_syns(&segs, tifid)
            .iter()
            .any(|c| c.seg.src.ip() == IpAddr::V6(new_addr)),
        "the server saw the resume SYN from the new address"
    );
    assert!(
        segs.iter()
            .any(|c| c.seg.dst.ip() == IpAddr::V6(new_addr) && c.seg.payload_len > 0),
        "the server sent data to the new address"
    );
    eprintln!(
        "[kernel-ipv6] address change {old_local} -> {new_local}: move -> resumed {:.1} ms",
        ms(resumed_at - started)
    );
}

// ------------------------------------------------------------ findings

/// Found by these tests (about one run in ten of the 8 MiB interop here and
/// of `offload.rs` over IPv4: "read failed after 8388608 bytes: connection
/// reset", while the capture showed a clean close, no RST): a legacy stream
/// whose peer's FIN came while our unread data filled the stream's receive
/// buffer, so some stayed in the socket, and which then closed from
/// LAST-ACK, was reported reset once the socket was CLOSED (the pump
/// counted the peer's FIN only in CLOSE-WAIT, LAST-ACK, CLOSING and
/// TIME-WAIT, and a CLOSED socket without a clean end was a failure).
/// Made deterministic here: Linux sends more than the receive buffer and
/// its FIN, we close without reading, then read everything.
#[test]
fn legacy_close_from_last_ack_with_unread_data_ends_cleanly() {
    use std::io::{Read, Write};
    require_privileges();
    let peer = LinuxPeer6::with_offload("k6c", OffloadRequest::Off, |config| {
        config.socket_buffer = 64 << 10;
        config.recv_buffer = 64 << 10;
    });
    let port = 5203;
    let sent = random_bytes(81, 96 << 10);
    let listener = peer.listen(port);
    let linux = {
        let sent = sent.clone();
        std::thread::spawn(move || {
            let mut stream = accept_linux(&listener, Duration::from_secs(10));
            stream
                .set_read_timeout(Some(DEADLINE))
                .expect("read timeout");
            stream.write_all(&sent).expect("Linux writes");
            stream
                .shutdown(std::net::Shutdown::Write)
                .expect("Linux shutdown");
            let mut back = Vec::new();
            stream.read_to_end(&mut back).expect("Linux reads our FIN");
            back.len()
        })
    };
    let mut stream = peer
        .host
        .runtime()
        .connect(SocketAddrV6::new(LINUX, port, 0, 0))
        .expect("connect to Linux over IPv6");
    stream.set_read_timeout(Some(DEADLINE));
    // Linux's bytes and FIN arrive; we read nothing yet.
    std::thread::sleep(Duration::from_millis(300));
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("our shutdown");
    // Our FIN is acknowledged: LAST-ACK -> CLOSED with bytes unread.
    std::thread::sleep(Duration::from_millis(300));
    let mut got = Vec::new();
    let read = stream.read_to_end(&mut got);
    assert_eq!(
        join_bounded(linux, Instant::now() + DEADLINE, "Linux"),
        0,
        "we sent nothing"
    );
    assert_eq!(got.len(), sent.len(), "every byte Linux sent ({read:?})");
    assert!(got == sent, "exact bytes");
    read.expect("a clean end of stream, not a reset");
}
