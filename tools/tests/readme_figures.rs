//! Every measured figure the README quotes in its benchmark sections comes
//! from a committed file in `benches/results/` (issue 14): a decimal
//! number, or a number with a time unit (ns, us, ms, s) or in `B per`,
//! must appear, as written, in at least one results file (CSV or text;
//! SVGs are not searched). Goals (`<= 1.02`, `>= 0.95`) and the paper's
//! figures (`paper: +0.46`) are not measurements and are skipped.

use std::path::{Path, PathBuf};

/// The README sections whose numbers are measurements.
const SECTIONS: [&str; 4] = [
    "## Compatibility",
    "## Benchmarks",
    "## Performance",
    "## Recovery through a real middlebox",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The text of `heading`'s section (up to the next `## ` heading).
fn section<'a>(readme: &'a str, heading: &str) -> &'a str {
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let body = &readme[start + heading.len() + 2..];
    let end = body.find("\n## ").unwrap_or(body.len());
    &body[..end]
}

/// The measured figures of `text`: decimal numbers, and integers followed
/// by a time unit or `B per`, with what precedes them (to skip goals).
fn figures(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts_number = bytes[i].is_ascii_digit()
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.'));
        if !starts_number {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < bytes.len() && bytes[j].is_ascii_digit() {
            j += 1;
        }
        let decimal = j + 1 < bytes.len() && bytes[j] == b'.' && bytes[j + 1].is_ascii_digit();
        if decimal {
            j += 1;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
        }
        let number = &text[i..j];
        let rest = text[j..].trim_start_matches(' ');
        let with_unit = ["ns", "us", "ms", "B per"].iter().any(|u| {
            rest.starts_with(u)
                && !rest[u.len()..]
                    .chars()
                    .next()
                    .is_some_and(char::is_alphanumeric)
        });
        let before = text[..i].trim_end_matches(['+', '-', ' ']);
        let goal = ["<=", ">=", "paper:", "goal"]
            .iter()
            .any(|g| before.ends_with(g));
        if (decimal || with_unit) && !goal {
            found.push(number.to_owned());
        }
        i = j;
    }
    found
}

/// `number` appears in `text` as a whole number (not inside a longer one).
fn appears(text: &str, number: &str) -> bool {
    text.match_indices(number).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let mut after = text[at + number.len()..].chars();
        let (next, then) = (after.next(), after.next());
        let inside_longer = before.is_some_and(|c| c.is_ascii_digit() || c == '.')
            || next.is_some_and(|c| c.is_ascii_digit())
            || (next == Some('.') && then.is_some_and(|c| c.is_ascii_digit()));
        !inside_longer
    })
}

#[test]
fn every_figure_in_the_readme_benchmark_sections_is_in_a_results_file() {
    let root = workspace();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let results_dir = root.join("benches/results");
    let mut results = String::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&results_dir).expect("benches/results") {
        let path = entry.expect("entry").path();
        let searched = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("txt" | "csv")
        );
        if searched {
            results += &std::fs::read_to_string(&path).expect("results file");
            results.push('\n');
            files += 1;
        }
    }
    assert!(files > 0, "no results files in {}", results_dir.display());
    let mut missing = Vec::new();
    let mut checked = 0;
    for heading in SECTIONS {
        for number in figures(section(&readme, heading)) {
            checked += 1;
            if !appears(&results, &number) {
                missing.push(format!("{heading}: {number}"));
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} figures found: the extraction broke"
    );
    assert!(
        missing.is_empty(),
        "{} of {checked} README figures appear in no file of benches/results/:\n  {}",
        missing.len(),
        missing.join("\n  ")
    );
}

#[test]
fn figures_are_extracted_and_matched_as_whole_numbers() {
    let text = "ratio 0.993-1.001 (goal <= 1.02), parse 12-19 ns, 180 B per flow, \
                +0.129 ms (paper: +0.46), 5.1 Gbit/s, build 42 steps";
    assert_eq!(
        figures(text),
        ["0.993", "1.001", "19", "180", "0.129", "5.1"],
        "12 has no unit of its own: ranges are written with the unit once"
    );
    assert!(appears("a 0.993 b", "0.993"));
    assert!(!appears("a 10.993 b", "0.993"));
    assert!(!appears("a 0.9931 b", "0.993"));
    assert!(!appears("a 5.12 b", "5.1"));
    assert!(appears("5.1,", "5.1"));
}
