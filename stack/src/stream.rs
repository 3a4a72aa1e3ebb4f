//! The application API: blocking [`TiStream`] and [`TiListener`] over a
//! [`Stack`] driven in real time by its own thread ([`Runtime`]).
//!
//! Owns the driver thread, the monotonic clock and the locking: the stack
//! sits behind one mutex; application calls lock it, act, and poll the stack
//! at once (so a write leaves without waiting for the driver), then sleep on
//! their stream's condition variable, which a poll signals only when it
//! visited that stream ([`Stack::take_woken`]): a thousand idle streams'
//! threads stay asleep. Listeners wait on one shared condition variable,
//! signalled when a connection joined an accept queue. The driver
//! sleeps on the device (fd or queue) until a packet or the stack's next
//! deadline. It never makes a protocol decision.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use smoltcp::phy::Device;
use smoltcp::time::Instant;
use tracing::warn;

#[cfg(feature = "tokio")]
mod tokio_io;

use crate::config::StackConfig;
use crate::device::{Wait, Waiter};
use crate::error::{StreamError, StreamEvent};
use crate::stack::{ListenerId, Resources, Stack, StreamId, StreamInfo, StreamMode};
use tifid::handshake::Mode;

/// Longest the driver sleeps, so deadlines set by application calls are
/// never missed by more than this.
const MAX_SLEEP: Duration = Duration::from_millis(5);

/// With [`StackConfig::low_latency`], deadlines closer than this are met by
/// polling instead of sleeping (a wake-up from sleep is late by about this
/// much on a loaded machine).
const SPIN_BELOW: Duration = Duration::from_micros(100);

/// A monotonic clock in smoltcp's units.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: std::time::Instant,
}

impl Clock {
    fn now(&self) -> Instant {
        Instant::from_micros(self.start.elapsed().as_micros() as i64)
    }
}

struct Shared<D: Device + Wait> {
    stack: Mutex<Stack<D>>,
    waiter: Waiter,
    /// Listeners' waits (signalled when a connection joined an accept
    /// queue).
    changed: Condvar,
    /// Each stream's waits, signalled when a poll visited the stream.
    stream_waits: Mutex<HashMap<StreamId, Arc<Condvar>>>,
    /// Async tasks waiting on a stream (woken, then forgotten, when a poll
    /// visited it) and on any listener (woken when a connection joined an
    /// accept queue).
    #[cfg(feature = "tokio")]
    wakers: Mutex<tokio_io::Wakers>,
    stopping: AtomicBool,
    clock: Clock,
}

impl<D: Device + Wait> Shared<D> {
    fn lock(&self) -> MutexGuard<'_, Stack<D>> {
        // A panic while holding the lock leaves the stack in a state no
        // invariant check covers; keep serving rather than cascade panics.
        self.stack.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the stack, then polls it so the effect leaves at once.
    fn act<R>(&self, f: impl FnOnce(&mut Stack<D>, Instant) -> R) -> R {
        let mut stack = self.lock();
        let now = self.clock.now();
        let result = f(&mut stack, now);
        stack.poll(now);
        // Packets held by the device (a delay line) or timers set by this
        // call may be due before the driver's current sleep ends.
        let wake_driver = stack.device().next_deadline().is_some();
        let woken = stack.take_woken();
        let accept_ready = stack.take_accept_ready();
        drop(stack);
        if wake_driver {
            self.waiter.wake();
        }
        self.notify(&woken, accept_ready);
        result
    }

    /// Signals the waits of the `woken` streams, and the listeners' when a
    /// connection joined an accept queue (`accept_ready`).
    fn notify(&self, woken: &[StreamId], accept_ready: bool) {
        #[cfg(feature = "tokio")]
        self.wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wake(woken, accept_ready);
        if !woken.is_empty() {
            let waits = self.stream_waits.lock().unwrap_or_else(|e| e.into_inner());
            for id in woken {
                if let Some(cv) = waits.get(id) {
                    cv.notify_all();
                }
            }
        }
        if accept_ready {
            self.changed.notify_all();
        }
    }

    /// Signals every wait (the runtime stops).
    fn notify_everyone(&self) {
        #[cfg(feature = "tokio")]
        self.wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wake_all();
        let waits = self.stream_waits.lock().unwrap_or_else(|e| e.into_inner());
        for cv in waits.values() {
            cv.notify_all();
        }
        self.changed.notify_all();
    }

