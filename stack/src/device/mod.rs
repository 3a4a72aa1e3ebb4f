//! Devices: in-memory link, TUN, delay line, pcap tap.

pub mod delay;
pub mod link;
pub mod pcap_tap;
pub mod tun;
