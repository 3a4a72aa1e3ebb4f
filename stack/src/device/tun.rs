//! `TunDevice`: a smoltcp [`Device`] (`Medium::Ip`) over a Linux TUN interface.
//!
//! Owns one TUN file descriptor (TUN mode, no packet-info header,
//! non-blocking; opened by [`super::tun_sys`]) and two reused packet buffers.
//! With offloads ([`Offloads::Active`]) every packet carries a virtio-net
//! header ([`super::vnet`]): smoltcp may emit TCP/IPv4 segments of up to
//! 63 KiB ([`MAX_GSO_PACKET`]), which the kernel cuts to the segment size
//! smoltcp asked for (the path's MSS, so peers never see more), and the
//! kernel hands us coalesced TCP segments of either family of up to 64
//! KiB, taken whole. TCP/IPv6 segments we send stay at the path's MSS (see
//! [`OFFLOAD_FLAGS`]), their checksums left to the kernel. The MTU smoltcp
//! is told stays the path's: the MSS smoltcp advertises and the MSS it cuts
//! to are unchanged. When the kernel refuses the header or the offloads,
//! the device falls back to plain packets and says so at INFO.
//!
//! It never configures the kernel side of the interface (addresses, link
//! state, MTU): that is the caller's job (see `ti_testnet::NetNs::open_tun`).
//! It must never block in `receive` or `transmit`, and never panic on an I/O
//! error or a bad header: a failed write is a dropped packet and a bad read
//! a dropped one, each counted in [`TunStats`].

use std::fs::File;
use std::io::{self, Read, Write};
use std::num::{NonZeroU16, NonZeroUsize};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::io::{AsRawFd, RawFd};
use std::time::Duration;

use smoltcp::phy::{self, Checksum, Device, DeviceCapabilities, Medium, PacketMeta};
use smoltcp::time::Instant;

use super::tun_sys;
use super::vnet::{self, HEADER_LEN, Ingress, VnetHeader};

/// The MTU a [`TunDevice`] assumes unless told otherwise.
pub const DEFAULT_MTU: usize = 1500;

/// The largest TCP/IPv4 packet smoltcp builds for the kernel to cut
/// (offloads on).
///
/// Not the 65,535 bytes an IPv4 packet may hold: the kernel cuts in
/// software any segment that, with its link-layer header, reaches the
/// `gso_max_size` of the device it leaves by (65,536 by default; the
/// kernel's `gso_features_check`). A 65,535-byte packet forwarded to an
/// Ethernet link is 65,549 bytes there, so it was cut at the first hop
/// and every hop after it (a NAT's conntrack, the peer's kernel and TUN)
/// handled some 45 packets instead of one. Kernel TCP leaves room for its
/// headers in the same way (`sk_gso_max_size` is the device's less
/// `MAX_TCP_HEADER`, about 320 bytes); 1 KiB leaves room for any link
/// header and an encapsulation on the way.
pub const MAX_GSO_PACKET: usize = 64 * 1024 - 1024;

/// The largest packet the receive buffer holds: an IPv6 header and the
/// largest payload its length field allows (more than the largest IPv4 packet),
/// so a kernel-side MTU larger than ours, or a coalesced segment of either
/// family, is never truncated.
const MAX_RX_PACKET: usize = 40 + 65535;

/// Offloads asked of the kernel: checksums, and TCP segmentation for both
/// families. TSO6 serves one direction only: the kernel hands us coalesced
/// TCP/IPv6 segments (`GSO_TCPV6`), but smoltcp 0.14 drops an IPv6 packet
/// larger than the MTU even with a segment size (it has no IPv6
/// fragmentation and does not look at the size there), so our IPv6
/// segments leave at the path's MSS: the device never asks smoltcp for
/// large IPv6 segments (`caps.segmentation.tcpv6` stays `None`).
const OFFLOAD_FLAGS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;

/// Bad packets skipped in one `receive` call before it returns `None`
/// (bounds the call; the rest wait for the next one).
const BAD_READS_PER_CALL: usize = 64;

/// Whether to try the kernel's offloads when opening a [`TunDevice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffloadRequest {
    /// Use them when the kernel allows (the default).
    #[default]
    Auto,
    /// Plain packets of at most the MTU, whatever the kernel offers.
    Off,
}

/// The mode a [`TunDevice`] runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offloads {
    /// Virtio-net header, checksum offload, TCP/IPv4 segmentation both
    /// ways and coalesced TCP/IPv6 segments in.
    Active,
    /// Plain packets of at most the MTU, and why.
    Off(OffloadOff),
}

