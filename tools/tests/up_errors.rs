//! Bad input to `tiflow up`, `status`, `fail` and `demo`: clear messages
//! and the documented exit codes (1 runtime error, 2 usage error), and
//! nothing left behind.
//!
//! Commands that could touch the network run inside a fresh namespace of
//! their own (so even a bug cannot change the root namespace); those that
//! need root fail with a clear message without it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use common::*;
use ti_testnet::netns::NetNs;

fn code_and_stderr(out: &std::process::Output) -> (Option<i32>, String) {
    (out.status.code(), text(&out.stderr))
}

#[test]
fn bad_arguments_are_usage_errors_with_clear_messages() {
    require_root(&[("ip", "iproute2")]);
    let ns = NetNs::create("tfebad").expect("ns");
    let cases: &[(&[&str], &str)] = &[
        (&["up", "--forward", "2222"], "is not LISTEN=REMOTE"),
        (&["up", "--forward", "2222=10.0.2.2"], "is not IPV4:PORT"),
        (
            &["up", "--serve", "22=127.0.0.1:0"],
            "needs a port other than 0",
        ),
        (
            &["up", "--address", "10.0.2.1/31"],
            "leaves no room for the kernel side",
        ),
        (&["up", "--option-kind", "1"], "no-operation"),
        (&["up", "--option-kind", "300"], "is not an option kind"),
        (&["up", "--stall-timeout", "soon"], "is not a duration"),
        (
            &["up", "--stall-timeout", "3"],
            "needs a unit: 3s, 3ms or 3m",
        ),
        (&["up", "--config"], "--config needs a file"),
        (
            &["up", "--config", "/nonexistent/tiflow.toml"],
            "cannot read the config file /nonexistent/tiflow.toml",
        ),
        (&["up", "--tun", "a/b"], "is not an interface name"),
        (
            &["up", "--kernel-address", "10.0.2.1"],
            "is the stack's own address",
        ),
        (&["up", "--expose", "2022=22"], "no --serve listens on"),
        (
            &["up", "--address", "10.0.2.1/24", "--address", "10.0.3.1/24"],
            "one address per family",
        ),
        (&["up", "--address", "fd00::/64"], "subnet-router anycast"),
        (&["up", "--forward", "2222=[fd00::1]"], "[IPV6]:PORT"),
        (
            &[
                "up",
                "--address",
                "fd00::1/64",
                "--forward",
                "1=192.0.2.1:22",
            ],
            "needs an IPv4 address on the stack",
        ),
        (
            &["up", "--kernel-address", "fd00::2"],
            "is IPv6, but no --address is",
        ),
        (
            &["up", "--serve", "22=22", "--serve", "22=23"],
            "given twice",
        ),
        (&["up", "--capture", "10.0.2.0"], "like 192.0.2.0/24"),
        (
            &["up", "--capture", "127.0.0.0/8"],
            "holds loopback addresses",
        ),
        (
            &["up", "--capture", "0.0.0.0/0"],
            "holds loopback addresses",
        ),
        (
            &["up", "--capture", "10.0.0.0/16"],
            "overlaps the stack's own subnet 10.0.2.1/24",
        ),
        (
            &["up", "--capture", "2001:db8::/64"],
            "needs an IPv6 address on the stack",
        ),
        (&["up", "--expose-all"], "add --serve-all"),
        (&["up", "--allow-ports", "22"], "add --serve-all"),
        (
            &["up", "--serve-all", "--allow-ports", "22,0"],
            "--allow-ports",
        ),
        (
            &["up", "--serve-all", "--allow-ports", "8100-8000"],
            "--allow-ports",
        ),
        (&["fail"], "required"),
        (&["fail", "xyz"], "is not a TIFID"),
        (&["fail", "0a4530be79bf", "--all"], "cannot be used with"),
        (&["demo", "--duration", "1"], "is not a duration in seconds"),
        (&["up", "--no-such-flag"], "unexpected argument"),
    ];
    for (args, want) in cases {
        let (code, stderr) = code_and_stderr(&tiflow_in(&ns, args));
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: want {want:?} in {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains("--help") || stderr.contains("Usage: tiflow"),
            "{args:?}: {stderr}"
        );
    }
    let links = text(&ns.ip(&["link", "show"]).expect("ip").stdout);
    assert!(!links.contains("tiflow0"), "{links}");
}

