//! The Wireshark dissector `tools/wireshark/tiflow.lua`, run by `tshark` on
//! every trace under `traces/`.
//!
//! - `dissector_output_matches_golden`: for each trace whose `tiflow dump`
//!   shows the flow option, tshark's field values (`-T fields`) and the
//!   option's subtree (`-V`) equal `golden/wireshark/STEM.txt`
//!   (`TIFLOW_BLESS=1` rewrites them); for every trace, packet by packet,
//!   the TIFID, TISeq and TIAck tshark reads equal the ones `tiflow dump`
//!   prints (which `tests/golden.rs` pins to `golden/STEM.txt`), and a
//!   packet without the option in the dump has none in tshark.
//! - `display_filters_select_the_dumped_packets`: `-Y` filters on the
//!   fields select the packets the dump says they should.
//! - `kind_preference_moves_the_dissector`: `-o tiflow.kind:254` leaves
//!   kind 253 to Wireshark's own decoder.
//!
//! tshark is required: without it these tests fail, naming the package.
//! The golden files were made with tshark 4.0.17 (Debian 12); another
//! version may print the fields differently (then rebless and review).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use pcap_tests::paper_traces::{committed_traces, golden_dir, traces_dir};
use ti_tools::{DumpOptions, dump};

/// The fields every run prints, in this order.
const FIELDS: [&str; 9] = [
    "frame.number",
    "tiflow.kind",
    "tiflow.length",
    "tiflow.tifid",
    "tiflow.tifid.initiator",
    "tiflow.tifid.responder",
    "tiflow.complete",
    "tiflow.tiseq",
    "tiflow.tiack",
];

fn lua_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tools/wireshark/tiflow.lua")
        .canonicalize()
        .expect("tools/wireshark/tiflow.lua exists")
}

fn wireshark_golden_dir() -> PathBuf {
    golden_dir().join("wireshark")
}

/// Runs `tshark -n -X lua_script:tiflow.lua ARGS` and returns its stdout.
///
/// HOME points at an empty directory, so a personal copy of the dissector
/// (or personal preferences) cannot change what is tested. Anything on
/// stderr besides tshark's "running as root" notice fails the test: a Lua
/// error is reported there while tshark goes on without the dissector.
fn tshark(args: &[&str]) -> String {
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wireshark-home");
    std::fs::create_dir_all(&home).expect("create tshark's HOME");
    let script = format!("lua_script:{}", lua_script().display());
    let output = Command::new("tshark")
        .arg("-n")
        .arg("-X")
        .arg(&script)
        .args(args)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("WIRESHARK_CONFIG_DIR")
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "tshark not found in PATH: the Wireshark dissector test needs it \
             (Debian/Ubuntu: `apt-get install tshark`; .ci/run installs it)"
        ),
        Err(e) => panic!("running tshark: {e}"),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    let noise: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("Running as user"))
        .collect();
    assert!(
        output.status.success() && noise.is_empty(),
        "tshark {args:?} failed ({}):\n{stderr}",
        output.status
    );
    String::from_utf8(output.stdout).expect("tshark prints UTF-8")
}

fn stem(trace: &Path) -> &str {
    trace
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("UTF-8 name")
}

/// One flow option as printed: TIFID, TISeq, TIAck.
type Values = (u64, u64, u64);

/// The flow options `tiflow dump` prints, by packet number (packets without
/// one are absent).
fn dumped_options(trace: &Path) -> BTreeMap<u64, Vec<Values>> {
    let file = std::fs::File::open(trace).expect("open trace");
    let options = DumpOptions {
        number: true,
        ..DumpOptions::default()
    };
    let mut out = Vec::new();
    dump(file, &options, &mut out).unwrap_or_else(|e| panic!("{}: {e}", trace.display()));
    let text = String::from_utf8(out).expect("dump prints UTF-8");
    let mut found = BTreeMap::new();
    for line in text.lines() {
        let number: u64 = line
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("dump -# line without a number: {line}"));
        let mut values = Vec::new();
        for part in line.split("flow-d tifid ").skip(1) {
            let words: Vec<&str> = part.split([' ', ',', ']']).collect();
            assert_eq!(
                (words.get(1), words.get(3)),
                (Some(&"tiseq"), Some(&"tiack")),
                "{line}"
            );
            values.push((hex(words[0]), hex(words[2]), hex(words[4])));
        }
        if !values.is_empty() {
            found.insert(number, values);
        }
    }
    found
}

fn hex(s: &str) -> u64 {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    u64::from_str_radix(digits, 16).unwrap_or_else(|e| panic!("{s:?} is not hex: {e}"))
}