/// Why a [`TunDevice`] runs without offloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadOff {
    /// [`OffloadRequest::Off`] was asked for.
    NotRequested,
    /// The kernel refused `IFF_VNET_HDR`.
    VnetHeaderRefused,
    /// The kernel refused `TUNSETOFFLOAD`.
    OffloadRefused,
}

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
    /// interface is down), or that could not be written as they were (larger
    /// than the MTU without a segment size).
    pub tx_errors: u64,
    /// Read errors other than "no packet" (`EAGAIN`).
    pub rx_errors: u64,
    /// Of `tx_packets`: TCP/IPv4 segments larger than one MSS written for
    /// the kernel to cut (offloads only; never TCP/IPv6).
    pub tx_gso_packets: u64,
    /// The largest segment size (`gso_size`) asked of the kernel: the
    /// payload of the segments it cut, which peers see.
    pub tx_gso_size_max: u16,
    /// Of `rx_packets`: coalesced TCP segments (IPv4 or IPv6) the kernel
    /// handed us whole (offloads only).
    pub rx_coalesced: u64,
    /// Of `rx_packets`: packets whose partial checksum was completed here.
    pub rx_checksums_completed: u64,
    /// Packets read and dropped for a bad virtio-net header (truncated,
    /// unknown flags or GSO type, checksum field outside the packet).
    pub rx_bad_header: u64,
}

/// A TUN interface as a smoltcp device (`Medium::Ip`).
///
/// Reads never block: [`Device::receive`] returns `None` when the kernel has no
/// packet queued. Use [`TunDevice::wait`] to sleep until one arrives.
#[derive(Debug)]
pub struct TunDevice {
    /// The TUN file (read and written with std's `Read`/`Write` for `&File`).
    fd: File,
    name: String,
    mtu: usize,
    offloads: Offloads,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    stats: TunStats,
    warned: bool,
}

impl TunDevice {
    /// Creates (or attaches to) the TUN interface `name` in the network namespace
    /// of the calling thread, without packet-info header, non-blocking, with an
    /// MTU of [`DEFAULT_MTU`], with offloads when the kernel allows
    /// ([`OffloadRequest::Auto`]).
    ///
    /// Needs `CAP_NET_ADMIN`. The kernel may pick another name (for example for
    /// `"ti%d"`): see [`TunDevice::name`].
    pub fn open(name: &str) -> io::Result<Self> {
        Self::open_with(name, OffloadRequest::Auto)
    }

