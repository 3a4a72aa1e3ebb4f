//! TI-flows over IPv6 and dual-stack stacks, in real time: two stacks,
//! each with its own driver thread, over an in-process link (no
//! privileges needed). The option, its handshakes and resumes are the same
//! over both families; a flow resumes across families only where the
//! responder allows address migration (DESIGN §4 "Address families").

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use ti_stack::device::pipe::Pipe;
use ti_stack::{Ipv6Addressing, Mode, Runtime, StackConfig, StreamError, StreamEvent, TiStream};
use ti_testnet::payload::sha256;

const A4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const B4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x9, 0, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x9, 0, 0, 0, 0, 0, 2);
const PORT: u16 = 9000;

/// Client (A) and server (B) stacks. `a4`/`b4`: whether each has an IPv4
/// address; both always have an IPv6 one. `b_migration`: whether the
/// server takes resumes from new addresses.
fn runtimes(a4: bool, b4: bool, b_migration: bool) -> (Runtime<Pipe>, Runtime<Pipe>) {
    let (pa, pb) = Pipe::pair(1500);
    let config = |v4: Option<Ipv4Addr>, v6: Ipv6Addr| {
        let mut c = match v4 {
            Some(v4) => StackConfig::new(v4),
            None => StackConfig::new_v6(v6),
        };
        c.ipv6 = Some(Ipv6Addressing::new(v6));
        c
    };
    let a = Runtime::start(config(a4.then_some(A4), A6), pa).expect("start a");
    let mut cb = config(b4.then_some(B4), B6);
    cb.allow_migration = b_migration;
    let b = Runtime::start(cb, pb).expect("start b");
    (a, b)
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A server that reads to the end, answers with the digest of what it
/// read, and returns how much that was and its own address on the last
/// connection that carried the flow (its peer address stays the one the
/// flow was opened from).
fn digest_server(b: &Runtime<Pipe>) -> std::thread::JoinHandle<(usize, Option<SocketAddr>)> {
    let listener = b.listen(PORT).expect("listen");
    std::thread::spawn(move || {
        let mut s = listener.accept().expect("accept");
        assert!(matches!(s.mode(), Mode::Resilient { .. }));
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("server read");
        let local = s.local_addr();
        s.write_all(&sha256(&got)).expect("reply");
        s.shutdown(Shutdown::Write).expect("shutdown");
        s.wait_acknowledged(Duration::from_secs(20)).expect("acked");
        (got.len(), local)
    })
}

/// Waits up to 10 s for the stream's next resume or loss.
fn next_resume(c: &TiStream<Pipe>) -> Result<(), String> {
    for _ in 0..100 {
        match c.next_event(Duration::from_millis(100)) {
            Ok(Some(StreamEvent::Resumed { .. })) => return Ok(()),
            Ok(Some(StreamEvent::Lost(cause))) => return Err(format!("lost: {cause}")),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("no resume within 10 s".into())
}

/// Sends `payload`, failing the connection after every second MiB, and
/// checks the server's digest.
fn send_through_failures(c: &mut TiStream<Pipe>, payload: &[u8]) {
    for (i, chunk) in payload.chunks(1 << 20).enumerate() {
        c.write_all(chunk).expect("write");
        if i % 2 == 1 {
            c.fail_transport().expect("fail");
            next_resume(c).unwrap_or_else(|e| panic!("failure {i}: {e}"));
        }
    }
    c.shutdown(Shutdown::Write).expect("shutdown");
    let mut digest = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(30)));
    c.read_to_end(&mut digest).expect("read digest");
    assert_eq!(digest, sha256(payload).to_vec(), "byte-exact");
}

#[test]
fn a_ti_flow_over_ipv6_survives_failures_byte_exact() {
    let (a, b) = runtimes(false, false, true);
    let server = digest_server(&b);
    let remote = SocketAddrV6::new(B6, PORT, 0, 0);
    let mut c = a.connect(remote).expect("connect over IPv6");
    assert!(matches!(c.mode(), Mode::Resilient { tifid } if tifid.is_complete()));
    assert_eq!(c.peer_addr(), Some(remote.into()));
    assert!(matches!(c.local_addr(), Some(SocketAddr::V6(l)) if *l.ip() == A6));
    let payload = data(6 << 20, 3);
    send_through_failures(&mut c, &payload);
    let (len, seen) = server.join().expect("server");
    assert_eq!(len, payload.len());
    assert!(matches!(seen, Some(SocketAddr::V6(l)) if *l.ip() == B6));
    assert_eq!(c.info().expect("info").stats.resumes, 3);
}

#[test]
fn a_dual_stack_stack_carries_both_families_at_once() {
    let (a, b) = runtimes(true, true, true);
    let listener = b.listen(PORT).expect("listen");
    let server = std::thread::spawn(move || {
        (0..2)
            .map(|_| {
                let mut s = listener.accept().expect("accept");
                let mut buf = [0u8; 4];
                s.read_exact(&mut buf).expect("read");
                s.write_all(&buf).expect("echo");
                s.peer_addr().expect("peer").is_ipv4()
            })
            .collect::<Vec<_>>()
    });
    let mut v4 = a.connect(SocketAddrV4::new(B4, PORT)).expect("connect v4");
    let mut v6 = a
        .connect(SocketAddrV6::new(B6, PORT, 0, 0))
        .expect("connect v6");
    for (s, msg) in [(&mut v4, b"four"), (&mut v6, b"six!")] {
        assert!(matches!(s.mode(), Mode::Resilient { .. }));
        s.write_all(msg).expect("write");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, msg);
    }
    let mut families = server.join().expect("server");
    families.sort();
    assert_eq!(families, vec![false, true], "one connection of each family");
}

