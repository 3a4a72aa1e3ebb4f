//! `tiflow up`, `status`, `fail` and `demo` on live hosts: network
//! namespaces with real kernel TCP programs, a NAT middlebox with conntrack,
//! and TUN devices. Needs root; fails with a clear message otherwise.
//!
//! Every address is inside the tests' own namespaces (and loopback); every
//! wait is bounded; the namespaces are deleted on drop, also on a panic.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, Shutdown};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use ti_testnet::netns::NetNs;
use ti_testnet::topology::{self, Cidr, LinkEnd};

const NAT_TOOLS: [(&str, &str); 4] = [
    ("nft", "nftables"),
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("conntrack", "conntrack"),
];

/// (a) Unmodified kernel-TCP programs (an echo server and its client), with
/// `tiflow up` on both hosts, survive a NAT middlebox losing its state and an
/// explicit `tiflow fail --all`: both directions byte-exact.
#[test]
fn kernel_tcp_programs_survive_middlebox_state_loss() {
    survive_middlebox_state_loss(Offload::On);
}

/// The same with the TUN devices' offloads off (`--no-offload`): plain
/// packets of at most the MTU.
#[test]
fn kernel_tcp_programs_survive_middlebox_state_loss_without_offloads() {
    survive_middlebox_state_loss(Offload::Off);
}

#[derive(Clone, Copy, PartialEq)]
enum Offload {
    On,
    Off,
}

