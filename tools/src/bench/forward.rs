//! `tiflow bench forward`: the path users run. Kernel TCP programs at both
//! ends, carried through a `tiflow up` pair (client: `--forward`, server:
//! `--serve` + `--expose`) across an nftables NAT and stateful firewall,
//! against kernel TCP between the same two namespaces through the same
//! middlebox; and, as a reference, against the same programs carried by a
//! plain userspace relay on each host over kernel TCP ([`PlainRelay`]):
//! what any design that carries a program's connection through a process
//! on each host pays before its own TCP. Interleaved, the path order
//! rotating per repetition.
//!
//! ```text
//!  client ns                middlebox ns                 server ns
//!  program -> 127.0.0.1:6000 (tiflow up) ...... NAT ...... 10.10.2.2:5002 (tiflow up) -> 127.0.0.1:5002 program
//!  program -> 10.10.2.2:5001 ................... NAT ...... 10.10.2.2:5001 program      (kernel TCP)
//!  program -> 127.0.0.1:6100 (relay) .......... NAT ...... 10.10.2.2:5003 (relay) -> 127.0.0.1:5002 program
//! ```
//!
//! Per repetition and path: throughput of 1 and of 100 parallel streams
//! each way (bytes the receiver got over the time from start to the last
//! byte), the CPU time both `tiflow up` processes used per GB carried, the
//! round-trip time of 64-byte messages ping-ponged on one connection, and
//! that of requests written in two parts 200 us apart (a program that
//! writes its header, then its body: what Nagle's algorithm in a relay
//! delays).
//! Owns its namespaces, `tiflow up` processes and program threads; writes
//! `forward.csv` (every sample) and `forward-report.txt`.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ti_testnet::middlebox::Middlebox;
use ti_testnet::topology::{Cidr, Line, LinePlan};

use super::plain_relay::{PlainRelay, accept_until_stopped};
use super::recovery::listen_in;
use super::stats::{Summary, summarize};
use super::up_scale::cpu_seconds;
use super::{BenchError, check_interrupted, write_file};
use crate::demo::UpProcess;

/// Default repetitions.
pub const DEFAULT_REPS: usize = 5;
/// Default seconds each stream writes.
pub const DEFAULT_SECS: f64 = 3.0;
/// Default stream counts.
pub const DEFAULT_STREAMS: [usize; 2] = [1, 100];
/// Goal: throughput through the `tiflow up` pair over kernel TCP's.
pub const GOAL_THROUGHPUT_RATIO: f64 = 0.5;
/// Goal: ping-pong round trip through the pair over kernel TCP's.
pub const GOAL_LATENCY_RATIO: f64 = 2.0;

/// Messages ping-ponged per sample.
const PING_PONGS: usize = 2_000;
/// Bytes per ping-pong message.
const MESSAGE: usize = 64;
/// Split requests per sample.
const SPLIT_REQUESTS: usize = 200;
/// Bytes of each part of a split request (two make a message).
const SPLIT_PART: usize = MESSAGE / 2;
/// Time between the two parts of a split request (a program that writes
/// its header, then its body).
const SPLIT_GAP: Duration = Duration::from_micros(200);
/// Bytes per write of a bulk stream.
const CHUNK: usize = 128 * 1024;
/// Longest a connection or a sample's end may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after each sample, so the connections of the last one have
/// closed (and their relay threads or flows ended) before the next starts.
const SETTLE: Duration = Duration::from_millis(300);

const CLIENT: &str = "10.10.1.2";
const INSIDE: &str = "10.10.1.1";
const OUTSIDE: &str = "10.10.2.1";
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 10, 2, 2);
/// The server program's kernel TCP port.
const KERNEL_PORT: u16 = 5001;
/// The server program's port behind the server's `tiflow up`.
const TI_PORT: u16 = 5002;
/// The client `tiflow up`'s `--forward` port.
const FORWARD_PORT: u16 = 6000;
/// The client relay's port (reference path).
const CLIENT_RELAY_PORT: u16 = 6100;
/// The server relay's port (reference path).
const SERVER_RELAY_PORT: u16 = 5003;
/// NAT (masquerade out of m1) and a stateful firewall: replies and new
/// connections from inside pass, nothing else.
const RULESET: &str = r#"table ip tiflow_forward {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "m1" ip saddr 10.10.1.0/24 masquerade
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "m0" oifname "m1" ct state new accept
    }
}
"#;

