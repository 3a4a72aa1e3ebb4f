//! Where carried connections come from: kernel connections accepted on a
//! `--forward` port (each carried to its remote as a TI-flow) or on the
//! capture listener that `--capture`'s redirect sends them to (each
//! carried to the destination its program asked for), and TI-flows
//! accepted on a `--serve` port or by `--serve-all` on any port (each
//! carried to its local target with kernel TCP). Each connection becomes
//! one relay task.
//!
//! Owns the behaviour when the process runs out of file descriptors: a
//! local connection that cannot be served is refused (accepted with a
//! descriptor kept in reserve for this, and reset at once), with one log
//! line when it starts and one when it ends, instead of a warning per
//! attempt or a listener spinning on `EMFILE`.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener as StdTcpListener};
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
use crate::cidr::IpCidr;
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

/// Where the local connections of one kernel listener go.
#[derive(Debug, Clone)]
pub(super) enum Outbound {
    /// `--forward`: all to its remote.
    Forward(Forward),
    /// `--capture`: each to the destination its program asked for (the
    /// kernel redirected it here), which must be in one of these networks.
    Capture(Arc<[IpCidr]>),
}

impl Outbound {
    /// Where a connection accepted on `listen` from `client` goes, and its
    /// description for `tiflow status`; an error says why it cannot go.
    fn route(
        &self,
        listen: SocketAddr,
        kernel: &TcpStream,
        client: SocketAddr,
    ) -> Result<(SocketAddr, String), String> {
        match self {
            Outbound::Forward(f) => Ok((f.remote, format!("forward {listen} <- {client}"))),
            Outbound::Capture(networks) => {
                let to = original_destination(kernel)
                    .map_err(|e| format!("no original destination ({e}): not redirected"))?;
                if to == listen || !networks.iter().any(|n| n.contains(to.ip())) {
                    return Err(format!(
                        "its destination {to} is not in a captured network: a connection made straight to the capture port"
                    ));
                }
                Ok((to, format!("capture {to} <- {client}")))
            }
        }
    }
}

/// The destination a program connected to before netfilter redirected
/// the connection to us (`SO_ORIGINAL_DST`; the listener's own address
/// for a connection that was not redirected).
fn original_destination(kernel: &TcpStream) -> io::Result<SocketAddr> {
    use rustix::net::sockopt;
    Ok(match kernel.local_addr()? {
        SocketAddr::V4(_) => SocketAddr::V4(sockopt::ip_original_dst(kernel)?),
        SocketAddr::V6(_) => SocketAddr::V6(sockopt::ipv6_original_dst(kernel)?),
    })
}

/// Accepts local connections on a `--forward` port or a capture listener
/// until `tiflow up` stops; each is carried to its remote in its own task.
pub(super) async fn accept_outbound<D: Device + Wait + Send + 'static>(
    outbound: Outbound,
    listener: StdTcpListener,
    carry: Carry<D>,
) {
    let (listener, listen) = match (listener.local_addr(), TcpListener::from_std(listener)) {
        (Ok(listen), Ok(l)) => (l, listen),
        (Err(e), _) | (_, Err(e)) => {
            warn!(?outbound, error = %e, "cannot watch a local listener");
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
                match outbound.route(listen, &kernel, client) {
                    Ok((remote, via)) => {
                        let carry = carry.clone();
                        tokio::spawn(carry_out(remote, via, kernel, client, carry));
                    }
                    Err(why) => {
                        warn!(%client, %listen, "connection refused: {why}");
                        reset_on_close(&kernel);
                    }
                }
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
                warn!(error = %e, %listen, "accept failed");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Carries one local connection to `remote` as a TI-flow (or plain TCP);
/// `via` is how `tiflow status` shows where it came from.
async fn carry_out<D: Device + Wait + Send + 'static>(
    remote: SocketAddr,
    via: String,
    kernel: TcpStream,
    client: SocketAddr,
    carry: Carry<D>,
) {
    let n = carry.conns.add(via);
    info!(%client, %remote, "forwarding a connection");
    let limit = carry.connect_limit;
    // The stream is registered from its first SYN: `tiflow status` shows
    // it (`connecting`, with its age) while the handshake takes.
    let connected = match carry.runtime.connect_start(remote) {
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
            warn!(%client, %remote, error = %e, "cannot reach the remote: resetting local connection");
            reset_on_close(&kernel);
            carry.conns.remove(n);
            return;
        }
    };
    match ti.mode() {
        Mode::Resilient { tifid } => info!(%tifid, %remote, "TI-flow open"),
        Mode::Legacy => info!(%remote, "peer without TI: plain TCP"),
    }
    let last = relay(kernel, ti, carry.stop.clone()).await;
    carry.conns.finish(n, last);
}

/// Where the flows of one stack listener go.
#[derive(Debug, Clone, Copy)]
pub(super) enum Inbound {
    /// `--serve PORT=TARGET`: to its target.
    Serve(Serve),
    /// `--serve-all`: each to the same port on this host, over loopback
    /// of the flow's family.
    All,
}

impl Inbound {
    /// The local target of a flow that came to the stack's `local`
    /// address, and its description for `tiflow status`.
    fn target(self, local: Option<SocketAddr>) -> Option<(SocketAddr, String)> {
        match self {
            Inbound::Serve(s) => Some((s.target, format!("serve {} -> {}", s.port, s.target))),
            Inbound::All => {
                let local = local?;
                let loopback = match local {
                    SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                };
                let target = SocketAddr::new(loopback, local.port());
                Some((target, format!("serve-all {} -> {target}", local.port())))
            }
        }
    }
}

/// Accepts TI-flows (and plain TCP) on a `--serve` port, or on every port
/// for `--serve-all`, until `tiflow up` stops; each is carried to its
/// local target in its own task.
pub(super) async fn accept_serves<D: Device + Wait + Send + 'static>(
    serve: Inbound,
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
                warn!(?serve, error = %e, "stack accept failed");
                return;
            }
        }
    }
}

async fn serve_one<D: Device + Wait + Send + 'static>(
    serve: Inbound,
    ti: ti_stack::TiStream<D>,
    carry: Carry<D>,
) {
    let peer = ti.peer_addr();
    let Some((target, via)) = serve.target(ti.local_addr()) else {
        warn!(
            ?peer,
            "accepted a flow without a local address: aborting it"
        );
        let _ = ti.abort();
        return;
    };
    let n = carry.conns.add(via);
    carry.conns.set_stream(n, Some(ti.id()));
    match ti.mode() {
        Mode::Resilient { tifid } => info!(%tifid, ?peer, %target, "TI-flow accepted"),
        Mode::Legacy => info!(?peer, %target, "plain TCP connection accepted"),
    }
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
