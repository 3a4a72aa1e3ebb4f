//! The benchmark network: two host namespaces joined by a veth pair, our
//! stacks on TUN devices inside them, and a device wrapper that wakes a
//! runtime's driver when an application call fills a delay line.
//!
//! ```text
//!  ns A (clients)                                   ns B (servers)
//!  stack 10.71.N.x --TUN-- 10.71.N.1  kernel        kernel 10.72.N.1 --TUN-- stack 10.72.N.2
//!                          10.70.0.1 ==== veth ==== 10.70.0.2  (Linux peer)
//! ```
//!
//! Owns the namespaces (deleted on drop) and what it configures inside them;
//! it never touches the root namespace. Each TUN's kernel side is the
//! gateway of the stack on it; the kernels route between the two /16s over
//! the veth. With `--ipv6` ([`set_ipv6`]) every address has an IPv6 twin
//! (`10.a.b.c` becomes `fd<a in hex>:b::c`: `fd48:N::2` for `10.72.N.2`),
//! the stacks have only that address and every connection runs over IPv6.
//! The emulated RTT lives in the client stack's [`Delay`] line
//! (egress and ingress, half each), so every path, to our server stack or
//! to the Linux peer, sees the same RTT.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ti_stack::StackConfig;
use ti_stack::device::delay::Delay;
use ti_stack::device::pcap_tap::PcapTap;
use ti_stack::device::tun::{OffloadRequest, TunDevice};
use ti_testnet::netns::{self, NetNs};
use ti_testnet::topology::{self, Cidr, Cidr6, LinkEnd, TunSpec};

use super::BenchError;

/// The MTU of every TUN and of the veth.
pub const MTU: usize = 1500;
/// Packets the kernel queues toward each TUN.
pub const TXQUEUELEN: usize = 4096;
/// Client namespace's veth address.
pub const VETH_A: Ipv4Addr = Ipv4Addr::new(10, 70, 0, 1);
/// Server namespace's veth address; the Linux peer listens here.
pub const VETH_B: Ipv4Addr = Ipv4Addr::new(10, 70, 0, 2);

/// The two namespaces, configured and routed.
pub struct Testbed {
    /// Clients (and the Linux peer of the bulk benchmark).
    pub a: NetNs,
    /// Servers (and the Linux peer of the connect benchmark).
    pub b: NetNs,
}

impl Testbed {
    /// Checks privileges, then builds the namespaces and the veth.
    pub fn new() -> Result<Testbed, BenchError> {
        netns::check_privileges()?;
        let a = NetNs::create("tibench-a")?;
        let b = NetNs::create("tibench-b")?;
        let v6 = ipv6();
        for ns in [&a, &b] {
            if v6 {
                ns.enable_ipv6()?;
                ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            } else {
                ns.disable_ipv6()?;
            }
            ns.sysctl("net.ipv4.ip_forward", "1")?;
        }
        topology::link(
            LinkEnd::new(&a, "va", Cidr::slash24(VETH_A)),
            LinkEnd::new(&b, "vb", Cidr::slash24(VETH_B)),
        )?;
        a.add_route("10.72.0.0/16", &VETH_B.to_string())?;
        b.add_route("10.71.0.0/16", &VETH_A.to_string())?;
        if v6 {
            for (ns, ifname, addr) in [(&a, "va", VETH_A), (&b, "vb", VETH_B)] {
                ns.add_addr6(ifname, &Cidr6::slash64(twin(addr)).to_string())?;
                ns.wait_ipv6_ready(ifname, Duration::from_secs(5))?;
            }
            a.add_route6("fd48::/16", &twin(VETH_B).to_string())?;
            b.add_route6("fd47::/16", &twin(VETH_A).to_string())?;
        }
        Ok(Testbed { a, b })
    }
}

/// `tiflow bench --ipv6`: the run's stacks, peers and connections use
/// IPv6 (set once, before the testbed is built).
static IPV6: AtomicBool = AtomicBool::new(false);

/// Sets whether this run is over IPv6.
pub fn set_ipv6(on: bool) {
    IPV6.store(on, Ordering::Relaxed);
}

/// Whether this run is over IPv6 ([`set_ipv6`]).
pub fn ipv6() -> bool {
    IPV6.load(Ordering::Relaxed)
}

