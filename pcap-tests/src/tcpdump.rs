//! Parity with tcpdump on its own test suite: the tests of a `TESTLIST`
//! (tcpdump's `tests/` directory, or the copy under `tcpdump/`), each capture
//! run through `tiflow dump`, each TCP line of tcpdump's expected output
//! compared with ours from `IP`/`IP6` to `length N`.
//!
//! tcpdump's harness (`tests/TESTrun`) runs `tcpdump -# -n -r FILE ARGS`,
//! adding `-tttt` unless the test names its own `-t`; lines are paired by
//! the packet number `-#` starts them with.

use std::collections::BTreeMap;
use std::path::Path;

use ti_tools::{DumpOptions, dump_bytes};

/// One line of a `TESTLIST`: `name input output args...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestEntry {
    /// The test's name.
    pub name: String,
    /// The capture file, relative to the tests directory.
    pub input: String,
    /// tcpdump's expected output, relative to the tests directory.
    pub output: String,
    /// tcpdump's flags beyond `-# -n`.
    pub args: Vec<String>,
}

/// The tests of a `TESTLIST` (comments and blank lines skipped).
pub fn parse_testlist(text: &str) -> Vec<TestEntry> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut words = l.split_whitespace().map(str::to_owned);
            Some(TestEntry {
                name: words.next()?,
                input: words.next()?,
                output: words.next()?,
                args: words.collect(),
            })
        })
        .collect()
}

/// The dump options matching a test's tcpdump flags, or `None` when a flag
/// changes the TCP lines in a way `tiflow dump` does not follow (`-v`, `-q`,
/// `-e`, a filter, ...). Timestamp flags are accepted: the compared part of a
/// line starts after the timestamp.
pub fn options_for(args: &[String]) -> Option<DumpOptions> {
    let mut options = DumpOptions {
        number: true,
        ..DumpOptions::default()
    };
    for arg in args {
        match arg.as_str() {
            "-S" => options.absolute = true,
            "-n" | "-#" | "SPECIAL_t" | "-t" | "-tt" | "-ttt" | "-tttt" | "-ttttt" => {}
            _ => return None,
        }
    }
    Some(options)
}

/// The part of a tcpdump line that is compared: from the `IP` or `IP6` of a
/// TCP segment (`IP a.p > b.q: Flags [`) to its `length N`, or to the end of
/// the line when it has no length (a header cut short). `None`: not a TCP
/// line.
pub fn tcp_part(line: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(found) = line[from..].find("IP") {
        let start = from + found;
        from = start + 2;
        if start > 0 && !line[..start].ends_with(' ') {
            continue;
        }
        let rest = &line[start..];
        let after = rest
            .strip_prefix("IP6 ")
            .or_else(|| rest.strip_prefix("IP "));
        let Some(after) = after else { continue };
        let mut words = after.splitn(4, ' ');
        let (Some(_src), Some(">"), Some(_dst), Some(tail)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            continue;
        };
        if !tail.starts_with("Flags [") || !_dst.ends_with(':') {
            continue;
        }
        return Some(cut_at_length(rest));
    }
    None
}

/// `text` up to and including its first `, length N`.
fn cut_at_length(text: &str) -> &str {
    let Some(at) = text.find(", length ") else {
        return text;
    };
    let digits_from = at + ", length ".len();
    let digits = text[digits_from..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    &text[..digits_from + digits]
}

/// The packet number a `-#` line starts with, and the rest of the line.
fn numbered(line: &str) -> Option<(u64, &str)> {
    let trimmed = line.trim_start();
    let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
    let rest = trimmed.get(digits..)?.strip_prefix("  ")?;
    Some((trimmed[..digits].parse().ok()?, rest))
}

/// A TCP line that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The packet's number.
    pub packet: u64,
    /// tcpdump's part of the line.
    pub expected: String,
    /// Ours (the whole line when it has no TCP part).
    pub actual: String,
}

/// The comparison of one test.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// TCP lines in tcpdump's expected output.
    pub tcp_lines: usize,
    /// Of those, the ones ours equals.
    pub identical: usize,
    /// The others.
    pub mismatches: Vec<Mismatch>,
}

