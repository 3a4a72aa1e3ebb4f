//! The flow table: every TI-flow this host takes part in, by TIFID.
//!
//! Owns [`FlowTable`]: lookup by complete TIFID in O(1), random nonzero halves
//! that are unique among the local entries, the `max_flows` bound (a full
//! table refuses new flows, it never evicts an attached one), expiry of
//! detached flows, and the per-source limit on refused resumes. Randomness
//! comes from the caller's CSPRNG; time comes from the caller.

use core::time::Duration;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

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

#[derive(Debug, Clone, Copy)]
struct RefusalWindow {
    start: Timestamp,
    count: u32,
}

/// All flows of this host, keyed by complete TIFID.
#[derive(Debug)]
pub struct FlowTable {
    config: TableConfig,
    flows: HashMap<Tifid, Flow>,
    local_halves: HashSet<Half>,
    refusals: HashMap<IpAddr, RefusalWindow>,
}

/// Attempts at drawing a unique random half before giving up.
const HALF_ATTEMPTS: usize = 64;

impl FlowTable {
    /// An empty table.
    pub fn new(config: TableConfig) -> FlowTable {
        FlowTable {
            config,
            flows: HashMap::new(),
            local_halves: HashSet::new(),
            refusals: HashMap::new(),
        }
    }

    /// An empty table with room reserved for `capacity` flows.
    pub fn with_capacity(config: TableConfig, capacity: usize) -> FlowTable {
        FlowTable {
            config,
            flows: HashMap::with_capacity(capacity),
            local_halves: HashSet::with_capacity(capacity),
            refusals: HashMap::new(),
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
        self.flows.get(&tifid)
    }

    /// The flow with this TIFID, mutably.
    pub fn get_mut(&mut self, tifid: Tifid) -> Option<&mut Flow> {
        self.flows.get_mut(&tifid)
    }

    /// Iterates over all flows.
    pub fn iter(&self) -> impl Iterator<Item = &Flow> {
        self.flows.values()
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
        match self.flows.entry(flow.tifid()) {
            Entry::Occupied(_) => Err(InsertError::Duplicate(flow.tifid())),
            Entry::Vacant(slot) => {
                self.local_halves.insert(local_half(&flow));
                Ok(slot.insert(flow))
            }
        }
    }

    /// Removes a flow.
    pub fn remove(&mut self, tifid: Tifid) -> Option<Flow> {
        let flow = self.flows.remove(&tifid)?;
        self.local_halves.remove(&local_half(&flow));
        Some(flow)
    }

    /// Removes detached flows whose `resume_timeout` passed, and finished
    /// flows; returns their TIFIDs.
    pub fn expire(&mut self, now: Timestamp) -> Vec<Tifid> {
        let timeout = self.config.resume_timeout;
        let gone: Vec<Tifid> = self
            .flows
            .values()
            .filter(|f| f.is_expired(now, timeout) || f.lifecycle() == Lifecycle::Finished)
            .map(Flow::tifid)
            .collect();
        for tifid in &gone {
            self.remove(*tifid);
        }
        let window = self.config.refusal_window;
        self.refusals
            .retain(|_, w| now.saturating_since(w.start) < window);
        gone
    }

    /// When the next detached flow expires.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.flows
            .values()
            .filter_map(|f| match f.lifecycle() {
                Lifecycle::Detached { since } => Some(since + self.config.resume_timeout),
                _ => None,
            })
            .min()
    }

    /// Counts a refused resume from `source`. Returns `true` when the refusal
    /// may be answered (a refusal RST), `false` when the source is over its
    /// limit and the SYN should be dropped silently.
    pub fn note_refusal(&mut self, source: IpAddr, now: Timestamp) -> bool {
        let window = self.config.refusal_window;
        if !self.refusals.contains_key(&source)
            && self.refusals.len() >= self.config.max_tracked_sources
        {
            self.refusals
                .retain(|_, w| now.saturating_since(w.start) < window);
            if self.refusals.len() >= self.config.max_tracked_sources {
                return false;
            }
        }
        let entry = self.refusals.entry(source).or_insert(RefusalWindow {
            start: now,
            count: 0,
        });
        if now.saturating_since(entry.start) >= window {
            *entry = RefusalWindow {
                start: now,
                count: 0,
            };
        }
        entry.count = entry.count.saturating_add(1);
        entry.count <= self.config.refusals_per_window
    }
}

/// The half of a flow's TIFID that this host chose.
fn local_half(flow: &Flow) -> Half {
    match flow.role() {
        Role::Initiator => flow.tifid().initiator_half(),
        Role::Responder => flow.tifid().responder_half(),
    }
}
