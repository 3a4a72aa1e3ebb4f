//! `tiflow dump` of every trace under `traces/` that has a golden file under
//! `golden/` must equal it exactly. `TIFLOW_BLESS=1` rewrites the golden files
//! (and creates one for every trace that has none). The golden files hold
//! the default output: relative sequence numbers, as tcpdump prints them;
//! the tests that quote the paper use absolute ones (`-S`), as the paper.

use std::path::{Path, PathBuf};

use pcap_tests::paper_traces::{committed_traces, golden_dir, traces_dir};
use ti_tools::{DumpOptions, dump};

fn dump_text(trace: &Path) -> String {
    dump_text_with(trace, &DumpOptions::default())
}

fn dump_text_with(trace: &Path, options: &DumpOptions) -> String {
    let file = std::fs::File::open(trace).expect("open trace");
    let mut out = Vec::new();
    dump(file, options, &mut out).unwrap_or_else(|e| panic!("{}: {e}", trace.display()));
    String::from_utf8(out).expect("dump prints UTF-8")
}

fn golden_path(trace: &Path) -> PathBuf {
    let stem = trace
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("UTF-8 name");
    golden_dir().join(format!("{stem}.txt"))
}

#[test]
fn every_golden_dump_matches() {
    let mut compared = Vec::new();
    let mut failures = String::new();
    for trace in committed_traces() {
        let golden = golden_path(&trace);
        let actual = dump_text(&trace);
        if pcap_tests::bless() {
            std::fs::write(&golden, &actual).expect("write golden");
            continue;
        }
        let Ok(expected) = std::fs::read_to_string(&golden) else {
            continue;
        };
        compared.push(trace.clone());
        if expected != actual {
            failures.push_str(&format!(
                "{} vs {}:\n{}",
                trace.display(),
                golden.display(),
                pcap_tests::line_diff(&expected, &actual)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "dump output differs from golden files (rerun with TIFLOW_BLESS=1 if intended):\n{failures}"
    );
    if !pcap_tests::bless() {
        for name in ["paper-trace1.pcap", "paper-trace2.pcap"] {
            assert!(
                compared.iter().any(|p| p.ends_with(name)),
                "{name} has no golden file: {compared:?}"
            );
        }
    }
}

#[test]
fn trace2_dump_shows_the_three_flow_options() {
    let text = dump_text(&traces_dir().join("paper-trace2.pcap"));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let expected = [
        (
            "Flags [S],",
            "flow-d tifid 0a4530000000 tiseq 00000000001d tiack 000000000000",
        ),
        (
            "Flags [S.],",
            "flow-d tifid 0a4530be79bf tiseq 00000000001f tiack 00000000001d",
        ),
        (
            "Flags [.],",
            "flow-d tifid 0a4530be79bf tiseq 00000000001d tiack 00000000001f",
        ),
    ];
    for (line, (flags, option)) in lines.iter().zip(expected) {
        assert!(line.contains(flags), "{line}");
        assert!(line.contains(option), "{line} lacks {option}");
    }
}

#[test]
fn trace1_dump_shows_the_option_only_on_the_syn() {
    // The paper prints absolute sequence numbers.
    let absolute = DumpOptions {
        absolute: true,
        ..DumpOptions::default()
    };
    let text = dump_text_with(&traces_dir().join("paper-trace1.pcap"), &absolute);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].contains("flow-d tifid 4b2209000000 tiseq 00000000001f tiack 000000000000"));
    assert!(!lines[1].contains("flow-d"), "{}", lines[1]);
    assert!(!lines[2].contains("flow-d"), "{}", lines[2]);
    assert!(
        lines[2].ends_with(
            "Flags [.], ack 201, win 8326, options [nop,nop,TS val 788 ecr 197], length 0"
        ),
        "{}",
        lines[2]
    );
}
