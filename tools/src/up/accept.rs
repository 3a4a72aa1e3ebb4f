//! Where carried connections come from: kernel connections accepted on a
//! `--forward` port (each carried to its remote as a TI-flow) and TI-flows
//! accepted on a `--serve` port (each carried to its local target with
//! kernel TCP). Each connection becomes one relay task.
//!
//! Owns the behaviour when the process runs out of file descriptors: a
//! local connection that cannot be served is refused (accepted with a
//! descriptor kept in reserve for this, and reset at once), with one log
//! line when it starts and one when it ends, instead of a warning per
//! attempt or a listener spinning on `EMFILE`.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smoltcp::phy::Device;
use ti_stack::device::Wait;
use ti_stack::{Mode, Runtime, TiListener};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::registry::Conns;
use super::relay::{relay, reset_on_close};
use super::{Forward, Serve, Stop};
use crate::host::is_out_of_descriptors;

/// How long a `--serve` connection to its local target may take.
const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a `--serve` acceptor looks at its accept queue even without
/// a wake-up (a bound on a lost one; the look costs one stack poll).
const ACCEPT_RECHECK: Duration = Duration::from_millis(250);
/// How long an acceptor waits before trying again when it cannot even
/// refuse (no descriptor in reserve).
const RETRY: Duration = Duration::from_millis(100);

/// What a connection is carried for, and what it is carried with.
pub(super) struct Carry<D: Device + Wait + Send + 'static> {
    pub(super) runtime: Arc<Runtime<D>>,
    pub(super) conns: Conns,
    pub(super) stop: Stop,
    pub(super) descriptors: Arc<Descriptors>,
    /// Longest a flow's connect may take before the local connection is
    /// reset (the stack's connect timeout, and some slack: a bound that
    /// holds even if the stack's answer were lost).
    pub(super) connect_limit: Duration,
}

impl<D: Device + Wait + Send + 'static> Clone for Carry<D> {
    fn clone(&self) -> Self {
        Carry {
            runtime: self.runtime.clone(),
            conns: self.conns.clone(),
            stop: self.stop.clone(),
            descriptors: self.descriptors.clone(),
            connect_limit: self.connect_limit,
        }
    }
}

/// Accepts local connections on a `--forward` port until `tiflow up`
/// stops; each is carried to the remote in its own task.
pub(super) async fn accept_forwards<D: Device + Wait + Send + 'static>(
    forward: Forward,
    listener: StdTcpListener,
    carry: Carry<D>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(listen = %forward.listen, error = %e, "cannot watch the --forward listener");
            return;
        }
    };
    let mut stop = carry.stop.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.stopped() => return,
        };
        match accepted {
            Ok((kernel, client)) => {
                carry.descriptors.accepting_again();
                let carry = carry.clone();
                tokio::spawn(forward_one(forward, kernel, client, carry));
            }
            Err(e) if is_out_of_descriptors(&e) => {
                let refused = carry
                    .descriptors
                    .refuse(|| accept_now(&listener).map(|k| reset_on_close(&k)));
                if !refused {
                    tokio::time::sleep(RETRY).await;
                }
            }
            Err(e) => {
                warn!(error = %e, listen = %forward.listen, "accept failed");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

async fn forward_one<D: Device + Wait + Send + 'static>(
    forward: Forward,
    kernel: TcpStream,
    client: SocketAddr,
    carry: Carry<D>,
) {
    let via = format!("forward {} <- {client}", forward.listen);
    let n = carry.conns.add(via);
    info!(%client, remote = %forward.remote, "forwarding a connection");
    let limit = carry.connect_limit;
    // The stream is registered from its first SYN: `tiflow status` shows
    // it (`connecting`, with its age) while the handshake takes.
    let connected = match carry.runtime.connect_start(forward.remote) {
        Ok(ti) => {
            carry.conns.set_stream(n, Some(ti.id()));
            tokio::time::timeout(limit, ti.connected())
                .await
                .unwrap_or(Err(ti_stack::StreamError::TimedOut))
                .map(|()| ti)
        }
        Err(e) => Err(e),
    };
    let ti = match connected {
        Ok(ti) => ti,
        Err(e) => {
            warn!(%client, remote = %forward.remote, error = %e, "cannot reach the remote: resetting local connection");
            reset_on_close(&kernel);
            carry.conns.remove(n);
            return;
        }
    };
    match ti.mode() {
        Mode::Resilient { tifid } => info!(%tifid, remote = %forward.remote, "TI-flow open"),
        Mode::Legacy => info!(remote = %forward.remote, "peer without TI: plain TCP"),
    }
    let last = relay(kernel, ti, carry.stop.clone()).await;
    carry.conns.finish(n, last);
}

/// Accepts TI-flows (and plain TCP) on a `--serve` port until `tiflow up`
/// stops; each is carried to the local target in its own task.
pub(super) async fn accept_serves<D: Device + Wait + Send + 'static>(
    serve: Serve,
    listener: TiListener<D>,
    carry: Carry<D>,
) {
    let mut stop = carry.stop.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept_async() => accepted,
            // A bound on a lost wake-up: look at the accept queue again.
            () = tokio::time::sleep(ACCEPT_RECHECK) => continue,
            () = stop.stopped() => return,
        };
        match accepted {
            Ok(ti) => {
                let carry = carry.clone();
                tokio::spawn(serve_one(serve, ti, carry));
            }
            Err(e) => {
                warn!(port = serve.port, error = %e, "stack accept failed");
                return;
            }
        }
    }
}

