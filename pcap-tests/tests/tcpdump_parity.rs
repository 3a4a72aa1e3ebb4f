//! `tiflow dump` against tcpdump's own test suite.
//!
//! `tcpdump_corpus_lines_match`: every TCP line of the tcpdump tests copied
//! under `tcpdump/` (see its README.md) is identical to tcpdump's expected
//! line, from `IP`/`IP6` to `length N`.
//!
//! `whole_tcpdump_suite` (ignored: it needs a tcpdump checkout): the same
//! comparison over every test of `$TCPDUMP_TESTS/TESTLIST` whose flags
//! `tiflow dump` follows, plus every capture of the directory dumped once;
//! prints the figures recorded in `benches/results/tcpdump-parity.txt`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use pcap_tests::tcpdump::{Outcome, parse_testlist, run_test, tcp_part};
use ti_tools::{DumpOptions, dump_bytes};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tcpdump")
}

#[test]
fn tcpdump_corpus_lines_match() {
    let dir = corpus_dir();
    let list = std::fs::read_to_string(dir.join("TESTLIST")).expect("tcpdump/TESTLIST");
    let tests = parse_testlist(&list);
    assert!(!tests.is_empty(), "no tests in tcpdump/TESTLIST");
    let mut failures = String::new();
    let mut lines = 0;
    for test in &tests {
        let outcome = run_test(&dir, test)
            .unwrap_or_else(|e| panic!("{}: {e}", test.name))
            .unwrap_or_else(|| panic!("{}: flags {:?} not supported", test.name, test.args));
        match outcome {
            Outcome::Compared(c) => {
                assert!(
                    c.tcp_lines > 0,
                    "{}: no TCP line in {}",
                    test.name,
                    test.output
                );
                lines += c.tcp_lines;
                for m in c.mismatches {
                    failures.push_str(&format!(
                        "{} packet {}:\n  tcpdump: {}\n  ours:    {}\n",
                        test.name, m.packet, m.expected, m.actual
                    ));
                }
            }
            Outcome::Refused { error, .. } => {
                failures.push_str(&format!("{}: {error}\n", test.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "lines differ from tcpdump's:\n{failures}"
    );
    assert!(lines >= 100, "only {lines} TCP lines compared");
}

#[test]
#[ignore = "needs a tcpdump checkout: TCPDUMP_TESTS=/path/to/tcpdump/tests"]
fn whole_tcpdump_suite() {
    let Some(dir) = std::env::var_os("TCPDUMP_TESTS").map(PathBuf::from) else {
        eprintln!("TCPDUMP_TESTS is not set: skipped (point it at tcpdump's tests/ directory)");
        return;
    };
    let list = std::fs::read_to_string(dir.join("TESTLIST")).expect("TESTLIST");
    let tests = parse_testlist(&list);

    // Every capture of the directory, dumped once.
    let mut captures = 0;
    let mut decoded = 0;
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    // Refused captures whose expected output (under any flags) shows a TCP
    // segment (`: Flags [..], ... win N`, also in the `-v` form where the
    // segment's line does not start with `IP`).
    let mut refused_with_tcp: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read tests dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".pcap") || name.ends_with(".pcapng")
        })
        .collect();
    names.sort();
    for path in &names {
        let bytes = std::fs::read(path).expect("read capture");
        captures += 1;
        match dump_bytes(&bytes, &DumpOptions::default(), std::io::sink()) {
            Ok(_) => decoded += 1,
            Err(e) => {
                let msg = e.to_string();
                let key = match msg.find("unsupported link type ") {
                    Some(at) => {
                        let n: String = msg[at + 22..]
                            .chars()
                            .take_while(char::is_ascii_digit)
                            .collect();
                        format!("unsupported link type {n}")
                    }
                    None => msg
                        .split_once(": ")
                        .map_or(msg.clone(), |(_, r)| r.to_owned()),
                };
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("")
                    .to_owned();
                let shows_tcp = tests.iter().filter(|t| t.input == name).any(|t| {
                    std::fs::read(dir.join(&t.output)).is_ok_and(|out| {
                        String::from_utf8_lossy(&out).lines().any(|l| {
                            tcp_part(l).is_some()
                                || (l.contains(": Flags [") && l.contains(", win "))
                        })
                    })
                });
                if shows_tcp {
                    refused_with_tcp
                        .entry(key.clone())
                        .or_default()
                        .insert(name);
                }
                *refused.entry(key).or_default() += 1;
            }
        }
    }

    // The tests whose flags we follow, compared line by line.
    let mut files_with_tcp = BTreeSet::new();
    let mut files_all_identical = BTreeSet::new();
    let mut files_differing = BTreeSet::new();
    let (mut tcp_lines, mut identical, mut tests_run, mut tests_skipped) = (0, 0, 0, 0);
    let mut refused_lines: BTreeMap<String, (BTreeSet<String>, usize)> = BTreeMap::new();
    let mut examples = Vec::new();
    for test in &tests {
        let outcome = match run_test(&dir, test) {
            Ok(Some(o)) => o,
            Ok(None) => {
                tests_skipped += 1;
                continue;
            }
            Err(e) => {
                eprintln!("{}: {e}", test.name);
                continue;
            }
        };
        tests_run += 1;
        match outcome {
            Outcome::Compared(c) if c.tcp_lines > 0 => {
                files_with_tcp.insert(test.input.clone());
                tcp_lines += c.tcp_lines;
                identical += c.identical;
                if c.mismatches.is_empty() {
                    files_all_identical.insert(test.input.clone());
                } else {
                    files_differing.insert(test.input.clone());
                    if let Some(m) = c.mismatches.first() {
                        examples.push(format!(
                            "  {} ({} of {} differ), packet {}:\n    tcpdump: {}\n    ours:    {}",
                            test.name,
                            c.mismatches.len(),
                            c.tcp_lines,
                            m.packet,
                            m.expected,
                            m.actual
                        ));
                    }
                }
            }
            Outcome::Compared(_) => {}
            Outcome::Refused {
                error,
                tcp_lines: n,
            } if n > 0 => {
                files_with_tcp.insert(test.input.clone());
                tcp_lines += n;
                let entry = refused_lines.entry(error).or_default();
                entry.0.insert(test.input.clone());
                entry.1 += n;
            }
            Outcome::Refused { .. } => {}
        }
    }

    let mut report = String::new();
    report.push_str(&format!(
        "captures in tests/: {captures}; decoded by tiflow dump: {decoded}; refused: {}\n",
        captures - decoded
    ));
    for (why, n) in &refused {
        report.push_str(&format!("  {n:4}  {why}\n"));
    }
    let with_tcp: usize = refused_with_tcp.values().map(BTreeSet::len).sum();
    report.push_str(&format!(
        "refused captures whose tcpdump output (any flags) shows TCP segments: {with_tcp}\n"
    ));
    for (why, files) in &refused_with_tcp {
        let names: Vec<&str> = files.iter().map(String::as_str).collect();
        report.push_str(&format!("  {why}: {}\n", names.join(", ")));
    }
    report.push_str(&format!(
        "\nTESTLIST tests whose flags tiflow dump follows (none, -S, -t...): {tests_run} \
         (skipped for other flags: {tests_skipped})\n"
    ));
    report.push_str(&format!(
        "files with TCP lines: {}; all lines identical: {}; some lines differ: {}; refused: {}\n",
        files_with_tcp.len(),
        files_all_identical.len(),
        files_differing.len(),
        files_with_tcp.len() - files_all_identical.len() - files_differing.len()
    ));
    let pct = if tcp_lines == 0 {
        0.0
    } else {
        100.0 * identical as f64 / tcp_lines as f64
    };
    report.push_str(&format!(
        "TCP lines identical from IP/IP6 to length N: {identical} of {tcp_lines} ({pct:.1} %)\n"
    ));
    if !refused_lines.is_empty() {
        report.push_str("\nTCP lines in captures tiflow dump refuses:\n");
        for (why, (files, n)) in &refused_lines {
            report.push_str(&format!("  {n:4} lines, {} files: {why}\n", files.len()));
        }
    }
    if !examples.is_empty() {
        report.push_str("\nTests with differing lines (first difference of each):\n");
        for e in &examples {
            report.push_str(e);
            report.push('\n');
        }
    }
    println!("{report}");
}
