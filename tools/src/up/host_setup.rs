//! What `tiflow up` changes on the host before the stack starts: the TUN
//! device and its kernel side (address, MTU, link state), forwarding, the
//! NAT and filter rules on request, and the open-file limit. Each change is
//! recorded in [`Undo`] to be reverted at exit.

use std::io;

use ti_stack::device::tun::{OffloadOff, OffloadRequest, Offloads, TunDevice};
use tracing::{info, warn};

use super::{UpArgs, UpError};

/// Packets the kernel queues toward the stack on the TUN device.
const TXQUEUELEN: &str = "4096";
use crate::host::{self, Undo};

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

/// Addresses, MTU and link state of the TUN's kernel side, forwarding, NAT.
pub(super) fn configure_host(args: &UpArgs, undo: &mut Undo) -> Result<(), UpError> {
    let tun = args.tun.as_str();
    let kernel = format!("{}/{}", args.kernel_address(), args.address.prefix);
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
    host::run("ip", &["addr", "add", &kernel, "dev", tun])?;
    host::run("ip", &["link", "set", "dev", tun, "up"])?;
    // The stack speaks IPv4 only: keep the kernel's IPv6 chatter off the device.
    let _ = host::set_sysctl(&format!("net.ipv6.conf.{tun}.disable_ipv6"), "1");
    let forwarding = host::sysctl("net.ipv4.ip_forward").map_err(UpError::Forwarding)?;
    if forwarding != "1" {
        host::set_sysctl("net.ipv4.ip_forward", "1").map_err(UpError::Forwarding)?;
        undo.sysctl("net.ipv4.ip_forward", &forwarding);
        info!("IPv4 forwarding turned on (restored at exit)");
    }
    let mut rule = |table: &str, chain: &str, spec: Vec<String>| -> Result<(), UpError> {
        let spec: Vec<&str> = spec.iter().map(String::as_str).collect();
        let mut add = vec!["-w", "-t", table, "-I", chain];
        add.extend(&spec);
        host::run("iptables", &add)?;
        let mut del = vec!["-w", "-t", table, "-D", chain];
        del.extend(&spec);
        undo.run("iptables", &del);
        Ok(())
    };
    let net = format!("{}/{}", args.address.network(), args.address.prefix);
    if args.masquerade || !args.exposes.is_empty() {
        // Hosts whose FORWARD policy is DROP (Docker's) would drop the TUN's traffic.
        rule("filter", "FORWARD", owned(&["-i", tun, "-j", "ACCEPT"]))?;
        rule("filter", "FORWARD", owned(&["-o", tun, "-j", "ACCEPT"]))?;
    }
    if args.masquerade {
        rule(
            "nat",
            "POSTROUTING",
            owned(&["-s", &net, "!", "-o", tun, "-j", "MASQUERADE"]),
        )?;
    }
    for e in &args.exposes {
        let to = format!("{}:{}", args.address.addr, e.port);
        let dport = e.host_port.to_string();
        rule(
            "nat",
            "PREROUTING",
            owned(&[
                "!",
                "-i",
                tun,
                "-p",
                "tcp",
                "--dport",
                &dport,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ]),
        )?;
    }
    Ok(())
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
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
