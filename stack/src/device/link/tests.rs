//! Tests of the network as a whole: loss, routing, addresses, capture,
//! and smoltcp hosts talking through NAT, firewall, stripping, loss and
//! rate.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use super::testutil::{CLIENT, PUBLIC, SERVER, client, data, inspect, ms, pair, server};
use super::*;

fn loss_pattern(seed: u64) -> Vec<bool> {
    let (_net, a, _b) = pair(LinkConfig {
        loss: 0.3,
        seed,
        ..LinkConfig::default()
    });
    let pkt = data(client(1000), server(80), 1, b"x");
    (0..200)
        .map(|i| a.send_raw(ms(i), &pkt).arrival().is_some())
        .collect()
}

#[test]
fn loss_is_deterministic_per_seed() {
    let first = loss_pattern(7);
    assert_eq!(first, loss_pattern(7));
    assert_ne!(first, loss_pattern(8));
    let lost = first.iter().filter(|ok| !**ok).count();
    assert!((30..90).contains(&lost), "lost {lost} of 200 at p=0.3");
}

#[test]
fn oversize_and_unknown_destination_are_dropped() {
    let (net, a, _b) = pair(LinkConfig {
        mtu: 100,
        ..LinkConfig::default()
    });
    let big = data(client(1000), server(80), 1, &[0; 200]);
    assert_eq!(a.send_raw(ms(0), &big), Fate::Dropped(DropReason::Oversize));
    let stray = data(
        client(1000),
        SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 80),
        1,
        b"",
    );
    assert_eq!(
        a.send_raw(ms(0), &stray),
        Fate::Dropped(DropReason::NoRoute)
    );
    // Side A does not reach side A.
    let sideways = data(client(1000), client(1001), 1, b"");
    assert_eq!(
        a.send_raw(ms(0), &sideways),
        Fate::Dropped(DropReason::NoRoute)
    );
    assert_eq!(net.stats().total_dropped(), 3);
}

#[test]
fn address_change_redirects_delivery() {
    let (net, a, b) = pair(LinkConfig::default());
    let b2 = net.endpoint(Side::B, &[Ipv4Addr::new(10, 0, 0, 3)]);
    let pkt = data(client(1000), server(80), 1, b"x");
    a.send_raw(ms(0), &pkt);
    // In flight when the address moves to another endpoint: lost.
    b.set_addresses(&[Ipv4Addr::new(10, 0, 0, 4)]);
    assert_eq!(b.recv_raw(ms(100)), None);
    assert_eq!(net.stats().dropped(DropReason::NoRoute), 1);
    b2.set_addresses(&[Ipv4Addr::new(10, 0, 0, 3), SERVER]);
    assert!(a.send_raw(ms(1), &pkt).arrival().is_some());
    assert_eq!(b2.recv_raw(ms(100)), Some(pkt));
    assert_eq!(b2.addresses(), vec![Ipv4Addr::new(10, 0, 0, 3), SERVER]);
    assert_eq!(b2.id().index(), 2);
}

#[test]
fn capture_records_both_points() {
    let (net, a, b) = pair(LinkConfig::default());
    net.enable_nat(PUBLIC);
    net.set_capture(true);
    net.set_capture_entering(true);
    let pkt = data(client(1000), server(80), 1, b"x");
    a.send_raw(ms(5), &pkt);
    let got = b.recv_raw(ms(100)).expect("delivered");
    let cap = net.take_captured();
    assert_eq!(cap.len(), 2);
    assert_eq!(
        (cap[0].point, &cap[0].bytes),
        (CapturePoint::Entering, &pkt)
    );
    assert_eq!((cap[1].point, &cap[1].bytes), (CapturePoint::Leaving, &got));
    assert!(
        cap.iter()
            .all(|c| c.time == ms(5) && c.direction == Direction::AtoB)
    );
    assert!(net.captured().is_empty());
}

// -- smoltcp end to end --------------------------------------------------

struct Host {
    dev: LinkDevice,
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
}

impl Host {
    fn new(dev: LinkDevice, addr: Ipv4Addr, seed: u64) -> Host {
        let mut dev = dev;
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut dev, Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::Ipv4(addr), 24))
                .expect("room for one address");
        });
        let socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        );
        let mut sockets = SocketSet::new(Vec::new());
        let handle = sockets.add(socket);
        Host {
            dev,
            iface,
            sockets,
            handle,
        }
    }

    fn poll(&mut self, now: Instant) {
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
    }

    fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        self.iface.poll_at(now, &self.sockets)
    }

    fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.handle)
    }
}

/// Client on side A, server on side B, connected through `net`.
fn hosts(net: &Network) -> (Host, Host) {
    let mut a = Host::new(net.endpoint(Side::A, &[CLIENT]), CLIENT, 1);
    let mut b = Host::new(net.endpoint(Side::B, &[SERVER]), SERVER, 2);
    b.socket().listen(80).expect("listen");
    let cx = a.iface.context();
    a.sockets
        .get_mut::<tcp::Socket>(a.handle)
        .connect(cx, (IpAddress::Ipv4(SERVER), 80), 49152)
        .expect("connect");
    (a, b)
}

