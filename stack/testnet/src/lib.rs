//! Test networks for tiflow.
//!
//! Everything a test, the demo, the benches or the capture tool needs to
//! build a network out of Linux network namespaces, and to make and check
//! the bytes that cross it:
//!
//! - [`netns`]: named network namespaces deleted on drop, veth pairs,
//!   addresses, routes, TUN devices opened inside a namespace.
//! - [`topology`]: veth links, TUN hosts with the kernel as gateway, and the
//!   client / middlebox / server [`Line`].
//! - [`middlebox`]: what a middlebox runs (NATs, a stateful firewall, a
//!   home router, nftables rulesets) and the state changes tests inject
//!   (conntrack flush, TCPOPTSTRIP).
//!
//! Nothing here touches the root namespace: every interface, address, route
//! and rule lives in a namespace this crate created and deletes.

pub mod middlebox;
pub mod netns;
pub mod topology;

pub use middlebox::Middlebox;
pub use netns::{NetNs, NetnsError};
pub use topology::{Cidr, Line, LinePlan, LinkEnd, TunSpec};
