//! Reading and rewriting TCP segments over IPv4 and IPv6 on the wire.
//!
//! Owns [`Segment`] (a parsed summary of one packet: addresses, ports, flags,
//! sequence numbers and the flow option), [`add_flow_option`] (rewrites a
//! packet with our option inserted: option list, data offset, IP total length
//! and both checksums fixed with smoltcp's wire types) and
//! [`refusal_rst`] (the RST that refuses a resume). Never panics on any
//! input: what cannot be parsed is `None`, and the caller passes it on as
//! legacy traffic. Fragmented IPv4 and IPv6 packets whose TCP header follows
//! extension headers are not inspected (always legacy). The option, its
//! rules and the segments the stack builds are the same for both families;
//! only the IP header and the checksum's pseudo-header differ.

use std::net::{IpAddr, SocketAddr};

use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, TcpSeqNumber};
use tifid::FlowOptionRepr;
use tifid::handshake::ParsedOption;
use tifid::option::{InsertError, MAX_OPTIONS_LEN, find_flow_option, insert_flow_option};

/// A TCP connection's addresses, seen from our side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FourTuple {
    /// Our address and port.
    pub local: SocketAddr,
    /// The peer's address and port (the same family as `local`).
    pub remote: SocketAddr,
}

impl FourTuple {
    /// The tuple from `local`'s point of view.
    pub fn new(local: impl Into<SocketAddr>, remote: impl Into<SocketAddr>) -> FourTuple {
        FourTuple {
            local: local.into(),
            remote: remote.into(),
        }
    }

    /// The same connection seen from the other end.
    pub fn reversed(self) -> FourTuple {
        FourTuple {
            local: self.remote,
            remote: self.local,
        }
    }
}

/// A parsed TCP segment (over IPv4 or IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack_number: u32,
    /// SYN flag.
    pub syn: bool,
    /// ACK flag.
    pub ack: bool,
    /// FIN flag.
    pub fin: bool,
    /// RST flag.
    pub rst: bool,
    /// PSH flag.
    pub psh: bool,
    /// Payload length.
    pub payload_len: usize,
    /// The window field as sent (unscaled).
    pub window: u16,
    /// Our flow option: `Ok(None)` absent, `Err` malformed.
    pub option: ParsedOption,
    /// The timestamps option (RFC 7323): `(TSval, TSecr)`; `None` when
    /// absent or the option list is malformed.
    pub timestamp: Option<(u32, u32)>,
}

impl Segment {
    /// Parses an IPv4 or IPv6 packet carrying TCP. `None` for anything
    /// else, for fragments, for TCP behind IPv6 extension headers and for
    /// truncated or inconsistent headers.
    pub fn parse(packet: &[u8], kind: u8) -> Option<Segment> {
        Segment::parse_with_options(packet, kind).map(|(segment, _)| segment)
    }

    /// As [`Segment::parse`], with the raw TCP option bytes (padding
    /// included), borrowed from `packet`.
    pub fn parse_with_options(packet: &[u8], kind: u8) -> Option<(Segment, &[u8])> {
        let (ip, tcp_bytes) = tcp_in(packet)?;
        let tcp = TcpPacket::new_checked(tcp_bytes).ok()?;
        let src = SocketAddr::new(ip.src, tcp.src_port());
        let dst = SocketAddr::new(ip.dst, tcp.dst_port());
        let segment = Segment {
            src,
            dst,
            seq: tcp.seq_number().0 as u32,
            ack_number: tcp.ack_number().0 as u32,
            syn: tcp.syn(),
            ack: tcp.ack(),
            fin: tcp.fin(),
            rst: tcp.rst(),
            psh: tcp.psh(),
            payload_len: tcp.payload().len(),
            window: tcp.window_len(),
            option: find_flow_option(tcp.options(), kind),
            timestamp: find_timestamp(tcp.options()),
        };
        Some((segment, tcp.options()))
    }

    /// The connection this segment belongs to, for the receiving host.
    pub fn tuple_at_receiver(&self) -> FourTuple {
        FourTuple {
            local: self.dst,
            remote: self.src,
        }
    }

    /// The connection this segment belongs to, for the sending host.
    pub fn tuple_at_sender(&self) -> FourTuple {
        FourTuple {
            local: self.src,
            remote: self.dst,
        }
    }
}

