//! `tiflow bench connect|reconnect|bulk|all`: connect, reconnect and bulk
//! throughput, legacy vs TI, side by side in one run, over real TUN devices
//! in network namespaces, with an emulated RTT sweep (paper §IV.B-C, Fig. 3).
//! `tiflow bench recovery`: data flowing again after middlebox faults,
//! `tiflow up` pair vs plain kernel TCP ([`recovery`]).
//! `tiflow bench up-scale`: many idle connections through a `tiflow up`
//! pair ([`up_scale`]).
//!
//! Owns the command line, the run order, the CSV files, the report and the
//! progress display. The testbed lives in [`net`], the measurements in
//! [`latency`] and [`bulk`], the statistics in [`stats`], the capture
//! analysis in [`pcap`] and the SVG in [`plot`]. It needs root (namespaces,
//! TUN); it creates everything it uses inside its own namespaces and
//! deletes them when done, on error too.

pub mod bulk;
pub mod forward;
pub mod latency;
pub mod net;
pub mod pcap;
pub mod plain_relay;
pub mod plot;
pub mod recovery;
pub mod report;
pub mod scale;
pub mod stats;
pub mod tuning;
pub mod up_scale;

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use ti_stack::StreamError;
use ti_testnet::netns::NetnsError;

use self::bulk::{BulkMode, BulkRun, Direction};
use self::latency::{CONNECT_MODES, Kind, Peer, RECONNECT_MODES, Sample};
use self::plot::{Figure, Series};
use self::stats::{Summary, ratio_of_medians, summarize};

/// Default RTT sweep (ms).
pub const DEFAULT_RTTS: [u64; 7] = [0, 1, 5, 10, 25, 50, 100];
/// Default samples per mode and RTT.
pub const DEFAULT_SAMPLES: usize = 200;

/// Which benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum What {
    /// Connect time (client: connect, then block on read; server: close
    /// after accept), legacy vs TI, our stacks and a Linux peer.
    Connect,
    /// Reconnect time after an explicit failure (TI resume) vs a legacy
    /// application reconnecting; the paper's Fig. 3.
    Reconnect,
    /// Bulk throughput over TUN: plain smoltcp vs our stack, TI vs legacy.
    Bulk,
    /// connect, reconnect and bulk (not recovery).
    All,
    /// Recovery after middlebox faults (NAT and conntrack flushed, firewall
    /// flushed, middlebox rebuilt, blackholes, client address change):
    /// failure to data and path-back to data, a TI-flow through a
    /// `tiflow up` pair vs plain kernel TCP through the same nftables
    /// middlebox.
    Recovery,
    /// Latency tuning off vs on (`StackConfig::low_latency`), interleaved
    /// sample by sample in one run: TI connect, resume SYN to ACK and the
    /// application's reconnect, per RTT, and the ratio on/off [default
    /// RTTs: 0,1,10].
    Tuning,
    /// CPU per packet, per idle poll and per connection, and RSS per
    /// connection, as the number of idle connections grows (two stacks in
    /// memory, no root) [default connections: 1,100,1000,10000].
    Scale,
    /// The forward path users run: kernel TCP programs through a `tiflow
    /// up` pair vs kernel TCP, through the same NAT and stateful firewall,
    /// interleaved: 1 and 100 streams each way, CPU per GB of both `tiflow
    /// up`, ping-pong round trip [default: 5 repetitions of 3 s].
    Forward,
    /// Many idle connections through a `tiflow up` pair in network
    /// namespaces (NAT between them): a connect storm, each connection
    /// greeted end to end and echoed, held idle, then closed; RSS, threads,
    /// `tiflow status` latency, failures and idle CPU of each `tiflow up`
    /// [default connections: 10000, idle: 60s, reps: 1; --quick: 200, 2s].
    UpScale,
    /// No measurement, no root: the README's performance tables from the
    /// committed results files (--results); printed, written into the
    /// README's marked regions (--readme), or checked against them
    /// (--check).
    Report,
}