/// Which way the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Up => "up",
            Dir::Down => "down",
        }
    }
}

/// Which route carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Kernel TCP through the middlebox.
    Kernel,
    /// Kernel TCP to a `tiflow up` pair, TI-flows through the middlebox.
    Tiflow,
    /// Kernel TCP to a plain userspace relay on each host, kernel TCP
    /// between the relays through the middlebox (the reference).
    Relay,
}

impl Route {
    /// Every route, in the first repetition's order.
    const ALL: [Route; 3] = [Route::Kernel, Route::Tiflow, Route::Relay];

    fn name(self) -> &'static str {
        match self {
            Route::Kernel => "kernel",
            Route::Tiflow => "tiflow",
            Route::Relay => "relay",
        }
    }

    /// What carries the programs' bytes on each host.
    fn carrier(self) -> &'static str {
        match self {
            Route::Kernel => "kernel",
            Route::Tiflow => "tiflow up",
            Route::Relay => "relay",
        }
    }

    /// The order of the routes in repetition `rep` (1-based): rotated by
    /// one each repetition, so each route runs first, second and last
    /// equally often.
    fn order(rep: usize) -> [Route; 3] {
        let mut order = Route::ALL;
        order.rotate_left((rep + 2) % 3);
        order
    }
}

/// What a sample measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Throughput of bulk streams going one way.
    Bulk(Dir),
    /// Round trip of a message echoed whole.
    PingPong,
    /// Round trip of a request written in two parts, apart, and its answer.
    SplitRequest,
}

impl Measure {
    /// The sample's kind and unit in the CSV file.
    fn kind_and_unit(self) -> (&'static str, &'static str) {
        match self {
            Measure::Bulk(d) => (d.name(), "gbit_s"),
            Measure::PingPong => ("ping-pong", "rtt_us"),
            Measure::SplitRequest => ("split-request", "rtt_us"),
        }
    }
}

/// One measurement.
#[derive(Debug, Clone)]
pub struct Sample {
    rep: usize,
    path: Route,
    measure: Measure,
    streams: usize,
    /// Bulk: Gbit/s; round trips: median in microseconds.
    value: f64,
    /// Bulk through a carrier (`tiflow up` or the relays): CPU seconds
    /// both hosts' carriers used per GB.
    cpu_s_per_gb: Option<f64>,
}

/// The run's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Repetitions.
    pub reps: usize,
    /// Seconds each bulk sample writes.
    pub secs: f64,
    /// Stream counts.
    pub streams: Vec<usize>,
}

/// The server program: answers each connection by its first byte: `U`
/// reads to the end and replies with the count, `D` writes until the
/// connection fails, `P` echoes 64-byte messages.
struct ServerProgram {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ServerProgram {
    fn start(listeners: Vec<TcpListener>) -> ServerProgram {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = listeners
            .into_iter()
            .map(|listener| {
                let stop = stop.clone();
                std::thread::spawn(move || accept_loop(&listener, &stop))
            })
            .collect();
        ServerProgram { stop, threads }
    }
}

impl Drop for ServerProgram {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool) {
    accept_until_stopped(listener, stop, |s| {
        let _ = s.set_nonblocking(false);
        let _ = s.set_nodelay(true);
        std::thread::spawn(move || serve_connection(s));
    });
}

fn serve_connection(mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let mut command = [0u8; 1];
    if s.read_exact(&mut command).is_err() {
        return;
    }
    match command[0] {
        b'U' => {
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0u64;
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    let _ = s.write_all(&total.to_le_bytes());
                    return;
                }
                total += n as u64;
            }
        }
        b'D' => {
            let buf = vec![0x5au8; CHUNK];
            let _ = s.set_write_timeout(Some(TIMEOUT));
            while s.write_all(&buf).is_ok() {}
        }
        b'P' => {
            let mut msg = [0u8; MESSAGE];
            while s.read_exact(&mut msg).is_ok() {
                if s.write_all(&msg).is_err() {
                    return;
                }
            }
        }
        _ => {}
    }
}

/// A round-trip measurement of [`Bed`] on a path: the median in
/// microseconds.
type RoundTrips = fn(&Bed, Route) -> Result<f64, BenchError>;

