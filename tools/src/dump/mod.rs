//! `tiflow dump`: the packets of a capture file, one tcpdump-style line each,
//! with the flow option decoded as the paper's modified tcpdump shows it.
//!
//! ```text
//! 0.000000 IP 192.168.1.2.11305 > 192.168.2.4.22: Flags [S], seq 110, win 65535,
//!   options [mss 1460,nop,wscale 3,sackOK,TS val 109 ecr 0,flow-d tifid 0a4530000000
//!   tiseq 00000000001d tiack 000000000000], length 0          (one line in the output)
//! ```
//!
//! Owns: reading pcap and pcapng files (through `pcap-file`'s slice parsers,
//! on a buffer holding the whole file), slicing link, IP and TCP headers
//! (through `etherparse`'s lax slicers, which never panic), walking TCP option
//! lists, and the output format.
//!
//! Must never: panic on any input bytes, allocate in proportion to a length
//! field that was not checked against the bytes present, or parse the flow
//! option itself (that is [`tifid::option`]'s job).
//!
//! Format choices, following tcpdump `-n -S`:
//! - Timestamps are seconds since the first record of the file, 6 decimals.
//! - Sequence and acknowledgement numbers are absolute. `seq` is shown when
//!   the segment has SYN, FIN or RST or carries data (`seq A:B` then, B = A +
//!   length); `ack` when the ACK flag is set.
//! - Flags: `F S R P . U E W e` in that order, `none` if no flag is set.
//! - Options: `mss`, `nop`, `wscale`, `sackOK`, `sack`, `TS val .. ecr ..`,
//!   `eol`; our kind as [`FlowOptionRepr`]'s `Display`, or `flow-d [bad length
//!   N]`; any other kind as `unknown-KIND` followed by its data in hex. An
//!   option list that ends inside an option ends with `[bad opt: ...]`.
//! - `length` is the captured TCP payload; `[|tcp]` follows when the capture
//!   holds less than the IP header announces.
//! - Other IP packets get one line (`IP a > b: proto 17, length N`); frames
//!   that are not IP (ARP, LLDP, ...) are skipped and counted; packets whose
//!   IP or TCP header cannot be read get a line saying why. None of these is
//!   an error: only a file that cannot be read as a capture is.

use std::fmt::{self, Write as _};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use etherparse::{EtherType, IpNumber, LaxNetSlice, LaxSlicedPacket, TcpSlice, TransportSlice};
use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::{PcapError, TsResolution};
use tifid::option::{
    DEFAULT_KIND, FlowOption, FlowOptionRepr, OptionError, OptionWalker, find_flow_option,
};

/// Link-layer header types that `tiflow dump` decodes, as
/// `(LINKTYPE number, name)`.
pub const SUPPORTED_LINK_TYPES: [(u32, &str); 6] = [
    (1, "ETHERNET"),
    (101, "RAW"),
    (113, "LINUX_SLL"),
    (228, "IPV4"),
    (229, "IPV6"),
    (276, "LINUX_SLL2"),
];

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// Arguments of `tiflow dump`.
#[derive(Debug, Clone, Args)]
pub struct DumpArgs {
    /// The capture file: pcap or pcapng, link type Ethernet, raw IP, or Linux
    /// cooked (SLL, SLL2). `-` reads standard input.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// TCP option kind of the flow option.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_KIND)]
    pub kind: u8,

    /// Print each shown packet in hex after its line, as `tcpdump -xx`.
    /// `-v` turns this on too.
    #[arg(short = 'x', long)]
    pub hex: bool,
}

/// What [`dump`] prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpOptions {
    /// TCP option kind decoded as the flow option.
    pub kind: u8,
    /// Follow each line with a hex dump of the whole captured frame.
    pub hex: bool,
}

impl Default for DumpOptions {
    fn default() -> DumpOptions {
        DumpOptions {
            kind: DEFAULT_KIND,
            hex: false,
        }
    }
}

/// The kind of capture file that was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureFormat {
    /// Classic libpcap format.
    #[default]
    Pcap,
    /// pcapng.
    PcapNg,
}

impl fmt::Display for CaptureFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CaptureFormat::Pcap => "pcap",
            CaptureFormat::PcapNg => "pcapng",
        })
    }
}

