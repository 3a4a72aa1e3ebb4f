//! TCP option lists, printed as tcpdump's `print-tcp.c` and `print-mptcp.c`
//! print them, plus our flow option (`flow-d tifid .. tiseq .. tiack ..`).
//!
//! The walk is tcpdump's: a kind byte, a length byte unless the kind is EOL
//! or NOP, a length below 2 or past the header is `[bad opt]` (and ends the
//! line), a fixed-size option reads its size whatever its length byte says
//! and notes `[len N]` when the two differ, EOL ends the list. Reading past
//! the captured bytes stops with [`Truncated`] (the caller prints `[|tcp]`).

use std::fmt::Write as _;

use tifid::option::{FlowOption, FlowOptionRepr, OPTION_LEN};

/// The captured bytes ended where a field was to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Truncated;

/// Byte `at` of `b`, or [`Truncated`].
pub(crate) fn u8_at(b: &[u8], at: usize) -> Result<u8, Truncated> {
    b.get(at).copied().ok_or(Truncated)
}

/// Big-endian integer of `n` bytes at `at` (n <= 8).
pub(crate) fn be_at(b: &[u8], at: usize, n: usize) -> Result<u64, Truncated> {
    let bytes = b
        .get(at..at.checked_add(n).ok_or(Truncated)?)
        .ok_or(Truncated)?;
    Ok(bytes.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

fn be16(b: &[u8], at: usize) -> Result<u16, Truncated> {
    // Two bytes fit.
    be_at(b, at, 2).map(|v| v as u16)
}

fn be32(b: &[u8], at: usize) -> Result<u32, Truncated> {
    // Four bytes fit.
    be_at(b, at, 4).map(|v| v as u32)
}

fn push_hex(line: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(line, "{b:02x}");
    }
}

/// TCP flag bits, as tcpdump names them.
pub(crate) const FIN: u16 = 0x01;
/// SYN.
pub(crate) const SYN: u16 = 0x02;
/// RST.
pub(crate) const RST: u16 = 0x04;
/// ACK.
pub(crate) const ACK: u16 = 0x10;
/// URG.
pub(crate) const URG: u16 = 0x20;

/// What the options of one segment are printed with.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OptionContext {
    /// The flow option's kind.
    pub kind: u8,
    /// The segment's flags (MPTCP subtypes depend on SYN and ACK).
    pub flags: u16,
    /// SACK blocks are printed minus this (0 for absolute numbers).
    pub sack_base: u32,
}

/// How an option list ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListEnd {
    /// `]` closed it; the line goes on.
    Closed,
    /// `[bad opt]` ended it and the line (tcpdump prints no length then).
    Bad,
}

/// Appends the option list `header` (the TCP header bytes after the first
/// 20 that were captured) of announced size `size`, after `, options [`.
pub(crate) fn push_option_list(
    line: &mut String,
    header: &[u8],
    size: usize,
    ctx: &OptionContext,
) -> Result<ListEnd, Truncated> {
    let mut hlen = size;
    let mut cp = 0usize;
    let mut first = true;
    while hlen != 0 {
        if !first {
            line.push(',');
        }
        let opt = u8_at(header, cp)?;
        cp += 1;
        let zero_len = opt == 0 || opt == 1;
        let len = if zero_len {
            1
        } else {
            let len = usize::from(u8_at(header, cp)?);
            cp += 1;
            if len < 2 || len > hlen {
                return Ok(bad(line, first));
            }
            hlen -= 1;
            len
        };
        hlen -= 1;
        let Some(datalen) = push_option(line, opt, len, &header[cp..], hlen, ctx)? else {
            return Ok(bad(line, first));
        };
        cp += datalen;
        hlen -= datalen;
        let spec = datalen + if zero_len { 1 } else { 2 };
        if spec != len {
            let _ = write!(line, "[len {len}]");
        }
        first = false;
        if opt == 0 {
            break;
        }
    }
    line.push(']');
    Ok(ListEnd::Closed)
}

fn bad(line: &mut String, first: bool) -> ListEnd {
    line.push_str("[bad opt]");
    if !first {
        line.push(']');
    }
    ListEnd::Bad
}

