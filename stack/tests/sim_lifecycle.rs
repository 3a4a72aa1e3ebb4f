//! Simulation: the flow lifecycle on ordinary bad days (DESIGN §4 "Failure
//! detection", "Abort"): a program that stops reading, aborts in each
//! direction, a server that closes early, a legacy flow whose NAT forgets
//! it, and resets after every resume.

mod common;

use std::net::Ipv4Addr;

use common::*;
use smoltcp::time::{Duration, Instant};
use ti_stack::device::link::{Direction, Side};
use ti_stack::sim::Sim;
use ti_stack::{StreamError, StreamEvent, StreamId};
use tifid::DEFAULT_KIND;
use tifid::handshake::LostCause;

fn events(sim: &mut Sim, host: usize, id: StreamId) -> Vec<StreamEvent> {
    std::iter::from_fn(|| sim.hosts[host].poll_event(id)).collect()
}

/// Reads what is there; `Err` once the stream failed, `Ok(true)` at EOF.
fn drain(
    sim: &mut Sim,
    host: usize,
    id: StreamId,
    into: &mut Vec<u8>,
) -> Result<bool, StreamError> {
    let mut buf = vec![0u8; 65536];
    loop {
        match sim.hosts[host].read(id, &mut buf)? {
            Some(0) => return Ok(true),
            Some(n) => into.extend_from_slice(&buf[..n]),
            None => return Ok(false),
        }
    }
}

#[test]
fn a_program_that_stops_reading_for_15_s_sees_no_false_failure() {
    let (mut sim, listener) = pair(91, link(5));
    let (c, s) = connect(&mut sim, listener);
    let data = payload(32 << 20, 91);
    let mut sent = 0;
    let mut received = Vec::new();
    let mut eof = false;
    let ok = sim.run_until(Duration::from_secs(120), |sim| {
        if sent < data.len()
            && let Ok(n) = sim.hosts[0].write(c, &data[sent..])
        {
            sent += n;
            if sent == data.len() {
                sim.hosts[0].shutdown_write(c).expect("shutdown");
            }
        }
        // The receiving program reads nothing for the first 15 s.
        if sim.now() >= Instant::from_secs(15) {
            eof = drain(sim, 1, s, &mut received).expect("no failure");
        }
        eof
    });
    assert!(
        ok,
        "transfer incomplete: {} of {}",
        received.len(),
        data.len()
    );
    assert_eq!(sha(&received), sha(&data), "byte-exact");
    let (client, server) = (events(&mut sim, 0, c), events(&mut sim, 1, s));
    assert!(
        client.is_empty() && server.is_empty(),
        "no failure, no resume: {client:?} {server:?}"
    );
    assert_eq!(stats(&sim, 0, c).resume_attempts, 0);
}

/// `aborting` aborts mid-transfer; the other end must see the flow end as
/// a reset (never EOF), with no resume.
fn abort_reaches_the_peer(seed: u64, aborting: usize) {
    let (mut sim, listener) = pair(seed, link(5));
    let (c, s) = connect(&mut sim, listener);
    let ids = [c, s];
    let other = 1 - aborting;
    let data = payload(8 << 20, seed);
    let mut sent = [0usize; 2];
    let mut got = Vec::new();
    let mut aborted_at = None;
    let mut peer_result = None;
    sim.run_until(Duration::from_secs(30), |sim| {
        for host in 0..2 {
            if aborted_at.is_none()
                && let Ok(n) = sim.hosts[host].write(ids[host], &data[sent[host]..])
            {
                sent[host] += n;
            }
        }
        let _ = drain(sim, aborting, ids[aborting], &mut Vec::new());
        match drain(sim, other, ids[other], &mut got) {
            Ok(true) => peer_result = Some(Ok(())),
            Err(e) => peer_result = Some(Err(e)),
            Ok(false) => {}
        }
        if aborted_at.is_none() && sim.now().total_millis() >= 100 {
            let now = sim.now();
            sim.hosts[aborting]
                .abort(now, ids[aborting])
                .expect("abort");
            aborted_at = Some(now);
        }
        peer_result.is_some()
    });
    let aborted_at = aborted_at.expect("aborted");
    let result = peer_result.expect("the peer heard of the abort");
    assert_eq!(
        result,
        Err(StreamError::FlowLost(LostCause::PeerAborted)),
        "a reset, never a clean end of stream"
    );
    let err = std::io::Error::from(StreamError::FlowLost(LostCause::PeerAborted));
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    let took = sim.now() - aborted_at;
    assert!(
        took <= Duration::from_millis(20),
        "the peer learned {took} after the abort"
    );
    assert_eq!(
        sim.hosts[aborting].write(ids[aborting], b"x"),
        Err(StreamError::Aborted)
    );
    sim.run_for(Duration::from_secs(2));
    let peer_events = events(&mut sim, other, ids[other]);
    assert!(
        peer_events
            .iter()
            .all(|e| !matches!(e, StreamEvent::Resumed { .. })),
        "{peer_events:?}"
    );
    assert!(sim.hosts[0].flows().is_empty() && sim.hosts[1].flows().is_empty());
    assert_eq!(stats(&sim, 0, c).resume_attempts, 0);
}

