//! `tiflow bench up-scale`: many idle connections through a `tiflow up`
//! pair (issue 12's target: 10,000 connections, each greeted end to end,
//! held idle 60 s).
//!
//! The demo's NAT topology (client, middlebox, server namespaces), a
//! `tiflow up` on each host (this executable: the client's forwards
//! 127.0.0.1:[`PORT`] through the NAT, the server's serves it to a kernel
//! program), then a connect storm from the client namespace (bounded
//! concurrency). The server program greets every connection with 16 bytes
//! naming it; the client echoes them back and the server checks them byte
//! for byte. The connections sit idle, then each carries one more exchange
//! (so "worked" means it still works after the idle time), then all close.
//! Measured per run: connections that worked, connect and greeting times,
//! RSS and threads of each `tiflow up` (start, held, after the close, peak),
//! `tiflow status` latency and the failures and resume attempts it reports,
//! CPU of each `tiflow up` during the idle hold.
//!
//! Owns its namespaces (removed on drop, on error too), the two `tiflow
//! up` processes (its own children: a memory watchdog kills them by pid
//! when one outgrows `--rss-limit-mib`, so a design that does not scale
//! cannot exhaust a shared machine), the kernel sockets of the storm, and
//! the files `up-scale.csv` and `up-scale-report.txt`. Never touches the
//! root namespace; every wait is bounded.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ti_testnet::netns::{self, NetNs};

use super::{BenchError, check_interrupted};
use crate::control::{self, StatusReport};
use crate::demo::{NatTopology, UpProcess};
use crate::host;

/// Default connection count.
pub const DEFAULT_CONNECTIONS: usize = 10_000;
/// Default idle hold.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);
/// `--quick`: connections.
pub const QUICK_CONNECTIONS: usize = 200;
/// `--quick`: idle hold.
pub const QUICK_IDLE: Duration = Duration::from_secs(2);
/// The forwarded port (client side, 127.0.0.1) and the server program's.
pub const PORT: u16 = 7300;

/// Goal: RSS per connection per side, KiB.
pub const GOAL_KIB_PER_CONNECTION: f64 = 64.0;
/// Goal: `tiflow status` answers within this (every call), ms.
pub const GOAL_STATUS_MS: f64 = 200.0;
/// Goal: RSS after the close at most start x (1 + this) + [`GOAL_AFTER_SLACK_KIB`].
pub const GOAL_AFTER_FRACTION: f64 = 0.10;
/// Goal: RSS slack after the close, KiB (8 MiB).
pub const GOAL_AFTER_SLACK_KIB: u64 = 8 * 1024;

/// Threads connecting at once (each blocks in `connect`).
const CONNECTORS: usize = 64;
/// One `connect` may take this long (SYN retries included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After the storm, how long the greetings may take to arrive.
const GREET_WAIT: Duration = Duration::from_secs(60);
/// Each later exchange (echo check, after-idle exchange) gets this long.
const EXCHANGE_WAIT: Duration = Duration::from_secs(30);
/// Longest the whole storm (connects and accepts) may last.
const STORM_LIMIT: Duration = Duration::from_secs(600);
/// `tiflow status` calls per side while the connections are held.
const STATUS_CALLS: usize = 9;
/// After the close, how long the flows may take to go.
const CLOSE_WAIT: Duration = Duration::from_secs(60);
/// After the flows are gone, time for the idle memory trim before RSS is
/// read again (`tiflow up` trims every 2 s once it has no stream).
const SETTLE: Duration = Duration::from_secs(10);
/// The memory watchdog's period.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// Bytes of a greeting: `hi NNNNNNNNNNNN\n`.
const GREETING: usize = 16;
/// Open files this process needs per connection (the client end and the
/// server program's end), plus [`FD_MARGIN`].
const FDS_PER_CONNECTION: u64 = 2;
/// Open files each `tiflow up` may need per connection (it inherits this
/// process's hard limit and raises its soft limit to it), plus
/// [`DAEMON_FD_MARGIN`]; asked for, not required.
const DAEMON_FDS_PER_CONNECTION: u64 = 8;
const FD_MARGIN: u64 = 256;
const DAEMON_FD_MARGIN: u64 = 4_096;
/// `/proc/PID/stat` counts CPU time in USER_HZ ticks, 100 a second on
/// Linux (fixed by the ABI, whatever the kernel's HZ).
const USER_HZ: f64 = 100.0;

/// The settings of `tiflow bench up-scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Connection counts, one run (or `reps`) each.
    pub connections: Vec<usize>,
    /// How long the connections sit idle.
    pub idle: Duration,
    /// Runs per count.
    pub reps: usize,
    /// RSS above which a `tiflow up` is killed and the run recorded as
    /// aborted, KiB (`None`: a quarter of the memory available at start).
    pub rss_limit_kib: Option<u64>,
    /// Keep the logs of the two `tiflow up` of every run (their directory
    /// is printed), not only of aborted runs.
    pub keep_logs: bool,
}

/// The two `tiflow up` processes, in the order the files list them.
const SIDES: [&str; 2] = ["client", "server"];

