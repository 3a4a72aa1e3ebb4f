//! The responder's accept path: admission of new SYNs (half-open limit,
//! accept backlog), a fresh listener per admitted SYN, the connections they
//! become, the half-open timeout, and the accept queues.
//!
//! Bounds what a remote peer can make us hold (DESIGN §5): at most
//! `max_half_open` handshakes in progress (a new SYN evicts the oldest, so a
//! flood of spoofed SYNs cannot lock legitimate clients out), each for at
//! most `half_open_timeout`, and per listener at most `accept_backlog`
//! connections completed but not accepted: while that many wait, new SYNs
//! go unanswered, and the ACK that would complete a handshake into a full
//! queue is dropped, as Linux does (the handshake stays half-open, our
//! SYN-ACK is sent again, and a later ACK completes it once there is room;
//! it times out as any half-open connection does).
//! Eviction spares handshakes whose SYN retransmitted one we dropped (see
//! [`half_open`](super::half_open)). Sockets of evicted or expired
//! handshakes never carried a byte: they are
//! reused as fresh listeners within the same poll instead of being freed
//! and allocated again, so a flood costs no allocation per SYN.

use super::*;

/// What the accept path refused or gave up, for [`Stack::resources`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct AdmissionStats {
    pub(super) syns_dropped_backlog: u64,
    pub(super) syns_dropped_overload: u64,
    pub(super) completed_dropped_backlog: u64,
    pub(super) handshakes_deferred_backlog: u64,
    pub(super) half_open_evicted: u64,
    pub(super) half_open_expired: u64,
}

impl<D: Device> Stack<D> {
    /// Decides whether a new SYN (for one of our listeners, from an unknown
    /// tuple) may start a handshake. Returns false when it must be dropped
    /// unanswered: its listener's accept queue is full. Otherwise makes room
    /// if `max_half_open` handshakes are in progress, by evicting the oldest.
    /// A resume SYN (complete TIFID) never joins an accept queue, so only the
    /// half-open limit applies to it.
    pub(super) fn admit_syn(&mut self, seg: &Segment) -> bool {
        let tuple = seg.tuple_at_receiver();
        let port = tuple.local.port();
        let resume = matches!(seg.option, Ok(Some(option)) if option.tifid.is_complete());
        let queued = self
            .listener_for(port)
            .and_then(|key| self.listeners.get(&key))
            .map_or(0, |l| l.accept_queue.len());
        if !resume && queued >= self.config.accept_backlog {
            self.admission.syns_dropped_backlog += 1;
            debug!(peer = %tuple.remote, port, queued, "SYN dropped: accept queue full");
            return false;
        }
        while self.half_open.len() >= self.config.max_half_open {
            let Some(victim) = self.half_open.pop_oldest() else {
                debug!(peer = %tuple.remote, port, "SYN dropped: max_half_open is zero");
                return false;
            };
            self.admission.half_open_evicted += 1;
            debug!(peer = %victim.remote, port = victim.local.port(), "half-open connection evicted for a new SYN");
            self.drop_half_open(victim);
        }
        true
    }

    /// A fresh listening socket for the admitted SYN on `tuple`, which
    /// smoltcp will give it in this poll; the handshake counts as half-open
    /// from `now`. Reuses a spare socket when one is left in this poll.
    pub(super) fn add_listener(&mut self, now: Instant, tuple: FourTuple) {
        let port = tuple.local.port();
        let handle = match self.spare_sockets.pop() {
            Some(handle) => {
                let socket = self.cells.socket_mut(handle);
                socket.abort();
                conns::configure_socket(&self.config, socket);
                handle
            }
            None => {
                let socket = self.new_socket();
                let seed = self.rng.random();
                let Some(handle) = self.cells.add(socket, seed, &mut self.device, now) else {
                    warn!("no connection cell left: SYN dropped");
                    return;
                };
                handle
            }
        };
        if self.cells.socket_mut(handle).listen(port).is_ok() {
            self.fresh_listeners.push((handle, port));
            self.pending_cells.insert(tuple, handle);
            // A retransmission of a SYN we dropped: the client is real (or
            // a false positive of the filter); evicted last.
            let attempt = if self.retry_filter.contains(&tuple, now) {
                Attempt::Retry
            } else {
                Attempt::First
            };
            self.half_open.insert(tuple, now, attempt);
        } else {
            self.remove_cell(handle);
        }
    }

    /// Drops a handshake in progress: its connection, or the SYN admitted in
    /// this poll whose listener is not bound yet (the listener is then
    /// removed by [`Stack::bind_fresh_listeners`]). A socket that never
    /// carried a byte becomes a spare for this poll's next fresh listener.
    fn drop_half_open(&mut self, tuple: FourTuple) {
        self.half_open.remove(&tuple);
        if let Some(&handle) = self.by_tuple.get(&tuple) {
            let state = self.cells.socket(handle).state();
            let unused = self.conns.get(&handle).is_some_and(|c| c.stream.is_none())
                && matches!(state, tcp::State::SynReceived | tcp::State::Listen);
            if unused {
                self.forget_connection(handle);
                self.spare_sockets.push(handle);
            } else {
                self.drop_connection(handle);
            }
        } else if self.pending.remove(&tuple).is_some() {
            self.device.detach_option(&tuple);
        }
    }

