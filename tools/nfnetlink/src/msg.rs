//! Building netfilter netlink messages: a `nlmsghdr`, a `nfgenmsg` and
//! attributes (`nlattr`, 4-byte aligned, nested ones flagged
//! `NLA_F_NESTED`). Integers in nftables attributes are big-endian, as the
//! kernel reads them (`nla_get_be32`).

use crate::consts::NLA_F_NESTED;

/// Length of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;

/// Rounds `len` up to netlink's 4-byte alignment.
pub fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// One netlink message being built.
pub struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    /// A message of type `(subsys << 8) | kind` with `flags` and `seq`,
    /// its `nfgenmsg` saying `family` and `res_id` (big-endian).
    pub fn new(subsys: u8, kind: u8, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
        Msg::raw(
            u16::from(subsys) << 8 | u16::from(kind),
            flags,
            seq,
            family,
            res_id,
        )
    }

    /// A message of netlink type `ty` (for the batch delimiters).
    pub fn raw(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by finish
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
        buf.push(family);
        buf.push(crate::consts::NFNETLINK_V0);
        buf.extend_from_slice(&res_id.to_be_bytes());
        Msg {
            buf,
            nests: Vec::new(),
        }
    }

    fn pad(&mut self) {
        let len = align(self.buf.len());
        self.buf.resize(len, 0);
    }

    /// An attribute with `data` as its payload.
    pub fn put(&mut self, ty: u16, data: &[u8]) -> &mut Msg {
        let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    /// A big-endian 32-bit attribute.
    pub fn put_be32(&mut self, ty: u16, value: u32) -> &mut Msg {
        self.put(ty, &value.to_be_bytes())
    }

    /// A NUL-terminated string attribute.
    pub fn put_str(&mut self, ty: u16, s: &str) -> &mut Msg {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.put(ty, &data)
    }

    /// Opens a nested attribute; [`Msg::end`] closes it.
    pub fn begin(&mut self, ty: u16) -> &mut Msg {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// Closes the innermost nested attribute.
    pub fn end(&mut self) -> &mut Msg {
        let start = self.nests.pop().expect("end() matches a begin()");
        let len = u16::try_from(self.buf.len() - start).unwrap_or(u16::MAX);
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// The message's bytes, its length filled in.
    pub fn finish(mut self) -> Vec<u8> {
        assert!(self.nests.is_empty(), "every nested attribute is closed");
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_attributes_and_nesting_are_laid_out_as_netlink_wants() {
        let mut m = Msg::new(10, 0, 0x405, 7, 2, 0);
        m.put_str(1, "abc");
        m.begin(4).put_be32(1, 0x0102_0304).end();
        let bytes = m.finish();
        // nlmsghdr (16) + nfgenmsg (4) + "abc\0" (4 + 4) + nest (4 + 8)
        assert_eq!(bytes.len(), 16 + 4 + 8 + 12);
        assert_eq!(
            u32::from_ne_bytes(bytes[0..4].try_into().expect("slice")),
            40
        );
        assert_eq!(
            u16::from_ne_bytes(bytes[4..6].try_into().expect("slice")),
            10 << 8
        );
        assert_eq!(
            u16::from_ne_bytes(bytes[6..8].try_into().expect("slice")),
            0x405
        );
        assert_eq!(
            u32::from_ne_bytes(bytes[8..12].try_into().expect("slice")),
            7
        );
        assert_eq!(&bytes[16..20], &[2, 0, 0, 0]);
        assert_eq!(&bytes[20..28], &[8, 0, 1, 0, b'a', b'b', b'c', 0]);
        assert_eq!(
            u16::from_ne_bytes(bytes[28..30].try_into().expect("slice")),
            12
        );
        assert_eq!(
            u16::from_ne_bytes(bytes[30..32].try_into().expect("slice")),
            4 | NLA_F_NESTED
        );
        assert_eq!(&bytes[36..40], &[1, 2, 3, 4]);
    }

    #[test]
    fn odd_payloads_are_padded() {
        let mut m = Msg::raw(16, 1, 1, 0, 10);
        m.put(1, &[0xae, 0x08]);
        let bytes = m.finish();
        assert_eq!(bytes.len(), 20 + 8);
        assert_eq!(&bytes[20..28], &[6, 0, 1, 0, 0xae, 0x08, 0, 0]);
        assert_eq!(&bytes[18..20], &10u16.to_be_bytes());
    }
}
