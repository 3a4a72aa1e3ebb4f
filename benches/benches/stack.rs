//! Benchmarks of the whole stack against plain smoltcp, in virtual time
//! over the in-memory link (`ti_stack::device::link`), so only CPU is
//! measured:
//!
//! - `handshake`: the CPU cost of one connection set-up (connect until both
//!   ends are established and the server accepted), our stack with TI on
//!   both hosts vs TI off on both, and plain smoltcp (two `Interface`s; the
//!   handshake creates a listening and a connecting socket with the same
//!   1 MiB buffers, as our stack creates one per connect and per incoming
//!   SYN) for reference. Building the hosts is not timed.
//! - `bulk_16MiB`: 16 MiB from client to server over a link with 1 ms
//!   one-way delay: our stack (boundary, TI buffers, flow accounting) with
//!   TI on and off, vs the same smoltcp configuration without our layer (a
//!   plain `Interface` and a tcp socket per host, same socket settings, same
//!   link, same stepping). The ratios of the mean wall times are printed
//!   after the group.

use std::cell::Cell;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration as StdDuration;

use criterion::{BatchSize, Criterion, SamplingMode, Throughput};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use ti_stack::device::link::{LinkConfig, LinkDevice, Network, Side};
use ti_stack::sim::Sim;
use ti_stack::{ListenerId, Mode, StackConfig, StreamId, StreamMode};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const PORT: u16 = 7000;
const BULK: usize = 16 << 20;
/// Largest virtual-time step of the plain-smoltcp loop (as `Sim`'s).
const MAX_JUMP: Duration = Duration::from_millis(100);

fn link() -> LinkConfig {
    LinkConfig {
        one_way_delay: Duration::from_millis(1),
        seed: 1,
        ..LinkConfig::default()
    }
}

// ------------------------------------------------------------ our stack

/// Two hosts of our stack, TI on or off, the server listening.
fn our_pair(ti: bool) -> (Sim, ListenerId) {
    let mut sim = Sim::new(Network::new(link()));
    for (side, address, seed) in [(Side::A, CLIENT, 1), (Side::B, SERVER, 2)] {
        let mut config = StackConfig::new(address);
        config.prefix_len = 8;
        config.seed = Some(seed);
        config.ti_enabled = ti;
        sim.add_host(side, config);
    }
    let listener = sim.hosts[1].listen(PORT).expect("listen");
    (sim, listener)
}

/// Connects and runs until both ends are up; returns both streams.
fn our_handshake(sim: &mut Sim, listener: ListenerId, ti: bool) -> (StreamId, StreamId) {
    let now = sim.now();
    let c = sim.hosts[0]
        .connect(now, SocketAddrV4::new(SERVER, PORT))
        .expect("connect");
    let mut s = None;
    let done = sim.run_until(Duration::from_secs(10), |sim| {
        if s.is_none() {
            s = sim.hosts[1].accept(listener).expect("accept");
        }
        s.is_some() && sim.hosts[0].is_connected(c)
    });
    assert!(done, "handshake incomplete");
    let resilient = matches!(
        sim.hosts[0].mode(c),
        Some(StreamMode::Known(Mode::Resilient { .. }))
    );
    assert_eq!(resilient, ti);
    (c, s.expect("accepted"))
}

fn our_bulk(ti: bool, data: &[u8]) {
    let (mut sim, listener) = our_pair(ti);
    let (c, s) = our_handshake(&mut sim, listener, ti);
    let mut sent = 0;
    let mut received = 0;
    let mut buf = vec![0u8; 1 << 16];
    let done = sim.run_until(Duration::from_secs(600), |sim| {
        if sent < data.len() {
            sent += sim.hosts[0].write(c, &data[sent..]).unwrap_or(0);
        }
        while let Ok(Some(n @ 1..)) = sim.hosts[1].read(s, &mut buf) {
            received += n;
        }
        received == data.len()
    });
    assert!(done, "bulk incomplete: {received} of {}", data.len());
}

// --------------------------------------------------------- plain smoltcp

fn tsval() -> u32 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u32
}

/// A socket configured as `ti_stack::Stack` configures its own.
fn plain_socket() -> tcp::Socket<'static> {
    let size = StackConfig::new(CLIENT).socket_buffer;
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; size]),
        tcp::SocketBuffer::new(vec![0u8; size]),
    );
    socket.set_congestion_control(tcp::CongestionControl::Cubic);
    socket.set_tsval_generator(Some(tsval));
    socket.set_nagle_enabled(false);
    socket.set_ack_delay(None);
    socket
}

struct PlainHost {
    iface: Interface,
    device: LinkDevice,
    sockets: SocketSet<'static>,
    /// Created by the handshake, as a connect or an incoming SYN creates
    /// one in our stack.
    socket: Option<SocketHandle>,
}

