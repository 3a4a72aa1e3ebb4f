//! `tiflow bench recovery`: how soon data flows again after a middlebox
//! fault, through a TI-flow (`tiflow up` on both hosts) and, in the same
//! repetition, over plain kernel TCP through the same middlebox.
//!
//! Owns three network namespaces (client, middlebox, server) and everything
//! in them: veth links, addresses, the middlebox's nftables table (a
//! masquerading NAT and a stateful firewall, created and deleted by this
//! module), its conntrack table, two `tiflow up` processes (this executable,
//! as `tiflow demo` runs them), and the paced writer and verifying reader
//! threads of each stream. Everything is removed on exit, on error and on
//! Ctrl-C: the processes when their guards drop, then the namespaces. It
//! never touches the root namespace, and every loop is bounded.
//!
//! ```text
//!  client ns                    middlebox ns                     server ns
//!  program -> 127.0.0.1:6000    m0 10.10.1.1                     s0 10.10.2.2
//!  tiflow up 10.0.1.1 (TUN)     nft: masquerade 10.10.1.0/24,    tiflow up 10.0.2.1 (TUN)
//!   --masquerade                 forward: replies + new SYNs      --serve 5002=127.0.0.1:5002
//!  c0 10.10.1.2 (or .3) ------> m1 10.10.2.1 (or .3) ----------> program 127.0.0.1:5002
//!  plain TCP ---------------------------------------------------> program 10.10.2.2:5001
//! ```
//!
//! Each repetition opens one TI-flow and one plain TCP connection, runs the
//! same paced stream over both (16 KiB chunks, each stamped with its sequence
//! number, the time it was written and a checksum), injects the fault, and
//! reads at the receiving program when new data arrives: `fail_to_data` from
//! the fault (the end of its commands) to the first byte of the first chunk
//! written at or after it; `restore_to_data` from the path coming back (the
//! end of the restoring commands) to the first byte read after it.
//!
//! The `no-fault` check (only when named in `--scenarios`) injects nothing:
//! it opens many TI streams through the same pair at once, half each way,
//! lets them write unpaced for a while, checks each byte-exact to its end,
//! and reads from both `tiflow up` how many failures they detected
//! meanwhile (there should be none on a healthy path).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use ti_testnet::middlebox::{self, Middlebox};
use ti_testnet::netns::{self, NetNs};
use ti_testnet::topology::{Cidr, Line, LinePlan};

use super::stats::summarize;
use super::{BenchArgs, BenchError, check_interrupted};
use crate::control;
use crate::demo::UpProcess;
use crate::host;

/// Bytes per stamped chunk.
pub const CHUNK: usize = 16 * 1024;
/// Header of a chunk: magic, sequence number, time written (ns), checksum.
const HEADER: usize = 32;
const MAGIC: [u8; 8] = *b"tiflowRC";

/// Default repetitions per scenario and direction.
pub const DEFAULT_REPS: usize = 10;
/// Default rate of each stream, MiB/s.
pub const DEFAULT_RATE_MIB: f64 = 8.0;
/// Default wait for plain TCP after the fault (or restore), seconds.
pub const DEFAULT_PLAIN_WAIT: f64 = 10.0;
/// Default parallel streams of the no-fault check.
pub const DEFAULT_NO_FAULT_FLOWS: usize = 100;
/// Default length of the no-fault check, seconds.
pub const DEFAULT_NO_FAULT_SECS: f64 = 60.0;
/// Most parallel streams of the no-fault check (each holds four sockets
/// here and a carried connection in each `tiflow up`).
pub const MAX_NO_FAULT_FLOWS: usize = 200;

/// The nftables table of the middlebox.
const TABLE: &str = "tiflow_bench";
/// The middlebox: a home router. NAT: masquerade the client subnet out of
/// m1. Firewall: replies, and new connections from the client side that
/// start with a SYN; everything else (mid-stream packets of connections it
/// does not know, anything unsolicited from outside) is dropped, also when
/// addressed to the router itself. The `blackhole` chain is empty until a
/// blackhole scenario puts a `drop` in it.
const RULESET: &str = r#"table ip tiflow_bench {
    chain nat_postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "m1" ip saddr 10.10.1.0/24 masquerade
    }
    chain blackhole {
        type filter hook forward priority -10; policy accept;
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "m0" oifname "m1" ct state new tcp flags & (fin|syn|rst|ack) == syn accept
        iifname "m0" oifname "m1" ct state new meta l4proto != tcp accept
    }
    chain input {
        type filter hook input priority filter; policy drop;
        iifname "lo" accept
        ct state established,related accept
        iifname "m0" accept
    }
}
"#;

/// The client host's outside addresses (it alternates between them).
const CLIENT_ADDRS: [&str; 2] = ["10.10.1.2", "10.10.1.3"];
/// The middlebox's inside address (the client's gateway).
const MIDDLEBOX_INSIDE: &str = "10.10.1.1";
/// The NAT's public addresses (it alternates between them).
const NAT_ADDRS: [&str; 2] = ["10.10.2.1", "10.10.2.3"];
/// The server host.
const SERVER: &str = "10.10.2.2";
/// The plain TCP receiver/sender in the server.
const PLAIN_PORT: u16 = 5001;
/// The TI port: the server's stack serves it to 127.0.0.1:TI_PORT.
const TI_PORT: u16 = 5002;
/// The client's `tiflow up --forward` listener.
const FORWARD_PORT: u16 = 6000;

/// Read/write timeout of the stream threads (their loops check flags this often).
const IO_TICK: Duration = Duration::from_millis(20);
/// Most a paced writer catches up after it was blocked.
const MAX_CATCH_UP: Duration = Duration::from_millis(100);
/// Longest a connection or an accept may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the warm-up waits for the first chunk of each stream.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a TI-flow may take to carry data again (from the fault or the
/// restore) before the repetition counts it as failed.
const TI_WAIT: Duration = Duration::from_secs(30);
/// After the writer stops, longest the receiver may take to read to the end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Main loop tick.
const TICK: Duration = Duration::from_millis(5);

/// Help shown after `tiflow bench`'s options.
pub const RECOVERY_HELP: &str = "\
recovery: builds client / middlebox / server namespaces (the middlebox is an
nftables masquerading NAT and stateful firewall), starts `tiflow up` in the
client (--forward, --masquerade) and the server (--serve, --expose), and for
each scenario and direction runs a paced stream (8 MiB/s, 16 KiB stamped
chunks) through a TI-flow and, side by side, over plain kernel TCP through the
same middlebox; then injects the fault and measures, at the receiving program,
failure to data and path-back to data, whether plain TCP survived, and whether
the TI stream was byte-exact. Scenarios: nat-flush, firewall-flush, rebuilt-1s,
blackhole-1s, blackhole-30s, client-address-change. Writes recovery.csv,
recovery-summary.csv, recovery-report.txt and recovery.svg. Needs root,
iproute2, nftables, conntrack and iptables.

no-fault (only when named in --scenarios): --no-fault-flows streams (100) at
once through the same pair, half each way, write unpaced for --no-fault-secs
(60 s) through the healthy middlebox; every stream must be byte-exact to its
end, and both `tiflow up` must detect zero failures. Adds
recovery-nofault.csv and a `== no fault` section to the report.

Exit codes:
  0  success
  1  runtime error (not root, missing command, a stream failed to start,
     interrupted)
  2  usage error (bad arguments)";

/// A fault of the middlebox (or of the client's address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    /// conntrack flushed and the NAT's public address moves to another one.
    NatFlush,
    /// conntrack flushed only: the firewall drops mid-stream packets.
    FirewallFlush,
    /// The middlebox loses everything (nft table, conntrack, links down) for
    /// 1 s, then comes back.
    Rebuilt1s,
    /// Every forwarded packet is dropped for 1 s.
    Blackhole1s,
    /// Every forwarded packet is dropped for 30 s.
    Blackhole30s,
    /// The client host's outside address changes (its masquerade gives the
    /// new source; the stack's own address stays).
    ClientAddressChange,
    /// No fault at all: many parallel bulk TI streams for a while, to show
    /// that failure detection never fires on a healthy path under load. Not
    /// in the default set ([`Scenario::ALL`]); asked for by name.
    NoFault,
}

impl Scenario {
    /// Every fault scenario, in run order: the default set.
    pub const ALL: [Scenario; 6] = [
        Scenario::NatFlush,
        Scenario::FirewallFlush,
        Scenario::Rebuilt1s,
        Scenario::Blackhole1s,
        Scenario::Blackhole30s,
        Scenario::ClientAddressChange,
    ];

    /// Every scenario `--scenarios` accepts: the fault scenarios, then
    /// [`Scenario::NoFault`].
    pub const NAMED: [Scenario; 7] = [
        Scenario::NatFlush,
        Scenario::FirewallFlush,
        Scenario::Rebuilt1s,
        Scenario::Blackhole1s,
        Scenario::Blackhole30s,
        Scenario::ClientAddressChange,
        Scenario::NoFault,
    ];

    /// Its name on the command line and in the files.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::NatFlush => "nat-flush",
            Scenario::FirewallFlush => "firewall-flush",
            Scenario::Rebuilt1s => "rebuilt-1s",
            Scenario::Blackhole1s => "blackhole-1s",
            Scenario::Blackhole30s => "blackhole-30s",
            Scenario::ClientAddressChange => "client-address-change",
            Scenario::NoFault => "no-fault",
        }
    }

    /// Whether it injects a fault (every scenario but [`Scenario::NoFault`]).
    pub fn is_fault(self) -> bool {
        self != Scenario::NoFault
    }

    /// How long the path is gone (outage scenarios).
    pub fn outage(self) -> Option<Duration> {
        match self {
            Scenario::Rebuilt1s | Scenario::Blackhole1s => Some(Duration::from_secs(1)),
            Scenario::Blackhole30s => Some(Duration::from_secs(30)),
            _ => None,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Scenario::NatFlush => {
                "conntrack -F in the middlebox and its public address moves (10.10.2.1 <-> 10.10.2.3)"
            }
            Scenario::FirewallFlush => "conntrack -F in the middlebox only",
            Scenario::Rebuilt1s => {
                "links down, nft table deleted, conntrack -F; 1 s later table recreated, links up"
            }
            Scenario::Blackhole1s => "the middlebox drops every forwarded packet for 1 s",
            Scenario::Blackhole30s => "the middlebox drops every forwarded packet for 30 s",
            Scenario::ClientAddressChange => {
                "the client's outside address moves (10.10.1.2 <-> 10.10.1.3)"
            }
            Scenario::NoFault => {
                "no fault: parallel unpaced TI streams, half each way, then both `tiflow up` asked for their failures"
            }
        }
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::NAMED
            .into_iter()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown scenario {s:?} (one of {})",
                    Scenario::NAMED.map(Scenario::name).join(", ")
                )
            })
    }
}

/// A scenario on the command line, with its own repetitions if given
/// (`blackhole-30s:3`; for `no-fault`, its number of runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScenarioSpec {
    /// The scenario.
    pub scenario: Scenario,
    /// Its repetitions per direction, overriding `--reps` (`no-fault`: its
    /// runs, 1 if not given; `--reps` does not apply to it).
    pub reps: Option<usize>,
}

/// Parses `NAME` or `NAME:REPS` (for clap).
pub fn parse_scenario(s: &str) -> Result<ScenarioSpec, String> {
    let (name, reps) = match s.split_once(':') {
        Some((name, reps)) => {
            let reps = reps
                .parse::<usize>()
                .ok()
                .filter(|r| (1..=1000).contains(r))
                .ok_or_else(|| format!("{reps:?} is not a number of repetitions (1-1000)"))?;
            (name, Some(reps))
        }
        None => (s, None),
    };
    Ok(ScenarioSpec {
        scenario: name.trim().parse()?,
        reps,
    })
}

/// Parses a stream rate in MiB/s (for clap).
pub fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=200.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a rate in MiB/s (0.1-200)")),
    }
}

/// Parses the number of parallel streams of the no-fault check (for clap).
pub fn parse_flows(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_NO_FAULT_FLOWS).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a number of streams (1-{MAX_NO_FAULT_FLOWS})"
        )),
    }
}

