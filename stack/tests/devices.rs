//! Real-kernel tests of the devices and the namespace harness: `TunDevice`
//! against stock Linux TCP, the `Delay` line and the `PcapTap`, each test in
//! namespaces of its own (deleted on drop, also when the test fails).
//!
//! These tests need root (or CAP_NET_ADMIN + CAP_SYS_ADMIN), iproute2 and
//! /dev/net/tun; without them they FAIL with what is missing, never pass
//! silently. No address is ever set in the root namespace.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration as StdDuration;

use pcap_file::DataLink;
use pcap_file::pcap::PcapReader;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use ti_stack::device::delay::Delay;
use ti_stack::device::pcap_tap::PcapTap;
use ti_stack::device::tun::TunDevice;
use ti_testnet::netns::{self, NetNs};
use ti_testnet::payload::{random_bytes, sha256};
use ti_testnet::topology::{self, TunSpec};

/// Upper bound on any test's network phase; no loop runs longer.
const DEADLINE: StdDuration = StdDuration::from_secs(30);
/// Upper bound on driver-loop iterations.
const MAX_ITERATIONS: usize = 2_000_000;
/// Kernel side of the TUN.
const KERNEL_ADDR: [u8; 4] = [10, 7, 0, 1];
/// Our smoltcp side.
const STACK_ADDR: [u8; 4] = [10, 7, 0, 2];
/// Port of the kernel's listener (the namespace is private, any port works).
const PORT: u16 = 5001;

fn require_privileges() {
    if let Err(e) = netns::check_privileges() {
        panic!("{e}");
    }
}

/// Milliseconds since the test started, as smoltcp time (monotonic).
struct Clock(std::time::Instant);

impl Clock {
    fn start() -> Self {
        Self(std::time::Instant::now())
    }

    fn now(&self) -> Instant {
        Instant::from_micros(i64::try_from(self.0.elapsed().as_micros()).unwrap_or(i64::MAX))
    }

    fn expired(&self) -> bool {
        self.0.elapsed() > DEADLINE
    }
}

/// A namespace with TUN "ti0": kernel side 10.7.0.1/24, up, IPv6 off (so the
/// kernel sends nothing on its own).
fn tun_namespace(prefix: &str) -> (NetNs, TunDevice) {
    let ns = NetNs::create(prefix).expect("create namespace");
    ns.disable_ipv6().expect("disable IPv6");
    let tun = topology::open_tun(&ns, &TunSpec::new("ti0", KERNEL_ADDR.into()))
        .expect("open TUN in namespace");
    assert_eq!(tun.name(), "ti0");
    assert_eq!(tun.mtu(), 1500);
    (ns, tun)
}

/// What the kernel's side of a transfer saw.
struct PeerReport {
    received_sha: [u8; 32],
    received_len: usize,
}

/// Linux TCP: a listener at 10.7.0.1:PORT inside `ns` that accepts one
/// connection, reads until EOF while writing `reply` concurrently, then
/// shuts down its sending side.
fn kernel_peer(ns: &NetNs, reply: Vec<u8>) -> JoinHandle<PeerReport> {
    let listener = ns
        .enter(|| TcpListener::bind((std::net::Ipv4Addr::from(KERNEL_ADDR), PORT)))
        .expect("enter namespace")
        .expect("bind listener in namespace");
    std::thread::spawn(move || {
        let stream = accept_bounded(&listener);
        stream
            .set_read_timeout(Some(DEADLINE))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(DEADLINE))
            .expect("write timeout");
        let mut writer = stream.try_clone().expect("clone stream");
        let sender = std::thread::spawn(move || {
            writer.write_all(&reply).expect("kernel write");
            writer
                .shutdown(std::net::Shutdown::Write)
                .expect("kernel shutdown");
        });
        let mut received = Vec::new();
        (&stream).read_to_end(&mut received).expect("kernel read");
        sender.join().expect("kernel sender");
        PeerReport {
            received_sha: sha256(&received),
            received_len: received.len(),
        }
    })
}

