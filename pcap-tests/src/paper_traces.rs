//! The paper's Trace 1 and Trace 2 (Brown et al., ICCCN 2011, §IV.A), rebuilt
//! byte for byte from the fields its modified tcpdump printed.
//!
//! Owns the field values, the choices for what the paper does not print, and
//! the pcap encoding. Must never read a clock or a random source: the same
//! code always gives the same bytes, and a test compares them with the files
//! checked in under `traces/`.
//!
//! Taken from the paper: addresses 192.168.1.2 (initiator) and 192.168.2.4
//! (responder), ports (4874 and 11305 to ssh), TCP flags, sequence numbers,
//! windows, option order (SYN and SYN-ACK: `mss 1460, nop, wscale 3, sackOK,
//! TS`; third ACK: `nop, nop, TS`), timestamp values, and the flow options.
//! The third packet's `ack 1` is relative: the absolute value is the
//! responder's ISN + 1 (201 and 457), and its sequence number is the
//! initiator's ISN + 1. The paper prints Trace 2's last `tiack` cut to
//! `00000000001`; it is `00000000001f`, the responder's TISeq.
//!
//! Chosen here (the paper does not print them):
//! - IPv4 without options, DF set (path MTU discovery, the default of the
//!   paper's hosts), TOS 0.
//! - Captured at the initiator: its packets leave with TTL 64, the
//!   responder's arrive with TTL 63 (one router between 192.168.1.0/24 and
//!   192.168.2.0/24).
//! - IP IDs sequential per host: Trace 1 initiator 0x1000, 0x1001, responder
//!   0x2000; Trace 2 initiator 0x1100, 0x1101, responder 0x2100.
//! - Times: [`BASE_TIME`] plus 0, 412 and 503 µs (Trace 1), 0, 437 and 521 µs
//!   (Trace 2): a LAN round trip, with the timestamp clock (1 kHz) ticking
//!   between SYN and ACK as the TS values show.
//! - pcap: little-endian, version 2.4, microsecond timestamps, snaplen 65535,
//!   LINKTYPE_RAW (101).

use std::path::PathBuf;
use std::time::Duration;

use etherparse::{IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, PacketBuilder};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, TsResolution};
use tifid::option::{DEFAULT_KIND, FlowOptionRepr};
use tifid::{Seq48, Tifid};

/// The initiator (the ssh client, where the capture was taken).
pub const INITIATOR: [u8; 4] = [192, 168, 1, 2];
/// The responder (the ssh server).
pub const RESPONDER: [u8; 4] = [192, 168, 2, 4];
/// The responder's port: ssh.
pub const SSH_PORT: u16 = 22;
/// Timestamp of each trace's first packet: 2011-03-13 07:06:40 UTC, shortly
/// before the paper's conference.
pub const BASE_TIME: Duration = Duration::from_secs(1_300_000_000);

/// Trace 1, packet 1: the SYN's flow option (new flow: responder half zero).
pub const TRACE1_SYN_OPTION: FlowOptionRepr = FlowOptionRepr {
    tifid: Tifid::new(0x4b22_0900_0000),
    tiseq: Seq48::new(0x1f),
    tiack: Seq48::ZERO,
};

/// Trace 2, packet 1: the SYN's flow option.
pub const TRACE2_SYN_OPTION: FlowOptionRepr = FlowOptionRepr {
    tifid: Tifid::new(0x0a45_3000_0000),
    tiseq: Seq48::new(0x1d),
    tiack: Seq48::ZERO,
};

/// Trace 2, packet 2: the SYN-ACK's flow option (complete TIFID).
pub const TRACE2_SYN_ACK_OPTION: FlowOptionRepr = FlowOptionRepr {
    tifid: Tifid::new(0x0a45_30be_79bf),
    tiseq: Seq48::new(0x1f),
    tiack: Seq48::new(0x1d),
};

/// Trace 2, packet 3: the confirming ACK's flow option.
pub const TRACE2_ACK_OPTION: FlowOptionRepr = FlowOptionRepr {
    tifid: Tifid::new(0x0a45_30be_79bf),
    tiseq: Seq48::new(0x1d),
    tiack: Seq48::new(0x1f),
};

