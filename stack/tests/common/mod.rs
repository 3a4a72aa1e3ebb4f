//! Shared helpers of the simulation tests.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use smoltcp::time::Duration;
use ti_stack::device::link::{LinkConfig, Network, Side};
use ti_stack::sim::Sim;
use ti_stack::{Mode, StackConfig, StreamId, StreamMode};

/// The IPv4 address of `addr` (the simulated link carries IPv4 only).
pub fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("an IPv6 address on the IPv4 link: {a}"),
    }
}

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
pub const PORT: u16 = 7000;

pub fn config(addr: Ipv4Addr, seed: u64) -> StackConfig {
    let mut c = StackConfig::new(addr);
    c.prefix_len = 8;
    c.seed = Some(seed);
    c
}

/// A client (host 0, side A) and a server (host 1, side B) listening on PORT.
pub fn pair(seed: u64, link: LinkConfig) -> (Sim, ti_stack::ListenerId) {
    pair_with(seed, link, config(CLIENT, seed), config(SERVER, seed + 1))
}

pub fn pair_with(
    seed: u64,
    link: LinkConfig,
    client: StackConfig,
    server: StackConfig,
) -> (Sim, ti_stack::ListenerId) {
    init_logs();
    let net = Network::new(LinkConfig { seed, ..link });
    let mut sim = Sim::new(net);
    sim.add_host(Side::A, client);
    sim.add_host(Side::B, server);
    let listener = sim.hosts[1].listen(PORT).expect("listen");
    (sim, listener)
}

pub fn link(one_way_ms: u64) -> LinkConfig {
    LinkConfig {
        one_way_delay: Duration::from_millis(one_way_ms),
        ..LinkConfig::default()
    }
}

/// Connects host 0 to host 1 and accepts: (client stream, server stream).
pub fn connect(sim: &mut Sim, listener: ti_stack::ListenerId) -> (StreamId, StreamId) {
    let now = sim.now();
    let client = sim.hosts[0]
        .connect(now, SocketAddrV4::new(SERVER, PORT))
        .expect("connect");
    let mut server = None;
    let ok = sim.run_until(Duration::from_secs(10), |sim| {
        if server.is_none() {
            server = sim.hosts[1].accept(listener).expect("accept");
        }
        server.is_some() && sim.hosts[0].is_connected(client)
    });
    assert!(ok, "connection not established within 10 s of virtual time");
    (client, server.expect("accepted"))
}

pub fn resilient(sim: &Sim, host: usize, id: StreamId) -> bool {
    matches!(
        sim.hosts[host].mode(id),
        Some(StreamMode::Known(Mode::Resilient { .. }))
    )
}

pub fn legacy(sim: &Sim, host: usize, id: StreamId) -> bool {
    matches!(
        sim.hosts[host].mode(id),
        Some(StreamMode::Known(Mode::Legacy))
    )
}

/// Deterministic pseudo-random payload and SHA-256, under the names these
/// tests have always used.
#[allow(unused_imports)] // Not every test binary uses both.
pub use ti_testnet::payload::{data as payload, sha256 as sha};

/// One direction of a transfer: what to send and what was received.
pub struct Flowing {
    pub host: usize,
    pub id: StreamId,
    pub data: Vec<u8>,
    pub sent: usize,
    pub received: Vec<u8>,
    pub eof: bool,
    pub shutdown: bool,
}

impl Flowing {
    pub fn new(host: usize, id: StreamId, data: Vec<u8>) -> Flowing {
        Flowing {
            host,
            id,
            data,
            sent: 0,
            received: Vec::new(),
            eof: false,
            shutdown: false,
        }
    }

    /// Writes what fits, reads what arrived; shuts down when all is written.
    pub fn pump(&mut self, sim: &mut Sim) {
        let stack = &mut sim.hosts[self.host];
        if self.sent < self.data.len()
            && let Ok(n) = stack.write(self.id, &self.data[self.sent..])
        {
            self.sent += n;
        }
        if self.sent == self.data.len() && !self.shutdown {
            stack.shutdown_write(self.id).expect("shutdown");
            self.shutdown = true;
        }
        let mut buf = vec![0u8; 65536];
        for _ in 0..64 {
            match stack.read(self.id, &mut buf) {
                Ok(Some(0)) => {
                    self.eof = true;
                    break;
                }
                Ok(Some(n)) => self.received.extend_from_slice(&buf[..n]),
                Ok(None) | Err(_) => break,
            }
        }
    }
}

/// Runs a bidirectional transfer until both sides saw EOF, calling `each`
/// every step (to inject failures). Returns whether it completed.
pub fn transfer(
    sim: &mut Sim,
    a: &mut Flowing,
    b: &mut Flowing,
    limit: Duration,
    mut each: impl FnMut(&mut Sim),
) -> bool {
    sim.run_until(limit, |sim| {
        a.pump(sim);
        b.pump(sim);
        each(sim);
        a.eof && b.eof
    })
}

/// SHA-256 of both directions equal end to end.
pub fn assert_integrity(a: &Flowing, b: &Flowing) {
    assert_eq!(
        a.received.len(),
        b.data.len(),
        "bytes received by host {} ",
        a.host
    );
    assert_eq!(
        b.received.len(),
        a.data.len(),
        "bytes received by host {} ",
        b.host
    );
    assert_eq!(
        sha(&a.received),
        sha(&b.data),
        "host {} received corrupted data",
        a.host
    );
    assert_eq!(
        sha(&b.received),
        sha(&a.data),
        "host {} received corrupted data",
        b.host
    );
}

/// Logs to the test output when RUST_LOG is set.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The counters of stream `id` on host `host` (default if it is gone).
pub fn stats(sim: &Sim, host: usize, id: StreamId) -> ti_stack::StreamStats {
    sim.hosts[host]
        .stream_infos()
        .into_iter()
        .find(|i| i.id == id)
        .map(|i| i.stats)
        .unwrap_or_default()
}
