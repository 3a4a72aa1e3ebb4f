//! `tiflow bench connect --quick`, `reconnect --quick`, `tuning --quick`,
//! `scale --quick` (in memory), `up-scale --quick`,
//! `recovery --quick` and its no-fault check as a user runs them: the built
//! binary, real namespaces and TUN devices (root needed: without it the
//! test fails with the reason). Checks the files and their shape, never the timings.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn require_privileges() {
    if let Err(e) = ti_testnet::netns::check_privileges() {
        panic!("this test needs root, iproute2 and /dev/net/tun: {e}");
    }
}

fn out_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs the bench; returns its stdout and its pid.
fn run_bench(what: &str, out: &Path) -> (String, u32) {
    run_bench_with(what, &[], out)
}

/// Runs `tiflow bench WHAT --quick EXTRA... --out OUT`.
fn run_bench_with(what: &str, extra: &[&str], out: &Path) -> (String, u32) {
    let (stdout, _, pid) = run_bench_full(what, extra, out);
    (stdout, pid)
}

/// As [`run_bench_with`], with standard error too.
fn run_bench_full(what: &str, extra: &[&str], out: &Path) -> (String, String, u32) {
    let child = Command::new(env!("CARGO_BIN_EXE_tiflow"))
        .args(["bench", what, "--quick"])
        .args(extra)
        .arg("--out")
        .arg(out)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tiflow");
    let pid = child.id();
    let output = child.wait_with_output().expect("wait for tiflow");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tiflow bench {what} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(!stderr.contains("panicked"), "tiflow panicked: {stderr}");
    (stdout, stderr.into_owned(), pid)
}

/// Reads a CSV: its header and its rows split on commas.
fn csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .expect("a header line")
        .split(',')
        .map(str::to_owned)
        .collect();
    let rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    for row in &rows {
        assert_eq!(row.len(), header.len(), "{path:?}: row {row:?}");
    }
    (header, rows)
}

fn column<'a>(header: &[String], rows: &'a [Vec<String>], name: &str) -> Vec<&'a str> {
    let i = header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"));
    rows.iter().map(|r| r[i].as_str()).collect()
}

fn assert_svg(path: &Path, labels: &[&str]) {
    let svg = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    assert!(svg.starts_with("<svg"), "{path:?} is not an SVG");
    for label in labels {
        assert!(svg.contains(label), "{path:?} lacks {label:?}");
    }
}

/// The namespaces of process `pid` are gone (their names carry its pid in
/// hex; the other test's may still exist).
fn assert_no_namespaces_left(pid: u32) {
    assert_no_namespaces_named("tibench", pid);
}

/// The namespaces of process `pid` whose names start with `prefix` are gone.
fn assert_no_namespaces_named(prefix: &str, pid: u32) {
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let text = String::from_utf8_lossy(&list.stdout);
    let tag = format!("{pid:x}-");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with(prefix) && l.contains(&tag)),
        "bench namespaces left behind: {text}"
    );
}

