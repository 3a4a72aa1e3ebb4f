//! Fuzzes the TCP option-list code of `tifid::option` on arbitrary input:
//! `find_flow_option`, `OptionWalker`, `insert_flow_option` and
//! `strip_options` must never panic, and a successful insert must produce a
//! valid list that holds exactly our option and every other option of the
//! original, in order.
//!
//! Input layout: byte 0 picks the option kind, bytes 1..19 the option's
//! TIFID, TISeq and TIAck; the rest is the option list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tifid::option::{
    FlowOptionRepr, InsertError, MAX_OPTIONS_LEN, OptionWalker, Tifid, find_flow_option,
    insert_flow_option, strip_options,
};
use tifid::seq::Seq48;

fn six(bytes: &[u8]) -> [u8; 6] {
    let mut out = [0u8; 6];
    out.copy_from_slice(&bytes[..6]);
    out
}

/// The options of `list` up to EOL other than `kind`, or `None` if the list
/// is malformed.
fn others(list: &[u8], kind: u8) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    for option in OptionWalker::new(list) {
        let option = option.ok()?;
        assert!(option.offset + option.bytes.len() <= list.len());
        assert_eq!(option.bytes.first(), Some(&option.kind));
        if option.kind != kind {
            out.push(option.bytes);
        }
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 19 {
        return;
    }
    let raw_kind = data[0];
    let repr = FlowOptionRepr {
        tifid: Tifid::from_be_bytes(six(&data[1..7])),
        tiseq: Seq48::from_be_bytes(six(&data[7..13])),
        tiack: Seq48::from_be_bytes(six(&data[13..19])),
    };
    let list = &data[19..];

    // Any kind, even EOL and NOP: no panic, and a find is really there.
    if let Ok(Some(found)) = find_flow_option(list, raw_kind) {
        let bytes = found.to_bytes(raw_kind);
        assert!(list.windows(20).any(|w| w == bytes));
    }
    let walked = OptionWalker::new(list).take(list.len() + 1).count();
    assert!(walked <= list.len());

    // Our option's kind is never EOL or NOP.
    let kind = raw_kind.max(2);
    let mut out = [0u8; MAX_OPTIONS_LEN];
    match insert_flow_option(list, &repr, kind, &mut out) {
        Ok(len) => {
            assert!(len <= MAX_OPTIONS_LEN, "list of {len} bytes");
            assert_eq!(len % 4, 0, "list of {len} bytes");
            let new = &out[..len];
            assert_eq!(find_flow_option(new, kind), Ok(Some(repr)));
            let before = others(list, kind).expect("insert accepted a malformed list");
            let after = others(new, kind).expect("insert produced a malformed list");
            assert_eq!(before, after, "other options lost or reordered");
        }
        Err(InsertError::DoesNotFit(e)) => {
            let before = others(list, kind).expect("malformed list reported as DoesNotFit");
            let kept: usize = before.iter().map(|o| o.len()).sum();
            assert_eq!(e.existing, kept);
            assert!(kept + 20 > MAX_OPTIONS_LEN);
        }
        Err(InsertError::Malformed(_)) => {
            assert!(list.len() > MAX_OPTIONS_LEN || others(list, kind).is_none());
        }
    }

    let mut stripped = list.to_vec();
    strip_options(&mut stripped, kind);
    assert!(!matches!(find_flow_option(&stripped, kind), Ok(Some(_))));
});
