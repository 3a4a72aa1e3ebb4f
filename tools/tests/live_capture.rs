//! Transparent mode on live hosts (issue 18): no per-port forwarding. The
//! client host runs `tiflow up --capture` of the server's network only; the
//! server host runs `tiflow up --serve-all --expose-all`. Unmodified
//! kernel-TCP programs connect to the server's real address and port; a
//! NAT middlebox (nftables masquerade, conntrack, a stateful firewall)
//! between them loses its state mid-transfer. Also: a server without
//! tiflow (plain TCP, unchanged), UDP and ICMP to the captured network
//! (their normal route), a port outside `--allow-ports`, a connection made
//! straight to the capture listener, and what is left on the hosts after
//! SIGTERM and after SIGKILL and `tiflow down` (nothing).
//!
//! Needs root, `nft`, `ip`, `conntrack` and `ping`; fails with a clear
//! message otherwise. Every address is in namespaces the test creates
//! (deleted on drop, also on a panic); every wait is bounded.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use ti_testnet::netns::NetNs;
use ti_tools::control::StatusReport;

const TOOLS: [(&str, &str); 5] = [
    ("nft", "nftables"),
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("conntrack", "conntrack"),
    ("ping", "iputils-ping"),
];

/// The server host's real address (what programs on the client connect
/// to), and the network the client captures.
const SERVER: &str = "10.10.2.2";
const CAPTURE: &str = "10.10.2.0/24";

/// The client's `tiflow up`: captures the server's network, nothing else.
fn client_up(net: &NatTopology, scratch: &Scratch, extra: &[&str]) -> Up {
    let args = [
        &[
            "--address",
            "10.0.1.1/24",
            "--masquerade",
            "--capture",
            CAPTURE,
            "--stall-timeout",
            "1s",
        ][..],
        extra,
    ]
    .concat();
    Up::start(&net.client, scratch, "client", &args)
}

/// The server's `tiflow up`: every port (or `extra`'s allow list).
fn server_up(net: &NatTopology, scratch: &Scratch, extra: &[&str]) -> Up {
    let args = [
        &[
            "--address",
            "10.0.2.1/24",
            "--serve-all",
            "--expose-all",
            "--stall-timeout",
            "1s",
        ][..],
        extra,
    ]
    .concat();
    Up::start(&net.server, scratch, "server", &args)
}

/// Sends `payload` through `conn` (an echo), paced at about 8 MiB/s so
/// that `midway` runs in mid-transfer (after 2 MiB, or half of a smaller
/// payload), and checks the echo byte-exact.
/// Returns what the echo server counted.
fn echo_through(conn: TcpStream, payload: &[u8], midway: impl FnOnce()) -> u64 {
    let reader = read_all_sha(conn.try_clone().expect("clone"));
    let (half_tx, half_rx) = mpsc::channel();
    let writer = {
        let payload = payload.to_vec();
        let mut conn = conn;
        std::thread::spawn(move || {
            conn.set_write_timeout(Some(DEADLINE)).expect("timeout");
            let chunks = payload.len().div_ceil(64 * 1024);
            for (i, chunk) in payload.chunks(64 * 1024).enumerate() {
                conn.write_all(chunk).expect("client write");
                std::thread::sleep(Duration::from_millis(8));
                if i == 32.min(chunks / 2) {
                    let _ = half_tx.send(());
                }
            }
            conn.shutdown(Shutdown::Write).expect("client shutdown");
        })
    };
    half_rx.recv_timeout(DEADLINE).expect("2 MiB sent");
    midway();
    writer.join().expect("writer");
    let (len, sha) = reader.join().expect("reader");
    assert_eq!(len, payload.len() as u64, "every byte came back");
    assert_eq!(sha, sha256(payload), "byte-exact both ways");
    len
}

/// The one flow of `report` whose `via` starts with `prefix`.
fn flow<'a>(report: &'a StatusReport, prefix: &str) -> &'a ti_tools::control::FlowStatus {
    report
        .flows
        .iter()
        .find(|f| f.via.starts_with(prefix))
        .unwrap_or_else(|| panic!("no flow via {prefix:?}: {report:#?}"))
}

