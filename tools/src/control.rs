//! The control socket of `tiflow up`, and the `tiflow status` and
//! `tiflow fail` commands that use it.
//!
//! Owns the protocol (one JSON request line, one JSON reply line, per
//! connection, over a Unix stream socket), the client side of it, the socket's
//! life, who may use it, and the status table. It never touches a flow
//! itself: the server side hands each request to a handler `tiflow up`
//! provides.
//!
//! The socket is by default the *abstract* Unix socket `@tiflow/NAME` (NAME
//! the TUN device): abstract names belong to the network namespace, so each
//! namespace of a host has its own `tiflow up` on `tiflow0`, and `tiflow
//! status` without flags finds the one of the namespace it runs in. A
//! second `tiflow up` on the same name in the same namespace is refused
//! (the name is taken). An abstract socket has no file permissions, so the
//! server checks each client's credentials (`SO_PEERCRED`): root, or the
//! user `tiflow up` runs as; anyone else gets an error reply. `--control
//! PATH` gives a socket file instead (created mode 0600 at start, removed at
//! exit, a stale one replaced, a live one never), with the same check.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgGroup, Args};
use serde::{Deserialize, Serialize};

/// The prefix of the default (abstract) control socket names: `@tiflow/NAME`.
pub const ABSTRACT_PREFIX: &str = "tiflow/";

/// How long a client waits for a reply, and a server for a request.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest request or reply line accepted.
const MAX_LINE: u64 = 16 << 20;

/// A control socket: an abstract name (of the network namespace) or a file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ControlAddr {
    /// An abstract Unix socket, by its name without the leading NUL
    /// (`tiflow/tiflow0`; shown `@tiflow/tiflow0`). Scoped to the network
    /// namespace of whoever binds or connects.
    Abstract(String),
    /// A socket file.
    Path(PathBuf),
}

impl ControlAddr {
    /// The default control socket of the TUN device `tun`: the abstract
    /// `@tiflow/TUN` of the current network namespace.
    pub fn default_for(tun: &str) -> ControlAddr {
        ControlAddr::Abstract(format!("{ABSTRACT_PREFIX}{tun}"))
    }

    /// `--control` as given: `@NAME` is an abstract socket, anything else
    /// a file.
    pub fn parse(arg: &Path) -> ControlAddr {
        match arg.to_str().and_then(|s| s.strip_prefix('@')) {
            Some(name) if !name.is_empty() => ControlAddr::Abstract(name.to_owned()),
            _ => ControlAddr::Path(arg.to_owned()),
        }
    }

    /// The socket address to bind or connect.
    fn socket_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            ControlAddr::Abstract(name) => SocketAddr::from_abstract_name(name.as_bytes()),
            ControlAddr::Path(path) => SocketAddr::from_pathname(path),
        }
    }

    /// Connects to the socket.
    fn connect(&self) -> std::io::Result<UnixStream> {
        UnixStream::connect_addr(&self.socket_addr()?)
    }
}

impl fmt::Display for ControlAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlAddr::Abstract(name) => write!(f, "@{name}"),
            ControlAddr::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

impl From<&Path> for ControlAddr {
    fn from(path: &Path) -> ControlAddr {
        ControlAddr::parse(path)
    }
}

impl From<&PathBuf> for ControlAddr {
    fn from(path: &PathBuf) -> ControlAddr {
        ControlAddr::parse(path)
    }
}

impl From<PathBuf> for ControlAddr {
    fn from(path: PathBuf) -> ControlAddr {
        ControlAddr::parse(&path)
    }
}

impl From<&ControlAddr> for ControlAddr {
    fn from(addr: &ControlAddr) -> ControlAddr {
        addr.clone()
    }
}

/// A request to `tiflow up`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Every flow and its counters.
    Status,
    /// Abandon the TCP connection of TI-flows so they resume.
    Fail {
        /// One TIFID (12 hex digits), or `None` for every TI-flow.
        tifid: Option<String>,
    },
}

