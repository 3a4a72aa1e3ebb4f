//! One carried connection: copies both ways between the local program's
//! kernel TCP connection and a TI stream, as one async task, until both
//! directions are done, `tiflow up` stops, or one end breaks (DESIGN §4
//! "Abort"):
//!
//! - an end of stream passes on as one: the local program's FIN as a TI
//!   FIN (`shutdown(Write)`), the flow's as a kernel `shutdown(Write)`;
//! - the local program resetting its connection, or a write to it failing,
//!   aborts the flow: the peer's program gets a reset;
//! - the flow aborted by its peer or lost (plain TCP: reset or timed out)
//!   resets the local program's connection (`SO_LINGER` zero, then close):
//!   a conversation that did not end never looks complete.
//!
//! Owns no buffer: it waits for readiness and then moves bytes with `try_`
//! calls (tokio's pattern), between the kernel socket and the stream's own
//! buffers with no copy besides the kernel's: a `read` straight into the
//! stream's send buffer, a `writev` straight from its receive buffer. An
//! idle connection costs its task and its two sockets, not two threads and
//! their stacks.
//!
//! While a direction waits on one end it watches the other for what would
//! otherwise go unseen: waiting for room in the flow, a reset of the local
//! connection; waiting for the program to take data, a failure of the flow.

use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use smoltcp::phy::Device;
use ti_stack::device::Wait;
use ti_stack::{Mode, StreamError, StreamInfo, TiStream};
use tifid::handshake::LostCause;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::Stop;

/// Most bytes moved from the program into the flow by one read.
const BATCH: usize = 256 * 1024;

/// How a direction of the relay ended.
#[derive(Debug)]
enum End {
    /// Its end of stream was passed on; the other direction goes on.
    Finished,
    /// The local program reset its connection, or no longer takes data.
    LocalBroke(io::Error),
    /// The flow failed (aborted by its peer, lost, or plain TCP reset or
    /// timed out).
    FlowBroke(io::Error),
}

/// Relays between `kernel` and `ti` until the conversation ends or `stop`.
/// Returns the stream's counters at the end (for the status's totals).
pub(super) async fn relay<D: Device + Wait>(
    kernel: TcpStream,
    ti: TiStream<D>,
    mut stop: Stop,
) -> Option<StreamInfo> {
    let flow = FlowLabel::of(&ti);
    // The program's own socket already chose whether to coalesce (Nagle)
    // what it sends; the relay passes on what it got as it gets it. With
    // Nagle on this socket, a write while an earlier one waits for the
    // program's (delayed) ACK would wait too, a delay the program never
    // asked for (ssh sets TCP_NODELAY on its own socket, and that choice
    // does not reach this one).
    if let Err(e) = kernel.set_nodelay(true) {
        debug!(error = %e, "TCP_NODELAY on the local connection");
    }
    // Set once the flow's end of stream was passed on (our FIN is out).
    let fin_sent = AtomicBool::new(false);
    let mut outbound = pin!(kernel_to_ti(&kernel, &ti, &fin_sent, &flow));
    let mut inbound = pin!(ti_to_kernel(&kernel, &ti, &fin_sent, &flow));
    let (mut out_done, mut in_done) = (false, false);
    let broken = loop {
        let end = tokio::select! {
            end = &mut outbound, if !out_done => {
                out_done = true;
                end
            }
            end = &mut inbound, if !in_done => {
                in_done = true;
                end
            }
            () = stop.stopped() => {
                if !out_done {
                    // Stopping: pass the end of stream on, as at a FIN.
                    let _ = ti.shutdown(Shutdown::Write);
                }
                break None;
            }
        };
        match end {
            End::Finished if out_done && in_done => break None,
            End::Finished => {}
            broken => break Some(broken),
        }
    };
    match broken {
        Some(End::LocalBroke(error)) => {
            info!(%flow, %error, "local program reset: aborting flow");
            if let Err(e) = ti.abort() {
                debug!(%flow, error = %e, "cannot abort the flow");
            }
        }
        Some(End::FlowBroke(error)) => {
            if stream_error(&error) == Some(StreamError::FlowLost(LostCause::PeerAborted)) {
                info!(%flow, "flow aborted by peer: resetting local connection");
            } else {
                info!(%flow, %error, "flow failed: resetting local connection");
            }
            reset_on_close(&kernel);
        }
        Some(End::Finished) | None => {}
    }
    let last = ti.info();
    if let Some(info) = &last {
        info!(
            %flow,
            resumes = info.stats.resumes,
            resume_attempts = info.stats.resume_attempts,
            recoveries = info.stats.recoveries,
            "relay ended"
        );
    }
    last
}

