//! Benchmarks of the isolation boundary (`ti-stack`): what it costs per
//! packet, and what TI costs a whole transfer.
//!
//! - `segment`: `Segment::parse` of a full-sized data segment, and
//!   `add_flow_option` on a smoltcp SYN.
//! - `egress_1448`: one 1448-byte-payload packet (1500 bytes) written through
//!   smoltcp's `Device` trait into a device that discards it, bare and
//!   wrapped in `Boundary` with no rule (the steady-state fast path), with a
//!   rule for another connection (slow path: copy, parse, lookup, copy), and
//!   with a rule for this connection on a SYN (the option is written).
//! - `ingress_1448`: one packet taken from the device and handed to smoltcp,
//!   bare and the way the stack does it through the boundary
//!   (`receive_raw`, `Segment::parse`, `deliver`, `receive`).
//! - `bulk_16MiB`: 16 MiB over the in-memory link in virtual time
//!   (`ti_stack::sim::Sim`), TI on both hosts vs legacy on both; the ratio of
//!   the mean wall times is printed after the group.

use std::cell::Cell;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration as StdDuration;

use criterion::{Criterion, SamplingMode, Throughput};
use smoltcp::phy::{self, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    TcpTimestampRepr,
};
use ti_stack::boundary::Boundary;
use ti_stack::device::link::{LinkConfig, Network, Side};
use ti_stack::segment::{FourTuple, Segment, add_flow_option};
use ti_stack::sim::Sim;
use ti_stack::{Mode, StackConfig, StreamMode};
use tifid::{DEFAULT_KIND, FlowOptionRepr, Half, Seq48, Tifid};

const MTU: usize = 1500;
/// Payload of a full segment with timestamps at MTU 1500.
const PAYLOAD: usize = 1448;
const BULK: usize = 16 << 20;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const PORT: u16 = 7000;

fn client() -> SocketAddrV4 {
    SocketAddrV4::new(CLIENT, 50_000)
}

fn server() -> SocketAddrV4 {
    SocketAddrV4::new(SERVER, PORT)
}

/// A TCP/IPv4 packet as smoltcp emits it (timestamps on).
fn packet(control: TcpControl, payload: &[u8]) -> Vec<u8> {
    let syn = control == TcpControl::Syn;
    let tcp = TcpRepr {
        src_port: client().port(),
        dst_port: server().port(),
        control,
        seq_number: TcpSeqNumber(0x1000),
        ack_number: (!syn).then_some(TcpSeqNumber(0x2000)),
        window_len: 64_240,
        window_scale: syn.then_some(7),
        max_seg_size: syn.then_some(1460),
        sack_permitted: syn,
        sack_ranges: [None; 3],
        timestamp: Some(TcpTimestampRepr::new(0x1234_5678, 0x9abc)),
        payload,
    };
    let ip = Ipv4Repr {
        src_addr: CLIENT,
        dst_addr: SERVER,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]), &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut buf[ip.buffer_len()..]),
        &IpAddress::Ipv4(CLIENT),
        &IpAddress::Ipv4(SERVER),
        &caps,
    );
    buf
}

fn data_packet() -> Vec<u8> {
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| i as u8).collect();
    let p = packet(TcpControl::Psh, &payload);
    assert_eq!(p.len(), MTU);
    p
}

fn syn_option() -> FlowOptionRepr {
    FlowOptionRepr {
        tifid: Tifid::from_halves(Half::new(0x0a_4530), Half::ZERO),
        tiseq: Seq48::new(0x1d),
        tiack: Seq48::ZERO,
    }
}

fn segment_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("segment");
    let data = data_packet();
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("parse_1500B_data", |b| {
        b.iter(|| Segment::parse(black_box(&data), DEFAULT_KIND))
    });
    let syn = packet(TcpControl::Syn, &[]);
    let option = syn_option();
    let mut out = Vec::with_capacity(MTU);
    group.throughput(Throughput::Bytes(syn.len() as u64));
    group.bench_function("add_flow_option_syn", |b| {
        b.iter(|| {
            add_flow_option(black_box(&syn), &option, DEFAULT_KIND, MTU, &mut out)
                .expect("the option fits a smoltcp SYN")
        })
    });
    group.finish();
}