/// A program connects to the server's real address and port (no port
/// mapping, no `--forward`); the NAT forgets every connection (and its
/// address) mid-transfer; the transfer is byte-exact with one resume.
#[test]
fn a_captured_program_survives_nat_state_loss_with_no_port_mapping() {
    require_root(&TOOLS);
    let scratch = Scratch::new("capture");
    let net = NatTopology::new("tfcp");
    let echo = echo_server(listen_in(&net.server, "0.0.0.0:7000"));
    let server = server_up(&net, &scratch, &[]);
    let client = client_up(&net, &scratch, &[]);
    for (up, says) in [
        (
            &client,
            "capture TCP to 10.10.2.0/24 (redirected to 127.0.0.1:",
        ),
        (&server, "serve   10.0.2.1/24 port any -> the same port"),
        (&server, "expose  this host's addresses, port any"),
    ] {
        let log = up.log_text();
        assert!(log.contains(says), "the banner says {says:?}:\n{log}");
    }

    let conn = connect_in(&net.client, &format!("{SERVER}:7000"));
    assert_eq!(
        conn.peer_addr().expect("peer").to_string(),
        format!("{SERVER}:7000"),
        "the program sees the address it connected to"
    );
    let payload = data(12 << 20, 7);
    let control = client.control.to_str().expect("path").to_owned();
    let echoed = echo_through(conn, &payload, || {
        let report = client.wait_status("the captured flow", |r| {
            r.flows.iter().any(|f| f.mode == "resilient")
        });
        let f = flow(&report, "capture 10.10.2.2:7000 <- ");
        assert_eq!(f.peer, "10.10.2.2:7000", "{report:#?}");
        net.lose_state();
        let report = client.wait_status("a resume after the NAT lost its state", |r| {
            r.flows.iter().any(|f| f.resumes >= 1)
        });
        let f = flow(&report, "capture 10.10.2.2:7000 <- ");
        assert_eq!(f.resumes, 1, "exactly one resume: {report:#?}");
        let report = server.wait_status("the server's side resumed", |r| {
            r.flows.iter().any(|f| f.resumes >= 1)
        });
        let f = flow(&report, "serve-all 7000 -> 127.0.0.1:7000");
        assert_eq!(
            (f.mode.as_str(), f.resumes),
            ("resilient", 1),
            "{report:#?}"
        );
        // `tiflow status` as a user reads it: the original destination.
        let out = tiflow(&["status", "--control", &control]);
        let table = text(&out.stdout);
        eprintln!("tiflow status on the client:\n{table}");
        assert!(
            table.contains("capture 10.10.2.2:7000 <- 10.10.1.2:"),
            "{table}"
        );
    });
    assert_eq!(echo.join().expect("echo"), echoed, "the server got it all");
}

/// A captured network whose server has no tiflow: plain TCP, byte-exact,
/// no failure; UDP and ICMP to the captured network keep their normal
/// route (ping answers, a datagram is echoed).
#[test]
fn a_server_without_tiflow_gets_plain_tcp_and_udp_and_icmp_keep_their_route() {
    require_root(&TOOLS);
    let scratch = Scratch::new("capture-legacy");
    let net = NatTopology::new("tfcl");
    let echo = echo_server(listen_in(&net.server, &format!("{SERVER}:7000")));
    let udp = net
        .server
        .enter(|| UdpSocket::bind(format!("{SERVER}:7001")))
        .expect("enter")
        .expect("udp bind");
    let udp_echo = std::thread::spawn(move || {
        udp.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let mut buf = [0u8; 64];
        let (n, from) = udp.recv_from(&mut buf).expect("udp receive");
        udp.send_to(&buf[..n], from).expect("udp echo");
    });
    let client = client_up(&net, &scratch, &[]);

    let conn = connect_in(&net.client, &format!("{SERVER}:7000"));
    let payload = data(4 << 20, 3);
    let echoed = echo_through(conn, &payload, || {
        let report = client.wait_status("the captured connection", |r| {
            r.flows.iter().any(|f| f.mode != "connecting")
        });
        let f = flow(&report, "capture 10.10.2.2:7000 <- ");
        assert_eq!(f.mode, "legacy", "{report:#?}");
    });
    assert_eq!(echo.join().expect("echo"), echoed);
    let report = client.status();
    assert_eq!(report.failures, 0, "{report:#?}");

    let ping = net
        .client
        .run(&["ping", "-c", "1", "-W", "5", SERVER])
        .expect("ping");
    assert!(
        ping.status.success(),
        "ping answers: {}",
        text(&ping.stdout)
    );
    let got = net
        .client
        .enter(|| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.send_to(b"datagram", format!("{SERVER}:7001"))?;
            let mut buf = [0u8; 64];
            let n = s.recv(&mut buf)?;
            Ok::<_, std::io::Error>(buf[..n].to_vec())
        })
        .expect("enter")
        .expect("UDP echo");
    assert_eq!(got, b"datagram");
    udp_echo.join().expect("udp echo");
}

