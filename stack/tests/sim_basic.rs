//! Simulation: new flows, data integrity, resumes (DESIGN §4).

mod common;

use common::*;
use smoltcp::time::Duration;
use ti_stack::StreamEvent;
use ti_stack::device::link::Side;

#[test]
fn new_flow_is_resilient_on_both_ends_and_moves_data_exactly() {
    let (mut sim, listener) = pair(1, link(5));
    let (c, s) = connect(&mut sim, listener);
    assert!(
        resilient(&sim, 0, c),
        "client mode {:?}",
        sim.hosts[0].mode(c)
    );
    assert!(
        resilient(&sim, 1, s),
        "server mode {:?}",
        sim.hosts[1].mode(s)
    );
    let mut a = Flowing::new(0, c, payload(1 << 20, 1));
    let mut b = Flowing::new(1, s, payload(3 << 19, 2));
    assert!(transfer(
        &mut sim,
        &mut a,
        &mut b,
        Duration::from_secs(60),
        |_| {}
    ));
    assert_integrity(&a, &b);
}

#[test]
fn resume_after_injected_rst_keeps_both_streams_exact() {
    let (mut sim, listener) = pair(2, link(5));
    let (c, s) = connect(&mut sim, listener);
    let mut a = Flowing::new(0, c, payload(4 << 20, 3));
    let mut b = Flowing::new(1, s, payload(4 << 20, 4));
    let mut injected = false;
    let ok = transfer(&mut sim, &mut a, &mut b, Duration::from_secs(120), |sim| {
        if !injected && sim.now().total_millis() > 300 {
            injected = true;
            assert!(sim.net.inject_rst(sim.now(), Side::A) > 0);
        }
    });
    assert!(
        ok,
        "transfer incomplete: a got {} b got {}",
        a.received.len(),
        b.received.len()
    );
    assert_integrity(&a, &b);
    let resumed = std::iter::from_fn(|| sim.hosts[0].poll_event(c))
        .any(|e| matches!(e, StreamEvent::Resumed { .. }));
    assert!(resumed, "client saw no Resumed event");
}