/// Arguments of `tiflow bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub what: What,
    /// Emulated RTTs in ms, comma-separated [default: 0,1,5,10,25,50,100;
    /// tuning: 0,1,10].
    #[arg(long, value_delimiter = ',', value_name = "MS,...")]
    pub rtts: Option<Vec<u64>>,
    /// Samples per mode and RTT [default: 200].
    #[arg(long)]
    pub samples: Option<usize>,
    /// connect, reconnect, bulk: run the stacks with latency tuning (1 ns
    /// timer slack, polling through the last 100 us before a timer), as
    /// `tiflow up --low-latency` does [default: off, as for users].
    #[arg(long)]
    pub low_latency: bool,
    /// connect, reconnect: run every stack, peer and connection over IPv6
    /// (the testbed's addresses get IPv6 twins: fd48:N::2 for 10.72.N.2)
    /// [default: IPv4].
    #[arg(long)]
    pub ipv6: bool,
    /// Directory for the CSV files, plots, report and captures.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Quick run for CI: 10 samples, RTTs 0 and 10 ms, one 16 MiB bulk
    /// transfer per mode; recovery: 2 repetitions, no blackhole-30s, plain
    /// TCP waited for 2 s, no-fault 10 streams for 5 s (explicit options
    /// still win).
    #[arg(long)]
    pub quick: bool,
    /// Bytes per bulk transfer, in MiB [default: 256].
    #[arg(long, value_name = "MIB")]
    pub bulk_mib: Option<u64>,
    /// Repetitions: bulk, per mode and direction [default: 5]; recovery,
    /// per scenario and direction [default: 10]; scale, measured rounds
    /// per setup [default: 9]; up-scale, runs per count [default: 1].
    #[arg(long)]
    pub reps: Option<usize>,
    /// scale: connection counts, comma-separated [default:
    /// 1,100,1000,10000; --quick: 1,100]; up-scale: one run (or --reps)
    /// per count [default: 10000; --quick: 200].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub connections: Option<Vec<usize>>,
    /// recovery: the scenarios, comma-separated, each NAME or NAME:REPS
    /// (its own repetitions): nat-flush, firewall-flush, rebuilt-1s,
    /// blackhole-1s, blackhole-30s, client-address-change, and no-fault
    /// (parallel bulk streams and no fault; NAME:RUNS, 1 run unless given)
    /// [default: all but no-fault; --quick: all but no-fault and
    /// blackhole-30s].
    #[arg(long, value_delimiter = ',', value_name = "NAME[:REPS],...", value_parser = recovery::parse_scenario)]
    pub scenarios: Option<Vec<recovery::ScenarioSpec>>,
    /// recovery: rate of each paced stream, in MiB/s [default: 8].
    #[arg(long, value_name = "MIB_PER_S", value_parser = recovery::parse_rate)]
    pub rate: Option<f64>,
    /// recovery: how long plain TCP may take to carry data again (after the
    /// fault, or after the path came back) before it counts as failed, in
    /// seconds [default: 10; --quick: 2].
    #[arg(long, value_name = "SECONDS", value_parser = recovery::parse_wait)]
    pub plain_wait: Option<f64>,
    /// recovery, no-fault: parallel TI streams, half each way [default:
    /// 100; --quick: 10].
    #[arg(long, value_name = "N", value_parser = recovery::parse_flows)]
    pub no_fault_flows: Option<usize>,
    /// recovery, no-fault: how long the streams write, unpaced, in seconds
    /// [default: 60; --quick: 5].
    #[arg(long, value_name = "SECONDS", value_parser = recovery::parse_secs)]
    pub no_fault_secs: Option<f64>,
    /// forward: parallel stream counts, comma-separated [default: 1,100;
    /// --quick: 1,4].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub streams: Option<Vec<usize>>,
    /// forward: seconds each bulk sample writes [default: 3; --quick: 1].
    #[arg(long, value_name = "SECONDS", value_parser = recovery::parse_secs)]
    pub secs: Option<f64>,
    /// up-scale: how long the connections sit idle (500ms, 60s, 2m)
    /// [default: 60s; --quick: 2s].
    #[arg(long, value_name = "DURATION", value_parser = crate::up::parse_duration)]
    pub idle: Option<Duration>,
    /// up-scale: kill both `tiflow up` (and record the run as aborted) when
    /// one's RSS exceeds this, in MiB [default: a quarter of the memory
    /// available at start].
    #[arg(long, value_name = "MIB")]
    pub rss_limit_mib: Option<u64>,
    /// report: the directory of the results files.
    #[arg(long, value_name = "DIR", default_value = "benches/results")]
    pub results: PathBuf,
    /// report: rewrite the regions between the `<!-- bench-report:NAME:begin
    /// -->` and `:end -->` markers of this README in place (without it the
    /// tables go to standard output).
    #[arg(long, value_name = "README")]
    pub readme: Option<PathBuf>,
    /// report: change nothing; fail (exit 1, with a diff) when the README's
    /// regions differ from what the results files give (README.md unless
    /// --readme says otherwise).
    #[arg(long)]
    pub check: bool,
    /// recovery, up-scale: keep the logs of the two `tiflow up` (their
    /// directory is printed) even when the run succeeds.
    #[arg(long)]
    pub keep_logs: bool,
}

