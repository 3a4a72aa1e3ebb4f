//! Properties of the option codec, the option-list walkers and Seq48
//! arithmetic, over generated inputs.

use proptest::prelude::*;
use tifid::option::{
    FlowOption, FlowOptionRepr, InsertError, MAX_OPTIONS_LEN, OptionWalker, Tifid,
    find_flow_option, insert_flow_option, strip_options,
};
use tifid::seq::Seq48;

const HALF: u64 = 1 << 47;

fn arb_repr() -> impl Strategy<Value = FlowOptionRepr> {
    (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(t, s, a)| FlowOptionRepr {
        tifid: Tifid::new(t),
        tiseq: Seq48::new(s),
        tiack: Seq48::new(a),
    })
}

/// A kind usable for our option: not EOL (0) or NOP (1).
fn arb_kind() -> impl Strategy<Value = u8> {
    2u8..=255
}

fn arb_seq() -> impl Strategy<Value = Seq48> {
    any::<u64>().prop_map(Seq48::new)
}

/// One well-formed option: NOP, or `kind, len, data` with `len >= 2`. Kind
/// `ours` may appear, but only with its valid length of 20.
fn arb_option(ours: u8) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![1u8]),
        (2u8..=255, proptest::collection::vec(any::<u8>(), 0..=10)).prop_map(move |(k, d)| {
            let k = if k == ours { 2 } else { k };
            let mut o = vec![k, d.len() as u8 + 2];
            o.extend(d);
            o
        }),
        arb_repr().prop_map(move |r| r.to_bytes(ours).to_vec()),
    ]
}

/// A well-formed option list of at most 40 bytes, possibly ending in EOL
/// padding (and garbage after the EOL, which readers must ignore).
fn arb_list() -> impl Strategy<Value = (u8, Vec<u8>)> {
    arb_kind().prop_flat_map(|ours| {
        (
            Just(ours),
            proptest::collection::vec(arb_option(ours), 0..8),
            proptest::collection::vec(any::<u8>(), 0..4),
            any::<bool>(),
        )
            .prop_map(|(ours, options, tail, eol)| {
                let mut list = Vec::new();
                for o in options {
                    if list.len() + o.len() <= MAX_OPTIONS_LEN {
                        list.extend(o);
                    }
                }
                if eol && list.len() < MAX_OPTIONS_LEN {
                    list.push(0);
                    for b in tail {
                        if list.len() < MAX_OPTIONS_LEN {
                            list.push(b);
                        }
                    }
                }
                (ours, list)
            })
    })
}

/// Every option up to EOL except those of `kind`, as byte strings, in order.
fn others(list: &[u8], kind: u8) -> Vec<Vec<u8>> {
    OptionWalker::new(list)
        .map(|o| o.expect("well-formed list"))
        .filter(|o| o.kind != kind)
        .map(|o| o.bytes.to_vec())
        .collect()
}

