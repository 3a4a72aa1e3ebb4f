//! The flow table rules of DESIGN §3 and §5: random nonzero halves unique
//! among the local entries, the `max_flows` bound without eviction, expiry of
//! detached and finished flows, and the refusal limiter's bookkeeping.

use core::time::Duration;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tifid::flow::{Flow, Lifecycle, Role};
use tifid::option::{Half, Tifid};
use tifid::seq::Seq48;
use tifid::table::{FlowTable, InsertError, TableConfig};
use tifid::time::Timestamp;

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn config(max_flows: usize) -> TableConfig {
    TableConfig {
        max_flows,
        resume_timeout: Duration::from_secs(60),
        ..TableConfig::default()
    }
}

fn flow(tifid: Tifid, role: Role) -> Flow {
    Flow::new(tifid, role, Seq48::new(1), Seq48::new(2), PEER)
}

/// Adds a flow we initiated, with a fresh local half and `peer_half`.
fn add_initiated(table: &mut FlowTable, rng: &mut StdRng, peer_half: Half) -> Tifid {
    let half = table
        .new_initiator_half(rng)
        .expect("room and a unique half");
    let tifid = Tifid::from_halves(half, peer_half);
    table.insert(flow(tifid, Role::Initiator)).expect("insert");
    tifid
}

/// Adds a flow we answered, for `peer_half`, with a fresh local half.
fn add_answered(table: &mut FlowTable, rng: &mut StdRng, peer_half: Half) -> Tifid {
    let half = table
        .new_responder_half(peer_half, rng)
        .expect("room and a unique half");
    let tifid = Tifid::from_halves(peer_half, half);
    table.insert(flow(tifid, Role::Responder)).expect("insert");
    tifid
}

fn local_half(tifid: Tifid, role: Role) -> Half {
    match role {
        Role::Initiator => tifid.initiator_half(),
        Role::Responder => tifid.responder_half(),
    }
}

#[test]
fn local_halves_are_nonzero_and_unique_among_many_flows() {
    // 2^24 possible halves: 20 000 independent draws would collide about a
    // dozen times (birthday bound), so this fails without the uniqueness rule.
    let mut rng = rng(1);
    let mut table = FlowTable::new(config(100_000));
    let mut seen = HashSet::new();
    for i in 0..20_000u32 {
        // Peers choose halves too; all peers use the same one here, the
        // worst case for collisions on the TIFID.
        let peer = Half::new(0x00ab_cdef);
        let (tifid, role) = if i % 2 == 0 {
            (add_initiated(&mut table, &mut rng, peer), Role::Initiator)
        } else {
            (add_answered(&mut table, &mut rng, peer), Role::Responder)
        };
        let half = local_half(tifid, role);
        assert!(!half.is_zero(), "flow {i}: zero half");
        assert!(half.value() <= Half::MAX);
        assert!(seen.insert(half), "flow {i}: half {half:?} reused");
    }
    assert_eq!(table.len(), 20_000);
}

#[test]
fn initiator_half_skips_a_half_in_use() {
    // Learn the half this seed draws first, occupy it, draw again from the
    // same seed: the answer must differ.
    let first = FlowTable::new(config(8))
        .new_initiator_half(&mut rng(2))
        .expect("empty table");
    let mut table = FlowTable::new(config(8));
    table
        .insert(flow(
            Tifid::from_halves(first, Half::new(5)),
            Role::Initiator,
        ))
        .expect("insert");
    let second = table.new_initiator_half(&mut rng(2)).expect("room");
    assert_ne!(second, first);
    assert!(!second.is_zero());
}

#[test]
fn initiator_half_skips_a_half_we_chose_as_responder() {
    let first = FlowTable::new(config(8))
        .new_initiator_half(&mut rng(3))
        .expect("empty table");
    let mut table = FlowTable::new(config(8));
    table
        .insert(flow(
            Tifid::from_halves(Half::new(0x77), first),
            Role::Responder,
        ))
        .expect("insert");
    assert_ne!(table.new_initiator_half(&mut rng(3)), Some(first));
}

#[test]
fn responder_half_never_yields_an_existing_tifid() {
    // A flow we initiated, i||r: r is the peer's half, so it is not among our
    // local halves. A SYN from another peer that happens to choose i must
    // not be completed into i||r.
    let initiator = Half::new(0x0a4530);
    let r = FlowTable::new(config(8))
        .new_responder_half(initiator, &mut rng(4))
        .expect("empty table");
    let mut table = FlowTable::new(config(8));
    let existing = Tifid::from_halves(initiator, r);
    table
        .insert(flow(existing, Role::Initiator))
        .expect("insert");
    let half = table
        .new_responder_half(initiator, &mut rng(4))
        .expect("room");
    assert_ne!(half, r);
    assert!(!half.is_zero());
    assert!(table.get(Tifid::from_halves(initiator, half)).is_none());
    // For another initiator half, r is free again (it is not a local half).
    assert_eq!(
        table.new_responder_half(Half::new(0x0a4531), &mut rng(4)),
        Some(r)
    );
}