/// One side's figures in one run.
#[derive(Debug, Clone, Default)]
pub struct SideFigures {
    /// RSS when ready, KiB.
    pub rss_start: u64,
    /// RSS with the connections held, after the idle time, KiB.
    pub rss_held: u64,
    /// RSS after the close and the settle time, KiB.
    pub rss_after: u64,
    /// Highest RSS the watchdog saw, KiB.
    pub rss_peak: u64,
    /// Threads when ready, held, after.
    pub threads: [u64; 3],
    /// Its soft open-file limit (as it raised it).
    pub open_files: Option<u64>,
    /// `tiflow status` answer times while held, ms.
    pub status_ms: Vec<f64>,
    /// `tiflow status` calls that failed.
    pub status_errors: usize,
    /// The first status error.
    pub status_error: Option<String>,
    /// Flows in the last status, and how many were TI-flows.
    pub flows: Option<(usize, usize)>,
    /// Failures detected since start (last status).
    pub failures: Option<u64>,
    /// Resume attempts since start (last status).
    pub resume_attempts: Option<u64>,
    /// CPU during the idle hold, % of one core.
    pub idle_cpu_pct: Option<f64>,
}

impl SideFigures {
    /// (RSS held - RSS at start) / N, KiB.
    pub fn kib_per_connection(&self, n: usize) -> f64 {
        self.rss_held.saturating_sub(self.rss_start) as f64 / n.max(1) as f64
    }

    /// The most RSS after the close may be, KiB.
    pub fn after_limit(&self) -> u64 {
        (self.rss_start as f64 * (1.0 + GOAL_AFTER_FRACTION)) as u64 + GOAL_AFTER_SLACK_KIB
    }

    fn status_median(&self) -> Option<f64> {
        let mut v = self.status_ms.clone();
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| {
            let m = v.len() / 2;
            if v.len() % 2 == 1 {
                v[m]
            } else {
                (v[m - 1] + v[m]) / 2.0
            }
        })
    }

    fn status_max(&self) -> Option<f64> {
        self.status_ms.iter().copied().reduce(f64::max)
    }
}

/// One run.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Connections asked for.
    pub n: usize,
    /// Which run of this count (1-based).
    pub rep: usize,
    /// `connect` returned a socket.
    pub connected: usize,
    /// The greeting arrived and its echo came back byte for byte.
    pub greeted: usize,
    /// Still carried an exchange each way after the idle time.
    pub worked: usize,
    /// Storm start to the last `connect` returning, s.
    pub connect_s: f64,
    /// Storm start to the last greeting read and echoed, s.
    pub greet_s: f64,
    /// Close to both `tiflow up` reporting no flow, s (`None`: not within
    /// the wait).
    pub close_s: Option<f64>,
    /// The idle hold actually spent, s.
    pub idle_s: f64,
    /// Client, server.
    pub sides: [SideFigures; 2],
    /// Why connections failed: kind and count.
    pub errors: Vec<(String, usize)>,
    /// Empty when the run went through every phase; otherwise why not.
    pub aborted: String,
}

impl Run {
    fn failed(&self) -> usize {
        self.n - self.worked
    }

    fn count_error(&mut self, what: String) {
        match self.errors.iter_mut().find(|(w, _)| *w == what) {
            Some((_, c)) => *c += 1,
            None => self.errors.push((what, 1)),
        }
    }
}

/// Resolves the settings from the bench's arguments.
pub fn settings(args: &super::BenchArgs) -> Result<Settings, BenchError> {
    let connections = match (&args.connections, args.quick) {
        (Some(c), _) => c.clone(),
        (None, true) => vec![QUICK_CONNECTIONS],
        (None, false) => vec![DEFAULT_CONNECTIONS],
    };
    if connections.is_empty() || connections.contains(&0) {
        return Err(BenchError::Check(
            "--connections: give counts of at least 1".into(),
        ));
    }
    Ok(Settings {
        connections,
        idle: args
            .idle
            .unwrap_or(if args.quick { QUICK_IDLE } else { DEFAULT_IDLE }),
        reps: args.reps.unwrap_or(1).max(1),
        rss_limit_kib: args.rss_limit_mib.map(|m| m * 1024),
        keep_logs: args.keep_logs,
    })
}