/// Parses the length of the no-fault check in seconds (for clap).
pub fn parse_secs(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('s').parse::<f64>() {
        Ok(v) if (1.0..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a length in seconds (1-3600)")),
    }
}

/// Parses a wait in seconds (for clap).
pub fn parse_wait(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('s').parse::<f64>() {
        Ok(v) if (0.5..=600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a wait in seconds (0.5-600)")),
    }
}

/// Which program writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    /// The client program writes, the server program reads.
    ClientToServer,
    /// The server program writes, the client program reads.
    ServerToClient,
}

impl Dir {
    /// Both, in run order.
    pub const ALL: [Dir; 2] = [Dir::ClientToServer, Dir::ServerToClient];

    /// Its name in the files.
    pub fn name(self) -> &'static str {
        match self {
            Dir::ClientToServer => "client-to-server",
            Dir::ServerToClient => "server-to-client",
        }
    }
}

/// What carries the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    /// Kernel TCP carried by a TI-flow between the two `tiflow up`.
    Ti,
    /// Plain kernel TCP straight through the middlebox (the baseline).
    Plain,
}

impl Transport {
    /// Its name in the files.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ti => "ti",
            Transport::Plain => "plain",
        }
    }
}

/// The settings of a recovery run, defaults and `--quick` applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Scenarios and their repetitions per direction, in run order.
    pub runs: Vec<(Scenario, usize)>,
    /// Bytes per second of each stream.
    pub rate: f64,
    /// How long plain TCP may take to carry data again before it counts as
    /// failed (from the fault, or from the restore in outage scenarios).
    pub plain_wait: Duration,
    /// Streaming before the fault.
    pub warmup: Duration,
    /// Streaming after the TI-flow carried data again.
    pub tail: Duration,
    /// No-fault check: parallel streams per run.
    pub no_fault_flows: usize,
    /// No-fault check: how long the streams write.
    pub no_fault_secs: Duration,
}

impl Settings {
    /// Resolves defaults: explicit options, then `--quick` (2 repetitions, no
    /// blackhole-30s, plain TCP waited for 2 s, no-fault 10 streams for 5 s),
    /// then the defaults. `no-fault` runs once unless `no-fault:N` says
    /// otherwise (`--reps` counts per direction, which it has not).
    pub fn from_args(args: &BenchArgs) -> Settings {
        let reps = args
            .reps
            .unwrap_or(if args.quick { 2 } else { DEFAULT_REPS })
            .max(1);
        let runs = match &args.scenarios {
            Some(specs) => {
                let mut seen = BTreeSet::new();
                specs
                    .iter()
                    .filter(|s| seen.insert(s.scenario))
                    .map(|s| {
                        let default = if s.scenario.is_fault() { reps } else { 1 };
                        (s.scenario, s.reps.unwrap_or(default))
                    })
                    .collect()
            }
            None => Scenario::ALL
                .into_iter()
                .filter(|s| !(args.quick && *s == Scenario::Blackhole30s))
                .map(|s| (s, reps))
                .collect(),
        };
        let plain_wait =
            args.plain_wait
                .unwrap_or(if args.quick { 2.0 } else { DEFAULT_PLAIN_WAIT });
        Settings {
            runs,
            rate: args.rate.unwrap_or(DEFAULT_RATE_MIB) * 1024.0 * 1024.0,
            plain_wait: Duration::from_secs_f64(plain_wait),
            warmup: Duration::from_millis(if args.quick { 500 } else { 1000 }),
            tail: Duration::from_millis(300),
            no_fault_flows: args.no_fault_flows.unwrap_or(if args.quick {
                10
            } else {
                DEFAULT_NO_FAULT_FLOWS
            }),
            no_fault_secs: Duration::from_secs_f64(args.no_fault_secs.unwrap_or(if args.quick {
                5.0
            } else {
                DEFAULT_NO_FAULT_SECS
            })),
        }
    }

    /// The fault scenarios to run and their repetitions per direction.
    fn fault_runs(&self) -> impl Iterator<Item = (Scenario, usize)> + '_ {
        self.runs.iter().copied().filter(|(s, _)| s.is_fault())
    }

    /// Runs of the no-fault check (0: not asked for).
    fn no_fault_runs(&self) -> usize {
        self.runs
            .iter()
            .filter(|(s, _)| !s.is_fault())
            .map(|(_, n)| n)
            .sum()
    }
}

/// One transport's result in one repetition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The scenario.
    pub scenario: Scenario,
    /// Who wrote.
    pub dir: Dir,
    /// TI-flow or plain TCP.
    pub transport: Transport,
    /// Repetition, from 1.
    pub rep: usize,
    /// Fault to the first byte of the first chunk written at or after it, ms.
    pub fail_to_data: Option<f64>,
    /// Path back to the first byte read after it, ms (outage scenarios).
    pub restore_to_data: Option<f64>,
    /// Data flowed again within the bounded wait, without an error.
    pub survived: bool,
    /// Every chunk arrived once, in order, intact, and both SHA-256 match.
    pub byte_exact: bool,
    /// Resumes of the TI-flow (client's `tiflow up`), if it could tell.
    pub resumes: Option<u64>,
    /// How long the fault's commands took, ms.
    pub fault_cmd_ms: f64,
    /// What happened, one word (`recovered`, `no-data`, `reset`, ...).
    pub outcome: String,
}

// ---------------------------------------------------------------------------
// The network.

/// The three namespaces and the middlebox's state. Dropped after the nft
/// table is deleted.
struct Net {
    line: Line,
    /// Index of the client's current address in [`CLIENT_ADDRS`].
    client_addr: usize,
    /// Index of the NAT's current address in [`NAT_ADDRS`].
    nat_addr: usize,
}

impl Net {
    fn build() -> Result<Net, BenchError> {
        let addr = |a: &str| a.parse::<Ipv4Addr>().map(Cidr::slash24);
        let parse_err = |e: std::net::AddrParseError| BenchError::Check(e.to_string());
        let plan = LinePlan {
            client: addr(CLIENT_ADDRS[0]).map_err(parse_err)?,
            inside: addr(MIDDLEBOX_INSIDE).map_err(parse_err)?,
            outside: addr(NAT_ADDRS[0]).map_err(parse_err)?,
            outside_secondary: &[],
            server: addr(SERVER).map_err(parse_err)?,
            // The server needs no route: the NAT's addresses are on its link.
            server_gateway: None,
        };
        let line = Line::build("tibench", &plan, &Middlebox::Nftables(RULESET.to_owned()))?;
        Ok(Net {
            line,
            client_addr: 0,
            nat_addr: 0,
        })
    }

    fn load_ruleset(&self) -> Result<(), BenchError> {
        Ok(middlebox::nft_load(&self.line.middlebox, RULESET)?)
    }

    fn nft(&self, args: &[&str]) -> Result<(), BenchError> {
        Ok(middlebox::nft(&self.line.middlebox, args)?)
    }

    fn flush_conntrack(&self) -> Result<(), BenchError> {
        Ok(middlebox::conntrack_flush(&self.line.middlebox)?)
    }

    /// Injects the fault of `scenario`.
    fn fault(&mut self, scenario: Scenario) -> Result<(), BenchError> {
        match scenario {
            Scenario::NatFlush => {
                let old = NAT_ADDRS[self.nat_addr];
                let new = NAT_ADDRS[1 - self.nat_addr];
                let mb = &self.line.middlebox;
                mb.add_addr("m1", &format!("{new}/24"))?;
                mb.ip(&["addr", "del", &format!("{old}/24"), "dev", "m1"])?;
                self.nat_addr = 1 - self.nat_addr;
                self.flush_conntrack()
            }
            Scenario::FirewallFlush => self.flush_conntrack(),
            Scenario::Rebuilt1s => {
                // Links first, so nothing passes a middlebox without rules.
                self.line
                    .middlebox
                    .ip(&["link", "set", "dev", "m0", "down"])?;
                self.line
                    .middlebox
                    .ip(&["link", "set", "dev", "m1", "down"])?;
                self.nft(&["delete", "table", "ip", TABLE])?;
                self.flush_conntrack()
            }
            Scenario::Blackhole1s | Scenario::Blackhole30s => {
                self.nft(&["add", "rule", "ip", TABLE, "blackhole", "drop"])
            }
            Scenario::ClientAddressChange => {
                let old = CLIENT_ADDRS[self.client_addr];
                let new = CLIENT_ADDRS[1 - self.client_addr];
                let c = &self.line.client;
                c.add_addr("c0", &format!("{new}/24"))?;
                c.ip(&["addr", "del", &format!("{old}/24"), "dev", "c0"])?;
                self.client_addr = 1 - self.client_addr;
                // Promotion keeps it, but make sure the default route is there.
                c.ip(&["route", "replace", "default", "via", MIDDLEBOX_INSIDE])?;
                Ok(())
            }
            Scenario::NoFault => Ok(()),
        }
    }

    /// Brings the path back (outage scenarios).
    fn restore(&mut self, scenario: Scenario) -> Result<(), BenchError> {
        match scenario {
            Scenario::Rebuilt1s => {
                self.load_ruleset()?;
                self.line.middlebox.up("m0")?;
                self.line.middlebox.up("m1")?;
                Ok(())
            }
            Scenario::Blackhole1s | Scenario::Blackhole30s => {
                self.nft(&["flush", "chain", "ip", TABLE, "blackhole"])
            }
            _ => Ok(()),
        }
    }

    /// Best effort after an interruption mid-fault: the path is back.
    fn heal(&mut self) {
        let _ = self.nft(&["flush", "chain", "ip", TABLE, "blackhole"]);
        let _ = self.line.middlebox.up("m0");
        let _ = self.line.middlebox.up("m1");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // The table is ours: delete it (the namespaces follow).
        let _ = self
            .line
            .middlebox
            .run(&["nft", "delete", "table", "ip", TABLE]);
    }
}

/// A non-blocking kernel listener on `addr` inside `ns`.
pub(super) fn listen_in(ns: &NetNs, addr: &str) -> Result<TcpListener, BenchError> {
    let listener = ns
        .enter(|| TcpListener::bind(addr))?
        .map_err(|e| BenchError::io(format!("listen on {addr} in {}", ns.name()), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| BenchError::io("make a listener non-blocking", e))?;
    Ok(listener)
}

fn connect_in(ns: &NetNs, addr: SocketAddr) -> Result<TcpStream, BenchError> {
    ns.enter(|| TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT))?
        .map_err(|e| BenchError::io(format!("connect to {addr} in {}", ns.name()), e))
}

/// Accepts one connection within [`CONNECT_TIMEOUT`].
fn accept_bounded(listener: &TcpListener, what: &str) -> Result<TcpStream, BenchError> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        check_interrupted()?;
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)
                    .map_err(|e| BenchError::io("make a socket blocking", e))?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(BenchError::Check(format!(
                        "no {what} connection arrived in {CONNECT_TIMEOUT:?}"
                    )));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(BenchError::io(format!("accept the {what} connection"), e)),
        }
    }
}

// ---------------------------------------------------------------------------
// The stamped stream.

fn ns_since(epoch: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(epoch).as_nanos() as u64
}

/// Fills `out` with the payload of chunk `seq` (xorshift64, seeded by it).
fn pattern(seq: u64, out: &mut [u8]) {
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x7469_666c_6f77_0001;
    for word in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
    }
}

/// A 64-bit checksum of `parts`, word by word (FNV-style multiply-xor).
fn checksum(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for word in part.chunks(8) {
            let mut w = [0u8; 8];
            w[..word.len()].copy_from_slice(word);
            h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x0000_0100_0000_01b3);
            h ^= h >> 29;
        }
    }
    h
}

/// Writes chunk `seq`, stamped `sent_ns`, into `buf` (`CHUNK` bytes).
fn make_chunk(buf: &mut [u8], seq: u64, sent_ns: u64) {
    buf[..8].copy_from_slice(&MAGIC);
    buf[8..16].copy_from_slice(&seq.to_be_bytes());
    buf[16..24].copy_from_slice(&sent_ns.to_be_bytes());
    pattern(seq, &mut buf[HEADER..]);
    let sum = checksum(&[&buf[..24], &buf[HEADER..]]);
    buf[24..32].copy_from_slice(&sum.to_be_bytes());
}

