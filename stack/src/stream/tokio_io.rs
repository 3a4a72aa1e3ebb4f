//! The async API (feature `tokio`): [`TiStream`] as tokio's `AsyncRead` and
//! `AsyncWrite`, [`TiListener::accept_async`] and [`Runtime::connect_async`]
//! (or [`Runtime::connect_start`] and [`TiStream::connected`]).
//!
//! Same runtime, same driver thread, same stack lock as the blocking API:
//! a task that finds nothing to do registers its waker while it still
//! holds the stack lock, and a poll that visited its stream wakes it after
//! releasing the lock ([`Stack::take_woken`]), so no wake-up is lost
//! between the check and the registration. Tasks waiting on listeners are
//! woken when a connection joined an accept queue
//! ([`Stack::take_accept_ready`]). Owns only the wakers.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use smoltcp::phy::Device;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Runtime, Shared, TiListener, TiStream};
use crate::device::Wait;
use crate::error::StreamError;
use crate::stack::{Stack, StreamId};

/// Tasks waiting on streams and on listeners.
#[derive(Debug, Default)]
pub(super) struct Wakers {
    streams: HashMap<StreamId, Vec<Waker>>,
    listeners: Vec<Waker>,
}

impl Wakers {
    fn register(list: &mut Vec<Waker>, waker: &Waker) {
        if !list.iter().any(|w| w.will_wake(waker)) {
            list.push(waker.clone());
        }
    }

    /// Wakes (and forgets) the tasks of the `woken` streams, and every
    /// listener task when a connection joined an accept queue.
    pub(super) fn wake(&mut self, woken: &[StreamId], accept_ready: bool) {
        for id in woken {
            if let Some(list) = self.streams.remove(id) {
                list.into_iter().for_each(Waker::wake);
            }
        }
        if accept_ready {
            std::mem::take(&mut self.listeners)
                .into_iter()
                .for_each(Waker::wake);
        }
    }

    /// Wakes every task (the runtime stops).
    pub(super) fn wake_all(&mut self) {
        for (_, list) in self.streams.drain() {
            list.into_iter().for_each(Waker::wake);
        }
        std::mem::take(&mut self.listeners)
            .into_iter()
            .for_each(Waker::wake);
    }

    /// Shrinks the tables to what they hold.
    pub(super) fn shrink_to_fit(&mut self) {
        self.streams.shrink_to_fit();
        self.listeners.shrink_to_fit();
    }

    /// The stream is gone: its tasks need no wake-up.
    pub(super) fn forget(&mut self, id: StreamId) {
        self.streams.remove(&id);
    }
}

impl<D: Device + Wait> Shared<D> {
    /// Runs `f` on the stack and polls it, as [`Shared::act`]; when `f`
    /// returns `Pending`, the task's waker is registered for `stream` (or
    /// for the listeners) before the stack lock is released. Once the
    /// runtime stops, `StackStopped` instead: a stop wakes every
    /// registered task, and one registered after the stop wakes itself.
    fn act_or_wait<R, E: From<StreamError>>(
        &self,
        cx: &Context<'_>,
        stream: Option<StreamId>,
        f: impl FnOnce(&mut Stack<D>) -> Poll<Result<R, E>>,
    ) -> Poll<Result<R, E>> {
        if self.stopped() {
            return Poll::Ready(Err(StreamError::StackStopped.into()));
        }
        self.act(|stack, _| {
            let poll = f(stack);
            if poll.is_pending() {
                let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
                match stream {
                    Some(id) => Wakers::register(wakers.streams.entry(id).or_default(), cx.waker()),
                    None => Wakers::register(&mut wakers.listeners, cx.waker()),
                }
                // A stop between the caller's check and this registration
                // woke the wakers registered before it: wake this one.
                if self.stopped() {
                    cx.waker().wake_by_ref();
                }
            }
            poll
        })
    }

    fn stopped(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

impl<D: Device + Wait> AsyncRead for TiStream<D> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let id = self.id();
        self.shared().act_or_wait(cx, Some(id), |stack| {
            match stack.read(id, buf.initialize_unfilled()) {
                Ok(Some(n)) => {
                    buf.advance(n);
                    Poll::Ready(Ok(()))
                }
                Ok(None) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e.into())),
            }
        })
    }
}

impl<D: Device + Wait> AsyncWrite for TiStream<D> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let id = self.id();
        self.shared()
            .act_or_wait(cx, Some(id), |stack| match stack.write(id, buf) {
                Ok(0) => Poll::Pending,
                Ok(n) => Poll::Ready(Ok(n)),
                Err(e) => Poll::Ready(Err(e.into())),
            })
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are the stack's at once (it sends them as TCP allows).
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let id = self.id();
        Poll::Ready(
            self.shared()
                .act(|stack, _| stack.shutdown_write(id))
                .map_err(io::Error::from),
        )
    }
}

/// Readiness and in-place I/O, for relays that move bytes between a
/// [`TiStream`] and another socket without a buffer of their own (the
/// pattern of tokio's `TcpStream::readable` and `try_read`): wait for
/// readiness, then try; `WouldBlock` means wait again.
impl<D: Device + Wait> TiStream<D> {
    /// Waits until a read would not block: bytes are ready, the peer ended
    /// its stream, or the stream failed (the error).
    pub async fn readable(&self) -> io::Result<()> {
        let id = self.id();
        self.wait_until(|stack| {
            if stack.readable(id) > 0 || stack.is_eof(id) {
                return Some(Ok(()));
            }
            stack.error(id).map(|e| Err(e.into()))
        })
        .await
    }

