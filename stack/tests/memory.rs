//! Memory a SYN flood costs (DESIGN §5: socket buffers are not committed at
//! SYN time, and come back after close).
//!
//! Rounds of spoofed SYNs at a listener in simulation, each left to time
//! out: the half-open counters must rise and return to zero every round,
//! and with [`ti_stack::memory::map_large_allocations`] (what `tiflow`
//! does at startup) the process's resident memory must neither grow by the
//! socket buffers' size nor keep what a round took. One test in this binary,
//! so the resident set is this test's alone. Run with `--nocapture` to see
//! the figures.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::*;
use smoltcp::time::Duration;
use ti_stack::device::link::Side;
use ti_testnet::packet::Tcp;

/// Resident set of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn half_open_sockets_cost_little_memory_and_give_it_back() {
    const ROUNDS: usize = 4;
    let pinned = ti_stack::memory::map_large_allocations();
    let (mut sim, _listener) = pair(48, link(2));
    let config = sim.hosts[1].config().clone();
    // Every SYN of a round is admitted: the round fills the table once.
    let syns = config.max_half_open as u16;
    let buffers_kib = 2 * config.socket_buffer as u64 / 1024 * u64::from(syns);
    let attacker_addr = Ipv4Addr::new(10, 0, 0, 99);
    let attacker = sim.net.endpoint(Side::A, &[attacker_addr]);
    let baseline = rss_kib();
    let mut port = 20_000u16;
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        let now = sim.now();
        for _ in 0..syns {
            let syn = Tcp::new(
                SocketAddrV4::new(attacker_addr, port),
                SocketAddrV4::new(SERVER, PORT),
            )
            .syn()
            .seq(1000)
            .build();
            port += 1;
            attacker.send_raw(now, &syn);
        }
        sim.run_for(Duration::from_millis(100));
        while attacker.recv_raw(sim.now()).is_some() {}
        let during = sim.hosts[1].resources();
        let rss_during = rss_kib();
        assert_eq!(
            during.half_open,
            usize::from(syns),
            "round {round}: {during:?}"
        );
        assert!(
            during.sockets >= usize::from(syns),
            "round {round}: {during:?}"
        );
        // The half-open timeout frees them all.
        sim.run_for(Duration::from_micros(
            config.half_open_timeout.as_micros() as u64 + 500_000,
        ));
        while attacker.recv_raw(sim.now()).is_some() {}
        let after = sim.hosts[1].resources();
        assert_eq!(
            (after.half_open, after.sockets),
            (0, 0),
            "round {round}: {after:?}"
        );
        assert_eq!(
            after.half_open_expired,
            (round as u64 + 1) * u64::from(syns),
            "round {round}: every handshake timed out"
        );
        rounds.push((rss_during, rss_kib()));
    }
    eprintln!(
        "[memory] baseline {baseline} KiB; {syns} half-open sockets a round \
         ({buffers_kib} KiB of socket buffers), mmap threshold pinned: {pinned}; \
         RSS (with them, after they timed out) per round: {rounds:?} KiB"
    );
    if pinned {
        for (round, (during, after)) in rounds.iter().enumerate() {
            assert!(
                during.saturating_sub(baseline) < buffers_kib / 8,
                "round {round}: {during} KiB resident with {syns} half-open sockets \
                 (baseline {baseline} KiB, their buffers {buffers_kib} KiB)"
            );
            assert!(
                after.saturating_sub(baseline) < buffers_kib / 32,
                "round {round}: {after} KiB resident after they timed out \
                 (baseline {baseline} KiB)"
            );
        }
    }
}
