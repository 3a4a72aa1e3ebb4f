//! Helpers of the live tests: `tiflow up` processes in network namespaces,
//! a NAT middlebox, kernel-TCP programs (std sockets opened inside the
//! namespaces). Everything is bounded in time and removed on drop.
#![allow(dead_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ti_testnet::netns::{self, NetNs};
use ti_testnet::payload::StreamDigest;
/// Deterministic test data and SHA-256 (`ti_testnet::payload`).
#[allow(unused_imports)] // Not every test binary uses both.
pub use ti_testnet::payload::{data, sha256};
use ti_tools::control::{self, ControlAddr, StatusReport};

/// The built `tiflow` binary.
pub const TIFLOW: &str = env!("CARGO_BIN_EXE_tiflow");

/// Longest any single wait in these tests lasts.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Fails the test with a clear message when namespaces, TUN devices or the
/// commands the test needs are not available (it never passes silently).
pub fn require_root(commands: &[(&str, &str)]) {
    if let Err(e) = netns::check_privileges() {
        panic!("this test needs root and network namespaces: {e}");
    }
    for (command, package) in commands {
        if ti_tools::host::which(command).is_none() {
            panic!("this test needs `{command}`: apt-get install {package}");
        }
    }
}

/// A scratch directory for one test, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("live-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs `tiflow args...` directly (for commands that touch no network).
pub fn tiflow(args: &[&str]) -> Output {
    let out = Command::new(TIFLOW)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run tiflow");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "tiflow panicked: {stderr}");
    out
}

/// Runs `tiflow args...` inside `ns` and waits for it (bounded by the
/// command itself exiting early: used for commands that fail at once).
pub fn tiflow_in(ns: &NetNs, args: &[&str]) -> Output {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), TIFLOW])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run tiflow in namespace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "tiflow panicked: {stderr}");
    out
}

/// A `tiflow up` in a namespace; stopped (stdin closed, then killed if it
/// lingers) when dropped.
pub struct Up {
    pub child: Child,
    stdin: Option<ChildStdin>,
    pub log: PathBuf,
    /// The `--control` file (empty for [`Up::start_default_control`]).
    pub control: PathBuf,
    /// The default (abstract) control socket of its namespace, when it was
    /// started without `--control`.
    pub default_control: Option<ControlAddr>,
}

impl Up {
    /// Starts `tiflow -v up --exit-on-stdin-close --control DIR/NAME.sock args...`
    /// in `ns` and waits until its control socket answers.
    pub fn start(ns: &NetNs, scratch: &Scratch, name: &str, args: &[&str]) -> Up {
        let mut up = Up::spawn(ns, scratch, name, args);
        up.wait_ready();
        up
    }

    /// Like [`Up::start`], with `RUST_LOG` set to `filter` (for debug lines
    /// of one module, such as the stack's resume attempts).
    pub fn start_logging(
        ns: &NetNs,
        scratch: &Scratch,
        name: &str,
        args: &[&str],
        filter: &str,
    ) -> Up {
        let mut up = Up::spawn_with(ns, scratch, name, args, Some(filter));
        up.wait_ready();
        up
    }

