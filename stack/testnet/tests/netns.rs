//! Tests of the namespace harness and the topologies, in namespaces of
//! their own (deleted on drop, also when a test fails).
//!
//! They need root (or CAP_NET_ADMIN + CAP_SYS_ADMIN), iproute2, and for the
//! middlebox tests iptables, nft and conntrack; without them they FAIL with
//! what is missing, never pass silently. Nothing is configured in the root
//! namespace.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ti_testnet::middlebox::{self, Middlebox};
use ti_testnet::netns::{self, NetNs, NetnsError};
use ti_testnet::topology::{self, Cidr, Line, LinePlan, TunSpec};

/// Upper bound on any wait here.
const DEADLINE: Duration = Duration::from_secs(20);

fn require_privileges() {
    if let Err(e) = netns::check_privileges() {
        panic!("{e}");
    }
}

fn require_middlebox_commands() {
    require_privileges();
    for (cmd, package) in middlebox::COMMANDS {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "`{cmd}` is missing: install package {package}");
    }
}

fn accept_bounded(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + DEADLINE;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).expect("blocking");
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "no connection within {DEADLINE:?}"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[test]
fn check_privileges_ok_as_root() {
    netns::check_privileges().expect("this machine runs the tests as root");
}

#[test]
fn netns_create_and_drop_removes_namespace() {
    require_privileges();
    let ns = NetNs::create("tidev").expect("create");
    let (name, path) = (ns.name().to_owned(), ns.path());
    assert!(
        name.starts_with("tidev") && name.len() <= netns::IFNAME_MAX,
        "{name}"
    );
    assert!(path.exists(), "{path:?} exists while the NetNs lives");
    let listed = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&name));
    // Names are unique.
    let other = NetNs::create("tidev").expect("create second");
    assert_ne!(other.name(), name);
    drop(ns);
    assert!(!path.exists(), "{path:?} removed on drop");
}

#[test]
fn netns_drop_tolerates_namespace_already_gone() {
    require_privileges();
    let ns = NetNs::create("tigone").expect("create");
    let status = std::process::Command::new("ip")
        .args(["netns", "del", ns.name()])
        .status()
        .expect("ip");
    assert!(status.success());
    drop(ns);
}

#[test]
fn netns_removed_when_test_panics() {
    require_privileges();
    let path = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let ns = NetNs::create("tipanic").expect("create");
        *path.lock().expect("lock") = Some(ns.path());
        panic!("simulated test failure");
    });
    assert!(result.is_err());
    let path = path
        .lock()
        .expect("lock")
        .clone()
        .expect("namespace was created");
    assert!(!path.exists(), "{path:?} removed during unwinding");
}

#[test]
fn netns_run_error_includes_stderr() {
    require_privileges();
    let ns = NetNs::create("tirun").expect("create");
    let out = ns
        .run(&["ip", "-o", "link", "show", "lo"])
        .expect("run in namespace");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("UP"),
        "lo is up"
    );
    match ns.run(&["ip", "link", "show", "nosuchif"]) {
        Err(NetnsError::Failed { stderr, .. }) => assert!(stderr.contains("nosuchif"), "{stderr}"),
        other => panic!("expected a Failed error, got {other:?}"),
    }
}

#[test]
fn netns_sysctl_applies_inside_only() {
    require_privileges();
    let ns = NetNs::create("tisysctl").expect("create");
    let root_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read");
    ns.enable_forwarding().expect("forwarding");
    let inside = ns
        .run(&["cat", "/proc/sys/net/ipv4/ip_forward"])
        .expect("run");
    assert_eq!(String::from_utf8_lossy(&inside.stdout).trim(), "1");
    let root_after = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read");
    assert_eq!(root_before, root_after, "the root namespace is untouched");
}

#[test]
fn netns_enter_propagates_panic() {
    require_privileges();
    let ns = NetNs::create("tienter").expect("create");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ns.enter(|| panic!("inside the namespace"))
    }));
    assert!(result.is_err());
    assert_eq!(ns.enter(|| 7).expect("enter"), 7);
}

