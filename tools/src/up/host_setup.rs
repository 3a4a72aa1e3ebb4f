//! What `tiflow up` changes on the host before the stack starts: the TUN
//! device and its kernel side (address, MTU, link state), forwarding, the
//! NAT and filter rules on request, and the open-file limit. Each change is
//! recorded in [`Undo`] to be reverted at exit.

use std::io;
use std::net::SocketAddr;

use ti_stack::device::tun::{OffloadOff, OffloadRequest, Offloads, TunDevice};
use tracing::{info, warn};

use super::{UpArgs, UpError};

/// Packets the kernel queues toward the stack on the TUN device.
const TXQUEUELEN: &str = "4096";
use crate::cidr::IpCidr;
use crate::down;
use crate::host::{self, Undo};
use crate::netfilter::{self, ExposeAll, NatRules};
use crate::state::{self, UpState};

pub(super) fn open_tun(args: &UpArgs) -> Result<TunDevice, UpError> {
    let name = &args.tun;
    if std::path::Path::new("/sys/class/net").join(name).exists() {
        return Err(UpError::TunTaken {
            name: name.clone(),
            detail: "an interface of that name exists".into(),
        });
    }
    let request = if args.no_offload {
        OffloadRequest::Off
    } else {
        OffloadRequest::Auto
    };
    let tun = TunDevice::open_with(name, request).map_err(|source| {
        if source.kind() == io::ErrorKind::ResourceBusy {
            UpError::TunTaken {
                name: name.clone(),
                detail: source.to_string(),
            }
        } else {
            UpError::Tun {
                name: name.clone(),
                source,
            }
        }
    })?;
    if tun.name() != name {
        return Err(UpError::TunTaken {
            name: name.clone(),
            detail: format!("the kernel named it {:?}", tun.name()),
        });
    }
    Ok(tun.with_mtu(usize::from(args.mtu)))
}

/// The host's addresses (interface, address/prefix) of `net`'s family
/// whose subnet overlaps `net`, from `ip -o addr show`.
fn overlapping(net: IpCidr) -> Vec<(String, IpCidr)> {
    let Ok(listed) = host::run("ip", &["-o", "addr", "show"]) else {
        return Vec::new();
    };
    listed
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "inet" || *w == "inet6")?;
            let cidr: IpCidr = words.get(at + 1)?.parse().ok()?;
            Some((words.get(1)?.trim_end_matches(':').to_owned(), cidr))
        })
        .filter(|(_, cidr)| cidr.overlaps(net))
        .collect()
}

