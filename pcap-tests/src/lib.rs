//! # pcap-tests: traces, their golden dumps, and (later) the replay harness
//!
//! - [`paper_traces`]: the paper's Trace 1 and Trace 2, rebuilt byte-exact
//!   and written as pcap files under `traces/`.
//! - `tests/golden.rs`: `tiflow dump` of every trace under `traces/` that has
//!   a golden file under `golden/`, compared exactly (`TIFLOW_BLESS=1`
//!   rewrites the golden files).
//! - `tests/paper_traces.rs`: the checked-in traces equal what the code
//!   builds (`TIFLOW_BLESS=1` rewrites them too).
//!
//! See `traces/MANIFEST.md` for where each trace comes from.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod paper_traces;

/// True when `TIFLOW_BLESS=1`: tests rewrite their expected files instead of
/// comparing with them.
pub fn bless() -> bool {
    std::env::var_os("TIFLOW_BLESS").is_some_and(|v| v == "1")
}

/// A line diff of `expected` and `actual` for test failure messages: every
/// line that differs, with its number, as `-expected` / `+actual`.
pub fn line_diff(expected: &str, actual: &str) -> String {
    let expected: Vec<&str> = expected.lines().collect();
    let actual: Vec<&str> = actual.lines().collect();
    let mut out = String::new();
    for i in 0..expected.len().max(actual.len()) {
        let (e, a) = (expected.get(i), actual.get(i));
        if e == a {
            continue;
        }
        if let Some(e) = e {
            out.push_str(&format!("line {}:\n  -{e}\n", i + 1));
        } else {
            out.push_str(&format!("line {}:\n  -<none>\n", i + 1));
        }
        match a {
            Some(a) => out.push_str(&format!("  +{a}\n")),
            None => out.push_str("  +<none>\n"),
        }
    }
    out
}
