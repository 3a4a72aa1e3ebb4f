//! Simulation: the local port allocator. Connections take distinct ports of
//! the configured ephemeral range, never one a listener uses; when every
//! port is held, `connect` fails with `NoFreePort` (no panic, no port in
//! use handed out again, no stream left behind) and a resume attempt that
//! finds no port is a failed attempt retried later.

mod common;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use common::*;
use smoltcp::time::Duration;
use ti_stack::{StackConfig, StreamError, StreamEvent, StreamId};

const FIRST: u16 = 50_000;
const LAST: u16 = 50_007;

fn small_range(addr: Ipv4Addr, seed: u64) -> StackConfig {
    let mut c = config(addr, seed);
    c.socket_buffer = 16 << 10;
    c.ephemeral_ports = FIRST..=LAST;
    c
}

fn connect_all(sim: &mut ti_stack::sim::Sim, n: usize) -> Vec<StreamId> {
    let server = SocketAddrV4::new(SERVER, PORT);
    let ids: Vec<StreamId> = (0..n)
        .map(|_| {
            let now = sim.now();
            sim.hosts[0].connect(now, server).expect("a port is free")
        })
        .collect();
    let ok = sim.run_until(Duration::from_secs(10), |sim| {
        ids.iter().all(|&id| sim.hosts[0].is_connected(id))
    });
    assert!(ok, "connections not established");
    ids
}

#[test]
fn connect_fails_with_no_free_port_once_the_range_is_held() {
    let (mut sim, _listener) = pair_with(90, link(1), small_range(CLIENT, 90), config(SERVER, 91));
    // A port we listen on is never handed out.
    let own = sim.hosts[0].listen(LAST).expect("listen");
    let ids = connect_all(&mut sim, 7);
    let ports: HashSet<u16> = ids
        .iter()
        .map(|&id| sim.hosts[0].local_addr(id).expect("connected").port())
        .collect();
    assert_eq!(ports.len(), 7, "ports handed out twice: {ports:?}");
    assert!(ports.iter().all(|p| (FIRST..LAST).contains(p)), "{ports:?}");

    let streams = sim.hosts[0].resources().streams;
    let now = sim.now();
    let err = sim.hosts[0]
        .connect(now, SocketAddrV4::new(SERVER, PORT))
        .expect_err("every port is held");
    assert_eq!(err, StreamError::NoFreePort { ports: 8 });
    assert_eq!(
        err.to_string(),
        "no free local port: all 8 ephemeral ports are in use"
    );
    assert_eq!(
        std::io::Error::from(err).kind(),
        std::io::ErrorKind::AddrNotAvailable
    );
    assert_eq!(
        sim.hosts[0].resources().streams,
        streams,
        "the failed connect left a stream behind"
    );

    // An aborted connection's port is held until its RST is out and the
    // reset's linger is over; then it is free again.
    let gone = ids[0];
    let port = sim.hosts[0].local_addr(gone).expect("connected").port();
    let now = sim.now();
    sim.hosts[0].abort(now, gone).expect("abort");
    sim.run_for(Duration::from_millis(500));
    let now = sim.now();
    assert!(
        matches!(
            sim.hosts[0].connect(now, SocketAddrV4::new(SERVER, PORT)),
            Err(StreamError::NoFreePort { .. })
        ),
        "the port of a connection still resetting was handed out"
    );
    sim.run_for(Duration::from_secs(3));
    let again = connect_all(&mut sim, 1)[0];
    assert_eq!(sim.hosts[0].local_addr(again).map(|a| a.port()), Some(port));

    // Unlistening frees the listener's port.
    let now = sim.now();
    sim.hosts[0].unlisten(now, own);
    let last = connect_all(&mut sim, 1)[0];
    assert_eq!(sim.hosts[0].local_addr(last).map(|a| a.port()), Some(LAST));
}

#[test]
fn a_resume_that_finds_no_port_retries_later() {
    let mut client = small_range(CLIENT, 92);
    client.ephemeral_ports = FIRST..=FIRST + 1;
    let (mut sim, listener) = pair_with(92, link(1), client, config(SERVER, 93));
    sim.hosts[0].listen(FIRST + 1).expect("listen");
    let (c, _s) = connect(&mut sim, listener);
    assert!(resilient(&sim, 0, c));
    // An explicit failure resets the connection with our option: its port
    // stays held while the reset lingers, so the first attempts find none.
    sim.hosts[0].fail_transport(c).expect("fail");
    let resumed = sim.run_until(Duration::from_secs(20), |sim| {
        std::iter::from_fn(|| sim.hosts[0].poll_event(c))
            .any(|e| matches!(e, StreamEvent::Resumed { .. }))
    });
    assert!(resumed, "no resume after the port came free");
    let info = sim.hosts[0]
        .stream_infos()
        .into_iter()
        .find(|i| i.id == c)
        .expect("stream");
    assert!(
        info.stats.resume_attempts >= 2,
        "attempts without a port were not counted: {:?}",
        info.stats
    );
    assert_eq!(sim.hosts[0].error(c), None);
    assert_eq!(sim.hosts[0].local_addr(c).map(|a| a.port()), Some(FIRST));
}