#[test]
fn responder_half_skips_local_halves() {
    let r = FlowTable::new(config(8))
        .new_responder_half(Half::new(1), &mut rng(5))
        .expect("empty table");
    let mut table = FlowTable::new(config(8));
    // We used r as our initiator half with some other peer.
    table
        .insert(flow(Tifid::from_halves(r, Half::new(9)), Role::Initiator))
        .expect("insert");
    assert_ne!(table.new_responder_half(Half::new(1), &mut rng(5)), Some(r));
}

#[test]
fn full_table_refuses_new_flows_and_evicts_nothing() {
    let mut rng = rng(6);
    let mut table = FlowTable::new(config(3));
    let attached = add_initiated(&mut table, &mut rng, Half::new(1));
    let detached = add_answered(&mut table, &mut rng, Half::new(2));
    table
        .get_mut(detached)
        .expect("present")
        .detach(Timestamp::ZERO);
    let third = add_answered(&mut table, &mut rng, Half::new(3));
    assert!(table.is_full());
    assert_eq!(table.new_initiator_half(&mut rng), None);
    assert_eq!(table.new_responder_half(Half::new(4), &mut rng), None);
    let extra = Tifid::from_halves(Half::new(4), Half::new(4));
    assert_eq!(
        table.insert(flow(extra, Role::Responder)).err(),
        Some(InsertError::Full(3))
    );
    assert_eq!(table.len(), 3);
    for tifid in [attached, detached, third] {
        assert!(table.get(tifid).is_some(), "{tifid} evicted");
    }
    assert!(table.get(extra).is_none());
    assert_eq!(
        table.get(attached).map(Flow::lifecycle),
        Some(Lifecycle::Attached)
    );
    // Expiring the detached flow makes room again.
    assert_eq!(table.expire(Timestamp::from_millis(60_000)), vec![detached]);
    assert!(table.insert(flow(extra, Role::Responder)).is_ok());
}

#[test]
fn duplicate_tifid_is_refused_and_keeps_the_first_flow() {
    let mut table = FlowTable::new(config(8));
    let tifid = Tifid::new(0x0102_0304_0506);
    table.insert(flow(tifid, Role::Responder)).expect("insert");
    let other = Flow::new(tifid, Role::Responder, Seq48::new(77), Seq48::new(88), PEER);
    assert_eq!(
        table.insert(other).err(),
        Some(InsertError::Duplicate(tifid))
    );
    assert_eq!(table.get(tifid), Some(&flow(tifid, Role::Responder)));
    assert_eq!(table.len(), 1);
}

#[test]
fn expire_removes_timed_out_detached_and_finished_flows_only() {
    let mut rng = rng(7);
    let mut table = FlowTable::new(config(16));
    let attached = add_answered(&mut table, &mut rng, Half::new(1));
    let early = add_answered(&mut table, &mut rng, Half::new(2));
    let late = add_answered(&mut table, &mut rng, Half::new(3));
    let finished = add_initiated(&mut table, &mut rng, Half::new(4));
    table
        .get_mut(early)
        .expect("early")
        .detach(Timestamp::from_millis(1_000));
    table
        .get_mut(late)
        .expect("late")
        .detach(Timestamp::from_millis(30_000));
    table.get_mut(finished).expect("finished").finish();

    // Finished flows go at once; detached ones wait for resume_timeout.
    assert_eq!(table.expire(Timestamp::from_millis(1_000)), vec![finished]);
    assert!(table.expire(Timestamp::from_millis(60_999)).is_empty());
    assert_eq!(table.len(), 3);
    assert_eq!(table.expire(Timestamp::from_millis(61_000)), vec![early]);
    assert!(table.expire(Timestamp::from_millis(89_999)).is_empty());
    assert_eq!(table.expire(Timestamp::from_millis(90_000)), vec![late]);
    // Attached flows never expire.
    assert!(
        table
            .expire(Timestamp::from_millis(u64::MAX / 1000))
            .is_empty()
    );
    assert_eq!(table.len(), 1);
    assert!(table.get(attached).is_some());
}

#[test]
fn reattached_flow_does_not_expire() {
    let mut rng = rng(8);
    let mut table = FlowTable::new(config(4));
    let tifid = add_answered(&mut table, &mut rng, Half::new(1));
    let f = table.get_mut(tifid).expect("flow");
    f.detach(Timestamp::ZERO);
    f.attach();
    assert!(table.expire(Timestamp::from_millis(120_000)).is_empty());
    assert_eq!(table.next_expiry(), None);
}