/// Help shown after `tiflow bench`'s options.
pub const BENCH_HELP: &str = recovery::RECOVERY_HELP;

/// The settings of a run, defaults and `--quick` applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// RTTs.
    pub rtts: Vec<Duration>,
    /// Samples per mode and RTT.
    pub samples: usize,
    /// Bytes per bulk transfer.
    pub bulk_bytes: u64,
    /// Bulk repetitions.
    pub reps: usize,
}

impl BenchArgs {
    /// Resolves defaults: explicit options, then `--quick`, then defaults.
    pub fn settings(&self) -> Settings {
        let default_rtts = if self.what == What::Tuning {
            tuning::DEFAULT_RTTS.to_vec()
        } else {
            DEFAULT_RTTS.to_vec()
        };
        let (rtts, samples, mib, reps) = if self.quick {
            (vec![0, 10], 10, 16, 1)
        } else {
            (default_rtts, DEFAULT_SAMPLES, 256, 5)
        };
        Settings {
            rtts: self
                .rtts
                .clone()
                .unwrap_or(rtts)
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            samples: self.samples.unwrap_or(samples).max(1),
            bulk_bytes: self.bulk_mib.unwrap_or(mib).max(1) << 20,
            reps: self.reps.unwrap_or(reps).max(1),
        }
    }
}

/// Why a benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The namespace harness failed (also: not root).
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// A stream operation failed.
    #[error("{what}: {source}")]
    Stream {
        /// What was being done.
        what: String,
        /// The error.
        source: StreamError,
    },
    /// A measurement went wrong (wrong mode, wrong bytes, timeout).
    #[error("{0}")]
    Check(String),
    /// A command the benchmark needs is missing (`nft`, `conntrack`, ...).
    #[error(transparent)]
    MissingTools(#[from] crate::host::MissingTools),
    /// A `tiflow up` of the benchmark did not start.
    #[error(transparent)]
    Up(#[from] crate::demo::DemoError),
    /// SIGINT or SIGTERM: stopped early (the namespaces are still removed).
    #[error("interrupted")]
    Interrupted,
    /// The plot could not be drawn.
    #[error("cannot draw {path}: {message}")]
    Plot {
        /// The SVG file.
        path: String,
        /// Why.
        message: String,
    },
}

impl BenchError {
    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>, source: io::Error) -> BenchError {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }

    /// A stream error while doing `what`, for `map_err`.
    pub fn stream(what: impl Into<String>) -> impl FnOnce(StreamError) -> BenchError {
        let what = what.into();
        move |source| BenchError::Stream { what, source }
    }

    /// Never: the bench writes files, not a pipe.
    pub fn is_broken_pipe(&self) -> bool {
        false
    }
}

/// Set by SIGINT/SIGTERM; the measurement loops stop at the next sample.
static INTERRUPTED: std::sync::LazyLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::LazyLock::new(Default::default);

/// `Err(Interrupted)` once SIGINT or SIGTERM arrived.
pub fn check_interrupted() -> Result<(), BenchError> {
    if INTERRUPTED.load(std::sync::atomic::Ordering::Acquire) {
        Err(BenchError::Interrupted)
    } else {
        Ok(())
    }
}

/// The flag SIGINT and SIGTERM set.
pub(crate) fn interrupt_flag() -> &'static std::sync::atomic::AtomicBool {
    &INTERRUPTED
}