    /// Blocks on `cv` until `ready` returns `Some`, the timeout passes or
    /// the runtime stops (`ready` is checked again at least every 100 ms).
    fn wait_for<R>(
        &self,
        cv: &Condvar,
        timeout: Option<Duration>,
        mut ready: impl FnMut(&mut Stack<D>) -> Option<R>,
    ) -> Result<Option<R>, StreamError> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut stack = self.lock();
        loop {
            if let Some(r) = ready(&mut stack) {
                return Ok(Some(r));
            }
            if self.stopping.load(Ordering::Acquire) {
                return Err(StreamError::StackStopped);
            }
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(std::time::Instant::now()) {
                    Some(left) => left.min(Duration::from_millis(100)),
                    None => return Ok(None),
                },
                None => Duration::from_millis(100),
            };
            stack = cv
                .wait_timeout(stack, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A stack and the thread that drives it in real time.
pub struct Runtime<D: Device + Wait + Send + 'static> {
    shared: Arc<Shared<D>>,
    driver: Option<JoinHandle<()>>,
}

impl<D: Device + Wait + Send + 'static> Runtime<D> {
    /// Builds a stack on `device` and starts its driver thread.
    pub fn start(config: StackConfig, device: D) -> io::Result<Runtime<D>> {
        let waiter = device.waiter()?;
        let clock = Clock {
            start: std::time::Instant::now(),
        };
        let spin_below = if config.low_latency {
            SPIN_BELOW
        } else {
            Duration::ZERO
        };
        let stack = Stack::new(config, device, clock.now());
        let shared = Arc::new(Shared {
            stack: Mutex::new(stack),
            waiter,
            changed: Condvar::new(),
            stream_waits: Mutex::new(HashMap::new()),
            #[cfg(feature = "tokio")]
            wakers: Mutex::new(tokio_io::Wakers::default()),
            stopping: AtomicBool::new(false),
            clock,
        });
        let driver_shared = shared.clone();
        let driver = std::thread::Builder::new()
            .name("tiflow-driver".into())
            .spawn(move || drive(&driver_shared, spin_below))?;
        Ok(Runtime {
            shared,
            driver: Some(driver),
        })
    }

    /// Opens a connection to `remote` (offering a TI-flow) and waits until it
    /// is established, refused or timed out.
    pub fn connect(&self, remote: impl Into<SocketAddr>) -> Result<TiStream<D>, StreamError> {
        let id = self.shared.act(|stack, now| stack.connect(now, remote))?;
        let stream = TiStream::new(self.shared.clone(), id);
        let timeout = self.shared.lock().config().connect_timeout + Duration::from_secs(1);
        let outcome = self
            .shared
            .wait_for(stream.wait(), Some(timeout), |stack| {
                if let Some(e) = stack.error(id) {
                    return Some(Err(e));
                }
                stack.is_connected(id).then_some(Ok(()))
            })?;
        match outcome {
            Some(Ok(())) => Ok(stream),
            Some(Err(e)) => Err(e),
            None => Err(StreamError::TimedOut),
        }
    }

    /// Listens on `port`.
    pub fn listen(&self, port: u16) -> Result<TiListener<D>, StreamError> {
        let id = self.shared.act(|stack, _| stack.listen(port))?;
        Ok(TiListener {
            shared: self.shared.clone(),
            id,
            port,
        })
    }

    /// Listens on every port no [`Runtime::listen`] listener holds, or
    /// only on those in `ports` (inclusive ranges) when it is not empty
    /// ([`Stack::listen_any`]); its listener's [`TiListener::port`] is 0,
    /// and an accepted stream's [`TiStream::local_addr`] tells the port.
    pub fn listen_any(
        &self,
        ports: Vec<std::ops::RangeInclusive<u16>>,
    ) -> Result<TiListener<D>, StreamError> {
        let id = self.shared.act(|stack, _| stack.listen_any(ports))?;
        Ok(TiListener {
            shared: self.shared.clone(),
            id,
            port: 0,
        })
    }

    /// A snapshot of every stream, for status displays.
    pub fn stream_infos(&self) -> Vec<StreamInfo> {
        self.shared.lock().stream_infos()
    }

    /// What the stack holds and what its bounds turned away.
    pub fn resources(&self) -> Resources {
        self.shared.lock().resources()
    }

    /// What happened to the flows since the stack started
    /// ([`Stack::metrics`]).
    pub fn metrics(&self) -> crate::FlowMetrics {
        self.shared.lock().metrics()
    }

    /// Gives back memory held for connections and streams that have gone
    /// ([`Stack::shrink_to_fit`], and the runtime's own tables of waits).
    pub fn shrink_to_fit(&self) {
        self.shared.lock().shrink_to_fit();
        self.shared
            .stream_waits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shrink_to_fit();
        #[cfg(feature = "tokio")]
        self.shared
            .wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shrink_to_fit();
    }

    /// Runs `f` on the stack under the lock (then polls it).
    pub fn with_stack<R>(&self, f: impl FnOnce(&mut Stack<D>, Instant) -> R) -> R {
        self.shared.act(f)
    }

