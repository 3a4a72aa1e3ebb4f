//! The connections `tiflow up` carries, for `tiflow status`: what each is
//! for, its stream, its age, the counters of the ones that ended, and the
//! streams whose relay ended (the stack may hold them for a while yet:
//! TIME-WAIT, the last FIN and ACK; `tiflow status` lists them no more).
//!
//! Every lookup is by key (connection number or stream id), so a status
//! with ten thousand flows costs one pass over them, not one per flow.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ti_stack::{StreamId, StreamInfo, StreamStats};

/// What a carried connection is, for `tiflow status`.
struct ConnRecord {
    via: String,
    stream: Option<StreamId>,
    started: Instant,
}

/// The carried connections, by number, and an index by stream.
#[derive(Default)]
struct Registry {
    next: u64,
    conns: HashMap<u64, ConnRecord>,
    by_stream: HashMap<StreamId, u64>,
    /// Resume attempts of the streams whose relay ended.
    ended_attempts: u64,
    /// Failures detected on the streams whose relay ended.
    ended_failures: u64,
    /// Streams whose relay ended (or never started) and that the stack may
    /// still hold; forgotten once it no longer does.
    ended: HashSet<StreamId>,
}

impl Registry {
    /// Sums a counter over the streams in `infos` that a relay still
    /// carries.
    fn live_sum(&self, infos: &[StreamInfo], counter: impl Fn(&StreamStats) -> u64) -> u64 {
        infos
            .iter()
            .filter(|i| self.by_stream.contains_key(&i.id))
            .map(|i| counter(&i.stats))
            .sum()
    }

    fn remove(&mut self, n: u64) {
        if let Some(stream) = self.conns.remove(&n).and_then(|r| r.stream) {
            self.by_stream.remove(&stream);
            self.ended.insert(stream);
        }
    }
}

/// The carried connections, shared by the acceptors, the relays and the
/// control handler.
#[derive(Clone, Default)]
pub(super) struct Conns(Arc<Mutex<Registry>>);

impl Conns {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection; returns its number.
    pub(super) fn add(&self, via: String) -> u64 {
        let mut reg = self.lock();
        reg.next += 1;
        let n = reg.next;
        reg.conns.insert(
            n,
            ConnRecord {
                via,
                stream: None,
                started: Instant::now(),
            },
        );
        n
    }

    /// Records the stream that carries connection `n`.
    pub(super) fn set_stream(&self, n: u64, stream: Option<StreamId>) {
        let mut reg = self.lock();
        let Some(rec) = reg.conns.get_mut(&n) else {
            return;
        };
        let old = std::mem::replace(&mut rec.stream, stream);
        if let Some(old) = old {
            reg.by_stream.remove(&old);
        }
        if let Some(new) = stream {
            reg.by_stream.insert(new, n);
        }
    }

    /// Forgets a connection that never got a relay.
    pub(super) fn remove(&self, n: u64) {
        self.lock().remove(n);
    }

    /// Removes a connection whose relay ended, keeping its stream's resume
    /// attempts for the total (under one lock: counted once, never lost).
    pub(super) fn finish(&self, n: u64, last: Option<StreamInfo>) {
        let mut reg = self.lock();
        reg.remove(n);
        reg.ended_attempts += last.map_or(0, |i| i.stats.resume_attempts);
        reg.ended_failures += last.map_or(0, |i| i.stats.failures);
    }

    /// Resume attempts since start: the ended relays' and those of the
    /// streams in `infos` that a relay still carries.
    pub(super) fn resume_attempts(&self, infos: &[StreamInfo]) -> u64 {
        let reg = self.lock();
        reg.ended_attempts + reg.live_sum(infos, |s| s.resume_attempts)
    }

    /// Failures detected since start, as [`Self::resume_attempts`] counts.
    pub(super) fn failures(&self, infos: &[StreamInfo]) -> u64 {
        let reg = self.lock();
        reg.ended_failures + reg.live_sum(infos, |s| s.failures)
    }

    /// Shrinks the tables to what they hold.
    pub(super) fn shrink_to_fit(&self) {
        let mut reg = self.lock();
        reg.conns.shrink_to_fit();
        reg.by_stream.shrink_to_fit();
        reg.ended.shrink_to_fit();
    }

    /// The streams whose relay ended that may still be in the stack.
    pub(super) fn ended_streams(&self) -> Vec<StreamId> {
        self.lock().ended.iter().copied().collect()
    }

    /// Forgets ended streams the stack no longer holds (stream ids are
    /// never reused, so a forgotten one never comes back).
    pub(super) fn forget_ended(&self, gone: &[StreamId]) {
        let mut reg = self.lock();
        for id in gone {
            reg.ended.remove(id);
        }
    }

    /// No connection is carried.
    pub(super) fn is_empty(&self) -> bool {
        self.lock().conns.is_empty()
    }

    /// The streams of `infos` (the stack's, sorted by id) that `tiflow
    /// status` lists, each with what it is for and its age in seconds
    /// (`None` for a stream no relay carries yet: a connection in its
    /// handshake or waiting to be accepted). A stream whose relay ended is
    /// not listed, although the stack may hold it for a while yet; ended
    /// streams the stack no longer holds are forgotten. Under one lock.
    pub(super) fn listed<'a>(
        &self,
        infos: &'a [StreamInfo],
    ) -> Vec<(&'a StreamInfo, Option<(String, f64)>)> {
        let mut reg = self.lock();
        if !reg.ended.is_empty() {
            reg.ended
                .retain(|id| infos.binary_search_by_key(id, |i| i.id).is_ok());
        }
        infos
            .iter()
            .filter(|i| !reg.ended.contains(&i.id))
            .map(|info| {
                let via = reg
                    .by_stream
                    .get(&info.id)
                    .and_then(|n| reg.conns.get(n))
                    .map(|rec| (rec.via.clone(), rec.started.elapsed().as_secs_f64()));
                (info, via)
            })
            .collect()
    }
}
