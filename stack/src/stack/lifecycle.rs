//! The flow lifecycle: failures, detaching, resumes, losing and finishing flows.

use super::*;

impl<D: Device> Stack<D> {
    /// Everything we sent is acknowledged but our FIN, and the peer's FIN
    /// has arrived: a refused resume then means the peer finished the flow.
    pub(super) fn only_our_fin_unconfirmed(&self, id: StreamId) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|s| s.eof && s.shutdown_write && s.send_buf.is_empty() && !s.fin_acked)
    }

    /// Ends a flow whose conversation completed (both FINs delivered).
    pub(super) fn finish_closed(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.resume = None;
            s.fin_acked = true;
            if let Some(tifid) = s.tifid {
                if let Some(flow) = self.table.get_mut(tifid) {
                    flow.finish();
                }
                self.by_tifid.remove(&tifid);
            }
        }
    }

    /// The application aborted the stream: reset its live connection with
    /// our option `{TIFID, 0, 0}` (legacy: a plain RST), forget the flow,
    /// and fail every later call with [`StreamError::Aborted`].
    pub(super) fn abort_stream(&mut self, now: Instant, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.error.is_none() {
            s.error = Some(StreamError::Aborted);
        }
        s.resume = None;
        s.send_buf.clear();
        s.recv_buf.clear();
        let tifid = s.tifid;
        let conn = s.conn;
        if let Some(tifid) = tifid {
            info!(%tifid, "flow aborted by the application");
            if let Some(flow) = self.table.get_mut(tifid) {
                flow.finish();
            }
            self.by_tifid.remove(&tifid);
        }
        if let Some(handle) = conn {
            let option = tifid.map(|tifid| tifid::FlowOptionRepr {
                tifid,
                tiseq: Seq48::ZERO,
                tiack: Seq48::ZERO,
            });
            self.reset_connection(now, handle, option);
        }
    }

    pub(super) fn lose_flow(&mut self, id: StreamId, cause: LostCause) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.resume = None;
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

    /// The connection failed (or was abandoned): drain it (I1), drop it,
    /// and detach the flow (TI) or fail the stream (legacy).
    pub(super) fn fail_connection(&mut self, now: Instant, handle: SocketHandle, why: &str) {
        let Some(conn) = self.conns.get(&handle) else {
            self.sockets.remove(handle);
            return;
        };
        let Some(id) = conn.stream else {
            self.drop_connection(handle);
            return;
        };
        let handshaking = matches!(conn.phase, Phase::SynSent(_));
        let synchronized = matches!(conn.phase, Phase::Open | Phase::Confirming(_));
        self.pump(now, id, handle, true);
        // A side that gives up a connection that may still work says so: a
        // RST carrying our option with its positions makes the peer act at
        // once (the initiator resumes) instead of waiting for a probe.
        let on_purpose = matches!(
            why,
            "explicit request" | "stall" | "idle path: keepalives unanswered" | "address changed"
        );
        let notice = self
            .streams
            .get(&id)
            .and_then(|s| s.tifid)
            .and_then(|tifid| self.table.get(tifid))
            .filter(|_| on_purpose && synchronized)
            .map(|flow| {
                let p = flow.positions();
                tifid::FlowOptionRepr {
                    tifid: flow.tifid(),
                    tiseq: p.snd_una,
                    tiack: p.rcv_nxt,
                }
            });
        match notice {
            Some(option) => self.reset_connection(now, handle, Some(option)),
            None => self.drop_connection(handle),
        }
        let ts = self.ts(now);
        let resume_timeout = smol(self.config.resume_timeout);
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        match (s.mode, s.tifid) {
            (StreamMode::Known(Mode::Resilient { tifid }), Some(_)) => {
                if let Some(flow) = self.table.get_mut(tifid) {
                    flow.detach(ts);
                }
                if s.failed_at.is_none() {
                    s.failed_at = Some(now);
                    info!(%tifid, why, "TI connection failed: flow detached");
                }
                if s.role == Role::Initiator && s.error.is_none() {
                    let r = s.resume.get_or_insert(ResumeState {
                        attempt: 0,
                        next_attempt: now,
                        deadline: now + resume_timeout,
                    });
                    if !handshaking {
                        r.next_attempt = now;
                    }
                }
            }
            _ => {
                if s.error.is_none() && !(s.eof && s.fin_acked) {
                    debug!(why, "legacy connection failed");
                    s.error = Some(if handshaking {
                        StreamError::ConnectionRefused
                    } else {
                        StreamError::ConnectionReset
                    });
                }
                if s.mode == StreamMode::Connecting {
                    s.mode = StreamMode::Known(Mode::Legacy);
                }
            }
        }
    }

    pub(super) fn service_stream(&mut self, now: Instant, id: StreamId) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        let stall = smol(self.config.stall_timeout);
        let keepalive = smol(self.config.keepalive);
        let connect_timeout = smol(self.config.connect_timeout);
        if let Some(handle) = s.conn {
            self.pump(now, id, handle, false);
            let Some(s) = self.streams.get_mut(&id) else {
                return;
            };
            let Some(conn) = self.conns.get(&handle) else {
                return;
            };
            let socket = self.sockets.get::<tcp::Socket>(handle);
            let state = socket.state();
            let ti =
                s.tifid.is_some() && matches!(s.mode, StreamMode::Known(Mode::Resilient { .. }));
            let done = s.eof && s.fin_acked;
            let handshaking = matches!(conn.phase, Phase::SynSent(_));
            let mut failure: Option<&str> = None;
            if ti && state == tcp::State::Closed && conn.reset == Some(ResetKind::Aborted) {
                // The peer aborted the flow: keep what TCP delivered (I1),
                // then end the stream with a reset, no resume.
                self.pump(now, id, handle, true);
                self.drop_connection(handle);
                warn!(tifid = ?self.streams.get(&id).and_then(|s| s.tifid), "flow aborted by the peer");
                self.lose_flow(id, LostCause::PeerAborted);
                return;
            }
            let initiator = s.role == Role::Initiator;
            if std::mem::take(&mut s.fail_requested) && ti && (initiator || !done) {
                // Done, an initiator resumes once anyway: the responder may
                // still wait for the ACK of its FIN.
                failure = Some("explicit request");
            } else if ti
                && done
                && initiator
                && state == tcp::State::Closed
                && conn.reset == Some(ResetKind::Abandoned)
            {
                // In TIME-WAIT: the responder gave up waiting for our last
                // ACK. One resume tells it everything arrived.
                failure = Some("abandoned by the peer");
            } else if state == tcp::State::Closed && !done {
                failure = Some(match conn.reset {
                    Some(ResetKind::Abandoned) => "abandoned by the peer",
                    Some(_) => "reset",
                    None => "closed",
                });
            } else if ti
                && !handshaking
                && socket.send_queue() > 0
                // Alive means answering: any acceptable segment (answers to
                // zero-window probes included) is progress.
                && now >= s.last_progress.max(conn.last_rx) + stall
            {
                failure = Some("stall");
            } else if ti
                && !handshaking
                && !s.eof
                && matches!(
                    state,
                    tcp::State::Established | tcp::State::FinWait1 | tcp::State::FinWait2
                )
                && now >= conn.last_rx + keepalive + stall
            {
                failure = Some("idle path: keepalives unanswered");
            } else if handshaking && s.resume.as_ref().is_some_and(|r| now >= r.next_attempt) {
                failure = Some("resume attempt unanswered");
            } else if handshaking && now >= conn.created + connect_timeout {
                failure = Some("handshake timed out");
            }
            if let Some(why) = failure {
                let connecting = s.mode == StreamMode::Connecting;
                self.fail_connection(now, handle, why);
                if connecting
                    && let Some(s) = self.streams.get_mut(&id)
                    && why == "handshake timed out"
                {
                    s.error = Some(StreamError::TimedOut);
                }
            } else if done && state == tcp::State::Closed {
                self.drop_connection(handle);
            }
        }
        // A detached flow we initiated resumes when due: in the same poll
        // that noticed the failure, so the SYN leaves at once.
        if let Some(s) = self.streams.get(&id).filter(|s| s.conn.is_none()) {
            {
                let due = s
                    .resume
                    .as_ref()
                    .map(|r| (now >= r.deadline, now >= r.next_attempt));
                match due {
                    Some((true, _)) => {
                        warn!(tifid = ?s.tifid, "resume timed out");
                        self.lose_flow(id, LostCause::Timeout);
                    }
                    Some((false, true)) => self.start_resume_attempt(now, id),
                    _ => {}
                }
            }
        }
        // Free streams the application dropped once nothing is left to do.
        let finished = self
            .streams
            .get(&id)
            .is_some_and(|s| s.abandoned && s.conn.is_none() && s.resume.is_none());
        if finished {
            if let Some(s) = self.streams.remove(&id)
                && let Some(tifid) = s.tifid
            {
                self.by_tifid.remove(&tifid);
                if let Some(flow) = self.table.get_mut(tifid)
                    && (flow.is_closed() || s.error.is_some() || s.role == Role::Initiator)
                {
                    flow.finish();
                }
            }
        } else if let Some(s) = self.streams.get(&id)
            && s.conn.is_none()
            && s.resume.is_none()
            && let Some(flow) = s.tifid.and_then(|t| self.table.get_mut(t))
            && flow.is_closed()
        {
            // Kept while the connection is in TIME-WAIT, so a last ACK lost
            // with the path can still be confirmed by a resume.
            flow.finish();
        }
    }

    pub(super) fn start_resume_attempt(&mut self, now: Instant, id: StreamId) {
        let backoff = self.config.resume_backoff;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let Some(tifid) = s.tifid else { return };
        let Some(flow) = self.table.get(tifid) else {
            self.lose_flow(id, LostCause::Timeout);
            return;
        };
        let initiator = Initiator::resume(flow);
        if let Some(r) = s.resume.as_mut() {
            let delay = backoff
                .saturating_mul(1 << r.attempt.min(16))
                .min(self.config.resume_timeout);
            r.attempt += 1;
            r.next_attempt = now + smol(delay);
            debug!(%tifid, attempt = r.attempt, "resume attempt");
        }
        if let Some(old) = s.conn {
            self.drop_connection(old);
        }
        if self.open_connection(now, id, Some(initiator)).is_err() {
            warn!(%tifid, "could not open a resume connection");
        }
    }
}
