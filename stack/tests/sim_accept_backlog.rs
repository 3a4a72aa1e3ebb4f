//! Simulation: more handshakes complete than the listener's accept
//! queue holds while the application is slow to accept. As Linux does, the
//! ACK that would complete a handshake into a full queue is dropped and the
//! handshake stays half-open; a client that resumes meanwhile is refused
//! (the server has no flow yet) and retries; once the application
//! accepts, every client is served on the flow it negotiated. (Dropping
//! those connections left clients holding TI-flows the server never had:
//! their resumes were refused as unknown and their programs were reset.)
//! Legacy handshakes are deferred the same way. The latest deferred
//! segment of each handshake is replayed when the application accepts, so
//! no handshake waits for a client retransmission that backed off beyond
//! the half-open timeout.

mod common;

use std::net::SocketAddrV4;

use common::*;
use smoltcp::time::Duration;
use ti_stack::StreamId;

const CLIENTS: usize = 6;
const BACKLOG: usize = 2;

fn run(ti: bool) {
    let mut server = config(SERVER, 32);
    server.accept_backlog = BACKLOG;
    server.ti_enabled = ti;
    let (mut sim, listener) = pair_with(31, link(5), config(CLIENT, 31), server);
    let now = sim.now();
    let clients: Vec<StreamId> = (0..CLIENTS)
        .map(|_| {
            sim.hosts[0]
                .connect(now, SocketAddrV4::new(SERVER, PORT))
                .expect("connect")
        })
        .collect();
    // Every client writes at once; the server accepts nothing for 1.5 s
    // (less than the half-open timeout, 3 s by default).
    for (i, &c) in clients.iter().enumerate() {
        let _ = sim.hosts[0].write(c, &[i as u8; 100]);
    }
    sim.run_for(Duration::from_millis(1500));
    let deferred = sim.hosts[1].resources().handshakes_deferred_backlog;
    assert!(
        deferred > 0,
        "the queue overflowed: some ACKs were deferred"
    );
    // Now the application accepts everything and echoes what it reads.
    let mut served = Vec::new();
    let done = sim.run_until(Duration::from_secs(30), |sim| {
        while let Ok(Some(id)) = sim.hosts[1].accept(listener) {
            served.push(id);
        }
        let mut buf = [0u8; 200];
        for &s in &served {
            if let Ok(Some(n)) = sim.hosts[1].read(s, &mut buf)
                && n > 0
            {
                let _ = sim.hosts[1].write(s, &buf[..n]);
            }
        }
        clients.iter().all(|&c| sim.hosts[0].readable(c) >= 100)
    });
    for (i, &c) in clients.iter().enumerate() {
        // A client whose data waited more than its stall budget may have
        // resumed once the server confirmed its flow: never lost.
        assert_eq!(sim.hosts[0].error(c), None, "client {i} failed");
        assert_eq!(resilient(&sim, 0, c), ti, "client {i}'s mode");
    }
    assert!(done, "every client got its echo");
    assert_eq!(
        served.len(),
        CLIENTS,
        "the server accepted every connection"
    );
    let mut buf = [0u8; 200];
    for (i, &c) in clients.iter().enumerate() {
        let n = sim.hosts[0]
            .read(c, &mut buf)
            .expect("read")
            .expect("bytes");
        assert_eq!(&buf[..n], &[i as u8; 100][..], "client {i}'s own bytes");
    }
}

#[test]
fn ti_handshakes_beyond_the_accept_queue_wait_and_are_served() {
    run(true);
}

#[test]
fn legacy_handshakes_beyond_the_accept_queue_wait_and_are_served() {
    run(false);
}
