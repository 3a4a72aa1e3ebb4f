//! The flow table's expiry queues against the reference they replaced: a
//! scan of every flow. Random sequences of inserts, lifecycle changes
//! through `get_mut`, removals, expiries and `next_expiry` must give the
//! same expired set and the same next deadline at every step.

use core::time::Duration;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use tifid::flow::{Flow, Lifecycle, Role};
use tifid::option::{Half, Tifid};
use tifid::seq::Seq48;
use tifid::table::{FlowTable, TableConfig};
use tifid::time::Timestamp;

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
const TIMEOUT: Duration = Duration::from_millis(20);
const MAX_FLOWS: usize = 6;

/// A change made through one `get_mut`.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// Detach at this many ms (any time: callers' clocks are theirs).
    Detach(u64),
    Attach,
    Finish,
    Write,
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u32),
    Mutate(u32, Vec<Change>),
    Remove(u32),
    /// Advance the clock by this many ms and expire.
    Expire(u64),
    NextExpiry,
}

fn arb_change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => (0u64..120).prop_map(Change::Detach),
        3 => Just(Change::Attach),
        1 => Just(Change::Finish),
        1 => Just(Change::Write),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    let key = 0u32..8;
    prop_oneof![
        3 => key.clone().prop_map(Op::Insert),
        6 => (key.clone(), proptest::collection::vec(arb_change(), 1..4))
            .prop_map(|(k, c)| Op::Mutate(k, c)),
        1 => key.prop_map(Op::Remove),
        3 => (0u64..15).prop_map(Op::Expire),
        2 => Just(Op::NextExpiry),
    ]
}

fn tifid(key: u32) -> Tifid {
    Tifid::from_halves(Half::new(key + 1), Half::new(key + 1))
}

fn flow(key: u32) -> Flow {
    Flow::new(tifid(key), Role::Responder, Seq48::ZERO, Seq48::ZERO, PEER)
}

fn apply(flow: &mut Flow, change: Change) {
    match change {
        Change::Detach(at) => flow.detach(Timestamp::from_millis(at)),
        Change::Attach => flow.attach(),
        Change::Finish => flow.finish(),
        Change::Write => {
            let _ = flow.on_write(1);
        }
    }
}

/// The table before the queues: every flow, scanned on each call.
#[derive(Default)]
struct Reference {
    flows: HashMap<Tifid, Flow>,
}

impl Reference {
    fn expire(&mut self, now: Timestamp) -> Vec<Tifid> {
        let mut gone: Vec<Tifid> = self
            .flows
            .values()
            .filter(|f| f.is_expired(now, TIMEOUT) || f.lifecycle() == Lifecycle::Finished)
            .map(Flow::tifid)
            .collect();
        for t in &gone {
            self.flows.remove(t);
        }
        gone.sort();
        gone
    }

    fn next_expiry(&self) -> Option<Timestamp> {
        self.flows
            .values()
            .filter_map(|f| match f.lifecycle() {
                Lifecycle::Detached { since } => Some(since + TIMEOUT),
                _ => None,
            })
            .min()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn queues_match_the_scan(ops in proptest::collection::vec(arb_op(), 1..80)) {
        let mut table = FlowTable::new(TableConfig {
            max_flows: MAX_FLOWS,
            resume_timeout: TIMEOUT,
            ..TableConfig::default()
        });
        let mut reference = Reference::default();
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Insert(k) => {
                    let full = reference.flows.len() >= MAX_FLOWS;
                    let dup = reference.flows.contains_key(&tifid(k));
                    let inserted = table.insert(flow(k)).is_ok();
                    prop_assert_eq!(inserted, !full && !dup);
                    if inserted {
                        reference.flows.insert(tifid(k), flow(k));
                    }
                }
                Op::Mutate(k, changes) => {
                    let theirs = reference.flows.get_mut(&tifid(k));
                    let ours = table.get_mut(tifid(k));
                    prop_assert_eq!(theirs.is_some(), ours.is_some());
                    if let (Some(theirs), Some(ours)) = (theirs, ours) {
                        for change in changes {
                            apply(theirs, change);
                            apply(ours, change);
                        }
                    }
                }
                Op::Remove(k) => {
                    prop_assert_eq!(
                        table.remove(tifid(k)).is_some(),
                        reference.flows.remove(&tifid(k)).is_some()
                    );
                }
                Op::Expire(dt) => {
                    now += dt;
                    let at = Timestamp::from_millis(now);
                    let mut ours = table.expire(at);
                    ours.sort();
                    prop_assert_eq!(ours, reference.expire(at), "expired at {}", now);
                    prop_assert_eq!(table.next_expiry(), reference.next_expiry());
                }
                Op::NextExpiry => {
                    prop_assert_eq!(table.next_expiry(), reference.next_expiry());
                }
            }
            // Not `next_expiry` after every step: changes must also pile
            // up unobserved between two looks.
            prop_assert_eq!(table.len(), reference.flows.len());
        }
    }
}
