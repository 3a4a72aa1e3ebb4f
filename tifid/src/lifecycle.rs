//! The per-stream lifecycle driver: failure detection, resume attempts and
//! their backoff, abort, loss and the legacy user timeout (DESIGN §4
//! "Failure detection", "Make before break", "Abort").
//!
//! Owns one [`Lifecycle`] per stream (a TI-flow or a legacy connection): the
//! liveness clocks of the attached connection (stall, silent path, user
//! timeout), the initiator's resume attempts with their backoff and storm
//! guard, the resume deadline, and the stream's [`State`]. All of its timers
//! live in one table indexed by an enum; [`Lifecycle::poll_timeout`] is the
//! earliest of them.
//!
//! It must never do I/O or read a clock. The stack owns the sockets and the
//! bytes: it feeds [`Input`]s with the current time, calls
//! [`Lifecycle::handle_timeout`] when [`Lifecycle::poll_timeout`] is due, and
//! carries out the [`Action`]s it drains from [`Lifecycle::poll_action`], in
//! order. The driver never looks at a segment: the stack tells it only what
//! passed TCP's acceptance checks (DESIGN §4 "Acceptance before decision").
//!
//! # Contract with the stack
//!
//! - Actions are executed in the order they are polled. One input or one
//!   `handle_timeout` may queue several: a failure of the initiator's
//!   connection queues [`Action::Abandon`] (or [`Action::Suspect`]) then, when allowed,
//!   [`Action::OpenAttempt`]; a due attempt queues [`Action::DropAttempt`]
//!   then [`Action::OpenAttempt`]; a loss queues the release of what is left
//!   ([`Action::DropAttempt`] or [`Action::Abandon`]) then [`Action::Lose`].
//! - Every connection the stream stops using is released by exactly one
//!   action: the attached connection by [`Action::Abandon`] or
//!   [`Action::ResetConnection`] (unless it closes cleanly:
//!   [`Input::Finished`]), every attempt by [`Action::DropAttempt`] (unless
//!   [`Input::Resumed`] makes it the attached connection). This holds also
//!   when the stack itself reported the death ([`Input::Failed`],
//!   [`Input::AttemptFailed`], [`Input::AttemptLost`]): one code path drops.
//! - [`Action::Abandon`] always names the connection that was attached
//!   before the input; on a responder's [`Input::Resumed`] while attached
//!   that is the superseded old connection, not the new one. While the
//!   initiator holds a suspect ([`Action::Suspect`]), [`Action::Abandon`]
//!   and [`Action::ResetConnection`] name the suspect, and every
//!   [`Input::Failed`] is about it.
//! - Make before break: the initiator's connection that stalls or goes
//!   silent is kept as a suspect while attempts run. Whichever carries
//!   data first wins: [`Input::Progress`] from the suspect takes it back
//!   ([`Action::DropAttempt`], [`Action::KeepSuspect`]); an attempt that
//!   resumes the flow ([`Input::Resumed`]) releases the suspect
//!   ([`Action::Abandon`] with [`FailureCause::Superseded`], before the new
//!   connection carries anything).
//! - A stream's last actions end in [`Action::Lose`] (TI), [`Action::Fail`]
//!   (legacy) or [`Action::ResetConnection`] (abort), or in nothing (a clean
//!   [`Input::Finished`]). Once [`Lifecycle::state`] is final
//!   ([`State::is_final`]) the driver ignores every input, arms no timer and
//!   queues nothing more.

use core::fmt;
use std::collections::VecDeque;
use std::time::Duration;

use crate::flow::Role;
use crate::handshake::LostCause;
use crate::time::Timestamp;

/// The driver's timing parameters. [`Default`] gives DESIGN's values.
///
/// Intervals must be nonzero: a zero `retry_first` together with a zero
/// `min_resume_interval` makes an attempt due again the moment it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecycleConfig {
    /// Something the peer must answer is outstanding and no acceptable
    /// segment came from the peer for this long: failure
    /// [`FailureCause::Stall`]. The stack may compute it from the RTO.
    pub stall_timeout: Duration,
    /// Nothing outstanding and no acceptable segment for
    /// `keepalive + stall_timeout`: failure [`FailureCause::SilentPath`]
    /// (until [`Lifecycle::set_liveness`] refines both budgets). The
    /// stack's TCP sends keepalive probes at this interval; their answers
    /// are acceptable segments.
    pub keepalive: Duration,
    /// An initiator that has not resumed within this of the failure loses
    /// the flow ([`LostCause::Timeout`]).
    pub resume_timeout: Duration,
    /// Interval between resume attempts during the first
    /// `fast_retry_period` of an outage (raised to `min_resume_interval`):
    /// an attempt is one SYN, and data should flow soon after the path
    /// returns (see [`LifecycleConfig::retry_delay`]).
    pub retry_first: Duration,
    /// How long attempts stay at the fast interval.
    pub fast_retry_period: Duration,
    /// The interval's cap: past the fast period it grows with the outage's
    /// length up to this.
    pub retry_max: Duration,
    /// A flow never starts resume attempts more often than this, whatever
    /// happens (storm guard: at most about four a second by default).
    pub min_resume_interval: Duration,
    /// A resumed connection that carries no new bytes (an idle flow has no
    /// [`Input::Progress`] to show) but stays up this long counts as settled
    /// too: the outage ends and the backoff starts again from zero. A reset
    /// sooner than this is part of a storm.
    pub settle_time: Duration,
    /// Legacy streams only: data outstanding with no [`Input::Progress`] for
    /// this long fails the stream ([`LegacyEnd::UserTimeout`]), as
    /// `TCP_USER_TIMEOUT` does.
    pub user_timeout: Duration,
}

impl Default for LifecycleConfig {
    fn default() -> LifecycleConfig {
        LifecycleConfig {
            stall_timeout: Duration::from_secs(3),
            keepalive: Duration::from_secs(5),
            resume_timeout: Duration::from_secs(60),
            retry_first: Duration::from_millis(200),
            fast_retry_period: Duration::from_secs(30),
            retry_max: Duration::from_secs(2),
            min_resume_interval: Duration::from_millis(250),
            settle_time: Duration::from_secs(10),
            user_timeout: Duration::from_secs(30),
        }
    }
}

impl LifecycleConfig {
    /// How long after an attempt the next one starts (and the unanswered
    /// one is dropped), `outage` into an outage: `retry_first` (never below
    /// `min_resume_interval`) for the first `fast_retry_period`, then the
    /// time past that period, up to `retry_max`. With the defaults: 250 ms
    /// for 30 s, then growing to 2 s at 32 s.
    ///
    /// An attempt has no timeout of its own: it is abandoned when the next
    /// one is due, so its timeout is this delay.
    pub fn retry_delay(&self, outage: Duration) -> Duration {
        let fast = self.retry_first.max(self.min_resume_interval);
        if outage < self.fast_retry_period {
            return fast;
        }
        (outage - self.fast_retry_period)
            .max(fast)
            .min(self.retry_max.max(fast))
    }
}

/// Why the attached connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCause {
    /// An acceptable bare RST.
    Reset,
    /// An acceptable RST carrying our option with nonzero positions: the
    /// peer dropped the connection on purpose; resume now.
    PeerAbandoned,
    /// `tiflow fail` or `TiStream::fail_transport()`.
    Explicit,
    /// Our local address changed.
    AddressChanged,
    /// The option did not fit in a segment we had to send.
    OptionDidNotFit,
    /// The socket closed without a clean end.
    Closed,
    /// Something outstanding and no answer for `stall_timeout` (the driver's
    /// own timer).
    Stall,
    /// Nothing outstanding and no answer for `keepalive + stall_timeout`
    /// (the driver's own timer).
    SilentPath,
    /// A responder accepted a resume while the flow was still attached: the
    /// old connection is superseded. Only the driver uses it (on
    /// [`Input::Resumed`]); as [`Input::Failed`] it is ignored, since the new
    /// connection is reported by [`Input::Resumed`].
    Superseded,
}

impl FailureCause {
    /// Whether abandoning a connection for this cause sends the peer a RST
    /// carrying our option with positions (DESIGN §4: a side that abandons
    /// a connection that may still work, at least in one direction, says so,
    /// so the initiator resumes at once). A connection already reset or
    /// closed has nobody to tell.
    pub const fn notifies_peer(self) -> bool {
        match self {
            FailureCause::Explicit
            | FailureCause::Stall
            | FailureCause::SilentPath
            | FailureCause::AddressChanged
            | FailureCause::OptionDidNotFit
            | FailureCause::Superseded => true,
            FailureCause::Reset | FailureCause::PeerAbandoned | FailureCause::Closed => false,
        }
    }
}

