//! TCP port ranges, as options write them: `22` or `8000-8100`, and lists
//! of them separated by commas (`22,80,8000-8100`).

use std::fmt;
use std::str::FromStr;

/// Ports `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// The first port (1 to 65535).
    pub first: u16,
    /// The last port (`first` to 65535; `first` for a single port).
    pub last: u16,
}

impl PortRange {
    /// Whether the two ranges have a port in common.
    pub fn overlaps(self, other: PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl fmt::Display for PortRange {
    /// `22` for a single port, else `8000-8100` (as nft writes it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// One port, 1 to 65535.
fn parse_port(s: &str) -> Result<u16, String> {
    if s.is_empty() {
        return Err("a port is missing".into());
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{s}` is not a port number"));
    }
    match s.parse::<u16>() {
        Ok(0) => Err("port 0 is not a port (ports are 1 to 65535)".into()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("port {s} is out of range (ports are 1 to 65535)")),
    }
}

impl FromStr for PortRange {
    type Err = String;

    /// `22` or `8000-8100` (1 to 65535, the first no greater than the
    /// last).
    fn from_str(s: &str) -> Result<PortRange, String> {
        let s = s.trim();
        let range = match s.split_once('-') {
            None => {
                let port = parse_port(s)?;
                PortRange {
                    first: port,
                    last: port,
                }
            }
            Some((first, last)) => {
                let context = |e: String| format!("port range `{s}`: {e}");
                let first = parse_port(first.trim()).map_err(context)?;
                let last = parse_port(last.trim()).map_err(context)?;
                if first > last {
                    return Err(format!(
                        "port range `{s}` is reversed (write {last}-{first})"
                    ));
                }
                PortRange { first, last }
            }
        };
        Ok(range)
    }
}

/// A comma-separated list of ports and port ranges (`22,80,8000-8100`),
/// in its order. An empty list or item, port 0, a reversed range and two
/// items with a port in common are errors.
pub fn parse_port_list(s: &str) -> Result<Vec<PortRange>, String> {
    if s.trim().is_empty() {
        return Err("the port list is empty".into());
    }
    let mut ranges: Vec<PortRange> = Vec::new();
    for (i, item) in s.split(',').enumerate() {
        if item.trim().is_empty() {
            return Err(format!("item {} of port list `{s}` is empty", i + 1));
        }
        let range: PortRange = item.parse()?;
        if let Some(other) = ranges.iter().find(|r| r.overlaps(range)) {
            return Err(format!(
                "ports {other} and {range} overlap in port list `{s}`"
            ));
        }
        ranges.push(range);
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn ports_and_ranges_parse_and_print_back() {
        assert_eq!("22".parse(), Ok(range(22, 22)));
        assert_eq!("8000-8100".parse(), Ok(range(8000, 8100)));
        assert_eq!(" 1 - 65535 ".parse(), Ok(range(1, 65535)));
        assert_eq!("80-80".parse(), Ok(range(80, 80)));
        assert_eq!(range(22, 22).to_string(), "22");
        assert_eq!(range(8000, 8100).to_string(), "8000-8100");
    }

    #[test]
    fn bad_ranges_say_what_is_wrong() {
        let err = |s: &str| s.parse::<PortRange>().expect_err(s);
        assert!(err("0").contains("port 0"), "{}", err("0"));
        assert!(err("65536").contains("out of range"));
        assert!(err("99999999999").contains("out of range"));
        assert!(err("").contains("missing"));
        assert!(err("-").contains("missing"));
        assert!(err("80-").contains("missing"));
        assert!(err("-80").contains("missing"));
        assert!(err("8100-8000").contains("reversed (write 8000-8100)"));
        assert!(err("0-10").contains("port 0"));
        assert!(err("ssh").contains("`ssh` is not a port number"));
        assert!(err("+22").contains("not a port number"));
        assert!(err("1-2-3").contains("not a port number"));
        assert!(err("22 80").contains("not a port number"));
        assert!(err("２２").contains("not a port number"));
    }

    #[test]
    fn lists_keep_their_order() {
        assert_eq!(
            parse_port_list("22,80,8000-8100"),
            Ok(vec![range(22, 22), range(80, 80), range(8000, 8100)])
        );
        assert_eq!(
            parse_port_list("443, 1-21"),
            Ok(vec![range(443, 443), range(1, 21)])
        );
        assert_eq!(parse_port_list("65535"), Ok(vec![range(65535, 65535)]));
        // Adjacent is not overlapping.
        assert_eq!(
            parse_port_list("1-10,11-20"),
            Ok(vec![range(1, 10), range(11, 20)])
        );
    }

    #[test]
    fn bad_lists_say_what_is_wrong() {
        let err = |s: &str| parse_port_list(s).expect_err(s);
        assert!(err("").contains("empty"));
        assert!(err(" ").contains("empty"));
        assert!(err("22,,80").contains("item 2 of port list `22,,80` is empty"));
        assert!(err(",22").contains("item 1"));
        assert!(err("22,").contains("item 2"));
        assert!(err("22,0").contains("port 0"));
        assert!(err("22,90-80").contains("reversed"));
        assert!(err("22,x").contains("`x` is not a port number"));
        assert!(err("22;80").contains("not a port number"));
        assert_eq!(
            err("8000-8100,22,8050"),
            "ports 8000-8100 and 8050 overlap in port list `8000-8100,22,8050`"
        );
        assert!(err("22,22").contains("ports 22 and 22 overlap"));
        assert!(err("10-20,1-10").contains("overlap"));
    }
}