#[test]
fn bench_connect_quick_writes_csv_summary_and_svg() {
    require_privileges();
    let out = out_dir("bench-connect");
    let (stdout, pid) = run_bench("connect", &out);
    assert!(stdout.contains("== connect"), "{stdout}");

    let (header, rows) = csv(&out.join("connect.csv"));
    assert_eq!(
        header,
        [
            "rtt_ms",
            "mode",
            "sample",
            "local_port",
            "app_ms",
            "syn_ack_ms"
        ]
    );
    // --quick: RTTs 0 and 10 ms, 10 samples of each of 4 modes.
    assert_eq!(rows.len(), 2 * 4 * 10);
    let rtts: BTreeSet<&str> = column(&header, &rows, "rtt_ms").into_iter().collect();
    assert_eq!(rtts, BTreeSet::from(["0", "10"]));
    let modes: BTreeSet<&str> = column(&header, &rows, "mode").into_iter().collect();
    assert_eq!(
        modes,
        BTreeSet::from(["legacy", "ti", "legacy-linux", "ti-linux"])
    );
    for v in column(&header, &rows, "app_ms") {
        assert!(v.parse::<f64>().is_ok_and(|x| x > 0.0), "app_ms {v:?}");
    }
    // Every handshake was found in the client's capture.
    for v in column(&header, &rows, "syn_ack_ms") {
        assert!(v.parse::<f64>().is_ok_and(|x| x > 0.0), "syn_ack_ms {v:?}");
    }

    let (header, rows) = csv(&out.join("connect-summary.csv"));
    assert_eq!(
        header,
        [
            "rtt_ms",
            "mode",
            "metric",
            "n",
            "median_ms",
            "ci95_low_ms",
            "ci95_high_ms",
            "mean_ms",
            "min_ms",
            "max_ms"
        ]
    );
    assert_eq!(rows.len(), 2 * 4 * 2, "RTT x mode x (app, syn_ack)");
    assert_svg(
        &out.join("connect.svg"),
        &["legacy -&gt; legacy", "TI -&gt; TI"],
    );
    assert!(out.join("connect-report.txt").exists());
    assert!(out.join("pcap/connect-rtt10ms-ti-client.pcap").exists());
    assert_no_namespaces_left(pid);
}

#[test]
fn bench_reconnect_quick_writes_csv_summary_and_svg() {
    require_privileges();
    let out = out_dir("bench-reconnect");
    let (stdout, pid) = run_bench("reconnect", &out);
    assert!(stdout.contains("== reconnect"), "{stdout}");

    let (header, rows) = csv(&out.join("reconnect.csv"));
    assert_eq!(
        header,
        [
            "rtt_ms",
            "mode",
            "sample",
            "local_port",
            "app_ms",
            "downtime_ms",
            "syn_ack_ms"
        ]
    );
    assert_eq!(rows.len(), 2 * 2 * 10, "RTT x (legacy, ti) x 10 samples");
    let mode = column(&header, &rows, "mode");
    let downtime = column(&header, &rows, "downtime_ms");
    let syn_ack = column(&header, &rows, "syn_ack_ms");
    for ((m, d), s) in mode.iter().zip(&downtime).zip(&syn_ack) {
        assert!(s.parse::<f64>().is_ok_and(|x| x > 0.0), "syn_ack_ms {s:?}");
        match *m {
            "ti" => assert!(d.parse::<f64>().is_ok_and(|x| x > 0.0), "downtime {d:?}"),
            "legacy" => assert!(d.is_empty(), "a legacy reconnect has no downtime: {d:?}"),
            other => panic!("unexpected mode {other}"),
        }
    }
    let (_, rows) = csv(&out.join("reconnect-summary.csv"));
    // Per RTT: legacy (app, syn_ack), ti (app, downtime, syn_ack).
    assert_eq!(rows.len(), 2 * 5);
    assert_svg(
        &out.join("reconnect.svg"),
        &[
            "TI reconnect (SYN-&gt;ACK)",
            "legacy connect (SYN-&gt;ACK)",
            "minus RTT",
        ],
    );
    assert_no_namespaces_left(pid);
}

