//! Simulation: failures and resumes (DESIGN §4, failure detection and resume).

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::*;
use smoltcp::time::Duration;
use ti_stack::device::link::{Direction, Side};
use ti_stack::segment::Segment;
use ti_stack::{StreamError, StreamEvent};
use ti_testnet::packet::Tcp;
use ti_testnet::packet::options::flow_option_bytes;
use tifid::DEFAULT_KIND;
use tifid::handshake::LostCause;

fn events(sim: &mut ti_stack::sim::Sim, host: usize, id: ti_stack::StreamId) -> Vec<StreamEvent> {
    std::iter::from_fn(|| sim.hosts[host].poll_event(id)).collect()
}

fn resumes(events: &[StreamEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, StreamEvent::Resumed { .. }))
        .count()
}

/// Transfers `size` bytes each way, calling `fault` once when virtual time
/// passes `at_ms`; returns the client's and server's events.
fn survive(
    seed: u64,
    size: usize,
    at_ms: u64,
    fault: impl FnOnce(&mut ti_stack::sim::Sim, ti_stack::StreamId),
) -> (Vec<StreamEvent>, Vec<StreamEvent>) {
    let (mut sim, listener) = pair(seed, link(5));
    let (c, s) = connect(&mut sim, listener);
    let mut a = Flowing::new(0, c, payload(size, seed));
    let mut b = Flowing::new(1, s, payload(size, seed + 100));
    let mut fault = Some(fault);
    let ok = transfer(&mut sim, &mut a, &mut b, Duration::from_secs(300), |sim| {
        if sim.now().total_millis() >= at_ms as i64
            && let Some(f) = fault.take()
        {
            f(sim, c);
        }
    });
    assert!(
        ok,
        "transfer incomplete: client got {}/{}, server got {}/{}; errors {:?} {:?}",
        a.received.len(),
        size,
        b.received.len(),
        size,
        sim.hosts[0].error(c),
        sim.hosts[1].error(s)
    );
    assert_integrity(&a, &b);
    (events(&mut sim, 0, c), events(&mut sim, 1, s))
}

#[test]
fn resume_after_rst_toward_the_server() {
    let (client, server) = survive(31, 2 << 20, 200, |sim, _| {
        assert!(sim.net.inject_rst(sim.now(), Side::B) > 0);
    });
    assert!(
        resumes(&client) >= 1 && resumes(&server) >= 1,
        "{client:?} {server:?}"
    );
}

#[test]
fn resume_after_blackhole_detected_as_stall() {
    let (client, server) = survive(32, 2 << 20, 200, |sim, _| {
        sim.net.blackhole(sim.now(), Duration::from_secs(5), None);
    });
    assert!(resumes(&client) >= 1, "{client:?}");
    assert!(resumes(&server) >= 1, "{server:?}");
    let downtime = client.iter().find_map(|e| match e {
        StreamEvent::Resumed { downtime, .. } => Some(*downtime),
        _ => None,
    });
    // Detected after the 3 s stall timeout, resumed once the path is back.
    assert!(
        downtime.is_some_and(|d| d >= std::time::Duration::from_millis(1500)),
        "{downtime:?}"
    );
}

#[test]
fn resume_after_nat_rebinding() {
    let (mut sim, listener) = pair(33, link(5));
    sim.net.enable_nat(Ipv4Addr::new(10, 200, 0, 1));
    let (c, s) = connect(&mut sim, listener);
    let mut a = Flowing::new(0, c, payload(3 << 20, 1));
    let mut b = Flowing::new(1, s, payload(3 << 20, 2));
    let mut lost = false;
    let ok = transfer(&mut sim, &mut a, &mut b, Duration::from_secs(120), |sim| {
        if !lost && sim.now().total_millis() > 150 {
            lost = true;
            sim.net.nat_lose_state();
        }
    });
    assert!(ok, "incomplete");
    assert_integrity(&a, &b);
    assert!(resumes(&events(&mut sim, 0, c)) >= 1);
    assert_eq!(
        sim.hosts[1].peer_addr(s).map(|p| p.ip()),
        Some(Ipv4Addr::new(10, 200, 0, 1).into()),
        "peer_addr stays the original"
    );
}

