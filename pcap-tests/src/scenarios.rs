//! The captured stock-kernel traces: their topology, addresses, ports and
//! conversations, shared by the capture program (`capture/capture_traces.rs`)
//! and the replay tests, so both agree on what each trace holds.
//!
//! Owns constants and descriptions only; it never opens a device or a file.
//!
//! Topologies (all inside namespaces the capture program creates):
//! - Kernel scenarios: one namespace with TUN `ti0`; the kernel side is
//!   [`KERNEL`] (10.7.0.1/24), our stack [`OURS`] (10.7.0.2) on the TUN.
//! - Two-stack scenarios: one router namespace (the middlebox) with TUNs
//!   `tia` (kernel 10.7.1.1/24) and `tib` (kernel 10.7.2.1/24) and IPv4
//!   forwarding on; stack A ([`STACK_A`], the initiator) on `tia`, stack B
//!   ([`STACK_B`], the responder) on `tib`. Option stripping is an
//!   `iptables -t mangle -A FORWARD -i tia|tib -p tcp -j TCPOPTSTRIP
//!   --strip-options 253` rule in that namespace.
//! - The IPv6 scenarios ([`Scenario::ipv6`]) use the same topologies over
//!   IPv6: kernel [`KERNEL6`] and ours [`OURS6`] on a /64; stacks
//!   [`STACK_A6`] and [`STACK_B6`] behind the router's [`GATEWAY_A6`] and
//!   [`GATEWAY_B6`], IPv6 forwarding on.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::exchange::{AppRole, Exchange, Round};

/// The kernel's address in the kernel scenarios.
pub const KERNEL: Ipv4Addr = Ipv4Addr::new(10, 7, 0, 1);
/// Our stack's address in the kernel scenarios.
pub const OURS: Ipv4Addr = Ipv4Addr::new(10, 7, 0, 2);
/// Stack A (initiator) in the two-stack scenarios.
pub const STACK_A: Ipv4Addr = Ipv4Addr::new(10, 7, 1, 2);
/// The router's address on A's TUN (A's gateway).
pub const GATEWAY_A: Ipv4Addr = Ipv4Addr::new(10, 7, 1, 1);
/// Stack B (responder) in the two-stack scenarios.
pub const STACK_B: Ipv4Addr = Ipv4Addr::new(10, 7, 2, 2);
/// The router's address on B's TUN (B's gateway).
pub const GATEWAY_B: Ipv4Addr = Ipv4Addr::new(10, 7, 2, 1);

/// The kernel's address in the IPv6 kernel scenarios.
pub const KERNEL6: Ipv6Addr = Ipv6Addr::new(0xfd00, 7, 0, 0, 0, 0, 0, 1);
/// Our stack's address in the IPv6 kernel scenarios.
pub const OURS6: Ipv6Addr = Ipv6Addr::new(0xfd00, 7, 0, 0, 0, 0, 0, 2);
/// Stack A (initiator) in the IPv6 two-stack scenarios.
pub const STACK_A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 7, 1, 0, 0, 0, 0, 2);
/// The router's address on A's TUN in the IPv6 scenarios.
pub const GATEWAY_A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 7, 1, 0, 0, 0, 0, 1);
/// Stack B (responder) in the IPv6 two-stack scenarios.
pub const STACK_B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 7, 2, 0, 0, 0, 0, 2);
/// The router's address on B's TUN in the IPv6 scenarios.
pub const GATEWAY_B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 7, 2, 0, 0, 0, 0, 1);

/// Where the TCPOPTSTRIP rule applies in a two-stack scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strip {
    /// Initiator to responder (`-i tia`): the SYN and the confirmation lose
    /// the option.
    Forward,
    /// Responder to initiator (`-i tib`): the SYN-ACK loses it.
    Return,
}

/// Who talks to whom in a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// A Linux client connects to our listener.
    LinuxClient,
    /// Our stack connects to a Linux server.
    LinuxServer,
    /// Two of our stacks through the router namespace, optionally with a
    /// TCPOPTSTRIP rule.
    TwoStacks(Option<Strip>),
}

/// Which side of the conversation a trace file was captured at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// At the stack that connected.
    Initiator,
    /// At the stack that accepted.
    Responder,
}

