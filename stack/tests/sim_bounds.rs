//! What remote peers can make a stack hold is bounded (DESIGN §5), checked
//! on `Stack::resources()` in simulation:
//!
//! - a listener whose application never accepts: thousands of real
//!   handshakes leave at most `accept_backlog` queued and at most
//!   `accept_backlog + max_half_open` sockets, at every step;
//! - a flood of spoofed SYNs evicts the oldest half-open connections, so
//!   real clients still connect, each within 3 s;
//! - after a thousand connections closed, both stacks hold what they held
//!   before.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::*;
use smoltcp::time::{Duration, Instant};
use ti_stack::device::link::{LinkDevice, Side};
use ti_stack::sim::Sim;
use ti_stack::{Resources, StackConfig, StreamId, StreamMode};
use ti_testnet::packet::Tcp;

/// The server's resources, checked against the bounds of its config.
fn assert_bounded(sim: &Sim, what: &str) -> Resources {
    let server = &sim.hosts[1];
    let r = server.resources();
    let c = server.config();
    assert!(
        r.accept_queued <= c.accept_backlog,
        "{what}: {} queued, backlog {}",
        r.accept_queued,
        c.accept_backlog
    );
    assert!(
        r.half_open <= c.max_half_open,
        "{what}: {} half-open, limit {}",
        r.half_open,
        c.max_half_open
    );
    assert!(
        r.sockets <= c.accept_backlog + c.max_half_open,
        "{what}: {} sockets, bound {} + {}: {r:?}",
        r.sockets,
        c.accept_backlog,
        c.max_half_open
    );
    r
}

/// Small socket buffers: the client side of these tests holds hundreds of
/// connections and only counts them.
fn light(addr: Ipv4Addr, seed: u64) -> StackConfig {
    let mut c = config(addr, seed);
    c.socket_buffer = 16 << 10;
    c.connect_timeout = std::time::Duration::from_secs(2);
    c
}

#[test]
fn ten_thousand_handshakes_to_a_listener_that_never_accepts_stay_bounded() {
    ti_stack::memory::map_large_allocations();
    const HANDSHAKES: usize = 10_000;
    const IN_FLIGHT: usize = 300;
    let (mut sim, _listener) = pair_with(60, link(1), light(CLIENT, 60), config(SERVER, 61));
    let server = SocketAddrV4::new(SERVER, PORT);
    let mut started = 0usize;
    let mut connected = 0usize;
    let mut refused = 0usize;
    let mut open: Vec<StreamId> = Vec::new();
    let mut steps = 0u64;
    let done = sim.run_until(Duration::from_secs(3_600), |sim| {
        let now = sim.now();
        steps += 1;
        assert_bounded(sim, &format!("step {steps}"));
        let client = &mut sim.hosts[0];
        open.retain(|&id| {
            if client.error(id).is_some() {
                refused += 1;
            } else if client.mode(id) != Some(StreamMode::Connecting) {
                connected += 1;
            } else {
                return true;
            }
            // Done with it either way: the client lets go (the server keeps
            // what it queued).
            client.close(now, id);
            false
        });
        while open.len() < IN_FLIGHT && started < HANDSHAKES {
            let now = sim.now();
            open.push(sim.hosts[0].connect(now, server).expect("connect"));
            started += 1;
        }
        started == HANDSHAKES && open.is_empty()
    });
    let r = assert_bounded(&sim, "end");
    eprintln!(
        "[bounds] {HANDSHAKES} handshakes: {connected} completed, {refused} failed, \
         {steps} steps, server {r:?}"
    );
    assert!(done, "every connect ended within the time limit");
    let backlog = sim.hosts[1].config().accept_backlog;
    assert_eq!(
        r.accept_queued, backlog,
        "the queue filled up and stayed full"
    );
    assert!(
        r.flows <= backlog,
        "flow entries only for queued streams: {r:?}"
    );
    assert!(
        r.syns_dropped_backlog > 0,
        "SYNs beyond the backlog went unanswered: {r:?}"
    );
    assert!(connected >= backlog, "{connected} connected");
}

/// Spoofed SYNs at `rate` per second from sources nobody answers for.
struct Flood {
    attacker: LinkDevice,
    rate: u64,
    since: Instant,
    sent: u64,
}

impl Flood {
    fn new(sim: &Sim, rate: u64) -> Flood {
        Flood {
            attacker: sim.net.endpoint(Side::A, &[Ipv4Addr::new(10, 0, 0, 99)]),
            rate,
            since: sim.now(),
            sent: 0,
        }
    }

    /// Sends what is due by now (sources 10.9.x.y, nowhere on the link).
    fn run(&mut self, now: Instant) {
        let due = (now - self.since).total_micros() * self.rate / 1_000_000;
        while self.sent < due {
            let n = self.sent;
            let src = Ipv4Addr::new(10, 9, (n >> 8) as u8, n as u8);
            let src = SocketAddrV4::new(src, 1024 + (n % 60_000) as u16);
            let syn = Tcp::new(src, SocketAddrV4::new(SERVER, PORT))
                .syn()
                .seq(n as u32)
                .build();
            self.attacker.send_raw(now, &syn);
            self.sent += 1;
        }
        // The attacker answers nothing.
        while self.attacker.recv_raw(now).is_some() {}
    }
}

