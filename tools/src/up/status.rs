//! Answers to the control socket's requests: the status report (flows,
//! totals, resources) and `tiflow fail`.

use std::time::Instant;

use smoltcp::phy::Device;
use ti_stack::device::Wait;
use ti_stack::{Mode, Resources, Runtime, StreamId, StreamInfo, StreamMode};
use tracing::{debug, info};

use super::UpArgs;
use super::registry::Conns;
use crate::control::{self, FlowStatus, Reply, Request, ResourceStatus, StatusReport};

fn mode_name(mode: StreamMode) -> (&'static str, Option<String>) {
    match mode {
        StreamMode::Connecting => ("connecting", None),
        StreamMode::Known(Mode::Legacy) => ("legacy", None),
        StreamMode::Known(Mode::Resilient { tifid }) => ("resilient", Some(tifid.to_string())),
    }
}

pub(super) fn handle<D: Device + Wait + Send + 'static>(
    req: Request,
    args: &UpArgs,
    runtime: &Runtime<D>,
    conns: &Conns,
    started: Instant,
) -> Reply {
    let infos = runtime.stream_infos();
    match req {
        Request::Status => Reply::Status(StatusReport {
            tun: args.tun.clone(),
            stack_address: args.address_list(),
            kernel_address: args.kernel_address_list(),
            ti_enabled: !args.no_ti,
            option_kind: args.option_kind,
            uptime_s: started.elapsed().as_secs_f64(),
            flows: flow_statuses(&infos, conns),
            resume_attempts: conns.resume_attempts(&infos),
            failures: conns.failures(&infos),
            resources: resource_status(runtime.resources()),
        }),
        Request::Fail { tifid } => {
            let wanted = match tifid.as_deref().map(control::parse_tifid) {
                None => None,
                Some(Ok(v)) => Some(v),
                Some(Err(message)) => return Reply::Error { message },
            };
            let targets: Vec<(StreamId, String)> = infos
                .iter()
                .filter_map(|i| match i.mode {
                    StreamMode::Known(Mode::Resilient { tifid }) => Some((i.id, tifid)),
                    _ => None,
                })
                .filter(|(_, t)| wanted.is_none_or(|w| t.value() == w))
                .map(|(id, t)| (id, t.to_string()))
                .collect();
            if let (Some(w), true) = (wanted, targets.is_empty()) {
                return Reply::Error {
                    message: format!("no TI-flow {w:012x} here (`tiflow status` lists them)"),
                };
            }
            let mut failed = Vec::new();
            for (id, t) in targets {
                match runtime.with_stack(|stack, _| stack.fail_transport(id)) {
                    Ok(()) => {
                        info!(tifid = %t, "transport abandoned on request");
                        failed.push(t);
                    }
                    Err(e) => debug!(tifid = %t, error = %e, "cannot fail"),
                }
            }
            Reply::Failed { tifids: failed }
        }
    }
}

fn resource_status(r: Resources) -> ResourceStatus {
    ResourceStatus {
        sockets: r.sockets,
        half_open: r.half_open,
        accept_queued: r.accept_queued,
        streams: r.streams,
        flows: r.flows,
        syns_dropped_backlog: r.syns_dropped_backlog,
        syns_dropped_overload: r.syns_dropped_overload,
        half_open_evicted: r.half_open_evicted,
        half_open_expired: r.half_open_expired,
    }
}

/// The streams a relay carries or is about to (not those whose relay
/// ended: the stack may hold them through the close handshake and
/// TIME-WAIT, but for `tiflow status` they are gone).
fn flow_statuses(infos: &[StreamInfo], conns: &Conns) -> Vec<FlowStatus> {
    conns
        .listed(infos)
        .into_iter()
        .map(|(info, via)| flow_status(info, via))
        .collect()
}

fn flow_status(info: &StreamInfo, via: Option<(String, f64)>) -> FlowStatus {
    let (mode, tifid) = mode_name(info.mode);
    // Not handed to a relay yet: its handshake, or the accept queue.
    let (via, age_s) = via.unwrap_or_else(|| {
        let waiting = match info.mode {
            StreamMode::Connecting => "connecting",
            StreamMode::Known(_) => "accepting",
        };
        (waiting.into(), 0.0)
    });
    FlowStatus {
        tifid,
        mode: mode.to_owned(),
        peer: info.peer.to_string(),
        via,
        sent: info.stats.bytes_written,
        received: info.stats.bytes_received,
        resumes: info.stats.resumes,
        resume_attempts: info.stats.resume_attempts,
        recoveries: info.stats.recoveries,
        failures: info.stats.failures,
        last_downtime_ms: info.stats.last_downtime.map(|d| d.as_secs_f64() * 1000.0),
        last_detect_ms: info.stats.last_detect.map(|d| d.as_secs_f64() * 1000.0),
        last_gap_ms: info.stats.last_gap.map(|d| d.as_secs_f64() * 1000.0),
        resent: info.stats.resent_bytes,
        attached: info.attached,
        age_s,
    }
}