/// Prints one option whose kind and length bytes were read; `data` starts
/// after them, `hlen` is what the header has left. Returns the data length
/// the option accounts for, or `None` for tcpdump's `[bad opt]`.
fn push_option(
    line: &mut String,
    opt: u8,
    len: usize,
    data: &[u8],
    hlen: usize,
    ctx: &OptionContext,
) -> Result<Option<usize>, Truncated> {
    // LENCHECK: the header has `l` more bytes.
    macro_rules! lencheck {
        ($l:expr) => {
            if $l > hlen {
                return Ok(None);
            }
        };
    }
    if opt == ctx.kind {
        let datalen = len.saturating_sub(2);
        let bytes = data.get(..datalen).ok_or(Truncated)?;
        if len == OPTION_LEN {
            let mut option = Vec::with_capacity(OPTION_LEN);
            option.extend_from_slice(&[opt, OPTION_LEN as u8]);
            option.extend_from_slice(bytes);
            if let Ok(repr) =
                FlowOption::new_checked(&option[..]).and_then(|v| FlowOptionRepr::parse(&v))
            {
                let _ = write!(line, "{repr}");
                return Ok(Some(datalen));
            }
        }
        let _ = write!(line, "flow-d [bad length {len}]");
        return Ok(Some(datalen));
    }
    let name = match opt {
        0 => "eol",
        1 => "nop",
        2 => "mss",
        3 => "wscale",
        4 => "sackOK",
        5 => "sack",
        6 => "echo",
        7 => "echoreply",
        8 => "TS",
        11 => "cc",
        12 => "ccnew",
        13 => "ccecho",
        19 => "md5",
        20 => "scps",
        28 => "uto",
        29 => "tcp-ao",
        30 => "mptcp",
        34 => "tfo",
        254 => "exp",
        _ => "",
    };
    if name.is_empty() {
        let _ = write!(line, "unknown-{opt}");
    } else {
        line.push_str(name);
    }
    let datalen = match opt {
        0 | 1 | 4 => 0,
        2 => {
            lencheck!(2);
            let _ = write!(line, " {}", be16(data, 0)?);
            2
        }
        3 => {
            lencheck!(1);
            let _ = write!(line, " {}", u8_at(data, 0)?);
            1
        }
        5 => {
            let datalen = len - 2;
            if !datalen.is_multiple_of(8) {
                line.push_str(" invalid sack");
            } else {
                let _ = write!(line, " {} ", datalen / 8);
                for i in (0..datalen).step_by(8) {
                    lencheck!(i + 4);
                    let s = be32(data, i)?;
                    lencheck!(i + 8);
                    let e = be32(data, i + 4)?;
                    let _ = write!(
                        line,
                        "{{{}:{}}}",
                        s.wrapping_sub(ctx.sack_base),
                        e.wrapping_sub(ctx.sack_base)
                    );
                }
            }
            datalen
        }
        6 | 7 | 11 | 12 | 13 => {
            lencheck!(4);
            let _ = write!(line, " {}", be32(data, 0)?);
            4
        }
        8 => {
            lencheck!(8);
            let _ = write!(line, " val {} ecr {}", be32(data, 0)?, be32(data, 4)?);
            8
        }
        19 => {
            lencheck!(16);
            let digest = data.get(..16).ok_or(Truncated)?;
            line.push(' ');
            push_hex(line, digest);
            16
        }
        20 => {
            lencheck!(2);
            let _ = write!(line, " cap {:02x} id {}", u8_at(data, 0)?, u8_at(data, 1)?);
            2
        }
        29 => {
            let datalen = len - 2;
            if datalen < 2 {
                line.push_str(" (invalid)");
            } else {
                lencheck!(1);
                let _ = write!(line, " keyid {}", u8_at(data, 0)?);
                lencheck!(2);
                let _ = write!(line, " rnextkeyid {}", u8_at(data, 1)?);
                if datalen > 2 {
                    line.push_str(" mac 0x");
                    for i in 2..datalen {
                        lencheck!(i + 1);
                        let _ = write!(line, "{:02x}", u8_at(data, i)?);
                    }
                }
            }
            datalen
        }
        28 => {
            lencheck!(2);
            let raw = be16(data, 0)?;
            let minutes = raw & 1 == 1;
            let value = u32::from(raw >> 1) * if minutes { 60 } else { 1 };
            let _ = write!(line, " 0x{raw:x} {value}");
            2
        }
        30 => {
            let datalen = len - 2;
            lencheck!(datalen);
            let body = data.get(..datalen).ok_or(Truncated)?;
            if !push_mptcp(line, len, body, ctx.flags) {
                return Ok(None);
            }
            datalen
        }
        34 => {
            let datalen = len - 2;
            lencheck!(datalen);
            let body = data.get(..datalen).ok_or(Truncated)?;
            line.push(' ');
            push_fastopen(line, body);
            datalen
        }
        254 => {
            let datalen = len - 2;
            lencheck!(datalen);
            let body = data.get(..datalen).ok_or(Truncated)?;
            let [hi, lo, rest @ ..] = body else {
                return Ok(None);
            };
            let magic = u16::from_be_bytes([*hi, *lo]);
            if magic == 0xf989 {
                line.push_str("-tfo");
                push_fastopen(line, rest);
            } else {
                let _ = write!(line, "-{magic:04x}");
            }
            datalen
        }
        _ => {
            let datalen = len - 2;
            if datalen > 0 {
                line.push_str(" 0x");
            }
            for i in 0..datalen {
                lencheck!(i + 1);
                let _ = write!(line, "{:02x}", u8_at(data, i)?);
            }
            datalen
        }
    };
    Ok(Some(datalen))
}