/// Compares tcpdump's expected output with ours (both printed with `-#`).
pub fn compare(expected: &str, ours: &str) -> Comparison {
    let ours: BTreeMap<u64, &str> = ours.lines().filter_map(numbered).collect();
    let mut result = Comparison::default();
    for (packet, line) in expected.lines().filter_map(numbered) {
        let Some(want) = tcp_part(line) else { continue };
        result.tcp_lines += 1;
        let got = ours.get(&packet).copied();
        if got.and_then(tcp_part) == Some(want) {
            result.identical += 1;
        } else {
            result.mismatches.push(Mismatch {
                packet,
                expected: want.to_owned(),
                actual: got.unwrap_or("(no line)").to_owned(),
            });
        }
    }
    result
}

/// What running one test gave.
#[derive(Debug)]
pub enum Outcome {
    /// The capture decoded; the comparison of its TCP lines.
    Compared(Comparison),
    /// `tiflow dump` refused the capture (an unsupported link type, a bad
    /// file); the error, and the TCP lines tcpdump printed.
    Refused {
        /// The error message.
        error: String,
        /// TCP lines in tcpdump's expected output.
        tcp_lines: usize,
    },
}

/// Runs one test found in `dir`: `Ok(None)` when its flags are not
/// supported; an error when its files cannot be read.
pub fn run_test(dir: &Path, test: &TestEntry) -> Result<Option<Outcome>, String> {
    let Some(options) = options_for(&test.args) else {
        return Ok(None);
    };
    let capture =
        std::fs::read(dir.join(&test.input)).map_err(|e| format!("{}: {e}", test.input))?;
    let expected =
        std::fs::read(dir.join(&test.output)).map_err(|e| format!("{}: {e}", test.output))?;
    let expected = String::from_utf8_lossy(&expected);
    let mut out = Vec::new();
    Ok(Some(match dump_bytes(&capture, &options, &mut out) {
        Ok(_) => Outcome::Compared(compare(&expected, &String::from_utf8_lossy(&out))),
        Err(e) => Outcome::Refused {
            error: e.to_string(),
            tcp_lines: compare(&expected, "").tcp_lines,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_parts_of_tcpdump_lines() {
        let line = "    1  2012-10-04 16:26:20.467968 IP 192.168.0.100.13047 > 3.3.3.3.13054: \
                    Flags [S], seq 218476388, win 1400, options [exp-tfo cookiereq], length 0";
        let (n, rest) = numbered(line).expect("numbered");
        assert_eq!(n, 1);
        assert_eq!(
            tcp_part(rest),
            Some(
                "IP 192.168.0.100.13047 > 3.3.3.3.13054: Flags [S], seq 218476388, win 1400, \
                 options [exp-tfo cookiereq], length 0"
            )
        );
        assert_eq!(
            tcp_part("IP6 ::1.80 > ::1.5000: Flags [P.], seq 1:9, ack 1, win 5, length 8: HTTP"),
            Some("IP6 ::1.80 > ::1.5000: Flags [P.], seq 1:9, ack 1, win 5, length 8")
        );
        assert_eq!(tcp_part("IP 1.2.3.4.53 > 5.6.7.8.53: 1+ A? x. (17)"), None);
        assert_eq!(
            tcp_part("IP 1.2.3.4.1 > 5.6.7.8.2: Flags [S], seq 1, win 2, options [mss 1 [|tcp]"),
            Some("IP 1.2.3.4.1 > 5.6.7.8.2: Flags [S], seq 1, win 2, options [mss 1 [|tcp]")
        );
    }

    #[test]
    fn comparison_pairs_lines_by_packet_number() {
        let expected = "    1  00:00 IP 1.1.1.1.1 > 2.2.2.2.2: Flags [S], seq 5, win 1, length 0\n\
                        \tcontinuation\n\
                        \x20   2  00:01 IP 1.1.1.1.1 > 2.2.2.2.2: Flags [.], ack 1, win 1, length 0\n\
                        \x20   3  00:02 ARP, Request\n";
        let ours = "    1  0.0 IP 1.1.1.1.1 > 2.2.2.2.2: Flags [S], seq 5, win 1, length 0\n\
                    \x20   2  0.1 IP 1.1.1.1.1 > 2.2.2.2.2: Flags [.], ack 7, win 1, length 0\n";
        let c = compare(expected, ours);
        assert_eq!((c.tcp_lines, c.identical), (2, 1));
        assert_eq!(c.mismatches[0].packet, 2);
        assert!(options_for(&["-v".to_owned()]).is_none());
        assert!(options_for(&["-S".to_owned()]).is_some_and(|o| o.absolute));
    }
}
