//! The per-source limit on refused resumes: a window per source, expired
//! oldest first.
//!
//! Owns [`Refusals`]: each tracked source's window (its start and the
//! refusals counted in it) and a queue of window starts, earliest first,
//! so forgetting the windows that ended costs what ended, not what is
//! tracked. A queued start is stale once its source's window restarted or
//! went; it is skipped when it reaches the front.

use core::cmp::Reverse;
use core::time::Duration;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;

use crate::time::Timestamp;

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Timestamp,
    count: u32,
}

/// Refusal windows by source.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    windows: HashMap<IpAddr, Window>,
    /// `(start, source)` of every window opened, earliest first.
    starts: BinaryHeap<Reverse<(Timestamp, IpAddr)>>,
}

impl Refusals {
    /// Counts a refusal for `source` at `now`; returns whether it stays
    /// within `per_window` in its window of `window`. A source not tracked
    /// yet is refused (`false`) when `max_sources` windows are open after
    /// the ended ones are forgotten.
    pub(super) fn note(
        &mut self,
        source: IpAddr,
        now: Timestamp,
        window: Duration,
        per_window: u32,
        max_sources: usize,
    ) -> bool {
        if !self.windows.contains_key(&source) && self.windows.len() >= max_sources {
            self.expire(now, window);
            if self.windows.len() >= max_sources {
                return false;
            }
        }
        let entry = self.windows.entry(source).or_insert_with(|| {
            self.starts.push(Reverse((now, source)));
            Window {
                start: now,
                count: 0,
            }
        });
        if now.saturating_since(entry.start) >= window {
            *entry = Window {
                start: now,
                count: 0,
            };
            self.starts.push(Reverse((now, source)));
        }
        entry.count = entry.count.saturating_add(1);
        entry.count <= per_window
    }

    /// Forgets the windows that ended at `now` (those started `window` or
    /// longer before it).
    pub(super) fn expire(&mut self, now: Timestamp, window: Duration) {
        while let Some(&Reverse((start, source))) = self.starts.peek() {
            // The earliest start: if its window is still open, all are.
            if now.saturating_since(start) < window {
                break;
            }
            self.starts.pop();
            if self.windows.get(&source).is_some_and(|w| w.start == start) {
                self.windows.remove(&source);
            }
        }
    }

    /// Sources tracked.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.windows.len()
    }
}
