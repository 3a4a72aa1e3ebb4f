//! Resets through `tiflow up` (DESIGN §4 "Abort"): a program at one end
//! resetting its connection, or going away, reaches the program at the other
//! end as a reset (ECONNRESET) within a bounded time; never as a clean end of
//! stream, never as a hang. Kernel-TCP programs in network namespaces, both
//! hosts running `tiflow up`, a NAT middlebox between them. Needs root.
//!
//! Every address is inside the tests' own namespaces (and loopback); every
//! wait is bounded; the namespaces are deleted on drop, also on a panic.

mod common;

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const NAT_TOOLS: [(&str, &str); 3] = [
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("conntrack", "conntrack"),
];

/// The port of the programs, of the forward and of the serve.
const PORT: u16 = 7000;

/// Longest a reset may take to reach the far program.
const RESET_BOUND: Duration = Duration::from_secs(2);

/// The client program, connected through the client's `tiflow up`, and
/// the server program's end of the same conversation.
fn connect_programs(net: &NatTopology, listener: &std::net::TcpListener) -> (TcpStream, TcpStream) {
    let client = connect_in(&net.client, &format!("127.0.0.1:{PORT}"));
    let server = accept_bounded(listener);
    for s in [&client, &server] {
        s.set_write_timeout(Some(DEADLINE)).expect("timeout");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    }
    (client, server)
}

/// `from` sends 64 KiB and `to` reads all of it: the conversation is up.
fn exchange(from: &mut TcpStream, to: &mut TcpStream) {
    let payload = data(64 << 10, 3);
    from.write_all(&payload).expect("program write");
    let mut got = vec![0u8; payload.len()];
    to.read_exact(&mut got).expect("program read");
    assert_eq!(got, payload);
}

/// Asserts that a program's read ended with a reset within [`RESET_BOUND`]
/// of `since`, and returns the time it took.
fn assert_reset_within(end: &ReadEnd, since: Instant, what: &str, logs: &str) -> Duration {
    let took = end.at.saturating_duration_since(since);
    assert_eq!(
        end.outcome,
        Err(ErrorKind::ConnectionReset),
        "{what}: wanted ECONNRESET, got {end:?} after {took:?} (Ok = a clean end of stream, \
         WouldBlock = nothing at all)\n{logs}"
    );
    assert!(
        took <= RESET_BOUND,
        "{what}: the reset took {took:?}\n{logs}"
    );
    took
}

fn logs(server: &Up, client: &Up) -> String {
    format!(
        "--- client tiflow up:\n{}\n--- server tiflow up:\n{}",
        client.log_text(),
        server.log_text()
    )
}

/// Which program resets its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resetting {
    Client,
    Server,
}

/// One program resets its connection: its `tiflow up` aborts the flow, and
/// the other program's read fails with ECONNRESET (not a clean end of
/// stream) within 2 s; each `tiflow up` logs its side of it.
fn abort_reaches_the_far_program(resetting: Resetting, tag: &str, ns: &str) {
    require_root(&NAT_TOOLS);
    let scratch = Scratch::new(tag);
    let net = NatTopology::new(ns);
    let listener = listen_in(&net.server, &format!("127.0.0.1:{PORT}"));
    let (server, client) = up_pair(&net, &scratch, PORT, &[], None);
    let (client_program, server_program) = connect_programs(&net, &listener);
    let (mut near, mut far, far_name) = match resetting {
        Resetting::Client => (client_program, server_program, "server program"),
        Resetting::Server => (server_program, client_program, "client program"),
    };
    exchange(&mut near, &mut far);

    let reset_at = reset(near);
    let end = read_until_end(&mut far, RESET_BOUND * 3);
    let took = assert_reset_within(&end, reset_at, far_name, &logs(&server, &client));
    eprintln!("[live] {resetting:?} program reset -> {far_name} ECONNRESET in {took:?}");
    let (client_log, server_log) = (client.log_text(), server.log_text());
    let (near_log, far_log) = match resetting {
        Resetting::Client => (client_log, server_log),
        Resetting::Server => (server_log, client_log),
    };
    assert!(
        near_log.contains("local program reset: aborting flow"),
        "{near_log}"
    );
    assert!(
        far_log.contains("flow aborted by peer: resetting local connection"),
        "{far_log}"
    );
}

/// The client program resets its connection; the server program sees it.
#[test]
fn abort_from_the_client_program_reaches_the_server_program_as_a_reset() {
    abort_reaches_the_far_program(Resetting::Client, "abort-client", "tfua1");
}

/// The server program resets its connection; the client program sees it.
#[test]
fn abort_from_the_server_program_reaches_the_client_program_as_a_reset() {
    abort_reaches_the_far_program(Resetting::Server, "abort-server", "tfua2");
}

