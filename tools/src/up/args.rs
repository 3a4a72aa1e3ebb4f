//! `tiflow up`'s command line: the arguments, their parsing and the checks
//! that need several of them, and the stack settings they make.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use ti_stack::StackConfig;

use crate::control;
use crate::host::Ipv4Cidr;

/// Help shown after `tiflow up`'s options.
pub const UP_HELP: &str = "\
Addressing:
  The stack and the kernel each have an address on the TUN device's subnet.
  --address 10.0.2.1/24 is the stack's: TI-flows leave from it and arrive at it.
  The kernel side of the TUN takes the highest host address of that subnet
  (10.0.2.254 here; --kernel-address to choose) and is the stack's gateway: the
  kernel routes the stack's packets to its peers with its own routing table
  (tiflow up turns net.ipv4.ip_forward on while it runs). Peers must be able to
  answer the stack's address: route that subnet to this host, or use
  --masquerade (flows we open leave with this host's address) and --expose
  (a port of this host is forwarded to a --serve port of the stack).

Example (ssh through TI-flows; server host 192.0.2.10):
  server# tiflow up --address 10.0.2.1/24 --serve 22=127.0.0.1:22 --expose 2222=22
  client# tiflow up --address 10.0.1.1/24 --masquerade --forward 127.0.0.1:2222=192.0.2.10:2222
  client$ ssh -p 2222 user@127.0.0.1
  client# tiflow status; tiflow fail --all

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
    pub listen: SocketAddrV4,
    /// The remote end, reached through the stack.
    pub remote: SocketAddrV4,
}

impl FromStr for Forward {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (listen, remote) = s.split_once('=').ok_or_else(|| {
            format!("{s:?} is not LISTEN=REMOTE (like 127.0.0.1:2222=10.0.2.2:22)")
        })?;
        let listen = endpoint(listen, "LISTEN")?;
        let remote = host_port(remote, "REMOTE")?;
        if remote.port() == 0 || remote.ip().is_unspecified() {
            return Err(format!("REMOTE {remote} needs an address and a port"));
        }
        Ok(Forward { listen, remote })
    }
}

/// A `--serve PORT=TARGET` rule: TI-flows (or plain TCP) arriving at the
/// stack's `port` are connected to `target` with kernel TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Serve {
    /// The stack's port.
    pub port: u16,
    /// The local program to connect to.
    pub target: SocketAddrV4,
}

impl FromStr for Serve {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (port, target) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not PORT=TARGET (like 22=127.0.0.1:22)"))?;
        let port = port_number(port, "PORT")?;
        let target = endpoint(target, "TARGET")?;
        Ok(Serve { port, target })
    }
}

/// An `--expose HOSTPORT[=PORT]` rule: TCP arriving at this host's
/// `host_port` (not through the TUN) is sent to the stack's `port`.
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

fn port_number(s: &str, what: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{what} {s:?} is not a port number (1-65535)")),
    }
}