/// `tshark -Y tiflow -T fields` of [`FIELDS`], with a header line: every
/// packet in which the dissector found the option.
fn fields_text(trace: &Path) -> String {
    let mut args = vec!["-r", trace.to_str().expect("UTF-8 path"), "-Y", "tiflow"];
    args.extend(["-T", "fields", "-E", "header=y"]);
    for field in FIELDS {
        args.extend(["-e", field]);
    }
    tshark(&args)
}

/// The flow options in tshark's field output, by frame number.
fn tshark_options(fields: &str) -> BTreeMap<u64, Vec<Values>> {
    let column = |name: &str| FIELDS.iter().position(|f| *f == name).expect("field");
    let (tifid, tiseq, tiack) = (
        column("tiflow.tifid"),
        column("tiflow.tiseq"),
        column("tiflow.tiack"),
    );
    let mut found = BTreeMap::new();
    for line in fields.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), FIELDS.len(), "{line:?}");
        assert!(cols.iter().all(|c| !c.is_empty()), "{line:?}");
        // Several options in one segment come comma-separated.
        let split = |c: &str| c.split(',').map(hex).collect::<Vec<u64>>();
        let (ids, seqs, acks) = (split(cols[tifid]), split(cols[tiseq]), split(cols[tiack]));
        assert!(
            ids.len() == seqs.len() && ids.len() == acks.len(),
            "{line:?}"
        );
        let values = (0..ids.len()).map(|i| (ids[i], seqs[i], acks[i])).collect();
        found.insert(frame_number(cols[0]), values);
    }
    found
}

fn frame_number(s: &str) -> u64 {
    s.parse()
        .unwrap_or_else(|e| panic!("frame number {s:?}: {e}"))
}

/// The option's subtree in `tshark -V`, under the number of its frame,
/// indented from the subtree's own line.
fn tree_text(trace: &Path) -> String {
    let verbose = tshark(&[
        "-r",
        trace.to_str().expect("UTF-8 path"),
        "-V",
        "-Y",
        "tiflow",
    ]);
    let mut out = String::new();
    let mut base: Option<usize> = None;
    for line in verbose.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(b) = base {
            if indent > b && !line.trim().is_empty() {
                out.push_str(&line[b..]);
                out.push('\n');
                continue;
            }
            base = None;
        }
        if let Some(rest) = line.strip_prefix("Frame ") {
            let number = rest.split(':').next().unwrap_or(rest);
            out.push_str(&format!("frame {number}\n"));
        } else if line.trim_start().starts_with("TCP Option - TI-flow") {
            out.push_str(line.trim_start());
            out.push('\n');
            base = Some(indent);
        }
    }
    out
}