/// Counts of what [`dump`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DumpSummary {
    /// Format of the file.
    pub format: CaptureFormat,
    /// Packet records read.
    pub packets: u64,
    /// TCP segments printed.
    pub tcp: u64,
    /// TCP segments carrying a well-formed flow option.
    pub flow_options: u64,
    /// IP packets that are not TCP (one brief line each).
    pub other_ip: u64,
    /// Packets whose IP or TCP header could not be read (one line each).
    pub malformed: u64,
    /// Frames that are not IP: skipped, not printed.
    pub non_ip: u64,
}

impl fmt::Display for DumpSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} packets ({}): {} TCP ({} with a flow option), {} other IP, {} malformed, \
             {} non-IP skipped",
            self.packets,
            self.format,
            self.tcp,
            self.flow_options,
            self.other_ip,
            self.malformed,
            self.non_ip
        )
    }
}

/// Why a capture could not be dumped. Packets that are merely malformed are
/// not errors: they get a line of their own.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The file could not be opened.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Reading the opened file failed (a directory, an I/O error).
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Reading the input failed.
    #[error("cannot read input: {0}")]
    Read(#[source] io::Error),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Write(#[source] io::Error),
    /// The input holds no bytes at all.
    #[error("empty file: no pcap or pcapng header")]
    Empty,
    /// The input does not start with a pcap or pcapng magic number.
    #[error("not a pcap or pcapng file (starts with {start})")]
    NotCapture {
        /// The first bytes, in hex.
        start: String,
    },
    /// The file header (pcap header or first pcapng section header) is bad.
    #[error("bad {format} file header: {reason}")]
    Header {
        /// pcap or pcapng.
        format: CaptureFormat,
        /// What is wrong.
        reason: String,
    },
    /// The file ends inside a record.
    #[error("packet {packet}: truncated record (file ends inside it)")]
    Truncated {
        /// 1-based index of the record being read.
        packet: u64,
    },
    /// A record is malformed at the file-format level.
    #[error("packet {packet}: bad record: {reason}")]
    BadRecord {
        /// 1-based index of the record being read.
        packet: u64,
        /// What is wrong.
        reason: String,
    },
    /// The pcap file's link type is not one we decode.
    #[error("unsupported link type {linktype} (supported: {})", supported_list())]
    UnsupportedLinkType {
        /// The LINKTYPE number.
        linktype: u32,
    },
    /// A pcapng packet arrived on an interface whose link type we do not decode.
    #[error(
        "packet {packet}: unsupported link type {linktype} on interface {interface} \
         (supported: {})",
        supported_list()
    )]
    UnsupportedInterfaceLinkType {
        /// 1-based index of the packet.
        packet: u64,
        /// The pcapng interface id.
        interface: u32,
        /// The LINKTYPE number.
        linktype: u32,
    },
}

