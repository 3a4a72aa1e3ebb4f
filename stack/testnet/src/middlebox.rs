//! The rules a middlebox namespace runs: real netfilter (iptables-nft or
//! nftables) and its real conntrack table.
//!
//! Owns the rule sets every test network uses ([`Middlebox`]) and the
//! commands that change a middlebox's state during a test: flushing its
//! conntrack table, stripping an option (TCPOPTSTRIP), loading and editing
//! nftables tables. Every command runs inside the given namespace.
//!
//! The home router (the demo's middlebox) and the conntrack flush go to
//! the kernel over netlink ([`ti_nfnetlink`]), so `tiflow demo` needs no
//! `iptables` or `conntrack` command; the other rule sets use the commands.

use std::net::Ipv4Addr;

use ti_nfnetlink::nft::{self, Chain, ChainType, Cmp, Expr, Family, Hook, Table, Verdict};

use crate::netns::{NetNs, NetnsError};
use crate::topology::{INSIDE_IF, OUTSIDE_IF};

/// The commands, and the Debian packages that bring them, that the rules
/// and state changes here run (besides iproute2's `ip`; the home router
/// and the conntrack flush need none of them).
pub const COMMANDS: [(&str, &str); 4] = [
    ("iptables", "iptables"),
    ("ip6tables", "iptables"),
    ("nft", "nftables"),
    ("conntrack", "conntrack"),
];

/// What a middlebox namespace runs between its inside and its outside
/// interface ([`crate::topology::INSIDE_IF`], [`OUTSIDE_IF`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Middlebox {
    /// A plain router: forwarding, no rules.
    Router,
    /// Masquerading NAT out of the outside interface with strict tracking
    /// (`nf_conntrack_tcp_loose=0`, INVALID dropped): once its state is
    /// lost, the old connection's packets are dropped both ways.
    StrictNat,
    /// Masquerading NAT with random source ports (`--random`, as
    /// carrier-grade NATs do) and the kernel's default loose pickup: once its
    /// state is lost, the old connection's next packet gets a new mapping,
    /// on a new port.
    RandomPortNat,
    /// A stateful firewall, no NAT: new SYNs and ESTABLISHED,RELATED pass,
    /// the rest is dropped.
    Firewall,
    /// A home router: masquerading NAT out of the outside interface; from
    /// outside, only replies get in. An nftables table of its own
    /// ([`HOME_ROUTER_TABLE`]), loaded over netlink.
    HomeRouter,
    /// An nftables ruleset (`nft -f -`), e.g. NAT and firewall in one table.
    Nftables(String),
}

impl Middlebox {
    /// Installs the rules in `ns` (call before forwarding is turned on).
    pub fn install(&self, ns: &NetNs) -> Result<(), NetnsError> {
        let out = OUTSIDE_IF;
        let rules: &[&[&str]] = match self {
            Middlebox::Router => &[],
            Middlebox::StrictNat => &[
                &[
                    "-t",
                    "nat",
                    "-A",
                    "POSTROUTING",
                    "-o",
                    out,
                    "-j",
                    "MASQUERADE",
                ],
                &[
                    "-t",
                    "mangle",
                    "-A",
                    "PREROUTING",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "INVALID",
                    "-j",
                    "DROP",
                ],
            ],
            Middlebox::RandomPortNat => &[&[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                out,
                "-j",
                "MASQUERADE",
                "--random",
            ]],
            Middlebox::Firewall => &[
                &["-P", "FORWARD", "DROP"],
                &[
                    "-A",
                    "FORWARD",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "ESTABLISHED,RELATED",
                    "-j",
                    "ACCEPT",
                ],
                &[
                    "-A",
                    "FORWARD",
                    "-p",
                    "tcp",
                    "--syn",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "NEW",
                    "-j",
                    "ACCEPT",
                ],
            ],
            Middlebox::HomeRouter => {
                let table = home_router(None);
                return netlink_in(ns, || nft::replace_table(&table));
            }
            Middlebox::Nftables(ruleset) => return nft_load(ns, ruleset),
        };
        for rule in rules {
            iptables(ns, rule)?;
        }
        if *self == Middlebox::StrictNat {
            ns.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0")?;
        }
        Ok(())
    }
}

/// What an IPv6 middlebox namespace runs between its inside and its
/// outside interface ([`crate::topology::INSIDE_IF`], [`OUTSIDE_IF`]): one
/// nftables table of family `ip6` ([`MIDDLEBOX6_TABLE`]), loaded with
/// `nft -f -`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Middlebox6 {
    /// A plain IPv6 router: forwarding, no rules.
    Router,
    /// NAT66: masquerading out of the outside interface with random source
    /// ports (`masquerade random`, as [`Middlebox::RandomPortNat`]) and the
    /// kernel's loose pickup: once its state is lost, the old connection's
    /// next packet gets a new mapping, on a new port.
    Nat66,
    /// A stateful IPv6 firewall, no NAT, default drop: what belongs to a
    /// tracked connection passes (`ct state established,related`), and a
    /// new connection only as a SYN from the inside; the rest is dropped
    /// and counted ([`firewall6_dropped`]). Once its state is lost, the old
    /// connection is blackholed both ways.
    Firewall,
}