impl PlainHost {
    fn new(net: &Network, side: Side, address: Ipv4Addr, now: Instant) -> PlainHost {
        let mut device = net.endpoint(side, &[address]);
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut device, now);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(address), 8));
        });
        PlainHost {
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            socket: None,
        }
    }

    fn tcp(&mut self) -> &mut tcp::Socket<'static> {
        let handle = *self
            .socket
            .get_or_insert_with(|| self.sockets.add(plain_socket()));
        self.sockets.get_mut::<tcp::Socket>(handle)
    }
}

/// Two plain smoltcp hosts on the link, in virtual time.
struct PlainPair {
    net: Network,
    hosts: [PlainHost; 2],
    now: Instant,
}

impl PlainPair {
    fn new() -> PlainPair {
        let net = Network::new(link());
        let now = Instant::from_millis(0);
        let client = PlainHost::new(&net, Side::A, CLIENT, now);
        let server = PlainHost::new(&net, Side::B, SERVER, now);
        PlainPair {
            net,
            hosts: [client, server],
            now,
        }
    }

    /// Polls both hosts, then jumps to the next deadline (as `Sim::step`).
    fn step(&mut self) {
        let now = self.now;
        let mut next = now + MAX_JUMP;
        for h in &mut self.hosts {
            h.iface.poll(now, &mut h.device, &mut h.sockets);
            if let Some(d) = h.iface.poll_delay(now, &h.sockets) {
                next = next.min(now + d);
            }
        }
        if let Some(arrival) = self.net.next_event() {
            next = next.min(arrival);
        }
        self.now = next.max(now + Duration::from_micros(1));
    }

    fn handshake(&mut self) {
        self.hosts[1].tcp().listen(PORT).expect("listen");
        let client = &mut self.hosts[0];
        let handle = client.sockets.add(plain_socket());
        client.socket = Some(handle);
        let cx = client.iface.context();
        client
            .sockets
            .get_mut::<tcp::Socket>(handle)
            .connect(cx, IpEndpoint::new(IpAddress::Ipv4(SERVER), PORT), 50_000)
            .expect("connect");
        for _ in 0..10_000 {
            if self.hosts.iter_mut().all(|h| h.tcp().may_send()) {
                return;
            }
            self.step();
        }
        panic!("plain handshake incomplete");
    }

    fn bulk(&mut self, data: &[u8]) {
        self.handshake();
        let mut sent = 0;
        let mut received = 0;
        let mut buf = vec![0u8; 1 << 16];
        let deadline = self.now + Duration::from_secs(600);
        while received < data.len() {
            assert!(self.now < deadline, "plain bulk incomplete");
            if sent < data.len() {
                sent += self.hosts[0].tcp().send_slice(&data[sent..]).unwrap_or(0);
            }
            self.step();
            let server = self.hosts[1].tcp();
            while let Ok(n @ 1..) = server.recv_slice(&mut buf) {
                received += n;
            }
        }
    }
}

// ----------------------------------------------------------------- groups

fn handshake_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    for (name, ti) in [("ti", true), ("legacy", false)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || our_pair(ti),
                |(mut sim, listener)| {
                    black_box(our_handshake(&mut sim, listener, ti));
                    sim
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.bench_function("plain_smoltcp", |b| {
        b.iter_batched(
            PlainPair::new,
            |mut pair| {
                pair.handshake();
                pair
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn bulk_benches(c: &mut Criterion) {
    let data: Vec<u8> = (0..BULK).map(|i| (i * 7 + i / 4096) as u8).collect();
    let times: [Cell<(StdDuration, u32)>; 3] = Default::default();
    let mut group = c.benchmark_group("bulk_16MiB");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(StdDuration::from_secs(5))
        .warm_up_time(StdDuration::from_millis(500))
        .throughput(Throughput::Bytes(BULK as u64));
    for (i, name) in ["stack_ti", "stack_legacy", "plain_smoltcp"]
        .into_iter()
        .enumerate()
    {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    match i {
                        0 => our_bulk(true, &data),
                        1 => our_bulk(false, &data),
                        _ => PlainPair::new().bulk(&data),
                    }
                }
                let elapsed = start.elapsed();
                let (total, n) = times[i].get();
                times[i].set((total + elapsed, n + iters as u32));
                elapsed
            })
        });
    }
    group.finish();
    let mean = |i: usize| {
        let (total, n) = times[i].get();
        total.as_secs_f64() / f64::from(n.max(1))
    };
    if times.iter().any(|t| t.get().1 == 0) {
        return; // a filter left a mode out
    }
    let (ti, legacy, plain) = (mean(0), mean(1), mean(2));
    println!(
        "bulk_16MiB mean wall time: stack TI {:.1} ms, stack legacy {:.1} ms, plain smoltcp {:.1} ms; \
         throughput ratios: stack(legacy)/plain = {:.3}, stack(TI)/plain = {:.3}, TI/legacy = {:.3}",
        ti * 1e3,
        legacy * 1e3,
        plain * 1e3,
        plain / legacy,
        plain / ti,
        legacy / ti
    );
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    handshake_benches(&mut criterion);
    bulk_benches(&mut criterion);
    criterion.final_summary();
}
