//! Simulation: SYNs and RSTs with a bad TCP checksum (DESIGN §4
//! "Acceptance before decision"). smoltcp discards them, so the stack must
//! not take any TI decision on them either: each test sends a segment that
//! would count if its checksum were right (the control shows it does) and
//! checks that, with a wrong checksum, nothing changed.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::*;
use smoltcp::time::Duration;
use ti_stack::device::link::{LinkDevice, Side};
use ti_stack::sim::Sim;
use ti_stack::{StreamEvent, StreamId};
use ti_testnet::packet::Tcp;
use tifid::{DEFAULT_KIND, FlowOptionRepr, Seq48, Tifid};

fn events(sim: &mut Sim, host: usize, id: StreamId) -> Vec<StreamEvent> {
    std::iter::from_fn(|| sim.hosts[host].poll_event(id)).collect()
}

fn drain(dev: &LinkDevice, sim: &Sim) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| dev.recv_raw(sim.now())).collect()
}

/// Reads everything `id` on `host` has, into `into`; true at EOF.
fn read_all(sim: &mut Sim, host: usize, id: StreamId, into: &mut Vec<u8>) -> bool {
    let mut buf = vec![0u8; 65536];
    loop {
        match sim.hosts[host].read(id, &mut buf) {
            Ok(Some(0)) => return true,
            Ok(Some(n)) => into.extend_from_slice(&buf[..n]),
            Ok(None) | Err(_) => return false,
        }
    }
}

/// What one run of [`rst_at_rcv_nxt_then_clean_close`] left behind.
struct Outcome {
    client_failures: u64,
    server_failures: u64,
    client_resumes: u64,
    server_resumes: u64,
    client_events: Vec<StreamEvent>,
    server_events: Vec<StreamEvent>,
    /// Flow entries the server holds 2 s after both ends saw EOF.
    server_flows_after_close: usize,
}

/// A TI-flow carries some bytes each way and goes quiet; then a RST with
/// the exact sequence number each end expects next (`rcv_nxt`) and
/// acknowledging everything is sent toward both ends, with a bad TCP
/// checksum if `bad_checksum`. Then the client sends 256 KiB and closes;
/// the server reads to EOF, replies 256 KiB and closes second (CLOSE-WAIT,
/// LAST-ACK: the close that a remembered RST would make unclean).
fn rst_at_rcv_nxt_then_clean_close(bad_checksum: bool) -> Outcome {
    let (mut sim, listener) = pair(91, link(5));
    let attacker = sim.net.endpoint(Side::A, &[Ipv4Addr::new(10, 0, 0, 66)]);
    let (c, s) = connect(&mut sim, listener);
    assert!(resilient(&sim, 0, c) && resilient(&sim, 1, s));
    // Bytes each way, then quiet: every segment has arrived and been
    // acknowledged, so the middlebox's next sequence numbers are the
    // receivers' rcv_nxt.
    let mut warm = (Vec::new(), Vec::new());
    sim.hosts[0].write(c, &payload(4000, 1)).expect("write");
    sim.hosts[1].write(s, &payload(3000, 2)).expect("write");
    sim.run_until(Duration::from_secs(5), |sim| {
        read_all(sim, 0, c, &mut warm.0);
        read_all(sim, 1, s, &mut warm.1);
        warm.0.len() == 3000 && warm.1.len() == 4000
    });
    sim.run_for(Duration::from_millis(200));
    assert_eq!((warm.0.len(), warm.1.len()), (3000, 4000));
    let conn = sim
        .net
        .connections()
        .into_iter()
        .last()
        .expect("tracked connection");
    let (a_next, b_next) = (
        conn.a_next_seq.expect("client sent"),
        conn.b_next_seq.expect("server sent"),
    );
    let now = sim.now();
    for (from, to, seq, ack) in [
        // Toward the client, as if from the server, and the reverse.
        (conn.b_view.local, conn.a_view.local, b_next, a_next),
        (conn.a_view.local, conn.b_view.local, a_next, b_next),
    ] {
        let mut rst = Tcp::new(from, to).seq(seq).ack(ack).rst().window(0);
        if bad_checksum {
            rst = rst.bad_checksum();
        }
        attacker.send_raw(now, &rst.build());
    }
    // The client sends and closes first; the server answers after EOF and
    // closes second.
    let mut a = Flowing::new(0, c, payload(256 << 10, 3));
    let mut b = Flowing::new(1, s, payload(256 << 10, 4));
    let mut server_saw_eof = false;
    let ok = sim.run_until(Duration::from_secs(60), |sim| {
        a.pump(sim);
        if server_saw_eof {
            b.pump(sim);
        } else {
            server_saw_eof = read_all(sim, 1, s, &mut b.received);
        }
        drain(&attacker, sim);
        a.eof && b.eof
    });
    assert!(
        ok,
        "transfer incomplete: errors {:?} {:?}",
        sim.hosts[0].error(c),
        sim.hosts[1].error(s)
    );
    assert_integrity(&a, &b);
    // The counters before the streams may go, then the close's aftermath.
    let (cs, ss) = (stats(&sim, 0, c), stats(&sim, 1, s));
    sim.run_for(Duration::from_secs(2));
    let server_flows_after_close = sim.hosts[1].flows().len();
    let (cs2, ss2) = (stats(&sim, 0, c), stats(&sim, 1, s));
    Outcome {
        client_failures: cs.failures.max(cs2.failures),
        server_failures: ss.failures.max(ss2.failures),
        client_resumes: cs.resumes.max(cs2.resumes),
        server_resumes: ss.resumes.max(ss2.resumes),
        client_events: events(&mut sim, 0, c),
        server_events: events(&mut sim, 1, s),
        server_flows_after_close,
    }
}