/// The namespaces, the middlebox's table, the `tiflow up` pair, the
/// reference relays and the server program.
struct Bed {
    line: Line,
    client_up: UpProcess,
    server_up: UpProcess,
    relays: [PlainRelay; 2],
    _program: ServerProgram,
}

impl Bed {
    fn build(work: &Path) -> Result<Bed, BenchError> {
        let addr = |a: &str| a.parse::<Ipv4Addr>().map(Cidr::slash24);
        let parse_err = |e: std::net::AddrParseError| BenchError::Check(e.to_string());
        let plan = LinePlan {
            client: addr(CLIENT).map_err(parse_err)?,
            inside: addr(INSIDE).map_err(parse_err)?,
            outside: addr(OUTSIDE).map_err(parse_err)?,
            outside_secondary: &[],
            server: Cidr::slash24(SERVER),
            server_gateway: None,
        };
        let line = Line::build("tifwd", &plan, &Middlebox::Nftables(RULESET.to_owned()))?;
        let listeners = vec![
            listen_in(&line.server, &format!("0.0.0.0:{KERNEL_PORT}"))?,
            listen_in(&line.server, &format!("127.0.0.1:{TI_PORT}"))?,
        ];
        let program = ServerProgram::start(listeners);
        let (server_up, client_up) = UpProcess::spawn_pair(
            (&line.client, &line.server),
            work,
            (TI_PORT, &format!("127.0.0.1:{TI_PORT}")),
            (
                &format!("127.0.0.1:{FORWARD_PORT}"),
                &format!("{SERVER}:{TI_PORT}"),
            ),
            super::interrupt_flag(),
        )?;
        let relays = [
            PlainRelay::start(
                &line.server,
                &format!("0.0.0.0:{SERVER_RELAY_PORT}"),
                SocketAddr::from((Ipv4Addr::LOCALHOST, TI_PORT)),
            )?,
            PlainRelay::start(
                &line.client,
                &format!("127.0.0.1:{CLIENT_RELAY_PORT}"),
                SocketAddr::from((SERVER, SERVER_RELAY_PORT)),
            )?,
        ];
        Ok(Bed {
            line,
            client_up,
            server_up,
            relays,
            _program: program,
        })
    }

    fn target(path: Route) -> SocketAddr {
        match path {
            Route::Kernel => SocketAddr::from((SERVER, KERNEL_PORT)),
            Route::Tiflow => SocketAddr::from((Ipv4Addr::LOCALHOST, FORWARD_PORT)),
            Route::Relay => SocketAddr::from((Ipv4Addr::LOCALHOST, CLIENT_RELAY_PORT)),
        }
    }

    /// CPU seconds both hosts' carriers on `path` have used: both `tiflow
    /// up` processes, or the copying threads of both relays (of the
    /// connections that have ended). None for kernel TCP.
    fn carrier_cpu(&self, path: Route) -> Option<f64> {
        match path {
            Route::Kernel => None,
            Route::Tiflow => {
                let of = |pid| cpu_seconds(pid).unwrap_or(0.0);
                Some(of(self.client_up.pid()) + of(self.server_up.pid()))
            }
            Route::Relay => Some(self.relays.iter().map(PlainRelay::cpu_seconds).sum()),
        }
    }

    /// After a sample on `path`: for the relays, waits (up to
    /// [`TIMEOUT`]) until their connections have ended, so their threads'
    /// CPU is counted; false if some did not.
    fn sample_done(&self, path: Route) -> bool {
        path != Route::Relay || self.relays.iter().all(|r| r.wait_idle(TIMEOUT))
    }

    /// Opens `n` connections on `path`, each with its own first byte sent
    /// later (so no data moves before the clock starts).
    fn connect(&self, path: Route, n: usize) -> Result<Vec<TcpStream>, BenchError> {
        let to = Bed::target(path);
        (0..n)
            .map(|_| {
                let s = self
                    .line
                    .client
                    .enter(|| TcpStream::connect_timeout(&to, TIMEOUT))?
                    .map_err(|e| BenchError::io(format!("connect to {to}"), e))?;
                let _ = s.set_nodelay(true);
                s.set_read_timeout(Some(TIMEOUT))
                    .map_err(|e| BenchError::io("set a read timeout", e))?;
                s.set_write_timeout(Some(TIMEOUT))
                    .map_err(|e| BenchError::io("set a write timeout", e))?;
                Ok(s)
            })
            .collect()
    }

