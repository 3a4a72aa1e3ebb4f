//! Connections: opening, socket settings, ports, dropping, and the
//! per-connection checks after smoltcp ran.

use super::*;

impl<D: Device> Stack<D> {
    /// A socket with both buffers of `socket_buffer` bytes (smoltcp fixes
    /// them, and the window scale with them, for the socket's life). Their
    /// pages are committed only as traffic touches them when the process
    /// runs with [`crate::memory::map_large_allocations`].
    pub(super) fn new_socket(&self) -> tcp::Socket<'static> {
        let size = self.config.socket_buffer;
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; size]),
            tcp::SocketBuffer::new(vec![0u8; size]),
        );
        configure_socket(&self.config, &mut socket);
        socket
    }

    /// A local port no connection holds and no listener uses (see
    /// [`ports::Ports::fresh`]).
    pub(super) fn fresh_port(&mut self) -> Result<u16, StreamError> {
        self.ports
            .fresh(&mut self.rng)
            .map_err(|e| StreamError::NoFreePort { ports: e.ports })
    }

    /// Indexes a connection by its tuple; its local port is held while the
    /// tuple is indexed (every tuple, ours or a peer's, as the port scan
    /// this replaces counted them).
    pub(super) fn index_tuple(&mut self, tuple: FourTuple, handle: ConnId) {
        if self.by_tuple.insert(tuple, handle).is_none() {
            self.ports.acquire(tuple.local.port());
        }
    }

    /// Forgets a tuple's index entry and releases its port. Returns whether
    /// it was indexed.
    fn unindex_tuple(&mut self, tuple: &FourTuple) -> bool {
        let indexed = self.by_tuple.remove(tuple).is_some();
        if indexed {
            self.ports.release(tuple.local.port());
        }
        indexed
    }

    pub(super) fn open_connection(
        &mut self,
        now: Instant,
        id: StreamId,
        initiator: Option<Initiator>,
    ) -> Result<(), StreamError> {
        let peer = self
            .streams
            .get(&id)
            .map(|s| s.peer)
            .ok_or(StreamError::NoSuchStream)?;
        let address = self
            .config
            .local_address_for(peer.ip())
            .ok_or(StreamError::NoAddressOfFamily)?;
        let port = self.fresh_port()?;
        let local = SocketAddr::new(address, port);
        let socket = self.new_socket();
        let remote = IpEndpoint::new(peer.ip().into(), peer.port());
        let local_ep = IpEndpoint::new(local.ip().into(), local.port());
        let handle = self
            .cells
            .add(socket, self.rng.random(), &mut self.device, now)
            .ok_or(StreamError::ConnectionRefused)?;
        let connected = self
            .cells
            .socket_and_context(handle)
            .is_some_and(|(socket, cx)| socket.connect(cx, remote, local_ep).is_ok());
        if !connected {
            self.remove_cell(handle);
            return Err(StreamError::ConnectionRefused);
        }
        let tuple = FourTuple {
            local,
            remote: peer,
        };
        if let Some(i) = &initiator {
            self.device.attach_option(tuple, i.syn_option());
        }
        self.conns.insert(
            handle,
            Conn::new(tuple, Some(id), Phase::SynSent(initiator), now),
        );
        self.index_tuple(tuple, handle);
        if let Some(s) = self.streams.get_mut(&id) {
            s.conn = Some(handle);
        }
        // Its SYN goes out in this poll's egress.
        self.timers.mark_conn(handle);
        self.timers.mark_stream(id);
        Ok(())
    }

    /// Resets a connection: smoltcp sends one RST on its next poll, carrying
    /// `option` when given. The boundary keeps attaching the option to the
    /// tuple for [`RESET_LINGER`], so the RST smoltcp sends in answer to a
    /// challenge ACK (RFC 5961) carries it too. The socket leaves the set
    /// once its RST is out. The local port stays held until the entry
    /// leaves the resetting list (RST out and [`RESET_LINGER`] over): a new
    /// connection must not take the tuple while the aborted socket still
    /// owns it in smoltcp or the option rule still names it.
    pub(super) fn reset_connection(
        &mut self,
        now: Instant,
        handle: ConnId,
        option: Option<tifid::FlowOptionRepr>,
    ) {
        let Some(conn) = self.conns.remove(&handle) else {
            return;
        };
        // The port moves from the index to the resetting entry.
        let holds_port = self.by_tuple.remove(&conn.tuple).is_some();
        if conn.half_open {
            self.half_open.remove(&conn.tuple);
        }
        match option {
            Some(option) => self.device.attach_option(conn.tuple, option),
            None => self.device.detach_option(&conn.tuple),
        }
        if let Some(s) = conn.stream.and_then(|id| self.streams.get_mut(&id)) {
            s.release(handle);
        }
        self.cells.socket_mut(handle).abort();
        // Its RST goes out in this poll's egress.
        self.timers.mark_conn(handle);
        self.resetting.push_back(Resetting {
            handle: Some(handle),
            tuple: conn.tuple,
            until: now + RESET_LINGER,
            holds_port,
        });
    }

    /// Frees sockets whose RST went out and forgets the options of resets
    /// older than [`RESET_LINGER`].
    pub(super) fn reap_resets(&mut self, now: Instant) {
        for r in self.resetting.iter_mut() {
            if let Some(handle) = r.handle
                && self.cells.socket(handle).remote_endpoint().is_none()
            {
                self.cells.remove(handle);
                self.timers.forget(Wake::Conn(handle));
                r.handle = None;
            }
        }
        while let Some(r) = self.resetting.front()
            && r.handle.is_none()
            && r.until <= now
        {
            if !self.by_tuple.contains_key(&r.tuple) {
                self.device.detach_option(&r.tuple);
            }
            if r.holds_port {
                self.ports.release(r.tuple.local.port());
            }
            self.resetting.pop_front();
        }
    }

    /// Removes a connection's cell (interface and socket) and its timer.
    pub(super) fn remove_cell(&mut self, handle: ConnId) {
        self.cells.remove(handle);
        self.timers.forget(Wake::Conn(handle));
    }

    /// Removes a connection's socket and bookkeeping without touching its stream's flow.
    pub(super) fn drop_connection(&mut self, handle: ConnId) {
        self.forget_connection(handle);
        self.remove_cell(handle);
    }

    /// Removes a connection's bookkeeping (not its socket) without touching
    /// its stream's flow.
    pub(super) fn forget_connection(&mut self, handle: ConnId) {
        if let Some(conn) = self.conns.remove(&handle) {
            self.unindex_tuple(&conn.tuple);
            if conn.half_open {
                self.half_open.remove(&conn.tuple);
            }
            self.device.detach_option(&conn.tuple);
            if let Some(s) = conn.stream.and_then(|id| self.streams.get_mut(&id)) {
                s.release(handle);
            }
        }
    }

    /// Per-connection checks after smoltcp ran, on the connections marked
    /// in this poll (and their streams are marked): handshakes that ended,
    /// connections that died.
    pub(super) fn service_connections(&mut self, now: Instant) {
        for handle in self.timers.ready_conns() {
            let Some(conn) = self.conns.get_mut(&handle) else {
                continue;
            };
            if let Some(id) = conn.stream {
                self.timers.mark_stream(id);
            }
            let socket = self.cells.socket_mut(handle);
            let state = socket.state();
            if state == tcp::State::LastAck {
                conn.was_last_ack = true;
            }
            let synchronized = !matches!(
                state,
                tcp::State::Closed
                    | tcp::State::Listen
                    | tcp::State::SynSent
                    | tcp::State::SynReceived
            );
            if synchronized && socket.timeout().is_some() {
                socket.set_timeout(None);
            }
            // The handshake is over (a resume, or an ACK smoltcp took
            // after the boundary saw it): no longer half-open.
            if synchronized && conn.half_open {
                conn.half_open = false;
                self.half_open.remove(&conn.tuple);
            }
            // A RST in SYN-RECEIVED sends a smoltcp socket back to LISTEN: a
            // tracked connection must never become a listener for anyone else.
            if state == tcp::State::Listen {
                debug!(remote = %conn.tuple.remote, "handshake reset: connection dropped");
                self.drop_connection(handle);
                continue;
            }
            match (&conn.phase, conn.stream) {
                // Legacy responder connection established: hand it out.
                // (Data and FIN may have come with the handshake's ACK: any
                // synchronized state means smoltcp accepted the connection.)
                (Phase::SynReceived(None), None) if synchronized => {
                    conn.phase = Phase::Open;
                    self.device.detach_option(&conn.tuple);
                    self.accept_connection(now, handle, Mode::Legacy, None);
                }
                (Phase::Open | Phase::SynReceived(_), None) if state == tcp::State::Closed => {
                    self.drop_connection(handle);
                }
                (Phase::SynSent(None), Some(id)) if state == tcp::State::Established => {
                    conn.phase = Phase::Open;
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.mode = StreamMode::Known(Mode::Legacy);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Our settings on a socket (again on a reused one: a fresh congestion
/// controller, the handshake timeout).
pub(super) fn configure_socket(config: &StackConfig, socket: &mut tcp::Socket<'static>) {
    socket.set_congestion_control(tcp::CongestionControl::Cubic);
    socket.set_tsval_generator(Some(tsval));
    socket.set_nagle_enabled(false);
    socket.set_ack_delay(None);
    socket.set_timeout(Some(smol(config.connect_timeout)));
    // Armed before the handshake: enabling it on an idle established
    // socket makes smoltcp send a probe at once.
    socket.set_keep_alive(Some(smol(config.keepalive)));
}