/// One capture scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    /// File stem of its traces.
    pub name: &'static str,
    /// What it shows, one line.
    pub summary: &'static str,
    /// Who talks to whom.
    pub topology: Topology,
    /// The responder's listening port.
    pub port: u16,
    /// Rounds of the conversation.
    pub rounds: usize,
    /// The initiator fails its transport after this round.
    pub fail_after_round: Option<usize>,
    /// Over IPv6 (the `*6` addresses) instead of IPv4.
    pub ipv6: bool,
}

/// (a) A Linux client's SYN (no option) to our listener.
pub const LINUX_CLIENT: Scenario = Scenario {
    name: "linux-client-to-ours",
    summary: "a Linux client connects to our listener: no option anywhere, legacy",
    topology: Topology::LinuxClient,
    port: 7001,
    rounds: 1,
    fail_after_round: None,
    ipv6: false,
};

/// (b) Our SYN with the option to a Linux server.
pub const LINUX_SERVER: Scenario = Scenario {
    name: "ours-to-linux-server",
    summary: "our SYN offers a flow to a Linux server, whose SYN-ACK has no option: legacy",
    topology: Topology::LinuxServer,
    port: 7002,
    rounds: 1,
    fail_after_round: None,
    ipv6: false,
};

/// (c) Two of our stacks set up a TI-flow.
pub const TI_SETUP: Scenario = Scenario {
    name: "ti-flow-setup",
    summary: "two of our stacks set up a TI-flow: SYN, SYN-ACK and confirming ACK carry the option",
    topology: Topology::TwoStacks(None),
    port: 7003,
    rounds: 1,
    fail_after_round: None,
    ipv6: false,
};

/// (d) Two of our stacks: a flow, `fail_transport`, a resume.
pub const TI_RESUME: Scenario = Scenario {
    name: "ti-flow-resume",
    summary: "a TI-flow, fail_transport at the initiator after the first round, then a resume on a new connection",
    topology: Topology::TwoStacks(None),
    port: 7004,
    rounds: 2,
    fail_after_round: Some(0),
    ipv6: false,
};

/// (e) TCPOPTSTRIP on the forward path.
pub const STRIP_FORWARD: Scenario = Scenario {
    name: "optstrip-forward",
    summary: "TCPOPTSTRIP 253 from initiator to responder: the SYN arrives without the option, legacy",
    topology: Topology::TwoStacks(Some(Strip::Forward)),
    port: 7005,
    rounds: 1,
    fail_after_round: None,
    ipv6: false,
};

/// (f) TCPOPTSTRIP on the return path.
pub const STRIP_RETURN: Scenario = Scenario {
    name: "optstrip-return",
    summary: "TCPOPTSTRIP 253 from responder to initiator: the SYN-ACK arrives without the option, legacy on both sides",
    topology: Topology::TwoStacks(Some(Strip::Return)),
    port: 7006,
    rounds: 1,
    fail_after_round: None,
    ipv6: false,
};

/// (g) (a) over IPv6.
pub const LINUX_CLIENT_V6: Scenario = Scenario {
    name: "linux-client-to-ours-ipv6",
    summary: "over IPv6, a Linux client connects to our listener: no option anywhere, legacy",
    topology: Topology::LinuxClient,
    port: 7011,
    rounds: 1,
    fail_after_round: None,
    ipv6: true,
};

/// (h) (b) over IPv6.
pub const LINUX_SERVER_V6: Scenario = Scenario {
    name: "ours-to-linux-server-ipv6",
    summary: "over IPv6, our SYN offers a flow to a Linux server, whose SYN-ACK has no option: legacy",
    topology: Topology::LinuxServer,
    port: 7012,
    rounds: 1,
    fail_after_round: None,
    ipv6: true,
};

/// (i) (d) over IPv6.
pub const TI_RESUME_V6: Scenario = Scenario {
    name: "ti-flow-resume-ipv6",
    summary: "over IPv6, a TI-flow, fail_transport at the initiator after the first round, then a resume on a new connection",
    topology: Topology::TwoStacks(None),
    port: 7014,
    rounds: 2,
    fail_after_round: Some(0),
    ipv6: true,
};

