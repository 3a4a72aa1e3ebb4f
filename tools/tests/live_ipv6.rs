//! `tiflow up` over IPv6 on live hosts (issue 16): unmodified kernel-TCP
//! programs at both ends, `tiflow up` on both hosts (client `--masquerade
//! --forward`, server `--serve --expose`), and between them an IPv6 router
//! doing NAT66 masquerade (nftables `ip6` nat table of its own). The
//! router's NAT loses its state mid-transfer (conntrack flushed; its
//! masquerade maps the next packet to another port), and the client host's
//! address is replaced mid-transfer (the temporary-address case); a
//! dual-stack pair carries an IPv4 and an IPv6 forward at once. After
//! SIGTERM no table is left and forwarding is as found.
//!
//! Needs root; fails with a clear message otherwise. Every address is in
//! namespaces the test creates (deleted on drop, also on a panic); every
//! wait is bounded.

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use ti_testnet::netns::NetNs;
use ti_tools::control::StatusReport;

const TOOLS: [(&str, &str); 3] = [
    ("nft", "nftables"),
    ("ip", "iproute2"),
    ("conntrack", "conntrack"),
];

/// The client's external address, and the one that replaces it.
const CLIENT_ADDR: &str = "2001:db8:1::2";
const CLIENT_ADDR_NEW: &str = "2001:db8:1::3";
/// The server host's external address.
const SERVER_ADDR: &str = "2001:db8:2::2";

/// client (c0) -- (r1) router (r2) -- (s0) server. IPv6 always; IPv4 too
/// when `dual`. The router masquerades what leaves by r2 (NAT66, and
/// NAT44 when `dual`), with random ports (a NAT that forgot its mappings
/// picks new ones) and drops what conntrack calls invalid.
struct Net6 {
    client: NetNs,
    router: NetNs,
    server: NetNs,
}

impl Net6 {
    fn build(tag: &str, dual: bool) -> Net6 {
        let ns = |role: &str| NetNs::create(&format!("{tag}{role}")).expect("namespace");
        let net = Net6 {
            client: ns("c"),
            router: ns("r"),
            server: ns("s"),
        };
        for n in [&net.client, &net.router, &net.server] {
            for key in [
                "net.ipv6.conf.all.disable_ipv6",
                "net.ipv6.conf.default.disable_ipv6",
                "net.ipv6.conf.all.accept_dad",
                "net.ipv6.conf.default.accept_dad",
            ] {
                n.sysctl(key, "0").expect("sysctl");
            }
        }
        NetNs::veth_pair(&net.client, "c0", &net.router, "r1").expect("veth");
        NetNs::veth_pair(&net.router, "r2", &net.server, "s0").expect("veth");
        let addr6 = |n: &NetNs, dev: &str, cidr: &str| {
            n.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"])
                .expect("ip -6 addr add");
        };
        addr6(&net.client, "c0", &format!("{CLIENT_ADDR}/64"));
        addr6(&net.router, "r1", "2001:db8:1::1/64");
        addr6(&net.router, "r2", "2001:db8:2::1/64");
        addr6(&net.server, "s0", &format!("{SERVER_ADDR}/64"));
        if dual {
            net.client.add_addr("c0", "10.20.1.2/24").expect("addr");
            net.router.add_addr("r1", "10.20.1.1/24").expect("addr");
            net.router.add_addr("r2", "10.20.2.1/24").expect("addr");
            net.server.add_addr("s0", "10.20.2.2/24").expect("addr");
        }
        for (n, dev) in [
            (&net.client, "c0"),
            (&net.router, "r1"),
            (&net.router, "r2"),
            (&net.server, "s0"),
        ] {
            n.up(dev).expect("up");
        }
        net.client
            .ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"])
            .expect("route");
        net.server
            .ip(&["-6", "route", "add", "default", "via", "2001:db8:2::1"])
            .expect("route");
        if dual {
            net.client.add_route("default", "10.20.1.1").expect("route");
            net.server.add_route("default", "10.20.2.1").expect("route");
        }
        net.router.enable_forwarding().expect("forwarding");
        let mut rules = String::from(
            "table ip6 nat66 {\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"r2\" masquerade random\n  }\n}\ntable ip6 filter66 {\n  chain forward {\n    type filter hook forward priority filter; policy accept;\n    ct state invalid drop\n  }\n}\n",
        );
        if dual {
            rules += "table ip nat44 {\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"r2\" masquerade random\n  }\n}\n";
        }
        net.router
            .run_with_input(&["nft", "-f", "-"], &rules)
            .expect("router NAT rules");
        net
    }

