//! The TCP part of a line, as tcpdump's `tcp_print` writes it:
//! `a.p > b.q: Flags [..], seq .., ack .., win .., urg .., options [..],
//! length N`.
//!
//! Sequence numbers are relative by default, with tcpdump's rules
//! ([`SeqTracker`]); `-S` keeps them absolute. Output is written as fields
//! are read, so a segment cut short by the capture prints what tcpdump
//! prints before its `[|tcp]`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use super::ip::{Addr, IpPacket};
use super::tcp_options::{
    ACK, FIN, ListEnd, OptionContext, RST, SYN, Truncated, URG, be_at, push_option_list, u8_at,
};

/// tcpdump's relative sequence numbers. The first segment with ACK set seen
/// on a connection (both directions share one entry), and every later one
/// with SYN and ACK set, records the bases: its own sequence number for its
/// direction, its acknowledgement number minus one for the other; that
/// segment prints absolute numbers, later ones print the difference.
/// Segments without ACK (a first SYN) print absolute numbers and record
/// nothing.
#[derive(Debug, Default)]
pub(crate) struct SeqTracker {
    /// Keyed by (lower endpoint's address, other address, ports): the
    /// endpoint with the lower port (then the lower address) comes first.
    /// Value: (sequence base of the first endpoint, of the second).
    bases: HashMap<(IpAddr, IpAddr, u16, u16), (u32, u32)>,
}

/// What the bases of a segment turned out to be: `(seq base, ack base,
/// reversed)`, reversed when the sender is the key's second endpoint.
type Bases = (u32, u32, bool);

impl SeqTracker {
    /// Records or applies the bases for a segment with ACK set; returns the
    /// numbers to print and the bases used.
    fn relative(
        &mut self,
        (src, sport): (IpAddr, u16),
        (dst, dport): (IpAddr, u16),
        syn: bool,
        seq: u32,
        ack: u32,
    ) -> (u32, u32, Bases) {
        let rev = sport > dport || (sport == dport && octets(src) > octets(dst));
        let key = if rev {
            (dst, src, dport, sport)
        } else {
            (src, dst, sport, dport)
        };
        match self.bases.get(&key) {
            Some(&(first, second)) if !syn => {
                if rev {
                    (
                        seq.wrapping_sub(second),
                        ack.wrapping_sub(first),
                        (first, second, rev),
                    )
                } else {
                    (
                        seq.wrapping_sub(first),
                        ack.wrapping_sub(second),
                        (first, second, rev),
                    )
                }
            }
            _ => {
                let bases = if rev {
                    (ack.wrapping_sub(1), seq)
                } else {
                    (seq, ack.wrapping_sub(1))
                };
                self.bases.insert(key, bases);
                (seq, ack, (bases.0, bases.1, rev))
            }
        }
    }
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// How a TCP segment was printed, for the counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TcpSeen {
    /// tcpdump calls it invalid or its header could not be read whole.
    pub malformed: bool,
}

/// Settings of the TCP printer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpSettings {
    /// The flow option's kind.
    pub kind: u8,
    /// `-S`: absolute sequence numbers.
    pub absolute: bool,
}

const FLAG_NAMES: [(u16, char); 9] = [
    (FIN, 'F'),
    (SYN, 'S'),
    (RST, 'R'),
    (0x08, 'P'),
    (ACK, '.'),
    (URG, 'U'),
    (0x40, 'E'),
    (0x80, 'W'),
    (0x100, 'e'),
];

/// Appends the TCP part of the line for the segment in `ip` (after `IP `
/// and any warning).
pub(crate) fn push_tcp(
    line: &mut String,
    ip: &IpPacket<'_>,
    seqs: &mut SeqTracker,
    settings: &TcpSettings,
) -> TcpSeen {
    match print(line, ip, seqs, settings) {
        Ok(seen) => seen,
        Err(Truncated) => {
            line.push_str(" [|tcp]");
            TcpSeen { malformed: true }
        }
    }
}

