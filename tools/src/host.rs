//! The host around `tiflow up` and `tiflow demo`: privileges, external
//! commands (`ip`, `iptables`, `conntrack`), sysctls, and undoing what was
//! changed.
//!
//! Owns every change made to the host's network configuration outside the
//! TUN device itself, and the [`Undo`] list that reverts them on exit (also
//! during a panic). It must never touch an interface, rule or sysctl it did not
//! create or change itself, and never kill a process.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bit of `CAP_NET_ADMIN` in the capability sets (capabilities(7)).
const CAP_NET_ADMIN: u32 = 12;

/// A missing privilege.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivilegeError {
    /// The effective capability set lacks `CAP_NET_ADMIN`.
    #[error(
        "CAP_NET_ADMIN is missing (effective uid {uid}): tiflow creates a TUN device and \
         changes addresses and routes; run it as root (sudo tiflow ...) or grant the \
         capability (setcap cap_net_admin+ep $(command -v tiflow))"
    )]
    NoNetAdmin {
        /// The effective user id (`u32::MAX` when unknown).
        uid: u32,
    },
    /// `/proc/self/status` could not be read or has no `CapEff` line.
    #[error("cannot tell whether CAP_NET_ADMIN is held: {0}")]
    Unknown(String),
}

/// Checks the text of `/proc/self/status` for `CAP_NET_ADMIN` in the
/// effective set. Pure, so tests can feed it any process's status.
pub fn check_net_admin_in(status: &str) -> Result<(), PrivilegeError> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    // "Uid:\treal\teffective\tsaved\tfs"
    let uid = field("Uid:")
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u32::MAX);
    let cap_eff = field("CapEff:")
        .ok_or_else(|| PrivilegeError::Unknown("no CapEff line in /proc/self/status".into()))?;
    let caps = u64::from_str_radix(cap_eff, 16)
        .map_err(|_| PrivilegeError::Unknown(format!("unreadable CapEff {cap_eff:?}")))?;
    if caps & (1 << CAP_NET_ADMIN) == 0 {
        return Err(PrivilegeError::NoNetAdmin { uid });
    }
    Ok(())
}

/// Checks that this process holds `CAP_NET_ADMIN`.
pub fn check_net_admin() -> Result<(), PrivilegeError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| PrivilegeError::Unknown(format!("cannot read /proc/self/status: {e}")))?;
    check_net_admin_in(&status)
}

/// A command the host must have, and the Debian package that provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    /// The command's name.
    pub command: &'static str,
    /// The Debian package to install for it.
    pub package: &'static str,
}

/// iproute2's `ip`.
pub const IP: Tool = Tool {
    command: "ip",
    package: "iproute2",
};
/// `iptables`.
pub const IPTABLES: Tool = Tool {
    command: "iptables",
    package: "iptables",
};
/// nftables' `nft`.
pub const NFT: Tool = Tool {
    command: "nft",
    package: "nftables",
};
/// conntrack-tools' `conntrack`.
pub const CONNTRACK: Tool = Tool {
    command: "conntrack",
    package: "conntrack",
};

/// Commands missing from `PATH`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", missing_message(.0))]
pub struct MissingTools(pub Vec<Tool>);

fn missing_message(tools: &[Tool]) -> String {
    let commands: Vec<&str> = tools.iter().map(|t| t.command).collect();
    let mut packages: Vec<&str> = tools.iter().map(|t| t.package).collect();
    packages.dedup();
    format!(
        "missing command{} {} (install with: apt-get install {})",
        if commands.len() > 1 { "s" } else { "" },
        commands.join(", "),
        packages.join(" ")
    )
}

/// Finds `command` in `PATH` (and in the sbin directories, which a
/// non-login root shell may lack).
pub fn which(command: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(command))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Checks that every tool is installed; the error names each missing one
/// and the packages to install.
pub fn require(tools: &[Tool]) -> Result<(), MissingTools> {
    let missing: Vec<Tool> = tools
        .iter()
        .copied()
        .filter(|t| which(t.command).is_none())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingTools(missing))
    }
}

/// An external command that failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// It could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// It exited unsuccessfully.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
}

/// Runs `program args...`, returning its standard output.
pub fn run(program: &str, args: &[&str]) -> Result<String, CommandError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let resolved = which(program).unwrap_or_else(|| PathBuf::from(program));
    let out = Command::new(resolved)
        .args(args)
        .output()
        .map_err(|source| CommandError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let stderr = if stderr.is_empty() {
            out.status.to_string()
        } else {
            stderr
        };
        Err(CommandError::Failed { command, stderr })
    }
}

/// Reads a sysctl (dotted key) of the current network namespace.
pub fn sysctl(key: &str) -> std::io::Result<String> {
    std::fs::read_to_string(sysctl_path(key)).map(|s| s.trim().to_owned())
}