/// Copies the local program's bytes into the flow.
async fn kernel_to_ti<D: Device + Wait>(
    kernel: &TcpStream,
    ti: &TiStream<D>,
    fin_sent: &AtomicBool,
    flow: &FlowLabel,
) -> End {
    loop {
        // Room in the flow first, so what is read goes straight into its
        // buffer; meanwhile a reset of the local connection is seen at once.
        if let Err(end) = or_local_reset(kernel, ti.writable()).await {
            return end;
        }
        if let Err(e) = kernel.readable().await {
            return End::LocalBroke(e);
        }
        match ti.try_write_from(BATCH, |spare| kernel.try_read(spare)) {
            Ok(0) => return local_finished(kernel, ti, fin_sent, flow),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if stream_error(&e).is_some() => return End::FlowBroke(e),
            Err(e) => return End::LocalBroke(e),
        }
    }
}

/// The local program finished sending (a kernel read returned 0): a TI
/// FIN, unless the 0 hides a reset whose error a write already took.
fn local_finished<D: Device + Wait>(
    kernel: &TcpStream,
    ti: &TiStream<D>,
    fin_sent: &AtomicBool,
    flow: &FlowLabel,
) -> End {
    // The socket is closed although we sent no FIN: `getpeername` fails
    // once it is (after a FIN from the program alone it still works).
    if !fin_sent.load(Ordering::Acquire) && kernel.peer_addr().is_err() {
        return End::LocalBroke(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "local connection reset",
        ));
    }
    info!(%flow, "local program closed its side: FIN on the flow");
    if let Err(e) = ti.shutdown(Shutdown::Write) {
        debug!(%flow, error = %e, "cannot shut the flow down for writing");
    }
    End::Finished
}

/// Copies the flow's bytes to the local program, from the stream's
/// receive buffer straight into the kernel socket.
async fn ti_to_kernel<D: Device + Wait>(
    kernel: &TcpStream,
    ti: &TiStream<D>,
    fin_sent: &AtomicBool,
    flow: &FlowLabel,
) -> End {
    loop {
        // While the flow is quiet, watch the local connection for a reset
        // (the other direction may be waiting on the flow, not reading).
        if let Err(end) = or_local_reset(kernel, ti.readable()).await {
            return end;
        }
        // While the program does not take data, watch the flow for a failure.
        tokio::select! {
            biased;
            ready = kernel.writable() => if let Err(e) = ready {
                return End::LocalBroke(e);
            },
            e = ti.failed() => return End::FlowBroke(e),
        }
        let moved = ti.try_read_to(|front, back| {
            match kernel.try_write_vectored(&[IoSlice::new(front), IoSlice::new(back)]) {
                Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                other => other,
            }
        });
        match moved {
            Ok(0) => {
                info!(%flow, "flow ended by peer: FIN to the local program");
                fin_sent.store(true, Ordering::Release);
                let _ = rustix::net::shutdown(kernel, rustix::net::Shutdown::Write);
                return End::Finished;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if stream_error(&e).is_some() => return End::FlowBroke(e),
            Err(e) => return End::LocalBroke(e),
        }
    }
}

/// Waits for `flow` (a readiness of the TI stream) while watching the
/// local connection for a reset: whichever comes first.
async fn or_local_reset<T>(
    kernel: &TcpStream,
    flow: impl Future<Output = io::Result<T>>,
) -> Result<T, End> {
    tokio::select! {
        biased;
        ready = flow => ready.map_err(End::FlowBroke),
        ready = kernel.ready(Interest::ERROR) => {
            Err(End::LocalBroke(local_error(kernel, ready.err())))
        }
    }
}

/// The error behind an error readiness of the local connection
/// (`SO_ERROR`), or a reset if the kernel no longer says.
fn local_error(kernel: &TcpStream, ready_error: Option<io::Error>) -> io::Error {
    ready_error
        .or_else(|| kernel.take_error().ok().flatten())
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::ConnectionReset, "local connection reset"))
}

/// Makes closing `kernel` send a RST (`SO_LINGER` on, zero time): the local
/// program gets a reset, not a clean end of stream. The RST leaves when the
/// socket closes, right after the relay.
pub(super) fn reset_on_close(kernel: &impl std::os::fd::AsFd) {
    if let Err(e) = rustix::net::sockopt::set_socket_linger(kernel, Some(Duration::ZERO)) {
        warn!(error = %e, "cannot make the local close a reset");
    }
}

/// The stream error behind an I/O error of a TI stream, if any.
fn stream_error(e: &io::Error) -> Option<StreamError> {
    e.get_ref()?.downcast_ref::<StreamError>().copied()
}

/// What a relayed stream is, for logs: its TIFID (TI-flows) and its peer.
struct FlowLabel {
    tifid: Option<String>,
    peer: Option<SocketAddr>,
}

impl FlowLabel {
    fn of<D: Device + Wait>(ti: &TiStream<D>) -> FlowLabel {
        FlowLabel {
            tifid: match ti.mode() {
                Mode::Resilient { tifid } => Some(tifid.to_string()),
                Mode::Legacy => None,
            },
            peer: ti.peer_addr(),
        }
    }
}

impl std::fmt::Display for FlowLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tifid {
            Some(tifid) => write!(f, "TI-flow {tifid}")?,
            None => write!(f, "plain TCP")?,
        }
        match self.peer {
            Some(peer) => write!(f, " with {peer}"),
            None => Ok(()),
        }
    }
}