/// Addresses, MTU and link state of the TUN's kernel side, forwarding, NAT.
/// `captures`: each `--capture` network with the port of the listener its
/// connections are redirected to.
pub(super) fn configure_host(
    args: &UpArgs,
    captures: &[(IpCidr, u16)],
    undo: &mut Undo,
) -> Result<(), UpError> {
    let tun = args.tun.as_str();
    for address in args.addresses() {
        for (interface, cidr) in overlapping(address) {
            warn!(
                %address,
                %interface,
                theirs = %cidr,
                "--address overlaps the subnet of another interface (another tiflow up's TUN, or the host's own network): the kernel routes those addresses one way only; pick a subnet of its own"
            );
        }
    }
    let mtu = args.mtu.to_string();
    // A longer queue toward the stack than the default 500 packets: the
    // keepalive probes of thousands of idle flows come in bursts.
    host::run(
        "ip",
        &[
            "link",
            "set",
            "dev",
            tun,
            "mtu",
            &mtu,
            "txqueuelen",
            TXQUEUELEN,
        ],
    )?;
    add_kernel_addresses(args)?;
    host::run("ip", &["link", "set", "dev", tun, "up"])?;
    // What a tiflow up on this TUN left when it died goes first; the
    // forwarding values it found are the ones to restore.
    let left = down::remove_leftovers(tun)?;
    if left.any() {
        warn!(
            %tun,
            nftables_table = left.table,
            iptables_rules = left.forward_accepts,
            "removed what a tiflow up on this TUN left when it died"
        );
    }
    let mut state = UpState {
        pid: std::process::id(),
        ip_forward_was: left.ip_forward_was,
        ip6_forward_was: left.ip6_forward_was,
        forward_accepts: false,
    };
    // Each family's forwarding only where the stack has an address of it.
    if args.ipv4().is_some()
        && let Some(found) = turn_on(down::IP_FORWARD, "IPv4")?
    {
        state.ip_forward_was = Some(found);
    }
    if args.ipv6().is_some()
        && let Some(found) = turn_on(down::IP6_FORWARD, "IPv6")?
    {
        state.ip6_forward_was = Some(found);
        warn_router_advertisements_ignored(tun);
    }
    // Undone last: the state file goes once everything else is undone.
    let tun_name = tun.to_owned();
    undo.call(move || {
        if let Err(e) = state::remove(&tun_name) {
            warn!(error = %e, "cannot remove the state file");
        }
    });
    let restores = [
        (down::IP_FORWARD, state.ip_forward_was.clone()),
        (down::IP6_FORWARD, state.ip6_forward_was.clone()),
    ];
    for (key, was) in restores {
        let Some(was) = was else { continue };
        let tun_name = tun.to_owned();
        undo.call(
            move || match down::restore_forwarding(&tun_name, key, &was) {
                Ok(true) => {}
                Ok(false) => info!("{key} left on: another tiflow up runs in this namespace"),
                Err(e) => warn!(error = %e, "cannot restore {key}"),
            },
        );
    }
    state::write(tun, &state).map_err(UpError::State)?;
    add_nat_rules(args, captures, &mut state, undo)
}

/// The kernel side's address of each family the stack has. Without an
/// IPv6 address the device's IPv6 is off (no chatter toward the stack);
/// with one, the kernel's address is usable at once (no duplicate address
/// detection: the stack is the only other host on the link) and the device
/// takes no router advertisements.
fn add_kernel_addresses(args: &UpArgs) -> Result<(), UpError> {
    let tun = args.tun.as_str();
    if args.ipv6().is_none() {
        let _ = host::set_ipv6_conf(tun, "disable_ipv6", "1");
    }
    for kernel in args.kernel_addresses() {
        let text = kernel.to_string();
        match kernel {
            IpCidr::V4(_) => host::run("ip", &["addr", "add", &text, "dev", tun])?,
            IpCidr::V6(_) => {
                host::set_ipv6_conf(tun, "disable_ipv6", "0").map_err(|source| {
                    UpError::Sysctl {
                        key: format!("net.ipv6.conf.{tun}.disable_ipv6"),
                        source,
                    }
                })?;
                let _ = host::set_ipv6_conf(tun, "accept_ra", "0");
                host::run("ip", &["-6", "addr", "add", &text, "dev", tun, "nodad"])?
            }
        };
    }
    Ok(())
}

/// Warns about the interfaces that stop taking router advertisements now
/// that the host forwards IPv6 (`accept_ra` 1 means "unless forwarding").
fn warn_router_advertisements_ignored(tun: &str) {
    let Ok(entries) = std::fs::read_dir("/proc/sys/net/ipv6/conf") else {
        return;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !matches!(name.as_str(), "all" | "default" | "lo") && name != tun)
        .filter(|name| host::ipv6_conf(name, "accept_ra").is_ok_and(|v| v == "1"))
        .collect();
    if names.is_empty() {
        return;
    }
    names.sort();
    warn!(
        interfaces = %names.join(", "),
        "with IPv6 forwarding on, these interfaces ignore router advertisements (accept_ra = 1): \
         set net.ipv6.conf.IFACE.accept_ra = 2 where this host configures itself by SLAAC"
    );
}

/// Turns the forwarding sysctl `key` on; returns the value it had when
/// it was off (to restore at exit), `None` when it was on already.
fn turn_on(key: &str, family: &str) -> Result<Option<String>, UpError> {
    let error = |source| UpError::Sysctl {
        key: key.to_owned(),
        source,
    };
    let found = host::sysctl(key).map_err(error)?;
    if found == "1" {
        return Ok(None);
    }
    host::set_sysctl(key, "1").map_err(error)?;
    info!("{family} forwarding turned on ({key}, restored at exit)");
    Ok(Some(found))
}

