//! Addresses with a prefix length of either family: [`Ipv4Cidr`]
//! (`10.0.2.1/24`), [`Ipv6Cidr`] (`fd00:2::1/64`) and [`IpCidr`], which is
//! one or the other (what `tiflow up --address` takes).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 address with a prefix length, as `10.0.2.1/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// The network mask.
    pub fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// The network address.
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// Whether `addr` is in this network.
    pub fn contains(self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.addr) & self.mask()
    }

    /// The highest host address (one below broadcast), for prefixes up to /30.
    pub fn last_host(self) -> Option<Ipv4Addr> {
        (self.prefix <= 30).then(|| Ipv4Addr::from((u32::from(self.addr) | !self.mask()) - 1))
    }

    /// The lowest host address (one above the network), for prefixes up to /30.
    pub fn first_host(self) -> Option<Ipv4Addr> {
        (self.prefix <= 30).then(|| Ipv4Addr::from((u32::from(self.addr) & self.mask()) + 1))
    }

    /// Whether `addr` is a usable host address of this network (neither the
    /// network nor the broadcast address).
    pub fn is_host(self, addr: Ipv4Addr) -> bool {
        let host = u32::from(addr) & !self.mask();
        self.contains(addr) && host != 0 && host != !self.mask()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX (like 10.0.2.1/24)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{prefix:?} is not a prefix length (0-32)"))?;
        Ok(Ipv4Cidr { addr, prefix })
    }
}

/// An IPv6 address with a prefix length, as `fd00:2::1/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Cidr {
    /// The address.
    pub addr: Ipv6Addr,
    /// The prefix length, 0..=128.
    pub prefix: u8,
}

impl Ipv6Cidr {
    /// The network mask.
    pub fn mask(self) -> u128 {
        if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix.min(128)))
        }
    }

    /// The network address (all host bits zero).
    pub fn network(self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr) & self.mask())
    }

    /// Whether `addr` is in this network.
    pub fn contains(self, addr: Ipv6Addr) -> bool {
        u128::from(addr) & self.mask() == u128::from(self.addr) & self.mask()
    }

    /// The `n`th address of the network (`network + n`), if the network
    /// has one (`n` below its size).
    pub fn nth(self, n: u128) -> Option<Ipv6Addr> {
        (n & self.mask() == 0).then(|| Ipv6Addr::from(u128::from(self.network()) | n))
    }

    /// Whether `addr` is a usable host address: in the network and not
    /// the network address itself (the subnet-router anycast address).
    pub fn is_host(self, addr: Ipv6Addr) -> bool {
        self.contains(addr) && addr != self.network()
    }
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv6Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX (like fd00:2::1/64)"))?;
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 128)
            .ok_or_else(|| format!("{prefix:?} is not a prefix length (0-128)"))?;
        Ok(Ipv6Cidr { addr, prefix })
    }
}

/// An address with a prefix length of either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpCidr {
    /// IPv4.
    V4(Ipv4Cidr),
    /// IPv6.
    V6(Ipv6Cidr),
}

impl IpCidr {
    /// The address.
    pub fn addr(self) -> IpAddr {
        match self {
            IpCidr::V4(c) => IpAddr::V4(c.addr),
            IpCidr::V6(c) => IpAddr::V6(c.addr),
        }
    }

    /// The prefix length.
    pub fn prefix(self) -> u8 {
        match self {
            IpCidr::V4(c) => c.prefix,
            IpCidr::V6(c) => c.prefix,
        }
    }

    /// The network: the address with its host bits cleared.
    pub fn network(self) -> IpCidr {
        match self {
            IpCidr::V4(c) => IpCidr::V4(Ipv4Cidr {
                addr: c.network(),
                prefix: c.prefix,
            }),
            IpCidr::V6(c) => IpCidr::V6(Ipv6Cidr {
                addr: c.network(),
                prefix: c.prefix,
            }),
        }
    }

    /// Whether `addr` is in the subnet (never across families).
    pub fn contains(self, addr: IpAddr) -> bool {
        match (self, addr) {
            (IpCidr::V4(c), IpAddr::V4(a)) => c.contains(a),
            (IpCidr::V6(c), IpAddr::V6(a)) => c.contains(a),
            _ => false,
        }
    }

    /// Whether two subnets share an address (never across families).
    pub fn overlaps(self, other: IpCidr) -> bool {
        let (shorter, longer) = if self.prefix() <= other.prefix() {
            (self, other)
        } else {
            (other, self)
        };
        shorter.contains(longer.addr())
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpCidr::V4(c) => c.fmt(f),
            IpCidr::V6(c) => c.fmt(f),
        }
    }
}