#[test]
fn dissector_output_matches_golden() {
    let golden_dir = wireshark_golden_dir();
    if pcap_tests::bless() {
        std::fs::create_dir_all(&golden_dir).expect("create golden/wireshark");
    }
    let mut compared = Vec::new();
    let mut without = Vec::new();
    let mut failures = String::new();
    for trace in committed_traces() {
        let name = stem(&trace);
        let golden = golden_dir.join(format!("{name}.txt"));
        let fields = fields_text(&trace);
        let dumped = dumped_options(&trace);
        let read = tshark_options(&fields);
        if dumped != read {
            failures.push_str(&format!(
                "{name}: tshark reads other options than tiflow dump prints\n  \
                 dump:   {dumped:x?}\n  tshark: {read:x?}\n"
            ));
        }
        if dumped.is_empty() {
            assert!(
                !golden.exists(),
                "{name}: no flow option, but {} exists",
                golden.display()
            );
            without.push(name.to_owned());
            continue;
        }
        let actual = format!(
            "# tshark -n -X lua_script:tools/wireshark/tiflow.lua -r {name}.pcap -Y tiflow -T fields -E header=y -e ...\n\
             {fields}\n\
             # tshark -n -X lua_script:tools/wireshark/tiflow.lua -r {name}.pcap -V -Y tiflow (the option's subtree)\n\
             {}",
            tree_text(&trace)
        );
        if pcap_tests::bless() {
            std::fs::write(&golden, &actual).expect("write golden");
            continue;
        }
        let expected = std::fs::read_to_string(&golden)
            .unwrap_or_else(|e| panic!("{}: {e} (TIFLOW_BLESS=1 creates it)", golden.display()));
        compared.push(name.to_owned());
        if expected != actual {
            failures.push_str(&format!(
                "{name} vs {}:\n{}",
                golden.display(),
                pcap_tests::line_diff(&expected, &actual)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "Wireshark dissector output differs (rerun with TIFLOW_BLESS=1 if intended):\n{failures}"
    );
    if !pcap_tests::bless() {
        // The traces that carry the option, and the two that carry none.
        assert!(compared.len() >= 10, "compared only {compared:?}");
        for name in [
            "paper-trace2",
            "ti-flow-resume.initiator",
            "ti-flow-resume-ipv6.initiator",
            "ours-to-linux-server-ipv6",
        ] {
            assert!(compared.iter().any(|c| c == name), "{name} not compared");
        }
        assert_eq!(
            without,
            [
                "linux-client-to-ours-ipv6",
                "linux-client-to-ours",
                "optstrip-forward.responder"
            ]
        );
    }
}

/// `tshark -Y FILTER` on `trace`: the frame numbers it selects.
fn selected(trace: &Path, filter: &str) -> Vec<u64> {
    let out = tshark(&[
        "-r",
        trace.to_str().expect("UTF-8 path"),
        "-Y",
        filter,
        "-T",
        "fields",
        "-e",
        "frame.number",
    ]);
    out.lines().map(frame_number).collect()
}

#[test]
fn display_filters_select_the_dumped_packets() {
    let trace = traces_dir().join("ti-flow-resume.initiator.pcap");
    let dumped = dumped_options(&trace);
    let frames = |keep: &dyn Fn(&Values) -> bool| -> Vec<u64> {
        dumped
            .iter()
            .filter(|(_, v)| v.iter().any(keep))
            .map(|(n, _)| *n)
            .collect()
    };

    assert_eq!(selected(&trace, "tiflow"), frames(&|_| true));

    // A complete TIFID (both halves chosen): the SYN-ACK onwards.
    let complete = |v: &Values| v.0 >> 24 != 0 && v.0 & 0xff_ffff != 0;
    let (tifid, _, _) = *dumped
        .values()
        .flatten()
        .find(|v| complete(v))
        .expect("a complete TIFID");
    let by_id = frames(&|v| v.0 == tifid);
    assert!(by_id.len() >= 4, "{by_id:?}");
    assert_eq!(
        selected(&trace, &format!("tiflow.tifid == 0x{tifid:012x}")),
        by_id
    );
    assert_eq!(
        selected(
            &trace,
            &format!("tiflow.tifid.responder == 0x{:06x}", tifid & 0xff_ffff)
        ),
        by_id
    );

    // The new-flow SYN: responder half zero, TIAck zero.
    let new_flow = frames(&|v| !complete(v));
    assert_eq!(new_flow, [1]);
    assert_eq!(selected(&trace, "tiflow.complete == 0"), new_flow);
    assert_eq!(
        selected(&trace, "tiflow.tiack == 0 && tcp.flags.syn == 1"),
        frames(&|v| v.2 == 0)
    );

    // A bare boolean field tests presence, not truth (Wireshark 4.0):
    // `tiflow.complete` matches every packet with the option.
    assert_eq!(selected(&trace, "tiflow.complete"), frames(&|_| true));

    // The resume SYN: a complete TIFID in a SYN without ACK.
    let resume = selected(
        &trace,
        "tiflow.complete == 1 && tcp.flags.syn == 1 && tcp.flags.ack == 0",
    );
    assert_eq!(resume.len(), 1, "{resume:?}");
    let (_, tiseq, _) = dumped[&resume[0]][0];
    assert!(selected(&trace, &format!("tiflow.tiseq == 0x{tiseq:x}")).contains(&resume[0]));
}

#[test]
fn kind_preference_moves_the_dissector() {
    let trace = traces_dir().join("ti-flow-setup.initiator.pcap");
    let carrying: Vec<u64> = dumped_options(&trace).keys().copied().collect();
    assert!(!carrying.is_empty());
    // Another kind: ours is left to Wireshark's RFC 6994 decoder.
    let path = trace.to_str().expect("UTF-8 path");
    let with_254 = |filter: &str| -> Vec<u64> {
        tshark(&[
            "-r",
            path,
            "-o",
            "tiflow.kind:254",
            "-Y",
            filter,
            "-T",
            "fields",
            "-e",
            "frame.number",
        ])
        .lines()
        .map(frame_number)
        .collect()
    };
    assert_eq!(with_254("tiflow"), Vec::<u64>::new());
    assert_eq!(with_254("tcp.option_kind == 253"), carrying);
    assert_eq!(selected(&trace, "tiflow"), carrying);
}
