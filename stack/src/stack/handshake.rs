//! Ingress inspection and the TI handshakes: every segment of a known
//! connection or a new SYN passes here before smoltcp sees it.

use tifid::acceptance;
use tifid::lifecycle::{FailureCause, Input};

use super::*;

impl<D: Device> Stack<D> {
    pub(super) fn on_ingress(&mut self, now: Instant, packet: Vec<u8>) {
        let Some(seg) = Segment::parse(&packet, self.device.kind()) else {
            self.device.deliver(packet);
            return;
        };
        let tuple = seg.tuple_at_receiver();
        let known = self.by_tuple.get(&tuple).copied();
        // Act only on what smoltcp will accept too: a SYN or RST with a bad
        // checksum must not change any state (it is passed on and dropped there).
        if (seg.syn || seg.rst) && !segment::checksum_ok(&packet) {
            self.deliver_for(known, packet);
            return;
        }
        if let Some(handle) = known {
            // A segment that may end a handshake phase must be one smoltcp accepts.
            let handshaking = self
                .conns
                .get(&handle)
                .is_some_and(|c| !matches!(c.phase, Phase::Open));
            if handshaking && !segment::checksum_ok(&packet) {
                self.deliver_for(known, packet);
                return;
            }
            if self.must_wait_for_accept_room(handle, &seg) {
                self.defer_handshake(now, handle, packet);
                return;
            }
            if self.on_connection_segment(now, handle, &seg) {
                // The segment may have ended the connection's cell (a
                // refused resume): then smoltcp's default answer applies.
                let cell = self.by_tuple.get(&tuple).copied();
                self.deliver_for(cell, packet);
            } else {
                self.device.recycle(packet);
            }
            return;
        }
        let is_new_syn = seg.syn && !seg.ack && !seg.rst;
        let ours = self.config.is_ours(tuple.local.ip());
        if is_new_syn && ours && self.listener_for(tuple.local.port()).is_some() {
            if let Some(&cell) = self.pending_cells.get(&tuple) {
                self.deliver_for(Some(cell), packet);
                return;
            }
            if self.pending.contains_key(&tuple) {
                // Admitted, but no socket could be made for it.
                self.device.recycle(packet);
                return;
            }
            if !self.admit_syn(&seg) {
                self.device.recycle(packet);
                return;
            }
            if self.on_new_syn(now, &seg)
                && let Some(&cell) = self.pending_cells.get(&tuple)
            {
                self.deliver_for(Some(cell), packet);
            } else {
                self.device.recycle(packet);
            }
            return;
        }
        self.device.deliver(packet);
    }

    /// Hands a packet to smoltcp: to its connection's interface, or to the
    /// default one (which answers as a host without the connection).
    fn deliver_for(&mut self, cell: Option<ConnId>, packet: Vec<u8>) {
        match cell {
            Some(cell) => self.device.deliver_to(cell.lane(), packet),
            None => self.device.deliver(packet),
        }
    }

