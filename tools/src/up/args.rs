//! `tiflow up`'s command line: the arguments, their parsing and the checks
//! that need several of them, and the stack settings they make.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use ti_stack::{Ipv6Addressing, StackConfig};

use crate::cidr::{IpCidr, Ipv4Cidr, Ipv6Cidr};
use crate::control;
use crate::ports::{PortRange, parse_port_list};

/// Help shown after `tiflow up`'s options.
pub const UP_HELP: &str = "\
Addressing:
  The stack and the kernel each have an address on the TUN device's subnet,
  of each family the stack speaks. --address 10.0.2.1/24 is the stack's IPv4
  address: TI-flows leave from it and arrive at it. Add --address
  fd00:2::1/64 for IPv6 too (dual-stack), or give only an IPv6 one.
  The kernel side of the TUN takes, for IPv4, the highest host address of the
  subnet (10.0.2.254 here), for IPv6 the subnet's ::1, or ::2 when the stack
  has ::1 (fd00:2::2 here); --kernel-address chooses (once per family). The
  kernel side is the stack's gateway: the kernel routes the stack's packets
  to its peers with its own routing table (while it runs, tiflow up turns on
  net.ipv4.ip_forward with an IPv4 address and net.ipv6.conf.all.forwarding
  with an IPv6 one; a host forwarding IPv6 ignores router advertisements on
  interfaces whose accept_ra is 1: set it to 2 where the host configures
  itself by SLAAC).
  Peers must be able to answer the stack's address: route that subnet to
  this host, or use --masquerade (flows we open leave with this host's
  address of their family) and --expose (a port of this host is forwarded to
  a --serve port of the stack, over both families).

Example (ssh through TI-flows; server host 192.0.2.10):
  server# tiflow up --address 10.0.2.1/24 --serve 22=127.0.0.1:22 --expose 2222=22
  client# tiflow up --address 10.0.1.1/24 --masquerade --forward 127.0.0.1:2222=192.0.2.10:2222
  client$ ssh -p 2222 user@127.0.0.1
  client# tiflow status; tiflow fail --all

Transparent mode (no port lists; programs use the server's real address):
  server# tiflow up --address 10.0.2.1/24 --serve-all --expose-all
  client# tiflow up --address 10.0.1.1/24 --masquerade --capture 192.0.2.0/24
  client$ ssh user@192.0.2.10; curl http://192.0.2.10/
  The client's kernel redirects TCP this host opens to 192.0.2.0/24 (not
  UDP, not ICMP) to tiflow up, which carries each connection to the
  destination its program asked for; a server without tiflow gets plain TCP.
  The server's kernel sends TCP arriving at any port of its own addresses
  (or only --allow-ports) to the stack, which connects each flow to the same
  port on 127.0.0.1 (::1 over IPv6): servers listening on a wildcard or
  loopback address are reached, and they see connections from loopback.

Example over IPv6 (server host 2001:db8::10):
  server# tiflow up --address fd00:2::1/64 --serve 22=[::1]:22 --expose 2222=22
  client# tiflow up --address fd00:1::1/64 --masquerade --forward [::1]:2222=[2001:db8::10]:2222

Exit codes:
  0  stopped cleanly (SIGINT or SIGTERM; a second one exits at once)
  1  runtime error (no CAP_NET_ADMIN, TUN name taken, port in use, missing
     command, control socket in use)
  2  usage error (bad arguments)";

/// A `--forward LISTEN=REMOTE` rule: kernel TCP accepted on `listen` is
/// carried as a TI-flow to `remote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// Kernel address to listen on.
    pub listen: SocketAddr,
    /// The remote end, reached through the stack.
    pub remote: SocketAddr,
    /// When REMOTE is a name: its first address of the other family, if
    /// any (taken when the stack has no address of `remote`'s family; see
    /// [`UpArgs::settled`]).
    pub remote_other: Option<SocketAddr>,
}

impl FromStr for Forward {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (listen, remote) = split_rule(s).ok_or_else(|| {
            format!(
                "{s:?} is not LISTEN=REMOTE (like 127.0.0.1:2222=10.0.2.2:22 or \
                 [::1]:2222=[2001:db8::10]:22)"
            )
        })?;
        let listen = endpoint(listen, "LISTEN")?;
        let (remote, remote_other) = host_port(remote, "REMOTE")?;
        if remote.port() == 0 || remote.ip().is_unspecified() {
            return Err(format!("REMOTE {remote} needs an address and a port"));
        }
        Ok(Forward {
            listen,
            remote,
            remote_other,
        })
    }
}

/// A `--serve PORT=TARGET` rule: TI-flows (or plain TCP) arriving at the
/// stack's `port` are connected to `target` with kernel TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Serve {
    /// The stack's port.
    pub port: u16,
    /// The local program to connect to.
    pub target: SocketAddr,
}

