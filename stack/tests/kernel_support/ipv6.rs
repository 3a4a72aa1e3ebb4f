//! The IPv6 topologies of the real-kernel tests (`tests/kernel_ipv6.rs`):
//! one of our hosts next to a Linux namespace, and two of our hosts
//! through a Linux IPv6 router running real netfilter ([`Middlebox6`]).
//!
//! Hosts are [`Host`]s built for IPv6 (the stack IPv6-only on its TUN).
//! Everything lives in namespaces created here and deleted on drop; every
//! wait is bounded.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream};
use std::time::Duration;

use ti_stack::StackConfig;
use ti_stack::device::tun::OffloadRequest;
use ti_testnet::middlebox::{self, Middlebox6};
use ti_testnet::netns::NetNs;
use ti_testnet::topology::{self, INSIDE_IF, OUTSIDE_IF};
use ti_testnet::{Cidr6, LinkEnd6};

use super::{Host, KIND, init_logs, offload_from_env};

/// `fd00:N::H`.
const fn addr(net: u16, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, net, 0, 0, 0, 0, 0, host)
}

/// Kernel side of the client host's TUN.
pub const CLIENT_TUN: Ipv6Addr = addr(1, 1);
/// The client host's stack.
pub const CLIENT_STACK: Ipv6Addr = addr(1, 2);
/// Where the client host's stack moves to: a new address in the same
/// /64 (a temporary address replacing the old one).
pub const CLIENT_MOVED: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0x7e3f, 0x11a2, 0x9b4c, 0x2d01);
/// Where the client host's stack moves when its network is renumbered: a
/// new /64, routed to the client host by the middlebox.
pub const CLIENT_RENUMBERED: Ipv6Addr = addr(0x11, 2);
/// Client host's end of the link to the middlebox (or to the Linux peer).
const CLIENT_LINK: Ipv6Addr = addr(2, 1);
/// Middlebox, client side.
const MB_CLIENT_SIDE: Ipv6Addr = addr(2, 2);
/// Middlebox, server side (NAT66's outside address).
pub const MB_SERVER_SIDE: Ipv6Addr = addr(3, 1);
/// Server host's end of the link to the middlebox.
const SERVER_LINK: Ipv6Addr = addr(3, 2);
/// Kernel side of the server host's TUN.
pub const SERVER_TUN: Ipv6Addr = addr(4, 1);
/// The server host's stack.
pub const SERVER_STACK: Ipv6Addr = addr(4, 2);
/// The Linux peer, next to the client host.
pub const LINUX: Ipv6Addr = addr(2, 2);

/// One of our IPv6 hosts and a Linux namespace next to it:
/// `stack fd00:1::2 | ti0 fd00:1::1 [host ns] fd00:2::1 -- fd00:2::2 [linux ns]`.
pub struct LinuxPeer6 {
    /// Our host.
    pub host: Host,
    /// The namespace whose kernel TCP is the peer.
    pub linux: NetNs,
}

impl LinuxPeer6 {
    /// Builds both namespaces, our TUN's offloads as `offload` says;
    /// `tweak` adjusts our stack's settings.
    pub fn with_offload(
        prefix: &str,
        offload: OffloadRequest,
        tweak: impl FnOnce(&mut StackConfig),
    ) -> LinuxPeer6 {
        init_logs();
        let host = Host::build_family(
            &format!("{prefix}h"),
            CLIENT_TUN.into(),
            CLIENT_STACK.into(),
            true,
            offload,
            tweak,
        );
        let linux = NetNs::create(&format!("{prefix}l")).expect("create Linux namespace");
        linux.enable_ipv6().expect("enable IPv6");
        topology::link6(
            LinkEnd6::new(host.ns(), "l0", Cidr6::slash64(CLIENT_LINK)),
            LinkEnd6::new(&linux, "l1", Cidr6::slash64(LINUX)),
        )
        .expect("link host-Linux");
        linux
            .add_route6("fd00:1::/64", &CLIENT_LINK.to_string())
            .expect("route to our stack");
        LinuxPeer6 { host, linux }
    }

    /// [`LinuxPeer6::with_offload`], offloads from `TI_TUN_OFFLOAD`.
    pub fn new(prefix: &str) -> LinuxPeer6 {
        LinuxPeer6::with_offload(prefix, offload_from_env(), |_| {})
    }

    /// A Linux listener at `[LINUX]:port`.
    pub fn listen(&self, port: u16) -> TcpListener {
        self.linux
            .enter(|| TcpListener::bind(SocketAddrV6::new(LINUX, port, 0, 0)))
            .expect("enter Linux namespace")
            .expect("bind in Linux namespace")
    }

