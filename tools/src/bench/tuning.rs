//! `tiflow bench tuning`: latency tuning ([`StackConfig::low_latency`]) off
//! vs on, interleaved sample by sample in one run, so the noise of a shared
//! machine falls on both settings alike (never two runs compared).
//!
//! Owns, per RTT point, two TI client stacks in namespace A (each on its own
//! TUN with the delay line and a capture, as in [`super::latency`]) and two
//! TI server stacks in namespace B: one pair with latency tuning off, one
//! with it on. Both pairs run through the whole point; every round measures
//! each setting once, alternating which goes first:
//! - connect: connect, block on `read` until the server's close (≈ 2 RTT);
//! - reconnect: `fail_transport()` on an established TI-flow, then one byte
//!   echoed: the application's time (failure to the echoed byte) and the
//!   stack's `Resumed { downtime }`, which is the resume handshake's SYN to
//!   ACK. Each flow's resumes are spaced by the storm guard's
//!   `min_resume_interval`, as in the reconnect benchmark.

use std::fmt::Write as _;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ti_stack::device::pcap_tap::PcapTap;
use ti_stack::device::tun::TunDevice;
use ti_stack::{Runtime, StackConfig, StreamEvent, TiStream};

use super::latency::{
    CLOSE_PORT, ECHO_PORT, Peer, SAMPLE_TIMEOUT, check_mode, echo_byte, serve_close_and_echo,
};
use super::net::{LatencyDevice, Site, Testbed, latency_device, open_tun};
use super::stats::{ratio_of_medians, summarize};
use super::{BenchError, Progress};

/// Default RTTs of `tiflow bench tuning` (ms).
pub const DEFAULT_RTTS: [u64; 3] = [0, 1, 10];

/// The metrics of one sample, in the report's words.
pub const METRICS: [&str; 3] = ["connect", "resume", "reconnect-app"];

/// One round's measurement of one setting.
#[derive(Debug, Clone, Copy)]
pub struct TuningSample {
    /// Emulated RTT.
    pub rtt: Duration,
    /// Whether the stacks ran with latency tuning.
    pub low_latency: bool,
    /// The round.
    pub index: usize,
    /// Connect to the server's close seen by `read`.
    pub connect: Duration,
    /// The stack's `Resumed { downtime }`: SYN to ACK of the resume.
    pub resume: Duration,
    /// `fail_transport()` to the first echoed byte.
    pub reconnect_app: Duration,
}

impl TuningSample {
    /// The value of metric `name` (one of [`METRICS`]), in ms.
    pub fn metric_ms(&self, name: &str) -> Option<f64> {
        let d = match name {
            "connect" => self.connect,
            "resume" => self.resume,
            "reconnect-app" => self.reconnect_app,
            _ => return None,
        };
        Some(d.as_secs_f64() * 1e3)
    }
}

/// Runs the comparison over every RTT; captures go to `pcap_dir`.
pub fn run(
    bed: &Testbed,
    rtts: &[Duration],
    samples: usize,
    pcap_dir: &Path,
) -> Result<Vec<TuningSample>, BenchError> {
    let mut out = Vec::new();
    for (i, &rtt) in rtts.iter().enumerate() {
        let label = format!("tuning rtt {:>3} ms", rtt.as_millis());
        let mut progress = Progress::new(label, samples * 2);
        let mut pairs = Vec::with_capacity(2);
        let mut started = Ok(());
        for low_latency in [false, true] {
            match Pair::start(bed, i, rtt, low_latency, pcap_dir) {
                Ok(p) => pairs.push(p),
                Err(e) => {
                    started = Err(e);
                    break;
                }
            }
        }
        let measured = started.and_then(|()| measure(&mut pairs, rtt, samples, &mut progress));
        for p in pairs {
            p.stop();
        }
        progress.done();
        out.extend(measured?);
    }
    Ok(out)
}

fn measure(
    pairs: &mut [Pair],
    rtt: Duration,
    samples: usize,
    progress: &mut Progress,
) -> Result<Vec<TuningSample>, BenchError> {
    let timeout = Some(SAMPLE_TIMEOUT + rtt * 4);
    let mut echoes = Vec::with_capacity(pairs.len());
    for p in pairs.iter() {
        echoes.push(p.echo_stream(timeout)?);
    }
    let spacing = tifid::lifecycle::LifecycleConfig::default().min_resume_interval
        + Duration::from_millis(10);
    let mut last_resume: Vec<Option<Instant>> = vec![None; pairs.len()];
    let mut out = Vec::with_capacity(samples * pairs.len());
    for round in 0..samples {
        super::check_interrupted()?;
        let byte = (round % 251) as u8 + 1;
        for k in 0..pairs.len() {
            let which = (round + k) % pairs.len();
            let pair = &pairs[which];
            let connect = pair.connect_once(rtt)?;
            let echo = &mut echoes[which];
            let _ = echo.events();
            if let Some(wait) = last_resume[which].map(|t| spacing.saturating_sub(t.elapsed())) {
                std::thread::sleep(wait);
            }
            let start = Instant::now();
            last_resume[which] = Some(start);
            echo.fail_transport()
                .map_err(BenchError::stream("fail_transport"))?;
            echo_byte(echo, byte)?;
            let reconnect_app = start.elapsed();
            let resume = echo
                .events()
                .into_iter()
                .find_map(|e| match e {
                    StreamEvent::Resumed { downtime, .. } => Some(downtime),
                    _ => None,
                })
                .ok_or_else(|| {
                    BenchError::Check("tuning: the echo came back without a Resumed event".into())
                })?;
            out.push(TuningSample {
                rtt,
                low_latency: pair.low_latency,
                index: round,
                connect,
                resume,
                reconnect_app,
            });
            progress.step();
        }
    }
    Ok(out)
}