/// TCP Fast Open: a cookie request (no data) or a cookie of 4 to 16 bytes,
/// even.
fn push_fastopen(line: &mut String, data: &[u8]) {
    if data.is_empty() {
        line.push_str(" cookiereq");
    } else if !data.len().is_multiple_of(2) || data.len() < 4 || data.len() > 16 {
        line.push_str(" (invalid)");
    } else {
        line.push_str(" cookie ");
        push_hex(line, data);
    }
}

/// Letters of bits 0x80 down to 0x01, as tcpdump's `bittok2str_nosep`;
/// `none` when no named bit is set.
fn push_bits(line: &mut String, value: u8, names: &[(u8, &str)]) {
    let mut any = false;
    for (bit, name) in names {
        if value & bit != 0 {
            line.push_str(name);
            any = true;
        }
    }
    if !any {
        line.push_str("none");
    }
}

/// An MPTCP option (RFC 8684), `option` being all of it after its kind and
/// length bytes, `len` its length byte. False: tcpdump's `[bad opt]`.
fn push_mptcp(line: &mut String, len: usize, option: &[u8], flags: u16) -> bool {
    // Byte i of the whole option (kind and length included), 0 if absent:
    // the option was checked to be captured whole and `len` long.
    let at = |i: usize| {
        i.checked_sub(2)
            .and_then(|i| option.get(i))
            .copied()
            .unwrap_or(0)
    };
    let be = |i: usize, n: usize| -> u64 {
        (i..i + n).fold(0u64, |acc, j| (acc << 8) | u64::from(at(j)))
    };
    if len < 3 {
        return false;
    }
    let subtype = usize::from(at(2) >> 4).min(9);
    const NAMES: [&str; 10] = [
        "capable",
        "join",
        "dss",
        "add-addr",
        "rem-addr",
        "prio",
        "fail",
        "fast-close",
        "tcprst",
        "unknown",
    ];
    let _ = write!(line, " {len} {}", NAMES[subtype]);
    let syn = flags & SYN != 0;
    let ack = flags & ACK != 0;
    match subtype {
        0 => {
            if !(((len == 12 || len == 4) && syn) || (matches!(len, 20 | 22 | 24) && ack && !syn)) {
                return false;
            }
            let version = at(2) & 0xf;
            if version > 1 {
                let _ = write!(line, " Unknown Version ({version})");
                return true;
            }
            let _ = write!(line, " v{version} flags [");
            const BITS: [(u8, &str); 8] = [
                (0x80, "A"),
                (0x40, "B"),
                (0x20, "C"),
                (0x10, "D"),
                (0x08, "E"),
                (0x04, "F"),
                (0x02, "G"),
                (0x01, "H"),
            ];
            push_bits(line, at(3), &BITS);
            line.push(']');
            let csum = at(3) & 0x80 != 0;
            if csum {
                line.push_str(" csum");
            }
            if len == 12 || len >= 20 {
                let _ = write!(line, " {{0x{:x}", be(4, 8));
                if len >= 20 {
                    let _ = write!(line, ",0x{:x}", be(12, 8));
                }
                if (len == 22 && !csum) || len == 24 {
                    let _ = write!(line, ",data_len={}", be(20, 2));
                }
                line.push('}');
            }
            true
        }
        1 => {
            if !((len == 12 && syn) || (len == 16 && syn && ack) || (len == 24 && ack)) {
                return false;
            }
            if len != 24 {
                if at(2) & 1 != 0 {
                    line.push_str(" backup");
                }
                let _ = write!(line, " id {}", at(3));
            }
            match len {
                12 => {
                    let _ = write!(line, " token 0x{:x} nonce 0x{:x}", be(4, 4), be(8, 4));
                }
                16 => {
                    let _ = write!(line, " hmac 0x{:x} nonce 0x{:x}", be(4, 8), be(12, 4));
                }
                _ => {
                    line.push_str(" hmac 0x");
                    for i in 4..24 {
                        let _ = write!(line, "{:02x}", at(i));
                    }
                }
            }
            true
        }
        2 => push_dss(line, len, &at, &be, syn),
        3 => {
            if !matches!(len, 8 | 10 | 16 | 18 | 20 | 22 | 28 | 30) {
                return false;
            }
            let echo = match at(2) & 0xf {
                0x6 => "v0-ip6",
                0x4 => "v0-ip4",
                0x1 => "v1-echo",
                0x0 => "v1",
                _ => "[bad version/echo]",
            };
            let _ = write!(line, " {echo} id {}", at(3));
            if matches!(len, 8 | 10 | 16 | 18) {
                let _ = write!(line, " {}.{}.{}.{}", at(4), at(5), at(6), at(7));
                if len == 10 || len == 18 {
                    let _ = write!(line, ":{}", be(8, 2));
                }
                if len == 16 {
                    let _ = write!(line, " hmac 0x{:x}", be(8, 8));
                }
                if len == 18 {
                    let _ = write!(line, " hmac 0x{:x}", be(10, 8));
                }
            } else {
                let mut octets = [0u8; 16];
                for (i, o) in octets.iter_mut().enumerate() {
                    *o = at(4 + i);
                }
                let addr = super::ip::Addr(std::net::Ipv6Addr::from(octets).into());
                let _ = write!(line, " {addr}");
                if len == 22 || len == 30 {
                    let _ = write!(line, ":{}", be(20, 2));
                }
                if len == 28 {
                    let _ = write!(line, " hmac 0x{:x}", be(20, 8));
                }
                if len == 30 {
                    let _ = write!(line, " hmac 0x{:x}", be(22, 8));
                }
            }
            true
        }
        4 => {
            if len < 4 {
                return false;
            }
            line.push_str(" id");
            for i in 3..len {
                let _ = write!(line, " {}", at(i));
            }
            true
        }
        5 => {
            if len != 3 && len != 4 {
                return false;
            }
            line.push_str(if at(2) & 1 != 0 {
                " backup"
            } else {
                " non-backup"
            });
            if len == 4 {
                let _ = write!(line, " id {}", at(3));
            }
            true
        }
        6 | 7 => {
            if len != 12 {
                return false;
            }
            if subtype == 6 {
                let _ = write!(line, " seq {}", be(4, 8));
            } else {
                let _ = write!(line, " key 0x{:x}", be(4, 8));
            }
            true
        }
        8 => {
            if len != 4 {
                return false;
            }
            line.push_str(" flags [");
            push_bits(
                line,
                at(2),
                &[(0x08, "U"), (0x04, "V"), (0x02, "W"), (0x01, "T")],
            );
            line.push_str("] reason ");
            let reason = match at(3) {
                0x06 => "Middlebox interference",
                0x05 => "Unacceptable performance",
                0x04 => "Too much outstanding data",
                0x03 => "Administratively prohibited",
                0x02 => "Lack of resources",
                0x01 => "MPTCP-specific error",
                0x00 => "Unspecified error",
                other => {
                    let _ = write!(line, "unknown (0x{other:02x})");
                    return true;
                }
            };
            line.push_str(reason);
            true
        }
        _ => true,
    }
}

