//! Devices: in-memory link, TUN, delay line, pcap tap, in-process pipe.
//!
//! Each wrapper does one thing and composes with the others
//! (`PcapTap<Delay<TunDevice>>`). Real-time devices also implement [`Wait`],
//! which the driver thread of [`crate::stream::Runtime`] sleeps on.

pub mod delay;
pub mod link;
pub mod pcap_tap;
pub mod pipe;
pub mod tun;

use std::io;
use std::time::Duration;

use smoltcp::time::Instant;

/// Sleeps until a device may have a packet, without borrowing the device
/// (the driver thread waits while application threads use the stack).
pub struct Waiter(Box<dyn Fn(Option<Duration>) -> io::Result<bool> + Send + Sync>);

impl Waiter {
    /// A waiter running `wait`.
    pub fn new(
        wait: impl Fn(Option<Duration>) -> io::Result<bool> + Send + Sync + 'static,
    ) -> Waiter {
        Waiter(Box::new(wait))
    }

    /// Blocks until a packet may be readable or `timeout` passes.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        (self.0)(timeout)
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
        let fd = self.wait_fd()?;
        Ok(Waiter::new(move |timeout| {
            use std::os::fd::AsFd;
            tun::wait_readable(fd.as_fd(), timeout)
        }))
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
