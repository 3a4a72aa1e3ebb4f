//! What `tiflow up` adds to the host's netfilter, and how it goes away.
//!
//! Every NAT rule of one `tiflow up` lives in one nftables table named
//! after its TUN device (`inet tiflow_NAME`: one table for IPv4 and IPv6,
//! each rule testing `meta nfproto` first), created and replaced in one
//! atomic transaction and deleted in one: a crash leaves one table
//! behind, which the next `tiflow up` of that name, or `tiflow down`,
//! deletes whole (with the `ip tiflow_NAME` table of versions that spoke
//! IPv4 only). The table goes to the kernel over netlink
//! ([`ti_nfnetlink`]), so no `nft` command is needed; [`NatRules::script`]
//! is the same table as an `nft -f` script, for people (and for the test
//! that compares the two).
//!
//! `--masquerade` rules are in chain `postrouting`; `--expose` and then
//! `--expose-all` rules in `prerouting`; `--capture` rules (the host's own
//! connections) in `output`.
//!
//! One exception, because nftables cannot express it in a table of our
//! own: on a host whose iptables (or ip6tables) `FORWARD` chain drops by
//! policy (Docker sets it), an `accept` in our table does not override
//! that drop (every base chain on a hook must accept a packet). There, and
//! only there, two rules of that command let the TUN's traffic through,
//! each tagged with the comment `tiflow:NAME` so that they are found and
//! removed by that tag.

use std::net::{IpAddr, SocketAddr};

use ti_nfnetlink::nft::{self, Chain, ChainType, Cmp, Family, Hook, Table, Verdict};

use crate::cidr::IpCidr;
use crate::host::{self, CommandError};
use crate::ports::PortRange;

/// The family of `tiflow up`'s table: both IPv4 and IPv6.
pub const FAMILY: Family = Family::Inet;

/// The nftables table of the `tiflow up` on TUN `tun` (family `inet`).
/// Characters nftables does not take in a bare name become `_`.
pub fn table_name(tun: &str) -> String {
    let safe: String = tun
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("tiflow_{safe}")
}

/// The NAT rules of one `tiflow up`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatRules {
    /// The TUN device.
    pub tun: String,
    /// `--masquerade`: the stack's networks (one per family),
    /// masqueraded behind whatever interface their packets leave by (other
    /// than the TUN).
    pub masquerade: Vec<IpCidr>,
    /// `--expose`: TCP to the host's port (arriving on any interface but
    /// the TUN, over the family of the address) is sent to the stack's
    /// address and port.
    pub exposes: Vec<(u16, SocketAddr)>,
    /// `--capture`: TCP this host's programs open to these networks goes
    /// to `tiflow up`'s capture listener on this port (127.0.0.1 or ::1 by
    /// family).
    pub captures: Vec<(IpCidr, u16)>,
    /// `--expose-all`: TCP to this host's own addresses, on any port or the
    /// allowed ones, goes to the stack's address of its family, same port.
    pub expose_all: Option<ExposeAll>,
}

/// What `--expose-all` sends to the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposeAll {
    /// The stack's addresses (one per family).
    pub to: Vec<IpAddr>,
    /// Only these destination ports (empty: every port).
    pub ports: Vec<PortRange>,
}

/// A base chain of the table and its rules, in nft syntax for
/// [`NatRules::script`] and as expressions for [`NatRules::table`].
struct ChainRules {
    name: &'static str,
    hook: Hook,
    priority: i32,
    /// The rules as nft lines.
    lines: Vec<String>,
    /// The same rules as expressions.
    exprs: Vec<Vec<nft::Expr>>,
}

impl ChainRules {
    fn new(name: &'static str, hook: Hook, priority: i32) -> ChainRules {
        ChainRules {
            name,
            hook,
            priority,
            lines: Vec::new(),
            exprs: Vec::new(),
        }
    }

    /// Adds a rule: its nft line and its expressions.
    fn push(&mut self, line: String, exprs: Vec<Vec<nft::Expr>>) {
        self.lines.push(line);
        self.exprs.push(exprs.concat());
    }

    /// The chain's `type ... hook ... priority ...;` line. Priorities are
    /// written as numbers, which nft takes on every hook.
    fn header(&self) -> String {
        let hook = match self.hook {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        };
        format!(
            "type nat hook {hook} priority {}; policy accept;",
            self.priority
        )
    }

