//! `tiflow bench scale`: what a packet, a poll and a connection cost as the
//! number of idle connections grows.
//!
//! Two of our stacks on the in-memory network ([`ti_stack::sim`], virtual
//! time, no namespaces, no root), N connections opened and each greeted
//! with one byte each way, then one of them ping-pongs 64-byte messages
//! while N - 1 sit idle. Measured on this thread's CPU clock (the
//! simulation is single-threaded, so other load on the machine does not
//! count), per N and per mode (TI, legacy):
//!
//! - **per packet**: CPU of the ping-pong over the packets it put on the
//!   network (both stacks and the network's own work);
//! - **idle poll**: CPU of one `poll` + `poll_at` of both stacks with
//!   nothing to do;
//! - **connect**: CPU to open and greet the N connections, per connection;
//! - **RSS**: growth of the process's resident set per connection (both
//!   stacks).
//!
//! For each N > 1 the N-connection setup and a one-connection setup live
//! side by side and their rounds are interleaved, so the ratio N / 1 is
//! measured under the same conditions. Owns its simulations; writes
//! `scale.csv` (every round), `scale-report.txt` and `scale.svg`.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration as StdDuration;

use smoltcp::time::Duration;
use ti_stack::device::link::{LinkConfig, Network, Side};
use ti_stack::sim::Sim;
use ti_stack::{StackConfig, StreamId};

use plotters::prelude::*;

use super::BenchError;
use super::stats::{Summary, summarize};

/// Default connection counts.
pub const DEFAULT_COUNTS: [usize; 4] = [1, 100, 1_000, 10_000];
/// Default measured rounds per setup.
pub const DEFAULT_ROUNDS: usize = 9;
/// Round trips of the active stream per round.
const ROUND_TRIPS: usize = 200;
/// Bytes per ping-pong message.
const MESSAGE: usize = 64;
/// Idle polls per round.
const IDLE_POLLS: usize = 50;
/// Goal: per-packet CPU with 10,000 connections over with one.
pub const GOAL_RATIO: f64 = 1.5;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const PORT: u16 = 7000;

/// This thread's CPU time.
fn thread_cpu() -> StdDuration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    StdDuration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The process's resident set, in bytes (0 if unknown).
fn rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A client and a server stack with `n` greeted connections.
struct Setup {
    sim: Sim,
    /// The active stream's two ends (client, server).
    active: (StreamId, StreamId),
    /// Every stream, held so none is dropped (client ends, server ends).
    _held: Vec<(StreamId, StreamId)>,
    connect_cpu: StdDuration,
    rss_growth: u64,
}

fn config(address: Ipv4Addr, ti: bool, seed: u64) -> StackConfig {
    let mut c = StackConfig::new(address);
    c.ti_enabled = ti;
    c.seed = Some(seed);
    c.max_flows = c.max_flows.max(100_000);
    c.max_half_open = c.max_half_open.max(1_024);
    c.accept_backlog = c.accept_backlog.max(1_024);
    c
}

impl Setup {
    /// Opens and greets `n` connections (batches of 256 in flight).
    fn build(n: usize, ti: bool) -> Result<Setup, BenchError> {
        let rss_before = rss_bytes();
        let net = Network::new(LinkConfig {
            seed: 1,
            ..LinkConfig::default()
        });
        let mut sim = Sim::new(net);
        let c = sim.add_host(Side::A, config(CLIENT, ti, 11));
        let s = sim.add_host(Side::B, config(SERVER, ti, 22));
        let listener = sim.hosts[s]
            .listen(PORT)
            .map_err(|e| BenchError::Check(format!("listen: {e}")))?;
        let started = thread_cpu();
        let mut held = Vec::with_capacity(n);
        let to = SocketAddrV4::new(SERVER, PORT);
        while held.len() < n {
            let batch = (n - held.len()).min(256);
            let mut clients = Vec::with_capacity(batch);
            for _ in 0..batch {
                let now = sim.now();
                let id = sim.hosts[c]
                    .connect(now, to)
                    .map_err(|e| BenchError::Check(format!("connect: {e}")))?;
                clients.push(id);
            }
            let mut servers = Vec::with_capacity(batch);
            let accepted = sim.run_until(Duration::from_secs(30), |sim| {
                while let Ok(Some(id)) = sim.hosts[s].accept(listener) {
                    let _ = sim.hosts[s].write(id, b"g");
                    servers.push(id);
                }
                servers.len() == batch
            });
            let greeted = accepted
                && sim.run_until(Duration::from_secs(30), |sim| {
                    clients.iter().all(|&id| sim.hosts[c].readable(id) >= 1)
                });
            if !greeted {
                return Err(BenchError::Check(format!(
                    "scale: only {} of {n} connections greeted",
                    held.len() + servers.len().min(batch)
                )));
            }
            let mut byte = [0u8; 1];
            for &id in &clients {
                let _ = sim.hosts[c].read(id, &mut byte);
            }
            // Pair each client end with its server end (accept order is
            // not connect order).
            let by_peer: std::collections::HashMap<std::net::SocketAddr, StreamId> = servers
                .iter()
                .filter_map(|&id| sim.hosts[s].peer_addr(id).map(|p| (p, id)))
                .collect();
            for id in clients {
                let server_end = sim.hosts[c]
                    .local_addr(id)
                    .and_then(|a| by_peer.get(&a).copied())
                    .ok_or_else(|| {
                        BenchError::Check("scale: a connection has no server end".into())
                    })?;
                held.push((id, server_end));
            }
        }
        let connect_cpu = thread_cpu().saturating_sub(started);
        let active = *held
            .first()
            .ok_or_else(|| BenchError::Check("scale: no connection".into()))?;
        // Let the handshakes' last segments and delayed work settle.
        sim.run_for(Duration::from_millis(500));
        Ok(Setup {
            sim,
            active,
            _held: held,
            connect_cpu,
            rss_growth: rss_bytes().saturating_sub(rss_before),
        })
    }

