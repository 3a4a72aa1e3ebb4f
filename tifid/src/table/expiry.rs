//! When flows leave the table: a queue of detached flows' deadlines and a
//! queue of finished flows, so expiry costs what expires, not what is held.
//!
//! Owns [`ExpiryQueue`]. It never sees a flow: the table tells it what it
//! observed ([`ExpiryQueue::observe`]: a flow's lifecycle went from `old`
//! to `new`) and hands it a lookup of the observed lifecycles (not the
//! flows' current ones, which may have changed unobserved) whenever it
//! needs them. Entries are never removed in place (lazy deletion): an entry
//! is live while the flow it names is still observed with the lifecycle
//! that queued it (detached at the same instant; finished); a stale one is
//! dropped when it reaches the front, or by a compaction once the heap
//! holds more than twice the detached flows (plus a constant), so it stays
//! within that bound at amortized O(log n) per detach.

use core::cmp::Reverse;
use core::time::Duration;
use std::collections::{BinaryHeap, VecDeque};

use crate::flow::Lifecycle;
use crate::option::Tifid;
use crate::time::Timestamp;

/// Stale deadlines tolerated beyond the live ones before a compaction.
const SLACK: usize = 64;

/// Deadlines of detached flows and the finished flows, as observed.
#[derive(Debug, Default)]
pub(super) struct ExpiryQueue {
    /// `(since + resume_timeout, since, tifid)` of every detach observed,
    /// earliest first (`since` identifies the detach the entry is for, and
    /// orders deadlines that saturated).
    deadlines: BinaryHeap<Reverse<(Timestamp, Timestamp, Tifid)>>,
    /// Flows observed finished, in order of observation.
    finished: VecDeque<Tifid>,
    /// Flows observed detached and not observed since to leave that state.
    detached: usize,
}

impl ExpiryQueue {
    /// Shrinks the queues to what they hold.
    pub(super) fn shrink_to_fit(&mut self) {
        self.deadlines.shrink_to_fit();
        self.finished.shrink_to_fit();
    }

    /// A flow's lifecycle went from `old` to `new` (`old` is `None` for a
    /// flow new to the table; `new` is `None` for a flow removed).
    pub(super) fn observe(
        &mut self,
        tifid: Tifid,
        old: Option<Lifecycle>,
        new: Option<Lifecycle>,
        timeout: Duration,
        lookup: impl Fn(Tifid) -> Option<Lifecycle>,
    ) {
        if old == new {
            return;
        }
        if matches!(old, Some(Lifecycle::Detached { .. })) {
            self.detached -= 1;
        }
        match new {
            Some(Lifecycle::Detached { since }) => {
                self.detached += 1;
                self.deadlines
                    .push(Reverse((since + timeout, since, tifid)));
                self.compact(lookup);
            }
            Some(Lifecycle::Finished) => self.finished.push_back(tifid),
            Some(Lifecycle::Attached) | None => {}
        }
    }

    /// The next flow that must leave at `now` by `lookup`'s current
    /// lifecycles: a finished flow, else a detached flow whose
    /// `resume_timeout` passed (earliest deadline first). Stale entries met
    /// on the way are dropped.
    pub(super) fn pop_due(
        &mut self,
        now: Timestamp,
        timeout: Duration,
        lookup: impl Fn(Tifid) -> Option<Lifecycle>,
    ) -> Option<Tifid> {
        while let Some(tifid) = self.finished.pop_front() {
            if lookup(tifid) == Some(Lifecycle::Finished) {
                return Some(tifid);
            }
        }
        self.drop_stale(&lookup);
        let &Reverse((_, since, tifid)) = self.deadlines.peek()?;
        // The front is the earliest detach: if it has not timed out, none has.
        if now.saturating_since(since) < timeout {
            return None;
        }
        self.deadlines.pop();
        Some(tifid)
    }

    /// The earliest deadline of a flow still detached as observed.
    pub(super) fn next_deadline(
        &mut self,
        lookup: impl Fn(Tifid) -> Option<Lifecycle>,
    ) -> Option<Timestamp> {
        self.drop_stale(&lookup);
        self.deadlines.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Entries queued (live or stale), for tests of the bounds.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.deadlines.len() + self.finished.len()
    }

    fn drop_stale(&mut self, lookup: &impl Fn(Tifid) -> Option<Lifecycle>) {
        while let Some(Reverse((_, since, tifid))) = self.deadlines.peek()
            && !is_live(lookup, *tifid, *since)
        {
            self.deadlines.pop();
        }
    }

    /// Drops every stale deadline once they outnumber the live ones: the
    /// cost is paid by the detaches that made them.
    /// Duplicates go too (a flow detached again at the same instant).
    fn compact(&mut self, lookup: impl Fn(Tifid) -> Option<Lifecycle>) {
        if self.deadlines.len() > 2 * self.detached + SLACK {
            let mut live = std::mem::take(&mut self.deadlines).into_vec();
            live.retain(|Reverse((_, since, tifid))| is_live(&lookup, *tifid, *since));
            live.sort_unstable();
            live.dedup();
            self.deadlines = BinaryHeap::from(live);
        }
    }
}

/// The flow is still detached since `since`.
fn is_live(lookup: &impl Fn(Tifid) -> Option<Lifecycle>, tifid: Tifid, since: Timestamp) -> bool {
    lookup(tifid) == Some(Lifecycle::Detached { since })
}
