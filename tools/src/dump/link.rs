//! Link layers: from a captured frame to the IP packet it carries.
//!
//! Each link type strips its own header and names the network protocol;
//! nothing is printed for the link layer (tcpdump without `-e` prints
//! nothing either, VLAN tags included).

/// Link-layer header types that `tiflow dump` decodes, as
/// `(LINKTYPE number, name)`.
pub const SUPPORTED_LINK_TYPES: [(u32, &str); 13] = [
    (0, "NULL"),
    (1, "ETHERNET"),
    (9, "PPP"),
    (50, "PPP_HDLC"),
    (101, "RAW"),
    (104, "C_HDLC"),
    (108, "LOOP"),
    (113, "LINUX_SLL"),
    (228, "IPV4"),
    (229, "IPV6"),
    (242, "IPOIB"),
    (276, "LINUX_SLL2"),
    (12, "RAW (OpenBSD)"),
];

/// True when `linktype` is one of [`SUPPORTED_LINK_TYPES`].
pub(crate) fn is_supported(linktype: u32) -> bool {
    SUPPORTED_LINK_TYPES.iter().any(|(n, _)| *n == linktype)
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Network<'a> {
    /// An IPv4 packet (or what claims to be one).
    Ipv4(&'a [u8]),
    /// An IPv6 packet.
    Ipv6(&'a [u8]),
    /// Something else: ARP, LLDP, a PPP control protocol, ...
    NotIp,
    /// The frame is too short for its own link header.
    Malformed(&'static str),
}

/// The network-layer packet of `frame` and the length of the link header
/// (so that the packet's length on the wire can be told).
pub(crate) fn network(linktype: u32, frame: &[u8]) -> (Network<'_>, usize) {
    match linktype {
        1 => ethernet(frame),
        101 | 12 => (raw_ip(frame), 0),
        228 => (Network::Ipv4(frame), 0),
        229 => (Network::Ipv6(frame), 0),
        0 | 108 => bsd_loopback(frame, linktype == 108),
        9 | 50 => ppp(frame),
        104 => cisco_hdlc(frame),
        // IP over InfiniBand: 40 bytes of addresses, the EtherType, 2 reserved.
        242 => match be16(frame, 40) {
            Some(ether_type) => (by_ether_type(ether_type, &frame[44.min(frame.len())..]), 44),
            None => (Network::Malformed("frame too short for an IPoIB header"), 0),
        },
        // 16 bytes: packet type, ARPHRD, address length, address (8), protocol.
        113 => cooked(
            frame.get(14..16),
            frame,
            16,
            "frame too short for a Linux SLL header",
        ),
        // 20 bytes: protocol, reserved, ifindex, ARPHRD, packet type, address
        // length, address (8).
        276 => cooked(
            frame.get(0..2),
            frame,
            20,
            "frame too short for a Linux SLL2 header",
        ),
        _ => (Network::NotIp, 0),
    }
}

fn raw_ip(packet: &[u8]) -> Network<'_> {
    match packet.first().map(|b| b >> 4) {
        Some(6) => Network::Ipv6(packet),
        Some(_) => Network::Ipv4(packet),
        None => Network::Malformed("empty raw IP packet"),
    }
}

fn by_ether_type(ether_type: u16, payload: &[u8]) -> Network<'_> {
    match ether_type {
        0x0800 => Network::Ipv4(payload),
        0x86dd => Network::Ipv6(payload),
        0x8847 | 0x8848 => mpls(payload),
        _ => Network::NotIp,
    }
}

/// An MPLS label stack (4 bytes a label, bit 8 of the third byte marks the
/// last), then IP as the first nibble says (tcpdump guesses the same way;
/// labels 0 and 2 are the explicit-null labels of IPv4 and IPv6).
fn mpls(mut payload: &[u8]) -> Network<'_> {
    loop {
        let Some(entry) = payload.get(..4) else {
            return Network::Malformed("frame ends inside an MPLS label stack");
        };
        let label =
            (u32::from(entry[0]) << 12) | (u32::from(entry[1]) << 4) | u32::from(entry[2] >> 4);
        let bottom = entry[2] & 1 == 1;
        payload = &payload[4..];
        if bottom {
            return match (label, payload.first().map(|b| b >> 4)) {
                (0, _) | (_, Some(4)) => Network::Ipv4(payload),
                (2, _) | (_, Some(6)) => Network::Ipv6(payload),
                _ => Network::NotIp,
            };
        }
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Ethernet II, with any number of 802.1Q / 802.1ad (QinQ) tags, and
/// 802.3 frames with an LLC/SNAP header.
fn ethernet(frame: &[u8]) -> (Network<'_>, usize) {
    let Some(mut ether_type) = be16(frame, 12) else {
        return (
            Network::Malformed("bad Ethernet header: frame shorter than 14 bytes"),
            0,
        );
    };
    let mut at = 14;
    while matches!(ether_type, 0x8100 | 0x88a8 | 0x9100 | 0x9200) {
        let Some(inner) = be16(frame, at + 2) else {
            return (Network::Malformed("frame ends inside a VLAN tag"), at);
        };
        ether_type = inner;
        at += 4;
    }
    let payload = &frame[at..];
    if ether_type <= 1500 {
        // 802.3 length: LLC. SNAP (AA AA 03, OUI 0) carries an EtherType.
        return match payload {
            [0xaa, 0xaa, 0x03, 0, 0, 0, hi, lo, rest @ ..] => {
                (by_ether_type(u16::from_be_bytes([*hi, *lo]), rest), at + 8)
            }
            _ => (Network::NotIp, at),
        };
    }
    (by_ether_type(ether_type, payload), at)
}

/// BSD loopback: a 4-byte address family, in the capturing host's byte
/// order (NULL) or in network byte order (LOOP).
fn bsd_loopback(frame: &[u8], network_order: bool) -> (Network<'_>, usize) {
    let Some(bytes) = frame.get(..4) else {
        return (
            Network::Malformed("frame too short for a BSD loopback header"),
            0,
        );
    };
    let bytes: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
    let family = if network_order {
        u32::from_be_bytes(bytes)
    } else {
        // As tcpdump: a family fits in 16 bits, so the order that gives a
        // small number is the host's.
        let le = u32::from_le_bytes(bytes);
        if le & 0xffff_0000 == 0 {
            le
        } else {
            u32::from_be_bytes(bytes)
        }
    };
    let payload = &frame[4..];
    let network = match family {
        2 => Network::Ipv4(payload),
        // AF_INET6 of BSD, FreeBSD and Darwin.
        24 | 28 | 30 => Network::Ipv6(payload),
        _ => Network::NotIp,
    };
    (network, 4)
}

/// PPP (LINKTYPE 9) and PPP in HDLC-like framing (50): an optional
/// address/control pair FF 03, then a protocol number of one byte (odd:
/// compressed) or two.
fn ppp(frame: &[u8]) -> (Network<'_>, usize) {
    if matches!(frame.first(), Some(0x0f | 0x8f)) {
        // Cisco HDLC inside PPP_HDLC, as tcpdump accepts it.
        return cisco_hdlc(frame);
    }
    let mut at = if frame.starts_with(&[0xff, 0x03]) {
        2
    } else {
        0
    };
    let protocol = match frame.get(at) {
        Some(&b) if b & 1 == 1 => {
            at += 1;
            u16::from(b)
        }
        Some(_) => match be16(frame, at) {
            Some(p) => {
                at += 2;
                p
            }
            None => return (Network::Malformed("frame too short for a PPP header"), at),
        },
        None => return (Network::Malformed("frame too short for a PPP header"), at),
    };
    let payload = &frame[at..];
    let network = match protocol {
        0x0021 => Network::Ipv4(payload),
        0x0057 => Network::Ipv6(payload),
        0x0281 | 0x0283 => mpls(payload),
        _ => Network::NotIp,
    };
    (network, at)
}

/// Cisco HDLC: address, control, EtherType.
fn cisco_hdlc(frame: &[u8]) -> (Network<'_>, usize) {
    match be16(frame, 2) {
        Some(ether_type) => (by_ether_type(ether_type, &frame[4..]), 4),
        None => (
            Network::Malformed("frame too short for a Cisco HDLC header"),
            0,
        ),
    }
}

/// A Linux cooked-capture frame: the protocol field is an EtherType.
fn cooked<'a>(
    protocol: Option<&[u8]>,
    frame: &'a [u8],
    header: usize,
    short: &'static str,
) -> (Network<'a>, usize) {
    match (protocol, frame.get(header..)) {
        (Some(&[hi, lo]), Some(payload)) => {
            (by_ether_type(u16::from_be_bytes([hi, lo]), payload), header)
        }
        _ => (Network::Malformed(short), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: [u8; 2] = [0x45, 0];

    #[test]
    fn vlan_tags_are_skipped() {
        let mut frame = vec![0; 12];
        frame.extend_from_slice(&[0x88, 0xa8, 0, 10, 0x81, 0x00, 0, 20, 0x08, 0x00]);
        frame.extend_from_slice(&IP);
        assert_eq!(network(1, &frame), (Network::Ipv4(&IP), 22));
        assert!(matches!(network(1, &frame[..16]).0, Network::Malformed(_)));
    }

    #[test]
    fn loopback_families_in_either_order() {
        let mut null = vec![2, 0, 0, 0];
        null.extend_from_slice(&IP);
        assert_eq!(network(0, &null).0, Network::Ipv4(&IP));
        let loop6 = [0, 0, 0, 30, 0x60];
        assert_eq!(network(108, &loop6).0, Network::Ipv6(&[0x60]));
        assert_eq!(network(0, &[0, 0, 0, 24, 0x60]).0, Network::Ipv6(&[0x60]));
        assert!(matches!(network(0, &[2]).0, Network::Malformed(_)));
    }

    #[test]
    fn ppp_with_and_without_address_and_control() {
        assert_eq!(
            network(9, &[0xff, 0x03, 0, 0x21, 0x45]).0,
            Network::Ipv4(&[0x45])
        );
        assert_eq!(network(9, &[0x21, 0x45]).0, Network::Ipv4(&[0x45]));
        assert_eq!(
            network(50, &[0xff, 0x03, 0, 0x57, 0x60]).0,
            Network::Ipv6(&[0x60])
        );
        assert_eq!(
            network(50, &[0x0f, 0, 0x08, 0, 0x45]).0,
            Network::Ipv4(&[0x45])
        );
        assert_eq!(network(9, &[0xc0, 0x21, 1]).0, Network::NotIp);
        assert!(matches!(network(9, &[0xff, 0x03]).0, Network::Malformed(_)));
    }

    #[test]
    fn mpls_labels_are_skipped() {
        let frame = [0xff, 0x03, 0x02, 0x81, 0, 0x10, 0, 64, 0, 0x20, 1, 64, 0x45];
        assert_eq!(network(9, &frame).0, Network::Ipv4(&[0x45]));
        assert!(matches!(network(9, &frame[..8]).0, Network::Malformed(_)));
    }
}