#[test]
fn help_documents_exit_codes_and_addressing() {
    for sub in ["up", "status", "fail", "demo"] {
        let out = tiflow(&[sub, "--help"]);
        assert_eq!(out.status.code(), Some(0));
        let help = text(&out.stdout);
        assert!(help.contains("Exit codes:"), "{sub}: {help}");
        assert!(help.contains("2  usage error"), "{sub}: {help}");
    }
    let help = text(&tiflow(&["up", "--help"]).stdout);
    assert!(help.contains("Addressing:"), "{help}");
    assert!(help.contains("10.0.2.254"), "{help}");
    assert!(help.contains("fd00:2::1/64"), "{help}");
    assert!(help.contains("the subnet's ::1, or ::2"), "{help}");
    assert!(help.contains("net.ipv6.conf.all.forwarding"), "{help}");
}

#[test]
fn unreachable_control_socket_is_a_clear_runtime_error() {
    let scratch = Scratch::new("unreachable");
    let path = scratch.path("nobody-here.sock");
    let p = path.to_str().expect("path");
    for args in [
        vec!["status", "--control", p],
        vec!["fail", "--all", "--control", p],
    ] {
        let (code, stderr) = code_and_stderr(&tiflow(&args));
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("cannot reach `tiflow up` at"), "{stderr}");
        assert!(stderr.contains("is it running?"), "{stderr}");
    }
    // A file that is not a socket.
    std::fs::write(&path, b"not a socket").expect("write");
    let (code, stderr) = code_and_stderr(&tiflow(&["status", "--control", p]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach `tiflow up`"), "{stderr}");
}

/// A copy of the binary that an unprivileged user can run, removed on drop.
struct PublicCopy(PathBuf);

impl PublicCopy {
    /// A copy of its own (tests run in parallel, and each removes its copy).
    fn new(tag: &str) -> PublicCopy {
        let dir = std::env::temp_dir().join(format!("tiflow-nocap-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let bin = dir.join("tiflow");
        std::fs::copy(TIFLOW, &bin).expect("copy binary");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        PublicCopy(dir)
    }
}

impl Drop for PublicCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn without_cap_net_admin_up_and_demo_say_what_is_missing() {
    require_root(&[("ip", "iproute2"), ("setpriv", "util-linux")]);
    let ns = NetNs::create("tfecap").expect("ns");
    let copy = PublicCopy::new("cap");
    let bin = copy.0.join("tiflow");
    let bin = bin.to_str().expect("path");
    let control = copy.0.join("c.sock");
    let control = control.to_str().expect("path");
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        bin,
    ];
    let mut up = nobody.to_vec();
    up.extend(["up", "--control", control]);
    let out = ns.run(&up).expect_err("refused");
    let message = out.to_string();
    assert!(
        message.contains("CAP_NET_ADMIN is missing (effective uid 65534)"),
        "{message}"
    );
    assert!(message.contains("run it as root"), "{message}");
    let mut demo = nobody.to_vec();
    demo.extend(["demo", "--duration", "2"]);
    let message = ns.run(&demo).expect_err("refused").to_string();
    assert!(message.contains("not privileged"), "{message}");
    let links = text(&ns.ip(&["link", "show"]).expect("ip").stdout);
    assert!(!links.contains("tiflow0"), "{links}");
}

#[test]
fn taken_tun_name_and_taken_control_socket_are_refused() {
    require_root(&[("ip", "iproute2")]);
    let scratch = Scratch::new("taken");
    let ns = NetNs::create("tfetun").expect("ns");
    let first = Up::start(&ns, &scratch, "first", &["--tun", "tfbusy0"]);
    let other = scratch.path("other.sock");
    let other = other.to_str().expect("path");
    let out = tiflow_in(&ns, &["up", "--tun", "tfbusy0", "--control", other]);
    let (code, stderr) = code_and_stderr(&out);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("TUN device name \"tfbusy0\" is taken"),
        "{stderr}"
    );
    assert!(stderr.contains("--tun"), "{stderr}");
    assert!(
        !exists(std::path::Path::new(other)),
        "no control socket left behind"
    );

    let same = first.control.to_str().expect("path");
    let out = tiflow_in(&ns, &["up", "--tun", "tfbusy1", "--control", same]);
    let (code, stderr) = code_and_stderr(&out);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("another `tiflow up` already answers at"),
        "{stderr}"
    );
    let links = text(&ns.ip(&["link", "show"]).expect("ip").stdout);
    assert!(!links.contains("tfbusy1"), "{links}");

    // The first one is unharmed, and refuses an unknown TIFID clearly.
    let (code, stderr) = code_and_stderr(&tiflow(&["fail", "00000000abcd", "--control", same]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no TI-flow 00000000abcd here"), "{stderr}");
    assert_eq!(first.status().tun, "tfbusy0");
}

#[test]
fn forward_port_in_use_is_refused_before_anything_changes() {
    require_root(&[("ip", "iproute2")]);
    let scratch = Scratch::new("port");
    let ns = NetNs::create("tfeport").expect("ns");
    let _busy = listen_in(&ns, "127.0.0.1:7300");
    let control = scratch.path("c.sock");
    let c = control.to_str().expect("path");
    let out = tiflow_in(
        &ns,
        &[
            "up",
            "--forward",
            "127.0.0.1:7300=10.9.9.9:80",
            "--control",
            c,
        ],
    );
    let (code, stderr) = code_and_stderr(&out);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot listen on 127.0.0.1:7300 for --forward"),
        "{stderr}"
    );
    assert!(stderr.contains("another program listens there"), "{stderr}");
    assert!(!exists(&control), "no control socket left behind");
    let links = text(&ns.ip(&["link", "show"]).expect("ip").stdout);
    assert!(!links.contains("tiflow0"), "{links}");
}

/// A second `tiflow up` with the same TUN name in the same network
/// namespace (both on the default, abstract control socket) is refused
/// before it changes anything; the control socket answers root and the
/// user `tiflow up` runs as, and refuses any other user (an abstract
/// socket has no file permissions).
#[test]
fn same_name_in_one_namespace_is_refused_and_other_users_may_not_ask() {
    require_root(&[("ip", "iproute2"), ("setpriv", "util-linux")]);
    let scratch = Scratch::new("samename");
    let ns = NetNs::create("tfesame").expect("ns");
    let first = Up::start_default_control(&ns, &scratch, "first", &["--tun", "tfsame0"]);
    // stdin is closed for `tiflow_in`: were it to start, it would stop at once.
    let out = tiflow_in(&ns, &["up", "--tun", "tfsame0", "--exit-on-stdin-close"]);
    let (code, stderr) = code_and_stderr(&out);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "another `tiflow up` serves @tiflow/tfsame0 in this network namespace \
             (stop it, or use another --tun or --control)"
        ),
        "{stderr}"
    );
    assert_eq!(
        first.status_in(&ns).tun,
        "tfsame0",
        "the first one is unharmed"
    );

    let copy = PublicCopy::new("samename");
    let bin = copy.0.join("tiflow");
    let bin = bin.to_str().expect("path");
    let as_nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        bin,
        "status",
        "--tun",
        "tfsame0",
    ];
    let message = ns.run(&as_nobody).expect_err("refused").to_string();
    assert!(
        message.contains("permission denied: user 65534 may not use the control socket"),
        "{message}"
    );
    let out = tiflow_in(&ns, &["status", "--tun", "tfsame0"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "root may: {}",
        text(&out.stderr)
    );
}