impl DumpError {
    /// True when the output was closed early (`tiflow dump f | head`): not
    /// worth reporting.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, DumpError::Write(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

fn supported_list() -> String {
    let names: Vec<String> = SUPPORTED_LINK_TYPES
        .iter()
        .map(|(n, name)| format!("{name} {n}"))
        .collect();
    names.join(", ")
}

/// Runs `tiflow dump` as the CLI does: stdout gets the lines, stderr the
/// summary. `verbose` is the global `-v` count (any `-v` adds the hex dump).
pub fn run(args: &DumpArgs, verbose: u8) -> Result<DumpSummary, DumpError> {
    let options = DumpOptions {
        kind: args.kind,
        hex: args.hex || verbose > 0,
    };
    let data = if args.file.as_os_str() == "-" {
        read_all(io::stdin().lock())?
    } else {
        let file = std::fs::File::open(&args.file).map_err(|source| DumpError::Open {
            path: args.file.clone(),
            source,
        })?;
        read_all(file).map_err(|e| match e {
            DumpError::Read(source) => DumpError::ReadFile {
                path: args.file.clone(),
                source,
            },
            other => other,
        })?
    };
    tracing::debug!(file = %args.file.display(), bytes = data.len(), kind = options.kind, "dump");
    let mut out = io::BufWriter::new(io::stdout().lock());
    let result = dump_bytes(&data, &options, &mut out);
    // Lines printed before an error stay printed.
    let flushed = out.flush().map_err(DumpError::Write);
    let summary = result?;
    flushed?;
    eprintln!("tiflow dump: {summary}");
    Ok(summary)
}

fn read_all<R: Read>(mut reader: R) -> Result<Vec<u8>, DumpError> {
    let mut data = Vec::new();
    reader.read_to_end(&mut data).map_err(DumpError::Read)?;
    Ok(data)
}

/// Reads a whole pcap or pcapng capture from `reader` and writes one line per
/// packet to `writer`.
pub fn dump<R: Read, W: Write>(
    reader: R,
    options: &DumpOptions,
    writer: W,
) -> Result<DumpSummary, DumpError> {
    let data = read_all(reader)?;
    dump_bytes(&data, options, writer)
}

/// [`dump`] on a capture already in memory.
pub fn dump_bytes<W: Write>(
    data: &[u8],
    options: &DumpOptions,
    writer: W,
) -> Result<DumpSummary, DumpError> {
    let mut printer = Printer::new(options, writer);
    match data {
        [] => Err(DumpError::Empty),
        [0xa1, 0xb2, 0xc3, 0xd4, ..]
        | [0xd4, 0xc3, 0xb2, 0xa1, ..]
        | [0xa1, 0xb2, 0x3c, 0x4d, ..]
        | [0x4d, 0x3c, 0xb2, 0xa1, ..] => {
            dump_pcap(data, &mut printer)?;
            Ok(printer.summary)
        }
        [0x0a, 0x0d, 0x0d, 0x0a, ..] => {
            printer.summary.format = CaptureFormat::PcapNg;
            dump_pcapng(data, &mut printer)?;
            Ok(printer.summary)
        }
        _ => Err(DumpError::NotCapture {
            start: hex_start(data),
        }),
    }
}

fn hex_start(data: &[u8]) -> String {
    let mut s = String::from("0x");
    for b in data.iter().take(4) {
        let _ = write!(s, "{b:02x}");
    }
    if data.len() < 4 {
        let _ = write!(s, ", {} bytes in all", data.len());
    }
    s
}

fn dump_pcap<W: Write>(data: &[u8], printer: &mut Printer<'_, W>) -> Result<(), DumpError> {
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
    let linktype = u32::from(header.datalink);
    let link =
        LinkType::from_number(linktype).ok_or(DumpError::UnsupportedLinkType { linktype })?;
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
        printer.packet(link, Some(ts), &record.data)?;
    }
    Ok(())
}

/// Timestamp resolution and offset of a pcapng interface.
fn interface_clock(interface: &InterfaceDescriptionBlock<'_>) -> (u8, i128) {
    let mut resolution = 6;
    let mut offset = 0;
    for option in &interface.options {
        match option {
            InterfaceDescriptionOption::IfTsResol(r) => resolution = *r,
            InterfaceDescriptionOption::IfTsOffset(o) => offset = i128::from(*o) * NANOS_PER_SEC,
            _ => {}
        }
    }
    (resolution, offset)
}

/// Converts pcapng timestamp ticks to nanoseconds (`if_tsresol`: high bit
/// clear = 10^-n s, set = 2^-n s).
fn ticks_to_nanos(ticks: u64, resolution: u8) -> i128 {
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

fn dump_pcapng<W: Write>(data: &[u8], printer: &mut Printer<'_, W>) -> Result<(), DumpError> {
    let (mut rest, mut parser) = match PcapNgParser::new(data) {
        Ok(ok) => ok,
        Err(PcapError::IncompleteBuffer) => {
            return Err(DumpError::Header {
                format: CaptureFormat::PcapNg,
                reason: "file ends inside the section header block".into(),
            });
        }
        Err(e) => {
            return Err(DumpError::Header {
                format: CaptureFormat::PcapNg,
                reason: e.to_string(),
            });
        }
    };
    let mut index = 0u64;
    let mut last_ts = None;
    while !rest.is_empty() {
        let packet = index + 1;
        let (next, block) = match parser.next_block(rest) {
            Ok(ok) => ok,
            Err(PcapError::IncompleteBuffer) => return Err(DumpError::Truncated { packet }),
            Err(e) => {
                return Err(DumpError::BadRecord {
                    packet,
                    reason: format!("pcapng block: {e}"),
                });
            }
        };
        rest = next;
        // (interface id, timestamp in ticks if any, captured bytes)
        let (interface_id, ticks, frame): (u32, Option<u64>, &[u8]) = match &block {
            Block::EnhancedPacket(epb) => {
                // pcap-file 2.0 stores the raw tick count as nanoseconds;
                // `from_nanos(u64)` round-trips it exactly.
                let ticks = u64::try_from(epb.timestamp.as_nanos()).unwrap_or(u64::MAX);
                (epb.interface_id, Some(ticks), &epb.data)
            }
            Block::SimplePacket(spb) => {
                let len = spb.data.len().min(spb.original_len as usize);
                (0, None, spb.data.get(..len).unwrap_or(&spb.data))
            }
            Block::Packet(pb) => (u32::from(pb.interface_id), Some(pb.timestamp), &pb.data),
            Block::InterfaceDescription(idb) => {
                tracing::debug!(linktype = u32::from(idb.linktype), "pcapng interface");
                continue;
            }
            _ => continue,
        };
        index = packet;
        let interface = parser
            .interfaces()
            .get(interface_id as usize)
            .ok_or_else(|| DumpError::BadRecord {
                packet,
                reason: format!("interface {interface_id} is not described before its packets"),
            })?;
        let linktype = u32::from(interface.linktype);
        let link =
            LinkType::from_number(linktype).ok_or(DumpError::UnsupportedInterfaceLinkType {
                packet,
                interface: interface_id,
                linktype,
            })?;
        let ts = match ticks {
            Some(ticks) => {
                let (resolution, offset) = interface_clock(interface);
                Some(ticks_to_nanos(ticks, resolution) + offset)
            }
            None => last_ts,
        };
        last_ts = ts;
        printer.packet(link, ts, frame)?;
    }
    Ok(())
}

/// A link-layer header type we decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkType {
    Ethernet,
    /// Raw IP, version from the first nibble (RAW, IPV4, IPV6).
    RawIp,
    LinuxSll,
    LinuxSll2,
}

