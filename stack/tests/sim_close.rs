//! Simulation: a failure at every moment of the close costs one resume and
//! nothing more (DESIGN §4 "Close"; the pending FIN is resent at once after
//! a resume, and a side that abandons its connection says so).
//!
//! Each test moves 64 KiB to 1 MiB each way over a 5 ms one-way link
//! (RTT 10 ms), injects an explicit failure (`fail_transport`, the paper's
//! sysctl) on one side in one close state, and requires: both ends read the
//! other's end of stream, byte-exact, and both flow tables are empty within
//! one resume plus 2 RTT of the failure (asserted as at most 4 RTT).

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::*;
use smoltcp::time::{Duration, Instant};
use ti_stack::device::link::Direction;
use ti_stack::sim::Sim;
use ti_stack::{StreamEvent, StreamId};

const RTT: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseState {
    /// The client's FIN is sent and not acknowledged.
    ClientFinUnacked,
    /// The server received the client's FIN; its own FIN is still pending.
    ServerFinPending,
    /// Every byte is acknowledged both ways and both FINs are in flight.
    BothFinsInFlight,
    /// The last ACK (of the server's FIN) is lost.
    LastAckLost,
}

struct Outcome {
    failed_at: Instant,
    closed_at: Instant,
    client_events: Vec<StreamEvent>,
    server_events: Vec<StreamEvent>,
}

fn events(sim: &mut Sim, host: usize, id: StreamId) -> Vec<StreamEvent> {
    std::iter::from_fn(|| sim.hosts[host].poll_event(id)).collect()
}

fn flow(sim: &Sim, host: usize, id: StreamId) -> Option<&tifid::Flow> {
    match sim.hosts[host].mode(id) {
        Some(ti_stack::StreamMode::Known(ti_stack::Mode::Resilient { tifid })) => {
            sim.hosts[host].flows().get(tifid)
        }
        _ => None,
    }
}

fn fin_received(sim: &Sim, host: usize, id: StreamId) -> bool {
    flow(sim, host, id).is_some_and(|f| f.fin_received())
}

/// What the middlebox saw of the close.
#[derive(Debug, Default)]
struct Wire {
    client_fin: bool,
    server_fin: bool,
    /// The acknowledgement number that acknowledges the server's FIN.
    server_fin_end: Option<u32>,
    drop_last_ack: bool,
    last_ack_dropped: bool,
}

/// Watches FINs in both directions; drops the client's ACK of the server's
/// FIN once when `drop_last_ack`.
fn watch(sim: &Sim, wire: &Rc<RefCell<Wire>>) {
    let w = wire.clone();
    sim.net
        .drop_matching(Direction::AtoB, usize::MAX, move |seg| {
            let mut w = w.borrow_mut();
            w.client_fin |= seg.flags.fin;
            let last_ack = seg.flags.ack && Some(seg.ack) == w.server_fin_end;
            if w.drop_last_ack && !w.last_ack_dropped && last_ack {
                w.last_ack_dropped = true;
                return true;
            }
            false
        });
    let w = wire.clone();
    sim.net
        .drop_matching(Direction::BtoA, usize::MAX, move |seg| {
            let mut w = w.borrow_mut();
            if seg.flags.fin && !w.server_fin {
                w.server_fin = true;
                w.server_fin_end = Some(seg.seq.wrapping_add(seg.seg_len()));
            }
            false
        });
}

