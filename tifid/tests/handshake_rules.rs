//! The handshake rules of DESIGN §4 and §5, one test (or one table row) per
//! rule: new flow, confirmation, every fallback cause, resume accepted and
//! every refused-resume check, the refusal limiter, the initiator's side of a
//! resume and its reading of RSTs.
//!
//! Options travel through the codec (`to_bytes` then `find_flow_option`) on
//! their way between the two ends, as they would through the boundary.

use core::time::Duration;
use std::net::{IpAddr, Ipv4Addr};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tifid::flow::{Flow, Lifecycle, ResumeMismatch, Role};
use tifid::handshake::{
    ConfirmOutcome, FallbackCause, Initiator, LostCause, ParsedOption, RefuseReason, Responder,
    ResponderPolicy, RstOutcome, SynAckOutcome, SynDecision,
};
use tifid::option::{DEFAULT_KIND, FlowOptionRepr, Half, OptionError, Tifid, find_flow_option};
use tifid::seq::Seq48;
use tifid::table::{FlowTable, TableConfig};
use tifid::time::Timestamp;

/// The initiator's address.
const A_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
/// The responder's address.
const B_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 2));
/// Where the initiator moved to.
const MOVED: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 7, 9));
/// A third party.
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(172, 16, 0, 66));

/// The flow of the resume tests (the paper's Trace 2).
const TIFID: Tifid = Tifid::new(0x0a45_30be_79bf);
const HALF_A: Half = Half::new(0x0a4530);
const K: u8 = DEFAULT_KIND;

const T_DETACH: Timestamp = Timestamp::from_millis(1_000);
const T_SYN: Timestamp = Timestamp::from_millis(1_200);

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn s(value: u64) -> Seq48 {
    Seq48::new(value)
}

fn repr(tifid: Tifid, tiseq: u64, tiack: u64) -> FlowOptionRepr {
    FlowOptionRepr {
        tifid,
        tiseq: s(tiseq),
        tiack: s(tiack),
    }
}

/// The option as the peer reads it off the wire.
fn wire(option: FlowOptionRepr) -> ParsedOption {
    find_flow_option(&option.to_bytes(K), K)
}

fn config() -> TableConfig {
    TableConfig {
        max_resume_gap: 1000,
        allow_migration: false,
        ..TableConfig::default()
    }
}

/// Malformed option lists, one per [`OptionError`] kind, with the error the
/// parser must report for each.
fn malformed_lists() -> Vec<(&'static str, Vec<u8>, OptionError)> {
    let valid = repr(TIFID, 0x1d, 0x1f).to_bytes(K);
    let mut bad_length = vec![K, 24];
    bad_length.extend_from_slice(&[0u8; 22]);
    let mut duplicate = Vec::from(valid);
    duplicate.extend_from_slice(&valid);
    let mut too_long = vec![1u8; 24];
    too_long.extend_from_slice(&valid);
    vec![
        (
            "truncated",
            vec![K, 10, 0, 0, 0, 0, 0, 0, 0, 0],
            OptionError::Truncated(10),
        ),
        ("bad length", bad_length, OptionError::BadLength(24)),
        (
            "invalid option length",
            vec![2, 4, 0x05, 0xb4, 8, 1, 0, 0],
            OptionError::InvalidOptionLength {
                kind: 8,
                offset: 4,
                len: 1,
            },
        ),
        (
            "runs past end",
            vec![2, 4, 0x05, 0xb4, K, 20, 0x0a, 0x45],
            OptionError::RunsPastEnd { kind: K, offset: 4 },
        ),
        ("duplicate", duplicate, OptionError::Duplicate),
        ("list too long", too_long, OptionError::ListTooLong(44)),
    ]
}

#[test]
fn malformed_lists_yield_each_option_error_kind() {
    for (name, list, error) in malformed_lists() {
        assert_eq!(find_flow_option(&list, K), Err(error), "{name}");
    }
}

// ---------------------------------------------------------------------------
// New flow.

/// Runs a new-flow handshake to the point where A has read the SYN-ACK.
fn new_flow_up_to_syn_ack(seed: u64) -> (Initiator, Responder, FlowOptionRepr) {
    let mut rng = rng(seed);
    let table_a = FlowTable::new(config());
    let mut table_b = FlowTable::new(config());
    let half = table_a.new_initiator_half(&mut rng).expect("empty table");
    let isn_a = FlowTable::new_isn(&mut rng);
    let mut a = Initiator::new_flow(half, isn_a);
    let decision = Responder::on_syn(
        &mut table_b,
        ResponderPolicy::default(),
        wire(a.syn_option()),
        A_ADDR,
        &mut rng,
        T_SYN,
    );
    let SynDecision::Accept(b) = decision else {
        panic!("new-flow SYN refused: {decision:?}");
    };
    let outcome = a.on_syn_ack(wire(b.syn_ack_option()), None, 0);
    assert!(
        matches!(outcome, SynAckOutcome::Established { .. }),
        "{outcome:?}"
    );
    let confirm = a.confirm_option().expect("confirming after SYN-ACK");
    (a, b, confirm)
}