    /// Drops handshakes older than `half_open_timeout` (oldest first: only
    /// the front of the table is looked at), then frees the spare sockets
    /// this poll did not reuse.
    pub(super) fn expire_half_open(&mut self, now: Instant) {
        let timeout = smol(self.config.half_open_timeout);
        while let Some(tuple) = self.half_open.pop_expired(now, timeout) {
            self.admission.half_open_expired += 1;
            debug!(peer = %tuple.remote, port = tuple.local.port(), "half-open connection timed out");
            self.reset_answered_handshake(now, tuple);
            self.drop_half_open(tuple);
        }
        for handle in std::mem::take(&mut self.spare_sockets) {
            self.remove_cell(handle);
        }
    }

    /// A handshake given up whose client answered our SYN-ACK (its ACK is
    /// held for room in the accept queue) holds a connection, and a
    /// TI-flow, on the client's side: tell it with a RST at the client's
    /// `rcv_nxt` (our ISN + 1), or a client waiting for us to speak first
    /// would wait forever. Handshakes of unanswered SYN-ACKs (a spoofed
    /// flood among them) are dropped silently, as Linux drops them.
    fn reset_answered_handshake(&mut self, now: Instant, tuple: FourTuple) {
        let answered = self
            .listener_for(tuple.local.port())
            .and_then(|key| self.deferred.get(&key))
            .is_some_and(|waiting| {
                waiting
                    .iter()
                    .any(|(h, t, _)| *t == tuple && self.by_tuple.get(t) == Some(h))
            });
        let our_isn = self
            .by_tuple
            .get(&tuple)
            .and_then(|h| self.conns.get(h))
            .map_or_else(|| self.device.sent_isn(&tuple), |c| c.our_isn(&self.device));
        let (true, Some(isn)) = (answered, our_isn) else {
            return;
        };
        debug!(peer = %tuple.remote, port = tuple.local.port(), "answered handshake given up: reset sent");
        let rst = segment::build_segment(&segment::SegmentSpec {
            tuple,
            seq: isn.wrapping_add(1),
            ack: None,
            syn: false,
            rst: true,
            option: &[],
            payload: &[],
        });
        self.device.send_raw(now, &rst);
    }

    /// When the oldest handshake in progress times out.
    pub(super) fn half_open_deadline(&self) -> Option<Instant> {
        self.half_open
            .next_expiry(smol(self.config.half_open_timeout))
    }

    /// After smoltcp ran: listeners that took a SYN become connections.
    pub(super) fn bind_fresh_listeners(&mut self, now: Instant) {
        for (handle, _port) in std::mem::take(&mut self.fresh_listeners) {
            let socket = self.cells.socket(handle);
            let tuple = match (
                socket.state(),
                socket.local_endpoint(),
                socket.remote_endpoint(),
            ) {
                (tcp::State::Listen, _, _) => None,
                (_, Some(local), Some(remote)) => endpoint_tuple(local, remote),
                _ => None,
            };
            // No tuple: smoltcp rejected the SYN this listener was made for.
            // Not half-open: it was evicted before smoltcp saw it.
            let Some(tuple) = tuple.filter(|t| self.half_open.contains(t)) else {
                self.spare_sockets.push(handle);
                continue;
            };
            let responder = self.pending.remove(&tuple).flatten();
            self.conns.insert(handle, {
                let mut conn = Conn::new(tuple, None, Phase::SynReceived(responder), now);
                conn.half_open = true;
                conn
            });
            self.index_tuple(tuple, handle);
        }
        // Every SYN delivered this poll has been processed: handshakes smoltcp
        // did not take up leave no state behind (no rule, no entry).
        self.pending_cells.clear();
        for (tuple, _) in std::mem::take(&mut self.pending) {
            self.device.detach_option(&tuple);
            self.half_open.remove(&tuple);
        }
    }

    /// A new responder-side stream for a connection, queued for `accept`.
    pub(super) fn accept_connection(
        &mut self,
        now: Instant,
        handle: ConnId,
        mode: Mode,
        flow: Option<(Tifid, Seq48)>,
    ) {
        let Some(conn) = self.conns.get(&handle) else {
            return;
        };
        let port = conn.tuple.local.port();
        let peer = conn.tuple.remote;
        let tuple = conn.tuple;
        if conn.half_open {
            // The handshake is over: a newer SYN must not evict it.
            self.half_open.remove(&tuple);
        }
        if let Some(conn) = self.conns.get_mut(&handle) {
            conn.half_open = false;
        }
        let listener = self.listener_for(port);
        let queued = listener
            .and_then(|key| self.listeners.get(&key))
            .map(|l| l.accept_queue.len());
        if queued.is_none_or(|n| n >= self.config.accept_backlog) {
            if queued.is_some() {
                self.admission.completed_dropped_backlog += 1;
            }
            debug!(%peer, port, "completed connection dropped: accept queue full or listener gone");
            if let Some((tifid, _)) = flow {
                self.table.remove(tifid);
            }
            self.drop_connection(handle);
            return;
        }
        let id = self.new_stream(Role::Responder, peer, now);
        if let Some(s) = self.streams.get_mut(&id) {
            s.mode = StreamMode::Known(mode);
            s.conn = Some(handle);
            s.awaiting_accept = true;
            if let Some((tifid, isn)) = flow {
                s.tifid = Some(tifid);
                s.sent_high = isn;
            }
        }
        if let Some((tifid, isn)) = flow {
            self.by_tifid.insert(tifid, id);
            if let Some(conn) = self.conns.get_mut(&handle) {
                conn.base = isn;
            }
        }
        if let Some(conn) = self.conns.get_mut(&handle) {
            conn.stream = Some(id);
        }
        if let Some(l) = listener.and_then(|key| self.listeners.get_mut(&key)) {
            l.accept_queue.push_back(id);
            self.accept_ready = true;
        }
    }
}
