//! Capture files: the records of a pcap or pcapng file, each with its link
//! type, timestamp, captured bytes and length on the wire.
//!
//! pcap goes through `pcap-file`'s slice parser. pcapng is walked here, block
//! by block, because `pcap-file` rejects whole files over one option it does
//! not accept (tcpdump's corpus has two): options are read only where they
//! matter (an interface's `if_tsresol` and `if_tsoffset`), and an option list
//! that is malformed ends the list, not the file.
//!
//! Must never: panic on any bytes, or trust a length field before checking it
//! against the bytes present.

use pcap_file::pcap::PcapParser;
use pcap_file::{PcapError, TsResolution};

use super::{CaptureFormat, DumpError, link};

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// One packet record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    /// LINKTYPE number (low 16 bits of the header's field, as libpcap).
    pub linktype: u32,
    /// Nanoseconds since the epoch, if the record has a timestamp.
    pub ts: Option<i128>,
    /// The captured bytes.
    pub data: &'a [u8],
    /// The packet's length on the wire (at least the captured length).
    pub wire_len: u32,
}

/// libpcap keeps the link type in the low 16 bits; the upper bits carry FCS
/// information (and some of tcpdump's test files set them).
fn linktype_number(raw: u32) -> u32 {
    raw & 0xffff
}

