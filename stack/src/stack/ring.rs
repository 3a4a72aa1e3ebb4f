//! [`ByteRing`]: a stream's send buffer. A ring of bytes that grows with
//! use and lends its free space, so a relay can read a kernel socket
//! straight into it ([`Stack::write_in_place`](super::Stack::write_in_place))
//! instead of through a buffer of its own.
//!
//! Owns only its bytes: what they mean (unacknowledged TI data) is the
//! stack's business. Never panics on any sequence of calls; sizes are
//! bounded by what the caller asks for.

/// Smallest allocation once the ring holds anything.
const MIN_CAPACITY: usize = 4 * 1024;

/// A growable ring of bytes: the oldest at the front.
#[derive(Debug, Default)]
pub(crate) struct ByteRing {
    /// The storage; its length is the capacity.
    buf: Vec<u8>,
    /// Index of the oldest byte.
    head: usize,
    /// Bytes held.
    len: usize,
}

impl ByteRing {
    /// An empty ring with no allocation.
    pub(crate) fn new() -> ByteRing {
        ByteRing::default()
    }

    /// Bytes held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Holds nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes it can hold without growing.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Forgets every byte and frees the storage.
    pub(crate) fn clear(&mut self) {
        *self = ByteRing::default();
    }

    /// The bytes held, oldest first, as two slices (the second empty
    /// unless they wrap).
    pub(crate) fn as_slices(&self) -> (&[u8], &[u8]) {
        let cap = self.buf.len();
        if self.head + self.len <= cap {
            (&self.buf[self.head..self.head + self.len], &[])
        } else {
            let first = cap - self.head;
            (&self.buf[self.head..], &self.buf[..self.len - first])
        }
    }

    /// Drops the oldest `n` bytes (all of them if `n` is larger).
    pub(crate) fn drain_front(&mut self, n: usize) {
        let n = n.min(self.len);
        self.len -= n;
        self.head = if self.len == 0 {
            0
        } else {
            (self.head + n) % self.buf.len()
        };
    }

    /// Appends `data`.
    #[cfg(test)]
    pub(crate) fn extend(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let spare = self.spare_mut(data.len());
            let n = spare.len().min(data.len());
            spare[..n].copy_from_slice(&data[..n]);
            self.commit(n);
            data = &data[n..];
        }
    }

    /// Free space right after the newest byte, growing the ring first if
    /// it has less than `want` bytes free: at least one byte when `want`
    /// is not zero, at most `want` bytes. Fill a prefix and
    /// [`ByteRing::commit`] it.
    pub(crate) fn spare_mut(&mut self, want: usize) -> &mut [u8] {
        if want == 0 {
            return &mut [];
        }
        let cap = self.buf.len();
        if cap - self.len < want {
            self.grow(self.len + want);
        }
        let cap = self.buf.len();
        let tail = (self.head + self.len) % cap;
        let end = if tail >= self.head && !(self.len > 0 && tail == self.head) {
            cap
        } else {
            self.head
        };
        let end = end.min(tail + want);
        &mut self.buf[tail..end]
    }

    /// Takes the first `n` bytes of the last [`ByteRing::spare_mut`] as
    /// held (at most what is free).
    pub(crate) fn commit(&mut self, n: usize) {
        self.len += n.min(self.buf.len() - self.len);
    }

    /// Moves the bytes into storage of at least `needed` bytes (a power of
    /// two), oldest first at index 0.
    fn grow(&mut self, needed: usize) {
        let cap = needed
            .max(self.buf.len() * 2)
            .max(MIN_CAPACITY)
            .next_power_of_two();
        let mut buf = vec![0u8; cap];
        let (a, b) = self.as_slices();
        buf[..a.len()].copy_from_slice(a);
        buf[a.len()..a.len() + b.len()].copy_from_slice(b);
        self.buf = buf;
        self.head = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn contents(r: &ByteRing) -> Vec<u8> {
        let (a, b) = r.as_slices();
        [a, b].concat()
    }

    #[test]
    fn grows_with_use_and_starts_empty() {
        let mut r = ByteRing::new();
        assert_eq!(r.capacity(), 0, "no allocation before use");
        r.extend(b"hello");
        assert_eq!(r.capacity(), MIN_CAPACITY);
        r.extend(&[7u8; 10_000]);
        assert_eq!(r.len(), 10_005);
        assert!(r.capacity() >= 10_005 && r.capacity().is_power_of_two());
        r.clear();
        assert_eq!((r.len(), r.capacity()), (0, 0));
    }

    #[test]
    fn spare_space_wraps_and_is_never_larger_than_asked() {
        let mut r = ByteRing::new();
        r.extend(&[1u8; 4000]);
        r.drain_front(3000);
        // 1000 held at 3000..4000; 96 free at the end, then 3000 at the front.
        let spare = r.spare_mut(500);
        assert_eq!(spare.len(), 96, "up to the end of the storage");
        spare.fill(2);
        r.commit(96);
        let spare = r.spare_mut(500);
        assert_eq!(spare.len(), 500, "then from the front, no more than asked");
        spare.fill(3);
        r.commit(500);
        assert_eq!(r.capacity(), MIN_CAPACITY, "fitted without growing");
        let expected: Vec<u8> = [vec![1u8; 1000], vec![2u8; 96], vec![3u8; 500]].concat();
        assert_eq!(contents(&r), expected);
        assert!(!r.as_slices().1.is_empty(), "the contents wrap");
    }

    #[test]
    fn a_full_ring_grows_instead_of_lending_nothing() {
        let mut r = ByteRing::new();
        r.extend(&[9u8; MIN_CAPACITY]);
        assert_eq!(r.len(), r.capacity());
        assert_eq!(r.spare_mut(1).len(), 1);
        assert_eq!(r.capacity(), 2 * MIN_CAPACITY);
        assert!(r.spare_mut(0).is_empty());
    }

    #[test]
    fn commit_and_drain_are_bounded() {
        let mut r = ByteRing::new();
        let _ = r.spare_mut(10);
        r.commit(usize::MAX);
        assert_eq!(r.len(), r.capacity());
        r.drain_front(usize::MAX);
        assert!(r.is_empty());
    }

    /// Against `VecDeque` over a pseudo-random sequence of operations.
    #[test]
    fn behaves_as_a_deque_of_bytes() {
        let mut r = ByteRing::new();
        let mut model: VecDeque<u8> = VecDeque::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut byte = 0u8;
        for _ in 0..20_000 {
            match next() % 3 {
                0 => {
                    let n = (next() % 3000) as usize;
                    let data: Vec<u8> = (0..n)
                        .map(|_| {
                            byte = byte.wrapping_add(1);
                            byte
                        })
                        .collect();
                    r.extend(&data);
                    model.extend(&data);
                }
                1 => {
                    let want = (next() % 3000) as usize + 1;
                    let spare = r.spare_mut(want);
                    let take = (next() as usize) % (spare.len() + 1);
                    for b in &mut spare[..take] {
                        byte = byte.wrapping_add(1);
                        *b = byte;
                        model.push_back(byte);
                    }
                    r.commit(take);
                }
                _ => {
                    let n = (next() % 4000) as usize;
                    r.drain_front(n);
                    model.drain(..n.min(model.len()));
                }
            }
            assert_eq!(r.len(), model.len());
        }
        assert_eq!(contents(&r), model.into_iter().collect::<Vec<_>>());
    }
}
