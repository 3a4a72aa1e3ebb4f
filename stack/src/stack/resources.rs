//! What the stack holds now, and what its bounds refused: the figures tests
//! and `tiflow status` check the bounds of DESIGN §5 with.

use super::*;

/// A snapshot of what a [`Stack`] holds and of what its bounds turned away.
///
/// With one listener, `sockets` stays within `accept_backlog +
/// max_half_open` plus the streams the application holds (and, inside a
/// poll only, one fresh listener per SYN of the batch): whatever remote
/// peers send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// smoltcp sockets, each in its connection's cell (listeners,
    /// handshakes, connections, connections whose RST is still to go out).
    pub sockets: usize,
    /// Connections in SYN-RECEIVED on our listeners.
    pub half_open: usize,
    /// Streams completed by the stack and not yet accepted by the
    /// application, over all listeners.
    pub accept_queued: usize,
    /// Streams, whether the application holds them, they wait in an accept
    /// queue, or they finish after the application let go.
    pub streams: usize,
    /// Entries in the flow table.
    pub flows: usize,
    /// SYNs dropped unanswered because their listener's accept queue was
    /// full (since the stack started).
    pub syns_dropped_backlog: u64,
    /// SYNs dropped unanswered because they came faster than the stack
    /// answers them (since the start; their retransmissions go first).
    pub syns_dropped_overload: u64,
    /// New SYNs read and waiting to be answered.
    pub syns_waiting: usize,
    /// Handshakes that completed while their listener's accept queue was
    /// full, dropped (since the start).
    pub completed_dropped_backlog: u64,
    /// ACKs that would have completed a handshake into a full accept queue,
    /// dropped (the handshake stays half-open; since the start).
    pub handshakes_deferred_backlog: u64,
    /// Handshakes dropped to make room for a newer SYN (since the start).
    pub half_open_evicted: u64,
    /// Handshakes dropped after `half_open_timeout` (since the start).
    pub half_open_expired: u64,
}

impl<D: Device> Stack<D> {
    /// What the stack holds now and what its bounds turned away. Sums the
    /// listeners' accept queues: for tests and status displays, not for
    /// every poll.
    pub fn resources(&self) -> Resources {
        Resources {
            sockets: self.cells.len(),
            half_open: self.half_open.len(),
            accept_queued: self.listeners.values().map(|l| l.accept_queue.len()).sum(),
            streams: self.streams.len(),
            flows: self.table.len(),
            syns_dropped_backlog: self.admission.syns_dropped_backlog,
            completed_dropped_backlog: self.admission.completed_dropped_backlog,
            handshakes_deferred_backlog: self.admission.handshakes_deferred_backlog,
            syns_dropped_overload: self.admission.syns_dropped_overload,
            syns_waiting: self.syn_queue.len(),
            half_open_evicted: self.admission.half_open_evicted,
            half_open_expired: self.admission.half_open_expired,
        }
    }
}