/// Runs `tiflow bench`.
pub fn run(args: &BenchArgs) -> Result<(), BenchError> {
    if args.what == What::Report {
        return report::run(&args.results, args.readme.as_deref(), args.check);
    }
    let settings = args.settings();
    // Stop cleanly on Ctrl-C so the namespaces are deleted; a second signal
    // kills the process at once.
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let flag = INTERRUPTED.clone();
        signal_hook::flag::register_conditional_shutdown(sig, 1, flag.clone())
            .and_then(|_| signal_hook::flag::register(sig, flag))
            .map_err(|e| BenchError::io("install the signal handlers", e))?;
    }
    if args.what == What::Recovery {
        return recovery::run(args);
    }
    if args.what == What::Tuning {
        return run_tuning(args, &settings);
    }
    if args.what == What::Forward {
        let streams = match (&args.streams, args.quick) {
            (Some(s), _) => s.clone(),
            (None, true) => vec![1, 4],
            (None, false) => forward::DEFAULT_STREAMS.to_vec(),
        };
        if streams.is_empty() || streams.contains(&0) {
            return Err(BenchError::Check(
                "--streams: give counts of at least 1".into(),
            ));
        }
        let settings = forward::Settings {
            reps: args
                .reps
                .unwrap_or(if args.quick { 1 } else { forward::DEFAULT_REPS })
                .max(1),
            secs: args.secs.unwrap_or(if args.quick {
                1.0
            } else {
                forward::DEFAULT_SECS
            }),
            streams,
        };
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        return forward::run(&settings, &args.out, &command);
    }
    if args.what == What::Scale {
        let counts = match (&args.connections, args.quick) {
            (Some(c), _) => c.clone(),
            (None, true) => vec![1, 100],
            (None, false) => scale::DEFAULT_COUNTS.to_vec(),
        };
        if counts.is_empty() || counts.contains(&0) {
            return Err(BenchError::Check(
                "--connections: give counts of at least 1".into(),
            ));
        }
        let rounds = match (args.reps, args.quick) {
            (Some(r), _) => r.max(1),
            (None, true) => 3,
            (None, false) => scale::DEFAULT_ROUNDS,
        };
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        return scale::run(&counts, rounds, &args.out, &command);
    }
    if args.what == What::UpScale {
        let settings = up_scale::settings(args)?;
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        return up_scale::run(&settings, &args.out, &command);
    }
    if args.ipv6 && !matches!(args.what, What::Connect | What::Reconnect) {
        return Err(BenchError::Check(
            "--ipv6 is for bench connect and bench reconnect".into(),
        ));
    }
    net::set_low_latency(args.low_latency);
    net::set_ipv6(args.ipv6);
    let out = &args.out;
    let (pcap_dir, bed) = pcap_dir_and_testbed(out)?;
    let started = Instant::now();
    let what = args.what;
    let mut report = String::new();
    if matches!(what, What::Connect | What::All) {
        let samples = latency::run(
            &bed,
            Kind::Connect,
            &settings.rtts,
            settings.samples,
            &pcap_dir,
        )?;
        report += &write_latency(out, Kind::Connect, &samples)?;
    }
    if matches!(what, What::Reconnect | What::All) {
        let samples = latency::run(
            &bed,
            Kind::Reconnect,
            &settings.rtts,
            settings.samples,
            &pcap_dir,
        )?;
        report += &write_latency(out, Kind::Reconnect, &samples)?;
    }
    if matches!(what, What::Bulk | What::All) {
        let runs = bulk::run(&bed, settings.bulk_bytes, settings.reps)?;
        report += &write_bulk(out, &runs)?;
    }
    drop(bed);
    let _ = writeln!(
        report,
        "\n{} samples per point, RTTs {:?} ms, bulk {} MiB x {}, latency tuning {}, over {}; took {:.0} s.",
        settings.samples,
        settings
            .rtts
            .iter()
            .map(Duration::as_millis)
            .collect::<Vec<_>>(),
        settings.bulk_bytes >> 20,
        settings.reps,
        if args.low_latency { "on" } else { "off" },
        if args.ipv6 { "IPv6" } else { "IPv4" },
        started.elapsed().as_secs_f64()
    );
    let name = match what {
        What::Connect => "connect",
        What::Reconnect => "reconnect",
        What::Bulk => "bulk",
        What::All => "all",
        What::Recovery => "recovery",
        What::Tuning => "tuning",
        What::Scale => "scale",
        What::Forward => "forward",
        What::UpScale => "up-scale",
        What::Report => "report",
    };
    let command: Vec<String> = std::env::args().collect();
    let report = format!(
        "tiflow bench {name}\ncommand: {}\n{report}",
        command.join(" ")
    );
    write_file(&out.join(format!("{name}-report.txt")), &report)?;
    print!("{report}");
    println!("Results in {}", out.display());
    Ok(())
}

