//! `tiflow up`'s NAT table goes to the kernel over netlink (issue 15: no
//! `nft` command needed). The proof: loaded over netlink in one network
//! namespace, and as `NatRules::script()` through `nft -f` in another,
//! the table lists identically (`nft list table`); replacing it leaves
//! one copy; it is found and deleted over netlink too. Root and `nft`
//! (for the listing only) are needed; the test fails saying so.

mod common;

use std::net::SocketAddr;

use common::*;
use ti_testnet::netns::NetNs;
use ti_tools::netfilter::{self, NatRules};

const TOOLS: [(&str, &str); 2] = [("ip", "iproute2"), ("nft", "nftables")];

fn listing(ns: &NetNs, table: &str) -> String {
    let out = ns
        .run(&["nft", "list", "table", "inet", table])
        .unwrap_or_else(|e| panic!("nft list table inet {table}: {e}"));
    text(&out.stdout)
}

fn rules_to_compare() -> Vec<NatRules> {
    let to = |a: &str| a.parse::<SocketAddr>().expect("address");
    let cidr = |c: &str| c.parse().expect("cidr");
    vec![
        NatRules {
            tun: "tiflow0".into(),
            masquerade: vec![cidr("10.0.1.1/24")],
            exposes: vec![(2222, to("10.0.1.1:22"))],
        },
        NatRules {
            tun: "ti-fl.ow".into(),
            masquerade: vec![cidr("172.20.5.9/20")],
            exposes: vec![],
        },
        NatRules {
            tun: "longname0123456".into(),
            masquerade: vec![],
            exposes: vec![(80, to("10.9.0.2:8080")), (65535, to("10.9.0.2:1"))],
        },
        // IPv6 only, and dual-stack (both families in the one table).
        NatRules {
            tun: "tiflow6".into(),
            masquerade: vec![cidr("fd00:1::1/64")],
            exposes: vec![(2222, to("[fd00:1::1]:22"))],
        },
        NatRules {
            tun: "tiflow46".into(),
            masquerade: vec![cidr("10.0.1.1/24"), cidr("fd00:1:2:3::9/56")],
            exposes: vec![
                (2222, to("10.0.1.1:22")),
                (2222, to("[fd00:1:2:3::9]:22")),
                (80, to("[2001:db8::1]:8080")),
            ],
        },
    ]
}

#[test]
fn the_netlink_table_lists_as_the_nft_script_does() {
    require_root(&TOOLS);
    for rules in rules_to_compare() {
        let table = netfilter::table_name(&rules.tun);
        let by_netlink = NetNs::create("tfnl").expect("namespace");
        let by_nft = NetNs::create("tfnf").expect("namespace");
        by_nft
            .run_with_input(&["nft", "-f", "-"], &rules.script())
            .expect("nft -f script");
        let load = |rules: &NatRules| {
            by_netlink
                .enter(|| netfilter::load(rules))
                .expect("enter")
                .unwrap_or_else(|e| panic!("load over netlink: {e}"))
        };
        assert!(
            !by_netlink
                .enter(|| netfilter::table_exists(&rules.tun))
                .expect("enter")
                .expect("table_exists")
        );
        load(&rules);
        let expected = listing(&by_nft, &table);
        assert_eq!(listing(&by_netlink, &table), expected, "{rules:?}");
        assert!(
            expected.contains(&format!("\"{}\"", rules.tun)),
            "{expected}"
        );

        // Loading again replaces the table: still one copy of each rule.
        load(&rules);
        assert_eq!(
            listing(&by_netlink, &table),
            expected,
            "reloaded: {rules:?}"
        );

        let (exists, deleted, again, after) = by_netlink
            .enter(|| {
                (
                    netfilter::table_exists(&rules.tun).expect("table_exists"),
                    netfilter::delete_table(&rules.tun).expect("delete"),
                    netfilter::delete_table(&rules.tun).expect("delete again"),
                    netfilter::table_exists(&rules.tun).expect("table_exists"),
                )
            })
            .expect("enter");
        assert!(exists && deleted && !again && !after);
        let ruleset = by_netlink.run(&["nft", "list", "ruleset"]).expect("nft");
        assert_eq!(text(&ruleset.stdout), "", "nothing left");
    }
}

#[test]
fn a_refused_table_changes_nothing_and_says_why() {
    require_root(&TOOLS);
    let ns = NetNs::create("tfnr").expect("namespace");
    let good = &rules_to_compare()[0];
    ns.enter(|| netfilter::load(good))
        .expect("enter")
        .expect("load");
    let before = listing(&ns, &netfilter::table_name(&good.tun));
    // A table name longer than the kernel's NFT_NAME_MAXLEN (256).
    let bad = NatRules {
        tun: "x".repeat(300),
        ..good.clone()
    };
    let err = ns
        .enter(|| netfilter::load(&bad))
        .expect("enter")
        .expect_err("a 300-character table name is refused");
    let message = err.to_string();
    assert!(
        message.contains("refused new table inet tiflow_xxx"),
        "names the message: {message}"
    );
    assert_eq!(
        listing(&ns, &netfilter::table_name(&good.tun)),
        before,
        "the other table is untouched"
    );
}
