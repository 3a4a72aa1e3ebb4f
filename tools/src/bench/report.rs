//! `tiflow bench report`: the README's performance tables, generated from
//! the committed results files (issue 14), never written by hand.
//!
//! Owns the parsing of the results files (`criterion.txt`, the reports of
//! `tiflow bench`, the summary CSVs), the goals and their verdicts, the
//! tables as markdown, and the README's generated regions: the text between
//! `<!-- bench-report:NAME:begin -->` and `<!-- bench-report:NAME:end -->`.
//! Everything but [`run`] is a pure function of strings. Figures are copied
//! as the files write them (same digits), so every number in a generated
//! table appears in a results file.
//!
//! Intervals: a median's 95% interval needs at least 9 samples; below that
//! a figure is labelled as a range (the summaries' interval then is the
//! range). Ratios carry the reports' bootstrap interval. A goal is "met"
//! when the whole interval meets it, "met (medians)" when only the median
//! does, and "MISSED" otherwise.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::BenchError;

/// Fewest samples for a 95% interval of a median; below, a range.
pub const MIN_CI_SAMPLES: usize = 9;

/// A goal a figure must meet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// The figure must be at most this.
    AtMost(f64),
    /// The figure must be at least this.
    AtLeast(f64),
}

/// A goal: its wording and its bound.
#[derive(Debug, Clone, Copy)]
pub struct Goal {
    /// As the table shows it.
    pub text: &'static str,
    /// What meets it.
    pub bound: Bound,
}

/// Connect time, TI / legacy, at every RTT.
pub const CONNECT_GOAL: Goal = Goal {
    text: "<= 1.02",
    bound: Bound::AtMost(1.02),
};
/// The resume handshake (SYN to ACK) minus one RTT, in ms.
pub const RECONNECT_GOAL: Goal = Goal {
    text: "<= 0.2 ms (paper: +0.46)",
    bound: Bound::AtMost(0.2),
};
/// Bulk over TUN, TI on / off.
pub const BULK_TI_GOAL: Goal = Goal {
    text: ">= 0.98",
    bound: Bound::AtLeast(0.98),
};
/// Bulk over TUN, our stack / plain smoltcp.
pub const BULK_STACK_GOAL: Goal = Goal {
    text: ">= 0.95",
    bound: Bound::AtLeast(0.95),
};

impl Bound {
    fn meets(self, v: f64) -> bool {
        match self {
            Bound::AtMost(b) => v <= b,
            Bound::AtLeast(b) => v >= b,
        }
    }
}

/// "met" when every interval meets the bound, "met (medians)" when every
/// median does, "MISSED" otherwise (also with no figures).
pub fn verdict(bound: Bound, figures: &[Interval]) -> &'static str {
    if figures.is_empty() {
        "MISSED"
    } else if figures
        .iter()
        .all(|f| bound.meets(f.low.v) && bound.meets(f.high.v))
    {
        "met"
    } else if figures.iter().all(|f| bound.meets(f.median.v)) {
        "met (medians)"
    } else {
        "MISSED"
    }
}

/// A number as a results file writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Num {
    /// The text, as written.
    pub text: String,
    /// Its value.
    pub v: f64,
}

impl Num {
    fn parse(text: &str) -> Option<Num> {
        let v: f64 = text.trim_start_matches('+').parse().ok()?;
        v.is_finite().then(|| Num {
            text: text.to_owned(),
            v,
        })
    }
}

/// A median with its interval, as a report writes it: `m [lo, hi]`, or
/// `m (range lo-hi)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    /// The median (or ratio of medians).
    pub median: Num,
    /// Lower end.
    pub low: Num,
    /// Upper end.
    pub high: Num,
    /// Written as a range.
    pub range: bool,
}

impl Interval {
    /// `m [lo, hi]` with `n >= 9`, else `m (range lo-hi)`.
    fn median_cell(&self, n: usize) -> String {
        if n >= MIN_CI_SAMPLES && !self.range {
            format!(
                "{} [{}, {}]",
                self.median.text, self.low.text, self.high.text
            )
        } else {
            format!(
                "{} (range {}-{}, n = {n})",
                self.median.text, self.low.text, self.high.text
            )
        }
    }

    /// A ratio of medians: its bootstrap interval with `n >= 9` samples on
    /// each side, else labelled as indicative.
    fn ratio_cell(&self, n: usize) -> String {
        if n >= MIN_CI_SAMPLES {
            format!(
                "{} [{}, {}]",
                self.median.text, self.low.text, self.high.text
            )
        } else {
            format!(
                "{} (bootstrap {}-{}, n = {n} < {MIN_CI_SAMPLES}: not a 95% CI)",
                self.median.text, self.low.text, self.high.text
            )
        }
    }

    /// The interval shifted by `-by` (values only, for verdicts).
    fn minus(&self, by: f64) -> Interval {
        let shift = |n: &Num| Num {
            text: format!("{:+.3}", n.v - by),
            v: n.v - by,
        };
        Interval {
            median: shift(&self.median),
            low: shift(&self.low),
            high: shift(&self.high),
            range: self.range,
        }
    }
}

/// One cell of a report's row.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A number.
    Num(Num),
    /// A median and its interval.
    Interval(Interval),
    /// Anything else.
    Word(String),
}

/// The cells of a report line: numbers, `m [lo, hi]`, `m (range lo-hi)`
/// and words, split on whitespace.
pub fn items(line: &str) -> Vec<Item> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let tok = tokens[i];
        let bracket = tokens.get(i + 1).zip(tokens.get(i + 2)).and_then(|(a, b)| {
            let lo = a.strip_prefix('[')?.strip_suffix(',')?;
            let hi = b.strip_suffix(']')?;
            Some((lo, hi))
        });
        let range = tokens.get(i + 1).zip(tokens.get(i + 2)).and_then(|(a, b)| {
            (*a == "(range").then_some(())?;
            b.strip_suffix(')')?.split_once('-')
        });
        let interval = |lo: &str, hi: &str, range: bool| {
            Some(Interval {
                median: Num::parse(tok)?,
                low: Num::parse(lo)?,
                high: Num::parse(hi)?,
                range,
            })
        };
        if let Some(iv) = bracket.and_then(|(lo, hi)| interval(lo, hi, false)) {
            out.push(Item::Interval(iv));
            i += 3;
        } else if let Some(iv) = range.and_then(|(lo, hi)| interval(lo, hi, true)) {
            out.push(Item::Interval(iv));
            i += 3;
        } else if let Some(n) = Num::parse(tok) {
            out.push(Item::Num(n));
            i += 1;
        } else {
            out.push(Item::Word(tok.to_owned()));
            i += 1;
        }
    }
    out
}

