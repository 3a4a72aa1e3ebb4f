//! Many connections through a `tiflow up` pair (issue 12): 2,000 local
//! connections carried as TI-flows through a NAT namespace that drops 2 %
//! of the packets, each greeted end to end (the server program speaks
//! first), held idle, then closed. Every connection must be greeted; a
//! failure detected on the idle path (a lost probe and its retries) must
//! be resumed or recovered; `tiflow status` keeps answering, and every
//! flow goes away after the close. Root and the NAT tools are needed;
//! without them the test fails with what is missing.
//!
//! The connect storm overflows the server stack's accept queue (128):
//! those handshakes wait half-open until `tiflow up` accepts (before, they
//! were dropped after the client took our SYN-ACK, and those flows were
//! lost). With loss, a held handshake lives on our SYN-ACK sent again (the
//! client sends nothing more): a 3 s half-open timeout dropped some, and
//! their clients, connected and waiting for the greeting, waited forever
//! (seen in CI, and at once with 3 % loss). The server program listens
//! with a backlog of 2,000: with std's 128, a slow program lost
//! connections to the kernel's SYN cookies (see where it listens).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const NAT_TOOLS: [(&str, &str); 4] = [
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("nft", "nftables"),
    ("conntrack", "conntrack"),
];
const PORT: u16 = 7300;
const CONNECTIONS: usize = 2_000;
/// Packets the middlebox drops, in percent, each way: handshakes lose
/// their SYN, SYN-ACK or ACK now and then, as on a real path (the storm
/// overflows the server's accept queue as well, so held handshakes must
/// outlast lost packets).
const LOSS_PERCENT: u8 = 2;
/// How long the connections sit idle.
const IDLE: Duration = Duration::from_secs(10);

/// The process's resident set in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The process's thread count, from /proc.
fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX)
}

/// Raises this process's soft open-file limit to its hard limit (it holds
/// both ends of every connection).
fn raise_nofile() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    assert!(
        now >= (3 * CONNECTIONS) as u64,
        "this test needs {} open files, the hard limit allows {now}",
        3 * CONNECTIONS
    );
}