/// Polls both hosts, lets `app` act, then jumps to the next event.
/// Returns the time at which `app` returned true, or None.
fn run(
    net: &Network,
    a: &mut Host,
    b: &mut Host,
    start: Instant,
    steps: usize,
    mut app: impl FnMut(Instant, &mut Host, &mut Host) -> bool,
) -> Option<Instant> {
    let mut now = start;
    for _ in 0..steps {
        a.poll(now);
        b.poll(now);
        if app(now, a, b) {
            return Some(now);
        }
        a.poll(now);
        b.poll(now);
        let next = [net.next_event(), a.poll_at(now), b.poll_at(now)]
            .into_iter()
            .flatten()
            .min();
        now = next
            .filter(|t| *t > now)
            .unwrap_or(now + Duration::from_millis(1));
    }
    None
}

#[test]
fn smoltcp_pair_transfers_over_the_link() {
    let net = Network::new(LinkConfig {
        one_way_delay: Duration::from_millis(20),
        seed: 3,
        ..LinkConfig::default()
    });
    check_transfer(&net, 30_000, 20_000);
    assert_eq!(net.stats().total_dropped(), 0);
}

#[test]
fn smoltcp_pair_survives_nat_firewall_stripping_loss_and_rate() {
    let net = Network::new(LinkConfig {
        one_way_delay: Duration::from_millis(5),
        loss: 0.05,
        seed: 11,
        rate_bytes_per_sec: Some(1_000_000),
        queue_limit: 20,
        ..LinkConfig::default()
    });
    net.enable_nat(PUBLIC);
    net.enable_firewall();
    net.strip_option(Direction::AtoB, 2, true); // MSS
    net.strip_option(Direction::BtoA, 4, true); // SACK permitted
    net.set_capture(true);
    let (_, mut b) = check_transfer(&net, 50_000, 200_000);
    assert_eq!(
        b.socket().remote_endpoint(),
        Some((IpAddress::Ipv4(PUBLIC), NAT_FIRST_PORT).into())
    );
    let stats = net.stats();
    assert!(stats.dropped(DropReason::Loss) > 0);
    assert!(stats.options_stripped >= 2, "{stats:?}");
    assert!(stats.nat_translated > 10);
    // Every packet that left the middlebox has valid checksums.
    for c in net.captured() {
        assert!(inspect(&c.bytes).2);
    }
}

#[test]
fn same_seed_same_run() {
    let capture = |seed: u64| {
        let net = Network::new(LinkConfig {
            one_way_delay: Duration::from_millis(3),
            loss: 0.1,
            seed,
            rate_bytes_per_sec: Some(500_000),
            queue_limit: 10,
            ..LinkConfig::default()
        });
        net.set_capture(true);
        check_transfer(&net, 20_000, 100_000);
        (net.captured(), net.stats())
    };
    let first = capture(5);
    assert_eq!(first, capture(5));
    assert_ne!(first.0, capture(6).0);
}

/// Client sends `total` bytes to the server; checks they arrive intact.
fn check_transfer(net: &Network, total: usize, steps: usize) -> (Host, Host) {
    let (mut a, mut b) = hosts(net);
    let payload: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let mut sent = 0;
    let mut received = Vec::new();
    let done = run(net, &mut a, &mut b, Instant::ZERO, steps, |_, a, b| {
        let c = a.socket();
        if c.can_send() && sent < total {
            sent += c.send_slice(&payload[sent..]).expect("send");
        }
        let s = b.socket();
        if s.can_recv() {
            s.recv(|buf| {
                received.extend_from_slice(buf);
                (buf.len(), ())
            })
            .expect("recv");
        }
        received.len() == total
    });
    assert!(
        done.is_some(),
        "transfer finished: {} of {total}",
        received.len()
    );
    assert_eq!(received, payload);
    (a, b)
}

#[test]
fn smoltcp_accepts_injected_rsts() {
    let net = Network::new(LinkConfig::default());
    let (mut a, mut b) = check_transfer(&net, 5_000, 10_000);
    // Let everything settle (all data acknowledged).
    let idle = run(
        &net,
        &mut a,
        &mut b,
        Instant::from_secs(5),
        10_000,
        |_, a, _| a.socket().send_queue() == 0,
    )
    .expect("idle");
    let idle = run(&net, &mut a, &mut b, idle, 1_000, |now, _, _| {
        net.next_event().is_none() && now > idle + Duration::from_millis(100)
    })
    .expect("quiet");
    assert_eq!(a.socket().state(), tcp::State::Established);
    assert_eq!(b.socket().state(), tcp::State::Established);
    assert_eq!(net.inject_rst(idle, Side::A), 1);
    assert_eq!(net.inject_rst(idle, Side::B), 1);
    let closed = run(&net, &mut a, &mut b, idle, 1_000, |_, a, b| {
        a.socket().state() == tcp::State::Closed && b.socket().state() == tcp::State::Closed
    });
    assert!(closed.is_some(), "both sides accepted the RST");
}