    /// One measured round: per-packet CPU (ns) of the ping-pong and CPU
    /// (ns) of one idle poll of both stacks.
    fn round(&mut self) -> Result<(f64, f64), BenchError> {
        let (c, s) = (0, 1);
        let (ca, sa) = self.active;
        let msg = [0x5a; MESSAGE];
        let mut buf = [0u8; MESSAGE];
        let packets_before = self.sim.net.stats().sent;
        let started = thread_cpu();
        for _ in 0..ROUND_TRIPS {
            let _ = self.sim.hosts[c].write(ca, &msg);
            let echoed = self.sim.run_until(Duration::from_secs(10), |sim| {
                if sim.hosts[s].readable(sa) >= MESSAGE {
                    let _ = sim.hosts[s].read(sa, &mut buf);
                    let _ = sim.hosts[s].write(sa, &buf);
                }
                sim.hosts[c].readable(ca) >= MESSAGE
            });
            if !echoed {
                return Err(BenchError::Check(
                    "scale: the echo did not come back".into(),
                ));
            }
            let _ = self.sim.hosts[c].read(ca, &mut buf);
        }
        let cpu = thread_cpu().saturating_sub(started);
        let packets = self.sim.net.stats().sent - packets_before;
        let per_packet = cpu.as_nanos() as f64 / packets.max(1) as f64;
        // Idle: nothing queued, nothing due at this instant.
        let now = self.sim.now();
        let started = thread_cpu();
        for _ in 0..IDLE_POLLS {
            for host in &mut self.sim.hosts {
                host.poll(now);
                let _ = host.poll_at(now);
            }
        }
        let idle = thread_cpu().saturating_sub(started).as_nanos() as f64 / IDLE_POLLS as f64;
        Ok((per_packet, idle))
    }
}

/// One row of `scale.csv`.
struct Row {
    mode: &'static str,
    n: usize,
    round: usize,
    per_packet_ns: f64,
    idle_poll_ns: f64,
}

/// Per mode and N: the summaries.
struct Point {
    mode: &'static str,
    n: usize,
    per_packet: Summary,
    idle: Summary,
    connect_us_per_conn: f64,
    rss_per_conn: f64,
    /// Per-packet ratio to the interleaved N = 1 setup, median of rounds.
    ratio_to_one: Summary,
}