/// `tiflow bench connect --quick --ipv6` and `reconnect --quick --ipv6`:
/// every sample's SYN-to-ACK comes from the capture's handshakes, looked up
/// by the client stack's IPv6 address, so each connection (to our stacks
/// and to the Linux peer) ran over IPv6.
#[test]
fn bench_connect_and_reconnect_quick_run_over_ipv6() {
    require_privileges();
    for (what, rows_expected) in [("connect", 2 * 4 * 10), ("reconnect", 2 * 2 * 10)] {
        let out = out_dir(&format!("bench-{what}-ipv6"));
        let (stdout, pid) = run_bench_with(what, &["--ipv6"], &out);
        assert!(stdout.contains("over IPv6"), "{stdout}");
        let (header, rows) = csv(&out.join(format!("{what}.csv")));
        assert_eq!(rows.len(), rows_expected, "{what}");
        for s in column(&header, &rows, "syn_ack_ms") {
            assert!(
                s.parse::<f64>().is_ok_and(|x| x > 0.0),
                "{what}: a sample without its IPv6 handshake: {s:?}"
            );
        }
        // The client's capture (pcap, raw IP): its first packet is IPv6.
        let pcap = std::fs::read(out.join(format!("pcap/{what}-rtt10ms-ti-client.pcap")))
            .expect("the TI client's capture");
        assert!(pcap.len() > 40, "an empty capture");
        assert_eq!(pcap[24 + 16] >> 4, 6, "{what}: the capture is not IPv6");
        assert_no_namespaces_left(pid);
    }
}

#[test]
fn bench_tuning_quick_measures_both_settings_in_one_run() {
    require_privileges();
    let out = out_dir("bench-tuning");
    let (stdout, pid) = run_bench("tuning", &out);
    assert!(stdout.contains("== latency tuning off vs on"), "{stdout}");

    let (header, rows) = csv(&out.join("tuning.csv"));
    assert_eq!(
        header,
        [
            "rtt_ms",
            "low_latency",
            "sample",
            "connect_ms",
            "resume_ms",
            "reconnect_app_ms"
        ]
    );
    // --quick: RTTs 0 and 10 ms, 10 rounds each measuring both settings.
    assert_eq!(rows.len(), 2 * 2 * 10);
    let settings: BTreeSet<&str> = column(&header, &rows, "low_latency").into_iter().collect();
    assert_eq!(settings, BTreeSet::from(["off", "on"]));
    // Interleaved: every round has one sample of each setting.
    let rounds: Vec<(&str, &str)> = column(&header, &rows, "rtt_ms")
        .into_iter()
        .zip(column(&header, &rows, "sample"))
        .collect();
    for pair in rounds.chunks(2) {
        assert_eq!(pair[0], pair[1], "a round without both settings: {pair:?}");
    }
    for name in ["connect_ms", "resume_ms", "reconnect_app_ms"] {
        for v in column(&header, &rows, name) {
            assert!(v.parse::<f64>().is_ok_and(|x| x > 0.0), "{name} {v:?}");
        }
    }
    let (_, rows) = csv(&out.join("tuning-summary.csv"));
    assert_eq!(rows.len(), 2 * 3 * 2, "RTT x metric x setting");
    let report = std::fs::read_to_string(out.join("tuning-report.txt")).expect("report");
    assert!(report.starts_with("command: "), "{report}");
    assert!(report.contains("resume-rtt"), "{report}");
    assert_no_namespaces_left(pid);
}

/// The commands the recovery bench needs besides iproute2.
fn require_middlebox_tools() {
    for (command, package) in [
        ("nft", "nftables"),
        ("conntrack", "conntrack"),
        ("iptables", "iptables"),
    ] {
        assert!(
            ti_tools::host::which(command).is_some(),
            "this test needs `{command}`: apt-get install {package}"
        );
    }
}

