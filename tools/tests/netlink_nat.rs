//! `tiflow up`'s NAT table goes to the kernel over netlink (issue 15: no
//! `nft` command needed). The proof: loaded over netlink in one network
//! namespace, and as `NatRules::script()` through `nft -f` in another,
//! the table lists identically (`nft list table`); replacing it leaves
//! one copy; it is found and deleted over netlink too. Root and `nft`
//! (for the listing only) are needed; the test fails saying so.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::*;
use ti_testnet::netns::NetNs;
use ti_tools::netfilter::{self, ExposeAll, NatRules};
use ti_tools::ports::parse_port_list;

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
    let ip = |a: &str| a.parse::<IpAddr>().expect("address");
    let ports = |p: &str| parse_port_list(p).expect("ports");
    vec![
        NatRules {
            tun: "tiflow0".into(),
            masquerade: vec![cidr("10.0.1.1/24")],
            exposes: vec![(2222, to("10.0.1.1:22"))],
            captures: vec![],
            expose_all: None,
        },
        NatRules {
            tun: "ti-fl.ow".into(),
            masquerade: vec![cidr("172.20.5.9/20")],
            exposes: vec![],
            captures: vec![],
            expose_all: None,
        },
        NatRules {
            tun: "longname0123456".into(),
            masquerade: vec![],
            exposes: vec![(80, to("10.9.0.2:8080")), (65535, to("10.9.0.2:1"))],
            captures: vec![],
            expose_all: None,
        },
        // IPv6 only, and dual-stack (both families in the one table).
        NatRules {
            tun: "tiflow6".into(),
            masquerade: vec![cidr("fd00:1::1/64")],
            exposes: vec![(2222, to("[fd00:1::1]:22"))],
            captures: vec![],
            expose_all: None,
        },
        NatRules {
            tun: "tiflow46".into(),
            masquerade: vec![cidr("10.0.1.1/24"), cidr("fd00:1:2:3::9/56")],
            exposes: vec![
                (2222, to("10.0.1.1:22")),
                (2222, to("[fd00:1:2:3::9]:22")),
                (80, to("[2001:db8::1]:8080")),
            ],
            captures: vec![],
            expose_all: None,
        },
        // --capture: IPv4 only, IPv6 only, dual-stack.
        NatRules {
            tun: "tiflowc4".into(),
            masquerade: vec![],
            exposes: vec![],
            captures: vec![(cidr("192.0.2.77/24"), 15001)],
            expose_all: None,
        },
        NatRules {
            tun: "tiflowc6".into(),
            masquerade: vec![],
            exposes: vec![],
            captures: vec![(cidr("2001:db8:1::1/48"), 1)],
            expose_all: None,
        },
        NatRules {
            tun: "tiflowc46".into(),
            masquerade: vec![],
            exposes: vec![],
            captures: vec![
                (cidr("10.99.0.0/16"), 65535),
                (cidr("2001:db8::/64"), 15001),
                (cidr("198.51.100.7/32"), 15002),
                (cidr("fd00:9::5/127"), 15002),
            ],
            expose_all: None,
        },
        // --expose-all: every port (dual-stack, and IPv4 only), and an
        // allow list mixing a single port and a range.
        NatRules {
            tun: "tiflowa".into(),
            masquerade: vec![],
            exposes: vec![],
            captures: vec![],
            expose_all: Some(ExposeAll {
                to: vec![ip("10.0.2.1"), ip("fd00:2::1")],
                ports: vec![],
            }),
        },
        NatRules {
            tun: "tiflowa4".into(),
            masquerade: vec![],
            exposes: vec![],
            captures: vec![],
            expose_all: Some(ExposeAll {
                to: vec![ip("10.0.2.1")],
                ports: vec![],
            }),
        },
        NatRules {
            tun: "tiflowap".into(),
            masquerade: vec![],
            exposes: vec![],
            captures: vec![],
            expose_all: Some(ExposeAll {
                to: vec![ip("10.0.2.1"), ip("fd00:2::1")],
                ports: ports("22,8000-8100,1-1,65000-65535"),
            }),
        },
        // Everything at once.
        NatRules {
            tun: "tiflowall".into(),
            masquerade: vec![cidr("10.0.2.1/24"), cidr("fd00:2::1/64")],
            exposes: vec![(2222, to("10.0.2.1:22")), (2222, to("[fd00:2::1]:22"))],
            captures: vec![(cidr("10.99.0.0/24"), 15001), (cidr("fd00:99::/64"), 15001)],
            expose_all: Some(ExposeAll {
                to: vec![ip("10.0.2.1"), ip("fd00:2::1")],
                ports: ports("80,8000-8100"),
            }),
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
        // Not vacuous: the listing has each kind of rule asked for (the
        // TUN's name is in every rule but the captures').
        let tun_named = !(rules.masquerade.is_empty()
            && rules.exposes.is_empty()
            && rules.expose_all.is_none());
        assert_eq!(
            expected.contains(&format!("\"{}\"", rules.tun)),
            tun_named,
            "{expected}"
        );
        assert_eq!(
            expected.contains("redirect to :"),
            !rules.captures.is_empty(),
            "{expected}"
        );
        assert_eq!(
            expected.contains("fib daddr type local"),
            rules.expose_all.is_some(),
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
