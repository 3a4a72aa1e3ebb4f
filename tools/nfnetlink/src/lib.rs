//! # ti-nfnetlink: netfilter over netlink, without command-line tools
//!
//! What `tiflow up` and `tiflow demo` change in the kernel's netfilter,
//! sent as netlink messages on a `NETLINK_NETFILTER` socket instead of
//! running `nft`, `iptables` or `conntrack`:
//!
//! - [`nft`]: nftables tables with base chains and rules (the expressions
//!   NAT and a stateful filter need), created or replaced in one atomic
//!   batch; a table's existence; its deletion.
//! - [`conntrack`]: emptying the conntrack table (`conntrack -F`).
//!
//! Every request asks for an acknowledgement and every acknowledgement is
//! checked: an error names the message the kernel refused and its errno.
//! The socket belongs to the network namespace of the thread that opens
//! it, so a caller in another namespace (a test, the demo) opens it from a
//! thread that joined that namespace.
//!
//! The encoding follows the kernel's UAPI headers
//! (`linux/netfilter/nfnetlink.h`, `nf_tables.h`,
//! `nfnetlink_conntrack.h`) and what `nft --debug=netlink` shows nftables
//! itself sending; the numbers used are in [`consts`](mod@consts).
#![forbid(unsafe_code)]

pub mod conntrack;
mod consts;
mod msg;
pub mod nft;
mod socket;

pub use socket::Error;