#[test]
fn netns_veth_between_namespaces_carries_tcp() {
    require_privileges();
    let a = NetNs::create("tiva").expect("create a");
    let b = NetNs::create("tivb").expect("create b");
    NetNs::veth_pair(&a, "va", &b, "vb").expect("veth pair");
    a.add_addr("va", "10.8.0.1/24").expect("addr a");
    b.add_addr("vb", "10.8.0.2/24").expect("addr b");
    a.up("va").expect("up a");
    b.up("vb").expect("up b");
    // Nothing of this is in the root namespace.
    for ifname in ["va", "vb"] {
        let root = std::process::Command::new("ip")
            .args(["link", "show", ifname])
            .output()
            .expect("ip");
        assert!(
            !root.status.success(),
            "{ifname} must not exist in the root namespace"
        );
    }

    let listener = b
        .enter(|| TcpListener::bind("10.8.0.2:7000"))
        .expect("enter b")
        .expect("bind in b");
    let server = std::thread::spawn(move || {
        let mut s = accept_bounded(&listener);
        let peer = s.peer_addr().expect("peer address");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let mut buf = [0; 5];
        s.read_exact(&mut buf).expect("read");
        s.write_all(&buf).expect("echo");
        peer
    });
    let mut client = a
        .enter(|| TcpStream::connect_timeout(&"10.8.0.2:7000".parse().expect("addr"), DEADLINE))
        .expect("enter a")
        .expect("connect from a to b");
    client.set_read_timeout(Some(DEADLINE)).expect("timeout");
    client.write_all(b"hello").expect("write");
    let mut echo = [0; 5];
    client.read_exact(&mut echo).expect("read echo");
    assert_eq!(&echo, b"hello");
    let peer = server.join().expect("server");
    assert_eq!(peer.ip().to_string(), "10.8.0.1");
}

// ------------------------------------------------------------- topologies

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 9, 1, 2);
const INSIDE: Ipv4Addr = Ipv4Addr::new(10, 9, 1, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 9, 2, 1);
const OUTSIDE_NEXT: Ipv4Addr = Ipv4Addr::new(10, 9, 2, 3);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 2, 2);

const NEXT: [Cidr; 1] = [Cidr::slash24(OUTSIDE_NEXT)];

fn plan() -> LinePlan<'static> {
    LinePlan {
        client: Cidr::slash24(CLIENT),
        inside: Cidr::slash24(INSIDE),
        outside: Cidr::slash24(OUTSIDE),
        outside_secondary: &NEXT,
        server: Cidr::slash24(SERVER),
        server_gateway: Some(OUTSIDE),
    }
}