    /// Bulk: Gbit/s of `n` parallel streams on `path` going `dir`.
    fn bulk(&self, path: Route, dir: Dir, n: usize, secs: f64) -> Result<f64, BenchError> {
        let streams = self.connect(path, n)?;
        let window = Duration::from_secs_f64(secs);
        let start = Instant::now();
        let results: Vec<Result<(u64, Instant), io::Error>> = std::thread::scope(|scope| {
            let handles: Vec<_> = streams
                .into_iter()
                .map(|s| scope.spawn(move || stream_bulk(s, dir, start, window)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("stream thread panicked")))
                })
                .collect()
        });
        let mut bytes = 0u64;
        let mut last = start;
        for r in results {
            let (b, end) = r.map_err(|e| {
                BenchError::io(format!("{} {} stream on {}", n, dir.name(), path.name()), e)
            })?;
            bytes += b;
            last = last.max(end);
        }
        let elapsed = last.duration_since(start).as_secs_f64().max(1e-9);
        Ok(bytes as f64 * 8.0 / elapsed / 1e9)
    }

    /// Ping-pong: median round trip in microseconds on one connection.
    fn ping_pong(&self, path: Route) -> Result<f64, BenchError> {
        self.round_trips(path, "ping-pong", PING_PONGS, 100, |s, msg| {
            s.write_all(msg)?;
            s.read_exact(msg)
        })
    }

    /// Split requests: median round trip in microseconds on one
    /// connection, of a message written in two parts [`SPLIT_GAP`] apart
    /// and echoed by the server program once whole. Kernel TCP sends each
    /// part at once (TCP_NODELAY); a relay that holds the second part
    /// until the program acknowledged the first (Nagle's algorithm against
    /// a delayed ACK) adds tens of milliseconds.
    fn split_requests(&self, path: Route) -> Result<f64, BenchError> {
        self.round_trips(path, "split request", SPLIT_REQUESTS, 10, |s, msg| {
            s.write_all(&msg[..SPLIT_PART])?;
            std::thread::sleep(SPLIT_GAP);
            s.write_all(&msg[SPLIT_PART..])?;
            s.read_exact(msg)
        })
    }

    /// The median, in microseconds, of `count` round trips made by
    /// `exchange` on one connection to the echoing server program, after
    /// `warm_up` more that warm the path up.
    fn round_trips(
        &self,
        path: Route,
        what: &str,
        count: usize,
        warm_up: usize,
        mut exchange: impl FnMut(&mut TcpStream, &mut [u8; MESSAGE]) -> io::Result<()>,
    ) -> Result<f64, BenchError> {
        let mut s = self
            .connect(path, 1)?
            .pop()
            .ok_or_else(|| BenchError::Check("no connection".into()))?;
        let io_err = |e| BenchError::io(format!("{what} on {}", path.name()), e);
        s.write_all(b"P").map_err(io_err)?;
        let mut msg = [0x33u8; MESSAGE];
        let mut rtts = Vec::with_capacity(count);
        for i in 0..count + warm_up {
            let t = Instant::now();
            exchange(&mut s, &mut msg).map_err(io_err)?;
            if i >= warm_up {
                rtts.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        summarize(&rtts)
            .map(|s| s.median)
            .ok_or_else(|| BenchError::Check("no round trip measured".into()))
    }
}

/// One bulk stream: sends its command at `start`, then writes (up) or
/// reads (down) for `window`. Returns the bytes the receiver got and when
/// the last of them arrived.
fn stream_bulk(
    mut s: TcpStream,
    dir: Dir,
    start: Instant,
    window: Duration,
) -> io::Result<(u64, Instant)> {
    let deadline = start + window;
    match dir {
        Dir::Up => {
            s.write_all(b"U")?;
            let buf = vec![0xa5u8; CHUNK];
            while Instant::now() < deadline {
                s.write_all(&buf)?;
            }
            s.shutdown(Shutdown::Write)?;
            let mut count = [0u8; 8];
            s.read_exact(&mut count)?;
            Ok((u64::from_le_bytes(count), Instant::now()))
        }
        Dir::Down => {
            s.write_all(b"D")?;
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0u64;
            while Instant::now() < deadline {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                total += n as u64;
            }
            Ok((total, Instant::now()))
        }
    }
}

/// Runs the benchmark; writes its files to `out`.
pub fn run(settings: &Settings, out: &Path, command: &str) -> Result<(), BenchError> {
    ti_testnet::netns::check_privileges()?;
    std::fs::create_dir_all(out)
        .map_err(|e| BenchError::io(format!("create {}", out.display()), e))?;
    let work = out.join("forward-logs");
    std::fs::create_dir_all(&work)
        .map_err(|e| BenchError::io(format!("create {}", work.display()), e))?;
    let started = Instant::now();
    eprintln!(
        "tiflow bench forward: {} repetitions, streams {:?}, {:.1} s each; building namespaces",
        settings.reps, settings.streams, settings.secs
    );
    let bed = Bed::build(&work)?;
    let mut samples = Vec::new();
    for rep in 1..=settings.reps {
        let order = Route::order(rep);
        for &n in &settings.streams {
            for dir in [Dir::Up, Dir::Down] {
                for path in order {
                    check_interrupted()?;
                    let cpu_before = bed.carrier_cpu(path);
                    let gbit = bed.bulk(path, dir, n, settings.secs)?;
                    if !bed.sample_done(path) {
                        return Err(BenchError::Check(format!(
                            "the relays still carried connections {} s after {} x{n}",
                            TIMEOUT.as_secs(),
                            dir.name()
                        )));
                    }
                    let cpu = bed
                        .carrier_cpu(path)
                        .zip(cpu_before)
                        .map(|(after, before)| after - before);
                    let gb = gbit * settings.secs / 8.0;
                    let cpu_s_per_gb = cpu.filter(|_| gb > 0.0).map(|cpu| cpu / gb);
                    eprintln!(
                        "[{:>4.0} s] rep {rep}: {:>6} {:>4} x{n:<3} {gbit:>7.3} Gbit/s{}",
                        started.elapsed().as_secs_f64(),
                        path.name(),
                        dir.name(),
                        cpu_s_per_gb.map_or(String::new(), |c| format!(
                            ", {} CPU {c:.2} s/GB",
                            path.carrier()
                        ))
                    );
                    samples.push(Sample {
                        rep,
                        path,
                        measure: Measure::Bulk(dir),
                        streams: n,
                        value: gbit,
                        cpu_s_per_gb,
                    });
                    std::thread::sleep(SETTLE);
                }
            }
        }
        let round_trips: [(Measure, RoundTrips); 2] = [
            (Measure::PingPong, Bed::ping_pong),
            (Measure::SplitRequest, Bed::split_requests),
        ];
        for (measure, round_trips) in round_trips {
            for path in order {
                check_interrupted()?;
                let us = round_trips(&bed, path)?;
                eprintln!(
                    "[{:>4.0} s] rep {rep}: {:>6} {} {us:.1} us",
                    started.elapsed().as_secs_f64(),
                    path.name(),
                    measure.kind_and_unit().0
                );
                samples.push(Sample {
                    rep,
                    path,
                    measure,
                    streams: 1,
                    value: us,
                    cpu_s_per_gb: None,
                });
                std::thread::sleep(SETTLE);
            }
        }
    }
    let failures = failures_detected(&bed);
    drop(bed);
    write_file(&out.join("forward.csv"), &csv(&samples))?;
    let report = report(&samples, settings, command, started.elapsed(), failures);
    write_file(&out.join("forward-report.txt"), &report)?;
    print!("{report}");
    println!("Results in {}", out.display());
    Ok(())
}

/// Failures each `tiflow up` detected since it started, for the report.
fn failures_detected(bed: &Bed) -> String {
    let of = |up: &UpProcess| match crate::control::status(&up.control) {
        Ok(report) => report.failures.to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    format!(
        "client {}, server {}",
        of(&bed.client_up),
        of(&bed.server_up)
    )
}

fn csv(samples: &[Sample]) -> String {
    let mut s = String::from("rep,path,kind,streams,value,unit,carrier_cpu_s_per_gb\n");
    for x in samples {
        let (kind, unit) = x.measure.kind_and_unit();
        let _ = writeln!(
            s,
            "{},{},{},{},{:.4},{},{}",
            x.rep,
            x.path.name(),
            kind,
            x.streams,
            x.value,
            unit,
            x.cpu_s_per_gb.map_or(String::new(), |c| format!("{c:.3}"))
        );
    }
    s
}

/// The values of the samples matching, in repetition order.
fn values(samples: &[Sample], path: Route, measure: Measure, streams: usize) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| s.path == path && s.measure == measure && s.streams == streams)
        .map(|s| s.value)
        .collect()
}