#[test]
fn a_flow_resumes_across_families_where_the_responder_allows_migration() {
    // The client reached the server over IPv4; the IPv4 path goes, and it
    // resumes at the server's IPv6 address (a host that moved to an
    // IPv6-only network).
    let (a, b) = runtimes(true, true, true);
    let server = digest_server(&b);
    let mut c = a.connect(SocketAddrV4::new(B4, PORT)).expect("connect");
    let payload = data(2 << 20, 9);
    c.write_all(&payload[..1 << 20]).expect("write");
    c.set_resume_peer(SocketAddrV6::new(B6, PORT, 0, 0))
        .expect("resume peer");
    c.fail_transport().expect("fail");
    next_resume(&c).expect("resumed over IPv6");
    assert!(matches!(c.local_addr(), Some(SocketAddr::V6(_))));
    c.write_all(&payload[1 << 20..]).expect("write");
    c.shutdown(Shutdown::Write).expect("shutdown");
    let mut digest = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(30)));
    c.read_to_end(&mut digest).expect("read digest");
    assert_eq!(
        digest,
        sha256(&payload).to_vec(),
        "byte-exact across families"
    );
    let (len, seen) = server.join().expect("server");
    assert_eq!(len, payload.len());
    assert_eq!(seen, Some(SocketAddrV6::new(B6, PORT, 0, 0).into()));
}

#[test]
fn a_responder_that_forbids_migration_refuses_a_resume_from_the_other_family() {
    let (a, b) = runtimes(true, true, false);
    let listener = b.listen(PORT).expect("listen");
    let mut c = a.connect(SocketAddrV4::new(B4, PORT)).expect("connect");
    let s = listener.accept().expect("accept");
    c.write_all(b"before").expect("write");
    c.set_resume_peer(SocketAddrV6::new(B6, PORT, 0, 0))
        .expect("resume peer");
    c.fail_transport().expect("fail");
    let outcome = next_resume(&c);
    assert!(
        outcome.as_ref().is_err_and(|e| e.starts_with("lost")),
        "the resume from a new address was refused: {outcome:?}"
    );
    drop((c, s));
}

#[test]
fn resume_peers_of_a_family_without_an_address_or_for_a_responder_are_refused() {
    let (a, b) = runtimes(true, false, true);
    let listener = b.listen(PORT).expect("listen");
    let c = a
        .connect(SocketAddrV6::new(B6, PORT, 0, 0))
        .expect("connect");
    let s = listener.accept().expect("accept");
    // B has no IPv4 address: neither a connect nor a resume can use one.
    assert_eq!(
        b.connect(SocketAddrV4::new(A4, PORT)).err(),
        Some(StreamError::NoAddressOfFamily)
    );
    assert_eq!(
        s.set_resume_peer(SocketAddrV6::new(A6, 1, 0, 0)).err(),
        Some(StreamError::NotInitiator)
    );
    drop((c, s));
}
