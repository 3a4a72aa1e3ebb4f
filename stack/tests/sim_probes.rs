//! Simulation: our liveness probes never get in the way of TCP's own loss
//! recovery (found by `tiflow bench recovery`: after a burst loss on a
//! resumed connection, the peer's answers to our probes were duplicate ACKs
//! to smoltcp, whose fast retransmits then resent one segment per four
//! probes and kept its retransmission timer from ever rewinding: 3.6 KB/s
//! for tens of seconds).

mod common;

use common::*;
use smoltcp::time::Duration;
use ti_stack::device::link::Direction;

/// Sends `total` bytes one way; at 1 s the middlebox drops the next `burst`
/// data segments in a row. Returns the simulated time the transfer took,
/// or `None` when it did not finish within 60 s.
fn transfer_with_burst_loss(seed: u64, direction: Direction, burst: usize) -> Option<Duration> {
    // A 10 MB/s bottleneck: the transfer lasts a few seconds.
    let net = ti_stack::device::link::LinkConfig {
        rate_bytes_per_sec: Some(10_000_000),
        ..link(5)
    };
    let (mut sim, listener) = pair(seed, net);
    let (c, s) = connect(&mut sim, listener);
    let total = 16 << 20;
    let (sender, receiver) = match direction {
        Direction::AtoB => ((0, c), (1, s)),
        Direction::BtoA => ((1, s), (0, c)),
    };
    let mut tx = Flowing::new(sender.0, sender.1, payload(total, seed));
    let mut rx = Flowing::new(receiver.0, receiver.1, Vec::new());
    let start = sim.now();
    let mut armed = false;
    let done = sim.run_until(Duration::from_secs(60), |sim| {
        if !armed && sim.now() >= start + Duration::from_secs(1) {
            armed = true;
            sim.net
                .drop_matching(direction, burst, |seg| seg.payload_len > 0);
        }
        tx.pump(sim);
        rx.pump(sim);
        rx.received.len() == total
    });
    assert_eq!(
        sha(&rx.received[..]),
        sha(&tx.data[..rx.received.len()]),
        "what arrived is byte-exact"
    );
    let (tx_stats, rx_stats) = (
        stats(&sim, sender.0, sender.1),
        stats(&sim, receiver.0, receiver.1),
    );
    assert_eq!(
        (tx_stats.resumes, rx_stats.resumes),
        (0, 0),
        "a lossy but live path is no failure"
    );
    let dropped = sim.net.stats().total_dropped();
    eprintln!(
        "seed {seed} {direction:?}: burst {burst}, {dropped} dropped, took {:?}",
        sim.now() - start
    );
    done.then(|| sim.now() - start)
}

/// Loss-free the transfer takes 1.8 s here; smoltcp recovers a hole with a
/// retransmission timeout (>= 1 s) and slow start. One segment per four
/// probes would take 40 s for 100 segments.
fn assert_bursts_recovered(direction: Direction, cases: [(u64, usize); 3]) {
    for (seed, burst) in cases {
        let took = transfer_with_burst_loss(seed, direction, burst);
        assert!(
            took.is_some_and(|t| t < Duration::from_secs(8)),
            "seed {seed}, {burst} lost: transfer took {took:?}"
        );
    }
}

#[test]
fn a_burst_loss_is_recovered_at_tcp_speed_client_sending() {
    assert_bursts_recovered(Direction::AtoB, [(301, 20), (302, 100), (303, 400)]);
}

#[test]
fn a_burst_loss_is_recovered_at_tcp_speed_server_sending() {
    assert_bursts_recovered(Direction::BtoA, [(311, 20), (312, 100), (313, 400)]);
}

#[test]
fn a_loss_free_transfer_is_the_baseline() {
    let took = transfer_with_burst_loss(321, Direction::AtoB, 0).expect("finishes");
    assert!(took < Duration::from_secs(4), "took {took:?}");
}
