//! Why `tiflow up` failed, in words that say what to do.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use ti_stack::StreamError;

use crate::control::ControlError;
use crate::host::{CommandError, MissingTools, PrivilegeError};

/// Why `tiflow up` failed.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// Arguments that do not fit together.
    #[error("{0}")]
    Usage(String),
    /// Not privileged.
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
    /// A command it needs is not installed.
    #[error(transparent)]
    MissingTools(#[from] MissingTools),
    /// A `--forward` address cannot be listened on.
    #[error("cannot listen on {addr} for --forward: {source}{}", port_hint(.source))]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The control socket.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The TUN device name is in use.
    #[error(
        "TUN device name {name:?} is taken: {detail} (another `tiflow up` running? \
         choose another name with --tun)"
    )]
    TunTaken {
        /// The name.
        name: String,
        /// What holds it.
        detail: String,
    },
    /// The TUN device could not be created.
    #[error("cannot create TUN device {name:?}: {source}")]
    Tun {
        /// The name.
        name: String,
        /// Why.
        source: io::Error,
    },
    /// A configuration command failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The kernel refused the nftables table (or could not be asked).
    #[error("nftables: {0}")]
    Netfilter(#[from] ti_nfnetlink::Error),
    /// A sysctl (forwarding, the TUN's IPv6) could not be read or set.
    #[error("cannot set {key}: {source}{}", ipv6_hint(.key, .source))]
    Sysctl {
        /// The sysctl.
        key: String,
        /// Why.
        source: io::Error,
    },
    /// The `--metrics` address cannot be listened on.
    #[error("cannot listen on {addr} for --metrics: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// What a previous `tiflow up` on this TUN left could not be removed.
    #[error("cannot remove what a previous tiflow up left: {0}")]
    Leftovers(#[from] crate::down::DownError),
    /// The state file (what `tiflow down` needs after a crash).
    #[error("cannot write the state file: {0}")]
    State(io::Error),
    /// The capture file.
    #[error("cannot create capture file {}: {source}", path.display())]
    Pcap {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The stack could not start.
    #[error("cannot start the stack: {0}")]
    Start(io::Error),
    /// A `--serve` port could not be listened on.
    #[error("cannot listen on stack port {port} for --serve: {source}")]
    Serve {
        /// The port.
        port: u16,
        /// Why.
        source: StreamError,
    },
    /// `--serve-all` could not listen on the stack.
    #[error("cannot listen on the stack's ports for --serve-all: {0}")]
    ServeAll(StreamError),
    /// The listener `--capture`'s connections are redirected to could not
    /// be opened.
    #[error("cannot listen on {addr} for --capture: {source}")]
    CaptureListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install SIGINT/SIGTERM handlers: {0}")]
    Signals(io::Error),
}

fn port_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::AddrInUse => " (another program listens there: pick another port)",
        io::ErrorKind::AddrNotAvailable => " (no interface of this host has that address)",
        io::ErrorKind::PermissionDenied => " (ports below 1024 need root)",
        _ => "",
    }
}

/// Why an IPv6 sysctl may be missing.
fn ipv6_hint(key: &str, source: &io::Error) -> &'static str {
    if key.starts_with("net.ipv6") && source.kind() == io::ErrorKind::NotFound {
        " (IPv6 is off in this kernel or namespace: boot without ipv6.disable=1, or give only IPv4 addresses)"
    } else {
        ""
    }
}
