//! Topologies built from network namespaces: veth links, TUN hosts, and the
//! three-namespace line (client, middlebox, server) that the demo, the
//! benches and the live tests share.
//!
//! Every interface, address and route is created inside namespaces the
//! caller owns ([`NetNs`], deleted on drop); nothing here touches the root
//! namespace. The middlebox's rules are in [`crate::middlebox`].

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ti_stack::device::tun::{OffloadRequest, TunDevice};

use crate::middlebox::{Middlebox, Middlebox6};
use crate::netns::{NetNs, NetnsError};

/// An IPv4 address with its prefix length, as `ip addr add` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length (0-32).
    pub prefix_len: u8,
}

impl Cidr {
    /// `addr/24`, the prefix every topology here uses.
    pub const fn slash24(addr: Ipv4Addr) -> Cidr {
        Cidr {
            addr,
            prefix_len: 24,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// An IPv6 address with its prefix length, as `ip -6 addr add` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr6 {
    /// The address.
    pub addr: Ipv6Addr,
    /// The prefix length (0-128).
    pub prefix_len: u8,
}

impl Cidr6 {
    /// `addr/64`, the prefix every IPv6 topology here uses.
    pub const fn slash64(addr: Ipv6Addr) -> Cidr6 {
        Cidr6 {
            addr,
            prefix_len: 64,
        }
    }
}

impl fmt::Display for Cidr6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// One end of a veth link: a namespace, the interface name there, and its
/// address (`None`: no address, e.g. a bridge port).
#[derive(Debug, Clone, Copy)]
pub struct LinkEnd<'a> {
    /// The namespace the end lives in.
    pub ns: &'a NetNs,
    /// The interface name (at most 15 characters).
    pub ifname: &'a str,
    /// Its address.
    pub addr: Option<Cidr>,
}

impl<'a> LinkEnd<'a> {
    /// An end with an address.
    pub fn new(ns: &'a NetNs, ifname: &'a str, addr: Cidr) -> LinkEnd<'a> {
        LinkEnd {
            ns,
            ifname,
            addr: Some(addr),
        }
    }
}

/// Joins two namespaces with a veth pair, addresses both ends and brings
/// them up. The ends are created directly in their namespaces.
pub fn link(a: LinkEnd<'_>, b: LinkEnd<'_>) -> Result<(), NetnsError> {
    NetNs::veth_pair(a.ns, a.ifname, b.ns, b.ifname)?;
    for end in [a, b] {
        if let Some(addr) = end.addr {
            end.ns.add_addr(end.ifname, &addr.to_string())?;
        }
        end.ns.up(end.ifname)?;
    }
    Ok(())
}

/// One end of an IPv6 veth link: a namespace, the interface name there,
/// and its IPv6 address (`None`: none but the link-local one).
#[derive(Debug, Clone, Copy)]
pub struct LinkEnd6<'a> {
    /// The namespace the end lives in (IPv6 on: [`NetNs::enable_ipv6`]).
    pub ns: &'a NetNs,
    /// The interface name (at most 15 characters).
    pub ifname: &'a str,
    /// Its address.
    pub addr: Option<Cidr6>,
}

impl<'a> LinkEnd6<'a> {
    /// An end with an address.
    pub fn new(ns: &'a NetNs, ifname: &'a str, addr: Cidr6) -> LinkEnd6<'a> {
        LinkEnd6 {
            ns,
            ifname,
            addr: Some(addr),
        }
    }
}

/// How long [`link6`] waits for IPv6 to come up on a new link.
const IPV6_READY: Duration = Duration::from_secs(5);

/// [`link`] for IPv6: joins two namespaces with a veth pair, adds the
/// IPv6 addresses (no duplicate address detection: usable at once), brings
/// both ends up and waits (bounded) until both answer neighbour
/// solicitations ([`NetNs::wait_ipv6_ready`]).
pub fn link6(a: LinkEnd6<'_>, b: LinkEnd6<'_>) -> Result<(), NetnsError> {
    NetNs::veth_pair(a.ns, a.ifname, b.ns, b.ifname)?;
    for end in [a, b] {
        if let Some(addr) = end.addr {
            end.ns.add_addr6(end.ifname, &addr.to_string())?;
        }
        end.ns.up(end.ifname)?;
    }
    for end in [a, b] {
        end.ns.wait_ipv6_ready(end.ifname, IPV6_READY)?;
    }
    Ok(())
}