#[test]
fn resume_after_explicit_failure() {
    let (client, server) = survive(34, 1 << 20, 100, |sim, c| {
        sim.hosts[0].fail_transport(c).expect("fail");
    });
    assert_eq!(resumes(&client), 1, "{client:?}");
    assert_eq!(resumes(&server), 1, "{server:?}");
}

#[test]
fn resume_latency_is_one_rtt_on_the_virtual_clock() {
    for one_way in [1u64, 10, 50] {
        let (mut sim, listener) = pair(35 + one_way, link(one_way));
        let (c, s) = connect(&mut sim, listener);
        sim.run_for(Duration::from_millis(10));
        sim.hosts[0].fail_transport(c).expect("fail");
        let mut downtime = None;
        let ok = sim.run_until(Duration::from_secs(5), |sim| {
            downtime = std::iter::from_fn(|| sim.hosts[0].poll_event(c)).find_map(|e| match e {
                StreamEvent::Resumed { downtime, .. } => Some(downtime),
                _ => None,
            });
            downtime.is_some()
        });
        assert!(ok);
        // SYN out in the poll that saw the failure, SYN-ACK back one RTT later.
        assert_eq!(
            downtime,
            Some(std::time::Duration::from_millis(2 * one_way)),
            "one-way {one_way} ms"
        );
        let _ = s;
    }
}

#[test]
fn resume_from_a_new_client_address() {
    let (mut sim, listener) = pair(36, link(5));
    let (c, s) = connect(&mut sim, listener);
    let mut a = Flowing::new(0, c, payload(2 << 20, 1));
    let mut b = Flowing::new(1, s, payload(2 << 20, 2));
    let mut moved = false;
    let ok = transfer(&mut sim, &mut a, &mut b, Duration::from_secs(120), |sim| {
        if !moved && sim.now().total_millis() > 100 {
            moved = true;
            sim.move_host(0, Ipv4Addr::new(10, 0, 0, 77));
        }
    });
    assert!(ok, "incomplete: {:?}", sim.hosts[0].error(c));
    assert_integrity(&a, &b);
    assert_eq!(
        sim.hosts[0].local_addr(c).map(|a| a.ip()),
        Some(Ipv4Addr::new(10, 0, 0, 77).into())
    );
}

#[test]
fn migration_refused_when_disallowed_gives_flow_lost() {
    let mut server = config(SERVER, 38);
    server.allow_migration = false;
    let (mut sim, listener) = pair_with(37, link(5), config(CLIENT, 37), server);
    let (c, s) = connect(&mut sim, listener);
    sim.hosts[0].write(c, b"hello").expect("write");
    sim.run_for(Duration::from_millis(50));
    sim.move_host(0, Ipv4Addr::new(10, 0, 0, 78));
    sim.run_until(Duration::from_secs(5), |sim| {
        sim.hosts[0].error(c).is_some()
    });
    assert_eq!(
        sim.hosts[0].error(c),
        Some(StreamError::FlowLost(LostCause::Refused))
    );
    assert!(events(&mut sim, 0, c).contains(&StreamEvent::Lost(LostCause::Refused)));
    let mut buf = [0u8; 16];
    assert_eq!(
        sim.hosts[1].read(s, &mut buf),
        Ok(Some(5)),
        "the server flow still holds its data"
    );
}