fn intervals(items: &[Item]) -> Vec<Interval> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Interval(iv) => Some(iv.clone()),
            _ => None,
        })
        .collect()
}

fn nums(items: &[Item]) -> Vec<Num> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Num(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

/// The lines of the section of `text` whose first line starts with
/// `header`, up to the next blank line; trailing spaces removed.
pub fn section<'a>(text: &'a str, header: &str) -> Result<Vec<&'a str>, String> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with(header));
    let first = lines
        .next()
        .ok_or_else(|| format!("no section starting {header:?}"))?;
    let mut out = vec![first.trim_end()];
    out.extend(
        lines
            .take_while(|l| !l.trim().is_empty())
            .map(str::trim_end),
    );
    Ok(out)
}

/// The text of every results file the tables come from.
#[derive(Debug, Clone, Default)]
pub struct ResultsFiles {
    /// `criterion.txt`.
    pub criterion: String,
    /// `all-report.txt` (connect, bulk).
    pub all_report: String,
    /// `reconnect-report.txt`.
    pub reconnect_report: String,
    /// `connect-summary.csv`.
    pub connect_summary: String,
    /// `reconnect-summary.csv`.
    pub reconnect_summary: String,
    /// `bulk-summary.csv`.
    pub bulk_summary: String,
    /// `tuning-report.txt`.
    pub tuning_report: String,
    /// `recovery-report.txt`.
    pub recovery_report: String,
    /// `recovery-summary.csv`.
    pub recovery_summary: String,
    /// `scale-report.txt`.
    pub scale_report: String,
    /// `scale-before-cells-report.txt` (the same benchmark before the
    /// connection cells and the timer table).
    pub scale_before_report: String,
    /// `up-scale-report.txt`, when measured (optional).
    pub up_scale_report: Option<String>,
    /// `up-scale-before-async.txt`: the same benchmark with the
    /// thread-per-connection relay (optional).
    pub up_scale_before_report: Option<String>,
    /// `forward-report.txt`: the forward path through a `tiflow up` pair
    /// (optional).
    pub forward_report: Option<String>,
    /// `connect-ipv6-report.txt`: `bench connect --ipv6` (optional).
    pub connect_ipv6_report: Option<String>,
    /// `reconnect-ipv6-report.txt`: `bench reconnect --ipv6` (optional).
    pub reconnect_ipv6_report: Option<String>,
}

impl ResultsFiles {
    /// The file names, in the order of the fields.
    pub const NAMES: [&'static str; 11] = [
        "criterion.txt",
        "all-report.txt",
        "reconnect-report.txt",
        "connect-summary.csv",
        "reconnect-summary.csv",
        "bulk-summary.csv",
        "tuning-report.txt",
        "recovery-report.txt",
        "recovery-summary.csv",
        "scale-report.txt",
        "scale-before-cells-report.txt",
    ];

    /// The optional files, in the order of the fields.
    pub const OPTIONAL_NAMES: [&'static str; 5] = [
        "up-scale-report.txt",
        "up-scale-before-async.txt",
        "forward-report.txt",
        "connect-ipv6-report.txt",
        "reconnect-ipv6-report.txt",
    ];

    /// Reads them from `dir` (an optional file that does not exist is
    /// `None`).
    pub fn read(dir: &Path) -> Result<ResultsFiles, BenchError> {
        let optional = |name: &str| {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(Some(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(BenchError::io(format!("read {}", path.display()), e)),
            }
        };
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .map_err(|e| BenchError::io(format!("read {}", path.display()), e))
        };
        Ok(ResultsFiles {
            criterion: read(Self::NAMES[0])?,
            all_report: read(Self::NAMES[1])?,
            reconnect_report: read(Self::NAMES[2])?,
            connect_summary: read(Self::NAMES[3])?,
            reconnect_summary: read(Self::NAMES[4])?,
            bulk_summary: read(Self::NAMES[5])?,
            tuning_report: read(Self::NAMES[6])?,
            recovery_report: read(Self::NAMES[7])?,
            recovery_summary: read(Self::NAMES[8])?,
            scale_report: read(Self::NAMES[9])?,
            scale_before_report: read(Self::NAMES[10])?,
            up_scale_report: optional(Self::OPTIONAL_NAMES[0])?,
            up_scale_before_report: optional(Self::OPTIONAL_NAMES[1])?,
            forward_report: optional(Self::OPTIONAL_NAMES[2])?,
            connect_ipv6_report: optional(Self::OPTIONAL_NAMES[3])?,
            reconnect_ipv6_report: optional(Self::OPTIONAL_NAMES[4])?,
        })
    }
}

/// The `command:` line of a results file.
fn command_of(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("command: "))
        .map(str::trim)
}

/// Fewest samples of any row of a summary CSV (column `n`) whose first
/// column is `key` (any row when `key` is `None`).
fn min_n(csv: &str, key: Option<&str>) -> Result<usize, String> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == "n")
        .ok_or("a summary CSV has no column n")?;
    lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|row| key.is_none_or(|k| row.first() == Some(&k)))
        .map(|row| {
            row.get(col)
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| format!("bad n in summary row {row:?}"))
        })
        .try_fold(None, |acc: Option<usize>, n| {
            n.map(|n| Some(acc.map_or(n, |a| a.min(n))))
        })?
        .ok_or_else(|| format!("no summary rows for {key:?}"))
}

/// One generated README region.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// Its marker name.
    pub name: &'static str,
    /// Its text (whole lines, ending in a newline).
    pub text: String,
}

