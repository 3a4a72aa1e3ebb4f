//! Devices: in-memory link, TUN (with its virtio-net header codec), delay
//! line, pcap tap, in-process pipe.
//!
//! Each wrapper does one thing and composes with the others
//! (`PcapTap<Delay<TunDevice>>`). Real-time devices also implement [`Wait`],
//! which the driver thread of [`crate::stream::Runtime`] sleeps on.

pub mod delay;
pub mod link;
pub mod pcap_tap;
pub mod pipe;
pub mod tun;
mod tun_sys;
pub mod vnet;

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use smoltcp::time::Instant;

/// Sleeps until a device may have a packet, without borrowing the device
/// (the driver thread waits while application threads use the stack), and
/// can be woken early from another thread.
pub struct Waiter {
    wait: Box<dyn Fn(Option<Duration>) -> io::Result<bool> + Send + Sync>,
    wake: Box<dyn Fn() + Send + Sync>,
}

impl Waiter {
    /// A waiter running `wait`, interrupted by `wake`.
    pub fn new(
        wait: impl Fn(Option<Duration>) -> io::Result<bool> + Send + Sync + 'static,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> Waiter {
        Waiter {
            wait: Box::new(wait),
            wake: Box::new(wake),
        }
    }

    /// A waiter on a readable fd; `wake` interrupts it through a self-pipe.
    pub fn on_fd(fd: OwnedFd) -> io::Result<Waiter> {
        let (wake_rx, wake_tx) = UnixStream::pair()?;
        wake_rx.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        Ok(Waiter::new(
            move |timeout| {
                let readable = tun::wait_readable_any(&[fd.as_fd(), wake_rx.as_fd()], timeout)?;
                let mut sink = [0u8; 64];
                while matches!((&wake_rx).read(&mut sink), Ok(n) if n > 0) {}
                Ok(readable)
            },
            move || {
                // A full pipe already holds a wake-up: nothing to add.
                let _ = (&wake_tx).write(&[1]);
            },
        ))
    }

    /// Blocks until a packet may be readable, `wake` is called, or `timeout`
    /// passes. Returns true when the device or the wake-up became readable.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        (self.wait)(timeout)
    }

    /// Ends a `wait` in progress (or the next one) early.
    pub fn wake(&self) {
        (self.wake)()
    }
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waiter")
    }
}

/// A device a driver thread can sleep on.
pub trait Wait {
    /// A waiter for this device's receive side.
    fn waiter(&self) -> io::Result<Waiter>;

    /// The device's own next deadline (a delay line releasing a packet), if any.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
}

impl Wait for tun::TunDevice {
    fn waiter(&self) -> io::Result<Waiter> {
        Waiter::on_fd(self.wait_fd()?)
    }
}

impl<D: smoltcp::phy::Device + Wait> Wait for delay::Delay<D> {
    fn waiter(&self) -> io::Result<Waiter> {
        self.inner().waiter()
    }

    fn next_deadline(&self) -> Option<Instant> {
        match (self.next_release(), self.inner().next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl<D: smoltcp::phy::Device + Wait> Wait for pcap_tap::PcapTap<D> {
    fn waiter(&self) -> io::Result<Waiter> {
        self.inner().waiter()
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.inner().next_deadline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_waiter_reports_readable_and_is_woken_from_another_thread() {
        let (device_end, peer) = UnixStream::pair().expect("socketpair");
        let waiter =
            Waiter::on_fd(device_end.as_fd().try_clone_to_owned().expect("dup")).expect("waiter");
        assert!(
            !waiter.wait(Some(Duration::from_millis(1))).expect("wait"),
            "nothing to read yet"
        );
        (&peer).write_all(b"x").expect("write");
        assert!(
            waiter.wait(Some(Duration::from_secs(60))).expect("wait"),
            "device readable"
        );
        let mut sink = [0u8; 1];
        (&device_end).read_exact(&mut sink).expect("drain");

        let waiter = std::sync::Arc::new(waiter);
        let waker = waiter.clone();
        let started = std::time::Instant::now();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            waker.wake();
        });
        // Without the wake this would sleep for an hour.
        waiter.wait(Some(Duration::from_secs(3600))).expect("wait");
        t.join().expect("waker thread");
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the wake ended the wait"
        );
    }
}