    fn chain(self) -> Chain {
        Chain {
            name: self.name.into(),
            kind: ChainType::Nat,
            hook: self.hook,
            priority: self.priority,
            policy: Verdict::Accept,
            rules: self.exprs,
        }
    }
}

/// `ip saddr NET/PREFIX` (`ip6 saddr` for IPv6; `daddr` if `daddr`), in
/// nft syntax and as expressions, and whether it is IPv6.
fn addr_in(net: &IpCidr, daddr: bool) -> (bool, String, Vec<nft::Expr>) {
    let field = if daddr { "daddr" } else { "saddr" };
    match net {
        IpCidr::V4(n) => (
            false,
            format!("ip {field} {}/{}", n.network(), n.prefix),
            if daddr {
                nft::ip_daddr_in(n.network(), n.prefix)
            } else {
                nft::ip_saddr_in(n.network(), n.prefix)
            },
        ),
        IpCidr::V6(n) => (
            true,
            format!("ip6 {field} {}/{}", n.network(), n.prefix),
            if daddr {
                nft::ip6_daddr_in(n.network(), n.prefix)
            } else {
                nft::ip6_saddr_in(n.network(), n.prefix)
            },
        ),
    }
}

/// `meta nfproto ipv4` or `ipv6`, in nft syntax.
fn nfproto(ipv6: bool) -> &'static str {
    if ipv6 {
        "meta nfproto ipv6"
    } else {
        "meta nfproto ipv4"
    }
}

impl NatRules {
    /// Whether there is any rule to add.
    pub fn is_empty(&self) -> bool {
        self.chains().is_empty()
    }

    /// The chains that have rules, each with its rules in both forms (so
    /// the script and the table cannot say different things by accident).
    fn chains(&self) -> Vec<ChainRules> {
        let tun = &self.tun;
        let mut postrouting = ChainRules::new("postrouting", Hook::Postrouting, nft::SRCNAT);
        for net in &self.masquerade {
            // meta nfproto ipvN ipN saddr NET/PREFIX oifname != "TUN" masquerade
            let (ipv6, saddr, saddr_exprs) = addr_in(net, false);
            postrouting.push(
                format!("{} {saddr} oifname != \"{tun}\" masquerade", nfproto(ipv6)),
                vec![
                    nft::meta_nfproto(ipv6),
                    saddr_exprs,
                    nft::oifname(Cmp::Neq, tun),
                    vec![nft::masquerade(false)],
                ],
            );
        }
        let mut prerouting = ChainRules::new("prerouting", Hook::Prerouting, nft::DSTNAT);
        for (host_port, to) in &self.exposes {
            // meta nfproto ipvN iifname != "TUN" tcp dport HOSTPORT dnat ipN to ADDR:PORT
            let ip = if to.is_ipv6() { "ip6" } else { "ip" };
            prerouting.push(
                format!(
                    "{} iifname != \"{tun}\" tcp dport {host_port} dnat {ip} to {to}",
                    nfproto(to.is_ipv6()),
                ),
                vec![
                    nft::meta_nfproto(to.is_ipv6()),
                    nft::iifname(Cmp::Neq, tun),
                    nft::tcp_dport(*host_port),
                    nft::dnat_to(*to),
                ],
            );
        }
        if let Some(all) = &self.expose_all {
            for to in &all.to {
                let ipv6 = to.is_ipv6();
                let ip = if ipv6 { "ip6" } else { "ip" };
                let start = format!("{} iifname != \"{tun}\"", nfproto(ipv6));
                let dnat = format!("dnat {ip} to {to}");
                if all.ports.is_empty() {
                    // meta nfproto ipvN iifname != "TUN" meta l4proto tcp
                    //   fib daddr type local dnat ipN to ADDR
                    prerouting.push(
                        format!("{start} meta l4proto tcp fib daddr type local {dnat}"),
                        vec![
                            nft::meta_nfproto(ipv6),
                            nft::iifname(Cmp::Neq, tun),
                            nft::l4proto_tcp(),
                            nft::fib_daddr_type_local(),
                            nft::dnat_to_addr(*to),
                        ],
                    );
                }
                for ports in &all.ports {
                    // meta nfproto ipvN iifname != "TUN" fib daddr type local
                    //   tcp dport FIRST[-LAST] dnat ipN to ADDR
                    prerouting.push(
                        format!("{start} fib daddr type local tcp dport {ports} {dnat}"),
                        vec![
                            nft::meta_nfproto(ipv6),
                            nft::iifname(Cmp::Neq, tun),
                            nft::fib_daddr_type_local(),
                            nft::tcp_dport_range(ports.first, ports.last),
                            nft::dnat_to_addr(*to),
                        ],
                    );
                }
            }
        }
        let mut output = ChainRules::new("output", Hook::Output, nft::DSTNAT);
        for (net, port) in &self.captures {
            // meta nfproto ipvN ipN daddr NET/PREFIX meta l4proto tcp redirect to :PORT
            let (ipv6, daddr, daddr_exprs) = addr_in(net, true);
            output.push(
                format!(
                    "{} {daddr} meta l4proto tcp redirect to :{port}",
                    nfproto(ipv6)
                ),
                vec![
                    nft::meta_nfproto(ipv6),
                    daddr_exprs,
                    nft::l4proto_tcp(),
                    nft::redirect_to(*port),
                ],
            );
        }
        [postrouting, prerouting, output]
            .into_iter()
            .filter(|c| !c.lines.is_empty())
            .collect()
    }

