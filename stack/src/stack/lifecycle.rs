//! The flow lifecycle, carried out: each stream's sans-IO driver
//! ([`tifid::lifecycle::Lifecycle`]) decides on failures, resume attempts
//! and their backoff, abort, loss and the legacy user timeout; this module
//! feeds it what the connections show (answers, progress, resets, closes)
//! and executes its actions on sockets and flows. It decides nothing the
//! driver decides, and never drops a connection the driver did not release
//! (except handshakes that never made a stream and clean closes).

use tifid::lifecycle::{
    Action, FailureCause, Input, LegacyEnd, Lifecycle, LifecycleConfig, Notify,
};

use super::pump::PumpMode;
use super::*;

impl<D: Device> Stack<D> {
    /// The driver's settings, from the stack's.
    fn lifecycle_config(&self) -> LifecycleConfig {
        LifecycleConfig {
            stall_timeout: self.config.stall_timeout,
            keepalive: self.config.keepalive,
            resume_timeout: self.config.resume_timeout,
            retry_first: self.config.resume_backoff,
            user_timeout: self.config.user_timeout,
            ..LifecycleConfig::default()
        }
    }

    /// Gives a stream whose first connection is established its driver
    /// (a new one after a clean finish, for the resume that confirms a
    /// close: see [`Stack::service_connection`]).
    fn start_lifecycle(&mut self, now: Instant, id: StreamId) {
        let config = self.lifecycle_config();
        let ts = self.ts(now);
        if let Some(s) = self.streams.get_mut(&id) {
            let resilient = matches!(s.mode, StreamMode::Known(Mode::Resilient { .. }));
            s.life = Some(Lifecycle::new(s.role, resilient, config, ts));
        }
    }

    /// Feeds `input` to the stream's driver and carries out what it decides.
    pub(super) fn life_input(&mut self, now: Instant, id: StreamId, input: Input) {
        let ts = self.ts(now);
        let Some(life) = self.streams.get_mut(&id).and_then(|s| s.life.as_mut()) else {
            return;
        };
        life.handle(ts, input);
        self.run_actions(now, id);
    }

    /// Fires the driver's due timers.
    fn life_timers(&mut self, now: Instant, id: StreamId) {
        let ts = self.ts(now);
        let Some(life) = self.streams.get_mut(&id).and_then(|s| s.life.as_mut()) else {
            return;
        };
        if life.poll_timeout().is_some_and(|t| t <= ts) {
            life.handle_timeout(ts);
            self.run_actions(now, id);
        }
    }

    /// When the stream's driver next needs the clock.
    pub(super) fn life_deadline(&self, id: StreamId) -> Option<Instant> {
        let s = self.streams.get(&id)?;
        let at = s.life.as_ref()?.poll_timeout()?;
        Some(self.epoch + SmolDuration::from_micros(at.micros()))
    }

    fn run_actions(&mut self, now: Instant, id: StreamId) {
        while let Some(action) = self
            .streams
            .get_mut(&id)
            .and_then(|s| s.life.as_mut())
            .and_then(Lifecycle::poll_action)
        {
            self.execute(now, id, action);
        }
    }