#[test]
fn rst_at_rcv_nxt_with_a_good_checksum_fails_the_flow_control() {
    // The control: the same RSTs with a right checksum reach both TCPs.
    let o = rst_at_rcv_nxt_then_clean_close(false);
    assert!(
        o.client_failures >= 1 && o.client_resumes >= 1,
        "the RST was exact: client failures {} resumes {}, events {:?}",
        o.client_failures,
        o.client_resumes,
        o.client_events
    );
}

#[test]
fn rst_at_rcv_nxt_with_a_bad_checksum_changes_nothing() {
    let o = rst_at_rcv_nxt_then_clean_close(true);
    assert_eq!(
        (o.client_failures, o.server_failures),
        (0, 0),
        "failures (client, server); events {:?} {:?}",
        o.client_events,
        o.server_events
    );
    assert_eq!((o.client_resumes, o.server_resumes), (0, 0), "resumes");
    assert!(
        o.client_events.is_empty() && o.server_events.is_empty(),
        "{:?} {:?}",
        o.client_events,
        o.server_events
    );
    // The server closed second: a clean close removes its entry at once
    // (a RST taken for real would leave it detached, awaiting a resume).
    assert_eq!(
        o.server_flows_after_close, 0,
        "the server's close was clean"
    );
}

/// Connects with the client's SYN answered first by a SYN-ACK from an
/// attacker (as if from the server, acknowledging the client's ISN, without
/// our option), with a bad TCP checksum if `bad_checksum`; the server's
/// real SYN-ACK (with the option) arrives after it. Returns whether the
/// client's stream came out resilient.
fn forged_syn_ack_first(bad_checksum: bool) -> bool {
    // 20 ms each way: the forgery (sent as the SYN crosses the middlebox)
    // is at the client long before the server's answer.
    let (mut sim, listener) = pair(92, link(20));
    let attacker = sim.net.endpoint(Side::B, &[Ipv4Addr::new(10, 1, 0, 66)]);
    let now = sim.now();
    let server = SocketAddrV4::new(SERVER, PORT);
    let c = sim.hosts[0].connect(now, server).expect("connect");
    let mut forged = false;
    let mut accepted = None;
    let ok = sim.run_until(Duration::from_secs(10), |sim| {
        if !forged
            && let Some(conn) = sim.net.connections().into_iter().last()
            && let Some(next) = conn.a_next_seq
        {
            assert!(conn.b_next_seq.is_none(), "the server answered already");
            // `next` is the client's ISN + 1: the SYN-ACK acknowledges it.
            let mut syn_ack = Tcp::new(conn.b_view.local, conn.a_view.local)
                .syn()
                .seq(0x5eed_0001)
                .ack(next)
                .window(65535);
            if bad_checksum {
                syn_ack = syn_ack.bad_checksum();
            }
            attacker.send_raw(sim.now(), &syn_ack.build());
            forged = true;
        }
        if accepted.is_none() {
            accepted = sim.hosts[1].accept(listener).expect("accept");
        }
        drain(&attacker, sim);
        forged && accepted.is_some() && sim.hosts[0].is_connected(c)
    });
    assert!(forged, "the forged SYN-ACK was sent");
    if !bad_checksum {
        // A good forged SYN-ACK wins the race: the connection is the
        // attacker's, not the server's; nothing more to check.
        return resilient(&sim, 0, c);
    }
    assert!(ok, "connected: error {:?}", sim.hosts[0].error(c));
    resilient(&sim, 0, c)
}

#[test]
fn syn_ack_without_option_with_a_good_checksum_decides_the_handshake_control() {
    assert!(
        !forged_syn_ack_first(false),
        "the forged SYN-ACK reached the handshake (it fell back to legacy)"
    );
}

#[test]
fn syn_ack_with_a_bad_checksum_does_not_decide_the_handshake() {
    assert!(
        forged_syn_ack_first(true),
        "a bad-checksum SYN-ACK without option made the client fall back"
    );
}

/// A resume SYN naming a flow the server does not know, from a third host;
/// returns what came back to it.
fn unknown_resume_syn(bad_checksum: bool) -> Vec<Vec<u8>> {
    let (mut sim, _listener) = pair(93, link(5));
    let third = sim.net.endpoint(Side::A, &[Ipv4Addr::new(10, 0, 0, 66)]);
    sim.run_for(Duration::from_millis(10));
    let option = FlowOptionRepr {
        tifid: Tifid::new(0x0a45_30be_79bf),
        tiseq: Seq48::new(1000),
        tiack: Seq48::new(2000),
    }
    .to_bytes(DEFAULT_KIND);
    let mut syn = Tcp::new(
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 66), 40_000),
        SocketAddrV4::new(SERVER, PORT),
    )
    .syn()
    .seq(777)
    .window(65535)
    .options(&option);
    if bad_checksum {
        syn = syn.bad_checksum();
    }
    third.send_raw(sim.now(), &syn.build());
    let mut got = Vec::new();
    sim.run_until(Duration::from_millis(500), |sim| {
        got.extend(drain(&third, sim));
        false
    });
    got
}

#[test]
fn resume_syn_for_an_unknown_flow_is_refused_control() {
    assert!(!unknown_resume_syn(false).is_empty(), "refused with a RST");
}

#[test]
fn resume_syn_with_a_bad_checksum_is_not_answered() {
    let got = unknown_resume_syn(true);
    assert!(got.is_empty(), "answered: {got:?}");
}