/// `IP:PORT`, or `PORT` alone for 127.0.0.1.
fn endpoint(s: &str, what: &str) -> Result<SocketAddrV4, String> {
    if let Ok(port) = s.parse::<u16>() {
        return port_number(s, what).map(|_| SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    }
    let addr = host_port(s, what)?;
    if addr.port() == 0 {
        return Err(format!("{what} {s:?} needs a port other than 0"));
    }
    Ok(addr)
}

/// `IPV4:PORT`, or `NAME:PORT` resolved now to the name's first IPv4
/// address (`localhost:22`).
fn host_port(s: &str, what: &str) -> Result<SocketAddrV4, String> {
    if let Ok(addr) = s.parse::<SocketAddrV4>() {
        return Ok(addr);
    }
    let form = || format!("{what} {s:?} is not IPV4:PORT, NAME:PORT or PORT (like 10.0.2.2:22)");
    let (name, port) = s.rsplit_once(':').ok_or_else(form)?;
    let port: u16 = port.parse().map_err(|_| form())?;
    if name.is_empty() || name.contains(['[', ']', ':']) {
        return Err(form());
    }
    let addrs = std::net::ToSocketAddrs::to_socket_addrs(&(name, port))
        .map_err(|e| format!("{what} {s:?}: cannot resolve {name:?} ({e})"))?;
    addrs
        .filter_map(|a| match a {
            std::net::SocketAddr::V4(v4) => Some(v4),
            std::net::SocketAddr::V6(_) => None,
        })
        .next()
        .ok_or_else(|| {
            format!("{what} {s:?}: {name:?} has no IPv4 address (the stack speaks IPv4)")
        })
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

fn parse_stack_address(s: &str) -> Result<Ipv4Cidr, String> {
    let cidr: Ipv4Cidr = s.parse()?;
    if cidr.prefix > 30 {
        return Err(format!(
            "/{} leaves no room for the kernel side of the TUN: use /30 or shorter",
            cidr.prefix
        ));
    }
    if !cidr.is_host(cidr.addr) {
        return Err(format!(
            "{} is the network or broadcast address of {}/{}",
            cidr.addr,
            cidr.network(),
            cidr.prefix
        ));
    }
    Ok(cidr)
}

/// Arguments of `tiflow up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Name of the TUN device to create.
    #[arg(long, value_name = "NAME", default_value = "tiflow0", value_parser = parse_tun_name)]
    pub tun: String,

    /// The stack's address and prefix on the TUN device (see Addressing below).
    #[arg(long, value_name = "ADDR/PREFIX", default_value = "10.0.2.1/24", value_parser = parse_stack_address)]
    pub address: Ipv4Cidr,

    /// The kernel side of the TUN device [default: the highest host address
    /// of --address's subnet].
    #[arg(long, value_name = "ADDR")]
    pub kernel_address: Option<Ipv4Addr>,

    /// MTU of the TUN device (kernel and stack side).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u16).range(576..=9000))]
    pub mtu: u16,

    /// Carry kernel TCP connections accepted at LISTEN (IP:PORT, NAME:PORT,
    /// or PORT for 127.0.0.1) to REMOTE (IPV4:PORT or NAME:PORT, resolved at
    /// start to an IPv4 address) as TI-flows. Repeatable.
    #[arg(long = "forward", value_name = "LISTEN=REMOTE")]
    pub forwards: Vec<Forward>,

    /// Accept TI-flows (and plain TCP) on the stack's PORT and connect each
    /// to TARGET (IP:PORT, NAME:PORT, or PORT for 127.0.0.1) with kernel
    /// TCP. Repeatable.
    #[arg(long = "serve", value_name = "PORT=TARGET")]
    pub serves: Vec<Serve>,

    /// Masquerade the stack's outgoing connections with this host's address
    /// (nftables NAT), so peers need no route back to --address.
    #[arg(long)]
    pub masquerade: bool,

    /// Forward TCP arriving at this host's HOSTPORT to the stack's PORT
    /// (nftables DNAT; PORT defaults to HOSTPORT). Repeatable.
    #[arg(long = "expose", value_name = "HOSTPORT[=PORT]")]
    pub exposes: Vec<Expose>,

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
    /// The kernel side of the TUN device.
    pub fn kernel_address(&self) -> Ipv4Addr {
        self.kernel_address
            .unwrap_or_else(|| match self.address.last_host() {
                Some(last) if last != self.address.addr => last,
                _ => self.address.first_host().unwrap_or(self.address.addr),
            })
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
        let kernel = self.kernel_address();
        if kernel == self.address.addr {
            return Err(format!(
                "--kernel-address {kernel} is the stack's own address (--address)"
            ));
        }
        if !self.address.is_host(kernel) {
            return Err(format!(
                "--kernel-address {kernel} is not a host address of {}/{}",
                self.address.network(),
                self.address.prefix
            ));
        }
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
            if *f.remote.ip() == self.address.addr {
                return Err(format!(
                    "--forward to {} would reach the stack itself; give the peer's address",
                    f.remote
                ));
            }
        }
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

    /// The stack's settings.
    pub fn stack_config(&self) -> StackConfig {
        let mut config = StackConfig::new(self.address.addr);
        config.prefix_len = self.address.prefix;
        config.gateway = Some(self.kernel_address());
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
        assert_eq!(a.address.to_string(), "10.0.2.1/24");
        assert_eq!(a.kernel_address(), Ipv4Addr::new(10, 0, 2, 254));
        assert_eq!(a.control_addr().to_string(), "@tiflow/tiflow0");
        let c = a.stack_config();
        assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 0, 2, 254)));
        assert!(c.ti_enabled && c.allow_migration);
        assert_eq!(c.option_kind, 253);
        assert_eq!(c.user_timeout, Duration::from_secs(30));
        assert_eq!(a.validate(), Ok(()));
    }

    #[test]
    fn stack_on_the_last_host_puts_the_kernel_on_the_first() {
        let a = parse(&["--address", "10.0.2.254/24"]).expect("parse");
        assert_eq!(a.kernel_address(), Ipv4Addr::new(10, 0, 2, 1));
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
        let cases: [(&[&str], &str); 13] = [
            (&["--forward", "2222"], "is not LISTEN=REMOTE"),
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
        let cases: [(&[&str], &str); 5] = [
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