/// Checks the contract of `insert_flow_option` on any input list.
fn check_insert(list: &[u8], repr: &FlowOptionRepr, kind: u8) -> Result<(), TestCaseError> {
    let mut out = [0xeeu8; MAX_OPTIONS_LEN];
    match insert_flow_option(list, repr, kind, &mut out) {
        Err(InsertError::Malformed(_)) => {
            prop_assert!(find_flow_option(list, kind).is_err() || list.len() > MAX_OPTIONS_LEN);
        }
        Err(InsertError::DoesNotFit(e)) => {
            let kept: usize = others(list, kind).iter().map(Vec::len).sum();
            prop_assert_eq!(e.existing, kept);
            prop_assert!(kept + 20 > MAX_OPTIONS_LEN);
        }
        Ok(len) => {
            prop_assert!(len <= MAX_OPTIONS_LEN);
            prop_assert_eq!(len % 4, 0);
            let new = &out[..len];
            prop_assert_eq!(find_flow_option(new, kind), Ok(Some(*repr)));
            prop_assert_eq!(others(new, kind), others(list, kind));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn codec_round_trips(repr in arb_repr(), kind in any::<u8>()) {
        let bytes = repr.to_bytes(kind);
        let view = FlowOption::new_checked(&bytes[..]).expect("20 bytes, length 20");
        prop_assert_eq!(view.kind(), kind);
        prop_assert_eq!(view.length(), 20);
        prop_assert_eq!(FlowOptionRepr::parse(&view), Ok(repr));
        // Display shows the three fields as 12 hex digits each.
        let text = repr.to_string();
        let expected = format!(
            "flow-d tifid {:012x} tiseq {:012x} tiack {:012x}",
            repr.tifid.value(),
            repr.tiseq.value(),
            repr.tiack.value()
        );
        prop_assert_eq!(text, expected);
    }

    #[test]
    fn find_never_panics(list in proptest::collection::vec(any::<u8>(), 0..=60), kind in any::<u8>()) {
        let found = find_flow_option(&list, kind);
        if list.len() > MAX_OPTIONS_LEN {
            prop_assert!(found.is_err());
        }
        if let Ok(Some(repr)) = found {
            // What was found is really in the list, under our kind.
            let bytes = repr.to_bytes(kind);
            prop_assert!(list.windows(20).any(|w| w == bytes));
        }
        for option in OptionWalker::new(&list).take(64) {
            let Ok(option) = option else { break };
            prop_assert_eq!(option.bytes[0], option.kind);
            prop_assert!(option.offset + option.bytes.len() <= list.len());
        }
    }

    #[test]
    fn insert_into_well_formed_list((kind, list) in arb_list(), repr in arb_repr()) {
        check_insert(&list, &repr, kind)?;
    }

    #[test]
    fn insert_into_any_list(list in proptest::collection::vec(any::<u8>(), 0..=44), repr in arb_repr(), kind in arb_kind()) {
        let mut out = [0u8; MAX_OPTIONS_LEN];
        let result = insert_flow_option(&list, &repr, kind, &mut out);
        if let Ok(len) = result {
            prop_assert!(len <= MAX_OPTIONS_LEN && len % 4 == 0);
            prop_assert_eq!(find_flow_option(&out[..len], kind), Ok(Some(repr)));
            check_insert(&list, &repr, kind)?;
        }
    }

    #[test]
    fn strip_then_find_gives_none((kind, mut list) in arb_list()) {
        let ours = OptionWalker::new(&list)
            .filter(|o| o.is_ok_and(|o| o.kind == kind))
            .count();
        let before = others(&list, kind);
        prop_assert_eq!(strip_options(&mut list, kind), ours);
        prop_assert_eq!(find_flow_option(&list, kind), Ok(None));
        // Other options are untouched; ours became NOPs.
        let after: Vec<Vec<u8>> = others(&list, kind).into_iter().filter(|o| o != &[1u8]).collect();
        let before: Vec<Vec<u8>> = before.into_iter().filter(|o| o != &[1u8]).collect();
        prop_assert_eq!(after, before);
    }

    #[test]
    fn strip_then_find_never_finds_on_any_list(mut list in proptest::collection::vec(any::<u8>(), 0..=60), kind in arb_kind()) {
        strip_options(&mut list, kind);
        prop_assert!(!matches!(find_flow_option(&list, kind), Ok(Some(_))));
    }

    #[test]
    fn seq_add_then_sub_is_identity(a in arb_seq(), n in any::<u64>()) {
        prop_assert_eq!((a + n) - n, a);
        prop_assert_eq!(Seq48::from_be_bytes(a.to_be_bytes()), a);
    }

    #[test]
    fn seq_distance_of_forward_step(a in arb_seq(), n in 0..HALF) {
        prop_assert_eq!((a + n).distance_from(a), n as i64);
        prop_assert_eq!(a.distance_from(a + n), -(n as i64));
        prop_assert_eq!((a + n).bytes_since(a), Some(n));
    }

    #[test]
    fn seq_comparison_is_antisymmetric(a in arb_seq(), b in arb_seq()) {
        prop_assert_eq!(a.partial_cmp(&b), b.partial_cmp(&a).map(core::cmp::Ordering::reverse));
        prop_assert_eq!(a == b, a.partial_cmp(&b) == Some(core::cmp::Ordering::Equal));
        prop_assert!(!(a < b && b < a));
    }

    #[test]
    fn seq_successor_compares_greater(a in arb_seq(), n in 1..HALF) {
        prop_assert!(a < a + n);
        prop_assert!(a + n > a);
        prop_assert_eq!((a + n).partial_cmp(&a), Some(core::cmp::Ordering::Greater));
        prop_assert!(a.bytes_since(a + n).is_none());
    }

    #[test]
    fn seq_is_within_matches_offsets(lo in arb_seq(), span in 0..HALF, off in any::<u64>()) {
        let off = off & ((1 << 48) - 1);
        let x = lo + off;
        let hi = lo + span;
        prop_assert_eq!(x.is_within(lo, hi), off <= span, "off {} span {}", off, span);
        let via_bytes = x.bytes_since(lo).is_some_and(|d| hi.bytes_since(lo).is_some_and(|s| d <= s));
        prop_assert_eq!(x.is_within(lo, hi), via_bytes);
    }
}