/// A TUN device to open inside a namespace, with the kernel side as the
/// gateway of the stack on it.
#[derive(Debug, Clone, Copy)]
pub struct TunSpec<'a> {
    /// Interface name.
    pub name: &'a str,
    /// The kernel side's address (the stack's gateway).
    pub gateway: Cidr,
    /// MTU of both sides.
    pub mtu: usize,
    /// Packets the kernel queues toward the TUN (`None`: the kernel's 500).
    pub txqueuelen: Option<usize>,
}

impl TunSpec<'_> {
    /// `name` at MTU 1500, kernel side `gateway/24`, default queue.
    pub fn new(name: &str, gateway: Ipv4Addr) -> TunSpec<'_> {
        TunSpec {
            name,
            gateway: Cidr::slash24(gateway),
            mtu: 1500,
            txqueuelen: None,
        }
    }
}

/// Opens the TUN `spec` in `ns`: MTU set, kernel-side address added,
/// queue length set if asked, link up.
pub fn open_tun(ns: &NetNs, spec: &TunSpec<'_>) -> io::Result<TunDevice> {
    open_tun_with(ns, spec, OffloadRequest::Auto)
}

/// [`open_tun`], with the TUN's offloads as `offload` says.
pub fn open_tun_with(
    ns: &NetNs,
    spec: &TunSpec<'_>,
    offload: OffloadRequest,
) -> io::Result<TunDevice> {
    let tun = ns.open_tun_with(spec.name, spec.mtu, offload)?;
    let setup = || -> Result<(), NetnsError> {
        ns.add_addr(spec.name, &spec.gateway.to_string())?;
        if let Some(len) = spec.txqueuelen {
            ns.ip(&[
                "link",
                "set",
                "dev",
                spec.name,
                "txqueuelen",
                &len.to_string(),
            ])?;
        }
        ns.up(spec.name)
    };
    setup().map_err(io::Error::other)?;
    Ok(tun)
}

/// [`open_tun_with`] for an IPv6 stack: the TUN `name` in `ns` at MTU
/// `mtu`, kernel side `gateway` (the stack's IPv6 gateway; no duplicate
/// address detection), link up. `ns` must have IPv6 on
/// ([`NetNs::enable_ipv6`]).
pub fn open_tun6(
    ns: &NetNs,
    name: &str,
    mtu: usize,
    gateway: Cidr6,
    offload: OffloadRequest,
) -> io::Result<TunDevice> {
    let tun = ns.open_tun_with(name, mtu, offload)?;
    let setup = || -> Result<(), NetnsError> {
        ns.add_addr6(name, &gateway.to_string())?;
        ns.up(name)
    };
    setup().map_err(io::Error::other)?;
    Ok(tun)
}

/// The middlebox's client-side interface in a [`Line`].
pub const INSIDE_IF: &str = "m0";
/// The middlebox's server-side interface in a [`Line`] (NATs masquerade out
/// of it).
pub const OUTSIDE_IF: &str = "m1";
/// The client's interface in a [`Line`].
pub const CLIENT_IF: &str = "c0";
/// The server's interface in a [`Line`].
pub const SERVER_IF: &str = "s0";

/// The addresses of a [`Line`].
#[derive(Debug, Clone, Copy)]
pub struct LinePlan<'a> {
    /// The client's address on [`CLIENT_IF`]; its default route goes via
    /// [`LinePlan::inside`].
    pub client: Cidr,
    /// The middlebox's address on [`INSIDE_IF`].
    pub inside: Cidr,
    /// The middlebox's primary address on [`OUTSIDE_IF`] (a NAT
    /// masquerades to it).
    pub outside: Cidr,
    /// Further addresses on [`OUTSIDE_IF`] (a NAT's next public address).
    pub outside_secondary: &'a [Cidr],
    /// The server's address on [`SERVER_IF`].
    pub server: Cidr,
    /// The server's default route (`None`: none; the outside addresses are
    /// on its link).
    pub server_gateway: Option<Ipv4Addr>,
}

/// Three namespaces in a line, IPv6 off in each:
///
/// ```text
/// client c0 --- m0 middlebox m1 --- s0 server
/// ```
///
/// Deleting a primary address promotes a secondary one in every namespace
/// (address moves keep the subnet), and the middlebox announces itself when
/// its links come up (gratuitous ARP). Its rules are installed before
/// forwarding is turned on, so no packet crosses it unfiltered. Dropped
/// (deleted) in field order.
pub struct Line {
    /// The client host.
    pub client: NetNs,
    /// The middlebox.
    pub middlebox: NetNs,
    /// The server host.
    pub server: NetNs,
}