fn be_u64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_be_bytes(w)
}

/// Checks a received chunk: magic, the expected sequence number, checksum
/// and payload. Returns its stamp.
fn check_chunk(buf: &[u8], expected: u64, scratch: &mut [u8]) -> Result<u64, String> {
    if buf[..8] != MAGIC {
        return Err(format!("chunk {expected}: bad magic (misaligned stream)"));
    }
    let seq = be_u64(&buf[8..16]);
    if seq != expected {
        return Err(format!(
            "chunk {expected}: got chunk {seq} (lost, repeated or reordered)"
        ));
    }
    if checksum(&[&buf[..24], &buf[HEADER..]]) != be_u64(&buf[24..32]) {
        return Err(format!("chunk {seq}: checksum mismatch"));
    }
    pattern(seq, scratch);
    if buf[HEADER..] != scratch[..] {
        return Err(format!("chunk {seq}: wrong payload"));
    }
    Ok(be_u64(&buf[16..24]))
}

/// State shared by the main loop and one stream's two threads.
#[derive(Debug)]
struct Shared {
    /// Finish the current chunk, then end the stream (FIN).
    stop: AtomicBool,
    /// End now.
    abort: AtomicBool,
    /// When the fault was injected (ns since the epoch), `u64::MAX` before.
    fault_ns: AtomicU64,
    /// When the first chunk written at or after the fault arrived; 0 before.
    recovered_ns: AtomicU64,
    /// When the receiver last read data (ns since the epoch).
    last_read_ns: AtomicU64,
    /// Complete chunks received.
    chunks: AtomicU64,
    /// An end saw an error or a corrupt chunk.
    failed: AtomicBool,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            fault_ns: AtomicU64::new(u64::MAX),
            recovered_ns: AtomicU64::new(0),
            last_read_ns: AtomicU64::new(0),
            chunks: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        }
    }
}

/// What the writing program did.
#[derive(Debug, Default)]
struct WriterEnd {
    chunks: u64,
    bytes: u64,
    sha: [u8; 32],
    error: Option<String>,
}

/// What the reading program saw.
#[derive(Debug, Default)]
struct ReaderEnd {
    /// Each read: (ns since the epoch, bytes received so far).
    reads: Vec<(u64, u64)>,
    /// The stamp of each complete, intact chunk, in order.
    stamps: Vec<u64>,
    bytes: u64,
    sha: [u8; 32],
    eof: bool,
    error: Option<String>,
    /// The first chunk that was not the next one, intact.
    corrupt: Option<String>,
}

fn describe_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset => "reset".into(),
        io::ErrorKind::BrokenPipe => "broken-pipe".into(),
        io::ErrorKind::ConnectionAborted => "aborted".into(),
        io::ErrorKind::TimedOut => "timed-out".into(),
        _ => format!("{e}").replace([',', ' '], "-"),
    }
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// The writing program: paced, a chunk every `CHUNK / rate` seconds
/// (`rate` in bytes per second), or, with no rate, chunks back to back as
/// fast as the connection takes them (bulk).
fn writer(mut s: TcpStream, epoch: Instant, rate: Option<f64>, shared: Arc<Shared>) -> WriterEnd {
    let _ = s.set_write_timeout(Some(IO_TICK));
    let _ = s.set_nodelay(true);
    let interval = rate.map(|rate| Duration::from_secs_f64(CHUNK as f64 / rate));
    let mut end = WriterEnd::default();
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut next = Instant::now();
    'chunks: while !shared.abort.load(Ordering::Acquire) && !shared.stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if interval.is_some() {
            if now < next {
                std::thread::sleep((next - now).min(IO_TICK));
                continue;
            }
            if now.duration_since(next) > MAX_CATCH_UP {
                next = now.checked_sub(MAX_CATCH_UP).unwrap_or(now);
            }
        }
        make_chunk(&mut buf, end.chunks, ns_since(epoch, now));
        let mut off = 0;
        while off < CHUNK {
            if shared.abort.load(Ordering::Acquire) {
                break 'chunks;
            }
            match s.write(&buf[off..]) {
                Ok(0) => {
                    end.error = Some("closed".into());
                    break 'chunks;
                }
                Ok(n) => {
                    sha.update(&buf[off..off + n]);
                    off += n;
                    end.bytes += n as u64;
                }
                Err(e) if transient(&e) => {}
                Err(e) => {
                    end.error = Some(describe_error(&e));
                    break 'chunks;
                }
            }
        }
        end.chunks += 1;
        if let Some(interval) = interval {
            next += interval;
        }
    }
    if end.error.is_some() {
        shared.failed.store(true, Ordering::Release);
    } else if !shared.abort.load(Ordering::Acquire) {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    end.sha = sha.finalize().into();
    end
}

/// The reading program: verifies each chunk and logs when data arrived.
fn reader(mut s: TcpStream, epoch: Instant, shared: Arc<Shared>) -> ReaderEnd {
    let _ = s.set_read_timeout(Some(IO_TICK));
    let mut end = ReaderEnd::default();
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut chunk = vec![0u8; CHUNK];
    let mut scratch = vec![0u8; CHUNK - HEADER];
    let mut fill = 0;
    while !shared.abort.load(Ordering::Acquire) {
        let n = match s.read(&mut buf) {
            Ok(0) => {
                end.eof = true;
                break;
            }
            Ok(n) => n,
            Err(e) if transient(&e) => continue,
            Err(e) => {
                end.error = Some(describe_error(&e));
                shared.failed.store(true, Ordering::Release);
                break;
            }
        };
        let t = ns_since(epoch, Instant::now());
        end.bytes += n as u64;
        end.reads.push((t, end.bytes));
        shared.last_read_ns.store(t, Ordering::Release);
        sha.update(&buf[..n]);
        if end.corrupt.is_some() {
            continue;
        }
        let mut data = &buf[..n];
        while !data.is_empty() {
            let take = (CHUNK - fill).min(data.len());
            chunk[fill..fill + take].copy_from_slice(&data[..take]);
            fill += take;
            data = &data[take..];
            if fill < CHUNK {
                break;
            }
            fill = 0;
            match check_chunk(&chunk, end.stamps.len() as u64, &mut scratch) {
                Ok(stamp) => {
                    end.stamps.push(stamp);
                    shared
                        .chunks
                        .store(end.stamps.len() as u64, Ordering::Release);
                    if stamp >= shared.fault_ns.load(Ordering::Acquire) {
                        let _ = shared.recovered_ns.compare_exchange(
                            0,
                            t,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        );
                    }
                }
                Err(why) => {
                    end.corrupt = Some(why);
                    shared.failed.store(true, Ordering::Release);
                    break;
                }
            }
        }
    }
    if end.corrupt.is_none() && fill != 0 && end.eof {
        end.corrupt = Some(format!(
            "the stream ended inside chunk {}",
            end.stamps.len()
        ));
    }
    end.sha = sha.finalize().into();
    end
}

impl ReaderEnd {
    /// When the first byte of the first chunk stamped at or after `t` was
    /// read.
    fn first_chunk_after(&self, t: u64) -> Option<u64> {
        let k = self.stamps.iter().position(|&s| s >= t)? as u64;
        let offset = k * CHUNK as u64;
        self.reads.iter().find(|r| r.1 > offset).map(|r| r.0)
    }

    /// When the first read after `t` returned.
    fn first_read_after(&self, t: u64) -> Option<u64> {
        self.reads.iter().find(|r| r.0 > t).map(|r| r.0)
    }
}

/// One stream: its writer and reader threads, and clones of both sockets
/// (to reset them on abort). Dropping it aborts and joins.
struct Stream {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<WriterEnd>>,
    reader: Option<JoinHandle<ReaderEnd>>,
    sockets: Vec<TcpStream>,
}

impl Stream {
    /// Starts the writer on `tx` (paced at `rate` bytes per second, or bulk
    /// with `None`) and the reader on `rx`.
    fn start(
        tx: TcpStream,
        rx: TcpStream,
        epoch: Instant,
        rate: Option<f64>,
    ) -> Result<Stream, BenchError> {
        let shared = Arc::new(Shared::default());
        let clone = |s: &TcpStream| {
            s.try_clone()
                .map_err(|e| BenchError::io("clone a socket", e))
        };
        let sockets = vec![clone(&tx)?, clone(&rx)?];
        let thread = |e| BenchError::io("start a stream thread", e);
        let w = shared.clone();
        let writer = std::thread::Builder::new()
            .name("recovery-writer".into())
            .spawn(move || writer(tx, epoch, rate, w))
            .map_err(thread)?;
        let mut stream = Stream {
            shared: shared.clone(),
            writer: Some(writer),
            reader: None,
            sockets,
        };
        let r = shared;
        stream.reader = Some(
            std::thread::Builder::new()
                .name("recovery-reader".into())
                .spawn(move || reader(rx, epoch, r))
                .map_err(thread)?,
        );
        Ok(stream)
    }

    fn recovered_ns(&self) -> Option<u64> {
        match self.shared.recovered_ns.load(Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }

    fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// Ends it now: both threads stop, both sockets are reset (`SO_LINGER`
    /// zero), so no orphan keeps retransmitting into the next repetition.
    fn abort(&self) {
        self.shared.abort.store(true, Ordering::Release);
        for s in &self.sockets {
            let _ = rustix::net::sockopt::set_socket_linger(s, Some(Duration::ZERO));
        }
    }

    /// Asks the writer to finish its chunk and end the stream (FIN); the
    /// reader then reads to the end.
    fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
    }