/// Runs the benchmark; writes `up-scale.csv` and `up-scale-report.txt` to
/// `out`.
pub fn run(settings: &Settings, out: &Path, command: &str) -> Result<(), BenchError> {
    netns::check_privileges()?;
    // The demo's NAT topology: its middlebox goes over netlink, only `ip` is run.
    host::require(&[host::IP])?;
    let most = settings.connections.iter().copied().max().unwrap_or(1);
    let open_files = raise_open_file_limit(most)?;
    let rss_limit = settings
        .rss_limit_kib
        .unwrap_or_else(|| mem_available_kib().map_or(4 << 20, |a| a / 4));
    std::fs::create_dir_all(out)
        .map_err(|e| BenchError::io(format!("create {}", out.display()), e))?;
    let work = std::env::temp_dir().join(format!("tiflow-bench-up-scale-{}", std::process::id()));
    std::fs::create_dir_all(&work)
        .map_err(|e| BenchError::io(format!("create {}", work.display()), e))?;
    let started = Instant::now();
    let mut runs = Vec::new();
    for &n in &settings.connections {
        for rep in 1..=settings.reps {
            check_interrupted()?;
            eprintln!(
                "up-scale: {n} connections, run {rep}/{}, idle {:.0} s",
                settings.reps,
                settings.idle.as_secs_f64()
            );
            let run = one_run(n, rep, settings.idle, rss_limit, &work, settings.keep_logs)?;
            eprintln!("{}", progress_line(&run));
            runs.push(run);
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    let csv = csv(&runs);
    let report = report(
        &runs,
        command,
        settings,
        open_files,
        rss_limit,
        started.elapsed(),
    );
    super::write_file(&out.join("up-scale.csv"), &csv)?;
    super::write_file(&out.join("up-scale-report.txt"), &report)?;
    print!("{report}");
    println!("Results in {}", out.display());
    Ok(())
}

/// Raises this process's open-file limit for `n` connections: soft and
/// hard to what the two `tiflow up` will want too (they inherit the hard
/// limit), or, without the privilege, soft to hard. Returns the soft
/// limit; fails when it is too low for this process.
fn raise_open_file_limit(n: usize) -> Result<u64, BenchError> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let n = n as u64;
    let need = FDS_PER_CONNECTION * n + FD_MARGIN;
    let want = (DAEMON_FDS_PER_CONNECTION * n + DAEMON_FD_MARGIN).max(need);
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if hard < want {
        let target = want.min(nr_open);
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: Some(target),
            },
        );
    }
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if now < need {
        return Err(BenchError::Check(format!(
            "up-scale: {n} connections need {need} open files in this process \
             (both ends of each), the hard limit allows {now} and could not be raised \
             (raising it needs CAP_SYS_RESOURCE: ulimit -Hn as root, or LimitNOFILE)"
        )));
    }
    Ok(now)
}

fn greeting(index: usize) -> [u8; GREETING] {
    let mut g = [0u8; GREETING];
    let text = format!("hi {index:012}\n");
    g.copy_from_slice(text.as_bytes());
    g
}

fn parse_greeting(g: &[u8; GREETING]) -> Option<usize> {
    let s = std::str::from_utf8(g).ok()?;
    s.strip_prefix("hi ")?.strip_suffix('\n')?.parse().ok()
}

/// Reads exactly `buf.len()` bytes, giving up at `deadline`.
fn read_by(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<(), String> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        s.set_read_timeout(Some(left)).map_err(|e| describe(&e))?;
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err("closed".into()),
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(describe(&e)),
        }
    }
    Ok(())
}

fn write_by(s: &mut TcpStream, buf: &[u8]) -> Result<(), String> {
    s.set_write_timeout(Some(EXCHANGE_WAIT))
        .and_then(|()| s.write_all(buf))
        .map_err(|e| describe(&e))
}

fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".into(),
        io::ErrorKind::ConnectionReset => "reset".into(),
        io::ErrorKind::ConnectionRefused => "refused".into(),
        io::ErrorKind::BrokenPipe => "broken pipe".into(),
        _ => e.to_string().replace(',', ";"),
    }
}

/// What the server program accepted: (index, socket) per connection, and
/// its errors.
struct Accepted {
    sockets: Vec<(usize, TcpStream)>,
    errors: Vec<String>,
}