/// Every scenario, in the order (a) to (i).
pub const ALL: [Scenario; 9] = [
    LINUX_CLIENT,
    LINUX_SERVER,
    TI_SETUP,
    TI_RESUME,
    STRIP_FORWARD,
    STRIP_RETURN,
    LINUX_CLIENT_V6,
    LINUX_SERVER_V6,
    TI_RESUME_V6,
];

impl Scenario {
    /// The conversation: short text lines, so a hex dump stays readable.
    pub fn exchange(&self) -> Exchange {
        let rounds = (1..=self.rounds)
            .map(|i| Round {
                request: format!("{} request {i}: hello from the initiator\n", self.name)
                    .into_bytes(),
                response: format!(
                    "{} response {i}: hello from the responder, request {i} received\n",
                    self.name
                )
                .into_bytes(),
            })
            .collect();
        Exchange {
            rounds,
            fail_after_round: self.fail_after_round,
        }
    }

    /// The sides captured: ours only in the kernel scenarios, both stacks
    /// in the two-stack ones.
    pub fn sides(&self) -> &'static [Side] {
        match self.topology {
            Topology::LinuxClient => &[Side::Responder],
            Topology::LinuxServer => &[Side::Initiator],
            Topology::TwoStacks(_) => &[Side::Initiator, Side::Responder],
        }
    }

    /// The initiator's address.
    pub fn initiator_addr(&self) -> IpAddr {
        match (self.topology, self.ipv6) {
            (Topology::LinuxClient, false) => KERNEL.into(),
            (Topology::LinuxServer, false) => OURS.into(),
            (Topology::TwoStacks(_), false) => STACK_A.into(),
            (Topology::LinuxClient, true) => KERNEL6.into(),
            (Topology::LinuxServer, true) => OURS6.into(),
            (Topology::TwoStacks(_), true) => STACK_A6.into(),
        }
    }

    /// The responder's address and port.
    pub fn responder(&self) -> SocketAddr {
        let addr: IpAddr = match (self.topology, self.ipv6) {
            (Topology::LinuxClient, false) => OURS.into(),
            (Topology::LinuxServer, false) => KERNEL.into(),
            (Topology::TwoStacks(_), false) => STACK_B.into(),
            (Topology::LinuxClient, true) => OURS6.into(),
            (Topology::LinuxServer, true) => KERNEL6.into(),
            (Topology::TwoStacks(_), true) => STACK_B6.into(),
        };
        SocketAddr::new(addr, self.port)
    }

    /// Our stack's address in a trace captured at `side`.
    pub fn our_addr(&self, side: Side) -> IpAddr {
        match side {
            Side::Initiator => self.initiator_addr(),
            Side::Responder => self.responder().ip(),
        }
    }

    /// The gateway our stack at `side` uses (none in the kernel scenarios:
    /// the peer is on the TUN's subnet).
    pub fn gateway(&self, side: Side) -> Option<IpAddr> {
        match (self.topology, side, self.ipv6) {
            (Topology::TwoStacks(_), Side::Initiator, false) => Some(GATEWAY_A.into()),
            (Topology::TwoStacks(_), Side::Responder, false) => Some(GATEWAY_B.into()),
            (Topology::TwoStacks(_), Side::Initiator, true) => Some(GATEWAY_A6.into()),
            (Topology::TwoStacks(_), Side::Responder, true) => Some(GATEWAY_B6.into()),
            _ => None,
        }
    }

    /// The [`AppRole`] our stack at `side` plays.
    pub fn app_role(&self, side: Side) -> AppRole {
        match side {
            Side::Initiator => AppRole::Initiator {
                remote: self.responder(),
            },
            Side::Responder => AppRole::Responder { port: self.port },
        }
    }

    /// File name of the trace captured at `side`: `NAME.pcap` when the
    /// scenario has one of our stacks, `NAME.initiator.pcap` /
    /// `NAME.responder.pcap` when it has two.
    pub fn file_name(&self, side: Side) -> String {
        match (self.topology, side) {
            (Topology::TwoStacks(_), Side::Initiator) => format!("{}.initiator.pcap", self.name),
            (Topology::TwoStacks(_), Side::Responder) => format!("{}.responder.pcap", self.name),
            _ => format!("{}.pcap", self.name),
        }
    }
}