#[test]
fn resume_of_an_expired_flow_is_refused_and_reported_lost() {
    let mut server = config(SERVER, 40);
    server.resume_timeout = std::time::Duration::from_secs(1);
    let (mut sim, listener) = pair_with(39, link(5), config(CLIENT, 39), server);
    let (c, s) = connect(&mut sim, listener);
    sim.hosts[0].write(c, &payload(100_000, 1)).expect("write");
    sim.run_for(Duration::from_millis(30));
    // Long enough for the server to detect the stall, detach, and expire.
    sim.net.blackhole(sim.now(), Duration::from_secs(8), None);
    sim.run_until(Duration::from_secs(30), |sim| {
        sim.hosts[0].error(c).is_some()
    });
    assert_eq!(
        sim.hosts[0].error(c),
        Some(StreamError::FlowLost(LostCause::Refused))
    );
    assert_eq!(
        sim.hosts[1].error(s),
        Some(StreamError::FlowLost(LostCause::Timeout))
    );
}

#[test]
fn bare_rst_to_a_resume_is_transient_and_retried() {
    let (client, _server) = survive(41, 1 << 20, 100, |sim, c| {
        sim.hosts[0].fail_transport(c).expect("fail");
        // A reject rule answers the first resume SYN with a bare RST.
        sim.net
            .drop_matching(Direction::AtoB, 1, |seg| seg.is_syn());
    });
    assert_eq!(resumes(&client), 1, "{client:?}");
}

#[test]
fn failure_during_the_resume_handshake_is_retried() {
    let (client, _) = survive(42, 1 << 20, 100, |sim, c| {
        sim.hosts[0].fail_transport(c).expect("fail");
        sim.net
            .drop_matching(Direction::BtoA, 2, |seg| seg.is_syn_ack());
    });
    assert!(resumes(&client) >= 1, "{client:?}");
}

#[test]
fn failure_during_close_resends_the_fin() {
    let (mut sim, listener) = pair(43, link(5));
    let (c, s) = connect(&mut sim, listener);
    let mut a = Flowing::new(0, c, payload(300_000, 1));
    let mut b = Flowing::new(1, s, payload(300_000, 2));
    let mut injected = false;
    let ok = transfer(&mut sim, &mut a, &mut b, Duration::from_secs(60), |sim| {
        // As soon as the client has shut down, cut the connection.
        if !injected && a_shutdown(sim, c) {
            injected = true;
            sim.hosts[0].fail_transport(c).expect("fail");
        }
    });
    assert!(ok, "incomplete: eof {} {}", a.eof, b.eof);
    assert_integrity(&a, &b);
}

fn a_shutdown(sim: &ti_stack::sim::Sim, c: ti_stack::StreamId) -> bool {
    sim.hosts[0].unacknowledged(c) > 0
        && sim.hosts[0].writable(c)
            == sim.hosts[0].config().send_buffer - sim.hosts[0].unacknowledged(c)
        && sim.now().total_millis() > 60
}

#[test]
fn failure_during_the_first_handshake_still_connects() {
    let (mut sim, listener) = pair(44, link(5));
    sim.net
        .drop_matching(Direction::BtoA, 1, |seg| seg.is_syn_ack());
    let (c, s) = connect(&mut sim, listener);
    assert!(resilient(&sim, 0, c) && resilient(&sim, 1, s));
}