/// Creates `out/pcap` (the stacks' captures) and the two-namespace testbed.
fn pcap_dir_and_testbed(out: &Path) -> Result<(PathBuf, net::Testbed), BenchError> {
    let pcap_dir = out.join("pcap");
    std::fs::create_dir_all(&pcap_dir)
        .map_err(|e| BenchError::io(format!("create {}", pcap_dir.display()), e))?;
    Ok((pcap_dir, net::Testbed::new()?))
}

/// Runs `tiflow bench tuning`: both settings in one run, interleaved.
fn run_tuning(args: &BenchArgs, settings: &Settings) -> Result<(), BenchError> {
    if args.low_latency {
        return Err(BenchError::Check(
            "bench tuning measures latency tuning off and on in the same run; \
             --low-latency does not apply"
                .into(),
        ));
    }
    let out = &args.out;
    let (pcap_dir, bed) = pcap_dir_and_testbed(out)?;
    let started = Instant::now();
    let samples = tuning::run(&bed, &settings.rtts, settings.samples, &pcap_dir)?;
    drop(bed);
    write_file(&out.join("tuning.csv"), &tuning::raw_csv(&samples))?;
    write_file(
        &out.join("tuning-summary.csv"),
        &tuning::summary_csv(&samples),
    )?;
    let command: Vec<String> = std::env::args().collect();
    let mut report = format!(
        "command: {}\ntiflow bench tuning: TI stacks with latency tuning off and on, \
         interleaved sample by sample (each round measures both, alternating which goes first)\n",
        command.join(" ")
    );
    report += &tuning::report(&samples);
    let _ = writeln!(
        report,
        "\n{} samples per setting and point, RTTs {:?} ms; took {:.0} s.",
        settings.samples,
        settings
            .rtts
            .iter()
            .map(Duration::as_millis)
            .collect::<Vec<_>>(),
        started.elapsed().as_secs_f64()
    );
    write_file(&out.join("tuning-report.txt"), &report)?;
    print!("{report}");
    println!("Results in {}", out.display());
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|e| BenchError::io(format!("write {}", path.display()), e))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map_or_else(String::new, |d| format!("{:.4}", ms(d)))
}

/// The values of one metric for one mode and RTT, in ms.
fn metric(samples: &[Sample], rtt: Duration, mode: Peer, name: &str) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| s.rtt == rtt && s.mode == mode)
        .filter_map(|s| match name {
            "app" => Some(ms(s.app)),
            "syn_ack" => s.syn_ack.map(ms),
            "downtime" => s.downtime.map(ms),
            _ => None,
        })
        .collect()
}

