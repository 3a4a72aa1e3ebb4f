//! IPv4 and IPv6 headers, read as tcpdump reads them: which bytes belong to
//! the payload, and the payload length tcpdump prints (from the IP header,
//! bounded by the packet's length on the wire, not by what was captured).

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::link::Network;

/// `IP` or `IP6`, as tcpdump starts its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// tcpdump's name of the protocol.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Family::V4 => "IP",
            Family::V6 => "IP6",
        }
    }
}

/// An IP header that could be read, and its payload.
#[derive(Debug, Clone)]
pub(crate) struct IpPacket<'a> {
    pub family: Family,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Protocol (IPv4) or the first next header (IPv6).
    pub protocol: u8,
    /// The captured payload, cut at the end the IP header announces.
    pub payload: &'a [u8],
    /// tcpdump's payload length: from the IP header, no more than the wire
    /// length allows (IPv4); from the IPv6 payload length field (IPv6).
    pub length: u32,
    /// A non-first IPv4 fragment: no transport header in it.
    pub later_fragment: bool,
    /// tcpdump's warnings between `IP ` and the addresses, e.g.
    /// `[total length 60 > length 50] (invalid) `.
    pub warning: String,
}

/// Reads the IP header of `network`; `wire_len` is the packet's length on
/// the wire from the start of the IP header. An error says why the header
/// cannot be read.
pub(crate) fn parse(network: Network<'_>, wire_len: u32) -> Result<IpPacket<'_>, String> {
    match network {
        Network::Ipv4(bytes) => ipv4(bytes, wire_len),
        Network::Ipv6(bytes) => ipv6(bytes, wire_len),
        Network::NotIp => Err("not IP".into()),
        Network::Malformed(reason) => Err(reason.into()),
    }
}

const TCP: u8 = 6;
const UDP: u8 = 17;

fn ipv4(bytes: &[u8], length: u32) -> Result<IpPacket<'_>, String> {
    let Some(h) = bytes.get(..20) else {
        return Err(format!(
            "bad IPv4 header: {} bytes captured, fewer than 20",
            bytes.len()
        ));
    };
    if h[0] >> 4 != 4 {
        return Err(format!("bad IPv4 header: version {}", h[0] >> 4));
    }
    let hlen = u32::from(h[0] & 0x0f) * 4;
    if hlen < 20 {
        return Err(format!("bad IPv4 header: header length {hlen} < 20"));
    }
    let protocol = h[9];
    let mut warning = String::new();
    let mut total = u32::from(u16::from_be_bytes([h[2], h[3]]));
    if total > length {
        let _ = write!(
            warning,
            "[total length {total} > length {length}] (invalid) "
        );
    }
    if total == 0 && matches!(protocol, TCP | UDP) {
        // Segmentation offload: the length is the frame's.
        total = length;
    }
    if total < hlen {
        return Err(format!(
            "bad IPv4 header: total length {total} < header length {hlen}"
        ));
    }
    let end = total.min(length) as usize;
    let captured = bytes.get(..end).unwrap_or(bytes);
    let Some(payload) = captured.get(hlen as usize..) else {
        return Err(format!(
            "bad IPv4 header: {} bytes captured, header length {hlen}",
            captured.len()
        ));
    };
    let offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
    let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
    Ok(IpPacket {
        family: Family::V4,
        src: src.into(),
        dst: dst.into(),
        protocol,
        payload,
        length: (length - hlen).min(total - hlen),
        later_fragment: offset != 0,
        warning,
    })
}

fn ipv6(bytes: &[u8], length: u32) -> Result<IpPacket<'_>, String> {
    let Some(h) = bytes.get(..40) else {
        return Err(format!(
            "bad IPv6 header: {} bytes captured, fewer than 40",
            bytes.len()
        ));
    };
    if h[0] >> 4 != 6 {
        return Err(format!("bad IPv6 header: version {}", h[0] >> 4));
    }
    let payload_len = u32::from(u16::from_be_bytes([h[4], h[5]]));
    let protocol = h[6];
    let mut warning = String::new();
    let total = if payload_len != 0 {
        let total = payload_len + 40;
        if total > length {
            let _ = write!(
                warning,
                "[header+payload length {total} > length {length}] (invalid) "
            );
        }
        total
    } else if length > 65535 && matches!(protocol, TCP | UDP) {
        // BIG TCP without a Jumbo Payload option.
        length
    } else {
        40
    };
    let end = total.min(length) as usize;
    let captured = bytes.get(..end).unwrap_or(bytes);
    let payload = captured.get(40..).unwrap_or(&[]);
    let src: [u8; 16] = h[8..24].try_into().map_err(|_| "IPv6 source")?;
    let dst: [u8; 16] = h[24..40].try_into().map_err(|_| "IPv6 destination")?;
    Ok(IpPacket {
        family: Family::V6,
        src: Ipv6Addr::from(src).into(),
        dst: Ipv6Addr::from(dst).into(),
        protocol,
        payload,
        length: total - 40,
        later_fragment: false,
        warning,
    })
}

