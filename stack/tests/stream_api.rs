//! The blocking API in real time: two stacks, each with its own driver
//! thread, over an in-process link (no privileges needed).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4};
use std::time::Duration;

use ti_stack::device::pipe::Pipe;
use ti_stack::{Mode, Runtime, StackConfig, StreamEvent};
use ti_testnet::payload::sha256;

const A: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);

fn runtimes(b_ti: bool) -> (Runtime<Pipe>, Runtime<Pipe>) {
    let (pa, pb) = Pipe::pair(1500);
    let a = Runtime::start(StackConfig::new(A), pa).expect("start a");
    let mut cb = StackConfig::new(B);
    cb.ti_enabled = b_ti;
    let b = Runtime::start(cb, pb).expect("start b");
    (a, b)
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn blocking_streams_survive_explicit_failures_byte_exact() {
    let (a, b) = runtimes(true);
    let listener = b.listen(9000).expect("listen");
    let server = std::thread::spawn(move || {
        let mut s = listener.accept().expect("accept");
        assert!(matches!(s.mode(), Mode::Resilient { .. }));
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("server read");
        s.write_all(&sha256(&got)).expect("reply");
        s.shutdown(Shutdown::Write).expect("shutdown");
        s.wait_acknowledged(Duration::from_secs(20)).expect("acked");
        got.len()
    });
    let mut c = a.connect(SocketAddrV4::new(B, 9000)).expect("connect");
    let tifid = match c.mode() {
        Mode::Resilient { tifid } => tifid,
        Mode::Legacy => panic!("expected a TI-flow"),
    };
    assert!(tifid.is_complete());
    let payload = data(8 << 20, 7);
    for (i, chunk) in payload.chunks(1 << 20).enumerate() {
        c.write_all(chunk).expect("write");
        if i % 2 == 1 {
            c.fail_transport().expect("fail");
            // Wait for this resume, so the next failure is a separate one.
            let resumed = (0..100).any(|_| {
                matches!(
                    c.next_event(Duration::from_millis(100)),
                    Ok(Some(StreamEvent::Resumed { .. }))
                )
            });
            assert!(resumed, "no resume within 10 s of failure {i}");
        }
    }
    c.shutdown(Shutdown::Write).expect("shutdown");
    let mut digest = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(30)));
    c.read_to_end(&mut digest).expect("read digest");
    assert_eq!(
        digest,
        sha256(&payload).to_vec(),
        "server received exactly what was sent"
    );
    assert_eq!(server.join().expect("server"), payload.len());
    let info = c.info().expect("stream info");
    assert_eq!(info.stats.resumes, 4, "one resume per explicit failure");
    assert_eq!(c.peer_addr(), Some(SocketAddrV4::new(B, 9000).into()));
}

#[test]
fn legacy_peer_gives_a_plain_tcp_stream() {
    let (a, b) = runtimes(false);
    let listener = b.listen(9001).expect("listen");
    let server = std::thread::spawn(move || {
        let mut s = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read");
        s.write_all(&buf).expect("echo");
        s.mode()
    });
    let mut c = a.connect(SocketAddrV4::new(B, 9001)).expect("connect");
    assert_eq!(c.mode(), Mode::Legacy);
    c.write_all(b"hello").expect("write");
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"hello");
    assert_eq!(server.join().expect("server"), Mode::Legacy);
}

#[test]
fn connect_to_a_closed_port_is_refused() {
    let (a, _b) = runtimes(true);
    let err = a.connect(SocketAddrV4::new(B, 9999)).err();
    assert_eq!(err, Some(ti_stack::StreamError::ConnectionRefused));
}
