//! The responder's accept path: a fresh listener per incoming SYN, the
//! connections they become, and the accept queues.

use super::*;

impl<D: Device> Stack<D> {
    pub(super) fn add_listener(&mut self, port: u16) {
        let mut socket = self.new_socket();
        if socket.listen(port).is_ok() {
            let handle = self.sockets.add(socket);
            self.fresh_listeners.push((handle, port));
        }
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
            let Some(tuple) = tuple else {
                // smoltcp rejected the SYN this listener was made for.
                self.sockets.remove(handle);
                continue;
            };
            let responder = self.pending.remove(&tuple).flatten();
            self.conns.insert(
                handle,
                Conn::new(tuple, None, Phase::SynReceived(responder), now),
            );
            self.by_tuple.insert(tuple, handle);
        }
        // Every SYN delivered this poll has been processed: handshakes smoltcp
        // did not take up leave no state behind (no rule, no entry).
        for (tuple, _) in std::mem::take(&mut self.pending) {
            self.device.detach_option(&tuple);
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
        if !self.listeners.contains_key(&port) {
            self.drop_connection(handle);
            return;
        }
        let id = self.new_stream(Role::Responder, peer, now);
        if let Some(s) = self.streams.get_mut(&id) {
            s.mode = StreamMode::Known(mode);
            s.conn = Some(handle);
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
