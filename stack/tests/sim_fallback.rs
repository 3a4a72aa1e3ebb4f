//! Simulation: legacy fallback and the confirmation rule (DESIGN §4).

mod common;

use common::*;
use smoltcp::time::Duration;
use ti_stack::StreamEvent;
use ti_stack::device::link::{CapturePoint, Direction, Side};
use ti_stack::segment::Segment;
use tifid::DEFAULT_KIND;

fn transfer_small(sim: &mut ti_stack::sim::Sim, c: ti_stack::StreamId, s: ti_stack::StreamId) {
    let mut a = Flowing::new(0, c, payload(200_000, 11));
    let mut b = Flowing::new(1, s, payload(150_000, 12));
    assert!(transfer(
        sim,
        &mut a,
        &mut b,
        Duration::from_secs(60),
        |_| {}
    ));
    assert_integrity(&a, &b);
}

/// After a fallback no segment of ours may carry the option, except the
/// initiator's SYN that offered it.
fn assert_no_option_after_syn(sim: &ti_stack::sim::Sim) {
    for p in sim.net.captured() {
        if p.point != CapturePoint::Entering {
            continue;
        }
        let Some(seg) = Segment::parse(&p.bytes, DEFAULT_KIND) else {
            continue;
        };
        let offered_syn = seg.syn && !seg.ack;
        if !offered_syn {
            assert_eq!(
                seg.option,
                Ok(None),
                "segment {seg:?} carries the option after fallback"
            );
        }
    }
}

#[test]
fn legacy_when_server_has_ti_disabled() {
    let mut server = config(SERVER, 21);
    server.ti_enabled = false;
    let (mut sim, listener) = pair_with(21, link(2), config(CLIENT, 20), server);
    sim.net.set_capture_entering(true);
    let (c, s) = connect(&mut sim, listener);
    assert!(legacy(&sim, 0, c) && legacy(&sim, 1, s));
    transfer_small(&mut sim, c, s);
    assert_no_option_after_syn(&sim);
}

#[test]
fn legacy_when_client_has_ti_disabled() {
    let mut client = config(CLIENT, 22);
    client.ti_enabled = false;
    let (mut sim, listener) = pair_with(22, link(2), client, config(SERVER, 23));
    sim.net.set_capture_entering(true);
    let (c, s) = connect(&mut sim, listener);
    assert!(legacy(&sim, 0, c) && legacy(&sim, 1, s));
    transfer_small(&mut sim, c, s);
    for p in sim.net.captured() {
        let seg = Segment::parse(&p.bytes, DEFAULT_KIND).expect("tcp");
        assert_eq!(seg.option, Ok(None), "no option anywhere: {seg:?}");
    }
}

#[test]
fn stripping_on_the_forward_path_gives_legacy_on_both_ends() {
    let (mut sim, listener) = pair(24, link(2));
    sim.net.strip_option(Direction::AtoB, DEFAULT_KIND, true);
    sim.net.set_capture_entering(true);
    let (c, s) = connect(&mut sim, listener);
    assert!(legacy(&sim, 0, c), "client {:?}", sim.hosts[0].mode(c));
    assert!(legacy(&sim, 1, s), "server {:?}", sim.hosts[1].mode(s));
    transfer_small(&mut sim, c, s);
    assert_no_option_after_syn(&sim);
}

#[test]
fn stripping_only_the_return_path_leaves_both_ends_legacy() {
    let (mut sim, listener) = pair(25, link(2));
    sim.net.strip_option(Direction::BtoA, DEFAULT_KIND, true);
    let (c, s) = connect(&mut sim, listener);
    assert!(legacy(&sim, 0, c), "client {:?}", sim.hosts[0].mode(c));
    // The server saw the offer and answered with the option, but the
    // confirmation never came: it must not keep a flow either.
    assert!(legacy(&sim, 1, s), "server {:?}", sim.hosts[1].mode(s));
    assert!(sim.hosts[1].flows().is_empty(), "server kept a flow entry");
    assert!(sim.hosts[0].flows().is_empty(), "client kept a flow entry");
    transfer_small(&mut sim, c, s);
}

