//! What `tiflow up` adds to the host's netfilter, and how it goes away.
//!
//! Every NAT rule of one `tiflow up` lives in one nftables table named
//! after its TUN device (`ip tiflow_NAME`), created and replaced in one
//! atomic transaction and deleted in one: a crash leaves one table
//! behind, which the next `tiflow up` of that name, or `tiflow down`,
//! deletes whole. The table goes to the kernel over netlink
//! ([`ti_nfnetlink`]), so no `nft` command is needed; [`NatRules::script`]
//! is the same table as an `nft -f` script, for people (and for the test
//! that compares the two).
//!
//! One exception, because nftables cannot express it in a table of our
//! own: on a host whose iptables `FORWARD` chain drops by policy (Docker
//! sets it), an `accept` in our table does not override that drop (every
//! base chain on a hook must accept a packet). There, and only there, two
//! iptables rules let the TUN's traffic through, each tagged with the
//! comment `tiflow:NAME` so that they are found and removed by that tag.

use std::net::SocketAddrV4;

use ti_nfnetlink::nft::{self, Chain, ChainType, Cmp, Family, Hook, Table, Verdict};

use crate::host::{self, CommandError, Ipv4Cidr};

/// The nftables table of the `tiflow up` on TUN `tun` (family `ip`).
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
    /// `--masquerade`: the stack's network, masqueraded behind whatever
    /// interface its packets leave by (other than the TUN).
    pub masquerade: Option<Ipv4Cidr>,
    /// `--expose`: TCP to the host's port (arriving on any interface but
    /// the TUN) is sent to the stack's address and port.
    pub exposes: Vec<(u16, SocketAddrV4)>,
}

impl NatRules {
    /// Whether there is any rule to add.
    pub fn is_empty(&self) -> bool {
        self.masquerade.is_none() && self.exposes.is_empty()
    }

    /// The table, as an `nft -f` script that replaces any table of the
    /// same name in the same transaction (the `add` makes the `delete`
    /// valid when there was none).
    pub fn script(&self) -> String {
        let table = table_name(&self.tun);
        let tun = &self.tun;
        let mut s = format!("add table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n");
        if let Some(net) = self.masquerade {
            s += "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n";
            s += &format!(
                "    ip saddr {}/{} oifname != \"{tun}\" masquerade\n  }}\n",
                net.network(),
                net.prefix
            );
        }
        if !self.exposes.is_empty() {
            s += "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n";
            for (host_port, to) in &self.exposes {
                s += &format!(
                    "    iifname != \"{tun}\" tcp dport {host_port} dnat to {}:{}\n",
                    to.ip(),
                    to.port()
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
        if let Some(net) = self.masquerade {
            // ip saddr NET/PREFIX oifname != "TUN" masquerade
            let rule = [
                nft::ip_saddr_in(net.network(), net.prefix),
                nft::oifname(Cmp::Neq, tun),
                vec![nft::masquerade(false)],
            ]
            .concat();
            chains.push(Chain {
                name: "postrouting".into(),
                kind: ChainType::Nat,
                hook: Hook::Postrouting,
                priority: nft::SRCNAT,
                policy: Verdict::Accept,
                rules: vec![rule],
            });
        }
        if !self.exposes.is_empty() {
            // iifname != "TUN" tcp dport HOSTPORT dnat to ADDR:PORT
            let rules = self
                .exposes
                .iter()
                .map(|(host_port, to)| {
                    [
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
            family: Family::Ip,
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
    nft::table_exists(Family::Ip, &table_name(tun))
}

/// Deletes the table of TUN `tun` if it exists. Returns whether it did.
pub fn delete_table(tun: &str) -> Result<bool, ti_nfnetlink::Error> {
    nft::delete_table(Family::Ip, &table_name(tun))
}

/// The comment that tags the iptables rules of TUN `tun`.
fn comment(tun: &str) -> String {
    format!("tiflow:{tun}")
}

/// Whether the host's iptables `FORWARD` chain drops by policy (false
/// when there is no `iptables`).
pub fn iptables_forward_drops() -> bool {
    host::which("iptables").is_some()
        && host::run("iptables", &["-w", "-S", "FORWARD"])
            .is_ok_and(|rules| rules.lines().any(|l| l.trim() == "-P FORWARD DROP"))
}

/// Lets the TUN's traffic through an iptables `FORWARD` chain that drops
/// by policy: two rules at its head, tagged.
pub fn add_forward_accepts(tun: &str) -> Result<(), CommandError> {
    let tag = comment(tun);
    for way in ["-i", "-o"] {
        host::run(
            "iptables",
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

/// Removes every iptables `FORWARD` rule tagged for TUN `tun`. Returns
/// how many it removed.
pub fn remove_forward_accepts(tun: &str) -> Result<usize, CommandError> {
    if host::which("iptables").is_none() {
        return Ok(0);
    }
    let tag = comment(tun);
    let listed = host::run("iptables", &["-w", "-S", "FORWARD"])?;
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
        host::run("iptables", &delete)?;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn names_take_only_what_nftables_takes() {
        assert_eq!(table_name("tiflow0"), "tiflow_tiflow0");
        assert_eq!(table_name("ti-fl.ow"), "tiflow_ti_fl_ow");
    }

    #[test]
    fn the_script_replaces_the_table_in_one_transaction() {
        let rules = NatRules {
            tun: "tiflow0".into(),
            masquerade: Some("10.0.1.1/24".parse().expect("cidr")),
            exposes: vec![(2222, SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 1), 22))],
        };
        let script = rules.script();
        assert!(script.starts_with(
            "add table ip tiflow_tiflow0\ndelete table ip tiflow_tiflow0\ntable ip tiflow_tiflow0 {"
        ));
        assert!(script.contains("ip saddr 10.0.1.0/24 oifname != \"tiflow0\" masquerade"));
        assert!(script.contains("iifname != \"tiflow0\" tcp dport 2222 dnat to 10.0.2.1:22"));
        assert!(!rules.is_empty());
    }

    #[test]
    fn no_chain_without_a_rule() {
        let rules = NatRules {
            tun: "t".into(),
            masquerade: None,
            exposes: vec![],
        };
        assert!(rules.is_empty());
        assert!(!rules.script().contains("chain"));
    }
}