/// The nftables table (family `ip6`) of every [`Middlebox6`] with rules.
pub const MIDDLEBOX6_TABLE: &str = "ti_mb6";

impl Middlebox6 {
    /// The nftables ruleset (`None`: no rules).
    pub fn ruleset(&self) -> Option<String> {
        let body = match self {
            Middlebox6::Router => return None,
            Middlebox6::Nat66 => format!(
                "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"{OUTSIDE_IF}\" masquerade random\n  }}\n"
            ),
            Middlebox6::Firewall => format!(
                "  chain forward {{\n    type filter hook forward priority filter; policy drop;\n    ct state established,related accept\n    iifname \"{INSIDE_IF}\" tcp flags & (syn | ack) == syn ct state new accept\n    counter drop\n  }}\n"
            ),
        };
        Some(format!("table ip6 {MIDDLEBOX6_TABLE} {{\n{body}}}\n"))
    }

    /// Installs the rules in `ns` (call before forwarding is turned on).
    pub fn install(&self, ns: &NetNs) -> Result<(), NetnsError> {
        match self.ruleset() {
            Some(ruleset) => nft_load(ns, &ruleset),
            None => Ok(()),
        }
    }
}

/// The nftables table of [`Middlebox::HomeRouter`] (family `ip`).
pub const HOME_ROUTER_TABLE: &str = "ti_home";

/// The home router's table: the NAT (masquerade, or `snat to` a fixed
/// address) out of [`OUTSIDE_IF`], and a forward filter that lets in from
/// outside only what belongs to a tracked connection. As nft says it:
///
/// ```text
/// table ip ti_home {
///   chain postrouting {
///     type nat hook postrouting priority srcnat; policy accept;
///     oifname "m1" masquerade            # or: oifname "m1" snat to ADDR
///   }
///   chain forward {
///     type filter hook forward priority filter; policy accept;
///     iifname "m1" ct state established,related accept
///     iifname "m1" drop
///   }
/// }
/// ```
pub fn home_router(snat_to: Option<Ipv4Addr>) -> Table {
    let nat = match snat_to {
        None => vec![nft::masquerade(false)],
        Some(addr) => nft::snat_to(addr),
    };
    Table {
        family: Family::Ip,
        name: HOME_ROUTER_TABLE.into(),
        chains: vec![
            Chain {
                name: "postrouting".into(),
                kind: ChainType::Nat,
                hook: Hook::Postrouting,
                priority: nft::SRCNAT,
                policy: Verdict::Accept,
                rules: vec![[nft::oifname(Cmp::Eq, OUTSIDE_IF), nat].concat()],
            },
            Chain {
                name: "forward".into(),
                kind: ChainType::Filter,
                hook: Hook::Forward,
                priority: nft::FILTER,
                policy: Verdict::Accept,
                rules: vec![
                    [
                        nft::iifname(Cmp::Eq, OUTSIDE_IF),
                        nft::ct_state_in(nft::ct_state::ESTABLISHED | nft::ct_state::RELATED),
                        vec![Expr::Verdict(Verdict::Accept)],
                    ]
                    .concat(),
                    [
                        nft::iifname(Cmp::Eq, OUTSIDE_IF),
                        vec![Expr::Verdict(Verdict::Drop)],
                    ]
                    .concat(),
                ],
            },
        ],
    }
}

/// The home router in `ns` now maps to `addr` (`snat to`) instead of
/// masquerading: its table replaced in one transaction. Connections it
/// already tracks keep their mapping until its conntrack table is flushed.
pub fn home_router_snat(ns: &NetNs, addr: Ipv4Addr) -> Result<(), NetnsError> {
    let table = home_router(Some(addr));
    netlink_in(ns, || nft::replace_table(&table))
}

/// Runs `iptables -w ARGS` in `ns`.
pub fn iptables(ns: &NetNs, args: &[&str]) -> Result<(), NetnsError> {
    let mut argv = vec!["iptables", "-w"];
    argv.extend_from_slice(args);
    ns.run(&argv).map(drop)
}

/// Runs `nft ARGS` in `ns`.
pub fn nft(ns: &NetNs, args: &[&str]) -> Result<(), NetnsError> {
    let mut argv = vec!["nft"];
    argv.extend_from_slice(args);
    ns.run(&argv).map(drop)
}

/// Loads an nftables ruleset (`nft -f -`) in `ns`.
pub fn nft_load(ns: &NetNs, ruleset: &str) -> Result<(), NetnsError> {
    ns.run_with_input(&["nft", "-f", "-"], ruleset).map(drop)
}