impl LinkType {
    fn from_number(linktype: u32) -> Option<LinkType> {
        match linktype {
            1 => Some(LinkType::Ethernet),
            101 | 228 | 229 => Some(LinkType::RawIp),
            113 => Some(LinkType::LinuxSll),
            276 => Some(LinkType::LinuxSll2),
            _ => None,
        }
    }
}

/// What a frame holds, once sliced.
// One short-lived value per packet, on the stack: boxing would only add an
// allocation per packet.
#[allow(clippy::large_enum_variant)]
enum Frame<'a> {
    Sliced(LaxSlicedPacket<'a>),
    NotIp,
    Malformed(String),
}

fn slice_frame(link: LinkType, data: &[u8]) -> Frame<'_> {
    match link {
        LinkType::RawIp => match LaxSlicedPacket::from_ip(data) {
            Ok(packet) => Frame::Sliced(packet),
            Err(e) => Frame::Malformed(format!("bad IP header: {e}")),
        },
        LinkType::Ethernet => match LaxSlicedPacket::from_ethernet(data) {
            Ok(packet) => Frame::Sliced(packet),
            Err(e) => Frame::Malformed(format!("bad Ethernet header: {e}")),
        },
        // 16 bytes: packet type, ARPHRD, address length, address (8), protocol.
        LinkType::LinuxSll => cooked(data.get(14..16), data.get(16..), "Linux SLL"),
        // 20 bytes: protocol, reserved, ifindex, ARPHRD, packet type, address
        // length, address (8).
        LinkType::LinuxSll2 => cooked(data.get(0..2), data.get(20..), "Linux SLL2"),
    }
    .classify()
}

/// A Linux cooked-capture frame: the protocol field is an EtherType.
fn cooked<'a>(ether_type: Option<&[u8]>, payload: Option<&'a [u8]>, what: &str) -> Frame<'a> {
    match (ether_type, payload) {
        (Some(&[hi, lo]), Some(payload)) => Frame::Sliced(LaxSlicedPacket::from_ether_type(
            EtherType(u16::from_be_bytes([hi, lo])),
            payload,
        )),
        _ => Frame::Malformed(format!("frame too short for a {what} header")),
    }
}

impl Frame<'_> {
    /// A sliced frame without an IP layer is either not IP at all, or IP
    /// whose header could not be read.
    fn classify(self) -> Self {
        match self {
            Frame::Sliced(packet) if packet.net.is_none() => match &packet.stop_err {
                Some((err, layer)) => Frame::Malformed(format!("bad {layer}: {err}")),
                None => Frame::NotIp,
            },
            Frame::Sliced(packet) if matches!(packet.net, Some(LaxNetSlice::Arp(_))) => {
                Frame::NotIp
            }
            other => other,
        }
    }
}

