//! Errors and events the application sees.

use std::io;
use std::time::Duration;

use tifid::handshake::{FallbackCause, LostCause};

/// Why a stream operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The TI-flow cannot continue: its resume was refused or timed out.
    #[error("TI-flow lost: {0}")]
    FlowLost(LostCause),
    /// The peer refused the connection.
    #[error("connection refused")]
    ConnectionRefused,
    /// A legacy connection was reset or failed.
    #[error("connection reset")]
    ConnectionReset,
    /// The connect did not complete in time.
    #[error("connect timed out")]
    TimedOut,
    /// Writing after `shutdown(Write)`.
    #[error("stream shut down for writing")]
    WriteAfterShutdown,
    /// The stream or listener does not exist (closed, or never opened).
    #[error("no such stream")]
    NoSuchStream,
    /// The port is already listened on.
    #[error("address in use")]
    AddrInUse,
    /// The application aborted the stream ([`crate::TiStream::abort`]).
    #[error("stream aborted")]
    Aborted,
    /// A legacy connection had data unacknowledged for `user_timeout`.
    #[error("user timeout: data unacknowledged too long")]
    UserTimeout,
    /// The stack has stopped.
    #[error("stack stopped")]
    StackStopped,
    /// Every port of [`crate::StackConfig::ephemeral_ports`] is held by a
    /// connection or a listener: no connection can be opened until one
    /// goes.
    #[error("no free local port: all {ports} ephemeral ports are in use")]
    NoFreePort {
        /// Ports in the ephemeral range.
        ports: u32,
    },
    /// A connect to an address of a family (IPv4, IPv6) the stack has no
    /// address of.
    #[error("no local address of the destination's family (IPv4 or IPv6)")]
    NoAddressOfFamily,
    /// Only the end that opened a flow resumes it.
    #[error("only the initiator of a flow resumes it")]
    NotInitiator,
}

impl From<StreamError> for io::Error {
    fn from(e: StreamError) -> io::Error {
        let kind = match e {
            StreamError::FlowLost(_) | StreamError::ConnectionReset => {
                io::ErrorKind::ConnectionReset
            }
            StreamError::ConnectionRefused => io::ErrorKind::ConnectionRefused,
            StreamError::TimedOut | StreamError::UserTimeout => io::ErrorKind::TimedOut,
            StreamError::Aborted => io::ErrorKind::ConnectionAborted,
            StreamError::WriteAfterShutdown => io::ErrorKind::BrokenPipe,
            StreamError::NoSuchStream | StreamError::StackStopped => io::ErrorKind::NotConnected,
            StreamError::AddrInUse => io::ErrorKind::AddrInUse,
            StreamError::NotInitiator => io::ErrorKind::InvalidInput,
            StreamError::NoFreePort { .. } | StreamError::NoAddressOfFamily => {
                io::ErrorKind::AddrNotAvailable
            }
        };
        io::Error::new(kind, e)
    }
}

/// Something that happened to a stream, for the application to observe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEvent {
    /// The flow continued on a new TCP connection.
    Resumed {
        /// From the failure being noticed to the new connection carrying
        /// the flow (the time to resume).
        downtime: Duration,
        /// From the last byte the connection carried (acknowledged or
        /// delivered) to the failure being noticed (the time to detect).
        /// The program's own wait is `detect + downtime` plus the time to
        /// the first byte after the resume: [`crate::StreamStats::last_gap`].
        detect: Duration,
        /// Bytes sent again because the old connection lost them.
        resent_bytes: u64,
    },
    /// The connection went legacy after first looking resilient.
    FellBack(FallbackCause),
    /// The flow is lost; reads and writes now fail.
    Lost(LostCause),
}