    /// The table, as an `nft -f` script that replaces any table of the
    /// same name in the same transaction (the `add` makes the `delete`
    /// valid when there was none).
    pub fn script(&self) -> String {
        let table = table_name(&self.tun);
        let family = FAMILY.name();
        let mut s = format!(
            "add table {family} {table}\ndelete table {family} {table}\ntable {family} {table} {{\n"
        );
        for chain in self.chains() {
            s += &format!("  chain {} {{\n    {}\n", chain.name, chain.header());
            for line in &chain.lines {
                s += &format!("    {line}\n");
            }
            s += "  }\n";
        }
        s += "}\n";
        s
    }

    /// The table, as [`load`] sends it to the kernel: the same chains and
    /// rules as [`NatRules::script`].
    pub fn table(&self) -> Table {
        Table {
            family: FAMILY,
            name: table_name(&self.tun),
            chains: self.chains().into_iter().map(ChainRules::chain).collect(),
        }
    }
}

/// Creates (or replaces) the table of `rules` in one transaction, over
/// netlink.
pub fn load(rules: &NatRules) -> Result<(), ti_nfnetlink::Error> {
    nft::replace_table(&rules.table())
}

/// Whether the table of TUN `tun` exists.
pub fn table_exists(tun: &str) -> Result<bool, ti_nfnetlink::Error> {
    nft::table_exists(FAMILY, &table_name(tun))
}

/// Deletes the table of TUN `tun` if it exists (and the IPv4-only `ip`
/// table of that name an older `tiflow up` made). Returns whether it did.
pub fn delete_table(tun: &str) -> Result<bool, ti_nfnetlink::Error> {
    let name = table_name(tun);
    let old = nft::delete_table(Family::Ip, &name)?;
    Ok(nft::delete_table(FAMILY, &name)? || old)
}

/// The comment that tags the iptables rules of TUN `tun`.
fn comment(tun: &str) -> String {
    format!("tiflow:{tun}")
}

/// `iptables` or `ip6tables`.
fn xtables(ipv6: bool) -> &'static str {
    if ipv6 { "ip6tables" } else { "iptables" }
}

/// Whether the host's iptables (`ipv6`: ip6tables) `FORWARD` chain drops
/// by policy (false when there is no such command).
pub fn forward_drops(ipv6: bool) -> bool {
    let command = xtables(ipv6);
    host::which(command).is_some()
        && host::run(command, &["-w", "-S", "FORWARD"])
            .is_ok_and(|rules| rules.lines().any(|l| l.trim() == "-P FORWARD DROP"))
}

/// Whether the host's iptables `FORWARD` chain drops by policy (false
/// when there is no `iptables`).
pub fn iptables_forward_drops() -> bool {
    forward_drops(false)
}