/// Runs the benchmark; writes its files to `out`.
pub fn run(counts: &[usize], rounds: usize, out: &Path, command: &str) -> Result<(), BenchError> {
    ti_stack::memory::map_large_allocations();
    std::fs::create_dir_all(out)
        .map_err(|e| BenchError::io(format!("create {}", out.display()), e))?;
    let mut rows = Vec::new();
    let mut points = Vec::new();
    for (mode, ti) in [("ti", true), ("legacy", false)] {
        for &n in counts {
            super::check_interrupted()?;
            eprintln!("scale: {mode}, {n} connections");
            let mut big = Setup::build(n, ti)?;
            let mut one = if n > 1 {
                Some(Setup::build(1, ti)?)
            } else {
                None
            };
            let (mut pp, mut idle, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..rounds {
                // Alternate which goes first.
                let (a, b) = if round % 2 == 0 {
                    let a = big.round()?;
                    let b = match one.as_mut() {
                        Some(o) => Some(o.round()?),
                        None => None,
                    };
                    (a, b)
                } else {
                    let b = match one.as_mut() {
                        Some(o) => Some(o.round()?),
                        None => None,
                    };
                    (big.round()?, b)
                };
                pp.push(a.0);
                idle.push(a.1);
                ratios.push(b.map_or(1.0, |b| a.0 / b.0));
                rows.push(Row {
                    mode,
                    n,
                    round,
                    per_packet_ns: a.0,
                    idle_poll_ns: a.1,
                });
            }
            points.push(Point {
                mode,
                n,
                per_packet: summary(&pp)?,
                idle: summary(&idle)?,
                connect_us_per_conn: big.connect_cpu.as_secs_f64() * 1e6 / n as f64,
                rss_per_conn: big.rss_growth as f64 / n as f64,
                ratio_to_one: summary(&ratios)?,
            });
        }
    }
    write_files(out, &rows, &points, rounds, command)
}

fn write_files(
    out: &Path,
    rows: &[Row],
    points: &[Point],
    rounds: usize,
    command: &str,
) -> Result<(), BenchError> {
    let mut csv = String::from("mode,connections,round,per_packet_ns,idle_poll_ns\n");
    for r in rows {
        let _ = writeln!(
            csv,
            "{},{},{},{:.1},{:.1}",
            r.mode, r.n, r.round, r.per_packet_ns, r.idle_poll_ns
        );
    }
    let path = out.join("scale.csv");
    std::fs::write(&path, csv)
        .map_err(|e| BenchError::io(format!("write {}", path.display()), e))?;
    let mut report = format!("command: {command}\n\n");
    let _ = writeln!(
        report,
        "== scale: two stacks in memory, one stream ping-ponging {MESSAGE}-byte messages ({ROUND_TRIPS} round trips a round), N - 1 idle; thread CPU, median [95% CI] of {rounds} rounds{}",
        if rounds < 9 {
            " (fewer than 9 rounds: the interval is the range)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        report,
        "{:<7} {:>6}  {:<28} {:<28} {:<26} {:>14} {:>14}",
        "mode",
        "N",
        "per packet (us)",
        "idle poll, both stacks (us)",
        "per packet / N=1 (interleaved)",
        "connect us/conn",
        "RSS B/conn"
    );
    for p in points {
        let _ = writeln!(
            report,
            "{:<7} {:>6}  {:<28} {:<28} {:<26} {:>14.1} {:>14.0}",
            p.mode,
            p.n,
            us(&p.per_packet),
            us(&p.idle),
            ratio(&p.ratio_to_one),
            p.connect_us_per_conn,
            p.rss_per_conn
        );
    }
    let _ = writeln!(
        report,
        "\ngoal: per packet at N = 10000 / N = 1 <= {GOAL_RATIO} (ratio column, interleaved rounds)."
    );
    for p in points.iter().filter(|p| p.n == 10_000) {
        let verdict = if p.ratio_to_one.ci_high <= GOAL_RATIO {
            "met"
        } else if p.ratio_to_one.median <= GOAL_RATIO {
            "met (median)"
        } else {
            "MISSED"
        };
        let _ = writeln!(
            report,
            "  {}: {:.3} [{:.3}, {:.3}] {verdict}",
            p.mode, p.ratio_to_one.median, p.ratio_to_one.ci_low, p.ratio_to_one.ci_high
        );
    }
    let path = out.join("scale-report.txt");
    std::fs::write(&path, &report)
        .map_err(|e| BenchError::io(format!("write {}", path.display()), e))?;
    print!("{report}");
    let path = out.join("scale.svg");
    draw(points, &path).map_err(|e| BenchError::Plot {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(())
}

fn summary(values: &[f64]) -> Result<Summary, BenchError> {
    summarize(values).ok_or_else(|| BenchError::Check("scale: no samples".into()))
}

/// Per-packet CPU against log10(N), medians with their intervals.
fn draw(points: &[Point], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let y_max = points
        .iter()
        .map(|p| p.per_packet.ci_high / 1000.0)
        .fold(1.0, f64::max)
        * 1.1;
    let x_max = points
        .iter()
        .map(|p| (p.n as f64).log10())
        .fold(1.0, f64::max)
        + 0.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "CPU per packet, one active stream and N - 1 idle",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.2..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("connections (log10 N)")
        .y_desc("us per packet (thread CPU)")
        .draw()?;
    for (mode, color) in [
        ("ti", RGBColor(0x1f, 0x77, 0xb4)),
        ("legacy", RGBColor(0xd6, 0x27, 0x28)),
    ] {
        let line: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.mode == mode)
            .map(|p| ((p.n as f64).log10(), p.per_packet.median / 1000.0))
            .collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
            .label(mode)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(points.iter().filter(|p| p.mode == mode).map(|p| {
            ErrorBar::new_vertical(
                (p.n as f64).log10(),
                p.per_packet.ci_low / 1000.0,
                p.per_packet.median / 1000.0,
                p.per_packet.ci_high / 1000.0,
                color.filled(),
                8,
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}

fn us(s: &Summary) -> String {
    format!(
        "{:.3} [{:.3}, {:.3}]",
        s.median / 1000.0,
        s.ci_low / 1000.0,
        s.ci_high / 1000.0
    )
}

fn ratio(s: &Summary) -> String {
    format!("{:.3} [{:.3}, {:.3}]", s.median, s.ci_low, s.ci_high)
}