/// One stream carried by `tiflow up`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowStatus {
    /// The TIFID (12 hex digits) of a TI-flow; `None` for legacy TCP and
    /// connections still in their handshake.
    pub tifid: Option<String>,
    /// `resilient`, `legacy` or `connecting`.
    pub mode: String,
    /// The stack's peer (the original one, across resumes).
    pub peer: String,
    /// What the stream is for: `forward LISTEN <- CLIENT` or `serve PORT -> TARGET`.
    pub via: String,
    /// Bytes the local program sent into the flow.
    pub sent: u64,
    /// Bytes the flow delivered towards the local program.
    pub received: u64,
    /// Successful resumes.
    pub resumes: u64,
    /// Resume attempts (each a SYN on a new connection), successful or not.
    #[serde(default)]
    pub resume_attempts: u64,
    /// Failures the old connection recovered from before a resume did
    /// (make before break: it carried data first and was kept).
    #[serde(default)]
    pub recoveries: u64,
    /// Failures detected at this end (each followed by a resume, a
    /// recovery or the loss of the flow).
    #[serde(default)]
    pub failures: u64,
    /// Time to resume in the last outage (failure noticed to the new
    /// connection carrying the flow), in milliseconds.
    pub last_downtime_ms: Option<f64>,
    /// Time to detect the last failure (last byte carried to the failure
    /// noticed), in milliseconds.
    #[serde(default)]
    pub last_detect_ms: Option<f64>,
    /// The last outage as the program saw it (last byte before the failure
    /// to the first byte after the resume), in milliseconds.
    #[serde(default)]
    pub last_gap_ms: Option<f64>,
    /// Bytes resent over all resumes.
    pub resent: u64,
    /// Whether a TCP connection carries the flow now (false while resuming).
    pub attached: bool,
    /// Seconds since `tiflow up` took the connection: a forward's local
    /// connection accepted (its flow's handshake included), a served flow
    /// taken from the stack's accept queue; 0 for one still waiting there
    /// (VIA `accepting`).
    pub age_s: f64,
}

/// What `tiflow up` reports about itself and its flows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The TUN device.
    pub tun: String,
    /// The stack's address with its prefix; both, IPv4 first, separated
    /// by `, ` on a dual-stack stack (`10.0.2.1/24, fd00:2::1/64`).
    pub stack_address: String,
    /// The kernel side of the TUN (both addresses on a dual-stack stack,
    /// as `stack_address`).
    pub kernel_address: String,
    /// Whether TI-flows are offered and accepted.
    pub ti_enabled: bool,
    /// The option kind.
    pub option_kind: u8,
    /// Seconds since `tiflow up` started.
    pub uptime_s: f64,
    /// Every stream, oldest first.
    pub flows: Vec<FlowStatus>,
    /// Resume attempts since start, of the flows listed and of those that
    /// ended (a storm of resumes shows here even after its flow is gone).
    #[serde(default)]
    pub resume_attempts: u64,
    /// Failures detected since start, of the flows listed and of those
    /// that ended.
    #[serde(default)]
    pub failures: u64,
    /// What the stack holds and what its bounds turned away.
    #[serde(default)]
    pub resources: ResourceStatus,
}

/// What the stack holds now and what its bounds turned away since it
/// started (`ti_stack::Resources`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStatus {
    /// smoltcp sockets.
    pub sockets: usize,
    /// Handshakes in progress on the stack's listeners.
    pub half_open: usize,
    /// Connections waiting for `tiflow up` to accept them.
    pub accept_queued: usize,
    /// Streams.
    pub streams: usize,
    /// Flow table entries.
    pub flows: usize,
    /// SYNs dropped because an accept queue was full.
    pub syns_dropped_backlog: u64,
    /// SYNs dropped because they came faster than the stack answers.
    pub syns_dropped_overload: u64,
    /// Handshakes evicted for newer SYNs.
    pub half_open_evicted: u64,
    /// Handshakes that timed out.
    pub half_open_expired: u64,
}

/// A reply of `tiflow up`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "lowercase")]
pub enum Reply {
    /// The answer to [`Request::Status`].
    Status(StatusReport),
    /// The TIFIDs whose transport was abandoned.
    Failed {
        /// TIFIDs, 12 hex digits each.
        tifids: Vec<String>,
    },
    /// The request could not be carried out.
    Error {
        /// Why.
        message: String,
    },
}

