//! The packets tests send as "not TCP": UDP datagrams, ICMPv4 echo
//! requests, and IP packets with any protocol number and payload.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::{Builder, ChecksumKind, PacketError, Transport};

/// The UDP header of a [`Udp`] packet.
#[derive(Debug, Clone)]
pub struct UdpFields {
    src_port: u16,
    dst_port: u16,
}

/// A UDP datagram over IPv4 or IPv6.
pub type Udp = Builder<UdpFields>;

impl Udp {
    /// A datagram from `src` to `dst` (both IPv4 or both IPv6).
    pub fn new(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Udp {
        let (src, dst) = (src.into(), dst.into());
        Builder::with(
            src.ip(),
            dst.ip(),
            UdpFields {
                src_port: src.port(),
                dst_port: dst.port(),
            },
        )
    }
}

impl Transport for UdpFields {
    fn protocol(&self) -> u8 {
        17
    }

    fn segment(&self, payload: &[u8]) -> Result<Vec<u8>, PacketError> {
        let len = 8 + payload.len();
        let len16 = u16::try_from(len).map_err(|_| PacketError::TooLong(len))?;
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(&self.src_port.to_be_bytes());
        bytes.extend_from_slice(&self.dst_port.to_be_bytes());
        bytes.extend_from_slice(&len16.to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(payload);
        Ok(bytes)
    }

    fn checksum(&self) -> ChecksumKind {
        ChecksumKind::Pseudo {
            at: 6,
            zero_as_ffff: true,
        }
    }
}

/// The ICMPv4 header of an [`IcmpEcho`] packet.
#[derive(Debug, Clone)]
pub struct IcmpEchoFields {
    id: u16,
    seq: u16,
}

/// An ICMPv4 echo request (type 8, code 0).
pub type IcmpEcho = Builder<IcmpEchoFields>;

impl IcmpEcho {
    /// An echo request from `src` to `dst` with identifier `id` and
    /// sequence number `seq`.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> IcmpEcho {
        Builder::with(src.into(), dst.into(), IcmpEchoFields { id, seq })
    }
}

impl Transport for IcmpEchoFields {
    fn protocol(&self) -> u8 {
        1
    }

    fn segment(&self, payload: &[u8]) -> Result<Vec<u8>, PacketError> {
        let mut bytes = vec![8, 0, 0, 0];
        bytes.extend_from_slice(&self.id.to_be_bytes());
        bytes.extend_from_slice(&self.seq.to_be_bytes());
        bytes.extend_from_slice(payload);
        Ok(bytes)
    }

    fn checksum(&self) -> ChecksumKind {
        ChecksumKind::Plain(2)
    }
}

/// The protocol number of a [`RawIp`] packet.
#[derive(Debug, Clone)]
pub struct RawFields {
    protocol: u8,
}

/// An IP packet whose payload is given byte for byte (no transport
/// header is added, no transport checksum computed): garbage behind a valid
/// IP header, a cut TCP header.
pub type RawIp = Builder<RawFields>;

impl RawIp {
    /// A packet from `src` to `dst` (both IPv4 or both IPv6) labelled with
    /// `protocol`.
    pub fn new(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, protocol: u8) -> RawIp {
        Builder::with(src.into(), dst.into(), RawFields { protocol })
    }
}

impl Transport for RawFields {
    fn protocol(&self) -> u8 {
        self.protocol
    }

    fn segment(&self, payload: &[u8]) -> Result<Vec<u8>, PacketError> {
        Ok(payload.to_vec())
    }

    fn checksum(&self) -> ChecksumKind {
        ChecksumKind::None
    }
}
