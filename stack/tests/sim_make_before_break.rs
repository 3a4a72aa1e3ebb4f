//! Simulation: make before break (DESIGN §4, issue 11). The initiator keeps
//! a connection it suspects (a stall, a silent path) while it resumes;
//! whichever carries data first wins and the loser goes without touching
//! the flow.

mod common;

use common::*;
use smoltcp::time::Duration;
use ti_stack::device::link::{Direction, LinkConfig};
use ti_stack::sim::Sim;

/// A client program writing 4 MiB at 2 MB/s (application-limited: no
/// queue builds, the RTT stays at 10 ms, so the liveness budgets are
/// known) over an unlimited link; `fault` runs once at 1 s. Returns the
/// simulation, both ends and how long the transfer took.
fn client_sends_through(
    seed: u64,
    fault: impl FnOnce(&mut Sim),
) -> (Sim, Flowing, Flowing, Duration) {
    const RATE_BYTES_PER_SEC: u64 = 2_000_000;
    let (mut sim, listener) = pair(seed, link(5));
    let (c, s) = connect(&mut sim, listener);
    let data = payload(4 << 20, seed);
    let tx = Flowing::new(0, c, data.clone());
    let mut rx = Flowing::new(1, s, Vec::new());
    let (mut sent, mut shut) = (0, false);
    let start = sim.now();
    let mut fault = Some(fault);
    let done = sim.run_until(Duration::from_secs(60), |sim| {
        if sim.now() >= start + Duration::from_secs(1)
            && let Some(fault) = fault.take()
        {
            fault(sim);
        }
        // The program hands over what its rate allows so far.
        let allowed = (sim.now() - start).total_micros() * RATE_BYTES_PER_SEC / 1_000_000;
        let due = (allowed as usize).min(data.len());
        if sent < due
            && let Ok(n) = sim.hosts[0].write(c, &data[sent..due])
        {
            sent += n;
        }
        if sent == data.len() && !shut {
            sim.hosts[0].shutdown_write(c).expect("shutdown");
            shut = true;
        }
        rx.pump(sim);
        rx.eof
    });
    assert!(
        done,
        "transfer incomplete: {} of {} bytes",
        rx.received.len(),
        data.len()
    );
    assert_eq!(sha(&rx.received), sha(&data), "byte-exact");
    let took = sim.now() - start;
    (sim, tx, rx, took)
}

/// The path drops everything for 200 ms (longer than the client's stall
/// budget, about two RTOs; shorter than the server's silent-path budget,
/// a 200 ms quiet probe plus its own stall budget) and every resume
/// SYN for 20 s: only the old connection can carry the flow, and it does
/// once its TCP retransmits.
#[test]
fn the_old_connection_wins_when_it_recovers_first() {
    let seed = 401;
    {
        let (sim, tx, rx, took) = client_sends_through(seed, |sim| {
            let now = sim.now();
            sim.net.blackhole(now, Duration::from_millis(200), None);
            sim.net
                .drop_matching(Direction::AtoB, 1000, |seg| seg.flags.syn && !seg.flags.ack);
        });
        let (client, server) = (stats(&sim, 0, tx.id), stats(&sim, 1, rx.id));
        eprintln!("seed {seed}: took {took:?} client {client:?} server {server:?}");
        assert!(
            client.resume_attempts >= 1,
            "seed {seed}: the client suspected its connection and tried to resume"
        );
        assert_eq!(
            (client.recoveries, client.resumes, server.resumes),
            (1, 0, 0),
            "seed {seed}: the old connection carried the flow again: {client:?}"
        );
        assert!(
            took < Duration::from_secs(20),
            "seed {seed}: finished before any resume could: {took:?}"
        );
    }
}

/// The same fault with resume SYNs let through: a resume may win instead;
/// either way exactly one connection carries the flow at the end and no
/// byte is lost or repeated.
#[test]
fn either_winner_keeps_the_stream_exact() {
    let seed = 411;
    {
        let (sim, tx, rx, took) = client_sends_through(seed, |sim| {
            let now = sim.now();
            sim.net.blackhole(now, Duration::from_millis(200), None);
        });
        let (client, server) = (stats(&sim, 0, tx.id), stats(&sim, 1, rx.id));
        eprintln!("seed {seed}: took {took:?} client {client:?}");
        assert_eq!(
            client.recoveries + client.resumes,
            1,
            "seed {seed}: one winner: {client:?}"
        );
        assert_eq!(client.resumes, server.resumes, "seed {seed}");
    }
}