    /// Starts `tiflow -v up --exit-on-stdin-close args...` in `ns` without
    /// `--control` (its control socket is the abstract `@tiflow/TUN` of
    /// `ns`) and waits until it answers there. Ask it with
    /// [`Up::status_in`].
    pub fn start_default_control(ns: &NetNs, scratch: &Scratch, name: &str, args: &[&str]) -> Up {
        let mut up = Up::spawn_limited(ns, scratch, name, args, None, None, false);
        let addr = up.default_control.clone().expect("default control");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = up.child.try_wait().expect("try_wait") {
                panic!(
                    "tiflow up exited ({status}) before it was ready:\n{}",
                    up.log_text()
                );
            }
            if ns.enter(|| control::status(&addr)).expect("enter").is_ok() {
                return up;
            }
            assert!(
                Instant::now() < deadline,
                "tiflow up not ready in 15 s:\n{}",
                up.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The status of an [`Up::start_default_control`] in `ns`, asked from
    /// inside `ns`.
    pub fn status_in(&self, ns: &NetNs) -> StatusReport {
        let addr = self
            .default_control
            .clone()
            .expect("started without --control");
        ns.enter(|| control::status(&addr))
            .expect("enter")
            .expect("status")
    }

    /// Starts it without waiting.
    pub fn spawn(ns: &NetNs, scratch: &Scratch, name: &str, args: &[&str]) -> Up {
        Up::spawn_with(ns, scratch, name, args, None)
    }

    /// Like [`Up::start`], with the open-file limit (soft and hard) set to
    /// `nofile` (so `tiflow up` cannot raise it).
    pub fn start_with_file_limit(
        ns: &NetNs,
        scratch: &Scratch,
        name: &str,
        args: &[&str],
        nofile: u32,
    ) -> Up {
        let mut up = Up::spawn_limited(ns, scratch, name, args, None, Some(nofile), true);
        up.wait_ready();
        up
    }

    fn spawn_with(
        ns: &NetNs,
        scratch: &Scratch,
        name: &str,
        args: &[&str],
        filter: Option<&str>,
    ) -> Up {
        Up::spawn_limited(ns, scratch, name, args, filter, None, true)
    }

    /// Starts it; with `--control DIR/NAME.sock` if `control_file`, else
    /// with the default control socket.
    fn spawn_limited(
        ns: &NetNs,
        scratch: &Scratch,
        name: &str,
        args: &[&str],
        filter: Option<&str>,
        nofile: Option<u32>,
        control_file: bool,
    ) -> Up {
        let log = scratch.path(&format!("{name}.log"));
        let (control, default_control) = if control_file {
            (scratch.path(&format!("{name}.sock")), None)
        } else {
            let tun = args
                .iter()
                .position(|a| *a == "--tun")
                .and_then(|i| args.get(i + 1))
                .unwrap_or(&"tiflow0");
            (PathBuf::new(), Some(ControlAddr::default_for(tun)))
        };
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        // `sh` and `ip netns exec` exec in place: the child is tiflow.
        let mut command = match nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$@\""), "sh", "ip"]);
                c
            }
            None => Command::new("ip"),
        };
        command.args([
            "netns",
            "exec",
            ns.name(),
            TIFLOW,
            "-v",
            "up",
            "--exit-on-stdin-close",
        ]);
        if control_file {
            command.arg("--control").arg(&control);
        }
        command.args(args);
        match filter {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start tiflow up");
        let stdin = child.stdin.take();
        Up {
            child,
            stdin,
            log,
            control,
            default_control,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "tiflow up exited ({status}) before it was ready:\n{}",
                    self.log_text()
                );
            }
            if control::status(&self.control).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tiflow up not ready in 15 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn status(&self) -> StatusReport {
        control::status(&self.control).expect("status")
    }

    /// Polls the status until `f` holds (bounded).
    pub fn wait_status(
        &self,
        what: &str,
        mut f: impl FnMut(&StatusReport) -> bool,
    ) -> StatusReport {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let report = self.status();
            if f(&report) {
                return report;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status {report:#?}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Closes stdin and waits (bounded) for the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The demo's NAT topology (see `ti_tools::demo::NatTopology`).
pub struct NatTopology(pub ti_tools::demo::NatTopology);

impl NatTopology {
    pub fn new(tag: &str) -> NatTopology {
        NatTopology(ti_tools::demo::NatTopology::build(tag).expect("build the NAT topology"))
    }

    /// The middlebox loses every mapping and comes back with another address.
    pub fn lose_state(&self) {
        self.0.lose_state().expect("middlebox state loss");
    }
}

impl std::ops::Deref for NatTopology {
    type Target = ti_tools::demo::NatTopology;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// `tiflow up` on both hosts of `net`: the server's serves stack port `port`
/// to the program at 127.0.0.1:`port` (exposed on the host's `port`), the
/// client's forwards 127.0.0.1:`port` to it through the NAT. `extra` goes to
/// both; `log` is a `RUST_LOG` filter for both. Returns (server, client).
pub fn up_pair(
    net: &NatTopology,
    scratch: &Scratch,
    port: u16,
    extra: &[&str],
    log: Option<&str>,
) -> (Up, Up) {
    let serve = format!("{port}={port}");
    let expose = port.to_string();
    let forward = format!("127.0.0.1:{port}=10.10.2.2:{port}");
    let server_args = [
        &["--address", "10.0.2.1/24", "--serve", &serve],
        &["--expose", &expose][..],
        extra,
    ]
    .concat();
    let client_args = [
        &["--address", "10.0.1.1/24", "--masquerade"][..],
        &["--forward", &forward],
        extra,
    ]
    .concat();
    let start = |ns: &NetNs, name: &str, args: &[&str]| match log {
        Some(filter) => Up::start_logging(ns, scratch, name, args, filter),
        None => Up::start(ns, scratch, name, args),
    };
    let server = start(&net.server, "server", &server_args);
    let client = start(&net.client, "client", &client_args);
    (server, client)
}

/// Resets `s` as a program does: `SO_LINGER` on with zero time, then close
/// (the kernel sends a RST). Returns the time just before the close.
pub fn reset(s: TcpStream) -> Instant {
    rustix::net::sockopt::set_socket_linger(&s, Some(Duration::ZERO)).expect("SO_LINGER");
    let at = Instant::now();
    drop(s);
    at
}

/// How a program's reading ended: after `bytes`, with a clean end of
/// stream (`Ok`) or an error (`WouldBlock`: nothing for the whole `quiet`
/// time), at `at`.
#[derive(Debug)]
pub struct ReadEnd {
    pub bytes: u64,
    pub outcome: Result<(), io::ErrorKind>,
    pub at: Instant,
}

/// Reads `s` until its end of stream or an error, giving up after `quiet`
/// without a byte.
pub fn read_until_end(s: &mut TcpStream, quiet: Duration) -> ReadEnd {
    s.set_read_timeout(Some(quiet)).expect("timeout");
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let outcome = match s.read(&mut buf) {
            Ok(0) => Ok(()),
            Ok(n) => {
                bytes += n as u64;
                continue;
            }
            Err(e) => Err(e.kind()),
        };
        return ReadEnd {
            bytes,
            outcome,
            at: Instant::now(),
        };
    }
}

/// Listens on `addr` inside `ns`.
pub fn listen_in(ns: &NetNs, addr: &str) -> TcpListener {
    ns.enter(|| TcpListener::bind(addr))
        .expect("enter")
        .unwrap_or_else(|e| panic!("listen on {addr}: {e}"))
}

/// Connects to `addr` from inside `ns`.
pub fn connect_in(ns: &NetNs, addr: &str) -> TcpStream {
    let target: SocketAddr = addr.parse().expect("address");
    ns.enter(|| TcpStream::connect_timeout(&target, Duration::from_secs(10)))
        .expect("enter")
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Accepts one connection (bounded).
pub fn accept_bounded(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + DEADLINE;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).expect("blocking");
                return s;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no connection in {DEADLINE:?}");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// A kernel-TCP echo server (an unmodified program): accepts one
/// connection, echoes everything, closes its side at end of stream.
/// Returns how many bytes it echoed.
pub fn echo_server(listener: TcpListener) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut s = accept_bounded(&listener);
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        s.set_write_timeout(Some(DEADLINE)).expect("timeout");
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf).expect("echo read");
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).expect("echo write");
            total += n as u64;
        }
        s.shutdown(Shutdown::Write).expect("echo shutdown");
        total
    })
}

/// Reads `s` to its end (bounded) and returns (length, SHA-256).
pub fn read_all_sha(mut s: TcpStream) -> JoinHandle<(u64, [u8; 32])> {
    std::thread::spawn(move || {
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let mut digest = StreamDigest::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            digest.update(&buf[..n]);
        }
        digest.finish()
    })
}

/// Names of namespaces that exist now.
pub fn namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}
