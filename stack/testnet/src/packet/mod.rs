//! One packet builder for tests.
//!
//! [`Tcp`], [`Udp`], [`IcmpEcho`] and [`RawIp`] build IPv4 packets (and,
//! for TCP, UDP and raw payloads, IPv6 packets) with correct lengths and
//! checksums unless told otherwise:
//!
//! ```
//! use std::net::{Ipv4Addr, SocketAddrV4};
//! use ti_testnet::packet::Tcp;
//!
//! let a = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 40_000);
//! let b = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80);
//! let syn = Tcp::new(a, b).syn().seq(1000).options(&[2, 4, 5, 0xb4]).build();
//! assert!(ti_testnet::packet::checksums_ok(&syn));
//! ```
//!
//! Bad-input tests break what they need on purpose, and the checksums are
//! computed over the bytes as sent (so only the broken field is wrong):
//! [`Builder::bad_checksum`], [`Builder::bad_ip_checksum`],
//! [`Tcp::data_offset`], [`Builder::ip_version`],
//! [`Builder::ip_header_len`], [`Builder::ip_total_len`],
//! [`Builder::ip_protocol`], [`Builder::fragment`]. Truncation is
//! `Vec::truncate` on what [`Builder::build`] returns.
//!
//! [`options`] holds the option lists tests write by hand (MSS, our flow
//! option), and [`checksum`] checks and refills checksums of packets a test
//! mutated itself.

pub mod checksum;
pub mod options;
mod other;
mod tcp;

use std::net::IpAddr;

use etherparse::{IpFragOffset, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header};

pub use checksum::{checksums_ok, refill_checksums, spoil_checksum};
pub use other::{IcmpEcho, IcmpEchoFields, RawFields, RawIp, Udp, UdpFields};
pub use tcp::{Tcp, TcpFields, flags};

/// Why a packet could not be built (lengths that do not fit their fields,
/// or a field that does not exist in the packet's IP version).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Source and destination are not of the same IP version.
    #[error("source {src} and destination {dst} are not of one IP version")]
    MixedFamilies {
        /// The source address.
        src: IpAddr,
        /// The destination address.
        dst: IpAddr,
    },
    /// More than 40 bytes of TCP options (after padding to a word).
    #[error("{0} bytes of TCP options (at most 40)")]
    TcpOptionsTooLong(usize),
    /// More than 40 bytes of IPv4 options (after padding to a word).
    #[error("{0} bytes of IPv4 options (at most 40)")]
    IpOptionsTooLong(usize),
    /// A TCP data offset (in words) does not fit its 4 bits.
    #[error("TCP data offset {0} does not fit in 4 bits")]
    DataOffset(u8),
    /// An IPv4 header length (in words) does not fit its 4 bits.
    #[error("IPv4 header length {0} does not fit in 4 bits")]
    HeaderLen(u8),
    /// An IP version does not fit its 4 bits.
    #[error("IP version {0} does not fit in 4 bits")]
    Version(u8),
    /// A fragment offset is not a multiple of 8 or exceeds 13 bits.
    #[error("fragment offset {0} is not a multiple of 8 below 65536")]
    FragmentOffset(u16),
    /// The packet (or the IPv6 payload) is longer than 65535 bytes.
    #[error("{0} bytes do not fit a 16-bit length")]
    TooLong(usize),
    /// An IPv4-only field was set on an IPv6 packet.
    #[error("{0} exists only in IPv4")]
    Ipv4Only(&'static str),
}

/// How a transport's checksum is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumKind {
    /// No checksum (a raw payload).
    None,
    /// At this offset of the segment, over the segment alone (ICMPv4).
    Plain(usize),
    /// At this offset, over the IP pseudo-header and the segment (TCP,
    /// UDP); `zero_as_ffff`: a computed 0 is sent as 0xffff (UDP).
    Pseudo {
        /// Offset of the 16-bit field in the segment.
        at: usize,
        /// UDP sends a computed 0 as 0xffff (0 means "no checksum").
        zero_as_ffff: bool,
    },
}

/// What a [`Builder`] carries above IP: implemented by [`TcpFields`],
/// [`UdpFields`], [`IcmpEchoFields`] and [`RawFields`].
pub trait Transport: Clone {
    /// The IP protocol number (IPv4 protocol, IPv6 next header).
    fn protocol(&self) -> u8;
    /// The segment: header with a zero checksum field, then `payload`.
    fn segment(&self, payload: &[u8]) -> Result<Vec<u8>, PacketError>;
    /// Where and how the segment's checksum goes.
    fn checksum(&self) -> ChecksumKind;
}