/// Makes `ns` drop `percent` % of the packets it forwards, at random and
/// independently (nftables `numgen random`): a lossy path, both ways.
/// Lives in its own table (`inet ti_loss`), removed with the namespace.
pub fn random_loss(ns: &NetNs, percent: u8) -> Result<(), NetnsError> {
    nft_load(
        ns,
        &format!(
            "table inet ti_loss {{\n  chain forward {{\n    type filter hook forward priority -10; policy accept;\n    numgen random mod 100 < {percent} counter drop\n  }}\n}}\n"
        ),
    )
}

/// The packets `random_loss` dropped in `ns` so far.
pub fn random_loss_dropped(ns: &NetNs) -> Result<u64, NetnsError> {
    let out = ns.run(&["nft", "list", "table", "inet", "ti_loss"])?;
    Ok(dropped_packets(&String::from_utf8_lossy(&out.stdout)))
}

/// Empties the conntrack table of `ns` (what `conntrack -F` does, over
/// netlink: no `conntrack` command needed): the middlebox forgets every
/// connection.
pub fn conntrack_flush(ns: &NetNs) -> Result<(), NetnsError> {
    netlink_in(ns, ti_nfnetlink::conntrack::flush)
}

/// The packets the [`Middlebox6::Firewall`] in `ns` dropped so far.
pub fn firewall6_dropped(ns: &NetNs) -> Result<u64, NetnsError> {
    let out = ns.run(&["nft", "list", "table", "ip6", MIDDLEBOX6_TABLE])?;
    Ok(dropped_packets(&String::from_utf8_lossy(&out.stdout)))
}

/// The packet count of the first `counter` in nft's listing of a table.
fn dropped_packets(listing: &str) -> u64 {
    listing
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Empties the IPv6 conntrack table of `ns` (`conntrack -F -f ipv6`; the
/// netlink flush of [`conntrack_flush`] covers IPv4 only).
pub fn conntrack_flush6(ns: &NetNs) -> Result<(), NetnsError> {
    ns.run(&["conntrack", "-F", "-f", "ipv6"]).map(drop)
}

/// The entries of the IPv6 conntrack table of `ns` (`conntrack -L -f
/// ipv6`), one a line.
pub fn conntrack_list6(ns: &NetNs) -> Result<String, NetnsError> {
    ns.run(&["conntrack", "-L", "-f", "ipv6"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Runs `ip6tables -w ARGS` in `ns`.
pub fn ip6tables(ns: &NetNs, args: &[&str]) -> Result<(), NetnsError> {
    let mut argv = vec!["ip6tables", "-w"];
    argv.extend_from_slice(args);
    ns.run(&argv).map(drop)
}

/// [`strip_option`] for IPv6: strips TCP option `kind` from every TCP/IPv6
/// segment `ns` forwards that came in on `inbound_if` (ip6tables'
/// TCPOPTSTRIP).
pub fn strip_option6(ns: &NetNs, inbound_if: &str, kind: u8) -> Result<(), NetnsError> {
    let kind = kind.to_string();
    ip6tables(ns, &strip_option_rule(inbound_if, &kind))
}

/// The `iptables`/`ip6tables` arguments of a TCPOPTSTRIP rule for option
/// `kind` on segments forwarded from `inbound_if`.
fn strip_option_rule<'a>(inbound_if: &'a str, kind: &'a str) -> [&'a str; 12] {
    [
        "-t",
        "mangle",
        "-A",
        "FORWARD",
        "-i",
        inbound_if,
        "-p",
        "tcp",
        "-j",
        "TCPOPTSTRIP",
        "--strip-options",
        kind,
    ]
}

/// Runs a netfilter netlink request `f` in `ns` (from a thread that
/// joined it: the socket belongs to the namespace it is opened in).
fn netlink_in<T: Send>(
    ns: &NetNs,
    f: impl FnOnce() -> Result<T, ti_nfnetlink::Error> + Send,
) -> Result<T, NetnsError> {
    ns.enter(f)?.map_err(|source| NetnsError::Netfilter {
        name: ns.name().to_owned(),
        source,
    })
}

/// The entries of the conntrack table of `ns` (`conntrack -L`), one a line.
pub fn conntrack_list(ns: &NetNs) -> Result<String, NetnsError> {
    ns.run(&["conntrack", "-L"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Strips TCP option `kind` from every TCP segment `ns` forwards that came
/// in on `inbound_if` (iptables' TCPOPTSTRIP: the option's bytes become
/// NOPs, the checksum is fixed).
pub fn strip_option(ns: &NetNs, inbound_if: &str, kind: u8) -> Result<(), NetnsError> {
    let kind = kind.to_string();
    iptables(ns, &strip_option_rule(inbound_if, &kind))
}