/// Writes the raw CSV, the summary CSV and the plot of a latency
/// benchmark; returns its part of the report.
fn write_latency(out: &Path, kind: Kind, samples: &[Sample]) -> Result<String, BenchError> {
    let (name, modes, metrics): (&str, &[Peer], &[&str]) = match kind {
        Kind::Connect => ("connect", &CONNECT_MODES, &["app", "syn_ack"]),
        Kind::Reconnect => (
            "reconnect",
            &RECONNECT_MODES,
            &["app", "downtime", "syn_ack"],
        ),
    };
    let mut raw = String::from(match kind {
        Kind::Connect => "rtt_ms,mode,sample,local_port,app_ms,syn_ack_ms\n",
        Kind::Reconnect => "rtt_ms,mode,sample,local_port,app_ms,downtime_ms,syn_ack_ms\n",
    });
    for s in samples {
        let port = s.local.map_or_else(String::new, |l| l.port().to_string());
        let _ = write!(
            raw,
            "{},{},{},{},{:.4},",
            s.rtt.as_millis(),
            s.mode.name(),
            s.index,
            port,
            ms(s.app)
        );
        if kind == Kind::Reconnect {
            let _ = write!(raw, "{},", opt_ms(s.downtime));
        }
        let _ = writeln!(raw, "{}", opt_ms(s.syn_ack));
    }
    write_file(&out.join(format!("{name}.csv")), &raw)?;

    let mut rtts: Vec<Duration> = samples.iter().map(|s| s.rtt).collect();
    rtts.sort();
    rtts.dedup();
    let mut summary = String::from(
        "rtt_ms,mode,metric,n,median_ms,ci95_low_ms,ci95_high_ms,mean_ms,min_ms,max_ms\n",
    );
    for &rtt in &rtts {
        for &mode in modes {
            for &m in metrics {
                if let Some(s) = summarize(&metric(samples, rtt, mode, m)) {
                    let _ = writeln!(
                        summary,
                        "{},{},{}_ms,{}",
                        rtt.as_millis(),
                        mode.name(),
                        m,
                        s.csv_fields()
                    );
                }
            }
        }
    }
    write_file(&out.join(format!("{name}-summary.csv")), &summary)?;

    let series = |label: &str, mode: Peer, m: &str| Series {
        label: label.to_owned(),
        points: rtts
            .iter()
            .filter_map(|&rtt| {
                summarize(&metric(samples, rtt, mode, m))
                    .map(|s| (ms(rtt), s.median, s.ci_low, s.ci_high))
            })
            .collect(),
    };
    let figure = match kind {
        Kind::Connect => Figure {
            title: "Connect time: connect() to the server's close seen by recv() (paper §IV.B.1)"
                .into(),
            what: "connect time".into(),
            rtts: 2.0,
            series: vec![
                series("legacy -> legacy", Peer::Legacy, "app"),
                series("TI -> TI", Peer::Ti, "app"),
                series("legacy -> Linux", Peer::LegacyLinux, "app"),
                series("TI -> Linux (falls back)", Peer::TiLinux, "app"),
            ],
        },
        Kind::Reconnect => Figure {
            title: "Time to reconnect vs RTT, SYN to ACK on the client's capture (paper Fig. 3)"
                .into(),
            what: "time".into(),
            rtts: 1.0,
            series: vec![
                series("legacy connect (SYN->ACK)", Peer::Legacy, "syn_ack"),
                series("TI reconnect (SYN->ACK)", Peer::Ti, "syn_ack"),
            ],
        },
    };
    plot::draw(&figure, &out.join(format!("{name}.svg")))?;
    Ok(latency_report(kind, samples, &rtts))
}

fn fmt_summary(s: Option<Summary>) -> String {
    s.map_or_else(
        || "-".into(),
        |s| format!("{:.3} [{:.3}, {:.3}]", s.median, s.ci_low, s.ci_high),
    )
}

fn fmt_ratio(r: Option<(f64, f64, f64)>) -> String {
    r.map_or_else(
        || "-".into(),
        |(r, lo, hi)| format!("{r:.3} [{lo:.3}, {hi:.3}]"),
    )
}