#[test]
fn forged_resume_from_a_third_host_is_refused_and_the_flow_is_untouched() {
    let (mut sim, listener) = pair(45, link(5));
    let attacker_addr = Ipv4Addr::new(10, 0, 0, 66);
    let attacker = sim.net.endpoint(Side::A, &[attacker_addr]);
    let (c, s) = connect(&mut sim, listener);
    let tifid = match sim.hosts[0].mode(c) {
        Some(ti_stack::StreamMode::Known(ti_stack::Mode::Resilient { tifid })) => tifid,
        m => panic!("not resilient: {m:?}"),
    };
    let mut a = Flowing::new(0, c, payload(2 << 20, 1));
    let mut b = Flowing::new(1, s, payload(2 << 20, 2));
    let mut forged = 0u32;
    let mut refusals = 0u32;
    let ok = transfer(&mut sim, &mut a, &mut b, Duration::from_secs(60), |sim| {
        let now = sim.now();
        if forged < 5 && now.total_millis() > 50 + 20 * i64::from(forged) {
            // Real TIFID, positions guessed outside the window.
            let option = tifid::FlowOptionRepr {
                tifid,
                tiseq: tifid::Seq48::new(u64::from(forged) * 7919),
                tiack: tifid::Seq48::new(0xdead_0000 + u64::from(forged)),
            };
            let syn = forged_syn(attacker_addr, 40000 + forged as u16, option);
            attacker.send_raw(now, &syn);
            forged += 1;
        }
        while let Some(reply) = attacker.recv_raw(now) {
            let seg = Segment::parse(&reply, DEFAULT_KIND).expect("tcp reply");
            assert!(seg.rst, "a forged resume gets a RST, got {seg:?}");
            let echoed = seg
                .option
                .expect("valid option")
                .expect("refusal carries our option");
            assert_eq!(echoed.tifid, tifid);
            assert_eq!((echoed.tiseq.value(), echoed.tiack.value()), (0, 0));
            refusals += 1;
        }
    });
    assert!(ok);
    assert_integrity(&a, &b);
    assert_eq!(refusals, 5);
    assert!(
        events(&mut sim, 0, c).is_empty() && events(&mut sim, 1, s).is_empty(),
        "the real flow saw nothing"
    );
}

fn forged_syn(src: Ipv4Addr, port: u16, option: tifid::FlowOptionRepr) -> Vec<u8> {
    Tcp::new(
        SocketAddrV4::new(src, port),
        SocketAddrV4::new(SERVER, PORT),
    )
    .syn()
    .seq(12345)
    .options(&flow_option_bytes(&option, DEFAULT_KIND))
    .build()
}

#[test]
fn resumed_client_keeps_its_original_peer_address() {
    let (mut sim, listener) = pair(46, link(5));
    let (c, _s) = connect(&mut sim, listener);
    let before = sim.hosts[0].local_addr(c);
    sim.hosts[0].fail_transport(c).expect("fail");
    sim.run_for(Duration::from_millis(100));
    assert_eq!(
        sim.hosts[0].peer_addr(c),
        Some(SocketAddrV4::new(SERVER, PORT).into())
    );
    assert_ne!(
        sim.hosts[0].local_addr(c),
        before,
        "a resume uses a fresh local port"
    );
}

