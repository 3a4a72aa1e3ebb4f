//! Deterministic test data and SHA-256 digests.
//!
//! Two generators, both pure functions of their seed (no global state, the
//! same bytes on every run and machine):
//!
//! - [`data`]: a xorshift64 stream, cheap enough for the megabytes the
//!   simulation and live tests move;
//! - [`random_bytes`]: `rand`'s seeded `StdRng`, what the kernel and device
//!   tests have always sent.
//!
//! Transfers are checked with [`sha256`] of what was sent against a
//! [`StreamDigest`] of what arrived.

use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

/// `len` bytes of a xorshift64 stream (shifts 13, 7, 17) seeded with
/// `seed * 0x9e37_79b9_7f4a_7c15 | 1`, one byte (the low one) per step.
/// Different seeds give different streams.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `len` bytes from `rand`'s `StdRng` seeded with `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Length and SHA-256 of a byte stream read in pieces.
#[derive(Debug, Clone, Default)]
pub struct StreamDigest {
    hasher: Sha256,
    len: u64,
}

impl StreamDigest {
    /// An empty stream.
    pub fn new() -> StreamDigest {
        StreamDigest::default()
    }

    /// Adds the next piece of the stream.
    pub fn update(&mut self, piece: &[u8]) {
        self.hasher.update(piece);
        self.len += piece.len() as u64;
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// No byte seen yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The stream's length and SHA-256.
    pub fn finish(self) -> (u64, [u8; 32]) {
        (self.len, self.hasher.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_keeps_the_sequence_the_simulation_tests_used() {
        // The first bytes of the former `tests/common::payload(8, 1)`.
        let mut x = 0x9e37_79b9_7f4a_7c15u64 | 1;
        let expected: Vec<u8> = (0..8)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(data(8, 1), expected);
        assert_eq!(data(1000, 5), data(1000, 5));
        assert_ne!(data(64, 5), data(64, 6));
        assert_eq!(&data(1000, 5)[..10], &data(10, 5)[..]);
    }

    #[test]
    fn random_bytes_are_seeded() {
        assert_eq!(random_bytes(3, 100), random_bytes(3, 100));
        assert_ne!(random_bytes(3, 100), random_bytes(4, 100));
        assert_eq!(random_bytes(3, 0), Vec::<u8>::new());
    }

    #[test]
    fn a_stream_digest_matches_the_digest_of_the_whole() {
        let bytes = data(10_000, 9);
        let mut digest = StreamDigest::new();
        assert!(digest.is_empty());
        for piece in bytes.chunks(777) {
            digest.update(piece);
        }
        assert_eq!(digest.len(), 10_000);
        assert_eq!(digest.finish(), (10_000, sha256(&bytes)));
        // The empty string's SHA-256.
        assert_eq!(sha256(b"")[..4], [0xe3, 0xb0, 0xc4, 0x42]);
    }
}
