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
//!
//! Clients that wait for the server to speak first (ssh, SMTP, databases)
//! send nothing after their ACK: only our SYN-ACK, sent again, keeps their
//! held handshake alive, so the half-open timeout must outlast its
//! backoff; and a held handshake the server gives up is reset, so such a
//! client learns it instead of waiting forever.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::*;
use smoltcp::time::Duration;
use ti_stack::StreamId;
use ti_stack::device::link::Side;
use ti_stack::segment::Segment;
use ti_stack::sim::Sim;
use ti_testnet::packet::Tcp;

const CLIENTS: usize = 6;
const BACKLOG: usize = 2;

/// A client and a server whose accept queue holds `BACKLOG` (`adjust`
/// sets the rest of its config), and `CLIENTS` connects started at once
/// from seed `seed`.
fn clients_at_once(
    seed: u64,
    adjust: impl FnOnce(&mut ti_stack::StackConfig),
) -> (ti_stack::sim::Sim, ti_stack::ListenerId, Vec<StreamId>) {
    let mut server = config(SERVER, seed + 1);
    server.accept_backlog = BACKLOG;
    adjust(&mut server);
    let (mut sim, listener) = pair_with(seed, link(5), config(CLIENT, seed), server);
    let now = sim.now();
    let clients = (0..CLIENTS)
        .map(|_| {
            sim.hosts[0]
                .connect(now, SocketAddrV4::new(SERVER, PORT))
                .expect("connect")
        })
        .collect();
    (sim, listener, clients)
}

fn run(ti: bool) {
    let (mut sim, listener, clients) = clients_at_once(31, |server| server.ti_enabled = ti);
    // Every client writes at once; the server accepts nothing for 1.5 s.
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

/// Clients that send nothing after the handshake (the server speaks
/// first): `CLIENTS` connect at once, the application accepts nothing
/// for `hold`, then accepts each connection and greets it. Returns each
/// client's greeting (or `None`) and error after `limit`.
fn speak_first(
    half_open_timeout: std::time::Duration,
    hold: Duration,
    limit: Duration,
) -> Vec<(Option<usize>, Option<String>)> {
    let (mut sim, listener, clients) =
        clients_at_once(41, |server| server.half_open_timeout = half_open_timeout);
    sim.run_for(hold);
    assert!(
        sim.hosts[1].resources().handshakes_deferred_backlog > 0,
        "the queue overflowed: some ACKs were held"
    );
    let mut greeted = Vec::new();
    sim.run_until(limit, |sim| {
        while let Ok(Some(id)) = sim.hosts[1].accept(listener) {
            let _ = sim.hosts[1].write(id, b"hello");
            greeted.push(id);
        }
        clients
            .iter()
            .all(|&c| sim.hosts[0].readable(c) >= 5 || sim.hosts[0].error(c).is_some())
    });
    clients
        .iter()
        .map(|&c| {
            let readable = sim.hosts[0].readable(c);
            let error = sim.hosts[0].error(c).map(|e| e.to_string());
            ((readable > 0).then_some(readable), error)
        })
        .collect()
}

#[test]
fn silent_clients_outlast_ten_seconds_of_a_full_accept_queue() {
    // The SYN-ACK goes again 1, 3 and 7 s after the first: with a 3 s
    // half-open timeout these handshakes were dropped at about 6 s, and
    // their clients (connected, waiting for a greeting) waited forever.
    let timeout = config(SERVER, 0).half_open_timeout;
    let clients = speak_first(timeout, Duration::from_secs(10), Duration::from_secs(30));
    for (i, (greeting, error)) in clients.iter().enumerate() {
        assert_eq!(*error, None, "client {i} failed");
        assert_eq!(*greeting, Some(5), "client {i} was greeted");
    }
}

#[test]
fn a_held_handshake_the_server_gives_up_resets_its_silent_client() {
    // A server with a short half-open timeout gives up held handshakes
    // while its application is slow to accept: each such client is told
    // (a reset: its flow is lost), rather than left connected to nothing.
    let short = std::time::Duration::from_secs(3);
    let clients = speak_first(short, Duration::from_secs(10), Duration::from_secs(30));
    for (i, (greeting, error)) in clients.iter().enumerate() {
        assert!(
            greeting.is_some() || error.is_some(),
            "client {i} neither greeted nor failed: it would wait forever"
        );
    }
    assert!(
        clients.iter().any(|(_, error)| error.is_some()),
        "some handshakes were given up (the scenario holds)"
    );
}

#[test]
fn only_an_ack_of_our_syn_ack_is_held_for_a_full_accept_queue() {
    // A held handshake counts as answered: it is evicted last and, if the
    // server gives it up, its client is reset. An ACK that does not
    // acknowledge our SYN-ACK (a blind or stale one) must not earn that
    // (DESIGN §4 "Acceptance before decision"); smoltcp answers it with a
    // RST, as for a connection without room.
    let mut server = config(SERVER, 52);
    server.accept_backlog = 1;
    let (mut sim, _listener) = pair_with(51, link(5), config(CLIENT, 51), server);
    let attacker_ip = Ipv4Addr::new(10, 0, 0, 66);
    let attacker = sim.net.endpoint(Side::A, &[attacker_ip]);
    let server_port = SocketAddrV4::new(SERVER, PORT);
    let (first, second) = (
        SocketAddrV4::new(attacker_ip, 40001),
        SocketAddrV4::new(attacker_ip, 40002),
    );
    for from in [first, second] {
        attacker.send_raw(
            sim.now(),
            &Tcp::new(from, server_port).seq(1000).syn().build(),
        );
    }
    sim.run_for(Duration::from_millis(50));
    let mut isns = std::collections::HashMap::new();
    while let Some(p) = attacker.recv_raw(sim.now()) {
        if let Some(s) = Segment::parse(&p, tifid::DEFAULT_KIND)
            && s.syn
            && s.ack
        {
            isns.insert(v4(s.dst), s.seq);
        }
    }
    let ack = |from: SocketAddrV4, ack: u32| Tcp::new(from, server_port).seq(1001).ack(ack).build();
    // The first handshake completes and fills the accept queue.
    attacker.send_raw(sim.now(), &ack(first, isns[&first].wrapping_add(1)));
    sim.run_for(Duration::from_millis(50));
    let held = |sim: &Sim| sim.hosts[1].resources().handshakes_deferred_backlog;
    assert_eq!(held(&sim), 0, "the first handshake had room");
    // The second handshake's ACK acknowledges something else: not held.
    let isn = isns[&second];
    for wrong in [isn, isn.wrapping_add(2), isn.wrapping_add(1 << 30)] {
        attacker.send_raw(sim.now(), &ack(second, wrong));
        sim.run_for(Duration::from_millis(20));
    }
    assert_eq!(held(&sim), 0, "an ACK not of our SYN-ACK was held");
    // Its real ACK is held until the application accepts.
    attacker.send_raw(sim.now(), &ack(second, isn.wrapping_add(1)));
    sim.run_for(Duration::from_millis(20));
    assert_eq!(held(&sim), 1, "the ACK of our SYN-ACK waits for room");
}