async fn serve_one<D: Device + Wait + Send + 'static>(
    serve: Serve,
    ti: ti_stack::TiStream<D>,
    carry: Carry<D>,
) {
    let peer = ti.peer_addr();
    let n = carry
        .conns
        .add(format!("serve {} -> {}", serve.port, serve.target));
    carry.conns.set_stream(n, Some(ti.id()));
    match ti.mode() {
        Mode::Resilient { tifid } => info!(%tifid, ?peer, "TI-flow accepted"),
        Mode::Legacy => info!(?peer, "plain TCP connection accepted"),
    }
    let target = serve.target;
    let connected = tokio::time::timeout(TARGET_CONNECT_TIMEOUT, TcpStream::connect(target)).await;
    let kernel = match connected {
        Ok(Ok(kernel)) => {
            carry.descriptors.accepting_again();
            Some(kernel)
        }
        Ok(Err(e)) if is_out_of_descriptors(&e) => {
            carry.descriptors.note_refusal();
            None
        }
        Ok(Err(e)) => {
            warn!(%target, error = %e, "cannot reach the local target: aborting flow");
            None
        }
        Err(_) => {
            warn!(%target, "the local target did not answer in time: aborting flow");
            None
        }
    };
    let Some(kernel) = kernel else {
        let _ = ti.abort();
        carry.conns.remove(n);
        return;
    };
    let last = relay(kernel, ti, carry.stop.clone()).await;
    carry.conns.finish(n, last);
}

/// A file descriptor kept in reserve, and the refusals made while none
/// were left.
#[derive(Debug)]
pub(super) struct Descriptors {
    /// Given up for a moment to accept (and reset) a connection that
    /// cannot be served.
    refusal: Mutex<Option<File>>,
    /// Connections refused since descriptors ran out (0: not out).
    refused: Mutex<u64>,
}

impl Descriptors {
    /// Takes a descriptor into reserve (`/dev/null`, opened for
    /// reading).
    pub(super) fn reserve() -> io::Result<Descriptors> {
        Ok(Descriptors {
            refusal: Mutex::new(Some(File::open("/dev/null")?)),
            refused: Mutex::new(0),
        })
    }

    /// Refuses one connection with `refuse_one` (an accept and a reset)
    /// using the reserve descriptor, then takes it back. False when the
    /// reserve was gone, so nothing could be done.
    fn refuse(&self, refuse_one: impl FnOnce() -> io::Result<()>) -> bool {
        let mut reserve = self.refusal.lock().unwrap_or_else(|e| e.into_inner());
        if reserve.take().is_none() {
            return false;
        }
        let result = refuse_one();
        *reserve = File::open("/dev/null").ok();
        match result {
            Ok(()) => {
                self.note_refusal();
                true
            }
            Err(e) => {
                debug!(error = %e, "could not refuse a connection");
                reserve.is_some()
            }
        }
    }

    /// Counts a connection refused for want of descriptors; the first one
    /// says so.
    fn note_refusal(&self) {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if *refused == 0 {
            warn!(
                open_files = open_file_limit(),
                "out of file descriptors: refusing new connections until some close"
            );
        }
        *refused += 1;
    }

    /// A connection was served: if connections were being refused, say
    /// that it is over and how many were.
    fn accepting_again(&self) {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if *refused > 0 {
            info!(
                refused = *refused,
                "file descriptors available again: serving new connections"
            );
            *refused = 0;
        }
    }
}

/// The soft limit on open files, for messages.
fn open_file_limit() -> String {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}

/// Accepts one connection without waiting (the listener is readable), for
/// a refusal.
fn accept_now(listener: &TcpListener) -> io::Result<std::net::TcpStream> {
    let fd = rustix::net::accept_with(listener, rustix::net::SocketFlags::CLOEXEC)?;
    Ok(std::net::TcpStream::from(fd))
}
