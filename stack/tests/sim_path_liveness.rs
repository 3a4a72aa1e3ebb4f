//! Simulation: liveness per path. A connection whose packets are lost
//! while the same peer answers on another connection is congested, not
//! cut off: it gets `stall_timeout` before it is failed. A path that dies
//! silences every connection at once and is still detected within two
//! RTOs (found by `tiflow bench recovery --scenarios no-fault`: 100
//! parallel bulk flows through one tiflow up pair failed 217 times on a
//! healthy, congested path with per-connection budgets alone).

mod common;

use std::cell::Cell;
use std::rc::Rc;

use common::*;
use smoltcp::time::Duration;
use ti_stack::device::link::Direction;
use ti_stack::sim::Sim;
use ti_stack::{StreamId, StreamStats};

/// Drops, both ways, every packet of the connection whose client port is
/// `port` while `on` is set.
fn cut_connection(sim: &Sim, port: u16, on: &Rc<Cell<bool>>) {
    for direction in [Direction::AtoB, Direction::BtoA] {
        let on = on.clone();
        sim.net.drop_matching(direction, usize::MAX, move |seg| {
            on.get() && (seg.src.port() == port || seg.dst.port() == port)
        });
    }
}

/// A program writing `data` at `rate` bytes a second (application-limited:
/// no queue builds, the RTT stays the link's), then shutting down.
struct Paced {
    id: StreamId,
    data: Vec<u8>,
    sent: usize,
    shut: bool,
    rate: u64,
}

impl Paced {
    fn new(id: StreamId, data: Vec<u8>, rate: u64) -> Paced {
        Paced {
            id,
            data,
            sent: 0,
            shut: false,
            rate,
        }
    }

    fn pump(&mut self, sim: &mut Sim, elapsed: Duration) {
        let due = (elapsed.total_micros() * self.rate / 1_000_000) as usize;
        let due = due.min(self.data.len());
        if self.sent < due
            && let Ok(n) = sim.hosts[0].write(self.id, &self.data[self.sent..due])
        {
            self.sent += n;
        }
        if self.sent == self.data.len() && !self.shut {
            sim.hosts[0].shutdown_write(self.id).expect("shutdown");
            self.shut = true;
        }
    }
}

/// Two flows from the client, each written at 1 MB/s (the second for
/// longer than any cut: the peer keeps answering on it); the first one's
/// packets are dropped for `cut` from 1 s on. Returns the first flow's
/// client stats and the second's.
fn two_flows_one_cut(seed: u64, cut: Duration) -> (StreamStats, StreamStats) {
    let (mut sim, listener) = pair(seed, link(5));
    let (c1, s1) = connect(&mut sim, listener);
    let (c2, s2) = connect(&mut sim, listener);
    let port = sim.hosts[0].local_addr(c1).expect("local address").port();
    let mut a1 = Paced::new(c1, payload(3_000_000, seed), 1_000_000);
    let mut b1 = Flowing::new(1, s1, Vec::new());
    let mut a2 = Paced::new(c2, payload(10_000_000, seed + 1), 1_000_000);
    let mut b2 = Flowing::new(1, s2, Vec::new());
    let on = Rc::new(Cell::new(false));
    cut_connection(&sim, port, &on);
    let start = sim.now();
    let done = sim.run_until(Duration::from_secs(120), |sim| {
        let t = sim.now() - start;
        on.set(t >= Duration::from_secs(1) && t < Duration::from_secs(1) + cut);
        a1.pump(sim, t);
        b1.pump(sim);
        a2.pump(sim, t);
        b2.pump(sim);
        b1.eof && b2.eof
    });
    assert!(done, "seed {seed}: transfers incomplete");
    assert!(
        sim.now() - start > Duration::from_secs(1) + cut,
        "the second flow outlasted the cut"
    );
    assert_eq!(sha(&b1.received), sha(&a1.data), "first flow byte-exact");
    assert_eq!(sha(&b2.received), sha(&a2.data), "second flow byte-exact");
    (stats(&sim, 0, c1), stats(&sim, 0, c2))
}

#[test]
fn a_connection_cut_alone_for_a_second_is_not_failed_while_its_peer_answers() {
    let (cut, other) = two_flows_one_cut(801, Duration::from_secs(1));
    assert_eq!(
        (cut.failures, cut.resumes, other.failures),
        (0, 0, 0),
        "one second without packets on one connection, the peer answering on \
         the other: no failure ({cut:?})"
    );
}

#[test]
fn a_connection_cut_alone_for_long_fails_after_the_stall_timeout() {
    let (cut, other) = two_flows_one_cut(802, Duration::from_secs(6));
    assert!(
        cut.failures >= 1 && cut.resumes >= 1,
        "a connection cut for 6 s resumes: {cut:?}"
    );
    let detect = cut.last_detect.expect("a detection time");
    assert!(
        detect >= std::time::Duration::from_secs(3),
        "not before stall_timeout while the path answers: {detect:?}"
    );
    assert_eq!(other.failures, 0, "the other connection never failed");
}

#[test]
fn a_path_that_dies_is_detected_within_two_rtos_on_every_connection() {
    let (mut sim, listener) = pair(803, link(5));
    let (c1, s1) = connect(&mut sim, listener);
    let (c2, s2) = connect(&mut sim, listener);
    let mut a1 = Flowing::new(0, c1, payload(4 << 20, 1));
    let mut b1 = Flowing::new(1, s1, Vec::new());
    let mut a2 = Flowing::new(0, c2, payload(4 << 20, 2));
    let mut b2 = Flowing::new(1, s2, Vec::new());
    let start = sim.now();
    let mut cut = false;
    let done = sim.run_until(Duration::from_secs(60), |sim| {
        if !cut && sim.now() >= start + Duration::from_millis(500) {
            cut = true;
            let now = sim.now();
            sim.net.blackhole(now, Duration::from_secs(2), None);
        }
        a1.pump(sim);
        b1.pump(sim);
        a2.pump(sim);
        b2.pump(sim);
        b1.eof && b2.eof
    });
    assert!(done, "transfers incomplete");
    for id in [c1, c2] {
        let s = stats(&sim, 0, id);
        let detect = s.last_detect.expect("detected");
        assert!(
            detect < std::time::Duration::from_millis(400),
            "a dead path is detected at two RTOs, not at stall_timeout: {s:?}"
        );
    }
}