    /// Both threads have ended.
    fn is_finished(&self) -> bool {
        self.writer.as_ref().is_none_or(JoinHandle::is_finished)
            && self.reader.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Joins both threads, aborting them first unless they have ended.
    fn join(mut self) -> (WriterEnd, ReaderEnd) {
        if !self.is_finished() {
            self.abort();
        }
        let w = self.writer.take().and_then(|h| h.join().ok());
        let r = self.reader.take().and_then(|h| h.join().ok());
        (w.unwrap_or_default(), r.unwrap_or_default())
    }

    /// Ends it: gracefully (the writer finishes its chunk and sends FIN, the
    /// reader reads to the end, both bounded) or by [`Stream::abort`].
    /// `stuck` runs when a graceful end does not complete in time, before
    /// the abort (to record what the two `tiflow up` say).
    fn finish(self, graceful: bool, stuck: impl FnOnce()) -> (WriterEnd, ReaderEnd) {
        if graceful {
            self.stop();
            let deadline = Instant::now() + DRAIN_TIMEOUT;
            while Instant::now() < deadline && !self.is_finished() && check_interrupted().is_ok() {
                std::thread::sleep(TICK);
            }
        }
        let finished = self.is_finished();
        if graceful && !finished {
            stuck();
        }
        if !graceful {
            self.abort();
        }
        self.join()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.writer.is_none() && self.reader.is_none() {
            return;
        }
        self.abort();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

/// What a stream that is not byte-exact delivered: `wrote N chunks (B),
/// read M chunks (B), end of stream, <error or corruption>`.
fn shortfall(w: &WriterEnd, r: &ReaderEnd) -> String {
    let error = |e: &Option<String>| {
        e.as_ref()
            .map_or_else(String::new, |e| format!(", error {e}"))
    };
    format!(
        "wrote {} chunks ({} B{}), read {} chunks ({} B), {}{}{}",
        w.chunks,
        w.bytes,
        error(&w.error),
        r.stamps.len(),
        r.bytes,
        if r.eof {
            "end of stream"
        } else {
            "no end of stream"
        },
        error(&r.error),
        r.corrupt
            .as_ref()
            .map_or_else(String::new, |e| format!(", {e}")),
    )
}

fn byte_exact(w: &WriterEnd, r: &ReaderEnd) -> bool {
    w.error.is_none()
        && r.error.is_none()
        && r.corrupt.is_none()
        && r.eof
        && w.chunks > 0
        && r.stamps.len() as u64 == w.chunks
        && r.bytes == w.bytes
        && r.sha == w.sha
}

// ---------------------------------------------------------------------------
// A run.

/// Everything a repetition needs.
struct Bench<'a> {
    net: &'a mut Net,
    client_up: &'a UpProcess,
    server_up: &'a UpProcess,
    plain_listener: &'a TcpListener,
    ti_listener: &'a TcpListener,
    settings: &'a Settings,
    epoch: Instant,
}

/// What the client's `tiflow up` says about the flow of local port `port`.
fn flow_of(control_path: &Path, port: u16) -> Option<control::FlowStatus> {
    let tail = format!("<- 127.0.0.1:{port}");
    control::status(control_path)
        .ok()?
        .flows
        .into_iter()
        .find(|f| f.via.ends_with(&tail))
}

fn ms_between(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1e6
}

impl Bench<'_> {
    /// The TI-flow of local port `port` as both `tiflow up` see it now.
    fn flow_states(&self, port: u16) -> String {
        let show = |f: &control::FlowStatus| {
            format!(
                "{} {}, sent {} B, received {} B, {} resumes ({} attempts), resent {} B",
                f.mode,
                if f.attached { "attached" } else { "detached" },
                f.sent,
                f.received,
                f.resumes,
                f.resume_attempts,
                f.resent
            )
        };
        let Some(client) = flow_of(&self.client_up.control, port) else {
            return "the client's tiflow up no longer lists the flow".into();
        };
        let server = control::status(&self.server_up.control).ok().and_then(|r| {
            r.flows
                .into_iter()
                .find(|f| f.tifid.is_some() && f.tifid == client.tifid)
        });
        format!(
            "client: {}; server: {}",
            show(&client),
            server.as_ref().map_or_else(|| "no such flow".into(), show)
        )
    }

    /// One repetition: returns the TI sample and the plain one.
    fn rep(&mut self, scenario: Scenario, dir: Dir, rep: usize) -> Result<[Sample; 2], BenchError> {
        let epoch = self.epoch;
        let rate = self.settings.rate;
        // Both connections: the client program connects, the server program
        // accepts; then whoever writes in this direction writes.
        let forward = SocketAddr::from(([127, 0, 0, 1], FORWARD_PORT));
        let plain_addr: SocketAddr = format!("{SERVER}:{PLAIN_PORT}")
            .parse()
            .map_err(|_| BenchError::Check("bad plain address".into()))?;
        let ti_client = connect_in(&self.net.line.client, forward)?;
        let ti_port = ti_client
            .local_addr()
            .map_err(|e| BenchError::io("local address", e))?
            .port();
        let plain_client = connect_in(&self.net.line.client, plain_addr)?;
        let ti_server = accept_bounded(self.ti_listener, "TI-flow (from the server's tiflow up)")?;
        let plain_server = accept_bounded(self.plain_listener, "plain TCP")?;
        let (ti_tx, ti_rx, plain_tx, plain_rx) = match dir {
            Dir::ClientToServer => (ti_client, ti_server, plain_client, plain_server),
            Dir::ServerToClient => (ti_server, ti_client, plain_server, plain_client),
        };
        let ti = Stream::start(ti_tx, ti_rx, epoch, Some(rate))?;
        let plain = Stream::start(plain_tx, plain_rx, epoch, Some(rate))?;

        // Warm up: both streams deliver.
        let started = Instant::now();
        loop {
            check_interrupted()?;
            let flowing = |s: &Stream| s.shared.chunks.load(Ordering::Acquire) > 0;
            if started.elapsed() >= self.settings.warmup && flowing(&ti) && flowing(&plain) {
                break;
            }
            if ti.failed() || plain.failed() || started.elapsed() > WARMUP_TIMEOUT {
                return Err(BenchError::Check(format!(
                    "{} {} rep {rep}: the streams did not start (TI chunks {}, plain chunks {}); \
                     logs of the two `tiflow up` are kept",
                    scenario.name(),
                    dir.name(),
                    ti.shared.chunks.load(Ordering::Acquire),
                    plain.shared.chunks.load(Ordering::Acquire)
                )));
            }
            std::thread::sleep(TICK);
        }
        let mode = flow_of(&self.client_up.control, ti_port).map(|f| f.mode);

        // The fault, and the restore after an outage.
        let fault_start = Instant::now();
        let result = self.fault_and_wait(scenario, &ti, &plain);
        if result.is_err() {
            self.net.heal();
        }
        let (fault_ns, restore_ns) = result?;
        let fault_cmd_ms = ms_between(ns_since(epoch, fault_start), fault_ns);
        let reference = restore_ns.unwrap_or(fault_ns);
        let recovered = |s: &Stream| match restore_ns {
            Some(r) => s.shared.last_read_ns.load(Ordering::Acquire) > r,
            None => s.recovered_ns().is_some(),
        };

        // Wait (bounded) for data through each; plain TCP that is not back
        // within its wait is reset at once.
        let ti_deadline = reference + TI_WAIT.as_nanos() as u64;
        let plain_deadline = reference + self.settings.plain_wait.as_nanos() as u64;
        let mut plain_aborted = false;
        let mut ti_back_at: Option<Instant> = None;
        loop {
            check_interrupted()?;
            let now = ns_since(epoch, Instant::now());
            if ti_back_at.is_none() && recovered(&ti) {
                ti_back_at = Some(Instant::now());
            }
            let plain_done = plain_aborted || recovered(&plain) || plain.failed();
            if !plain_done && now >= plain_deadline {
                plain.abort();
                plain_aborted = true;
            }
            let ti_done = match ti_back_at {
                Some(t) => t.elapsed() >= self.settings.tail,
                None => ti.failed() || now >= ti_deadline,
            };
            if ti_done && (plain_done || plain_aborted) {
                break;
            }
            std::thread::sleep(TICK);
        }
        let resumes = flow_of(&self.client_up.control, ti_port).map(|f| f.resumes);
        let ti_ok = ti_back_at.is_some() && !ti.failed();
        let plain_ok = !plain_aborted && recovered(&plain) && !plain.failed();
        let mut stuck = None;
        let (ti_w, ti_r) = ti.finish(ti_ok, || stuck = Some(self.flow_states(ti_port)));
        let (plain_w, plain_r) = plain.finish(plain_ok, || {});
        check_interrupted()?;

        let sample =
            |transport: Transport, w: &WriterEnd, r: &ReaderEnd, ok: bool, deadline: u64| {
                let exact = ok && byte_exact(w, r);
                let in_time = |t: u64| (t <= deadline).then_some(t);
                let fail_to_data = r
                    .first_chunk_after(fault_ns)
                    .and_then(in_time)
                    .map(|t| ms_between(fault_ns, t));
                let restore_to_data = restore_ns.and_then(|rs| {
                    r.first_read_after(rs)
                        .and_then(in_time)
                        .map(|t| ms_between(rs, t))
                });
                let survived = ok
                    && match restore_ns {
                        Some(_) => restore_to_data.is_some(),
                        None => fail_to_data.is_some(),
                    };
                let outcome = if let Some(e) = w.error.as_ref().or(r.error.as_ref()) {
                    e.clone()
                } else if r.corrupt.is_some() {
                    "corrupt".to_owned()
                } else if !survived {
                    "no-data".to_owned()
                } else if transport == Transport::Ti && mode.as_deref() == Some("legacy") {
                    "legacy".to_owned()
                } else if !exact && !r.eof {
                    "stalled".to_owned()
                } else if !exact {
                    "incomplete".to_owned()
                } else {
                    "recovered".to_owned()
                };
                if ok && !exact {
                    eprintln!(
                        "tiflow bench recovery: {} {} rep {rep}, {}: not byte-exact: {}",
                        scenario.name(),
                        dir.name(),
                        transport.name(),
                        shortfall(w, r),
                    );
                    if let (Transport::Ti, Some(states)) = (transport, &stuck) {
                        eprintln!("  after {DRAIN_TIMEOUT:?} without the end of stream: {states}");
                    }
                }
                Sample {
                    scenario,
                    dir,
                    transport,
                    rep,
                    fail_to_data,
                    restore_to_data,
                    survived: survived
                        && (transport == Transport::Plain || mode.as_deref() != Some("legacy")),
                    byte_exact: exact,
                    resumes: if transport == Transport::Ti {
                        resumes
                    } else {
                        None
                    },
                    fault_cmd_ms,
                    outcome,
                }
            };
        let ti_sample = sample(Transport::Ti, &ti_w, &ti_r, ti_ok, ti_deadline);
        let plain_sample = sample(
            Transport::Plain,
            &plain_w,
            &plain_r,
            plain_ok,
            plain_deadline,
        );

        // Let the flow end at both `tiflow up` before the next repetition.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && flow_of(&self.client_up.control, ti_port).is_some() {
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok([ti_sample, plain_sample])
    }

    /// Injects the fault, restores after an outage; returns both instants
    /// (ns since the epoch).
    fn fault_and_wait(
        &mut self,
        scenario: Scenario,
        ti: &Stream,
        plain: &Stream,
    ) -> Result<(u64, Option<u64>), BenchError> {
        self.net.fault(scenario)?;
        let fault_at = Instant::now();
        let fault_ns = ns_since(self.epoch, fault_at);
        ti.shared.fault_ns.store(fault_ns, Ordering::Release);
        plain.shared.fault_ns.store(fault_ns, Ordering::Release);
        let Some(outage) = scenario.outage() else {
            return Ok((fault_ns, None));
        };
        let until = fault_at + outage;
        loop {
            check_interrupted()?;
            let now = Instant::now();
            if now >= until {
                break;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(20)));
        }
        self.net.restore(scenario)?;
        Ok((fault_ns, Some(ns_since(self.epoch, Instant::now()))))
    }
}

// ---------------------------------------------------------------------------
// The no-fault check.

/// After the writers of the no-fault check stop, longest the readers may
/// take to read every stream to its end (the buffers of every carried
/// connection drain through the pair).
const NO_FAULT_DRAIN: Duration = Duration::from_secs(120);
/// Longest the flows of the no-fault check may take to leave both `tiflow
/// up` after their streams ended.
const NO_FAULT_SETTLE: Duration = Duration::from_secs(10);
/// How often the no-fault check shows its progress.
const NO_FAULT_PROGRESS: Duration = Duration::from_secs(10);
/// Streams not byte-exact described on stderr, per run.
const NO_FAULT_DESCRIBED: usize = 5;

/// One run of the no-fault check: parallel unpaced TI streams, half each
/// way, through a healthy middlebox; then what both `tiflow up` detected.
/// The counts of the two `tiflow up` are `None` when their status could not
/// be read.
#[derive(Debug, Clone, PartialEq)]
pub struct NoFaultRun {
    /// Run, from 1.
    pub run: usize,
    /// Parallel streams (the even ones client-to-server, the odd ones
    /// server-to-client).
    pub flows: usize,
    /// How long the writers wrote, s.
    pub secs: f64,
    /// From the start of the writers to the last byte read (the drain
    /// after they stopped included), s.
    pub elapsed: f64,
    /// Bytes read by the receiving programs, all streams.
    pub bytes: u64,
    /// Streams byte-exact to their end of stream.
    pub byte_exact: usize,
    /// Streams the client's `tiflow up` carried as TI-flows (`resilient`)
    /// just before the writers stopped.
    pub resilient: Option<usize>,
    /// Failures the client's `tiflow up` detected during the run (the
    /// difference of its totals, ended flows included).
    pub client_failures: Option<u64>,
    /// Failures the server's `tiflow up` detected during the run.
    pub server_failures: Option<u64>,
    /// Resume attempts of the client's `tiflow up` during the run.
    pub client_resume_attempts: Option<u64>,
    /// Resume attempts of the server's `tiflow up` during the run.
    pub server_resume_attempts: Option<u64>,
}

impl NoFaultRun {
    /// Aggregate throughput of all streams, Mbit/s.
    pub fn mbit_s(&self) -> f64 {
        if self.elapsed > 0.0 {
            self.bytes as f64 * 8.0 / self.elapsed / 1e6
        } else {
            0.0
        }
    }

