//! # ti-tools: the library half of the `tiflow` command-line tool
//!
//! Each subcommand of `tiflow` is a module here with an `Args` struct (parsed
//! by clap in `main.rs`) and a `run` function, so tests and fuzz targets call
//! the same code the binary runs, without spawning a process.
//!
//! - [`dump`](mod@dump): `tiflow dump FILE`: one tcpdump-style line per packet of a
//!   pcap or pcapng file, the flow option decoded.
//!
//! Later subcommands (`up`, `status`, `fail`, `demo`, `bench`) get their own
//! modules next to [`dump`](mod@dump).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dump;

pub use dump::{DumpError, DumpOptions, DumpSummary, dump, dump_bytes};