/// How the writing program's transfer ended, and when.
#[derive(Debug)]
struct WriteEnd {
    written: u64,
    error: Option<ErrorKind>,
    at: Instant,
}

/// Writes `total` bytes; if all of them go, reads to see how the
/// conversation ends. Returns the first error (or `None` for a clean end).
fn write_then_read(mut s: TcpStream, total: usize, pace: Option<Duration>) -> WriteEnd {
    let chunk = data(64 << 10, 11);
    let mut written = 0u64;
    let fail = |written, e: io::Error| WriteEnd {
        written,
        error: Some(e.kind()),
        at: Instant::now(),
    };
    while (written as usize) < total {
        if let Err(e) = s.write_all(&chunk) {
            return fail(written, e);
        }
        written += chunk.len() as u64;
        if let Some(pace) = pace {
            std::thread::sleep(pace);
        }
    }
    let end = read_until_end(&mut s, DEADLINE);
    WriteEnd {
        written,
        error: end.outcome.err(),
        at: end.at,
    }
}

/// The server program reads 64 KiB of a 16 MiB transfer and closes (with
/// unread data: the kernel sends a RST). The client program, still writing,
/// gets an error (ECONNRESET or EPIPE) within 1 s of that close, and the
/// client's `tiflow up` does not keep resuming a flow whose far end is gone
/// (at most 3 resume attempts).
#[test]
fn a_server_that_closes_early_gives_the_client_an_error_within_a_second() {
    require_root(&NAT_TOOLS);
    let scratch = Scratch::new("close-early");
    let net = NatTopology::new("tfua3");
    let listener = listen_in(&net.server, &format!("127.0.0.1:{PORT}"));
    let log = "info,ti_stack=debug";
    let (server, client) = up_pair(&net, &scratch, PORT, &[], Some(log));
    let client_program = connect_in(&net.client, &format!("127.0.0.1:{PORT}"));
    client_program
        .set_write_timeout(Some(DEADLINE))
        .expect("timeout");
    let writer = std::thread::spawn(move || write_then_read(client_program, 16 << 20, None));

    let (closed_tx, closed_rx) = mpsc::channel();
    let server_program = std::thread::spawn(move || {
        let mut s = accept_bounded(&listener);
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let mut got = vec![0u8; 64 << 10];
        s.read_exact(&mut got).expect("server program read");
        let closed_at = Instant::now();
        drop(s);
        closed_tx.send(closed_at).expect("signal");
    });
    let closed_at = closed_rx
        .recv_timeout(DEADLINE)
        .expect("server program closed");
    server_program.join().expect("server program");
    let end = writer.join().expect("client program");
    let took = end.at.saturating_duration_since(closed_at);
    // A storm of resumes would go on after the error: give it time to show.
    std::thread::sleep(Duration::from_secs(1));
    // Of every flow since start, including the one that ended.
    let attempts = client.status().resume_attempts;
    eprintln!(
        "[live] server program closed -> client program {:?} in {took:?} ({} MiB written); \
         {attempts} resume attempts",
        end.error,
        end.written >> 20
    );
    let logs = logs(&server, &client);
    assert!(
        matches!(
            end.error,
            Some(ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
        ),
        "client program: wanted ECONNRESET or EPIPE, got {end:?}\n{logs}"
    );
    assert!(
        took <= Duration::from_secs(1),
        "client program's error came {took:?} after the server program's close\n{logs}"
    );
    assert!(
        attempts <= 3,
        "{attempts} resume attempts for a flow whose far end closed\n{logs}"
    );
}

/// How a plain TCP transfer ended at both programs, timed from the
/// middlebox's failure.
struct LegacyEnds {
    written: WriteEnd,
    write_took: Duration,
    read: ReadEnd,
    read_took: Duration,
    logs: String,
}

/// The user timeout both `tiflow up`s get in the legacy tests.
const USER_TIMEOUT: Duration = Duration::from_secs(3);

/// A plain TCP transfer through `tiflow up` (the middlebox strips the flow
/// option) from the client program, paced at about 8 MiB/s, to the server
/// program; after 2 MiB arrived, `fail` breaks the middlebox. Each program
/// gives up after `quiet` without progress.
fn legacy_transfer_broken_by(
    tag: &str,
    fail: impl FnOnce(&NatTopology),
    quiet: Duration,
) -> LegacyEnds {
    require_root(&NAT_TOOLS);
    let scratch = Scratch::new(tag);
    let net = NatTopology::new(tag);
    net.middlebox
        .run(&[
            "iptables",
            "-w",
            "-t",
            "mangle",
            "-A",
            "FORWARD",
            "-p",
            "tcp",
            "-j",
            "TCPOPTSTRIP",
            "--strip-options",
            "253",
        ])
        .expect("TCPOPTSTRIP on the middlebox");
    let listener = listen_in(&net.server, &format!("127.0.0.1:{PORT}"));
    let timeout = format!("{}s", USER_TIMEOUT.as_secs());
    let (server, client) = up_pair(&net, &scratch, PORT, &["--user-timeout", &timeout], None);
    let client_program = connect_in(&net.client, &format!("127.0.0.1:{PORT}"));
    client_program
        .set_write_timeout(Some(quiet))
        .expect("timeout");
    let pace = Some(Duration::from_millis(8));
    let writer = std::thread::spawn(move || write_then_read(client_program, 480 << 20, pace));
    let (progress_tx, progress_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut s = accept_bounded(&listener);
        let mut first = vec![0u8; 2 << 20];
        s.read_exact(&mut first).expect("server program read");
        progress_tx.send(()).expect("signal");
        read_until_end(&mut s, quiet)
    });
    progress_rx
        .recv_timeout(DEADLINE)
        .expect("2 MiB through the flow");
    let report = client.wait_status("the connection", |r| {
        r.flows.iter().any(|f| f.mode != "connecting")
    });
    assert_eq!(report.flows[0].mode, "legacy", "{report:#?}");

    let failed_at = Instant::now();
    fail(&net);
    let written = writer.join().expect("client program");
    let read = reader.join().expect("server program");
    let (write_took, read_took) = (
        written.at.saturating_duration_since(failed_at),
        read.at.saturating_duration_since(failed_at),
    );
    eprintln!(
        "[live] {tag}: writer {:?} after {write_took:?}, reader {:?} after {read_took:?}",
        written.error, read.outcome
    );
    LegacyEnds {
        written,
        write_took,
        read,
        read_took,
        logs: logs(&server, &client),
    }
}