#[test]
fn syn_flood_evicts_oldest_half_open_and_legitimate_clients_connect() {
    ti_stack::memory::map_large_allocations();
    // 20,000 SYNs a second at a server 4 ms (RTT) away: 80 arrive in a
    // round trip, so a client's handshake survives the eviction of the
    // oldest, while a table that refused new SYNs when full would be full of
    // spoofed ones within 13 ms for the whole test.
    let (mut sim, listener) = pair(62, link(2));
    let mut flood = Flood::new(&sim, 20_000);
    sim.run_until(Duration::from_millis(500), |sim| {
        flood.run(sim.now());
        false
    });
    let before = assert_bounded(&sim, "flood under way");
    assert!(
        before.half_open > 0,
        "the flood fills the table: {before:?}"
    );
    let server = SocketAddrV4::new(SERVER, PORT);
    let mut times = Vec::new();
    for round in 0..20 {
        let start = sim.now();
        let client = sim.hosts[0].connect(start, server).expect("connect");
        let mut accepted = None;
        let ok = sim.run_until(Duration::from_secs(3), |sim| {
            flood.run(sim.now());
            assert_bounded(sim, &format!("round {round}"));
            if accepted.is_none() {
                accepted = sim.hosts[1].accept(listener).expect("accept");
            }
            accepted.is_some() && sim.hosts[0].is_connected(client)
        });
        if ok && sim.hosts[0].error(client).is_none() {
            times.push(std::time::Duration::from_micros(
                (sim.now() - start).total_micros(),
            ));
        }
        let now = sim.now();
        sim.hosts[0].close(now, client);
        if let Some(s) = accepted {
            sim.hosts[1].close(now, s);
        }
    }
    let r = assert_bounded(&sim, "end");
    eprintln!(
        "[bounds] flood of {} SYNs: {}/20 connected, times {times:?}, server {r:?}",
        flood.sent,
        times.len()
    );
    assert!(
        r.half_open_evicted > 0,
        "the flood made room by eviction: {r:?}"
    );
    assert!(
        times.len() >= 18,
        "{}/20 legitimate connects within 3 s under the flood",
        times.len()
    );
}

#[test]
fn a_thousand_closed_connections_leave_both_stacks_as_they_started() {
    ti_stack::memory::map_large_allocations();
    const CONNECTIONS: usize = 1000;
    const AT_ONCE: usize = 50;
    let (mut sim, listener) = pair(63, link(1));
    let baseline = [sim.hosts[0].resources(), sim.hosts[1].resources()];
    let server = SocketAddrV4::new(SERVER, PORT);
    // (client stream, server stream once accepted, replies read by the client)
    let mut live: Vec<(StreamId, Option<StreamId>, usize)> = Vec::new();
    let mut started = 0usize;
    let mut finished = 0usize;
    let mut pending_accept: Vec<StreamId> = Vec::new();
    let message = payload(3000, 1);
    let all_done = sim.run_until(Duration::from_secs(600), |sim| {
        let now = sim.now();
        while let Some(s) = sim.hosts[1].accept(listener).expect("accept") {
            pending_accept.push(s);
        }
        // The server echoes what it reads and closes after the client's FIN.
        let mut buf = vec![0u8; 8192];
        pending_accept.retain(|&s| {
            let server = &mut sim.hosts[1];
            loop {
                match server.read(s, &mut buf) {
                    Ok(Some(0)) => {
                        server.close(now, s);
                        return false;
                    }
                    Ok(Some(n)) => {
                        let wrote = server.write(s, &buf[..n]).expect("echo");
                        assert_eq!(wrote, n, "echo fits the send buffer");
                    }
                    Ok(None) => return true,
                    Err(e) => panic!("server stream failed: {e}"),
                }
            }
        });
        live.retain_mut(|(c, _, got)| {
            let client = &mut sim.hosts[0];
            loop {
                match client.read(*c, &mut buf) {
                    Ok(Some(0)) => {
                        assert_eq!(*got, message.len(), "echoed bytes");
                        client.close(now, *c);
                        finished += 1;
                        return false;
                    }
                    Ok(Some(n)) => *got += n,
                    Ok(None) => return true,
                    Err(e) => panic!("client stream failed: {e}"),
                }
            }
        });
        while live.len() < AT_ONCE && started < CONNECTIONS {
            let now = sim.now();
            let c = sim.hosts[0].connect(now, server).expect("connect");
            sim.hosts[0].write(c, &message).expect("write");
            sim.hosts[0].shutdown_write(c).expect("shutdown");
            live.push((c, None, 0));
            started += 1;
        }
        finished == CONNECTIONS
    });
    assert!(all_done, "{finished}/{CONNECTIONS} echoes completed");
    // TIME-WAIT and the last ACKs: then nothing may be left.
    let settled = sim.run_until(Duration::from_secs(120), |sim| {
        sim.hosts[0].resources().sockets == baseline[0].sockets
            && sim.hosts[1].resources().sockets == baseline[1].sockets
            && sim.hosts[0].resources().streams == 0
            && sim.hosts[1].resources().streams == 0
    });
    let after = [sim.hosts[0].resources(), sim.hosts[1].resources()];
    eprintln!("[bounds] after {CONNECTIONS} connections: {after:?} (baseline {baseline:?})");
    assert!(settled, "resources back to the baseline: {after:?}");
    for (host, (a, b)) in after.iter().zip(&baseline).enumerate() {
        assert_eq!(
            (a.sockets, a.half_open, a.accept_queued, a.streams, a.flows),
            (b.sockets, b.half_open, b.accept_queued, b.streams, b.flows),
            "host {host}"
        );
    }
}