    /// The router's NAT forgets every mapping.
    fn flush_router(&self) {
        flush_conntrack(&self.router);
    }
}

/// `conntrack -F` for both families in `ns`.
fn flush_conntrack(ns: &NetNs) {
    for family in ["ipv4", "ipv6"] {
        ns.run(&["conntrack", "-F", "-f", family])
            .expect("conntrack -F");
    }
}

/// `tiflow status --json` of `up`, as a user runs it.
fn status_json(up: &Up) -> StatusReport {
    let control = up.control.to_str().expect("path");
    let out = tiflow(&["status", "--json", "--control", control]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

/// Polls `tiflow status --json` until `f` holds (bounded).
fn wait_json(up: &Up, what: &str, mut f: impl FnMut(&StatusReport) -> bool) -> StatusReport {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = status_json(up);
        if f(&report) {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last status {report:#?}\n{}",
            up.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A paced transfer through `conn` to an echo server: `bytes` each way;
/// `midway` runs after a quarter is written, and the writer waits (bounded)
/// for it before the last part. Returns (echoed by the server, read back,
/// SHA-256 read back, payload SHA-256).
fn echo_transfer(
    conn: TcpStream,
    echo: std::thread::JoinHandle<u64>,
    bytes: usize,
    seed: u64,
    midway: impl FnOnce(),
) -> (u64, u64, [u8; 32], [u8; 32]) {
    let reader = read_all_sha(conn.try_clone().expect("clone"));
    let payload = data(bytes, seed);
    let chunks = bytes / (64 * 1024);
    let (quarter_tx, quarter_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let writer = {
        let payload = payload.clone();
        let mut conn = conn;
        std::thread::spawn(move || {
            conn.set_write_timeout(Some(DEADLINE)).expect("timeout");
            // Paced (about 8 MiB/s), so the failure lands mid-transfer.
            for (i, chunk) in payload.chunks(64 * 1024).enumerate() {
                conn.write_all(chunk).expect("client write");
                std::thread::sleep(Duration::from_millis(8));
                if i == chunks / 4 {
                    quarter_tx.send(()).expect("signal");
                }
                if i == chunks * 3 / 4 {
                    go_rx.recv_timeout(DEADLINE).expect("go on");
                }
            }
            conn.shutdown(Shutdown::Write).expect("client shutdown");
        })
    };
    quarter_rx.recv_timeout(DEADLINE).expect("a quarter sent");
    midway();
    go_tx.send(()).expect("go");
    writer.join().expect("writer");
    let (len, sha) = reader.join().expect("reader");
    let echoed = echo.join().expect("echo");
    (echoed, len, sha, sha256(&payload))
}

/// The IPv6 pair of `net`: server `--serve 7000=[::1]:7000 --expose 7000`,
/// client `--masquerade --forward [::1]:7000=[SERVER]:7000`.
fn up_pair6(net: &Net6, scratch: &Scratch) -> (Up, Up) {
    let server = Up::start(
        &net.server,
        scratch,
        "server",
        &[
            "--address",
            "fd00:2::1/64",
            "--serve",
            "7000=[::1]:7000",
            "--expose",
            "7000",
            "--stall-timeout",
            "1s",
        ],
    );
    let forward = format!("[::1]:7000=[{SERVER_ADDR}]:7000");
    let client = Up::start(
        &net.client,
        scratch,
        "client",
        &[
            "--address",
            "fd00:1::1/64",
            "--masquerade",
            "--forward",
            &forward,
            "--stall-timeout",
            "1s",
        ],
    );
    (server, client)
}

/// Forwarding sysctls of `ns`: (IPv4, IPv6).
fn forwarding(ns: &NetNs) -> (String, String) {
    let read = |path: &str| {
        text(&ns.run(&["cat", path]).expect("cat").stdout)
            .trim()
            .to_owned()
    };
    (
        read("/proc/sys/net/ipv4/ip_forward"),
        read("/proc/sys/net/ipv6/conf/all/forwarding"),
    )
}

/// Stops `up` with SIGTERM (its own child, by id: `ip netns exec` execs
/// tiflow in place) and waits (bounded) for exit code 0.
fn sigterm(up: &mut Up) {
    let pid = up.child.id();
    let kill = std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .expect("kill");
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = up.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "tiflow up ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{}", up.log_text());
}

/// The kernel programs' conversation across NAT66 survives the router's
/// NAT forgetting its mappings mid-transfer: byte-exact both ways, and
/// `tiflow status --json` shows the flow resumed. After SIGTERM neither
/// host has a table left, and forwarding is as it was found.
#[test]
fn kernel_tcp_over_ipv6_survives_nat66_state_loss() {
    require_root(&TOOLS);
    let scratch = Scratch::new("ipv6-nat66");
    let net = Net6::build("tf6n", false);
    let found = [forwarding(&net.client), forwarding(&net.server)];
    assert_eq!(found[0], ("0".to_owned(), "0".to_owned()));
    let echo = echo_server(listen_in(&net.server, "[::1]:7000"));
    let (mut server, mut client) = up_pair6(&net, &scratch);
    for (up, want) in [
        (&client, "stack fd00:1::1/64, kernel side fd00:1::2"),
        (&server, "stack fd00:2::1/64, kernel side fd00:2::2"),
    ] {
        assert!(up.log_text().contains(want), "{want}:\n{}", up.log_text());
    }
    assert!(
        client
            .log_text()
            .contains(&format!("forward [::1]:7000 -> [{SERVER_ADDR}]:7000")),
        "{}",
        client.log_text()
    );
    assert_eq!(
        forwarding(&net.client),
        ("0".to_owned(), "1".to_owned()),
        "an IPv6-only stack needs IPv6 forwarding only"
    );

    let conn = connect_in(&net.client, "[::1]:7000");
    let (echoed, len, sha, want) = echo_transfer(conn, echo, 8 << 20, 61, || {
        let before = wait_json(&client, "a TI-flow", |r| {
            r.flows.iter().any(|f| f.mode == "resilient")
        });
        assert_eq!(before.flows[0].peer, format!("[{SERVER_ADDR}]:7000"));
        assert_eq!(before.flows[0].resumes, 0);
        net.flush_router();
        let after = wait_json(&client, "a resume after the NAT66 lost its state", |r| {
            r.flows.iter().any(|f| f.resumes >= 1)
        });
        assert_eq!(after.flows[0].tifid, before.flows[0].tifid, "the same flow");
        // The table, as a user reads it: the IPv6 peer as [addr]:port.
        let control = client.control.to_str().expect("path").to_owned();
        let out = tiflow(&["status", "--control", &control]);
        let table = text(&out.stdout);
        assert!(
            table.contains(&format!("[{SERVER_ADDR}]:7000"))
                && table.contains("forward [::1]:7000 <- [::1]:")
                && table.starts_with("tiflow0: stack fd00:1::1/64, kernel side fd00:1::2,"),
            "{table}"
        );
    });
    assert_eq!(echoed, 8 << 20, "the server program got every byte");
    assert_eq!(len, 8 << 20, "the client program got every byte back");
    assert_eq!(sha, want, "byte-exact both ways");
    assert!(
        server.log_text().contains("resume accepted"),
        "{}",
        server.log_text()
    );

    sigterm(&mut client);
    sigterm(&mut server);
    for (ns, was) in [(&net.client, &found[0]), (&net.server, &found[1])] {
        let tables = text(&ns.run(&["nft", "list", "tables"]).expect("nft").stdout);
        assert!(!tables.contains("tiflow_"), "no table left: {tables}");
        assert_eq!(&forwarding(ns), was, "forwarding as found");
    }
}

/// The client host's address is replaced mid-transfer (a temporary
/// address rotating out): the masquerade takes the new one (conntrack
/// flushed), the server sees the flow's TCP come from a new address, and
/// the flow resumes there. Byte-exact.
#[test]
fn kernel_tcp_over_ipv6_survives_the_client_address_changing() {
    require_root(&TOOLS);
    let scratch = Scratch::new("ipv6-newaddr");
    let net = Net6::build("tf6a", false);
    let echo = echo_server(listen_in(&net.server, "[::1]:7000"));
    let (server, client) = up_pair6(&net, &scratch);
    let conn = connect_in(&net.client, "[::1]:7000");
    let (echoed, len, sha, want) = echo_transfer(conn, echo, 8 << 20, 62, || {
        wait_json(&client, "a TI-flow", |r| {
            r.flows.iter().any(|f| f.mode == "resilient")
        });
        let new = format!("{CLIENT_ADDR_NEW}/64");
        let old = format!("{CLIENT_ADDR}/64");
        net.client
            .ip(&["-6", "addr", "add", &new, "dev", "c0", "nodad"])
            .expect("add the new address");
        net.client
            .ip(&["-6", "addr", "del", &old, "dev", "c0"])
            .expect("remove the old address");
        flush_conntrack(&net.client);
        wait_json(&client, "a resume from the new address", |r| {
            r.flows.iter().any(|f| f.resumes >= 1)
        });
    });
    assert_eq!(echoed, 8 << 20, "the server program got every byte");
    assert_eq!(len, 8 << 20, "the client program got every byte back");
    assert_eq!(sha, want, "byte-exact both ways");
    let addrs = text(
        &net.client
            .ip(&["-6", "addr", "show", "dev", "c0"])
            .expect("ip")
            .stdout,
    );
    assert!(
        addrs.contains(CLIENT_ADDR_NEW) && !addrs.contains(&format!("{CLIENT_ADDR}/")),
        "{addrs}"
    );
    let log = server.log_text();
    assert!(log.contains("resume accepted"), "{log}");
}

/// A dual-stack pair carries an IPv4 and an IPv6 forward at once through
/// NAT44 and NAT66; `tiflow fail --all` on the client breaks both, and both
/// resume over their own family. Byte-exact.
#[test]
fn a_dual_stack_pair_carries_both_families_at_once() {
    require_root(&TOOLS);
    let scratch = Scratch::new("ipv6-dual");
    let net = Net6::build("tf6d", true);
    let echo4 = echo_server(listen_in(&net.server, "127.0.0.1:7100"));
    let echo6 = echo_server(listen_in(&net.server, "[::1]:7101"));
    let server = Up::start(
        &net.server,
        &scratch,
        "server",
        &[
            "--address",
            "10.0.2.1/24",
            "--address",
            "fd00:2::1/64",
            "--serve",
            "7100=127.0.0.1:7100",
            "--serve",
            "7101=[::1]:7101",
            "--expose",
            "7100",
            "--expose",
            "7101",
            "--stall-timeout",
            "1s",
        ],
    );
    let forward6 = format!("[::1]:7101=[{SERVER_ADDR}]:7101");
    let client = Up::start(
        &net.client,
        &scratch,
        "client",
        &[
            "--address",
            "fd00:1::1/64",
            "--address",
            "10.0.1.1/24",
            "--masquerade",
            "--forward",
            "127.0.0.1:7100=10.20.2.2:7100",
            "--forward",
            &forward6,
            "--stall-timeout",
            "1s",
        ],
    );
    let report = status_json(&client);
    assert_eq!(report.stack_address, "10.0.1.1/24, fd00:1::1/64");
    assert_eq!(report.kernel_address, "10.0.1.254, fd00:1::2");

    let conn4 = connect_in(&net.client, "127.0.0.1:7100");
    let conn6 = connect_in(&net.client, "[::1]:7101");
    let control = client.control.to_str().expect("path").to_owned();
    // The IPv4 transfer holds at three quarters until the IPv6 one has
    // seen both flows resume.
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let ipv4 = std::thread::spawn(move || {
        echo_transfer(conn4, echo4, 4 << 20, 63, move || {
            release_rx.recv_timeout(DEADLINE).expect("released");
        })
    });
    let (echoed, len, sha, want) = echo_transfer(conn6, echo6, 4 << 20, 64, || {
        let peers = ["10.20.2.2:7100".to_owned(), format!("[{SERVER_ADDR}]:7101")];
        wait_json(&client, "a TI-flow of each family", |r| {
            peers.iter().all(|p| {
                r.flows
                    .iter()
                    .any(|f| &f.peer == p && f.mode == "resilient")
            })
        });
        let out = tiflow(&["fail", "--all", "--control", &control]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        wait_json(&client, "both flows resumed", |r| {
            peers
                .iter()
                .all(|p| r.flows.iter().any(|f| &f.peer == p && f.resumes >= 1))
        });
        release_tx.send(()).expect("release");
    });
    assert_eq!((echoed, len), (4 << 20, 4 << 20), "IPv6: every byte");
    assert_eq!(sha, want, "IPv6: byte-exact both ways");
    let (echoed, len, sha, want) = ipv4.join().expect("IPv4 transfer");
    assert_eq!((echoed, len), (4 << 20, 4 << 20), "IPv4: every byte");
    assert_eq!(sha, want, "IPv4: byte-exact both ways");
    drop(client);
    drop(server);
}

/// Transparent mode over IPv6 (issue 18): the client captures the
/// server's IPv6 network only (`--capture 2001:db8:2::/64`), the server
/// serves and exposes every port; a program connects to the server's real
/// address and port, the NAT66 loses its state mid-transfer, byte-exact
/// with one resume. SIGTERM leaves no table.
#[test]
fn a_captured_ipv6_connection_survives_nat66_state_loss() {
    require_root(&TOOLS);
    let scratch = Scratch::new("ipv6-capture");
    let net = Net6::build("tf6k", false);
    let echo = echo_server(listen_in(&net.server, "[::]:7000"));
    let mut server = Up::start(
        &net.server,
        &scratch,
        "server",
        &[
            "--address",
            "fd00:2::1/64",
            "--serve-all",
            "--expose-all",
            "--stall-timeout",
            "1s",
        ],
    );
    let mut client = Up::start(
        &net.client,
        &scratch,
        "client",
        &[
            "--address",
            "fd00:1::1/64",
            "--masquerade",
            "--capture",
            "2001:db8:2::/64",
            "--stall-timeout",
            "1s",
        ],
    );
    assert!(
        client
            .log_text()
            .contains("capture TCP to 2001:db8:2::/64 (redirected to [::1]:"),
        "{}",
        client.log_text()
    );
    let conn = connect_in(&net.client, &format!("[{SERVER_ADDR}]:7000"));
    let via = format!("capture [{SERVER_ADDR}]:7000 <- [{CLIENT_ADDR}]:");
    let (echoed, len, sha, want) = echo_transfer(conn, echo, 8 << 20, 63, || {
        let before = wait_json(&client, "a TI-flow", |r| {
            r.flows.iter().any(|f| f.mode == "resilient")
        });
        assert!(before.flows[0].via.starts_with(&via), "{before:#?}");
        assert_eq!(before.flows[0].peer, format!("[{SERVER_ADDR}]:7000"));
        net.flush_router();
        let after = wait_json(&client, "a resume after the NAT66 lost its state", |r| {
            r.flows.iter().any(|f| f.resumes >= 1)
        });
        assert_eq!(after.flows[0].resumes, 1, "{after:#?}");
        let served = wait_json(&server, "the server's side resumed", |r| {
            r.flows.iter().any(|f| f.resumes >= 1)
        });
        assert_eq!(served.flows[0].via, "serve-all 7000 -> [::1]:7000");
    });
    assert_eq!(echoed, 8 << 20, "the server program got every byte");
    assert_eq!(len, 8 << 20, "the client program got every byte back");
    assert_eq!(sha, want, "byte-exact both ways");
    sigterm(&mut client);
    sigterm(&mut server);
    for ns in [&net.client, &net.server] {
        let tables = text(&ns.run(&["nft", "list", "tables"]).expect("nft").stdout);
        assert!(!tables.contains("tiflow_"), "no table left: {tables}");
    }
}
