//! Tests of the IPv6 helpers: the IPv6 line (router, NAT66, stateful
//! firewall), TCPOPTSTRIP over IPv6, the IPv6 conntrack flush, and a TUN
//! with an IPv6 gateway, in namespaces of their own (deleted on drop, also
//! when a test fails).
//!
//! They need root (or CAP_NET_ADMIN + CAP_SYS_ADMIN), iproute2, nft,
//! ip6tables and conntrack; without them they FAIL with what is missing,
//! never pass silently. Nothing is configured in the root namespace.

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ti_stack::device::tun::OffloadRequest;
use ti_testnet::middlebox::{self, Middlebox6};
use ti_testnet::netns::{self, NetNs};
use ti_testnet::topology::{self, Cidr6, Line, LinePlan6};

/// Upper bound on any wait here.
const DEADLINE: Duration = Duration::from_secs(20);

const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x61, 0, 0, 0, 0, 0, 2);
const INSIDE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x61, 0, 0, 0, 0, 0, 1);
const OUTSIDE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x62, 0, 0, 0, 0, 0, 1);
const SERVER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x62, 0, 0, 0, 0, 0, 2);

fn require_commands() {
    if let Err(e) = netns::check_privileges() {
        panic!("{e}");
    }
    for (cmd, package) in middlebox::COMMANDS {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "`{cmd}` is missing: install package {package}");
    }
}

fn plan() -> LinePlan6 {
    LinePlan6 {
        client: Cidr6::slash64(CLIENT),
        inside: Cidr6::slash64(INSIDE),
        outside: Cidr6::slash64(OUTSIDE),
        server: Cidr6::slash64(SERVER),
        server_gateway: Some(OUTSIDE),
    }
}

/// Connects from `from` to `to` within 1 s, sends five bytes; returns the
/// address the server saw, or `None` if the connection did not get
/// through.
fn exchange(from: &NetNs, listen_ns: &NetNs, to: SocketAddr) -> Option<SocketAddr> {
    let listener = listen_ns
        .enter(|| TcpListener::bind(to))
        .expect("enter")
        .expect("bind");
    let client = from
        .enter(|| TcpStream::connect_timeout(&to, Duration::from_secs(1)))
        .expect("enter");
    let mut client = match client {
        Ok(c) => c,
        Err(e) => {
            eprintln!("connect {to}: {e}");
            return None;
        }
    };
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + DEADLINE;
    let mut server = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no connection accepted");
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    server.set_nonblocking(false).expect("blocking");
    let seen = server.peer_addr().expect("peer");
    client.write_all(b"hello").expect("write");
    let mut buf = [0; 5];
    server
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    server.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"hello");
    Some(seen)
}

#[test]
fn ipv6_router_line_forwards_both_ways_without_nat() {
    require_commands();
    let line = Line::build6("t6r", &plan(), &Middlebox6::Router).expect("build line");
    let seen = exchange(&line.client, &line.server, (SERVER, 7101).into()).expect("through");
    assert_eq!(seen.ip(), CLIENT, "no NAT");
    let seen = exchange(&line.server, &line.client, (CLIENT, 7102).into()).expect("back");
    assert_eq!(seen.ip(), SERVER);
}

#[test]
fn nat66_masquerades_with_random_ports_and_its_state_flushes() {
    require_commands();
    let line = Line::build6("t6n", &plan(), &Middlebox6::Nat66).expect("build line");
    let seen = exchange(&line.client, &line.server, (SERVER, 7103).into()).expect("through");
    assert_eq!(seen.ip(), OUTSIDE, "masqueraded to the outside address");
    let table = line
        .middlebox
        .run(&["nft", "list", "table", "ip6", middlebox::MIDDLEBOX6_TABLE])
        .expect("nft list table");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("oifname \"m1\" masquerade random"),
        "{table}"
    );
    let tracked = middlebox::conntrack_list6(&line.middlebox).expect("conntrack -L");
    assert!(tracked.contains("dport=7103"), "tracked: {tracked}");
    middlebox::conntrack_flush6(&line.middlebox).expect("flush");
    let tracked = middlebox::conntrack_list6(&line.middlebox).expect("conntrack -L");
    assert!(!tracked.contains("dport=7103"), "flushed: {tracked}");
}

#[test]
fn ipv6_firewall_admits_new_connections_only_from_inside() {
    require_commands();
    let line = Line::build6("t6f", &plan(), &Middlebox6::Firewall).expect("build line");
    let seen = exchange(&line.client, &line.server, (SERVER, 7104).into()).expect("out");
    assert_eq!(seen.ip(), CLIENT, "no NAT");
    assert_eq!(
        middlebox::firewall6_dropped(&line.middlebox).expect("counter"),
        0
    );
    assert_eq!(
        exchange(&line.server, &line.client, (CLIENT, 7105).into()),
        None,
        "a connection from outside must not get in"
    );
    assert!(
        middlebox::firewall6_dropped(&line.middlebox).expect("counter") >= 1,
        "the refused SYN was counted"
    );
}

#[test]
fn strip_option6_installs_tcpoptstrip_for_the_kind() {
    require_commands();
    let line = Line::build6("t6s", &plan(), &Middlebox6::Router).expect("build line");
    middlebox::strip_option6(&line.middlebox, topology::INSIDE_IF, 253).expect("rule");
    let rules = line
        .middlebox
        .run(&["ip6tables", "-w", "-t", "mangle", "-S", "FORWARD"])
        .expect("list");
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains("-i m0") && rules.contains("TCPOPTSTRIP") && rules.contains("253"),
        "{rules}"
    );
    exchange(&line.client, &line.server, (SERVER, 7106).into()).expect("still forwards");
}

#[test]
fn open_tun6_sets_the_ipv6_gateway_and_brings_the_link_up() {
    require_commands();
    let ns = NetNs::create("t6tun").expect("create");
    ns.enable_ipv6().expect("IPv6 on");
    let gateway = Cidr6::slash64(Ipv6Addr::new(0xfd00, 0x69, 0, 0, 0, 0, 0, 1));
    let tun = topology::open_tun6(&ns, "ti0", 1400, gateway, OffloadRequest::Off).expect("open");
    assert_eq!(tun.mtu(), 1400);
    let shown = ns
        .ip(&["-6", "-o", "addr", "show", "dev", "ti0"])
        .expect("show");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("fd00:69::1/64") && !shown.contains("tentative"),
        "the address is usable at once: {shown}"
    );
    let link = ns.ip(&["-o", "link", "show", "dev", "ti0"]).expect("show");
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("mtu 1400"),
        "MTU set"
    );
}