impl fmt::Display for FailureCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureCause::Reset => "reset",
            FailureCause::PeerAbandoned => "abandoned by peer",
            FailureCause::Explicit => "explicit",
            FailureCause::AddressChanged => "address changed",
            FailureCause::OptionDidNotFit => "option did not fit",
            FailureCause::Closed => "closed",
            FailureCause::Stall => "stall",
            FailureCause::SilentPath => "silent path",
            FailureCause::Superseded => "superseded",
        })
    }
}

/// How a legacy stream ended with an error (a legacy stream never resumes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegacyEnd {
    /// The connection was reset or closed without a clean end
    /// (`ECONNRESET`).
    Reset,
    /// Data stayed unacknowledged for `user_timeout` (`ETIMEDOUT`).
    UserTimeout,
}

impl fmt::Display for LegacyEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LegacyEnd::Reset => "connection reset",
            LegacyEnd::UserTimeout => "user timeout",
        })
    }
}

/// What a RST sent by [`Action::ResetConnection`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Notify {
    /// A bare RST, no option (legacy streams: stock peers see plain TCP).
    Bare,
    /// Our option with the TIFID and zero positions: the flow is aborted,
    /// the peer must not resume (DESIGN §4 "Abort").
    Abort,
}

/// What the stack tells the driver, with the time it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// An acceptable segment (it passed TCP's acceptance checks) arrived from
    /// the peer on the attached connection: liveness. Answers to zero-window
    /// probes and keepalives count: alive means answering, and a closed
    /// window is never a failure.
    PeerAnswered,
    /// Whether we now have something the peer must answer (unacknowledged
    /// data or FIN). Sent whenever it changes; repeats are harmless.
    Outstanding(bool),
    /// New bytes were acknowledged by or delivered from the peer on the
    /// attached connection (implies [`Input::PeerAnswered`]). The first one
    /// after a resume settles it: the backoff starts again from zero.
    Progress,
    /// The stack detected a failure of the attached connection.
    Failed(FailureCause),
    /// Initiator: the in-flight resume attempt was answered by a bare RST or
    /// went unanswered (`refused: false`: transient, retry on backoff), or
    /// by a refusal (`refused: true`: the flow is lost).
    AttemptFailed {
        /// A refusal RST (our option, TIFID echoed, zero positions).
        refused: bool,
    },
    /// Initiator: the in-flight attempt's SYN-ACK failed the mirror checks
    /// (or similar): the flow is lost with this cause.
    AttemptLost(LostCause),
    /// A resume connection now carries the flow (both roles).
    Resumed,
    /// The local application aborted the stream.
    Abort,
    /// The peer aborted the flow (an acceptable RST with our option and zero
    /// positions on the attached connection).
    PeerAborted,
    /// Both FINs are acknowledged: the stream ended cleanly.
    Finished,
}

/// What the driver asks the stack to do. Execute in the order polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Drop the attached connection (drain it first: DESIGN §4 I1). With
    /// `notify`, first send a RST carrying our option with the current
    /// positions (see [`FailureCause::notifies_peer`]); never on a legacy
    /// stream.
    Abandon {
        /// Why (for logs and stats).
        cause: FailureCause,
        /// Send the peer a RST with our option and positions.
        notify: bool,
    },
    /// Initiator, make before break: keep the attached connection, which
    /// is suspected dead ([`FailureCause::Stall`] or
    /// [`FailureCause::SilentPath`]) but may still recover, while resume
    /// attempts run. It takes no new bytes; the flow is detached (its
    /// positions stay where the suspect left them, so the next attempt's
    /// SYN names them). Drain what it delivered first (DESIGN §4 I1). It is
    /// released later by [`Action::Abandon`] (a resume won, or it failed
    /// for good) or taken back by [`Action::KeepSuspect`].
    Suspect {
        /// Why it is suspected (for logs and stats).
        cause: FailureCause,
    },
    /// Initiator: the suspected connection carried data again before any
    /// attempt resumed the flow: it is the attached connection again. The
    /// attempt in flight is dropped by the [`Action::DropAttempt`] queued
    /// just before.
    KeepSuspect,
    /// Initiator: open a resume connection now (a SYN on a fresh port).
    OpenAttempt,
    /// Drop the resume attempt in flight (unanswered, failed or no longer
    /// wanted).
    DropAttempt,
    /// The flow is lost: report it to the application (a reset, never a
    /// clean end of stream). Final.
    Lose(LostCause),
    /// Send a RST on the attached connection, then drop it (after draining).
    /// Final.
    ResetConnection {
        /// What the RST carries.
        notify: Notify,
    },
    /// A legacy stream failed: report it to the application. Final.
    Fail(LegacyEnd),
}

/// Where a stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A connection carries the stream.
    Attached,
    /// Initiator: no connection carries the flow; resume attempts run.
    Resuming {
        /// Attempts started since the outage began (including attempts whose
        /// resumed connection was reset before it settled).
        attempts: u32,
    },
    /// Responder: no connection carries the flow; waiting for the initiator.
    /// The driver arms no timer here: the flow table expires detached flows
    /// (`resume_timeout`), and the stack then drops this driver.
    Detached,
    /// Both FINs acknowledged.
    Finished,
    /// The local application aborted.
    Aborted,
    /// The TI-flow is lost.
    Lost(LostCause),
    /// The legacy connection failed.
    Failed(LegacyEnd),
}

impl State {
    /// Finished, aborted, lost or failed: nothing more will happen.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Finished | State::Aborted | State::Lost(_) | State::Failed(_)
        )
    }
}

/// The driver's timers, in the order they fire when due at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// A resumed connection survived `settle_time`.
    Settle,
    /// Legacy: outstanding data without progress.
    UserTimeout,
    /// Outstanding and unanswered.
    Stall,
    /// Outstanding, answered, but nothing new acknowledged: TCP is stuck
    /// (for example in a long retransmission backoff) behind a live peer.
    NoProgress,
    /// Nothing outstanding and unanswered.
    SilentPath,
    /// The initiator's outage lasts too long: lose before a new attempt.
    ResumeDeadline,
    /// The next resume attempt is due.
    Attempt,
}

impl Timer {
    const COUNT: usize = 7;
    const ALL: [Timer; Timer::COUNT] = [
        Timer::Settle,
        Timer::UserTimeout,
        Timer::Stall,
        Timer::NoProgress,
        Timer::SilentPath,
        Timer::ResumeDeadline,
        Timer::Attempt,
    ];
}

/// Every deadline of one driver, indexed by [`Timer`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct TimerTable([Option<Timestamp>; Timer::COUNT]);

impl TimerTable {
    fn set(&mut self, timer: Timer, at: Timestamp) {
        self.0[timer as usize] = Some(at);
    }

    fn get(&self, timer: Timer) -> Option<Timestamp> {
        self.0[timer as usize]
    }

    fn stop(&mut self, timer: Timer) {
        self.0[timer as usize] = None;
    }

    fn stop_all(&mut self) {
        self.0 = [None; Timer::COUNT];
    }

    /// The earliest deadline.
    fn next(&self) -> Option<Timestamp> {
        self.0.iter().flatten().min().copied()
    }

    /// The timers due at `now`, earliest first, ties in [`Timer`] order.
    fn due(&self, now: Timestamp) -> Vec<(Timestamp, Timer)> {
        let mut due: Vec<(Timestamp, Timer)> = Timer::ALL
            .iter()
            .filter_map(|&t| self.get(t).filter(|&at| at <= now).map(|at| (at, t)))
            .collect();
        // Stable sort: equal deadlines keep `Timer::ALL` order.
        due.sort_by_key(|&(at, _)| at);
        due
    }
}

/// Where the driver is; [`Lifecycle::state`] adds the attempt count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Attached,
    Resuming,
    Detached,
    Done(State),
}

/// The lifecycle driver of one stream. See the module documentation for the
/// contract with the stack.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    role: Role,
    resilient: bool,
    config: LifecycleConfig,
    phase: Phase,
    timers: TimerTable,
    actions: VecDeque<Action>,
    /// Something the peer must answer is outstanding.
    outstanding: bool,
    /// When `outstanding` last became true.
    outstanding_since: Timestamp,
    /// The last acceptable segment from the peer (or the attach).
    last_answer: Timestamp,
    /// The last new byte acknowledged or delivered (or the attach).
    last_progress: Timestamp,
    /// The attached connection has shown progress since it resumed (or is
    /// the first connection, or survived `settle_time`).
    settled: bool,
    /// When the current outage began; cleared when a resume settles.
    failed_at: Option<Timestamp>,
    /// A resume attempt is open.
    attempt_in_flight: bool,
    /// Initiator: the failed connection is kept while attempts run (make
    /// before break).
    suspect: bool,
    /// Attempts started since the outage began: the backoff index.
    attempts: u32,
    /// When the last attempt started (any outage): the storm guard.
    last_attempt_at: Option<Timestamp>,
    total_attempts: u64,
    resumes: u64,
    failures: u64,
    recoveries: u64,
    /// The liveness budgets in force (the stack's RTT estimates refine them).
    liveness: Liveness,
}

