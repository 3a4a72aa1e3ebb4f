//! The flow table: every TI-flow this host takes part in, by TIFID.
//!
//! Owns [`FlowTable`]: lookup by complete TIFID in O(1), random nonzero halves
//! that are unique among the local entries, the `max_flows` bound (a full
//! table refuses new flows, it never evicts an attached one), expiry of
//! detached and finished flows, and the per-source limit on refused resumes.
//! Randomness comes from the caller's CSPRNG; time comes from the caller.
//!
//! Expiry costs what expires and what changed, never a pass over the
//! flows. Flows change lifecycle through [`FlowTable::get_mut`] (and the
//! `&mut Flow` [`FlowTable::insert`] returns), which the table does not see
//! happen; so each entry keeps the lifecycle the table last observed and a
//! `touched` flag, and handing out `&mut Flow` marks the entry touched (a
//! push onto a list, once per entry between two looks). [`FlowTable::expire`]
//! and [`FlowTable::next_expiry`] first look at the touched entries only,
//! tell [`expiry`]'s queues of any change (a detach queues its deadline, a
//! finish queues the flow), and then pop what is due: finished flows, then
//! detached ones whose `resume_timeout` passed, earliest first. Queue entries
//! that no longer match the observed lifecycle (the flow was attached again,
//! detached anew, or removed) are skipped (lazy deletion). Refusal windows
//! expire the same way, from a queue of their starts ([`refusals`]).

mod expiry;
mod refusals;

use core::time::Duration;
use std::collections::hash_map;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use expiry::ExpiryQueue;
use refusals::Refusals;

use rand::{CryptoRng, Rng};

use crate::flow::{Flow, Lifecycle, Role};
use crate::option::{Half, Tifid};
use crate::seq::Seq48;
use crate::time::Timestamp;

/// Tunables of a [`FlowTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableConfig {
    /// Most flows held at once.
    pub max_flows: usize,
    /// How long a detached flow waits for a resume before it fails.
    pub resume_timeout: Duration,
    /// Most bytes a peer may need to resend on a resume (its send buffer bound).
    pub max_resume_gap: u64,
    /// Accept a resume from another peer address.
    pub allow_migration: bool,
    /// Refused resumes answered with a refusal per source and window; beyond
    /// that, resume SYNs from the source are dropped silently.
    pub refusals_per_window: u32,
    /// The window of `refusals_per_window`.
    pub refusal_window: Duration,
    /// Most sources tracked by the refusal limiter.
    pub max_tracked_sources: usize,
}

impl Default for TableConfig {
    fn default() -> TableConfig {
        TableConfig {
            max_flows: 65_536,
            resume_timeout: Duration::from_secs(60),
            max_resume_gap: 64 << 20,
            allow_migration: true,
            refusals_per_window: 16,
            refusal_window: Duration::from_secs(10),
            max_tracked_sources: 4096,
        }
    }
}

/// The table is full: the new flow falls back to legacy TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// `max_flows` reached.
    #[error("flow table full ({0} flows)")]
    Full(usize),
    /// Another flow already has this TIFID.
    #[error("TIFID {0} already in use")]
    Duplicate(Tifid),
}

/// A flow and what the table last observed of it.
#[derive(Debug)]
struct Entry {
    flow: Flow,
    /// The lifecycle the expiry queues know.
    seen: Lifecycle,
    /// `&mut` access was handed out since `seen` was taken: the entry is
    /// in `touched`.
    touched: bool,
}

/// All flows of this host, keyed by complete TIFID.
#[derive(Debug)]
pub struct FlowTable {
    config: TableConfig,
    flows: HashMap<Tifid, Entry>,
    local_halves: HashSet<Half>,
    /// Entries whose flow may have changed since `seen` (each once, while
    /// its `touched` flag is set; removed flows may linger until looked at).
    touched: Vec<Tifid>,
    expiry: ExpiryQueue,
    refusals: Refusals,
    /// Entries looked at by expiry (tests check it does not grow with the
    /// untouched flows).
    #[cfg(test)]
    visits: usize,
}