/// Runs the close; `failing_host` fails its connection in `state` (`None`:
/// the same run without a failure, as the baseline).
fn close_with_failure(seed: u64, state: CloseState, failing_host: Option<usize>) -> Outcome {
    let (mut sim, listener) = pair(seed, link(5));
    let (c, s) = connect(&mut sim, listener);
    let (client_len, server_len) = match state {
        CloseState::ServerFinPending => (1 << 10, 64 << 10),
        _ => (16 << 10, 16 << 10),
    };
    let wire = Rc::new(RefCell::new(Wire {
        drop_last_ack: state == CloseState::LastAckLost,
        ..Wire::default()
    }));
    watch(&sim, &wire);
    let mut a = Flowing::new(0, c, payload(client_len, seed));
    let mut b = Flowing::new(1, s, payload(server_len, seed + 1));
    let mut failed_at = None;
    let ok = transfer(&mut sim, &mut a, &mut b, Duration::from_secs(30), |sim| {
        if failed_at.is_some() {
            return;
        }
        let w = wire.borrow();
        let trigger = match state {
            CloseState::ClientFinUnacked => w.client_fin && !fin_received(sim, 1, s),
            CloseState::ServerFinPending => {
                fin_received(sim, 1, s) && !w.server_fin && sim.hosts[1].unacknowledged(s) > 0
            }
            CloseState::BothFinsInFlight => {
                w.client_fin && w.server_fin && !fin_received(sim, 0, c) && !fin_received(sim, 1, s)
            }
            CloseState::LastAckLost => w.last_ack_dropped,
        };
        if trigger {
            if let Some(host) = failing_host {
                let id = if host == 0 { c } else { s };
                sim.hosts[host].fail_transport(id).expect("fail");
            }
            failed_at = Some(sim.now());
        }
    });
    let failed_at = failed_at.expect("the failure was injected in the close");
    assert!(ok, "close incomplete: eof {} {}", a.eof, b.eof);
    assert_integrity(&a, &b);
    // Closed: both ends read the other's end of stream and had their own
    // acknowledged. A step polls the hosts at `now` and then moves the
    // clock: the close happened at the time of the step after which both
    // report it.
    let mut polled_at = sim.now();
    let mut closed_at = sim.now();
    let done = sim.run_until(Duration::from_secs(30), |sim| {
        let closed = sim.hosts[0].is_finished(c) && sim.hosts[1].is_finished(s);
        closed_at = polled_at;
        polled_at = sim.now();
        closed
    });
    assert!(done, "the close did not complete");
    // Flow entries go at both ends (the initiator's after TIME-WAIT).
    let gone = sim.run_until(Duration::from_secs(15), |sim| {
        sim.hosts[0].flows().is_empty() && sim.hosts[1].flows().is_empty()
    });
    assert!(
        gone,
        "flow entries left: {} {}",
        sim.hosts[0].flows().len(),
        sim.hosts[1].flows().len()
    );
    Outcome {
        failed_at,
        closed_at,
        client_events: events(&mut sim, 0, c),
        server_events: events(&mut sim, 1, s),
    }
}

/// The failure costs at most one resume plus 2 RTT: the close completes at
/// most 3 RTT (plus one RTT of slack for polling) later than in the same run
/// without the failure.
fn assert_prompt(state: CloseState, failing_host: usize, seed: u64) {
    let base = close_with_failure(seed, state, None);
    let o = close_with_failure(seed, state, Some(failing_host));
    let took = o.closed_at - o.failed_at;
    let cost = o.closed_at.total_micros() - base.closed_at.total_micros();
    eprintln!(
        "{state:?}, failure on host {failing_host}: closed {took} after the failure, {} ms later than without it; events {:?} / {:?}",
        cost as f64 / 1000.0,
        o.client_events,
        o.server_events
    );
    assert!(
        o.closed_at <= base.closed_at + RTT * 4,
        "{state:?} (host {failing_host} failed): the close took {took} after the failure, {cost} us more than without it"
    );
    let lost = |e: &&StreamEvent| matches!(e, StreamEvent::Lost(_));
    assert!(
        !o.client_events.iter().any(|e| lost(&e)),
        "{:?}",
        o.client_events
    );
    assert!(
        !o.server_events.iter().any(|e| lost(&e)),
        "{:?}",
        o.server_events
    );
}

#[test]
fn client_fin_unacked_and_the_client_fails() {
    assert_prompt(CloseState::ClientFinUnacked, 0, 81);
}

#[test]
fn client_fin_unacked_and_the_server_fails() {
    assert_prompt(CloseState::ClientFinUnacked, 1, 82);
}

#[test]
fn server_fin_pending_and_the_client_fails() {
    assert_prompt(CloseState::ServerFinPending, 0, 83);
}