/// How long the peer may stay silent before the attached connection is
/// taken for dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// With something outstanding: the stall budget.
    pub stall: Duration,
    /// With nothing outstanding: the silent-path budget (the stack probes
    /// the peer within it).
    pub silent: Duration,
}

impl Lifecycle {
    /// A driver for a stream whose first connection was established at
    /// `now` (a new TI-flow if `resilient`, else a legacy connection).
    pub fn new(role: Role, resilient: bool, config: LifecycleConfig, now: Timestamp) -> Lifecycle {
        let mut lc = Lifecycle {
            role,
            resilient,
            config,
            phase: Phase::Attached,
            timers: TimerTable::default(),
            actions: VecDeque::new(),
            outstanding: false,
            outstanding_since: now,
            last_answer: now,
            last_progress: now,
            settled: true,
            failed_at: None,
            attempt_in_flight: false,
            suspect: false,
            attempts: 0,
            last_attempt_at: None,
            total_attempts: 0,
            resumes: 0,
            failures: 0,
            recoveries: 0,
            liveness: Liveness {
                stall: config.stall_timeout,
                silent: config.keepalive + config.stall_timeout,
            },
        };
        lc.rearm_liveness();
        lc
    }

    /// Feeds one input that happened at `now`. Ignored once the state is
    /// final. A failure may start a resume attempt at once (in this call).
    pub fn handle(&mut self, now: Timestamp, input: Input) {
        if self.state().is_final() {
            return;
        }
        match input {
            Input::PeerAnswered => self.on_answer(now, false),
            Input::Progress => self.on_answer(now, true),
            Input::Outstanding(outstanding) => self.on_outstanding(now, outstanding),
            Input::Failed(cause) => self.on_failed(now, cause),
            Input::AttemptFailed { refused } => self.on_attempt_failed(refused),
            Input::AttemptLost(cause) => self.on_attempt_lost(cause),
            Input::Resumed => self.on_resumed(now),
            Input::Abort => self.on_abort(),
            Input::PeerAborted => self.on_peer_aborted(now),
            Input::Finished => self.on_finished(),
        }
    }

