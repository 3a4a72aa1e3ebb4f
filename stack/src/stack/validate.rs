//! Segments of synchronized TI connections: TCP's acceptance tests
//! (`tifid::acceptance`) decide what a RST does and what counts as a sign
//! of life, before smoltcp sees the segment. Never changes TI state on a
//! segment TCP would not accept.

use tifid::acceptance::{self, RstVerdict, SeqWindow};

use super::*;

/// Least time between two challenge ACKs on one connection (RFC 5961 §7).
const CHALLENGE_ACK_INTERVAL: SmolDuration = SmolDuration::from_millis(100);

impl<D: Device> Stack<D> {
    /// The connection's sequence spaces as far as we can tell from outside
    /// smoltcp: `rcv_nxt` exactly (the peer's ISN, the bytes taken out of
    /// the socket and those waiting in it, its FIN), the send side and the
    /// window as bounds.
    pub(super) fn seq_window(&self, handle: ConnId) -> Option<SeqWindow> {
        let conn = self.conns.get(&handle)?;
        let (iss, irs) = (conn.iss?, conn.irs?);
        let socket = self.cells.socket(handle);
        let fin_in = matches!(
            socket.state(),
            tcp::State::CloseWait
                | tcp::State::LastAck
                | tcp::State::Closing
                | tcp::State::TimeWait
        );
        let received = conn.consumed + socket.recv_queue() as u64 + u64::from(fin_in);
        let rcv_nxt = irs.wrapping_add(1).wrapping_add(received as u32);
        let snd_una = iss.wrapping_add(1).wrapping_add(conn.acked as u32);
        let in_flight = conn.written.saturating_sub(conn.acked) + 1;
        let buffer = u32::try_from(self.config.socket_buffer).unwrap_or(u32::MAX);
        Some(SeqWindow {
            rcv_nxt,
            rcv_wnd: buffer,
            snd_una,
            snd_max: snd_una.wrapping_add(in_flight as u32),
            max_ack_lag: buffer,
        })
    }

    /// A segment of a TI connection past its handshake. Returns whether
    /// smoltcp gets it.
    pub(super) fn on_synchronized_segment(
        &mut self,
        now: Instant,
        handle: ConnId,
        seg: &Segment,
    ) -> bool {
        let Some(window) = self.seq_window(handle) else {
            return true;
        };
        if seg.rst {
            return match acceptance::judge_rst(seg.seq, &window) {
                RstVerdict::Reset => {
                    let kind = self.reset_kind(handle, seg);
                    if let Some(conn) = self.conns.get_mut(&handle) {
                        conn.reset = Some(kind);
                    }
                    true
                }
                RstVerdict::ChallengeAck => {
                    self.send_challenge_ack(now, handle, &window);
                    false
                }
                RstVerdict::Ignore => {
                    debug!(remote = %seg.src, "RST outside the window: ignored");
                    false
                }
            };
        }
        let len = seg.payload_len as u32 + u32::from(seg.fin);
        tracing::trace!(%now, remote = %seg.src, seq = seg.seq, ack = seg.ack_number, len, ?window, "synchronized segment");
        if !acceptance::is_sign_of_life(seg.seq, len, seg.ack, seg.ack_number, &window) {
            return true;
        }
        let Some(conn) = self.conns.get_mut(&handle) else {
            return true;
        };
        conn.last_rx = now;
        let peer = seg.src.ip();
        let window_was_zero = conn.peer_window_zero;
        conn.peer_window_zero = seg.window == 0;
        tracing::trace!(%now, remote = %seg.src, window = seg.window, len, "sign of life");
        // The answer to our probe is a bare ACK of nothing new: to smoltcp
        // it would be a duplicate ACK, and three of them start a fast
        // retransmit of one segment that also restarts its retransmission
        // timer. Probing every RTO while a loss is being recovered would
        // then resend one segment per four probes, and the timeout that
        // makes TCP go back and resend the whole window would never come.
        // The answer is ours: smoltcp never sees it (unless it opens a
        // window smoltcp believes closed).
        let probe_answer = std::mem::take(&mut conn.probe_pending);
        let swallow =
            probe_answer && is_bare_old_ack(seg, &window) && !window_was_zero && seg.window != 0;
        if probe_answer && let Some(sent) = conn.last_probe {
            conn.rtt.sample(std_dur(now - sent));
        } else if let Some(rtt) = echoed_rtt(now, seg, &window) {
            conn.rtt.sample(rtt);
        }
        let stream = conn.stream;
        self.note_peer_heard(now, peer);
        let Some(conn) = self.conns.get_mut(&handle) else {
            return true;
        };
        if let Phase::Confirming(initiator) = &mut conn.phase
            && initiator.on_peer_segment(seg.syn)
        {
            debug!(tifid = %initiator.syn_option().tifid, "confirmation acknowledged by peer");
            let tuple = conn.tuple;
            conn.phase = Phase::Open;
            self.device.detach_option(&tuple);
        }
        if let Some(id) = stream {
            self.life_input(now, id, tifid::lifecycle::Input::PeerAnswered);
            if let Some(verdict) = self.judge_for_suspect(now, id, handle, seg, len, &window) {
                return verdict;
            }
        }
        if swallow {
            tracing::trace!(%now, remote = %seg.src, "probe answered: kept from smoltcp");
        }
        !swallow
    }