/// One packet of a trace: an IPv4 datagram and when it was captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracePacket {
    /// Capture time (since the Unix epoch).
    pub time: Duration,
    /// The IPv4 datagram, checksums correct.
    pub bytes: Vec<u8>,
}

/// A rebuilt trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// File stem under `traces/` and `golden/`, e.g. `paper-trace1`.
    pub name: &'static str,
    /// The packets in capture order.
    pub packets: Vec<TracePacket>,
}

impl Trace {
    /// The trace as a pcap file (LINKTYPE_RAW).
    pub fn pcap_bytes(&self) -> Vec<u8> {
        let header = PcapHeader {
            version_major: 2,
            version_minor: 4,
            ts_correction: 0,
            ts_accuracy: 0,
            snaplen: 65535,
            datalink: DataLink::RAW,
            ts_resolution: TsResolution::MicroSecond,
            endianness: Endianness::Little,
        };
        // Writing to a Vec cannot fail; the packets are far below the
        // snaplen and the times within u32 seconds.
        let mut writer =
            PcapWriter::with_header(Vec::new(), header).expect("pcap header writes to a Vec");
        for packet in &self.packets {
            let len = u32::try_from(packet.bytes.len()).expect("packet shorter than 4 GiB");
            writer
                .write_packet(&PcapPacket::new(packet.time, len, &packet.bytes))
                .expect("pcap record writes to a Vec");
        }
        writer.into_writer()
    }

    /// Where the checked-in pcap lives: `traces/NAME.pcap`.
    pub fn pcap_path(&self) -> PathBuf {
        traces_dir().join(format!("{}.pcap", self.name))
    }
}

/// `pcap-tests/traces/`.
pub fn traces_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/traces"))
}

/// Every committed capture in `pcap-tests/traces/` (pcap and pcapng),
/// sorted by name.
pub fn committed_traces() -> Vec<PathBuf> {
    let mut traces: Vec<PathBuf> = std::fs::read_dir(traces_dir())
        .expect("traces/ exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("pcap" | "pcapng")
            )
        })
        .collect();
    traces.sort();
    traces
}

/// `pcap-tests/golden/`.
pub fn golden_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/golden"))
}

/// Both paper traces.
pub fn all() -> Vec<Trace> {
    vec![trace1(), trace2()]
}

/// Fields of one handshake segment.
struct Segment {
    after_us: u64,
    from_initiator: bool,
    ip_id: u16,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    window: u16,
    options: Vec<u8>,
}

/// `mss 1460, nop, wscale 3, sackOK, TS val ecr`: the paper's SYN and
/// SYN-ACK options, 20 bytes.
fn syn_options(ts_val: u32, ts_ecr: u32) -> Vec<u8> {
    let mut options = vec![2, 4, 0x05, 0xb4, 1, 3, 3, 3, 4, 2, 8, 10];
    options.extend_from_slice(&ts_val.to_be_bytes());
    options.extend_from_slice(&ts_ecr.to_be_bytes());
    options
}

/// `nop, nop, TS val ecr`: the paper's third-ACK options, 12 bytes.
fn ack_options(ts_val: u32, ts_ecr: u32) -> Vec<u8> {
    let mut options = vec![1, 1, 8, 10];
    options.extend_from_slice(&ts_val.to_be_bytes());
    options.extend_from_slice(&ts_ecr.to_be_bytes());
    options
}

fn with_flow(mut options: Vec<u8>, flow: &FlowOptionRepr) -> Vec<u8> {
    options.extend_from_slice(&flow.to_bytes(DEFAULT_KIND));
    options
}

fn build(name: &'static str, client_port: u16, segments: &[Segment]) -> Trace {
    let packets = segments
        .iter()
        .map(|s| {
            let (src, dst, sport, dport, ttl) = if s.from_initiator {
                (INITIATOR, RESPONDER, client_port, SSH_PORT, 64)
            } else {
                (RESPONDER, INITIATOR, SSH_PORT, client_port, 63)
            };
            // The builder fixes total length and checksum; the payload
            // length given here is a placeholder within range.
            let mut ip = Ipv4Header::new(0, ttl, IpNumber::TCP, src, dst)
                .expect("zero payload length is in range");
            ip.identification = s.ip_id;
            ip.dont_fragment = true;
            let mut builder = PacketBuilder::ip(IpHeaders::Ipv4(ip, Ipv4Extensions::default()))
                .tcp(sport, dport, s.seq, s.window);
            if s.syn {
                builder = builder.syn();
            }
            if let Some(ack) = s.ack {
                builder = builder.ack(ack);
            }
            let builder = builder
                .options_raw(&s.options)
                .expect("paper options are at most 40 bytes, a multiple of 4");
            let mut bytes = Vec::new();
            builder
                .write(&mut bytes, &[])
                .expect("an empty segment builds");
            TracePacket {
                time: BASE_TIME + Duration::from_micros(s.after_us),
                bytes,
            }
        })
        .collect();
    Trace { name, packets }
}