/// Writes a sysctl (dotted key) of the current network namespace.
pub fn set_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(sysctl_path(key), value)
}

/// Reads `net.ipv6.conf.IFNAME.KEY` (by path: an interface name may hold
/// a dot, which the dotted form cannot say).
pub fn ipv6_conf(ifname: &str, key: &str) -> std::io::Result<String> {
    std::fs::read_to_string(ipv6_conf_path(ifname, key)).map(|s| s.trim().to_owned())
}

/// Writes `net.ipv6.conf.IFNAME.KEY` (by path, as [`ipv6_conf`]).
pub fn set_ipv6_conf(ifname: &str, key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(ipv6_conf_path(ifname, key), value)
}

fn ipv6_conf_path(ifname: &str, key: &str) -> PathBuf {
    Path::new("/proc/sys/net/ipv6/conf").join(ifname).join(key)
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// One thing to revert.
enum Action {
    Run(String, Vec<String>),
    Sysctl(String, String),
    Remove(PathBuf),
    Call(Box<dyn FnOnce() + Send>),
}

/// Changes to revert, undone in reverse order when dropped.
#[derive(Default)]
pub struct Undo {
    actions: Vec<Action>,
}

impl fmt::Debug for Undo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Undo({} actions)", self.actions.len())
    }
}

impl Undo {
    /// Runs `program args` at undo time.
    pub fn run(&mut self, program: &str, args: &[&str]) {
        self.actions.push(Action::Run(
            program.to_owned(),
            args.iter().map(|s| (*s).to_owned()).collect(),
        ));
    }

    /// Sets `key` back to `value` at undo time.
    pub fn sysctl(&mut self, key: &str, value: &str) {
        self.actions
            .push(Action::Sysctl(key.to_owned(), value.to_owned()));
    }

    /// Calls `f` at undo time (it reports its own failures).
    pub fn call(&mut self, f: impl FnOnce() + Send + 'static) {
        self.actions.push(Action::Call(Box::new(f)));
    }

    /// Removes the file at `path` at undo time.
    pub fn remove(&mut self, path: &Path) {
        self.actions.push(Action::Remove(path.to_owned()));
    }

    /// Reverts everything now, newest first.
    pub fn undo_all(&mut self) {
        while let Some(action) = self.actions.pop() {
            match action {
                Action::Run(program, args) => {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    if let Err(e) = run(&program, &args) {
                        tracing::warn!(error = %e, "cleanup step failed");
                    }
                }
                Action::Sysctl(key, value) => {
                    if let Err(e) = set_sysctl(&key, &value) {
                        tracing::warn!(%key, error = %e, "cannot restore sysctl");
                    }
                }
                Action::Call(f) => f(),
                Action::Remove(path) => match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove"),
                },
            }
        }
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        self.undo_all();
    }
}

/// `EMFILE` or `ENFILE`: the process or the system has no descriptor left.
pub(crate) fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(Errno::from_io_error(e), Some(Errno::MFILE | Errno::NFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "Name:\ttiflow\nUid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\n";
    const NOBODY: &str =
        "Name:\ttiflow\nUid:\t65534\t65534\t65534\t65534\nCapEff:\t0000000000000000\n";

    #[test]
    fn root_has_net_admin() {
        assert_eq!(check_net_admin_in(ROOT), Ok(()));
    }

    #[test]
    fn without_cap_net_admin_the_error_says_what_to_do() {
        let err = check_net_admin_in(NOBODY).expect_err("no capability");
        assert_eq!(err, PrivilegeError::NoNetAdmin { uid: 65534 });
        let text = err.to_string();
        assert!(text.contains("CAP_NET_ADMIN"), "{text}");
        assert!(text.contains("root"), "{text}");
    }

    #[test]
    fn only_cap_net_admin_is_enough() {
        let status = "Uid:\t1000\t1000\t1000\t1000\nCapEff:\t0000000000001000\n";
        assert_eq!(check_net_admin_in(status), Ok(()));
        let status = "Uid:\t1000\t1000\t1000\t1000\nCapEff:\t0000000000200000\n";
        assert!(
            check_net_admin_in(status).is_err(),
            "CAP_SYS_ADMIN alone is not enough"
        );
    }

    #[test]
    fn unreadable_status_is_unknown() {
        assert!(matches!(
            check_net_admin_in("Name:\tx\n"),
            Err(PrivilegeError::Unknown(_))
        ));
        assert!(matches!(
            check_net_admin_in("CapEff:\tzz\n"),
            Err(PrivilegeError::Unknown(_))
        ));
    }

    #[test]
    fn missing_tools_name_their_packages() {
        let err = MissingTools(vec![IPTABLES, CONNTRACK]);
        assert_eq!(
            err.to_string(),
            "missing commands iptables, conntrack (install with: apt-get install iptables conntrack)"
        );
    }
}