/// Errors of the control socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No `tiflow up` answers at the socket.
    #[error("cannot reach `tiflow up` at {}: {source} ({})", where_(.addr), unreachable_hint(.addr))]
    Unreachable {
        /// The socket.
        addr: ControlAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The conversation failed after connecting.
    #[error("control socket {addr}: {source}")]
    Io {
        /// The socket.
        addr: ControlAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The other side sent something that is not the protocol.
    #[error("control socket {addr}: unreadable reply: {detail}")]
    Protocol {
        /// The socket.
        addr: ControlAddr,
        /// What was wrong.
        detail: String,
    },
    /// `tiflow up` refused the request.
    #[error("{0}")]
    Refused(String),
    /// Another `tiflow up` already answers at the socket.
    #[error("{}", in_use_text(.0))]
    InUse(ControlAddr),
    /// Something of this process failed (the output of `status --watch`,
    /// its signal handlers).
    #[error("{what}: {source}")]
    Local {
        /// What failed.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The socket could not be created.
    #[error("cannot create control socket {addr}: {source}")]
    Bind {
        /// The socket.
        addr: ControlAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// `@tiflow/tiflow0 (an abstract socket: one per network namespace)`, or the path.
fn where_(addr: &ControlAddr) -> String {
    match addr {
        ControlAddr::Abstract(_) => {
            format!("{addr} (an abstract socket: one per network namespace)")
        }
        ControlAddr::Path(_) => addr.to_string(),
    }
}

fn unreachable_hint(addr: &ControlAddr) -> &'static str {
    match addr {
        ControlAddr::Abstract(_) => {
            "is it running in this network namespace? for the one of namespace NS run \
             `ip netns exec NS tiflow ...`; for another TUN device use --tun NAME, or give \
             its socket with --control PATH"
        }
        ControlAddr::Path(_) => {
            "is it running? for another TUN device use --tun NAME, or give the socket \
             with --control PATH"
        }
    }
}

fn in_use_text(addr: &ControlAddr) -> String {
    match addr {
        ControlAddr::Abstract(_) => format!(
            "another `tiflow up` serves {addr} in this network namespace (stop it, or use \
             another --tun or --control)"
        ),
        ControlAddr::Path(_) => format!(
            "another `tiflow up` already answers at {addr} (stop it, or use another --tun \
             or --control)"
        ),
    }
}

/// Sends one request to the `tiflow up` at `addr` and returns its reply.
pub fn request(addr: impl Into<ControlAddr>, request: &Request) -> Result<Reply, ControlError> {
    let addr = addr.into();
    let mut stream = match addr.connect() {
        Ok(stream) => stream,
        Err(source) => return Err(ControlError::Unreachable { addr, source }),
    };
    let io = |source| ControlError::Io {
        addr: addr.clone(),
        source,
    };
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_string(request).map_err(|e| ControlError::Protocol {
        addr: addr.clone(),
        detail: e.to_string(),
    })?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(stream.take(MAX_LINE))
        .read_line(&mut reply)
        .map_err(io)?;
    serde_json::from_str(&reply).map_err(|e| ControlError::Protocol {
        addr: addr.clone(),
        detail: if reply.is_empty() {
            "connection closed without a reply".into()
        } else {
            e.to_string()
        },
    })
}

/// The status of the `tiflow up` at `addr` (a [`ControlAddr`], or a path:
/// `@NAME` for an abstract socket, anything else a file).
pub fn status(addr: impl Into<ControlAddr>) -> Result<StatusReport, ControlError> {
    let addr = addr.into();
    match request(&addr, &Request::Status)? {
        Reply::Status(report) => Ok(report),
        Reply::Error { message } => Err(ControlError::Refused(message)),
        other => Err(ControlError::Protocol {
            addr,
            detail: format!("unexpected reply {other:?}"),
        }),
    }
}

/// Asks the `tiflow up` at `addr` to fail the transport of one TI-flow
/// (`Some(tifid)`) or of all (`None`); returns the TIFIDs failed.
pub fn fail(
    addr: impl Into<ControlAddr>,
    tifid: Option<&str>,
) -> Result<Vec<String>, ControlError> {
    let addr = addr.into();
    let req = Request::Fail {
        tifid: tifid.map(str::to_owned),
    };
    match request(&addr, &req)? {
        Reply::Failed { tifids } => Ok(tifids),
        Reply::Error { message } => Err(ControlError::Refused(message)),
        other => Err(ControlError::Protocol {
            addr,
            detail: format!("unexpected reply {other:?}"),
        }),
    }
}

/// The listening side, owned by `tiflow up`. Removes its socket file (if
/// it is one) when dropped.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    addr: ControlAddr,
    /// Who may ask: root and this user.
    owner: rustix::process::Uid,
    /// A descriptor kept for accepting a client when none is left.
    reserve: std::sync::Mutex<Option<std::fs::File>>,
}

impl ControlServer {
    /// Creates the socket. An abstract name taken in this network namespace
    /// is an error ([`ControlError::InUse`]). A file is created (and its
    /// directory) readable and writable by the owner only; a stale socket
    /// file left by a process that died is replaced, one a live `tiflow up`
    /// answers on is an error.
    pub fn bind(addr: impl Into<ControlAddr>) -> Result<ControlServer, ControlError> {
        let addr = addr.into();
        let bind_err = |source| ControlError::Bind {
            addr: addr.clone(),
            source,
        };
        let listener = match &addr {
            ControlAddr::Abstract(_) => {
                let sockaddr = addr.socket_addr().map_err(bind_err)?;
                match UnixListener::bind_addr(&sockaddr) {
                    Ok(l) => l,
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                        return Err(ControlError::InUse(addr));
                    }
                    Err(e) => return Err(bind_err(e)),
                }
            }
            ControlAddr::Path(path) => bind_file(&addr, path)?,
        };
        let server = ControlServer {
            listener,
            addr: addr.clone(),
            owner: rustix::process::geteuid(),
            reserve: std::sync::Mutex::new(Some(
                std::fs::File::open("/dev/null").map_err(bind_err)?,
            )),
        };
        if let ControlAddr::Path(path) = &addr {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(bind_err)?;
        }
        server.listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(server)
    }

    /// The socket.
    pub fn addr(&self) -> &ControlAddr {
        &self.addr
    }

    /// Why the client on `stream` may not ask anything, if it may not:
    /// only root and the user `tiflow up` runs as may.
    fn refusal(&self, stream: &impl std::os::fd::AsFd) -> Option<String> {
        match rustix::net::sockopt::socket_peercred(stream) {
            Ok(cred) if may_ask(cred.uid, self.owner) => None,
            Ok(cred) => Some(format!(
                "permission denied: user {} may not use the control socket of this \
                 `tiflow up` (only root and user {} may)",
                cred.uid.as_raw(),
                self.owner.as_raw()
            )),
            Err(e) => Some(format!(
                "permission denied: cannot check the client's credentials: {e}"
            )),
        }
    }

    /// Answers requests with `handler` until `stop` resolves. One client
    /// at a time; each gets 5 s to send its line. When the process has no
    /// file descriptor left, the one kept in reserve is given up to accept
    /// a client (and taken back after), so the socket answers even then.
    pub async fn serve(
        &self,
        stop: impl Future<Output = ()>,
        mut handler: impl FnMut(Request) -> Reply,
    ) {
        let listener = match self
            .listener
            .try_clone()
            .and_then(tokio::net::UnixListener::from_std)
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the control socket");
                return;
            }
        };
        let mut stop = std::pin::pin!(stop);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut stop => return,
            };
            match accepted {
                Ok((stream, _)) => {
                    let refusal = self.refusal(&stream);
                    if let Some(message) = &refusal {
                        tracing::info!("control client refused: {message}");
                    }
                    if let Err(e) = answer(stream, refusal, &mut handler).await {
                        tracing::debug!(error = %e, "control client failed");
                    }
                    self.take_reserve();
                }
                Err(e) if crate::host::is_out_of_descriptors(&e) && self.give_up_reserve() => {
                    tracing::debug!("out of descriptors: the control socket uses its reserve");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Closes the reserve descriptor; false if it was already closed.
    fn give_up_reserve(&self) -> bool {
        let mut reserve = self.reserve.lock().unwrap_or_else(|e| e.into_inner());
        reserve.take().is_some()
    }

    /// Opens the reserve descriptor again if it was given up.
    fn take_reserve(&self) {
        let mut reserve = self.reserve.lock().unwrap_or_else(|e| e.into_inner());
        if reserve.is_none() {
            *reserve = std::fs::File::open("/dev/null").ok();
        }
    }
}

/// Whether a client running as `peer` may use the control socket of a
/// `tiflow up` running as `owner`: root and the owner may.
fn may_ask(peer: rustix::process::Uid, owner: rustix::process::Uid) -> bool {
    peer.is_root() || peer == owner
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let ControlAddr::Path(path) = &self.addr {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds the socket file `path`, replacing a stale one.
fn bind_file(addr: &ControlAddr, path: &Path) -> Result<UnixListener, ControlError> {
    let bind_err = |source| ControlError::Bind {
        addr: addr.clone(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(addr.clone()));
        }
        use std::os::unix::fs::FileTypeExt;
        let is_socket = std::fs::symlink_metadata(path)
            .map(|m| m.file_type().is_socket())
            .unwrap_or(false);
        if !is_socket {
            return Err(bind_err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )));
        }
        tracing::info!(path = %path.display(), "replacing stale control socket");
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    UnixListener::bind(path).map_err(bind_err)
}

/// Reads one request and answers it with `handler`, or with `refusal`
/// (an error reply) if the client may not ask.
async fn answer(
    stream: tokio::net::UnixStream,
    refusal: Option<String>,
    handler: &mut impl FnMut(Request) -> Reply,
) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let timed_out =
        |_| std::io::Error::new(std::io::ErrorKind::TimedOut, "control client too slow");
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_LINE));
    tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(timed_out)??;
    let reply = match (refusal, serde_json::from_str::<Request>(&line)) {
        (Some(message), _) => Reply::Error { message },
        (None, Ok(req)) => handler(req),
        (None, Err(e)) => Reply::Error {
            message: format!("bad request: {e}"),
        },
    };
    let mut text = serde_json::to_string(&reply).map_err(std::io::Error::other)?;
    text.push('\n');
    tokio::time::timeout(IO_TIMEOUT, write.write_all(text.as_bytes()))
        .await
        .map_err(timed_out)?
}