#[test]
fn abort_by_the_client_reaches_the_server_as_a_reset() {
    abort_reaches_the_peer(92, 0);
}

#[test]
fn abort_by_the_server_reaches_the_client_as_a_reset() {
    abort_reaches_the_peer(93, 1);
}

#[test]
fn a_server_that_closes_early_resets_the_client_within_a_second() {
    let (mut sim, listener) = pair(94, link(5));
    let (c, s) = connect(&mut sim, listener);
    let data = payload(16 << 20, 94);
    let mut sent = 0;
    let mut read = Vec::new();
    let mut closed_at = None;
    let mut client_error = None;
    sim.run_until(Duration::from_secs(60), |sim| {
        match sim.hosts[0].write(c, &data[sent..]) {
            Ok(n) => sent += n,
            Err(e) => client_error = Some(e),
        }
        if closed_at.is_none() {
            let _ = drain(sim, 1, s, &mut read);
            if read.len() >= 64 << 10 {
                // The serving program reads 64 KiB and closes.
                let now = sim.now();
                sim.hosts[1].close(now, s);
                closed_at = Some(now);
            }
        }
        client_error.is_some()
    });
    let closed_at = closed_at.expect("the server closed");
    let error = client_error.expect("the client program got an error");
    let took = sim.now() - closed_at;
    assert!(
        took <= Duration::from_secs(1),
        "error {took} after the close"
    );
    let kind = std::io::Error::from(error).kind();
    assert!(
        matches!(
            kind,
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{error:?}"
    );
    assert!(
        stats(&sim, 0, c).resume_attempts <= 3,
        "{:?}",
        stats(&sim, 0, c)
    );
}

#[test]
fn legacy_flow_through_a_nat_that_loses_state_ends_with_errors_not_eof() {
    let mut client = config(CLIENT, 95);
    let mut server = config(SERVER, 96);
    for c in [&mut client, &mut server] {
        c.user_timeout = std::time::Duration::from_secs(3);
        c.keepalive = std::time::Duration::from_secs(2);
    }
    let (mut sim, listener) = pair_with(95, link(5), client, server);
    sim.net.strip_option(Direction::AtoB, DEFAULT_KIND, true);
    sim.net.enable_nat(Ipv4Addr::new(10, 0, 9, 1));
    let (c, s) = connect(&mut sim, listener);
    assert!(legacy(&sim, 0, c) && legacy(&sim, 1, s));
    let data = payload(64 << 20, 95);
    let mut sent = 0;
    let mut received = Vec::new();
    let (mut writer_error, mut reader_end) = (None, None);
    let mut lost_at = None;
    sim.run_until(Duration::from_secs(60), |sim| {
        if writer_error.is_none() {
            match sim.hosts[0].write(c, &data[sent..]) {
                Ok(n) => sent += n,
                Err(e) => writer_error = Some((e, sim.now())),
            }
        }
        if reader_end.is_none() {
            match drain(sim, 1, s, &mut received) {
                Ok(true) => reader_end = Some((Ok(()), sim.now())),
                Err(e) => reader_end = Some((Err(e), sim.now())),
                Ok(false) => {}
            }
        }
        if lost_at.is_none() && sim.now().total_millis() >= 300 {
            sim.net.nat_lose_state();
            sim.net.nat_set_public_addr(Ipv4Addr::new(10, 0, 9, 2));
            lost_at = Some(sim.now());
        }
        writer_error.is_some() && reader_end.is_some()
    });
    let lost_at = lost_at.expect("NAT lost its state");
    let (error, at) = writer_error.expect("the writer got an error");
    // The user timeout, or the server's RST to the segments that now come
    // from a new NAT port, whichever is first: an error either way.
    assert!(
        matches!(
            error,
            StreamError::UserTimeout | StreamError::ConnectionReset
        ),
        "{error:?}"
    );
    assert!(
        at - lost_at <= Duration::from_millis(3500),
        "writer error {} after",
        at - lost_at
    );
    let (end, at) = reader_end.expect("the reader heard of it");
    assert_eq!(end, Err(StreamError::ConnectionReset), "never a clean EOF");
    assert!(
        at - lost_at <= Duration::from_secs(6),
        "reader error {} after",
        at - lost_at
    );
    assert!(received.len() < data.len());
}

#[test]
fn resumes_that_are_reset_at_once_back_off() {
    let (mut sim, listener) = pair(97, link(5));
    let (c, s) = connect(&mut sim, listener);
    let mut a = Flowing::new(0, c, payload(4 << 20, 97));
    let mut b = Flowing::new(1, s, payload(4 << 20, 98));
    let attack = Instant::from_millis(100)..Instant::from_millis(10_100);
    let mut next_rst = attack.start;
    let ok = transfer(&mut sim, &mut a, &mut b, Duration::from_secs(120), |sim| {
        let now = sim.now();
        if attack.contains(&now) && now >= next_rst {
            // Reset every connection the client has, every 10 ms.
            sim.net.inject_rst(now, Side::A);
            next_rst = now + Duration::from_millis(10);
        }
    });
    assert!(ok, "the flow completes after the attack");
    assert_integrity(&a, &b);
    let attempts = stats(&sim, 0, c).resume_attempts;
    eprintln!("resume attempts over the 10 s of resets: {attempts}");
    assert!(
        attempts <= 41,
        "no more than about 4 attempts a second: {attempts}"
    );
}

/// Only the server writes; the path dies (blackhole both ways, then NAT
/// state loss with a new address). The receiving-only initiator notices
/// within its probe budget (a few RTTs of quiet plus two RTOs, with floors:
/// well under a second here) and data flows again within a second.
fn receive_only_client_recovers(seed: u64, fault: impl Fn(&mut Sim)) -> (Duration, Duration) {
    let (mut sim, listener) = pair(seed, link(5));
    sim.net.enable_nat(Ipv4Addr::new(10, 0, 9, 1));
    let (c, s) = connect(&mut sim, listener);
    let data = payload(64 << 20, seed);
    let mut sent = 0;
    let mut got = Vec::new();
    let mut faulted_at = None;
    let mut detached_at = None;
    let mut flowing_at = None;
    let mut buf = vec![0u8; 65536];
    sim.run_until(Duration::from_secs(30), |sim| {
        let now = sim.now();
        // Paced: 64 KiB every 10 ms.
        let due = ((now.total_millis().max(0) as usize / 10) + 1) * (64 << 10);
        if sent < due.min(data.len())
            && let Ok(n) = sim.hosts[1].write(s, &data[sent..due.min(data.len())])
        {
            sent += n;
        }
        let before = got.len();
        while let Ok(Some(n)) = sim.hosts[0].read(c, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        if faulted_at.is_none() && now.total_millis() >= 500 {
            fault(sim);
            faulted_at = Some(now);
        }
        let attached = sim.hosts[0]
            .stream_infos()
            .iter()
            .any(|i| i.id == c && i.attached);
        if faulted_at.is_some() && detached_at.is_none() && !attached {
            detached_at = Some(now);
        }
        if detached_at.is_some() && got.len() > before && attached {
            flowing_at = Some(now);
        }
        flowing_at.is_some()
    });
    let faulted_at = faulted_at.expect("fault injected");
    let detached = detached_at.expect("the client noticed") - faulted_at;
    let flowing = flowing_at.expect("data flows again") - faulted_at;
    assert_eq!(sha(&got), sha(&data[..got.len()]), "byte-exact so far");
    // The program's view: from the last byte before the fault to the first
    // after the resume, as the stack reports it at the receiving end.
    sim.run_for(Duration::from_millis(50));
    let gap = stats(&sim, 0, c)
        .last_gap
        .expect("the client reports the outage");
    let detect = stats(&sim, 0, c).last_detect.expect("and its detection");
    let flowing_std = std::time::Duration::from_micros(flowing.total_micros());
    assert!(
        gap >= detect && gap <= flowing_std + std::time::Duration::from_millis(20),
        "gap {gap:?}, detect {detect:?}, flowing after {flowing}"
    );
    (detached, flowing)
}

#[test]
fn a_receiving_only_initiator_detects_a_dead_path_within_its_probe_budget() {
    let (detected, flowing) = receive_only_client_recovers(101, |sim| {
        sim.net
            .blackhole(sim.now(), Duration::from_millis(300), None);
    });
    eprintln!("blackhole 300 ms: detected after {detected}, data again after {flowing}");
    assert!(
        detected <= Duration::from_millis(800),
        "detected after {detected}"
    );
    assert!(
        flowing <= Duration::from_secs(1),
        "data again after {flowing}"
    );
}

#[test]
fn server_to_client_data_flows_within_a_second_of_a_nat_state_loss() {
    let (detected, flowing) = receive_only_client_recovers(102, |sim| {
        sim.net.nat_lose_state();
        sim.net.nat_set_public_addr(Ipv4Addr::new(10, 0, 9, 2));
    });
    eprintln!("NAT state loss: detected after {detected}, data again after {flowing}");
    assert!(
        flowing <= Duration::from_secs(1),
        "data again after {flowing}"
    );
}

#[test]
fn an_idle_flow_whose_peer_answers_is_never_failed_and_stays_quiet() {
    let (mut sim, listener) = pair(103, link(5));
    let (c, s) = connect(&mut sim, listener);
    // Some data, then a minute of silence.
    sim.hosts[0].write(c, b"hello").expect("write");
    sim.run_for(Duration::from_millis(100));
    let before = sim.net.stats();
    sim.run_for(Duration::from_secs(60));
    let after = sim.net.stats();
    let (client, server) = (events(&mut sim, 0, c), events(&mut sim, 1, s));
    assert!(
        client.is_empty() && server.is_empty(),
        "{client:?} {server:?}"
    );
    let packets = after.sent - before.sent;
    eprintln!("packets in 60 s of idle: {packets}");
    assert!(
        packets <= 100,
        "idle flows stay quiet: {packets} packets in 60 s"
    );
}

/// An idle flow whose keepalive probe, or the answer to one, is lost
/// once, each way in turn: a single lost packet is not a dead path (the
/// unanswered probe is sent again within the silent budget), so neither
/// end fails. Before, one probe per keepalive interval meant the silent
/// budget (interval + stall) saw one chance only: a burst of synchronized
/// probes overflowing a queue failed hundreds of idle flows at once.
#[test]
fn one_lost_probe_or_answer_does_not_fail_an_idle_flow() {
    for (seed, direction) in [(211, Direction::AtoB), (212, Direction::BtoA)] {
        let (mut sim, listener) = pair(seed, link(5));
        let (c, s) = connect(&mut sim, listener);
        sim.hosts[0].write(c, b"hello").expect("write");
        // Long enough for the probes to back off to the keepalive interval.
        sim.run_for(Duration::from_secs(40));
        let _ = (events(&mut sim, 0, c), events(&mut sim, 1, s));
        // The next segment this way, whichever it is: a probe or an answer.
        sim.net.drop_matching(direction, 1, |_| true);
        sim.run_for(Duration::from_secs(30));
        let (client, server) = (events(&mut sim, 0, c), events(&mut sim, 1, s));
        assert!(
            client.is_empty() && server.is_empty(),
            "{direction:?}: {client:?} {server:?}"
        );
        assert_eq!(
            sim.hosts[0].stream_info(c).map(|i| i.stats.failures),
            Some(0),
            "{direction:?}: no failure detected"
        );
    }
}

/// A one-second blackhole in the middle of a paced client-to-server
/// stream, over many seeds: every stream completes byte-exact.
#[test]
fn a_one_second_blackhole_mid_stream_always_completes() {
    for seed in 0..30u64 {
        let (mut sim, listener) = pair(2000 + seed, link(1 + seed % 5));
        let (c, s) = connect(&mut sim, listener);
        let data = payload(12 << 20, seed);
        let mut sent = 0;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let mut holed = false;
        let ok = sim.run_until(Duration::from_secs(120), |sim| {
            let now = sim.now();
            let due = ((now.total_millis().max(0) as usize / 2) + 1) * (16 << 10);
            let upto = due.min(data.len());
            if sent < upto
                && let Ok(n) = sim.hosts[0].write(c, &data[sent..upto])
            {
                sent += n;
                if sent == data.len() {
                    sim.hosts[0].shutdown_write(c).expect("shutdown");
                }
            }
            if !holed && now.total_millis() >= 300 + (seed as i64 * 37) % 400 {
                sim.net.blackhole(now, Duration::from_secs(1), None);
                holed = true;
            }
            loop {
                match sim.hosts[1].read(s, &mut buf) {
                    Ok(Some(0)) => return true,
                    Ok(Some(n)) => got.extend_from_slice(&buf[..n]),
                    Ok(None) => return false,
                    Err(e) => panic!("seed {seed}: server read: {e:?}"),
                }
            }
        });
        assert!(
            ok,
            "seed {seed}: stuck at {} of {} bytes",
            got.len(),
            data.len()
        );
        assert_eq!(sha(&got), sha(&data), "seed {seed}");
    }
}