#[test]
fn new_flow_handshake_end_to_end() {
    let mut rng = rng(7);
    let mut table_a = FlowTable::new(config());
    let mut table_b = FlowTable::new(config());

    // A: SYN {a||0, ISN_A, 0}.
    let half_a = table_a.new_initiator_half(&mut rng).expect("half");
    assert!(!half_a.is_zero());
    let isn_a = FlowTable::new_isn(&mut rng);
    let mut a = Initiator::new_flow(half_a, isn_a);
    assert!(!a.is_resume());
    let syn = a.syn_option();
    assert_eq!(
        syn,
        FlowOptionRepr {
            tifid: Tifid::from_halves(half_a, Half::ZERO),
            tiseq: isn_a,
            tiack: Seq48::ZERO,
        }
    );
    assert_eq!(
        a.confirm_option(),
        None,
        "nothing to confirm before SYN-ACK"
    );

    // B: SYN-ACK {a||b, ISN_B, ISN_A}.
    let decision = Responder::on_syn(
        &mut table_b,
        ResponderPolicy::default(),
        wire(syn),
        A_ADDR,
        &mut rng,
        T_SYN,
    );
    let SynDecision::Accept(b) = decision else {
        panic!("{decision:?}");
    };
    assert!(!b.is_resume());
    assert!(table_b.is_empty(), "the SYN alone creates no flow entry");
    let syn_ack = b.syn_ack_option();
    let tifid = syn_ack.tifid;
    assert_eq!(tifid.initiator_half(), half_a);
    assert!(!tifid.responder_half().is_zero());
    assert!(tifid.is_complete());
    assert_eq!(b.tifid(), tifid);
    assert_eq!(syn_ack.tiack, isn_a);
    let (isn_b, peer_isn) = b.isns();
    assert_eq!(syn_ack.tiseq, isn_b);
    assert_eq!(peer_isn, isn_a);

    // A: Established, confirming ACK {a||b, ISN_A, ISN_B}.
    assert_eq!(
        a.on_syn_ack(wire(syn_ack), None, 0),
        SynAckOutcome::Established {
            tifid,
            peer_isn: isn_b
        }
    );
    let confirm = a.confirm_option().expect("confirming");
    assert_eq!(
        confirm,
        FlowOptionRepr {
            tifid,
            tiseq: isn_a,
            tiack: isn_b,
        }
    );

    // B: confirmed.
    assert_eq!(b.on_handshake_ack(wire(confirm)), ConfirmOutcome::Confirmed);

    // Both ends hold mirrored flows; the first data byte of each is its ISN
    // (no +1: the SYN belongs to TCP).
    let flow_a = table_a
        .insert(Flow::new(tifid, Role::Initiator, isn_a, isn_b, B_ADDR))
        .expect("insert A")
        .positions();
    let flow_b = table_b
        .insert(Flow::new(tifid, Role::Responder, isn_b, isn_a, A_ADDR))
        .expect("insert B")
        .positions();
    assert_eq!(flow_a.snd_nxt, isn_a);
    assert_eq!(flow_a.snd_una, isn_a);
    assert_eq!(flow_b.rcv_nxt, isn_a);
    assert_eq!(flow_b.snd_nxt, isn_b);
    assert_eq!(flow_a.rcv_nxt, isn_b);
}

#[test]
fn new_flow_handshakes_differ_with_the_seed() {
    let (_, b1, c1) = new_flow_up_to_syn_ack(1);
    let (_, b2, c2) = new_flow_up_to_syn_ack(2);
    assert_ne!(b1.tifid(), b2.tifid());
    assert_ne!(c1.tiseq, c2.tiseq, "ISN_A comes from the RNG");
    assert_ne!(b1.isns().0, b2.isns().0, "ISN_B comes from the RNG");
    // Same seed, same handshake.
    let (_, b1_again, _) = new_flow_up_to_syn_ack(1);
    assert_eq!(b1, b1_again);
}

// ---------------------------------------------------------------------------
// Confirmation (RFC 8684 §3.1).

#[test]
fn confirmation_repeats_until_first_non_syn_peer_segment() {
    let (mut a, _, confirm) = new_flow_up_to_syn_ack(3);
    let mss = 1460;
    for _ in 0..5 {
        assert_eq!(a.confirm_option(), Some(confirm), "every segment confirms");
        assert_eq!(a.first_flight_limit(mss), Some(mss - 20));
    }
    // A retransmitted SYN-ACK was sent before B saw our confirmation.
    assert!(!a.on_peer_segment(true));
    assert_eq!(a.confirm_option(), Some(confirm));
    assert_eq!(a.first_flight_limit(mss), Some(1440));
    // B's first segment after its SYN-ACK ends the phase, once.
    assert!(a.on_peer_segment(false));
    assert_eq!(a.confirm_option(), None);
    assert_eq!(a.first_flight_limit(mss), None);
    assert!(!a.on_peer_segment(false), "already ended");
    assert!(!a.on_peer_segment(true));
    assert_eq!(a.confirm_option(), None);
}