/// Lets the TUN's traffic through an iptables (`ipv6`: ip6tables)
/// `FORWARD` chain that drops by policy: two rules at its head, tagged.
pub fn add_forward_accepts(tun: &str, ipv6: bool) -> Result<(), CommandError> {
    let tag = comment(tun);
    for way in ["-i", "-o"] {
        host::run(
            xtables(ipv6),
            &[
                "-w",
                "-I",
                "FORWARD",
                way,
                tun,
                "-m",
                "comment",
                "--comment",
                &tag,
                "-j",
                "ACCEPT",
            ],
        )?;
    }
    Ok(())
}

/// Removes every iptables and ip6tables `FORWARD` rule tagged for TUN
/// `tun`. Returns how many it removed.
pub fn remove_forward_accepts(tun: &str) -> Result<usize, CommandError> {
    Ok(remove_tagged(tun, false)? + remove_tagged(tun, true)?)
}

/// Removes the tagged `FORWARD` rules of one command.
fn remove_tagged(tun: &str, ipv6: bool) -> Result<usize, CommandError> {
    let command = xtables(ipv6);
    if host::which(command).is_none() {
        return Ok(0);
    }
    let tag = comment(tun);
    let listed = host::run(command, &["-w", "-S", "FORWARD"])?;
    let mut removed = 0;
    for rule in listed.lines() {
        // `iptables -S` quotes the comment (`"tiflow:NAME"`); no word of
        // our rules has a space, so unquoting word by word is exact.
        let words: Vec<&str> = rule
            .split_whitespace()
            .map(|w| w.trim_matches('"'))
            .collect();
        let tagged = words.windows(2).any(|w| w[0] == "--comment" && w[1] == tag);
        if !tagged || words.first() != Some(&"-A") {
            continue;
        }
        let mut delete = vec!["-w", "-D"];
        delete.extend(&words[1..]);
        host::run(command, &delete)?;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_only_what_nftables_takes() {
        assert_eq!(table_name("tiflow0"), "tiflow_tiflow0");
        assert_eq!(table_name("ti-fl.ow"), "tiflow_ti_fl_ow");
    }

    #[test]
    fn the_script_replaces_the_table_in_one_transaction() {
        let rules = NatRules {
            tun: "tiflow0".into(),
            masquerade: vec![
                "10.0.1.1/24".parse().expect("cidr"),
                "fd00:1::1/64".parse().expect("cidr"),
            ],
            exposes: vec![
                (2222, "10.0.2.1:22".parse().expect("addr")),
                (2222, "[fd00:2::1]:22".parse().expect("addr")),
            ],
            captures: vec![],
            expose_all: None,
        };
        let script = rules.script();
        assert!(script.starts_with(
            "add table inet tiflow_tiflow0\ndelete table inet tiflow_tiflow0\ntable inet tiflow_tiflow0 {"
        ));
        assert!(
            script.contains(
                "meta nfproto ipv4 ip saddr 10.0.1.0/24 oifname != \"tiflow0\" masquerade"
            )
        );
        assert!(
            script.contains(
                "meta nfproto ipv6 ip6 saddr fd00:1::/64 oifname != \"tiflow0\" masquerade"
            )
        );
        assert!(script.contains(
            "meta nfproto ipv4 iifname != \"tiflow0\" tcp dport 2222 dnat ip to 10.0.2.1:22"
        ));
        assert!(script.contains(
            "meta nfproto ipv6 iifname != \"tiflow0\" tcp dport 2222 dnat ip6 to [fd00:2::1]:22"
        ));
        assert!(!rules.is_empty());
    }

    #[test]
    fn no_chain_without_a_rule() {
        let rules = NatRules {
            tun: "t".into(),
            masquerade: vec![],
            exposes: vec![],
            captures: vec![],
            expose_all: None,
        };
        assert!(rules.is_empty());
        assert!(!rules.script().contains("chain"));
        assert!(rules.table().chains.is_empty());
        // --expose-all with no stack address has no rule either.
        let rules = NatRules {
            expose_all: Some(ExposeAll {
                to: vec![],
                ports: vec![],
            }),
            ..rules
        };
        assert!(rules.is_empty());
        assert!(!rules.script().contains("chain"));
    }

    #[test]
    fn captures_redirect_the_hosts_own_connections() {
        let rules = NatRules {
            tun: "t0".into(),
            masquerade: vec![],
            exposes: vec![],
            captures: vec![
                ("192.0.2.9/24".parse().expect("cidr"), 15001),
                ("2001:db8::1/64".parse().expect("cidr"), 15001),
            ],
            expose_all: None,
        };
        assert!(!rules.is_empty());
        let script = rules.script();
        assert!(script.contains(
            "  chain output {\n    type nat hook output priority -100; policy accept;\n"
        ));
        assert!(script.contains(
            "    meta nfproto ipv4 ip daddr 192.0.2.0/24 meta l4proto tcp redirect to :15001\n"
        ));
        assert!(script.contains(
            "    meta nfproto ipv6 ip6 daddr 2001:db8::/64 meta l4proto tcp redirect to :15001\n"
        ));
        assert!(!script.contains("prerouting") && !script.contains("postrouting"));
        let table = rules.table();
        assert_eq!(table.chains.len(), 1);
        let output = &table.chains[0];
        assert_eq!(
            (output.name.as_str(), output.hook, output.priority),
            ("output", Hook::Output, nft::DSTNAT)
        );
        assert_eq!(
            output.rules[0],
            [
                nft::meta_nfproto(false),
                nft::ip_daddr_in("192.0.2.0".parse().expect("addr"), 24),
                nft::l4proto_tcp(),
                nft::redirect_to(15001),
            ]
            .concat()
        );
        assert_eq!(output.rules.len(), 2);
    }

    #[test]
    fn expose_all_follows_the_exposes_in_prerouting() {
        let to = vec![
            "10.0.2.1".parse().expect("addr"),
            "fd00:2::1".parse().expect("addr"),
        ];
        let every_port = NatRules {
            tun: "t0".into(),
            masquerade: vec![],
            exposes: vec![],
            captures: vec![],
            expose_all: Some(ExposeAll {
                to: to.clone(),
                ports: vec![],
            }),
        };
        let script = every_port.script();
        assert!(
            script.contains("  chain prerouting {\n    type nat hook prerouting priority -100;")
        );
        assert!(script.contains(
            "    meta nfproto ipv4 iifname != \"t0\" meta l4proto tcp fib daddr type local dnat ip to 10.0.2.1\n"
        ));
        assert!(script.contains(
            "    meta nfproto ipv6 iifname != \"t0\" meta l4proto tcp fib daddr type local dnat ip6 to fd00:2::1\n"
        ));
        assert_eq!(every_port.table().chains[0].rules.len(), 2);

        let some_ports = NatRules {
            exposes: vec![(2222, "10.0.2.1:22".parse().expect("addr"))],
            expose_all: Some(ExposeAll {
                to,
                ports: crate::ports::parse_port_list("22,8000-8100").expect("ports"),
            }),
            ..every_port
        };
        let script = some_ports.script();
        let lines: Vec<&str> = script.lines().map(str::trim).collect();
        let first = lines
            .iter()
            .position(|l| l.contains("tcp dport 2222"))
            .expect("the --expose rule");
        assert_eq!(
            &lines[first + 1..first + 5],
            &[
                "meta nfproto ipv4 iifname != \"t0\" fib daddr type local tcp dport 22 dnat ip to 10.0.2.1",
                "meta nfproto ipv4 iifname != \"t0\" fib daddr type local tcp dport 8000-8100 dnat ip to 10.0.2.1",
                "meta nfproto ipv6 iifname != \"t0\" fib daddr type local tcp dport 22 dnat ip6 to fd00:2::1",
                "meta nfproto ipv6 iifname != \"t0\" fib daddr type local tcp dport 8000-8100 dnat ip6 to fd00:2::1",
            ]
        );
        let table = some_ports.table();
        let prerouting = &table.chains[0];
        assert_eq!(prerouting.rules.len(), 5);
        assert_eq!(
            prerouting.rules[2],
            [
                nft::meta_nfproto(false),
                nft::iifname(Cmp::Neq, "t0"),
                nft::fib_daddr_type_local(),
                nft::tcp_dport_range(8000, 8100),
                nft::dnat_to_addr(IpAddr::from([10, 0, 2, 1])),
            ]
            .concat()
        );
    }
}