fn print(
    line: &mut String,
    ip: &IpPacket<'_>,
    seqs: &mut SeqTracker,
    settings: &TcpSettings,
) -> Result<TcpSeen, Truncated> {
    let tp = ip.payload;
    let (src, dst) = (Addr(ip.src), Addr(ip.dst));
    if tp.len() < 4 {
        let _ = write!(line, "{src} > {dst}:");
        return Err(Truncated);
    }
    let sport = u16::from_be_bytes([tp[0], tp[1]]);
    let dport = u16::from_be_bytes([tp[2], tp[3]]);
    let _ = write!(line, "{src}.{sport} > {dst}.{dport}: ");
    let length = ip.length;
    let offx2 = u8_at(tp, 12)?;
    let hlen = u32::from(offx2 >> 4) * 4;
    if hlen < 20 {
        let _ = write!(
            line,
            " tcp {} [bad hdr length {hlen} - too short, < 20] (invalid)",
            length.wrapping_sub(hlen)
        );
        return Ok(TcpSeen { malformed: true });
    }
    // Read as u32/u16: the widths fit.
    let mut seq = be_at(tp, 4, 4)? as u32;
    let mut ack = be_at(tp, 8, 4)? as u32;
    let win = be_at(tp, 14, 2)?;
    let urp = be_at(tp, 18, 2)?;
    let flags = u16::from(u8_at(tp, 13)?) | (u16::from(offx2 & 0x0f) << 8);
    line.push_str("Flags [");
    let before = line.len();
    for (bit, c) in FLAG_NAMES {
        if flags & bit != 0 {
            line.push(c);
        }
    }
    if line.len() == before {
        line.push_str("none");
    }
    line.push(']');
    let mut sack_base = 0;
    if !settings.absolute && flags & ACK != 0 {
        let (s, a, (first, second, rev)) =
            seqs.relative((ip.src, sport), (ip.dst, dport), flags & SYN != 0, seq, ack);
        (seq, ack) = (s, a);
        // SACK blocks acknowledge the other direction's sequence numbers.
        sack_base = if rev { first } else { second };
    }
    if hlen > length {
        let _ = write!(
            line,
            " [bad hdr length {hlen} - too long, > {length}] (invalid)"
        );
        return Ok(TcpSeen { malformed: true });
    }
    let length = length - hlen;
    if length > 0 || flags & (SYN | FIN | RST) != 0 {
        let _ = write!(line, ", seq {seq}");
        if length > 0 {
            let _ = write!(line, ":{}", seq.wrapping_add(length));
        }
    }
    if flags & ACK != 0 {
        let _ = write!(line, ", ack {ack}");
    }
    let _ = write!(line, ", win {win}");
    if flags & URG != 0 {
        let _ = write!(line, ", urg {urp}");
    }
    if hlen > 20 {
        line.push_str(", options [");
        let ctx = OptionContext {
            kind: settings.kind,
            flags,
            sack_base,
        };
        let captured = tp.get(20..).unwrap_or(&[]);
        if push_option_list(line, captured, hlen as usize - 20, &ctx)? == ListEnd::Bad {
            return Ok(TcpSeen { malformed: true });
        }
    }
    let _ = write!(line, ", length {length}");
    if length == 0 {
        return Ok(TcpSeen::default());
    }
    if tp.len() < hlen as usize {
        let _ = write!(
            line,
            " [remaining caplen({}) < header length({hlen})]",
            tp.len()
        );
        return Err(Truncated);
    }
    if flags & RST != 0 && tp.len() - (hlen as usize) < length as usize {
        // tcpdump checks that a RST's payload was captured.
        return Err(Truncated);
    }
    Ok(TcpSeen::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn relative_numbers_follow_tcpdump() {
        let mut t = SeqTracker::default();
        // The SYN-ACK records (absolute); its peer's ACK is relative.
        assert_eq!(t.relative((B, 80), (A, 5000), true, 700, 101).0, 700);
        let (s, a, _) = t.relative((A, 5000), (B, 80), false, 101, 701);
        assert_eq!((s, a), (1, 1));
        let (s, a, _) = t.relative((B, 80), (A, 5000), false, 711, 111);
        assert_eq!((s, a), (11, 11));
        // A new SYN-ACK resets the bases.
        assert_eq!(t.relative((B, 80), (A, 5000), true, 9000, 5001).1, 5001);
        assert_eq!(t.relative((A, 5000), (B, 80), false, 5001, 9001).0, 1);
    }
}
