//! `tiflow dump` as a user runs it: the built binary on files written here.
//! Bad files give a clear error and exit code 1; malformed packets give a
//! line and exit code 0; nothing panics.

use std::borrow::Cow;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
use pcap_file::{DataLink, Endianness};
use ti_testnet::packet::options::mss_and_flow_option;
use ti_testnet::packet::{Tcp, Udp};
use tifid::option::{DEFAULT_KIND, FlowOptionRepr};
use tifid::{Seq48, Tifid};

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn tiflow(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_tiflow"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run tiflow");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "tiflow panicked: {stderr}");
    output
}

/// Writes `bytes` to a file named after the test and dumps it.
fn dump_file(name: &str, bytes: &[u8], extra: &[&str]) -> (i32, String, String) {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, bytes).expect("write test file");
    let path = path.to_str().expect("UTF-8 path").to_owned();
    let mut args = vec!["dump", path.as_str()];
    args.extend_from_slice(extra);
    let output = tiflow(&args);
    (
        output.status.code().expect("exit code"),
        String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    )
}

fn flow() -> FlowOptionRepr {
    FlowOptionRepr {
        tifid: Tifid::new(0x0a45_30be_79bf),
        tiseq: Seq48::new(0x1f),
        tiack: Seq48::new(0x1d),
    }
}

/// An IPv4 TCP segment from A:1000 to B:22 with the given raw options
/// (padded to a word).
fn tcp_packet(options: &[u8], payload: &[u8]) -> Vec<u8> {
    tcp_base().options(options).payload(payload).build()
}

/// The segment of [`tcp_packet`] before its options and payload.
fn tcp_base() -> Tcp {
    Tcp::new((A, 1000), (B, 22))
        .seq(5000)
        .ack(7000)
        .psh()
        .window(1024)
}

fn syn_with_flow_option() -> Vec<u8> {
    Tcp::new((A, 1000), (B, 22))
        .syn()
        .seq(100)
        .options(&mss_and_flow_option(&flow(), DEFAULT_KIND))
        .build()
}

fn udp_packet() -> Vec<u8> {
    Udp::new((A, 53), (B, 53)).payload(&[1, 2, 3, 4]).build()
}

fn pcap(linktype: u32, frames: &[Vec<u8>]) -> Vec<u8> {
    let header = PcapHeader {
        datalink: DataLink::from(linktype),
        endianness: Endianness::Little,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(Vec::new(), header).expect("header");
    for (i, frame) in frames.iter().enumerate() {
        let time = Duration::from_secs(1_000) + Duration::from_micros(250 * i as u64);
        writer
            .write_packet(&PcapPacket::new(time, frame.len() as u32, frame))
            .expect("record");
    }
    writer.into_writer()
}

fn pcapng(linktype: u32, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut writer = PcapNgWriter::new(Vec::new()).expect("section header");
    writer
        .write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::from(linktype), 0))
        .expect("interface");
    for (i, frame) in frames.iter().enumerate() {
        // Ticks of the default resolution (microseconds); pcap-file 2.0
        // writes the Duration's nanosecond count as the tick count.
        let ticks = 1_000_000_000 + 250 * i as u64;
        writer
            .write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_nanos(ticks),
                original_len: frame.len() as u32,
                data: Cow::Borrowed(frame),
                options: vec![],
            })
            .expect("packet");
    }
    writer.into_inner()
}

fn ethernet(ip: &[u8]) -> Vec<u8> {
    let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    frame.extend_from_slice(ip);
    frame
}

fn sll(ip: &[u8]) -> Vec<u8> {
    let mut frame = vec![0, 4, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0x08, 0x00];
    frame.extend_from_slice(ip);
    frame
}

fn sll2(ip: &[u8]) -> Vec<u8> {
    let mut frame = vec![
        0x08, 0x00, 0, 0, 0, 0, 0, 3, 0, 1, 4, 6, 2, 0, 0, 0, 0, 1, 0, 0,
    ];
    frame.extend_from_slice(ip);
    frame
}

/// Puts a link-layer header in front of an IP packet.
type Wrap = fn(&[u8]) -> Vec<u8>;

