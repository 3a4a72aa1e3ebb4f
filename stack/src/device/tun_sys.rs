//! Opening a Linux TUN device: `/dev/net/tun`, `TUNSETIFF` and
//! `TUNSETOFFLOAD`.
//!
//! Owns the three system calls and nothing else: no reads, no writes, no
//! decision about which mode to try (that is [`super::tun`]'s). Every
//! `unsafe` block is one syscall on memory this module owns.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `struct ifreq` as `TUNSETIFF` reads and writes it: the name, then the
/// flags (a `short` at the start of the union), padded to the union's size.
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens `/dev/net/tun` (non-blocking, close-on-exec) and attaches it to the
/// TUN interface `name` (created if absent) without packet-info header,
/// with a virtio-net header on every packet when `vnet_hdr`. Returns the fd
/// and the name the kernel gave the interface.
pub(crate) fn open(name: &str, vnet_hdr: bool) -> io::Result<(OwnedFd, String)> {
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "interface name {name:?} must be shorter than {} bytes, without NUL",
                libc::IFNAMSIZ
            ),
        ));
    }
    // SAFETY: the path is a NUL-terminated literal; open(2) only reads it.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let mut flags = libc::IFF_TUN | libc::IFF_NO_PI;
    if vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    // The flags fit a short: all of them are below 0x8000.
    req.flags = flags as libc::c_short;
    // SAFETY: `req` is a properly sized and aligned `struct ifreq` owned by
    // this frame, alive for the call; TUNSETIFF reads and writes only it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel writes a NUL-terminated name (IFNAMSIZ includes the NUL).
    req.name[libc::IFNAMSIZ - 1] = 0;
    // SAFETY: `req.name` is NUL-terminated (set just above) and lives as
    // long as this borrow.
    let given = unsafe { CStr::from_ptr(req.name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Ok((fd, given))
}

/// Asks the kernel to hand us (and accept from us) packets with the
/// offloads `flags` (`TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 ...`). Needs a TUN opened
/// with a virtio-net header.
pub(crate) fn set_offload(fd: BorrowedFd<'_>, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is
    // passed. The fd is borrowed, so it stays open for the call.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