#[test]
fn idle_flow_detects_a_dead_path_by_keepalive_and_resumes() {
    let (mut sim, listener) = pair(47, link(5));
    let (c, s) = connect(&mut sim, listener);
    // Nothing to send: only keepalives can notice the blackhole.
    sim.net.blackhole(sim.now(), Duration::from_secs(20), None);
    let detached = sim.run_until(Duration::from_secs(15), |sim| {
        sim.hosts[0]
            .stream_infos()
            .iter()
            .any(|i| i.id == c && !i.attached)
    });
    assert!(detached, "the idle client never noticed the dead path");
    // An idle flow probes at the keepalive interval (it stays quiet); an
    // unanswered probe fails it after the stall budget (2 RTOs, 200 ms here).
    let at = sim.now().total_millis();
    assert!(
        (5_000..=5_600).contains(&at),
        "detected at {at} ms, not at keepalive (5 s) + stall (0.2 s)"
    );
    // After the path returns, the flow resumes and carries new data.
    sim.run_until(Duration::from_secs(60), |sim| {
        sim.hosts[0]
            .stream_infos()
            .iter()
            .any(|i| i.id == c && i.attached && i.stats.resumes == 1)
    });
    sim.hosts[0].write(c, b"after the outage").expect("write");
    let mut got = Vec::new();
    sim.run_until(Duration::from_secs(30), |sim| {
        let mut buf = [0u8; 64];
        if let Ok(Some(n)) = sim.hosts[1].read(s, &mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        got.len() >= 16
    });
    assert_eq!(got, b"after the outage");
    assert_eq!(resumes(&events(&mut sim, 0, c)), 1);
}

#[test]
fn syn_burst_keeps_the_newest_half_open_and_the_server_serves_at_once() {
    let (mut sim, listener) = pair(48, link(2));
    let attacker_addr = Ipv4Addr::new(10, 0, 0, 99);
    let attacker = sim.net.endpoint(Side::A, &[attacker_addr]);
    let now = sim.now();
    const SYNS: usize = 300;
    for i in 0..SYNS as u16 {
        let syn = Tcp::new(
            SocketAddrV4::new(attacker_addr, 20000 + i),
            SocketAddrV4::new(SERVER, PORT),
        )
        .syn()
        .seq(1000)
        .build();
        attacker.send_raw(now, &syn);
    }
    let mut syn_acks = 0;
    sim.run_until(Duration::from_millis(500), |sim| {
        while let Some(reply) = attacker.recv_raw(sim.now()) {
            let seg = Segment::parse(&reply, DEFAULT_KIND).expect("tcp");
            if seg.syn && seg.ack && seg.src.port() == PORT {
                syn_acks += 1;
            }
        }
        false
    });
    // Each SYN is answered: the oldest handshakes make room for new ones.
    let kept = sim.hosts[1].config().max_half_open;
    let r = sim.hosts[1].resources();
    assert!(syn_acks >= SYNS, "{syn_acks} SYN-ACKs for {SYNS} SYNs");
    assert_eq!(r.half_open, kept, "{r:?}");
    assert_eq!(r.half_open_evicted, (SYNS - kept) as u64, "{r:?}");
    // A real client gets in at once, not after the flood's handshakes expire.
    let (c, _s) = connect(&mut sim, listener);
    assert!(resilient(&sim, 0, c));
}

#[test]
fn refused_resume_after_a_complete_exchange_ends_cleanly() {
    let (mut sim, listener) = pair(49, link(5));
    let (c, s) = connect(&mut sim, listener);
    // The server speaks first and closes; the client reads to the end.
    sim.hosts[1].write(s, &payload(5000, 1)).expect("write");
    sim.hosts[1].shutdown_write(s).expect("shutdown");
    let mut got = Vec::new();
    let eof = sim.run_until(Duration::from_secs(10), |sim| {
        let mut buf = [0u8; 8192];
        match sim.hosts[0].read(c, &mut buf) {
            Ok(Some(0)) => true,
            Ok(Some(n)) => {
                got.extend_from_slice(&buf[..n]);
                false
            }
            _ => false,
        }
    });
    assert!(eof && got == payload(5000, 1));
    // The client closes last; the ACK of its FIN is lost, then the path dies
    // for longer than the server's TIME-WAIT: the server finished the flow,
    // the client never learned that its FIN arrived.
    sim.net.drop_matching(Direction::BtoA, 1, |seg| {
        seg.flags.ack && !seg.flags.fin && !seg.flags.syn && seg.payload_len == 0
    });
    sim.hosts[0].shutdown_write(c).expect("shutdown");
    sim.run_until(Duration::from_secs(5), |sim| {
        sim.net
            .stats()
            .dropped(ti_stack::device::link::DropReason::Rule)
            == 1
    });
    sim.net.blackhole(sim.now(), Duration::from_secs(15), None);
    sim.run_for(Duration::from_secs(40));
    assert!(
        sim.hosts[1].flows().is_empty(),
        "the server finished and removed the flow"
    );
    let client_events = events(&mut sim, 0, c);
    assert!(
        !client_events
            .iter()
            .any(|e| matches!(e, StreamEvent::Lost(_))),
        "a complete exchange is not a lost flow: {client_events:?}"
    );
    assert_eq!(sim.hosts[0].error(c), None);
    let mut buf = [0u8; 16];
    assert_eq!(
        sim.hosts[0].read(c, &mut buf),
        Ok(Some(0)),
        "still a clean end of stream"
    );
}