/// Trace 1: the initiator offers a flow, the responder does not take it.
///
/// ```text
/// IP 192.168.1.2.4874 > 192.168.2.4.ssh: Flags[S],seq 100,win 65535,options[mss
///   1460,nop,wscale 3,sackOK,TS val 787 ecr 0,flow-d tificid 4b2209000000 tiseq
///   00000000001f tiack 000000000000],len 0
/// IP 192.168.2.4.ssh > 192.168.1.2.4874: Flags[S.],seq 200,ack 101,win 65535,
///   options[mss 1460, nop, wscale 3, sackOK, TS val 197 ecr 787],len 0
/// IP 192.168.1.2.4874 > 192.168.2.4.ssh: Flags[.],ack 1,win 8326, options[nop,
///   nop, TS val 788 ecr 197],len 0
/// ```
pub fn trace1() -> Trace {
    build(
        "paper-trace1",
        4874,
        &[
            Segment {
                after_us: 0,
                from_initiator: true,
                ip_id: 0x1000,
                seq: 100,
                ack: None,
                syn: true,
                window: 65535,
                options: with_flow(syn_options(787, 0), &TRACE1_SYN_OPTION),
            },
            Segment {
                after_us: 412,
                from_initiator: false,
                ip_id: 0x2000,
                seq: 200,
                ack: Some(101),
                syn: true,
                window: 65535,
                options: syn_options(197, 787),
            },
            Segment {
                after_us: 503,
                from_initiator: true,
                ip_id: 0x1001,
                seq: 101,
                ack: Some(201),
                syn: false,
                window: 8326,
                options: ack_options(788, 197),
            },
        ],
    )
}

/// Trace 2: both sides take part; the third ACK confirms.
///
/// ```text
/// IP 192.168.1.2.11305 > 192.168.2.4.ssh: Flags[S],seq 110,win 65535,options[mss
///   1460,nop,wscale 3,sackOK,TS val 109 ecr 0,flow-d tificid 0a4530000000 tiseq
///   00000000001d tiack 000000000000],len 0
/// IP 192.168.2.4.ssh > 192.168.1.2.11305: Flags[S.],seq 456,ack 111,win 65535,
///   options[mss 1460,nop,wscale 3,sackOK,TS val 138 ecr 109, flow-d tificid
///   0a4530be79bf tiseq 00000000001f tiack 00000000001d],len 0
/// IP 192.168.1.2.11305 > 192.168.2.4.ssh: Flags[.],ack 1,win 8326,options[nop,nop,TS
///   val 110 ecr 138,flow-d tificid 0a4530be79bf tiseq 00000000001d tiack
///   00000000001],len 0
/// ```
pub fn trace2() -> Trace {
    build(
        "paper-trace2",
        11305,
        &[
            Segment {
                after_us: 0,
                from_initiator: true,
                ip_id: 0x1100,
                seq: 110,
                ack: None,
                syn: true,
                window: 65535,
                options: with_flow(syn_options(109, 0), &TRACE2_SYN_OPTION),
            },
            Segment {
                after_us: 437,
                from_initiator: false,
                ip_id: 0x2100,
                seq: 456,
                ack: Some(111),
                syn: true,
                window: 65535,
                options: with_flow(syn_options(138, 109), &TRACE2_SYN_ACK_OPTION),
            },
            Segment {
                after_us: 521,
                from_initiator: true,
                ip_id: 0x1101,
                seq: 111,
                ack: Some(457),
                syn: false,
                window: 8326,
                options: with_flow(ack_options(110, 138), &TRACE2_ACK_OPTION),
            },
        ],
    )
}