/// Accepts one connection, waiting at most [`DEADLINE`].
fn accept_bounded(listener: &TcpListener) -> TcpStream {
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let started = std::time::Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking stream");
                return stream;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(started.elapsed() < DEADLINE, "no connection arrived");
                std::thread::sleep(StdDuration::from_millis(2));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// What our side of a transfer saw.
struct Transfer {
    received: Vec<u8>,
    /// smoltcp time from `connect` to Established.
    connect_time: Duration,
    peer: PeerReport,
}

/// Runs a smoltcp interface (10.7.0.2/24, Cubic, 1 MiB buffers) on `device`:
/// connects to the kernel peer, sends `data`, closes, and reads until the
/// peer's FIN. `wait` sleeps until the device may have input (or the timeout);
/// `next_release` is the delay line's next deadline, if any. Bounded in time
/// and iterations.
fn drive<D: Device>(
    device: &mut D,
    wait: impl Fn(&D, StdDuration),
    next_release: impl Fn(&D) -> Option<Instant>,
    peer: JoinHandle<PeerReport>,
    data: &[u8],
    local_port: u16,
) -> Transfer {
    let clock = Clock::start();
    let mut config = Config::new(HardwareAddress::Ip);
    config.random_seed = u64::from(local_port);
    let mut iface = Interface::new(config, device, clock.now());
    iface.update_ip_addrs(|addrs| {
        addrs
            .push(IpCidr::new(
                IpAddress::from(std::net::Ipv4Addr::from(STACK_ADDR)),
                24,
            ))
            .expect("room for one address");
    });

    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 1 << 20]),
        tcp::SocketBuffer::new(vec![0; 1 << 20]),
    );
    socket.set_congestion_control(tcp::CongestionControl::Cubic);
    let mut sockets = SocketSet::new(Vec::new());
    let handle = sockets.add(socket);
    let connect_at = clock.now();
    let remote = (IpAddress::from(std::net::Ipv4Addr::from(KERNEL_ADDR)), PORT);
    sockets
        .get_mut::<tcp::Socket>(handle)
        .connect(iface.context(), remote, local_port)
        .expect("connect");

    let mut established_at = None;
    let mut sent = 0;
    let mut closed = false;
    let mut received = Vec::new();
    for _ in 0..MAX_ITERATIONS {
        assert!(
            !clock.expired(),
            "transfer did not finish within {DEADLINE:?}"
        );
        let now = clock.now();
        iface.poll(now, device, &mut sockets);
        let socket = sockets.get_mut::<tcp::Socket>(handle);
        if established_at.is_none() && socket.state() == tcp::State::Established {
            established_at = Some(now);
        }
        if socket.can_send() && sent < data.len() {
            sent += socket.send_slice(&data[sent..]).expect("send");
        }
        if sent == data.len() && !closed && established_at.is_some() {
            socket.close();
            closed = true;
        }
        while socket.can_recv() {
            socket
                .recv(|buf| {
                    received.extend_from_slice(buf);
                    (buf.len(), ())
                })
                .expect("recv");
        }
        let peer_done = !socket.may_recv() && established_at.is_some();
        if peer_done && closed && socket.send_queue() == 0 && peer.is_finished() {
            break;
        }
        if socket.state() == tcp::State::Closed {
            // Nothing more can happen on this socket (a reset, or the close
            // completed before the peer thread ended): the checks decide.
            break;
        }
        let mut timeout = iface
            .poll_delay(now, &sockets)
            .map_or(StdDuration::from_millis(10), StdDuration::from)
            .min(StdDuration::from_millis(10));
        if let Some(at) = next_release(device) {
            let until = if at > now { at - now } else { Duration::ZERO };
            timeout = timeout.min(until.into());
        }
        if !timeout.is_zero() {
            wait(device, timeout);
        }
    }
    let peer = peer.join().expect("kernel peer");
    let established_at = established_at.expect("connection was established");
    Transfer {
        received,
        connect_time: established_at - connect_at,
        peer,
    }
}

/// Checks both directions byte-exact.
fn assert_exchange(t: &Transfer, sent: &[u8], reply: &[u8]) {
    assert_eq!(t.peer.received_len, sent.len(), "kernel got all our bytes");
    assert_eq!(
        t.peer.received_sha,
        sha256(sent),
        "kernel got our bytes exactly"
    );
    assert_eq!(
        t.received.len(),
        reply.len(),
        "we got all the kernel's bytes"
    );
    assert_eq!(
        sha256(&t.received),
        sha256(reply),
        "we got the kernel's bytes exactly"
    );
}