#[test]
fn server_fin_pending_and_the_server_fails() {
    assert_prompt(CloseState::ServerFinPending, 1, 84);
}

#[test]
fn both_fins_in_flight_and_the_client_fails() {
    assert_prompt(CloseState::BothFinsInFlight, 0, 85);
}

#[test]
fn both_fins_in_flight_and_the_server_fails() {
    assert_prompt(CloseState::BothFinsInFlight, 1, 86);
}

#[test]
fn last_ack_lost_and_the_client_fails() {
    assert_prompt(CloseState::LastAckLost, 0, 87);
}

#[test]
fn last_ack_lost_and_the_server_fails() {
    assert_prompt(CloseState::LastAckLost, 1, 88);
}

/// Explicit failures every 25-75 ms, alternately on the client and the
/// server, during the first 2 s of an exchange that ends with both closes:
/// every seed byte-exact, no loss, both ends closed.
#[test]
fn alternating_failures_through_transfer_and_close_stay_byte_exact() {
    for seed in 0..40u64 {
        let (mut sim, listener) = pair(1000 + seed, link(2));
        let (c, s) = connect(&mut sim, listener);
        let mut a = Flowing::new(0, c, payload(1 << 20, seed));
        let mut b = Flowing::new(1, s, payload((1 << 20) + 4321, seed + 7));
        let mut x = (seed as u32).wrapping_mul(2_654_435_761) | 1;
        let mut next = Instant::from_millis(5);
        let mut turn = 0usize;
        let ok = transfer(&mut sim, &mut a, &mut b, Duration::from_secs(120), |sim| {
            let now = sim.now();
            if now < Instant::from_millis(2000) && now >= next {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                next = now + Duration::from_millis(25 + u64::from(x % 51));
                let id = if turn.is_multiple_of(2) { c } else { s };
                let _ = sim.hosts[turn % 2].fail_transport(id);
                turn += 1;
            }
        });
        assert!(ok, "seed {seed}: incomplete, eof {} {}", a.eof, b.eof);
        assert_integrity(&a, &b);
        let lost = |e: &StreamEvent| matches!(e, StreamEvent::Lost(_));
        assert!(!events(&mut sim, 0, c).iter().any(lost), "seed {seed}");
        assert!(!events(&mut sim, 1, s).iter().any(lost), "seed {seed}");
    }
}

/// The serving program writes its reply, shuts down and closes (drops the
/// stream) before the peer has it all; a failure then must still deliver
/// every byte and the FIN: a detached flow outlives the dropped handle.
#[test]
fn a_closed_responder_stream_still_delivers_after_a_failure() {
    let (mut sim, listener) = pair(99, link(5));
    let (c, s) = connect(&mut sim, listener);
    sim.hosts[0].shutdown_write(c).expect("client shutdown");
    let reply = payload(2 << 20, 99);
    let mut written = 0;
    let mut closed = false;
    let mut failed = false;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let ok = sim.run_until(Duration::from_secs(60), |sim| {
        let now = sim.now();
        if !closed {
            if written < reply.len() {
                written += sim.hosts[1].write(s, &reply[written..]).expect("write");
            }
            let eof = matches!(sim.hosts[1].read(s, &mut buf), Ok(Some(0)));
            if written == reply.len() && eof {
                sim.hosts[1].shutdown_write(s).expect("shutdown");
                sim.hosts[1].close(now, s);
                closed = true;
            }
        } else if !failed && got.len() > 256 << 10 {
            // The server's connection fails mid-reply (its handle is gone:
            // the failure is the path's, injected as a RST toward it).
            assert!(sim.net.inject_rst(now, ti_stack::device::link::Side::B) > 0);
            failed = true;
        }
        loop {
            match sim.hosts[0].read(c, &mut buf) {
                Ok(Some(0)) => return true,
                Ok(Some(n)) => got.extend_from_slice(&buf[..n]),
                Ok(None) => return false,
                Err(e) => panic!("client read: {e:?}"),
            }
        }
    });
    assert!(failed, "the failure hit the reply");
    assert!(ok, "client got {} of {}", got.len(), reply.len());
    assert_eq!(sha(&got), sha(&reply));
}