    /// A Linux connection to `to`.
    pub fn connect(&self, to: SocketAddr) -> TcpStream {
        self.linux
            .enter(|| TcpStream::connect_timeout(&to, Duration::from_secs(10)))
            .expect("enter Linux namespace")
            .expect("Linux connect to our stack")
    }
}

/// Client host <-> Linux IPv6 router <-> server host:
///
/// ```text
/// stack fd00:1::2 | ti0 fd00:1::1 [client ns] fd00:2::1 -- fd00:2::2 [middlebox] fd00:3::1 -- fd00:3::2 [server ns] ti0 fd00:4::1 | stack fd00:4::2
/// ```
///
/// The middlebox also routes fd00:11::/64 (the client's renumbered prefix)
/// to the client host. Dropped (deleted) in field order.
pub struct Topology6 {
    /// The client host (initiator).
    pub client: Host,
    /// The server host (responder).
    pub server: Host,
    /// The router.
    pub middlebox: NetNs,
}

impl Topology6 {
    /// Builds the three namespaces, the middlebox running `kind`; the
    /// closures adjust the client's and the server's stack settings.
    pub fn with_configs(
        prefix: &str,
        kind: Middlebox6,
        client_cfg: impl FnOnce(&mut StackConfig),
        server_cfg: impl FnOnce(&mut StackConfig),
    ) -> Topology6 {
        init_logs();
        let client = Host::build_family(
            &format!("{prefix}c"),
            CLIENT_TUN.into(),
            CLIENT_STACK.into(),
            true,
            offload_from_env(),
            client_cfg,
        );
        let server = Host::build_family(
            &format!("{prefix}s"),
            SERVER_TUN.into(),
            SERVER_STACK.into(),
            true,
            offload_from_env(),
            server_cfg,
        );
        let mb = NetNs::create(&format!("{prefix}m")).expect("create middlebox namespace");
        mb.enable_ipv6().expect("enable IPv6");
        topology::link6(
            LinkEnd6::new(client.ns(), "c0", Cidr6::slash64(CLIENT_LINK)),
            LinkEnd6::new(&mb, INSIDE_IF, Cidr6::slash64(MB_CLIENT_SIDE)),
        )
        .expect("link client-middlebox");
        topology::link6(
            LinkEnd6::new(&mb, OUTSIDE_IF, Cidr6::slash64(MB_SERVER_SIDE)),
            LinkEnd6::new(server.ns(), "s0", Cidr6::slash64(SERVER_LINK)),
        )
        .expect("link middlebox-server");
        client
            .ns()
            .add_route6("default", &MB_CLIENT_SIDE.to_string())
            .expect("client default route");
        server
            .ns()
            .add_route6("default", &MB_SERVER_SIDE.to_string())
            .expect("server default route");
        mb.add_route6("fd00:1::/64", &CLIENT_LINK.to_string())
            .expect("route to client host");
        mb.add_route6("fd00:11::/64", &CLIENT_LINK.to_string())
            .expect("route to client host's renumbered prefix");
        mb.add_route6("fd00:4::/64", &SERVER_LINK.to_string())
            .expect("route to server host");
        kind.install(&mb)
            .unwrap_or_else(|e| panic!("middlebox rules {kind:?}: {e}"));
        // Forwarding last: no packet crosses before the rules are in place.
        mb.enable_forwarding().expect("enable forwarding");
        Topology6 {
            client,
            server,
            middlebox: mb,
        }
    }

    /// [`Topology6::with_configs`] with default stack settings.
    pub fn new(prefix: &str, kind: Middlebox6) -> Topology6 {
        Topology6::with_configs(prefix, kind, |_| {}, |_| {})
    }

    /// Strips our option from TCP segments the middlebox forwards that came
    /// in on `inbound_if` (ip6tables TCPOPTSTRIP).
    pub fn strip_option(&self, inbound_if: &str) {
        middlebox::strip_option6(&self.middlebox, inbound_if, KIND).expect("TCPOPTSTRIP rule");
    }

    /// Empties the middlebox's IPv6 conntrack table.
    pub fn conntrack_flush(&self) {
        middlebox::conntrack_flush6(&self.middlebox).expect("conntrack -F -f ipv6");
    }

    /// Packets the middlebox's [`Middlebox6::Firewall`] dropped so far.
    pub fn firewall_dropped(&self) -> u64 {
        middlebox::firewall6_dropped(&self.middlebox).expect("nft list table")
    }

    /// Entries in the middlebox's IPv6 conntrack table.
    pub fn conntrack_list(&self) -> String {
        middlebox::conntrack_list6(&self.middlebox).unwrap_or_default()
    }

    /// The server's listening address.
    pub fn server_at(port: u16) -> SocketAddr {
        SocketAddrV6::new(SERVER_STACK, port, 0, 0).into()
    }
}