/// The timestamps option of a TCP option list: `(TSval, TSecr)`. Stops
/// at the end-of-list, at a length that does not fit, or at a timestamps
/// option of the wrong length (`None`).
pub fn find_timestamp(mut list: &[u8]) -> Option<(u32, u32)> {
    const END: u8 = 0;
    const NOP: u8 = 1;
    const TIMESTAMPS: u8 = 8;
    while let Some(&kind) = list.first() {
        match kind {
            END => return None,
            NOP => list = &list[1..],
            _ => {
                let len = usize::from(*list.get(1)?);
                if len < 2 || len > list.len() {
                    return None;
                }
                if kind == TIMESTAMPS {
                    let body: &[u8; 8] = list.get(2..10).filter(|_| len == 10)?.try_into().ok()?;
                    let (val, ecr) = body.split_at(4);
                    return Some((
                        u32::from_be_bytes(val.try_into().ok()?),
                        u32::from_be_bytes(ecr.try_into().ok()?),
                    ));
                }
                list = &list[len..];
            }
        }
    }
    None
}

/// The IP header of a packet that carries TCP directly: its length and
/// addresses.
#[derive(Debug, Clone, Copy)]
struct IpHeader {
    len: usize,
    src: IpAddr,
    dst: IpAddr,
}

/// Length of an IPv6 header (the only one inspected: no extension headers).
const IPV6_HEADER_LEN: usize = 40;

/// The IP header and the TCP bytes (bounded by the IP length) of an
/// unfragmented IPv4 packet, or an IPv6 packet whose next header is TCP.
fn tcp_in(packet: &[u8]) -> Option<(IpHeader, &[u8])> {
    match packet.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            let header = IpHeader {
                len: usize::from(ip.header_len()),
                src: IpAddr::V4(ip.src_addr()),
                dst: IpAddr::V4(ip.dst_addr()),
            };
            Some((header, ip.payload()))
        }
        6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let header = IpHeader {
                len: IPV6_HEADER_LEN,
                src: IpAddr::V6(ip.src_addr()),
                dst: IpAddr::V6(ip.dst_addr()),
            };
            Some((header, ip.payload()))
        }
        _ => None,
    }
}

/// Both checksums of a TCP/IPv4 packet verify, or the TCP checksum of a
/// TCP/IPv6 packet (what smoltcp requires before it accepts a segment).
pub fn checksum_ok(packet: &[u8]) -> bool {
    let Some((ip, tcp_bytes)) = tcp_in(packet) else {
        return false;
    };
    let Ok(tcp) = TcpPacket::new_checked(tcp_bytes) else {
        return false;
    };
    let ip_ok = match ip.src {
        IpAddr::V4(_) => Ipv4Packet::new_unchecked(packet).verify_checksum(),
        IpAddr::V6(_) => true,
    };
    ip_ok && tcp.verify_checksum(&ip.src.into(), &ip.dst.into())
}

/// Why [`add_flow_option`] left a packet unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddOptionError {
    /// Not a TCP/IP packet we can rewrite.
    #[error("not a rewritable TCP/IP packet")]
    NotTcp,
    /// The option list has no room, or the packet would exceed the MTU.
    #[error("flow option does not fit")]
    DoesNotFit,
    /// The existing option list is malformed.
    #[error("malformed option list")]
    Malformed,
}

/// Writes `packet` with `repr` inserted into its TCP options to `out` and
/// returns the new length. Fixes data offset, the IP length (IPv4 total
/// length, IPv6 payload length) and the checksums. `out` is cleared
/// first; on error it holds nothing useful and the caller sends the
/// original packet without the option.
pub fn add_flow_option(
    packet: &[u8],
    repr: &FlowOptionRepr,
    kind: u8,
    mtu: usize,
    out: &mut Vec<u8>,
) -> Result<usize, AddOptionError> {
    out.clear();
    let (ip, tcp_bytes) = tcp_in(packet).ok_or(AddOptionError::NotTcp)?;
    let tcp = TcpPacket::new_checked(tcp_bytes).map_err(|_| AddOptionError::NotTcp)?;
    let mut options = [0u8; MAX_OPTIONS_LEN];
    let options_len =
        insert_flow_option(tcp.options(), repr, kind, &mut options).map_err(|e| match e {
            InsertError::DoesNotFit(_) => AddOptionError::DoesNotFit,
            InsertError::Malformed(_) => AddOptionError::Malformed,
        })?;
    let tcp_header_len = 20 + options_len;
    let payload = tcp.payload();
    let total = ip.len + tcp_header_len + payload.len();
    // What the IP length field holds: IPv4's counts its header, IPv6's not.
    let length_field = match ip.src {
        IpAddr::V4(_) => total,
        IpAddr::V6(_) => total - ip.len,
    };
    if total > mtu || length_field > usize::from(u16::MAX) {
        return Err(AddOptionError::DoesNotFit);
    }
    out.extend_from_slice(&packet[..ip.len]);
    out.extend_from_slice(&tcp_bytes[..20]);
    out.extend_from_slice(&options[..options_len]);
    out.extend_from_slice(payload);
    finish_packet(out, ip.len, tcp_header_len, ip.src, ip.dst);
    Ok(total)
}