/// Parses a TIFID as `tiflow status` prints it: 1 to 12 hex digits.
pub fn parse_tifid(s: &str) -> Result<u64, String> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    if digits.is_empty() || digits.len() > 12 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{s:?} is not a TIFID (12 hex digits, as `tiflow status` shows)"
        ));
    }
    u64::from_str_radix(digits, 16).map_err(|e| e.to_string())
}

fn tifid_arg(s: &str) -> Result<String, String> {
    parse_tifid(s).map(|v| format!("{v:012x}"))
}

/// Which control socket to use.
#[derive(Debug, Clone, Args)]
pub struct ControlTarget {
    /// The TUN device of the `tiflow up` to talk to: its socket is the
    /// abstract @tiflow/NAME of this network namespace (run `tiflow status`
    /// in the namespace of the `tiflow up`).
    #[arg(long, value_name = "NAME", default_value = "tiflow0")]
    pub tun: String,

    /// The control socket, if not the default of --tun: a socket file (the
    /// --control of `tiflow up`), or @NAME for an abstract socket.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
}

impl ControlTarget {
    /// The socket.
    pub fn addr(&self) -> ControlAddr {
        match &self.control {
            Some(path) => ControlAddr::parse(path),
            None => ControlAddr::default_for(&self.tun),
        }
    }
}