#[test]
fn next_expiry_is_the_earliest_detached_deadline() {
    let mut rng = rng(9);
    let mut table = FlowTable::new(config(16));
    assert_eq!(table.next_expiry(), None);
    let a = add_answered(&mut table, &mut rng, Half::new(1));
    let b = add_answered(&mut table, &mut rng, Half::new(2));
    let c = add_answered(&mut table, &mut rng, Half::new(3));
    assert_eq!(table.next_expiry(), None, "attached flows have no deadline");
    table
        .get_mut(a)
        .expect("a")
        .detach(Timestamp::from_millis(5_000));
    table
        .get_mut(b)
        .expect("b")
        .detach(Timestamp::from_millis(2_000));
    table.get_mut(c).expect("c").finish();
    assert_eq!(table.next_expiry(), Some(Timestamp::from_millis(62_000)));
    table.remove(b);
    assert_eq!(table.next_expiry(), Some(Timestamp::from_millis(65_000)));
    table.expire(Timestamp::from_millis(65_000));
    assert_eq!(table.next_expiry(), None);
    assert!(table.is_empty());
}

#[test]
fn remove_frees_the_local_half() {
    let first = FlowTable::new(config(8))
        .new_initiator_half(&mut rng(10))
        .expect("empty");
    let mut table = FlowTable::new(config(8));
    let tifid = Tifid::from_halves(first, Half::new(3));
    table.insert(flow(tifid, Role::Initiator)).expect("insert");
    assert_ne!(table.new_initiator_half(&mut rng(10)), Some(first));
    let removed = table.remove(tifid).expect("present");
    assert_eq!(removed.tifid(), tifid);
    assert!(table.get(tifid).is_none());
    assert_eq!(table.remove(tifid), None, "second remove finds nothing");
    assert_eq!(table.new_initiator_half(&mut rng(10)), Some(first));
}

#[test]
fn expire_frees_the_local_half() {
    let first = FlowTable::new(config(8))
        .new_responder_half(Half::new(1), &mut rng(11))
        .expect("empty");
    let mut table = FlowTable::new(config(8));
    let tifid = Tifid::from_halves(Half::new(1), first);
    table.insert(flow(tifid, Role::Responder)).expect("insert");
    table.get_mut(tifid).expect("flow").finish();
    assert_eq!(table.expire(Timestamp::ZERO), vec![tifid]);
    assert_eq!(
        table.new_responder_half(Half::new(2), &mut rng(11)),
        Some(first)
    );
}

#[test]
fn initial_sequence_numbers_are_random_48_bit() {
    let mut rng = rng(12);
    let isns: HashSet<u64> = (0..1000)
        .map(|_| FlowTable::new_isn(&mut rng).value())
        .collect();
    assert_eq!(isns.len(), 1000);
    assert!(isns.iter().all(|&v| v < 1 << 48));
    assert!(isns.iter().any(|&v| v >= 1 << 47), "uses the top bit");
}

#[test]
fn refusal_limit_counts_per_source_and_window() {
    let mut table = FlowTable::new(TableConfig {
        refusals_per_window: 2,
        refusal_window: Duration::from_secs(10),
        ..config(8)
    });
    let a = IpAddr::V4(Ipv4Addr::new(10, 9, 9, 1));
    let b = IpAddr::V4(Ipv4Addr::new(10, 9, 9, 2));
    let t = Timestamp::from_millis(500);
    assert!(table.note_refusal(a, t));
    assert!(table.note_refusal(a, t));
    assert!(!table.note_refusal(a, t));
    assert!(table.note_refusal(b, t), "other sources are independent");
    assert!(!table.note_refusal(a, t + Duration::from_millis(9_999)));
    assert!(
        table.note_refusal(a, t + Duration::from_secs(10)),
        "new window"
    );
}

#[test]
fn refusal_limiter_tracks_a_bounded_number_of_sources() {
    let mut table = FlowTable::new(TableConfig {
        refusals_per_window: 5,
        refusal_window: Duration::from_secs(10),
        max_tracked_sources: 2,
        ..config(8)
    });
    let source = |i: u8| IpAddr::V4(Ipv4Addr::new(10, 8, 0, i));
    let t0 = Timestamp::ZERO;
    assert!(table.note_refusal(source(1), t0));
    assert!(table.note_refusal(source(2), t0));
    // A third source cannot be tracked: it gets no answer.
    assert!(!table.note_refusal(source(3), t0 + Duration::from_secs(1)));
    // Tracked sources keep their own budget.
    assert!(table.note_refusal(source(1), t0 + Duration::from_secs(1)));
    // Once the old windows have passed, their slots are reclaimed.
    assert!(table.note_refusal(source(3), t0 + Duration::from_secs(10)));
}
