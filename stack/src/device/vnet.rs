//! The virtio-net header of a TUN opened with `IFF_VNET_HDR`, and the
//! checksum work offloads leave to userspace.
//!
//! Owns [`VnetHeader`] (the 10-byte `struct virtio_net_hdr` that precedes
//! every packet read from or written to such a TUN: encode, decode),
//! [`prepare_ingress`] (turns what the kernel hands us, possibly a coalesced
//! TCP/IPv4 or TCP/IPv6 segment of up to 64 KiB with a partial checksum,
//! into a packet smoltcp accepts: the whole segment with its checksum
//! completed) and [`prepare_egress`] (the header for what smoltcp emits: a
//! partial TCP checksum for the kernel to complete, either family, and
//! `GSO_TCPV4` when a TCP/IPv4 segment must be cut by the kernel; smoltcp
//! 0.14 never emits TCP/IPv6 segments larger than the MTU, so `GSO_TCPV6`
//! is only ever received). Pure functions on byte slices: no I/O, no clock. Never panics
//! on any input: what cannot be made right is an error the device counts and
//! drops.
//!
//! Reference: `include/uapi/linux/virtio_net.h` and
//! `include/linux/virtio_net.h` (what the kernel checks). The fields are in
//! the host's byte order: a TUN uses native order unless told otherwise
//! (`TUNSETVNETLE`/`TUNSETVNETBE`, which we never call).

use core::num::NonZeroU16;

use smoltcp::wire::{
    IPV6_HEADER_LEN, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, checksum,
};

