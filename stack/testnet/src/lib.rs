//! Test networks for tiflow.
//!
//! Everything a test, the demo, the benches or the capture tool needs to
//! build a network out of Linux network namespaces, and to make and check
//! the bytes that cross it:
//!
//! - [`netns`]: named network namespaces deleted on drop, veth pairs,
//!   addresses, routes, TUN devices opened inside a namespace.
//! - [`topology`]: veth links, TUN hosts with the kernel as gateway, and the
//!   client / middlebox / server [`Line`], over IPv4 or IPv6.
//! - [`middlebox`]: what a middlebox runs (NATs, a stateful firewall, a
//!   home router, nftables rulesets; for IPv6 NAT66 and a stateful
//!   firewall) and the state changes tests inject (conntrack flush,
//!   TCPOPTSTRIP), for either family.
//! - [`packet`]: one packet builder (IPv4/IPv6 TCP, UDP, ICMPv4 echo, raw
//!   IP) with correct checksums by default and explicit ways to break them,
//!   and the header fields bad-input tests need broken.
//! - [`payload`]: deterministic test data and SHA-256 digests.
//!
//! Nothing here touches the root namespace: every interface, address, route
//! and rule lives in a namespace this crate created and deletes.

pub mod middlebox;
pub mod netns;
pub mod packet;
pub mod payload;
pub mod topology;

pub use middlebox::{Middlebox, Middlebox6};
pub use netns::{NetNs, NetnsError};
pub use topology::{Cidr, Cidr6, Line, LinePlan, LinePlan6, LinkEnd, LinkEnd6, TunSpec};