/// Every region, from the files.
pub fn generate(files: &ResultsFiles) -> Result<Vec<Region>, String> {
    Ok(vec![
        Region {
            name: "criterion",
            text: criterion_table(&files.criterion)?,
        },
        Region {
            name: "performance",
            text: performance_table(files)?,
        },
        Region {
            name: "tuning",
            text: tuning_table(&files.tuning_report)?,
        },
        Region {
            name: "performance-reports",
            text: performance_reports(files)?,
        },
        Region {
            name: "recovery",
            text: {
                recovery_intervals_honest(&files.recovery_summary)?;
                recovery_blocks(&files.recovery_report)?
            },
        },
        Region {
            name: "recovery-targets",
            text: code_block(&section(&files.recovery_report, "== targets")?),
        },
        Region {
            name: "scale",
            text: scale_blocks(&files.scale_report, &files.scale_before_report)?,
        },
        Region {
            name: "up-scale",
            text: up_scale_blocks(
                files.up_scale_report.as_deref(),
                files.up_scale_before_report.as_deref(),
            )?,
        },
        Region {
            name: "forward",
            text: forward_blocks(files.forward_report.as_deref())?,
        },
        Region {
            name: "ipv6",
            text: ipv6_blocks(
                files.connect_ipv6_report.as_deref(),
                files.reconnect_ipv6_report.as_deref(),
            )?,
        },
    ])
}

/// Connect and reconnect over IPv6: each file's table as written, with its
/// command.
pub fn ipv6_blocks(connect: Option<&str>, reconnect: Option<&str>) -> Result<String, String> {
    let mut s = String::new();
    for (file, text, heading) in [
        ("connect-ipv6-report.txt", connect, "== connect"),
        ("reconnect-ipv6-report.txt", reconnect, "== reconnect"),
    ] {
        let Some(text) = text else {
            let _ = writeln!(s, "Not measured (`benches/results/{file}` is absent).\n");
            continue;
        };
        let command = command_of(text).ok_or_else(|| format!("{file} has no command: line"))?;
        let _ = writeln!(s, "`benches/results/{file}` (`{command}`):\n");
        s += &code_block(&section(text, heading)?);
        s.push('\n');
    }
    Ok(s)
}

/// The forward-path benchmark's table and goals, as written in its file.
pub fn forward_blocks(report: Option<&str>) -> Result<String, String> {
    let Some(text) = report else {
        return Ok("Not measured (`benches/results/forward-report.txt` is absent).\n".into());
    };
    let command = command_of(text).ok_or("forward-report.txt has no command: line")?;
    let mut lines = section(text, "== forward")?;
    lines.push("");
    lines.extend(section(text, "ping-pong")?);
    lines.push("");
    lines.extend(section(text, "split request")?);
    lines.push("");
    lines.extend(section(text, "== reference")?);
    lines.push("");
    lines.extend(section(text, "goals")?);
    lines.push("");
    lines.extend(section(text, "failures detected")?);
    Ok(format!(
        "`benches/results/forward-report.txt` (`{command}`):\n\n{}",
        code_block(&lines)
    ))
}

/// The `tiflow up` scale benchmark: per file (the current run, then the
/// run before the async relay), a table of its targets with a verdict per
/// run, each run labelled as a single run, and its measurement table as
/// written.
pub fn up_scale_blocks(after: Option<&str>, before: Option<&str>) -> Result<String, String> {
    let mut s = String::new();
    for (file, text, what) in [
        ("up-scale-report.txt", after, "Now"),
        (
            "up-scale-before-async.txt",
            before,
            "Before the async relay (a thread per connection)",
        ),
    ] {
        let Some(text) = text else {
            let _ = writeln!(
                s,
                "{what}: not measured (`benches/results/{file}` is absent).\n"
            );
            continue;
        };
        let command = command_of(text).ok_or_else(|| format!("{file} has no command: line"))?;
        let _ = writeln!(
            s,
            "{what}, `benches/results/{file}` (`{command}`), each row a single run:\n"
        );
        s += &up_scale_targets(file, &section(text, "== targets")?)?;
        s.push('\n');
        s += &code_block(&section(text, "== up-scale")?);
        s.push('\n');
    }
    s.pop();
    Ok(s)
}

/// The targets section (`RUN | GOAL | FIGURE | VERDICT` lines) as a
/// markdown table; every run must say it is a single run.
fn up_scale_targets(file: &str, lines: &[&str]) -> Result<String, String> {
    let mut t = String::from("| Run | Goal | Figure | |\n|---|---|---|---|\n");
    for l in lines.iter().skip(1) {
        let cells: Vec<&str> = l.split(" | ").map(str::trim).collect();
        let [run, goal, figure, verdict] = cells[..] else {
            return Err(format!("{file}: bad target line {l:?}"));
        };
        if !run.contains("single run") {
            return Err(format!("{file}: {run:?} is not labelled as a single run"));
        }
        if !matches!(verdict, "met" | "MISSED") {
            return Err(format!("{file}: bad verdict in {l:?}"));
        }
        let _ = writeln!(t, "| {run} | {goal} | {figure} | {verdict} |");
    }
    if lines.len() < 2 {
        return Err(format!("{file}: no targets"));
    }
    Ok(t)
}

/// The scale benchmark's tables, after and before the connection cells,
/// with the goal's verdicts, as written in the files.
pub fn scale_blocks(after: &str, before: &str) -> Result<String, String> {
    let mut lines = section(after, "== scale")?;
    lines.push("");
    lines.extend(section(after, "goal:")?);
    let mut s = format!(
        "`benches/results/scale-report.txt` (`{}`):\n\n",
        command_of(after).ok_or("scale-report.txt has no command: line")?
    );
    s += &code_block(&lines);
    s += &format!(
        "\nBefore the connection cells, `benches/results/scale-before-cells-report.txt` (`{}`):\n\n",
        command_of(before).ok_or("scale-before-cells-report.txt has no command: line")?
    );
    s += &code_block(&section(before, "== scale")?);
    Ok(s)
}

fn code_block(lines: &[&str]) -> String {
    let mut s = String::from("```\n");
    for l in lines {
        s += l;
        s.push('\n');
    }
    s += "```\n";
    s
}

// ---- Benchmarks: criterion.txt ----