/// `--allow-ports`: a captured connection to an allowed port is a
/// TI-flow; to another port it reaches the server host's own kernel
/// (plain TCP, still working); to an allowed port nothing listens on, it
/// is reset. A program connecting straight to the capture listener (not
/// redirected) is reset, and capture goes on.
#[test]
fn allow_ports_limits_the_server_and_the_capture_port_refuses_direct_connections() {
    require_root(&TOOLS);
    let scratch = Scratch::new("capture-allow");
    let net = NatTopology::new("tfca");
    let allowed = echo_server(listen_in(&net.server, "0.0.0.0:7000"));
    let other = echo_server(listen_in(&net.server, "0.0.0.0:7002"));
    let server = server_up(&net, &scratch, &["--allow-ports", "22,6990-7000"]);
    let client = client_up(&net, &scratch, &[]);
    assert!(
        server.log_text().contains("port 22,6990-7000"),
        "{}",
        server.log_text()
    );

    // Straight to the capture listener: reset, logged, nothing carried.
    let log = client.log_text();
    let listener: SocketAddr = log
        .split("(redirected to ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the banner names the capture listener:\n{log}"));
    // The reset comes at the first read, or already at the connect when
    // it crosses the connect's completion.
    let read = net
        .client
        .enter(|| {
            let mut direct = TcpStream::connect_timeout(&listener, Duration::from_secs(10))?;
            direct.set_read_timeout(Some(Duration::from_secs(10)))?;
            direct.read(&mut [0u8; 16])
        })
        .expect("enter");
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "a direct connection is reset: {read:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client
        .log_text()
        .contains("not in a captured network: a connection made straight to the capture port")
    {
        assert!(Instant::now() < deadline, "{}", client.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }

    // An allowed port nothing listens on: the server's relay cannot reach
    // it, so the flow is reset and the program reads ECONNRESET.
    let mut closed = connect_in(&net.client, &format!("{SERVER}:6995"));
    closed
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let read = closed.read(&mut [0u8; 16]);
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "a port nothing listens on resets the program's connection: {read:?}"
    );

    for (port, echo, mode) in [(7000u16, allowed, "resilient"), (7002, other, "legacy")] {
        let conn = connect_in(&net.client, &format!("{SERVER}:{port}"));
        let payload = data(1 << 20, u64::from(port));
        let via = format!("capture 10.10.2.2:{port} <- ");
        let echoed = echo_through(conn, &payload, || {
            let report = client.wait_status("the captured connection", |r| {
                r.flows
                    .iter()
                    .any(|f| f.via.starts_with(&via) && f.mode != "connecting")
            });
            assert_eq!(flow(&report, &via).mode, mode, "port {port}: {report:#?}");
        });
        assert_eq!(echo.join().expect("echo"), echoed);
    }
}