fn survive_middlebox_state_loss(offload: Offload) {
    require_root(&NAT_TOOLS);
    let (scratch_tag, ns_tag) = match offload {
        Offload::On => ("survive", "tfla"),
        Offload::Off => ("survive-plain", "tflp"),
    };
    let extra: &[&str] = match offload {
        Offload::On => &[],
        Offload::Off => &["--no-offload"],
    };
    let scratch = Scratch::new(scratch_tag);
    let net = NatTopology::new(ns_tag);
    let echo = echo_server(listen_in(&net.server, "127.0.0.1:7000"));
    let server = Up::start(
        &net.server,
        &scratch,
        "server",
        &[
            &[
                "--address",
                "10.0.2.1/24",
                "--serve",
                "7000=127.0.0.1:7000",
                "--expose",
                "7000",
                "--stall-timeout",
                "1s",
            ][..],
            extra,
        ]
        .concat(),
    );
    let pcap = scratch.path("client.pcap");
    let mut client = Up::start(
        &net.client,
        &scratch,
        "client",
        &[
            &[
                "--address",
                "10.0.1.1/24",
                "--masquerade",
                "--forward",
                "127.0.0.1:7000=10.10.2.2:7000",
                "--stall-timeout",
                "1s",
                "--pcap",
                pcap.to_str().expect("path"),
            ][..],
            extra,
        ]
        .concat(),
    );
    let banner = match offload {
        Offload::On => "offloads on",
        Offload::Off => "offloads off (--no-offload)",
    };
    for up in [&server, &client] {
        let log = up.log_text();
        assert!(log.contains(banner), "the banner says {banner:?}:\n{log}");
        assert!(
            log.contains("timeouts: stall 1s, keepalive 5s"),
            "the banner echoes the timeouts:\n{log}"
        );
    }

    let conn = connect_in(&net.client, "127.0.0.1:7000");
    let reader = read_all_sha(conn.try_clone().expect("clone"));
    let payload = data(12 << 20, 5);
    let (half_tx, half_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let writer = {
        let payload = payload.clone();
        let mut conn = conn;
        std::thread::spawn(move || {
            conn.set_write_timeout(Some(DEADLINE)).expect("timeout");
            // Paced, so the failures land in mid-transfer: about 8 MiB/s.
            for (i, chunk) in payload.chunks(64 * 1024).enumerate() {
                conn.write_all(chunk).expect("client write");
                std::thread::sleep(Duration::from_millis(8));
                if i == 32 {
                    half_tx.send(()).expect("signal");
                }
                if i == 96 {
                    go_rx.recv_timeout(DEADLINE).expect("go on");
                }
            }
            conn.shutdown(Shutdown::Write).expect("client shutdown");
        })
    };

    half_rx.recv_timeout(DEADLINE).expect("2 MiB sent");
    net.lose_state();
    let report = client.wait_status("a resume after the middlebox lost its state", |r| {
        r.flows.iter().any(|f| f.resumes >= 1)
    });
    let tifid = report.flows[0].tifid.clone().expect("a TI-flow");
    assert_eq!(report.flows[0].mode, "resilient");
    assert_eq!(report.flows[0].peer, "10.10.2.2:7000");

    // `tiflow fail` and `tiflow status` as a user runs them.
    let control = client.control.to_str().expect("path").to_owned();
    let out = tiflow(&["fail", &tifid, "--control", &control]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&tifid), "{}", text(&out.stdout));
    let report = client.wait_status("a second resume", |r| {
        r.flows.iter().any(|f| f.resumes >= 2)
    });
    assert!(
        report.flows[0].resume_attempts >= 2 && report.resume_attempts >= 2,
        "every resume was an attempt: {report:#?}"
    );
    let out = tiflow(&["status", "--control", &control]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    eprintln!("tiflow status after the resumes:\n{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&tifid))
        .unwrap_or_else(|| panic!("no row for {tifid}:\n{table}"));
    assert!(
        row.contains("resilient") && row.contains("10.10.2.2:7000"),
        "{table}"
    );
    assert!(
        row.contains("forward 127.0.0.1:7000 <- 127.0.0.1:"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|l| l.contains("stack 10.0.1.1/24")),
        "{table}"
    );
    go_tx.send(()).expect("go");

    writer.join().expect("writer");
    let (len, sha) = reader.join().expect("reader");
    assert_eq!(
        echo.join().expect("echo"),
        payload.len() as u64,
        "server got every byte"
    );
    assert_eq!(len, payload.len() as u64, "client got every byte back");
    assert_eq!(sha, sha256(&payload), "byte-exact both ways");

    let server_log = server.log_text();
    assert!(server_log.contains("resume accepted"), "{server_log}");
    let status = client.stop().expect("client stopped");
    assert!(status.success(), "{}", client.log_text());
    drop(server);

    // The capture shows the flow option: the first SYN, and two resume SYNs.
    let out = tiflow(&["dump", pcap.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let dump = text(&out.stdout);
    let syns = dump
        .lines()
        .filter(|l| l.contains("Flags [S]") && l.contains(&format!("flow-d tifid {tifid}")))
        .count();
    assert!(syns >= 2, "resume SYNs carry the complete TIFID:\n{dump}");
}

/// (b) A legacy Linux peer (no tiflow on the far side): the forwarded
/// connection is plain TCP and works; `status` says legacy.
#[test]
fn legacy_linux_peer_gets_plain_tcp() {
    require_root(&[("ip", "iproute2"), ("iptables", "iptables")]);
    let scratch = Scratch::new("legacy");
    let client_ns = NetNs::create("tflbc").expect("ns");
    let server_ns = NetNs::create("tflbs").expect("ns");
    for ns in [&client_ns, &server_ns] {
        ns.disable_ipv6().expect("ipv6 off");
    }
    topology::link(
        LinkEnd::new(&client_ns, "c0", Cidr::slash24(Ipv4Addr::new(10, 30, 0, 1))),
        LinkEnd::new(&server_ns, "s0", Cidr::slash24(Ipv4Addr::new(10, 30, 0, 2))),
    )
    .expect("veth link");
    let echo = echo_server(listen_in(&server_ns, "10.30.0.2:7100"));
    let client = Up::start(
        &client_ns,
        &scratch,
        "client",
        &[
            "--address",
            "10.0.1.1/24",
            "--masquerade",
            "--forward",
            "7100=10.30.0.2:7100",
        ],
    );
    let conn = connect_in(&client_ns, "127.0.0.1:7100");
    let reader = read_all_sha(conn.try_clone().expect("clone"));
    let payload = data(1 << 20, 9);
    let mut w = conn;
    w.set_write_timeout(Some(DEADLINE)).expect("timeout");
    w.write_all(&payload[..4096]).expect("write");
    let report = client.wait_status("the connection", |r| {
        r.flows.iter().any(|f| f.mode != "connecting")
    });
    assert_eq!(report.flows[0].mode, "legacy", "{report:#?}");
    assert_eq!(report.flows[0].tifid, None);
    let control = client.control.to_str().expect("path").to_owned();
    let out = tiflow(&["fail", "--all", "--control", &control]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains("no TI-flow to fail"),
        "{}",
        text(&out.stdout)
    );
    w.write_all(&payload[4096..]).expect("write");
    w.shutdown(Shutdown::Write).expect("shutdown");
    let (len, sha) = reader.join().expect("reader");
    assert_eq!(echo.join().expect("echo"), payload.len() as u64);
    assert_eq!((len, sha), (payload.len() as u64, sha256(&payload)));
    let log = client.log_text();
    assert!(log.contains("peer without TI: plain TCP"), "{log}");
}

/// SIGTERM stops `tiflow up` with exit code 0 and reverts what it changed:
/// control socket, NAT rules, IPv4 forwarding, the TUN device.
#[test]
fn sigterm_stops_up_cleanly_and_reverts_the_host() {
    require_root(&NAT_TOOLS);
    let scratch = Scratch::new("sigterm");
    let ns = NetNs::create("tflt").expect("ns");
    let forwarding = || {
        text(
            &ns.run(&["cat", "/proc/sys/net/ipv4/ip_forward"])
                .expect("cat")
                .stdout,
        )
        .trim()
        .to_owned()
    };
    assert_eq!(forwarding(), "0");
    let mut up = Up::start(
        &ns,
        &scratch,
        "up",
        &[
            "--tun",
            "tfterm0",
            "--masquerade",
            "--serve",
            "80=127.0.0.1:8080",
            "--expose",
            "8080=80",
        ],
    );
    assert_eq!(forwarding(), "1");
    let nat = text(
        &ns.run(&["nft", "list", "table", "inet", "tiflow_tfterm0"])
            .expect("nft")
            .stdout,
    );
    assert!(nat.contains("masquerade") && nat.contains("dnat"), "{nat}");
    let links = text(&ns.ip(&["link", "show"]).expect("ip").stdout);
    assert!(links.contains("tfterm0"), "{links}");

    // Our own child, by its id (`ip netns exec` execs tiflow in place);
    // the shell's builtin `kill`, so procps need not be installed.
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
    assert!(
        up.log_text().contains("tiflow up: stopped"),
        "{}",
        up.log_text()
    );
    assert!(!exists(&up.control), "control socket removed");
    let nat = text(&ns.run(&["nft", "list", "ruleset"]).expect("nft").stdout);
    assert!(
        !nat.contains("tiflow_tfterm0") && !nat.contains("masquerade"),
        "{nat}"
    );
    let filter = text(
        &ns.run(&["iptables", "-w", "-S", "FORWARD"])
            .expect("iptables")
            .stdout,
    );
    assert!(!filter.contains("tfterm0"), "{filter}");
    assert_eq!(forwarding(), "0", "IPv4 forwarding restored");
    let links = text(&ns.ip(&["link", "show"]).expect("ip").stdout);
    assert!(!links.contains("tfterm0"), "{links}");
}

/// (c) `tiflow demo` with a short run exits 0 (the TI-flow resumed and
/// arrived byte-exact, plain TCP did not survive), prints its table, and
/// leaves no namespace behind. As on a fresh machine (issue 15): its
/// `PATH` holds iproute2's `ip` and nothing else, so no `iptables`,
/// `conntrack` or `nft` can run (the middlebox's rules and conntrack flush
/// go over netlink).
#[test]
fn demo_short_run_survives_and_cleans_up() {
    require_root(&NAT_TOOLS);
    let scratch = Scratch::new("demo-path");
    let ip = ti_tools::host::which("ip").expect("ip");
    std::os::unix::fs::symlink(&ip, scratch.path("ip")).expect("symlink ip");
    let out = std::process::Command::new(TIFLOW)
        .args(["demo", "--duration", "6"])
        .env_remove("RUST_LOG")
        .env("PATH", &scratch.0)
        .output()
        .expect("run demo");
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for want in [
        "plain TCP",
        "tiflow (TI-flow ",
        "survived byte-exact, resumed",
        "SHA-256 received",
        "The TI-flow survived the middlebox's state loss byte-exact; plain TCP did not.",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    let exact = stdout
        .lines()
        .find(|l| l.starts_with("byte-exact"))
        .expect("byte-exact row");
    assert!(exact.trim_end().ends_with("yes"), "{stdout}");
    assert!(stderr.contains("middlebox lost its state"), "{stderr}");
    let left: Vec<String> = namespaces()
        .into_iter()
        .filter(|n| n.starts_with("tfdemo"))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status of tiflow up")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A kernel-TCP echo server for `n` connections, each on its own thread.
fn echo_many(listener: std::net::TcpListener, n: usize) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let handlers: Vec<_> = (0..n)
            .map(|_| {
                let mut s = accept_bounded(&listener);
                std::thread::spawn(move || {
                    use std::io::Read;
                    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut total = 0u64;
                    loop {
                        let got = s.read(&mut buf).expect("echo read");
                        if got == 0 {
                            break;
                        }
                        s.write_all(&buf[..got]).expect("echo write");
                        total += got as u64;
                    }
                    s.shutdown(Shutdown::Write).expect("echo shutdown");
                    total
                })
            })
            .collect();
        handlers
            .into_iter()
            .map(|h| h.join().expect("echo handler"))
            .sum()
    })
}

/// After a thousand forwarded connections (kernel client -> `tiflow up
/// --forward` -> TI-flow through the NAT -> `tiflow up --serve` -> kernel
/// echo server) have closed, both stacks hold what they held before: the
/// resource counters of `tiflow status` return to their baseline. The
/// resident memory of both processes is printed (not asserted): their
/// socket buffers are unmapped as connections close, and `tiflow up` hands
/// the allocator's free pages back once idle.
#[test]
fn a_thousand_forwarded_connections_leave_up_as_it_started() {
    use std::io::Read;
    require_root(&NAT_TOOLS);
    const CONNECTIONS: usize = 1000;
    const CLIENTS: usize = 10;
    let scratch = Scratch::new("thousand");
    let net = NatTopology::new("tflt");
    let echo = echo_many(listen_in(&net.server, "127.0.0.1:7200"), CONNECTIONS);
    let server = Up::start(
        &net.server,
        &scratch,
        "server",
        &[
            "--address",
            "10.0.2.1/24",
            "--serve",
            "7200=127.0.0.1:7200",
            "--expose",
            "7200",
        ],
    );
    let client = Up::start(
        &net.client,
        &scratch,
        "client",
        &[
            "--address",
            "10.0.1.1/24",
            "--masquerade",
            "--forward",
            "127.0.0.1:7200=10.10.2.2:7200",
        ],
    );
    let ups = [&client, &server];
    let baseline = ups.map(|up| up.status().resources);
    let rss_before = ups.map(|up| rss_kib(up.child.id()));
    let message = data(16 * 1024, 12);
    std::thread::scope(|scope| {
        for _ in 0..CLIENTS {
            scope.spawn(|| {
                for _ in 0..CONNECTIONS / CLIENTS {
                    let mut conn = connect_in(&net.client, "127.0.0.1:7200");
                    conn.set_read_timeout(Some(DEADLINE)).expect("timeout");
                    conn.write_all(&message).expect("write");
                    conn.shutdown(Shutdown::Write).expect("shutdown");
                    let mut echoed = Vec::new();
                    conn.read_to_end(&mut echoed).expect("read the echo");
                    assert!(echoed == message, "echo of {} bytes", echoed.len());
                }
            });
        }
    });
    assert_eq!(
        echo.join().expect("echo server"),
        (CONNECTIONS * message.len()) as u64
    );
    let rss_done = ups.map(|up| rss_kib(up.child.id()));
    // TIME-WAIT and the last ACKs, then nothing may be left.
    let deadline = Instant::now() + Duration::from_secs(40);
    let settled = loop {
        let now = ups.map(|up| up.status().resources);
        let back = now.iter().zip(&baseline).all(|(n, b)| {
            (n.sockets, n.half_open, n.accept_queued, n.streams, n.flows)
                == (b.sockets, b.half_open, b.accept_queued, b.streams, b.flows)
        });
        if back || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // `tiflow up` returns freed memory within a few seconds of going idle.
    std::thread::sleep(Duration::from_secs(3));
    let rss_after = ups.map(|up| rss_kib(up.child.id()));
    eprintln!(
        "[live] {CONNECTIONS} forwarded connections of 16 KiB each way: resident memory \
         (client, server) before {rss_before:?} KiB, when the last closed {rss_done:?} KiB, \
         settled {rss_after:?} KiB; resources settled {settled:?}"
    );
    for (now, before) in settled.iter().zip(&baseline) {
        assert_eq!(
            (
                now.sockets,
                now.half_open,
                now.accept_queued,
                now.streams,
                now.flows
            ),
            (
                before.sockets,
                before.half_open,
                before.accept_queued,
                before.streams,
                before.flows
            ),
            "{now:?} against the baseline {before:?}"
        );
    }
}

/// `tiflow up` started from a shell whose soft open-file limit is 1024 (a
/// login shell's) raises it to the hard limit, says so, and its process
/// runs with it.
#[test]
fn up_raises_the_open_file_limit_to_the_hard_limit() {
    require_root(&[("ip", "iproute2")]);
    let hard = std::fs::read_to_string("/proc/self/limits")
        .expect("limits")
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .expect("the hard open-file limit");
    assert_ne!(hard, "1024", "the test needs a hard limit above 1024");
    let scratch = Scratch::new("nofile");
    let ns = NetNs::create("tfnf").expect("ns");
    let log = scratch.path("up.log");
    let control = scratch.path("up.sock");
    let out = std::fs::File::create(&log).expect("log");
    let err = out.try_clone().expect("log");
    let script = format!(
        "ulimit -Sn 1024 && exec ip netns exec {} {TIFLOW} -v up --exit-on-stdin-close --control {} --tun tfnf0",
        ns.name(),
        control.display()
    );
    let mut child = std::process::Command::new("sh")
        .args(["-c", &script])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start tiflow up");
    let deadline = Instant::now() + Duration::from_secs(15);
    while ti_tools::control::status(&control).is_err() {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "tiflow up exited ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "tiflow up not ready in 15 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // `sh` and `ip netns exec` exec in place: the child is tiflow.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open-file line")
        .to_owned();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        (fields[3], fields[4]),
        (hard.as_str(), hard.as_str()),
        "{line}"
    );
    drop(child.stdin.take());
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("raised the open-file limit") && text.contains("from=1024"),
        "{text}"
    );
    assert!(
        text.contains("nothing to forward or serve: add --forward"),
        "a hint when there is nothing to carry:\n{text}"
    );
}

/// Two `tiflow up` with the default TUN name and no `--control`, in two
/// network namespaces of one host: both start (each control socket is the
/// abstract `@tiflow/tiflow0` of its namespace), and `tiflow status`
/// without flags, run inside each namespace, reports its own.
#[test]
fn default_control_sockets_are_per_network_namespace() {
    require_root(&[("ip", "iproute2")]);
    let scratch = Scratch::new("perns");
    let a = NetNs::create("tfcna").expect("ns");
    let b = NetNs::create("tfcnb").expect("ns");
    let up_a = Up::start_default_control(&a, &scratch, "a", &["--address", "10.0.5.1/24"]);
    let up_b = Up::start_default_control(&b, &scratch, "b", &["--address", "10.0.6.1/24"]);
    for up in [&up_a, &up_b] {
        let log = up.log_text();
        assert!(
            log.contains("control @tiflow/tiflow0 (abstract socket of this network namespace)"),
            "the banner names the socket:\n{log}"
        );
    }
    assert_eq!(up_a.status_in(&a).stack_address, "10.0.5.1/24");
    assert_eq!(up_b.status_in(&b).stack_address, "10.0.6.1/24");
    for (ns, want) in [(&a, "10.0.5.1/24"), (&b, "10.0.6.1/24")] {
        let out = tiflow_in(ns, &["status"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let table = text(&out.stdout);
        assert!(
            table.starts_with(&format!("tiflow0: stack {want},")),
            "{want}: {table}"
        );
        let out = tiflow_in(ns, &["status", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let report: ti_tools::control::StatusReport =
            serde_json::from_slice(&out.stdout).expect("status JSON");
        assert_eq!(report.stack_address, want);
    }
    // A namespace without a `tiflow up`: the error says what it tried.
    let empty = NetNs::create("tfcnc").expect("ns");
    let out = tiflow_in(&empty, &["status"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach `tiflow up` at @tiflow/tiflow0")
            && stderr.contains("one per network namespace")
            && stderr.contains("running in this network namespace?"),
        "{stderr}"
    );
}

/// A flow held open for 2 s is about 2 s old in `tiflow status --json` on
/// both sides; once both programs closed, it leaves both tables within a
/// second (although the stacks hold the connection a while yet), and the
/// totals still count its failure and resume attempt.
#[test]
fn status_ages_count_and_closed_flows_leave_within_a_second() {
    use std::io::Read;
    require_root(&NAT_TOOLS);
    let scratch = Scratch::new("ages");
    let net = NatTopology::new("tfag");
    let echo = echo_server(listen_in(&net.server, "127.0.0.1:7400"));
    let (server, client) = up_pair(&net, &scratch, 7400, &[], None);
    let mut conn = connect_in(&net.client, "127.0.0.1:7400");
    conn.set_read_timeout(Some(DEADLINE)).expect("timeout");
    conn.write_all(b"hello").expect("write");
    let mut echoed = [0u8; 5];
    conn.read_exact(&mut echoed).expect("echo");
    let opened = Instant::now();
    let carried = |r: &ti_tools::control::StatusReport| {
        r.flows.len() == 1 && r.flows[0].mode == "resilient" && r.flows[0].attached
    };
    client.wait_status("the flow on the client", carried);
    server.wait_status("the flow on the server", carried);
    let out = tiflow(&[
        "fail",
        "--all",
        "--control",
        client.control.to_str().expect("path"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    client.wait_status("the resume", |r| {
        r.flows
            .first()
            .is_some_and(|f| f.resumes >= 1 && f.attached)
    });
    std::thread::sleep(Duration::from_secs(2).saturating_sub(opened.elapsed()));
    for (side, up) in [("client", &client), ("server", &server)] {
        let report = up.status();
        let age = report.flows[0].age_s;
        let held = opened.elapsed().as_secs_f64();
        assert!(
            (1.5..=held + 1.0).contains(&age),
            "{side}: a flow held open {held:.1} s is {age} s old: {report:#?}"
        );
        assert!(report.flows[0].via != "closing", "{report:#?}");
    }

    // Both programs close: the client's FIN goes through, the echo server
    // closes its side, the client reads the end.
    conn.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).expect("read to the end");
    drop(conn);
    let closed = Instant::now();
    assert_eq!(echo.join().expect("echo"), 5);
    for (side, up) in [("client", &client), ("server", &server)] {
        let report = up.wait_status("the closed flow to leave the table", |r| r.flows.is_empty());
        let after = closed.elapsed();
        assert!(
            after < Duration::from_secs(1),
            "{side}: the closed flow was listed for {after:?}"
        );
        eprintln!(
            "[live] {side}: the closed flow left the table after {after:?}; the stack holds {} \
             stream(s) still",
            report.resources.streams
        );
        let table =
            text(&tiflow(&["status", "--control", up.control.to_str().expect("path")]).stdout);
        assert!(table.contains(", 0 flows\n"), "{side}: {table}");
    }
    let report = client.status();
    assert!(
        report.failures >= 1 && report.resume_attempts >= 1,
        "the totals count the flow that ended: {report:#?}"
    );
}

/// `tiflow status --watch --interval 0.2` redraws the table about five
/// times a second until it is killed, and exits with an error of its own
/// as soon as `tiflow up` goes away.
#[test]
fn status_watch_redraws_and_stops_when_up_goes_away() {
    use std::process::{Command, Stdio};
    require_root(&[("ip", "iproute2")]);
    let scratch = Scratch::new("watch");
    let ns = NetNs::create("tfwa").expect("ns");
    let mut up = Up::start(&ns, &scratch, "up", &["--tun", "tfw0"]);
    let control = up.control.to_str().expect("path").to_owned();
    let watch = |out: &std::path::Path| {
        Command::new(TIFLOW)
            .args([
                "status",
                "--watch",
                "--interval",
                "0.2",
                "--control",
                &control,
            ])
            .env_remove("RUST_LOG")
            .stdout(std::fs::File::create(out).expect("output file"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tiflow status --watch")
    };
    let tables = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("tfw0: stack 10.0.2.1/24"))
            .count()
    };

    let out = scratch.path("watch.out");
    let mut child = watch(&out);
    std::thread::sleep(Duration::from_millis(1100));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "still watching"
    );
    child.kill().expect("kill our own child");
    child.wait().expect("wait");
    let n = tables(&out);
    let shown = std::fs::read_to_string(&out).unwrap_or_default();
    assert!((2..=8).contains(&n), "{n} tables in about 1 s:\n{shown}");
    assert!(shown.contains("every 200 ms"), "{shown}");

    // With --json: one report a line, for a program to read.
    let out = scratch.path("watch.json");
    let mut child = Command::new(TIFLOW)
        .args(["status", "--watch", "--json", "--interval", "0.1"])
        .args(["--control", &control])
        .stdout(std::fs::File::create(&out).expect("output file"))
        .spawn()
        .expect("start tiflow status --watch --json");
    std::thread::sleep(Duration::from_millis(500));
    child.kill().expect("kill our own child");
    child.wait().expect("wait");
    let lines = std::fs::read_to_string(&out).unwrap_or_default();
    let reports: Vec<ti_tools::control::StatusReport> = lines
        .lines()
        .filter(|l| l.ends_with('}'))
        .map(|l| serde_json::from_str(l).expect("a report a line"))
        .collect();
    assert!(reports.len() >= 2, "{lines}");
    assert!(reports.iter().all(|r| r.tun == "tfw0"), "{lines}");

    // `tiflow up` stops: the watch ends on its own, with an error.
    let out = scratch.path("watch2.out");
    let mut child = watch(&out);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tables(&out) == 0 {
        assert!(Instant::now() < deadline, "no table");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(up.stop().is_some_and(|s| s.success()), "{}", up.log_text());
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tiflow status --watch kept going after tiflow up stopped");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach `tiflow up`"), "{stderr}");
}

/// A forwarded connection whose remote does not answer is listed from its
/// first SYN: `connecting`, what it is for, and its age (it was 0.0 while
/// the handshake took, the stream not yet known to `tiflow up`).
#[test]
fn a_connecting_flow_is_listed_with_its_age() {
    require_root(&[("ip", "iproute2")]);
    let scratch = Scratch::new("connecting");
    let ns = NetNs::create("tfcg").expect("ns");
    // 10.77.0.1 has no route in the namespace: the SYNs go nowhere.
    let up = Up::start(
        &ns,
        &scratch,
        "up",
        &["--tun", "tfcg0", "--forward", "127.0.0.1:7500=10.77.0.1:80"],
    );
    let _conn = connect_in(&ns, "127.0.0.1:7500");
    let opened = Instant::now();
    up.wait_status("the connecting flow", |r| r.flows.len() == 1);
    std::thread::sleep(Duration::from_secs(2).saturating_sub(opened.elapsed()));
    let report = up.status();
    let flow = &report.flows[0];
    assert_eq!(flow.mode, "connecting", "{report:#?}");
    assert!(
        flow.via.starts_with("forward 127.0.0.1:7500 <- 127.0.0.1:"),
        "{report:#?}"
    );
    let held = opened.elapsed().as_secs_f64();
    assert!(
        (1.5..=held + 1.0).contains(&flow.age_s),
        "a flow connecting for {held:.1} s is {} s old: {report:#?}",
        flow.age_s
    );
}

/// The local TCP connections of process `pid` (each a duplicate of its
/// descriptor, taken with `pidfd_getfd`) whose local or peer port is
/// `port`, with their addresses; listeners are left out (no peer).
fn local_connections_of(pid: u32, port: u16) -> Vec<(String, rustix::fd::OwnedFd)> {
    use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};
    let pid = Pid::from_raw(pid as i32).expect("pid");
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).expect("pidfd_open");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fd directory") {
        let entry = entry.expect("fd entry");
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Ok(raw) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // Gone meanwhile: not one of the connections looked for.
        let Ok(fd) = pidfd_getfd(&pidfd, raw, PidfdGetfdFlags::empty()) else {
            continue;
        };
        let addr = |a: Option<rustix::net::SocketAddrAny>| {
            a.and_then(|a| std::net::SocketAddr::try_from(a).ok())
        };
        let local = addr(rustix::net::getsockname(&fd).ok());
        let peer = addr(rustix::net::getpeername(&fd).ok().flatten());
        let (Some(local), Some(peer)) = (local, peer) else {
            continue;
        };
        let stream = rustix::net::sockopt::socket_type(&fd) == Ok(rustix::net::SocketType::STREAM);
        if stream && local.ip().is_loopback() && (local.port() == port || peer.port() == port) {
            found.push((format!("{local} -> {peer}"), fd));
        }
    }
    found
}

/// The relays' connections to local programs send what they get at once
/// (TCP_NODELAY): the program chose Nagle or not for its own socket, and a
/// relay that adds it holds a request's second write until the program
/// acknowledged the first, which a program waiting for the rest delays
/// (40 ms on Linux). Both ends are checked on the live sockets of a `tiflow
/// up` pair (taken out of each process with `pidfd_getfd`), after a request
/// written in two parts made its round trip. The delay itself is measured
/// by `tiflow bench forward` ("split request").
#[test]
fn the_relays_local_connections_send_at_once() {
    use std::io::Read;
    require_root(&NAT_TOOLS);
    const PORT: u16 = 7450;
    let net = NatTopology::new("tfnd");
    let scratch = Scratch::new("nodelay");
    let (server_up, client_up) = up_pair(&net, &scratch, PORT, &[], None);
    let listener = listen_in(&net.server, &format!("127.0.0.1:{PORT}"));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let mut s = accept_bounded(&listener);
        let mut request = [0u8; 8];
        s.read_exact(&mut request).expect("request");
        s.write_all(&request).expect("answer");
        // Keep the connection until the sockets were looked at.
        let _ = done_rx.recv_timeout(DEADLINE);
    });
    let mut c = connect_in(&net.client, &format!("127.0.0.1:{PORT}"));
    c.set_read_timeout(Some(DEADLINE)).expect("timeout");
    c.set_nodelay(true).expect("nodelay");
    c.write_all(b"head").expect("first part");
    std::thread::sleep(Duration::from_millis(1));
    c.write_all(b"body").expect("second part");
    let mut answer = [0u8; 8];
    c.read_exact(&mut answer).expect("answer");
    assert_eq!(&answer, b"headbody");
    for (side, up) in [("client", &client_up), ("server", &server_up)] {
        let sockets = local_connections_of(up.child.id(), PORT);
        assert!(
            !sockets.is_empty(),
            "{side}: no local connection of port {PORT} in tiflow up"
        );
        for (addrs, fd) in &sockets {
            let nodelay = rustix::net::sockopt::tcp_nodelay(fd).expect("TCP_NODELAY");
            assert!(nodelay, "{side}: {addrs} has Nagle's algorithm on");
        }
        eprintln!(
            "[nodelay] {side}: {} local connection(s), all TCP_NODELAY",
            sockets.len()
        );
    }
    let _ = done_tx.send(());
    server.join().expect("server program");
}