/// The WARN and ERROR lines of a log (at most 12).
fn warnings(log: &str) -> String {
    log.lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .take(12)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The server namespace's listen-queue and SYN-cookie counters (the
/// kernel's side of connections `tiflow up` makes to the server program).
fn listen_counters(net: &NatTopology) -> String {
    let out = net.server.run(&["cat", "/proc/net/netstat"]);
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let text = text.unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return "no TcpExt counters".into();
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter(|(n, _)| n.starts_with("Listen") || n.starts_with("Syncookies"))
        .map(|(n, v)| format!("{n} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `flow` carries the local connection of one of `locals` (its
/// `via` ends with the program's address).
fn carries_one_of(flow: &ti_tools::control::FlowStatus, locals: &[String]) -> bool {
    locals.iter().any(|l| flow.via.ends_with(&format!(" {l}")))
}

/// What one side of the pair says when connections got stuck: its flow
/// counts and resources, the flows of the stuck connections (found by the
/// local address in their `via`, or by TIFID), and the side's warnings.
fn stuck_report(side: &str, up: &Up, locals: &[String], tifids: &[String]) -> String {
    let status = up.status();
    let established = status.flows.iter().filter(|f| f.tifid.is_some()).count();
    let stuck: Vec<String> = status
        .flows
        .iter()
        .filter(|f| {
            carries_one_of(f, locals) || f.tifid.as_ref().is_some_and(|t| tifids.contains(t))
        })
        .map(|f| format!("{f:?}"))
        .collect();
    format!(
        "{side}: {} flows ({established} with a TIFID), resources {:?}\n{side}: flows of the stuck connections: {stuck:#?}\n{side} warnings:\n{}",
        status.flows.len(),
        status.resources,
        warnings(&up.log_text())
    )
}

#[test]
fn two_thousand_idle_connections_through_a_tiflow_up_pair() {
    require_root(&NAT_TOOLS);
    raise_nofile();
    let net = NatTopology::new("tfmc");
    ti_testnet::middlebox::random_loss(&net.middlebox, LOSS_PERCENT).expect("lossy middlebox");
    let scratch = Scratch::new("many");
    // TI_MANY_LOG: a RUST_LOG filter for both sides, to look into a failure.
    let log = std::env::var("TI_MANY_LOG").ok();
    let (server_up, client_up) = up_pair(&net, &scratch, PORT, &[], log.as_deref());
    let rss_before = (rss_kib(server_up.child.id()), rss_kib(client_up.child.id()));
    // The server program: accepts and greets every connection, keeps them.
    let listener = listen_in(&net.server, &format!("127.0.0.1:{PORT}"));
    // Room for the whole storm in its accept queue, as a server built for
    // thousands of connections has (std listens with 128): with a short
    // queue and the SYN cookies Linux sends once its SYN queue fills, the
    // kernel drops the ACK of a cookie it cannot queue, and the connection
    // `tiflow up` made to this program exists only on tiflow's side. The
    // program speaks first, so nothing ever shows it: seen in CI when this
    // thread was slow (SyncookiesSent and ListenOverflows in the server
    // namespace), and at once with 8 ms per accept. Plain TCP clients of
    // such a server are lost the same way; the README's limits say so.
    rustix::net::listen(&listener, CONNECTIONS as i32).expect("listen backlog");
    let server = std::thread::spawn(move || {
        let mut kept = Vec::with_capacity(CONNECTIONS);
        while kept.len() < CONNECTIONS {
            let mut s = accept_bounded(&listener);
            s.write_all(b"hi").expect("greet");
            kept.push(s);
        }
        kept
    });
    let started = Instant::now();
    let mut clients: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| connect_in(&net.client, &format!("127.0.0.1:{PORT}")))
        .collect();
    // Every connection must be greeted; after the first that is not, the
    // others share 5 s, so the report says how many were stuck.
    let mut stuck = Vec::new();
    let mut others_until: Option<Instant> = None;
    for (i, c) in clients.iter_mut().enumerate() {
        let wait = match others_until {
            None => DEADLINE,
            Some(until) => until
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        };
        c.set_read_timeout(Some(wait)).expect("timeout");
        let mut greeting = [0u8; 2];
        match c.read_exact(&mut greeting) {
            Ok(()) => assert_eq!(&greeting, b"hi"),
            Err(e) => {
                let local = c.local_addr().map(|a| a.to_string()).unwrap_or_default();
                stuck.push((i, local, e.kind()));
                others_until.get_or_insert_with(|| Instant::now() + Duration::from_secs(5));
            }
        }
    }
    if !stuck.is_empty() {
        let locals: Vec<String> = stuck.iter().take(5).map(|s| s.1.clone()).collect();
        // The server's flows of the stuck connections, found by TIFID.
        let tifids: Vec<String> = client_up
            .status()
            .flows
            .into_iter()
            .filter(|f| carries_one_of(f, &locals))
            .filter_map(|f| f.tifid)
            .collect();
        panic!(
            "{} of {CONNECTIONS} connections got no greeting; the first: {:?}\n\
             server namespace: {}\n{}\n{}",
            stuck.len(),
            &stuck[..stuck.len().min(5)],
            listen_counters(&net),
            stuck_report("server", &server_up, &[], &tifids),
            stuck_report("client", &client_up, &locals, &[]),
        );
    }
    let kept = server.join().expect("server program");
    let dropped = ti_testnet::middlebox::random_loss_dropped(&net.middlebox).unwrap_or(0);
    eprintln!("[many] the middlebox dropped {dropped} packets");
    eprintln!("[many] server namespace: {}", listen_counters(&net));
    let greeted_in = started.elapsed();
    std::thread::sleep(IDLE);
    let asked = Instant::now();
    let (server_status, client_status) = (server_up.status(), client_up.status());
    let status_took = asked.elapsed();
    let rss_during = (rss_kib(server_up.child.id()), rss_kib(client_up.child.id()));
    // No thread per connection: the stack's driver, the event loop's
    // workers (one per core at most) and the stdin watcher.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (side, pid) in [
        ("server", server_up.child.id()),
        ("client", client_up.child.id()),
    ] {
        let threads = threads(pid);
        eprintln!("[many] {side}: {threads} threads with {CONNECTIONS} connections");
        assert!(
            threads <= cores + 2,
            "{side}: {threads} threads for {CONNECTIONS} connections on {cores} cores"
        );
    }
    eprintln!(
        "[many] {CONNECTIONS} connections greeted in {:.1} s; status answered in {} ms; \
         RSS KiB server {} -> {}, client {} -> {} ({:.1} / {:.1} KiB per connection)",
        greeted_in.as_secs_f64(),
        status_took.as_millis(),
        rss_before.0,
        rss_during.0,
        rss_before.1,
        rss_during.1,
        rss_during.0.saturating_sub(rss_before.0) as f64 / CONNECTIONS as f64,
        rss_during.1.saturating_sub(rss_before.1) as f64 / CONNECTIONS as f64,
    );
    for (side, status) in [("server", &server_status), ("client", &client_status)] {
        assert_eq!(
            status.flows.len(),
            CONNECTIONS,
            "{side}: every connection is a flow"
        );
        let ti = status.flows.iter().filter(|f| f.tifid.is_some()).count();
        let via = if side == "server" {
            "serve "
        } else {
            "forward "
        };
        assert!(
            status.flows.iter().all(|f| f.via.starts_with(via)),
            "{side}: every flow shows the connection it carries"
        );
        assert_eq!(ti, CONNECTIONS, "{side}: every flow is a TI-flow");
        let failures: u64 = status.flows.iter().map(|f| f.failures).sum();
        let resumes: u64 = status.flows.iter().map(|f| f.resumes).sum();
        let recoveries: u64 = status.flows.iter().map(|f| f.recoveries).sum();
        eprintln!("[many] {side}: failures {failures}, resumes {resumes}, recoveries {recoveries}");
        // Issue 12's target is no failure at all; the connect storm can
        // still make a few flows suspect their path (reported above), but
        // every one must have recovered, none lost.
        assert!(
            failures <= resumes + recoveries,
            "{side}: a failure neither resumed nor recovered: {failures} > {resumes} + {recoveries}"
        );
    }
    drop(clients);
    drop(kept);
    client_up.wait_status("every flow gone at the client", |r| r.flows.is_empty());
    server_up.wait_status("every flow gone at the server", |r| r.flows.is_empty());
}
