//! Liveness of an attached connection: what the peer owes us an answer to,
//! the budgets derived from the connection's RTT (two RTOs for a stall,
//! a few smoothed RTTs of quiet before a probe), and the probes themselves
//! (keepalive-shaped ACKs, backed off while the peer answers with nothing
//! new, so idle flows stay quiet). Feeds the driver; decides no failure.

use std::time::Duration;

use tifid::lifecycle::{Input, Liveness};

use super::*;

/// No stall budget below this, whatever the RTT: on a LAN, 80 ms without
/// an acceptable segment while data is outstanding (and probes, sent every
/// RTO, go unanswered) is far outside what queueing explains, and a false
/// suspicion costs little (the connection is kept until a resume carries
/// data, and wins if it answers first).
const STALL_FLOOR: Duration = Duration::from_millis(80);
/// No probe sooner than this after the peer's last answer.
const PROBE_FLOOR: Duration = Duration::from_millis(200);
/// Smoothed RTTs of quiet before a receiving flow probes its peer.
const QUIET_RTTS: u32 = 3;
/// Most doublings of the probe interval (it is capped at the keepalive).
const MAX_PROBE_BACKOFF: u32 = 8;

/// What the connection's state asks of the peer, and the budgets.
struct Budget {
    outstanding: bool,
    liveness: Liveness,
    probe_every: Duration,
    /// After an unanswered probe, the next one this soon.
    retry_every: Duration,
}

/// Probes an idle connection sends again, unanswered, before its path
/// counts as silent: one lost packet (a probe or its answer, say in a
/// queue that a burst of synchronized probes overflowed) is not a dead
/// path. Only once the probe interval has backed off (an idle flow): a
/// flow that was receiving keeps its one-interval budget.
const IDLE_PROBE_RETRIES: u32 = 2;

impl<D: Device> Stack<D> {
    /// The connection's budgets now. Without an RTT sample: the configured
    /// stall timeout and keepalive.
    ///
    /// The fast budgets (two RTOs) hold while the peer is silent on every
    /// connection: a path that died (a NAT or firewall flush, a blackhole,
    /// an address change) silences them all at once. While the same peer
    /// address answers on another connection within the fast budget, the
    /// path works and this connection is only congested (its losses wait
    /// for TCP's retransmission timer, 1 s in smoltcp, and its probes can
    /// drop in a full queue): it gets `stall_timeout` instead.
    fn budget(&self, now: Instant, handle: ConnId) -> Option<Budget> {
        let conn = self.conns.get(&handle)?;
        let s = conn.stream.and_then(|id| self.streams.get(&id))?;
        let socket = self.cells.socket(handle);
        let fin_unacked = conn.fin_pushed && !s.fin_acked;
        let outstanding = (socket.send_queue() > 0 && !conn.peer_window_zero) || fin_unacked;
        let (stall_max, keepalive) = (self.config.stall_timeout, self.config.keepalive);
        let (stall, probe_every) = match (conn.rtt.rto(), conn.rtt.srtt()) {
            (Some(rto), Some(srtt)) => {
                let stall = (rto * 2).clamp(STALL_FLOOR, stall_max.max(STALL_FLOOR));
                let probe = if outstanding {
                    // Before the stall budget runs out: an answer saves it.
                    rto.min(stall / 2)
                } else {
                    let quiet = (srtt * QUIET_RTTS).max(PROBE_FLOOR);
                    let backoff = 1u32 << conn.probe_backoff.min(MAX_PROBE_BACKOFF);
                    quiet.saturating_mul(backoff).min(keepalive)
                };
                (stall, probe)
            }
            _ => (
                stall_max,
                if outstanding {
                    stall_max / 2
                } else {
                    keepalive
                },
            ),
        };
        let path_answers = self
            .peers_heard
            .get(&conn.tuple.remote.ip())
            .is_some_and(|&heard| now < heard + smol(stall));
        let stall = if path_answers {
            stall.max(stall_max)
        } else {
            stall
        };
        let retry_every = (stall / 3).max(PROBE_FLOOR).min(probe_every);
        let retries = if !outstanding && conn.probe_backoff > 0 {
            IDLE_PROBE_RETRIES
        } else {
            0
        };
        Some(Budget {
            outstanding,
            liveness: Liveness {
                stall,
                silent: probe_every + stall + retry_every * retries,
            },
            probe_every,
            retry_every,
        })
    }