/// MPTCP Data Sequence Signal: data ACK, mapping, checksum.
fn push_dss(
    line: &mut String,
    len: usize,
    at: &dyn Fn(usize) -> u8,
    be: &dyn Fn(usize, usize) -> u64,
    syn: bool,
) -> bool {
    if len < 4 || syn {
        return false;
    }
    let flags = at(3);
    if flags & 0x10 != 0 {
        line.push_str(" fin");
    }
    let mut i = 4;
    let mut left = len - 4;
    let mut field = |line: &mut String, wide: bool| -> bool {
        let n = if wide { 8 } else { 4 };
        if left < n {
            return false;
        }
        let _ = write!(line, "{}", be(i, n));
        i += n;
        left -= n;
        true
    };
    if flags & 0x01 != 0 {
        line.push_str(" ack ");
        if !field(line, flags & 0x02 != 0) {
            return false;
        }
    }
    if flags & 0x04 != 0 {
        line.push_str(" seq ");
        if !field(line, flags & 0x08 != 0) {
            return false;
        }
        line.push_str(" subseq ");
        if !field(line, false) {
            return false;
        }
        if left < 2 {
            return false;
        }
        let _ = write!(line, " len {}", be(i, 2));
        i += 2;
        left -= 2;
        if left >= 2 {
            let _ = write!(line, " csum 0x{:x}", be(i, 2));
            left -= 2;
        }
    }
    left == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tifid::option::DEFAULT_KIND;

    fn text(list: &[u8], flags: u16) -> String {
        let mut s = String::new();
        let ctx = OptionContext {
            kind: DEFAULT_KIND,
            flags,
            sack_base: 0,
        };
        match push_option_list(&mut s, list, list.len(), &ctx) {
            Ok(_) => s,
            Err(Truncated) => s + " [|tcp]",
        }
    }

    #[test]
    fn common_options() {
        let list = [
            2, 4, 0x05, 0xb4, 1, 3, 3, 3, 4, 2, 8, 10, 0, 0, 0, 109, 0, 0, 0, 0,
        ];
        assert_eq!(
            text(&list, SYN),
            "mss 1460,nop,wscale 3,sackOK,TS val 109 ecr 0]"
        );
        assert_eq!(
            text(
                &[1, 1, 5, 18, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4],
                ACK
            ),
            "nop,nop,sack 2 {1:2}{3:4}]"
        );
        assert_eq!(
            text(&[99, 4, 0xaa, 0xbb, 0, 0, 0, 0], 0),
            "unknown-99 0xaabb,eol]"
        );
    }

    #[test]
    fn bad_and_odd_lengths_as_tcpdump() {
        // Length past the header: [bad opt], and `]` only after a first option.
        assert_eq!(text(&[2, 30, 5, 0xb4], 0), "[bad opt]");
        assert_eq!(text(&[1, 2, 30, 5, 0xb4], 0), "nop,[bad opt]]");
        // A fixed-size option with another length byte.
        assert_eq!(text(&[2, 3, 5, 0xb4], 0), "mss 1460[len 3]]");
        // A header longer than the capture.
        let mut s = String::new();
        let ctx = OptionContext::default();
        assert_eq!(
            push_option_list(&mut s, &[8, 10, 0, 0], 12, &ctx),
            Err(Truncated)
        );
        assert_eq!(s, "TS");
    }

    #[test]
    fn flow_option_and_its_bad_length() {
        let repr = FlowOptionRepr {
            tifid: tifid::Tifid::new(0x0a45_30be_79bf),
            tiseq: tifid::Seq48::new(0x1f),
            tiack: tifid::Seq48::new(0x1d),
        };
        assert_eq!(
            text(&repr.to_bytes(DEFAULT_KIND), ACK),
            "flow-d tifid 0a4530be79bf tiseq 00000000001f tiack 00000000001d]"
        );
        assert_eq!(
            text(&[1, 1, DEFAULT_KIND, 7, 0, 0, 0, 0, 0, 1, 1, 1], 0),
            "nop,nop,flow-d [bad length 7],nop,nop,nop]"
        );
    }

    #[test]
    fn fast_open_md5_and_ao() {
        assert_eq!(text(&[254, 4, 0xf9, 0x89], SYN), "exp-tfo cookiereq]");
        assert_eq!(
            text(&[254, 10, 0xf9, 0x89, 9, 9, 9, 9, 0, 0, 1, 1], SYN | ACK),
            "exp-tfo cookie 090909090000,nop,nop]"
        );
        assert_eq!(text(&[254, 4, 0xac, 0xc0], SYN), "exp-acc0]");
        assert_eq!(text(&[34, 2], SYN), "tfo  cookiereq]");
        assert_eq!(text(&[34, 5, 1, 2, 3], SYN), "tfo  (invalid)]");
        let mut md5 = vec![19, 18];
        md5.extend(0..16u8);
        assert_eq!(text(&md5, ACK), "md5 000102030405060708090a0b0c0d0e0f]");
        assert_eq!(
            text(&[29, 6, 1, 2, 0xab, 0xcd], ACK),
            "tcp-ao keyid 1 rnextkeyid 2 mac 0xabcd]"
        );
    }

    #[test]
    fn mptcp_subtypes() {
        let mut capable = vec![30, 12, 0x00, 0x81];
        capable.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x2a]);
        assert_eq!(
            text(&capable, SYN),
            "mptcp 12 capable v0 flags [AH] csum {0x2a}]"
        );
        // A capable option of 12 bytes outside a SYN is malformed.
        assert_eq!(text(&capable, ACK), "mptcp 12 capable[bad opt]");
        let dss = [30, 8, 0x20, 0x01, 0, 0, 0, 7];
        assert_eq!(text(&dss, ACK), "mptcp 8 dss ack 7]");
        assert_eq!(
            text(&[30, 4, 0x80, 0x06], ACK | RST),
            "mptcp 4 tcprst flags [none] reason Middlebox interference]"
        );
    }
}
