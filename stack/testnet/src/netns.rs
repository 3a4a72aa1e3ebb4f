//! Network-namespace harness for the real-kernel tests and `tiflow demo`.
//!
//! Owns named network namespaces (`ip netns add`), each deleted when its
//! [`NetNs`] is dropped, also during a panic. Everything it configures lives
//! inside those namespaces: veth pairs are created with both ends already in
//! their namespaces, and it must never add an interface, address or route to the
//! root namespace, nor kill any process. It shells out to iproute2's `ip`; the
//! only system call it makes itself is setns(2), on a fresh thread
//! ([`NetNs::enter`]).

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ti_stack::device::tun::{OffloadRequest, TunDevice};

/// Where iproute2 keeps the named namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// Longest Linux interface name (`IFNAMSIZ - 1`).
pub const IFNAME_MAX: usize = 15;

/// Namespace names tried per [`NetNs::create`] before giving up.
const NAME_ATTEMPTS: u32 = 16;

/// Bits of the capabilities the harness needs (see capabilities(7)).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// Per-process counter making namespace names unique.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One missing prerequisite for network-namespace work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Requirement {
    /// Neither root nor holding the needed capabilities.
    #[error(
        "not privileged: running as uid {uid} without {missing} \
         (run as root, or grant CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    )]
    Privileges {
        /// Effective user id.
        uid: u32,
        /// The missing capabilities, e.g. `"CAP_NET_ADMIN"`.
        missing: String,
    },
    /// The `ip` command is not in `PATH`.
    #[error("the `ip` command was not found in PATH: install package iproute2")]
    IpMissing,
    /// `ip` exists but is not iproute2's (busybox's has no `netns`).
    #[error("`ip -V` printed {0:?}, not iproute2's `ip`: install package iproute2")]
    IpNotIproute2(String),
    /// `/dev/net/tun` is absent or not a character device.
    #[error(
        "/dev/net/tun is missing ({0}): load the tun module (modprobe tun), \
         or in a container pass the device (--device /dev/net/tun)"
    )]
    TunMissing(String),
}

/// Errors of the namespace harness.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Prerequisites are missing; every missing one is listed.
    #[error("cannot use network namespaces: {}", list(.0))]
    Unsupported(Vec<Requirement>),
    /// The namespace name prefix is empty or has characters other than
    /// ASCII letters, digits, `_` and `-`.
    #[error("invalid namespace name prefix {0:?} (use ASCII letters, digits, '_' or '-')")]
    InvalidPrefix(String),
    /// Every name tried for a new namespace already existed.
    #[error("no free namespace name for prefix {0:?}")]
    NoFreeName(String),
    /// IPv6 did not come up on an interface in time.
    #[error("IPv6 not ready on {ifname} in namespace {name}")]
    NotReady {
        /// The namespace.
        name: String,
        /// The interface.
        ifname: String,
    },
    /// A command could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not start.
        source: io::Error,
    },
    /// A command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it wrote to stderr (trimmed).
        stderr: String,
    },
    /// setns(2) into the namespace failed.
    #[error("cannot enter network namespace {name}: {source}")]
    Enter {
        /// The namespace.
        name: String,
        /// The OS error.
        source: io::Error,
    },
    /// A netfilter request over netlink failed in the namespace.
    #[error("netfilter in network namespace {name}: {source}")]
    Netfilter {
        /// The namespace.
        name: String,
        /// What the kernel said.
        source: ti_nfnetlink::Error,
    },
    /// A sysctl could not be written.
    #[error("cannot set sysctl {key} in namespace {name}: {source}")]
    Sysctl {
        /// The namespace.
        name: String,
        /// The sysctl key, e.g. `net.ipv4.ip_forward`.
        key: String,
        /// The OS error.
        source: io::Error,
    },
}