    /// A segment of a known connection. Returns whether smoltcp gets it.
    pub(super) fn on_connection_segment(
        &mut self,
        now: Instant,
        handle: ConnId,
        seg: &Segment,
    ) -> bool {
        let max_gap = self.table.config().max_resume_gap;
        let Some(conn) = self.conns.get_mut(&handle) else {
            return true;
        };
        let tuple = conn.tuple;
        let stream = conn.stream;
        let our_isn = conn.our_isn(&self.device);
        // Nothing changes TI state unless TCP would accept the segment
        // (DESIGN §4 "Acceptance before decision").
        let answers_syn =
            our_isn.is_some_and(|isn| acceptance::answers_our_syn(isn, seg.ack, seg.ack_number));
        match &mut conn.phase {
            Phase::SynSent(Some(_)) if (seg.rst || seg.syn) && !answers_syn => {
                // A blind forgery or a stale answer: smoltcp answers a wrong
                // SYN-ACK with a RST and ignores a wrong RST; no TI decision.
                debug!(remote = %tuple.remote, "handshake answer does not acknowledge our SYN: ignored");
                !seg.rst
            }
            Phase::SynSent(Some(initiator)) if seg.rst => {
                let outcome = initiator.on_rst(seg.option);
                let resume = initiator.is_resume();
                if !resume {
                    return true;
                }
                let Some(id) = stream else { return true };
                match outcome {
                    RstOutcome::Refused => {
                        let tifid = initiator.syn_option().tifid;
                        let done = self.is_finished(id);
                        if done || self.only_our_fin_unconfirmed(id) {
                            // The peer had our every byte and sent its FIN: it
                            // finished the flow, and only the ACK of our FIN was
                            // lost with the path. The conversation is complete.
                            info!(%tifid, "resume refused after a complete exchange: closed");
                            self.drop_connection(handle);
                            self.finish_closed(now, id);
                        } else if self.first_connection_unconfirmed(id) {
                            // The responder has not taken the handshake's
                            // ACK yet (its accept queue was full: it keeps
                            // the handshake half-open), so it cannot know
                            // the flow. The first connection, kept as the
                            // suspect, completes once it does: retry.
                            debug!(%tifid, "resume refused before the responder confirmed the flow: will retry");
                            self.life_input(now, id, Input::AttemptFailed { refused: false });
                        } else {
                            warn!(%tifid, "resume refused by peer");
                            self.life_input(now, id, Input::AttemptFailed { refused: true });
                        }
                    }
                    RstOutcome::Transient => {
                        debug!("resume attempt reset (transient); will retry");
                        self.life_input(now, id, Input::AttemptFailed { refused: false });
                    }
                }
                false
            }
            Phase::SynSent(Some(initiator)) if seg.syn && seg.ack => {
                conn.iss = our_isn;
                conn.irs = Some(seg.seq);
                conn.last_rx = now;
                conn.rtt.sample(std_dur(now - conn.created));
                let Some(id) = stream else { return true };
                let flow = self
                    .streams
                    .get(&id)
                    .and_then(|s| s.tifid)
                    .and_then(|t| self.table.get(t));
                let outcome = initiator.on_syn_ack(seg.option, flow, max_gap);
                let initiator = initiator.clone();
                self.on_syn_ack_outcome(now, handle, id, tuple, seg, initiator, outcome)
            }
            Phase::SynReceived(Some(_)) if !seg.syn && !seg.rst && seg.ack => {
                if !answers_syn {
                    // Not an ACK of our SYN-ACK (a forged or stale ACK):
                    // smoltcp answers it with a RST; the handshake goes on.
                    debug!(remote = %tuple.remote, "ACK does not acknowledge our SYN-ACK: ignored");
                    return true;
                }
                conn.iss = our_isn;
                conn.irs = Some(seg.seq.wrapping_sub(1));
                conn.last_rx = now;
                conn.rtt.sample(std_dur(now - conn.created));
                let Phase::SynReceived(Some(responder)) =
                    std::mem::replace(&mut conn.phase, Phase::Open)
                else {
                    return true;
                };
                self.device.detach_option(&tuple);
                self.on_handshake_ack(now, handle, seg, responder)
            }
            Phase::Confirming(_) | Phase::Open if conn.irs.is_some() => {
                self.on_synchronized_segment(now, handle, seg)
            }
            _ => {
                // Legacy: smoltcp's own checks decide; remember a RST so a
                // close it ends is not taken for a clean one.
                if seg.rst {
                    conn.reset = Some(ResetKind::Bare);
                } else if let Some(id) = stream
                    && matches!(conn.phase, Phase::Open)
                {
                    // Legacy liveness (the silent-path reset) counts any
                    // segment of the connection's tuple.
                    self.life_input(now, id, Input::PeerAnswered);
                }
                true
            }
        }
    }