    /// Stops the driver. Streams still open fail with `StackStopped`.
    pub fn stop(mut self) {
        self.stop_driver();
    }

    fn stop_driver(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.waiter.wake();
        self.shared.notify_everyone();
        if let Some(driver) = self.driver.take()
            && driver.join().is_err()
        {
            warn!("driver thread panicked");
        }
    }
}

impl<D: Device + Wait + Send + 'static> Drop for Runtime<D> {
    fn drop(&mut self) {
        self.stop_driver();
    }
}

/// The driver loop: poll, wake waiters, sleep until a packet or a deadline
/// (polling instead through the last `spin_below`, with precise timers,
/// when it is not zero: [`StackConfig::low_latency`]).
fn drive<D: Device + Wait>(shared: &Shared<D>, spin_below: Duration) {
    if !spin_below.is_zero() {
        precise_timers();
    }
    while !shared.stopping.load(Ordering::Acquire) {
        let sleep = {
            let mut stack = shared.lock();
            let now = shared.clock.now();
            stack.poll(now);
            let mut next = stack.poll_at(now);
            if let Some(deadline) = stack.device().next_deadline() {
                next = next.min(deadline);
            }
            let woken = stack.take_woken();
            let accept_ready = stack.take_accept_ready();
            drop(stack);
            shared.notify(&woken, accept_ready);
            Duration::from_micros((next - now).total_micros()).min(MAX_SLEEP)
        };
        if sleep.is_zero() || sleep < spin_below {
            // Waking from a sleep takes tens of microseconds; a deadline this
            // close is met by polling again.
            std::thread::yield_now();
        } else if let Err(e) = shared.waiter.wait(Some(sleep - spin_below)) {
            warn!(error = %e, "device wait failed");
            std::thread::sleep(MAX_SLEEP);
        }
    }
}

/// The shared part of a stream's handles: closes the stream when the last
/// handle goes.
struct StreamRef<D: Device + Wait> {
    shared: Arc<Shared<D>>,
    id: StreamId,
    /// This stream's waits (registered in `Shared::stream_waits`).
    wait: Arc<Condvar>,
}

impl<D: Device + Wait> Drop for StreamRef<D> {
    fn drop(&mut self) {
        self.shared
            .stream_waits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        #[cfg(feature = "tokio")]
        self.shared
            .wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget(self.id);
        self.shared.act(|stack, now| stack.close(now, self.id));
    }
}

/// A byte stream to a peer: a TI-flow that survives the loss of its TCP
/// connection, or plain TCP when the peer or the path does not support it.
pub struct TiStream<D: Device + Wait> {
    inner: Arc<StreamRef<D>>,
    read_timeout: Option<Duration>,
}