/// Length of the header (`struct virtio_net_hdr`, without `num_buffers`:
/// the TUN's default `vnet_hdr_sz`).
pub const HEADER_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start +
/// csum_offset` holds only the pseudo-header sum; the rest is to be added.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the kernel already checked the checksum.
pub const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_F_RSC_INFO`: receive-segment-coalescing info (not for TUN).
pub const F_RSC_INFO: u8 = 4;

/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP` (UFO).
pub const GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO).
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`: a flag on the GSO type (ECN/CWR to keep).
pub const GSO_ECN: u8 = 0x80;

/// Offset of the checksum field in a TCP header.
const TCP_CHECKSUM_OFFSET: u16 = 16;

/// `struct virtio_net_hdr`: how the packet after it is to be segmented and
/// checksummed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHeader {
    /// `F_NEEDS_CSUM`, `F_DATA_VALID`.
    pub flags: u8,
    /// `GSO_NONE`, `GSO_TCPV4`, ... possibly with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of the headers to copy into every segment (a hint).
    pub hdr_len: u16,
    /// Payload bytes per segment after segmentation.
    pub gso_size: u16,
    /// Where the checksummed range starts (the transport header).
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum field is.
    pub csum_offset: u16,
}

/// Why a packet read from the TUN was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VnetError {
    /// Shorter than the virtio-net header.
    #[error("packet shorter than the virtio-net header")]
    Truncated,
    /// Flag bits a TUN never sets.
    #[error("unknown virtio-net header flags {0:#04x}")]
    UnknownFlags(u8),
    /// A GSO type we did not enable (or no GSO type at all).
    #[error("unsupported GSO type {0:#04x}")]
    UnsupportedGso(u8),
    /// The checksum range or field lies outside the packet.
    #[error("checksum start {start} + offset {offset} outside a {len}-byte packet")]
    ChecksumOutOfRange {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// Packet length.
        len: usize,
    },
    /// A TCP/IPv4 segment was expected (GSO) but the packet is not one, or
    /// its IPv4 length disagrees with what was read; or a segment size came
    /// with a packet we do not ask the kernel to segment (anything but
    /// TCP/IPv4).
    #[error("GSO packet is not a well-formed TCP/IPv4 segment")]
    NotTcpV4,
    /// A TCP/IPv6 segment was expected (`GSO_TCPV6`) but the packet is not
    /// one (extension headers included), or its IPv6 payload length
    /// disagrees with what was read.
    #[error("GSO packet is not a well-formed TCP/IPv6 segment")]
    NotTcpV6,
}

impl VnetHeader {
    /// A header asking for nothing: no segmentation, checksums complete.
    pub const NONE: VnetHeader = VnetHeader {
        flags: 0,
        gso_type: GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Decodes the header at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<VnetHeader, VnetError> {
        let b: &[u8; HEADER_LEN] = buf
            .get(..HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(VnetError::Truncated)?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Ok(VnetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// Encodes the header.
    pub fn emit(&self, buf: &mut [u8; HEADER_LEN]) {
        buf[0] = self.flags;
        buf[1] = self.gso_type;
        buf[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        buf[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        buf[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        buf[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }

    /// The GSO type without the ECN flag.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }
}

/// What [`prepare_ingress`] did to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// An ordinary packet, passed on as it was.
    Plain,
    /// A packet whose partial checksum was completed here.
    ChecksumCompleted,
    /// A coalesced TCP segment (larger than the MTU allows on a wire),
    /// passed on whole with its TCP checksum computed here.
    Coalesced,
}

/// Makes `packet` (what followed `header` in one read) acceptable to
/// smoltcp, in place: completes a partial checksum, or for a coalesced TCP
/// segment computes its whole TCP checksum. Errors leave the packet to be
/// dropped.
pub fn prepare_ingress(header: &VnetHeader, packet: &mut [u8]) -> Result<Ingress, VnetError> {
    let known = F_NEEDS_CSUM | F_DATA_VALID | F_RSC_INFO;
    if header.flags & !known != 0 {
        return Err(VnetError::UnknownFlags(header.flags));
    }
    match header.gso_kind() {
        GSO_NONE if header.gso_type & GSO_ECN != 0 => {
            Err(VnetError::UnsupportedGso(header.gso_type))
        }
        GSO_NONE if header.flags & F_NEEDS_CSUM != 0 => {
            complete_checksum(packet, header.csum_start, header.csum_offset)?;
            Ok(Ingress::ChecksumCompleted)
        }
        GSO_NONE => Ok(Ingress::Plain),
        // The kernel's csum fields and hdr_len are hints only (hdr_len can
        // cover a whole first packet on the forward path): the checksum is
        // recomputed from the headers themselves.
        GSO_TCPV4 => {
            fill_tcpv4_checksum(packet)?;
            Ok(Ingress::Coalesced)
        }
        GSO_TCPV6 => {
            fill_tcpv6_checksum(packet)?;
            Ok(Ingress::Coalesced)
        }
        _ => Err(VnetError::UnsupportedGso(header.gso_type)),
    }
}

/// Completes a partial checksum as the kernel's `skb_checksum_help` does:
/// the field at `start + offset` holds the pseudo-header sum; the sum of
/// everything from `start` to the end (that field included), complemented,
/// replaces it.
pub fn complete_checksum(packet: &mut [u8], start: u16, offset: u16) -> Result<(), VnetError> {
    let out_of_range = VnetError::ChecksumOutOfRange {
        start,
        offset,
        len: packet.len(),
    };
    let field = usize::from(start) + usize::from(offset);
    if field + 2 > packet.len() {
        return Err(out_of_range);
    }
    let sum = checksum::data(&packet[usize::from(start)..]);
    // A computed zero is sent as its other form (RFC 768: zero means "no
    // checksum" for UDP; the same value for TCP).
    let value = match !sum {
        0 => 0xffff,
        v => v,
    };
    packet[field..field + 2].copy_from_slice(&value.to_be_bytes());
    Ok(())
}

/// The TCP/IPv4 headers of `packet`: (IP header length, TCP header
/// length, source, destination), checked against the packet's length.
fn tcpv4_headers(packet: &[u8]) -> Result<(usize, usize, IpAddress, IpAddress), VnetError> {
    let ip = Ipv4Packet::new_checked(packet).map_err(|_| VnetError::NotTcpV4)?;
    if ip.version() != 4
        || ip.next_header() != IpProtocol::Tcp
        || ip.more_frags()
        || ip.frag_offset() != 0
        || usize::from(ip.total_len()) != packet.len()
    {
        return Err(VnetError::NotTcpV4);
    }
    let ip_len = usize::from(ip.header_len());
    let tcp = TcpPacket::new_checked(ip.payload()).map_err(|_| VnetError::NotTcpV4)?;
    let tcp_len = usize::from(tcp.header_len());
    Ok((
        ip_len,
        tcp_len,
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    ))
}

/// Computes the full TCP checksum of a TCP/IPv4 packet in place.
pub fn fill_tcpv4_checksum(packet: &mut [u8]) -> Result<(), VnetError> {
    let (ip_len, _, src, dst) = tcpv4_headers(packet)?;
    TcpPacket::new_unchecked(&mut packet[ip_len..]).fill_checksum(&src, &dst);
    Ok(())
}

/// The TCP/IPv6 headers of `packet` (no extension headers): (source,
/// destination), checked against the packet's length.
fn tcpv6_headers(packet: &[u8]) -> Result<(IpAddress, IpAddress), VnetError> {
    let ip = Ipv6Packet::new_checked(packet).map_err(|_| VnetError::NotTcpV6)?;
    if ip.version() != 6
        || ip.next_header() != IpProtocol::Tcp
        || usize::from(ip.payload_len()) + IPV6_HEADER_LEN != packet.len()
    {
        return Err(VnetError::NotTcpV6);
    }
    TcpPacket::new_checked(ip.payload()).map_err(|_| VnetError::NotTcpV6)?;
    Ok((
        IpAddress::Ipv6(ip.src_addr()),
        IpAddress::Ipv6(ip.dst_addr()),
    ))
}

/// Computes the full TCP checksum of a TCP/IPv6 packet (no extension
/// headers) in place.
pub fn fill_tcpv6_checksum(packet: &mut [u8]) -> Result<(), VnetError> {
    let (src, dst) = tcpv6_headers(packet)?;
    TcpPacket::new_unchecked(&mut packet[IPV6_HEADER_LEN..]).fill_checksum(&src, &dst);
    Ok(())
}

/// Where the TCP header of an unfragmented TCP/IPv4 or TCP/IPv6 packet
/// (no IPv6 extension headers) starts, with its pseudo-header sum; `None`
/// for anything else.
fn tcp_pseudo_header(packet: &[u8]) -> Option<(usize, u16)> {
    match packet.first()? >> 4 {
        4 => {
            let (ip_len, _, src, dst) = tcpv4_headers(packet).ok()?;
            let (IpAddress::Ipv4(src), IpAddress::Ipv4(dst)) = (src, dst) else {
                return None;
            };
            let len = (packet.len() - ip_len) as u32;
            Some((
                ip_len,
                checksum::pseudo_header_v4(&src, &dst, IpProtocol::Tcp, len),
            ))
        }
        6 => {
            let (IpAddress::Ipv6(src), IpAddress::Ipv6(dst)) = tcpv6_headers(packet).ok()? else {
                return None;
            };
            let len = (packet.len() - IPV6_HEADER_LEN) as u32;
            Some((
                IPV6_HEADER_LEN,
                checksum::pseudo_header_v6(&src, &dst, IpProtocol::Tcp, len),
            ))
        }
        _ => None,
    }
}

/// The header for a packet smoltcp emitted, and the packet made ready for
/// it. With offloads smoltcp leaves TCP checksums to the device (it must,
/// to segment), so every TCP packet leaves with `NEEDS_CSUM` and the
/// pseudo-header sum in its checksum field, as the kernel expects (whatever
/// the field held: zero from smoltcp, a full checksum from the boundary).
/// `gso_size` is smoltcp's `PacketMeta::segmentation_offload_size`: the
/// payload of each segment the kernel is to cut; a TCP/IPv4 segment whose
/// payload exceeds it also gets `GSO_TCPV4`. TCP/IPv6 gets the partial
/// checksum but no segmentation (smoltcp never asks: see the module
/// documentation); a segment size on it is an error. Any other packet goes
/// as it is, under [`VnetHeader::NONE`].
pub fn prepare_egress(
    packet: &mut [u8],
    gso_size: Option<NonZeroU16>,
) -> Result<VnetHeader, VnetError> {
    let Some((csum_start, pseudo)) = tcp_pseudo_header(packet) else {
        return match gso_size {
            Some(_) => Err(VnetError::NotTcpV4),
            None => Ok(VnetHeader::NONE),
        };
    };
    // In range: `tcp_pseudo_header` checked a full TCP header is there.
    let field = csum_start + usize::from(TCP_CHECKSUM_OFFSET);
    let tcp_header_len = usize::from(packet[csum_start + 12] >> 4) * 4;
    let headers = csum_start + tcp_header_len;
    packet[field..field + 2].copy_from_slice(&pseudo.to_be_bytes());
    // Lengths fit a u16: the IP length fields said so.
    let mut header = VnetHeader {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_NONE,
        hdr_len: headers as u16,
        gso_size: 0,
        csum_start: csum_start as u16,
        csum_offset: TCP_CHECKSUM_OFFSET,
    };
    if let Some(size) = gso_size
        && packet.len() - headers > usize::from(size.get())
    {
        if packet[0] >> 4 == 6 {
            return Err(VnetError::NotTcpV4);
        }
        header.gso_type = GSO_TCPV4;
        header.gso_size = size.get();
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::Ipv4Address;

    const SRC: Ipv4Address = Ipv4Address::new(10, 7, 0, 2);
    const DST: Ipv4Address = Ipv4Address::new(10, 7, 0, 1);

    /// A TCP/IPv4 packet with `payload_len` bytes of payload, checksums
    /// complete, 12 bytes of options (NOP NOP timestamps).
    fn tcp_packet(payload_len: usize) -> Vec<u8> {
        let tcp_len = 32;
        let total = 20 + tcp_len + payload_len;
        let mut p = vec![0u8; total];
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
            ip.set_version(4);
            ip.set_header_len(20);
            ip.set_total_len(total as u16);
            ip.set_hop_limit(64);
            ip.set_next_header(IpProtocol::Tcp);
            ip.set_src_addr(SRC);
            ip.set_dst_addr(DST);
            ip.set_dont_frag(true);
            ip.fill_checksum();
        }
        {
            let mut tcp = TcpPacket::new_unchecked(&mut p[20..]);
            tcp.set_src_port(40000);
            tcp.set_dst_port(5001);
            tcp.set_seq_number(smoltcp::wire::TcpSeqNumber(7));
            tcp.set_header_len(tcp_len as u8);
            tcp.set_ack(true);
            tcp.set_window_len(1000);
        }
        p[40..44].copy_from_slice(&[1, 1, 8, 10]);
        for (i, b) in p[52..].iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        fill_tcpv4_checksum(&mut p).expect("well-formed");
        p
    }

    fn tcp_checksum_ok(p: &[u8]) -> bool {
        let tcp = TcpPacket::new_checked(&p[20..]).expect("tcp");
        tcp.verify_checksum(&IpAddress::Ipv4(SRC), &IpAddress::Ipv4(DST))
    }

    /// Replaces a packet's TCP checksum by the pseudo-header sum, as a
    /// kernel handing out a CHECKSUM_PARTIAL packet does.
    fn make_partial(p: &mut [u8]) {
        let pseudo = checksum::pseudo_header_v4(&SRC, &DST, IpProtocol::Tcp, (p.len() - 20) as u32);
        p[36..38].copy_from_slice(&pseudo.to_be_bytes());
    }

    #[test]
    fn header_encodes_and_decodes() {
        let h = VnetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 52,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut buf = [0u8; HEADER_LEN];
        h.emit(&mut buf);
        assert_eq!(VnetHeader::parse(&buf), Ok(h));
        assert_eq!(h.gso_kind(), GSO_TCPV4);
        #[cfg(target_endian = "little")]
        assert_eq!(buf, [1, 0x81, 52, 0, 0xa8, 0x05, 20, 0, 16, 0]);
        let mut none = [0xffu8; HEADER_LEN];
        VnetHeader::NONE.emit(&mut none);
        assert_eq!(none, [0; HEADER_LEN]);
    }

    #[test]
    fn truncated_header_is_an_error() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                VnetHeader::parse(&[0u8; HEADER_LEN][..len]),
                Err(VnetError::Truncated)
            );
        }
        assert!(VnetHeader::parse(&[0u8; HEADER_LEN + 3]).is_ok());
    }

    #[test]
    fn partial_checksum_is_completed_for_even_and_odd_lengths() {
        for payload in [0, 1, 2, 3, 999, 1000, 1447, 1448] {
            let mut p = tcp_packet(payload);
            let good = p.clone();
            make_partial(&mut p);
            let h = VnetHeader {
                flags: F_NEEDS_CSUM,
                csum_start: 20,
                csum_offset: 16,
                ..VnetHeader::NONE
            };
            assert_eq!(prepare_ingress(&h, &mut p), Ok(Ingress::ChecksumCompleted));
            assert!(tcp_checksum_ok(&p), "payload {payload}: checksum completed");
            assert_eq!(p, good, "payload {payload}: same bytes as a full checksum");
        }
    }

    #[test]
    fn completed_checksum_of_zero_is_sent_as_ffff() {
        // Bytes summing to 0xffff: the complement is 0, sent as 0xffff.
        let mut p = [0xff, 0x00, 0x00, 0xff, 0x00, 0x00];
        complete_checksum(&mut p, 0, 4).expect("in range");
        assert_eq!(&p[4..], &[0xff, 0xff]);
    }

    #[test]
    fn checksum_fields_outside_the_packet_are_rejected() {
        let mut p = tcp_packet(10);
        let len = p.len();
        for (start, offset) in [
            (len as u16, 0),
            (len as u16 - 1, 0),
            (20, len as u16),
            (u16::MAX, u16::MAX),
            (0, len as u16 - 1),
        ] {
            let h = VnetHeader {
                flags: F_NEEDS_CSUM,
                csum_start: start,
                csum_offset: offset,
                ..VnetHeader::NONE
            };
            let before = p.clone();
            assert!(
                matches!(
                    prepare_ingress(&h, &mut p),
                    Err(VnetError::ChecksumOutOfRange { .. })
                ),
                "start {start} offset {offset}"
            );
            assert_eq!(p, before, "a rejected packet is not modified");
        }
        // The last two bytes are a valid place for a checksum.
        assert!(complete_checksum(&mut p, 0, len as u16 - 2).is_ok());
    }

    #[test]
    fn coalesced_segment_gets_its_full_checksum() {
        let mut p = tcp_packet(60_000);
        let good = p.clone();
        // Whatever the kernel left in the field (partial sum, or garbage).
        p[36] ^= 0x5a;
        let h = VnetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        };
        assert_eq!(prepare_ingress(&h, &mut p), Ok(Ingress::Coalesced));
        assert_eq!(p, good);
        assert!(tcp_checksum_ok(&p));
    }

    #[test]
    fn garbage_headers_are_errors_never_panics() {
        let p = tcp_packet(100);
        let mut bad_gso = 0;
        for flags in 0..=u8::MAX {
            for gso_type in [0, 1, 2, 3, 4, 5, 6, 0x7f, 0x80, 0x81, 0xff] {
                for (start, offset) in [(0, 0), (20, 16), (u16::MAX, 0), (0, u16::MAX)] {
                    let h = VnetHeader {
                        flags,
                        gso_type,
                        hdr_len: u16::MAX,
                        gso_size: 0,
                        csum_start: start,
                        csum_offset: offset,
                    };
                    for len in [0, 1, 19, 20, 39, 40, 52, p.len() - 1, p.len()] {
                        let mut q = p[..len].to_vec();
                        if prepare_ingress(&h, &mut q).is_err() && gso_type & !GSO_ECN > 1 {
                            bad_gso += 1;
                        }
                    }
                }
            }
        }
        assert!(bad_gso > 0);
        // Specific verdicts.
        let mut q = p.clone();
        let unknown = VnetHeader {
            flags: 0x10,
            ..VnetHeader::NONE
        };
        assert_eq!(
            prepare_ingress(&unknown, &mut q),
            Err(VnetError::UnknownFlags(0x10))
        );
        for t in [GSO_UDP, GSO_UDP_L4, 2, GSO_ECN] {
            let h = VnetHeader {
                gso_type: t,
                ..VnetHeader::NONE
            };
            assert_eq!(
                prepare_ingress(&h, &mut q),
                Err(VnetError::UnsupportedGso(t))
            );
        }
        let tcpv4 = VnetHeader {
            gso_type: GSO_TCPV4,
            ..VnetHeader::NONE
        };
        let mut truncated = p[..p.len() - 1].to_vec();
        assert_eq!(
            prepare_ingress(&tcpv4, &mut truncated),
            Err(VnetError::NotTcpV4),
            "IPv4 length disagrees with what was read"
        );
        let mut udp = p.clone();
        udp[9] = 17;
        assert_eq!(prepare_ingress(&tcpv4, &mut udp), Err(VnetError::NotTcpV4));
        let tcpv6 = VnetHeader {
            gso_type: GSO_TCPV6,
            ..VnetHeader::NONE
        };
        assert_eq!(
            prepare_ingress(&tcpv6, &mut q),
            Err(VnetError::NotTcpV6),
            "an IPv4 packet under GSO_TCPV6"
        );
        assert_eq!(
            prepare_ingress(&VnetHeader::NONE, &mut q),
            Ok(Ingress::Plain)
        );
        assert_eq!(q, p, "a plain packet is passed on unchanged");
    }

    #[test]
    fn large_segment_leaves_with_gso_and_a_partial_checksum() {
        let mut p = tcp_packet(20_000);
        let size = NonZeroU16::new(1448);
        let h = prepare_egress(&mut p, size).expect("tcp");
        assert_eq!(
            h,
            VnetHeader {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: 52,
                gso_size: 1448,
                csum_start: 20,
                csum_offset: 16,
            }
        );
        // What the kernel does next: complete the checksum over the whole.
        let mut completed = p.clone();
        complete_checksum(&mut completed, h.csum_start, h.csum_offset).expect("in range");
        assert!(
            tcp_checksum_ok(&completed),
            "partial + data = full checksum"
        );
        assert_eq!(completed, tcp_packet(20_000));
    }

    #[test]
    fn other_tcp_packets_leave_whole_with_a_partial_checksum() {
        for (payload, size) in [
            (1448, NonZeroU16::new(1448)),
            (100, None),
            (0, None),
            (7, NonZeroU16::new(1448)),
        ] {
            let mut p = tcp_packet(payload);
            // smoltcp leaves the field zero when the device checksums.
            p[36..38].copy_from_slice(&[0, 0]);
            let h = prepare_egress(&mut p, size).expect("tcp");
            assert_eq!(h.gso_type, GSO_NONE, "payload {payload}: not cut");
            assert_eq!(h.flags, F_NEEDS_CSUM);
            assert_eq!((h.csum_start, h.csum_offset, h.hdr_len), (20, 16, 52));
            complete_checksum(&mut p, h.csum_start, h.csum_offset).expect("in range");
            assert_eq!(p, tcp_packet(payload), "payload {payload}: kernel's result");
        }
    }

    #[test]
    fn non_tcp_packets_leave_unchanged_with_gso_none() {
        let mut udp = tcp_packet(3000);
        udp[9] = 17;
        let before = udp.clone();
        assert_eq!(prepare_egress(&mut udp, None), Ok(VnetHeader::NONE));
        assert_eq!(udp, before);
        assert_eq!(
            prepare_egress(&mut udp, NonZeroU16::new(1000)),
            Err(VnetError::NotTcpV4),
            "a segment size on a packet we cannot segment"
        );
        for junk in [
            &mut [][..],
            &mut [0x45][..],
            &mut [0x60, 0, 0][..],
            &mut [0u8; 3][..],
        ] {
            assert_eq!(prepare_egress(junk, None), Ok(VnetHeader::NONE));
            assert_eq!(
                prepare_egress(junk, NonZeroU16::new(1000)),
                Err(VnetError::NotTcpV4)
            );
        }
    }

    const SRC6: smoltcp::wire::Ipv6Address =
        smoltcp::wire::Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    const DST6: smoltcp::wire::Ipv6Address =
        smoltcp::wire::Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);

    /// A TCP/IPv6 packet with `payload` bytes of payload, checksum complete.
    fn tcp6_packet(payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; IPV6_HEADER_LEN + 20 + payload];
        {
            let mut ip = Ipv6Packet::new_unchecked(&mut p[..]);
            ip.set_version(6);
            ip.set_payload_len((20 + payload) as u16);
            ip.set_next_header(IpProtocol::Tcp);
            ip.set_hop_limit(64);
            ip.set_src_addr(SRC6);
            ip.set_dst_addr(DST6);
        }
        {
            let mut tcp = TcpPacket::new_unchecked(&mut p[IPV6_HEADER_LEN..]);
            tcp.set_header_len(20);
            tcp.set_src_port(1);
            tcp.set_dst_port(2);
            tcp.set_ack(true);
        }
        for (i, b) in p[60..].iter_mut().enumerate() {
            *b = (i * 5 + 1) as u8;
        }
        fill_tcpv6_checksum(&mut p).expect("well-formed");
        p
    }

    fn tcp6_checksum_ok(p: &[u8]) -> bool {
        let tcp = TcpPacket::new_checked(&p[IPV6_HEADER_LEN..]).expect("tcp");
        tcp.verify_checksum(&IpAddress::Ipv6(SRC6), &IpAddress::Ipv6(DST6))
    }

    #[test]
    fn ipv6_tcp_gets_a_partial_checksum_but_no_segmentation() {
        let mut p = tcp6_packet(3000);
        p[IPV6_HEADER_LEN + 16..IPV6_HEADER_LEN + 18].copy_from_slice(&[0, 0]);
        let h = prepare_egress(&mut p, None).expect("tcp over ipv6");
        assert_eq!(
            (h.flags, h.gso_type, h.csum_start, h.csum_offset, h.hdr_len),
            (F_NEEDS_CSUM, GSO_NONE, 40, 16, 60)
        );
        complete_checksum(&mut p, h.csum_start, h.csum_offset).expect("in range");
        assert!(tcp6_checksum_ok(&p));
        assert_eq!(p, tcp6_packet(3000), "the kernel's result: a full checksum");
        assert_eq!(
            prepare_egress(&mut p, NonZeroU16::new(1000)),
            Err(VnetError::NotTcpV4),
            "no TCP/IPv6 segmentation asked of the kernel"
        );
    }

    #[test]
    fn coalesced_ipv6_segment_gets_its_full_checksum() {
        // The largest payload an IPv6 length field allows, less the TCP
        // header: more than the largest IPv4 packet.
        for payload in [1, 1440, 60_000, 65_535 - 20] {
            let mut p = tcp6_packet(payload);
            let good = p.clone();
            p[IPV6_HEADER_LEN + 16] ^= 0x5a;
            let h = VnetHeader {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV6,
                hdr_len: 60,
                gso_size: 1440,
                csum_start: 40,
                csum_offset: 16,
            };
            assert_eq!(prepare_ingress(&h, &mut p), Ok(Ingress::Coalesced));
            assert_eq!(p, good, "payload {payload}");
            assert!(tcp6_checksum_ok(&p));
        }
    }

    #[test]
    fn malformed_ipv6_gso_packets_are_errors() {
        let h = VnetHeader {
            gso_type: GSO_TCPV6,
            ..VnetHeader::NONE
        };
        let p = tcp6_packet(2000);
        let mut cut = p[..p.len() - 1].to_vec();
        assert_eq!(prepare_ingress(&h, &mut cut), Err(VnetError::NotTcpV6));
        let mut udp = p.clone();
        udp[6] = 17;
        assert_eq!(prepare_ingress(&h, &mut udp), Err(VnetError::NotTcpV6));
        let mut ext = p.clone();
        ext[6] = 0; // a hop-by-hop header: TCP behind it is not inspected
        assert_eq!(prepare_ingress(&h, &mut ext), Err(VnetError::NotTcpV6));
        for len in [0, 1, 39, 40, 59] {
            let mut short = p[..len].to_vec();
            assert_eq!(prepare_ingress(&h, &mut short), Err(VnetError::NotTcpV6));
        }
    }
}