    /// The stream's flow was never confirmed by the responder: its first
    /// connection (attached or kept as the suspect) is still attaching the
    /// confirmation, i.e. no segment from the peer followed its SYN-ACK.
    fn first_connection_unconfirmed(&self, id: StreamId) -> bool {
        let Some(s) = self.streams.get(&id) else {
            return false;
        };
        s.stats.resumes == 0
            && s.suspect
                .map(|suspect| suspect.handle)
                .into_iter()
                .chain(s.conn)
                .filter_map(|h| self.conns.get(&h))
                .any(|c| matches!(&c.phase, Phase::Confirming(i) if !i.is_resume()))
    }

    /// Holds the segment that would complete the handshake on `handle`
    /// into a full accept queue, as Linux does (its ACK is not taken, the
    /// connection stays in SYN-RECEIVED): dropping the connection instead
    /// would leave a client that took our SYN-ACK with a connection, and a
    /// TI-flow, we never had. The client is real (it answered our SYN-ACK):
    /// its handshake waits for room from now on and is evicted last. The
    /// latest such segment of each connection is kept and replayed when
    /// the application accepts ([`Stack::replay_deferred`]).
    fn defer_handshake(&mut self, now: Instant, handle: ConnId, packet: Vec<u8>) {
        self.admission.handshakes_deferred_backlog += 1;
        let Some(conn) = self.conns.get(&handle) else {
            self.device.recycle(packet);
            return;
        };
        let tuple = conn.tuple;
        self.half_open.remove(&tuple);
        self.half_open.insert(tuple, now, half_open::Attempt::Retry);
        let Some(listener) = self.listener_for(tuple.local.port()) else {
            self.device.recycle(packet);
            return;
        };
        let waiting = self.deferred.entry(listener).or_default();
        if let Some(slot) = waiting
            .iter_mut()
            .find(|(h, t, _)| (*h, *t) == (handle, tuple))
        {
            let old = std::mem::replace(&mut slot.2, packet);
            self.device.recycle(old);
        } else {
            waiting.push_back((handle, tuple, packet));
        }
        // Bounded: entries of handshakes that ended since go first.
        if waiting.len() > self.config.max_half_open {
            let (conns, by_tuple) = (&self.conns, &self.by_tuple);
            waiting.retain(|(h, t, _)| conns.contains_key(h) && by_tuple.get(t) == Some(h));
        }
    }

    /// The application accepted from the listener on `port`: the oldest
    /// deferred handshake's segment is inspected again in the next poll.
    pub(super) fn replay_deferred(&mut self, port: u16) {
        let Some(waiting) = self.deferred.get_mut(&port) else {
            return;
        };
        // The oldest whose handshake is still waiting.
        while let Some((handle, tuple, packet)) = waiting.pop_front() {
            if self.by_tuple.get(&tuple) == Some(&handle) {
                self.replay.push_back(packet);
                return;
            }
            self.device.recycle(packet);
        }
    }

    /// Inspects the replayed segments again.
    pub(super) fn take_replays(&mut self, now: Instant) {
        while let Some(packet) = self.replay.pop_front() {
            self.on_ingress(now, packet);
        }
    }