#[test]
fn lost_third_ack_is_confirmed_by_the_first_data_segment() {
    let (mut sim, listener) = pair(26, link(3));
    // Drop the pure third ACK (no payload, not SYN) once.
    sim.net.drop_matching(Direction::AtoB, 1, |seg| {
        !seg.flags.syn && seg.flags.ack && seg.payload_len == 0
    });
    let now = sim.now();
    let c = sim.hosts[0]
        .connect(now, std::net::SocketAddrV4::new(SERVER, PORT))
        .expect("connect");
    let data = payload(100_000, 5);
    let mut s = None;
    let mut sent = 0;
    let ok = sim.run_until(Duration::from_secs(20), |sim| {
        if sim.hosts[0].is_connected(c) && sent < data.len() {
            sent += sim.hosts[0].write(c, &data[sent..]).unwrap_or(0);
        }
        if s.is_none() {
            s = sim.hosts[1].accept(listener).expect("accept");
        }
        s.is_some()
    });
    assert!(ok, "server never accepted");
    let s = s.expect("stream");
    assert!(
        resilient(&sim, 0, c) && resilient(&sim, 1, s),
        "both ends TI after the first data segment confirmed"
    );
    assert_eq!(
        sim.net
            .stats()
            .dropped(ti_stack::device::link::DropReason::Rule),
        1
    );
}

#[test]
fn first_flight_while_confirming_is_one_segment_with_the_option() {
    let (mut sim, listener) = pair(27, link(10));
    sim.net.set_capture_entering(true);
    let now = sim.now();
    let c = sim.hosts[0]
        .connect(now, std::net::SocketAddrV4::new(SERVER, PORT))
        .expect("connect");
    sim.hosts[0].write(c, &payload(50_000, 6)).expect("write");
    let mut s = None;
    sim.run_until(Duration::from_secs(5), |sim| {
        if s.is_none() {
            s = sim.hosts[1].accept(listener).expect("accept");
        }
        sim.hosts[1].readable(s.unwrap_or(c)) >= 50_000
    });
    let from_client: Vec<Segment> = sim
        .net
        .captured()
        .iter()
        .filter(|p| p.direction == Direction::AtoB && p.point == CapturePoint::Entering)
        .filter_map(|p| Segment::parse(&p.bytes, DEFAULT_KIND))
        .collect();
    let with_data: Vec<&Segment> = from_client.iter().filter(|s| s.payload_len > 0).collect();
    let first = with_data.first().expect("data sent");
    assert!(
        matches!(first.option, Ok(Some(_))),
        "first data segment carries the confirmation"
    );
    assert!(
        first.payload_len <= 1500 - 52 - 20,
        "first flight {} > MSS-20",
        first.payload_len
    );
    let confirming_data = with_data
        .iter()
        .filter(|s| matches!(s.option, Ok(Some(_))))
        .count();
    assert_eq!(
        confirming_data, 1,
        "exactly one data segment in the confirming flight"
    );
}

#[test]
fn legacy_peer_never_sees_an_event_or_resume() {
    let mut server = config(SERVER, 29);
    server.ti_enabled = false;
    let (mut sim, listener) = pair_with(29, link(2), config(CLIENT, 28), server);
    let (c, _s) = connect(&mut sim, listener);
    let events: Vec<StreamEvent> = std::iter::from_fn(|| sim.hosts[0].poll_event(c)).collect();
    assert!(events.is_empty(), "{events:?}");
    assert!(sim.net.inject_rst(sim.now(), Side::A) > 0);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(
        sim.hosts[0].error(c),
        Some(ti_stack::StreamError::ConnectionReset)
    );
}