fn latency_report(kind: Kind, samples: &[Sample], rtts: &[Duration]) -> String {
    let mut r = String::new();
    let m = |rtt, mode, name| metric(samples, rtt, mode, name);
    match kind {
        Kind::Connect => {
            let _ = writeln!(
                r,
                "\n== connect: median ms [95% CI]; ratio TI/legacy [bootstrap 95% CI]\n\
                 {:>4}  {:<26} {:<26} {:<22} {:<22} {:<22}",
                "rtt",
                "legacy app",
                "TI app",
                "TI/legacy app",
                "TI/legacy SYN->ACK",
                "TI/legacy vs Linux"
            );
            for &rtt in rtts {
                let _ = writeln!(
                    r,
                    "{:>4}  {:<26} {:<26} {:<22} {:<22} {:<22}",
                    rtt.as_millis(),
                    fmt_summary(summarize(&m(rtt, Peer::Legacy, "app"))),
                    fmt_summary(summarize(&m(rtt, Peer::Ti, "app"))),
                    fmt_ratio(ratio_of_medians(
                        &m(rtt, Peer::Ti, "app"),
                        &m(rtt, Peer::Legacy, "app")
                    )),
                    fmt_ratio(ratio_of_medians(
                        &m(rtt, Peer::Ti, "syn_ack"),
                        &m(rtt, Peer::Legacy, "syn_ack")
                    )),
                    fmt_ratio(ratio_of_medians(
                        &m(rtt, Peer::TiLinux, "app"),
                        &m(rtt, Peer::LegacyLinux, "app")
                    )),
                );
            }
        }
        Kind::Reconnect => {
            let _ = writeln!(
                r,
                "\n== reconnect: median ms [95% CI]\n\
                 {:>4}  {:<26} {:<26} {:>10} {:>12} {:<26} {:<26} {:<26}",
                "rtt",
                "legacy connect SYN->ACK",
                "TI reconnect SYN->ACK",
                "TI - RTT",
                "TI - legacy",
                "TI Resumed downtime",
                "legacy app reconnect",
                "TI app reconnect"
            );
            for &rtt in rtts {
                let legacy = summarize(&m(rtt, Peer::Legacy, "syn_ack"));
                let ti = summarize(&m(rtt, Peer::Ti, "syn_ack"));
                let minus_rtt =
                    ti.map_or_else(|| "-".into(), |t| format!("{:+.3}", t.median - ms(rtt)));
                let minus_legacy = match (ti, legacy) {
                    (Some(t), Some(l)) => format!("{:+.3}", t.median - l.median),
                    _ => "-".into(),
                };
                let _ = writeln!(
                    r,
                    "{:>4}  {:<26} {:<26} {:>10} {:>12} {:<26} {:<26} {:<26}",
                    rtt.as_millis(),
                    fmt_summary(legacy),
                    fmt_summary(ti),
                    minus_rtt,
                    minus_legacy,
                    fmt_summary(summarize(&m(rtt, Peer::Ti, "downtime"))),
                    fmt_summary(summarize(&m(rtt, Peer::Legacy, "app"))),
                    fmt_summary(summarize(&m(rtt, Peer::Ti, "app"))),
                );
            }
        }
    }
    r
}

/// Writes the bulk CSVs; returns the report.
fn write_bulk(out: &Path, runs: &[BulkRun]) -> Result<String, BenchError> {
    let mut raw = String::from("mode,direction,rep,bytes,seconds,gbit_s\n");
    for run in runs {
        let _ = writeln!(
            raw,
            "{},{},{},{},{:.6},{:.4}",
            run.mode.name(),
            run.direction.name(),
            run.rep,
            run.bytes,
            run.elapsed.as_secs_f64(),
            run.gbit_s()
        );
    }
    write_file(&out.join("bulk.csv"), &raw)?;
    let gbits = |mode: BulkMode, dir: Direction| -> Vec<f64> {
        runs.iter()
            .filter(|r| r.mode == mode && r.direction == dir)
            .map(BulkRun::gbit_s)
            .collect()
    };
    let mut summary = String::from("mode,direction,n,median_gbit_s,ci95_low,ci95_high\n");
    let mut report = String::from(
        "\n== bulk over TUN (MTU 1500, 1 MiB socket buffers): Gbit/s, median [95% CI]\n",
    );
    for mode in BulkMode::ALL {
        for dir in [Direction::Up, Direction::Down] {
            if let Some(s) = summarize(&gbits(mode, dir)) {
                let _ = writeln!(
                    summary,
                    "{},{},{},{:.4},{:.4},{:.4}",
                    mode.name(),
                    dir.name(),
                    s.n,
                    s.median,
                    s.ci_low,
                    s.ci_high
                );
                let _ = writeln!(
                    report,
                    "{:<23} {:<5} {}",
                    mode.name(),
                    dir.name(),
                    fmt_summary(Some(s))
                );
            }
        }
    }
    write_file(&out.join("bulk-summary.csv"), &summary)?;
    let _ = writeln!(report, "ratios of medians [bootstrap 95% CI]:");
    for (a, b, what) in [
        (
            BulkMode::StackLegacy,
            BulkMode::Smoltcp,
            "our stack / plain smoltcp (TI off)",
        ),
        (
            BulkMode::StackLegacy,
            BulkMode::StackLegacyNoOffload,
            "TUN offloads on / off (TI off)",
        ),
        (
            BulkMode::StackTi,
            BulkMode::Smoltcp,
            "our stack / plain smoltcp (TI on, legacy peer)",
        ),
        (
            BulkMode::StackTi,
            BulkMode::StackLegacy,
            "TI on / TI off, Linux peer",
        ),
        (
            BulkMode::RuntimeTi,
            BulkMode::RuntimeLegacy,
            "TI on / TI off, blocking API",
        ),
        (
            BulkMode::RuntimeLegacy,
            BulkMode::StackLegacy,
            "blocking API / loop",
        ),
        (
            BulkMode::PairTi,
            BulkMode::PairLegacy,
            "TI-flow / legacy, our stack both ends",
        ),
    ] {
        for dir in [Direction::Up, Direction::Down] {
            let (va, vb) = (gbits(a, dir), gbits(b, dir));
            if va.is_empty() || vb.is_empty() {
                continue;
            }
            let _ = writeln!(
                report,
                "  {:<48} {:<5} {}",
                what,
                dir.name(),
                fmt_ratio(ratio_of_medians(&va, &vb))
            );
        }
    }
    Ok(report)
}

