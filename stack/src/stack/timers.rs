//! The stack's one timer table and its ready sets: what a poll must visit.
//!
//! A poll visits only the connections and streams that had a packet, an
//! application call or a due timer, so its cost does not grow with the
//! connections that sit idle. Every deadline of a connection (smoltcp's
//! own: retransmission, delayed ACK, keepalive, TIME-WAIT) and of a stream
//! (its lifecycle driver: stall, silent path, resume attempts, resume
//! timeout; its probes; the connect timeout) is one entry here, keyed by
//! what it wakes. Owns only keys and instants: what a wake-up does is the
//! stack's business.

use std::collections::{BTreeSet, HashMap};

use smoltcp::time::Instant;

use super::StreamId;
use super::cells::ConnId;

/// What a timer wakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Wake {
    /// A connection's interface (smoltcp's timers).
    Conn(ConnId),
    /// A stream (its driver, probes, connect timeout).
    Stream(StreamId),
}

/// One deadline per key, ordered by time, and the keys to visit in the
/// current poll.
#[derive(Debug, Default)]
pub(super) struct Timers {
    queue: BTreeSet<(Instant, Wake)>,
    at: HashMap<Wake, Instant>,
    /// Connections to poll (egress) and check in this poll.
    ready_conns: BTreeSet<ConnId>,
    /// Streams to service in this poll.
    ready_streams: BTreeSet<StreamId>,
}

impl Timers {
    /// Shrinks the tables to what they hold.
    pub(super) fn shrink_to_fit(&mut self) {
        self.at.shrink_to_fit();
    }

    /// Sets (or with `None` clears) the deadline of `key`.
    pub(super) fn set(&mut self, key: Wake, at: Option<Instant>) {
        if let Some(old) = self.at.remove(&key) {
            self.queue.remove(&(old, key));
        }
        if let Some(at) = at {
            self.at.insert(key, at);
            self.queue.insert((at, key));
        }
    }

    /// The earliest deadline.
    pub(super) fn next(&self) -> Option<Instant> {
        self.queue.first().map(|(at, _)| *at)
    }

    /// Moves every key due at `now` into the ready sets.
    pub(super) fn wake_due(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.queue.first()
            && at <= now
        {
            self.queue.pop_first();
            self.at.remove(&key);
            self.mark(key);
        }
    }

    /// Marks `key` for a visit in this poll (its deadline stays).
    pub(super) fn mark(&mut self, key: Wake) {
        match key {
            Wake::Conn(id) => {
                self.ready_conns.insert(id);
            }
            Wake::Stream(id) => {
                self.ready_streams.insert(id);
            }
        }
    }

    /// Marks a connection.
    pub(super) fn mark_conn(&mut self, id: ConnId) {
        self.ready_conns.insert(id);
    }

    /// Marks a stream.
    pub(super) fn mark_stream(&mut self, id: StreamId) {
        self.ready_streams.insert(id);
    }

    /// The connections marked so far (the set stays).
    pub(super) fn ready_conns(&self) -> Vec<ConnId> {
        self.ready_conns.iter().copied().collect()
    }

    /// Takes the connections marked so far.
    pub(super) fn take_ready_conns(&mut self) -> BTreeSet<ConnId> {
        std::mem::take(&mut self.ready_conns)
    }

    /// Takes the streams marked so far.
    pub(super) fn take_ready_streams(&mut self) -> BTreeSet<StreamId> {
        std::mem::take(&mut self.ready_streams)
    }

    /// Something is marked: the next poll is due now.
    pub(super) fn anything_ready(&self) -> bool {
        !self.ready_conns.is_empty() || !self.ready_streams.is_empty()
    }

    /// Forgets a key (its connection or stream is gone).
    pub(super) fn forget(&mut self, key: Wake) {
        self.set(key, None);
        match key {
            Wake::Conn(id) => {
                self.ready_conns.remove(&id);
            }
            Wake::Stream(id) => {
                self.ready_streams.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn due_keys_become_ready_in_order_and_later_ones_stay() {
        let mut t = Timers::default();
        t.set(Wake::Stream(StreamId(1)), Some(at(30)));
        t.set(Wake::Stream(StreamId(2)), Some(at(10)));
        t.set(Wake::Stream(StreamId(3)), Some(at(50)));
        assert_eq!(t.next(), Some(at(10)));
        t.wake_due(at(30));
        let ready: Vec<_> = t.take_ready_streams().into_iter().collect();
        assert_eq!(ready, vec![StreamId(1), StreamId(2)]);
        assert_eq!(t.next(), Some(at(50)));
    }

    #[test]
    fn setting_a_key_again_replaces_its_deadline() {
        let mut t = Timers::default();
        let key = Wake::Stream(StreamId(7));
        t.set(key, Some(at(10)));
        t.set(key, Some(at(100)));
        t.wake_due(at(50));
        assert!(!t.anything_ready(), "the old deadline is gone");
        t.set(key, None);
        assert_eq!(t.next(), None);
    }

    #[test]
    fn forgetting_a_key_removes_its_deadline_and_its_mark() {
        let mut t = Timers::default();
        let key = Wake::Stream(StreamId(3));
        t.set(key, Some(at(10)));
        t.mark(key);
        t.forget(key);
        assert!(!t.anything_ready());
        assert_eq!(t.next(), None);
    }
}