/// The criterion rows of the Benchmarks table: what, and the benchmark id.
const CRITERION_ROWS: [(&str, &str); 16] = [
    (
        "option: parse from a 40-byte Linux SYN option list",
        "option/parse_linux_syn_40B",
    ),
    ("option: emit into it", "option/emit_into_linux_syn"),
    (
        "FlowTable of 1M flows: lookup hit, scattered",
        "flow_table_1M/lookup_hit_scattered",
    ),
    (
        "FlowTable of 1M flows: lookup hit, 1024 hot flows",
        "flow_table_1M/lookup_hit_hot_1024",
    ),
    (
        "FlowTable of 1M flows: lookup miss",
        "flow_table_1M/lookup_miss",
    ),
    (
        "segment: parse a 1500-byte data segment",
        "segment/parse_1500B_data",
    ),
    (
        "segment: add the flow option to a SYN",
        "segment/add_flow_option_syn",
    ),
    (
        "egress of a 1448-byte segment: bare device",
        "egress_1448/bare_device",
    ),
    (
        "egress of a 1448-byte segment: boundary, no rule",
        "egress_1448/boundary_no_rule",
    ),
    (
        "egress of a 1448-byte segment: rule for another tuple",
        "egress_1448/boundary_rule_other_tuple",
    ),
    (
        "egress of a 1448-byte segment: rule hit (SYN)",
        "egress_1448/boundary_rule_hit_syn",
    ),
    (
        "ingress of a 1448-byte segment: bare device",
        "ingress_1448/bare_device",
    ),
    (
        "ingress of a 1448-byte segment: inspect and deliver",
        "ingress_1448/boundary_inspect_deliver",
    ),
    ("handshake CPU (simulation): TI", "handshake/ti"),
    ("handshake CPU (simulation): legacy", "handshake/legacy"),
    (
        "handshake CPU (simulation): plain smoltcp",
        "handshake/plain_smoltcp",
    ),
];

/// Criterion groups with `sample_size(10)` in `benches/benches/*.rs`; the
/// others keep criterion's default of 100.
const TEN_SAMPLE_GROUPS: [&str; 1] = ["bulk_16MiB"];

/// A criterion result: `time: [lo est hi]`, each with its unit, and its
/// sample count.
#[derive(Debug, Clone, PartialEq)]
pub struct CriterionTime {
    /// Low end, estimate, high end: (number, unit).
    pub values: [(String, String); 3],
    /// Samples.
    pub samples: usize,
}

/// Finds benchmark `id` in criterion's output: its `time:` line and its
/// sample count (`among M measurements` when criterion printed outliers,
/// else the group's configured count).
pub fn criterion_time(text: &str, id: &str) -> Result<CriterionTime, String> {
    let lines: Vec<&str> = text.lines().collect();
    let starts = |l: &str| {
        l.strip_prefix(id)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
    };
    let found: Vec<usize> = (0..lines.len()).filter(|&i| starts(lines[i])).collect();
    let &[at] = found.as_slice() else {
        return Err(format!(
            "criterion.txt: benchmark {id} found {} times",
            found.len()
        ));
    };
    let time_line = lines[at..]
        .iter()
        .take(2)
        .find_map(|l| l.split_once("time:").map(|(_, t)| t))
        .ok_or_else(|| format!("criterion.txt: no time for {id}"))?;
    let inner = time_line
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| format!("criterion.txt: bad time line for {id}: {time_line:?}"))?;
    let t: Vec<&str> = inner.split_whitespace().collect();
    let [a, au, b, bu, c, cu] = t.as_slice() else {
        return Err(format!("criterion.txt: bad time for {id}: {inner:?}"));
    };
    let group = id.split('/').next().unwrap_or(id);
    let configured = if TEN_SAMPLE_GROUPS.contains(&group) {
        10
    } else {
        100
    };
    // The entry's own lines, up to the next benchmark (a line that does not
    // start with whitespace and is no outlier summary).
    let printed = lines[at + 1..]
        .iter()
        .take_while(|l| {
            l.starts_with(char::is_whitespace) || l.starts_with("Found ") || l.is_empty()
        })
        .find_map(|l| {
            l.split_once(" among ")
                .and_then(|(_, r)| r.split_whitespace().next())
                .and_then(|m| m.parse::<usize>().ok())
        });
    if let Some(m) = printed
        && m != configured
    {
        return Err(format!(
            "criterion.txt: {id} ran {m} samples, the report expects {configured}"
        ));
    }
    let pair = |n: &str, u: &str| (n.to_string(), u.to_string());
    Ok(CriterionTime {
        values: [pair(a, au), pair(b, bu), pair(c, cu)],
        samples: configured,
    })
}

/// The value after `key = ` on the line starting with `prefix`.
fn keyed(text: &str, prefix: &str, key: &str) -> Result<String, String> {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .ok_or_else(|| format!("criterion.txt: no line starting {prefix:?}"))?;
    let pat = format!("{key} = ");
    let at = line
        .find(&pat)
        .ok_or_else(|| format!("criterion.txt: no {key:?} in {line:?}"))?;
    let rest = &line[at + pat.len()..];
    let end = rest.find([',', ' ']).unwrap_or(rest.len());
    Num::parse(&rest[..end])
        .map(|n| n.text)
        .ok_or_else(|| format!("criterion.txt: bad {key:?} in {line:?}"))
}

/// The number before ` bytes/flow` on the line starting with `prefix`.
fn per_flow(text: &str, prefix: &str) -> Result<String, String> {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .ok_or_else(|| format!("criterion.txt: no line starting {prefix:?}"))?;
    let before = line
        .split(" bytes/flow")
        .next()
        .and_then(|b| b.split_whitespace().next_back())
        .and_then(Num::parse)
        .ok_or_else(|| format!("criterion.txt: no bytes/flow in {line:?}"))?;
    Ok(before.text)
}

