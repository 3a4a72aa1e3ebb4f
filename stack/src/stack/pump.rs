//! The byte pump between a stream's TI buffers and its smoltcp socket
//! (invariants I1 and I2 of DESIGN §4).

use super::*;

/// How [`Stack::pump`] treats a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PumpMode {
    /// The attached connection: acknowledged bytes leave the send buffer,
    /// new ones are pushed, received ones taken up to the buffer bound.
    Normal,
    /// The connection is going away: take every received byte regardless
    /// of the bound (I1), apply acknowledgements, push nothing.
    Drain,
    /// A suspect (make before break): received bytes are taken as usual,
    /// acknowledgements are seen but not applied and nothing is pushed, so
    /// the flow's send position stays what the resume SYN named.
    Watch,
    /// A suspect going away because a resume won: take every received byte
    /// (I1), apply no acknowledgement (the new connection resends from
    /// what the peer's SYN-ACK named).
    DrainReceived,
}

impl PumpMode {
    fn applies_acks(self) -> bool {
        matches!(self, PumpMode::Normal | PumpMode::Drain)
    }

    fn unbounded(self) -> bool {
        matches!(self, PumpMode::Drain | PumpMode::DrainReceived)
    }
}

/// What a pump saw the peer do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Moved {
    /// New bytes (or our FIN) acknowledged.
    pub(super) acked: bool,
    /// New bytes (or the peer's FIN) received.
    pub(super) received: bool,
}

impl Moved {
    /// Either direction moved.
    pub(super) fn any(self) -> bool {
        self.acked || self.received
    }
}

impl<D: Device> Stack<D> {
    /// Brings a flow's positions up to date with its connection (used
    /// before judging a resume of it).
    pub(super) fn sync_stream(&mut self, now: Instant, id: StreamId) {
        if let Some(handle) = self.streams.get(&id).and_then(|s| s.conn) {
            self.pump(now, id, handle, PumpMode::Drain);
        }
    }

