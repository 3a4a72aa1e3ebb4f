//! Handshake times from a stack's own capture, as the paper measured them
//! with tcpdump on the originating host: from our SYN to our ACK that
//! completes the three-way handshake.
//!
//! Owns nothing but parsing: reads a pcap (link type RAW) written by
//! [`ti_stack::device::pcap_tap::PcapTap`] and never changes it.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use pcap_file::pcap::PcapReader;
use ti_stack::segment::Segment;

use super::BenchError;

/// One connection's handshake, seen from its initiator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handshake {
    /// Our first SYN.
    pub syn: Option<Duration>,
    /// The first SYN-ACK from the peer.
    pub syn_ack: Option<Duration>,
    /// Our first ACK after it (the third segment of the handshake).
    pub ack: Option<Duration>,
}

impl Handshake {
    /// SYN to third ACK, if both were captured.
    pub fn syn_to_ack(&self) -> Option<Duration> {
        self.ack?.checked_sub(self.syn?)
    }
}

/// Handshakes we initiated from `local` (our address), keyed by our port
/// and the peer.
pub fn handshakes(
    path: &Path,
    local: IpAddr,
) -> Result<HashMap<(u16, SocketAddr), Handshake>, BenchError> {
    let what = || format!("read capture {}", path.display());
    let file = File::open(path).map_err(|e| BenchError::io(what(), e))?;
    let mut reader = PcapReader::new(BufReader::new(file))
        .map_err(|e| BenchError::io(what(), std::io::Error::other(e)))?;
    let mut found: HashMap<(u16, SocketAddr), Handshake> = HashMap::new();
    while let Some(packet) = reader.next_packet() {
        // A truncated last record (the writer was still running) ends the file.
        let Ok(packet) = packet else { break };
        let Some(seg) = Segment::parse(&packet.data, tifid::DEFAULT_KIND) else {
            continue;
        };
        let at = packet.timestamp;
        if seg.src.ip() == local {
            let key = (seg.src.port(), seg.dst);
            if seg.syn && !seg.ack && !seg.rst {
                found.entry(key).or_default().syn.get_or_insert(at);
            } else if seg.ack
                && !seg.syn
                && !seg.rst
                && let Some(h) = found.get_mut(&key)
                && h.syn_ack.is_some()
            {
                h.ack.get_or_insert(at);
            }
        } else if seg.dst.ip() == local
            && seg.syn
            && seg.ack
            && !seg.rst
            && let Some(h) = found.get_mut(&(seg.dst.port(), seg.src))
        {
            h.syn_ack.get_or_insert(at);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use pcap_file::DataLink;
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

    const US: [u8; 4] = [10, 71, 1, 10];
    const PEER: [u8; 4] = [10, 72, 1, 2];

    fn packet(from_us: bool, syn: bool, ack: bool) -> Vec<u8> {
        let (src, dst, sport, dport) = if from_us {
            (US, PEER, 50_000, 7000)
        } else {
            (PEER, US, 7000, 50_000)
        };
        let mut builder = PacketBuilder::ipv4(src, dst, 64).tcp(sport, dport, 1, 1000);
        if syn {
            builder = builder.syn();
        }
        if ack {
            builder = builder.ack(1);
        }
        let mut out = Vec::new();
        builder.write(&mut out, &[]).expect("build packet");
        out
    }

    #[test]
    fn syn_to_third_ack_of_our_handshake() {
        let path =
            std::env::temp_dir().join(format!("tiflow-bench-pcap-{}.pcap", std::process::id()));
        let header = PcapHeader {
            datalink: DataLink::RAW,
            ..PcapHeader::default()
        };
        let mut writer =
            PcapWriter::with_header(File::create(&path).expect("create"), header).expect("header");
        // A retransmitted SYN, the SYN-ACK, our ACK, then data.
        for (ms, from_us, syn, ack) in [
            (1, true, true, false),
            (3, true, true, false),
            (11, false, true, true),
            (12, true, false, true),
            (13, true, false, true),
        ] {
            let data = packet(from_us, syn, ack);
            let p = PcapPacket::new(Duration::from_millis(ms), data.len() as u32, &data);
            writer.write_packet(&p).expect("write");
        }
        drop(writer);
        let found = handshakes(&path, IpAddr::V4(std::net::Ipv4Addr::from(US))).expect("parse");
        let _ = std::fs::remove_file(&path);
        let h = found[&(
            50_000,
            SocketAddr::from((std::net::Ipv4Addr::from(PEER), 7000)),
        )];
        assert_eq!(h.syn_to_ack(), Some(Duration::from_millis(11)));
        assert_eq!(h.syn_ack, Some(Duration::from_millis(11)));
    }
}
