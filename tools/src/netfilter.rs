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
//! One exception, because nftables cannot express it in a table of our
//! own: on a host whose iptables (or ip6tables) `FORWARD` chain drops by
//! policy (Docker sets it), an `accept` in our table does not override
//! that drop (every base chain on a hook must accept a packet). There, and
//! only there, two rules of that command let the TUN's traffic through,
//! each tagged with the comment `tiflow:NAME` so that they are found and
//! removed by that tag.

use std::net::SocketAddr;

use ti_nfnetlink::nft::{self, Chain, ChainType, Cmp, Family, Hook, Table, Verdict};

use crate::cidr::IpCidr;
use crate::host::{self, CommandError};

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
        self.masquerade.is_empty() && self.exposes.is_empty()
    }

    /// The table, as an `nft -f` script that replaces any table of the
    /// same name in the same transaction (the `add` makes the `delete`
    /// valid when there was none).
    pub fn script(&self) -> String {
        let table = table_name(&self.tun);
        let tun = &self.tun;
        let family = FAMILY.name();
        let mut s = format!(
            "add table {family} {table}\ndelete table {family} {table}\ntable {family} {table} {{\n"
        );
        if !self.masquerade.is_empty() {
            s += "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n";
            for net in &self.masquerade {
                let (ipv6, saddr) = match net {
                    IpCidr::V4(n) => (false, format!("ip saddr {}/{}", n.network(), n.prefix)),
                    IpCidr::V6(n) => (true, format!("ip6 saddr {}/{}", n.network(), n.prefix)),
                };
                s += &format!(
                    "    {} {saddr} oifname != \"{tun}\" masquerade\n",
                    nfproto(ipv6)
                );
            }
            s += "  }\n";
        }
        if !self.exposes.is_empty() {
            s += "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n";
            for (host_port, to) in &self.exposes {
                let ip = if to.is_ipv6() { "ip6" } else { "ip" };
                s += &format!(
                    "    {} iifname != \"{tun}\" tcp dport {host_port} dnat {ip} to {to}\n",
                    nfproto(to.is_ipv6()),
                );
            }
            s += "  }\n";
        }
        s += "}\n";
        s
    }

    /// The table, as [`load`] sends it to the kernel: the same chains and
    /// rules as [`NatRules::script`].
    pub fn table(&self) -> Table {
        let tun = &self.tun;
        let mut chains = Vec::new();
        if !self.masquerade.is_empty() {
            // meta nfproto ipv4 ip saddr NET/PREFIX oifname != "TUN" masquerade
            // meta nfproto ipv6 ip6 saddr NET/PREFIX oifname != "TUN" masquerade
            let rules = self
                .masquerade
                .iter()
                .map(|net| {
                    let (ipv6, saddr) = match net {
                        IpCidr::V4(n) => (false, nft::ip_saddr_in(n.network(), n.prefix)),
                        IpCidr::V6(n) => (true, nft::ip6_saddr_in(n.network(), n.prefix)),
                    };
                    [
                        nft::meta_nfproto(ipv6),
                        saddr,
                        nft::oifname(Cmp::Neq, tun),
                        vec![nft::masquerade(false)],
                    ]
                    .concat()
                })
                .collect();
            chains.push(Chain {
                name: "postrouting".into(),
                kind: ChainType::Nat,
                hook: Hook::Postrouting,
                priority: nft::SRCNAT,
                policy: Verdict::Accept,
                rules,
            });
        }
        if !self.exposes.is_empty() {
            // meta nfproto ipvN iifname != "TUN" tcp dport HOSTPORT dnat ipN to ADDR:PORT
            let rules = self
                .exposes
                .iter()
                .map(|(host_port, to)| {
                    [
                        nft::meta_nfproto(to.is_ipv6()),
                        nft::iifname(Cmp::Neq, tun),
                        nft::tcp_dport(*host_port),
                        nft::dnat_to(*to),
                    ]
                    .concat()
                })
                .collect();
            chains.push(Chain {
                name: "prerouting".into(),
                kind: ChainType::Nat,
                hook: Hook::Prerouting,
                priority: nft::DSTNAT,
                policy: Verdict::Accept,
                rules,
            });
        }
        Table {
            family: FAMILY,
            name: table_name(tun),
            chains,
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
        };
        assert!(rules.is_empty());
        assert!(!rules.script().contains("chain"));
    }
}