    /// Zero failures detected at both ends, every stream carried by a
    /// TI-flow (so that detection was armed).
    pub fn no_failures(&self) -> bool {
        self.client_failures == Some(0)
            && self.server_failures == Some(0)
            && self.resilient == Some(self.flows)
    }
}

/// The failures and resume attempts `tiflow up` counted since it started.
fn totals(up: &UpProcess) -> Option<(u64, u64)> {
    control::status(&up.control)
        .ok()
        .map(|r| (r.failures, r.resume_attempts))
}

/// `after - before` of one of [`totals`]' counts.
fn delta(
    before: Option<(u64, u64)>,
    after: Option<(u64, u64)>,
    count: fn((u64, u64)) -> u64,
) -> Option<u64> {
    Some(count(after?).saturating_sub(count(before?)))
}

impl Bench<'_> {
    /// The client's flows of the local ports `ports`.
    fn client_flows(&self, ports: &BTreeSet<u16>) -> Option<Vec<control::FlowStatus>> {
        let report = control::status(&self.client_up.control).ok()?;
        Some(
            report
                .flows
                .into_iter()
                .filter(|f| {
                    f.via
                        .rsplit_once("<- 127.0.0.1:")
                        .and_then(|(_, p)| p.parse::<u16>().ok())
                        .is_some_and(|p| ports.contains(&p))
                })
                .collect(),
        )
    }

    /// Waits (bounded) until neither `tiflow up` lists a flow of `ports`
    /// (the server's by their TIFIDs `tifids`), so that the totals read
    /// next include them.
    fn wait_flows_gone(
        &self,
        ports: &BTreeSet<u16>,
        tifids: &BTreeSet<String>,
    ) -> Result<(), BenchError> {
        let deadline = Instant::now() + NO_FAULT_SETTLE;
        while Instant::now() < deadline {
            check_interrupted()?;
            let client_gone = self.client_flows(ports).is_some_and(|f| f.is_empty());
            let server_gone = control::status(&self.server_up.control).is_ok_and(|r| {
                !r.flows
                    .iter()
                    .any(|f| f.tifid.as_ref().is_some_and(|t| tifids.contains(t)))
            });
            if client_gone && server_gone {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// One run of the no-fault check: opens the streams through the
    /// `tiflow up` pair, lets them write as fast as they can for the set
    /// time, ends them, checks each byte-exact to its end, and reads what
    /// both `tiflow up` detected meanwhile.
    fn no_fault(&mut self, run: usize) -> Result<NoFaultRun, BenchError> {
        let n = self.settings.no_fault_flows;
        let secs = self.settings.no_fault_secs;
        let client_before = totals(self.client_up);
        let server_before = totals(self.server_up);

        // One at a time: the connection the server program accepts is the
        // one the client program just made (a TI-flow that ends in the
        // server's `tiflow up` connecting to it).
        let forward = SocketAddr::from(([127, 0, 0, 1], FORWARD_PORT));
        let mut pairs = Vec::with_capacity(n);
        let mut ports = BTreeSet::new();
        for i in 0..n {
            check_interrupted()?;
            let client = connect_in(&self.net.line.client, forward)?;
            let port = client
                .local_addr()
                .map_err(|e| BenchError::io("local address", e))?
                .port();
            ports.insert(port);
            let server = accept_bounded(self.ti_listener, "TI-flow (from the server's tiflow up)")?;
            pairs.push(if i % 2 == 0 {
                (client, server)
            } else {
                (server, client)
            });
        }
        let started = Instant::now();
        let mut streams = Vec::with_capacity(n);
        for (tx, rx) in pairs {
            streams.push(Stream::start(tx, rx, self.epoch, None)?);
        }

        let until = started + secs;
        let mut shown = started;
        loop {
            check_interrupted()?;
            let now = Instant::now();
            if now >= until {
                break;
            }
            if now.duration_since(shown) >= NO_FAULT_PROGRESS {
                shown = now;
                let chunks: u64 = streams
                    .iter()
                    .map(|s| s.shared.chunks.load(Ordering::Acquire))
                    .sum();
                eprintln!(
                    "  no-fault run {run}: {:.0}/{:.0} s, {} MiB read, {} stream(s) failed",
                    now.duration_since(started).as_secs_f64(),
                    secs.as_secs_f64(),
                    (chunks * CHUNK as u64) >> 20,
                    streams.iter().filter(|s| s.failed()).count()
                );
            }
            std::thread::sleep((until - now).min(Duration::from_millis(50)));
        }

        // What the client's `tiflow up` carries, while it still does.
        let flows = self.client_flows(&ports);
        let resilient = flows
            .as_ref()
            .map(|f| f.iter().filter(|f| f.mode == "resilient").count());
        let tifids: BTreeSet<String> = flows
            .iter()
            .flatten()
            .filter_map(|f| f.tifid.clone())
            .collect();

        for s in &streams {
            s.stop();
        }
        let deadline = Instant::now() + NO_FAULT_DRAIN;
        while Instant::now() < deadline && streams.iter().any(|s| !s.is_finished()) {
            check_interrupted()?;
            std::thread::sleep(TICK);
        }
        let stuck = streams.iter().filter(|s| !s.is_finished()).count();
        if stuck > 0 {
            eprintln!(
                "tiflow bench recovery: no-fault run {run}: {stuck} stream(s) not ended {NO_FAULT_DRAIN:?} \
                 after the writers stopped (aborted)"
            );
        }
        let ends: Vec<(WriterEnd, ReaderEnd)> = streams.into_iter().map(Stream::join).collect();
        check_interrupted()?;

        let started_ns = ns_since(self.epoch, started);
        let last_read = ends
            .iter()
            .filter_map(|(_, r)| r.reads.last().map(|r| r.0))
            .max()
            .unwrap_or(started_ns);
        let mut exact = 0;
        let mut described = 0;
        for (i, (w, r)) in ends.iter().enumerate() {
            if byte_exact(w, r) {
                exact += 1;
            } else if described < NO_FAULT_DESCRIBED {
                described += 1;
                eprintln!(
                    "tiflow bench recovery: no-fault run {run}, stream {i} ({}): not byte-exact: {}",
                    if i % 2 == 0 {
                        Dir::ClientToServer.name()
                    } else {
                        Dir::ServerToClient.name()
                    },
                    shortfall(w, r),
                );
            }
        }

        // Let the flows end at both `tiflow up`, so that their totals
        // include every one of them.
        self.wait_flows_gone(&ports, &tifids)?;
        let client_after = totals(self.client_up);
        let server_after = totals(self.server_up);
        Ok(NoFaultRun {
            run,
            flows: n,
            secs: secs.as_secs_f64(),
            elapsed: ms_between(started_ns, last_read) / 1e3,
            bytes: ends.iter().map(|(_, r)| r.bytes).sum(),
            byte_exact: exact,
            resilient,
            client_failures: delta(client_before, client_after, |t| t.0),
            server_failures: delta(server_before, server_after, |t| t.0),
            client_resume_attempts: delta(client_before, client_after, |t| t.1),
            server_resume_attempts: delta(server_before, server_after, |t| t.1),
        })
    }
}

fn fmt_ms(v: f64) -> String {
    if v.is_infinite() {
        "failed".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// `12.3 ms`, or `failed`.
fn with_ms(v: f64) -> String {
    if v.is_finite() {
        format!("{} ms", fmt_ms(v))
    } else {
        fmt_ms(v)
    }
}

fn progress_part(s: &Sample, plain_wait: Duration) -> String {
    let mut out = String::new();
    if s.survived {
        match (s.restore_to_data, s.fail_to_data) {
            (Some(r), f) => {
                let _ = write!(out, "restore->data {} ms", fmt_ms(r));
                if let Some(f) = f {
                    let _ = write!(out, " (fail->data {} ms)", fmt_ms(f));
                }
            }
            (None, Some(f)) => {
                let _ = write!(out, "fail->data {} ms", fmt_ms(f));
            }
            (None, None) => out.push_str("back"),
        }
    } else if s.outcome == "no-data" && s.transport == Transport::Plain {
        let _ = write!(
            out,
            "failed (no data {:.0} s after the {})",
            plain_wait.as_secs_f64(),
            if s.scenario.outage().is_some() {
                "restore"
            } else {
                "fault"
            }
        );
    } else {
        let _ = write!(out, "failed ({})", s.outcome);
    }
    if let Some(n) = s.resumes {
        let _ = write!(out, ", {n} resume{}", if n == 1 { "" } else { "s" });
    }
    if s.survived {
        out.push_str(if s.byte_exact {
            ", byte-exact"
        } else {
            ", NOT byte-exact"
        });
    }
    out
}

/// `tiflow bench recovery`.
pub fn run(args: &BenchArgs) -> Result<(), BenchError> {
    let settings = Settings::from_args(args);
    netns::check_privileges()?;
    host::require(&[host::IP, host::NFT, host::CONNTRACK, host::IPTABLES])?;
    let out = &args.out;
    std::fs::create_dir_all(out)
        .map_err(|e| BenchError::io(format!("create {}", out.display()), e))?;
    let work = std::env::temp_dir().join(format!("tiflow-bench-recovery-{}", std::process::id()));
    std::fs::create_dir_all(&work)
        .map_err(|e| BenchError::io(format!("create {}", work.display()), e))?;
    let result = run_in(&settings, out, &work);
    match &result {
        Ok(()) if !args.keep_logs => {
            let _ = std::fs::remove_dir_all(&work);
        }
        _ => eprintln!(
            "tiflow bench recovery: logs of the two `tiflow up` are in {}",
            work.display()
        ),
    }
    result
}

fn run_in(settings: &Settings, out: &Path, work: &Path) -> Result<(), BenchError> {
    let started = Instant::now();
    let total: usize = settings.fault_runs().map(|(_, r)| r * Dir::ALL.len()).sum();
    let no_fault_runs = settings.no_fault_runs();
    eprintln!(
        "tiflow bench recovery: {} scenario(s), {total} repetitions, {:.1} MiB/s per stream{}; building namespaces",
        settings.fault_runs().count(),
        settings.rate / (1024.0 * 1024.0),
        if no_fault_runs > 0 {
            format!(
                "; no fault: {no_fault_runs} run(s) of {} unpaced streams for {:.0} s",
                settings.no_fault_flows,
                settings.no_fault_secs.as_secs_f64()
            )
        } else {
            String::new()
        }
    );
    let mut net = Net::build()?;
    let plain_listener = listen_in(&net.line.server, &format!("0.0.0.0:{PLAIN_PORT}"))?;
    let ti_listener = listen_in(&net.line.server, &format!("127.0.0.1:{TI_PORT}"))?;
    let (server_up, client_up) = UpProcess::spawn_pair(
        (&net.line.client, &net.line.server),
        work,
        (TI_PORT, &format!("127.0.0.1:{TI_PORT}")),
        (
            &format!("127.0.0.1:{FORWARD_PORT}"),
            &format!("{SERVER}:{TI_PORT}"),
        ),
        super::interrupt_flag(),
    )?;

    let mut samples = Vec::new();
    let mut no_fault = Vec::new();
    let mut done = 0;
    {
        let mut bench = Bench {
            net: &mut net,
            client_up: &client_up,
            server_up: &server_up,
            plain_listener: &plain_listener,
            ti_listener: &ti_listener,
            settings,
            epoch: started,
        };
        for &(scenario, reps) in &settings.runs {
            if !scenario.is_fault() {
                for run in 1..=reps {
                    let r = bench.no_fault(run)?;
                    eprintln!(
                        "[{:>5.0} s] no-fault run {run}/{reps}: {} streams for {:.0} s, {:.0} MiB in {:.1} s \
                         ({:.0} Mbit/s), {}/{} byte-exact; failures: client {}, server {}; \
                         client resume attempts {}",
                        started.elapsed().as_secs_f64(),
                        r.flows,
                        r.secs,
                        r.bytes as f64 / (1024.0 * 1024.0),
                        r.elapsed,
                        r.mbit_s(),
                        r.byte_exact,
                        r.flows,
                        opt_count(r.client_failures),
                        opt_count(r.server_failures),
                        opt_count(r.client_resume_attempts),
                    );
                    no_fault.push(r);
                }
                continue;
            }
            for rep in 1..=reps {
                for dir in Dir::ALL {
                    let [ti, plain] = bench.rep(scenario, dir, rep)?;
                    done += 1;
                    eprintln!(
                        "[{done:>3}/{total} {:>5.0} s] {} {} rep {rep}/{reps}: TI {} | plain {}",
                        started.elapsed().as_secs_f64(),
                        scenario.name(),
                        dir.name(),
                        progress_part(&ti, settings.plain_wait),
                        progress_part(&plain, settings.plain_wait),
                    );
                    samples.push(ti);
                    samples.push(plain);
                }
            }
        }
    }
    drop(client_up);
    drop(server_up);
    drop(net);
    let took = started.elapsed();
    let report = write_outputs(out, settings, &samples, &no_fault, took)?;
    print!("{report}");
    println!("Results in {}", out.display());
    Ok(())
}

// ---------------------------------------------------------------------------
// Outputs.

/// The values of `metric` for one scenario, direction and transport, in ms,
/// a run without data counting as +inf (failed).
fn values(samples: &[Sample], sc: Scenario, dir: Dir, tr: Transport, restore: bool) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| s.scenario == sc && s.dir == dir && s.transport == tr)
        .map(|s| {
            let v = if restore {
                s.restore_to_data
            } else {
                s.fail_to_data
            };
            match v {
                Some(v) if s.survived => v,
                _ => f64::INFINITY,
            }
        })
        .collect()
}

/// Median and its interval: the distribution-free 95% interval when n >= 9,
/// else the range.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    n: usize,
    failed: usize,
    median: f64,
    low: f64,
    high: f64,
    ci: bool,
    min: f64,
    max: f64,
}

fn stat(values: &[f64]) -> Option<Stat> {
    let s = summarize(values)?;
    let ci = s.n >= 9;
    Some(Stat {
        n: s.n,
        failed: values.iter().filter(|v| v.is_infinite()).count(),
        median: s.median,
        low: if ci { s.ci_low } else { s.min },
        high: if ci { s.ci_high } else { s.max },
        ci,
        min: s.min,
        max: s.max,
    })
}

fn fmt_stat(s: Option<Stat>) -> String {
    let Some(s) = s else {
        return "-".into();
    };
    let failed = if s.failed > 0 {
        format!(" ({}/{} failed)", s.failed, s.n)
    } else {
        String::new()
    };
    if s.median.is_infinite() {
        return format!("failed{failed}");
    }
    if s.ci {
        format!(
            "{} [{}, {}]{failed}",
            fmt_ms(s.median),
            fmt_ms(s.low),
            fmt_ms(s.high)
        )
    } else {
        format!(
            "{} (range {}-{}){failed}",
            fmt_ms(s.median),
            fmt_ms(s.low),
            fmt_ms(s.high)
        )
    }
}

fn csv_ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.3}"),
        Some(_) => "inf".into(),
        None => String::new(),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// A count of a `tiflow up`, or `unknown` when its status could not be read.