/// A TI client and a TI server, both with latency tuning on or off.
struct Pair {
    low_latency: bool,
    client: Runtime<LatencyDevice>,
    server: Runtime<PcapTap<TunDevice>>,
    server_addr: Ipv4Addr,
    threads: Vec<JoinHandle<()>>,
}

fn config(site: Site, low_latency: bool) -> StackConfig {
    let mut config = site.config(true);
    config.connect_timeout = SAMPLE_TIMEOUT;
    config.low_latency = low_latency;
    config
}

impl Pair {
    fn start(
        bed: &Testbed,
        index: usize,
        rtt: Duration,
        low_latency: bool,
        pcap_dir: &Path,
    ) -> Result<Pair, BenchError> {
        let (n, tag) = if low_latency { (4, "on") } else { (3, "off") };
        let server_site = Site {
            gateway: Ipv4Addr::new(10, 72, n, 1),
            address: Ipv4Addr::new(10, 72, n, 2),
        };
        let client_site = Site {
            gateway: Ipv4Addr::new(10, 71, n, 1),
            address: Ipv4Addr::new(10, 71, n, 10 + (index % 240) as u8),
        };
        let name = |side: &str| format!("tuning-rtt{}ms-{tag}-{side}.pcap", rtt.as_millis());
        // The server's device as in the latency benchmark: a capture on the
        // TUN, no delay line.
        let server_tun = open_tun(&bed.b, &format!("ts{tag}{index}"), server_site)?;
        let server_pcap = pcap_dir.join(name("server"));
        let server_dev = PcapTap::create(server_tun, &server_pcap)
            .map_err(|e| BenchError::io(format!("create {}", server_pcap.display()), e))?;
        let server = Runtime::start(config(server_site, low_latency), server_dev)
            .map_err(|e| BenchError::io("start a server stack", e))?;
        let threads = serve_close_and_echo(&server)?;
        let client_tun = open_tun(&bed.a, &format!("tc{tag}{index}"), client_site)?;
        let client_dev = latency_device(client_tun, rtt / 2, &pcap_dir.join(name("client")))?;
        let client = match Runtime::start(config(client_site, low_latency), client_dev) {
            Ok(c) => c,
            Err(e) => {
                server.stop();
                for t in threads {
                    let _ = t.join();
                }
                return Err(BenchError::io("start a client stack", e));
            }
        };
        Ok(Pair {
            low_latency,
            client,
            server,
            server_addr: server_site.address,
            threads,
        })
    }

    fn echo_stream(
        &self,
        timeout: Option<Duration>,
    ) -> Result<TiStream<LatencyDevice>, BenchError> {
        let remote = SocketAddrV4::new(self.server_addr, ECHO_PORT);
        let mut s = self
            .client
            .connect(remote)
            .map_err(BenchError::stream("TI connect to the echo server"))?;
        s.set_read_timeout(timeout);
        check_mode(&s, true, Peer::Ti)?;
        echo_byte(&mut s, 0)?;
        Ok(s)
    }

    fn connect_once(&self, rtt: Duration) -> Result<Duration, BenchError> {
        let remote = SocketAddrV4::new(self.server_addr, CLOSE_PORT);
        let start = Instant::now();
        let mut stream = self
            .client
            .connect(remote)
            .map_err(BenchError::stream(format!("TI connect to {remote}")))?;
        stream.set_read_timeout(Some(SAMPLE_TIMEOUT + rtt * 2));
        let mut buf = [0u8; 64];
        let n = stream
            .read(&mut buf)
            .map_err(|e| BenchError::io("wait for the server's close", e))?;
        let elapsed = start.elapsed();
        if n != 0 {
            return Err(BenchError::Check(format!(
                "tuning: the server sent {n} bytes instead of closing"
            )));
        }
        check_mode(&stream, true, Peer::Ti)?;
        Ok(elapsed)
    }

    fn stop(self) {
        self.client.stop();
        self.server.stop();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The values of `metric` for one RTT and setting, in ms.
fn values(samples: &[TuningSample], rtt: Duration, low_latency: bool, metric: &str) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| s.rtt == rtt && s.low_latency == low_latency)
        .filter_map(|s| s.metric_ms(metric))
        .collect()
}

fn rtts_of(samples: &[TuningSample]) -> Vec<Duration> {
    let mut rtts: Vec<Duration> = samples.iter().map(|s| s.rtt).collect();
    rtts.sort();
    rtts.dedup();
    rtts
}