fn list(missing: &[Requirement]) -> String {
    missing
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks everything the harness needs: root or `CAP_NET_ADMIN` plus
/// `CAP_SYS_ADMIN` (setns and `ip netns add`), iproute2's `ip` in `PATH`, and
/// `/dev/net/tun`. The error lists every missing item and how to fix it, so a
/// test can fail with it instead of passing silently.
pub fn check_privileges() -> Result<(), NetnsError> {
    let mut missing = Vec::new();
    if let Some(req) = check_capabilities() {
        missing.push(req);
    }
    match Command::new("ip").arg("-V").output() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(Requirement::IpMissing),
        Err(e) => missing.push(Requirement::IpNotIproute2(e.to_string())),
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !text.contains("iproute2") {
                missing.push(Requirement::IpNotIproute2(text));
            }
        }
    }
    match std::fs::metadata("/dev/net/tun") {
        Ok(m) if m.file_type().is_char_device() => {}
        Ok(_) => missing.push(Requirement::TunMissing("not a character device".into())),
        Err(e) => missing.push(Requirement::TunMissing(e.to_string())),
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(NetnsError::Unsupported(missing))
    }
}

/// Reads the effective uid and capabilities from `/proc/self/status`.
fn check_capabilities() -> Option<Requirement> {
    let status = match std::fs::read_to_string("/proc/self/status") {
        Ok(s) => s,
        Err(e) => {
            return Some(Requirement::Privileges {
                uid: u32::MAX,
                missing: format!("(cannot read /proc/self/status: {e})"),
            });
        }
    };
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
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0);
    let missing: Vec<&str> = [
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| cap_eff & (1u64 << bit) == 0)
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        None
    } else {
        Some(Requirement::Privileges {
            uid,
            missing: missing.join(" and "),
        })
    }
}

/// Runs `cmd`; an unsuccessful exit is an error carrying its stderr.
fn exec(cmd: &mut Command) -> Result<Output, NetnsError> {
    let command = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|source| NetnsError::Spawn {
        command: command.clone(),
        source,
    })?;
    succeeded(command, out)
}

/// `out` if its command exited successfully; otherwise an error carrying
/// its stderr.
fn succeeded(command: String, out: Output) -> Result<Output, NetnsError> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(NetnsError::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// A named network namespace, deleted on drop.
///
/// Its name is `prefix` + pid (hex) + `-` + counter (hex), at most
/// [`IFNAME_MAX`] characters, so it is also valid as an interface name.
pub struct NetNs {
    name: String,
}

impl fmt::Debug for NetNs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NetNs").field(&self.name).finish()
    }
}

impl NetNs {
    /// Creates a fresh namespace whose name starts with (a prefix of) `prefix`,
    /// and brings its loopback interface up.
    pub fn create(prefix: &str) -> Result<NetNs, NetnsError> {
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if prefix.is_empty() || !prefix.chars().all(valid) {
            return Err(NetnsError::InvalidPrefix(prefix.to_owned()));
        }
        let pid = std::process::id();
        for _ in 0..NAME_ATTEMPTS {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let tail = format!("{pid:x}-{n:x}");
            let keep = IFNAME_MAX.saturating_sub(tail.len()).min(prefix.len());
            let name = format!("{}{tail}", &prefix[..keep]);
            match exec(Command::new("ip").args(["netns", "add", &name])) {
                Ok(_) => {
                    // From here on, Drop deletes the namespace whatever happens.
                    let ns = NetNs { name };
                    ns.up("lo")?;
                    tracing::debug!(netns = %ns.name, "created network namespace");
                    return Ok(ns);
                }
                // A leftover of an earlier process with the same pid: skip it.
                Err(NetnsError::Failed { stderr, .. }) if stderr.contains("exists") => continue,
                Err(e) => return Err(e),
            }
        }
        Err(NetnsError::NoFreeName(prefix.to_owned()))
    }