/// Connects from `from` to `to`, echoes five bytes; returns the address the
/// server saw, or `None` if the connection did not get through in 1 s.
fn exchange(from: &NetNs, listen_ns: &NetNs, to: SocketAddr) -> Option<SocketAddr> {
    let listener = listen_ns
        .enter(|| TcpListener::bind(to))
        .expect("enter")
        .expect("bind");
    let client = from
        .enter(|| TcpStream::connect_timeout(&to, Duration::from_secs(1)))
        .expect("enter");
    let mut client = client.ok()?;
    let mut server = accept_bounded(&listener);
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
fn home_router_line_masquerades_and_admits_only_replies() {
    require_middlebox_commands();
    let line = Line::build("tttl", &plan(), &Middlebox::HomeRouter).expect("build line");
    let seen = exchange(&line.client, &line.server, (SERVER, 7001).into())
        .expect("client reaches server through the NAT");
    assert_eq!(
        seen.ip(),
        OUTSIDE,
        "masqueraded to the primary outside address"
    );
    let table = line
        .middlebox
        .run(&["nft", "list", "table", "ip", middlebox::HOME_ROUTER_TABLE])
        .expect("nft list table");
    let table = String::from_utf8_lossy(&table.stdout);
    for rule in [
        "oifname \"m1\" masquerade",
        "iifname \"m1\" ct state established,related accept",
        "iifname \"m1\" drop",
    ] {
        assert!(table.contains(rule), "{rule:?} missing from:\n{table}");
    }
    assert!(
        middlebox::conntrack_list(&line.middlebox)
            .expect("conntrack -L")
            .contains("dport=7001"),
        "the NAT tracks the connection"
    );
    middlebox::conntrack_flush(&line.middlebox).expect("flush");
    assert!(
        !middlebox::conntrack_list(&line.middlebox)
            .expect("conntrack -L")
            .contains("dport=7001"),
        "flushed"
    );
    // The router "reboots" onto its next address (the demo's state loss).
    middlebox::home_router_snat(&line.middlebox, OUTSIDE_NEXT).expect("snat");
    let seen = exchange(&line.client, &line.server, (SERVER, 7004).into())
        .expect("client reaches server through the new mapping");
    assert_eq!(seen.ip(), OUTSIDE_NEXT, "mapped to the new address");
    // Unsolicited from outside: dropped.
    assert_eq!(
        exchange(&line.server, &line.client, (CLIENT, 7002).into()),
        None,
        "a connection from outside must not get in"
    );
}

#[test]
fn router_line_forwards_both_ways_without_nat() {
    require_middlebox_commands();
    let line = Line::build("tttr", &plan(), &Middlebox::Router).expect("build line");
    let seen = exchange(&line.client, &line.server, (SERVER, 7003).into()).expect("through");
    assert_eq!(seen.ip(), CLIENT, "no NAT");
    let seen = exchange(&line.server, &line.client, (CLIENT, 7004).into()).expect("back");
    assert_eq!(seen.ip(), SERVER);
}

#[test]
fn nftables_ruleset_is_loaded_and_its_firewall_applies() {
    require_middlebox_commands();
    const RULESET: &str = r#"table ip tttest {
    chain nat_postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "m1" masquerade
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "m0" oifname "m1" ct state new accept
    }
}
"#;
    let line =
        Line::build("tttn", &plan(), &Middlebox::Nftables(RULESET.into())).expect("build line");
    let seen = exchange(&line.client, &line.server, (SERVER, 7005).into()).expect("through");
    assert_eq!(seen.ip(), OUTSIDE);
    assert_eq!(
        exchange(&line.server, &line.client, (CLIENT, 7006).into()),
        None,
        "dropped by the nftables forward chain"
    );
    middlebox::nft(&line.middlebox, &["delete", "table", "ip", "tttest"]).expect("delete table");
    match middlebox::nft(&line.middlebox, &["list", "table", "ip", "tttest"]) {
        Err(NetnsError::Failed { .. }) => {}
        other => panic!("the table must be gone: {other:?}"),
    }
}

#[test]
fn strip_option_installs_tcpoptstrip_for_the_kind() {
    require_middlebox_commands();
    let line = Line::build("ttts", &plan(), &Middlebox::Router).expect("build line");
    middlebox::strip_option(&line.middlebox, topology::INSIDE_IF, 253).expect("rule");
    let rules = line
        .middlebox
        .run(&["iptables", "-w", "-t", "mangle", "-S", "FORWARD"])
        .expect("list");
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains("-i m0") && rules.contains("TCPOPTSTRIP") && rules.contains("253"),
        "{rules}"
    );
}

#[test]
fn open_tun_sets_the_gateway_and_brings_the_link_up() {
    require_privileges();
    let ns = NetNs::create("tttun").expect("create");
    let mut spec = TunSpec::new("ti0", Ipv4Addr::new(10, 9, 7, 1));
    spec.txqueuelen = Some(1234);
    let tun = topology::open_tun(&ns, &spec).expect("open");
    assert_eq!(tun.mtu(), 1500);
    let shown = ns.ip(&["-o", "addr", "show", "dev", "ti0"]).expect("show");
    assert!(String::from_utf8_lossy(&shown.stdout).contains("10.9.7.1/24"));
    let link = ns.ip(&["-o", "link", "show", "dev", "ti0"]).expect("show");
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        link.contains("qlen 1234") && link.contains("mtu 1500"),
        "{link}"
    );
}
