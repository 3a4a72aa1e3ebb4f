//! Reading and rewriting TCP/IPv4 segments on the wire.
//!
//! Owns [`Segment`] (a parsed summary of one packet: addresses, ports, flags,
//! sequence numbers and the flow option), [`add_flow_option`] (rewrites a
//! packet with our option inserted: option list, data offset, IP total length
//! and both checksums fixed with smoltcp's wire types) and
//! [`refusal_rst`] (the RST that refuses a resume). Never panics on any
//! input: what cannot be parsed is `None`, and the caller passes it on as
//! legacy traffic. IPv6 and fragmented IPv4 are not inspected (always legacy).

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, TcpPacket, TcpSeqNumber};
use tifid::FlowOptionRepr;
use tifid::handshake::ParsedOption;
use tifid::option::{InsertError, MAX_OPTIONS_LEN, find_flow_option, insert_flow_option};

/// A TCP connection's addresses, seen from our side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FourTuple {
    /// Our address and port.
    pub local: SocketAddrV4,
    /// The peer's address and port.
    pub remote: SocketAddrV4,
}

impl FourTuple {
    /// The tuple from `local`'s point of view.
    pub fn new(local: SocketAddrV4, remote: SocketAddrV4) -> FourTuple {
        FourTuple { local, remote }
    }

    /// The same connection seen from the other end.
    pub fn reversed(self) -> FourTuple {
        FourTuple {
            local: self.remote,
            remote: self.local,
        }
    }
}

/// A parsed TCP/IPv4 segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
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
    /// Parses an IPv4 packet carrying TCP. `None` for anything else, for
    /// fragments and for truncated or inconsistent headers.
    pub fn parse(packet: &[u8], kind: u8) -> Option<Segment> {
        Segment::parse_with_options(packet, kind).map(|(segment, _)| segment)
    }

    /// As [`Segment::parse`], with the raw TCP option bytes (padding
    /// included), borrowed from `packet`.
    pub fn parse_with_options(packet: &[u8], kind: u8) -> Option<(Segment, &[u8])> {
        let ip = Ipv4Packet::new_checked(packet).ok()?;
        if ip.version() != 4
            || ip.next_header() != IpProtocol::Tcp
            || ip.more_frags()
            || ip.frag_offset() != 0
        {
            return None;
        }
        let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
        let src = SocketAddrV4::new(ip.src_addr(), tcp.src_port());
        let dst = SocketAddrV4::new(ip.dst_addr(), tcp.dst_port());
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

/// Both checksums of a TCP/IPv4 packet verify (what smoltcp requires before
/// it accepts a segment).
pub fn checksum_ok(packet: &[u8]) -> bool {
    let Ok(ip) = Ipv4Packet::new_checked(packet) else {
        return false;
    };
    let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
        return false;
    };
    ip.verify_checksum()
        && tcp.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr()),
        )
}

/// Why [`add_flow_option`] left a packet unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddOptionError {
    /// Not a TCP/IPv4 packet we can rewrite.
    #[error("not a rewritable TCP/IPv4 packet")]
    NotTcp,
    /// The option list has no room, or the packet would exceed the MTU.
    #[error("flow option does not fit")]
    DoesNotFit,
    /// The existing option list is malformed.
    #[error("malformed option list")]
    Malformed,
}

/// Writes `packet` with `repr` inserted into its TCP options to `out` and
/// returns the new length. Fixes data offset, IP total length and both
/// checksums. `out` is cleared first; on error it holds nothing useful and
/// the caller sends the original packet without the option.
pub fn add_flow_option(
    packet: &[u8],
    repr: &FlowOptionRepr,
    kind: u8,
    mtu: usize,
    out: &mut Vec<u8>,
) -> Result<usize, AddOptionError> {
    out.clear();
    let ip = Ipv4Packet::new_checked(packet).map_err(|_| AddOptionError::NotTcp)?;
    if ip.version() != 4
        || ip.next_header() != IpProtocol::Tcp
        || ip.more_frags()
        || ip.frag_offset() != 0
    {
        return Err(AddOptionError::NotTcp);
    }
    let ip_header_len = usize::from(ip.header_len());
    let tcp = TcpPacket::new_checked(ip.payload()).map_err(|_| AddOptionError::NotTcp)?;
    let mut options = [0u8; MAX_OPTIONS_LEN];
    let options_len =
        insert_flow_option(tcp.options(), repr, kind, &mut options).map_err(|e| match e {
            InsertError::DoesNotFit(_) => AddOptionError::DoesNotFit,
            InsertError::Malformed(_) => AddOptionError::Malformed,
        })?;
    let tcp_header_len = 20 + options_len;
    let payload = tcp.payload();
    let total = ip_header_len + tcp_header_len + payload.len();
    if total > mtu || total > usize::from(u16::MAX) {
        return Err(AddOptionError::DoesNotFit);
    }
    out.extend_from_slice(&packet[..ip_header_len]);
    out.extend_from_slice(&ip.payload()[..20]);
    out.extend_from_slice(&options[..options_len]);
    out.extend_from_slice(payload);
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    finish_packet(out, ip_header_len, tcp_header_len, src, dst);
    Ok(total)
}

/// Sets lengths and checksums of a TCP/IPv4 packet laid out in `buf`.
fn finish_packet(
    buf: &mut [u8],
    ip_header_len: usize,
    tcp_header_len: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) {
    let total = buf.len();
    {
        let mut ip = Ipv4Packet::new_unchecked(&mut buf[..]);
        ip.set_total_len(total as u16);
        ip.fill_checksum();
    }
    let mut tcp = TcpPacket::new_unchecked(&mut buf[ip_header_len..]);
    tcp.set_header_len(tcp_header_len as u8);
    tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
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

/// Writes a TCP/IPv4 segment, window 0 (the segments the stack builds
/// itself are RSTs, or carry sequence numbers the peer does not take window
/// updates from).
pub fn build_segment(spec: &SegmentSpec) -> Vec<u8> {
    let (src, dst) = (spec.tuple.local, spec.tuple.remote);
    let tcp_header_len = 20 + spec.option.len();
    let mut buf = vec![0u8; 20 + tcp_header_len + spec.payload.len()];
    {
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
        ip.set_src_addr(*src.ip());
        ip.set_dst_addr(*dst.ip());
    }
    {
        let mut tcp = TcpPacket::new_unchecked(&mut buf[20..]);
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
    buf[40..40 + spec.option.len()].copy_from_slice(spec.option);
    buf[20 + tcp_header_len..].copy_from_slice(spec.payload);
    finish_packet(&mut buf, 20, tcp_header_len, *src.ip(), *dst.ip());
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

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
            local: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 40000),
            remote: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80),
        };
        let probe = keepalive_probe(tuple, 1000, 5000);
        let seg = Segment::parse(&probe, tifid::DEFAULT_KIND).expect("a segment");
        assert_eq!((seg.seq, seg.ack_number, seg.payload_len), (999, 5000, 1));
        assert!(seg.ack && !seg.syn && !seg.rst);
        assert!(checksum_ok(&probe));
    }

    #[test]
    fn four_tuples_reverse_and_parse_returns_psh_and_the_option_bytes() {
        let tuple = FourTuple::new(
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 40000),
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80),
        );
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
}