/// `tiflow bench recovery --quick --scenarios no-fault`: 10 parallel
/// unpaced TI streams for 5 s through the healthy middlebox. One row in
/// `recovery-nofault.csv`, every stream byte-exact to its end of stream, and
/// the `== no fault` section and its target in the report. The failures
/// detected are a measurement: reported, never asserted.
#[test]
fn bench_recovery_no_fault_quick_streams_are_byte_exact() {
    require_privileges();
    require_middlebox_tools();
    let out = out_dir("bench-recovery-no-fault");
    let (stdout, stderr, pid) = run_bench_full("recovery", &["--scenarios", "no-fault"], &out);
    assert!(stdout.contains("== no fault"), "{stdout}");

    let (header, rows) = csv(&out.join("recovery-nofault.csv"));
    assert_eq!(
        header[..8],
        [
            "flows",
            "secs",
            "bytes",
            "mbit_s",
            "byte_exact_streams",
            "client_failures",
            "server_failures",
            "client_resume_attempts"
        ]
    );
    assert_eq!(rows.len(), 1, "one run: {rows:?}");
    let flows = column(&header, &rows, "flows")[0];
    assert_eq!(flows, "10", "--quick: 10 streams");
    assert_eq!(column(&header, &rows, "secs")[0], "5", "--quick: 5 s");
    assert_eq!(
        column(&header, &rows, "byte_exact_streams")[0],
        flows,
        "a stream was not byte-exact to its end:\n{stderr}"
    );
    let bytes = column(&header, &rows, "bytes")[0];
    assert!(bytes.parse::<u64>().is_ok_and(|b| b > 0), "bytes {bytes:?}");
    for name in [
        "client_failures",
        "server_failures",
        "client_resume_attempts",
    ] {
        let v = column(&header, &rows, name)[0];
        assert!(v.parse::<u64>().is_ok(), "{name} {v:?}: status not read");
    }

    let report = std::fs::read_to_string(out.join("recovery-report.txt")).expect("report");
    assert!(report.contains("\n== no fault"), "{report}");
    assert!(
        report.contains("no fault, 10 parallel bulk flows for 5 s: zero failures detected"),
        "{report}"
    );
    assert!(report.contains("every TI run byte-exact"), "{report}");
    // Only no-fault ran: no fault-scenario rows.
    let (_, rows) = csv(&out.join("recovery.csv"));
    assert!(rows.is_empty(), "{rows:?}");
    assert_no_namespaces_left(pid);
}

/// `tiflow bench recovery --quick` on two scenarios: the four files, a row
/// per scenario, direction, transport and repetition, and every TI run
/// byte-exact to its end of stream (the times are reported, never
/// asserted).
#[test]
fn bench_recovery_quick_writes_csv_report_and_svg_and_ti_is_byte_exact() {
    require_privileges();
    require_middlebox_tools();
    let out = out_dir("bench-recovery");
    let (stdout, stderr, pid) =
        run_bench_full("recovery", &["--scenarios", "nat-flush,blackhole-1s"], &out);
    assert!(stdout.contains("== targets"), "{stdout}");

    let (header, rows) = csv(&out.join("recovery.csv"));
    assert_eq!(
        header[..8],
        [
            "scenario",
            "direction",
            "transport",
            "rep",
            "fail_to_data_ms",
            "restore_to_data_ms",
            "survived",
            "byte_exact"
        ]
    );
    // --quick: 2 repetitions x 2 directions x (ti, plain) per scenario.
    assert_eq!(rows.len(), 2 * 2 * 2 * 2, "{rows:?}");
    let scenarios: BTreeSet<&str> = column(&header, &rows, "scenario").into_iter().collect();
    assert_eq!(scenarios, BTreeSet::from(["nat-flush", "blackhole-1s"]));
    let directions: BTreeSet<&str> = column(&header, &rows, "direction").into_iter().collect();
    assert_eq!(
        directions,
        BTreeSet::from(["client-to-server", "server-to-client"])
    );
    let transport = column(&header, &rows, "transport");
    let exact = column(&header, &rows, "byte_exact");
    let scenario = column(&header, &rows, "scenario");
    let restore = column(&header, &rows, "restore_to_data_ms");
    let rep = column(&header, &rows, "rep");
    let direction = column(&header, &rows, "direction");
    for i in 0..rows.len() {
        assert!(
            transport[i] != "ti" || exact[i] == "yes",
            "{} {} rep {}: a TI run was not byte-exact to its end:\n{stderr}",
            scenario[i],
            direction[i],
            rep[i]
        );
        if scenario[i] == "nat-flush" {
            assert!(
                restore[i].is_empty(),
                "no outage, no restore: {:?}",
                rows[i]
            );
        }
    }
    assert_eq!(transport.iter().filter(|t| **t == "ti").count(), 8);

    let (header, rows) = csv(&out.join("recovery-summary.csv"));
    assert_eq!(
        header[..4],
        ["scenario", "direction", "transport", "metric"]
    );
    assert!(!rows.is_empty());
    let report = std::fs::read_to_string(out.join("recovery-report.txt")).expect("report");
    assert!(report.contains("command: "), "{report}");
    assert!(report.contains("every TI run byte-exact"), "{report}");
    assert_svg(
        &out.join("recovery.svg"),
        &["nat-flush", "blackhole-1s", "plain TCP"],
    );
    assert_no_namespaces_left(pid);
}