/// The namespace's routes, rules, netfilter and forwarding, to compare.
fn host_state(ns: &NetNs) -> String {
    let mut state = String::new();
    for argv in [
        &["nft", "list", "ruleset"][..],
        &["ip", "rule"],
        &["ip", "-6", "rule"],
        &["ip", "route", "show", "table", "all"],
        &["ip", "-6", "route", "show", "table", "all"],
        &["sysctl", "-n", "net.ipv4.ip_forward"],
    ] {
        let out = ns.run(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        state += &format!("$ {}\n{}", argv.join(" "), text(&out.stdout));
    }
    state
}

/// After SIGTERM, and after SIGKILL then `tiflow down`, neither host keeps
/// a route, a rule or a table of transparent mode.
#[test]
fn transparent_mode_leaves_nothing_after_sigterm_or_sigkill_and_down() {
    require_root(&TOOLS);
    let scratch = Scratch::new("capture-clean");
    let net = NatTopology::new("tfcc");
    let before = [host_state(&net.client), host_state(&net.server)];
    for round in ["SIGTERM", "SIGKILL"] {
        let mut server = server_up(&net, &scratch, &["--allow-ports", "7000"]);
        let mut client = client_up(&net, &scratch, &[]);
        for ns in [&net.client, &net.server] {
            let listed = ns
                .run(&["nft", "list", "table", "inet", "tiflow_tiflow0"])
                .expect("nft");
            assert!(listed.status.success(), "{round}: the table is there");
        }
        if round == "SIGTERM" {
            for up in [&mut client, &mut server] {
                let pid = up.child.id().to_string();
                let out = std::process::Command::new("kill")
                    .args(["-TERM", &pid])
                    .output()
                    .expect("kill");
                assert!(out.status.success());
                let status = up.stop().expect("stopped on SIGTERM");
                assert!(status.success(), "{status:?}\n{}", up.log_text());
            }
        } else {
            for (up, ns) in [(&mut client, &net.client), (&mut server, &net.server)] {
                up.child.kill().expect("SIGKILL");
                let _ = up.child.wait();
                let out = tiflow_in(ns, &["down"]);
                assert!(
                    out.status.success() && text(&out.stdout).contains("deleted nftables table"),
                    "tiflow down: {}{}",
                    text(&out.stdout),
                    text(&out.stderr)
                );
            }
        }
        let after = [host_state(&net.client), host_state(&net.server)];
        assert_eq!(after, before, "{round}: the hosts as they were");
    }
}

/// `sshd` in `ns` on port 22 of every address, with keys in `scratch`:
/// the user's key (`id`) may log in as root; returns the server and the
/// `known_hosts` line of its host key for `host`.
fn sshd_in(ns: &NetNs, scratch: &Scratch, host: &str) -> (KillOnDrop, String) {
    let keygen = |name: &str| {
        let path = scratch.path(name);
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&path)
            .output()
            .expect("ssh-keygen");
        assert!(out.status.success(), "ssh-keygen: {}", text(&out.stderr));
        std::fs::read_to_string(path.with_extension("pub")).expect("public key")
    };
    let host_key = keygen("host_key");
    let user_key = keygen("id");
    std::fs::write(scratch.path("authorized_keys"), user_key).expect("authorized_keys");
    let config = format!(
        "Port 22\nListenAddress 0.0.0.0\nHostKey {}\nAuthorizedKeysFile {}\n\
         PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile {}\n",
        scratch.path("host_key").display(),
        scratch.path("authorized_keys").display(),
        scratch.path("sshd.pid").display(),
    );
    let config_path = scratch.path("sshd_config");
    std::fs::write(&config_path, config).expect("sshd_config");
    // sshd's privilege separation directory (Debian's unit makes it).
    std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
    let child = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "/usr/sbin/sshd",
            "-D",
            "-e",
            "-f",
        ])
        .arg(&config_path)
        .stderr(std::fs::File::create(scratch.path("sshd.log")).expect("log"))
        .spawn()
        .expect("sshd");
    let server = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr: SocketAddr = format!("{host}:22").parse().expect("address");
    while ns
        .enter(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
        .expect("enter")
        .is_err()
    {
        assert!(Instant::now() < deadline, "sshd did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut words = host_key.split_whitespace();
    let known = format!(
        "{host} {} {}\n",
        words.next().expect("key type"),
        words.next().expect("key")
    );
    (server, known)
}

/// A child process killed (and reaped) when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A one-file HTTP/1.1 server (an unmodified kernel-TCP program): answers
/// one GET with `body`, then closes; returns the request's `Host` header.
fn http_server(listener: std::net::TcpListener, body: Vec<u8>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = accept_bounded(&listener);
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        s.set_write_timeout(Some(DEADLINE)).expect("timeout");
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") && request.len() < 8192 {
            s.read_exact(&mut byte).expect("request");
            request.push(byte[0]);
        }
        let request = String::from_utf8_lossy(&request).into_owned();
        let host = request
            .lines()
            .find_map(|l| l.strip_prefix("Host: "))
            .unwrap_or_default()
            .to_owned();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).expect("head");
        s.write_all(&body).expect("body");
        s.shutdown(Shutdown::Write).expect("shutdown");
        host
    })
}