/// One race: a transfer (`a` from the client, `b` from the server) in
/// which, `arm_at` after the start, the path drops everything for
/// `outage` (or one `direction` only) and the next `lost_syns` resume SYNs
/// are lost. Both streams must arrive byte-exact; returns the client's
/// stream counters.
#[allow(clippy::too_many_arguments)]
fn race(
    sim: &mut Sim,
    listener: ti_stack::ListenerId,
    a_data: Vec<u8>,
    b_data: Vec<u8>,
    arm_at: Duration,
    outage: Duration,
    direction: Option<Direction>,
    lost_syns: usize,
) -> ti_stack::StreamStats {
    let (c, s) = connect(sim, listener);
    let mut a = Flowing::new(0, c, a_data);
    let mut b = Flowing::new(1, s, b_data);
    let start = sim.now();
    let mut armed = false;
    let done = transfer(sim, &mut a, &mut b, Duration::from_secs(120), |sim| {
        if !armed && sim.now() >= start + arm_at {
            armed = true;
            let now = sim.now();
            sim.net.blackhole(now, outage, direction);
            sim.net.drop_matching(Direction::AtoB, lost_syns, |seg| {
                seg.flags.syn && !seg.flags.ack
            });
        }
    });
    assert!(done, "transfer incomplete");
    assert_integrity(&a, &b);
    stats(sim, 0, c)
}

/// Races between the suspect and the resume, both directions carrying
/// data: short outages of varied length, one direction or both, over many
/// seeds. Whoever wins, both streams arrive byte-exact (a suspect's late
/// deliveries are skipped on the resumed connection, its late
/// acknowledgements never move the flow past what the peer named).
#[test]
fn races_between_the_suspect_and_the_resume_keep_both_streams_exact() {
    let mut outcomes = (0, 0);
    for seed in 0..24u64 {
        let net = LinkConfig {
            rate_bytes_per_sec: Some(4_000_000),
            ..link(2 + seed % 7)
        };
        let (mut sim, listener) = pair(500 + seed, net);
        let direction = match seed % 3 {
            0 => None,
            1 => Some(Direction::AtoB),
            _ => Some(Direction::BtoA),
        };
        // Some resume SYNs lost too: the suspect gets time to win.
        let client = race(
            &mut sim,
            listener,
            payload(3 << 20, seed),
            payload(3 << 20, seed + 1000),
            Duration::from_millis(400),
            Duration::from_millis(150 + 40 * (seed % 12)),
            direction,
            (seed % 6) as usize * 2,
        );
        outcomes.0 += client.recoveries;
        outcomes.1 += client.resumes;
    }
    eprintln!(
        "old connection kept {} times, resumed {} times",
        outcomes.0, outcomes.1
    );
    assert!(
        outcomes.0 > 0 && outcomes.1 > 0,
        "both kinds of winner were exercised: {outcomes:?}"
    );
}

/// The receiving-only initiator (server-to-client data): its suspect
/// (silent path) must never take data that the resume SYN did not count,
/// or the server resends from past the SYN's TIAck and bytes are lost.
/// Outages and lost resume SYNs of many lengths, so that the server's
/// retransmissions reach the suspect before, with and after the resume.
#[test]
fn a_receiving_suspect_never_takes_data_the_resume_did_not_count() {
    let mut outcomes = (0, 0);
    for seed in 0..40u64 {
        let (mut sim, listener) = pair(700 + seed, link(1 + seed % 5));
        let client = race(
            &mut sim,
            listener,
            Vec::new(),
            payload(2 << 20, seed),
            Duration::from_millis(100),
            Duration::from_millis(250 + 37 * (seed % 20)),
            None,
            (seed % 4) as usize,
        );
        outcomes.0 += client.recoveries;
        outcomes.1 += client.resumes;
    }
    eprintln!(
        "receiving suspect: kept {} times, resumed {} times",
        outcomes.0, outcomes.1
    );
}
