//! TCP segments: ports, flags, sequence numbers, window, options.

use std::net::SocketAddr;

use etherparse::TcpHeader;

use super::{Builder, ChecksumKind, PacketError, Transport, options};

/// TCP flag bits, as in the header's flags byte.
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
    /// ECE.
    pub const ECE: u8 = 0x40;
    /// CWR.
    pub const CWR: u8 = 0x80;
}

/// The TCP header of a [`Tcp`] packet.
#[derive(Debug, Clone)]
pub struct TcpFields {
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    urgent: u16,
    options: Vec<u8>,
    data_offset: Option<u8>,
}

/// A TCP segment over IPv4 or IPv6. Defaults: no flag, sequence and
/// acknowledgement numbers 0, window 65535, no option.
pub type Tcp = Builder<TcpFields>;

impl Tcp {
    /// A segment from `src` to `dst` (both IPv4 or both IPv6).
    pub fn new(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Tcp {
        let (src, dst) = (src.into(), dst.into());
        Builder::with(
            src.ip(),
            dst.ip(),
            TcpFields {
                src_port: src.port(),
                dst_port: dst.port(),
                seq: 0,
                ack: 0,
                flags: 0,
                window: 65_535,
                urgent: 0,
                options: Vec::new(),
                data_offset: None,
            },
        )
    }

    /// Sets the flags byte to `bits` (any combination of [`flags`]),
    /// replacing the flags set so far.
    pub fn flags(mut self, bits: u8) -> Self {
        self.transport.flags = bits;
        self
    }

    /// Sets SYN.
    pub fn syn(self) -> Self {
        self.flag(flags::SYN)
    }

    /// Sets FIN.
    pub fn fin(self) -> Self {
        self.flag(flags::FIN)
    }

    /// Sets RST.
    pub fn rst(self) -> Self {
        self.flag(flags::RST)
    }

    /// Sets PSH.
    pub fn psh(self) -> Self {
        self.flag(flags::PSH)
    }

    /// Sets ACK and the acknowledgement number.
    pub fn ack(mut self, ack: u32) -> Self {
        self.transport.ack = ack;
        self.flag(flags::ACK)
    }

    /// The sequence number.
    pub fn seq(mut self, seq: u32) -> Self {
        self.transport.seq = seq;
        self
    }

    /// The window field (unscaled).
    pub fn window(mut self, window: u16) -> Self {
        self.transport.window = window;
        self
    }

    /// The urgent pointer.
    pub fn urgent(mut self, pointer: u16) -> Self {
        self.transport.urgent = pointer;
        self
    }

    /// The option bytes, written as given (they may be malformed) and
    /// padded with zeros (end of list) to a multiple of 4; at most 40.
    pub fn options(mut self, options: &[u8]) -> Self {
        self.transport.options = options.to_vec();
        self
    }

    /// Writes `words` in the data offset field instead of the real header
    /// length (5 plus the option words); the bytes laid out are unchanged
    /// and the checksum covers them as sent.
    pub fn data_offset(mut self, words: u8) -> Self {
        self.transport.data_offset = Some(words);
        self
    }

    fn flag(mut self, bit: u8) -> Self {
        self.transport.flags |= bit;
        self
    }
}

impl Transport for TcpFields {
    fn protocol(&self) -> u8 {
        6
    }

    fn segment(&self, payload: &[u8]) -> Result<Vec<u8>, PacketError> {
        let options = options::padded(&self.options);
        let mut header = TcpHeader::new(self.src_port, self.dst_port, self.seq, self.window);
        header.acknowledgment_number = self.ack;
        header.urgent_pointer = self.urgent;
        header
            .set_options_raw(&options)
            .map_err(|_| PacketError::TcpOptionsTooLong(options.len()))?;
        let mut bytes = header.to_bytes().to_vec();
        bytes[13] = self.flags;
        if let Some(words) = self.data_offset {
            if words > 0x0f {
                return Err(PacketError::DataOffset(words));
            }
            bytes[12] = (words << 4) | (bytes[12] & 0x0f);
        }
        bytes.extend_from_slice(payload);
        Ok(bytes)
    }

    fn checksum(&self) -> ChecksumKind {
        ChecksumKind::Pseudo {
            at: 16,
            zero_as_ffff: false,
        }
    }
}
