//! 48-bit transport-independent sequence numbers.
//!
//! Owns [`Seq48`]: arithmetic modulo 2^48 and serial-number comparison
//! (RFC 1982 style). Never reads a clock, never allocates. (A connection's
//! TCP sequence numbers are never mapped to TI positions: the stack counts
//! bytes taken from and given to each socket instead.)

use core::cmp::Ordering;
use core::fmt;
use core::ops::{Add, AddAssign, Sub};

/// 2^48: the size of the TI sequence space.
pub const SEQ48_MODULUS: u64 = 1 << 48;
const SEQ48_MASK: u64 = SEQ48_MODULUS - 1;
const SEQ48_HALF: u64 = 1 << 47;

/// A position in a 48-bit TI sequence space (TISeq, TIAck, `snd_una`...).
///
/// Addition wraps modulo 2^48. Comparison is serial-number comparison: `a < b`
/// when `b` is less than 2^47 ahead of `a`; two values exactly 2^47 apart are
/// incomparable (`partial_cmp` returns `None`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Seq48(u64);

impl Seq48 {
    /// Zero, the "undefined" value in a SYN's TIAck.
    pub const ZERO: Seq48 = Seq48(0);

    /// Builds a sequence number from the low 48 bits of `value`.
    pub const fn new(value: u64) -> Seq48 {
        Seq48(value & SEQ48_MASK)
    }

    /// The value as an integer in `0..2^48`.
    pub const fn value(self) -> u64 {
        self.0
    }

    /// The big-endian 6-byte wire form.
    pub fn to_be_bytes(self) -> [u8; 6] {
        let b = self.0.to_be_bytes();
        [b[2], b[3], b[4], b[5], b[6], b[7]]
    }

    /// Reads the big-endian 6-byte wire form.
    pub fn from_be_bytes(bytes: [u8; 6]) -> Seq48 {
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&bytes);
        Seq48(u64::from_be_bytes(b))
    }

    /// Signed distance from `earlier` to `self`: positive when `self` is ahead.
    ///
    /// The result is in `-2^47..2^47`; the value exactly 2^47 apart maps to
    /// `-2^47`.
    pub fn distance_from(self, earlier: Seq48) -> i64 {
        let diff = self.0.wrapping_sub(earlier.0) & SEQ48_MASK;
        if diff < SEQ48_HALF {
            diff as i64
        } else {
            diff as i64 - SEQ48_MODULUS as i64
        }
    }

    /// Number of bytes from `earlier` up to `self`, or `None` when `self` is
    /// behind `earlier` (or incomparable).
    pub fn bytes_since(self, earlier: Seq48) -> Option<u64> {
        match self.partial_cmp(&earlier) {
            Some(Ordering::Greater | Ordering::Equal) => Some(self.distance_from(earlier) as u64),
            _ => None,
        }
    }

    /// `lo <= self <= hi` in serial-number order.
    pub fn is_within(self, lo: Seq48, hi: Seq48) -> bool {
        matches!(self.bytes_since(lo), Some(d) if hi.bytes_since(lo).is_some_and(|span| d <= span))
    }
}

impl PartialOrd for Seq48 {
    fn partial_cmp(&self, other: &Seq48) -> Option<Ordering> {
        let diff = self.0.wrapping_sub(other.0) & SEQ48_MASK;
        match diff {
            0 => Some(Ordering::Equal),
            SEQ48_HALF => None,
            d if d < SEQ48_HALF => Some(Ordering::Greater),
            _ => Some(Ordering::Less),
        }
    }
}

impl Add<u64> for Seq48 {
    type Output = Seq48;
    fn add(self, rhs: u64) -> Seq48 {
        Seq48::new(self.0.wrapping_add(rhs))
    }
}

impl AddAssign<u64> for Seq48 {
    fn add_assign(&mut self, rhs: u64) {
        *self = *self + rhs;
    }
}

impl Sub<u64> for Seq48 {
    type Output = Seq48;
    fn sub(self, rhs: u64) -> Seq48 {
        Seq48::new(self.0.wrapping_sub(rhs))
    }
}

impl fmt::Debug for Seq48 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seq48({:012x})", self.0)
    }
}

impl fmt::Display for Seq48 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_masks_to_48_bits() {
        assert_eq!(Seq48::new(u64::MAX).value(), SEQ48_MASK);
        assert_eq!(Seq48::new(SEQ48_MODULUS + 5).value(), 5);
    }

    #[test]
    fn addition_wraps_at_2_pow_48() {
        let top = Seq48::new(SEQ48_MASK);
        assert_eq!(top + 1, Seq48::ZERO);
        assert_eq!(Seq48::ZERO - 1, top);
        assert!(top < top + 1, "wrapped successor still compares greater");
    }

    #[test]
    fn serial_comparison_across_the_wrap() {
        let a = Seq48::new(SEQ48_MASK - 10);
        let b = a + 100;
        assert!(a < b);
        assert!(b > a);
        assert_eq!(b.distance_from(a), 100);
        assert_eq!(a.distance_from(b), -100);
        assert_eq!(b.bytes_since(a), Some(100));
        assert_eq!(a.bytes_since(b), None);
    }

    #[test]
    fn half_space_apart_is_incomparable() {
        let a = Seq48::new(7);
        let b = a + SEQ48_HALF;
        assert_eq!(a.partial_cmp(&b), None);
        assert_eq!(b.partial_cmp(&a), None);
        assert_eq!(b.bytes_since(a), None);
    }

    #[test]
    fn is_within_is_inclusive_and_wraps() {
        let lo = Seq48::new(SEQ48_MASK - 1);
        let hi = lo + 4;
        assert!(lo.is_within(lo, hi));
        assert!(hi.is_within(lo, hi));
        assert!((lo + 2).is_within(lo, hi));
        assert!(!(lo - 1).is_within(lo, hi));
        assert!(!(hi + 1).is_within(lo, hi));
    }

    #[test]
    fn wire_bytes_are_big_endian() {
        let s = Seq48::new(0x0a45_30be_79bf);
        assert_eq!(s.to_be_bytes(), [0x0a, 0x45, 0x30, 0xbe, 0x79, 0xbf]);
        assert_eq!(Seq48::from_be_bytes(s.to_be_bytes()), s);
    }
}
