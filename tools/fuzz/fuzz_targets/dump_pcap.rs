//! Arbitrary bytes as a capture file: `tiflow dump` must return lines or an
//! error, never panic, whatever the file, record, link, IP, TCP or option
//! bytes say.
//!
//! Seeds: `cargo fuzz run dump_pcap corpus/dump_pcap ../../pcap-tests/traces`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ti_tools::dump::{DumpOptions, dump_bytes};

fuzz_target!(|data: &[u8]| {
    // Our default kind, then a kind that collides with MSS.
    for kind in [253, 2] {
        let options = DumpOptions { kind, hex: true, ..DumpOptions::default() };
        let _ = dump_bytes(data, &options, std::io::sink());
    }
});
