//! The responder's accept path: admission of new SYNs (half-open limit,
//! accept backlog), a fresh listener per admitted SYN, the connections they
//! become, the half-open timeout, and the accept queues.
//!
//! Bounds what a remote peer can make us hold (DESIGN §5): at most
//! `max_half_open` handshakes in progress (a new SYN evicts the oldest, so a
//! flood of spoofed SYNs cannot lock legitimate clients out), each for at
//! most `half_open_timeout`, and per listener at most `accept_backlog`
//! connections queued or in progress.

use super::*;

/// What the accept path refused or gave up, for [`Stack::resources`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct AdmissionStats {
    pub(super) syns_dropped_backlog: u64,
    pub(super) half_open_evicted: u64,
    pub(super) half_open_expired: u64,
}

impl<D: Device> Stack<D> {
    /// Decides whether a new SYN (for one of our listeners, from an unknown
    /// tuple) may start a handshake, making room first: evicts the
    /// listener's oldest handshake when its backlog is full, or the oldest of
    /// all when `max_half_open` is reached. Returns false when the SYN must
    /// be dropped unanswered: the listener's accept queue alone is full.
    /// A resume SYN (complete TIFID) never joins the accept queue, so the
    /// backlog does not apply to it: only the half-open limit does.
    pub(super) fn admit_syn(&mut self, seg: &Segment) -> bool {
        let tuple = seg.tuple_at_receiver();
        let port = tuple.local.port();
        let resume = matches!(seg.option, Ok(Some(option)) if option.tifid.is_complete());
        let backlog = if resume {
            usize::MAX
        } else {
            self.config.accept_backlog
        };
        let queued = self
            .listeners
            .get(&port)
            .map_or(0, |l| l.accept_queue.len());
        if queued >= backlog {
            self.admission.syns_dropped_backlog += 1;
            debug!(peer = %tuple.remote, port, queued, "SYN dropped: accept queue full");
            return false;
        }
        loop {
            let port_full = queued.saturating_add(self.half_open.on_port(port)) >= backlog;
            let table_full = self.half_open.len() >= self.config.max_half_open;
            if !port_full && !table_full {
                return true;
            }
            let victim = if port_full {
                self.half_open.pop_oldest(Some(port))
            } else {
                self.half_open.pop_oldest(None)
            };
            let Some(victim) = victim else {
                // max_half_open is zero: no handshake can ever start.
                debug!(peer = %tuple.remote, port, "SYN dropped: no half-open connections allowed");
                return false;
            };
            self.admission.half_open_evicted += 1;
            debug!(peer = %victim.remote, port = victim.local.port(), "half-open connection evicted for a new SYN");
            self.drop_half_open(victim);
        }
    }

    /// A fresh listening socket for the admitted SYN on `tuple`, which
    /// smoltcp will give it in this poll; the handshake counts as half-open
    /// from `now`.
    pub(super) fn add_listener(&mut self, now: Instant, tuple: FourTuple) {
        let port = tuple.local.port();
        let mut socket = self.new_socket();
        if socket.listen(port).is_ok() {
            let handle = self.sockets.add(socket);
            self.fresh_listeners.push((handle, port));
            self.half_open.insert(tuple, now);
        }
    }

    /// Drops a handshake in progress: its connection, or the SYN admitted in
    /// this poll whose listener is not bound yet (the listener is then
    /// removed by [`Stack::bind_fresh_listeners`]).
    fn drop_half_open(&mut self, tuple: FourTuple) {
        self.half_open.remove(&tuple);
        if let Some(&handle) = self.by_tuple.get(&tuple) {
            self.drop_connection(handle);
        } else if self.pending.remove(&tuple).is_some() {
            self.device.detach_option(&tuple);
        }
    }

    /// Drops handshakes older than `half_open_timeout` (oldest first; each
    /// poll looks at the front of each listener's queue only).
    pub(super) fn expire_half_open(&mut self, now: Instant) {
        let timeout = smol(self.config.half_open_timeout);
        while let Some(tuple) = self.half_open.pop_expired(now, timeout) {
            self.admission.half_open_expired += 1;
            debug!(peer = %tuple.remote, port = tuple.local.port(), "half-open connection timed out");
            self.drop_half_open(tuple);
        }
    }

    /// When the oldest handshake in progress times out.
    pub(super) fn half_open_deadline(&self) -> Option<Instant> {
        self.half_open
            .next_expiry(smol(self.config.half_open_timeout))
    }

    /// After smoltcp ran: listeners that took a SYN become connections.
    pub(super) fn bind_fresh_listeners(&mut self, now: Instant) {
        for (handle, _port) in std::mem::take(&mut self.fresh_listeners) {
            let socket = self.sockets.get::<tcp::Socket>(handle);
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
                self.sockets.remove(handle);
                continue;
            };
            let responder = self.pending.remove(&tuple).flatten();
            self.conns.insert(
                handle,
                Conn {
                    tuple,
                    stream: None,
                    phase: Phase::SynReceived(responder),
                    half_open: true,
                    written: 0,
                    acked: 0,
                    base: Seq48::ZERO,
                    fin_pushed: false,
                    rst_seen: false,
                    was_last_ack: false,
                    last_rx: now,
                    created: now,
                },
            );
            self.by_tuple.insert(tuple, handle);
        }
        // Every SYN delivered this poll has been processed: handshakes smoltcp
        // did not take up leave no state behind (no rule, no entry).
        for (tuple, _) in std::mem::take(&mut self.pending) {
            self.device.detach_option(&tuple);
            self.half_open.remove(&tuple);
        }
    }

    /// A new responder-side stream for a connection, queued for `accept`.
    pub(super) fn accept_connection(
        &mut self,
        now: Instant,
        handle: SocketHandle,
        mode: Mode,
        flow: Option<(Tifid, Seq48)>,
    ) {
        let Some(conn) = self.conns.get(&handle) else {
            return;
        };
        let port = conn.tuple.local.port();
        let peer = conn.tuple.remote;
        let queued = self.listeners.get(&port).map(|l| l.accept_queue.len());
        // Admission keeps queued + half-open within the backlog, so a full
        // queue here is only a listener that went away (or a bug): never
        // queue beyond the bound.
        if queued.is_none_or(|n| n >= self.config.accept_backlog) {
            debug!(%peer, port, "completed connection dropped: no room to queue it");
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
        if let Some(l) = self.listeners.get_mut(&port) {
            l.accept_queue.push_back(id);
        }
    }
}
