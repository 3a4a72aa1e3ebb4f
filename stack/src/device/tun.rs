//! `TunDevice`: a smoltcp [`Device`] (`Medium::Ip`) over a Linux TUN interface.
//!
//! Owns one TUN file descriptor (opened with `tun-tap`, TUN mode, no packet-info
//! header, non-blocking) and two reused packet buffers. It never configures the
//! kernel side of the interface (addresses, link state, MTU): that is the caller's
//! job (see `ti_testnet::NetNs::open_tun`). It must never block in `receive` or
//! `transmit`, and never panic on an I/O error: a failed write is a dropped packet,
//! counted in [`TunStats`].

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::io::{AsRawFd, RawFd};
use std::time::Duration;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use tun_tap::{Iface, Mode};

/// The MTU a [`TunDevice`] assumes unless told otherwise.
pub const DEFAULT_MTU: usize = 1500;

/// Size of the receive buffer: the largest IP packet, so a kernel-side MTU larger
/// than ours never truncates a packet silently.
const RX_BUFFER_LEN: usize = 65535;

/// Packet and error counters of a [`TunDevice`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TunStats {
    /// Packets read from the kernel and handed to smoltcp.
    pub rx_packets: u64,
    /// Packets written to the kernel.
    pub tx_packets: u64,
    /// Packets dropped because the write would block (`EAGAIN`) or the kernel had
    /// no buffer (`ENOBUFS`).
    pub tx_dropped: u64,
    /// Packets lost to any other write error (for example `EIO` while the
    /// interface is down).
    pub tx_errors: u64,
    /// Read errors other than "no packet" (`EAGAIN`).
    pub rx_errors: u64,
}

/// A TUN interface as a smoltcp device (`Medium::Ip`).
///
/// Reads never block: [`Device::receive`] returns `None` when the kernel has no
/// packet queued. Use [`TunDevice::wait`] to sleep until one arrives.
#[derive(Debug)]
pub struct TunDevice {
    iface: Iface,
    mtu: usize,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    stats: TunStats,
    warned: bool,
}

impl TunDevice {
    /// Creates (or attaches to) the TUN interface `name` in the network namespace
    /// of the calling thread, without packet-info header, non-blocking, with an
    /// MTU of [`DEFAULT_MTU`].
    ///
    /// Needs `CAP_NET_ADMIN`. The kernel may pick another name (for example for
    /// `"ti%d"`): see [`TunDevice::name`].
    pub fn open(name: &str) -> io::Result<Self> {
        let iface = Iface::without_packet_info(name, Mode::Tun)?;
        iface.set_non_blocking()?;
        Ok(Self {
            iface,
            mtu: DEFAULT_MTU,
            rx_buf: vec![0; RX_BUFFER_LEN],
            tx_buf: Vec::with_capacity(DEFAULT_MTU),
            stats: TunStats::default(),
            warned: false,
        })
    }

    /// Sets the MTU smoltcp is told about. It does not change the kernel side of
    /// the interface: keep both equal (`ip link set NAME mtu N`).
    pub fn set_mtu(&mut self, mtu: usize) {
        self.mtu = mtu;
    }

    /// Builder form of [`TunDevice::set_mtu`].
    #[must_use]
    pub fn with_mtu(mut self, mtu: usize) -> Self {
        self.set_mtu(mtu);
        self
    }

    /// The MTU smoltcp is told about.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// The interface name the kernel gave the device.
    pub fn name(&self) -> &str {
        self.iface.name()
    }

    /// Packet and error counters since the device was opened.
    pub fn stats(&self) -> TunStats {
        self.stats
    }