/// Calls `each` on every record of the capture `data` (pcap or pcapng, the
/// magic number already checked by the caller).
pub(crate) fn for_each_record(
    data: &[u8],
    format: CaptureFormat,
    each: &mut dyn FnMut(Record<'_>) -> Result<(), DumpError>,
) -> Result<(), DumpError> {
    match format {
        CaptureFormat::Pcap => pcap_records(data, each),
        CaptureFormat::PcapNg => pcapng_records(data, each),
    }
}

fn pcap_records(
    data: &[u8],
    each: &mut dyn FnMut(Record<'_>) -> Result<(), DumpError>,
) -> Result<(), DumpError> {
    let header_error = |reason: String| DumpError::Header {
        format: CaptureFormat::Pcap,
        reason,
    };
    let (mut rest, parser) = match PcapParser::new(data) {
        Ok(ok) => ok,
        Err(PcapError::IncompleteBuffer) => {
            return Err(header_error(format!(
                "file ends inside the 24-byte header ({} bytes)",
                data.len()
            )));
        }
        Err(e) => return Err(header_error(e.to_string())),
    };
    let header = parser.header();
    let linktype = linktype_number(u32::from(header.datalink));
    if !link::is_supported(linktype) {
        return Err(DumpError::UnsupportedLinkType { linktype });
    }
    let frac_nanos: i128 = match header.ts_resolution {
        TsResolution::MicroSecond => 1_000,
        TsResolution::NanoSecond => 1,
    };
    tracing::debug!(linktype, version = ?(header.version_major, header.version_minor), "pcap header");
    let mut index = 0u64;
    while !rest.is_empty() {
        index += 1;
        let (next, record) = match parser.next_raw_packet(rest) {
            Ok(ok) => ok,
            Err(PcapError::IncompleteBuffer) => return Err(DumpError::Truncated { packet: index }),
            Err(e) => {
                return Err(DumpError::BadRecord {
                    packet: index,
                    reason: e.to_string(),
                });
            }
        };
        rest = next;
        // Lenient, as tcpdump: an out-of-range fraction is shown as it adds up.
        let ts =
            i128::from(record.ts_sec) * NANOS_PER_SEC + i128::from(record.ts_frac) * frac_nanos;
        let data = &record.data[..];
        each(Record {
            linktype,
            ts: Some(ts),
            data,
            wire_len: record.orig_len.max(len_u32(data)),
        })?;
    }
    Ok(())
}

fn len_u32(data: &[u8]) -> u32 {
    u32::try_from(data.len()).unwrap_or(u32::MAX)
}

/// Byte order of a pcapng section.
#[derive(Debug, Clone, Copy)]
enum Order {
    Little,
    Big,
}

impl Order {
    fn u16(self, b: &[u8], at: usize) -> Option<u16> {
        let bytes: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
        Some(match self {
            Order::Little => u16::from_le_bytes(bytes),
            Order::Big => u16::from_be_bytes(bytes),
        })
    }

    fn u32(self, b: &[u8], at: usize) -> Option<u32> {
        let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(match self {
            Order::Little => u32::from_le_bytes(bytes),
            Order::Big => u32::from_be_bytes(bytes),
        })
    }

    fn i64(self, b: &[u8], at: usize) -> Option<i64> {
        let bytes: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
        Some(match self {
            Order::Little => i64::from_le_bytes(bytes),
            Order::Big => i64::from_be_bytes(bytes),
        })
    }
}

/// What a pcapng interface description says that matters here.
#[derive(Debug, Clone, Copy)]
struct Interface {
    linktype: u32,
    /// `if_tsresol`: high bit clear = 10^-n s, set = 2^-n s.
    resolution: u8,
    /// `if_tsoffset`, in nanoseconds.
    offset: i128,
}

const SHB: u32 = 0x0a0d_0d0a;
const BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
const IDB: u32 = 1;
const PB: u32 = 2;
const SPB: u32 = 3;
const EPB: u32 = 6;

fn pcapng_records(
    data: &[u8],
    each: &mut dyn FnMut(Record<'_>) -> Result<(), DumpError>,
) -> Result<(), DumpError> {
    let mut order = section_order(data).ok_or_else(|| DumpError::Header {
        format: CaptureFormat::PcapNg,
        reason: if data.len() < 12 {
            "file ends inside the section header block".into()
        } else {
            "no byte-order magic 0x1a2b3c4d in the section header block".into()
        },
    })?;
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut rest = data;
    let mut index = 0u64;
    let mut last_ts = None;
    while !rest.is_empty() {
        let packet = index + 1;
        if rest.len() >= 4 && rest[..4] == SHB.to_be_bytes() {
            order = section_order(rest).ok_or(DumpError::BadRecord {
                packet,
                reason: "pcapng section header block without a byte-order magic".into(),
            })?;
            interfaces.clear();
        }
        let (block_type, total) = match (order.u32(rest, 0), order.u32(rest, 4)) {
            (Some(t), Some(l)) => (t, l as usize),
            _ => return Err(DumpError::Truncated { packet }),
        };
        if total < 12 {
            return Err(DumpError::BadRecord {
                packet,
                reason: format!("pcapng block of type {block_type:#x} has length {total} < 12"),
            });
        }
        let Some(block) = rest.get(..total) else {
            return Err(DumpError::Truncated { packet });
        };
        // Blocks are padded to 32 bits; some writers get that wrong: step
        // over what the length says.
        rest = &rest[total..];
        let body = &block[8..total - 4];
        let bad = |reason: &str| DumpError::BadRecord {
            packet,
            reason: format!("pcapng block of type {block_type:#x}: {reason}"),
        };
        let (interface_id, ticks, frame, wire_len) = match block_type {
            IDB => {
                let linktype = order.u16(body, 0).ok_or_else(|| bad("too short"))?;
                let (resolution, offset) = interface_options(order, body.get(8..).unwrap_or(&[]));
                tracing::debug!(linktype, resolution, "pcapng interface");
                interfaces.push(Interface {
                    linktype: u32::from(linktype),
                    resolution,
                    offset,
                });
                continue;
            }
            EPB | PB => {
                let (id, ts_at) = if block_type == EPB {
                    (order.u32(body, 0), 4)
                } else {
                    (order.u16(body, 0).map(u32::from), 4)
                };
                let fields = (
                    id,
                    order.u32(body, ts_at),
                    order.u32(body, ts_at + 4),
                    order.u32(body, ts_at + 8),
                    order.u32(body, ts_at + 12),
                );
                let (Some(id), Some(hi), Some(lo), Some(caplen), Some(orig)) = fields else {
                    return Err(bad("too short for its fixed fields"));
                };
                let start = ts_at + 16;
                let frame = body
                    .get(start..start.saturating_add(caplen as usize))
                    .ok_or_else(|| bad(&format!("captured length {caplen} runs past the block")))?;
                let ticks = (u64::from(hi) << 32) | u64::from(lo);
                (id, Some(ticks), frame, orig)
            }
            SPB => {
                let orig = order.u32(body, 0).ok_or_else(|| bad("too short"))?;
                let frame = &body[4..];
                let frame = frame.get(..orig as usize).unwrap_or(frame);
                (0, None, frame, orig)
            }
            _ => continue,
        };
        index = packet;
        let interface =
            interfaces
                .get(interface_id as usize)
                .ok_or_else(|| DumpError::BadRecord {
                    packet,
                    reason: format!("interface {interface_id} is not described before its packets"),
                })?;
        let linktype = linktype_number(interface.linktype);
        if !link::is_supported(linktype) {
            return Err(DumpError::UnsupportedInterfaceLinkType {
                packet,
                interface: interface_id,
                linktype,
            });
        }
        let ts = match ticks {
            Some(ticks) => Some(ticks_to_nanos(ticks, interface.resolution) + interface.offset),
            None => last_ts,
        };
        last_ts = ts;
        each(Record {
            linktype,
            ts,
            data: frame,
            wire_len: wire_len.max(len_u32(frame)),
        })?;
    }
    Ok(())
}

/// The byte order of the section header block at the start of `block`.
fn section_order(block: &[u8]) -> Option<Order> {
    let magic: [u8; 4] = block.get(8..12)?.try_into().ok()?;
    if u32::from_le_bytes(magic) == BYTE_ORDER_MAGIC {
        Some(Order::Little)
    } else if u32::from_be_bytes(magic) == BYTE_ORDER_MAGIC {
        Some(Order::Big)
    } else {
        None
    }
}

/// `if_tsresol` (default 6: microseconds) and `if_tsoffset` (default 0) of
/// an interface description's option list. A malformed option ends the list.
fn interface_options(order: Order, mut options: &[u8]) -> (u8, i128) {
    let mut resolution = 6;
    let mut offset = 0;
    while let (Some(code), Some(len)) = (order.u16(options, 0), order.u16(options, 2)) {
        let len = usize::from(len);
        let Some(value) = options.get(4..4 + len) else {
            tracing::debug!(code, len, "pcapng option runs past its block; rest ignored");
            break;
        };
        match (code, len) {
            (0, _) => break,
            (9, 1) => resolution = value[0],
            (14, 8) => {
                offset = order
                    .i64(value, 0)
                    .map_or(0, |o| i128::from(o) * NANOS_PER_SEC)
            }
            _ => {}
        }
        let padded = (4 + len).div_ceil(4) * 4;
        options = options.get(padded..).unwrap_or(&[]);
    }
    (resolution, offset)
}

/// Converts pcapng timestamp ticks to nanoseconds (`if_tsresol`: high bit
/// clear = 10^-n s, set = 2^-n s).
pub(crate) fn ticks_to_nanos(ticks: u64, resolution: u8) -> i128 {
    let ticks = i128::from(ticks);
    let exp = u32::from(resolution & 0x7f);
    if resolution & 0x80 == 0 {
        if exp <= 9 {
            ticks * 10i128.pow(9 - exp)
        } else {
            10i128.checked_pow(exp - 9).map_or(0, |d| ticks / d)
        }
    } else {
        // ticks < 2^64, 10^9 < 2^30: the product fits; exp <= 127.
        (ticks * NANOS_PER_SEC) >> exp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcapng_tick_resolutions() {
        assert_eq!(ticks_to_nanos(1_500_000, 6), 1_500_000_000);
        assert_eq!(ticks_to_nanos(7, 9), 7);
        assert_eq!(ticks_to_nanos(12_345, 12), 12);
        assert_eq!(ticks_to_nanos(3, 0), 3_000_000_000);
        assert_eq!(ticks_to_nanos(1 << 20, 0x80 | 20), 1_000_000_000);
        assert_eq!(ticks_to_nanos(u64::MAX, 127), 0);
        assert_eq!(ticks_to_nanos(u64::MAX, 0xff), 0);
    }

    #[test]
    fn interface_options_stop_at_a_bad_one() {
        // if_tsresol 9, then an option claiming 200 bytes.
        let list = [9, 0, 1, 0, 9, 0, 0, 0, 2, 0, 200, 0, 1, 2];
        assert_eq!(interface_options(Order::Little, &list), (9, 0));
        // if_tsoffset 2 s, big-endian.
        let list = [0, 14, 0, 8, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0];
        assert_eq!(interface_options(Order::Big, &list), (6, 2 * NANOS_PER_SEC));
    }
}