    /// Waits until a write would take bytes; returns how many it would
    /// take. Fails when the stream failed or was shut down for writing.
    pub async fn writable(&self) -> io::Result<usize> {
        let id = self.id();
        self.wait_until(|stack| {
            if let Some(e) = stack.error(id) {
                return Some(Err(e.into()));
            }
            if stack.is_write_shutdown(id) {
                return Some(Err(StreamError::WriteAfterShutdown.into()));
            }
            let room = stack.writable(id);
            (room > 0).then_some(Ok(room))
        })
        .await
    }

    /// Resolves with the stream's error once it has failed (never, for a
    /// stream that ends well): a relay that waits on the other socket
    /// watches the flow with it.
    pub async fn failed(&self) -> io::Error {
        let id = self.id();
        let failed = self.wait_until(|stack| stack.error(id).map(|e| Ok(io::Error::from(e))));
        match failed.await {
            Ok(e) | Err(e) => e,
        }
    }

    /// Offers the bytes ready to `sink` where they lie in the stream's
    /// receive buffer (two slices, in order; the first never empty) and
    /// consumes as many as it returns: no copy besides `sink`'s own.
    /// `Ok(0)` is the end of stream; `WouldBlock` means nothing is ready;
    /// `sink`'s error is returned as it is, with nothing consumed.
    pub fn try_read_to(
        &self,
        sink: impl FnOnce(&[u8], &[u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let id = self.id();
        let mut sink_error = None;
        let read = self.shared().act(|stack, _| {
            stack.read_in_place(id, |front, back| match sink(front, back) {
                Ok(n) => n,
                Err(e) => {
                    sink_error = Some(e);
                    0
                }
            })
        });
        if let Some(e) = sink_error {
            return Err(e);
        }
        match read {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Lends `source` up to `max` bytes of the send buffer's free space
    /// and queues what it wrote there (its `Ok(n)`): a relay reads a kernel
    /// socket straight into the buffer, no copy besides the kernel's.
    /// `WouldBlock` when the buffer is full (`source` is not called);
    /// `source`'s own result otherwise, `Ok(0)` included.
    pub fn try_write_from(
        &self,
        max: usize,
        source: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let id = self.id();
        let mut called = false;
        let mut result = Ok(0);
        let queued = self.shared().act(|stack, _| {
            stack.write_in_place(id, max, |spare| {
                called = true;
                result = source(spare);
                *result.as_ref().unwrap_or(&0)
            })
        });
        match queued {
            Err(e) => Err(e.into()),
            Ok(_) if !called => Err(io::ErrorKind::WouldBlock.into()),
            Ok(_) => result,
        }
    }

    /// Queues as much of `data` as the send buffer has room for, without
    /// waiting; `WouldBlock` when it is full.
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        let id = self.id();
        match self.shared().act(|stack, _| stack.write(id, data)) {
            Ok(0) if !data.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            Ok(n) => Ok(n),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits, without blocking the thread, until `ready` returns `Some`
    /// (checked under the stack lock, after a poll) or the runtime stops.
    async fn wait_until<R>(
        &self,
        mut ready: impl FnMut(&mut Stack<D>) -> Option<io::Result<R>>,
    ) -> io::Result<R> {
        let id = self.id();
        let shared = self.shared();
        poll_fn(|cx| {
            shared.act_or_wait(cx, Some(id), |stack| match ready(stack) {
                Some(r) => Poll::Ready(r),
                None => Poll::Pending,
            })
        })
        .await
    }
}

impl<D: Device + Wait> TiListener<D> {
    /// Waits, without blocking the thread, for the next connection (TI or
    /// legacy).
    pub async fn accept_async(&self) -> Result<TiStream<D>, StreamError> {
        let id = self.id;
        let shared = &self.shared;
        let stream = poll_fn(|cx| {
            shared.act_or_wait(cx, None, |stack| match stack.accept(id) {
                Ok(Some(s)) => Poll::Ready(Ok(s)),
                Ok(None) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            })
        })
        .await?;
        Ok(TiStream::new(self.shared.clone(), stream))
    }
}

impl<D: Device + Wait + Send + 'static> Runtime<D> {
    /// Opens a connection to `remote` (offering a TI-flow) and waits,
    /// without blocking the thread, until it is established, refused or
    /// timed out (the stack's connect timeout).
    pub async fn connect_async(
        &self,
        remote: impl Into<SocketAddr>,
    ) -> Result<TiStream<D>, StreamError> {
        let stream = self.connect_start(remote)?;
        stream.connected().await?;
        Ok(stream)
    }

    /// Opens a connection to `remote` (offering a TI-flow) and returns its
    /// stream at once, in its handshake (its id is known, its mode is
    /// `Connecting`); [`TiStream::connected`] waits for the handshake.
    pub fn connect_start(&self, remote: impl Into<SocketAddr>) -> Result<TiStream<D>, StreamError> {
        let id = self.shared.act(|stack, now| stack.connect(now, remote))?;
        Ok(TiStream::new(self.shared.clone(), id))
    }
}

impl<D: Device + Wait> TiStream<D> {
    /// Waits, without blocking the thread, until the handshake of a stream
    /// from [`Runtime::connect_start`] is over: established, refused or
    /// timed out (the stack's connect timeout). At once for a stream
    /// already established.
    pub async fn connected(&self) -> Result<(), StreamError> {
        let id = self.id();
        let shared = self.shared();
        poll_fn(|cx| {
            shared.act_or_wait(cx, Some(id), |stack| {
                if let Some(e) = stack.error(id) {
                    return Poll::Ready(Err(e));
                }
                if stack.is_connected(id) {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                }
            })
        })
        .await
    }
}