/// Formats packets and keeps the counts.
struct Printer<'o, W> {
    options: &'o DumpOptions,
    out: W,
    summary: DumpSummary,
    first_ts: Option<i128>,
    line: String,
}

impl<'o, W: Write> Printer<'o, W> {
    fn new(options: &'o DumpOptions, out: W) -> Self {
        Printer {
            options,
            out,
            summary: DumpSummary::default(),
            first_ts: None,
            line: String::new(),
        }
    }

    fn packet(&mut self, link: LinkType, ts: Option<i128>, data: &[u8]) -> Result<(), DumpError> {
        self.summary.packets += 1;
        let packet = self.summary.packets;
        let ts = ts.unwrap_or(0);
        let first = *self.first_ts.get_or_insert(ts);
        self.line.clear();
        push_timestamp(&mut self.line, ts - first);
        match slice_frame(link, data) {
            Frame::NotIp => {
                self.summary.non_ip += 1;
                tracing::debug!(packet, "not IP, skipped");
                return Ok(());
            }
            Frame::Malformed(reason) => {
                self.summary.malformed += 1;
                tracing::debug!(packet, %reason, "malformed packet");
                let _ = write!(self.line, " [malformed: {reason}], length {}", data.len());
            }
            Frame::Sliced(sliced) => self.ip_packet(&sliced),
        }
        self.line.push('\n');
        if self.options.hex {
            push_hex(&mut self.line, data);
        }
        self.out
            .write_all(self.line.as_bytes())
            .map_err(DumpError::Write)
    }

    fn ip_packet(&mut self, sliced: &LaxSlicedPacket<'_>) {
        let (family, src, dst, payload) = match &sliced.net {
            Some(LaxNetSlice::Ipv4(ip)) => (
                "IP",
                IpAddr::from(ip.header().source_addr()),
                IpAddr::from(ip.header().destination_addr()),
                ip.payload(),
            ),
            Some(LaxNetSlice::Ipv6(ip)) => (
                "IP6",
                IpAddr::from(ip.header().source_addr()),
                IpAddr::from(ip.header().destination_addr()),
                ip.payload(),
            ),
            // `classify` leaves only IP here.
            Some(LaxNetSlice::Arp(_)) | None => return,
        };
        let line = &mut self.line;
        match &sliced.transport {
            Some(TransportSlice::Tcp(tcp)) => {
                self.summary.tcp += 1;
                if matches!(
                    find_flow_option(tcp.options(), self.options.kind),
                    Ok(Some(_))
                ) {
                    self.summary.flow_options += 1;
                }
                let _ = write!(
                    line,
                    " {family} {} > {}: ",
                    Endpoint(src, tcp.source_port()),
                    Endpoint(dst, tcp.destination_port())
                );
                push_tcp(line, tcp, self.options.kind);
                if payload.incomplete {
                    line.push_str(" [|tcp]");
                }
            }
            _ if payload.ip_number == IpNumber::TCP && !payload.fragmented => {
                self.summary.malformed += 1;
                let reason = match &sliced.stop_err {
                    Some((err, _)) => err.to_string(),
                    None => "unreadable".into(),
                };
                let _ = write!(
                    line,
                    " {family} {src} > {dst}: tcp [bad header: {reason}], length {}",
                    payload.payload.len()
                );
            }
            _ => {
                self.summary.other_ip += 1;
                let _ = write!(
                    line,
                    " {family} {src} > {dst}: proto {}",
                    payload.ip_number.0
                );
                if payload.fragmented {
                    line.push_str(", fragment");
                }
                let _ = write!(line, ", length {}", payload.payload.len());
            }
        }
    }
}

/// `addr.port`, as tcpdump prints both IPv4 and IPv6 endpoints.
struct Endpoint(IpAddr, u16);

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// Seconds with 6 decimals (truncated to the microsecond), signed.
fn push_timestamp(line: &mut String, nanos: i128) {
    let sign = if nanos < 0 { "-" } else { "" };
    let abs = nanos.unsigned_abs();
    let secs = abs / 1_000_000_000;
    let micros = (abs % 1_000_000_000) / 1_000;
    let _ = write!(line, "{sign}{secs}.{micros:06}");
}