impl fmt::Debug for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Line")
            .field("client", &self.client.name())
            .field("middlebox", &self.middlebox.name())
            .field("server", &self.server.name())
            .finish()
    }
}

impl Line {
    /// Builds the line: namespaces named from `prefix` (+ `c`, `m`, `s`),
    /// links and addresses from `plan`, and the middlebox running `rules`.
    pub fn build(prefix: &str, plan: &LinePlan<'_>, rules: &Middlebox) -> Result<Line, NetnsError> {
        let client = NetNs::create(&format!("{prefix}c"))?;
        let middlebox = NetNs::create(&format!("{prefix}m"))?;
        let server = NetNs::create(&format!("{prefix}s"))?;
        for ns in [&client, &middlebox, &server] {
            ns.disable_ipv6()?;
            ns.sysctl("net.ipv4.conf.all.promote_secondaries", "1")?;
            ns.sysctl("net.ipv4.conf.default.promote_secondaries", "1")?;
        }
        link(
            LinkEnd::new(&client, CLIENT_IF, plan.client),
            LinkEnd {
                ns: &middlebox,
                ifname: INSIDE_IF,
                addr: None,
            },
        )?;
        link(
            LinkEnd {
                ns: &middlebox,
                ifname: OUTSIDE_IF,
                addr: None,
            },
            LinkEnd::new(&server, SERVER_IF, plan.server),
        )?;
        middlebox.add_addr(INSIDE_IF, &plan.inside.to_string())?;
        middlebox.add_addr(OUTSIDE_IF, &plan.outside.to_string())?;
        for addr in plan.outside_secondary {
            middlebox.add_addr(OUTSIDE_IF, &addr.to_string())?;
        }
        // A router announces itself when its links come up, so hosts need
        // not wait for their next ARP retry after an outage.
        for dev in [INSIDE_IF, OUTSIDE_IF] {
            middlebox.sysctl(&format!("net.ipv4.conf.{dev}.arp_notify"), "1")?;
        }
        client.add_route("default", &plan.inside.addr.to_string())?;
        if let Some(gateway) = plan.server_gateway {
            server.add_route("default", &gateway.to_string())?;
        }
        rules.install(&middlebox)?;
        middlebox.enable_forwarding()?;
        Ok(Line {
            client,
            middlebox,
            server,
        })
    }
}

/// The IPv6 addresses of a [`Line`] built with [`Line::build6`].
#[derive(Debug, Clone, Copy)]
pub struct LinePlan6 {
    /// The client's address on [`CLIENT_IF`]; its default route goes via
    /// [`LinePlan6::inside`].
    pub client: Cidr6,
    /// The middlebox's address on [`INSIDE_IF`].
    pub inside: Cidr6,
    /// The middlebox's address on [`OUTSIDE_IF`] (NAT66 masquerades to it).
    pub outside: Cidr6,
    /// The server's address on [`SERVER_IF`].
    pub server: Cidr6,
    /// The server's default route (`None`: none; the outside address is on
    /// its link).
    pub server_gateway: Option<Ipv6Addr>,
}

impl Line {
    /// [`Line::build`] for IPv6: the same three namespaces and interfaces,
    /// IPv6 on (no autoconfiguration, no duplicate address detection), the
    /// addresses of `plan`, and the middlebox running `rules` before its
    /// IPv6 forwarding is turned on.
    pub fn build6(prefix: &str, plan: &LinePlan6, rules: &Middlebox6) -> Result<Line, NetnsError> {
        let client = NetNs::create(&format!("{prefix}c"))?;
        let middlebox = NetNs::create(&format!("{prefix}m"))?;
        let server = NetNs::create(&format!("{prefix}s"))?;
        for ns in [&client, &middlebox, &server] {
            ns.enable_ipv6()?;
        }
        link6(
            LinkEnd6::new(&client, CLIENT_IF, plan.client),
            LinkEnd6::new(&middlebox, INSIDE_IF, plan.inside),
        )?;
        link6(
            LinkEnd6::new(&middlebox, OUTSIDE_IF, plan.outside),
            LinkEnd6::new(&server, SERVER_IF, plan.server),
        )?;
        client.add_route6("default", &plan.inside.addr.to_string())?;
        if let Some(gateway) = plan.server_gateway {
            server.add_route6("default", &gateway.to_string())?;
        }
        rules.install(&middlebox)?;
        middlebox.enable_forwarding()?;
        Ok(Line {
            client,
            middlebox,
            server,
        })
    }
}