/// Sets lengths and checksums of a TCP packet laid out in `buf` after an
/// IP header of `ip_header_len` bytes of the family of `src`.
fn finish_packet(
    buf: &mut [u8],
    ip_header_len: usize,
    tcp_header_len: usize,
    src: IpAddr,
    dst: IpAddr,
) {
    let total = buf.len();
    match src {
        IpAddr::V4(_) => {
            let mut ip = Ipv4Packet::new_unchecked(&mut buf[..]);
            ip.set_total_len(total as u16);
            ip.fill_checksum();
        }
        IpAddr::V6(_) => {
            Ipv6Packet::new_unchecked(&mut buf[..]).set_payload_len((total - ip_header_len) as u16);
        }
    }
    let mut tcp = TcpPacket::new_unchecked(&mut buf[ip_header_len..]);
    tcp.set_header_len(tcp_header_len as u8);
    tcp.fill_checksum(&IpAddress::from(src), &IpAddress::from(dst));
}

/// The RST that refuses a resume SYN: from the SYN's destination to its
/// source, `ack = seq + 1`, with our option echoing the TIFID (`reply`).
pub fn refusal_rst(syn: &Segment, reply: &FlowOptionRepr, kind: u8) -> Vec<u8> {
    let option = reply.to_bytes(kind);
    build_segment(&SegmentSpec {
        tuple: syn.tuple_at_receiver(),
        seq: 0,
        ack: Some(syn.seq.wrapping_add(1)),
        syn: false,
        rst: true,
        option: &option,
        payload: &[],
    })
}

/// The challenge ACK of RFC 5961 §3.2, sent in answer to a RST that is in
/// the window but not at `rcv_nxt`: a genuine sender answers it with a RST
/// at exactly `ack`.
pub fn challenge_ack(tuple: FourTuple, seq: u32, ack: u32) -> Vec<u8> {
    build_segment(&SegmentSpec {
        tuple,
        seq,
        ack: Some(ack),
        syn: false,
        rst: false,
        option: &[],
        payload: &[],
    })
}

/// A keepalive probe: one byte the peer already acknowledged (at
/// `snd_una - 1`), as BSD and Linux send them. Every TCP answers a segment
/// that carries old data with an ACK, never rate-limited (a bare ACK out of
/// the window only gets a rate-limited challenge ACK), and takes nothing
/// from it.
pub fn keepalive_probe(tuple: FourTuple, snd_una: u32, rcv_nxt: u32) -> Vec<u8> {
    build_segment(&SegmentSpec {
        tuple,
        seq: snd_una.wrapping_sub(1),
        ack: Some(rcv_nxt),
        syn: false,
        rst: false,
        option: &[],
        payload: &[0],
    })
}

/// A segment the stack sends itself, outside smoltcp.
#[derive(Debug, Clone, Copy)]
pub struct SegmentSpec<'a> {
    /// From `tuple.local` to `tuple.remote`.
    pub tuple: FourTuple,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number, with the ACK flag; `None`: no ACK flag.
    pub ack: Option<u32>,
    /// SYN flag.
    pub syn: bool,
    /// RST flag.
    pub rst: bool,
    /// TCP option bytes, already padded to a multiple of 4.
    pub option: &'a [u8],
    /// Payload.
    pub payload: &'a [u8],
}

