//! # ti-tools: the library half of the `tiflow` command-line tool
//!
//! Each subcommand of `tiflow` is a module here with an `Args` struct (parsed
//! by clap in `main.rs`) and a `run` function, so tests and fuzz targets call
//! the same code the binary runs, without spawning a process.
//!
//! - [`dump`](mod@dump): `tiflow dump FILE`: one tcpdump-style line per packet of a
//!   pcap or pcapng file, the flow option decoded.
//! - [`up`]: `tiflow up`: a stack on a TUN device forwarding ports both ways.
//! - [`control`]: its control socket, and `tiflow status` / `tiflow fail`.
//! - [`demo`]: `tiflow demo`: plain TCP and a TI-flow through a NAT that loses
//!   its state, in namespaces of its own.
//! - [`cidr`]: addresses with a prefix length, of either family.
//! - [`ports`]: TCP port ranges and lists of them (`22,8000-8100`).
//! - [`host`]: privileges, external commands and sysctls of the host, undone at exit.
//! - [`netfilter`]: the nftables table (and, on hosts that need them,
//!   tagged iptables rules) of one `tiflow up`.
//! - [`state`]: the state file of a running `tiflow up`, for a cleanup
//!   after a crash.
//! - [`down`]: `tiflow down`: removes what a `tiflow up` that died left.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod cidr;
pub mod control;
pub mod demo;
pub mod down;
pub mod dump;
pub mod host;
pub mod netfilter;
pub mod ports;
pub mod state;
pub mod up;

pub use dump::{DumpError, DumpOptions, DumpSummary, dump, dump_bytes};