    /// Make before break: a segment on the suspect the flow keeps while it
    /// resumes. Decided before smoltcp sees it, so that the suspect's TCP
    /// never acknowledges data the resume SYN did not count (the peer then
    /// resends exactly from the SYN's TIAck). Whatever shows the suspect
    /// works again wins at once (a new acknowledgement; after a silent
    /// path, new data too): the suspect is the attached connection before
    /// smoltcp takes the segment. New data on a suspect that has not won
    /// (a stall: our side is stuck, this one-way data proves nothing) is
    /// dropped: the peer resends it on whichever connection carries the
    /// flow. `None`: not a suspect, the caller goes on.
    fn judge_for_suspect(
        &mut self,
        now: Instant,
        id: StreamId,
        handle: ConnId,
        seg: &Segment,
        len: u32,
        window: &SeqWindow,
    ) -> Option<bool> {
        let suspect = self
            .streams
            .get(&id)?
            .suspect
            .filter(|s| s.handle == handle)?;
        let new_ack = seg.ack && seq_after(seg.ack_number, window.snd_una);
        let new_data = len > 0 && seq_after(seg.seq.wrapping_add(len), window.rcv_nxt);
        let stalled = suspect.cause == tifid::lifecycle::FailureCause::Stall;
        let wins = new_ack || (new_data && !stalled);
        if wins {
            self.life_input(now, id, tifid::lifecycle::Input::Progress);
            return Some(true);
        }
        if new_data {
            tracing::trace!(%now, remote = %seg.src, "data on a stalled suspect: dropped, resent by the winner");
            return Some(false);
        }
        None
    }

    /// What an acceptable RST says: our option with this flow's TIFID and
    /// zero positions aborts the flow, with positions it says the peer
    /// abandoned the connection; anything else is a bare reset.
    fn reset_kind(&self, handle: ConnId, seg: &Segment) -> ResetKind {
        let tifid = self
            .conns
            .get(&handle)
            .and_then(|c| c.stream)
            .and_then(|id| self.streams.get(&id))
            .and_then(|s| s.tifid);
        match (seg.option, tifid) {
            (Ok(Some(option)), Some(tifid)) if option.tifid == tifid => {
                if option.tiseq == Seq48::ZERO && option.tiack == Seq48::ZERO {
                    ResetKind::Aborted
                } else {
                    ResetKind::Abandoned
                }
            }
            _ => ResetKind::Bare,
        }
    }

    /// Answers an in-window RST that is not at `rcv_nxt` (RFC 5961 §3.2).
    /// Its sequence number is one below `snd_una`, so the peer never takes
    /// its window field; a peer that really lost the connection answers
    /// with a RST at exactly `rcv_nxt`.
    fn send_challenge_ack(&mut self, now: Instant, handle: ConnId, window: &SeqWindow) {
        let Some(conn) = self.conns.get_mut(&handle) else {
            return;
        };
        if conn
            .last_challenge
            .is_some_and(|t| now < t + CHALLENGE_ACK_INTERVAL)
        {
            return;
        }
        conn.last_challenge = Some(now);
        debug!(remote = %conn.tuple.remote, "RST in window but not at rcv_nxt: challenge ACK");
        let ack =
            segment::challenge_ack(conn.tuple, window.snd_una.wrapping_sub(1), window.rcv_nxt);
        self.device.send_raw(now, &ack);
    }
}

/// A segment that only acknowledges, and nothing new: no payload, no SYN,
/// FIN or RST, its ACK at `snd_una` (the caller checked that its sequence
/// number is in the window).
fn is_bare_old_ack(seg: &Segment, window: &SeqWindow) -> bool {
    seg.ack
        && !seg.syn
        && !seg.fin
        && !seg.rst
        && seg.payload_len == 0
        && seg.ack_number == window.snd_una
}

/// Longest round trip a timestamp echo may measure: an older echo is not
/// ours (or our clock wrapped).
const MAX_ECHOED_RTT_MS: u32 = 60_000;

/// The round trip a segment's timestamp echo measures (RFC 7323 §4.1, on
/// our own clock: see `tsval`), taken only from segments that acknowledge
/// new data, so a delayed or repeated ACK never measures the wrong send.
fn echoed_rtt(now: Instant, seg: &Segment, window: &SeqWindow) -> Option<Duration> {
    let (_, ecr) = seg.timestamp?;
    let acks_new = seg.ack && seq_after(seg.ack_number, window.snd_una);
    if ecr == 0 || !acks_new {
        return None;
    }
    let ms = ts_clock_ms(now).wrapping_sub(ecr);
    (ms <= MAX_ECHOED_RTT_MS).then(|| Duration::from_millis(u64::from(ms)))
}

/// `a` is after `b` in sequence space (modulo 2^32).
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}
