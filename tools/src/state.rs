//! The small state file of a running `tiflow up`: what it changed on the
//! host that outlives it if it dies without cleaning up (a SIGKILL, a
//! crash, a power cut of the process), so that `tiflow down`, or the next
//! `tiflow up` on the same TUN, can put the host back as it was.
//!
//! One file per network namespace and TUN device (the namespace's inode
//! in the name: `/run` is shared by every namespace), plain `key=value`
//! lines. The nftables table needs no record (its name follows from the
//! TUN's); the file holds the rest: the process, the `ip_forward` and
//! IPv6 `forwarding` values found at start when `tiflow up` changed them,
//! whether iptables (or ip6tables) rules were added.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Where the state files live.
pub const STATE_DIR: &str = "/run/tiflow/state";

/// What a `tiflow up` changed that its own exit would have undone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpState {
    /// The process.
    pub pid: u32,
    /// `net.ipv4.ip_forward` as found before `tiflow up` turned it on
    /// (`None`: left as it was).
    pub ip_forward_was: Option<String>,
    /// `net.ipv6.conf.all.forwarding` as found before `tiflow up` turned it
    /// on (`None`: left as it was).
    pub ip6_forward_was: Option<String>,
    /// Whether tagged iptables (or ip6tables) `FORWARD` rules were added.
    pub forward_accepts: bool,
}

impl UpState {
    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut s = format!("pid={}\n", self.pid);
        if let Some(v) = &self.ip_forward_was {
            s += &format!("ip_forward_was={v}\n");
        }
        if let Some(v) = &self.ip6_forward_was {
            s += &format!("ip6_forward_was={v}\n");
        }
        s += &format!("forward_accepts={}\n", u8::from(self.forward_accepts));
        s
    }

    /// Reads a file's text; unknown keys are ignored, a bad value is an
    /// error naming it.
    pub fn parse(text: &str) -> Result<UpState, String> {
        let mut state = UpState::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("not key=value: {line:?}"));
            };
            match key {
                "pid" => state.pid = value.parse().map_err(|_| format!("bad pid {value:?}"))?,
                "ip_forward_was" => {
                    if !matches!(value, "0" | "1") {
                        return Err(format!("bad ip_forward_was {value:?}"));
                    }
                    state.ip_forward_was = Some(value.to_owned());
                }
                "ip6_forward_was" => {
                    if !matches!(value, "0" | "1" | "2") {
                        return Err(format!("bad ip6_forward_was {value:?}"));
                    }
                    state.ip6_forward_was = Some(value.to_owned());
                }
                "forward_accepts" => state.forward_accepts = value == "1",
                _ => {}
            }
        }
        Ok(state)
    }

    /// Whether the process that wrote the state still runs `tiflow up`.
    pub fn process_alive(&self) -> bool {
        self.pid != 0
            && self.pid != std::process::id()
            && std::fs::read(format!("/proc/{}/cmdline", self.pid))
                .is_ok_and(|cmdline| cmdline.split(|&b| b == 0).any(|arg| arg == b"up"))
    }
}

/// This process's network namespace (its inode number).
fn netns_id() -> io::Result<u64> {
    Ok(std::fs::metadata("/proc/self/ns/net")?.ino())
}

/// The state file of TUN `tun` in this network namespace.
pub fn path(tun: &str) -> io::Result<PathBuf> {
    Ok(PathBuf::from(STATE_DIR).join(format!("{}-{tun}", netns_id()?)))
}

/// Reads the state file of TUN `tun` in this namespace, if there is one.
pub fn read(tun: &str) -> io::Result<Option<UpState>> {
    match std::fs::read_to_string(path(tun)?) {
        Ok(text) => UpState::parse(&text)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the state file of TUN `tun` (replacing it atomically).
pub fn write(tun: &str, state: &UpState) -> io::Result<PathBuf> {
    let path = path(tun)?;
    std::fs::create_dir_all(STATE_DIR)?;
    let partial = path.with_extension("partial");
    std::fs::write(&partial, state.to_text())?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

/// Removes the state file of TUN `tun` (nothing if there is none).
pub fn remove(tun: &str) -> io::Result<()> {
    match std::fs::remove_file(path(tun)?) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether another live `tiflow up` (another TUN) in this namespace wrote
/// a state file: it may need forwarding on.
pub fn others_alive(tun: &str) -> bool {
    let Ok(mine) = path(tun) else { return false };
    let Ok(prefix) = netns_id().map(|id| format!("{id}-")) else {
        return false;
    };
    let Ok(entries) = std::fs::read_dir(STATE_DIR) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        entry.path() != mine
            && name.starts_with(&prefix)
            && std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|t| UpState::parse(&t).ok())
                .is_some_and(|s| s.process_alive())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let state = UpState {
            pid: 42,
            ip_forward_was: Some("0".into()),
            ip6_forward_was: Some("0".into()),
            forward_accepts: true,
        };
        assert_eq!(UpState::parse(&state.to_text()), Ok(state));
        let plain = UpState {
            pid: 7,
            ..UpState::default()
        };
        assert_eq!(UpState::parse(&plain.to_text()), Ok(plain));
    }

    #[test]
    fn bad_state_says_what_is_wrong() {
        assert!(
            UpState::parse("pid=x")
                .expect_err("rejected")
                .contains("bad pid")
        );
        assert!(
            UpState::parse("ip_forward_was=7")
                .expect_err("rejected")
                .contains("ip_forward_was")
        );
        assert!(
            UpState::parse("ip6_forward_was=x")
                .expect_err("rejected")
                .contains("ip6_forward_was")
        );
        assert!(
            UpState::parse("garbage")
                .expect_err("rejected")
                .contains("key=value")
        );
        assert_eq!(UpState::parse("future=1\npid=3").map(|s| s.pid), Ok(3));
    }

    #[test]
    fn a_dead_or_foreign_pid_is_not_alive() {
        let me = UpState {
            pid: std::process::id(),
            ..UpState::default()
        };
        assert!(!me.process_alive(), "this process is not another tiflow up");
        let none = UpState::default();
        assert!(!none.process_alive());
    }
}