/// The IP header fields a test may set or break.
#[derive(Debug, Clone)]
struct IpFields {
    ttl: u8,
    ident: u16,
    dont_fragment: bool,
    more_fragments: bool,
    fragment_offset: u16,
    options: Vec<u8>,
    version: Option<u8>,
    header_len: Option<u8>,
    total_len: Option<u16>,
    protocol: Option<u8>,
    bad_checksum: bool,
}

impl Default for IpFields {
    fn default() -> IpFields {
        IpFields {
            ttl: 64,
            ident: 0,
            dont_fragment: true,
            more_fragments: false,
            fragment_offset: 0,
            options: Vec::new(),
            version: None,
            header_len: None,
            total_len: None,
            protocol: None,
            bad_checksum: false,
        }
    }
}

/// A packet under construction: IP addresses and header fields, a
/// transport `T` and a payload. Made by [`Tcp::new`], [`Udp::new`],
/// [`IcmpEcho::new`] or [`RawIp::new`]; every setter takes and returns the
/// builder.
///
/// Defaults: TTL (hop limit) 64, IPv4 identification 0, don't-fragment set,
/// no IP options, empty payload.
#[derive(Debug, Clone)]
pub struct Builder<T> {
    src: IpAddr,
    dst: IpAddr,
    ip: IpFields,
    transport: T,
    payload: Vec<u8>,
    bad_checksum: bool,
}

impl<T: Transport> Builder<T> {
    fn with(src: IpAddr, dst: IpAddr, transport: T) -> Builder<T> {
        Builder {
            src,
            dst,
            ip: IpFields::default(),
            transport,
            payload: Vec::new(),
            bad_checksum: false,
        }
    }

