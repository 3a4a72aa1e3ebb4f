//! `tiflow up --metrics ADDR:PORT`: the flows' counters in the Prometheus
//! text format (version 0.0.4), over plain HTTP: `GET /metrics`. One
//! request per connection, its head bounded (8 KiB, 5 s), at most
//! [`MAX_CONCURRENT`] at once; anything else gets a 404 or a 400.
//! Read-only: nothing here changes a flow.
//!
//! Exposed: flows now by mode; resumes, resume attempts, failures by
//! cause, flows lost by cause, bytes each way (since start, ended flows
//! included); the downtime of each resume as a histogram.

use std::fmt::Write as _;
use std::time::Duration;

use ti_stack::{DOWNTIME_BUCKETS, FlowMetrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::Stop;
use crate::control::StatusReport;

/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Longest a scraper may take to send its request.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Most requests answered at once; a connection beyond them is closed at
/// once, so a flood of idle connections to the endpoint holds at most
/// this many descriptors (each carried connection needs its own).
pub const MAX_CONCURRENT: usize = 16;

/// Serves the endpoint until `tiflow up` stops; `snapshot` gives the
/// status report and the stack's counters of the moment.
pub(super) async fn serve(
    listener: TcpListener,
    snapshot: impl Fn() -> Option<(StatusReport, FlowMetrics)> + Clone + Send + 'static,
    mut stop: Stop,
) {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.stopped() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    debug!("metrics: {MAX_CONCURRENT} requests in progress, connection closed");
                    continue;
                };
                let snapshot = snapshot.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, snapshot).await {
                        debug!(error = %e, "metrics request failed");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request head and answers it.
async fn answer(
    mut stream: TcpStream,
    snapshot: impl Fn() -> Option<(StatusReport, FlowMetrics)>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    if tokio::time::timeout(HEAD_TIMEOUT, read_head).await.is_err() {
        return Ok(());
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (status, body) = match (words.next(), words.next()) {
        (Some("GET"), Some("/metrics")) => match snapshot() {
            Some((report, metrics)) => ("200 OK", render(&report, &metrics)),
            None => ("500 Internal Server Error", "no status\n".into()),
        },
        (Some("GET"), Some(_)) => (
            "404 Not Found",
            "tiflow up: metrics are at /metrics\n".into(),
        ),
        _ => ("400 Bad Request", "tiflow up: GET /metrics\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// A label value, escaped as the text format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric's HELP and TYPE lines.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The exposition text.
pub fn render(report: &StatusReport, m: &FlowMetrics) -> String {
    let mut out = String::new();
    header(&mut out, "tiflow_flows", "gauge", "Streams now, by mode.");
    for mode in ["resilient", "legacy", "connecting"] {
        let n = report.flows.iter().filter(|f| f.mode == mode).count();
        let _ = writeln!(out, "tiflow_flows{{mode=\"{mode}\"}} {n}");
    }
    header(
        &mut out,
        "tiflow_resumes_total",
        "counter",
        "Resumes that succeeded since start.",
    );
    let _ = writeln!(out, "tiflow_resumes_total {}", m.resumes);
    header(
        &mut out,
        "tiflow_resume_attempts_total",
        "counter",
        "Resume attempts (a SYN on a new connection each) since start.",
    );
    let _ = writeln!(
        out,
        "tiflow_resume_attempts_total {}",
        report.resume_attempts
    );
    header(
        &mut out,
        "tiflow_failures_total",
        "counter",
        "TI connection failures detected since start, by cause.",
    );
    for (cause, n) in &m.failures_by_cause {
        let _ = writeln!(
            out,
            "tiflow_failures_total{{cause=\"{}\"}} {n}",
            label(cause)
        );
    }
    header(
        &mut out,
        "tiflow_flows_lost_total",
        "counter",
        "Flows lost since start, by cause.",
    );
    for (cause, n) in &m.lost_by_cause {
        let _ = writeln!(
            out,
            "tiflow_flows_lost_total{{cause=\"{}\"}} {n}",
            label(cause)
        );
    }
    header(
        &mut out,
        "tiflow_resume_downtime_seconds",
        "histogram",
        "Failure noticed to the new connection carrying the flow, per resume.",
    );
    let mut cumulative = 0;
    for (bound, n) in DOWNTIME_BUCKETS.iter().zip(&m.downtime_buckets) {
        cumulative += n;
        let _ = writeln!(
            out,
            "tiflow_resume_downtime_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += m.downtime_buckets[DOWNTIME_BUCKETS.len()];
    let _ = writeln!(
        out,
        "tiflow_resume_downtime_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let _ = writeln!(
        out,
        "tiflow_resume_downtime_seconds_sum {}",
        m.downtime_sum.as_secs_f64()
    );
    let _ = writeln!(out, "tiflow_resume_downtime_seconds_count {cumulative}");
    header(
        &mut out,
        "tiflow_bytes_total",
        "counter",
        "Bytes carried since start: sent (local programs into flows) and received (flows to local programs).",
    );
    let _ = writeln!(
        out,
        "tiflow_bytes_total{{direction=\"sent\"}} {}",
        m.bytes_written
    );
    let _ = writeln!(
        out,
        "tiflow_bytes_total{{direction=\"received\"}} {}",
        m.bytes_received
    );
    header(
        &mut out,
        "tiflow_uptime_seconds",
        "gauge",
        "Seconds since tiflow up started.",
    );
    let _ = writeln!(out, "tiflow_uptime_seconds {}", report.uptime_s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_escaped() {
        let mut m = FlowMetrics::default();
        m.downtime_buckets[0] = 2;
        m.downtime_buckets[3] = 1;
        m.downtime_buckets[DOWNTIME_BUCKETS.len()] = 1;
        m.resumes = 4;
        m.failures_by_cause
            .insert("abandoned \"by\" peer".into(), 3);
        let report = StatusReport {
            tun: "tiflow0".into(),
            stack_address: "10.0.1.1/24".into(),
            kernel_address: "10.0.1.254".into(),
            ti_enabled: true,
            option_kind: 253,
            uptime_s: 1.5,
            flows: vec![],
            resume_attempts: 5,
            failures: 3,
            resources: Default::default(),
        };
        let text = render(&report, &m);
        assert!(
            text.contains("tiflow_resume_downtime_seconds_bucket{le=\"0.05\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("tiflow_resume_downtime_seconds_bucket{le=\"0.25\"} 2\n"));
        assert!(text.contains("tiflow_resume_downtime_seconds_bucket{le=\"0.5\"} 3\n"));
        assert!(text.contains("tiflow_resume_downtime_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("tiflow_resume_downtime_seconds_count 4\n"));
        assert!(text.contains("tiflow_failures_total{cause=\"abandoned \\\"by\\\" peer\"} 3\n"));
        assert!(text.contains("tiflow_flows{mode=\"resilient\"} 0\n"));
        assert!(text.contains("# TYPE tiflow_resumes_total counter\n"));
    }
}