/// An address as tcpdump `-n` prints it. IPv6 follows tcpdump's own
/// formatter: the longest run of two or more zero groups (the first of equal
/// ones) is `::`, and an address whose first 96 bits are zero, or are
/// `::ffff`, ends in dotted IPv4 (`::1.2.3.4`, `::ffff:1.2.3.4`).
pub(crate) struct Addr(pub IpAddr);

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(a) => write_ipv6(f, &a),
        }
    }
}

fn write_ipv6(f: &mut fmt::Formatter<'_>, addr: &Ipv6Addr) -> fmt::Result {
    let words = addr.segments();
    // (base, len) of the longest run of zero words, the first of equal ones.
    let mut best: Option<(usize, usize)> = None;
    let mut cur: Option<(usize, usize)> = None;
    for (i, &w) in words.iter().chain(std::iter::once(&1)).enumerate() {
        if w == 0 {
            cur = Some(cur.map_or((i, 1), |(b, l)| (b, l + 1)));
        } else if let Some(c) = cur.take()
            && best.is_none_or(|b| c.1 > b.1)
        {
            best = Some(c);
        }
    }
    let best = best.filter(|b| b.1 >= 2);
    let in_best = |i: usize| best.is_some_and(|(base, len)| i >= base && i < base + len);
    for (i, &w) in words.iter().enumerate() {
        if in_best(i) {
            if best.is_some_and(|(base, _)| base == i) {
                f.write_str(":")?;
            }
            continue;
        }
        if i != 0 {
            f.write_str(":")?;
        }
        if i == 6
            && best.is_some_and(|(base, len)| {
                base == 0 && (len == 6 || (len == 5 && words[5] == 0xffff))
            })
        {
            let o = addr.octets();
            return write!(f, "{}.{}.{}.{}", o[12], o[13], o[14], o[15]);
        }
        write!(f, "{w:x}")?;
    }
    if best.is_some_and(|(base, len)| base + len == 8) {
        f.write_str(":")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(s: &str) -> String {
        Addr(IpAddr::V6(s.parse().expect("IPv6 literal"))).to_string()
    }

    #[test]
    fn ipv6_addresses_as_tcpdump_prints_them() {
        assert_eq!(v6("2001:db8:0:0:1:0:0:1"), "2001:db8::1:0:0:1");
        assert_eq!(v6("::1"), "::1");
        assert_eq!(v6("::"), "::");
        assert_eq!(v6("fe80::"), "fe80::");
        assert_eq!(v6("::ffff:1.2.3.4"), "::ffff:1.2.3.4");
        assert_eq!(v6("::1.2.3.4"), "::1.2.3.4");
        assert_eq!(v6("2001:db8:1:2:3:4:0:5"), "2001:db8:1:2:3:4:0:5");
        assert_eq!(v6("1:0:0:2:0:0:0:3"), "1:0:0:2::3");
    }

    #[test]
    fn ipv4_length_is_the_header_s_bounded_by_the_wire() {
        let mut packet = vec![
            0x45, 0, 0, 60, 0, 0, 0, 0, 64, 6, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        packet.extend_from_slice(&[0; 10]);
        let ip = ipv4(&packet, 60).expect("readable");
        assert_eq!((ip.length, ip.payload.len()), (40, 10));
        assert!(ip.warning.is_empty());
        let ip = ipv4(&packet, 50).expect("readable");
        assert_eq!(ip.length, 30);
        assert_eq!(ip.warning, "[total length 60 > length 50] (invalid) ");
        assert!(ipv4(&packet[..19], 60).is_err());
    }
}