/// The server program: accepts and greets until `n` connections, `stop`, or
/// the storm's limit.
fn server_program(listener: TcpListener, n: usize, stop: Arc<AtomicBool>) -> JoinHandle<Accepted> {
    std::thread::spawn(move || {
        let mut accepted = Vec::with_capacity(n);
        let mut errors = Vec::new();
        let deadline = Instant::now() + STORM_LIMIT;
        while accepted.len() < n && Instant::now() < deadline && !stop.load(Ordering::Acquire) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let index = accepted.len();
                    let greeted = s
                        .set_nonblocking(false)
                        .map_err(|e| describe(&e))
                        .and_then(|()| write_by(&mut s, &greeting(index)));
                    if let Err(e) = greeted {
                        errors.push(format!("server greeting: {e}"));
                    }
                    accepted.push((index, s));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => {
                    errors.push(format!("accept: {}", describe(&e)));
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        Accepted {
            sockets: accepted,
            errors,
        }
    })
}

/// Opens `n` connections to `to` from inside `ns`, [`CONNECTORS`] at a
/// time; returns each socket (or why not) and when the last returned.
fn connect_storm(
    ns: &NetNs,
    to: SocketAddr,
    n: usize,
    abort: &AtomicBool,
) -> Result<Vec<Result<TcpStream, String>>, BenchError> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(n));
    let deadline = Instant::now() + STORM_LIMIT;
    ns.enter(|| {
        // Threads spawned here are in the namespace too (a new thread
        // inherits its creator's).
        std::thread::scope(|scope| {
            for _ in 0..CONNECTORS.min(n) {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        if abort.load(Ordering::Acquire)
                            || super::interrupt_flag().load(Ordering::Acquire)
                            || Instant::now() >= deadline
                        {
                            mine.push(Err("not tried (run stopped)".to_owned()));
                            continue;
                        }
                        mine.push(
                            TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)
                                .map_err(|e| format!("connect: {}", describe(&e))),
                        );
                    }
                    results
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .extend(mine);
                });
            }
        });
    })?;
    Ok(results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// Samples both `tiflow up` every [`WATCH_EVERY`]: keeps their peak RSS,
/// and kills both (by pid: our own children) when one exceeds `limit` KiB
/// or one is gone, saying why in `abort_reason`.
struct Watchdog {
    stop: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
    reason: Arc<Mutex<String>>,
    handle: Option<JoinHandle<[u64; 2]>>,
}

impl Watchdog {
    fn start(pids: [u32; 2], limit: u64) -> Watchdog {
        let stop = Arc::new(AtomicBool::new(false));
        let abort = Arc::new(AtomicBool::new(false));
        let reason = Arc::new(Mutex::new(String::new()));
        let handle = {
            let (stop, abort, reason) = (stop.clone(), abort.clone(), reason.clone());
            std::thread::spawn(move || {
                let mut peak = [0u64; 2];
                while !stop.load(Ordering::Acquire) {
                    for (i, &pid) in pids.iter().enumerate() {
                        let rss = status_field(pid, "VmRSS:");
                        if let Some(rss) = rss {
                            peak[i] = peak[i].max(rss);
                        }
                        let why = match rss {
                            _ if abort.load(Ordering::Acquire) => None,
                            None => Some(format!("the {} tiflow up exited", SIDES[i])),
                            Some(rss) if rss > limit => Some(format!(
                                "the {} tiflow up reached {} MiB RSS (limit {} MiB): both killed",
                                SIDES[i],
                                rss / 1024,
                                limit / 1024
                            )),
                            Some(_) => None,
                        };
                        if let Some(why) = why {
                            for &p in &pids {
                                if let Some(p) = rustix::process::Pid::from_raw(p as i32) {
                                    let _ = rustix::process::kill_process(
                                        p,
                                        rustix::process::Signal::KILL,
                                    );
                                }
                            }
                            *reason
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) = why;
                            abort.store(true, Ordering::Release);
                        }
                    }
                    std::thread::sleep(WATCH_EVERY);
                }
                peak
            })
        };
        Watchdog {
            stop,
            abort,
            reason,
            handle: Some(handle),
        }
    }

    fn aborted(&self) -> Option<String> {
        self.abort.load(Ordering::Acquire).then(|| {
            self.reason
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        })
    }

    /// Stops it; returns the peaks.
    fn finish(mut self) -> [u64; 2] {
        self.stop.store(true, Ordering::Release);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A numeric field of `/proc/PID/status` (`VmRSS:` in KiB, `Threads:`);
/// `None` when the process is gone (or a zombie).
fn status_field(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, in seconds.
pub(super) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is
    // field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / USER_HZ)
}

/// The soft "Max open files" of a process.
fn open_files(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

fn mem_available_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Sleeps `d` in short steps; stops early when `abort` is set or on a
/// signal.
fn hold(d: Duration, abort: &AtomicBool) -> Result<Duration, BenchError> {
    let started = Instant::now();
    while started.elapsed() < d && !abort.load(Ordering::Acquire) {
        check_interrupted()?;
        std::thread::sleep((d - started.elapsed()).min(Duration::from_millis(100)));
    }
    Ok(started.elapsed())
}

/// One run: a fresh topology and `tiflow up` pair, `n` connections.
fn one_run(
    n: usize,
    rep: usize,
    idle: Duration,
    rss_limit: u64,
    work: &Path,
    keep_logs: bool,
) -> Result<Run, BenchError> {
    let mut run = Run {
        n,
        rep,
        ..Run::default()
    };
    let net = NatTopology::build("tfus")?;
    let dir: PathBuf = work.join(format!("n{n}-r{rep}"));
    std::fs::create_dir_all(&dir)
        .map_err(|e| BenchError::io(format!("create {}", dir.display()), e))?;
    let listener = net
        .server
        .enter(|| TcpListener::bind(("127.0.0.1", PORT)))?
        .map_err(|e| BenchError::io("listen in the server namespace", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| BenchError::io("make the listener non-blocking", e))?;
    // Room for the storm in the program's accept queue (std listens with
    // 128; the kernel caps it at net.core.somaxconn): with a short queue,
    // Linux's SYN cookies drop the ACK of a connection it cannot queue,
    // and the connection `tiflow up` made to this program, which speaks
    // first, would be counted against the pair (many_connections' CI
    // failure of stop 24).
    rustix::net::listen(&listener, i32::try_from(n).unwrap_or(i32::MAX))
        .map_err(|e| BenchError::io("set the listener's backlog", e.into()))?;
    let (server_up, client_up) = UpProcess::spawn_pair(
        (&net.client, &net.server),
        &dir,
        (PORT, &PORT.to_string()),
        (&format!("127.0.0.1:{PORT}"), &format!("10.10.2.2:{PORT}")),
        super::interrupt_flag(),
    )?;
    let ups = [&client_up, &server_up];
    let pids = [client_up.pid(), server_up.pid()];
    std::thread::sleep(Duration::from_secs(1));
    for (side, &pid) in run.sides.iter_mut().zip(&pids) {
        side.rss_start = status_field(pid, "VmRSS:").unwrap_or(0);
        side.threads[0] = status_field(pid, "Threads:").unwrap_or(0);
        side.open_files = open_files(pid);
    }
    let watchdog = Watchdog::start(pids, rss_limit);
    let abort = watchdog.abort.clone();

    // The storm.
    let stop_accepting = Arc::new(AtomicBool::new(false));
    let program = server_program(listener, n, stop_accepting.clone());
    let to = SocketAddr::from(([127, 0, 0, 1], PORT));
    let storm = Instant::now();
    let mut clients: Vec<TcpStream> = Vec::with_capacity(n);
    for r in connect_storm(&net.client, to, n, &abort)? {
        match r {
            Ok(s) => clients.push(s),
            Err(e) => run.count_error(e),
        }
    }
    run.connected = clients.len();
    run.connect_s = storm.elapsed().as_secs_f64();
    eprintln!(
        "  connected {}/{n} in {:.1} s",
        run.connected, run.connect_s
    );

    // Greetings, read and echoed by the clients, in turn (they arrive
    // concurrently; a missing one waits at most until the deadline).
    let deadline = Instant::now() + GREET_WAIT;
    let mut index_of: Vec<Option<usize>> = Vec::with_capacity(clients.len());
    for c in &mut clients {
        let mut g = [0u8; GREETING];
        let got = read_by(c, &mut g, deadline).and_then(|()| {
            let index = parse_greeting(&g).ok_or_else(|| "bad greeting".to_owned())?;
            write_by(c, &g).map(|()| index)
        });
        match got {
            Ok(index) => index_of.push(Some(index)),
            Err(e) => {
                run.count_error(format!("greeting: {e}"));
                index_of.push(None);
            }
        }
    }
    run.greet_s = storm.elapsed().as_secs_f64();
    stop_accepting.store(true, Ordering::Release);
    let Accepted {
        sockets: accepted,
        errors: accept_errors,
    } = program
        .join()
        .map_err(|_| BenchError::Check("the server program panicked".into()))?;
    for e in accept_errors {
        run.count_error(e);
    }
    // The server checks each echo byte for byte.
    let deadline = Instant::now() + EXCHANGE_WAIT;
    let mut servers: HashMap<usize, TcpStream> = HashMap::with_capacity(accepted.len());
    for (index, mut s) in accepted {
        let mut echo = [0u8; GREETING];
        match read_by(&mut s, &mut echo, deadline) {
            Ok(()) if echo == greeting(index) => {
                servers.insert(index, s);
            }
            Ok(()) => run.count_error("echo: wrong bytes".into()),
            Err(e) => run.count_error(format!("echo: {e}")),
        }
    }
    run.greeted = index_of
        .iter()
        .flatten()
        .filter(|i| servers.contains_key(i))
        .count();
    eprintln!(
        "  greeted and echoed {}/{n} in {:.1} s",
        run.greeted, run.greet_s
    );

    // Idle.
    let cpu_before = pids.map(cpu_seconds);
    if watchdog.aborted().is_none() {
        run.idle_s = hold(idle, &abort)?.as_secs_f64();
    }
    let cpu_after = pids.map(cpu_seconds);
    for i in 0..2 {
        let side = &mut run.sides[i];
        side.rss_held = status_field(pids[i], "VmRSS:").unwrap_or(0);
        side.threads[1] = status_field(pids[i], "Threads:").unwrap_or(0);
        if let (Some(a), Some(b)) = (cpu_before[i], cpu_after[i])
            && run.idle_s > 0.0
        {
            side.idle_cpu_pct = Some((b - a) / run.idle_s * 100.0);
        }
    }
    // `tiflow status` while they are held, alternating sides.
    let mut last: [Option<StatusReport>; 2] = [None, None];
    for _ in 0..STATUS_CALLS {
        if watchdog.aborted().is_some() {
            break;
        }
        for (i, up) in ups.iter().enumerate() {
            let asked = Instant::now();
            match control::status(&up.control) {
                Ok(r) => {
                    run.sides[i]
                        .status_ms
                        .push(asked.elapsed().as_secs_f64() * 1e3);
                    last[i] = Some(r);
                }
                Err(e) => {
                    run.sides[i].status_errors += 1;
                    run.sides[i]
                        .status_error
                        .get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
    for (side, report) in run.sides.iter_mut().zip(&last) {
        if let Some(r) = report {
            let ti = r.flows.iter().filter(|f| f.tifid.is_some()).count();
            side.flows = Some((r.flows.len(), ti));
            side.failures = Some(r.failures);
            side.resume_attempts = Some(r.resume_attempts);
        }
    }

    // One more exchange each way on every greeted connection: pipelined
    // (all clients write, the server program answers each, all clients
    // read), bounded by one deadline per stage.
    let mut alive: Vec<(usize, usize)> = Vec::with_capacity(servers.len());
    for (k, (c, index)) in clients.iter_mut().zip(&index_of).enumerate() {
        let Some(&index) = index.as_ref().filter(|i| servers.contains_key(i)) else {
            continue;
        };
        match write_by(c, b"ping") {
            Ok(()) => alive.push((k, index)),
            Err(e) => run.count_error(format!("after idle, client write: {e}")),
        }
    }
    let deadline = Instant::now() + EXCHANGE_WAIT;
    let mut answered = Vec::with_capacity(alive.len());
    for (k, index) in alive {
        let Some(s) = servers.get_mut(&index) else {
            continue;
        };
        let mut b = [0u8; 4];
        match read_by(s, &mut b, deadline).and_then(|()| {
            if &b == b"ping" {
                write_by(s, b"pong")
            } else {
                Err("wrong bytes".into())
            }
        }) {
            Ok(()) => answered.push(k),
            Err(e) => run.count_error(format!("after idle, server: {e}")),
        }
    }
    let deadline = Instant::now() + EXCHANGE_WAIT;
    for k in answered {
        let mut b = [0u8; 4];
        match read_by(&mut clients[k], &mut b, deadline) {
            Ok(()) if &b == b"pong" => run.worked += 1,
            Ok(()) => run.count_error("after idle, client: wrong bytes".into()),
            Err(e) => run.count_error(format!("after idle, client: {e}")),
        }
    }
    eprintln!("  worked after the idle time: {}/{n}", run.worked);

    // Close all; wait for the flows to go and the memory to be trimmed.
    drop(clients);
    drop(servers);
    let closed = Instant::now();
    let close_deadline = closed + CLOSE_WAIT;
    while watchdog.aborted().is_none() && Instant::now() < close_deadline {
        check_interrupted()?;
        let empty = ups
            .iter()
            .all(|u| control::status(&u.control).is_ok_and(|r| r.flows.is_empty()));
        if empty {
            run.close_s = Some(closed.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    hold(SETTLE, &abort)?;
    for (side, &pid) in run.sides.iter_mut().zip(&pids) {
        side.rss_after = status_field(pid, "VmRSS:").unwrap_or(0);
        side.threads[2] = status_field(pid, "Threads:").unwrap_or(0);
    }
    if let Some(why) = watchdog.aborted() {
        run.aborted = why;
    }
    let peaks = watchdog.finish();
    for (side, peak) in run.sides.iter_mut().zip(peaks) {
        side.rss_peak = peak;
    }
    if !run.aborted.is_empty() {
        eprintln!(
            "  aborted: {}; logs of the two tiflow up: {}",
            run.aborted,
            dir.display()
        );
    }
    drop(client_up);
    drop(server_up);
    drop(net);
    if run.aborted.is_empty() && !keep_logs {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        // Keep the logs next to the results' directory, in the work dir's
        // parent, so removing the work dir does not lose them.
        let kept = std::env::temp_dir().join(format!(
            "tiflow-bench-up-scale-logs-{}-n{n}-r{rep}",
            std::process::id()
        ));
        let _ = std::fs::rename(&dir, &kept);
        eprintln!("  logs of the two tiflow up: {}", kept.display());
    }
    Ok(run)
}

fn progress_line(r: &Run) -> String {
    format!(
        "  -> worked {}/{}, failed {}; RSS/conn KiB client {:.1} server {:.1}; threads {}/{}; status max ms {}/{}; failures {}/{}{}",
        r.worked,
        r.n,
        r.failed(),
        r.sides[0].kib_per_connection(r.n),
        r.sides[1].kib_per_connection(r.n),
        r.sides[0].threads[1],
        r.sides[1].threads[1],
        opt(r.sides[0].status_max(), 1),
        opt(r.sides[1].status_max(), 1),
        opt_u(r.sides[0].failures),
        opt_u(r.sides[1].failures),
        if r.aborted.is_empty() {
            String::new()
        } else {
            format!("; aborted: {}", r.aborted)
        }
    )
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

fn opt_u(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn csv_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(String::new, |v| format!("{v:.digits$}"))
}

fn csv_u(v: Option<u64>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

/// `up-scale.csv`: a row per run and side.
pub fn csv(runs: &[Run]) -> String {
    let mut s = String::from(
        "connections,rep,side,connected,greeted,worked,failed,connect_s,greet_s,close_s,idle_s,\
         rss_start_kib,rss_held_kib,rss_after_kib,rss_peak_kib,kib_per_connection,\
         threads_start,threads_held,threads_after,open_files,status_calls,status_errors,\
         status_median_ms,status_max_ms,flows,ti_flows,failures,resume_attempts,idle_cpu_pct,\
         outcome\n",
    );
    for r in runs {
        for (name, side) in SIDES.iter().zip(&r.sides) {
            let _ = writeln!(
                s,
                "{},{},{name},{},{},{},{},{:.3},{:.3},{},{:.1},{},{},{},{},{:.1},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                r.n,
                r.rep,
                r.connected,
                r.greeted,
                r.worked,
                r.failed(),
                r.connect_s,
                r.greet_s,
                csv_opt(r.close_s, 3),
                r.idle_s,
                side.rss_start,
                side.rss_held,
                side.rss_after,
                side.rss_peak,
                side.kib_per_connection(r.n),
                side.threads[0],
                side.threads[1],
                side.threads[2],
                csv_u(side.open_files),
                side.status_ms.len() + side.status_errors,
                side.status_errors,
                csv_opt(side.status_median(), 1),
                csv_opt(side.status_max(), 1),
                side.flows.map_or_else(String::new, |f| f.0.to_string()),
                side.flows.map_or_else(String::new, |f| f.1.to_string()),
                csv_u(side.failures),
                csv_u(side.resume_attempts),
                csv_opt(side.idle_cpu_pct, 2),
                if r.aborted.is_empty() {
                    "complete".to_owned()
                } else {
                    format!("aborted: {}", r.aborted.replace(',', ";"))
                }
            );
        }
    }
    s
}

/// A target's verdict for one run.
fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// `up-scale-report.txt`: the command, a table (a row per run and side),
/// the targets with a verdict per run, and why connections failed.
pub fn report(
    runs: &[Run],
    command: &str,
    settings: &Settings,
    open_files: u64,
    rss_limit: u64,
    took: Duration,
) -> String {
    let mut r = format!("command: {command}\n\n");
    let _ = writeln!(
        r,
        "== up-scale: a tiflow up pair through a NAT namespace, N connections greeted end to end, held idle {:.0} s, one more exchange each; each row a single run",
        settings.idle.as_secs_f64()
    );
    let _ = writeln!(
        r,
        "{:>6} {:>3} {:<6} {:>6} {:>6} {:>9} {:>9} {:>10} {:>10} {:>8} {:>8} {:>7} {:>16} {:>8} {:>7} {:>8} {:>10}",
        "N",
        "run",
        "side",
        "worked",
        "failed",
        "connect s",
        "greeted s",
        "RSS0 KiB",
        "RSS KiB",
        "KiB/conn",
        "threads",
        "idle %",
        "status ms med/max",
        "failures",
        "resumes",
        "close s",
        "after KiB"
    );
    for run in runs {
        for (name, side) in SIDES.iter().zip(&run.sides) {
            let _ = writeln!(
                r,
                "{:>6} {:>3} {:<6} {:>6} {:>6} {:>9.1} {:>9.1} {:>10} {:>10} {:>8.1} {:>8} {:>7} {:>16} {:>8} {:>7} {:>8} {:>10}",
                run.n,
                run.rep,
                name,
                run.worked,
                run.failed(),
                run.connect_s,
                run.greet_s,
                side.rss_start,
                side.rss_held,
                side.kib_per_connection(run.n),
                side.threads[1],
                opt(side.idle_cpu_pct, 2),
                format!(
                    "{}/{}",
                    opt(side.status_median(), 1),
                    opt(side.status_max(), 1)
                ),
                opt_u(side.failures),
                opt_u(side.resume_attempts),
                opt(run.close_s, 1),
                side.rss_after
            );
        }
    }
    let _ = writeln!(r, "\n== targets (issue 12), each line a single run");
    for run in runs {
        let label = format!("N = {} (single run {})", run.n, run.rep);
        let [c, s] = &run.sides;
        let all = run.worked == run.n && run.aborted.is_empty();
        let _ = writeln!(
            r,
            "{label} | all {} connections work after the idle time | {} of {} | {}",
            run.n,
            run.worked,
            run.n,
            verdict(all)
        );
        let counts = |f: Option<u64>, a: Option<u64>| match (f, a) {
            (Some(f), Some(a)) => format!("{f} failures, {a} resume attempts"),
            _ => "no status".into(),
        };
        let zero = |side: &SideFigures| side.failures == Some(0) && side.resume_attempts == Some(0);
        let _ = writeln!(
            r,
            "{label} | zero failures detected | client {}; server {} | {}",
            counts(c.failures, c.resume_attempts),
            counts(s.failures, s.resume_attempts),
            verdict(zero(c) && zero(s) && run.aborted.is_empty())
        );
        // Per connection asked for: when some failed, the pair held fewer
        // and the figure flatters it, so the verdict needs all of them.
        let per = |side: &SideFigures| side.kib_per_connection(run.n);
        let _ = writeln!(
            r,
            "{label} | RSS <= {GOAL_KIB_PER_CONNECTION:.0} KiB per connection per side | client {:.1} KiB; server {:.1} KiB{} | {}",
            per(c),
            per(s),
            if all {
                String::new()
            } else {
                format!(" (only {} of {} held)", run.worked, run.n)
            },
            verdict(per(c) <= GOAL_KIB_PER_CONNECTION && per(s) <= GOAL_KIB_PER_CONNECTION && all)
        );
        let status_ok = |side: &SideFigures| {
            side.status_errors == 0
                && side.status_ms.len() == STATUS_CALLS
                && side.status_max().is_some_and(|m| m < GOAL_STATUS_MS)
        };
        let status_fig = |side: &SideFigures| {
            format!(
                "max {} ms of {} calls{}",
                opt(side.status_max(), 1),
                side.status_ms.len() + side.status_errors,
                if side.status_errors > 0 {
                    format!(", {} failed", side.status_errors)
                } else {
                    String::new()
                }
            )
        };
        let _ = writeln!(
            r,
            "{label} | tiflow status answers in < {GOAL_STATUS_MS:.0} ms | client {}; server {} | {}",
            status_fig(c),
            status_fig(s),
            verdict(status_ok(c) && status_ok(s))
        );
        let after_ok =
            |side: &SideFigures| side.rss_after > 0 && side.rss_after <= side.after_limit();
        let _ = writeln!(
            r,
            "{label} | RSS after the close <= start + 10 % + 8 MiB | client {} KiB (start {}, limit {}); server {} KiB (start {}, limit {}) | {}",
            c.rss_after,
            c.rss_start,
            c.after_limit(),
            s.rss_after,
            s.rss_start,
            s.after_limit(),
            verdict(after_ok(c) && after_ok(s) && run.close_s.is_some())
        );
    }
    let _ = writeln!(r, "\n== details");
    for run in runs {
        let _ = writeln!(
            r,
            "N = {} run {}: connected {}, greeted and echoed {}, worked after idle {}; idle held {:.1} s; {}",
            run.n,
            run.rep,
            run.connected,
            run.greeted,
            run.worked,
            run.idle_s,
            if run.aborted.is_empty() {
                "complete".to_owned()
            } else {
                format!("aborted: {}", run.aborted)
            }
        );
        for (name, side) in SIDES.iter().zip(&run.sides) {
            let _ = writeln!(
                r,
                "  {name}: threads {} -> {} -> {} (start, held, after); RSS peak {} KiB; open-file limit {}; flows in status {}{}",
                side.threads[0],
                side.threads[1],
                side.threads[2],
                side.rss_peak,
                opt_u(side.open_files),
                side.flows
                    .map_or_else(|| "-".into(), |(f, ti)| format!("{f} ({ti} TI)")),
                side.status_error
                    .as_ref()
                    .map_or_else(String::new, |e| format!("; first status error: {e}"))
            );
        }
        if run.close_s.is_none() {
            let _ = writeln!(
                r,
                "  the flows did not all go within {} s of the close",
                CLOSE_WAIT.as_secs()
            );
        }
        let mut errors = run.errors.clone();
        errors.sort_by_key(|e| std::cmp::Reverse(e.1));
        for (what, count) in errors {
            let _ = writeln!(r, "  {count} x {what}");
        }
    }
    let _ = writeln!(
        r,
        "\nThis process's open-file limit {open_files}; watchdog RSS limit {} MiB per tiflow up; {} connecting threads; took {:.0} s.",
        rss_limit / 1024,
        CONNECTORS,
        took.as_secs_f64()
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_round_trip_and_are_sixteen_bytes() {
        for i in [0, 1, 9_999, 123_456_789_012] {
            assert_eq!(parse_greeting(&greeting(i)), Some(i));
        }
        let mut bad = greeting(7);
        bad[0] = b'H';
        assert_eq!(parse_greeting(&bad), None);
    }

    fn side(start: u64, held: u64, after: u64) -> SideFigures {
        SideFigures {
            rss_start: start,
            rss_held: held,
            rss_after: after,
            status_ms: vec![3.0; STATUS_CALLS],
            failures: Some(0),
            resume_attempts: Some(0),
            ..SideFigures::default()
        }
    }

    #[test]
    fn a_run_within_every_goal_is_met_and_one_over_is_missed() {
        let good = Run {
            n: 1000,
            rep: 1,
            connected: 1000,
            greeted: 1000,
            worked: 1000,
            close_s: Some(1.0),
            sides: [side(10_000, 50_000, 12_000), side(10_000, 60_000, 19_192)],
            ..Run::default()
        };
        let settings = Settings {
            connections: vec![1000],
            idle: Duration::from_secs(1),
            reps: 1,
            rss_limit_kib: None,
            keep_logs: false,
        };
        let text = report(
            std::slice::from_ref(&good),
            "x",
            &settings,
            1,
            1,
            Duration::ZERO,
        );
        let targets: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("N = 1000 (single run 1) | "))
            .collect();
        assert_eq!(targets.len(), 5, "{text}");
        assert!(targets.iter().all(|l| l.ends_with("| met")), "{text}");
        // 19,193 KiB after a 10,000 KiB start is over 11,000 + 8,192.
        let mut over = good;
        over.sides[1].rss_after = 19_193;
        over.sides[0].rss_held = 10_000 + 65 * 1000;
        over.worked = 999;
        let text = report(&[over], "x", &settings, 1, 1, Duration::ZERO);
        let missed = text.lines().filter(|l| l.ends_with("| MISSED")).count();
        assert_eq!(missed, 3, "{text}");
        let csv = csv(&[Run::default()]);
        let widths: Vec<usize> = csv.lines().map(|l| l.split(',').count()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{csv}");
    }
}