/// Progress on stderr: a line redrawn in place on a terminal, a line every
/// quarter otherwise.
pub struct Progress {
    label: String,
    total: usize,
    done: usize,
    tty: bool,
    started: Instant,
    last: Instant,
    quarter: usize,
}

impl Progress {
    /// Starts a progress display for `total` steps.
    pub fn new(label: String, total: usize) -> Progress {
        let now = Instant::now();
        let p = Progress {
            label,
            total: total.max(1),
            done: 0,
            tty: io::stderr().is_terminal(),
            started: now,
            last: now,
            quarter: 0,
        };
        p.draw();
        p
    }

    /// One step done.
    pub fn step(&mut self) {
        self.done += 1;
        if self.tty {
            if self.last.elapsed() >= Duration::from_millis(100) {
                self.last = Instant::now();
                self.draw();
            }
        } else if self.done * 4 / self.total > self.quarter && self.done < self.total {
            self.quarter = self.done * 4 / self.total;
            self.draw();
        }
    }

    /// Finishes the line.
    pub fn done(&mut self) {
        let mut err = io::stderr().lock();
        let _ = writeln!(
            err,
            "{}{}: {}/{} in {:.1} s",
            if self.tty { "\r\x1b[K" } else { "" },
            self.label,
            self.done,
            self.total,
            self.started.elapsed().as_secs_f64()
        );
    }

    fn draw(&self) {
        let mut err = io::stderr().lock();
        let width = 30;
        let filled = self.done * width / self.total;
        let bar = format!("{}{}", "#".repeat(filled), ".".repeat(width - filled));
        if self.tty {
            let _ = write!(
                err,
                "\r\x1b[K{} [{bar}] {}/{} {:.0} s",
                self.label,
                self.done,
                self.total,
                self.started.elapsed().as_secs_f64()
            );
            let _ = err.flush();
        } else {
            let _ = writeln!(err, "{} [{bar}] {}/{}", self.label, self.done, self.total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn settings(argv: &[&str]) -> Settings {
        let mut full = vec!["bench"];
        full.extend_from_slice(argv);
        Cli::parse_from(full).args.settings()
    }

    #[test]
    fn defaults_quick_and_explicit_options() {
        let d = settings(&["connect"]);
        assert_eq!(d.samples, 200);
        assert_eq!(d.rtts.len(), 7);
        assert_eq!(d.bulk_bytes, 256 << 20);
        let q = settings(&["reconnect", "--quick"]);
        assert_eq!(q.rtts, vec![Duration::ZERO, Duration::from_millis(10)]);
        assert_eq!((q.samples, q.reps, q.bulk_bytes), (10, 1, 16 << 20));
        let e = settings(&["all", "--quick", "--rtts", "0,100", "--samples", "3"]);
        assert_eq!(e.rtts, vec![Duration::ZERO, Duration::from_millis(100)]);
        assert_eq!(e.samples, 3);
    }
}
