//! `tiflow down [--tun NAME]`: removes what a `tiflow up` that died
//! without cleaning up left on the host: its nftables table, its tagged
//! iptables and ip6tables rules, `net.ipv4.ip_forward` and
//! `net.ipv6.conf.all.forwarding` as it found them, its state file.
//! Idempotent: with nothing left, it says so and succeeds. It refuses
//! while that `tiflow up` still runs (stop it with SIGTERM or Ctrl-C: it
//! cleans up itself).
//!
//! The TUN device needs nothing: `tiflow up` does not make it persistent,
//! so the kernel removes it when the process dies.
//!
//! [`remove_leftovers`] is also what `tiflow up` runs at start, so a
//! restart after a crash cleans up before it changes anything.

use std::io;

use clap::Args;
use tracing::info;

use crate::host::{self, CommandError, PrivilegeError};
use crate::{netfilter, state};

/// Arguments of `tiflow down`.
#[derive(Debug, Clone, Args)]
pub struct DownArgs {
    /// The TUN device of the `tiflow up` whose leftovers to remove.
    #[arg(long, value_name = "NAME", default_value = "tiflow0")]
    pub tun: String,
}

/// Why `tiflow down` could not finish.
#[derive(Debug, thiserror::Error)]
pub enum DownError {
    /// Not root (or no CAP_NET_ADMIN).
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    /// The `tiflow up` is still running.
    #[error(
        "tiflow up (pid {pid}) is still running on {tun}: stop it (SIGTERM or Ctrl-C) and it removes its changes itself"
    )]
    Running {
        /// The TUN device.
        tun: String,
        /// Its process.
        pid: u32,
    },
    /// A command (`iptables`) failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The nftables table could not be deleted (netlink).
    #[error("nftables: {0}")]
    Netfilter(#[from] ti_nfnetlink::Error),
    /// The state file or a sysctl could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
}

/// What a dead `tiflow up` had left, now removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Its nftables table was deleted.
    pub table: bool,
    /// Tagged iptables rules removed.
    pub forward_accepts: usize,
    /// A state file was there (and is removed).
    pub state_file: bool,
    /// `net.ipv4.ip_forward` as that `tiflow up` found it, when it had
    /// changed it (not restored here: the caller decides).
    pub ip_forward_was: Option<String>,
    /// `net.ipv6.conf.all.forwarding` as that `tiflow up` found it, when
    /// it had changed it (not restored here: the caller decides).
    pub ip6_forward_was: Option<String>,
}

impl Leftovers {
    /// Whether anything was left.
    pub fn any(&self) -> bool {
        self.table || self.forward_accepts > 0 || self.state_file
    }
}

/// Removes the table, the tagged rules and the state file of a `tiflow
/// up` on `tun` in this network namespace that is no longer running.
pub fn remove_leftovers(tun: &str) -> Result<Leftovers, DownError> {
    let io_error = |what: &str| {
        let what = what.to_owned();
        move |source| DownError::Io { what, source }
    };
    let previous = match state::read(tun) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            tracing::warn!(error = %e, "unreadable state file: removing it");
            Some(state::UpState::default())
        }
        Err(e) => return Err(io_error("read the state file")(e)),
    };
    if let Some(s) = &previous
        && s.process_alive()
    {
        return Err(DownError::Running {
            tun: tun.to_owned(),
            pid: s.pid,
        });
    }
    let leftovers = Leftovers {
        table: netfilter::delete_table(tun)?,
        forward_accepts: netfilter::remove_forward_accepts(tun)?,
        state_file: previous.is_some(),
        ip_forward_was: previous.as_ref().and_then(|s| s.ip_forward_was.clone()),
        ip6_forward_was: previous.and_then(|s| s.ip6_forward_was),
    };
    state::remove(tun).map_err(io_error("remove the state file"))?;
    Ok(leftovers)
}

/// The IPv4 forwarding sysctl.
pub const IP_FORWARD: &str = "net.ipv4.ip_forward";
/// The IPv6 forwarding sysctl (every interface's).
pub const IP6_FORWARD: &str = "net.ipv6.conf.all.forwarding";

/// Sets `net.ipv4.ip_forward` back to `was`, as the `tiflow up` on `tun`
/// found it, unless another live `tiflow up` in this namespace may need
/// it on. Returns whether it was set.
pub fn restore_ip_forward(tun: &str, was: &str) -> io::Result<bool> {
    restore_forwarding(tun, IP_FORWARD, was)
}

/// Sets the forwarding sysctl `key` ([`IP_FORWARD`] or [`IP6_FORWARD`])
/// back to `was`, as the `tiflow up` on `tun` found it, unless another
/// live `tiflow up` in this namespace may need it on. Returns whether it
/// was set.
pub fn restore_forwarding(tun: &str, key: &str, was: &str) -> io::Result<bool> {
    if state::others_alive(tun) {
        return Ok(false);
    }
    host::set_sysctl(key, was)?;
    Ok(true)
}

/// `tiflow down`.
pub fn run(args: &DownArgs) -> Result<(), DownError> {
    host::check_net_admin()?;
    let tun = &args.tun;
    let left = remove_leftovers(tun)?;
    let mut done = Vec::new();
    if left.table {
        done.push(format!(
            "deleted nftables table {} {}",
            netfilter::FAMILY.name(),
            netfilter::table_name(tun)
        ));
    }
    if left.forward_accepts > 0 {
        done.push(format!(
            "removed {} iptables/ip6tables FORWARD rules tagged tiflow:{tun}",
            left.forward_accepts
        ));
    }
    let forwarding = [
        (IP_FORWARD, &left.ip_forward_was),
        (IP6_FORWARD, &left.ip6_forward_was),
    ];
    for (key, was) in forwarding {
        let Some(was) = was else { continue };
        let restored = restore_forwarding(tun, key, was).map_err(|source| DownError::Io {
            what: format!("restore {key}"),
            source,
        })?;
        done.push(if restored {
            format!("restored {key} = {was}")
        } else {
            format!("left {key} on: another tiflow up runs here")
        });
    }
    if left.state_file {
        done.push("removed its state file".to_owned());
    }
    if done.is_empty() {
        println!("tiflow down: nothing left by a tiflow up on {tun} in this network namespace");
    } else {
        info!(%tun, "leftovers removed");
        println!("tiflow down: {tun}: {}", done.join("; "));
    }
    Ok(())
}