/// `tiflow bench scale --quick`: in memory (no root), both modes, both
/// counts, every round a row with a positive cost; report and plot written.
#[test]
fn bench_scale_quick_writes_csv_report_and_svg() {
    let out = out_dir("scale-quick");
    let (stdout, _) = run_bench("scale", &out);
    let (header, rows) = csv(&out.join("scale.csv"));
    assert_eq!(
        rows.len(),
        2 * 2 * 3,
        "2 modes x N in {{1, 100}} x 3 rounds"
    );
    let modes: BTreeSet<&str> = column(&header, &rows, "mode").into_iter().collect();
    assert_eq!(modes, BTreeSet::from(["legacy", "ti"]));
    let counts: BTreeSet<&str> = column(&header, &rows, "connections").into_iter().collect();
    assert_eq!(counts, BTreeSet::from(["1", "100"]));
    for name in ["per_packet_ns", "idle_poll_ns"] {
        for v in column(&header, &rows, name) {
            let v: f64 = v.parse().unwrap_or_else(|e| panic!("{name} {v:?}: {e}"));
            assert!(v > 0.0, "{name} must be a measured cost, got {v}");
        }
    }
    let report = std::fs::read_to_string(out.join("scale-report.txt")).expect("report");
    assert!(report.starts_with("command: "), "{report}");
    assert!(
        report.contains("the interval is the range"),
        "3 rounds are labelled a range: {report}"
    );
    assert!(stdout.contains("per packet"), "{stdout}");
    assert_svg(&out.join("scale.svg"), &["ti", "legacy"]);
}

/// `tiflow bench up-scale --quick`: 200 connections through a `tiflow up`
/// pair, 2 s idle. Both files written, a row per side, every connection
/// greeted, echoed and still working after the idle time; the report has
/// the command, the table and a verdict per target. The figures (RSS,
/// latency, CPU) are reported, never asserted.
#[test]
fn bench_up_scale_quick_every_connection_works() {
    require_privileges();
    require_middlebox_tools();
    let out = out_dir("bench-up-scale");
    let (stdout, stderr, pid) = run_bench_full("up-scale", &[], &out);
    assert!(stdout.contains("== up-scale"), "{stdout}");

    let (header, rows) = csv(&out.join("up-scale.csv"));
    assert_eq!(
        header[..7],
        [
            "connections",
            "rep",
            "side",
            "connected",
            "greeted",
            "worked",
            "failed"
        ]
    );
    assert_eq!(rows.len(), 2, "one run, two sides: {rows:?}");
    let sides: BTreeSet<&str> = column(&header, &rows, "side").into_iter().collect();
    assert_eq!(sides, BTreeSet::from(["client", "server"]));
    for name in ["connections", "connected", "greeted", "worked"] {
        for v in column(&header, &rows, name) {
            assert_eq!(v, "200", "{name}: every connection must work:\n{stderr}");
        }
    }
    for v in column(&header, &rows, "failed") {
        assert_eq!(v, "0", "{stderr}");
    }
    for v in column(&header, &rows, "outcome") {
        assert_eq!(v, "complete", "{stderr}");
    }
    for name in [
        "rss_start_kib",
        "rss_held_kib",
        "rss_after_kib",
        "threads_held",
    ] {
        for v in column(&header, &rows, name) {
            assert!(v.parse::<u64>().is_ok_and(|x| x > 0), "{name} {v:?}");
        }
    }
    for name in [
        "failures",
        "resume_attempts",
        "status_median_ms",
        "idle_cpu_pct",
    ] {
        for v in column(&header, &rows, name) {
            assert!(v.parse::<f64>().is_ok(), "{name} {v:?}: not measured");
        }
    }

    let report = std::fs::read_to_string(out.join("up-scale-report.txt")).expect("report");
    assert!(report.starts_with("command: "), "{report}");
    assert!(report.contains("each row a single run"), "{report}");
    assert!(
        report.contains(
            "N = 200 (single run 1) | all 200 connections work after the idle time | 200 of 200 | met"
        ),
        "{report}"
    );
    let targets = report
        .lines()
        .filter(|l| l.starts_with("N = 200 (single run 1) | "))
        .count();
    assert_eq!(targets, 5, "{report}");
    assert_no_namespaces_named("tfus", pid);
}

