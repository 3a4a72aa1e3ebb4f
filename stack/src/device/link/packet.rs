//! The middlebox's work on packet bytes: telling IPv4 from garbage, the
//! view of a TCP segment drop rules get ([`segment_info`], through
//! [`Segment::parse_with_options`]), the in-place [`rewrite_tcp`] (NAT
//! addresses and ports, option stripping with
//! [`tifid::option::strip_options`], checksum repair with smoltcp's wire
//! types) and the RST it forges ([`craft_rst`], through
//! [`build_segment`]). Never computes a checksum by hand, never panics on
//! packet bytes.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket};
use tifid::option::{OptionWalker, strip_options};

use super::types::{Direction, SegmentInfo, Side, TcpFlags, TrackedConnection};
use crate::segment::{Segment, SegmentSpec, build_segment};

/// TCP option kind: no-operation, the filler TCPOPTSTRIP writes. Kinds up
/// to it (End-of-List and NOP itself) are never stripped.
const TCP_OPT_NOP: u8 = 1;

/// The destination of a well-formed IPv4 packet; `None` for anything else
/// (IPv6, truncated, garbage).
pub(super) fn ipv4_dst(bytes: &[u8]) -> Option<Ipv4Addr> {
    let ip = Ipv4Packet::new_checked(bytes).ok()?;
    (ip.version() == 4).then(|| ip.dst_addr())
}

/// The segment a well-formed IPv4 packet carries, as drop rules see it;
/// `None` if it carries no whole, well-formed, unfragmented TCP segment
/// (the simulated link is IPv4 only).
pub(super) fn segment_info(direction: Direction, bytes: &[u8]) -> Option<SegmentInfo> {
    // The flow option kind does not matter: the link ignores that field.
    let (seg, options) = Segment::parse_with_options(bytes, tifid::DEFAULT_KIND)?;
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (seg.src, seg.dst) else {
        return None;
    };
    Some(SegmentInfo {
        direction,
        src,
        dst,
        seq: seg.seq,
        ack: seg.ack_number,
        flags: TcpFlags {
            syn: seg.syn,
            ack: seg.ack,
            fin: seg.fin,
            rst: seg.rst,
            psh: seg.psh,
        },
        payload_len: seg.payload_len,
        options: options.to_vec(),
    })
}

/// What the middlebox decided to change in a TCP segment.
#[derive(Debug, Default)]
pub(super) struct Rewrite {
    /// New source address and port (NAT, side A to B).
    pub(super) src: Option<SocketAddrV4>,
    /// New destination address and port (NAT, side B to A).
    pub(super) dst: Option<SocketAddrV4>,
}

impl Rewrite {
    /// True if it changes an address or a port.
    pub(super) fn translates(&self) -> bool {
        self.src.is_some() || self.dst.is_some()
    }
}

/// Applies `rewrite` and strips the option `kinds` of the TCP segment in
/// the IPv4 packet `bytes`, then refills the checksums it invalidated. A
/// checksum that was wrong on input stays wrong. Returns the number of
/// options stripped; a packet that is not TCP/IPv4 is left alone.
pub(super) fn rewrite_tcp(bytes: &mut [u8], rewrite: &Rewrite, kinds: &BTreeSet<u8>) -> usize {
    let Ok(mut ip) = Ipv4Packet::new_checked(bytes) else {
        return 0;
    };
    let (old_src, old_dst, ip_ok) = (ip.src_addr(), ip.dst_addr(), ip.verify_checksum());
    let src = rewrite.src.map_or(old_src, |s| *s.ip());
    let dst = rewrite.dst.map_or(old_dst, |d| *d.ip());
    let stripped = {
        let Ok(mut seg) = TcpPacket::new_checked(ip.payload_mut()) else {
            return 0;
        };
        let tcp_ok = seg.verify_checksum(&IpAddress::Ipv4(old_src), &IpAddress::Ipv4(old_dst));
        let stripped = strip_kinds(seg.options_mut(), kinds);
        if let Some(s) = rewrite.src {
            seg.set_src_port(s.port());
        }
        if let Some(d) = rewrite.dst {
            seg.set_dst_port(d.port());
        }
        if stripped == 0 && !rewrite.translates() {
            return 0;
        }
        seg.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
        if !tcp_ok {
            // Flipping the low bit never yields an equivalent ones'-complement value.
            let sum = seg.checksum();
            seg.set_checksum(sum ^ 1);
        }
        stripped
    };
    if src != old_src || dst != old_dst {
        ip.set_src_addr(src);
        ip.set_dst_addr(dst);
        ip.fill_checksum();
        if !ip_ok {
            let sum = ip.checksum();
            ip.set_checksum(sum ^ 1);
        }
    }
    stripped
}