/// Arguments of `tiflow status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Which `tiflow up` to ask.
    #[command(flatten)]
    pub target: ControlTarget,

    /// Print the report as JSON (one object) instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Keep showing the status, refreshed every --interval, until Ctrl-C
    /// (with --json: one object a line); exits with an error as soon as
    /// `tiflow up` no longer answers.
    #[arg(long)]
    pub watch: bool,

    /// Seconds between two refreshes of --watch (0.05 to 3600).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "1",
        value_parser = interval_arg,
        requires = "watch"
    )]
    pub interval: Duration,
}

/// `--interval`: seconds, 0.05 to 3600.
fn interval_arg(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds (like 1 or 0.5)"))?;
    if !(0.05..=3600.0).contains(&secs) {
        return Err(format!("{s:?} is out of range: 0.05 to 3600 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Arguments of `tiflow fail`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["tifid", "all"])))]
pub struct FailArgs {
    /// The TI-flow whose TCP connection to abandon (its TIFID, as `tiflow
    /// status` shows it).
    #[arg(value_name = "TIFID", value_parser = tifid_arg)]
    pub tifid: Option<String>,

    /// Abandon the TCP connection of every TI-flow.
    #[arg(long)]
    pub all: bool,

    /// Which `tiflow up` to ask.
    #[command(flatten)]
    pub target: ControlTarget,
}

/// `tiflow status`: prints the table (or JSON) of the flows of a `tiflow up`,
/// once or, with `--watch`, until Ctrl-C.
pub fn run_status(args: &StatusArgs) -> Result<(), ControlError> {
    let addr = args.target.addr();
    if args.watch {
        return watch(args, &addr);
    }
    let report = status(&addr)?;
    if args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| ControlError::Protocol {
            addr,
            detail: e.to_string(),
        })?;
        println!("{text}");
    } else {
        print!("{}", render_status(&report));
    }
    Ok(())
}

/// Clears a terminal and puts the cursor at its top left (ANSI).
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// `tiflow status --watch`: the status every `args.interval` until SIGINT
/// or SIGTERM (exit 0), a reader of the output going away (exit 0), or
/// `tiflow up` no longer answering (the error). On a terminal each table
/// replaces the last; otherwise they follow each other, a blank line
/// apart.
fn watch(args: &StatusArgs, addr: &ControlAddr) -> Result<(), ControlError> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const TICK: Duration = Duration::from_millis(50);
    let stop = Arc::new(AtomicBool::new(false));
    crate::up::stop_on_signals(&stop).map_err(|source| ControlError::Local {
        what: "cannot install SIGINT/SIGTERM handlers",
        source,
    })?;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut first = true;
    while !stop.load(Ordering::Acquire) {
        let report = status(addr)?;
        let mut text = String::new();
        if args.json {
            let line = serde_json::to_string(&report).map_err(|e| ControlError::Protocol {
                addr: addr.clone(),
                detail: e.to_string(),
            })?;
            text.push_str(&line);
            text.push('\n');
        } else {
            if terminal {
                text.push_str(CLEAR_SCREEN);
            } else if !first {
                text.push('\n');
            }
            text.push_str(&format!(
                "every {} ({addr}; Ctrl-C to stop)\n",
                human_ms(args.interval.as_secs_f64() * 1000.0)
            ));
            text.push_str(&render_status(&report));
        }
        first = false;
        let mut out = std::io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(source) => {
                return Err(ControlError::Local {
                    what: "cannot write the status",
                    source,
                });
            }
        }
        drop(out);
        let next = std::time::Instant::now() + args.interval;
        while !stop.load(Ordering::Acquire) {
            let left = next.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(TICK));
        }
    }
    Ok(())
}