    fn execute(&mut self, now: Instant, id: StreamId, action: Action) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        let tifid = s.tifid;
        let conn = s.conn;
        let suspect = s.suspect;
        let phase_of = |h: ConnId| self.conns.get(&h).map(|c| &c.phase);
        let attempt = conn.filter(|&h| matches!(phase_of(h), Some(Phase::SynSent(_))));
        // While a suspect is kept, the driver's "attached connection" is
        // the suspect (the module contract of `tifid::lifecycle`).
        let attached = match suspect {
            Some(suspect) => Some(suspect.handle),
            None => conn.filter(|_| attempt.is_none()),
        };
        match action {
            Action::Abandon { cause, notify } => {
                if let Some(suspect) = suspect {
                    self.release_suspect(now, id, suspect.handle, cause);
                } else if let Some(handle) = attached {
                    self.abandon_connection(now, id, handle, cause, notify);
                }
            }
            Action::Suspect { cause } => {
                if let Some(handle) = attached {
                    self.suspect_connection(now, id, handle, cause);
                }
            }
            Action::KeepSuspect => self.keep_suspect(id),
            Action::OpenAttempt => self.open_resume_attempt(now, id),
            Action::DropAttempt => {
                if let Some(handle) = attempt {
                    debug!(?tifid, "resume attempt given up");
                    self.drop_connection(handle);
                }
            }
            Action::Lose(cause) => {
                for handle in [conn, suspect.map(|s| s.handle)].into_iter().flatten() {
                    self.drop_connection(handle);
                }
                warn!(?tifid, %cause, "flow lost");
                self.lose_flow(id, cause);
            }
            Action::ResetConnection { notify } => {
                if let Some(handle) = suspect.map(|s| s.handle).or(conn) {
                    let option = tifid.filter(|_| notify == Notify::Abort).map(|tifid| {
                        tifid::FlowOptionRepr {
                            tifid,
                            tiseq: Seq48::ZERO,
                            tiack: Seq48::ZERO,
                        }
                    });
                    self.reset_connection(now, handle, option);
                }
            }
            Action::Fail(end) => {
                if let Some(handle) = conn {
                    self.drop_connection(handle);
                }
                if let Some(s) = self.streams.get_mut(&id)
                    && s.error.is_none()
                {
                    info!(peer = %s.peer, %end, "legacy connection ended");
                    s.error = Some(match end {
                        LegacyEnd::Reset => StreamError::ConnectionReset,
                        LegacyEnd::UserTimeout => StreamError::UserTimeout,
                    });
                }
            }
        }
    }

    /// Gives up the attached connection: takes everything TCP delivered
    /// (I1), then drops it, or resets it carrying our option with the
    /// flow's positions when `notify` (the peer acts at once instead of
    /// waiting for a probe), and detaches the flow.
    fn abandon_connection(
        &mut self,
        now: Instant,
        id: StreamId,
        handle: ConnId,
        cause: FailureCause,
        notify: bool,
    ) {
        self.pump(now, id, handle, PumpMode::Drain);
        let synchronized = self
            .conns
            .get(&handle)
            .is_some_and(|c| matches!(c.phase, Phase::Open | Phase::Confirming(_)));
        let ts = self.ts(now);
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let flow = s.tifid.and_then(|t| self.table.get_mut(t));
        let notice = flow
            .as_deref()
            .filter(|_| notify && synchronized)
            .map(|flow| {
                let p = flow.positions();
                tifid::FlowOptionRepr {
                    tifid: flow.tifid(),
                    tiseq: p.snd_una,
                    tiack: p.rcv_nxt,
                }
            });
        if let Some(flow) = flow {
            flow.detach(ts);
            if s.failed_at.is_none() {
                s.failed_at = Some(now);
                s.gap_from.get_or_insert(s.last_progress_at);
                info!(tifid = %flow.tifid(), %cause, "TI connection failed: flow detached");
                self.metrics.note_failure(cause);
            }
        }
        match notice {
            Some(option) => self.reset_connection(now, handle, Some(option)),
            None => self.drop_connection(handle),
        }
    }

    /// Make before break: keeps the stalled or silent connection while the
    /// flow resumes. It takes no new bytes and its acknowledgements are not
    /// applied (`PumpMode::Watch`), so the flow's positions, which the
    /// resume SYN names, stay put; the flow is detached as for a failure.
    fn suspect_connection(
        &mut self,
        now: Instant,
        id: StreamId,
        handle: ConnId,
        cause: FailureCause,
    ) {
        self.pump(now, id, handle, PumpMode::Drain);
        let ts = self.ts(now);
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if let Some(flow) = s.tifid.and_then(|t| self.table.get_mut(t)) {
            flow.detach(ts);
            if s.failed_at.is_none() {
                s.failed_at = Some(now);
                s.gap_from.get_or_insert(s.last_progress_at);
                info!(tifid = %flow.tifid(), %cause, "TI connection failed: resuming, old connection kept until one carries data");
                self.metrics.note_failure(cause);
            }
        }
        s.conn = None;
        s.suspect = Some(Suspect { handle, cause });
    }

    /// The suspect carried data first: it carries the flow again (the
    /// driver dropped the attempt just before).
    fn keep_suspect(&mut self, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let Some(suspect) = s.suspect.take() else {
            return;
        };
        if let Some(handle) = s.conn.take() {
            // Not dropped by the driver (it should have been): never two.
            self.drop_connection(handle);
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.conn = Some(suspect.handle);
        s.failed_at = None;
        s.stats.recoveries += 1;
        if let Some(flow) = s.tifid.and_then(|t| self.table.get_mut(t)) {
            flow.attach();
            info!(tifid = %flow.tifid(), "old connection carried data first: kept, resume attempt dropped");
        }
    }

    /// Lets go of the suspect: a resume won (`Superseded`) or it failed for
    /// good. What it delivered is kept (I1); its acknowledgements are not
    /// applied (the flow resends from what the peer names). No RST: the
    /// peer drops it when the resume is confirmed, or already has.
    fn release_suspect(&mut self, now: Instant, id: StreamId, handle: ConnId, cause: FailureCause) {
        self.pump(now, id, handle, PumpMode::DrainReceived);
        debug!(%cause, "suspected connection released");
        self.drop_connection(handle);
    }

    /// Watches the suspect, once per poll: what it delivers is taken, and
    /// the first sign that it works again (an acknowledgement after a
    /// stall; anything new after a silent path) is its win. Its death is
    /// reported like any connection's.
    fn service_suspect(&mut self, now: Instant, id: StreamId, suspect: Suspect) {
        let handle = suspect.handle;
        let moved = self.pump(now, id, handle, PumpMode::Watch);
        let Some(conn) = self.conns.get(&handle) else {
            return;
        };
        let reset = conn.reset;
        let state = self.cells.socket(handle).state();
        if state == tcp::State::Closed {
            let input = match reset {
                Some(ResetKind::Aborted) => Input::PeerAborted,
                Some(ResetKind::Abandoned) => Input::Failed(FailureCause::PeerAbandoned),
                Some(_) => Input::Failed(FailureCause::Reset),
                None => Input::Failed(FailureCause::Closed),
            };
            self.life_input(now, id, input);
            return;
        }
        let won = match suspect.cause {
            FailureCause::Stall => moved.acked,
            _ => moved.any(),
        };
        if won {
            self.life_input(now, id, Input::Progress);
            self.note_progress(now, id);
        }
    }

    /// Opens a resume connection for a detached flow we initiated.
    fn open_resume_attempt(&mut self, now: Instant, id: StreamId) {
        let Some(tifid) = self.streams.get(&id).and_then(|s| s.tifid) else {
            return;
        };
        let Some(flow) = self.table.get(tifid) else {
            self.life_input(now, id, Input::AttemptLost(LostCause::Timeout));
            return;
        };
        let initiator = Initiator::resume(flow);
        debug!(%tifid, "resume attempt");
        if let Some(s) = self.streams.get_mut(&id) {
            s.stats.resume_attempts += 1;
        }
        if let Err(e) = self.open_connection(now, id, Some(initiator)) {
            // A failed attempt: the driver drops it and its attempt timer
            // holds the next one (with backoff), as for an unanswered SYN.
            warn!(%tifid, %e, "could not open a resume connection");
            self.life_input(now, id, Input::AttemptFailed { refused: false });
        }
    }

    /// A connection of a stream failed for `cause` (reset, closed, address
    /// changed, option did not fit). Handshakes that never made a stream's
    /// connection end the stream (connect refused); everything else goes to
    /// the driver.
    pub(super) fn connection_failed(&mut self, now: Instant, handle: ConnId, cause: FailureCause) {
        let Some(conn) = self.conns.get(&handle) else {
            return;
        };
        let Some(id) = conn.stream else {
            self.drop_connection(handle);
            return;
        };
        let has_life = self.streams.get(&id).is_some_and(|s| s.life.is_some());
        if !has_life {
            self.pump(now, id, handle, PumpMode::Drain);
            self.drop_connection(handle);
            if let Some(s) = self.streams.get_mut(&id) {
                if s.error.is_none() {
                    debug!(%cause, "connection failed during its handshake");
                    s.error = Some(StreamError::ConnectionRefused);
                }
                if s.mode == StreamMode::Connecting {
                    s.mode = StreamMode::Known(Mode::Legacy);
                }
            }
            return;
        }
        let attempt = matches!(conn.phase, Phase::SynSent(_));
        let input = if attempt {
            Input::AttemptFailed { refused: false }
        } else {
            Input::Failed(cause)
        };
        self.life_input(now, id, input);
    }

    /// Everything we sent is acknowledged but our FIN, and the peer's FIN
    /// has arrived: a refused resume then means the peer finished the flow.
    pub(super) fn only_our_fin_unconfirmed(&self, id: StreamId) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|s| s.eof && s.shutdown_write && s.send_buf.is_empty() && !s.fin_acked)
    }

    /// Ends a flow whose conversation completed (both FINs delivered).
    pub(super) fn finish_closed(&mut self, now: Instant, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.fin_acked = true;
            if let Some(tifid) = s.tifid {
                if let Some(flow) = self.table.get_mut(tifid) {
                    flow.finish();
                }
                self.by_tifid.remove(&tifid);
            }
        }
        self.life_input(now, id, Input::Finished);
    }

    /// The application aborted the stream: the driver resets its live
    /// connection with our option `{TIFID, 0, 0}` (legacy: a plain RST);
    /// the flow is forgotten and every later call fails with
    /// [`StreamError::Aborted`].
    pub(super) fn abort_stream(&mut self, now: Instant, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.error.is_none() {
            s.error = Some(StreamError::Aborted);
        }
        s.send_buf.clear();
        s.recv_buf.clear();
        let tifid = s.tifid;
        let has_life = s.life.is_some();
        if let Some(tifid) = tifid {
            info!(%tifid, "flow aborted by the application");
        }
        if has_life {
            self.life_input(now, id, Input::Abort);
        } else if let Some(handle) = self.streams.get(&id).and_then(|s| s.conn) {
            self.reset_connection(now, handle, None);
        }
        if let Some(tifid) = tifid {
            if let Some(flow) = self.table.get_mut(tifid) {
                flow.finish();
            }
            self.by_tifid.remove(&tifid);
        }
    }

    /// Reports the flow lost to the application and forgets it.
    pub(super) fn lose_flow(&mut self, id: StreamId, cause: LostCause) {
        self.metrics.note_lost(cause);
        if let Some(s) = self.streams.get_mut(&id) {
            s.error = Some(StreamError::FlowLost(cause));
            s.events.push_back(StreamEvent::Lost(cause));
            if let Some(tifid) = s.tifid {
                if let Some(flow) = self.table.get_mut(tifid) {
                    flow.finish();
                }
                self.by_tifid.remove(&tifid);
            }
        }
    }

    /// One stream, once per poll: bytes moved, what its connection shows
    /// fed to its driver, the driver's timers, and its end.
    pub(super) fn service_stream(&mut self, now: Instant, id: StreamId) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        if let Some(suspect) = s.suspect {
            self.service_suspect(now, id, suspect);
        }
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        if let Some(handle) = s.conn {
            let progress = self.pump(now, id, handle, PumpMode::Normal).any();
            if progress {
                self.note_progress(now, id);
            }
            let s = self.streams.get(&id);
            if s.is_some_and(|s| s.abandoned && !s.recv_buf.is_empty() && s.error.is_none()) {
                // Data arrived after the application closed: reset, as a
                // kernel socket would.
                debug!("data after close: aborting");
                self.abort_stream(now, id);
                return;
            }
            self.service_connection(now, id, handle, progress);
        }
        // A stack behind on its own input must not take its backlog for
        // a silent peer.
        if !self.ingress_backlogged {
            self.life_timers(now, id);
        }
        self.free_if_done(now, id);
    }

    /// The connection carried a byte: the end of an outage as the program
    /// saw it, if one was running.
    fn note_progress(&mut self, now: Instant, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.last_progress_at = now;
        if s.failed_at.is_none()
            && let Some(from) = s.gap_from.take()
        {
            let gap = std_dur(now - from);
            s.stats.last_gap = Some(gap);
            debug!(tifid = ?s.tifid, ?gap, "first byte after the outage");
        }
    }

    /// What the stream's connection shows, for its driver.
    fn service_connection(&mut self, now: Instant, id: StreamId, handle: ConnId, progress: bool) {
        let connect_timeout = smol(self.config.connect_timeout);
        let (Some(s), Some(conn)) = (self.streams.get_mut(&id), self.conns.get(&handle)) else {
            return;
        };
        let socket = self.cells.socket(handle);
        let state = socket.state();
        let ti = s.tifid.is_some() && matches!(s.mode, StreamMode::Known(Mode::Resilient { .. }));
        let done = s.eof && s.fin_acked;
        let handshaking = matches!(conn.phase, Phase::SynSent(_) | Phase::SynReceived(_));
        let initiator = s.role == Role::Initiator;
        let explicit = std::mem::take(&mut s.fail_requested);
        let reset = conn.reset;
        if s.life.is_none() {
            // Before the first connection is up: only the handshake's end.
            if handshaking && now >= conn.created + connect_timeout {
                let connecting = s.mode == StreamMode::Connecting;
                self.connection_failed(now, handle, FailureCause::Closed);
                if connecting && let Some(s) = self.streams.get_mut(&id) {
                    s.error = Some(StreamError::TimedOut);
                }
            } else if state == tcp::State::Closed {
                self.connection_failed(now, handle, FailureCause::Reset);
            } else if !handshaking && s.mode != StreamMode::Connecting {
                self.start_lifecycle(now, id);
                self.service_connection(now, id, handle, progress);
            }
            return;
        }
        if handshaking {
            // A resume attempt: the driver times it; a RST to it is judged
            // on arrival (handshake module).
            return;
        }
        if ti
            && done
            && initiator
            && (explicit || (state == tcp::State::Closed && reset == Some(ResetKind::Abandoned)))
        {
            // In TIME-WAIT, the flow's entry kept: the responder may still
            // wait for the ACK of its FIN. One resume tells it all arrived.
            info!(tifid = ?s.tifid, "failure after the close: resuming once to confirm it");
            self.start_lifecycle(now, id);
            self.life_input(now, id, Input::Failed(FailureCause::PeerAbandoned));
            return;
        }
        if done {
            if state == tcp::State::Closed {
                self.drop_connection(handle);
            }
            self.life_input(now, id, Input::Finished);
            return;
        }
        if explicit && ti {
            self.life_input(now, id, Input::Failed(FailureCause::Explicit));
            return;
        }
        if state == tcp::State::Closed
            && conn.was_last_ack
            && reset.is_none()
            && socket.recv_queue() > 0
        {
            // A clean close whose last bytes wait in the socket for room in
            // the stream's buffer: the pump delivers them, then the end.
            return;
        }
        if state == tcp::State::Closed
            && conn.was_last_ack
            && reset.is_none()
            && socket.recv_queue() > 0
        {
            // A clean close whose last bytes wait in the socket for room in
            // the stream's buffer: the pump delivers them, then the end.
            return;
        }
        if state == tcp::State::Closed {
            let input = match reset {
                Some(ResetKind::Aborted) if ti => Input::PeerAborted,
                Some(ResetKind::Abandoned) => Input::Failed(FailureCause::PeerAbandoned),
                Some(_) => Input::Failed(FailureCause::Reset),
                None => Input::Failed(FailureCause::Closed),
            };
            if input == Input::PeerAborted {
                // Keep what TCP delivered before the abort (I1).
                self.pump(now, id, handle, PumpMode::Drain);
                warn!(tifid = ?self.streams.get(&id).and_then(|s| s.tifid), "flow aborted by the peer");
            }
            self.life_input(now, id, input);
            return;
        }
        if progress {
            self.life_input(now, id, Input::Progress);
        }
        self.watch_liveness(now, id, handle, progress);
    }

    /// Frees a stream the application dropped once nothing is left to do,
    /// and a closed flow's entry once its connection left TIME-WAIT.
    fn free_if_done(&mut self, _now: Instant, id: StreamId) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        let resuming = s
            .life
            .as_ref()
            .is_some_and(|l| matches!(l.state(), tifid::lifecycle::State::Resuming { .. }));
        // A stream the application dropped lives on until its flow ended:
        // a detached flow still owes the peer its data and FIN.
        let ended = s.error.is_some()
            || (s.eof && s.fin_acked)
            || s.life.as_ref().is_none_or(|l| l.state().is_final());
        if s.abandoned && s.conn.is_none() && s.suspect.is_none() && ended {
            self.timers.forget(Wake::Stream(id));
            self.woken.remove(&id);
            let removed = self.streams.remove(&id);
            if let Some(s) = &removed {
                self.metrics.note_stream_ended(&s.stats);
            }
            if let Some(s) = removed
                && let Some(tifid) = s.tifid
            {
                self.by_tifid.remove(&tifid);
                if let Some(flow) = self.table.get_mut(tifid)
                    && (flow.is_closed() || s.error.is_some() || s.role == Role::Initiator)
                {
                    flow.finish();
                }
            }
        } else if s.conn.is_none()
            && s.suspect.is_none()
            && !resuming
            && let Some(flow) = s.tifid.and_then(|t| self.table.get_mut(t))
            && flow.is_closed()
        {
            // Kept while the connection is in TIME-WAIT, so a last ACK lost
            // with the path can still be confirmed by a resume.
            flow.finish();
        }
    }
}
