//! Taking packets in: reads the device, inspects segments of known
//! connections (and everything that is not a new SYN for a listener) at
//! once, and new SYNs within a budget per poll.
//!
//! Under a SYN flood, answering a SYN (a socket, smoltcp, a SYN-ACK) costs
//! several times what reading one does. Reading everything the device holds
//! keeps its queue short, so the ACKs and data of connections already under
//! way are never dropped behind a wall of SYNs nor delayed until their
//! handshake is evicted; new SYNs beyond what a poll answers wait in the
//! [`SynQueue`], retransmissions of dropped SYNs first (DESIGN §5: a SYN
//! flood does not lock out legitimate clients). Without a flood, every SYN
//! is answered in the poll that read it.

use super::*;

/// Packets read from the device per poll, at most.
const INGRESS_READ: usize = 1024;
/// New SYNs inspected (and answered) per poll, at most: no more than the
/// half-open table holds, so a handshake answered in one poll survives
/// the next poll's admissions until its ACK is read.
const SYN_BUDGET: usize = 128;
/// The budget while more SYNs wait than one poll answers (a flood): the
/// time goes to reading, so the device's queue does not overflow and drop
/// what cannot be told apart there (retransmissions, ACKs).
const SYN_BUDGET_BEHIND: usize = 16;

impl<D: Device> Stack<D> {
    /// Reads and inspects this poll's packets. Returns whether any came.
    pub(super) fn take_ingress(&mut self, now: Instant) -> bool {
        let mut activity = false;
        let mut inspected = 0;
        for _ in 0..INGRESS_READ {
            if inspected >= INGRESS_BATCH || self.device.ingress_full() {
                break;
            }
            let Some(packet) = self.device.receive_raw(now) else {
                break;
            };
            activity = true;
            match self.new_listener_syn(&packet) {
                Some(tuple) => self.queue_syn(now, tuple, packet),
                None => {
                    inspected += 1;
                    self.on_ingress(now, packet);
                }
            }
        }
        // Segments of known connections still wait in the device: answers
        // may be among them, so no liveness timer fires this poll.
        self.ingress_backlogged = inspected >= INGRESS_BATCH;
        let budget = if self.syn_queue.len() > SYN_BUDGET {
            SYN_BUDGET_BEHIND
        } else {
            SYN_BUDGET
        };
        let budget = budget.min(self.config.max_half_open.max(1));
        for _ in 0..budget {
            if self.device.ingress_full() {
                break;
            }
            let Some((_, packet)) = self.syn_queue.pop() else {
                break;
            };
            activity = true;
            self.on_ingress(now, packet);
        }
        activity
    }

    /// New SYNs wait to be inspected.
    pub(super) fn syns_waiting(&self) -> bool {
        !self.syn_queue.is_empty()
    }

    /// The tuple of `packet` if it is a SYN that would start a handshake
    /// with one of our listeners.
    fn new_listener_syn(&self, packet: &[u8]) -> Option<FourTuple> {
        let seg = Segment::parse(packet, self.device.kind())?;
        if !seg.syn || seg.ack || seg.rst {
            return None;
        }
        let tuple = seg.tuple_at_receiver();
        let new = self.config.is_ours(tuple.local.ip())
            && self.listener_for(tuple.local.port()).is_some()
            && !self.by_tuple.contains_key(&tuple)
            && !self.pending.contains_key(&tuple);
        new.then_some(tuple)
    }

    /// Queues a new SYN; one that does not fit is dropped and remembered, so
    /// its retransmission goes first.
    fn queue_syn(&mut self, now: Instant, tuple: FourTuple, packet: Vec<u8>) {
        let retried = self.retry_filter.contains(&tuple, now);
        if let Some((dropped, packet)) = self.syn_queue.push(tuple, packet, retried) {
            self.retry_filter.insert(&dropped, now);
            self.admission.syns_dropped_overload += 1;
            self.device.recycle(packet);
        }
    }
}