    /// Blocks until the kernel has a packet to read, or `timeout` expires
    /// (`None`: wait forever). Returns `Ok(true)` when the device is readable
    /// (or reports an error condition that the next read will surface),
    /// `Ok(false)` on timeout or when a signal interrupted the wait.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        // SAFETY: the fd is owned by `self.iface`, which outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(self.iface.as_raw_fd()) };
        wait_readable(fd, timeout)
    }

    /// A duplicate of the device's fd, to wait on from another thread
    /// while the device itself is borrowed elsewhere.
    pub fn wait_fd(&self) -> io::Result<OwnedFd> {
        // SAFETY: the fd is owned by `self.iface`, which outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(self.iface.as_raw_fd()) };
        fd.try_clone_to_owned()
    }

    /// Warns once about an unexpected I/O error; later ones are only counted.
    fn warn_once(warned: &mut bool, what: &str, err: &io::Error) {
        if !*warned {
            *warned = true;
            tracing::warn!(error = %err, "tun {what} failed (further errors only counted)");
        }
    }
}

impl AsRawFd for TunDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.iface.as_raw_fd()
    }
}

impl Device for TunDevice {
    type RxToken<'a>
        = TunRxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TunTxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        loop {
            match self.iface.recv(&mut self.rx_buf) {
                Ok(len) => {
                    self.stats.rx_packets += 1;
                    let rx = TunRxToken {
                        packet: &self.rx_buf[..len],
                    };
                    let tx = TunTxToken {
                        iface: &self.iface,
                        buf: &mut self.tx_buf,
                        stats: &mut self.stats,
                        warned: &mut self.warned,
                    };
                    return Some((rx, tx));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.stats.rx_errors += 1;
                    Self::warn_once(&mut self.warned, "read", &e);
                    return None;
                }
            }
        }
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(TunTxToken {
            iface: &self.iface,
            buf: &mut self.tx_buf,
            stats: &mut self.stats,
            warned: &mut self.warned,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

/// Receive token of a [`TunDevice`]: a view of the reused receive buffer.
#[derive(Debug)]
pub struct TunRxToken<'a> {
    packet: &'a [u8],
}

impl phy::RxToken for TunRxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.packet)
    }
}

/// Transmit token of a [`TunDevice`]: fills the reused transmit buffer, then
/// writes it with one write(2).
#[derive(Debug)]
pub struct TunTxToken<'a> {
    iface: &'a Iface,
    buf: &'a mut Vec<u8>,
    stats: &'a mut TunStats,
    warned: &'a mut bool,
}

impl phy::TxToken for TunTxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        // Zeroed so no byte of an earlier packet can leak into this one.
        self.buf.clear();
        self.buf.resize(len, 0);
        let result = f(self.buf);
        loop {
            match self.iface.send(self.buf) {
                Ok(_) => self.stats.tx_packets += 1,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.raw_os_error() == Some(libc::ENOBUFS) =>
                {
                    self.stats.tx_dropped += 1;
                }
                Err(e) => {
                    self.stats.tx_errors += 1;
                    TunDevice::warn_once(self.warned, "write", &e);
                }
            }
            break;
        }
        result
    }
}

/// Blocks in ppoll(2) until `fd` is readable or `timeout` passes (with
/// nanosecond precision, so a delay line is released on time). Returns
/// whether it became readable; an interrupted wait counts as not readable.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    wait_readable_any(&[fd], timeout)
}

/// [`wait_readable`] on several fds (at most 4): true when any is readable.
pub fn wait_readable_any(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<bool> {
    let timespec = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
    });
    let timeout_ptr = timespec
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 4];
    let count = fds.len().min(pfds.len());
    for (pfd, fd) in pfds.iter_mut().zip(fds) {
        pfd.fd = fd.as_raw_fd();
    }
    // SAFETY: `pfds` is an array of valid pollfds on this stack frame and
    // `count` does not exceed its length; `timeout_ptr` is null or points to
    // `timespec`, alive for the call; the signal mask pointer is null (keep
    // the current mask). Every fd is borrowed, so it stays open for the call.
    // ppoll only writes `revents`.
    let n = unsafe {
        libc::ppoll(
            pfds.as_mut_ptr(),
            count as libc::nfds_t,
            timeout_ptr,
            std::ptr::null(),
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err);
    }
    Ok(n > 0)
}