    /// A peer address sent an acceptable segment: its path works.
    pub(super) fn note_peer_heard(&mut self, now: Instant, peer: IpAddr) {
        self.peers_heard.insert(peer, now);
        // Forget peers long silent, so the map stays the size of the live
        // peers (amortized: only when it grew well past the connections).
        if self.peers_heard.len() > 2 * self.conns.len() + 64 {
            let keep = smol(self.config.keepalive + self.config.stall_timeout);
            self.peers_heard.retain(|_, heard| now < *heard + keep);
        }
    }

    /// Tells the driver what the peer owes and the budgets, and probes a
    /// quiet peer when due.
    pub(super) fn watch_liveness(
        &mut self,
        now: Instant,
        id: StreamId,
        handle: ConnId,
        progress: bool,
    ) {
        if progress && let Some(conn) = self.conns.get_mut(&handle) {
            conn.probe_backoff = 0;
        }
        let Some(budget) = self.budget(now, handle) else {
            return;
        };
        if let Some(life) = self.streams.get_mut(&id).and_then(|s| s.life.as_mut()) {
            if life.liveness() != budget.liveness {
                tracing::trace!(%now, ?budget.liveness, outstanding = budget.outstanding, "liveness budget");
            }
            life.set_liveness(budget.liveness);
        }
        self.life_input(now, id, Input::Outstanding(budget.outstanding));
        let ti = self.streams.get(&id).is_some_and(|s| s.tifid.is_some());
        if ti {
            // Our probes watch TI connections: smoltcp's keepalives would
            // only double them.
            let socket = self.cells.socket_mut(handle);
            if socket.keep_alive().is_some() {
                socket.set_keep_alive(None);
            }
        }
        if ti && self.probe_due(handle, &budget).is_some_and(|at| now >= at) {
            self.probe(now, handle);
        }
    }

    /// When the connection's next probe is due.
    fn probe_due(&self, handle: ConnId, budget: &Budget) -> Option<Instant> {
        let conn = self.conns.get(&handle)?;
        conn.iss?;
        // While confirming, every segment must carry our option: a probe
        // (sent outside smoltcp and the boundary) would carry none.
        if !matches!(conn.phase, Phase::Open) {
            return None;
        }
        match conn.last_probe {
            // The last probe went unanswered: probe again within the silent
            // budget (see [`IDLE_PROBE_RETRIES`]).
            Some(p) if p > conn.last_rx => Some(p + smol(budget.retry_every)),
            // Answered (or none sent): the interval runs from the last sign
            // of life.
            _ => Some(conn.last_rx + smol(budget.probe_every)),
        }
    }

    /// When the stream's connection is next due a probe.
    pub(super) fn probe_deadline(&self, now: Instant, id: StreamId) -> Option<Instant> {
        let handle = self.streams.get(&id)?.conn?;
        let budget = self.budget(now, handle)?;
        self.streams.get(&id)?.tifid?;
        self.probe_due(handle, &budget)
    }

    /// Sends the peer a keepalive probe (one old byte) that it must answer. An answer with nothing new doubles the next interval.
    fn probe(&mut self, now: Instant, handle: ConnId) {
        let Some(window) = self.seq_window(handle) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&handle) else {
            return;
        };
        if conn.last_probe.is_some_and(|p| p > conn.last_rx) {
            // The last probe went unanswered: keep the interval.
        } else if conn.last_probe.is_some() {
            conn.probe_backoff = conn.probe_backoff.saturating_add(1);
        }
        conn.last_probe = Some(now);
        conn.probe_pending = true;
        tracing::trace!(%now, remote = %conn.tuple.remote, backoff = conn.probe_backoff, "probe");
        let probe = segment::keepalive_probe(conn.tuple, window.snd_una, window.rcv_nxt);
        self.device.send_raw(now, &probe);
    }
}