fn opt_count<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "unknown".into(), |v| v.to_string())
}

/// A count for a CSV cell (empty when unknown).
fn csv_count<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

/// Seconds, whole when they are.
fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s:.1}")
    }
}

/// The sum of `count` over the runs, `None` if any run lacks it.
fn sum_of(runs: &[NoFaultRun], count: impl Fn(&NoFaultRun) -> Option<u64>) -> Option<u64> {
    runs.iter().map(count).sum()
}

/// One line of the targets: what, the value, met or not (None: not run).
struct Target {
    what: String,
    value: String,
    met: Option<bool>,
}

fn targets(samples: &[Sample], settings: &Settings, no_fault: &[NoFaultRun]) -> Vec<Target> {
    let runs = &settings.runs;
    let ran = |sc: Scenario| runs.iter().any(|(s, _)| *s == sc);
    let median =
        |sc, dir, tr, restore| stat(&values(samples, sc, dir, tr, restore)).map(|s| s.median);
    let mut out = Vec::new();
    let not_run = |what: String| Target {
        what,
        value: "not run".into(),
        met: None,
    };
    for sc in [
        Scenario::NatFlush,
        Scenario::FirewallFlush,
        Scenario::ClientAddressChange,
    ] {
        let what = format!("{} server-to-client: failure to data <= 1000 ms", sc.name());
        out.push(
            match median(sc, Dir::ServerToClient, Transport::Ti, false) {
                Some(m) if ran(sc) => Target {
                    what,
                    value: format!("TI median {} ms", fmt_ms(m)),
                    met: Some(m <= 1000.0),
                },
                _ => not_run(what),
            },
        );
    }
    for sc in [Scenario::Rebuilt1s, Scenario::Blackhole1s] {
        let what = format!(
            "{} client-to-server: restore to data <= 300 ms and <= plain TCP's",
            sc.name()
        );
        let ti = values(samples, sc, Dir::ClientToServer, Transport::Ti, true);
        let plain = values(samples, sc, Dir::ClientToServer, Transport::Plain, true);
        out.push(match (stat(&ti), stat(&plain)) {
            (Some(t), Some(p)) if ran(sc) => {
                let pairs = ti.iter().zip(&plain).filter(|(t, p)| t <= p).count();
                Target {
                    what,
                    value: format!(
                        "TI median {}, plain {}; TI <= plain in {pairs}/{} reps",
                        with_ms(t.median),
                        with_ms(p.median),
                        ti.len().min(plain.len())
                    ),
                    met: Some(t.median <= 300.0 && t.median <= p.median),
                }
            }
            _ => not_run(what),
        });
    }
    for sc in [Scenario::NatFlush, Scenario::ClientAddressChange] {
        let what = format!("{} client-to-server: failure to data <= 100 ms", sc.name());
        out.push(
            match median(sc, Dir::ClientToServer, Transport::Ti, false) {
                Some(m) if ran(sc) => Target {
                    what,
                    value: format!("TI median {} ms", fmt_ms(m)),
                    met: Some(m <= 100.0),
                },
                _ => not_run(what),
            },
        );
    }
    for dir in Dir::ALL {
        let sc = Scenario::Blackhole30s;
        let what = format!("{} {}: restore to data <= 1000 ms", sc.name(), dir.name());
        out.push(match median(sc, dir, Transport::Ti, true) {
            Some(m) if ran(sc) => Target {
                what,
                value: format!("TI median {} ms", fmt_ms(m)),
                met: Some(m <= 1000.0),
            },
            _ => not_run(what),
        });
    }
    let what = format!(
        "no fault, {} parallel bulk flows for {} s: zero failures detected",
        settings.no_fault_flows,
        fmt_secs(settings.no_fault_secs)
    );
    out.push(if no_fault.is_empty() {
        not_run(what)
    } else {
        let resilient: Option<usize> = no_fault.iter().map(|r| r.resilient).sum();
        let flows: usize = no_fault.iter().map(|r| r.flows).sum();
        Target {
            what,
            value: format!(
                "failures: client {}, server {}; client resume attempts {}; TI-flows {}/{flows}{}",
                opt_count(sum_of(no_fault, |r| r.client_failures)),
                opt_count(sum_of(no_fault, |r| r.server_failures)),
                opt_count(sum_of(no_fault, |r| r.client_resume_attempts)),
                opt_count(resilient),
                if no_fault.len() > 1 {
                    format!(" ({} runs)", no_fault.len())
                } else {
                    String::new()
                }
            ),
            met: Some(no_fault.iter().all(NoFaultRun::no_failures)),
        }
    });
    let ti: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.transport == Transport::Ti)
        .collect();
    let exact = ti.iter().filter(|s| s.byte_exact).count();
    let streams: usize = no_fault.iter().map(|r| r.flows).sum();
    let streams_exact: usize = no_fault.iter().map(|r| r.byte_exact).sum();
    let mut value = format!("{exact}/{} runs", ti.len());
    if !no_fault.is_empty() {
        let _ = write!(value, "; no fault {streams_exact}/{streams} streams");
    }
    let all = ti.len() + streams;
    out.push(Target {
        what: "every TI run byte-exact".into(),
        value,
        met: Some(all > 0 && exact + streams_exact == all),
    });
    out
}