/// The carriers' CPU seconds per GB of the bulk samples matching, in
/// repetition order.
fn cpu_per_gb(samples: &[Sample], path: Route, dir: Dir, streams: usize) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| s.path == path && s.measure == Measure::Bulk(dir) && s.streams == streams)
        .filter_map(|s| s.cpu_s_per_gb)
        .collect()
}

/// Per-repetition ratios of route `of` over route `to` (paired by
/// repetition).
fn ratios(samples: &[Sample], measure: Measure, streams: usize, of: Route, to: Route) -> Vec<f64> {
    let denominators = values(samples, to, measure, streams);
    let numerators = values(samples, of, measure, streams);
    denominators
        .iter()
        .zip(&numerators)
        .filter(|(d, _)| **d > 0.0)
        .map(|(d, n)| n / d)
        .collect()
}

/// Per-repetition ratios tiflow / kernel, what the goals are about.
fn tiflow_over_kernel(samples: &[Sample], measure: Measure, streams: usize) -> Vec<f64> {
    ratios(samples, measure, streams, Route::Tiflow, Route::Kernel)
}

fn fmt_summary(s: Option<Summary>, digits: usize) -> String {
    match s {
        Some(s) if s.n >= 9 => format!(
            "{:.d$} [{:.d$}, {:.d$}]",
            s.median,
            s.ci_low,
            s.ci_high,
            d = digits
        ),
        Some(s) => format!(
            "{:.d$} (range {:.d$}-{:.d$}, n={})",
            s.median,
            s.min,
            s.max,
            s.n,
            d = digits
        ),
        None => "-".into(),
    }
}

