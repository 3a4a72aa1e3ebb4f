//! Real-kernel tests of the TUN offloads: our stack on a TUN opened with a
//! virtio-net header talks to Linux TCP both ways, on the forward path
//! (Linux in a namespace behind the host's kernel) and on the local path
//! (Linux sockets in the host's own namespace), several MiB each way,
//! byte-exact (SHA-256), and the device's counters prove large segments
//! went out (cut by the kernel to no more than the path's MSS) and came in
//! whole. The same transfers with offloads forced off prove the fallback
//! moves the same bytes with plain packets.
//!
//! These tests need root (or CAP_NET_ADMIN + CAP_SYS_ADMIN), iproute2 and
//! /dev/net/tun; without them they FAIL with what is missing, never pass
//! silently. Everything runs in namespaces created here and deleted on drop
//! (also when a test fails); nothing is configured in the root namespace.

// The support module is shared with `kernel.rs`; this file uses part of it.
#[allow(dead_code)]
mod kernel_support;

use std::net::{SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use kernel_support::{
    CLIENT_STACK, CLIENT_TUN, DEADLINE, Dev, End, LinuxPeer, Pace, accept_linux, join_bounded,
    random_bytes, run_end,
};
use ti_stack::TiStream;
use ti_stack::device::tun::{OffloadOff, OffloadRequest, Offloads, TunStats};
use ti_testnet::netns;

/// Bytes each way, per transfer.
const BYTES: usize = 8 << 20;
/// The path's MSS: MTU 1500 less the IPv4 and TCP headers. No segment a
/// peer receives may carry more payload.
const PATH_MSS: u16 = 1460;

fn require_netns() {
    if let Err(e) = netns::check_privileges() {
        panic!("{e}");
    }
}

/// The MSS Linux uses to send on `stream` (`TCP_MAXSEG`): derived from
/// what our SYN or SYN-ACK advertised.
fn linux_mss(stream: &TcpStream) -> u16 {
    let mut mss: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `mss` and `len` are valid for writes and live for the call;
    // the fd is borrowed from `stream`, open for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&raw mut mss).cast(),
            &raw mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "getsockopt TCP_MAXSEG: {}",
        std::io::Error::last_os_error()
    );
    u16::try_from(mss).expect("an MSS fits 16 bits")
}

/// Our stack connects to a Linux listener on `port` one forwarded hop
/// away; returns both ends (ours is legacy TCP: Linux does not speak TI).
fn connect_to_linux(peer: &LinuxPeer, port: u16) -> (TiStream<Dev>, TcpStream) {
    let listener = peer.listen(port);
    let linux = std::thread::spawn(move || accept_linux(&listener, Duration::from_secs(10)));
    let stream = peer.connect_from_ours(port);
    let linux_stream = join_bounded(linux, Instant::now() + DEADLINE, "Linux accept");
    (stream, linux_stream)
}

/// Both ends write `BYTES` at once and read until end of stream; each must
/// get the other's bytes exactly.
fn transfer_both_ways(ours: End, linux: End, seed: u64) -> Duration {
    let ours_data = Arc::new(random_bytes(seed, BYTES));
    let linux_data = Arc::new(random_bytes(seed + 1, BYTES));
    let started = Instant::now();
    let linux_job = run_end(
        linux,
        linux_data.clone(),
        Pace::FULL,
        Arc::new(AtomicU64::new(0)),
        "linux",
    );
    let our_job = run_end(
        ours,
        ours_data.clone(),
        Pace::FULL,
        Arc::new(AtomicU64::new(0)),
        "ours",
    );
    let deadline = Instant::now() + DEADLINE;
    let linux_report = join_bounded(linux_job, deadline, "linux end");
    let ours_report = join_bounded(our_job, deadline, "our end");
    linux_report.assert_received(&ours_data, "Linux got our bytes");
    ours_report.assert_received(&linux_data, "we got Linux's bytes");
    started.elapsed()
}

/// Our stack connects to Linux one hop away (forward path), then a Linux
/// socket in the host's namespace connects to our listener (local path);
/// both move `BYTES` each way. Returns the TUN's mode and counters.
fn run_both_paths(prefix: &str, offload: OffloadRequest) -> (Offloads, TunStats) {
    require_netns();
    let peer = LinuxPeer::with_offload(prefix, offload, |_| {});

    // Forward path: ours -> kernel routing -> veth -> Linux.
    let (stream, linux_stream) = connect_to_linux(&peer, 5101);
    let forward_mss = linux_mss(&linux_stream);
    let forward = transfer_both_ways(End::ti(stream), End::tcp(linux_stream), 31);

    // Local path: a Linux socket in the host namespace -> TUN -> ours.
    let port = 5102;
    let listener = peer.host.runtime().listen(port).expect("listen");
    let linux_stream = peer
        .host
        .ns()
        .enter(|| {
            TcpStream::connect_timeout(
                &SocketAddrV4::new(CLIENT_STACK, port).into(),
                Duration::from_secs(10),
            )
        })
        .expect("enter host namespace")
        .expect("Linux connects to our listener");
    assert_eq!(
        linux_stream.local_addr().expect("local address").ip(),
        CLIENT_TUN,
        "the local path leaves from the TUN's kernel side"
    );
    let stream = listener
        .accept_timeout(Some(Duration::from_secs(10)))
        .expect("accept")
        .expect("Linux's connection");
    let local_mss = linux_mss(&linux_stream);
    let local = transfer_both_ways(End::ti(stream), End::tcp(linux_stream), 41);

    let (mode, stats) = peer.host.tun();
    for (path, mss) in [("forward", forward_mss), ("local", local_mss)] {
        assert!(
            mss <= PATH_MSS,
            "{path} path: Linux sends us segments of {mss} bytes, more than the path's MSS"
        );
    }
    assert_eq!(stats.rx_bad_header, 0, "no header was refused: {stats:?}");
    assert_eq!(stats.tx_errors, 0, "no packet failed to leave: {stats:?}");
    let mib = (2 * BYTES) as f64 / f64::from(1 << 20);
    eprintln!(
        "[offload] {mode:?}: forward {:.0} MiB/s, local {:.0} MiB/s (both directions summed); \
         Linux MSS {forward_mss}/{local_mss}; {stats:?}",
        mib / forward.as_secs_f64(),
        mib / local.as_secs_f64(),
    );
    (mode, stats)
}