    /// Moves bytes between the stream's TI buffers and its socket (see
    /// [`PumpMode`]). Returns what the peer did: bytes (or a FIN) newly
    /// acknowledged or received.
    pub(super) fn pump(
        &mut self,
        _now: Instant,
        id: StreamId,
        handle: ConnId,
        mode: PumpMode,
    ) -> Moved {
        let draining = mode.unbounded();
        let mtu = self.device.capabilities().max_transmission_unit;
        let Some(conn) = self.conns.get_mut(&handle) else {
            return Moved::default();
        };
        let Some(s) = self.streams.get_mut(&id) else {
            return Moved::default();
        };
        let mut moved = Moved::default();
        // Until the application accepts the stream, the peer's bytes stay in
        // the socket (bounded by its buffer), not in the TI buffer.
        let recv_limit = if s.awaiting_accept {
            0
        } else {
            self.config.recv_buffer
        };
        let socket = self.cells.socket_mut(handle);
        let flow = s.tifid.and_then(|t| self.table.get_mut(t));
        let mut flow = flow;

        // Acknowledged by TCP: drop from the send buffer (I2 keeps the rest).
        let in_socket = socket.send_queue() as u64;
        let acked_total = conn.written.saturating_sub(in_socket);
        let newly = acked_total.saturating_sub(conn.acked);
        if newly > 0 && !mode.applies_acks() {
            moved.acked = true;
        } else if newly > 0 {
            conn.acked = acked_total;
            let n = (newly as usize).min(s.send_buf.len());
            s.send_buf.drain_front(n);
            if let Some(flow) = flow.as_deref_mut() {
                let una = flow.positions().snd_una + newly;
                let _ = flow.on_acked(una);
            }
            moved.acked = true;
        }

        // Push new bytes (the first flight is one MSS-20 segment while confirming).
        let established = matches!(
            socket.state(),
            tcp::State::Established | tcp::State::CloseWait
        );
        if mode == PumpMode::Normal
            && established
            && !matches!(conn.phase, Phase::SynSent(_) | Phase::SynReceived(_))
        {
            let limit = match &conn.phase {
                Phase::Confirming(i) => i
                    .first_flight_limit(effective_mss(mtu, conn.tuple.local.ip()))
                    .map(|l| (l as u64).saturating_sub(conn.written)),
                _ => None,
            };
            let unsent_from = in_socket as usize;
            if unsent_from < s.send_buf.len() {
                let (a, b) = s.send_buf.as_slices();
                let mut offset = unsent_from;
                let mut budget = limit.unwrap_or(u64::MAX);
                for part in [a, b] {
                    if offset >= part.len() {
                        offset -= part.len();
                        continue;
                    }
                    let chunk = &part[offset..];
                    offset = 0;
                    let chunk = &chunk[..chunk.len().min(budget as usize)];
                    let n = socket.send_slice(chunk).unwrap_or(0);
                    conn.written += n as u64;
                    budget -= n as u64;
                    let high = conn.base + conn.written;
                    if s.sent_high < high || s.tifid.is_none() {
                        s.sent_high = high;
                    }
                    if n < chunk.len() || budget == 0 {
                        break;
                    }
                }
            }
            let all_pushed = in_socket as usize + (conn.written - acked_total - in_socket) as usize
                >= s.send_buf.len();
            // While confirming too: a FIN after the last byte never makes a
            // segment too large for the option.
            if s.shutdown_write && !conn.fin_pushed && all_pushed {
                socket.close();
                // Closing from CLOSE-WAIT enters LAST-ACK now; its ACK may come
                // before any later poll sees the state.
                if socket.state() == tcp::State::LastAck {
                    conn.was_last_ack = true;
                }
                conn.fin_pushed = true;
            }
        }

        // Receive (I1: when draining, everything TCP acknowledged).
        while socket.can_recv() && (draining || s.recv_buf.len() < recv_limit) {
            let room = if draining {
                usize::MAX
            } else {
                recv_limit - s.recv_buf.len()
            };
            let skip = usize::try_from(conn.skip_rx).unwrap_or(usize::MAX);
            let got = socket.recv(|data| {
                // Bytes the flow already has (a resume outran by the old
                // connection) are taken out and dropped, never delivered twice.
                let skipped = skip.min(data.len());
                let fresh = &data[skipped..];
                let n = fresh.len().min(room);
                s.recv_buf.extend(&fresh[..n]);
                (skipped + n, (skipped, n))
            });
            match got {
                Ok((0, 0)) | Err(_) => break,
                Ok((skipped, n)) => {
                    moved.received = true;
                    conn.skip_rx -= skipped as u64;
                    conn.consumed += (skipped + n) as u64;
                    s.stats.bytes_received += n as u64;
                    if let Some(flow) = flow.as_deref_mut() {
                        let _ = flow.on_received(n as u64);
                    }
                }
            }
        }
        let state = socket.state();
        // A socket that went from LAST-ACK to CLOSED (our FIN acknowledged,
        // no reset) had the peer's FIN too; its last bytes may still wait in
        // the socket for room in the stream's buffer.
        let fin_in =
            matches!(
                state,
                tcp::State::CloseWait
                    | tcp::State::LastAck
                    | tcp::State::Closing
                    | tcp::State::TimeWait
            ) || (state == tcp::State::Closed && conn.was_last_ack && conn.reset.is_none());
        if fin_in && socket.recv_queue() == 0 && !s.eof {
            s.eof = true;
            moved.received = true;
            if let Some(flow) = flow.as_deref_mut() {
                flow.on_fin_received();
            }
        }
        let fin_acked = conn.fin_pushed
            && (matches!(state, tcp::State::FinWait2 | tcp::State::TimeWait)
                || (state == tcp::State::Closed && conn.was_last_ack && conn.reset.is_none()));
        if fin_acked && !s.fin_acked && !mode.applies_acks() {
            moved.acked = true;
        } else if fin_acked && !s.fin_acked {
            s.fin_acked = true;
            moved.acked = true;
            if let Some(flow) = flow {
                let end = flow.positions().snd_nxt;
                let _ = flow.on_acked(end);
            }
        }
        moved
    }
}
