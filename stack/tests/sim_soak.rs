//! Simulation soak: hundreds of failures at random points of a long
//! bidirectional transfer; both byte streams must arrive exact, both ends
//! see the same resumes, and every failure that hit an attached connection
//! at once (explicit, a RST either way) was followed by a resume.

mod common;

use std::net::Ipv4Addr;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use smoltcp::time::Duration;
use ti_stack::StreamEvent;
use ti_stack::device::link::{LinkConfig, Side};

const FAILURES: u64 = 200;
const BYTES_EACH_WAY: usize = 64 << 20;

#[test]
fn soak_200_failures_64_mib_each_way_exact() {
    let wall = std::time::Instant::now();
    let link = LinkConfig {
        one_way_delay: Duration::from_millis(2),
        ..Default::default()
    };
    let (mut sim, listener) = pair(7, link);
    sim.net.enable_nat(Ipv4Addr::new(10, 200, 0, 1));
    let (c, s) = connect(&mut sim, listener);
    assert!(resilient(&sim, 0, c) && resilient(&sim, 1, s));
    let mut a = Flowing::new(0, c, payload(BYTES_EACH_WAY, 70));
    let mut b = Flowing::new(1, s, payload(BYTES_EACH_WAY, 71));
    let mut rng = StdRng::seed_from_u64(99);
    // Failures spread over the transfer by bytes delivered, at random offsets.
    let span = 2 * BYTES_EACH_WAY as u64;
    let mut points: Vec<u64> = (0..FAILURES)
        .map(|_| rng.random_range(1..span - (1 << 20)))
        .collect();
    points.sort_unstable();
    let mut next = 0usize;
    let mut kinds = [0u32; 5];
    // Explicit failures and RSTs that hit the client's flow while attached:
    // each breaks the connection at once, so each needs a resume of its own.
    let mut hard_while_attached = 0u64;
    let ok = sim.run_until(Duration::from_secs(20_000), |sim| {
        a.pump(sim);
        b.pump(sim);
        let delivered = (a.received.len() + b.received.len()) as u64;
        while next < points.len() && delivered >= points[next] {
            let now = sim.now();
            let kind = rng.random_range(0..kinds.len());
            kinds[kind] += 1;
            let attached = sim.hosts[0]
                .stream_infos()
                .iter()
                .any(|i| i.id == c && i.attached);
            if attached && kind <= 2 {
                hard_while_attached += 1;
            }
            match kind {
                0 => sim.hosts[0].fail_transport(c).expect("fail"),
                1 => {
                    sim.net.inject_rst(now, Side::A);
                }
                2 => {
                    sim.net.inject_rst(now, Side::B);
                }
                3 => sim.net.nat_lose_state(),
                _ => sim.net.blackhole(
                    now,
                    Duration::from_millis(rng.random_range(100..4000)),
                    None,
                ),
            }
            next += 1;
        }
        a.eof && b.eof
    });
    let client_events: Vec<StreamEvent> =
        std::iter::from_fn(|| sim.hosts[0].poll_event(c)).collect();
    let server_events: Vec<StreamEvent> =
        std::iter::from_fn(|| sim.hosts[1].poll_event(s)).collect();
    let resumed = |events: &[StreamEvent]| {
        events
            .iter()
            .filter(|e| matches!(e, StreamEvent::Resumed { .. }))
            .count() as u64
    };
    let (resumes, server_resumes) = (resumed(&client_events), resumed(&server_events));
    let (client_stats, server_stats) = (stats(&sim, 0, c), stats(&sim, 1, s));
    println!(
        "soak: {next} failures injected (explicit {}, rst->client {}, rst->server {}, nat loss {}, blackhole {}), \
         {hard_while_attached} of them explicit or RST on an attached flow; \
         resumes {resumes} (server {server_resumes}), old connection kept {}, \
         failures detected {} (server {}); {} MiB each way, virtual {:.1} s, wall {:.1} s, {} steps",
        kinds[0],
        kinds[1],
        kinds[2],
        kinds[3],
        kinds[4],
        client_stats.recoveries,
        client_stats.failures,
        server_stats.failures,
        BYTES_EACH_WAY >> 20,
        sim.now().total_millis() as f64 / 1000.0,
        wall.elapsed().as_secs_f64(),
        sim.steps()
    );
    assert!(
        ok,
        "transfer incomplete: {} / {} and {} / {}; errors {:?} {:?}",
        a.received.len(),
        BYTES_EACH_WAY,
        b.received.len(),
        BYTES_EACH_WAY,
        sim.hosts[0].error(c),
        sim.hosts[1].error(s)
    );
    assert_eq!(next as u64, FAILURES, "every failure point was reached");
    assert_integrity(&a, &b);
    for events in [&client_events, &server_events] {
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, StreamEvent::Lost(_) | StreamEvent::FellBack(_))),
            "{events:?}"
        );
    }
    assert_eq!(
        resumes, server_resumes,
        "both ends saw the same resumes (the server's are confirmed ones)"
    );
    assert_eq!(resumes, client_stats.resumes, "events and counters agree");
    assert!(
        resumes >= hard_while_attached,
        "{hard_while_attached} failures broke an attached connection, only {resumes} resumes"
    );
}