impl FromStr for Serve {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (port, target) = split_rule(s)
            .ok_or_else(|| format!("{s:?} is not PORT=TARGET (like 22=127.0.0.1:22)"))?;
        let port = port_number(port, "PORT")?;
        let target = endpoint(target, "TARGET")?;
        Ok(Serve { port, target })
    }
}

/// An `--expose HOSTPORT[=PORT]` rule: TCP arriving at this host's
/// `host_port` (not through the TUN) is sent to the stack's `port`, over
/// each family the stack has an address of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expose {
    /// The host's port.
    pub host_port: u16,
    /// The stack's port.
    pub port: u16,
}

impl FromStr for Expose {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, stack) = s.split_once('=').unwrap_or((s, s));
        Ok(Expose {
            host_port: port_number(host, "HOSTPORT")?,
            port: port_number(stack, "PORT")?,
        })
    }
}

/// `A=B` split at its `=` (no address of either family holds one).
fn split_rule(s: &str) -> Option<(&str, &str)> {
    s.split_once('=')
}

fn port_number(s: &str, what: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{what} {s:?} is not a port number (1-65535)")),
    }
}

/// `IP:PORT` (`[IPV6]:PORT`), `NAME:PORT` (its first address), or
/// `PORT` alone for 127.0.0.1.
fn endpoint(s: &str, what: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return port_number(s, what).map(|_| SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    let (addr, _) = host_port(s, what)?;
    if addr.port() == 0 {
        return Err(format!("{what} {s:?} needs a port other than 0"));
    }
    Ok(addr)
}

/// `IPV4:PORT`, `[IPV6]:PORT`, or `NAME:PORT` resolved now: the name's
/// first address, and its first address of the other family if it has
/// one (`localhost:22`).
fn host_port(s: &str, what: &str) -> Result<(SocketAddr, Option<SocketAddr>), String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok((addr, None));
    }
    let form = || {
        format!(
            "{what} {s:?} is not IPV4:PORT, [IPV6]:PORT, NAME:PORT or PORT \
             (like 10.0.2.2:22 or [2001:db8::10]:22)"
        )
    };
    let (name, port) = s.rsplit_once(':').ok_or_else(form)?;
    let port: u16 = port.parse().map_err(|_| form())?;
    if name.is_empty() || name.contains(['[', ']', ':']) {
        return Err(form());
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(name, port))
        .map_err(|e| format!("{what} {s:?}: cannot resolve {name:?} ({e})"))?
        .collect();
    let first = *addrs
        .first()
        .ok_or_else(|| format!("{what} {s:?}: {name:?} has no address"))?;
    let other = addrs
        .iter()
        .copied()
        .find(|a| a.is_ipv4() != first.is_ipv4());
    Ok((first, other))
}

/// `--allow-ports`: the ports `--serve-all` and `--expose-all` take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortList(pub Vec<PortRange>);

fn parse_allow_ports(s: &str) -> Result<PortList, String> {
    parse_port_list(s).map(PortList)
}