fn push_tcp(line: &mut String, tcp: &TcpSlice<'_>, kind: u8) {
    line.push_str("Flags [");
    let flags = [
        (tcp.fin(), 'F'),
        (tcp.syn(), 'S'),
        (tcp.rst(), 'R'),
        (tcp.psh(), 'P'),
        (tcp.ack(), '.'),
        (tcp.urg(), 'U'),
        (tcp.ece(), 'E'),
        (tcp.cwr(), 'W'),
        (tcp.ns(), 'e'),
    ];
    let mut any = false;
    for (_, c) in flags.iter().filter(|(set, _)| *set) {
        line.push(*c);
        any = true;
    }
    if !any {
        line.push_str("none");
    }
    line.push(']');
    let len = tcp.payload().len();
    let seq = tcp.sequence_number();
    if len > 0 {
        // A TCP payload is shorter than 2^32 bytes: the cast is exact.
        let end = seq.wrapping_add(len as u32);
        let _ = write!(line, ", seq {seq}:{end}");
    } else if tcp.syn() || tcp.fin() || tcp.rst() {
        let _ = write!(line, ", seq {seq}");
    }
    if tcp.ack() {
        let _ = write!(line, ", ack {}", tcp.acknowledgment_number());
    }
    let _ = write!(line, ", win {}", tcp.window_size());
    if tcp.urg() {
        let _ = write!(line, ", urg {}", tcp.urgent_pointer());
    }
    if !tcp.options().is_empty() {
        line.push_str(", options [");
        push_options(line, tcp.options(), kind);
        line.push(']');
    }
    let _ = write!(line, ", length {len}");
}

/// Writes a TCP option list, comma-separated, as tcpdump does.
pub fn push_options(line: &mut String, list: &[u8], kind: u8) {
    let mut first = true;
    let mut sep = |line: &mut String| {
        if !first {
            line.push(',');
        }
        first = false;
    };
    let mut end = 0;
    let mut failed = false;
    for item in OptionWalker::new(list) {
        sep(line);
        match item {
            Ok(option) => {
                end = option.offset + option.bytes.len();
                push_option(line, option.kind, option.bytes, kind);
            }
            Err(OptionError::InvalidOptionLength { kind: k, len, .. }) if k == kind => {
                failed = true;
                let _ = write!(line, "flow-d [bad length {len}]");
            }
            Err(e) => {
                failed = true;
                let _ = write!(line, "[bad opt: {e}]");
            }
        }
    }
    // The walker stops early without an error only at EOL.
    if !failed && end < list.len() {
        sep(line);
        line.push_str("eol");
    }
}

fn push_option(line: &mut String, kind: u8, bytes: &[u8], flow_kind: u8) {
    let data = bytes.get(2..).unwrap_or(&[]);
    if kind == flow_kind {
        match FlowOption::new_checked(bytes).and_then(|view| FlowOptionRepr::parse(&view)) {
            Ok(repr) => {
                let _ = write!(line, "{repr}");
            }
            Err(_) => {
                let _ = write!(line, "flow-d [bad length {}]", bytes.len());
            }
        }
        return;
    }
    let be = |b: &[u8]| b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
    match (kind, data.len()) {
        (1, _) => line.push_str("nop"),
        (2, 2) => {
            let _ = write!(line, "mss {}", be(data));
        }
        (3, 1) => {
            let _ = write!(line, "wscale {}", data[0]);
        }
        (4, 0) => line.push_str("sackOK"),
        (5, n) if n % 8 == 0 => {
            let _ = write!(line, "sack {}", n / 8);
            for block in data.chunks_exact(8) {
                let _ = write!(line, " {{{}:{}}}", be(&block[..4]), be(&block[4..]));
            }
        }
        (8, 8) => {
            let _ = write!(line, "TS val {} ecr {}", be(&data[..4]), be(&data[4..]));
        }
        (2 | 3 | 4 | 5 | 8, _) => {
            let name = match kind {
                2 => "mss",
                3 => "wscale",
                4 => "sackOK",
                5 => "sack",
                _ => "TS",
            };
            let _ = write!(line, "{name} [bad length {}]", bytes.len());
        }
        _ => {
            let _ = write!(line, "unknown-{kind}");
            if !data.is_empty() {
                line.push_str(" 0x");
                for b in data {
                    let _ = write!(line, "{b:02x}");
                }
            }
        }
    }
}