    /// Fires every timer due at `now`, earliest first. Does nothing before
    /// [`Lifecycle::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Timestamp) {
        for (at, timer) in self.timers.due(now) {
            // An earlier timer of this pass may have stopped or moved it.
            if self.timers.get(timer) != Some(at) {
                continue;
            }
            self.timers.stop(timer);
            match timer {
                Timer::Settle => self.settle(),
                Timer::UserTimeout => {
                    self.actions.push_back(Action::ResetConnection {
                        notify: Notify::Bare,
                    });
                    self.fail_legacy(LegacyEnd::UserTimeout);
                }
                Timer::Stall | Timer::NoProgress => self.on_failed(now, FailureCause::Stall),
                Timer::SilentPath if !self.resilient => {
                    self.actions.push_back(Action::ResetConnection {
                        notify: Notify::Bare,
                    });
                    self.fail_legacy(LegacyEnd::Reset);
                }
                Timer::SilentPath => self.on_failed(now, FailureCause::SilentPath),
                Timer::ResumeDeadline => self.lose(LostCause::Timeout),
                Timer::Attempt => self.on_attempt_due(now),
            }
        }
    }

    /// The earliest armed timer: call [`Lifecycle::handle_timeout`] then.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.next()
    }

    /// The next action for the stack to carry out.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Sets the liveness budgets (from the stack's RTT estimate: about two
    /// RTOs with a floor for the stall, a few smoothed RTTs plus the stall
    /// for a flow that was receiving and went quiet) and rearms the clocks.
    /// Defaults: `stall_timeout`, and `keepalive + stall_timeout`.
    pub fn set_liveness(&mut self, liveness: Liveness) {
        if self.liveness != liveness {
            self.liveness = liveness;
            self.rearm_liveness();
        }
    }

    /// The liveness budgets in force.
    pub fn liveness(&self) -> Liveness {
        self.liveness
    }

    /// Where the stream is in its life.
    pub fn state(&self) -> State {
        match self.phase {
            Phase::Attached => State::Attached,
            Phase::Resuming => State::Resuming {
                attempts: self.attempts,
            },
            Phase::Detached => State::Detached,
            Phase::Done(state) => state,
        }
    }

    /// Our role in the flow.
    pub fn role(&self) -> Role {
        self.role
    }

    /// A TI-flow (`true`) or a legacy connection.
    pub fn is_resilient(&self) -> bool {
        self.resilient
    }

    /// When the current outage began: the first failure since the stream
    /// last carried data. `None` when there is no outage; still set while a
    /// resumed connection has not settled (so `now - failed_at` at
    /// [`Input::Resumed`] is the downtime).
    pub fn failed_at(&self) -> Option<Timestamp> {
        self.failed_at
    }

    /// Resume attempts started in the current outage (the backoff index).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Resume attempts started over the stream's life.
    pub fn total_attempts(&self) -> u64 {
        self.total_attempts
    }

    /// Resumes (connections that took over the flow) over the stream's life.
    pub fn resumes(&self) -> u64 {
        self.resumes
    }

    /// Failures of attached connections over the stream's life.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Initiator: the failed connection is kept while resume attempts run
    /// (make before break).
    pub fn has_suspect(&self) -> bool {
        self.suspect
    }

    /// Suspected connections that carried data again before a resume did.
    pub fn recoveries(&self) -> u64 {
        self.recoveries
    }

    fn on_answer(&mut self, now: Timestamp, progress: bool) {
        if progress && self.suspect && self.phase == Phase::Resuming {
            self.keep_suspect(now);
            return;
        }
        if self.phase != Phase::Attached {
            return;
        }
        self.last_answer = now;
        if progress {
            self.last_progress = now;
            if !self.settled {
                self.settle();
            }
        }
        self.rearm_liveness();
    }

    fn on_outstanding(&mut self, now: Timestamp, outstanding: bool) {
        if outstanding && !self.outstanding {
            self.outstanding_since = now;
        }
        self.outstanding = outstanding;
        self.rearm_liveness();
    }

    /// Arms exactly the liveness timers that apply now: the stall or the
    /// silent-path clock (TI), or the user timeout (legacy), only while
    /// attached.
    fn rearm_liveness(&mut self) {
        self.timers.stop(Timer::Stall);
        self.timers.stop(Timer::NoProgress);
        self.timers.stop(Timer::SilentPath);
        self.timers.stop(Timer::UserTimeout);
        if self.phase != Phase::Attached {
            return;
        }
        let c = &self.config;
        match (self.resilient, self.outstanding) {
            (true, true) => {
                let since = self.last_answer.max(self.outstanding_since);
                self.timers.set(Timer::Stall, since + self.liveness.stall);
                // A peer that answers but never acknowledges our data while
                // its window is open: a fresh connection gets it moving.
                let stuck = self.last_progress.max(self.outstanding_since);
                self.timers.set(
                    Timer::NoProgress,
                    stuck + c.stall_timeout.max(self.liveness.stall),
                );
            }
            (true, false) => {
                let at = self.last_answer + self.liveness.silent;
                self.timers.set(Timer::SilentPath, at);
            }
            (false, true) => {
                let since = self.last_progress.max(self.outstanding_since);
                self.timers.set(Timer::UserTimeout, since + c.user_timeout);
            }
            (false, false) => {
                // A legacy peer that answers nothing (not even keepalives)
                // for this long is gone: the reading program must hear of
                // it as a reset, not wait forever.
                let at = self.last_answer + c.keepalive + c.user_timeout;
                self.timers.set(Timer::SilentPath, at);
            }
        }
    }

    fn on_failed(&mut self, now: Timestamp, cause: FailureCause) {
        if cause == FailureCause::Superseded {
            return;
        }
        if self.suspect && self.phase == Phase::Resuming {
            // The suspect failed for good (reset, closed, ...): release it;
            // the attempts go on.
            self.release_suspect(cause);
            return;
        }
        if self.phase != Phase::Attached {
            return;
        }
        if !self.resilient {
            // Nothing to resume: stalls and silent paths are TCP's business
            // (the user timeout watches), an explicit failure is for flows.
            match cause {
                FailureCause::Explicit | FailureCause::Stall | FailureCause::SilentPath => {
                    return;
                }
                _ => {}
            }
            self.actions.push_back(Action::Abandon {
                cause,
                notify: false,
            });
            self.fail_legacy(LegacyEnd::Reset);
            return;
        }
        self.failures += 1;
        let may_recover = matches!(cause, FailureCause::Stall | FailureCause::SilentPath);
        if self.role == Role::Initiator && may_recover {
            self.suspect = true;
            self.actions.push_back(Action::Suspect { cause });
        } else {
            self.actions.push_back(Action::Abandon {
                cause,
                notify: cause.notifies_peer(),
            });
        }
        let failed_at = *self.failed_at.get_or_insert(now);
        self.timers.stop(Timer::Settle);
        match self.role {
            Role::Responder => {
                self.phase = Phase::Detached;
                self.rearm_liveness();
            }
            Role::Initiator => {
                self.phase = Phase::Resuming;
                self.rearm_liveness();
                let deadline = failed_at + self.config.resume_timeout;
                if now >= deadline {
                    self.lose(LostCause::Timeout);
                    return;
                }
                self.timers.set(Timer::ResumeDeadline, deadline);
                let next = self.next_attempt_at(now, cause);
                if next <= now {
                    self.start_attempt(now);
                } else {
                    self.timers.set(Timer::Attempt, next);
                }
            }
        }
    }

    /// When the first attempt after a failure may start: at once, unless a
    /// resume of this outage was reset before it settled (storm guard: wait
    /// that attempt's backoff, except when the peer asked us to resume), and
    /// never sooner than `min_resume_interval` after the last attempt.
    fn next_attempt_at(&self, now: Timestamp, cause: FailureCause) -> Timestamp {
        let Some(last) = self.last_attempt_at else {
            return now;
        };
        let mut at = now.max(last + self.config.min_resume_interval);
        if self.attempts > 0 && cause != FailureCause::PeerAbandoned {
            at = at.max(last + self.config.retry_delay(self.outage(now)));
        }
        at
    }

    fn start_attempt(&mut self, now: Timestamp) {
        self.actions.push_back(Action::OpenAttempt);
        self.attempt_in_flight = true;
        self.attempts = self.attempts.saturating_add(1);
        self.total_attempts += 1;
        self.last_attempt_at = Some(now);
        let next = now + self.config.retry_delay(self.outage(now));
        self.timers.set(Timer::Attempt, next);
    }

    /// How long the current outage has lasted.
    fn outage(&self, now: Timestamp) -> Duration {
        self.failed_at
            .map_or(Duration::ZERO, |t| now.saturating_since(t))
    }

    fn on_attempt_due(&mut self, now: Timestamp) {
        if self.phase != Phase::Resuming {
            return;
        }
        self.drop_attempt();
        self.start_attempt(now);
    }

    fn drop_attempt(&mut self) {
        if std::mem::take(&mut self.attempt_in_flight) {
            self.actions.push_back(Action::DropAttempt);
        }
    }

    fn on_attempt_failed(&mut self, refused: bool) {
        if self.phase != Phase::Resuming || !self.attempt_in_flight {
            return;
        }
        self.drop_attempt();
        if refused {
            self.lose(LostCause::Refused);
        }
        // Transient: the attempt timer already holds the next attempt.
    }

    fn on_attempt_lost(&mut self, cause: LostCause) {
        if self.phase != Phase::Resuming || !self.attempt_in_flight {
            return;
        }
        self.lose(cause);
    }

    fn on_resumed(&mut self, now: Timestamp) {
        if !self.resilient {
            return;
        }
        match (self.phase, self.role) {
            (Phase::Resuming, Role::Initiator) => {
                // The attempt won: the suspect goes before the new
                // connection carries anything.
                if std::mem::take(&mut self.suspect) {
                    self.actions.push_back(Action::Abandon {
                        cause: FailureCause::Superseded,
                        notify: false,
                    });
                }
                // The attempt is now the attached connection.
                self.attempt_in_flight = false;
                self.timers.stop(Timer::Attempt);
                self.timers.stop(Timer::ResumeDeadline);
            }
            (Phase::Detached, Role::Responder) => {}
            (Phase::Attached, Role::Responder) => {
                self.actions.push_back(Action::Abandon {
                    cause: FailureCause::Superseded,
                    notify: FailureCause::Superseded.notifies_peer(),
                });
            }
            _ => return,
        }
        self.phase = Phase::Attached;
        self.resumes += 1;
        self.settled = false;
        self.last_answer = now;
        self.last_progress = now;
        self.outstanding_since = now;
        self.timers
            .set(Timer::Settle, now + self.config.settle_time);
        self.rearm_liveness();
    }

    /// The suspect carried data before any attempt resumed the flow: it is
    /// the attached connection again, the attempt goes, the outage is over.
    fn keep_suspect(&mut self, now: Timestamp) {
        self.suspect = false;
        self.recoveries += 1;
        self.drop_attempt();
        self.actions.push_back(Action::KeepSuspect);
        self.timers.stop(Timer::Attempt);
        self.timers.stop(Timer::ResumeDeadline);
        self.phase = Phase::Attached;
        self.last_answer = now;
        self.last_progress = now;
        self.outstanding_since = now;
        self.settle();
        self.rearm_liveness();
    }

    /// The suspect failed for good: release it, keep resuming.
    fn release_suspect(&mut self, cause: FailureCause) {
        self.suspect = false;
        self.actions.push_back(Action::Abandon {
            cause,
            notify: false,
        });
    }

    /// The resume carries the flow for good: the outage is over and the
    /// backoff starts again from zero.
    fn settle(&mut self) {
        self.settled = true;
        self.attempts = 0;
        self.failed_at = None;
        self.timers.stop(Timer::Settle);
    }

    fn on_abort(&mut self) {
        if self.phase == Phase::Attached || std::mem::take(&mut self.suspect) {
            let notify = if self.resilient {
                Notify::Abort
            } else {
                Notify::Bare
            };
            self.actions.push_back(Action::ResetConnection { notify });
        }
        self.drop_attempt();
        self.end(State::Aborted);
    }

    fn on_peer_aborted(&mut self, now: Timestamp) {
        if !self.resilient {
            // A legacy connection carries no option: it is a reset.
            self.on_failed(now, FailureCause::Reset);
            return;
        }
        if self.phase == Phase::Attached || std::mem::take(&mut self.suspect) {
            self.actions.push_back(Action::Abandon {
                cause: FailureCause::Reset,
                notify: false,
            });
        }
        self.lose(LostCause::PeerAborted);
    }

    fn on_finished(&mut self) {
        self.drop_attempt();
        if std::mem::take(&mut self.suspect) {
            self.actions.push_back(Action::Abandon {
                cause: FailureCause::Closed,
                notify: false,
            });
        }
        self.end(State::Finished);
    }

    /// Releases an attempt in flight and reports the flow lost.
    fn lose(&mut self, cause: LostCause) {
        self.drop_attempt();
        if std::mem::take(&mut self.suspect) {
            self.actions.push_back(Action::Abandon {
                cause: FailureCause::Closed,
                notify: false,
            });
        }
        self.actions.push_back(Action::Lose(cause));
        self.end(State::Lost(cause));
    }

    fn fail_legacy(&mut self, end: LegacyEnd) {
        self.actions.push_back(Action::Fail(end));
        self.end(State::Failed(end));
    }

    fn end(&mut self, state: State) {
        self.phase = Phase::Done(state);
        self.attempt_in_flight = false;
        self.suspect = false;
        self.timers.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::ResumeMismatch;

    fn ms(millis: u64) -> Timestamp {
        Timestamp::from_millis(millis)
    }

    fn initiator(now: Timestamp) -> Lifecycle {
        Lifecycle::new(Role::Initiator, true, LifecycleConfig::default(), now)
    }

    fn responder(now: Timestamp) -> Lifecycle {
        Lifecycle::new(Role::Responder, true, LifecycleConfig::default(), now)
    }

    fn legacy(now: Timestamp) -> Lifecycle {
        Lifecycle::new(Role::Initiator, false, LifecycleConfig::default(), now)
    }

    /// Drains the queued actions.
    fn actions(lc: &mut Lifecycle) -> Vec<Action> {
        std::iter::from_fn(|| lc.poll_action()).collect()
    }

    /// Feeds one input and drains what it queued.
    fn feed(lc: &mut Lifecycle, now: Timestamp, input: Input) -> Vec<Action> {
        lc.handle(now, input);
        actions(lc)
    }

    /// Fires every timer up to `until`, as a stack would, each at its time.
    fn run(lc: &mut Lifecycle, until: Timestamp) -> Vec<(Timestamp, Action)> {
        let mut out = Vec::new();
        while let Some(at) = lc.poll_timeout().filter(|&at| at <= until) {
            lc.handle_timeout(at);
            out.extend(actions(lc).into_iter().map(|a| (at, a)));
            assert!(out.len() < 100_000, "timer loop");
        }
        out
    }

    /// The times of the `OpenAttempt`s among `timed`.
    fn opens(timed: &[(Timestamp, Action)]) -> Vec<Timestamp> {
        timed
            .iter()
            .filter(|(_, a)| *a == Action::OpenAttempt)
            .map(|&(t, _)| t)
            .collect()
    }

    const ABANDON_RESET: Action = Action::Abandon {
        cause: FailureCause::Reset,
        notify: false,
    };

    /// Rule 1.
    #[test]
    fn stall_is_no_answer_while_outstanding() {
        let mut lc = responder(ms(0));
        assert!(feed(&mut lc, ms(1000), Input::Outstanding(true)).is_empty());
        assert_eq!(lc.poll_timeout(), Some(ms(4000)));
        assert!(run(&mut lc, ms(3999)).is_empty());
        lc.handle_timeout(ms(4000));
        assert_eq!(
            actions(&mut lc),
            [Action::Abandon {
                cause: FailureCause::Stall,
                notify: true
            }]
        );
        assert_eq!(lc.state(), State::Detached);
        assert_eq!(lc.failed_at(), Some(ms(4000)));
    }

    /// Rule 1: any answer restarts the stall clock; a repeated
    /// `Outstanding(true)` does not.
    #[test]
    fn stall_clock_restarts_on_every_answer() {
        let mut lc = responder(ms(0));
        lc.handle(ms(1000), Input::Outstanding(true));
        lc.handle(ms(3500), Input::Progress);
        lc.handle(ms(4000), Input::Outstanding(true));
        assert_eq!(lc.poll_timeout(), Some(ms(6500)));
        assert!(run(&mut lc, ms(6499)).is_empty());
        let fired = run(&mut lc, ms(6500));
        assert_eq!(
            fired,
            [(
                ms(6500),
                Action::Abandon {
                    cause: FailureCause::Stall,
                    notify: true
                }
            )]
        );
    }

    /// Rule 1: with nothing outstanding there is no stall.
    #[test]
    fn nothing_outstanding_disarms_the_stall() {
        let mut lc = responder(ms(0));
        lc.handle(ms(1000), Input::Outstanding(true));
        lc.handle(ms(3000), Input::Outstanding(false));
        // Only the silent path, from the last answer (the attach at 0).
        assert_eq!(lc.poll_timeout(), Some(ms(8000)));
        assert!(run(&mut lc, ms(7999)).is_empty());
    }

    /// Rule 2: alive means answering. Behind a closed window our data is
    /// not something the peer owes an answer to (the stack reports
    /// `Outstanding(false)`); answers without progress for a minute are
    /// not a failure.
    #[test]
    fn closed_window_answered_is_never_a_failure() {
        let mut lc = initiator(ms(0));
        lc.handle(ms(0), Input::Outstanding(false));
        for second in 1..=60 {
            let now = ms(second * 1000);
            assert!(run(&mut lc, now).is_empty(), "failed at {second} s");
            assert!(feed(&mut lc, now, Input::PeerAnswered).is_empty());
        }
        assert_eq!(lc.state(), State::Attached);
        assert_eq!(lc.failures(), 0);
    }

    /// Rule 3.
    #[test]
    fn silent_path_is_no_answer_for_keepalive_plus_stall() {
        let mut lc = responder(ms(0));
        lc.handle(ms(2000), Input::PeerAnswered);
        assert_eq!(lc.poll_timeout(), Some(ms(10_000)));
        assert!(run(&mut lc, ms(9999)).is_empty());
        assert_eq!(
            run(&mut lc, ms(10_000)),
            [(
                ms(10_000),
                Action::Abandon {
                    cause: FailureCause::SilentPath,
                    notify: true
                }
            )]
        );
    }

    /// Rule 4: abandon and open an attempt in the same call, then drop and
    /// reopen every 250 ms for 30 s, then less often up to `retry_max`, and
    /// lose the flow `resume_timeout` after the failure.
    #[test]
    fn initiator_resumes_at_once_then_backs_off_until_resume_timeout() {
        let mut lc = initiator(ms(0));
        assert_eq!(
            feed(&mut lc, ms(1000), Input::Failed(FailureCause::Reset)),
            [ABANDON_RESET, Action::OpenAttempt]
        );
        assert_eq!(lc.state(), State::Resuming { attempts: 1 });
        assert_eq!(lc.failed_at(), Some(ms(1000)));

        let timed = run(&mut lc, ms(120_000));
        // Every attempt after the first is preceded by dropping the last.
        for pair in timed[..timed.len() - 2].chunks(2) {
            assert_eq!(pair[0].1, Action::DropAttempt);
            assert_eq!(pair[1], (pair[0].0, Action::OpenAttempt));
        }
        let mut starts = vec![ms(1000)];
        starts.extend(opens(&timed));
        let gaps: Vec<u64> = starts
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis() as u64)
            .collect();
        // 250 ms apart for the first 30 s of the outage, then growing with
        // the outage's length to the 2 s cap.
        let fast = starts.iter().filter(|&&t| t < ms(31_000)).count() - 1;
        assert!(gaps[..fast].iter().all(|&g| g == 250), "{gaps:?}");
        assert_eq!(fast, 119);
        assert!(gaps[fast..].windows(2).all(|g| g[0] <= g[1]), "{gaps:?}");
        assert!(gaps[fast..].iter().all(|&g| (250..=2000).contains(&g)));
        assert_eq!(gaps[gaps.len() - 1], 2000);
        assert_eq!(
            timed[timed.len() - 2..],
            [
                (ms(61_000), Action::DropAttempt),
                (ms(61_000), Action::Lose(LostCause::Timeout))
            ]
        );
        assert_eq!(lc.state(), State::Lost(LostCause::Timeout));
        assert_eq!(lc.poll_timeout(), None);
    }

    /// Rule 4: whatever happens, attempts start at least
    /// `min_resume_interval` apart.
    #[test]
    fn resume_never_starts_within_min_interval_of_the_last_attempt() {
        let mut lc = initiator(ms(0));
        lc.handle(ms(1000), Input::Failed(FailureCause::Reset));
        lc.handle(ms(1050), Input::Resumed);
        lc.handle(ms(1060), Input::Progress);
        let _ = actions(&mut lc);
        assert_eq!(lc.attempts(), 0, "settled");
        assert_eq!(
            feed(&mut lc, ms(1100), Input::Failed(FailureCause::Reset)),
            [ABANDON_RESET]
        );
        assert_eq!(lc.poll_timeout(), Some(ms(1250)));
        assert_eq!(run(&mut lc, ms(1250)), [(ms(1250), Action::OpenAttempt)]);
    }

    /// Drives `cycles` resumes that are reset 10 ms after being accepted,
    /// each before any progress. Returns the attempt start times.
    fn storm(lc: &mut Lifecycle, cycles: usize) -> Vec<Timestamp> {
        assert_eq!(
            feed(lc, ms(0), Input::Failed(FailureCause::Reset)),
            [ABANDON_RESET, Action::OpenAttempt]
        );
        let mut starts = vec![ms(0)];
        for _ in 0..cycles {
            let Some(&last) = starts.last() else { break };
            let now = last + Duration::from_millis(10);
            assert!(feed(lc, now, Input::Resumed).is_empty());
            let after_reset = feed(lc, now, Input::Failed(FailureCause::Reset));
            if lc.state().is_final() {
                break;
            }
            assert_eq!(after_reset, [ABANDON_RESET], "no attempt at once");
            let Some(due) = lc.poll_timeout() else { break };
            lc.handle_timeout(due);
            match actions(lc)[..] {
                [Action::OpenAttempt] => starts.push(due),
                _ => break,
            }
        }
        starts
    }

    /// Rule 5 (storm guard): a resume reset right after acceptance counts as
    /// a failed attempt, so a hundred of them are paced like failed attempts:
    /// never at once, never more than four attempts a second.
    #[test]
    fn reset_right_after_resume_counts_as_a_failed_attempt() {
        let config = LifecycleConfig {
            resume_timeout: Duration::from_secs(3600),
            ..LifecycleConfig::default()
        };
        let mut lc = Lifecycle::new(Role::Initiator, true, config, ms(0));
        let starts = storm(&mut lc, 100);
        assert_eq!(starts.len(), 101);
        let (first, last) = (starts[0], starts[100]);
        let elapsed_ms = (last - first).as_millis() as u64;
        assert!(101 * 1000 <= elapsed_ms * 4 + 1000, "{elapsed_ms} ms");
        let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[0] <= g[1]), "{gaps:?}");
        assert!(
            gaps.iter().all(|&g| g >= config.min_resume_interval),
            "{gaps:?}"
        );
        assert_eq!(lc.resumes(), 100);
        assert_eq!(lc.failed_at(), Some(ms(0)), "the outage never ended");
    }

    /// Rule 5 with rule 4: a storm carries no data, so the outage that began
    /// at the first failure is lost at its deadline.
    #[test]
    fn storm_that_never_carries_data_is_lost_at_the_first_failures_deadline() {
        let mut lc = initiator(ms(0));
        let starts = storm(&mut lc, 1000);
        assert_eq!(lc.state(), State::Lost(LostCause::Timeout));
        let last = starts.last().copied().unwrap_or(ms(0));
        assert!(last < ms(60_000), "{last:?}");
        assert!(starts.len() <= 60 * 4 + 1, "{}", starts.len());
    }

    /// Rule 6: answers on a resumed connection do not reset the backoff;
    /// progress does.
    #[test]
    fn backoff_resets_only_after_progress_on_a_resumed_connection() {
        let mut lc = initiator(ms(0));
        lc.handle(ms(0), Input::Failed(FailureCause::Reset));
        let _ = actions(&mut lc);
        run(&mut lc, ms(250)); // second attempt at 250
        assert_eq!(lc.attempts(), 2);
        lc.handle(ms(300), Input::Resumed);
        lc.handle(ms(320), Input::PeerAnswered);
        assert_eq!(
            feed(&mut lc, ms(400), Input::Failed(FailureCause::Reset)),
            [ABANDON_RESET]
        );
        assert_eq!(lc.state(), State::Resuming { attempts: 2 });
        assert_eq!(lc.poll_timeout(), Some(ms(500)), "250 ms + retry_delay");

        assert_eq!(run(&mut lc, ms(500)), [(ms(500), Action::OpenAttempt)]);
        lc.handle(ms(700), Input::Resumed);
        lc.handle(ms(710), Input::Progress);
        assert_eq!(lc.attempts(), 0);
        assert_eq!(lc.failed_at(), None);
        assert_eq!(
            feed(&mut lc, ms(1000), Input::Failed(FailureCause::Reset)),
            [ABANDON_RESET, Action::OpenAttempt]
        );
        assert_eq!(lc.failed_at(), Some(ms(1000)));
        assert_eq!(lc.state(), State::Resuming { attempts: 1 });
    }

    /// Rule 6, idle flows: a resumed connection with nothing to carry that
    /// stays up `settle_time` settles too.
    #[test]
    fn idle_resumed_connection_settles_after_settle_time() {
        let mut lc = initiator(ms(0));
        lc.handle(ms(0), Input::Failed(FailureCause::Reset));
        run(&mut lc, ms(250));
        lc.handle(ms(300), Input::Resumed);
        lc.handle(ms(5000), Input::PeerAnswered);
        assert!(run(&mut lc, ms(10_299)).is_empty());
        assert_eq!((lc.attempts(), lc.failed_at()), (2, Some(ms(0))));
        assert!(run(&mut lc, ms(10_300)).is_empty());
        assert_eq!((lc.attempts(), lc.failed_at()), (0, None));
        assert_eq!(
            feed(&mut lc, ms(11_000), Input::Failed(FailureCause::Reset)),
            [ABANDON_RESET, Action::OpenAttempt]
        );
        assert_eq!(lc.failed_at(), Some(ms(11_000)));
    }

    /// Rule 7: a refusal loses the flow at once.
    #[test]
    fn refused_attempt_loses_the_flow_at_once() {
        let mut lc = initiator(ms(0));
        lc.handle(ms(0), Input::Failed(FailureCause::Reset));
        let _ = actions(&mut lc);
        assert_eq!(
            feed(&mut lc, ms(100), Input::AttemptFailed { refused: true }),
            [Action::DropAttempt, Action::Lose(LostCause::Refused)]
        );
        assert_eq!(lc.state(), State::Lost(LostCause::Refused));
        assert_eq!(lc.poll_timeout(), None);
        assert!(run(&mut lc, ms(1_000_000)).is_empty());
    }

    /// Rule 7: a bare RST or no answer is transient: retry on the backoff.
    #[test]
    fn transient_attempt_failure_retries_on_backoff() {
        let mut lc = initiator(ms(0));
        lc.handle(ms(0), Input::Failed(FailureCause::Reset));
        let _ = actions(&mut lc);
        assert_eq!(
            feed(&mut lc, ms(100), Input::AttemptFailed { refused: false }),
            [Action::DropAttempt]
        );
        assert_eq!(lc.poll_timeout(), Some(ms(250)));
        assert_eq!(run(&mut lc, ms(250)), [(ms(250), Action::OpenAttempt)]);
        assert_eq!(lc.state(), State::Resuming { attempts: 2 });
    }

    /// Rule 7: a SYN-ACK that fails the mirror checks loses the flow with
    /// its cause; a stale report (no attempt in flight) changes nothing.
    #[test]
    fn attempt_lost_loses_the_flow_with_its_cause() {
        let mut lc = initiator(ms(0));
        lc.handle(ms(0), Input::Failed(FailureCause::Reset));
        lc.handle(ms(100), Input::AttemptFailed { refused: false });
        let _ = actions(&mut lc);
        let cause = LostCause::Mismatch(ResumeMismatch::Finished);
        assert!(feed(&mut lc, ms(120), Input::AttemptLost(cause)).is_empty());
        run(&mut lc, ms(250));
        assert_eq!(
            feed(&mut lc, ms(300), Input::AttemptLost(cause)),
            [Action::DropAttempt, Action::Lose(cause)]
        );
        assert_eq!(lc.state(), State::Lost(cause));
    }

    /// Rule 8: the responder detaches and waits; it never opens attempts and
    /// arms no timer of its own while detached.
    #[test]
    fn responder_detaches_and_never_opens_attempts() {
        let mut lc = responder(ms(0));
        assert_eq!(
            feed(&mut lc, ms(1000), Input::Failed(FailureCause::Reset)),
            [ABANDON_RESET]
        );
        assert_eq!(lc.state(), State::Detached);
        assert_eq!(lc.poll_timeout(), None);
        assert!(run(&mut lc, ms(3_600_000)).is_empty());
        assert!(feed(&mut lc, ms(5000), Input::Resumed).is_empty());
        assert_eq!(lc.state(), State::Attached);
        assert_eq!(lc.resumes(), 1);
        assert_eq!(lc.failed_at(), Some(ms(1000)));
        lc.handle(ms(5010), Input::Progress);
        assert_eq!(lc.failed_at(), None);
        assert_eq!(lc.total_attempts(), 0);
    }

    /// Rule 8: a resume accepted while the flow is still attached supersedes
    /// the old connection, which the responder abandons with a notice.
    #[test]
    fn responder_resume_while_attached_supersedes_the_old_connection() {
        let mut lc = responder(ms(0));
        assert_eq!(
            feed(&mut lc, ms(1000), Input::Resumed),
            [Action::Abandon {
                cause: FailureCause::Superseded,
                notify: true
            }]
        );
        assert_eq!(lc.state(), State::Attached);
    }

    /// Rule 8 (DESIGN/issue): a side that abandons a connection that may
    /// still work says so; a dead connection gets no notice.
    #[test]
    fn abandon_notifies_only_when_the_connection_may_still_live() {
        use FailureCause::*;
        let table = [
            (Reset, false),
            (PeerAbandoned, false),
            (Closed, false),
            (Explicit, true),
            (Stall, true),
            (SilentPath, true),
            (AddressChanged, true),
            (OptionDidNotFit, true),
        ];
        for (cause, notify) in table {
            for mut lc in [initiator(ms(0)), responder(ms(0))] {
                let got = feed(&mut lc, ms(1000), Input::Failed(cause));
                // The initiator keeps a connection that may recover while
                // it resumes (make before break).
                let kept = lc.role() == Role::Initiator && matches!(cause, Stall | SilentPath);
                let expected = if kept {
                    Action::Suspect { cause }
                } else {
                    Action::Abandon { cause, notify }
                };
                assert_eq!(got[0], expected, "{cause}");
            }
        }
        // Superseded is the driver's own (on `Resumed`), never an input.
        assert!(Superseded.notifies_peer());
        let mut lc = responder(ms(0));
        assert!(feed(&mut lc, ms(1000), Input::Failed(Superseded)).is_empty());
        assert_eq!(lc.state(), State::Attached);
    }

    /// Rule 9: the peer abandoned the connection on purpose: resume at once,
    /// even during a storm, held back only by `min_resume_interval`.
    #[test]
    fn peer_abandoned_resumes_at_once_subject_only_to_min_interval() {
        let abandoned = Action::Abandon {
            cause: FailureCause::PeerAbandoned,
            notify: false,
        };
        // No fast period: the storm backoff grows with the outage at once.
        let config = LifecycleConfig {
            fast_retry_period: Duration::ZERO,
            ..LifecycleConfig::default()
        };
        let mut lc = Lifecycle::new(Role::Initiator, true, config, ms(0));
        assert_eq!(
            feed(&mut lc, ms(0), Input::Failed(FailureCause::PeerAbandoned)),
            [abandoned, Action::OpenAttempt]
        );
        run(&mut lc, ms(1040)); // attempts at 250, 500, 1000
        assert_eq!(lc.attempts(), 4);
        lc.handle(ms(1050), Input::Resumed);
        assert_eq!(
            feed(
                &mut lc,
                ms(1100),
                Input::Failed(FailureCause::PeerAbandoned)
            ),
            [abandoned]
        );
        // Not 1000 + retry_delay(1.1 s) = 2100.
        assert_eq!(lc.poll_timeout(), Some(ms(1250)));
        assert_eq!(run(&mut lc, ms(1250)), [(ms(1250), Action::OpenAttempt)]);
    }

    /// Every input, for the "ignores everything" rules.
    fn every_input() -> Vec<Input> {
        vec![
            Input::PeerAnswered,
            Input::Outstanding(true),
            Input::Progress,
            Input::Outstanding(false),
            Input::Failed(FailureCause::Reset),
            Input::Failed(FailureCause::Stall),
            Input::AttemptFailed { refused: false },
            Input::AttemptFailed { refused: true },
            Input::AttemptLost(LostCause::SynAckForeign),
            Input::Resumed,
            Input::Abort,
            Input::PeerAborted,
            Input::Finished,
        ]
    }

    /// Asserts that nothing moves the driver any more.
    fn assert_inert(lc: &mut Lifecycle, state: State) {
        for (i, input) in every_input().into_iter().enumerate() {
            let now = ms(10_000 + i as u64 * 1000);
            assert!(feed(lc, now, input).is_empty(), "{input:?}");
            assert_eq!(lc.poll_timeout(), None, "{input:?}");
        }
        assert!(run(lc, ms(10_000_000)).is_empty());
        assert_eq!(lc.state(), state);
    }

    /// Rule 10: abort resets the live connection once, with the abort
    /// notice (a bare RST for legacy), and then the driver is inert.
    #[test]
    fn abort_resets_once_then_ignores_everything() {
        let mut lc = initiator(ms(0));
        lc.handle(ms(0), Input::Outstanding(true));
        assert_eq!(
            feed(&mut lc, ms(1000), Input::Abort),
            [Action::ResetConnection {
                notify: Notify::Abort
            }]
        );
        assert_eq!(lc.poll_timeout(), None);
        assert_inert(&mut lc, State::Aborted);

        let mut lc = legacy(ms(0));
        assert_eq!(
            feed(&mut lc, ms(1000), Input::Abort),
            [Action::ResetConnection {
                notify: Notify::Bare
            }]
        );
        assert_inert(&mut lc, State::Aborted);

        // While resuming, only the attempt is left to release.
        let mut lc = initiator(ms(0));
        lc.handle(ms(0), Input::Failed(FailureCause::Reset));
        let _ = actions(&mut lc);
        assert_eq!(feed(&mut lc, ms(100), Input::Abort), [Action::DropAttempt]);
        assert_inert(&mut lc, State::Aborted);
    }

    /// Rule 11: the peer aborted: the flow is lost, no resume is tried.
    #[test]
    fn peer_aborted_loses_the_flow_without_attempts() {
        let mut lc = initiator(ms(0));
        assert_eq!(
            feed(&mut lc, ms(1000), Input::PeerAborted),
            [ABANDON_RESET, Action::Lose(LostCause::PeerAborted)]
        );
        assert_eq!(lc.total_attempts(), 0);
        assert_inert(&mut lc, State::Lost(LostCause::PeerAborted));
    }

    /// Rule 12: a finished stream has no timers and emits nothing.
    #[test]
    fn finished_arms_no_timers_and_emits_nothing() {
        let mut lc = initiator(ms(0));
        lc.handle(ms(0), Input::Outstanding(true));
        assert!(feed(&mut lc, ms(1000), Input::Finished).is_empty());
        assert_eq!(lc.poll_timeout(), None);
        assert_inert(&mut lc, State::Finished);
    }

    /// Rule 13: legacy data unacknowledged for `user_timeout` fails the
    /// stream; progress restarts the clock, answers alone do not.
    #[test]
    fn legacy_user_timeout_is_no_progress_while_outstanding() {
        let mut lc = legacy(ms(0));
        assert_eq!(lc.poll_timeout(), Some(ms(35_000)), "idle: the silent path");
        lc.handle(ms(1000), Input::Outstanding(true));
        assert_eq!(lc.poll_timeout(), Some(ms(31_000)));
        lc.handle(ms(10_000), Input::Progress);
        assert_eq!(lc.poll_timeout(), Some(ms(40_000)));
        for second in 11..40 {
            let now = ms(second * 1000);
            assert!(run(&mut lc, now).is_empty());
            lc.handle(now, Input::PeerAnswered);
            assert_eq!(
                lc.poll_timeout(),
                Some(ms(40_000)),
                "answers are not progress"
            );
        }
        assert_eq!(
            run(&mut lc, ms(40_000)),
            [
                (
                    ms(40_000),
                    Action::ResetConnection {
                        notify: Notify::Bare
                    }
                ),
                (ms(40_000), Action::Fail(LegacyEnd::UserTimeout))
            ]
        );
        assert_eq!(lc.state(), State::Failed(LegacyEnd::UserTimeout));
    }

    /// Rule 13: a legacy reset fails the stream at once.
    #[test]
    fn legacy_reset_fails_at_once() {
        let mut lc = legacy(ms(0));
        assert_eq!(
            feed(&mut lc, ms(1000), Input::Failed(FailureCause::Reset)),
            [ABANDON_RESET, Action::Fail(LegacyEnd::Reset)]
        );
        assert_inert(&mut lc, State::Failed(LegacyEnd::Reset));
    }

    /// Rule 13: legacy streams have no stall or silent path, never resume
    /// and never send our option.
    #[test]
    fn legacy_never_stalls_resumes_or_notifies() {
        let mut lc = legacy(ms(0));
        lc.handle(ms(0), Input::Outstanding(true));
        assert_eq!(lc.poll_timeout(), Some(ms(30_000)), "only the user timeout");
        lc.handle(ms(1000), Input::Outstanding(false));
        assert_eq!(
            lc.poll_timeout(),
            Some(ms(35_000)),
            "only the silent path: keepalive + user timeout"
        );
        for cause in [
            FailureCause::Explicit,
            FailureCause::Stall,
            FailureCause::SilentPath,
        ] {
            assert!(feed(&mut lc, ms(2000), Input::Failed(cause)).is_empty());
        }
        assert!(feed(&mut lc, ms(2000), Input::Resumed).is_empty());
        assert_eq!(
            feed(
                &mut lc,
                ms(3000),
                Input::Failed(FailureCause::AddressChanged)
            ),
            [
                Action::Abandon {
                    cause: FailureCause::AddressChanged,
                    notify: false
                },
                Action::Fail(LegacyEnd::Reset)
            ]
        );
        assert_eq!(lc.total_attempts(), 0);
    }

    /// A peer that answers every probe but acknowledges nothing of our
    /// outstanding data (open window) is stuck behind TCP's retransmission
    /// backoff: after `stall_timeout` without progress, resume.
    #[test]
    fn answered_but_no_progress_while_outstanding_is_a_stall_after_stall_timeout() {
        let mut lc = initiator(ms(0));
        lc.handle(ms(0), Input::Outstanding(true));
        for t in (100..3000).step_by(100) {
            lc.handle(ms(t), Input::PeerAnswered);
            assert!(run(&mut lc, ms(t)).is_empty(), "answered at {t} ms");
        }
        lc.handle(ms(3000), Input::PeerAnswered);
        assert_eq!(
            run(&mut lc, ms(3000)),
            [
                (
                    ms(3000),
                    Action::Suspect {
                        cause: FailureCause::Stall
                    }
                ),
                (ms(3000), Action::OpenAttempt)
            ]
        );
    }

    /// The stack's RTT estimate sets the budgets: a shorter stall and a
    /// shorter silent path take effect at once, from the last answer.
    #[test]
    fn liveness_budgets_follow_the_stacks_estimate() {
        let mut lc = initiator(ms(0));
        lc.handle(ms(100), Input::PeerAnswered);
        lc.set_liveness(Liveness {
            stall: Duration::from_millis(400),
            silent: Duration::from_millis(600),
        });
        assert_eq!(
            lc.poll_timeout(),
            Some(ms(700)),
            "silent path from the answer"
        );
        lc.handle(ms(200), Input::Outstanding(true));
        assert_eq!(lc.poll_timeout(), Some(ms(600)), "stall from outstanding");
        assert_eq!(
            run(&mut lc, ms(600)),
            [
                (
                    ms(600),
                    Action::Suspect {
                        cause: FailureCause::Stall
                    }
                ),
                (ms(600), Action::OpenAttempt)
            ]
        );
    }

    /// Legacy, idle: a peer that answers nothing (keepalives included) for
    /// keepalive + user timeout is gone; answers keep it alive.
    #[test]
    fn legacy_silent_path_ends_in_a_reset_after_keepalive_plus_user_timeout() {
        let mut lc = legacy(ms(0));
        lc.handle(ms(0), Input::Outstanding(false));
        lc.handle(ms(20_000), Input::PeerAnswered);
        lc.handle_timeout(ms(35_000));
        assert!(actions(&mut lc).is_empty(), "answered at 20 s");
        lc.handle_timeout(ms(55_000));
        assert_eq!(
            actions(&mut lc),
            [
                Action::ResetConnection {
                    notify: Notify::Bare
                },
                Action::Fail(LegacyEnd::Reset)
            ]
        );
        assert_eq!(lc.state(), State::Failed(LegacyEnd::Reset));
    }

    /// Rule 14: one table; `poll_timeout` is its earliest entry and
    /// `handle_timeout` before it does nothing.
    #[test]
    fn poll_timeout_is_the_earliest_timer_and_early_timeouts_do_nothing() {
        let mut lc = initiator(ms(0));
        lc.handle(ms(0), Input::Failed(FailureCause::Reset));
        let _ = actions(&mut lc);
        assert_eq!(lc.timers.get(Timer::Attempt), Some(ms(250)));
        assert_eq!(lc.timers.get(Timer::ResumeDeadline), Some(ms(60_000)));
        assert_eq!(lc.poll_timeout(), Some(ms(250)));
        let before = (lc.timers.clone(), lc.state());
        lc.handle_timeout(ms(249));
        assert!(actions(&mut lc).is_empty());
        assert_eq!((lc.timers.clone(), lc.state()), before);

        let mut table = TimerTable::default();
        table.set(Timer::Attempt, ms(5));
        table.set(Timer::ResumeDeadline, ms(5));
        table.set(Timer::Stall, ms(7));
        table.set(Timer::Settle, ms(3));
        assert_eq!(table.next(), Some(ms(3)));
        assert_eq!(
            table.due(ms(5)),
            [
                (ms(3), Timer::Settle),
                (ms(5), Timer::ResumeDeadline),
                (ms(5), Timer::Attempt)
            ]
        );
    }

    /// Rule 14: when the deadline and an attempt fall due together, the
    /// deadline wins: no attempt opens only to be dropped.
    #[test]
    fn deadline_due_with_an_attempt_loses_without_opening() {
        let config = LifecycleConfig {
            resume_timeout: Duration::from_millis(250),
            ..LifecycleConfig::default()
        };
        let mut lc = Lifecycle::new(Role::Initiator, true, config, ms(0));
        lc.handle(ms(0), Input::Failed(FailureCause::Reset));
        let _ = actions(&mut lc);
        lc.handle_timeout(ms(250));
        assert_eq!(
            actions(&mut lc),
            [Action::DropAttempt, Action::Lose(LostCause::Timeout)]
        );
    }

    #[test]
    fn attempts_stay_fast_for_the_first_30_s_then_grow_to_the_cap() {
        let c = LifecycleConfig::default();
        let at = |s: f64| c.retry_delay(Duration::from_secs_f64(s)).as_millis();
        assert_eq!([at(0.0), at(10.0), at(29.9)], [250, 250, 250]);
        assert_eq!(
            [at(30.0), at(30.5), at(31.0), at(31.5)],
            [250, 500, 1000, 1500]
        );
        assert_eq!([at(32.0), at(60.0), at(3600.0)], [2000, 2000, 2000]);
    }

    #[test]
    fn causes_display_as_short_lowercase_text() {
        assert_eq!(FailureCause::Reset.to_string(), "reset");
        assert_eq!(FailureCause::Stall.to_string(), "stall");
        assert_eq!(FailureCause::SilentPath.to_string(), "silent path");
        assert_eq!(LegacyEnd::UserTimeout.to_string(), "user timeout");
    }

    /// An initiator whose connection stalls, suspected and resuming.
    fn suspecting(now: Timestamp) -> Lifecycle {
        let mut lc = initiator(ms(0));
        lc.handle(ms(0), Input::Outstanding(true));
        let got = feed(&mut lc, now, Input::Failed(FailureCause::Stall));
        assert_eq!(
            got,
            [
                Action::Suspect {
                    cause: FailureCause::Stall
                },
                Action::OpenAttempt
            ]
        );
        assert!(lc.has_suspect());
        assert_eq!(lc.state(), State::Resuming { attempts: 1 });
        lc
    }

    /// Make before break: the old connection carries data before any
    /// attempt resumed the flow: it wins, the attempt goes, the outage ends.
    #[test]
    fn make_before_break_keeps_the_old_connection_when_it_recovers_first() {
        let mut lc = suspecting(ms(1000));
        // An answer that carries nothing new is no win.
        assert!(feed(&mut lc, ms(1100), Input::PeerAnswered).is_empty());
        assert!(lc.has_suspect());
        let got = feed(&mut lc, ms(1200), Input::Progress);
        assert_eq!(got, [Action::DropAttempt, Action::KeepSuspect]);
        assert_eq!(lc.state(), State::Attached);
        assert!(!lc.has_suspect());
        assert_eq!((lc.recoveries(), lc.resumes(), lc.attempts()), (1, 0, 0));
        assert_eq!(lc.failed_at(), None, "the outage is over");
        // No attempt and no resume deadline remain: the next timer is the
        // stall clock of the kept connection.
        assert_eq!(lc.poll_timeout(), Some(ms(1200) + Duration::from_secs(3)));
    }

    /// Make before break: an attempt that resumes the flow first releases
    /// the suspect before the new connection carries anything.
    #[test]
    fn make_before_break_releases_the_suspect_when_the_resume_wins() {
        let mut lc = suspecting(ms(1000));
        let got = feed(&mut lc, ms(1050), Input::Resumed);
        assert_eq!(
            got,
            [Action::Abandon {
                cause: FailureCause::Superseded,
                notify: false
            }]
        );
        assert_eq!(lc.state(), State::Attached);
        assert!(!lc.has_suspect());
        assert_eq!((lc.recoveries(), lc.resumes()), (0, 1));
        // Progress now belongs to the new connection.
        assert!(feed(&mut lc, ms(1100), Input::Progress).is_empty());
    }

    /// A suspect that fails for good is released; the attempts go on.
    #[test]
    fn a_suspect_that_fails_is_released_and_resuming_goes_on() {
        let mut lc = suspecting(ms(1000));
        let got = feed(&mut lc, ms(1100), Input::Failed(FailureCause::Reset));
        assert_eq!(
            got,
            [Action::Abandon {
                cause: FailureCause::Reset,
                notify: false
            }]
        );
        assert!(!lc.has_suspect());
        assert_eq!(lc.state(), State::Resuming { attempts: 1 });
        // Progress can no longer come from it.
        assert!(feed(&mut lc, ms(1200), Input::Progress).is_empty());
        assert_eq!(
            run(&mut lc, ms(1250)),
            [
                (ms(1250), Action::DropAttempt),
                (ms(1250), Action::OpenAttempt)
            ]
        );
    }

    /// Every way out of an outage releases the suspect exactly once.
    #[test]
    fn the_suspect_is_released_on_loss_abort_and_peer_abort() {
        let mut lc = suspecting(ms(1000));
        let deadline = ms(1000) + LifecycleConfig::default().resume_timeout;
        let got: Vec<Action> = run(&mut lc, deadline)
            .into_iter()
            .map(|(_, a)| a)
            .filter(|a| !matches!(a, Action::OpenAttempt | Action::DropAttempt))
            .collect();
        assert_eq!(
            got,
            [
                Action::Abandon {
                    cause: FailureCause::Closed,
                    notify: false
                },
                Action::Lose(LostCause::Timeout)
            ]
        );

        let mut lc = suspecting(ms(1000));
        assert_eq!(
            feed(&mut lc, ms(1100), Input::Abort),
            [
                Action::ResetConnection {
                    notify: Notify::Abort
                },
                Action::DropAttempt
            ]
        );

        let mut lc = suspecting(ms(1000));
        assert_eq!(
            feed(&mut lc, ms(1100), Input::PeerAborted),
            [
                Action::Abandon {
                    cause: FailureCause::Reset,
                    notify: false
                },
                Action::DropAttempt,
                Action::Lose(LostCause::PeerAborted)
            ]
        );
    }

    /// Causes that say the connection is gone are never kept.
    #[test]
    fn only_a_stall_or_a_silent_path_makes_a_suspect() {
        use FailureCause::*;
        for cause in [
            Reset,
            PeerAbandoned,
            Closed,
            Explicit,
            AddressChanged,
            OptionDidNotFit,
        ] {
            let mut lc = initiator(ms(0));
            feed(&mut lc, ms(1000), Input::Failed(cause));
            assert!(!lc.has_suspect(), "{cause}");
        }
    }
}