    /// The namespace's name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(&self.name)
    }

    /// Runs `argv` inside the namespace (`ip netns exec NAME argv...`). A
    /// non-zero exit is an error that includes the command's stderr.
    pub fn run(&self, argv: &[&str]) -> Result<Output, NetnsError> {
        exec(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(argv),
        )
    }

    /// Runs `argv` inside the namespace with `input` on its standard input
    /// (e.g. `nft -f -` and a ruleset). A non-zero exit is an error that
    /// includes the command's stderr.
    pub fn run_with_input(&self, argv: &[&str], input: &str) -> Result<Output, NetnsError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        let command = format!("{cmd:?}").replace('"', "");
        let spawn_err = |source| NetnsError::Spawn {
            command: command.clone(),
            source,
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that exits without reading all of it fails below.
            let _ = stdin.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        succeeded(command, out)
    }

    /// Runs `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) -> Result<Output, NetnsError> {
        exec(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Creates a veth pair with end `a_if` in namespace `a` and end `b_if` in
    /// namespace `b` (`a` and `b` may be the same). Both ends are created
    /// directly in their namespaces, never in the root one, and left down.
    pub fn veth_pair(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) -> Result<(), NetnsError> {
        exec(Command::new("ip").args([
            "link", "add", "name", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if,
            "netns", &b.name,
        ]))
        .map(drop)
    }

    /// Adds the address `cidr` (e.g. `10.1.0.1/24`) to interface `ifname`.
    pub fn add_addr(&self, ifname: &str, cidr: &str) -> Result<(), NetnsError> {
        self.ip(&["addr", "add", cidr, "dev", ifname]).map(drop)
    }

    /// Adds the IPv6 address `cidr` (e.g. `fd00:1::1/64`) to interface
    /// `ifname`, without duplicate address detection (`nodad`): usable at
    /// once, not after the kernel's DAD delay.
    pub fn add_addr6(&self, ifname: &str, cidr: &str) -> Result<(), NetnsError> {
        self.ip(&["-6", "addr", "add", cidr, "dev", ifname, "nodad"])
            .map(drop)
    }

    /// Waits (at most `timeout`) until IPv6 runs on `ifname`: its
    /// link-local address exists, which the kernel adds only once the link
    /// is ready (carrier seen by linkwatch, up to a second after `up`), and
    /// from when it answers neighbour solicitations. Before that the first
    /// packets to a new neighbour wait a second for a retry.
    pub fn wait_ipv6_ready(&self, ifname: &str, timeout: Duration) -> Result<(), NetnsError> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.ip(&["-6", "-o", "addr", "show", "dev", ifname, "scope", "link"])?;
            if !out.stdout.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(NetnsError::NotReady {
                    name: self.name.clone(),
                    ifname: ifname.to_owned(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Adds an IPv6 route to `dest` (a CIDR or `default`) through the
    /// gateway `via`.
    pub fn add_route6(&self, dest: &str, via: &str) -> Result<(), NetnsError> {
        self.ip(&["-6", "route", "add", dest, "via", via]).map(drop)
    }

    /// Adds an IPv6 route to `dest` (a CIDR or `default`) directly out of
    /// `ifname`.
    pub fn add_dev_route6(&self, dest: &str, ifname: &str) -> Result<(), NetnsError> {
        self.ip(&["-6", "route", "add", dest, "dev", ifname])
            .map(drop)
    }

    /// Brings interface `ifname` up.
    pub fn up(&self, ifname: &str) -> Result<(), NetnsError> {
        self.ip(&["link", "set", "dev", ifname, "up"]).map(drop)
    }

    /// Sets the MTU of interface `ifname`.
    pub fn set_mtu(&self, ifname: &str, mtu: usize) -> Result<(), NetnsError> {
        self.ip(&["link", "set", "dev", ifname, "mtu", &mtu.to_string()])
            .map(drop)
    }

    /// Adds a route to `dest` (a CIDR or `default`) through the gateway `via`.
    pub fn add_route(&self, dest: &str, via: &str) -> Result<(), NetnsError> {
        self.ip(&["route", "add", dest, "via", via]).map(drop)
    }

    /// Adds a route to `dest` (a CIDR or `default`) directly out of `ifname`.
    pub fn add_dev_route(&self, dest: &str, ifname: &str) -> Result<(), NetnsError> {
        self.ip(&["route", "add", dest, "dev", ifname]).map(drop)
    }

    /// Writes the sysctl `key` (dotted, e.g. `net.ipv4.ip_forward`) inside the
    /// namespace (through `/proc/sys` on a thread in the namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.enter(|| std::fs::write(&path, value))?
            .map_err(|source| NetnsError::Sysctl {
                name: self.name.clone(),
                key: key.to_owned(),
                source,
            })
    }

    /// Turns on IPv4 and IPv6 forwarding in the namespace (a router).
    pub fn enable_forwarding(&self) -> Result<(), NetnsError> {
        self.sysctl("net.ipv4.ip_forward", "1")?;
        self.sysctl("net.ipv6.conf.all.forwarding", "1")
    }

    /// Turns IPv6 off in the namespace, for interfaces created afterwards too, so
    /// the kernel sends no router or multicast-listener chatter on them.
    pub fn disable_ipv6(&self) -> Result<(), NetnsError> {
        self.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        self.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
    }

    /// Turns IPv6 on in the namespace (for interfaces created afterwards
    /// too) without router solicitations, autoconfiguration or duplicate
    /// address detection: global addresses and routes are only the ones a
    /// test adds, and every address is usable at once.
    pub fn enable_ipv6(&self) -> Result<(), NetnsError> {
        for conf in ["all", "default"] {
            self.sysctl(&format!("net.ipv6.conf.{conf}.disable_ipv6"), "0")?;
            self.sysctl(&format!("net.ipv6.conf.{conf}.accept_ra"), "0")?;
            self.sysctl(&format!("net.ipv6.conf.{conf}.autoconf"), "0")?;
            self.sysctl(&format!("net.ipv6.conf.{conf}.router_solicitations"), "0")?;
            // Link-local addresses usable at once too (no DAD delay).
            self.sysctl(&format!("net.ipv6.conf.{conf}.accept_dad"), "0")?;
        }
        Ok(())
    }

    /// Runs `f` on a fresh thread that first joins the namespace (setns(2),
    /// `CLONE_NEWNET`), and returns its result. Sockets and TUN devices `f`
    /// opens belong to the namespace and keep working from any thread after. A
    /// panic in `f` is resumed in the caller. `f` never runs if joining fails.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let enter_err = |source| NetnsError::Enter {
            name: self.name.clone(),
            source,
        };
        let ns = File::open(self.path()).map_err(enter_err)?;
        std::thread::scope(|s| {
            let thread = s.spawn(move || {
                // SAFETY: `ns` is an open file for the namespace's nsfs bind mount,
                // alive for the whole call; setns(2) only reads the descriptor and
                // moves this thread (not the process: network namespaces are
                // per-thread) into that namespace. This thread is ours and ends
                // after `f`, so no other code ever runs in the namespace by mistake.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                drop(ns);
                Ok(f())
            });
            match thread.join() {
                Ok(result) => result.map_err(enter_err),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Opens the TUN interface `name` inside the namespace and sets its MTU
    /// (kernel side and smoltcp side) to `mtu`. The interface is left down and
    /// without addresses.
    pub fn open_tun(&self, name: &str, mtu: usize) -> io::Result<TunDevice> {
        self.open_tun_with(name, mtu, OffloadRequest::Auto)
    }

    /// [`NetNs::open_tun`], with the TUN's offloads as `offload` says.
    pub fn open_tun_with(
        &self,
        name: &str,
        mtu: usize,
        offload: OffloadRequest,
    ) -> io::Result<TunDevice> {
        let tun = self
            .enter(|| TunDevice::open_with(name, offload))
            .map_err(io::Error::other)??;
        self.set_mtu(tun.name(), mtu).map_err(io::Error::other)?;
        Ok(tun.with_mtu(mtu))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        match exec(Command::new("ip").args(["netns", "del", &self.name])) {
            Ok(_) => tracing::debug!(netns = %self.name, "deleted network namespace"),
            // Already gone (deleted by hand, or by a cleanup script): fine.
            Err(NetnsError::Failed { stderr, .. })
                if stderr.contains("No such file") || !self.path().exists() => {}
            Err(error) => {
                tracing::warn!(netns = %self.name, %error, "cannot delete network namespace");
            }
        }
    }
}
