//! `tiflow up --metrics`: a scraper reading `GET /metrics` of a `tiflow up`
//! pair (NAT namespace between them) sees the flow, a resume it went
//! through (`tiflow fail --all`: cause `explicit`), the resume's downtime
//! in the histogram and the bytes carried. Root and the NAT tools needed.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;

const NAT_TOOLS: [(&str, &str); 4] = [
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("iptables", "iptables"),
    ("conntrack", "conntrack"),
];
const PORT: u16 = 7700;
const METRICS: &str = "127.0.0.1:9464";

/// `GET /metrics` from inside `ns`: the status line and the body.
fn scrape(ns: &ti_testnet::netns::NetNs) -> (String, String) {
    let mut s = connect_in(ns, METRICS);
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: tiflow\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// The value of the sample `name` (with its labels, as printed).
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn the_metrics_endpoint_counts_a_resume() {
    require_root(&NAT_TOOLS);
    let net = NatTopology::new("tfmx");
    let scratch = Scratch::new("metrics");
    let (server_up, client_up) = up_pair(&net, &scratch, PORT, &["--metrics", METRICS], None);
    let echo = echo_server(listen_in(&net.server, &format!("127.0.0.1:{PORT}")));
    let mut c = connect_in(&net.client, &format!("127.0.0.1:{PORT}"));
    c.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let message = vec![7u8; 64 * 1024];
    let mut back = vec![0u8; message.len()];
    c.write_all(&message).expect("write");
    c.read_exact(&mut back).expect("echo");
    let (status, before) = scrape(&net.client);
    assert_eq!(status, "HTTP/1.1 200 OK", "{before}");
    assert_eq!(
        sample(&before, "tiflow_flows{mode=\"resilient\"}"),
        Some(1.0),
        "{before}"
    );
    assert_eq!(
        sample(&before, "tiflow_resumes_total"),
        Some(0.0),
        "{before}"
    );
    let control = client_up.control.to_string_lossy().into_owned();
    let out = tiflow(&["fail", "--all", "--control", &control]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    c.write_all(&message).expect("write after the failure");
    c.read_exact(&mut back).expect("echo after the resume");
    // The resume is counted once it completed (it carried the echo).
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (_, body) = scrape(&net.client);
        if sample(&body, "tiflow_resumes_total").unwrap_or(0.0) >= 1.0 || Instant::now() > deadline
        {
            break body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("[metrics] client after the resume:\n{body}");
    assert_eq!(sample(&body, "tiflow_resumes_total"), Some(1.0), "{body}");
    assert_eq!(
        sample(&body, "tiflow_failures_total{cause=\"explicit\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "tiflow_resume_downtime_seconds_count"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "tiflow_resume_downtime_seconds_bucket{le=\"+Inf\"}"),
        Some(1.0),
        "{body}"
    );
    let sent = sample(&body, "tiflow_bytes_total{direction=\"sent\"}").unwrap_or(0.0);
    let received = sample(&body, "tiflow_bytes_total{direction=\"received\"}").unwrap_or(0.0);
    assert!(sent >= 2.0 * message.len() as f64, "{body}");
    assert!(received >= 2.0 * message.len() as f64, "{body}");
    let (_, server) = scrape(&net.server);
    assert_eq!(
        sample(&server, "tiflow_resumes_total"),
        Some(1.0),
        "server: {server}"
    );
    let (status, _) = {
        let mut s = connect_in(&net.client, METRICS);
        s.write_all(b"GET /nothing HTTP/1.1\r\n\r\n")
            .expect("request");
        let mut r = String::new();
        let _ = s.read_to_string(&mut r);
        (r.lines().next().unwrap_or_default().to_owned(), r)
    };
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    drop(c);
    assert_eq!(echo.join().expect("echo server"), 2 * message.len() as u64);
    drop((server_up, client_up));
}

/// The number of open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A flood of idle connections to the endpoint holds at most 16 of
/// `tiflow up`'s descriptors (the others are closed at once), and the
/// endpoint answers again once they go.
#[test]
fn idle_connections_to_the_endpoint_hold_few_descriptors() {
    require_root(&NAT_TOOLS);
    let ns = ti_testnet::netns::NetNs::create("tfmf").expect("namespace");
    let scratch = Scratch::new("metrics-flood");
    let up = Up::start(
        &ns,
        &scratch,
        "up",
        &["--address", "10.68.0.1/24", "--metrics", METRICS],
    );
    let pid = up.child.id();
    let before = open_fds(pid);
    let idle: Vec<_> = (0..64).map(|_| connect_in(&ns, METRICS)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = open_fds(pid);
    eprintln!("[metrics] descriptors: {before} before, {during} with 64 idle connections");
    assert!(
        during <= before + 16,
        "64 idle connections hold {} descriptors",
        during - before
    );
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = scrape(&ns);
        if status == "HTTP/1.1 200 OK" {
            assert!(body.contains("tiflow_flows"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the endpoint did not come back: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