/// Every sample as CSV.
pub fn raw_csv(samples: &[TuningSample]) -> String {
    let mut csv = String::from("rtt_ms,low_latency,sample,connect_ms,resume_ms,reconnect_app_ms\n");
    for s in samples {
        let _ = writeln!(
            csv,
            "{},{},{},{:.4},{:.4},{:.4}",
            s.rtt.as_millis(),
            if s.low_latency { "on" } else { "off" },
            s.index,
            s.connect.as_secs_f64() * 1e3,
            s.resume.as_secs_f64() * 1e3,
            s.reconnect_app.as_secs_f64() * 1e3
        );
    }
    csv
}

/// Median, interval and range per RTT, setting and metric, as CSV.
pub fn summary_csv(samples: &[TuningSample]) -> String {
    let mut csv = String::from(
        "rtt_ms,low_latency,metric,n,median_ms,ci95_low_ms,ci95_high_ms,mean_ms,min_ms,max_ms\n",
    );
    for rtt in rtts_of(samples) {
        for metric in METRICS {
            for on in [false, true] {
                if let Some(s) = summarize(&values(samples, rtt, on, metric)) {
                    let _ = writeln!(
                        csv,
                        "{},{},{metric}_ms,{}",
                        rtt.as_millis(),
                        if on { "on" } else { "off" },
                        s.csv_fields()
                    );
                }
            }
        }
    }
    csv
}

/// The report's table: per RTT and metric, off and on as median [95% CI]
/// (median (range) below 9 samples), and on/off as a ratio of medians
/// [bootstrap 95% CI]; `resume-rtt` rows give each median minus the RTT.
pub fn report(samples: &[TuningSample]) -> String {
    let mut r = String::from(
        "\n== latency tuning off vs on, interleaved in one run: median ms [95% CI] \
         (median (range) when n < 9); on/off: ratio of medians [bootstrap 95% CI]\n",
    );
    let _ = writeln!(
        r,
        "{:>4}  {:<14} {:>4}  {:<26} {:<26} {:<22}",
        "rtt", "metric", "n", "off", "on", "on/off"
    );
    for rtt in rtts_of(samples) {
        for metric in METRICS {
            let off = values(samples, rtt, false, metric);
            let on = values(samples, rtt, true, metric);
            let n = off.len().min(on.len());
            let cell = |v: &[f64]| {
                summarize(v).map_or_else(
                    || "-".to_owned(),
                    |s| {
                        if s.n >= 9 {
                            format!("{:.3} [{:.3}, {:.3}]", s.median, s.ci_low, s.ci_high)
                        } else {
                            format!("{:.3} (range {:.3}-{:.3})", s.median, s.min, s.max)
                        }
                    },
                )
            };
            let ratio = ratio_of_medians(&on, &off).map_or_else(
                || "-".to_owned(),
                |(m, lo, hi)| format!("{m:.3} [{lo:.3}, {hi:.3}]"),
            );
            let _ = writeln!(
                r,
                "{:>4}  {:<14} {:>4}  {:<26} {:<26} {:<22}",
                rtt.as_millis(),
                metric,
                n,
                cell(&off),
                cell(&on),
                ratio
            );
            if metric == "resume" {
                let minus = |v: &[f64]| {
                    summarize(v).map_or_else(
                        || "-".to_owned(),
                        |s| format!("{:+.3}", s.median - rtt.as_secs_f64() * 1e3),
                    )
                };
                let _ = writeln!(
                    r,
                    "{:>4}  {:<14} {:>4}  {:<26} {:<26} {:<22}",
                    rtt.as_millis(),
                    "resume-rtt",
                    n,
                    minus(&off),
                    minus(&on),
                    "-"
                );
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rtt: u64, on: bool, i: usize, connect_us: u64) -> TuningSample {
        TuningSample {
            rtt: Duration::from_millis(rtt),
            low_latency: on,
            index: i,
            connect: Duration::from_micros(connect_us),
            resume: Duration::from_micros(connect_us / 2),
            reconnect_app: Duration::from_micros(connect_us + 100),
        }
    }

    #[test]
    fn report_compares_the_settings_per_rtt_and_labels_small_sets_as_ranges() {
        let mut samples = Vec::new();
        for i in 0..20 {
            samples.push(sample(1, false, i, 3000 + 20 * i as u64));
            samples.push(sample(1, true, i, 2000 + 20 * i as u64));
        }
        for i in 0..3 {
            samples.push(sample(10, false, i, 21_000));
            samples.push(sample(10, true, i, 21_000));
        }
        let r = report(&samples);
        assert!(r.contains("   1  connect          20  3.190 ["), "{r}");
        assert!(r.contains("   1  resume-rtt       20  +0.59"), "{r}");
        assert!(r.contains("(range 21.000-21.000)"), "{r}");
        assert!(!r.contains("  10  connect           3  21.000 ["), "{r}");
        let csv = summary_csv(&samples);
        assert_eq!(csv.lines().count(), 1 + 2 * 3 * 2);
        assert!(raw_csv(&samples).starts_with("rtt_ms,low_latency,sample,"));
    }
}