/// `--config FILE` with mistakes: usage errors naming the file and the
/// key; a value the flag would refuse is refused with the flag's message.
#[test]
fn config_file_mistakes_are_usage_errors() {
    require_root(&[("ip", "iproute2")]);
    let ns = NetNs::create("tfecfg").expect("ns");
    let scratch = Scratch::new("config-errors");
    let cases = [
        ("adress = \"10.0.1.1/24\"", "unknown setting \"adress\""),
        ("masquerade = \"yes\"", "masquerade must be true or false"),
        ("stall-timeout = \"3\"", "needs a unit: 3s, 3ms or 3m"),
        ("address = ", "config file"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let file = scratch.path(&format!("bad{i}.toml"));
        std::fs::write(&file, text).expect("write");
        let file = file.to_string_lossy().into_owned();
        let (code, stderr) = code_and_stderr(&tiflow_in(&ns, &["up", "--config", &file]));
        assert_eq!(code, Some(2), "{text}: {stderr}");
        assert!(stderr.contains(want), "{text}: want {want:?} in {stderr}");
    }
    let links = text(&ns.ip(&["link", "show"]).expect("ip").stdout);
    assert!(!links.contains("tiflow0"), "{links}");
}

/// A config file equivalent to a command line gives the same `tiflow up`:
/// the same settings in force (the banner), the same NAT table; and a flag
/// on the command line wins over the file.
#[test]
fn a_config_file_gives_the_same_tiflow_up_as_its_flags() {
    require_root(&[("ip", "iproute2"), ("nft", "nftables")]);
    let ns = NetNs::create("tfcfg").expect("ns");
    let scratch = Scratch::new("config");
    let flags = [
        "--address",
        "10.66.0.1/24",
        "--address",
        "fd00:66::1/64",
        "--kernel-address",
        "fd00:66::fe",
        "--masquerade",
        "--serve",
        "7500=127.0.0.1:7500",
        "--serve",
        "7501=127.0.0.1:7501",
        "--expose",
        "7500",
        "--forward",
        "127.0.0.1:7600=192.0.2.10:7600",
        "--forward",
        "[::1]:7601=[2001:db8::10]:7601",
        "--stall-timeout",
        "2s",
        "--keepalive",
        "7s",
        "--mtu",
        "1400",
    ];
    let file = scratch.path("tiflow.toml");
    std::fs::write(
        &file,
        "address = [\"10.66.0.1/24\", \"fd00:66::1/64\"]\nkernel_address = \"fd00:66::fe\"\nmasquerade = true\nserve = [\"7500=127.0.0.1:7500\", \"7501=127.0.0.1:7501\"]\nexpose = [7500]\nforward = [\"127.0.0.1:7600=192.0.2.10:7600\", \"[::1]:7601=[2001:db8::10]:7601\"]\nstall_timeout = \"2s\"\nkeepalive = \"7s\"\nmtu = 1400\n",
    )
    .expect("write");
    let file = file.to_string_lossy().into_owned();
    // What the banner says is in force, and the NAT table.
    let observe = |name: &str, args: &[&str]| {
        let mut up = Up::start(&ns, &scratch, name, args);
        let banner: Vec<String> = up
            .log_text()
            .lines()
            .filter(|l| !l.contains("control ") && !l.contains(" INFO ") && !l.contains(" WARN "))
            .map(str::to_owned)
            .collect();
        let table = text(
            &ns.run(&["nft", "list", "table", "inet", "tiflow_tiflow0"])
                .expect("nft")
                .stdout,
        );
        up.stop().expect("stops");
        (banner, table)
    };
    let (banner, table) = observe("flags", &flags);
    assert!(
        banner.iter().any(|l| l
            .contains("stack 10.66.0.1/24, fd00:66::1/64, kernel side 10.66.0.254, fd00:66::fe"))
            && banner
                .iter()
                .any(|l| l.contains("forward [::1]:7601 -> [2001:db8::10]:7601")),
        "dual-stack banner: {banner:?}"
    );
    assert!(
        table.contains("ip6 saddr fd00:66::/64 oifname != \"tiflow0\" masquerade")
            && table.contains("dnat ip6 to [fd00:66::1]:7500"),
        "both families in the one table: {table}"
    );
    let from_flags = observe("flags", &flags);
    let from_file = observe("file", &["--config", &file]);
    assert!(
        from_flags
            .0
            .iter()
            .any(|l| l.contains("stall 2s, keepalive 7s")),
        "{:?}",
        from_flags.0
    );
    assert_eq!(from_file, from_flags, "the same settings and rules");
    let (banner, _) = observe("override", &["--config", &file, "--keepalive", "9s"]);
    assert!(
        banner.iter().any(|l| l.contains("stall 2s, keepalive 9s")),
        "the command line wins: {banner:?}"
    );

    // Transparent mode's keys (the capture listener's port is the
    // kernel's choice, so the banner is read, not compared).
    let transparent = scratch.path("transparent.toml");
    std::fs::write(
        &transparent,
        "address = \"10.66.0.1/24\"\ncapture = [\"192.0.2.0/24\", \"198.51.100.0/24\"]\nserve-all = true\nexpose-all = true\nallow-ports = \"22,8000-8100\"\n",
    )
    .expect("write");
    let transparent = transparent.to_string_lossy().into_owned();
    let (banner, table) = observe("transparent", &["--config", &transparent]);
    for want in [
        "capture TCP to 192.0.2.0/24 (redirected to 127.0.0.1:",
        "capture TCP to 198.51.100.0/24 (redirected to 127.0.0.1:",
        "serve   10.66.0.1/24 port 22,8000-8100 -> the same port on 127.0.0.1 / ::1",
        "expose  this host's addresses, port 22,8000-8100 -> the same port of the stack",
        "without --masquerade, peers need a route back",
    ] {
        assert!(
            banner.iter().any(|l| l.contains(want)),
            "{want:?} in {banner:?}"
        );
    }
    for want in [
        "ip daddr 192.0.2.0/24 meta l4proto tcp redirect to :",
        "fib daddr type local tcp dport 8000-8100 dnat ip to 10.66.0.1",
    ] {
        assert!(table.contains(want), "{want:?} in {table}");
    }
}

/// Shell completions and man pages come from the CLI definition: every
/// subcommand and flag is in them; an unknown shell is a usage error.
#[test]
fn completions_and_man_pages_cover_the_cli() {
    for shell in ["bash", "zsh", "fish"] {
        let out = tiflow(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = text(&out.stdout);
        for word in ["status", "down", "masquerade", "config", "stall-timeout"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let out = tiflow(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let page = text(&tiflow(&["man"]).stdout);
    assert!(page.contains(".TH tiflow 1"), "{page}");
    let dir = Scratch::new("man");
    let dir_arg = dir.0.to_string_lossy().into_owned();
    assert_eq!(tiflow(&["man", "--dir", &dir_arg]).status.code(), Some(0));
    let up = std::fs::read_to_string(dir.path("tiflow-up.1")).expect("tiflow-up.1");
    assert!(up.contains("masquerade") && up.contains("config"), "{up}");
    assert!(dir.path("tiflow-down.1").exists());
}

/// The systemd unit in the repository passes `systemd-analyze verify`
/// (with the built binary in place of /usr/local/bin/tiflow), starts
/// `tiflow up` with the instance's config, cleans up after a crash with
/// `tiflow down`, and keeps only the capabilities it needs.
#[test]
fn the_systemd_unit_verifies() {
    require_root(&[("systemd-analyze", "systemd")]);
    let unit = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/tiflow@.service"),
    )
    .expect("tools/systemd/tiflow@.service");
    for line in [
        "ExecStart=/usr/local/bin/tiflow up --tun %i --config /etc/tiflow/%i.toml",
        "ExecStopPost=/usr/local/bin/tiflow down --tun %i",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line:?}");
    }
    let scratch = Scratch::new("systemd");
    let path = scratch.path("tiflow@.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/tiflow", TIFLOW)).expect("write");
    let instance = scratch.path("tiflow@tiflow0.service");
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&instance)
        .output()
        .expect("systemd-analyze");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("tiflow@"),
        "systemd-analyze warns: {stderr}"
    );
}
