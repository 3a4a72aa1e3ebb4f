//! # ti-stack: TCP conversations that outlive their TCP connections
//!
//! A userspace TCP/IP stack (smoltcp, unmodified) with the isolation boundary
//! of Brown et al. (ICCCN 2011): connections negotiate a transport-independent
//! flow during the handshake; when a connection dies, the flow resumes on a
//! new one and the application's byte streams continue.
//!
//! - [`segment`]: reading and rewriting TCP/IPv4 packets.
//! - [`boundary`]: the smoltcp `Device` wrapper that writes flow options.
//! - [`stack`]: connections, TI streams, failures and resumes, driven by `poll(now)`.
//! - [`device`]: in-memory link, TUN, delay line, pcap tap.
//! - [`memory`]: the allocator setting that keeps socket buffers lazy.
#![warn(missing_docs)]

pub mod boundary;
pub mod config;
pub mod device;
pub mod error;
pub mod memory;
pub mod segment;
pub mod sim;
pub mod stack;
pub mod stream;

pub use config::{Ipv6Addressing, StackConfig};
pub use error::{StreamError, StreamEvent};
pub use stack::{
    DOWNTIME_BUCKETS, FlowMetrics, ListenerId, Resources, Stack, StreamId, StreamInfo, StreamMode,
    StreamStats,
};
pub use stream::{Runtime, TiListener, TiStream};
pub use tifid::handshake::Mode;