/// Asserts that the writing program got ECONNRESET or EPIPE within the
/// user timeout of the middlebox failing.
fn assert_writer_failed_in_time(ends: &LegacyEnds) {
    let LegacyEnds {
        written,
        write_took,
        logs,
        ..
    } = ends;
    assert!(
        matches!(
            written.error,
            Some(ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
        ),
        "writing program: wanted ECONNRESET or EPIPE, got {written:?} after {write_took:?}\n{logs}"
    );
    assert!(
        *write_took <= USER_TIMEOUT + Duration::from_secs(1),
        "writing program: error {write_took:?} after the failure (user timeout {USER_TIMEOUT:?})\n{logs}"
    );
}

/// The middlebox strips the flow option (the flow is plain TCP end to end)
/// and then loses its NAT state while the client program writes and the
/// server program reads. With `--user-timeout 3s`, the writing program gets
/// an error within the user timeout, and the reading program gets
/// ECONNRESET: neither a clean end of stream after lost data, nor a hang.
#[test]
fn a_legacy_flow_through_a_nat_that_loses_state_ends_with_errors_not_eof() {
    let ends = legacy_transfer_broken_by("tfua4", |net| net.lose_state(), Duration::from_secs(20));
    assert_writer_failed_in_time(&ends);
    let LegacyEnds {
        read,
        read_took,
        logs,
        ..
    } = &ends;
    assert_eq!(
        read.outcome,
        Err(ErrorKind::ConnectionReset),
        "reading program: wanted ECONNRESET, got {read:?} after {read_took:?} \
         (Ok = a clean end of stream, WouldBlock = nothing for 20 s)\n{logs}"
    );
    // The reading side sends nothing but ACKs: it learns at its next
    // keepalive (5 s idle), which the NAT, now without the mapping, resets.
    assert!(
        *read_took <= Duration::from_secs(12),
        "reading program: reset {read_took:?} after the state loss\n{logs}"
    );
}

/// As above, but the middlebox silently drops everything (no reset comes
/// back from anywhere): only the user timeout can end the writing program's
/// wait, within `--user-timeout 3s`. The reading program, which sends
/// nothing but ACKs, learns when its keepalive (5 s idle) goes unanswered
/// for the user timeout: a reset too, never a clean end of stream.
#[test]
fn a_legacy_flow_into_a_blackhole_fails_within_the_user_timeout() {
    let blackhole = |net: &NatTopology| {
        net.middlebox
            .run(&["iptables", "-w", "-I", "FORWARD", "1", "-j", "DROP"])
            .expect("drop everything on the middlebox");
    };
    let ends = legacy_transfer_broken_by("tfua5", blackhole, Duration::from_secs(15));
    assert_writer_failed_in_time(&ends);
    let LegacyEnds {
        read,
        read_took,
        logs,
        ..
    } = &ends;
    assert_eq!(
        read.outcome,
        Err(ErrorKind::ConnectionReset),
        "reading program: wanted ECONNRESET, got {read:?} after {read_took:?} \
         (Ok = a clean end of stream, WouldBlock = nothing for 15 s)\n{logs}"
    );
    assert!(
        *read_took <= Duration::from_secs(12),
        "reading program: reset {read_took:?} after the blackhole\n{logs}"
    );
}
