//! `tiflow dump`: the packets of a capture file, one line each, in tcpdump's
//! form (`tcpdump -n`), with the flow option decoded as the paper's modified
//! tcpdump shows it.
//!
//! ```text
//! 0.000000 IP 192.168.1.2.11305 > 192.168.2.4.22: Flags [S], seq 110, win 65535,
//!   options [mss 1460,nop,wscale 3,sackOK,TS val 109 ecr 0,flow-d tifid 0a4530000000
//!   tiseq 00000000001d tiack 000000000000], length 0          (one line in the output)
//! ```
//!
//! Modules, one job each:
//! - [`capture`]: pcap and pcapng records (link type, time, bytes, wire length);
//! - [`link`]: link-layer headers down to the IP packet;
//! - [`ip`]: IPv4/IPv6 headers, tcpdump's payload length and `-n` addresses;
//! - [`tcp`]: the TCP part of a line, relative sequence numbers;
//! - [`tcp_options`]: option lists (MPTCP, Fast Open, MD5, TCP-AO, ours);
//! - [`time`]: the timestamp choices.
//!
//! This file owns the arguments, the errors, the counts and the line of each
//! packet.
//!
//! Must never: panic on any input bytes, allocate in proportion to a length
//! field that was not checked against the bytes present, or parse the flow
//! option itself (that is [`tifid::option`]'s job).
//!
//! Format, following tcpdump `-n` (its test suite's flags), field by field
//! from `IP`/`IP6` to `length N`:
//! - Sequence and acknowledgement numbers are relative to the first segment
//!   with ACK of each connection, as tcpdump's (`-S`: absolute). `seq` is
//!   shown when the segment has SYN, FIN or RST or carries data (`seq A:B`
//!   then); `ack` when the ACK flag is set. The flow option's `tiseq` and
//!   `tiack` are always absolute.
//! - Flags: `F S R P . U E W e` in that order, `none` if no flag is set.
//! - Options as tcpdump names them; our kind as [`FlowOptionRepr`]'s
//!   `Display`, or `flow-d [bad length N]`.
//! - `length` is the TCP payload length the IP header announces, bounded by
//!   the length on the wire (not by what was captured); `[|tcp]` follows
//!   where tcpdump's TCP printer runs out of captured bytes.
//! - Timestamps: by default seconds since the first record, 6 decimals (not
//!   tcpdump's time of day); `-t` to `-ttttt` are tcpdump's choices, in UTC.
//! - Other IP packets get one line (`IP a > b: proto 17, length N`); frames
//!   that are not IP (ARP, LLDP, ...) are skipped and counted; packets whose
//!   IP header cannot be read get a line saying why. None of these is an
//!   error: only a file that cannot be read as a capture is.
//!
//! [`FlowOptionRepr`]: tifid::option::FlowOptionRepr

pub(crate) mod capture;
pub(crate) mod ip;
pub(crate) mod link;
pub(crate) mod tcp;
pub(crate) mod tcp_options;
pub(crate) mod time;

use std::fmt::{self, Write as _};
use std::io::{self, Read, Write};
use std::path::PathBuf;

use clap::{ArgAction, Args};
use tifid::option::{DEFAULT_KIND, find_flow_option};

pub use link::SUPPORTED_LINK_TYPES;
pub use time::TimeFormat;

use capture::Record;
use ip::{Addr, IpPacket};
use link::Network;
use tcp::{SeqTracker, TcpSettings};

/// Arguments of `tiflow dump`.
#[derive(Debug, Clone, Args)]
pub struct DumpArgs {
    /// The capture file: pcap or pcapng; link type Ethernet (VLAN tags too),
    /// raw IP, Linux cooked (SLL, SLL2), BSD loopback (NULL, LOOP), PPP,
    /// PPP-HDLC or Cisco HDLC. `-` reads standard input.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// TCP option kind of the flow option.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_KIND)]
    pub kind: u8,

    /// Print each shown packet in hex after its line, as `tcpdump -xx`.
    /// `-v` turns this on too.
    #[arg(short = 'x', long)]
    pub hex: bool,

    /// Absolute TCP sequence and acknowledgement numbers (tcpdump's `-S`);
    /// by default they are relative to each connection's first segment.
    #[arg(short = 'S', long = "absolute-tcp-sequence-numbers")]
    pub absolute: bool,

    /// Timestamps as tcpdump's `-t` options: `-t` none, `-tt` seconds since
    /// the epoch, `-ttt` since the previous packet, `-tttt` date and time
    /// (UTC), `-ttttt` since the first packet. Without it: seconds since the
    /// first packet.
    #[arg(short = 't', action = ArgAction::Count)]
    pub time: u8,