/// What a user runs: `ssh root@10.10.2.2` (its host key checked against
/// the real address, strictly) and `curl http://10.10.2.2/` through the
/// capture, each across a NAT state loss: byte-exact, one resume each.
#[test]
fn ssh_and_curl_to_the_real_address_survive_nat_state_loss() {
    require_root(&[
        TOOLS[0],
        TOOLS[1],
        TOOLS[3],
        ("ssh", "openssh-client"),
        ("sshd", "openssh-server"),
        ("ssh-keygen", "openssh-client"),
        ("curl", "curl"),
    ]);
    let scratch = Scratch::new("capture-programs");
    let net = NatTopology::new("tfcs");
    let (_sshd, known) = sshd_in(&net.server, &scratch, SERVER);
    std::fs::write(scratch.path("known_hosts"), known).expect("known_hosts");
    let server = server_up(&net, &scratch, &[]);
    let client = client_up(&net, &scratch, &[]);

    // ssh: 8 MiB into `sha256sum` on the server, paced across the loss.
    let payload = data(8 << 20, 11);
    let mut ssh = std::process::Command::new("ip")
        .args(["netns", "exec", net.client.name(), "ssh", "-i"])
        .arg(scratch.path("id"))
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            scratch.path("known_hosts").display()
        ))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            &format!("root@{SERVER}"),
            "sha256sum",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ssh");
    let mut stdin = ssh.stdin.take().expect("stdin");
    let writer = {
        let payload = payload.clone();
        std::thread::spawn(move || {
            for chunk in payload.chunks(64 * 1024) {
                if stdin.write_all(chunk).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(8));
            }
        })
    };
    let report = client.wait_status("the ssh flow", |r| {
        r.flows
            .iter()
            .any(|f| f.via.starts_with("capture 10.10.2.2:22 <- ") && f.sent > (1 << 20))
    });
    assert_eq!(flow(&report, "capture 10.10.2.2:22").mode, "resilient");
    net.lose_state();
    client.wait_status("the ssh flow resumed", |r| {
        r.flows
            .iter()
            .any(|f| f.via.starts_with("capture 10.10.2.2:22") && f.resumes >= 1)
    });
    writer.join().expect("writer");
    let out = ssh.wait_with_output().expect("ssh output");
    assert!(
        out.status.success(),
        "ssh: {}\nsshd: {}",
        text(&out.stderr),
        std::fs::read_to_string(scratch.path("sshd.log")).unwrap_or_default()
    );
    let hex: String = sha256(&payload)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        text(&out.stdout).starts_with(&hex),
        "the server's sha256sum of what ssh carried: {}",
        text(&out.stdout)
    );

    // curl: 24 MiB at 8 MiB/s from the server's port 80, across a loss.
    let body = data(24 << 20, 13);
    let http = http_server(listen_in(&net.server, "0.0.0.0:80"), body.clone());
    let download = scratch.path("download");
    let curl = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            net.client.name(),
            "curl",
            "-sS",
            "--limit-rate",
            "8M",
            "-o",
        ])
        .arg(&download)
        .arg(format!("http://{SERVER}/file"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    client.wait_status("the curl flow", |r| {
        r.flows
            .iter()
            .any(|f| f.via.starts_with("capture 10.10.2.2:80 <- ") && f.received > (4 << 20))
    });
    // The NAT loses its state again, back to its first public address.
    ti_testnet::middlebox::home_router_snat(&net.middlebox, "10.10.2.1".parse().expect("ip"))
        .expect("NAT address");
    ti_testnet::middlebox::conntrack_flush(&net.middlebox).expect("conntrack flush");
    client.wait_status("the curl flow resumed", |r| {
        r.flows
            .iter()
            .any(|f| f.via.starts_with("capture 10.10.2.2:80") && f.resumes == 1)
    });
    let out = curl.wait_with_output().expect("curl");
    assert!(out.status.success(), "curl: {}", text(&out.stderr));
    assert_eq!(
        http.join().expect("http"),
        SERVER,
        "the Host header is the real address"
    );
    let got = std::fs::read(&download).expect("download");
    assert_eq!(got.len(), body.len());
    assert!(got == body, "curl's download is byte-exact");
    drop(server);
}
