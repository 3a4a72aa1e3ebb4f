//! Timestamps at the start of a line: ours by default (seconds since the
//! first record), or one of tcpdump's `-t` choices, in microseconds, UTC.

use std::fmt::Write as _;

const NANOS_PER_SEC: i128 = 1_000_000_000;
const SECS_PER_DAY: i128 = 86_400;

/// Which timestamp starts each line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeFormat {
    /// Seconds since the first record, 6 decimals (`1.234567`): no `-t`.
    #[default]
    SinceFirstSeconds,
    /// No timestamp (`-t`).
    None,
    /// Seconds since the epoch (`-tt`: `1349367980.467968`).
    Unix,
    /// Time since the previous packet (`-ttt`: ` 00:00:00.000361`).
    SincePrevious,
    /// Date and time of day, UTC (`-tttt`: `2012-10-04 16:26:20.467968`).
    Date,
    /// Time since the first packet (`-ttttt`: ` 00:00:01.000361`).
    SinceFirst,
}

impl TimeFormat {
    /// The format of `-t` given `count` times (0: ours).
    pub fn from_t_count(count: u8) -> TimeFormat {
        match count {
            0 => TimeFormat::SinceFirstSeconds,
            1 => TimeFormat::None,
            2 => TimeFormat::Unix,
            3 => TimeFormat::SincePrevious,
            4 => TimeFormat::Date,
            _ => TimeFormat::SinceFirst,
        }
    }
}

/// Keeps the first and previous timestamps.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    first: Option<i128>,
    previous: Option<i128>,
}

impl Clock {
    /// Appends the timestamp of a packet at `ts` nanoseconds since the epoch
    /// (`None`: no timestamp in the record, shown as 0), followed by a space
    /// unless the format is [`TimeFormat::None`].
    pub(crate) fn push(&mut self, line: &mut String, format: TimeFormat, ts: Option<i128>) {
        let ts = ts.unwrap_or(0);
        let first = *self.first.get_or_insert(ts);
        let previous = self.previous.replace(ts).unwrap_or(ts);
        match format {
            TimeFormat::None => return,
            TimeFormat::SinceFirstSeconds => push_seconds(line, ts - first),
            TimeFormat::Unix => {
                if ts < 0 {
                    line.push_str("[timestamp overflow]");
                } else {
                    let _ = write!(
                        line,
                        "{}.{:06}",
                        ts / NANOS_PER_SEC,
                        (ts % NANOS_PER_SEC) / 1_000
                    );
                }
            }
            TimeFormat::SincePrevious | TimeFormat::SinceFirst => {
                let base = if format == TimeFormat::SincePrevious {
                    previous
                } else {
                    first
                };
                let delta = ts - base;
                line.push(if delta < 0 { '-' } else { ' ' });
                push_time_of_day(line, delta.abs());
            }
            TimeFormat::Date => {
                if ts < 0 {
                    line.push_str("[timestamp overflow]");
                } else {
                    let days = ts / NANOS_PER_SEC / SECS_PER_DAY;
                    let (y, m, d) = civil_from_days(days);
                    let _ = write!(line, "{y:04}-{m:02}-{d:02} ");
                    push_time_of_day(line, ts);
                }
            }
        }
        line.push(' ');
    }
}

/// Seconds with 6 decimals (truncated to the microsecond), signed.
pub(crate) fn push_seconds(line: &mut String, nanos: i128) {
    let sign = if nanos < 0 { "-" } else { "" };
    let abs = nanos.unsigned_abs();
    let secs = abs / 1_000_000_000;
    let micros = (abs % 1_000_000_000) / 1_000;
    let _ = write!(line, "{sign}{secs}.{micros:06}");
}

/// `HH:MM:SS.ffffff` of a non-negative time, modulo a day.
fn push_time_of_day(line: &mut String, nanos: i128) {
    let secs = nanos / NANOS_PER_SEC;
    let of_day = secs % SECS_PER_DAY;
    let _ = write!(
        line,
        "{:02}:{:02}:{:02}.{:06}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        (nanos % NANOS_PER_SEC) / 1_000
    );
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic
/// Gregorian; Howard Hinnant's algorithm).
fn civil_from_days(days: i128) -> (i128, i128, i128) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(format: TimeFormat, stamps: &[i128]) -> Vec<String> {
        let mut clock = Clock::default();
        stamps
            .iter()
            .map(|&ts| {
                let mut s = String::new();
                clock.push(&mut s, format, Some(ts));
                s
            })
            .collect()
    }

    #[test]
    fn formats_as_tcpdump() {
        // 2012-10-04 16:26:20.467968 UTC, then 361 µs later.
        let t0 = 1_349_367_980_467_968_000i128;
        let t1 = t0 + 361_000;
        assert_eq!(
            all(TimeFormat::Date, &[t0]),
            ["2012-10-04 16:26:20.467968 "]
        );
        assert_eq!(all(TimeFormat::Unix, &[t0]), ["1349367980.467968 "]);
        assert_eq!(
            all(TimeFormat::SincePrevious, &[t0, t1, t1 + 2_000_000_000]),
            [
                " 00:00:00.000000 ",
                " 00:00:00.000361 ",
                " 00:00:02.000000 "
            ]
        );
        assert_eq!(
            all(TimeFormat::SinceFirst, &[t0, t1, t0 - 1_000]),
            [
                " 00:00:00.000000 ",
                " 00:00:00.000361 ",
                "-00:00:00.000001 "
            ]
        );
        assert_eq!(all(TimeFormat::None, &[t0]), [""]);
        assert_eq!(
            all(TimeFormat::SinceFirstSeconds, &[t0, t1 + 1_000_000_000]),
            ["0.000000 ", "1.000361 "]
        );
    }

    #[test]
    fn seconds_are_signed_with_six_decimals() {
        let mut s = String::new();
        push_seconds(&mut s, 1_234_567_899);
        assert_eq!(s, "1.234567");
        s.clear();
        push_seconds(&mut s, -1_000);
        assert_eq!(s, "-0.000001");
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