/// A `--capture` prefix: a network of either family (host bits are
/// cleared), not one holding loopback addresses (the relays of `tiflow
/// up` itself reach their programs there).
fn parse_capture(s: &str) -> Result<IpCidr, String> {
    let net = s
        .parse::<IpCidr>()
        .map_err(|e| format!("{e} (a network to capture, like 192.0.2.0/24)"))?
        .network();
    let loopback = match net {
        IpCidr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpCidr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    if net.contains(loopback) || net.addr().is_loopback() {
        return Err(format!(
            "{net} holds loopback addresses: capture the networks of remote hosts"
        ));
    }
    Ok(net)
}

/// Parses `500ms`, `3s` or `2m`; a number needs its unit (is `3` three
/// seconds or three milliseconds?), and zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (like 500ms, 3s, 2m)");
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if s.trim().parse::<f64>().is_ok() {
        return Err(format!("{s:?} needs a unit: {0}s, {0}ms or {0}m", s.trim()));
    } else {
        return Err(bad());
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    if !value.is_finite() || value <= 0.0 || value * scale > 86_400.0 * 365.0 {
        return Err(format!("{s:?} must be more than zero (and under a year)"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

/// Checks an option kind: 2-255, but not one TCP itself uses in handshakes.
pub fn parse_option_kind(s: &str) -> Result<u8, String> {
    let kind: u8 = s
        .parse()
        .map_err(|_| format!("{s:?} is not an option kind (2-255)"))?;
    let taken = match kind {
        0 => Some("end of option list"),
        1 => Some("no-operation"),
        2 => Some("maximum segment size"),
        3 => Some("window scale"),
        4 => Some("SACK permitted"),
        5 => Some("SACK"),
        8 => Some("timestamps"),
        _ => None,
    };
    match taken {
        Some(name) => Err(format!(
            "kind {kind} is TCP's {name} option; choose another in 2-255 (default 253)"
        )),
        None => Ok(kind),
    }
}

/// Checks an interface name: 1-15 letters, digits, `-`, `_` or `.`.
pub fn parse_tun_name(s: &str) -> Result<String, String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if s.is_empty() || s.len() > 15 || !s.chars().all(valid) || s == "." || s == ".." {
        return Err(format!(
            "{s:?} is not an interface name (1-15 letters, digits, '-', '_' or '.')"
        ));
    }
    Ok(s.to_owned())
}

fn parse_stack_address(s: &str) -> Result<IpCidr, String> {
    let cidr: IpCidr = s.parse()?;
    match cidr {
        IpCidr::V4(c) => {
            if c.prefix > 30 {
                return Err(format!(
                    "/{} leaves no room for the kernel side of the TUN: use /30 or shorter",
                    c.prefix
                ));
            }
            if !c.is_host(c.addr) {
                return Err(format!(
                    "{} is the network or broadcast address of {}/{}",
                    c.addr,
                    c.network(),
                    c.prefix
                ));
            }
        }
        IpCidr::V6(c) => {
            if c.prefix > 126 {
                return Err(format!(
                    "/{} leaves no room for the kernel side of the TUN: use /126 or shorter",
                    c.prefix
                ));
            }
            if !c.is_host(c.addr) {
                return Err(format!(
                    "{} is the network (subnet-router anycast) address of {}/{}",
                    c.addr,
                    c.network(),
                    c.prefix
                ));
            }
            if c.addr.is_loopback() || c.addr.is_multicast() || c.addr.is_unspecified() {
                return Err(format!("{} cannot be the stack's address", c.addr));
            }
        }
    }
    Ok(cidr)
}

/// Arguments of `tiflow up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Name of the TUN device to create.
    #[arg(long, value_name = "NAME", default_value = "tiflow0", value_parser = parse_tun_name)]
    pub tun: String,

    /// The stack's address and prefix on the TUN device, IPv4 or IPv6
    /// (see Addressing below). Give one of each family for a dual-stack
    /// stack.
    #[arg(long, value_name = "ADDR/PREFIX", default_value = "10.0.2.1/24", value_parser = parse_stack_address)]
    pub address: Vec<IpCidr>,

    /// The kernel side of the TUN device, at most one per family
    /// [default: for IPv4, the highest host address of --address's subnet;
    /// for IPv6, the subnet's ::1, or ::2 when the stack has ::1].
    #[arg(long, value_name = "ADDR")]
    pub kernel_address: Vec<IpAddr>,

    /// MTU of the TUN device (kernel and stack side).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u16).range(576..=9000))]
    pub mtu: u16,

    /// Carry kernel TCP connections accepted at LISTEN (IP:PORT,
    /// [IPV6]:PORT, NAME:PORT, or PORT for 127.0.0.1) to REMOTE (IPV4:PORT,
    /// [IPV6]:PORT or NAME:PORT, a name resolved at start to an address of
    /// a family the stack has) as TI-flows. Repeatable.
    #[arg(long = "forward", value_name = "LISTEN=REMOTE")]
    pub forwards: Vec<Forward>,

    /// Accept TI-flows (and plain TCP) on the stack's PORT and connect each
    /// to TARGET (IP:PORT, [IPV6]:PORT, NAME:PORT, or PORT for 127.0.0.1)
    /// with kernel TCP. Repeatable.
    #[arg(long = "serve", value_name = "PORT=TARGET")]
    pub serves: Vec<Serve>,

    /// Masquerade the stack's outgoing connections with this host's address
    /// of the same family (nftables NAT, IPv4 and IPv6), so peers need no
    /// route back to --address.
    #[arg(long)]
    pub masquerade: bool,

    /// Forward TCP arriving at this host's HOSTPORT to the stack's PORT
    /// (nftables DNAT, over each family the stack has an address of; PORT
    /// defaults to HOSTPORT). Repeatable.
    #[arg(long = "expose", value_name = "HOSTPORT[=PORT]")]
    pub exposes: Vec<Expose>,

    /// Transparent mode, client side: TCP connections this host's programs
    /// open to PREFIX (like 192.0.2.0/24 or 2001:db8::/64, of a family the
    /// stack has) are carried to their real destination as TI-flows (plain
    /// TCP where the server has no tiflow); programs connect to the real
    /// address and port, no --forward needed. Only TCP is taken: UDP and
    /// ICMP keep their route. Repeatable.
    #[arg(long = "capture", value_name = "PREFIX", value_parser = parse_capture)]
    pub captures: Vec<IpCidr>,

    /// Transparent mode, server side: accept TI-flows (and plain TCP) on
    /// every port of the stack that no --serve holds (or only on
    /// --allow-ports) and connect each to the same port on this host
    /// (127.0.0.1, or ::1 for a flow over IPv6).
    #[arg(long)]
    pub serve_all: bool,

    /// Forward TCP arriving at this host's own addresses on any port (or
    /// only on --allow-ports) to the same port of the stack (nftables DNAT,
    /// each family the stack has): --expose for every port. Needs
    /// --serve-all.
    #[arg(long)]
    pub expose_all: bool,

    /// With --serve-all and --expose-all: only these ports (like
    /// 22,80,8000-8100).
    #[arg(long, value_name = "PORTS", value_parser = parse_allow_ports)]
    pub allow_ports: Option<PortList>,

    /// Data outstanding without acknowledgement this long means the TCP
    /// connection died (the flow resumes).
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub stall_timeout: Duration,

    /// How long a detached flow waits for (or keeps trying) a resume.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub resume_timeout: Duration,

    /// A plain TCP connection (a peer or path without TI-flows) whose sent
    /// data stays unacknowledged this long fails: the local program's
    /// connection is reset (like TCP_USER_TIMEOUT).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub user_timeout: Duration,

    /// Keepalive interval on idle TI connections.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub keepalive: Duration,

    /// Latency tuning: 1 ns timer slack and polling instead of sleeping
    /// through the last 100 us before a timer (tens of microseconds less
    /// per timed event, more CPU while timers are near).
    #[arg(long)]
    pub low_latency: bool,

    /// Accept resumes from a new peer address (the default).
    #[arg(long, overrides_with = "no_migration")]
    pub allow_migration: bool,

    /// Refuse resumes from a peer address other than the flow's.
    #[arg(long, overrides_with = "allow_migration")]
    pub no_migration: bool,

    /// TCP option kind of the flow option (2-255, not one TCP uses).
    #[arg(long, value_name = "N", default_value = "253", value_parser = parse_option_kind)]
    pub option_kind: u8,

    /// Plain packets of at most the MTU on the TUN device: no checksum or
    /// segmentation offload (the default uses them when the kernel allows;
    /// the banner says which).
    #[arg(long)]
    pub no_offload: bool,

    /// Plain TCP only: neither offer nor accept TI-flows.
    #[arg(long)]
    pub no_ti: bool,

    /// Record every packet of the TUN device to this pcap file.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,

    /// The control socket for `tiflow status` and `tiflow fail`: a socket
    /// file, or @NAME for an abstract one [default: the abstract @tiflow/NAME
    /// of this network namespace, NAME from --tun].
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Serve the flows' counters (modes, resumes, failures by cause, lost
    /// flows, bytes, a downtime histogram) in the Prometheus text format at
    /// http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Read settings from this TOML file: keys are these flags' long names
    /// (`address = "10.0.1.1/24"`, `masquerade = true`, `forward = [...]`);
    /// flags on the command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Stop when standard input closes (for a parent process such as `tiflow demo`).
    #[arg(long, hide = true)]
    pub exit_on_stdin_close: bool,
}

impl UpArgs {
    /// The stack's IPv4 address (the last `--address` of that family).
    pub fn ipv4(&self) -> Option<Ipv4Cidr> {
        self.address.iter().rev().find_map(|a| match a {
            IpCidr::V4(c) => Some(*c),
            IpCidr::V6(_) => None,
        })
    }

    /// The stack's IPv6 address (the last `--address` of that family).
    pub fn ipv6(&self) -> Option<Ipv6Cidr> {
        self.address.iter().rev().find_map(|a| match a {
            IpCidr::V6(c) => Some(*c),
            IpCidr::V4(_) => None,
        })
    }

    /// The stack's addresses, IPv4 first.
    pub fn addresses(&self) -> Vec<IpCidr> {
        let v4 = self.ipv4().map(IpCidr::V4);
        let v6 = self.ipv6().map(IpCidr::V6);
        v4.into_iter().chain(v6).collect()
    }

    /// Whether the stack has an address of `ip`'s family.
    pub fn has_family_of(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.ipv4().is_some(),
            IpAddr::V6(_) => self.ipv6().is_some(),
        }
    }

    /// The kernel side of the TUN device for the stack's IPv4 address.
    pub fn kernel_ipv4(&self) -> Option<Ipv4Addr> {
        let stack = self.ipv4()?;
        let chosen = self.kernel_address.iter().rev().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        });
        Some(chosen.unwrap_or_else(|| match stack.last_host() {
            Some(last) if last != stack.addr => last,
            _ => stack.first_host().unwrap_or(stack.addr),
        }))
    }

    /// The kernel side of the TUN device for the stack's IPv6 address:
    /// `--kernel-address`, else the subnet's `::1`, or `::2` when the stack
    /// has `::1`.
    pub fn kernel_ipv6(&self) -> Option<Ipv6Addr> {
        let stack = self.ipv6()?;
        let chosen = self.kernel_address.iter().rev().find_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        });
        Some(chosen.unwrap_or_else(|| match stack.nth(1) {
            Some(first) if first != stack.addr => first,
            _ => stack.nth(2).unwrap_or(stack.addr),
        }))
    }

    /// The kernel side's addresses with their prefixes, IPv4 first.
    pub fn kernel_addresses(&self) -> Vec<IpCidr> {
        let v4 = self.ipv4().zip(self.kernel_ipv4()).map(|(s, k)| {
            IpCidr::V4(Ipv4Cidr {
                addr: k,
                prefix: s.prefix,
            })
        });
        let v6 = self.ipv6().zip(self.kernel_ipv6()).map(|(s, k)| {
            IpCidr::V6(Ipv6Cidr {
                addr: k,
                prefix: s.prefix,
            })
        });
        v4.into_iter().chain(v6).collect()
    }

    /// The control socket.
    pub fn control_addr(&self) -> control::ControlAddr {
        self.control.as_deref().map_or_else(
            || control::ControlAddr::default_for(&self.tun),
            control::ControlAddr::parse,
        )
    }

    /// Checks what clap cannot see one argument at a time. The message is
    /// for a usage error (exit code 2).
    pub fn validate(&self) -> Result<(), String> {
        self.validate_addresses()?;
        let mut ports = std::collections::HashSet::new();
        for s in &self.serves {
            if !ports.insert(s.port) {
                return Err(format!("--serve port {} given twice", s.port));
            }
        }
        let mut listens = std::collections::HashSet::new();
        for f in &self.forwards {
            if !listens.insert(f.listen) {
                return Err(format!("--forward listens on {} twice", f.listen));
            }
            let remote = self.remote_for(f)?;
            if self.address.iter().any(|a| a.addr() == remote.ip()) {
                return Err(format!(
                    "--forward to {remote} would reach the stack itself; give the peer's address"
                ));
            }
        }
        self.validate_transparent()?;
        let mut hosts = std::collections::HashSet::new();
        for e in &self.exposes {
            if !hosts.insert(e.host_port) {
                return Err(format!("--expose host port {} given twice", e.host_port));
            }
            if !ports.contains(&e.port) {
                return Err(format!(
                    "--expose {}={} points at stack port {}, which no --serve listens on",
                    e.host_port, e.port, e.port
                ));
            }
        }
        Ok(())
    }

    /// `--capture`, `--serve-all`, `--expose-all` and `--allow-ports` fit
    /// together and with the addresses.
    fn validate_transparent(&self) -> Result<(), String> {
        for net in &self.captures {
            if !self.has_family_of(net.addr()) {
                let (family, flag) = if net.addr().is_ipv6() {
                    ("IPv6", "fd00:1::1/64")
                } else {
                    ("IPv4", "10.0.1.1/24")
                };
                return Err(format!(
                    "--capture {net} needs an {family} address on the stack, which has only {}: add one (--address {flag})",
                    self.address_list()
                ));
            }
            if let Some(stack) = self.addresses().into_iter().find(|a| a.overlaps(*net)) {
                return Err(format!(
                    "--capture {net} overlaps the stack's own subnet {stack}: capture the networks of remote hosts"
                ));
            }
        }
        if self.expose_all && !self.serve_all {
            return Err(
                "--expose-all sends every port to the stack, which serves them only with --serve-all: add --serve-all".into(),
            );
        }
        if self.allow_ports.is_some() && !self.serve_all {
            return Err(
                "--allow-ports limits --serve-all (and --expose-all): add --serve-all".into(),
            );
        }
        Ok(())
    }

    /// The ports `--serve-all` and `--expose-all` take: the ranges of
    /// `--allow-ports`, or none for every port.
    pub fn allowed_ports(&self) -> Vec<PortRange> {
        self.allow_ports.clone().map(|l| l.0).unwrap_or_default()
    }

    /// At most one `--address` and one `--kernel-address` per family, each
    /// kernel address a host of its family's subnet and not the stack's.
    fn validate_addresses(&self) -> Result<(), String> {
        let count = |v6: bool| {
            self.address
                .iter()
                .filter(|a| a.addr().is_ipv6() == v6)
                .count()
        };
        for (v6, family) in [(false, "IPv4"), (true, "IPv6")] {
            if count(v6) > 1 {
                return Err(format!(
                    "--address given twice for {family}: one address per family"
                ));
            }
            let kernels = self.kernel_address.iter().filter(|a| a.is_ipv6() == v6);
            if kernels.count() > 1 {
                return Err(format!(
                    "--kernel-address given twice for {family}: one address per family"
                ));
            }
        }
        if self.address.is_empty() {
            return Err("no --address: give the stack an IPv4 or an IPv6 address".into());
        }
        for k in &self.kernel_address {
            if !self.has_family_of(*k) {
                let family = if k.is_ipv6() { "IPv6" } else { "IPv4" };
                return Err(format!(
                    "--kernel-address {k} is {family}, but no --address is: give the stack an {family} address too"
                ));
            }
        }
        if let (Some(stack), Some(kernel)) = (self.ipv4(), self.kernel_ipv4()) {
            if kernel == stack.addr {
                return Err(format!(
                    "--kernel-address {kernel} is the stack's own address (--address)"
                ));
            }
            if !stack.is_host(kernel) {
                return Err(format!(
                    "--kernel-address {kernel} is not a host address of {}/{}",
                    stack.network(),
                    stack.prefix
                ));
            }
        }
        if let (Some(stack), Some(kernel)) = (self.ipv6(), self.kernel_ipv6()) {
            if kernel == stack.addr {
                return Err(format!(
                    "--kernel-address {kernel} is the stack's own address (--address)"
                ));
            }
            if !stack.is_host(kernel) {
                return Err(format!(
                    "--kernel-address {kernel} is not a host address of {}/{}",
                    stack.network(),
                    stack.prefix
                ));
            }
        }
        Ok(())
    }

    /// The address a `--forward` reaches: its REMOTE, or (for a name) the
    /// name's address of the other family when the stack has no address of
    /// the first one's; an error when the stack has neither family.
    pub fn remote_for(&self, f: &Forward) -> Result<SocketAddr, String> {
        if self.has_family_of(f.remote.ip()) {
            return Ok(f.remote);
        }
        if let Some(other) = f.remote_other.filter(|o| self.has_family_of(o.ip())) {
            return Ok(other);
        }
        let (family, flag) = if f.remote.is_ipv6() {
            ("IPv6", "fd00:2::1/64")
        } else {
            ("IPv4", "10.0.2.1/24")
        };
        Err(format!(
            "--forward to {} needs an {family} address on the stack, which has only {}: \
             add one (--address {flag}){}",
            f.remote,
            self.address_list(),
            if f.remote_other.is_some() {
                ""
            } else {
                " or give an address the stack can reach"
            }
        ))
    }

    /// The stack's addresses as text: `10.0.2.1/24, fd00:2::1/64`.
    pub fn address_list(&self) -> String {
        let all: Vec<String> = self.addresses().iter().map(ToString::to_string).collect();
        all.join(", ")
    }

    /// The kernel side's addresses as text.
    pub fn kernel_address_list(&self) -> String {
        let all: Vec<String> = self
            .kernel_addresses()
            .iter()
            .map(|c| c.addr().to_string())
            .collect();
        all.join(", ")
    }

    /// Validates, and returns the arguments with each `--forward`'s remote
    /// of a family the stack has (a name's other address taken when needed).
    pub fn settled(&self) -> Result<UpArgs, String> {
        self.validate()?;
        let mut settled = self.clone();
        for f in &mut settled.forwards {
            f.remote = self.remote_for(f)?;
            f.remote_other = None;
        }
        Ok(settled)
    }

    /// The stack's settings.
    pub fn stack_config(&self) -> StackConfig {
        let mut config = match (self.ipv4(), self.ipv6()) {
            (Some(v4), _) => {
                let mut c = StackConfig::new(v4.addr);
                c.prefix_len = v4.prefix;
                c.gateway = self.kernel_ipv4();
                c
            }
            (None, Some(v6)) => StackConfig::new_v6(v6.addr),
            (None, None) => StackConfig::new(Ipv4Addr::UNSPECIFIED),
        };
        config.ipv6 = self.ipv6().map(|v6| Ipv6Addressing {
            address: v6.addr,
            prefix_len: v6.prefix,
            gateway: self.kernel_ipv6(),
        });
        config.ti_enabled = !self.no_ti;
        config.option_kind = self.option_kind;
        config.stall_timeout = self.stall_timeout;
        config.resume_timeout = self.resume_timeout;
        config.keepalive = self.keepalive;
        config.user_timeout = self.user_timeout;
        config.allow_migration = !self.no_migration;
        config.low_latency = self.low_latency;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        up: UpArgs,
    }

    fn parse(args: &[&str]) -> Result<UpArgs, String> {
        let argv = std::iter::once("up").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .map(|c| c.up)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_give_the_documented_addressing() {
        let a = parse(&[]).expect("defaults");
        assert_eq!(a.tun, "tiflow0");
        assert_eq!(a.address_list(), "10.0.2.1/24");
        assert_eq!(a.kernel_ipv4(), Some(Ipv4Addr::new(10, 0, 2, 254)));
        assert_eq!(a.kernel_ipv6(), None);
        assert_eq!(a.control_addr().to_string(), "@tiflow/tiflow0");
        let c = a.stack_config();
        assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 0, 2, 254)));
        assert_eq!(c.ipv6, None);
        assert!(c.ti_enabled && c.allow_migration);
        assert_eq!(c.option_kind, 253);
        assert_eq!(c.user_timeout, Duration::from_secs(30));
        assert_eq!(a.validate(), Ok(()));
    }

    #[test]
    fn stack_on_the_last_host_puts_the_kernel_on_the_first() {
        let a = parse(&["--address", "10.0.2.254/24"]).expect("parse");
        assert_eq!(a.kernel_ipv4(), Some(Ipv4Addr::new(10, 0, 2, 1)));
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().expect("IPv6 address")
    }

    #[test]
    fn an_ipv6_address_makes_the_stack_dual_stack() {
        let a = parse(&["--address", "10.0.1.1/24", "--address", "fd00:1::1/64"]).expect("parse");
        assert_eq!(a.validate(), Ok(()));
        assert_eq!(a.address_list(), "10.0.1.1/24, fd00:1::1/64");
        assert_eq!(a.kernel_address_list(), "10.0.1.254, fd00:1::2");
        let c = a.stack_config();
        assert_eq!(c.address, Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(
            c.ipv6,
            Some(Ipv6Addressing {
                address: v6("fd00:1::1"),
                prefix_len: 64,
                gateway: Some(v6("fd00:1::2")),
            })
        );
        // IPv6 only; the kernel takes ::1 unless the stack has it.
        let a = parse(&["--address", "fd00:1::10/64"]).expect("parse");
        assert_eq!(a.validate(), Ok(()));
        assert_eq!(a.kernel_ipv6(), Some(v6("fd00:1::1")));
        assert_eq!(a.kernel_ipv4(), None);
        let c = a.stack_config();
        assert!(c.address.is_unspecified());
        assert_eq!(c.ipv6.and_then(|v| v.gateway), Some(v6("fd00:1::1")));
        // --kernel-address once per family.
        let a = parse(&[
            "--address",
            "fd00:1::10/64",
            "--address",
            "10.0.1.1/24",
            "--kernel-address",
            "fd00:1::99",
            "--kernel-address",
            "10.0.1.7",
        ])
        .expect("parse");
        assert_eq!(a.validate(), Ok(()));
        assert_eq!(a.kernel_address_list(), "10.0.1.7, fd00:1::99");
    }

    #[test]
    fn ipv6_literals_and_names_parse() {
        let a = parse(&[
            "--address",
            "fd00:1::1/64",
            "--forward",
            "[::1]:2222=[2001:db8::10]:22",
            "--serve",
            "22=[::1]:22",
        ])
        .expect("parse");
        assert_eq!(a.forwards[0].listen, "[::1]:2222".parse().expect("addr"));
        assert_eq!(
            a.forwards[0].remote,
            "[2001:db8::10]:22".parse().expect("addr")
        );
        assert_eq!(a.serves[0].target, "[::1]:22".parse().expect("addr"));
        assert_eq!(a.validate(), Ok(()));
        // An IPv4 remote for an IPv6-only stack: refused, saying why.
        let a =
            parse(&["--address", "fd00:1::1/64", "--forward", "1=192.0.2.1:22"]).expect("parse");
        let e = a.validate().expect_err("no IPv4 address");
        assert!(e.contains("needs an IPv4 address on the stack"), "{e}");
        // A name of both families: the stack's family is chosen.
        let both = Forward {
            listen: "127.0.0.1:1".parse().expect("addr"),
            remote: "192.0.2.1:22".parse().expect("addr"),
            remote_other: Some("[2001:db8::1]:22".parse().expect("addr")),
        };
        let mut a = parse(&["--address", "fd00:1::1/64"]).expect("parse");
        a.forwards.push(both);
        let settled = a.settled().expect("settled");
        assert_eq!(
            settled.forwards[0].remote,
            "[2001:db8::1]:22".parse().expect("addr")
        );
    }

    #[test]
    fn forward_serve_and_expose_parse() {
        let a = parse(&[
            "--forward",
            "127.0.0.1:2222=10.0.2.2:22",
            "--forward",
            "8080=10.0.3.1:80",
            "--serve",
            "22=127.0.0.1:22",
            "--serve",
            "80=8080",
            "--expose",
            "2022=22",
            "--expose",
            "80",
        ])
        .expect("parse");
        assert_eq!(
            a.forwards[0].listen,
            "127.0.0.1:2222".parse().expect("addr")
        );
        assert_eq!(
            a.forwards[1].listen,
            "127.0.0.1:8080".parse().expect("addr")
        );
        assert_eq!(a.serves[1].target, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(
            a.exposes[0],
            Expose {
                host_port: 2022,
                port: 22
            }
        );
        assert_eq!(
            a.exposes[1],
            Expose {
                host_port: 80,
                port: 80
            }
        );
        assert_eq!(a.validate(), Ok(()));
        // Names resolve to their IPv4 address.
        let a = parse(&[
            "--forward",
            "localhost:2222=localhost:22",
            "--serve",
            "22=localhost:22",
        ])
        .expect("names");
        assert!(a.forwards[0].listen.ip().is_loopback());
        assert_eq!(a.serves[0].target, "127.0.0.1:22".parse().expect("addr"));
    }

    #[test]
    fn bad_arguments_have_clear_messages() {
        let cases: [(&[&str], &str); 16] = [
            (&["--forward", "2222"], "is not LISTEN=REMOTE"),
            (
                &["--forward", "2222=[fd00::1]"],
                "is not IPV4:PORT, [IPV6]:PORT",
            ),
            (&["--address", "fd00::1/127"], "leaves no room"),
            (&["--address", "fd00::/64"], "subnet-router anycast"),
            (
                &["--forward", "2222=no-such-host.invalid:22"],
                "cannot resolve",
            ),
            (&["--forward", "2222=10.0.2.2"], "is not IPV4:PORT"),
            (&["--forward", "0=10.0.2.2:22"], "not a port number"),
            (&["--serve", "22"], "is not PORT=TARGET"),
            (&["--serve", "x=22"], "not a port number"),
            (&["--address", "10.0.2.1"], "is not ADDRESS/PREFIX"),
            (&["--address", "10.0.2.1/31"], "leaves no room"),
            (&["--address", "10.0.2.0/24"], "network or broadcast"),
            (&["--option-kind", "1"], "no-operation"),
            (&["--option-kind", "8"], "timestamps"),
            (&["--stall-timeout", "0s"], "more than zero"),
            (&["--tun", "much-too-long-name"], "not an interface name"),
        ];
        for (args, want) in cases {
            let err = parse(args).expect_err("rejected");
            assert!(err.contains(want), "{args:?}: {err}");
        }
        assert!(parse(&["--option-kind", "256"]).is_err());
        assert!(parse(&["--mtu", "100"]).is_err());
    }

    #[test]
    fn arguments_that_do_not_fit_together_are_refused() {
        let cases: [(&[&str], &str); 10] = [
            (
                &["--address", "10.0.1.1/24", "--address", "10.0.2.1/24"],
                "one address per family",
            ),
            (
                &["--address", "fd00::1/64", "--address", "fd00::2/64"],
                "one address per family",
            ),
            (&["--kernel-address", "fd00::2"], "no --address is"),
            (
                &["--address", "fd00::1/64", "--kernel-address", "fd01::2"],
                "not a host address of fd00::/64",
            ),
            (
                &["--address", "fd00::1/64", "--forward", "1=[fd00::1]:22"],
                "reach the stack itself",
            ),
            (&["--kernel-address", "10.0.2.1"], "stack's own address"),
            (&["--kernel-address", "10.0.3.1"], "not a host address"),
            (&["--serve", "22=22", "--serve", "22=23"], "given twice"),
            (&["--forward", "1=10.0.2.1:22"], "reach the stack itself"),
            (&["--expose", "2022=22"], "no --serve listens"),
        ];
        for (args, want) in cases {
            let err = parse(args)
                .expect("parses")
                .validate()
                .expect_err("refused");
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn migration_flags_last_one_wins() {
        assert!(
            !parse(&["--no-migration"])
                .expect("p")
                .stack_config()
                .allow_migration
        );
        let a = parse(&["--no-migration", "--allow-migration"]).expect("p");
        assert!(a.stack_config().allow_migration);
    }

    #[test]
    fn user_timeout_reaches_the_stack() {
        let a = parse(&["--user-timeout", "3s"]).expect("parse");
        assert_eq!(a.stack_config().user_timeout, Duration::from_secs(3));
        let err = parse(&["--user-timeout", "0s"]).expect_err("rejected");
        assert!(err.contains("more than zero"), "{err}");
        let err = parse(&["--user-timeout", "3"]).expect_err("rejected");
        assert!(err.contains("needs a unit: 3s, 3ms or 3m"), "{err}");
    }

    #[test]
    fn latency_tuning_is_off_unless_asked() {
        assert!(!parse(&[]).expect("parse").stack_config().low_latency);
        let a = parse(&["--low-latency"]).expect("parse");
        assert!(a.stack_config().low_latency);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        for bad in ["", "s", "-1s", "abc", "0", "2", "NaN", "0s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