/// A temporary file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> Self {
        Self(std::env::temp_dir().join(format!("ti-devices-{}-{tag}.pcap", std::process::id())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn devices_are_send() {
    fn assert_send<T: Send>() {}
    assert_send::<TunDevice>();
    assert_send::<Delay<TunDevice>>();
    assert_send::<PcapTap<Delay<TunDevice>>>();
    assert_send::<NetNs>();
}

#[test]
fn tun_smoltcp_interoperates_with_linux_tcp() {
    require_privileges();
    let (ns, mut tun) = tun_namespace("titun");
    let data = random_bytes(1, 1 << 20);
    let reply = random_bytes(2, 1 << 20);
    let peer = kernel_peer(&ns, reply.clone());
    let transfer = drive(
        &mut tun,
        |d, t| {
            d.wait(Some(t)).expect("poll");
        },
        |_| None,
        peer,
        &data,
        49_152,
    );
    assert_exchange(&transfer, &data, &reply);
    let stats = tun.stats();
    assert!(stats.rx_packets > 0 && stats.tx_packets > 0, "{stats:?}");
    assert_eq!(stats.tx_errors + stats.rx_errors, 0, "{stats:?}");
    eprintln!("tun stats: {stats:?}");
    if let Ok(out) = ns.ip(&["-s", "link", "show", "ti0"]) {
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn tun_wait_times_out_without_traffic() {
    require_privileges();
    let (_ns, tun) = tun_namespace("tiwait");
    let started = std::time::Instant::now();
    let readable = tun.wait(Some(StdDuration::from_millis(20))).expect("poll");
    assert!(!readable, "nothing was sent to the TUN");
    assert!(started.elapsed() >= StdDuration::from_millis(20));
}

#[test]
fn delay_egress_delays_connect_and_keeps_data_exact() {
    require_privileges();
    let (ns, tun) = tun_namespace("tidelay");
    let egress = Duration::from_millis(20);
    let mut dev = Delay::new(tun, egress, Duration::ZERO);
    let data = random_bytes(3, 1 << 20);
    let reply = random_bytes(4, 1 << 20);
    let peer = kernel_peer(&ns, reply.clone());
    let transfer = drive(
        &mut dev,
        |d, t| {
            d.inner().wait(Some(t)).expect("poll");
        },
        Delay::next_release,
        peer,
        &data,
        49_153,
    );
    assert_exchange(&transfer, &data, &reply);
    assert!(
        transfer.connect_time >= egress,
        "the SYN was held {egress}, yet connect took {}",
        transfer.connect_time
    );
    assert_eq!(dev.held(), (0, 0), "nothing left in the line");
}

#[test]
fn delay_ingress_delays_connect() {
    require_privileges();
    let (ns, tun) = tun_namespace("tidelin");
    let ingress = Duration::from_millis(15);
    let mut dev = Delay::new(tun, Duration::ZERO, ingress);
    let data = random_bytes(5, 64 << 10);
    let reply = random_bytes(6, 64 << 10);
    let peer = kernel_peer(&ns, reply.clone());
    let transfer = drive(
        &mut dev,
        |d, t| {
            d.inner().wait(Some(t)).expect("poll");
        },
        Delay::next_release,
        peer,
        &data,
        49_154,
    );
    assert_exchange(&transfer, &data, &reply);
    assert!(
        transfer.connect_time >= ingress,
        "connect took {}",
        transfer.connect_time
    );
}

#[test]
fn pcap_tap_captures_raw_ip_starting_with_our_syn() {
    require_privileges();
    let (ns, tun) = tun_namespace("tipcap");
    let file = TempFile::new("tap");
    let egress = Duration::from_millis(20);
    let mut dev =
        PcapTap::create(Delay::new(tun, egress, Duration::ZERO), &file.0).expect("create pcap");
    let data = random_bytes(7, 256 << 10);
    let reply = random_bytes(8, 256 << 10);
    let peer = kernel_peer(&ns, reply.clone());
    let local_port = 49_155;
    let transfer = drive(
        &mut dev,
        |d, t| {
            d.inner().inner().wait(Some(t)).expect("poll");
        },
        |d| d.inner().next_release(),
        peer,
        &data,
        local_port,
    );
    assert_exchange(&transfer, &data, &reply);
    assert!(dev.is_capturing());
    let recorded = dev.packets();
    drop(dev); // flushes

    let mut reader =
        PcapReader::new(std::fs::File::open(&file.0).expect("open pcap")).expect("pcap header");
    assert_eq!(reader.header().datalink, DataLink::RAW);
    let mut count = 0u64;
    let mut last_ts = StdDuration::ZERO;
    while let Some(packet) = reader.next_packet() {
        let packet = packet.expect("well-formed record");
        assert!(packet.timestamp >= last_ts, "timestamps are monotonic");
        last_ts = packet.timestamp;
        if count == 0 {
            let sliced = etherparse::SlicedPacket::from_ip(&packet.data).expect("IP packet");
            let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else {
                panic!("first packet is not IPv4");
            };
            assert_eq!(ip.header().source_addr().octets(), STACK_ADDR);
            assert_eq!(ip.header().destination_addr().octets(), KERNEL_ADDR);
            let Some(etherparse::TransportSlice::Tcp(tcp)) = sliced.transport else {
                panic!("first packet is not TCP");
            };
            assert!(tcp.syn() && !tcp.ack(), "first packet is our SYN");
            assert_eq!(tcp.source_port(), local_port);
            assert_eq!(tcp.destination_port(), PORT);
        }
        count += 1;
    }
    assert!(count > 0);
    assert_eq!(count, recorded, "every recorded packet is in the file");
}
