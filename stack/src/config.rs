//! Stack settings and their defaults (DESIGN §4, §6).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::time::Duration;

/// Settings of a [`crate::Stack`].
#[derive(Debug, Clone, PartialEq)]
pub struct StackConfig {
    /// Our IPv4 address; `0.0.0.0` for a stack with only an IPv6 address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Our IPv6 address, if any: the stack is then dual-stack (or
    /// IPv6-only with `address` 0.0.0.0).
    pub ipv6: Option<Ipv6Addressing>,
    /// Offer and accept TI-flows; off makes the stack plain TCP.
    pub ti_enabled: bool,
    /// The flow option's kind.
    pub option_kind: u8,
    /// Data outstanding with no acknowledgement progress this long means
    /// the connection failed.
    pub stall_timeout: Duration,
    /// Keepalive interval on idle TI connections; unanswered for
    /// `stall_timeout` beyond it means the connection failed.
    pub keepalive: Duration,
    /// How long a detached flow waits for (or the initiator keeps trying) a resume.
    pub resume_timeout: Duration,
    /// First resume retry delay; doubles per attempt.
    pub resume_backoff: Duration,
    /// Accept a resume from a new peer address.
    pub allow_migration: bool,
    /// Most TI-flows held.
    pub max_flows: usize,
    /// smoltcp socket buffer size, each direction.
    pub socket_buffer: usize,
    /// TI send buffer bound (bytes the application may queue).
    pub send_buffer: usize,
    /// TI receive buffer bound (bytes delivered but not yet read).
    pub recv_buffer: usize,
    /// Most connections in SYN-RECEIVED at once, over all listeners; a new
    /// SYN beyond it evicts the oldest (those whose SYN retransmitted one
    /// the stack dropped go last), so a SYN flood does not lock out
    /// legitimate clients (DESIGN §5).
    pub max_half_open: usize,
    /// A connection still in SYN-RECEIVED this long after its SYN is
    /// dropped. Long enough for the SYN-ACK to be sent again four times
    /// (1, 3, 7 and 15 s after the first, smoltcp's backoff), since a lost
    /// final ACK is recovered only by those: a client that took our SYN-ACK
    /// holds a connection the stack would otherwise forget (its first
    /// segment then meets a reset). `max_half_open` is what bounds a SYN
    /// flood, not this.
    pub half_open_timeout: Duration,
    /// Per listener, most connections the stack completed and the
    /// application has not accepted yet: while that many wait, new SYNs are
    /// not answered, and a handshake completing meanwhile is dropped. With
    /// `max_half_open`, bounds the sockets remote peers can make one
    /// listener hold.
    pub accept_backlog: usize,
    /// A legacy connection whose data stays unacknowledged this long ends
    /// with [`crate::StreamError::UserTimeout`] (like `TCP_USER_TIMEOUT`).
    pub user_timeout: Duration,
    /// Give up a connect or a handshake after this long.
    pub connect_timeout: Duration,
    /// Local ports of the connections the stack opens (RFC 6335's
    /// 49152-65535 by default). With every one held by a connection or a
    /// listener, a connect fails with [`crate::StreamError::NoFreePort`]
    /// and a resume attempt waits for its next turn.
    pub ephemeral_ports: RangeInclusive<u16>,
    /// Seed for ports, TIFID halves and TI ISNs; `None` seeds from the OS
    /// (use a seed only for deterministic simulation).
    pub seed: Option<u64>,
    /// Latency tuning of [`crate::Runtime`]'s driver thread: 1 ns timer
    /// slack (the kernel's default 50 us delays every timed wake-up by up
    /// to that much) and polling instead of sleeping through the last
    /// 100 us before a deadline. Costs CPU while timers are near; off by
    /// default (`tiflow bench` measures both).
    pub low_latency: bool,
}

/// The stack's IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Addressing {
    /// The address.
    pub address: Ipv6Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Default gateway, if any.
    pub gateway: Option<Ipv6Addr>,
}

impl Ipv6Addressing {
    /// `address`/64 without a gateway.
    pub fn new(address: Ipv6Addr) -> Ipv6Addressing {
        Ipv6Addressing {
            address,
            prefix_len: 64,
            gateway: None,
        }
    }
}

impl StackConfig {
    /// Whether `ip` is one of our addresses.
    pub fn is_ours(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => !v4.is_unspecified() && v4 == self.address,
            IpAddr::V6(v6) => self.ipv6.is_some_and(|a| a.address == v6),
        }
    }

    /// Our address of `remote`'s family, for a connection to it.
    pub fn local_address_for(&self, remote: IpAddr) -> Option<IpAddr> {
        match remote {
            IpAddr::V4(_) if !self.address.is_unspecified() => Some(IpAddr::V4(self.address)),
            IpAddr::V4(_) => None,
            IpAddr::V6(_) => self.ipv6.map(|a| IpAddr::V6(a.address)),
        }
    }

    /// Defaults for the given address (/24).
    pub fn new(address: Ipv4Addr) -> StackConfig {
        StackConfig {
            address,
            prefix_len: 24,
            gateway: None,
            ipv6: None,
            ti_enabled: true,
            option_kind: tifid::DEFAULT_KIND,
            stall_timeout: Duration::from_secs(3),
            keepalive: Duration::from_secs(5),
            resume_timeout: Duration::from_secs(60),
            resume_backoff: Duration::from_millis(200),
            allow_migration: true,
            max_flows: 65_536,
            socket_buffer: 1 << 20,
            send_buffer: 4 << 20,
            recv_buffer: 4 << 20,
            max_half_open: 256,
            half_open_timeout: Duration::from_secs(20),
            accept_backlog: 128,
            user_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(20),
            ephemeral_ports: 49152..=65535,
            seed: None,
            low_latency: false,
        }
    }

    /// Defaults for a stack with only an IPv6 address (/64).
    pub fn new_v6(address: Ipv6Addr) -> StackConfig {
        StackConfig {
            address: Ipv4Addr::UNSPECIFIED,
            ipv6: Some(Ipv6Addressing::new(address)),
            ..StackConfig::new(Ipv4Addr::UNSPECIFIED)
        }
    }
}