/// `--masquerade`, `--expose`, `--capture` and `--expose-all`: the TUN's
/// nftables table (and, where
/// the iptables or ip6tables FORWARD policy drops, the tagged accepts,
/// recorded in the state file), each undone at exit.
fn add_nat_rules(
    args: &UpArgs,
    captures: &[(IpCidr, u16)],
    state: &mut UpState,
    undo: &mut Undo,
) -> Result<(), UpError> {
    let tun = args.tun.as_str();
    let addresses = args.addresses();
    let rules = NatRules {
        tun: tun.to_owned(),
        masquerade: if args.masquerade {
            addresses.clone()
        } else {
            Vec::new()
        },
        exposes: args
            .exposes
            .iter()
            .flat_map(|e| {
                addresses
                    .iter()
                    .map(move |a| (e.host_port, SocketAddr::new(a.addr(), e.port)))
            })
            .collect(),
        captures: captures.to_vec(),
        expose_all: args.expose_all.then(|| ExposeAll {
            to: addresses.iter().map(|a| a.addr()).collect(),
            ports: args.allowed_ports(),
        }),
    };
    if rules.is_empty() {
        return Ok(());
    }
    let families = [
        (false, args.ipv4().is_some()),
        (true, args.ipv6().is_some()),
    ];
    for (ipv6, used) in families {
        if !used || !netfilter::forward_drops(ipv6) {
            continue;
        }
        // nftables cannot override another table's drop: see `netfilter`.
        if !state.forward_accepts {
            state.forward_accepts = true;
            state::write(tun, state).map_err(UpError::State)?;
            let tun_name = tun.to_owned();
            undo.call(move || {
                if let Err(e) = netfilter::remove_forward_accepts(&tun_name) {
                    warn!(error = %e, "cannot remove the iptables FORWARD rules");
                }
            });
        }
        netfilter::add_forward_accepts(tun, ipv6)?;
        let command = if ipv6 { "ip6tables" } else { "iptables" };
        info!(%tun, "the {command} FORWARD chain drops by policy: two rules tagged tiflow:{tun} let the TUN's traffic through");
    }
    let tun_name = tun.to_owned();
    undo.call(move || {
        if let Err(e) = netfilter::delete_table(&tun_name) {
            warn!(error = %e, "cannot delete the nftables table");
        }
    });
    netfilter::load(&rules)?;
    info!(table = %netfilter::table_name(tun), "NAT rules in their own nftables table");
    Ok(())
}

/// Raises the soft limit on open files to the hard limit: every carried
/// connection holds a local socket (a login shell's soft limit is often
/// 1024, which stops `tiflow up` at a few hundred connections). Says what
/// it did; a failure leaves the limit as it was, with a warning.
pub(super) fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        return; // Already unlimited.
    };
    if hard.is_some_and(|h| h <= soft) {
        info!(open_files = soft, "open-file limit");
        return;
    }
    let raised = rustix::process::Rlimit {
        current: hard,
        maximum: hard,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => info!(
            from = soft,
            to = hard.map_or_else(|| "unlimited".to_owned(), |h| h.to_string()),
            "raised the open-file limit (soft to hard)"
        ),
        Err(e) => warn!(open_files = soft, error = %e, "could not raise the open-file limit"),
    }
}

/// How the TUN device moves packets, for the banner and the log.
pub(super) fn offload_text(offloads: Offloads) -> &'static str {
    match offloads {
        Offloads::Active => "offloads on: checksums and TCP segmentation",
        Offloads::Off(OffloadOff::NotRequested) => "offloads off (--no-offload)",
        Offloads::Off(OffloadOff::VnetHeaderRefused) => {
            "offloads off: the kernel refused IFF_VNET_HDR"
        }
        Offloads::Off(OffloadOff::OffloadRefused) => {
            "offloads off: the kernel refused TUNSETOFFLOAD"
        }
    }
}