impl<D: Device + Wait> TiStream<D> {
    fn new(shared: Arc<Shared<D>>, id: StreamId) -> TiStream<D> {
        let wait = Arc::new(Condvar::new());
        shared
            .stream_waits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, wait.clone());
        TiStream {
            inner: Arc::new(StreamRef { shared, id, wait }),
            read_timeout: None,
        }
    }

    fn shared(&self) -> &Shared<D> {
        &self.inner.shared
    }

    /// The condition variable this stream's calls wait on.
    fn wait(&self) -> &Condvar {
        &self.inner.wait
    }

    /// The stream's id in its stack (as [`StreamInfo`] and the
    /// [`Stack`] calls name it).
    pub fn id(&self) -> StreamId {
        self.inner.id
    }

    /// Another handle to the same stream (for reading and writing from two
    /// threads). The stream closes when the last handle is dropped.
    pub fn try_clone(&self) -> TiStream<D> {
        TiStream {
            inner: self.inner.clone(),
            read_timeout: self.read_timeout,
        }
    }

    /// Resilient (with its TIFID) or legacy TCP.
    pub fn mode(&self) -> Mode {
        match self.shared().lock().mode(self.id()) {
            Some(StreamMode::Known(mode)) => mode,
            _ => Mode::Legacy,
        }
    }

    /// The original peer, unchanged across resumes.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.shared().lock().peer_addr(self.id())
    }

    /// Our end of the current TCP connection (changes on resume).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared().lock().local_addr(self.id())
    }

    /// Events since the last call (resumes, fallback, loss).
    pub fn events(&self) -> Vec<StreamEvent> {
        let mut stack = self.shared().lock();
        std::iter::from_fn(|| stack.poll_event(self.id())).collect()
    }

    /// Waits up to `timeout` for the next event.
    pub fn next_event(&self, timeout: Duration) -> Result<Option<StreamEvent>, StreamError> {
        let id = self.id();
        self.shared()
            .wait_for(self.wait(), Some(timeout), |stack| stack.poll_event(id))
    }

    /// Abandons the current TCP connection as if a middlebox had killed it:
    /// the flow resumes on a new one (the paper's sysctl).
    pub fn fail_transport(&self) -> Result<(), StreamError> {
        self.shared()
            .act(|stack, _| stack.fail_transport(self.id()))
    }

    /// Sends the flow's later resumes to `peer`, of either family (see
    /// [`crate::Stack::set_resume_peer`]).
    pub fn set_resume_peer(&self, peer: impl Into<SocketAddr>) -> Result<(), StreamError> {
        let peer = peer.into();
        self.shared()
            .act(|stack, _| stack.set_resume_peer(self.id(), peer))
    }

    /// Ends the stream at both ends at once, without resume: queued data is
    /// discarded and the peer's program sees a reset (DESIGN §4 "Abort").
    pub fn abort(&self) -> Result<(), StreamError> {
        self.shared().act(|stack, now| stack.abort(now, self.id()))
    }

    /// Shuts down writing (a TI FIN after the queued data); `Read` has no
    /// effect beyond discarding what arrives later.
    pub fn shutdown(&self, how: Shutdown) -> Result<(), StreamError> {
        match how {
            Shutdown::Write | Shutdown::Both => self
                .shared()
                .act(|stack, _| stack.shutdown_write(self.id())),
            Shutdown::Read => Ok(()),
        }
    }

    /// Sets how long `read` blocks (`None`: forever).
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// Waits until the peer's TCP acknowledged everything written, or `timeout`.
    pub fn wait_acknowledged(&self, timeout: Duration) -> Result<bool, StreamError> {
        let id = self.id();
        let done = self
            .shared()
            .wait_for(self.wait(), Some(timeout), |stack| {
                if let Some(e) = stack.error(id) {
                    return Some(Err(e));
                }
                (stack.unacknowledged(id) == 0).then_some(Ok(()))
            })?;
        match done {
            Some(Ok(())) => Ok(true),
            Some(Err(e)) => Err(e),
            None => Ok(false),
        }
    }

    /// Counters of this stream.
    pub fn info(&self) -> Option<StreamInfo> {
        self.shared().lock().stream_info(self.id())
    }
}

impl<D: Device + Wait> Read for TiStream<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let id = self.id();
        let got = self
            .shared()
            .wait_for(self.wait(), self.read_timeout, |stack| {
                match stack.read(id, buf) {
                    Ok(Some(n)) => Some(Ok(n)),
                    Ok(None) => None,
                    Err(e) => Some(Err(e)),
                }
            })?;
        match got {
            Some(Ok(n)) => {
                // Room opened in the receive buffer: let the window reopen now.
                self.shared().act(|_, _| ());
                Ok(n)
            }
            Some(Err(e)) => Err(e.into()),
            None => Err(io::Error::new(io::ErrorKind::WouldBlock, "read timed out")),
        }
    }
}

impl<D: Device + Wait> Write for TiStream<D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let id = self.id();
        loop {
            let n = self.shared().act(|stack, _| stack.write(id, buf))?;
            if n > 0 {
                return Ok(n);
            }
            self.shared()
                .wait_for(self.wait(), Some(Duration::from_millis(100)), |stack| {
                    (stack.writable(id) > 0 || stack.error(id).is_some()).then_some(())
                })?;
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Accepts incoming connections on a port.
pub struct TiListener<D: Device + Wait> {
    shared: Arc<Shared<D>>,
    id: ListenerId,
    port: u16,
}

impl<D: Device + Wait> TiListener<D> {
    /// The port listened on (0 for the any-port listener).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for the next connection (TI or legacy).
    pub fn accept(&self) -> Result<TiStream<D>, StreamError> {
        self.accept_timeout(None)?.ok_or(StreamError::TimedOut)
    }

    /// Waits up to `timeout` for the next connection.
    pub fn accept_timeout(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Option<TiStream<D>>, StreamError> {
        let id = self.id;
        let got = self
            .shared
            .wait_for(&self.shared.changed, timeout, |stack| {
                match stack.accept(id) {
                    Ok(Some(s)) => Some(Ok(s)),
                    Ok(None) => None,
                    Err(e) => Some(Err(e)),
                }
            })?;
        match got {
            Some(Ok(s)) => Ok(Some(TiStream::new(self.shared.clone(), s))),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }
}

impl<D: Device + Wait> Drop for TiListener<D> {
    fn drop(&mut self) {
        let id = self.id;
        self.shared.act(|stack, now| stack.unlisten(now, id));
    }
}

/// Asks the kernel to fire this thread's timers on time: the default 50 us
/// timer slack would delay every release of a delay line and every
/// retransmission deadline by up to that much.
fn precise_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only changes
    // the calling thread's timer slack; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "could not lower the timer slack");
    }
}