impl FromStr for IpCidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let addr = s.split_once('/').map_or(s, |(a, _)| a);
        if addr.contains(':') {
            s.parse().map(IpCidr::V6)
        } else {
            s.parse().map(IpCidr::V4)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_computes_hosts() {
        let c: Ipv4Cidr = "10.0.2.1/24".parse().expect("parse");
        assert_eq!(c.network(), Ipv4Addr::new(10, 0, 2, 0));
        assert_eq!(c.last_host(), Some(Ipv4Addr::new(10, 0, 2, 254)));
        assert_eq!(c.first_host(), Some(Ipv4Addr::new(10, 0, 2, 1)));
        assert!(c.is_host(Ipv4Addr::new(10, 0, 2, 254)));
        assert!(!c.is_host(Ipv4Addr::new(10, 0, 2, 255)));
        assert!(!c.is_host(Ipv4Addr::new(10, 0, 3, 1)));
        let p30: Ipv4Cidr = "192.168.9.5/30".parse().expect("parse");
        assert_eq!(p30.last_host(), Some(Ipv4Addr::new(192, 168, 9, 6)));
        let p31: Ipv4Cidr = "192.168.9.5/31".parse().expect("parse");
        assert_eq!(p31.last_host(), None);
        for bad in ["10.0.2.1", "10.0.2/24", "10.0.2.1/33", "x/24", "10.0.2.1/"] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_cidr_parses_and_computes_the_network() {
        let c: Ipv6Cidr = "fd00:2::1/64".parse().expect("parse");
        assert_eq!(c.network(), "fd00:2::".parse::<Ipv6Addr>().expect("addr"));
        assert_eq!(c.nth(2), Some("fd00:2::2".parse().expect("addr")));
        assert!(c.is_host("fd00:2::ffff".parse().expect("addr")));
        assert!(!c.is_host("fd00:2::".parse().expect("addr")));
        assert!(!c.is_host("fd00:3::1".parse().expect("addr")));
        let c127: Ipv6Cidr = "fd00::1/127".parse().expect("parse");
        assert_eq!(c127.nth(1), Some("fd00::1".parse().expect("addr")));
        assert_eq!(c127.nth(2), None);
        for bad in ["fd00::1", "fd00::1/129", "10.0.2.1/24", "x/64", "fd00::1/"] {
            assert!(bad.parse::<Ipv6Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn either_family_parses() {
        assert!(matches!("10.0.2.1/24".parse(), Ok(IpCidr::V4(_))));
        assert!(matches!("fd00:2::1/64".parse(), Ok(IpCidr::V6(_))));
        let e = "fd00:2::1".parse::<IpCidr>().expect_err("no prefix");
        assert!(e.contains("like fd00:2::1/64"), "{e}");
        let e = "10.0.2.1".parse::<IpCidr>().expect_err("no prefix");
        assert!(e.contains("like 10.0.2.1/24"), "{e}");
        assert_eq!(
            "fd00:2::1/64".parse::<IpCidr>().expect("v6").to_string(),
            "fd00:2::1/64"
        );
    }

    #[test]
    fn overlap_is_a_shared_address() {
        let subnets_overlap = |a: IpCidr, b: IpCidr| a.overlaps(b);
        let cidr = |s: &str| -> IpCidr { s.parse().expect("cidr") };
        assert!(subnets_overlap(cidr("10.0.2.1/24"), cidr("10.0.2.200/24")));
        assert!(subnets_overlap(cidr("10.0.2.1/24"), cidr("10.0.0.1/16")));
        assert!(subnets_overlap(cidr("10.0.0.1/16"), cidr("10.0.2.1/24")));
        assert!(!subnets_overlap(cidr("10.0.2.1/24"), cidr("10.0.3.1/24")));
        assert!(!subnets_overlap(cidr("10.0.2.1/25"), cidr("10.0.2.129/25")));
        assert!(subnets_overlap(cidr("fd00:2::1/64"), cidr("fd00:2::ff/64")));
        assert!(subnets_overlap(cidr("fd00:2::1/64"), cidr("fd00::1/16")));
        assert!(!subnets_overlap(cidr("fd00:2::1/64"), cidr("fd00:3::1/64")));
        assert!(!subnets_overlap(cidr("fd00:2::1/64"), cidr("fe80::1/64")));
        assert!(!subnets_overlap(cidr("10.0.2.1/24"), cidr("::/0")));
    }
}
