//! Simulation: blind forged packets against live and resuming flows
//! (DESIGN §4 "Acceptance before decision", §5 threat model). Every attack
//! targets the flow's own 4-tuples; none may end, stall or resume it.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use common::*;
use smoltcp::time::Duration;
use ti_stack::device::link::{Direction, LinkDevice, Side};
use ti_stack::sim::Sim;
use ti_stack::{StreamEvent, StreamId};
use ti_testnet::packet::Tcp;
use tifid::{DEFAULT_KIND, FlowOptionRepr, Seq48, Tifid};

fn events(sim: &mut Sim, host: usize, id: StreamId) -> Vec<StreamEvent> {
    std::iter::from_fn(|| sim.hosts[host].poll_event(id)).collect()
}

fn resumes(events: &[StreamEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, StreamEvent::Resumed { .. }))
        .count()
}

fn tifid_of(sim: &Sim, host: usize, id: StreamId) -> Tifid {
    match sim.hosts[host].mode(id) {
        Some(ti_stack::StreamMode::Known(ti_stack::Mode::Resilient { tifid })) => tifid,
        m => panic!("not resilient: {m:?}"),
    }
}

/// A forged segment from `src` to `dst`.
fn forged(
    src: impl Into<SocketAddr>,
    dst: impl Into<SocketAddr>,
    seq: u32,
    ack: u32,
    syn: bool,
    rst: bool,
) -> Vec<u8> {
    forged_with(src, dst, seq, ack, syn, rst, &[])
}

fn forged_with(
    src: impl Into<SocketAddr>,
    dst: impl Into<SocketAddr>,
    seq: u32,
    ack: u32,
    syn: bool,
    rst: bool,
    option: &[u8],
) -> Vec<u8> {
    // Window 0, as the stack's own RSTs and probes carry.
    let mut tcp = Tcp::new(src, dst).seq(seq).window(0).options(option);
    if !syn || ack != 0 {
        tcp = tcp.ack(ack);
    }
    if syn {
        tcp = tcp.syn();
    }
    if rst {
        tcp = tcp.rst();
    }
    tcp.build()
}

/// A resume that has to wait: the client's packets are blackholed for
/// `outage`, then the client fails its connection so it retries resume
/// SYNs from fresh ports until the path returns. `attack` runs every step
/// during the outage with the attacker endpoint on the server's side.
fn resume_under_attack(
    seed: u64,
    outage: Duration,
    mut attack: impl FnMut(&mut Sim, &LinkDevice, Tifid, &mut u64),
) -> (Vec<StreamEvent>, Vec<StreamEvent>, u64) {
    let (mut sim, listener) = pair(seed, link(5));
    let attacker = sim.net.endpoint(Side::B, &[Ipv4Addr::new(10, 1, 0, 66)]);
    let (c, s) = connect(&mut sim, listener);
    let tifid = tifid_of(&sim, 0, c);
    let mut a = Flowing::new(0, c, payload(1 << 20, seed));
    let mut b = Flowing::new(1, s, payload(1 << 20, seed + 1));
    let mut sent = 0u64;
    let mut started: Option<smoltcp::time::Instant> = None;
    let ok = transfer(&mut sim, &mut a, &mut b, Duration::from_secs(120), |sim| {
        let now = sim.now();
        if started.is_none() && now.total_millis() >= 200 {
            sim.net.blackhole(now, outage, Some(Direction::AtoB));
            sim.hosts[0].fail_transport(c).expect("fail");
            started = Some(now);
        }
        if let Some(t) = started
            && now < t + outage
        {
            attack(sim, &attacker, tifid, &mut sent);
        }
    });
    assert!(
        ok,
        "transfer incomplete: errors {:?} {:?}",
        sim.hosts[0].error(c),
        sim.hosts[1].error(s)
    );
    assert_integrity(&a, &b);
    while attacker.recv_raw(sim.now()).is_some() {}
    (events(&mut sim, 0, c), events(&mut sim, 1, s), sent)
}

/// Ports of the ephemeral range the sprays cover, one packet each.
const SPRAY: u64 = 16_384;