const SYN_LINE: &str = "0.000000 IP 10.0.0.1.1000 > 10.0.0.2.22: Flags [S], seq 100, win 65535, \
     options [mss 1460,flow-d tifid 0a4530be79bf tiseq 00000000001f tiack 00000000001d], length 0";

#[test]
fn help_documents_subcommands_and_exit_codes() {
    let output = tiflow(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("dump"), "{help}");
    assert!(help.contains("Exit codes"), "{help}");
    assert!(help.contains("2  usage error"), "{help}");
    let output = tiflow(&["dump", "--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--kind"), "{help}");
    assert!(help.contains("Exit codes"), "{help}");
}

#[test]
fn usage_errors_exit_with_2() {
    assert_eq!(tiflow(&["dump"]).status.code(), Some(2));
    assert_eq!(tiflow(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        tiflow(&["dump", "x.pcap", "--kind", "300"]).status.code(),
        Some(2)
    );
}

#[test]
fn nonexistent_path_is_a_clear_error() {
    let output = tiflow(&["dump", "/nonexistent/dir/trace.pcap"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tiflow dump: cannot open /nonexistent/dir/trace.pcap: No such file"),
        "{stderr}"
    );
}

#[test]
fn directory_is_a_clear_error() {
    let dir = env!("CARGO_TARGET_TMPDIR");
    let output = tiflow(&["dump", dir]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("tiflow dump: cannot read {dir}: ")),
        "{stderr}"
    );
}

#[test]
fn empty_file_is_a_clear_error() {
    let (code, stdout, stderr) = dump_file("empty.pcap", &[], &[]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(stderr.contains("tiflow dump: empty file"), "{stderr}");
}

#[test]
fn garbage_file_is_a_clear_error() {
    let garbage: Vec<u8> = (0..200u32).map(|i| (i * 37 + 11) as u8).collect();
    let (code, _, stderr) = dump_file("garbage.pcap", &garbage, &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not a pcap or pcapng file"), "{stderr}");
}

#[test]
fn truncated_pcap_names_the_packet() {
    let file = pcap(
        101,
        &[
            syn_with_flow_option(),
            udp_packet(),
            tcp_packet(&[], b"data"),
        ],
    );
    let cut = &file[..file.len() - 3];
    let (code, stdout, stderr) = dump_file("truncated.pcap", cut, &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("tiflow dump: packet 3: truncated record (file ends inside it)"),
        "{stderr}"
    );
    // The packets before the cut are printed.
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert_eq!(stdout.lines().next(), Some(SYN_LINE));
    // Cut inside a record header too.
    let header_cut = &file[..24 + 16 + syn_with_flow_option().len() + 7];
    let (code, _, stderr) = dump_file("truncated-header.pcap", header_cut, &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("packet 2: truncated record"), "{stderr}");
    // Cut inside the file header.
    let (code, _, stderr) = dump_file("truncated-file-header.pcap", &file[..10], &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("file ends inside the 24-byte header"),
        "{stderr}"
    );
}

#[test]
fn pcapng_with_unsupported_link_type_is_a_clear_error() {
    let file = pcapng(147, &[syn_with_flow_option()]);
    let (code, _, stderr) = dump_file("usb.pcapng", &file, &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("packet 1: unsupported link type 147 on interface 0"),
        "{stderr}"
    );
    let (code, _, stderr) = dump_file("usb.pcap", &pcap(147, &[]), &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("unsupported link type 147"), "{stderr}");
}

#[test]
fn truncated_pcapng_names_the_packet() {
    let file = pcapng(101, &[syn_with_flow_option(), udp_packet()]);
    let (code, stdout, stderr) = dump_file("truncated.pcapng", &file[..file.len() - 5], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("packet 2: truncated record"), "{stderr}");
    assert_eq!(stdout.lines().next(), Some(SYN_LINE));
}

#[test]
fn every_link_type_and_format_prints_the_same_lines() {
    let ip = [syn_with_flow_option(), udp_packet()];
    let (code, expected, _) = dump_file("raw.pcap", &pcap(101, &ip), &[]);
    assert_eq!(code, 0);
    assert_eq!(
        expected,
        format!("{SYN_LINE}\n0.000250 IP 10.0.0.1 > 10.0.0.2: proto 17, length 12\n")
    );
    let cases: [(u32, Wrap); 5] = [
        (101, <[u8]>::to_vec),
        (228, <[u8]>::to_vec),
        (1, ethernet),
        (113, sll),
        (276, sll2),
    ];
    for (linktype, wrap) in cases {
        let frames: Vec<Vec<u8>> = ip.iter().map(|p| wrap(p)).collect();
        for (format, file) in [
            ("pcap", pcap(linktype, &frames)),
            ("pcapng", pcapng(linktype, &frames)),
        ] {
            let (code, stdout, stderr) =
                dump_file(&format!("link-{linktype}.{format}"), &file, &[]);
            assert_eq!(code, 0, "{linktype} {format}: {stderr}");
            assert_eq!(stdout, expected, "link type {linktype}, {format}");
            assert!(
                stderr.contains(&format!("2 packets ({format})")),
                "{stderr}"
            );
        }
    }
}

/// Replaces the ethertype at `at` (IPv4's 0x0800) with IPv6's 0x86dd.
fn as_ipv6_frame(mut frame: Vec<u8>, at: usize) -> Vec<u8> {
    frame[at..at + 2].copy_from_slice(&[0x86, 0xdd]);
    frame
}

#[test]
fn ipv6_prints_the_same_on_every_link_type_with_the_flow_option_decoded() {
    let (a6, b6): (std::net::Ipv6Addr, std::net::Ipv6Addr) = (
        "fd00::1".parse().expect("address"),
        "fd00::2".parse().expect("address"),
    );
    let syn = Tcp::new((a6, 1000), (b6, 22))
        .syn()
        .seq(100)
        .options(&mss_and_flow_option(&flow(), DEFAULT_KIND))
        .build();
    let udp = Udp::new((a6, 53), (b6, 53)).payload(&[1, 2, 3, 4]).build();
    let ip = [syn, udp];
    let (code, expected, _) = dump_file("raw6.pcap", &pcap(101, &ip), &[]);
    assert_eq!(code, 0);
    let syn_line = "0.000000 IP6 fd00::1.1000 > fd00::2.22: Flags [S], seq 100, win 65535, \
         options [mss 1460,flow-d tifid 0a4530be79bf tiseq 00000000001f tiack 00000000001d], length 0";
    let first = expected.lines().next().unwrap_or_default();
    assert_eq!(first, syn_line, "{expected}");
    assert_eq!(expected.lines().count(), 2, "{expected}");
    let cases: [(u32, Wrap); 5] = [
        (229, <[u8]>::to_vec),
        (1, |p| as_ipv6_frame(ethernet(p), 12)),
        (113, |p| as_ipv6_frame(sll(p), 14)),
        (276, |p| as_ipv6_frame(sll2(p), 0)),
        (228, <[u8]>::to_vec),
    ];
    for (linktype, wrap) in cases {
        let frames: Vec<Vec<u8>> = ip.iter().map(|p| wrap(p)).collect();
        let (code, stdout, stderr) = dump_file(
            &format!("link6-{linktype}.pcap"),
            &pcap(linktype, &frames),
            &[],
        );
        if linktype == 228 {
            // IPv4-only raw link type: an IPv6 packet there is reported, not misread.
            assert_eq!(code, 0, "{stderr}");
            assert!(!stdout.contains("IP6 fd00::1.1000"), "{stdout}");
            continue;
        }
        assert_eq!(code, 0, "{linktype}: {stderr}");
        assert_eq!(stdout, expected, "link type {linktype}");
    }
}

#[test]
fn malformed_flow_option_is_a_line_not_an_error() {
    let packet = tcp_packet(&[1, 1, DEFAULT_KIND, 7, 0, 0, 0, 0, 0, 1, 1, 1], &[]);
    let (code, stdout, _) = dump_file("bad-length.pcap", &pcap(101, &[packet]), &[]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout,
        "0.000000 IP 10.0.0.1.1000 > 10.0.0.2.22: Flags [P.], ack 7000, win 1024, \
         options [nop,nop,flow-d [bad length 7],nop,nop,nop], length 0\n"
    );
}

#[test]
fn option_list_running_past_the_header_is_a_line_not_an_error() {
    let packet = tcp_packet(&[2, 30, 5, 0xb4], b"abc");
    // TCP data offset beyond the captured bytes: the header itself runs past.
    let long_offset = tcp_base().data_offset(15).build();
    let (code, stdout, stderr) =
        dump_file("past-header.pcap", &pcap(101, &[packet, long_offset]), &[]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    // As tcpdump: `[bad opt]` ends the line (no `]` after a first option,
    // no length).
    assert_eq!(
        lines[0],
        "0.000000 IP 10.0.0.1.1000 > 10.0.0.2.22: Flags [P.], seq 5000:5003, ack 7000, \
         win 1024, options [[bad opt]"
    );
    assert_eq!(
        lines[1],
        "0.000250 IP 10.0.0.1.1000 > 10.0.0.2.22: Flags [P.] [bad hdr length 60 - too long, \
         > 20] (invalid)"
    );
    assert!(stderr.contains("2 malformed"), "{stderr}");
}

#[test]
fn garbage_ip_and_non_ip_frames() {
    let arp = {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&[0; 20]);
        f
    };
    let short = vec![1, 2, 3];
    let bad_ip = ethernet(&[0x45, 0, 0, 0x10, 0]);
    let (code, stdout, stderr) = dump_file("mixed.pcap", &pcap(1, &[arp, short, bad_ip]), &[]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("0.000250 [malformed: bad Ethernet header"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("0.000500 [malformed: bad "),
        "{}",
        lines[1]
    );
    assert!(
        stderr.contains("3 packets (pcap): 0 TCP (0 with a flow option), 0 other IP, 2 malformed, 1 non-IP skipped"),
        "{stderr}"
    );
}

#[test]
fn verbose_adds_a_hex_dump_and_kind_is_configurable() {
    let mut options = vec![2, 4, 0x05, 0xb4];
    options.extend_from_slice(&flow().to_bytes(30));
    let packet = tcp_packet(&options, &[]);
    let file = pcap(101, &[packet]);
    let (code, stdout, _) = dump_file("kind30.pcap", &file, &["--kind", "30", "-v"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].contains("mss 1460,flow-d tifid 0a4530be79bf"),
        "{}",
        lines[0]
    );
    assert!(lines[1].starts_with("\t0x0000:  4500 0040"), "{}", lines[1]);
    // With the default kind, 30 is MPTCP, decoded as tcpdump decodes it (a
    // capable option must be in a SYN or carry a version below 2).
    let (_, stdout, _) = dump_file("kind30-default.pcap", &file, &[]);
    assert!(
        stdout.contains("options [mss 1460,mptcp 20 capable Unknown Version (10)]"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1);
}

#[test]
fn stdin_is_read_with_a_dash() {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tiflow"))
        .args(["dump", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let file = pcap(101, &[syn_with_flow_option()]);
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&file)
        .expect("write");
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("{SYN_LINE}\n")
    );
}

/// The dump never panics on corrupted captures: every committed trace
/// and tcpdump capture of `pcap-tests`, mutated at random (bytes flipped,
/// cut short), gives lines or a clear error. Deterministic (a fixed
/// seed), bounded in count.
#[test]
fn mutated_captures_never_panic() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pcap-tests");
    let mut files: Vec<PathBuf> = ["traces", "tcpdump"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(root.join(dir)).expect("capture dir"))
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("pcap" | "pcapng")
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 20, "captures found: {}", files.len());
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut runs = 0;
    for file in &files {
        let original = std::fs::read(file).expect("read capture");
        // Our own pcapng reader is new: it gets many more rounds.
        let pcapng = file.extension().is_some_and(|e| e == "pcapng");
        for _ in 0..if pcapng { 2000 } else { 40 } {
            let mut data = original.clone();
            for _ in 0..(1 + next() % 8) {
                let at = (next() as usize) % data.len().max(1);
                if let Some(b) = data.get_mut(at) {
                    *b ^= (next() as u8) | 1;
                }
            }
            if next() % 4 == 0 {
                data.truncate((next() as usize) % (data.len() + 1));
            }
            let options = ti_tools::DumpOptions::default();
            let _ = ti_tools::dump_bytes(&data, &options, std::io::sink());
            runs += 1;
        }
    }
    assert!(runs >= 2800, "{runs} mutated captures");
}