/// tcpdump `-xx` style: `\t0x0000:  4500 003c ...`, 16 bytes a line.
fn push_hex(line: &mut String, data: &[u8]) {
    for (i, chunk) in data.chunks(16).enumerate() {
        let _ = write!(line, "\t0x{:04x}: ", i * 16);
        for pair in chunk.chunks(2) {
            line.push(' ');
            for b in pair {
                let _ = write!(line, "{b:02x}");
            }
        }
        line.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options_text(list: &[u8]) -> String {
        let mut s = String::new();
        push_options(&mut s, list, DEFAULT_KIND);
        s
    }

    #[test]
    fn options_print_like_tcpdump() {
        let list = [
            2, 4, 0x05, 0xb4, 1, 3, 3, 3, 4, 2, 8, 10, 0, 0, 0, 109, 0, 0, 0, 0,
        ];
        assert_eq!(
            options_text(&list),
            "mss 1460,nop,wscale 3,sackOK,TS val 109 ecr 0"
        );
    }

    #[test]
    fn flow_option_prints_with_tifid_display() {
        let repr = FlowOptionRepr {
            tifid: tifid::Tifid::new(0x0a45_30be_79bf),
            tiseq: tifid::Seq48::new(0x1f),
            tiack: tifid::Seq48::new(0x1d),
        };
        let list = repr.to_bytes(DEFAULT_KIND);
        assert_eq!(
            options_text(&list),
            "flow-d tifid 0a4530be79bf tiseq 00000000001f tiack 00000000001d"
        );
    }

    #[test]
    fn malformed_flow_option_shows_its_length() {
        let mut list = vec![1, 1, DEFAULT_KIND, 7, 0, 0, 0, 0, 0];
        list.extend_from_slice(&[1, 1, 1]);
        assert_eq!(
            options_text(&list),
            "nop,nop,flow-d [bad length 7],nop,nop,nop"
        );
        assert_eq!(options_text(&[DEFAULT_KIND, 1]), "flow-d [bad length 1]");
    }

    #[test]
    fn option_running_past_the_header_is_flagged() {
        assert_eq!(
            options_text(&[1, 2, 30, 5, 0xb4]),
            "nop,[bad opt: option kind 2 at offset 1 runs past the end of the header]"
        );
        assert_eq!(
            options_text(&[1, DEFAULT_KIND]),
            "nop,[bad opt: option kind 253 at offset 1 runs past the end of the header]"
        );
    }

    #[test]
    fn unknown_kinds_and_eol() {
        assert_eq!(
            options_text(&[99, 4, 0xaa, 0xbb, 0, 0, 0, 0]),
            "unknown-99 0xaabb,eol"
        );
        assert_eq!(options_text(&[2, 3, 5]), "mss [bad length 3]");
        assert_eq!(
            options_text(&[1, 1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2]),
            "nop,nop,sack 1 {1:2}"
        );
    }

    #[test]
    fn custom_kind_takes_precedence() {
        let repr = FlowOptionRepr::default();
        let mut s = String::new();
        push_options(&mut s, &repr.to_bytes(30), 30);
        assert_eq!(
            s,
            "flow-d tifid 000000000000 tiseq 000000000000 tiack 000000000000"
        );
        let mut s = String::new();
        push_options(&mut s, &repr.to_bytes(30), DEFAULT_KIND);
        assert!(s.starts_with("unknown-30 0x0000"), "{s}");
    }

    #[test]
    fn timestamps_are_relative_with_six_decimals() {
        let mut s = String::new();
        push_timestamp(&mut s, 1_234_567_899);
        assert_eq!(s, "1.234567");
        s.clear();
        push_timestamp(&mut s, -1_000);
        assert_eq!(s, "-0.000001");
    }

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
    fn hex_dump_layout() {
        let mut s = String::new();
        push_hex(&mut s, &[0x45, 0, 0, 0x28, 1]);
        assert_eq!(s, "\t0x0000:  4500 0028 01\n");
    }

    #[test]
    fn non_capture_inputs_are_errors() {
        let opts = DumpOptions::default();
        assert!(matches!(
            dump_bytes(&[], &opts, io::sink()),
            Err(DumpError::Empty)
        ));
        let err = dump_bytes(b"hello world", &opts, io::sink()).expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "not a pcap or pcapng file (starts with 0x68656c6c)"
        );
        let err =
            dump_bytes(&[0xd4, 0xc3, 0xb2, 0xa1, 2, 0], &opts, io::sink()).expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "bad pcap file header: file ends inside the 24-byte header (6 bytes)"
        );
    }
}
