//! The any-port listener (`Stack::listen_any`, what `tiflow up
//! --serve-all` stands on): one accept queue for every port a port
//! listener does not hold, or only for an allow list of ports. Two stacks,
//! each with its own driver thread, over an in-process link (no privileges
//! needed).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::time::Duration;

use ti_stack::device::pipe::Pipe;
use ti_stack::{Mode, Runtime, StackConfig, StreamError, StreamEvent, TiListener, TiStream};
use ti_testnet::payload::sha256;

const A: Ipv4Addr = Ipv4Addr::new(10, 9, 1, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 9, 1, 2);
const WAIT: Duration = Duration::from_secs(10);

/// Client (A) and server (B).
fn runtimes() -> (Runtime<Pipe>, Runtime<Pipe>) {
    let (pa, pb) = Pipe::pair(1500);
    let a = Runtime::start(StackConfig::new(A), pa).expect("start a");
    let b = Runtime::start(StackConfig::new(B), pb).expect("start b");
    (a, b)
}

fn to_b(port: u16) -> SocketAddr {
    SocketAddrV4::new(B, port).into()
}

/// Accepts one connection within [`WAIT`] and returns it with the port it
/// came to.
fn accept_one(listener: &TiListener<Pipe>) -> (TiStream<Pipe>, u16) {
    let s = listener
        .accept_timeout(Some(WAIT))
        .expect("accept")
        .expect("a connection within 10 s");
    let port = s.local_addr().expect("local address").port();
    (s, port)
}

/// Nothing waits on `listener` (it is looked at for 300 ms).
fn nothing_queued(listener: &TiListener<Pipe>) -> bool {
    matches!(
        listener.accept_timeout(Some(Duration::from_millis(300))),
        Ok(None)
    )
}

#[test]
fn an_any_port_listener_takes_every_port_a_port_listener_does_not_hold() {
    let (a, b) = runtimes();
    let own = b.listen(7000).expect("listen 7000");
    let any = b.listen_any(Vec::new()).expect("listen on any port");
    assert_eq!(any.port(), 0);
    assert!(
        matches!(b.listen_any(Vec::new()), Err(StreamError::AddrInUse)),
        "one any-port listener at a time"
    );

    let _c7000 = a.connect(to_b(7000)).expect("connect 7000");
    let (_s, port) = accept_one(&own);
    assert_eq!(port, 7000, "the port's own listener takes its port");
    assert!(nothing_queued(&any), "and the any-port listener does not");

    for port in [22, 443, 50_000, 65_535] {
        let c = a.connect(to_b(port)).expect("connect");
        assert!(
            matches!(c.mode(), Mode::Resilient { .. }),
            "port {port}: a TI-flow"
        );
        let (s, got) = accept_one(&any);
        assert_eq!(got, port, "the accepted stream tells its port");
        assert!(matches!(s.mode(), Mode::Resilient { .. }));
    }
    assert!(nothing_queued(&own));
}

#[test]
fn a_flow_on_the_any_port_listener_resumes_byte_exact() {
    let (a, b) = runtimes();
    let any = b.listen_any(Vec::new()).expect("listen on any port");
    let server = std::thread::spawn(move || {
        let (mut s, port) = accept_one(&any);
        let mut got = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(30)));
        s.read_to_end(&mut got).expect("server read");
        s.write_all(&sha256(&got)).expect("reply");
        s.shutdown(Shutdown::Write).expect("shutdown");
        s.wait_acknowledged(Duration::from_secs(20)).expect("acked");
        (port, got.len())
    });
    let mut c = a.connect(to_b(2222)).expect("connect");
    let payload: Vec<u8> = (0..(3u32 << 20)).map(|i| (i * 7 + 1) as u8).collect();
    for (i, chunk) in payload.chunks(1 << 20).enumerate() {
        c.write_all(chunk).expect("write");
        if i < 2 {
            c.fail_transport().expect("fail");
            let resumed = (0..100).any(|_| {
                matches!(
                    c.next_event(Duration::from_millis(100)),
                    Ok(Some(StreamEvent::Resumed { .. }))
                )
            });
            assert!(resumed, "failure {i}: resumed within 10 s");
        }
    }
    c.shutdown(Shutdown::Write).expect("shutdown");
    let mut digest = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(30)));
    c.read_to_end(&mut digest).expect("read digest");
    assert_eq!(digest, sha256(&payload).to_vec(), "byte-exact");
    assert_eq!(server.join().expect("server"), (2222, payload.len()));
    assert_eq!(c.info().expect("info").stats.resumes, 2);
}

#[test]
fn an_allow_list_takes_its_ports_and_refuses_the_others() {
    let (a, b) = runtimes();
    let any = b
        .listen_any(vec![22..=22, 8000..=8100])
        .expect("listen on the allowed ports");
    for port in [22, 8000, 8050, 8100] {
        let _c = a.connect(to_b(port)).expect("an allowed port connects");
        assert_eq!(accept_one(&any).1, port);
    }
    for port in [21, 23, 7999, 8101, 9000] {
        let refused = a.connect(to_b(port));
        assert!(
            matches!(refused, Err(StreamError::ConnectionRefused)),
            "port {port} is refused: {:?}",
            refused.map(|s| s.mode())
        );
    }
    assert!(nothing_queued(&any));
}

#[test]
fn dropping_the_any_port_listener_stops_taking_ports() {
    let (a, b) = runtimes();
    let any = b.listen_any(Vec::new()).expect("listen on any port");
    let _c = a.connect(to_b(5000)).expect("connect");
    assert_eq!(accept_one(&any).1, 5000);
    drop(any);
    assert!(matches!(
        a.connect(to_b(5001)),
        Err(StreamError::ConnectionRefused)
    ));
    // And it can be made again.
    let any = b.listen_any(Vec::new()).expect("listen on any port again");
    let _c = a.connect(to_b(5002)).expect("connect");
    assert_eq!(accept_one(&any).1, 5002);
}