/// Sends the next batch of a spray toward every client port from
/// 49152 on: `packet(destination, n)` builds the n-th forgery.
fn spray(
    sim: &Sim,
    attacker: &LinkDevice,
    sent: &mut u64,
    packet: impl Fn(SocketAddrV4, u32) -> Vec<u8>,
) {
    for _ in 0..1024 {
        if *sent >= SPRAY {
            return;
        }
        let dst = SocketAddrV4::new(CLIENT, 49152 + *sent as u16);
        attacker.send_raw(sim.now(), &packet(dst, *sent as u32));
        *sent += 1;
    }
}

/// The flow resumed (at least once) and was never lost.
fn assert_resumed_not_lost(client: &[StreamEvent]) {
    assert!(resumes(client) >= 1, "the flow resumed: {client:?}");
    assert!(
        client.iter().all(|e| !matches!(e, StreamEvent::Lost(_))),
        "{client:?}"
    );
}

#[test]
fn forged_syn_acks_sprayed_over_the_ephemeral_range_do_not_end_a_resuming_flow() {
    let server = SocketAddrV4::new(SERVER, PORT);
    let (client, server_events, sent) =
        resume_under_attack(71, Duration::from_secs(2), |sim, attacker, _, sent| {
            // SYN-ACKs without our option, a wrong ack each, one per port.
            spray(sim, attacker, sent, |dst, n| {
                let ack = 0x1234_5678u32.wrapping_mul(n + 7);
                forged(server, dst, 0xdead_beef, ack, true, false)
            });
        });
    assert_eq!(sent, SPRAY);
    assert_resumed_not_lost(&client);
    assert!(resumes(&server_events) >= 1, "{server_events:?}");
}

#[test]
fn forged_refusal_rst_with_the_right_tifid_and_a_wrong_ack_is_ignored() {
    let server = SocketAddrV4::new(SERVER, PORT);
    let (client, _, sent) =
        resume_under_attack(72, Duration::from_secs(2), |sim, attacker, tifid, sent| {
            let refusal = FlowOptionRepr {
                tifid,
                tiseq: Seq48::ZERO,
                tiack: Seq48::ZERO,
            }
            .to_bytes(DEFAULT_KIND);
            spray(sim, attacker, sent, |dst, n| {
                let ack = 0x0bad_cafeu32.wrapping_mul(n + 3);
                forged_with(server, dst, 0, ack, false, true, &refusal)
            });
        });
    assert_eq!(sent, SPRAY);
    assert_resumed_not_lost(&client);
}

#[test]
fn forged_ack_to_a_responders_resume_is_ignored() {
    let (mut sim, listener) = pair(73, link(5));
    let attacker = sim.net.endpoint(Side::A, &[Ipv4Addr::new(10, 0, 0, 66)]);
    let (c, s) = connect(&mut sim, listener);
    let mut a = Flowing::new(0, c, payload(1 << 20, 1));
    let mut b = Flowing::new(1, s, payload(1 << 20, 2));
    let mut phase = 0;
    let mut forge_at = None;
    let ok = transfer(&mut sim, &mut a, &mut b, Duration::from_secs(60), |sim| {
        let now = sim.now();
        if phase == 0 && now.total_millis() >= 200 {
            // The resume SYN leaves in this poll. Forge an ACK (no option,
            // wrong ack) from its tuple to arrive after the server's SYN-ACK
            // went out (+5 ms) and before the client's real ACK (+15 ms).
            sim.hosts[0].fail_transport(c).expect("fail");
            forge_at = Some(now + Duration::from_millis(6));
            phase = 2;
        } else if phase == 2 && forge_at.is_some_and(|t| now >= t) {
            let local = sim.hosts[0].local_addr(c).expect("resume connection");
            let server = SocketAddrV4::new(SERVER, PORT);
            let pkt = forged(local, server, 1000, 0x4242_4242, false, false);
            attacker.send_raw(now, &pkt);
            phase = 3;
        }
    });
    assert!(ok);
    assert_integrity(&a, &b);
    assert_eq!(phase, 3, "the forged ACK was sent");
    let (client, server) = (events(&mut sim, 0, c), events(&mut sim, 1, s));
    assert_eq!(resumes(&client), 1, "one resume, not disturbed: {client:?}");
    assert_eq!(resumes(&server), 1, "{server:?}");
}