fn verdict(ratio: Option<Summary>, goal: f64, at_least: bool) -> &'static str {
    let Some(r) = ratio else {
        return "not measured";
    };
    let meets = |v: f64| if at_least { v >= goal } else { v <= goal };
    let (worst, best) = if at_least {
        (r.min, r.median)
    } else {
        (r.max, r.median)
    };
    if meets(worst) {
        "met"
    } else if meets(best) {
        "met (median)"
    } else {
        "MISSED"
    }
}

/// The reference path's section: the plain relays' figures, their ratio
/// to kernel TCP (what carrying a connection through a process on each
/// host costs by itself) and tiflow's ratio to them.
fn reference_section(r: &mut String, samples: &[Sample], settings: &Settings) {
    let _ = writeln!(
        r,
        "\n== reference: the same programs through a plain userspace relay on each host \
         (read/write through one {} KiB buffer, a blocking thread per direction, TCP_NODELAY) \
         over kernel TCP through the same NAT, in the same repetitions",
        super::plain_relay::BUFFER / 1024
    );
    let _ = writeln!(
        r,
        "{:<6} {:>7}  {:<30} {:<30} {:<30} relay CPU s/GB",
        "dir", "streams", "relay Gbit/s", "relay / kernel", "tiflow / relay"
    );
    let relay_ratios = |measure, n, digits| {
        (
            fmt_summary(
                summarize(&values(samples, Route::Relay, measure, n)),
                digits,
            ),
            fmt_summary(
                summarize(&ratios(samples, measure, n, Route::Relay, Route::Kernel)),
                digits.max(2),
            ),
            fmt_summary(
                summarize(&ratios(samples, measure, n, Route::Tiflow, Route::Relay)),
                digits.max(2),
            ),
        )
    };
    for &n in &settings.streams {
        for dir in [Dir::Up, Dir::Down] {
            let (relay, over_kernel, tiflow_over) = relay_ratios(Measure::Bulk(dir), n, 3);
            let cpu = fmt_summary(summarize(&cpu_per_gb(samples, Route::Relay, dir, n)), 2);
            let _ = writeln!(
                r,
                "{:<6} {:>7}  {relay:<30} {over_kernel:<30} {tiflow_over:<30} {cpu}",
                dir.name(),
                n
            );
        }
    }
    for (measure, what) in [
        (Measure::PingPong, "ping-pong"),
        (Measure::SplitRequest, "split request"),
    ] {
        let (relay, over_kernel, tiflow_over) = relay_ratios(measure, 1, 1);
        let _ = writeln!(
            r,
            "  {what} (us): relay {relay}   relay / kernel {over_kernel}   tiflow / relay {tiflow_over}"
        );
    }
}