/// A packet buffer on a cache-line boundary, so that copies into and out of
/// it cost the same in every variant (a `Vec`'s alignment varies).
#[repr(align(64))]
struct Aligned {
    bytes: [u8; 2048],
    len: usize,
}

impl Aligned {
    fn new(packet: &[u8]) -> Box<Aligned> {
        let mut buf = Box::new(Aligned {
            bytes: [0; 2048],
            len: packet.len(),
        });
        buf.bytes[..packet.len()].copy_from_slice(packet);
        buf
    }

    fn get(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// A device that discards what it is given and always has the same packet
/// to receive. Its buffers are reused: it costs one copy per packet.
struct Null {
    rx: Box<Aligned>,
    tx: Box<Aligned>,
}

struct NullRx<'a>(&'a [u8]);

struct NullTx<'a>(&'a mut Aligned);

impl phy::RxToken for NullRx<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.0)
    }
}

impl phy::TxToken for NullTx<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let len = len.min(self.0.bytes.len());
        self.0.len = len;
        let result = f(&mut self.0.bytes[..len]);
        black_box(self.0.get());
        result
    }
}

impl Device for Null {
    type RxToken<'a> = NullRx<'a>;
    type TxToken<'a> = NullTx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(NullRx<'_>, NullTx<'_>)> {
        Some((NullRx(self.rx.get()), NullTx(&mut self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<NullTx<'_>> {
        Some(NullTx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        caps
    }
}

fn null(rx: &[u8]) -> Null {
    Null {
        rx: Aligned::new(rx),
        tx: Aligned::new(&[]),
    }
}

/// Sends `packet` through the `Device` trait, as smoltcp's interface does:
/// take a token, let it fill the buffer.
fn send<D: Device>(device: &mut D, packet: &[u8]) {
    let token = device
        .transmit(Instant::ZERO)
        .expect("the device always has room");
    phy::TxToken::consume(token, packet.len(), |buf| buf.copy_from_slice(packet));
}

fn egress_benches(c: &mut Criterion) {
    let data = Aligned::new(&data_packet());
    let data = data.get();
    let syn = Aligned::new(&packet(TcpControl::Syn, &[]));
    let syn = syn.get();
    let tuple = Segment::parse(data, DEFAULT_KIND)
        .expect("data segment parses")
        .tuple_at_sender();
    let other = FourTuple {
        local: SocketAddrV4::new(CLIENT, 50_001).into(),
        ..tuple
    };

    let mut group = c.benchmark_group("egress_1448");
    group.throughput(Throughput::Elements(1));
    let mut bare = null(&[]);
    group.bench_function("bare_device", |b| b.iter(|| send(&mut bare, data)));
    let mut off = Boundary::new(null(&[]), DEFAULT_KIND);
    group.bench_function("boundary_no_rule", |b| b.iter(|| send(&mut off, data)));
    let mut slow = Boundary::new(null(&[]), DEFAULT_KIND);
    slow.attach_option(other, syn_option());
    group.bench_function("boundary_rule_other_tuple", |b| {
        b.iter(|| send(&mut slow, data))
    });
    let mut hit = Boundary::new(null(&[]), DEFAULT_KIND);
    hit.attach_option(tuple, syn_option());
    group.bench_function("boundary_rule_hit_syn", |b| b.iter(|| send(&mut hit, syn)));
    group.finish();
    assert_eq!(slow.stats().options_added, 0);
    assert!(hit.stats().options_added > 0 && hit.stats().options_not_fitting == 0);
}

fn ingress_benches(c: &mut Criterion) {
    let data = data_packet();
    let mut group = c.benchmark_group("ingress_1448");
    group.throughput(Throughput::Elements(1));
    let mut bare = null(&data);
    group.bench_function("bare_device", |b| {
        b.iter(|| {
            let (rx, _tx) = bare.receive(Instant::ZERO).expect("always a packet");
            phy::RxToken::consume(rx, |p| black_box(p.len()))
        })
    });
    let mut wrapped = Boundary::new(null(&data), DEFAULT_KIND);
    group.bench_function("boundary_inspect_deliver", |b| {
        b.iter(|| {
            let packet = wrapped.receive_raw(Instant::ZERO).expect("always a packet");
            black_box(Segment::parse(&packet, DEFAULT_KIND));
            wrapped.deliver(packet);
            let (rx, _tx) = wrapped.receive(Instant::ZERO).expect("just delivered");
            phy::RxToken::consume(rx, |p| black_box(p.len()))
        })
    });
    group.finish();
}

/// Moves `data` from a client to a server over a fresh simulation, TI on
/// both or off on both. Panics if it does not complete.
fn bulk(ti: bool, data: &[u8]) {
    let net = Network::new(LinkConfig {
        one_way_delay: Duration::from_millis(1),
        seed: 1,
        ..LinkConfig::default()
    });
    let mut sim = Sim::new(net);
    for (side, address, seed) in [(Side::A, CLIENT, 1), (Side::B, SERVER, 2)] {
        let mut config = StackConfig::new(address);
        config.prefix_len = 8;
        config.seed = Some(seed);
        config.ti_enabled = ti;
        sim.add_host(side, config);
    }
    let listener = sim.hosts[1].listen(PORT).expect("listen");
    let now = sim.now();
    let c = sim.hosts[0].connect(now, server()).expect("connect");
    let mut s = None;
    let mut sent = 0;
    let mut received = 0;
    let mut buf = vec![0u8; 1 << 16];
    let done = sim.run_until(Duration::from_secs(600), |sim| {
        if s.is_none() {
            s = sim.hosts[1].accept(listener).expect("accept");
        }
        if sent < data.len() {
            sent += sim.hosts[0].write(c, &data[sent..]).unwrap_or(0);
        }
        if let Some(s) = s {
            while let Ok(Some(n @ 1..)) = sim.hosts[1].read(s, &mut buf) {
                received += n;
            }
        }
        received == data.len()
    });
    assert!(
        done,
        "bulk transfer incomplete: {received} of {}",
        data.len()
    );
    let resilient = matches!(
        sim.hosts[0].mode(c),
        Some(StreamMode::Known(Mode::Resilient { .. }))
    );
    assert_eq!(resilient, ti, "client mode {:?}", sim.hosts[0].mode(c));
}

fn bulk_benches(c: &mut Criterion) {
    let data: Vec<u8> = (0..BULK).map(|i| (i * 7 + i / 4096) as u8).collect();
    // (total wall time, iterations) per mode, over every iteration criterion runs.
    let ti_time = Cell::new((StdDuration::ZERO, 0u32));
    let legacy_time = Cell::new((StdDuration::ZERO, 0u32));
    let mut group = c.benchmark_group("bulk_16MiB");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(StdDuration::from_secs(5))
        .warm_up_time(StdDuration::from_millis(500))
        .throughput(Throughput::Bytes(BULK as u64));
    for (name, ti, acc) in [("ti", true, &ti_time), ("legacy", false, &legacy_time)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    bulk(ti, &data);
                }
                let elapsed = start.elapsed();
                let (total, n) = acc.get();
                acc.set((total + elapsed, n + iters as u32));
                elapsed
            })
        });
    }
    group.finish();
    let mean = |acc: &Cell<(StdDuration, u32)>| {
        let (total, n) = acc.get();
        total.as_secs_f64() / f64::from(n.max(1))
    };
    let (ti, legacy) = (mean(&ti_time), mean(&legacy_time));
    println!(
        "bulk_16MiB: TI {:.1} ms, legacy {:.1} ms per transfer (mean of all runs): TI/legacy = {:.3}",
        ti * 1e3,
        legacy * 1e3,
        ti / legacy
    );
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    segment_benches(&mut criterion);
    egress_benches(&mut criterion);
    ingress_benches(&mut criterion);
    bulk_benches(&mut criterion);
    criterion.final_summary();
}