/// Writes the four files, and `recovery-nofault.csv` when the no-fault
/// check ran; returns the report.
fn write_outputs(
    out: &Path,
    settings: &Settings,
    samples: &[Sample],
    no_fault: &[NoFaultRun],
    took: Duration,
) -> Result<String, BenchError> {
    let write = |name: &str, text: &str| {
        let path = out.join(name);
        std::fs::write(&path, text)
            .map_err(|e| BenchError::io(format!("write {}", path.display()), e))
    };
    let mut raw = String::from(
        "scenario,direction,transport,rep,fail_to_data_ms,restore_to_data_ms,survived,byte_exact,resumes,fault_cmd_ms,outcome\n",
    );
    for s in samples {
        let _ = writeln!(
            raw,
            "{},{},{},{},{},{},{},{},{},{:.3},{}",
            s.scenario.name(),
            s.dir.name(),
            s.transport.name(),
            s.rep,
            csv_ms(s.fail_to_data),
            csv_ms(s.restore_to_data),
            yes_no(s.survived),
            yes_no(s.byte_exact),
            s.resumes.map_or_else(String::new, |n| n.to_string()),
            s.fault_cmd_ms,
            s.outcome.replace(',', ";")
        );
    }
    write("recovery.csv", &raw)?;

    let mut summary = String::from(
        "scenario,direction,transport,metric,n,failed,median_ms,low_ms,high_ms,interval,min_ms,max_ms,survived,byte_exact\n",
    );
    let mut rows = Vec::new();
    for (sc, _) in settings.fault_runs() {
        for dir in Dir::ALL {
            let metrics: &[bool] = if sc.outage().is_some() {
                &[false, true]
            } else {
                &[false]
            };
            for &restore in metrics {
                let mut cells = Vec::new();
                for tr in [Transport::Ti, Transport::Plain] {
                    let of: Vec<&Sample> = samples
                        .iter()
                        .filter(|s| s.scenario == sc && s.dir == dir && s.transport == tr)
                        .collect();
                    let st = stat(&values(samples, sc, dir, tr, restore));
                    let survived = of.iter().filter(|s| s.survived).count();
                    let exact = of.iter().filter(|s| s.byte_exact).count();
                    if let Some(s) = st {
                        let _ = writeln!(
                            summary,
                            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                            sc.name(),
                            dir.name(),
                            tr.name(),
                            if restore {
                                "restore_to_data"
                            } else {
                                "fail_to_data"
                            },
                            s.n,
                            s.failed,
                            csv_ms(Some(s.median)),
                            csv_ms(Some(s.low)),
                            csv_ms(Some(s.high)),
                            if s.ci { "ci95" } else { "range" },
                            csv_ms(Some(s.min)),
                            csv_ms(Some(s.max)),
                            survived,
                            exact
                        );
                    }
                    cells.push((st, survived, exact, of.len()));
                }
                rows.push((sc, dir, restore, cells));
            }
        }
    }
    write("recovery-summary.csv", &summary)?;

    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut r = String::new();
    let _ = writeln!(r, "tiflow bench recovery");
    let _ = writeln!(r, "command: {command}");
    let _ = writeln!(
        r,
        "streams: {:.1} MiB/s each in {} KiB stamped chunks; warm-up {:.1} s; plain TCP waited for {:.0} s \
         after the fault (after the restore in outage scenarios), a TI-flow for {:.0} s; took {:.0} s",
        settings.rate / (1024.0 * 1024.0),
        CHUNK / 1024,
        settings.warmup.as_secs_f64(),
        settings.plain_wait.as_secs_f64(),
        TI_WAIT.as_secs_f64(),
        took.as_secs_f64()
    );
    if settings.fault_runs().next().is_some() {
        let _ = writeln!(
            r,
            "repetitions per direction: {}",
            settings
                .fault_runs()
                .map(|(s, n)| format!("{} {n}", s.name()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !no_fault.is_empty() {
        let _ = writeln!(
            r,
            "no fault: {} run(s) of {} parallel unpaced streams for {} s",
            no_fault.len(),
            settings.no_fault_flows,
            fmt_secs(settings.no_fault_secs)
        );
    }
    let _ = writeln!(
        r,
        "\nfail->data: from the fault (its commands done) to the first byte, read by the receiving\n\
         program, of the first chunk written at or after it. restore->data: from the path coming\n\
         back (its commands done) to the first byte read after it. \"failed\": no data within the\n\
         wait (counted as infinite in the median). Median [95% distribution-free CI] when n >= 9,\n\
         else median (range). TI = kernel TCP programs through `tiflow up` on both hosts; plain =\n\
         kernel TCP through the same middlebox, in the same repetition. TI exact: every chunk\n\
         once, in order, intact, SHA-256 equal at both ends, clean end of stream (recovery.csv's\n\
         outcome says why not: `stalled` = no end of stream {drain} s after the writer stopped).\n\
         The outages last exactly 1 s and 30 s, so each transport's retry schedule (TI: resume\n\
         attempts; plain TCP: retransmission backoff) meets the restore at the same phase in every\n\
         repetition: restore->data varies little, and other outage lengths land elsewhere in it.\n\nscenarios:",
        drain = DRAIN_TIMEOUT.as_secs()
    );
    for &(sc, _) in &settings.runs {
        let _ = writeln!(r, "  {:<22} {}", sc.name(), sc.describe());
    }
    if !rows.is_empty() {
        let _ = writeln!(
            r,
            "\n== recovery, ms\n{:<22} {:<17} {:<14} {:<34} {:<34} {:>9} {:>9} {:>9}",
            "scenario", "direction", "metric", "TI", "plain TCP", "TI ok", "TI exact", "plain ok"
        );
    }
    for (sc, dir, restore, cells) in &rows {
        let (ti, ti_ok, ti_exact, ti_n) = cells[0];
        let (plain, plain_ok, _, plain_n) = cells[1];
        let _ = writeln!(
            r,
            "{:<22} {:<17} {:<14} {:<34} {:<34} {:>9} {:>9} {:>9}",
            sc.name(),
            dir.name(),
            if *restore {
                "restore->data"
            } else {
                "fail->data"
            },
            fmt_stat(ti),
            fmt_stat(plain),
            format!("{ti_ok}/{ti_n}"),
            format!("{ti_exact}/{ti_n}"),
            format!("{plain_ok}/{plain_n}"),
        );
    }
    if !no_fault.is_empty() {
        write("recovery-nofault.csv", &no_fault_csv(no_fault))?;
        r += &no_fault_section(no_fault);
    }
    let _ = writeln!(r, "\n== targets (medians of the TI runs)");
    for t in targets(samples, settings, no_fault) {
        let tag = match t.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "-",
        };
        let _ = writeln!(r, "{tag:<7} {:<70} {}", t.what, t.value);
    }
    write("recovery-report.txt", &r)?;
    write("recovery.svg", &svg(settings, samples))?;
    Ok(r)
}

/// `recovery-nofault.csv`: one row per run of the no-fault check.
fn no_fault_csv(runs: &[NoFaultRun]) -> String {
    let mut csv = String::from(
        "flows,secs,bytes,mbit_s,byte_exact_streams,client_failures,server_failures,client_resume_attempts,\
         server_resume_attempts,ti_flows,elapsed_s\n",
    );
    for r in runs {
        let _ = writeln!(
            csv,
            "{},{},{},{:.1},{},{},{},{},{},{},{:.3}",
            r.flows,
            r.secs,
            r.bytes,
            r.mbit_s(),
            r.byte_exact,
            csv_count(r.client_failures),
            csv_count(r.server_failures),
            csv_count(r.client_resume_attempts),
            csv_count(r.server_resume_attempts),
            csv_count(r.resilient),
            r.elapsed
        );
    }
    csv
}

/// The report's `== no fault` section.
fn no_fault_section(runs: &[NoFaultRun]) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "\n== no fault: parallel unpaced TI streams (the even ones client-to-server, the odd ones\n\
         server-to-client), no fault injected. Failures and resume attempts: what each `tiflow up`\n\
         counted during the run (its totals, ended flows included). TI-flows: streams the client's\n\
         `tiflow up` carried as TI-flows just before the writers stopped. Mbit/s: every byte read,\n\
         over the writers' start to the last byte read.\n\
         {:>3} {:>5} {:>5} {:>10} {:>8} {:>10} {:>8} {:>9} {:>9} {:>11} {:>11}",
        "run",
        "flows",
        "secs",
        "MiB",
        "Mbit/s",
        "byte-exact",
        "TI-flows",
        "client",
        "server",
        "client",
        "server"
    );
    let _ = writeln!(
        r,
        "{:>3} {:>5} {:>5} {:>10} {:>8} {:>10} {:>8} {:>9} {:>9} {:>11} {:>11}",
        "", "", "", "", "", "", "", "failures", "failures", "resume att.", "resume att."
    );
    for n in runs {
        let _ = writeln!(
            r,
            "{:>3} {:>5} {:>5} {:>10.1} {:>8.1} {:>10} {:>8} {:>9} {:>9} {:>11} {:>11}",
            n.run,
            n.flows,
            fmt_secs(Duration::from_secs_f64(n.secs)),
            n.bytes as f64 / (1024.0 * 1024.0),
            n.mbit_s(),
            format!("{}/{}", n.byte_exact, n.flows),
            format!("{}/{}", opt_count(n.resilient), n.flows),
            opt_count(n.client_failures),
            opt_count(n.server_failures),
            opt_count(n.client_resume_attempts),
            opt_count(n.server_resume_attempts),
        );
    }
    r
}

// ---------------------------------------------------------------------------
// The SVG: per scenario and direction, TI vs plain, medians with their
// intervals on a log time axis; "failed" in its own column.

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The label of decade `d` (10^d ms): `0.1 ms`, `10 ms`, `1 s`, `100 s`.
fn tick(d: i32) -> String {
    match d {
        d if d >= 3 => format!("{} s", 10u64.pow((d - 3).unsigned_abs())),
        d if d >= 0 => format!("{} ms", 10u64.pow(d.unsigned_abs())),
        d => format!("{} ms", 10f64.powi(d)),
    }
}

fn svg(settings: &Settings, samples: &[Sample]) -> String {
    const W: f64 = 1200.0;
    const LABEL: f64 = 250.0;
    const PANEL: f64 = 440.0;
    const GAP: f64 = 30.0;
    const ROW: f64 = 30.0;
    const TOP: f64 = 90.0;
    const FAILED_COL: f64 = 56.0;
    const TI_COLOR: &str = "#1f77b4";
    const PLAIN_COLOR: &str = "#d62728";
    let rows: Vec<(Scenario, Dir)> = settings
        .fault_runs()
        .flat_map(|(sc, _)| Dir::ALL.map(|d| (sc, d)))
        .collect();
    let h = TOP + ROW * rows.len() as f64 + 60.0;
    // The axis: decades spanning every finite value.
    let finite: Vec<f64> = samples
        .iter()
        .flat_map(|s| [s.fail_to_data, s.restore_to_data])
        .flatten()
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let lo_dec = finite
        .iter()
        .fold(1.0f64, |a, &v| a.min(v))
        .log10()
        .floor()
        .max(-1.0);
    let hi_dec = finite
        .iter()
        .fold(1000.0f64, |a, &v| a.max(v))
        .log10()
        .ceil()
        .max(lo_dec + 1.0);
    let axis = PANEL - FAILED_COL;
    let x_of = |x0: f64, v: f64| {
        if v.is_infinite() {
            x0 + axis + FAILED_COL / 2.0
        } else {
            let d = v.max(10f64.powf(lo_dec)).log10();
            x0 + (d - lo_dec) / (hi_dec - lo_dec) * (axis - 26.0) + 6.0
        }
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="17" text-anchor="middle">Recovery after a middlebox fault: TI-flow vs plain TCP (median, 95% CI for n &gt;= 9, else range)</text>"#,
        W / 2.0
    );
    let _ = writeln!(
        s,
        r##"<circle cx="{}" cy="44" r="4" fill="{TI_COLOR}"/><text x="{}" y="48">TI-flow (tiflow up)</text><circle cx="{}" cy="44" r="4" fill="{PLAIN_COLOR}"/><text x="{}" y="48">plain TCP</text><line x1="{}" y1="38" x2="{}" y2="50" stroke="#888" stroke-dasharray="3,2"/><text x="{}" y="48">target</text>"##,
        LABEL,
        LABEL + 10.0,
        LABEL + 160.0,
        LABEL + 170.0,
        LABEL + 270.0,
        LABEL + 270.0,
        LABEL + 278.0
    );
    for (p, title) in [
        (0, "failure -> data (ms, log scale)"),
        (1, "path back -> data (ms, log scale; outages only)"),
    ] {
        let x0 = LABEL + p as f64 * (PANEL + GAP);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{}</text>"#,
            x0 + PANEL / 2.0,
            TOP - 14.0,
            esc(title)
        );
        let y0 = TOP;
        let y1 = TOP + ROW * rows.len() as f64;
        let _ = writeln!(
            s,
            r##"<rect x="{x0}" y="{y0}" width="{PANEL}" height="{}" fill="none" stroke="#444"/>"##,
            y1 - y0
        );
        let mut d = lo_dec;
        while d <= hi_dec + 1e-9 {
            let x = x_of(x0, 10f64.powf(d));
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{y1}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                y1 + 16.0,
                tick(d.round() as i32)
            );
            d += 1.0;
        }
        let fx = x0 + axis;
        let _ = writeln!(
            s,
            r##"<line x1="{fx}" y1="{y0}" x2="{fx}" y2="{y1}" stroke="#444"/><text x="{}" y="{}" text-anchor="middle">failed</text>"##,
            fx + FAILED_COL / 2.0,
            y1 + 16.0
        );
    }
    for (i, &(sc, dir)) in rows.iter().enumerate() {
        let yc = TOP + ROW * (i as f64 + 0.5);
        if i % 2 == 0 {
            let _ = writeln!(
                s,
                r##"<rect x="{LABEL}" y="{}" width="{}" height="{ROW}" fill="#000" fill-opacity="0.03"/>"##,
                yc - ROW / 2.0,
                2.0 * PANEL + GAP
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{} {}</text>"#,
            LABEL - 8.0,
            yc + 4.0,
            sc.name(),
            match dir {
                Dir::ClientToServer => "client -&gt; server",
                Dir::ServerToClient => "server -&gt; client",
            }
        );
        for (p, restore) in [(0usize, false), (1, true)] {
            let x0 = LABEL + p as f64 * (PANEL + GAP);
            if restore && sc.outage().is_none() {
                let _ = writeln!(
                    s,
                    r##"<text x="{}" y="{}" fill="#aaa" text-anchor="middle">no outage</text>"##,
                    x0 + axis / 2.0,
                    yc + 4.0
                );
                continue;
            }
            let target = match (sc, dir, restore) {
                (
                    Scenario::NatFlush | Scenario::FirewallFlush | Scenario::ClientAddressChange,
                    Dir::ServerToClient,
                    false,
                ) => Some(1000.0),
                (
                    Scenario::NatFlush | Scenario::ClientAddressChange,
                    Dir::ClientToServer,
                    false,
                ) => Some(100.0),
                (Scenario::Rebuilt1s | Scenario::Blackhole1s, Dir::ClientToServer, true) => {
                    Some(300.0)
                }
                (Scenario::Blackhole30s, _, true) => Some(1000.0),
                _ => None,
            };
            if let Some(t) = target {
                let x = x_of(x0, t);
                let _ = writeln!(
                    s,
                    r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#888" stroke-dasharray="3,2"/>"##,
                    yc - ROW / 2.0 + 2.0,
                    yc + ROW / 2.0 - 2.0
                );
            }
            for (tr, dy, color) in [
                (Transport::Ti, -5.0, TI_COLOR),
                (Transport::Plain, 5.0, PLAIN_COLOR),
            ] {
                let Some(st) = stat(&values(samples, sc, dir, tr, restore)) else {
                    continue;
                };
                let y = yc + dy;
                let (a, b) = (x_of(x0, st.low), x_of(x0, st.high));
                let _ = writeln!(
                    s,
                    r#"<line x1="{a:.1}" y1="{y:.1}" x2="{b:.1}" y2="{y:.1}" stroke="{color}" stroke-width="1.5"/>"#
                );
                let x = x_of(x0, st.median);
                if st.median.is_infinite() {
                    let _ = writeln!(
                        s,
                        r#"<path d="M{:.1},{:.1} l6,6 m0,-6 l-6,6" stroke="{color}" stroke-width="2"/>"#,
                        x - 3.0,
                        y - 3.0
                    );
                } else {
                    let _ = writeln!(
                        s,
                        r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{color}"><title>{} {} {}: median {} ms</title></circle>"#,
                        sc.name(),
                        dir.name(),
                        tr.name(),
                        fmt_ms(st.median)
                    );
                }
            }
        }
    }
    let _ = writeln!(
        s,
        r##"<text x="{LABEL}" y="{}" fill="#555">Lines: 95% interval of the median (n &gt;= 9) or the range; "failed": no data within the wait. Dashed: the target.</text>"##,
        h - 14.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_detect_damage() {
        let mut buf = vec![0u8; CHUNK];
        let mut scratch = vec![0u8; CHUNK - HEADER];
        make_chunk(&mut buf, 7, 123_456);
        assert_eq!(check_chunk(&buf, 7, &mut scratch), Ok(123_456));
        assert!(check_chunk(&buf, 8, &mut scratch).is_err(), "wrong order");
        buf[HEADER + 100] ^= 1;
        assert!(check_chunk(&buf, 7, &mut scratch).is_err(), "flipped bit");
        let mut other = vec![0u8; CHUNK];
        make_chunk(&mut other, 8, 1);
        assert_ne!(buf[HEADER..], other[HEADER..], "payloads differ by seq");
    }

    #[test]
    fn scenarios_parse_with_optional_reps() {
        assert_eq!(
            parse_scenario("nat-flush"),
            Ok(ScenarioSpec {
                scenario: Scenario::NatFlush,
                reps: None
            })
        );
        assert_eq!(
            parse_scenario("blackhole-30s:3"),
            Ok(ScenarioSpec {
                scenario: Scenario::Blackhole30s,
                reps: Some(3)
            })
        );
        assert!(parse_scenario("nat").is_err());
        assert!(parse_scenario("nat-flush:0").is_err());
        for s in Scenario::NAMED {
            assert_eq!(s.name().parse::<Scenario>(), Ok(s));
        }
    }

    fn settings(argv: &[&str]) -> Settings {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            args: BenchArgs,
        }
        let mut full = vec!["bench", "recovery"];
        full.extend_from_slice(argv);
        Settings::from_args(&Cli::parse_from(full).args)
    }

    #[test]
    fn defaults_quick_and_per_scenario_reps() {
        let d = settings(&[]);
        assert_eq!(d.runs.len(), 6);
        assert!(d.runs.iter().all(|(_, r)| *r == DEFAULT_REPS));
        assert_eq!(d.plain_wait, Duration::from_secs(10));
        assert_eq!(d.rate, 8.0 * 1024.0 * 1024.0);
        let q = settings(&["--quick"]);
        assert_eq!(q.runs.len(), 5, "no blackhole-30s");
        assert!(
            q.runs
                .iter()
                .all(|(s, r)| *r == 2 && *s != Scenario::Blackhole30s)
        );
        assert_eq!(q.plain_wait, Duration::from_secs(2));
        let e = settings(&[
            "--quick",
            "--scenarios",
            "blackhole-30s:3,nat-flush",
            "--reps",
            "4",
            "--plain-wait",
            "5",
        ]);
        assert_eq!(
            e.runs,
            vec![(Scenario::Blackhole30s, 3), (Scenario::NatFlush, 4)]
        );
        assert_eq!(e.plain_wait, Duration::from_secs(5));
    }

    #[test]
    fn reader_times_the_first_chunk_after_an_instant() {
        let r = ReaderEnd {
            // Reads at 10, 20, 30 ns ending at 1, 2 and 3 chunks.
            reads: vec![
                (10, CHUNK as u64),
                (20, 2 * CHUNK as u64),
                (30, 3 * CHUNK as u64),
            ],
            stamps: vec![5, 15, 25],
            ..ReaderEnd::default()
        };
        assert_eq!(r.first_chunk_after(12), Some(20));
        assert_eq!(r.first_chunk_after(15), Some(20));
        assert_eq!(r.first_chunk_after(26), None);
        assert_eq!(r.first_read_after(20), Some(30));
    }

    fn sample(sc: Scenario, dir: Dir, tr: Transport, fail: Option<f64>, ok: bool) -> Sample {
        Sample {
            scenario: sc,
            dir,
            transport: tr,
            rep: 1,
            fail_to_data: fail,
            restore_to_data: sc.outage().and(fail),
            survived: ok,
            byte_exact: ok,
            resumes: None,
            fault_cmd_ms: 1.0,
            outcome: "recovered".into(),
        }
    }

    #[test]
    fn failures_count_as_infinite_and_small_sets_are_ranges() {
        let v = [1.0, 2.0, f64::INFINITY];
        let s = stat(&v).expect("stat");
        assert_eq!((s.median, s.failed, s.ci), (2.0, 1, false));
        assert_eq!(fmt_stat(Some(s)), "2.00 (range 1.00-failed) (1/3 failed)");
        let many: Vec<f64> = (1..=9).map(f64::from).collect();
        let s = stat(&many).expect("stat");
        assert!(s.ci);
        assert!(fmt_stat(Some(s)).starts_with("5.00 ["));
        let all_failed = stat(&[f64::INFINITY; 3]).expect("stat");
        assert_eq!(fmt_stat(Some(all_failed)), "failed (3/3 failed)");
    }

    #[test]
    fn targets_are_met_or_missed_from_the_medians() {
        let runs = vec![(Scenario::NatFlush, 1), (Scenario::Blackhole1s, 1)];
        let samples = vec![
            sample(
                Scenario::NatFlush,
                Dir::ClientToServer,
                Transport::Ti,
                Some(50.0),
                true,
            ),
            sample(
                Scenario::NatFlush,
                Dir::ClientToServer,
                Transport::Plain,
                None,
                false,
            ),
            sample(
                Scenario::NatFlush,
                Dir::ServerToClient,
                Transport::Ti,
                Some(1500.0),
                true,
            ),
            sample(
                Scenario::NatFlush,
                Dir::ServerToClient,
                Transport::Plain,
                None,
                false,
            ),
            sample(
                Scenario::Blackhole1s,
                Dir::ClientToServer,
                Transport::Ti,
                Some(250.0),
                true,
            ),
            sample(
                Scenario::Blackhole1s,
                Dir::ClientToServer,
                Transport::Plain,
                Some(400.0),
                true,
            ),
        ];
        let settings = Settings {
            runs,
            rate: 1.0,
            plain_wait: Duration::from_secs(1),
            warmup: Duration::ZERO,
            tail: Duration::ZERO,
            no_fault_flows: 100,
            no_fault_secs: Duration::from_secs(60),
        };
        let t = targets(&samples, &settings, &[]);
        let find = |what: &str| {
            t.iter()
                .find(|t| t.what.starts_with(what))
                .unwrap_or_else(|| panic!("no target {what}"))
                .met
        };
        assert_eq!(find("nat-flush server-to-client"), Some(false));
        assert_eq!(find("nat-flush client-to-server"), Some(true));
        assert_eq!(find("blackhole-1s client-to-server"), Some(true));
        assert_eq!(find("rebuilt-1s"), None);
        assert_eq!(
            find("no fault, 100 parallel bulk flows for 60 s: zero failures detected"),
            None
        );
        assert_eq!(find("every TI run byte-exact"), Some(true));
        let svg = svg(&settings, &samples);
        assert!(svg.starts_with("<svg") && svg.contains("nat-flush") && svg.contains("failed"));
    }

    fn no_fault_run(exact: usize, client_failures: u64, resilient: usize) -> NoFaultRun {
        NoFaultRun {
            run: 1,
            flows: 10,
            secs: 5.0,
            elapsed: 5.5,
            bytes: 11 << 20,
            byte_exact: exact,
            resilient: Some(resilient),
            client_failures: Some(client_failures),
            server_failures: Some(0),
            client_resume_attempts: Some(client_failures),
            server_resume_attempts: Some(0),
        }
    }

    #[test]
    fn no_fault_counts_in_its_target_and_in_byte_exactness() {
        let settings = Settings {
            runs: vec![(Scenario::NoFault, 1)],
            rate: 1.0,
            plain_wait: Duration::from_secs(1),
            warmup: Duration::ZERO,
            tail: Duration::ZERO,
            no_fault_flows: 10,
            no_fault_secs: Duration::from_secs(5),
        };
        let met = |runs: &[NoFaultRun], what: &str| {
            targets(&[], &settings, runs)
                .into_iter()
                .find(|t| t.what.starts_with(what))
                .unwrap_or_else(|| panic!("no target {what}"))
                .met
        };
        let zero = "no fault, 10 parallel bulk flows for 5 s: zero failures detected";
        let exact = "every TI run byte-exact";
        assert_eq!(met(&[no_fault_run(10, 0, 10)], zero), Some(true));
        assert_eq!(met(&[no_fault_run(10, 0, 10)], exact), Some(true));
        assert_eq!(met(&[no_fault_run(10, 1, 10)], zero), Some(false));
        assert_eq!(
            met(&[no_fault_run(10, 0, 9)], zero),
            Some(false),
            "a legacy flow"
        );
        assert_eq!(met(&[no_fault_run(9, 0, 10)], exact), Some(false));
        let mut unknown = no_fault_run(10, 0, 10);
        unknown.server_failures = None;
        assert_eq!(met(&[unknown], zero), Some(false));

        let run = no_fault_run(10, 0, 10);
        assert!((run.mbit_s() - 11.0 * 1_048_576.0 * 8.0 / 5.5 / 1e6).abs() < 1e-9);
        let csv = no_fault_csv(std::slice::from_ref(&run));
        let mut lines = csv.lines();
        assert!(
            lines
                .next()
                .is_some_and(|h| h.starts_with("flows,secs,bytes,mbit_s,byte_exact_streams,client_failures,server_failures,client_resume_attempts"))
        );
        assert!(
            lines
                .next()
                .is_some_and(|l| l.starts_with("10,5,11534336,"))
        );
        assert!(no_fault_section(&[run]).contains("== no fault"));
        // No fault row in the SVG.
        assert!(!svg(&settings, &[]).contains("no-fault"));
    }

    #[test]
    fn no_fault_is_named_not_default_and_runs_once() {
        assert!(!Scenario::ALL.contains(&Scenario::NoFault));
        assert_eq!(
            parse_scenario("no-fault:2"),
            Ok(ScenarioSpec {
                scenario: Scenario::NoFault,
                reps: Some(2)
            })
        );
        let d = settings(&["--scenarios", "no-fault,nat-flush"]);
        assert_eq!(
            d.runs,
            vec![(Scenario::NoFault, 1), (Scenario::NatFlush, DEFAULT_REPS)]
        );
        assert_eq!(
            (d.no_fault_flows, d.no_fault_secs),
            (100, Duration::from_secs(60))
        );
        assert_eq!(d.no_fault_runs(), 1);
        assert_eq!(d.fault_runs().count(), 1);
        let q = settings(&["--quick", "--scenarios", "no-fault"]);
        assert_eq!(
            (q.no_fault_flows, q.no_fault_secs),
            (10, Duration::from_secs(5))
        );
        let e = settings(&["--quick", "--no-fault-flows", "4", "--no-fault-secs", "2.5"]);
        assert_eq!(
            (e.no_fault_flows, e.no_fault_secs),
            (4, Duration::from_millis(2500))
        );
        assert_eq!(e.no_fault_runs(), 0, "not in the default set");
        assert!(parse_flows("0").is_err() && parse_flows("201").is_err());
        assert!(parse_secs("0.5").is_err() && parse_secs("60s") == Ok(60.0));
    }
}