/// The IPv6 twin of a testbed address: `10.a.b.c` is `fd<a>:b::c` (`a`
/// in hex: `fd48:N::2` for `10.72.N.2`).
pub fn twin(v4: Ipv4Addr) -> Ipv6Addr {
    let [_, a, b, c] = v4.octets();
    Ipv6Addr::new(
        0xfd00 | u16::from(a),
        u16::from(b),
        0,
        0,
        0,
        0,
        0,
        u16::from(c),
    )
}

/// The address of this run's family for a testbed address.
pub fn family_addr(v4: Ipv4Addr) -> IpAddr {
    if ipv6() {
        IpAddr::V6(twin(v4))
    } else {
        IpAddr::V4(v4)
    }
}

/// `family_addr(v4):port`.
pub fn family_sock(v4: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(family_addr(v4), port)
}

/// Where a stack sits: its namespace's TUN and addresses.
#[derive(Debug, Clone, Copy)]
pub struct Site {
    /// The TUN's kernel side (the stack's gateway), prefix /24.
    pub gateway: Ipv4Addr,
    /// The stack's own address.
    pub address: Ipv4Addr,
}

/// `tiflow bench --low-latency`: the run's stacks use latency tuning (set
/// once, before any stack starts).
static LOW_LATENCY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets whether the stacks of this run use [`StackConfig::low_latency`].
pub fn set_low_latency(on: bool) {
    LOW_LATENCY.store(on, std::sync::atomic::Ordering::Relaxed);
}

impl Site {
    /// A stack config for this site: /24, the kernel as gateway, TI on or
    /// off, latency tuning as the run asks ([`set_low_latency`]).
    pub fn config(&self, ti: bool) -> StackConfig {
        let mut config = if ipv6() {
            let mut c = StackConfig::new_v6(twin(self.address));
            c.ipv6 = Some(ti_stack::Ipv6Addressing {
                address: twin(self.address),
                prefix_len: 64,
                gateway: Some(twin(self.gateway)),
            });
            c
        } else {
            let mut c = StackConfig::new(self.address);
            c.prefix_len = 24;
            c.gateway = Some(self.gateway);
            c
        };
        config.ti_enabled = ti;
        config.low_latency = LOW_LATENCY.load(std::sync::atomic::Ordering::Relaxed);
        config
    }
}

/// Opens TUN `name` in `ns` with `site.gateway/24` on the kernel side, up.
pub fn open_tun(ns: &NetNs, name: &str, site: Site) -> Result<TunDevice, BenchError> {
    open_tun_with(ns, name, site, OffloadRequest::Auto)
}

/// [`open_tun`], with the TUN's offloads as `offload` says.
pub fn open_tun_with(
    ns: &NetNs,
    name: &str,
    site: Site,
    offload: OffloadRequest,
) -> Result<TunDevice, BenchError> {
    let spec = TunSpec {
        name,
        gateway: Cidr::slash24(site.gateway),
        mtu: MTU,
        // The default queue (500 packets) is shorter than a 1 MiB window
        // (724 full segments): a burst toward a stack that is busy would be
        // dropped in the kernel, and smoltcp's 1 s minimum RTO would dominate.
        txqueuelen: Some(TXQUEUELEN),
    };
    let what = || format!("open TUN {name} in {}", ns.name());
    if !ipv6() {
        return topology::open_tun_with(ns, &spec, offload).map_err(|e| BenchError::io(what(), e));
    }
    let gateway = Cidr6::slash64(twin(site.gateway));
    let tun = topology::open_tun6(ns, name, MTU, gateway, offload)
        .map_err(|e| BenchError::io(what(), e))?;
    ns.ip(&[
        "link",
        "set",
        "dev",
        name,
        "txqueuelen",
        &TXQUEUELEN.to_string(),
    ])?;
    Ok(tun)
}

/// The device of a latency benchmark's stack: capture outermost, then the
/// delay line and the TUN. (The runtime wakes its driver when an application
/// call leaves packets in the delay line.)
pub type LatencyDevice = PcapTap<Delay<TunDevice>>;

/// Builds a [`LatencyDevice`]: `one_way` of delay each way (zero: none),
/// capturing to `pcap`.
pub fn latency_device(
    tun: TunDevice,
    one_way: Duration,
    pcap: &std::path::Path,
) -> Result<LatencyDevice, BenchError> {
    let d = smoltcp::time::Duration::from_micros(one_way.as_micros() as u64);
    let delay = Delay::new(tun, d, d);
    PcapTap::create(delay, pcap)
        .map_err(|e| BenchError::io(format!("create {}", pcap.display()), e))
}