/// With offloads, both transfers are exact, smoltcp's segments larger than
/// one MSS left for the kernel to cut (at no more than the path's MSS), and
/// the kernel handed us coalesced segments whole.
#[test]
fn offloading_tun_moves_large_segments_both_ways_byte_exact() {
    let (mode, stats) = run_both_paths("kof", OffloadRequest::Auto);
    assert_eq!(
        mode,
        Offloads::Active,
        "this kernel supports IFF_VNET_HDR and TUNSETOFFLOAD"
    );
    assert!(
        stats.tx_gso_packets > 0,
        "smoltcp's large segments went out for the kernel to cut: {stats:?}"
    );
    assert!(
        stats.tx_gso_size_max > 0 && stats.tx_gso_size_max <= PATH_MSS,
        "the kernel cut our segments to at most the path's MSS: {stats:?}"
    );
    assert!(
        stats.rx_coalesced > 0,
        "the kernel handed us coalesced segments: {stats:?}"
    );
}

/// Offloads forced off: the same transfers, exact, with plain packets only.
#[test]
fn tun_with_offloads_forced_off_moves_plain_packets_byte_exact() {
    let (mode, stats) = run_both_paths("knof", OffloadRequest::Off);
    assert_eq!(mode, Offloads::Off(OffloadOff::NotRequested));
    assert_eq!(stats.tx_gso_packets, 0, "{stats:?}");
    assert_eq!(stats.rx_coalesced, 0, "{stats:?}");
    assert_eq!(stats.rx_checksums_completed, 0, "{stats:?}");
}

/// The packets and bytes interface `ifname` of `ns` has sent.
fn link_tx(ns: &netns::NetNs, ifname: &str) -> (u64, u64) {
    let read = |counter: &str| -> u64 {
        let path = format!("/sys/class/net/{ifname}/statistics/{counter}");
        let out = ns.run(&["cat", &path]).expect("read a link counter");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a counter is a number")
    };
    (read("tx_packets"), read("tx_bytes"))
}

/// Our large segments, forwarded by the host's kernel to the next link (as
/// `tiflow up`'s go on to a NAT), cross it whole: a segment the kernel cut
/// at the first hop would cross that link and every hop after it as
/// MSS-sized packets (the kernel cuts in software any segment that, with
/// its link header, reaches the egress device's `gso_max_size`). Bytes go
/// one way only (ours to Linux), so the host's side of the link sends our
/// data and few else; a link that sent packets of about one MSS on
/// average fails this.
#[test]
fn forwarded_large_segments_cross_the_next_link_whole() {
    require_netns();
    let peer = LinuxPeer::with_offload("kfwd", OffloadRequest::Auto, |_| {});
    let (stream, linux_stream) = connect_to_linux(&peer, 5103);
    let (packets_before, bytes_before) = link_tx(peer.host.ns(), "l0");

    let ours_data = Arc::new(random_bytes(51, BYTES));
    let linux_job = run_end(
        End::tcp(linux_stream),
        Arc::new(Vec::new()),
        Pace::FULL,
        Arc::new(AtomicU64::new(0)),
        "linux",
    );
    let our_job = run_end(
        End::ti(stream),
        ours_data.clone(),
        Pace::FULL,
        Arc::new(AtomicU64::new(0)),
        "ours",
    );
    let deadline = Instant::now() + DEADLINE;
    join_bounded(linux_job, deadline, "linux end")
        .assert_received(&ours_data, "Linux got our bytes");
    join_bounded(our_job, deadline, "our end");

    let (packets_after, bytes_after) = link_tx(peer.host.ns(), "l0");
    let packets = packets_after - packets_before;
    let bytes = bytes_after - bytes_before;
    let (mode, stats) = peer.host.tun();
    assert_eq!(mode, Offloads::Active, "this kernel supports offloads");
    assert!(packets > 0, "the link sent our bytes");
    let average = bytes / packets;
    eprintln!(
        "[offload] the host's link to Linux sent {packets} packets, {bytes} bytes \
         ({average} bytes on average); TUN {stats:?}"
    );
    assert!(
        average >= 16 * 1024,
        "our segments crossed the next link as {packets} packets of {average} bytes on \
         average: the kernel cut them at the first hop ({stats:?})"
    );
}