#[test]
fn forged_resume_syn_with_valid_positions_does_not_abandon_the_live_connection() {
    // Rule: a responder keeps the attached connection until a resume is
    // confirmed by an ACK of its SYN-ACK. A forger who sees nothing of the
    // path cannot confirm, so the live connection goes on untouched.
    let (mut sim, listener) = pair(74, link(5));
    let forger_addr = Ipv4Addr::new(10, 0, 0, 66);
    let forger = sim.net.endpoint(Side::A, &[forger_addr]);
    let (c, s) = connect(&mut sim, listener);
    let tifid = tifid_of(&sim, 0, c);
    let mut a = Flowing::new(0, c, payload(16 << 20, 3));
    let mut b = Flowing::new(1, s, payload(16 << 20, 4));
    let mut forged_count = 0u32;
    let ok = transfer(&mut sim, &mut a, &mut b, Duration::from_secs(60), |sim| {
        let now = sim.now();
        if forged_count < 5 && now.total_millis() >= 20 + 20 * i64::from(forged_count) {
            // Positions as the client has them right now: they pass the checks.
            let positions = sim.hosts[0]
                .flows()
                .get(tifid)
                .expect("client flow")
                .positions();
            let option = FlowOptionRepr {
                tifid,
                tiseq: positions.snd_una,
                tiack: positions.rcv_nxt,
            }
            .to_bytes(DEFAULT_KIND);
            let src = SocketAddrV4::new(forger_addr, 40000 + forged_count as u16);
            let syn = forged_with(
                src,
                SocketAddrV4::new(SERVER, PORT),
                777,
                0,
                true,
                false,
                &option,
            );
            forger.send_raw(now, &syn);
            forged_count += 1;
        }
        while forger.recv_raw(now).is_some() {}
    });
    assert!(ok);
    assert!(
        sim.now().total_millis() > 150,
        "the attack happened mid-transfer"
    );
    assert_integrity(&a, &b);
    assert_eq!(forged_count, 5);
    let (client, server) = (events(&mut sim, 0, c), events(&mut sim, 1, s));
    assert!(
        client.is_empty(),
        "the live connection carried everything: {client:?}"
    );
    assert!(server.is_empty(), "{server:?}");
}

#[test]
fn rst_in_the_window_but_not_at_rcv_nxt_gets_a_challenge_ack_not_a_failure() {
    let (mut sim, listener) = pair(75, link(5));
    let attacker = sim.net.endpoint(Side::B, &[Ipv4Addr::new(10, 1, 0, 66)]);
    let (c, s) = connect(&mut sim, listener);
    let mut a = Flowing::new(0, c, payload(16 << 20, 5));
    let mut b = Flowing::new(1, s, payload(16 << 20, 6));
    let mut injected = 0;
    let ok = transfer(&mut sim, &mut a, &mut b, Duration::from_secs(60), |sim| {
        let now = sim.now();
        if injected < 20 && now.total_millis() >= 20 + 5 * injected {
            let conn = sim
                .net
                .connections()
                .into_iter()
                .last()
                .expect("tracked connection");
            let next = conn.b_next_seq.expect("server sent");
            // In the window (the client's rcv_nxt is at most `next`), never exact.
            let seq = next.wrapping_add(1000 + 100 * injected as u32);
            let from = conn.b_view.local;
            let to = conn.a_view.local;
            attacker.send_raw(now, &forged(from, to, seq, 0, false, true));
            injected += 1;
        }
    });
    assert!(ok);
    assert!(
        sim.now().total_millis() > 150,
        "the attack happened mid-transfer"
    );
    assert_integrity(&a, &b);
    let (client, server) = (events(&mut sim, 0, c), events(&mut sim, 1, s));
    assert!(
        client.is_empty() && server.is_empty(),
        "{client:?} {server:?}"
    );
}

#[test]
fn rst_exactly_at_rcv_nxt_still_fails_the_connection_and_the_flow_resumes() {
    let (mut sim, listener) = pair(76, link(5));
    let (c, s) = connect(&mut sim, listener);
    let mut a = Flowing::new(0, c, payload(1 << 20, 7));
    let mut b = Flowing::new(1, s, payload(1 << 20, 8));
    let mut done = false;
    let ok = transfer(&mut sim, &mut a, &mut b, Duration::from_secs(60), |sim| {
        if !done && sim.now().total_millis() >= 150 {
            // The link's RST is exact: it tracks the sequence numbers.
            assert!(sim.net.inject_rst(sim.now(), Side::A) > 0);
            done = true;
        }
    });
    assert!(ok);
    assert_integrity(&a, &b);
    let client = events(&mut sim, 0, c);
    assert!(resumes(&client) >= 1, "{client:?}");
}