    /// Whether `seg` would complete a new (not resumed) handshake on
    /// `handle` (it acknowledges our SYN-ACK) while its listener's accept
    /// queue is full. A TI handshake
    /// joins the queue when its ACK is taken; a legacy one only once
    /// smoltcp took the ACK, later in the poll: a legacy completion let
    /// through here is counted, so the next ones in this poll see it.
    fn must_wait_for_accept_room(&mut self, handle: ConnId, seg: &Segment) -> bool {
        let Some(conn) = self.conns.get(&handle) else {
            return false;
        };
        let (new_handshake, legacy) = match &conn.phase {
            Phase::SynReceived(Some(responder)) => (!responder.is_resume(), false),
            Phase::SynReceived(None) => (true, true),
            _ => (false, false),
        };
        if !new_handshake || conn.stream.is_some() || seg.syn || seg.rst || !seg.ack {
            return false;
        }
        // Only the ACK of our SYN-ACK completes the handshake: any other
        // (blind, stale) must not mark it as answered (DESIGN §4).
        let our_isn = conn.our_isn(&self.device);
        if !our_isn
            .is_some_and(|isn| acceptance::completes_our_syn_ack(isn, seg.ack, seg.ack_number))
        {
            return false;
        }
        // Per listener (the any-port one counts every port it takes).
        let Some(listener) = self.listener_for(conn.tuple.local.port()) else {
            return false;
        };
        let queued = self
            .listeners
            .get(&listener)
            .map_or(0, |l| l.accept_queue.len());
        let completing = self.completing_legacy.get(&listener).copied().unwrap_or(0);
        if queued + completing >= self.config.accept_backlog {
            return true;
        }
        if legacy {
            *self.completing_legacy.entry(listener).or_default() += 1;
        }
        false
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_syn_ack_outcome(
        &mut self,
        now: Instant,
        handle: ConnId,
        id: StreamId,
        tuple: FourTuple,
        seg: &Segment,
        initiator: Initiator,
        outcome: SynAckOutcome,
    ) -> bool {
        match outcome {
            SynAckOutcome::Established { tifid, peer_isn } => {
                let isn = initiator.syn_option().tiseq;
                let flow = Flow::new(tifid, Role::Initiator, isn, peer_isn, seg.src.ip());
                if self.table.insert(flow).is_err() {
                    warn!(%tifid, "flow table refused the flow: legacy");
                    self.fall_back(handle, id, FallbackCause::TableFull);
                    return true;
                }
                info!(%tifid, peer = %seg.src, "TI-flow established (initiator)");
                let confirm = initiator.confirm_option();
                if let Some(conn) = self.conns.get_mut(&handle) {
                    conn.base = isn;
                    conn.phase = Phase::Confirming(initiator);
                }
                if let Some(option) = confirm {
                    self.device.attach_option(tuple, option);
                }
                if let Some(s) = self.streams.get_mut(&id) {
                    s.tifid = Some(tifid);
                    s.mode = StreamMode::Known(Mode::Resilient { tifid });
                    s.sent_high = isn;
                    let flow = self.table.get_mut(tifid);
                    if let Some(flow) = flow {
                        let _ = flow.on_write(s.send_buf.len() as u64);
                        if s.shutdown_write {
                            flow.queue_fin();
                        }
                    }
                }
                self.by_tifid.insert(tifid, id);
                true
            }
            SynAckOutcome::Resumed { peer_rcv_nxt, .. } => {
                // First the driver: a suspect kept while resuming (make
                // before break) is released now, after giving up what it
                // delivered (I1), before the new connection carries a byte.
                self.life_input(now, id, Input::Resumed);
                let Some(s) = self.streams.get_mut(&id) else {
                    return true;
                };
                let Some(tifid) = s.tifid else { return true };
                let Some(flow) = self.table.get_mut(tifid) else {
                    return true;
                };
                // The peer resends from what our SYN named. A suspect never
                // takes data past it (validate: data on a suspect either
                // wins at once or is dropped before its TCP acknowledges
                // it), so there is nothing to skip; should bytes have come
                // after all, they come again: skip them.
                let skip_rx = flow
                    .positions()
                    .rcv_nxt
                    .bytes_since(initiator.syn_option().tiack)
                    .unwrap_or(0);
                if skip_rx > 0 {
                    warn!(%tifid, skip_rx, "resume: the old connection delivered past the SYN's TIAck");
                }
                let dropped = flow.resume_from(peer_rcv_nxt).unwrap_or(0);
                flow.attach();
                let (downtime, resent) = s.reattach(now, handle, peer_rcv_nxt, dropped);
                self.metrics.note_resume(downtime);
                info!(%tifid, ?downtime, resent, skip_rx, local = %tuple.local, "TI-flow resumed (initiator)");
                let confirm = initiator.confirm_option();
                if let Some(conn) = self.conns.get_mut(&handle) {
                    conn.base = peer_rcv_nxt;
                    conn.skip_rx = skip_rx;
                    conn.phase = Phase::Confirming(initiator);
                }
                if let Some(option) = confirm {
                    self.device.attach_option(tuple, option);
                }
                true
            }
            SynAckOutcome::FellBack(cause) => {
                info!(peer = %seg.src, %cause, "connection falls back to legacy TCP");
                self.fall_back(handle, id, cause);
                true
            }
            SynAckOutcome::Lost(cause) => {
                warn!(%cause, "resume answered wrongly: flow lost");
                self.life_input(now, id, Input::AttemptLost(cause));
                false
            }
        }
    }

    pub(super) fn fall_back(&mut self, handle: ConnId, id: StreamId, cause: FallbackCause) {
        if let Some(conn) = self.conns.get_mut(&handle) {
            conn.phase = Phase::Open;
            let tuple = conn.tuple;
            self.device.detach_option(&tuple);
        }
        if let Some(s) = self.streams.get_mut(&id) {
            if let Some(tifid) = s.tifid.take() {
                self.table.remove(tifid);
                self.by_tifid.remove(&tifid);
                s.events.push_back(StreamEvent::FellBack(cause));
            }
            s.mode = StreamMode::Known(Mode::Legacy);
        }
    }

    /// A SYN for a listener, from a tuple we do not know. Returns whether
    /// smoltcp gets it.
    pub(super) fn on_new_syn(&mut self, now: Instant, seg: &Segment) -> bool {
        let tuple = seg.tuple_at_receiver();
        if let Ok(Some(option)) = seg.option
            && option.tifid.is_complete()
        {
            // A resume: positions must be current before the checks.
            if let Some(&id) = self.by_tifid.get(&option.tifid) {
                self.sync_stream(now, id);
            }
        }
        let policy = ResponderPolicy {
            enabled: self.config.ti_enabled,
        };
        let ts = self.ts(now);
        let decision = Responder::on_syn(
            &mut self.table,
            policy,
            seg.option,
            seg.src.ip(),
            &mut self.rng,
            ts,
        );
        let responder = match decision {
            SynDecision::Legacy(cause) => {
                debug!(peer = %seg.src, %cause, "SYN accepted as legacy TCP");
                // Its SYN-ACK's ISN judges the ACK held for a full accept queue.
                self.device.watch_isn(tuple);
                None
            }
            SynDecision::Accept(responder) => {
                if responder.is_resume() {
                    // An attached flow keeps its connection until this resume
                    // is confirmed: a forged SYN must not cost it anything.
                    info!(tifid = %responder.tifid(), peer = %seg.src, "resume accepted");
                }
                self.device.attach_option(tuple, responder.syn_ack_option());
                Some(responder)
            }
            SynDecision::Refuse { reason, reply } => {
                self.refuse(now, seg, reason, reply);
                return false;
            }
        };
        self.pending.insert(tuple, responder);
        self.add_listener(now, tuple);
        true
    }

    pub(super) fn refuse(
        &mut self,
        now: Instant,
        seg: &Segment,
        reason: RefuseReason,
        reply: Option<tifid::FlowOptionRepr>,
    ) {
        let tifid = seg.option.ok().flatten().map(|o| o.tifid);
        match reply {
            Some(reply) => {
                warn!(?tifid, peer = %seg.src, %reason, "resume refused");
                let rst = refusal_rst(seg, &reply, self.device.kind());
                self.device.send_raw(now, &rst);
            }
            None => warn!(?tifid, peer = %seg.src, %reason, "resume refused silently (rate limit)"),
        }
    }

    /// The first segment completing a responder handshake.
    pub(super) fn on_handshake_ack(
        &mut self,
        now: Instant,
        handle: ConnId,
        seg: &Segment,
        responder: Responder,
    ) -> bool {
        let tifid = responder.tifid();
        match responder.on_handshake_ack(seg.option) {
            ConfirmOutcome::Confirmed if responder.is_resume() => {
                let Some(&id) = self.by_tifid.get(&tifid) else {
                    warn!(%tifid, "resume confirmed for a flow with no stream: dropped");
                    self.drop_connection(handle);
                    return false;
                };
                let Some(flow) = self.table.get_mut(tifid) else {
                    self.drop_connection(handle);
                    return false;
                };
                let _ = flow;
                // Confirmed: only now is the old connection (if any) given
                // up (the driver abandons it as superseded, after taking
                // everything it delivered: I1).
                self.life_input(now, id, Input::Resumed);
                let Some(flow) = self.table.get_mut(tifid) else {
                    self.drop_connection(handle);
                    return false;
                };
                // What the old connection delivered after our SYN-ACK named
                // our receive position comes again on the new one: skip it.
                let skip_rx = flow
                    .positions()
                    .rcv_nxt
                    .bytes_since(responder.syn_ack_option().tiack)
                    .unwrap_or(0);
                let from = responder.resume_send_from();
                let dropped = flow.resume_from(from).unwrap_or(0);
                flow.attach();
                flow.set_peer(seg.src.ip());
                let Some(s) = self.streams.get_mut(&id) else {
                    return true;
                };
                let (downtime, resent) = s.reattach(now, handle, from, dropped);
                self.metrics.note_resume(downtime);
                if let Some(conn) = self.conns.get_mut(&handle) {
                    conn.stream = Some(id);
                    conn.base = from;
                    conn.skip_rx = skip_rx;
                }
                info!(%tifid, ?downtime, resent, skip_rx, "TI-flow resumed (responder)");
                true
            }
            ConfirmOutcome::Confirmed => {
                let (isn, peer_isn) = responder.isns();
                let peer = seg.src.ip();
                let inserted = self
                    .table
                    .insert(Flow::new(tifid, Role::Responder, isn, peer_isn, peer))
                    .is_ok();
                let mode = if inserted {
                    info!(%tifid, peer = %seg.src, "TI-flow established (responder)");
                    Mode::Resilient { tifid }
                } else {
                    warn!(%tifid, "flow table refused the confirmed flow: legacy");
                    Mode::Legacy
                };
                self.accept_connection(now, handle, mode, inserted.then_some((tifid, isn)));
                true
            }
            ConfirmOutcome::Unconfirmed(cause) if responder.is_resume() => {
                warn!(%tifid, %cause, "resume not confirmed: connection dropped, flow stays detached");
                self.drop_connection(handle);
                false
            }
            ConfirmOutcome::Unconfirmed(cause) => {
                info!(%tifid, %cause, peer = %seg.src, "no confirmation: legacy TCP");
                self.accept_connection(now, handle, Mode::Legacy, None);
                true
            }
        }
    }

    pub(super) fn on_egress_event(&mut self, now: Instant, event: EgressEvent) {
        let EgressEvent::DoesNotFit(tuple) = event;
        let Some(&handle) = self.by_tuple.get(&tuple) else {
            return;
        };
        let Some(conn) = self.conns.get(&handle) else {
            return;
        };
        let resume =
            matches!(&conn.phase, Phase::Confirming(i) | Phase::SynSent(Some(i)) if i.is_resume());
        let stream = conn.stream;
        if let Some(id) = stream {
            self.timers.mark_stream(id);
        }
        warn!(local = %tuple.local, "flow option did not fit a segment");
        if resume {
            self.connection_failed(now, handle, FailureCause::OptionDidNotFit);
        } else if let Some(id) = stream {
            self.fall_back(handle, id, FallbackCause::OptionDoesNotFit);
        }
    }
}