/// Removed flows `touched` may name beyond twice the flows held.
const TOUCHED_SLACK: usize = 64;

/// Attempts at drawing a unique random half before giving up.
const HALF_ATTEMPTS: usize = 64;

impl FlowTable {
    /// Gives back memory held for flows that have gone: every internal
    /// table shrinks to what it holds (cost proportional to what is left).
    pub fn shrink_to_fit(&mut self) {
        self.flows.shrink_to_fit();
        self.local_halves.shrink_to_fit();
        self.touched.shrink_to_fit();
        self.expiry.shrink_to_fit();
    }

    /// An empty table.
    pub fn new(config: TableConfig) -> FlowTable {
        FlowTable::with_capacity(config, 0)
    }

    /// An empty table with room reserved for `capacity` flows.
    pub fn with_capacity(config: TableConfig, capacity: usize) -> FlowTable {
        FlowTable {
            config,
            flows: HashMap::with_capacity(capacity),
            local_halves: HashSet::with_capacity(capacity),
            touched: Vec::new(),
            expiry: ExpiryQueue::default(),
            refusals: Refusals::default(),
            #[cfg(test)]
            visits: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    /// Number of flows held.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// No flows held.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// `max_flows` reached.
    pub fn is_full(&self) -> bool {
        self.flows.len() >= self.config.max_flows
    }

    /// The flow with this TIFID.
    pub fn get(&self, tifid: Tifid) -> Option<&Flow> {
        self.flows.get(&tifid).map(|e| &e.flow)
    }

    /// The flow with this TIFID, mutably. Its lifecycle may change through
    /// it: the table looks at it again at the next [`FlowTable::expire`]
    /// or [`FlowTable::next_expiry`].
    pub fn get_mut(&mut self, tifid: Tifid) -> Option<&mut Flow> {
        let entry = self.flows.get_mut(&tifid)?;
        touch(&mut self.touched, tifid, entry);
        Some(&mut entry.flow)
    }

    /// Iterates over all flows.
    pub fn iter(&self) -> impl Iterator<Item = &Flow> {
        self.flows.values().map(|e| &e.flow)
    }

    /// A random nonzero half that no local flow uses as the half we chose;
    /// `None` when the table is full or no unique half was drawn (the
    /// connection then goes legacy).
    pub fn new_initiator_half<R: Rng + CryptoRng>(&self, rng: &mut R) -> Option<Half> {
        if self.is_full() {
            return None;
        }
        (0..HALF_ATTEMPTS)
            .map(|_| Half::new(rng.random_range(1..=Half::MAX)))
            .find(|half| !self.local_halves.contains(half))
    }

    /// A random nonzero half, unique among the halves we chose, that
    /// completes `initiator` into a TIFID no local flow has; `None` when the
    /// table is full.
    pub fn new_responder_half<R: Rng + CryptoRng>(
        &self,
        initiator: Half,
        rng: &mut R,
    ) -> Option<Half> {
        if self.is_full() {
            return None;
        }
        (0..HALF_ATTEMPTS)
            .map(|_| Half::new(rng.random_range(1..=Half::MAX)))
            .find(|half| {
                !self.local_halves.contains(half)
                    && !self
                        .flows
                        .contains_key(&Tifid::from_halves(initiator, *half))
            })
    }

    /// A random initial TI sequence number.
    pub fn new_isn<R: Rng + CryptoRng>(rng: &mut R) -> Seq48 {
        Seq48::new(rng.random())
    }

    /// Adds a flow. Never evicts: a full table refuses.
    pub fn insert(&mut self, flow: Flow) -> Result<&mut Flow, InsertError> {
        if self.is_full() {
            return Err(InsertError::Full(self.flows.len()));
        }
        let tifid = flow.tifid();
        match self.flows.entry(tifid) {
            hash_map::Entry::Occupied(_) => Err(InsertError::Duplicate(tifid)),
            hash_map::Entry::Vacant(slot) => {
                self.local_halves.insert(local_half(&flow));
                // Observed as attached: the look at the touched entries
                // queues it if it came (or becomes) detached or finished.
                let entry = slot.insert(Entry {
                    flow,
                    seen: Lifecycle::Attached,
                    touched: false,
                });
                touch(&mut self.touched, tifid, entry);
                Ok(&mut entry.flow)
            }
        }
    }

    /// Removes a flow.
    pub fn remove(&mut self, tifid: Tifid) -> Option<Flow> {
        let entry = self.flows.remove(&tifid)?;
        self.local_halves.remove(&local_half(&entry.flow));
        let flows = &self.flows;
        self.expiry.observe(
            tifid,
            Some(entry.seen),
            None,
            self.config.resume_timeout,
            |t| flows.get(&t).map(|e| e.seen),
        );
        // Removed flows linger in `touched` until the next look: bound them
        // when a caller removes without ever expiring.
        if self.touched.len() > 2 * self.flows.len() + TOUCHED_SLACK {
            self.observe_touched();
        }
        Some(entry.flow)
    }

    /// Removes detached flows whose `resume_timeout` passed, and finished
    /// flows; returns their TIFIDs (finished flows first, then the timed
    /// out ones, earliest deadline first). Costs O(log n) per flow
    /// removed and per flow handed out mutably since the last look.
    pub fn expire(&mut self, now: Timestamp) -> Vec<Tifid> {
        self.observe_touched();
        let timeout = self.config.resume_timeout;
        let mut gone = Vec::new();
        loop {
            let flows = &self.flows;
            let Some(tifid) = self
                .expiry
                .pop_due(now, timeout, |t| flows.get(&t).map(|e| e.seen))
            else {
                break;
            };
            self.remove(tifid);
            gone.push(tifid);
        }
        self.refusals.expire(now, self.config.refusal_window);
        gone
    }

    /// When the next detached flow expires. Takes `&mut self` to bring the
    /// expiry queues up to date with the flows handed out mutably (see the
    /// module doc); O(log n) amortized.
    pub fn next_expiry(&mut self) -> Option<Timestamp> {
        self.observe_touched();
        let flows = &self.flows;
        self.expiry.next_deadline(|t| flows.get(&t).map(|e| e.seen))
    }

    /// Tells the expiry queues how the touched entries' lifecycles changed.
    fn observe_touched(&mut self) {
        let timeout = self.config.resume_timeout;
        for tifid in std::mem::take(&mut self.touched) {
            #[cfg(test)]
            {
                self.visits += 1;
            }
            let Some(entry) = self.flows.get_mut(&tifid) else {
                continue;
            };
            entry.touched = false;
            let (old, new) = (entry.seen, entry.flow.lifecycle());
            if old == new {
                continue;
            }
            entry.seen = new;
            let flows = &self.flows;
            self.expiry
                .observe(tifid, Some(old), Some(new), timeout, |t| {
                    flows.get(&t).map(|e| e.seen)
                });
        }
    }

    /// Counts a refused resume from `source`. Returns `true` when the refusal
    /// may be answered (a refusal RST), `false` when the source is over its
    /// limit and the SYN should be dropped silently.
    pub fn note_refusal(&mut self, source: IpAddr, now: Timestamp) -> bool {
        self.refusals.note(
            source,
            now,
            self.config.refusal_window,
            self.config.refusals_per_window,
            self.config.max_tracked_sources,
        )
    }
}

/// Marks `entry` touched: queued for the next look unless it already is.
fn touch(touched: &mut Vec<Tifid>, tifid: Tifid, entry: &mut Entry) {
    if !entry.touched {
        entry.touched = true;
        touched.push(tifid);
    }
}

/// The half of a flow's TIFID that this host chose.
fn local_half(flow: &Flow) -> Half {
    match flow.role() {
        Role::Initiator => flow.tifid().initiator_half(),
        Role::Responder => flow.tifid().responder_half(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    fn flow(n: u64) -> Flow {
        Flow::new(
            Tifid::new(n),
            Role::Responder,
            Seq48::ZERO,
            Seq48::ZERO,
            PEER,
        )
    }

    fn ms(n: u64) -> Timestamp {
        Timestamp::from_millis(n)
    }

    #[test]
    fn expire_does_not_visit_untouched_flows() {
        let mut table = FlowTable::new(TableConfig {
            max_flows: 200_000,
            ..TableConfig::default()
        });
        for n in 1..=100_000 {
            table.insert(flow(n << 24 | n)).expect("room");
        }
        // The first look sees each new flow once.
        assert!(table.expire(ms(0)).is_empty());
        assert_eq!(table.visits, 100_000);
        table.visits = 0;
        for t in 1..100 {
            assert!(table.expire(ms(t * 1000)).is_empty());
            assert_eq!(table.next_expiry(), None);
        }
        assert_eq!(table.visits, 0, "attached flows were visited");
        let one = Tifid::new(7 << 24 | 7);
        table.get_mut(one).expect("flow").detach(ms(100_000));
        table
            .get_mut(one)
            .expect("flow")
            .on_write(1)
            .expect("write");
        assert_eq!(table.next_expiry(), Some(ms(160_000)));
        assert!(table.expire(ms(159_999)).is_empty());
        assert_eq!(table.expire(ms(160_000)), vec![one]);
        assert_eq!(table.visits, 1, "only the touched flow was visited");
        assert!(table.expiry.queued() == 0);
    }

    #[test]
    fn stale_deadlines_stay_bounded() {
        let mut table = FlowTable::new(TableConfig::default());
        let tifid = Tifid::new(1 << 24 | 1);
        table.insert(flow(1 << 24 | 1)).expect("room");
        for t in 0..10_000 {
            let f = table.get_mut(tifid).expect("flow");
            f.detach(ms(t));
            assert_eq!(table.next_expiry(), Some(ms(t + 60_000)));
            table.get_mut(tifid).expect("flow").attach();
            assert_eq!(table.next_expiry(), None);
            let f = table.get_mut(tifid).expect("flow");
            f.detach(ms(t));
            f.attach();
            f.detach(ms(t));
            assert!(table.expire(ms(t)).is_empty());
            table.get_mut(tifid).expect("flow").attach();
            assert!(table.expiry.queued() <= 2 + 64 + 1);
        }
        assert!(table.touched.len() <= 1);
    }

    #[test]
    fn lingering_removed_entries_stay_bounded() {
        let mut table = FlowTable::new(TableConfig::default());
        for n in 1..10_000u64 {
            table.insert(flow(n << 24 | n)).expect("room");
            table.remove(Tifid::new(n << 24 | n));
            assert!(table.touched.len() <= TOUCHED_SLACK + 1);
        }
    }

    #[test]
    fn refusal_windows_expire_oldest_first() {
        let mut table = FlowTable::new(TableConfig {
            refusal_window: Duration::from_secs(10),
            ..TableConfig::default()
        });
        let a = IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1));
        let b = IpAddr::V4(Ipv4Addr::new(2, 2, 2, 2));
        table.note_refusal(a, ms(0));
        table.note_refusal(b, ms(5_000));
        // a's window restarts: its first start is stale.
        table.note_refusal(a, ms(10_000));
        table.expire(ms(14_999));
        assert_eq!(table.refusals.len(), 2);
        table.expire(ms(15_000));
        assert_eq!(table.refusals.len(), 1);
        table.expire(ms(20_000));
        assert_eq!(table.refusals.len(), 0);
    }
}
