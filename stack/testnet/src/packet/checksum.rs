//! Internet checksums (RFC 1071) of packets laid out in bytes: filling them
//! for the builder, checking them, and refilling them after a test edited
//! a packet by hand. Computed over the bytes as they are, so a header a
//! test broke on purpose gets a checksum that matches it.

use std::net::IpAddr;

use etherparse::checksum::Sum16BitWords;

use super::ChecksumKind;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

/// The IPv4 header checksum of `header` (its checksum field read as 0).
pub(super) fn ipv4_header(header: &[u8]) -> u16 {
    let Some((before, rest)) = header.split_at_checked(10) else {
        return 0;
    };
    let after = rest.get(2..).unwrap_or_default();
    Sum16BitWords::new()
        .add_slice(before)
        .add_slice(after)
        .ones_complement()
        .to_be()
}

/// The pseudo-header of a transport checksum.
fn pseudo_header(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, protocol]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (s, d) => {
            p.extend_from_slice(&v6_octets(s));
            p.extend_from_slice(&v6_octets(d));
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, protocol]);
        }
    }
    p
}

fn v6_octets(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The checksum of `segment` as `kind` computes it, with its checksum
/// field read as 0; `None` when it has none or is too short to hold it.
fn compute(
    segment: &[u8],
    kind: ChecksumKind,
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
) -> Option<u16> {
    let (at, pseudo, zero_as_ffff) = match kind {
        ChecksumKind::None => return None,
        ChecksumKind::Plain(at) => (at, None, false),
        ChecksumKind::Pseudo { at, zero_as_ffff } => (
            at,
            Some(pseudo_header(src, dst, protocol, segment.len())),
            zero_as_ffff,
        ),
    };
    let before = segment.get(..at)?;
    let after = segment.get(at + 2..)?;
    let mut sum = Sum16BitWords::new();
    if let Some(pseudo) = pseudo {
        sum = sum.add_slice(&pseudo);
    }
    // `before` has an even length for every kind here (2, 6, 16).
    let value = sum
        .add_slice(before)
        .add_slice(after)
        .ones_complement()
        .to_be();
    Some(if value == 0 && zero_as_ffff {
        0xffff
    } else {
        value
    })
}

/// Writes the checksum of `segment` (nothing if it has none or is too
/// short to hold it).
pub(super) fn fill_segment(
    segment: &mut [u8],
    kind: ChecksumKind,
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
) {
    let Some(value) = compute(segment, kind, src, dst, protocol) else {
        return;
    };
    if let Some(field) = checksum_field(kind, segment) {
        field.copy_from_slice(&value.to_be_bytes());
    }
}

/// Flips one bit of the segment's checksum (a value never equivalent to
/// the right one).
pub(super) fn spoil(segment: &mut [u8], kind: ChecksumKind) {
    if let Some(field) = checksum_field(kind, segment) {
        field[0] ^= 0x40;
    }
}

fn checksum_field(kind: ChecksumKind, segment: &mut [u8]) -> Option<&mut [u8]> {
    let at = match kind {
        ChecksumKind::None => return None,
        ChecksumKind::Plain(at) | ChecksumKind::Pseudo { at, .. } => at,
    };
    segment.get_mut(at..at + 2)
}

/// The checksum kind of `protocol` over IP.
fn kind_of(protocol: u8) -> ChecksumKind {
    match protocol {
        TCP => ChecksumKind::Pseudo {
            at: 16,
            zero_as_ffff: false,
        },
        UDP => ChecksumKind::Pseudo {
            at: 6,
            zero_as_ffff: true,
        },
        ICMP => ChecksumKind::Plain(2),
        _ => ChecksumKind::None,
    }
}

/// A transport segment's minimum length for `protocol`.
fn min_len(protocol: u8) -> usize {
    match protocol {
        TCP => 20,
        UDP => 8,
        ICMP => 4,
        _ => 0,
    }
}

/// The parts of an IPv4 packet in `packet`: header length, end of the
/// packet (total length), source, destination, protocol. `None` unless
/// 20 <= IHL * 4 <= total length <= `packet.len()` (the version nibble is
/// not looked at).
fn ipv4_layout(packet: &[u8]) -> Option<(usize, usize, IpAddr, IpAddr, u8)> {
    let header = packet.get(..20)?;
    let ihl = usize::from(header[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if ihl < 20 || ihl > total || total > packet.len() {
        return None;
    }
    let src = IpAddr::from([header[12], header[13], header[14], header[15]]);
    let dst = IpAddr::from([header[16], header[17], header[18], header[19]]);
    Some((ihl, total, src, dst, header[9]))
}

/// Both checksums of an IPv4 packet (header, and TCP, UDP or ICMP), or the
/// TCP or UDP checksum of an IPv6 packet without extension headers, verify.
/// False for what does not parse that far; other protocols have only the
/// IPv4 header checked. A UDP checksum of 0 (none sent) verifies.
pub fn checksums_ok(packet: &[u8]) -> bool {
    match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let Some((ihl, total, src, dst, protocol)) = ipv4_layout(packet) else {
                return false;
            };
            let header = &packet[..ihl];
            let stored = u16::from_be_bytes([header[10], header[11]]);
            ipv4_header(header) == stored && segment_ok(&packet[ihl..total], src, dst, protocol)
        }
        Some(6) => {
            let Some(header) = packet.get(..40) else {
                return false;
            };
            let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
            let Some(segment) = packet.get(40..40 + len) else {
                return false;
            };
            let octets = |at: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&header[at..at + 16]);
                IpAddr::from(a)
            };
            matches!(header[6], TCP | UDP) && segment_ok(segment, octets(8), octets(24), header[6])
        }
        _ => false,
    }
}

fn segment_ok(segment: &[u8], src: IpAddr, dst: IpAddr, protocol: u8) -> bool {
    if segment.len() < min_len(protocol) {
        return false;
    }
    let kind = kind_of(protocol);
    let at = match kind {
        ChecksumKind::None => return true,
        ChecksumKind::Plain(at) | ChecksumKind::Pseudo { at, .. } => at,
    };
    let stored = u16::from_be_bytes([segment[at], segment[at + 1]]);
    if protocol == UDP && stored == 0 {
        return true;
    }
    compute(segment, kind, src, dst, protocol) == Some(stored)
}

/// Recomputes the checksums of the IPv4 packet in `packet` after a test
/// edited it: the header's, and the TCP, UDP or ICMP one (by the protocol
/// field) when the segment is long enough to hold it. Does nothing unless
/// 20 <= IHL * 4 <= total length <= `packet.len()`; never panics.
pub fn refill_checksums(packet: &mut [u8]) {
    let Some((ihl, total, src, dst, protocol)) = ipv4_layout(packet) else {
        return;
    };
    let sum = ipv4_header(&packet[..ihl]);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    let segment = &mut packet[ihl..total];
    if segment.len() >= min_len(protocol) {
        fill_segment(segment, kind_of(protocol), src, dst, protocol);
    }
}

/// Flips one bit of the TCP, UDP or ICMP checksum of the IPv4 packet in
/// `packet` (by its protocol field), for packets the builder did not make
/// (one a stack emitted, say). Does nothing to what does not lay out as in
/// [`refill_checksums`] or is too short to hold the field.
pub fn spoil_checksum(packet: &mut [u8]) {
    let Some((ihl, total, _, _, protocol)) = ipv4_layout(packet) else {
        return;
    };
    spoil(&mut packet[ihl..total], kind_of(protocol));
}