/// Replaces every option whose kind is in `kinds` with NOPs, as Linux's
/// TCPOPTSTRIP does, with [`strip_options`] once per kind. The walk stops at
/// End-of-List (what follows is padding); kinds 0 and 1 are never stripped.
/// A malformed list (a length below 2, or running past the end) is left
/// whole. Returns the number of options replaced.
fn strip_kinds(options: &mut [u8], kinds: &BTreeSet<u8>) -> usize {
    if kinds.is_empty() || OptionWalker::new(options).any(|o| o.is_err()) {
        return 0;
    }
    kinds
        .iter()
        .filter(|kind| **kind > TCP_OPT_NOP)
        .map(|kind| strip_options(options, *kind))
        .sum()
}

/// The RST a real peer would send toward `toward` for `conn`: its sequence
/// number is the peer's next one, and it acknowledges everything seen.
/// `None` while neither side has sent anything.
pub(super) fn craft_rst(conn: &TrackedConnection, toward: Side) -> Option<Vec<u8>> {
    let (view, seq, ack) = match toward {
        Side::A => (conn.a_view, conn.b_next_seq, conn.a_next_seq),
        Side::B => (conn.b_view, conn.a_next_seq, conn.b_next_seq),
    };
    if seq.is_none() && ack.is_none() {
        return None;
    }
    Some(build_segment(&SegmentSpec {
        // From the peer of `toward` (as `toward` sees it) to `toward`.
        tuple: view.reversed(),
        seq: seq.unwrap_or(0),
        ack,
        syn: false,
        rst: true,
        option: &[],
        payload: &[],
    }))
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::super::testutil::{PUBLIC, Seg, build, client, data, inspect, ms, pair, server};
    use super::super::{DropReason, Fate, LinkConfig, SegmentInfo};
    use super::*;
    use crate::segment::FourTuple;

    #[test]
    fn strip_option_replaces_with_nops_and_fixes_checksum() {
        let (net, a, b) = pair(LinkConfig::default());
        net.strip_option(Direction::AtoB, 253, true);
        net.set_capture(true);
        // MSS, NOP, WS, then our 20-byte option, padded with EOL.
        let mut options = vec![2, 4, 0x05, 0xb4, 1, 3, 3, 7];
        options.extend_from_slice(&[253, 20]);
        options.extend_from_slice(&[0xab; 18]);
        options.extend_from_slice(&[0, 0, 0, 0]);
        let syn = build(
            client(1000),
            server(80),
            Seg {
                seq: 100,
                syn: true,
                options: &options,
                ..Seg::default()
            },
        );
        a.send_raw(ms(0), &syn);
        let got = b.recv_raw(ms(100)).expect("delivered");
        let (_, _, ok) = inspect(&got);
        assert!(ok, "checksums verify after stripping");
        let ip = Ipv4Packet::new_checked(&got[..]).expect("ipv4");
        let seg = TcpPacket::new_checked(ip.payload()).expect("tcp");
        let mut expected = options[..8].to_vec();
        expected.extend_from_slice(&[TCP_OPT_NOP; 20]);
        expected.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(seg.options(), &expected[..]);
        assert_eq!(net.stats().options_stripped, 1);
        assert_eq!(net.captured().len(), 1);
        assert_eq!(net.captured()[0].bytes, got);

        // The other direction is untouched.
        let syn_ack = build(
            server(80),
            client(1000),
            Seg {
                seq: 500,
                ack: Some(101),
                syn: true,
                options: &options,
                ..Seg::default()
            },
        );
        b.send_raw(ms(0), &syn_ack);
        assert_eq!(a.recv_raw(ms(100)), Some(syn_ack));

        // A malformed list (length 0 after our option) crosses unchanged.
        let bad_options = [
            253, 20, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 8, 0, 0, 0,
        ];
        let bad = build(
            client(1000),
            server(80),
            Seg {
                seq: 101,
                ack: Some(501),
                options: &bad_options,
                ..Seg::default()
            },
        );
        a.send_raw(ms(1), &bad);
        assert_eq!(b.recv_raw(ms(100)), Some(bad));
        assert_eq!(net.stats().options_stripped, 1);

        // Turned off: passes.
        net.strip_option(Direction::AtoB, 253, false);
        a.send_raw(ms(2), &syn);
        assert_eq!(b.recv_raw(ms(100)), Some(syn));
    }

    #[test]
    fn strip_kinds_walker() {
        let kinds: BTreeSet<u8> = [8, 253].into_iter().collect();
        let mut ts = [1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(strip_kinds(&mut ts, &kinds), 1);
        assert_eq!(ts, [1; 12]);
        // Both kinds of a set, wherever they are.
        let mut both = [253, 4, 0, 0, 2, 4, 5, 0xb4, 8, 4, 9, 9];
        assert_eq!(strip_kinds(&mut both, &kinds), 2);
        assert_eq!(both, [1, 1, 1, 1, 2, 4, 5, 0xb4, 1, 1, 1, 1]);
        // Options after EOL are padding and stay.
        let mut after_eol = [0, 0, 8, 2];
        assert_eq!(strip_kinds(&mut after_eol, &kinds), 0);
        assert_eq!(after_eol, [0, 0, 8, 2]);
        // Overrun, length 1, missing length: untouched, even before the
        // malformed entry.
        for bad in [&[8u8, 10, 1, 2][..], &[253, 1, 8, 2], &[8, 2, 253]] {
            let mut copy = bad.to_vec();
            assert_eq!(strip_kinds(&mut copy, &kinds), 0);
            assert_eq!(copy, bad);
        }
        // NOP and EOL kinds are never stripped.
        let nops: BTreeSet<u8> = [0, 1].into_iter().collect();
        let mut list = [1, 1, 0, 0];
        assert_eq!(strip_kinds(&mut list, &nops), 0);
    }

    #[test]
    fn crafted_rsts_are_the_bytes_etherparse_wrote() {
        // Before the link used `build_segment`, etherparse's PacketBuilder
        // (TTL 64, DF, identification 0, window 0) wrote its RSTs.
        let etherparse_rst = |src: SocketAddrV4, dst: SocketAddrV4, seq: u32, ack: Option<u32>| {
            let mut b = PacketBuilder::ipv4(src.ip().octets(), dst.ip().octets(), 64)
                .tcp(src.port(), dst.port(), seq, 0)
                .rst();
            if let Some(ack) = ack {
                b = b.ack(ack);
            }
            let mut out = Vec::new();
            b.write_to_vec(&mut out, &[]).expect("builds");
            out
        };
        let public = SocketAddrV4::new(PUBLIC, 10_000);
        let conn = TrackedConnection {
            a_view: FourTuple::new(client(1000), server(80)),
            b_view: FourTuple::new(server(80), public),
            a_next_seq: Some(0xfedc_ba98),
            b_next_seq: Some(7),
        };
        assert_eq!(
            craft_rst(&conn, Side::A),
            Some(etherparse_rst(
                server(80),
                client(1000),
                7,
                Some(0xfedc_ba98)
            ))
        );
        assert_eq!(
            craft_rst(&conn, Side::B),
            Some(etherparse_rst(public, server(80), 0xfedc_ba98, Some(7)))
        );
        let syn_only = TrackedConnection {
            b_next_seq: None,
            ..conn
        };
        assert_eq!(
            craft_rst(&syn_only, Side::A),
            Some(etherparse_rst(
                server(80),
                client(1000),
                0,
                Some(0xfedc_ba98)
            ))
        );
        assert_eq!(
            craft_rst(&syn_only, Side::B),
            Some(etherparse_rst(public, server(80), 0xfedc_ba98, None))
        );
        let silent = TrackedConnection {
            a_next_seq: None,
            ..syn_only
        };
        assert_eq!(craft_rst(&silent, Side::A), None);
    }

    #[test]
    fn bad_checksum_stays_bad_after_rewrite() {
        let (net, a, b) = pair(LinkConfig::default());
        net.enable_nat(PUBLIC);
        let mut pkt = data(client(1000), server(80), 1, b"payload");
        let last = pkt.len() - 1;
        pkt[last] ^= 0xff;
        a.send_raw(ms(0), &pkt);
        let got = b.recv_raw(ms(100)).expect("delivered");
        let (src, _, ok) = inspect(&got);
        assert_eq!(*src.ip(), PUBLIC);
        assert!(!ok, "a corrupt segment must not be repaired");
    }

    #[test]
    fn garbage_does_not_panic() {
        let (net, a, b) = pair(LinkConfig::default());
        net.enable_nat(PUBLIC);
        net.enable_firewall();
        net.strip_option(Direction::AtoB, 253, true);
        net.strip_option(Direction::BtoA, 2, true);
        net.drop_matching(Direction::AtoB, 1000, |s: &SegmentInfo| {
            s.payload_len > 9000
        });
        net.set_capture(true);
        net.set_capture_entering(true);
        let mut rng = StdRng::seed_from_u64(99);
        let valid = build(
            client(1000),
            server(80),
            Seg {
                seq: 1,
                syn: true,
                options: &[
                    2, 4, 5, 0xb4, 253, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
                payload: b"data",
                ..Seg::default()
            },
        );
        for i in 0..2000i64 {
            let mut bytes = match i % 4 {
                0 => (0..rng.random_range(0..80)).map(|_| rng.random()).collect(),
                1 => valid[..rng.random_range(0..=valid.len())].to_vec(),
                _ => {
                    let mut v = valid.clone();
                    for _ in 0..rng.random_range(1..4) {
                        let at = rng.random_range(0..v.len());
                        v[at] = rng.random();
                    }
                    v
                }
            };
            if i % 7 == 0 {
                // Look like IPv4 more often.
                if let Some(first) = bytes.first_mut() {
                    *first = 0x45;
                }
            }
            a.send_raw(ms(i), &bytes);
            b.send_raw(ms(i), &bytes);
        }
        // An IPv6 packet is dropped, not panicked on.
        let mut v6 = Vec::new();
        PacketBuilder::ipv6([1; 16], [2; 16], 64)
            .tcp(1, 2, 3, 4)
            .write_to_vec(&mut v6, b"x")
            .expect("builds");
        assert_eq!(
            a.send_raw(ms(3000), &v6),
            Fate::Dropped(DropReason::Malformed)
        );
        for _ in 0..5000 {
            if a.recv_raw(ms(10_000)).is_none() && b.recv_raw(ms(10_000)).is_none() {
                break;
            }
        }
        net.inject_rst(ms(10_000), Side::A);
        net.inject_rst(ms(10_000), Side::B);
        let stats = net.stats();
        assert_eq!(stats.sent, 4001);
        assert!(stats.dropped(DropReason::Malformed) > 0);
    }
}