/// The Benchmarks table.
pub fn criterion_table(text: &str) -> Result<String, String> {
    let command = command_of(text).ok_or("criterion.txt has no command: line")?;
    let mut t = format!(
        "From `benches/results/criterion.txt` (`{command}`): criterion's estimate \
         [its 95% confidence interval], with the samples it took.\n\n\
         | Figure | Estimate [95% CI] | Samples |\n|---|---|---|\n"
    );
    for (what, id) in CRITERION_ROWS {
        let c = criterion_time(text, id)?;
        let [(a, au), (b, bu), (cc, cu)] = &c.values;
        let cell = if au == bu && bu == cu {
            format!("{b} {bu} [{a}, {cc}]")
        } else {
            format!("{b} {bu} [{a} {au}, {cc} {cu}]")
        };
        let cell = if c.samples >= MIN_CI_SAMPLES {
            cell
        } else {
            format!("{cell}, n < {MIN_CI_SAMPLES}: a range, not a 95% CI")
        };
        let _ = writeln!(t, "| {what} (`{id}`) | {cell} | {} |", c.samples);
    }
    let _ = writeln!(
        t,
        "| FlowTable of 1M detached flows: allocated per flow (RSS growth) | {} bytes ({}) | one run |",
        per_flow(text, "FlowTable: 1000000")?,
        per_flow(text, "FlowTable: RSS")?
    );
    let _ = writeln!(
        t,
        "| in-memory bulk 16 MiB through the boundary, time TI / legacy | {} | ratio of the means of 10 samples each, no interval |",
        keyed(text, "bulk_16MiB: TI", "TI/legacy")?
    );
    let _ = writeln!(
        t,
        "| in-memory bulk 16 MiB, throughput: our stack TI on / plain smoltcp; TI off / plain smoltcp; TI on / off | {}; {}; {} | ratios of the means of 10 samples each, no interval |",
        keyed(text, "bulk_16MiB mean wall time", "stack(TI)/plain")?,
        keyed(text, "bulk_16MiB mean wall time", "stack(legacy)/plain")?,
        keyed(text, "bulk_16MiB mean wall time", "TI/legacy")?
    );
    Ok(t)
}

// ---- Performance: the reports of `tiflow bench` ----

/// A connect row: RTT, then legacy app, TI app, TI/legacy app, TI/legacy
/// SYN->ACK, TI/legacy vs Linux.
fn connect_rows(report: &str) -> Result<Vec<(Num, Vec<Interval>)>, String> {
    let lines = section(report, "== connect")?;
    let mut rows = Vec::new();
    for l in lines.iter().skip(2) {
        let it = items(l);
        let (n, iv) = (nums(&it), intervals(&it));
        match (n.first(), iv.len()) {
            (Some(rtt), 5) => rows.push((rtt.clone(), iv)),
            _ => return Err(format!("all-report.txt: bad connect row {l:?}")),
        }
    }
    Ok(rows)
}

/// A reconnect row: RTT, TI - RTT, TI - legacy; legacy SYN->ACK, TI
/// SYN->ACK, TI downtime, legacy app, TI app.
struct ReconnectRow {
    rtt: Num,
    minus_rtt: Num,
    minus_legacy: Num,
    ti_syn_ack: Interval,
    legacy_app: Interval,
    ti_app: Interval,
}

fn reconnect_rows(report: &str) -> Result<Vec<ReconnectRow>, String> {
    let lines = section(report, "== reconnect")?;
    let mut rows = Vec::new();
    for l in lines.iter().skip(2) {
        let it = items(l);
        let (n, iv) = (nums(&it), intervals(&it));
        let ([rtt, minus_rtt, minus_legacy], [_, ti, _, la, ta]) = (n.as_slice(), iv.as_slice())
        else {
            return Err(format!("reconnect-report.txt: bad row {l:?}"));
        };
        rows.push(ReconnectRow {
            rtt: rtt.clone(),
            minus_rtt: minus_rtt.clone(),
            minus_legacy: minus_legacy.clone(),
            ti_syn_ack: ti.clone(),
            legacy_app: la.clone(),
            ti_app: ta.clone(),
        });
    }
    Ok(rows)
}

/// The bulk ratio lines: (what, direction, ratio).
fn bulk_ratios(report: &str) -> Result<Vec<(String, String, Interval)>, String> {
    let lines = section(report, "== bulk")?;
    let mut out = Vec::new();
    let mut in_ratios = false;
    for l in lines {
        if l.starts_with("ratios of medians") {
            in_ratios = true;
            continue;
        }
        if !in_ratios {
            continue;
        }
        let it = items(l);
        let Some((Item::Interval(iv), rest)) = it.split_last() else {
            return Err(format!("all-report.txt: bad bulk ratio {l:?}"));
        };
        let Some((Item::Word(dir), label)) = rest.split_last() else {
            return Err(format!("all-report.txt: bad bulk ratio {l:?}"));
        };
        let words: Vec<String> = label
            .iter()
            .map(|i| match i {
                Item::Word(w) => w.clone(),
                Item::Num(n) => n.text.clone(),
                Item::Interval(i) => i.median.text.clone(),
            })
            .collect();
        out.push((words.join(" "), dir.clone(), iv.clone()));
    }
    Ok(out)
}