    /// Start each line with the packet's number, as tcpdump's `-#`.
    #[arg(short = '#', long = "number")]
    pub number: bool,
}

/// What [`dump`] prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpOptions {
    /// TCP option kind decoded as the flow option.
    pub kind: u8,
    /// Follow each line with a hex dump of the whole captured frame.
    pub hex: bool,
    /// Absolute sequence numbers (`-S`) instead of relative ones.
    pub absolute: bool,
    /// The timestamp at the start of each line.
    pub time: TimeFormat,
    /// Start each line with the packet's number (`-#`).
    pub number: bool,
}

impl Default for DumpOptions {
    fn default() -> DumpOptions {
        DumpOptions {
            kind: DEFAULT_KIND,
            hex: false,
            absolute: false,
            time: TimeFormat::default(),
            number: false,
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
    /// Packets whose IP or TCP header could not be read whole, or that
    /// tcpdump calls invalid (one line each).
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
        absolute: args.absolute,
        time: TimeFormat::from_t_count(args.time),
        number: args.number,
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
    let format = match data {
        [] => return Err(DumpError::Empty),
        [0xa1, 0xb2, 0xc3, 0xd4, ..]
        | [0xd4, 0xc3, 0xb2, 0xa1, ..]
        | [0xa1, 0xb2, 0x3c, 0x4d, ..]
        | [0x4d, 0x3c, 0xb2, 0xa1, ..] => CaptureFormat::Pcap,
        [0x0a, 0x0d, 0x0d, 0x0a, ..] => CaptureFormat::PcapNg,
        _ => {
            return Err(DumpError::NotCapture {
                start: hex_start(data),
            });
        }
    };
    let mut printer = Printer::new(options, writer);
    printer.summary.format = format;
    capture::for_each_record(data, format, &mut |record| printer.packet(&record))?;
    Ok(printer.summary)
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

/// Formats packets and keeps the counts and the per-connection state.
struct Printer<'o, W> {
    options: &'o DumpOptions,
    out: W,
    summary: DumpSummary,
    clock: time::Clock,
    seqs: SeqTracker,
    line: String,
}

impl<'o, W: Write> Printer<'o, W> {
    fn new(options: &'o DumpOptions, out: W) -> Self {
        Printer {
            options,
            out,
            summary: DumpSummary::default(),
            clock: time::Clock::default(),
            seqs: SeqTracker::default(),
            line: String::new(),
        }
    }

    fn packet(&mut self, record: &Record<'_>) -> Result<(), DumpError> {
        self.summary.packets += 1;
        let packet = self.summary.packets;
        self.line.clear();
        if self.options.number {
            let _ = write!(self.line, "{packet:5}  ");
        }
        self.clock
            .push(&mut self.line, self.options.time, record.ts);
        let (network, link_len) = link::network(record.linktype, record.data);
        if network == Network::NotIp {
            self.summary.non_ip += 1;
            tracing::debug!(packet, "not IP, skipped");
            return Ok(());
        }
        let wire_len = record
            .wire_len
            .saturating_sub(u32::try_from(link_len).unwrap_or(u32::MAX));
        match ip::parse(network, wire_len) {
            Ok(ip) => self.ip_packet(&ip),
            Err(reason) => {
                self.summary.malformed += 1;
                tracing::debug!(packet, %reason, "malformed packet");
                let _ = write!(
                    self.line,
                    "[malformed: {reason}], length {}",
                    record.data.len()
                );
            }
        }
        self.line.push('\n');
        if self.options.hex {
            push_hex(&mut self.line, record.data);
        }
        self.out
            .write_all(self.line.as_bytes())
            .map_err(DumpError::Write)
    }

    fn ip_packet(&mut self, ip: &IpPacket<'_>) {
        let line = &mut self.line;
        let _ = write!(line, "{} {}", ip.family.name(), ip.warning);
        if ip.protocol == 6 && !ip.later_fragment {
            self.summary.tcp += 1;
            let options = ip.payload.get(20..).unwrap_or(&[]);
            if matches!(find_flow_option(options, self.options.kind), Ok(Some(_))) {
                self.summary.flow_options += 1;
            }
            let settings = TcpSettings {
                kind: self.options.kind,
                absolute: self.options.absolute,
            };
            if tcp::push_tcp(line, ip, &mut self.seqs, &settings).malformed {
                self.summary.malformed += 1;
            }
            return;
        }
        self.summary.other_ip += 1;
        let _ = write!(
            line,
            "{} > {}: proto {}",
            Addr(ip.src),
            Addr(ip.dst),
            ip.protocol
        );
        if ip.later_fragment {
            line.push_str(", fragment");
        }
        let _ = write!(line, ", length {}", ip.payload.len());
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
