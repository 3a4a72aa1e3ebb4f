//! A plain userspace TCP relay for `tiflow bench forward`'s reference path:
//! what any design pays that carries a program's kernel TCP connection
//! through a userspace process on each host, before it adds a TCP of its
//! own.
//!
//! Each accepted connection is joined to a new kernel TCP connection to a
//! fixed target, and the bytes are copied both ways with `read(2)` and
//! `write(2)` through one buffer, one blocking thread per direction (a
//! thread blocked in `read` is woken by the kernel directly: the fewest
//! wake-ups a relay can have), `TCP_NODELAY` on both sockets. That is one
//! copy into and one out of the process per byte, the least a relay that
//! must keep the bytes (as a resumable one must) can do; it has no buffer
//! of its own beyond the one `read`, and no resumption.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::time::{ClockId, clock_gettime};

use ti_testnet::netns::NetNs;

use super::BenchError;
use super::recovery::listen_in;

/// Bytes per `read`.
pub(super) const BUFFER: usize = 256 * 1024;
/// Longest a connection to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a relayed connection may sit idle before the relay drops it
/// (bounds a thread whose peers vanished).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A running relay: a listener in a namespace whose connections are
/// carried to a target. Stops accepting when dropped; connections it
/// carries end with their peers (or after [`IDLE_TIMEOUT`]).
pub struct PlainRelay {
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
    usage: Arc<Usage>,
}

/// What the relay's copying threads have used, and how many still run.
#[derive(Default)]
struct Usage {
    /// CPU time of the copying threads that have ended, in nanoseconds.
    cpu_ns: AtomicU64,
    /// Copying threads still running.
    running: AtomicUsize,
}

impl Usage {
    /// Counts a copying thread in; [`Usage::leave`] counts it out.
    fn enter(&self) {
        self.running.fetch_add(1, Ordering::AcqRel);
    }

    /// Adds the calling thread's CPU time (since it started) and counts
    /// it out.
    fn leave(&self) {
        let cpu = clock_gettime(ClockId::ThreadCPUTime);
        let ns = u64::try_from(cpu.tv_sec).unwrap_or(0) * 1_000_000_000
            + u64::try_from(cpu.tv_nsec).unwrap_or(0);
        self.cpu_ns.fetch_add(ns, Ordering::AcqRel);
        self.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PlainRelay {
    /// Listens on `listen` inside `ns` and carries each connection to
    /// `target`, connecting from inside `ns`.
    pub fn start(ns: &NetNs, listen: &str, target: SocketAddr) -> Result<PlainRelay, BenchError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_in_thread = stop.clone();
        let usage = Arc::new(Usage::default());
        let usage_in_thread = usage.clone();
        let listener = listen_in(ns, listen)?;
        // The accept thread is spawned from a thread inside the namespace,
        // so it (and every thread it spawns) lives there: the connections
        // it makes to `target` leave from the namespace.
        let accept_thread = ns.enter(move || {
            std::thread::spawn(move || {
                accept_until_stopped(&listener, &stop_in_thread, |client| {
                    let usage = usage_in_thread.clone();
                    usage.enter();
                    std::thread::spawn(move || {
                        carry(client, target, &usage);
                        usage.leave();
                    });
                });
            })
        })?;
        Ok(PlainRelay {
            stop,
            accept_thread: Some(accept_thread),
            usage,
        })
    }

    /// Waits up to `timeout` until no connection is being carried; true
    /// when none is.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.usage.running.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// CPU seconds the copying threads of the connections carried so far
    /// have used (a connection's threads count once they have ended: see
    /// [`PlainRelay::wait_idle`]).
    pub fn cpu_seconds(&self) -> f64 {
        self.usage.cpu_ns.load(Ordering::Acquire) as f64 / 1e9
    }
}

impl Drop for PlainRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
    }
}

/// Hands each connection `listener` (non-blocking) accepts to `each`
/// until `stop` is set (looked at every 2 ms while nothing arrives).
pub(super) fn accept_until_stopped(
    listener: &TcpListener,
    stop: &AtomicBool,
    mut each: impl FnMut(TcpStream),
) {
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((s, _)) => each(s),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Carries one accepted connection to `target` until both directions end.
fn carry(client: TcpStream, target: SocketAddr, usage: &Arc<Usage>) {
    let Ok(server) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let prepare = |s: &TcpStream| -> io::Result<()> {
        s.set_nonblocking(false)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IDLE_TIMEOUT))
    };
    if prepare(&client).is_err() || prepare(&server).is_err() {
        return;
    }
    let (Ok(client_reader), Ok(server_writer)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let upstream_usage = usage.clone();
    upstream_usage.enter();
    let upstream = std::thread::spawn(move || {
        copy(client_reader, server_writer);
        upstream_usage.leave();
    });
    copy(server, client);
    let _ = upstream.join();
}

/// Copies `from` to `to` until `from` ends (then half-closes `to`) or
/// either fails (then shuts both down, so the other direction ends too).
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; BUFFER];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