    /// [`TunDevice::open`], with offloads as `request` says. Which mode the
    /// device runs in is [`TunDevice::offloads`] (logged at INFO).
    pub fn open_with(name: &str, request: OffloadRequest) -> io::Result<Self> {
        let (fd, given, offloads) = match request {
            OffloadRequest::Off => {
                let (fd, given) = tun_sys::open(name, false)?;
                (fd, given, Offloads::Off(OffloadOff::NotRequested))
            }
            OffloadRequest::Auto => open_offloading(name)?,
        };
        match offloads {
            Offloads::Active => tracing::info!(
                tun = %given,
                "tun offloads on: virtio-net header, checksum offload, TCP segmentation (TCP/IPv4 segments of up to 63 KiB out and 64 KiB in, coalesced TCP/IPv6 segments in)"
            ),
            Offloads::Off(why) => {
                tracing::info!(tun = %given, reason = ?why, "tun offloads off: plain packets");
            }
        }
        let header = match offloads {
            Offloads::Active => HEADER_LEN,
            Offloads::Off(_) => 0,
        };
        Ok(Self {
            fd: File::from(fd),
            name: given,
            mtu: DEFAULT_MTU,
            offloads,
            rx_buf: vec![0; header + MAX_RX_PACKET],
            tx_buf: Vec::with_capacity(header + DEFAULT_MTU),
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
        &self.name
    }

    /// The mode the device runs in.
    pub fn offloads(&self) -> Offloads {
        self.offloads
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
        wait_readable(self.fd.as_fd(), timeout)
    }

    /// A duplicate of the device's fd, to wait on from another thread
    /// while the device itself is borrowed elsewhere.
    pub fn wait_fd(&self) -> io::Result<OwnedFd> {
        self.fd.as_fd().try_clone_to_owned()
    }

    fn vnet(&self) -> bool {
        self.offloads == Offloads::Active
    }

    /// Warns once about an unexpected I/O error; later ones are only counted.
    fn warn_once(warned: &mut bool, what: &str, err: &dyn std::fmt::Display) {
        if !*warned {
            *warned = true;
            tracing::warn!(error = %err, "tun {what} failed (further errors only counted)");
        }
    }
}

/// Opens `name` with a virtio-net header and offloads, or falls back to
/// plain packets when the kernel refuses either.
fn open_offloading(name: &str) -> io::Result<(OwnedFd, String, Offloads)> {
    let (fd, given) = match tun_sys::open(name, true) {
        Ok(opened) => opened,
        Err(refused) => {
            // Plain fails too when the cause was not the header (no
            // permission, no /dev/net/tun): that error is returned.
            let (fd, given) = tun_sys::open(name, false)?;
            tracing::info!(error = %refused, tun = %given, "kernel refused IFF_VNET_HDR");
            return Ok((fd, given, Offloads::Off(OffloadOff::VnetHeaderRefused)));
        }
    };
    match tun_sys::set_offload(fd.as_fd(), OFFLOAD_FLAGS) {
        Ok(()) => Ok((fd, given, Offloads::Active)),
        Err(e) => {
            tracing::info!(error = %e, tun = %given, "kernel refused TUNSETOFFLOAD");
            // Reattach without the header: closing first lets a
            // non-persistent interface go, and nothing is configured on it
            // yet.
            drop(fd);
            let (fd, given) = tun_sys::open(&given, false)?;
            Ok((fd, given, Offloads::Off(OffloadOff::OffloadRefused)))
        }
    }
}

impl AsRawFd for TunDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
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
        let vnet = self.vnet();
        let mut bad = 0;
        let packet = loop {
            let len = match (&self.fd).read(&mut self.rx_buf) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.stats.rx_errors += 1;
                    Self::warn_once(&mut self.warned, "read", &e);
                    return None;
                }
            };
            if !vnet {
                break 0..len;
            }
            let read = &mut self.rx_buf[..len];
            let prepared = VnetHeader::parse(read)
                .and_then(|header| vnet::prepare_ingress(&header, &mut read[HEADER_LEN..]));
            match prepared {
                Ok(kind) => {
                    match kind {
                        Ingress::Plain => {}
                        Ingress::ChecksumCompleted => self.stats.rx_checksums_completed += 1,
                        Ingress::Coalesced => self.stats.rx_coalesced += 1,
                    }
                    break HEADER_LEN..len;
                }
                Err(e) => {
                    self.stats.rx_bad_header += 1;
                    tracing::debug!(error = %e, "tun: dropped a packet with a bad virtio-net header");
                    bad += 1;
                    if bad >= BAD_READS_PER_CALL {
                        return None;
                    }
                }
            }
        };
        self.stats.rx_packets += 1;
        let rx = TunRxToken {
            packet: &self.rx_buf[packet],
        };
        let tx = TunTxToken {
            fd: &self.fd,
            vnet,
            mtu: self.mtu,
            gso_size: None,
            buf: &mut self.tx_buf,
            stats: &mut self.stats,
            warned: &mut self.warned,
        };
        Some((rx, tx))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(TunTxToken {
            fd: &self.fd,
            vnet: self.vnet(),
            mtu: self.mtu,
            gso_size: None,
            buf: &mut self.tx_buf,
            stats: &mut self.stats,
            warned: &mut self.warned,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        if self.vnet() {
            caps.segmentation.tcpv4 = NonZeroUsize::new(MAX_GSO_PACKET);
            // smoltcp segments only when the device checksums TCP (and it
            // must, for segments it cuts): every TCP packet leaves with a
            // partial checksum the kernel completes. Captures above this
            // device show TCP checksums as zero, as with any offloading NIC.
            caps.checksum.tcp = Checksum::Rx;
        }
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

/// Transmit token of a [`TunDevice`]: fills the reused transmit buffer
/// (after a virtio-net header, with offloads), then writes it with one
/// write(2).
#[derive(Debug)]
pub struct TunTxToken<'a> {
    fd: &'a File,
    vnet: bool,
    mtu: usize,
    /// smoltcp's segment size for this packet (`PacketMeta`).
    gso_size: Option<NonZeroU16>,
    buf: &'a mut Vec<u8>,
    stats: &'a mut TunStats,
    warned: &'a mut bool,
}

impl TunTxToken<'_> {
    /// Fills in the virtio-net header for the packet after it; `false` when
    /// the packet must not be written.
    fn finish_header(&mut self) -> bool {
        let (header, packet) = self
            .buf
            .split_at_mut(if self.vnet { HEADER_LEN } else { 0 });
        let vnet_header = if self.vnet {
            match vnet::prepare_egress(packet, self.gso_size) {
                Ok(h) => Some(h),
                Err(e) => {
                    self.stats.tx_errors += 1;
                    TunDevice::warn_once(self.warned, "segmentation of a packet", &e);
                    return false;
                }
            }
        } else {
            None
        };
        let segmented = vnet_header.is_some_and(|h| h.gso_type != vnet::GSO_NONE);
        if !segmented && packet.len() > self.mtu {
            // A wrapper lost smoltcp's segment size, or a packet was built
            // too large: the kernel would drop or fragment it on the path.
            self.stats.tx_errors += 1;
            let len = packet.len();
            TunDevice::warn_once(
                self.warned,
                "write",
                &format_args!("a {len}-byte packet exceeds the MTU and has no segment size"),
            );
            return false;
        }
        if let (Some(h), Ok(slot)) = (vnet_header, <&mut [u8; HEADER_LEN]>::try_from(header)) {
            h.emit(slot);
            if segmented {
                self.stats.tx_gso_packets += 1;
                self.stats.tx_gso_size_max = self.stats.tx_gso_size_max.max(h.gso_size);
            }
        }
        true
    }
}

impl phy::TxToken for TunTxToken<'_> {
    fn consume<R, F>(mut self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let header = if self.vnet { HEADER_LEN } else { 0 };
        // Zeroed so no byte of an earlier packet can leak into this one.
        self.buf.clear();
        self.buf.resize(header + len, 0);
        let result = f(&mut self.buf[header..]);
        if !self.finish_header() {
            return result;
        }
        loop {
            match self.fd.write(self.buf) {
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

    fn set_meta(&mut self, meta: PacketMeta) {
        self.gso_size = meta.segmentation_offload_size;
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