#[test]
fn first_flight_limit_is_mss_minus_option_length() {
    let (a, _, _) = new_flow_up_to_syn_ack(4);
    for (mss, limit) in [(1460, 1440), (536, 516), (20, 0), (4, 0)] {
        assert_eq!(a.first_flight_limit(mss), Some(limit), "mss {mss}");
    }
    let before = Initiator::new_flow(HALF_A, s(0x1d));
    assert_eq!(before.first_flight_limit(1460), None);
}

/// Rows: the option in the segment that completes B's handshake, and the
/// cause B falls back with (`None`: confirmed).
#[test]
fn confirmation_rules() {
    let (_, b, confirm) = new_flow_up_to_syn_ack(5);
    let other_half = Tifid::from_halves(
        confirm.tifid.initiator_half(),
        Half::new(confirm.tifid.responder_half().value() ^ 1),
    );
    let rows: Vec<(&str, ParsedOption, Option<FallbackCause>)> = vec![
        ("valid confirmation", wire(confirm), None),
        (
            "confirmation missing",
            Ok(None),
            Some(FallbackCause::ConfirmationMissing),
        ),
        (
            "invalid TIFID",
            wire(FlowOptionRepr {
                tifid: other_half,
                ..confirm
            }),
            Some(FallbackCause::ConfirmationInvalid),
        ),
        (
            "invalid TIAck",
            wire(FlowOptionRepr {
                tiack: confirm.tiack + 1,
                ..confirm
            }),
            Some(FallbackCause::ConfirmationInvalid),
        ),
        (
            "invalid TISeq",
            wire(FlowOptionRepr {
                tiseq: confirm.tiseq - 1,
                ..confirm
            }),
            Some(FallbackCause::ConfirmationInvalid),
        ),
        (
            "SYN option repeated instead of confirmation",
            wire(FlowOptionRepr {
                tifid: Tifid::from_halves(confirm.tifid.initiator_half(), Half::ZERO),
                tiack: Seq48::ZERO,
                ..confirm
            }),
            Some(FallbackCause::ConfirmationInvalid),
        ),
    ];
    for (name, option, cause) in rows {
        let expected = match cause {
            None => ConfirmOutcome::Confirmed,
            Some(cause) => ConfirmOutcome::Unconfirmed(cause),
        };
        assert_eq!(b.on_handshake_ack(option), expected, "{name}");
    }
}

