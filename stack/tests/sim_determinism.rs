//! Simulation is deterministic: the same seed gives the same packets, byte
//! for byte, at the same simulated times (TCP timestamps come from the
//! stack's clock, ISNs and ports from the seeded random source). A
//! scenario with a transfer, a NAT that loses its state, a resume and a
//! close is run twice and its captures compared.

mod common;

use common::*;
use smoltcp::time::Duration;
use ti_stack::device::link::CapturedPacket;

fn run(seed: u64) -> Vec<CapturedPacket> {
    let (mut sim, listener) = pair(seed, link(5));
    sim.net.set_capture(true);
    sim.net.enable_nat(std::net::Ipv4Addr::new(192, 0, 2, 1));
    let (c, s) = connect(&mut sim, listener);
    let mut a = Flowing::new(0, c, payload(1 << 20, seed));
    let mut b = Flowing::new(1, s, payload(256 << 10, seed + 1));
    let start = sim.now();
    let mut flushed = false;
    let done = transfer(&mut sim, &mut a, &mut b, Duration::from_secs(60), |sim| {
        if !flushed && sim.now() >= start + Duration::from_millis(50) {
            flushed = true;
            sim.net.nat_lose_state();
            sim.net
                .nat_set_public_addr(std::net::Ipv4Addr::new(192, 0, 2, 2));
        }
    });
    assert!(done, "seed {seed}: transfer incomplete");
    assert_integrity(&a, &b);
    sim.run_for(Duration::from_secs(1));
    sim.net.captured()
}

#[test]
fn the_same_seed_gives_the_same_packets_at_the_same_times() {
    let first = run(77);
    let second = run(77);
    assert!(
        first.len() > 100,
        "a real exchange: {} packets",
        first.len()
    );
    assert!(
        first.iter().any(|p| is_syn_with_timestamps(&p.bytes)),
        "SYNs carry TCP timestamps (the clock this test is about)"
    );
    assert_eq!(first.len(), second.len(), "packet count");
    for (i, (x, y)) in first.iter().zip(&second).enumerate() {
        assert_eq!(x, y, "packet {i} differs");
    }
    // A different seed is a different run (the comparison can fail).
    let other = run(78);
    assert_ne!(first, other);
}

/// A SYN whose TCP options include timestamps (kind 8).
fn is_syn_with_timestamps(ip: &[u8]) -> bool {
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let Some(tcp) = ip.get(ihl..) else {
        return false;
    };
    let (Some(&flags), Some(&offset)) = (tcp.get(13), tcp.get(12)) else {
        return false;
    };
    let options = tcp.get(20..usize::from(offset >> 4) * 4).unwrap_or(&[]);
    flags & 0x02 != 0 && ti_stack::segment::find_timestamp(options).is_some()
}