/// The performance table: figures, goals, verdicts.
pub fn performance_table(files: &ResultsFiles) -> Result<String, String> {
    let all_cmd = command_of(&files.all_report).ok_or("all-report.txt has no command: line")?;
    let re_cmd =
        command_of(&files.reconnect_report).ok_or("reconnect-report.txt has no command: line")?;
    let mut t = format!(
        "Connect and bulk from `benches/results/all-report.txt` (`{all_cmd}`), reconnect \
         from `benches/results/reconnect-report.txt` (`{re_cmd}`); latency tuning off. \
         A goal is met when the whole interval meets it, \"met (medians)\" when only the \
         median does.\n\n\
         | Figure | Result: median [95% CI]; ratios [bootstrap 95% CI] | Goal | |\n|---|---|---|---|\n"
    );
    let connect_n = |rtt: &Num| min_n(&files.connect_summary, Some(&rtt.text));
    for (rtt, iv) in connect_rows(&files.all_report)? {
        let ratio = &iv[2];
        let _ = writeln!(
            t,
            "| connect time TI / legacy, RTT {} ms | {} | {} | {} |",
            rtt.text,
            ratio.ratio_cell(connect_n(&rtt)?),
            CONNECT_GOAL.text,
            verdict(CONNECT_GOAL.bound, std::slice::from_ref(ratio))
        );
    }
    let rows = reconnect_rows(&files.reconnect_report)?;
    for r in &rows {
        let n = min_n(&files.reconnect_summary, Some(&r.rtt.text))?;
        let shifted = r.ti_syn_ack.minus(r.rtt.v);
        let _ = writeln!(
            t,
            "| reconnect (SYN to ACK) minus 1 RTT, RTT {} ms | {} ms (SYN to ACK {} ms) | {} | {} |",
            r.rtt.text,
            r.minus_rtt.text,
            r.ti_syn_ack.median_cell(n),
            RECONNECT_GOAL.text,
            verdict(RECONNECT_GOAL.bound, &[shifted])
        );
    }
    let lowest = rows
        .iter()
        .map(|r| &r.minus_legacy)
        .min_by(|a, b| a.v.total_cmp(&b.v))
        .ok_or("reconnect-report.txt: no rows")?;
    let highest = rows
        .iter()
        .map(|r| &r.minus_legacy)
        .max_by(|a, b| a.v.total_cmp(&b.v))
        .ok_or("reconnect-report.txt: no rows")?;
    let (first, last) = (&rows[0].rtt.text, &rows[rows.len() - 1].rtt.text);
    let _ = writeln!(
        t,
        "| reconnect minus a legacy connect (same stacks, medians), RTT {first} to {last} ms | {} to {} ms | | |",
        lowest.text, highest.text
    );
    let app: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} ms: {} vs {}",
                r.rtt.text, r.ti_app.median.text, r.legacy_app.median.text
            )
        })
        .collect();
    let _ = writeln!(
        t,
        "| application reconnect, failure to first echoed byte, TI vs a legacy app reconnecting (medians, ms), per RTT | {} | | |",
        app.join("; ")
    );
    let bulk_n = min_n(&files.bulk_summary, None)?;
    let ratios = bulk_ratios(&files.all_report)?;
    for (label, what, goal) in [
        (
            "TI on / TI off, Linux peer",
            "bulk over TUN, TI on / off (our stack, Linux peer)",
            BULK_TI_GOAL,
        ),
        (
            "our stack / plain smoltcp (TI off)",
            "bulk over TUN, our stack (TI off) / plain smoltcp",
            BULK_STACK_GOAL,
        ),
        (
            "our stack / plain smoltcp (TI on, legacy peer)",
            "bulk over TUN, our stack (TI on, legacy peer) / plain smoltcp",
            BULK_STACK_GOAL,
        ),
    ] {
        let found: Vec<&(String, String, Interval)> =
            ratios.iter().filter(|(l, _, _)| l == label).collect();
        if found.is_empty() {
            return Err(format!("all-report.txt: no bulk ratio {label:?}"));
        }
        let cells: Vec<String> = found
            .iter()
            .map(|(_, dir, iv)| format!("{dir} {}", iv.ratio_cell(bulk_n)))
            .collect();
        let figures: Vec<Interval> = found.iter().map(|(_, _, iv)| iv.clone()).collect();
        let _ = writeln!(
            t,
            "| {what}, {bulk_n} transfers a mode | {} | {} | {} |",
            cells.join(", "),
            goal.text,
            verdict(goal.bound, &figures)
        );
    }
    Ok(t)
}

/// The reports' connect, reconnect and bulk sections, as written.
pub fn performance_reports(files: &ResultsFiles) -> Result<String, String> {
    Ok([
        code_block(&section(&files.all_report, "== connect")?),
        code_block(&section(&files.reconnect_report, "== reconnect")?),
        code_block(&section(&files.all_report, "== bulk")?),
    ]
    .join("\n"))
}

// ---- Latency tuning: tuning-report.txt ----

/// The tuning table: per RTT, off, on and on/off for each metric, and the
/// reconnect goal for each setting.
pub fn tuning_table(report: &str) -> Result<String, String> {
    let command = command_of(report).ok_or("tuning-report.txt has no command: line")?;
    let lines = section(report, "== latency tuning")?;
    let mut t = format!(
        "From `benches/results/tuning-report.txt` (`{command}`): TI stacks with latency \
         tuning off and on, interleaved sample by sample in the same run; median [95% CI] \
         per setting, on / off as a ratio of medians [bootstrap 95% CI].\n\n\
         | RTT | Figure | Tuning off | Tuning on | On / off | Goal | |\n|---|---|---|---|---|---|---|\n"
    );
    let mut resume: Option<(Interval, Interval)> = None;
    for l in lines.iter().skip(2) {
        let it = items(l);
        let (Some(Item::Num(rtt)), Some(Item::Word(metric)), Some(Item::Num(n))) =
            (it.first(), it.get(1), it.get(2))
        else {
            return Err(format!("tuning-report.txt: bad row {l:?}"));
        };
        let n = n.v as usize;
        let rest = &it[3..];
        match (metric.as_str(), rest) {
            ("resume-rtt", [Item::Num(off), Item::Num(on), ..]) => {
                let (roff, ron) = resume
                    .take()
                    .ok_or_else(|| format!("tuning-report.txt: {l:?} before its resume row"))?;
                let verdict_of = |iv: &Interval| {
                    verdict(RECONNECT_GOAL.bound, std::slice::from_ref(&iv.minus(rtt.v)))
                };
                let _ = writeln!(
                    t,
                    "| {} ms | resume SYN to ACK minus 1 RTT (medians) | {} ms | {} ms | | {} | off: {}; on: {} |",
                    rtt.text,
                    off.text,
                    on.text,
                    RECONNECT_GOAL.text,
                    verdict_of(&roff),
                    verdict_of(&ron)
                );
            }
            (
                _,
                [
                    Item::Interval(off),
                    Item::Interval(on),
                    Item::Interval(ratio),
                ],
            ) => {
                let what = match metric.as_str() {
                    "connect" => "TI connect, connect to the server's close",
                    "resume" => "TI resume, SYN to ACK (`Resumed { downtime }`)",
                    "reconnect-app" => "application reconnect, failure to first echoed byte",
                    other => return Err(format!("tuning-report.txt: unknown metric {other}")),
                };
                if metric == "resume" {
                    resume = Some((off.clone(), on.clone()));
                }
                let _ = writeln!(
                    t,
                    "| {} ms | {what} | {} | {} | {} | | |",
                    rtt.text,
                    off.median_cell(n),
                    on.median_cell(n),
                    ratio.ratio_cell(n)
                );
            }
            _ => return Err(format!("tuning-report.txt: bad row {l:?}")),
        }
    }
    Ok(t)
}

// ---- Recovery: recovery-report.txt ----