    /// The payload after the transport header.
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// IPv4 TTL or IPv6 hop limit.
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ip.ttl = ttl;
        self
    }

    /// IPv4 identification.
    pub fn ident(mut self, ident: u16) -> Self {
        self.ip.ident = ident;
        self
    }

    /// IPv4 don't-fragment flag (ignored for IPv6).
    pub fn dont_fragment(mut self, df: bool) -> Self {
        self.ip.dont_fragment = df;
        self
    }

    /// Makes the packet an IPv4 fragment: clears don't-fragment, sets
    /// more-fragments to `more` and the offset to `offset` bytes (a
    /// multiple of 8). The payload is whatever the transport writes.
    pub fn fragment(mut self, more: bool, offset: u16) -> Self {
        self.ip.dont_fragment = false;
        self.ip.more_fragments = more;
        self.ip.fragment_offset = offset;
        self
    }

    /// IPv4 options, padded with zeros (end of list) to a multiple of 4.
    pub fn ip_options(mut self, options: &[u8]) -> Self {
        self.ip.options = options.to_vec();
        self
    }

    /// Writes `version` in the version field instead of 4 or 6.
    pub fn ip_version(mut self, version: u8) -> Self {
        self.ip.version = Some(version);
        self
    }

    /// Writes `words` in the IPv4 header length field (IHL) instead of the
    /// real length; the header as laid out is unchanged.
    pub fn ip_header_len(mut self, words: u8) -> Self {
        self.ip.header_len = Some(words);
        self
    }

    /// Writes `len` in the IPv4 total length field instead of the real
    /// length.
    pub fn ip_total_len(mut self, len: u16) -> Self {
        self.ip.total_len = Some(len);
        self
    }

    /// Writes `protocol` in the IPv4 protocol (IPv6 next header) field
    /// instead of the transport's; the transport checksum stays the
    /// transport's own.
    pub fn ip_protocol(mut self, protocol: u8) -> Self {
        self.ip.protocol = Some(protocol);
        self
    }

    /// Sends a wrong IPv4 header checksum (one bit flipped).
    pub fn bad_ip_checksum(mut self) -> Self {
        self.ip.bad_checksum = true;
        self
    }

    /// Sends a wrong transport checksum (one bit flipped): a packet every
    /// TCP/IP stack discards.
    pub fn bad_checksum(mut self) -> Self {
        self.bad_checksum = true;
        self
    }

    /// The packet's bytes.
    ///
    /// # Panics
    ///
    /// When [`Builder::try_build`] fails: more than 40 bytes of TCP or IP
    /// options, a field value that does not fit its bits, more than 65535
    /// bytes, mixed IP versions or an IPv4-only field on IPv6. Tests that
    /// pass such values on purpose call [`Builder::try_build`].
    pub fn build(&self) -> Vec<u8> {
        self.try_build()
            .unwrap_or_else(|e| panic!("cannot build this packet: {e}"))
    }

    /// The packet's bytes, or why they cannot be laid out.
    pub fn try_build(&self) -> Result<Vec<u8>, PacketError> {
        let mut segment = self.transport.segment(&self.payload)?;
        let protocol = self.transport.protocol();
        let mut packet = match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                self.ipv4_header(src.octets(), dst.octets(), segment.len())?
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                self.ipv6_header(src.octets(), dst.octets(), segment.len())?
            }
            (src, dst) => return Err(PacketError::MixedFamilies { src, dst }),
        };
        checksum::fill_segment(
            &mut segment,
            self.transport.checksum(),
            self.src,
            self.dst,
            protocol,
        );
        if self.bad_checksum {
            checksum::spoil(&mut segment, self.transport.checksum());
        }
        packet.extend_from_slice(&segment);
        Ok(packet)
    }

    fn ipv4_header(
        &self,
        src: [u8; 4],
        dst: [u8; 4],
        segment_len: usize,
    ) -> Result<Vec<u8>, PacketError> {
        let ip = &self.ip;
        let options = options::padded(&ip.options);
        if options.len() > 40 {
            return Err(PacketError::IpOptionsTooLong(options.len()));
        }
        let total = 20 + options.len() + segment_len;
        let payload_len = u16::try_from(options.len() + segment_len)
            .ok()
            .filter(|_| total <= usize::from(u16::MAX))
            .ok_or(PacketError::TooLong(total))?;
        let mut header = Ipv4Header::new(
            payload_len,
            ip.ttl,
            IpNumber(self.transport.protocol()),
            src,
            dst,
        )
        .map_err(|_| PacketError::TooLong(total))?;
        header.identification = ip.ident;
        header.dont_fragment = ip.dont_fragment;
        header.more_fragments = ip.more_fragments;
        header.fragment_offset = IpFragOffset::try_new(ip.fragment_offset / 8)
            .ok()
            .filter(|_| ip.fragment_offset.is_multiple_of(8))
            .ok_or(PacketError::FragmentOffset(ip.fragment_offset))?;
        header.options = etherparse::Ipv4Options::try_from(&options[..])
            .map_err(|_| PacketError::IpOptionsTooLong(options.len()))?;
        // Ipv4Header::new counted the options as payload: set the total.
        header.total_len = total as u16;
        let mut bytes = header.to_bytes().to_vec();
        if let Some(version) = ip.version {
            bytes[0] = (nibble(version, PacketError::Version)? << 4) | (bytes[0] & 0x0f);
        }
        if let Some(words) = ip.header_len {
            bytes[0] = (bytes[0] & 0xf0) | nibble(words, PacketError::HeaderLen)?;
        }
        if let Some(len) = ip.total_len {
            bytes[2..4].copy_from_slice(&len.to_be_bytes());
        }
        if let Some(protocol) = ip.protocol {
            bytes[9] = protocol;
        }
        let sum = checksum::ipv4_header(&bytes);
        bytes[10..12].copy_from_slice(&sum.to_be_bytes());
        if ip.bad_checksum {
            bytes[10] ^= 0x40;
        }
        Ok(bytes)
    }

    fn ipv6_header(
        &self,
        src: [u8; 16],
        dst: [u8; 16],
        segment_len: usize,
    ) -> Result<Vec<u8>, PacketError> {
        let ip = &self.ip;
        let v4_only = [
            (!ip.options.is_empty(), "IP options"),
            (ip.header_len.is_some(), "the header length field"),
            (ip.total_len.is_some(), "the total length field"),
            (
                ip.more_fragments || ip.fragment_offset != 0,
                "fragmentation",
            ),
            (ip.bad_checksum, "the header checksum"),
        ];
        if let Some((_, what)) = v4_only.into_iter().find(|(set, _)| *set) {
            return Err(PacketError::Ipv4Only(what));
        }
        let payload_length =
            u16::try_from(segment_len).map_err(|_| PacketError::TooLong(segment_len))?;
        let header = Ipv6Header {
            traffic_class: 0,
            flow_label: Ipv6FlowLabel::ZERO,
            payload_length,
            next_header: IpNumber(ip.protocol.unwrap_or(self.transport.protocol())),
            hop_limit: ip.ttl,
            source: src,
            destination: dst,
        };
        let mut bytes = header.to_bytes().to_vec();
        if let Some(version) = ip.version {
            bytes[0] = (nibble(version, PacketError::Version)? << 4) | (bytes[0] & 0x0f);
        }
        Ok(bytes)
    }
}

/// `value` if it fits in 4 bits.
fn nibble(value: u8, err: fn(u8) -> PacketError) -> Result<u8, PacketError> {
    if value <= 0x0f {
        Ok(value)
    } else {
        Err(err(value))
    }
}

#[cfg(test)]
mod tests;