fn report(
    samples: &[Sample],
    settings: &Settings,
    command: &str,
    took: Duration,
    failures: String,
) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "tiflow bench forward\ncommand: {command}");
    let _ = writeln!(
        r,
        "\n== forward path: kernel TCP programs through a tiflow up pair vs kernel TCP, \
         same NAT + stateful firewall (nftables), interleaved with the reference below; {} repetitions of {:.1} s; \
         median{}",
        settings.reps,
        settings.secs,
        if settings.reps >= 9 {
            " [95% CI]"
        } else {
            " (range: fewer than 9 repetitions)"
        }
    );
    let _ = writeln!(
        r,
        "{:<6} {:>7}  {:<30} {:<30} {:<30} tiflow up CPU s/GB",
        "dir", "streams", "kernel Gbit/s", "tiflow Gbit/s", "tiflow / kernel"
    );
    for &n in &settings.streams {
        for dir in [Dir::Up, Dir::Down] {
            let cpu = cpu_per_gb(samples, Route::Tiflow, dir, n);
            let _ = writeln!(
                r,
                "{:<6} {:>7}  {:<30} {:<30} {:<30} {}",
                dir.name(),
                n,
                fmt_summary(
                    summarize(&values(samples, Route::Kernel, Measure::Bulk(dir), n)),
                    3
                ),
                fmt_summary(
                    summarize(&values(samples, Route::Tiflow, Measure::Bulk(dir), n)),
                    3
                ),
                fmt_summary(
                    summarize(&tiflow_over_kernel(samples, Measure::Bulk(dir), n)),
                    3
                ),
                fmt_summary(summarize(&cpu), 2),
            );
        }
    }
    let _ = writeln!(
        r,
        "\nping-pong of {MESSAGE}-byte messages, one connection, median round trip of {PING_PONGS} (us):"
    );
    let round_trips = |r: &mut String, measure| {
        let _ = writeln!(
            r,
            "  kernel {}   tiflow {}   tiflow / kernel {}",
            fmt_summary(summarize(&values(samples, Route::Kernel, measure, 1)), 1),
            fmt_summary(summarize(&values(samples, Route::Tiflow, measure, 1)), 1),
            fmt_summary(summarize(&tiflow_over_kernel(samples, measure, 1)), 2),
        );
    };
    round_trips(&mut r, Measure::PingPong);
    let _ = writeln!(
        r,
        "\nsplit request: {SPLIT_PART} bytes, {} us later {SPLIT_PART} more, then the \
         {MESSAGE}-byte answer, one connection, TCP_NODELAY at both programs, median round \
         trip of {SPLIT_REQUESTS} (us):",
        SPLIT_GAP.as_micros()
    );
    round_trips(&mut r, Measure::SplitRequest);
    reference_section(&mut r, samples, settings);
    let _ = writeln!(r, "\ngoals (issue 13):");
    for &n in &settings.streams {
        for dir in [Dir::Up, Dir::Down] {
            let ratio = summarize(&tiflow_over_kernel(samples, Measure::Bulk(dir), n));
            let _ = writeln!(
                r,
                "  {} x{n}: tiflow / kernel >= {GOAL_THROUGHPUT_RATIO}: {} {}",
                dir.name(),
                fmt_summary(ratio, 3),
                verdict(ratio, GOAL_THROUGHPUT_RATIO, true)
            );
        }
    }
    let ratio = summarize(&tiflow_over_kernel(samples, Measure::PingPong, 1));
    let _ = writeln!(
        r,
        "  ping-pong: tiflow / kernel <= {GOAL_LATENCY_RATIO}: {} {}",
        fmt_summary(ratio, 2),
        verdict(ratio, GOAL_LATENCY_RATIO, false)
    );
    let _ = writeln!(
        r,
        "\nfailures detected by the tiflow up pair during the run (none expected): {failures}"
    );
    let _ = writeln!(r, "took {:.0} s.", took.as_secs_f64());
    r
}