/// The scenario table and the no-fault table, as the report writes them.
pub fn recovery_blocks(report: &str) -> Result<String, String> {
    let command = command_of(report).ok_or("recovery-report.txt has no command: line")?;
    Ok(format!(
        "From `benches/results/recovery-report.txt` (`{command}`):\n\n{}\n{}",
        code_block(&section(report, "== recovery")?),
        code_block(&section(report, "run flows")?)
    ))
}

/// Every row of `recovery-summary.csv` with fewer than 9 samples is a
/// range (column `interval`), never a 95% interval.
pub fn recovery_intervals_honest(csv: &str) -> Result<(), String> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| format!("recovery-summary.csv has no column {name}"))
    };
    let (n_col, interval_col) = (col("n")?, col("interval")?);
    for line in lines.filter(|l| !l.is_empty()) {
        let row: Vec<&str> = line.split(',').collect();
        let n = row.get(n_col).and_then(|v| v.parse::<usize>().ok());
        let interval = row.get(interval_col).copied();
        match (n, interval) {
            (Some(n), Some("ci95")) if n < MIN_CI_SAMPLES => {
                return Err(format!(
                    "recovery-summary.csv: {line:?} calls {n} samples a 95% interval"
                ));
            }
            (Some(_), Some("ci95" | "range")) => {}
            _ => return Err(format!("recovery-summary.csv: bad row {line:?}")),
        }
    }
    Ok(())
}

// ---- README regions ----

fn begin_marker(name: &str) -> String {
    format!("<!-- bench-report:{name}:begin -->")
}

fn end_marker(name: &str) -> String {
    format!("<!-- bench-report:{name}:end -->")
}

/// Where region `name`'s text lies in `readme` (between its marker lines).
fn region_span(readme: &str, name: &str) -> Result<(usize, usize), String> {
    let (begin, end) = (begin_marker(name), end_marker(name));
    let one = |marker: &str| -> Result<usize, String> {
        let mut found = readme.match_indices(marker).map(|(at, _)| at);
        match (found.next(), found.next()) {
            (Some(at), None) => Ok(at),
            (None, _) => Err(format!("README has no {marker}")),
            (Some(_), Some(_)) => Err(format!("README has {marker} more than once")),
        }
    };
    let b = one(&begin)?;
    let e = one(&end)?;
    let start = readme[b..]
        .find('\n')
        .map(|i| b + i + 1)
        .ok_or_else(|| format!("nothing after {begin}"))?;
    if e < start {
        return Err(format!("{end} comes before {begin}"));
    }
    Ok((start, e))
}

/// The README's current text of every region.
pub fn current(readme: &str, regions: &[Region]) -> Result<Vec<String>, String> {
    regions
        .iter()
        .map(|r| region_span(readme, r.name).map(|(s, e)| readme[s..e].to_owned()))
        .collect()
}

/// `readme` with every region's text replaced by the generated one.
pub fn splice(readme: &str, regions: &[Region]) -> Result<String, String> {
    let mut out = readme.to_owned();
    for r in regions {
        let (s, e) = region_span(&out, r.name)?;
        out.replace_range(s..e, &r.text);
    }
    Ok(out)
}

/// `Ok` when every region of `readme` is what the files give; otherwise a
/// diff per differing region (`-` README, `+` results files).
pub fn check(readme: &str, regions: &[Region]) -> Result<(), String> {
    let now = current(readme, regions)?;
    let mut msg = String::new();
    for (r, have) in regions.iter().zip(&now) {
        if *have != r.text {
            let _ = writeln!(
                msg,
                "region {} differs (- README, + generated from the results files):",
                r.name
            );
            msg += &diff(have, &r.text);
        }
    }
    if msg.is_empty() { Ok(()) } else { Err(msg) }
}

/// A line diff: common lines skipped, `- ` lines only in `a`, `+ ` lines
/// only in `b` (longest common subsequence).
pub fn diff(a: &str, b: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "- {}", a[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "+ {}", b[j]);
            j += 1;
        }
    }
    out
}

