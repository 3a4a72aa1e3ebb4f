//! Helpers the link's unit tests share: addresses, packets built with
//! etherparse (independently of the code under test), and a two-endpoint
//! network.

use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::PacketBuilder;
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket};

use super::{LinkConfig, LinkDevice, Network, Side};

/// Side A's endpoint.
pub(super) const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// Side B's endpoint.
pub(super) const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// The NAT's public address.
pub(super) const PUBLIC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);

/// `n` milliseconds after the start.
pub(super) fn ms(n: i64) -> Instant {
    Instant::from_millis(n)
}

/// Port `port` of [`CLIENT`].
pub(super) fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(CLIENT, port)
}

/// Port `port` of [`SERVER`].
pub(super) fn server(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(SERVER, port)
}

/// A TCP segment to build with etherparse.
#[derive(Clone, Copy, Default)]
pub(super) struct Seg<'a> {
    pub(super) seq: u32,
    pub(super) ack: Option<u32>,
    pub(super) syn: bool,
    pub(super) fin: bool,
    pub(super) rst: bool,
    pub(super) options: &'a [u8],
    pub(super) payload: &'a [u8],
}

/// The TCP/IPv4 packet `s` from `src` to `dst` (TTL 64, window 4096).
pub(super) fn build(src: SocketAddrV4, dst: SocketAddrV4, s: Seg<'_>) -> Vec<u8> {
    let mut b = PacketBuilder::ipv4(src.ip().octets(), dst.ip().octets(), 64).tcp(
        src.port(),
        dst.port(),
        s.seq,
        4096,
    );
    if s.syn {
        b = b.syn();
    }
    if s.fin {
        b = b.fin();
    }
    if s.rst {
        b = b.rst();
    }
    if let Some(ack) = s.ack {
        b = b.ack(ack);
    }
    if !s.options.is_empty() {
        b = b.options_raw(s.options).expect("options fit");
    }
    let mut out = Vec::new();
    b.write_to_vec(&mut out, s.payload).expect("builds");
    out
}

/// A data segment (ACK 1) carrying `payload` at `seq`.
pub(super) fn data(src: SocketAddrV4, dst: SocketAddrV4, seq: u32, payload: &[u8]) -> Vec<u8> {
    build(
        src,
        dst,
        Seg {
            seq,
            ack: Some(1),
            payload,
            ..Seg::default()
        },
    )
}

/// Source, destination, and whether both checksums verify.
pub(super) fn inspect(bytes: &[u8]) -> (SocketAddrV4, SocketAddrV4, bool) {
    let ip = Ipv4Packet::new_checked(bytes).expect("ipv4");
    let seg = TcpPacket::new_checked(ip.payload()).expect("tcp");
    let (s, d) = (ip.src_addr(), ip.dst_addr());
    let ok = ip.verify_checksum() && seg.verify_checksum(&IpAddress::Ipv4(s), &IpAddress::Ipv4(d));
    (
        SocketAddrV4::new(s, seg.src_port()),
        SocketAddrV4::new(d, seg.dst_port()),
        ok,
    )
}

/// A network with [`CLIENT`] on side A and [`SERVER`] on side B.
pub(super) fn pair(config: LinkConfig) -> (Network, LinkDevice, LinkDevice) {
    let net = Network::new(config);
    let a = net.endpoint(Side::A, &[CLIENT]);
    let b = net.endpoint(Side::B, &[SERVER]);
    (net, a, b)
}
