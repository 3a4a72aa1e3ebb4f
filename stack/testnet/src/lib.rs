//! Test networks for tiflow.
//!
//! Everything a test, the demo, the benches or the capture tool needs to
//! build a network out of Linux network namespaces, and to make and check
//! the bytes that cross it:
//!
//! - [`netns`]: named network namespaces deleted on drop, veth pairs,
//!   addresses, routes, TUN devices opened inside a namespace.
//!
//! Nothing here touches the root namespace: every interface, address, route
//! and rule lives in a namespace this crate created and deletes.

pub mod netns;

pub use netns::{NetNs, NetnsError};