/// Runs `tiflow bench report`: prints the regions, rewrites them in
/// `readme`, or (`check`) fails when `readme`'s differ.
pub fn run(results: &Path, readme: Option<&Path>, check_only: bool) -> Result<(), BenchError> {
    let files = ResultsFiles::read(results)?;
    let regions = generate(&files).map_err(BenchError::Check)?;
    let readme = match (readme, check_only) {
        (Some(p), _) => p.to_path_buf(),
        (None, true) => PathBuf::from("README.md"),
        (None, false) => {
            for r in &regions {
                println!(
                    "{}\n{}{}\n",
                    begin_marker(r.name),
                    r.text,
                    end_marker(r.name)
                );
            }
            return Ok(());
        }
    };
    let text = std::fs::read_to_string(&readme)
        .map_err(|e| BenchError::io(format!("read {}", readme.display()), e))?;
    if check_only {
        return check(&text, &regions).map_err(|diff| {
            BenchError::Check(format!(
                "{} is not what {} gives; run `tiflow bench report --readme {}`:\n{diff}",
                readme.display(),
                results.display(),
                readme.display()
            ))
        });
    }
    let updated = splice(&text, &regions).map_err(BenchError::Check)?;
    if updated == text {
        println!("{}: {} regions up to date", readme.display(), regions.len());
    } else {
        std::fs::write(&readme, &updated)
            .map_err(|e| BenchError::io(format!("write {}", readme.display()), e))?;
        println!(
            "{}: {} regions regenerated",
            readme.display(),
            regions.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(m: f64, lo: f64, hi: f64) -> Interval {
        let n = |v: f64| Num {
            text: format!("{v}"),
            v,
        };
        Interval {
            median: n(m),
            low: n(lo),
            high: n(hi),
            range: false,
        }
    }

    #[test]
    fn verdicts_need_the_interval_for_met_and_the_median_for_met_medians() {
        let at_most = Bound::AtMost(1.02);
        assert_eq!(verdict(at_most, &[iv(1.0, 0.99, 1.01)]), "met");
        assert_eq!(verdict(at_most, &[iv(1.01, 0.99, 1.03)]), "met (medians)");
        assert_eq!(verdict(at_most, &[iv(1.03, 1.0, 1.05)]), "MISSED");
        let at_least = Bound::AtLeast(0.95);
        assert_eq!(
            verdict(at_least, &[iv(0.99, 0.97, 1.0), iv(0.96, 0.9, 1.0)]),
            "met (medians)"
        );
        assert_eq!(
            verdict(at_least, &[iv(0.99, 0.97, 1.0), iv(0.9, 0.8, 1.0)]),
            "MISSED"
        );
        assert_eq!(verdict(at_least, &[]), "MISSED");
    }

    #[test]
    fn items_split_intervals_ranges_numbers_and_words() {
        let it = items("   1  2.997 [2.974, 3.032]  +0.391 resume 4.1 (range 3.9-4.5) -");
        assert_eq!(it.len(), 6, "{it:?}");
        assert!(matches!(&it[0], Item::Num(n) if n.text == "1"));
        assert!(matches!(&it[1], Item::Interval(i) if i.high.text == "3.032" && !i.range));
        assert!(matches!(&it[2], Item::Num(n) if n.text == "+0.391" && n.v > 0.39));
        assert!(matches!(&it[3], Item::Word(w) if w == "resume"));
        assert!(matches!(&it[4], Item::Interval(i) if i.range && i.low.text == "3.9"));
        assert!(matches!(&it[5], Item::Word(w) if w == "-"));
    }

    #[test]
    fn small_sets_are_labelled_as_ranges() {
        let i = iv(1.0, 0.5, 2.0);
        assert_eq!(i.median_cell(9), "1 [0.5, 2]");
        assert_eq!(i.median_cell(8), "1 (range 0.5-2, n = 8)");
        assert!(i.ratio_cell(5).contains("not a 95% CI"));
    }

    const CRITERION: &str = "command: cargo bench\n\
        segment/parse_1500B_data\n                        time:   [17.563 ns 17.663 ns 17.779 ns]\n\
        Found 13 outliers among 100 measurements (13.00%)\n\
        egress_1448/bare_device time:   [11.854 ns 12.099 ns 12.345 ns]\n\
        bulk_16MiB/ti           time:   [15.450 ms 17.793 ms 20.411 ms]\n\
        bulk_16MiB/x            time:   [999.00 us 1.0 ms 1.1 ms]\n\
        Found 2 outliers among 10 measurements (20.00%)\n";

    #[test]
    fn criterion_entries_with_their_sample_counts() {
        let t = criterion_time(CRITERION, "segment/parse_1500B_data").expect("entry");
        assert_eq!(t.values[1], ("17.663".into(), "ns".into()));
        assert_eq!(t.samples, 100);
        let t = criterion_time(CRITERION, "egress_1448/bare_device").expect("entry");
        assert_eq!(t.values[2].0, "12.345");
        assert_eq!(
            criterion_time(CRITERION, "bulk_16MiB/ti").map(|t| t.samples),
            Ok(10)
        );
        assert!(
            criterion_time(CRITERION, "bulk_16MiB/t").is_err(),
            "no prefix match"
        );
        let wrong = CRITERION.replace("among 100", "among 50");
        assert!(criterion_time(&wrong, "segment/parse_1500B_data").is_err());
    }

    #[test]
    fn splice_check_and_diff() {
        let regions = [Region {
            name: "t",
            text: "| a | 1.5 |\n".into(),
        }];
        let readme =
            "x\n<!-- bench-report:t:begin -->\n| a | 1.4 |\n<!-- bench-report:t:end -->\ny\n";
        let err = check(readme, &regions).expect_err("differs");
        assert!(err.contains("- | a | 1.4 |\n+ | a | 1.5 |"), "{err}");
        let fixed = splice(readme, &regions).expect("splice");
        assert_eq!(
            fixed,
            "x\n<!-- bench-report:t:begin -->\n| a | 1.5 |\n<!-- bench-report:t:end -->\ny\n"
        );
        assert_eq!(check(&fixed, &regions), Ok(()));
        assert!(check("no markers", &regions).is_err());
        assert_eq!(diff("a\nb\nc\n", "a\nc\nd\n"), "- b\n+ d\n");
    }

    #[test]
    fn recovery_rows_below_nine_samples_must_be_ranges() {
        let head =
            "scenario,direction,transport,metric,n,failed,median_ms,low_ms,high_ms,interval\n";
        assert_eq!(
            recovery_intervals_honest(&format!(
                "{head}a,b,ti,x,10,0,1,1,1,ci95\na,b,ti,y,3,0,1,1,1,range\n"
            )),
            Ok(())
        );
        assert!(recovery_intervals_honest(&format!("{head}a,b,ti,x,8,0,1,1,1,ci95\n")).is_err());
    }

    #[test]
    fn min_n_over_rows() {
        let csv = "rtt_ms,mode,metric,n,median_ms\n0,a,x,200,1\n0,b,x,150,1\n1,a,x,5,1\n";
        assert_eq!(min_n(csv, Some("0")), Ok(150));
        assert_eq!(min_n(csv, None), Ok(5));
        assert!(min_n(csv, Some("7")).is_err());
    }

    #[test]
    fn up_scale_targets_become_a_table_of_single_runs() {
        let report = "command: tiflow bench up-scale --connections 5\n\n\
            == up-scale: a pair; each row a single run\n     N run side\n     5   1 client\n\n\
            == targets (issue 12), each line a single run\n\
            N = 5 (single run 1) | all 5 connections work after the idle time | 5 of 5 | met\n\
            N = 5 (single run 1) | RSS <= 64 KiB per connection per side | client 70.5 KiB | MISSED\n\n";
        let text = up_scale_blocks(None, Some(report)).expect("blocks");
        assert!(text.starts_with("Now: not measured"), "{text}");
        assert!(
            text.contains("| N = 5 (single run 1) | RSS <= 64 KiB per connection per side | client 70.5 KiB | MISSED |"),
            "{text}"
        );
        assert!(text.contains("     5   1 client\n```\n"), "{text}");
        let unlabelled = report.replace("(single run 1)", "(median of 3)");
        assert!(up_scale_blocks(Some(&unlabelled), None).is_err());
        let bad_verdict = report.replace("| met", "| fine");
        assert!(up_scale_blocks(Some(&bad_verdict), None).is_err());
    }
}
