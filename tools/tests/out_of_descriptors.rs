//! `tiflow up` out of file descriptors (issue 12): with its open-file limit
//! at 40 (soft and hard, so it cannot raise it), more local connections than
//! it has descriptors for. Those it cannot carry are refused at once (a
//! reset, not a hang), the log says so once, `tiflow status` keeps
//! answering, and after connections close new ones are carried again.
//! Root and the NAT tools are needed; without them the test fails with
//! what is missing.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use ti_testnet::netns::NetNs;

const NAT_TOOLS: [(&str, &str); 3] = [
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("conntrack", "conntrack"),
];
const PORT: u16 = 7400;
/// The client `tiflow up`'s open-file limit.
const NOFILE: u32 = 40;
/// Local connections opened: more than the limit allows.
const CONNECTIONS: usize = 60;
/// Longest a connection may take to be greeted or refused.
const DECIDED_WITHIN: Duration = Duration::from_secs(15);

/// What became of a local connection.
#[derive(Debug, PartialEq)]
enum Outcome {
    Greeted,
    Refused,
}

/// Reads the 2-byte greeting, or sees the refusal (a reset or an end of
/// stream before any byte). A connection left hanging fails the test.
fn outcome(s: &mut TcpStream) -> Outcome {
    s.set_read_timeout(Some(DECIDED_WITHIN)).expect("timeout");
    let mut greeting = [0u8; 2];
    match s.read_exact(&mut greeting) {
        Ok(()) => {
            assert_eq!(&greeting, b"hi");
            Outcome::Greeted
        }
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof
            ) =>
        {
            Outcome::Refused
        }
        Err(e) => panic!("a local connection was neither carried nor refused: {e}"),
    }
}

/// Connects to the forward port and sees what becomes of the connection.
/// A refusal (an accept and an immediate reset) can arrive before
/// `connect` has returned, so a reset there is a refusal too.
fn connect_and_see(client: &NetNs) -> (Outcome, Option<TcpStream>) {
    let target: std::net::SocketAddr = format!("127.0.0.1:{PORT}").parse().expect("address");
    let connected = client
        .enter(|| TcpStream::connect_timeout(&target, DECIDED_WITHIN))
        .expect("enter");
    match connected {
        Ok(mut s) => (outcome(&mut s), Some(s)),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => (Outcome::Refused, None),
        Err(e) => panic!("connect to {target}: {e}"),
    }
}

#[test]
fn out_of_descriptors_refuses_with_one_log_line_and_keeps_answering() {
    require_root(&NAT_TOOLS);
    let net = NatTopology::new("tfod");
    let scratch = Scratch::new("nofd");
    let server_up = Up::start(
        &net.server,
        &scratch,
        "server",
        &[
            "--address",
            "10.0.2.1/24",
            "--serve",
            &format!("{PORT}={PORT}"),
            "--expose",
            &PORT.to_string(),
        ],
    );
    let client_up = Up::start_with_file_limit(
        &net.client,
        &scratch,
        "client",
        &[
            "--address",
            "10.0.1.1/24",
            "--masquerade",
            "--forward",
            &format!("127.0.0.1:{PORT}=10.10.2.2:{PORT}"),
        ],
        NOFILE,
    );
    let listener = listen_in(&net.server, &format!("127.0.0.1:{PORT}"));
    listener.set_nonblocking(true).expect("nonblocking");
    // The server program greets whatever reaches it and closes what its
    // client closed, until told to stop.
    let (done, done_rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let mut kept: Vec<TcpStream> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while done_rx.try_recv().is_err() && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.write_all(b"hi");
                    s.set_nonblocking(true).expect("nonblocking");
                    kept.push(s);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
            kept.retain(|mut s| !matches!(s.read(&mut [0u8; 16]), Ok(0)));
        }
    });

    let mut clients = Vec::new();
    let mut outcomes = Vec::new();
    for _ in 0..CONNECTIONS {
        let (outcome, client) = connect_and_see(&net.client);
        outcomes.push(outcome);
        clients.extend(client);
    }
    let greeted = outcomes.iter().filter(|o| **o == Outcome::Greeted).count();
    let refused = outcomes.len() - greeted;
    eprintln!("[nofd] limit {NOFILE}: {greeted} carried, {refused} refused");
    assert!(greeted > 0, "some connections fit under the limit");
    assert!(refused > 0, "the limit was reached");
    // Once refusing, it refuses: nothing gets through by chance later.
    let first_refused = outcomes
        .iter()
        .position(|o| *o == Outcome::Refused)
        .expect("a refusal");
    assert!(
        outcomes[first_refused..]
            .iter()
            .all(|o| *o == Outcome::Refused),
        "{outcomes:?}"
    );
    // The control socket answers with every descriptor in use.
    let status = client_up.status();
    assert_eq!(status.flows.len(), greeted, "{status:#?}");
    let log = client_up.log_text();
    assert_eq!(
        log.matches("out of file descriptors").count(),
        1,
        "one line when refusing starts:\n{log}"
    );

    // Connections close: descriptors come back, new connections are carried.
    drop(clients);
    client_up.wait_status("the closed connections' flows gone", |r| r.flows.is_empty());
    let mut again = connect_in(&net.client, &format!("127.0.0.1:{PORT}"));
    assert_eq!(outcome(&mut again), Outcome::Greeted);
    let log = client_up.log_text();
    assert!(
        log.contains("file descriptors available again")
            && log.contains(&format!("refused={refused}")),
        "the end of the refusals is reported with their count:\n{log}"
    );
    drop(again);
    let _ = done.send(());
    server.join().expect("server program");
    drop(server_up);
}