#[test]
fn malformed_confirmation_falls_back_for_each_error_kind() {
    let (_, b, _) = new_flow_up_to_syn_ack(6);
    for (name, list, error) in malformed_lists() {
        assert_eq!(
            b.on_handshake_ack(find_flow_option(&list, K)),
            ConfirmOutcome::Unconfirmed(FallbackCause::Malformed(error)),
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------
// Legacy fallback on the responder's side: the SYN.

struct SynCase {
    option: ParsedOption,
    policy: ResponderPolicy,
    /// Attached flows already in the table.
    prefill: usize,
    max_flows: usize,
    expected: FallbackCause,
}

impl SynCase {
    fn new(option: ParsedOption, expected: FallbackCause) -> SynCase {
        SynCase {
            option,
            policy: ResponderPolicy::default(),
            prefill: 0,
            max_flows: 8,
            expected,
        }
    }
}

fn new_flow_syn() -> FlowOptionRepr {
    repr(Tifid::from_halves(HALF_A, Half::ZERO), 0x1d, 0)
}

fn check_syn_fallback(name: &str, case: SynCase) {
    let mut rng = rng(11);
    let mut table = FlowTable::new(TableConfig {
        max_flows: case.max_flows,
        ..config()
    });
    for i in 0..case.prefill {
        let half = table
            .new_responder_half(Half::new(0x100 + i as u32), &mut rng)
            .expect("room");
        let tifid = Tifid::from_halves(Half::new(0x100 + i as u32), half);
        table
            .insert(Flow::new(tifid, Role::Responder, s(1), s(2), OTHER))
            .expect("insert");
    }
    let before: Vec<Flow> = table.iter().cloned().collect();
    let decision = Responder::on_syn(
        &mut table,
        case.policy,
        case.option,
        A_ADDR,
        &mut rng,
        T_SYN,
    );
    assert_eq!(decision, SynDecision::Legacy(case.expected), "{name}");
    let after: Vec<Flow> = table.iter().cloned().collect();
    assert_eq!(
        after, before,
        "{name}: a legacy decision keeps no flow state"
    );
    assert!(after.iter().all(|f| f.lifecycle() == Lifecycle::Attached));
}

macro_rules! syn_fallback_rules {
    ($($name:ident: $case:expr;)*) => {
        $(#[test] fn $name() { check_syn_fallback(stringify!($name), $case) })*
    };
}

syn_fallback_rules! {
    syn_without_option_falls_back:
        SynCase::new(Ok(None), FallbackCause::NoOptionInSyn);
    syn_with_zero_initiator_half_falls_back:
        SynCase::new(wire(repr(Tifid::new(0), 0x1d, 0)), FallbackCause::InvalidSyn);
    syn_with_zero_initiator_half_and_responder_half_falls_back:
        SynCase::new(wire(repr(Tifid::new(0x00_0000_79bf), 0x1d, 7)), FallbackCause::InvalidSyn);
    new_flow_syn_with_nonzero_tiack_falls_back:
        SynCase::new(wire(repr(Tifid::from_halves(HALF_A, Half::ZERO), 0x1d, 1)), FallbackCause::InvalidSyn);
    syn_falls_back_when_ti_disabled:
        SynCase {
            policy: ResponderPolicy { enabled: false },
            ..SynCase::new(wire(new_flow_syn()), FallbackCause::Disabled)
        };
    resume_syn_falls_back_when_ti_disabled:
        SynCase {
            policy: ResponderPolicy { enabled: false },
            ..SynCase::new(wire(repr(TIFID, 5010, 1070)), FallbackCause::Disabled)
        };
    syn_falls_back_when_table_full_without_evicting:
        SynCase {
            prefill: 3,
            max_flows: 3,
            ..SynCase::new(wire(new_flow_syn()), FallbackCause::TableFull)
        };
}

#[test]
fn syn_with_malformed_option_falls_back_for_each_error_kind() {
    for (name, list, error) in malformed_lists() {
        let case = SynCase::new(find_flow_option(&list, K), FallbackCause::Malformed(error));
        check_syn_fallback(name, case);
    }
}

#[test]
fn new_flow_syn_accepted_when_table_has_one_slot_left() {
    let mut rng = rng(12);
    let mut table = FlowTable::new(TableConfig {
        max_flows: 1,
        ..config()
    });
    let decision = Responder::on_syn(
        &mut table,
        ResponderPolicy::default(),
        wire(new_flow_syn()),
        A_ADDR,
        &mut rng,
        T_SYN,
    );
    assert!(matches!(decision, SynDecision::Accept(_)), "{decision:?}");
}

// ---------------------------------------------------------------------------
// Legacy fallback on the initiator's side: the SYN-ACK of a new flow.

const ISN_A: u64 = 0x1d;
const ISN_B: u64 = 0x1f;

fn syn_ack_fallback(option: ParsedOption) -> (SynAckOutcome, Initiator) {
    let mut a = Initiator::new_flow(HALF_A, s(ISN_A));
    let outcome = a.on_syn_ack(option, None, 0);
    (outcome, a)
}

#[test]
fn syn_ack_rules() {
    let b_half = TIFID.responder_half();
    let rows: Vec<(&str, ParsedOption, SynAckOutcome)> = vec![
        (
            "valid SYN-ACK",
            wire(repr(TIFID, ISN_B, ISN_A)),
            SynAckOutcome::Established {
                tifid: TIFID,
                peer_isn: s(ISN_B),
            },
        ),
        (
            "SYN-ACK without option",
            Ok(None),
            SynAckOutcome::FellBack(FallbackCause::NoOptionInSynAck),
        ),
        (
            "wrong initiator half",
            wire(repr(
                Tifid::from_halves(Half::new(0x0a4531), b_half),
                ISN_B,
                ISN_A,
            )),
            SynAckOutcome::FellBack(FallbackCause::InvalidSynAck),
        ),
        (
            "zero responder half",
            wire(repr(Tifid::from_halves(HALF_A, Half::ZERO), ISN_B, ISN_A)),
            SynAckOutcome::FellBack(FallbackCause::InvalidSynAck),
        ),
        (
            "wrong TIAck (ISN_A + 1, as if the SYN took a number)",
            wire(repr(TIFID, ISN_B, ISN_A + 1)),
            SynAckOutcome::FellBack(FallbackCause::InvalidSynAck),
        ),
        (
            "wrong TIAck (zero)",
            wire(repr(TIFID, ISN_B, 0)),
            SynAckOutcome::FellBack(FallbackCause::InvalidSynAck),
        ),
    ];
    for (name, option, expected) in rows {
        let (outcome, a) = syn_ack_fallback(option);
        assert_eq!(outcome, expected, "{name}");
        if let SynAckOutcome::FellBack(_) = outcome {
            // Stock peers must see ordinary TCP from us from now on.
            assert_eq!(a.confirm_option(), None, "{name}: no later option");
            assert_eq!(a.first_flight_limit(1460), None, "{name}");
        }
    }
}

#[test]
fn syn_ack_with_malformed_option_falls_back_for_each_error_kind() {
    for (name, list, error) in malformed_lists() {
        let (outcome, a) = syn_ack_fallback(find_flow_option(&list, K));
        assert_eq!(
            outcome,
            SynAckOutcome::FellBack(FallbackCause::Malformed(error)),
            "{name}"
        );
        assert_eq!(a.confirm_option(), None, "{name}");
    }
}

// ---------------------------------------------------------------------------
// Resume, responder side.
//
// B (responder) sent 100 bytes from 1000, A acknowledged 50 of them; B
// received 20 bytes from 5000:  snd_una 1050, snd_nxt 1100, rcv_nxt 5020.
// A (initiator) sent 30 bytes from 5000, B acknowledged 10; A received 70
// bytes from 1000:              snd_una 5010, snd_nxt 5030, rcv_nxt 1070.
// A's resume SYN is {TIFID, 5010, 1070}.

fn flow_b() -> Flow {
    let mut f = Flow::new(TIFID, Role::Responder, s(1000), s(5000), A_ADDR);
    f.on_write(100).expect("write");
    f.on_acked(s(1050)).expect("ack");
    f.on_received(20).expect("receive");
    f.detach(T_DETACH);
    f
}

fn flow_a() -> Flow {
    let mut f = Flow::new(TIFID, Role::Initiator, s(5000), s(1000), B_ADDR);
    f.on_write(30).expect("write");
    f.on_acked(s(5010)).expect("ack");
    f.on_received(70).expect("receive");
    f.detach(T_DETACH);
    f
}

fn table_with(config: TableConfig, flow: Flow) -> FlowTable {
    let mut table = FlowTable::new(config);
    table.insert(flow).expect("insert");
    table
}

fn refusal_reply(tifid: Tifid) -> Option<FlowOptionRepr> {
    Some(FlowOptionRepr {
        tifid,
        tiseq: Seq48::ZERO,
        tiack: Seq48::ZERO,
    })
}

#[test]
fn resume_end_to_end_restarts_each_side_at_the_peers_tiack() {
    let mut rng = rng(21);
    let mut table_a = table_with(config(), flow_a());
    let mut table_b = table_with(config(), flow_b());

    let mut a = Initiator::resume(table_a.get(TIFID).expect("flow A"));
    assert!(a.is_resume());
    assert_eq!(a.syn_option(), repr(TIFID, 5010, 1070));

    let decision = Responder::on_syn(
        &mut table_b,
        ResponderPolicy::default(),
        wire(a.syn_option()),
        A_ADDR,
        &mut rng,
        T_SYN,
    );
    let SynDecision::Accept(b) = decision else {
        panic!("{decision:?}");
    };
    assert!(b.is_resume());
    assert_eq!(b.tifid(), TIFID);
    assert_eq!(b.syn_ack_option(), repr(TIFID, 1050, 5020));
    assert_eq!(b.resume_send_from(), s(1070));

    let outcome = a.on_syn_ack(
        wire(b.syn_ack_option()),
        table_a.get(TIFID),
        config().max_resume_gap,
    );
    assert_eq!(
        outcome,
        SynAckOutcome::Resumed {
            peer_snd_una: s(1050),
            peer_rcv_nxt: s(5020),
        }
    );
    let confirm = a.confirm_option().expect("resume confirms too");
    assert_eq!(confirm, repr(TIFID, 5010, 1050));
    assert_eq!(b.on_handshake_ack(wire(confirm)), ConfirmOutcome::Confirmed);
    assert_eq!(
        b.on_handshake_ack(wire(repr(TIFID, 5010, 1051))),
        ConfirmOutcome::Unconfirmed(FallbackCause::ConfirmationInvalid)
    );

    // Each side drops what the peer holds and resends the rest.
    let fa = table_a.get_mut(TIFID).expect("A");
    assert_eq!(fa.resume_from(s(5020)), Ok(10));
    fa.attach();
    assert_eq!(fa.positions().snd_una, s(5020));
    let fb = table_b.get_mut(TIFID).expect("B");
    assert_eq!(fb.resume_from(b.resume_send_from()), Ok(20));
    fb.attach();
    assert_eq!(fb.lifecycle(), Lifecycle::Attached);
    assert_eq!(fb.positions().snd_una, s(1070));
}

/// Accepted resume requests at the edges of every check, with the table
/// config and the source they come from.
#[test]
fn resume_accepted_when_positions_in_window() {
    let gap_edge = TableConfig {
        max_resume_gap: 20,
        ..config()
    };
    let migration = TableConfig {
        allow_migration: true,
        ..config()
    };
    let rows: Vec<(&str, TableConfig, FlowOptionRepr, IpAddr)> = vec![
        ("inside", config(), repr(TIFID, 5010, 1070), A_ADDR),
        (
            "TIAck == snd_una",
            config(),
            repr(TIFID, 5010, 1050),
            A_ADDR,
        ),
        (
            "TIAck == snd_nxt",
            config(),
            repr(TIFID, 5010, 1100),
            A_ADDR,
        ),
        (
            "TISeq == rcv_nxt",
            config(),
            repr(TIFID, 5020, 1070),
            A_ADDR,
        ),
        (
            "gap == max_resume_gap",
            gap_edge,
            repr(TIFID, 5000, 1070),
            A_ADDR,
        ),
        (
            "new address, migration allowed",
            migration,
            repr(TIFID, 5010, 1070),
            MOVED,
        ),
        (
            "same address, migration allowed",
            migration,
            repr(TIFID, 5010, 1070),
            A_ADDR,
        ),
    ];
    for (name, config, syn, source) in rows {
        let mut table = table_with(config, flow_b());
        let before = table.get(TIFID).cloned();
        let decision = Responder::on_syn(
            &mut table,
            ResponderPolicy::default(),
            wire(syn),
            source,
            &mut rng(22),
            T_SYN,
        );
        let SynDecision::Accept(b) = decision else {
            panic!("{name}: {decision:?}");
        };
        assert!(b.is_resume(), "{name}");
        assert_eq!(b.syn_ack_option(), repr(TIFID, 1050, 5020), "{name}");
        assert_eq!(b.resume_send_from(), syn.tiack, "{name}");
        assert_eq!(table.get(TIFID).cloned(), before, "{name}: caller attaches");
    }
}

#[test]
fn resume_of_still_attached_flow_is_accepted() {
    let mut flow = flow_b();
    flow.attach();
    let mut table = table_with(config(), flow);
    let decision = Responder::on_syn(
        &mut table,
        ResponderPolicy::default(),
        wire(repr(TIFID, 5010, 1070)),
        A_ADDR,
        &mut rng(23),
        T_SYN,
    );
    assert!(matches!(decision, SynDecision::Accept(ref b) if b.is_resume()));
}

/// One refused resume: the flow B holds, B's config, A's SYN, its source.
struct RefusalCase {
    flow: Flow,
    config: TableConfig,
    syn: FlowOptionRepr,
    source: IpAddr,
    expected: RefuseReason,
}

impl RefusalCase {
    fn new(syn: FlowOptionRepr, expected: RefuseReason) -> RefusalCase {
        RefusalCase {
            flow: flow_b(),
            config: config(),
            syn,
            source: A_ADDR,
            expected,
        }
    }
}

fn check_refusal(case: RefusalCase) {
    let mut table = table_with(case.config, case.flow);
    let before = table.get(TIFID).cloned();
    let decision = Responder::on_syn(
        &mut table,
        ResponderPolicy::default(),
        wire(case.syn),
        case.source,
        &mut rng(31),
        T_SYN,
    );
    assert_eq!(
        decision,
        SynDecision::Refuse {
            reason: case.expected,
            reply: refusal_reply(case.syn.tifid),
        }
    );
    // A refusal changes nothing: positions, lifecycle, peer, table size.
    assert_eq!(table.get(TIFID).cloned(), before);
    assert_eq!(table.len(), 1);
}

macro_rules! refusal_rules {
    ($($name:ident: $case:expr;)*) => {
        $(#[test] fn $name() { check_refusal($case) })*
    };
}

refusal_rules! {
    resume_refused_for_unknown_tifid:
        RefusalCase::new(
            repr(Tifid::new(0x0a45_30be_79c0), 5010, 1070),
            RefuseReason::UnknownFlow,
        );
    resume_refused_for_finished_flow:
        RefusalCase {
            flow: { let mut f = flow_b(); f.finish(); f },
            ..RefusalCase::new(
                repr(TIFID, 5010, 1070),
                RefuseReason::Mismatch(ResumeMismatch::Finished),
            )
        };
    resume_refused_when_tiack_below_snd_una:
        RefusalCase::new(
            repr(TIFID, 5010, 1049),
            RefuseReason::Mismatch(ResumeMismatch::TiAckOutsideWindow {
                tiack: s(1049),
                snd_una: s(1050),
                snd_nxt: s(1100),
            }),
        );
    resume_refused_when_tiack_above_snd_nxt:
        RefusalCase::new(
            repr(TIFID, 5010, 1101),
            RefuseReason::Mismatch(ResumeMismatch::TiAckOutsideWindow {
                tiack: s(1101),
                snd_una: s(1050),
                snd_nxt: s(1100),
            }),
        );
    resume_refused_when_tiack_half_the_space_away:
        RefusalCase::new(
            repr(TIFID, 5010, 1070 + (1 << 47)),
            RefuseReason::Mismatch(ResumeMismatch::TiAckOutsideWindow {
                tiack: s(1070 + (1 << 47)),
                snd_una: s(1050),
                snd_nxt: s(1100),
            }),
        );
    resume_refused_when_tiseq_ahead_of_rcv_nxt:
        RefusalCase::new(
            repr(TIFID, 5021, 1070),
            RefuseReason::Mismatch(ResumeMismatch::TiSeqAhead {
                tiseq: s(5021),
                rcv_nxt: s(5020),
            }),
        );
    resume_refused_when_gap_above_max_resume_gap:
        RefusalCase::new(
            repr(TIFID, 5020 - 1001, 1070),
            RefuseReason::Mismatch(ResumeMismatch::GapTooLarge { gap: 1001, max: 1000 }),
        );
    resume_refused_when_address_changed_without_migration:
        RefusalCase {
            source: MOVED,
            ..RefusalCase::new(
                repr(TIFID, 5010, 1070),
                RefuseReason::Mismatch(ResumeMismatch::AddressChanged {
                    expected: A_ADDR,
                    got: MOVED,
                }),
            )
        };
    resume_refused_when_we_are_the_initiator:
        RefusalCase {
            flow: {
                // Our own initiated flow, with positions a resume would match.
                let mut f = Flow::new(TIFID, Role::Initiator, s(1000), s(5000), A_ADDR);
                f.on_write(100).expect("write");
                f.on_acked(s(1050)).expect("ack");
                f.on_received(20).expect("receive");
                f
            },
            ..RefusalCase::new(repr(TIFID, 5010, 1070), RefuseReason::NotResponder)
        };
}

#[test]
fn forged_resumes_do_not_disturb_the_real_resume() {
    let mut table = table_with(config(), flow_b());
    let mut rng = rng(32);
    for forged in [
        repr(TIFID, 5010, 1049),
        repr(TIFID, 5010, 1101),
        repr(TIFID, 5021, 1070),
        repr(TIFID, 0, 0),
    ] {
        let decision = Responder::on_syn(
            &mut table,
            ResponderPolicy::default(),
            wire(forged),
            OTHER,
            &mut rng,
            T_SYN,
        );
        assert!(
            matches!(decision, SynDecision::Refuse { .. }),
            "{decision:?}"
        );
    }
    assert_eq!(table.get(TIFID), Some(&flow_b()));
    let decision = Responder::on_syn(
        &mut table,
        ResponderPolicy::default(),
        wire(repr(TIFID, 5010, 1070)),
        A_ADDR,
        &mut rng,
        T_SYN,
    );
    assert!(matches!(decision, SynDecision::Accept(_)), "{decision:?}");
}

#[test]
fn refusal_rst_is_read_by_the_initiator_as_flow_lost() {
    // B restarted and lost its table: the resume is refused.
    let mut table_b = FlowTable::new(config());
    let a = Initiator::resume(&flow_a());
    let decision = Responder::on_syn(
        &mut table_b,
        ResponderPolicy::default(),
        wire(a.syn_option()),
        A_ADDR,
        &mut rng(33),
        T_SYN,
    );
    let SynDecision::Refuse {
        reason: RefuseReason::UnknownFlow,
        reply: Some(reply),
    } = decision
    else {
        panic!("{decision:?}");
    };
    assert_eq!(reply, repr(TIFID, 0, 0), "TIFID echoed, TISeq/TIAck zero");
    assert_eq!(a.on_rst(wire(reply)), RstOutcome::Refused);
}

// ---------------------------------------------------------------------------
// The per-source refusal limit (DESIGN §5).

fn bad_resume(table: &mut FlowTable, source: IpAddr, now: Timestamp) -> SynDecision {
    Responder::on_syn(
        table,
        ResponderPolicy::default(),
        wire(repr(TIFID, 5010, 1101)),
        source,
        &mut rng(41),
        now,
    )
}

fn reply_of(decision: &SynDecision) -> Option<FlowOptionRepr> {
    match decision {
        SynDecision::Refuse { reply, .. } => *reply,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn refusals_beyond_the_per_source_limit_are_dropped_silently() {
    let config = TableConfig {
        refusals_per_window: 3,
        refusal_window: Duration::from_secs(10),
        ..config()
    };
    let mut table = table_with(config, flow_b());
    let t0 = T_SYN;
    for i in 0..3 {
        let d = bad_resume(&mut table, A_ADDR, t0 + Duration::from_millis(i));
        assert_eq!(reply_of(&d), refusal_reply(TIFID), "refusal {i}");
    }
    for i in 3..6 {
        let d = bad_resume(&mut table, A_ADDR, t0 + Duration::from_millis(i));
        assert!(
            matches!(d, SynDecision::Refuse { reply: None, .. }),
            "refusal {i} over the limit: {d:?}"
        );
    }
    // Another source has its own count.
    let d = bad_resume(&mut table, OTHER, t0 + Duration::from_millis(6));
    assert_eq!(reply_of(&d), refusal_reply(TIFID));
    // Still inside A's window: still silent.
    let d = bad_resume(&mut table, A_ADDR, t0 + Duration::from_millis(9_999));
    assert_eq!(reply_of(&d), None);
    // A new window resets the count.
    let d = bad_resume(&mut table, A_ADDR, t0 + Duration::from_secs(10));
    assert_eq!(reply_of(&d), refusal_reply(TIFID));
    // None of it touched the flow.
    assert_eq!(table.get(TIFID), Some(&flow_b()));
}

#[test]
fn valid_resume_accepted_even_when_source_over_refusal_limit() {
    let config = TableConfig {
        refusals_per_window: 1,
        ..config()
    };
    let mut table = table_with(config, flow_b());
    for _ in 0..3 {
        bad_resume(&mut table, A_ADDR, T_SYN);
    }
    let decision = Responder::on_syn(
        &mut table,
        ResponderPolicy::default(),
        wire(repr(TIFID, 5010, 1070)),
        A_ADDR,
        &mut rng(42),
        T_SYN,
    );
    assert!(matches!(decision, SynDecision::Accept(_)), "{decision:?}");
}

// ---------------------------------------------------------------------------
// Resume, initiator side: the mirror checks on the SYN-ACK.

fn initiator_reads(
    syn_ack: ParsedOption,
    flow: Option<&Flow>,
    max_gap: u64,
) -> (SynAckOutcome, Initiator) {
    let mut a = Initiator::resume(&flow_a());
    let outcome = a.on_syn_ack(syn_ack, flow, max_gap);
    (outcome, a)
}

#[test]
fn resume_syn_carries_tifid_snd_una_rcv_nxt() {
    let mut flow = flow_a();
    flow.on_received(5).expect("receive");
    flow.on_acked(s(5020)).expect("ack");
    let a = Initiator::resume(&flow);
    assert!(a.is_resume());
    assert_eq!(a.syn_option(), repr(TIFID, 5020, 1075));
    assert_eq!(a.confirm_option(), None);
}

#[test]
fn resume_syn_ack_mirror_checks() {
    let finished = {
        let mut f = flow_a();
        f.finish();
        f
    };
    let rows: Vec<(&str, FlowOptionRepr, Flow, u64, SynAckOutcome)> = vec![
        (
            "accepted",
            repr(TIFID, 1050, 5020),
            flow_a(),
            1000,
            SynAckOutcome::Resumed {
                peer_snd_una: s(1050),
                peer_rcv_nxt: s(5020),
            },
        ),
        (
            "peer rcv_nxt below our snd_una",
            repr(TIFID, 1050, 5009),
            flow_a(),
            1000,
            SynAckOutcome::Lost(LostCause::Mismatch(ResumeMismatch::TiAckOutsideWindow {
                tiack: s(5009),
                snd_una: s(5010),
                snd_nxt: s(5030),
            })),
        ),
        (
            "peer rcv_nxt above our snd_nxt",
            repr(TIFID, 1050, 5031),
            flow_a(),
            1000,
            SynAckOutcome::Lost(LostCause::Mismatch(ResumeMismatch::TiAckOutsideWindow {
                tiack: s(5031),
                snd_una: s(5010),
                snd_nxt: s(5030),
            })),
        ),
        (
            "peer snd_una ahead of our rcv_nxt",
            repr(TIFID, 1071, 5020),
            flow_a(),
            1000,
            SynAckOutcome::Lost(LostCause::Mismatch(ResumeMismatch::TiSeqAhead {
                tiseq: s(1071),
                rcv_nxt: s(1070),
            })),
        ),
        (
            "peer would resend more than max_gap",
            repr(TIFID, 1050, 5020),
            flow_a(),
            19,
            SynAckOutcome::Lost(LostCause::Mismatch(ResumeMismatch::GapTooLarge {
                gap: 20,
                max: 19,
            })),
        ),
        (
            "our flow finished meanwhile",
            repr(TIFID, 1050, 5020),
            finished,
            1000,
            SynAckOutcome::Lost(LostCause::Mismatch(ResumeMismatch::Finished)),
        ),
        (
            "foreign TIFID",
            repr(Tifid::new(0x0a45_30be_79c0), 1050, 5020),
            flow_a(),
            1000,
            SynAckOutcome::Lost(LostCause::SynAckForeign),
        ),
        (
            "new-flow style answer",
            repr(Tifid::from_halves(HALF_A, Half::new(0x123456)), 1, 5010),
            flow_a(),
            1000,
            SynAckOutcome::Lost(LostCause::SynAckForeign),
        ),
    ];
    for (name, syn_ack, flow, max_gap, expected) in rows {
        let (outcome, a) = initiator_reads(wire(syn_ack), Some(&flow), max_gap);
        assert_eq!(outcome, expected, "{name}");
        match outcome {
            SynAckOutcome::Resumed { peer_snd_una, .. } => assert_eq!(
                a.confirm_option(),
                Some(repr(TIFID, 5010, peer_snd_una.value())),
                "{name}"
            ),
            _ => assert_eq!(a.confirm_option(), None, "{name}: nothing to confirm"),
        }
    }
}

#[test]
fn resume_syn_ack_without_option_is_flow_lost() {
    let (outcome, a) = initiator_reads(Ok(None), Some(&flow_a()), 1000);
    assert_eq!(outcome, SynAckOutcome::Lost(LostCause::SynAckWithoutOption));
    assert_eq!(a.confirm_option(), None);
    for (name, list, _) in malformed_lists() {
        let (outcome, _) = initiator_reads(find_flow_option(&list, K), Some(&flow_a()), 1000);
        assert_eq!(
            outcome,
            SynAckOutcome::Lost(LostCause::SynAckWithoutOption),
            "{name}"
        );
    }
}

#[test]
fn resume_syn_ack_without_local_flow_is_foreign() {
    let (outcome, _) = initiator_reads(wire(repr(TIFID, 1050, 5020)), None, 1000);
    assert_eq!(outcome, SynAckOutcome::Lost(LostCause::SynAckForeign));
}

// ---------------------------------------------------------------------------
// RSTs in answer to our SYN.

#[test]
fn rst_rules() {
    let resume = Initiator::resume(&flow_a());
    let new_flow = Initiator::new_flow(HALF_A, s(ISN_A));
    let rows: Vec<(&str, &Initiator, ParsedOption, RstOutcome)> = vec![
        (
            "refusal RST with our TIFID",
            &resume,
            wire(repr(TIFID, 0, 0)),
            RstOutcome::Refused,
        ),
        (
            "bare RST during resume",
            &resume,
            Ok(None),
            RstOutcome::Transient,
        ),
        (
            "RST with another TIFID",
            &resume,
            wire(repr(Tifid::new(0x0a45_30be_79c0), 0, 0)),
            RstOutcome::Transient,
        ),
        (
            "RST with malformed option",
            &resume,
            Err(OptionError::BadLength(19)),
            RstOutcome::Transient,
        ),
        (
            "bare RST during a new-flow handshake",
            &new_flow,
            Ok(None),
            RstOutcome::Transient,
        ),
        (
            "RST echoing a new flow's SYN option",
            &new_flow,
            wire(new_flow.syn_option()),
            RstOutcome::Transient,
        ),
    ];
    for (name, initiator, option, expected) in rows {
        assert_eq!(initiator.on_rst(option), expected, "{name}");
    }
}
