//! Devices: in-memory link, TUN, delay line, pcap tap.