/// `tiflow fail`: abandons the TCP connection of one TI-flow or of all.
pub fn run_fail(args: &FailArgs) -> Result<(), ControlError> {
    let tifid = if args.all {
        None
    } else {
        args.tifid.as_deref()
    };
    let failed = fail(args.target.addr(), tifid)?;
    if failed.is_empty() {
        println!("no TI-flow to fail");
    }
    for t in failed {
        println!("{t}: transport abandoned; the flow resumes on a new TCP connection");
    }
    Ok(())
}

/// `12.3 MiB`-style byte counts.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `0.4 ms`, `850 ms` or `2.31 s`.
pub fn human_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// Lays out rows as columns separated by two spaces (left-aligned).
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The status report as `tiflow status` prints it.
pub fn render_status(report: &StatusReport) -> String {
    let mut out = format!(
        "{}: stack {}, kernel side {}, {}, up {:.0} s, {} flow{}\n",
        report.tun,
        report.stack_address,
        report.kernel_address,
        if report.ti_enabled {
            format!("TI-flows on (option kind {})", report.option_kind)
        } else {
            "TI-flows off (plain TCP)".to_owned()
        },
        report.uptime_s,
        report.flows.len(),
        if report.flows.len() == 1 { "" } else { "s" },
    );
    let r = &report.resources;
    let resources = format!(
        "resources: {} sockets, {} half-open, {} waiting for accept, {} streams, {} flow entries; \
         SYNs dropped {} (backlog) {} (overload); half-open evicted {}, timed out {}\n",
        r.sockets,
        r.half_open,
        r.accept_queued,
        r.streams,
        r.flows,
        r.syns_dropped_backlog,
        r.syns_dropped_overload,
        r.half_open_evicted,
        r.half_open_expired,
    );
    if report.flows.is_empty() {
        out.push_str(&resources);
        return out;
    }
    let mut rows = vec![
        [
            "TIFID",
            "MODE",
            "PEER",
            "VIA",
            "SENT",
            "RECEIVED",
            "RESUMES",
            "LAST OUTAGE (DETECT + RESUME)",
            "STATE",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for f in &report.flows {
        rows.push(vec![
            f.tifid.clone().unwrap_or_else(|| "-".into()),
            f.mode.clone(),
            f.peer.clone(),
            f.via.clone(),
            human_bytes(f.sent),
            human_bytes(f.received),
            resumes_text(f),
            outage_text(f),
            if f.attached { "attached" } else { "resuming" }.to_owned(),
        ]);
    }
    out.push('\n');
    out.push_str(&table(&rows));
    out.push('\n');
    out.push_str(&resources);
    out
}

/// `2`, or `2 (+1 kept)` when the old connection carried data again before
/// a resume did (make before break).
fn resumes_text(f: &FlowStatus) -> String {
    match f.recoveries {
        0 => f.resumes.to_string(),
        kept => format!("{} (+{kept} kept)", f.resumes),
    }
}

/// `1.20 s (0.40 s + 12 ms)`: the program's gap, then the time to detect
/// and the time to resume; `-` before any resume.
fn outage_text(f: &FlowStatus) -> String {
    let Some(resume) = f.last_downtime_ms else {
        return "-".into();
    };
    let detect = f.last_detect_ms.map_or_else(|| "?".into(), human_ms);
    let gap = f.last_gap_ms.map_or_else(|| "waiting".into(), human_ms);
    format!("{gap} ({detect} + {})", human_ms(resume))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn report() -> StatusReport {
        StatusReport {
            tun: "tiflow0".into(),
            stack_address: "10.0.2.1/24".into(),
            kernel_address: "10.0.2.254".into(),
            ti_enabled: true,
            option_kind: 253,
            uptime_s: 12.0,
            flows: vec![
                FlowStatus {
                    tifid: Some("0a4530be79bf".into()),
                    mode: "resilient".into(),
                    peer: "10.0.2.2:22".into(),
                    via: "forward 127.0.0.1:2222 <- 127.0.0.1:40112".into(),
                    sent: 3 << 20,
                    received: 2048,
                    resumes: 2,
                    resume_attempts: 3,
                    recoveries: 1,
                    failures: 3,
                    last_downtime_ms: Some(312.4),
                    last_detect_ms: Some(400.0),
                    last_gap_ms: Some(720.0),
                    resent: 1000,
                    attached: true,
                    age_s: 10.0,
                },
                FlowStatus {
                    tifid: None,
                    mode: "legacy".into(),
                    peer: "10.0.2.3:80".into(),
                    via: "serve 80 -> 127.0.0.1:8080".into(),
                    sent: 10,
                    received: 0,
                    resumes: 0,
                    resume_attempts: 0,
                    recoveries: 0,
                    failures: 0,
                    last_downtime_ms: None,
                    last_detect_ms: None,
                    last_gap_ms: None,
                    resent: 0,
                    attached: false,
                    age_s: 1.0,
                },
            ],
            resume_attempts: 4,
            failures: 3,
            resources: ResourceStatus {
                sockets: 3,
                streams: 2,
                flows: 1,
                half_open_evicted: 7,
                ..ResourceStatus::default()
            },
        }
    }

    #[test]
    fn protocol_round_trips() {
        for req in [
            Request::Status,
            Request::Fail { tifid: None },
            Request::Fail {
                tifid: Some("0a4530be79bf".into()),
            },
        ] {
            let text = serde_json::to_string(&req).expect("encode");
            assert_eq!(serde_json::from_str::<Request>(&text).expect("decode"), req);
        }
        let reply = Reply::Status(report());
        let text = serde_json::to_string(&reply).expect("encode");
        assert_eq!(serde_json::from_str::<Reply>(&text).expect("decode"), reply);
    }

    #[test]
    fn status_table_has_a_row_per_flow() {
        let text = render_status(&report());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("tiflow0: stack 10.0.2.1/24, kernel side 10.0.2.254"));
        assert!(lines[2].starts_with("TIFID "), "{text}");
        assert!(lines[3].starts_with("0a4530be79bf  resilient"), "{text}");
        assert!(lines[3].contains("3.0 MiB"), "{text}");
        assert!(lines[3].contains("2 (+1 kept)"), "{text}");
        assert!(lines[3].contains("312 ms"), "{text}");
        assert!(lines[4].starts_with("-             legacy"), "{text}");
        assert!(lines[4].ends_with("resuming"), "{text}");
        // Columns line up.
        let at = |l: &str| l.find("PEER").or_else(|| l.find("10.0.2."));
        assert_eq!(at(lines[2]), at(lines[3]));
        assert_eq!(at(lines[3]), at(lines[4]));
        assert!(
            text.ends_with("half-open evicted 7, timed out 0\n"),
            "{text}"
        );
        assert!(
            lines[6].starts_with("resources: 3 sockets, 0 half-open"),
            "{text}"
        );
    }

    #[test]
    fn tifids_parse_as_status_prints_them() {
        assert_eq!(parse_tifid("0a4530be79bf"), Ok(0x0a45_30be_79bf));
        assert_eq!(parse_tifid("0x1"), Ok(1));
        assert_eq!(tifid_arg("1f"), Ok("00000000001f".into()));
        for bad in ["", "0a4530be79bf0", "xyz", "-1", "12 34"] {
            assert!(parse_tifid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_ms(0.42), "0.4 ms");
        assert_eq!(human_ms(12.4), "12 ms");
        assert_eq!(human_ms(2310.0), "2.31 s");
    }

    #[test]
    fn unreachable_socket_says_what_to_check() {
        let err = status(Path::new("/nonexistent/tiflow-test.sock")).expect_err("no server");
        let text = err.to_string();
        assert!(text.contains("cannot reach `tiflow up`"), "{text}");
        assert!(text.contains("--control"), "{text}");
    }

    #[test]
    fn control_addresses_parse_and_print() {
        let default = ControlAddr::default_for("tiflow0");
        assert_eq!(default, ControlAddr::Abstract("tiflow/tiflow0".into()));
        assert_eq!(default.to_string(), "@tiflow/tiflow0");
        assert_eq!(
            ControlAddr::from(Path::new("@tiflow/x")),
            ControlAddr::Abstract("tiflow/x".into())
        );
        assert_eq!(
            ControlAddr::from(Path::new("/run/t.sock")),
            ControlAddr::Path("/run/t.sock".into())
        );
        assert_eq!(
            ControlAddr::from(Path::new("@")),
            ControlAddr::Path("@".into())
        );
        let target = ControlTarget {
            tun: "tf1".into(),
            control: None,
        };
        assert_eq!(target.addr().to_string(), "@tiflow/tf1");
    }

    #[test]
    fn watch_intervals_parse() {
        assert_eq!(interval_arg("1"), Ok(Duration::from_secs(1)));
        assert_eq!(interval_arg("0.2"), Ok(Duration::from_millis(200)));
        assert_eq!(interval_arg("2s"), Ok(Duration::from_secs(2)));
        for bad in ["0", "0.01", "-1", "soon", "7200"] {
            assert!(interval_arg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_root_and_the_owner_may_ask() {
        use rustix::process::Uid;
        let (root, owner, other) = (Uid::ROOT, Uid::from_raw(1000), Uid::from_raw(1001));
        assert!(may_ask(root, owner));
        assert!(may_ask(owner, owner));
        assert!(!may_ask(other, owner));
        assert!(may_ask(root, root));
        assert!(!may_ask(other, root));
    }

    #[test]
    fn unreachable_abstract_socket_names_it_and_its_namespace() {
        let addr = ControlAddr::Abstract(format!("tiflow-test/none-{}", std::process::id()));
        let text = status(&addr).expect_err("no server").to_string();
        assert!(
            text.contains("cannot reach `tiflow up` at @tiflow-test/none-"),
            "{text}"
        );
        assert!(text.contains("one per network namespace"), "{text}");
        assert!(
            text.contains("running in this network namespace?"),
            "{text}"
        );
    }

    /// Serves `report()` on `server` while `f` runs.
    fn serving(server: &ControlServer, f: impl FnOnce()) {
        let stop = AtomicBool::new(false);
        let stopped = async {
            while !stop.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(server.serve(stopped, |req| match req {
                    Request::Status => Reply::Status(report()),
                    Request::Fail { tifid: Some(t) } => Reply::Error {
                        message: format!("no TI-flow {t}"),
                    },
                    Request::Fail { tifid: None } => Reply::Failed { tifids: vec![] },
                }))
            });
            f();
            stop.store(true, Ordering::Release);
        });
    }

    #[test]
    fn abstract_socket_answers_and_refuses_a_second_instance() {
        let addr = ControlAddr::Abstract(format!("tiflow-test/ctl-{}", std::process::id()));
        let server = ControlServer::bind(&addr).expect("bind");
        assert_eq!(server.addr(), &addr);
        serving(&server, || {
            assert_eq!(status(&addr).expect("status"), report());
            let err = ControlServer::bind(&addr).expect_err("taken");
            assert!(matches!(err, ControlError::InUse(_)), "{err:?}");
            let text = err.to_string();
            assert!(
                text.contains("another `tiflow up` serves @tiflow-test/ctl-")
                    && text.contains("in this network namespace"),
                "{text}"
            );
        });
        drop(server);
        // The name is free again once the server is gone.
        let again = ControlServer::bind(&addr).expect("free again");
        drop(again);
    }

    #[test]
    fn server_answers_and_refuses_a_second_instance() {
        let dir = std::env::temp_dir().join(format!("tiflow-ctl-{}", std::process::id()));
        let path = dir.join("t.sock");
        let server = ControlServer::bind(&path).expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        serving(&server, || {
            assert_eq!(status(&path).expect("status"), report());
            assert_eq!(fail(&path, None).expect("fail all"), Vec::<String>::new());
            let err = fail(&path, Some("000000000001")).expect_err("refused");
            assert_eq!(err.to_string(), "no TI-flow 000000000001");
            let err = ControlServer::bind(&path).expect_err("in use");
            assert!(matches!(err, ControlError::InUse(_)), "{err:?}");
            assert!(
                err.to_string()
                    .contains("another `tiflow up` already answers at"),
                "{err}"
            );
        });
        drop(server);
        assert!(!path.exists(), "socket removed on drop");
        // A stale socket file is replaced.
        let stale = UnixListener::bind(&path).expect("stale");
        drop(stale);
        let again = ControlServer::bind(&path).expect("replaces stale socket");
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
