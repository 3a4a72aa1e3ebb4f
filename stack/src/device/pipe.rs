//! An in-process, real-time point-to-point link: two devices, one per end.
//!
//! Owns [`Pipe`]: packets written at one end appear at the other at once (add
//! a [`crate::device::delay::Delay`] for latency). It lets two stacks, each
//! driven by its own thread in real time, talk without TUN devices or
//! privileges: for tests of the blocking API and for benchmarks. Bounded
//! queues; a full queue drops the packet, as a wire would.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::{Wait, Waiter};

/// Packets queued per direction before drops.
const QUEUE_LIMIT: usize = 4096;

#[derive(Debug, Default)]
struct Queue {
    packets: Mutex<VecDeque<Vec<u8>>>,
    ready: Condvar,
}

/// One end of an in-process link.
#[derive(Debug, Clone)]
pub struct Pipe {
    rx: Arc<Queue>,
    tx: Arc<Queue>,
    mtu: usize,
}

impl Pipe {
    /// Two connected ends with the given IP MTU.
    pub fn pair(mtu: usize) -> (Pipe, Pipe) {
        let a = Arc::new(Queue::default());
        let b = Arc::new(Queue::default());
        (
            Pipe {
                rx: a.clone(),
                tx: b.clone(),
                mtu,
            },
            Pipe { rx: b, tx: a, mtu },
        )
    }
}

fn lock(queue: &Queue) -> std::sync::MutexGuard<'_, VecDeque<Vec<u8>>> {
    // A poisoned queue still holds valid packets.
    queue.packets.lock().unwrap_or_else(|e| e.into_inner())
}

impl Wait for Pipe {
    fn waiter(&self) -> io::Result<Waiter> {
        let rx = self.rx.clone();
        let woken = rx.clone();
        Ok(Waiter::new(
            move |timeout| {
                let guard = lock(&rx);
                if !guard.is_empty() {
                    return Ok(true);
                }
                let timeout = timeout.unwrap_or(Duration::from_secs(3600));
                let (guard, _) = rx
                    .ready
                    .wait_timeout(guard, timeout)
                    .unwrap_or_else(|e| e.into_inner());
                Ok(!guard.is_empty())
            },
            move || woken.ready.notify_all(),
        ))
    }
}

/// Receive token of a [`Pipe`].
#[derive(Debug)]
pub struct PipeRx(Vec<u8>);

/// Transmit token of a [`Pipe`].
#[derive(Debug)]
pub struct PipeTx<'a>(&'a Queue);

impl phy::RxToken for PipeRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for PipeTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0u8; len];
        let result = f(&mut packet);
        let mut queue = lock(self.0);
        if queue.len() < QUEUE_LIMIT {
            queue.push_back(packet);
            self.0.ready.notify_all();
        }
        result
    }
}

impl Device for Pipe {
    type RxToken<'a> = PipeRx;
    type TxToken<'a> = PipeTx<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(PipeRx, PipeTx<'_>)> {
        let packet = lock(&self.rx).pop_front()?;
        Some((PipeRx(packet), PipeTx(&self.tx)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<PipeTx<'_>> {
        Some(PipeTx(&self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}