/// `tiflow bench forward --quick`: the three paths (kernel TCP, the
/// `tiflow up` pair and the plain relays of the reference) measured in the
/// same run, each way, 1 and 4 streams, plus the ping-pong and the split
/// request; every sample moved bytes, the bulk samples of tiflow and the
/// relays have the CPU both hosts' carriers used, and the report has the
/// reference section, the goals and their verdicts. The figures are
/// reported, never asserted.
#[test]
fn bench_forward_quick_measures_all_three_paths_each_way() {
    require_privileges();
    require_middlebox_tools();
    let out = out_dir("bench-forward");
    let (stdout, _stderr, pid) = run_bench_full("forward", &[], &out);
    assert!(stdout.contains("== forward path"), "{stdout}");

    let (header, rows) = csv(&out.join("forward.csv"));
    assert_eq!(
        header,
        [
            "rep",
            "path",
            "kind",
            "streams",
            "value",
            "unit",
            "carrier_cpu_s_per_gb"
        ]
    );
    let mut seen = BTreeSet::new();
    for row in &rows {
        let (path, kind, streams) = (&row[1], &row[2], &row[3]);
        seen.insert((path.clone(), kind.clone(), streams.clone()));
        let value: f64 = row[4].parse().expect("value");
        assert!(value > 0.0, "{row:?}");
        let cpu = &row[6];
        assert_eq!(
            path != "kernel" && (kind == "up" || kind == "down"),
            !cpu.is_empty(),
            "CPU per GB exactly for the bulk samples of tiflow and the relays: {row:?}"
        );
    }
    for path in ["kernel", "tiflow", "relay"] {
        for kind in ["up", "down"] {
            for streams in ["1", "4"] {
                assert!(
                    seen.contains(&(path.into(), kind.into(), streams.into())),
                    "{path} {kind} x{streams} missing: {rows:?}"
                );
            }
        }
        for round_trip in ["ping-pong", "split-request"] {
            assert!(
                seen.contains(&(path.into(), round_trip.into(), "1".into())),
                "{path} {round_trip} missing: {rows:?}"
            );
        }
    }
    assert_eq!(rows.len(), 18, "{rows:?}");

    let report = std::fs::read_to_string(out.join("forward-report.txt")).expect("report");
    assert!(report.contains("command: "), "{report}");
    assert!(report.contains("goals (issue 13):"), "{report}");
    assert!(report.contains("\nsplit request: "), "{report}");
    assert!(report.contains("\n== reference: "), "{report}");
    assert!(
        report.contains("failures detected by the tiflow up pair"),
        "{report}"
    );
    assert_no_namespaces_named("tifwd", pid);
}