/// Writes a TCP segment over IPv4 or IPv6 (the family of the tuple),
/// window 0 (the segments the stack builds itself are RSTs, or carry
/// sequence numbers the peer does not take window updates from). A tuple
/// whose two addresses are of different families (never made by the
/// stack) gives an empty packet, which devices do not send.
pub fn build_segment(spec: &SegmentSpec) -> Vec<u8> {
    let (src, dst) = (spec.tuple.local, spec.tuple.remote);
    let ip_header_len = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => 20,
        (IpAddr::V6(_), IpAddr::V6(_)) => IPV6_HEADER_LEN,
        _ => return Vec::new(),
    };
    let tcp_header_len = 20 + spec.option.len();
    let mut buf = vec![0u8; ip_header_len + tcp_header_len + spec.payload.len()];
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = Ipv4Packet::new_unchecked(&mut buf[..]);
            ip.set_version(4);
            ip.set_header_len(20);
            ip.set_dscp(0);
            ip.set_ecn(0);
            ip.set_ident(0);
            ip.clear_flags();
            ip.set_dont_frag(true);
            ip.set_frag_offset(0);
            ip.set_hop_limit(64);
            ip.set_next_header(IpProtocol::Tcp);
            ip.set_src_addr(s);
            ip.set_dst_addr(d);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ip = Ipv6Packet::new_unchecked(&mut buf[..]);
            ip.set_version(6);
            ip.set_traffic_class(0);
            ip.set_flow_label(0);
            ip.set_next_header(IpProtocol::Tcp);
            ip.set_hop_limit(64);
            ip.set_src_addr(s);
            ip.set_dst_addr(d);
        }
        _ => return Vec::new(),
    }
    {
        let mut tcp = TcpPacket::new_unchecked(&mut buf[ip_header_len..]);
        tcp.set_src_port(src.port());
        tcp.set_dst_port(dst.port());
        tcp.set_seq_number(TcpSeqNumber(spec.seq as i32));
        tcp.set_ack_number(TcpSeqNumber(spec.ack.unwrap_or(0) as i32));
        tcp.clear_flags();
        tcp.set_rst(spec.rst);
        tcp.set_syn(spec.syn);
        tcp.set_ack(spec.ack.is_some());
        tcp.set_window_len(0);
        tcp.set_urgent_at(0);
    }
    let options_at = ip_header_len + 20;
    buf[options_at..options_at + spec.option.len()].copy_from_slice(spec.option);
    buf[ip_header_len + tcp_header_len..].copy_from_slice(spec.payload);
    finish_packet(&mut buf, ip_header_len, tcp_header_len, src.ip(), dst.ip());
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("a socket address")
    }

    #[test]
    fn timestamps_are_found_and_malformed_lists_give_none() {
        let ts = [8, 10, 0, 0, 1, 2, 0, 0, 0, 7];
        assert_eq!(find_timestamp(&ts), Some((258, 7)));
        let mut padded = vec![1, 1];
        padded.extend_from_slice(&ts);
        assert_eq!(find_timestamp(&padded), Some((258, 7)));
        let mut after_mss = vec![2, 4, 5, 0xb4];
        after_mss.extend_from_slice(&ts);
        assert_eq!(find_timestamp(&after_mss), Some((258, 7)));
        assert_eq!(find_timestamp(&[]), None);
        assert_eq!(find_timestamp(&[0, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(find_timestamp(&[8, 10, 0, 0, 1]), None, "truncated");
        assert_eq!(
            find_timestamp(&[8, 9, 0, 0, 1, 2, 0, 0, 0]),
            None,
            "wrong length"
        );
        assert_eq!(find_timestamp(&[2, 0, 8, 10]), None, "zero length");
        assert_eq!(find_timestamp(&[2, 40, 0, 0]), None, "length past the end");
    }

    #[test]
    fn a_keepalive_probe_carries_one_old_byte_and_valid_checksums() {
        let tuple = FourTuple {
            local: addr("10.0.0.1:40000"),
            remote: addr("10.0.0.2:80"),
        };
        let probe = keepalive_probe(tuple, 1000, 5000);
        let seg = Segment::parse(&probe, tifid::DEFAULT_KIND).expect("a segment");
        assert_eq!((seg.seq, seg.ack_number, seg.payload_len), (999, 5000, 1));
        assert!(seg.ack && !seg.syn && !seg.rst);
        assert!(checksum_ok(&probe));
    }

    #[test]
    fn four_tuples_reverse_and_parse_returns_psh_and_the_option_bytes() {
        let tuple = FourTuple::new(addr("10.0.0.1:40000"), addr("10.0.0.2:80"));
        assert_eq!((tuple.local.port(), tuple.remote.port()), (40000, 80));
        assert_eq!(tuple.reversed().reversed(), tuple);
        assert_eq!(tuple.reversed(), FourTuple::new(tuple.remote, tuple.local));
        let options = [2, 4, 5, 0xb4, 1, 1, 4, 2];
        let mut packet = build_segment(&SegmentSpec {
            tuple,
            seq: 7,
            ack: None,
            syn: true,
            rst: false,
            option: &options,
            payload: b"xy",
        });
        let (seg, got) = Segment::parse_with_options(&packet, tifid::DEFAULT_KIND).expect("parses");
        assert_eq!(got, &options[..]);
        assert_eq!(Some(seg), Segment::parse(&packet, tifid::DEFAULT_KIND));
        assert_eq!((seg.tuple_at_sender(), seg.payload_len), (tuple, 2));
        assert!(seg.syn && !seg.psh);
        TcpPacket::new_unchecked(&mut packet[20..]).set_psh(true);
        let seg = Segment::parse(&packet, tifid::DEFAULT_KIND).expect("parses");
        assert!(seg.syn && seg.psh);
        let bare = challenge_ack(tuple, 1, 2);
        let (_, got) = Segment::parse_with_options(&bare, tifid::DEFAULT_KIND).expect("parses");
        assert!(got.is_empty());
    }

    fn v6_tuple() -> FourTuple {
        FourTuple::new(addr("[2001:db8::1]:40000"), addr("[2001:db8:1::2]:22"))
    }

    #[test]
    fn ipv6_segments_build_parse_and_verify_like_ipv4_ones() {
        let tuple = v6_tuple();
        let options = [2, 4, 5, 0xa0, 1, 1, 4, 2];
        let packet = build_segment(&SegmentSpec {
            tuple,
            seq: 7,
            ack: Some(9),
            syn: true,
            rst: false,
            option: &options,
            payload: b"xyz",
        });
        assert_eq!(packet.len(), 40 + 28 + 3);
        assert_eq!(packet[0] >> 4, 6);
        assert!(checksum_ok(&packet));
        let (seg, got) = Segment::parse_with_options(&packet, tifid::DEFAULT_KIND).expect("parses");
        assert_eq!(got, &options[..]);
        assert_eq!(seg.tuple_at_sender(), tuple);
        assert_eq!((seg.seq, seg.ack_number, seg.payload_len), (7, 9, 3));
        assert!(seg.syn && seg.ack);
        // The pseudo-header covers the addresses: one changed bit fails it.
        let mut spoiled = packet.clone();
        spoiled[8 + 15] ^= 1;
        assert!(!checksum_ok(&spoiled));
        // Truncated, or a payload length past the end: not a segment.
        assert_eq!(Segment::parse(&packet[..60], tifid::DEFAULT_KIND), None);
        let mut long = packet.clone();
        long[4..6].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(Segment::parse(&long, tifid::DEFAULT_KIND), None);
        // TCP behind an extension header (hop-by-hop, 0) is not inspected.
        let mut hop_by_hop = packet;
        hop_by_hop[6] = 0;
        assert_eq!(Segment::parse(&hop_by_hop, tifid::DEFAULT_KIND), None);
    }

    #[test]
    fn the_flow_option_goes_into_ipv6_segments_with_lengths_and_checksum_fixed() {
        let syn = build_segment(&SegmentSpec {
            tuple: v6_tuple(),
            seq: 100,
            ack: None,
            syn: true,
            rst: false,
            option: &[2, 4, 5, 0xa0],
            payload: &[],
        });
        let repr = FlowOptionRepr {
            tifid: tifid::Tifid::new(0x1234_0000_5678),
            tiseq: tifid::Seq48::new(100),
            tiack: tifid::Seq48::new(0),
        };
        let mut out = Vec::new();
        let len = add_flow_option(&syn, &repr, tifid::DEFAULT_KIND, 1500, &mut out).expect("fits");
        assert_eq!((len, out.len()), (syn.len() + 20, syn.len() + 20));
        assert_eq!(usize::from(u16::from_be_bytes([out[4], out[5]])), len - 40);
        assert!(checksum_ok(&out));
        let seg = Segment::parse(&out, tifid::DEFAULT_KIND).expect("parses");
        assert_eq!(seg.option, Ok(Some(repr)));
        assert_eq!(
            add_flow_option(&syn, &repr, tifid::DEFAULT_KIND, syn.len() + 19, &mut out),
            Err(AddOptionError::DoesNotFit)
        );
    }

    #[test]
    fn a_tuple_of_two_families_builds_nothing() {
        let mixed = FourTuple::new(addr("10.0.0.1:1"), addr("[2001:db8::1]:2"));
        assert!(keepalive_probe(mixed, 1, 2).is_empty());
    }
}
