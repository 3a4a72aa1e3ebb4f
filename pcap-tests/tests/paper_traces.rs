//! The checked-in paper traces are exactly what `paper_traces` builds, and
//! what it builds is a valid, checksummed handshake with the paper's fields.

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use pcap_tests::paper_traces::{
    self, TRACE1_SYN_OPTION, TRACE2_ACK_OPTION, TRACE2_SYN_ACK_OPTION, TRACE2_SYN_OPTION, Trace,
};
use tifid::option::{DEFAULT_KIND, FlowOptionRepr, find_flow_option};

#[test]
fn checked_in_traces_match_the_generator() {
    for trace in paper_traces::all() {
        let built = trace.pcap_bytes();
        let path = trace.pcap_path();
        if pcap_tests::bless() {
            std::fs::write(&path, &built).expect("write trace");
            continue;
        }
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with TIFLOW_BLESS=1 to create it)",
                path.display()
            )
        });
        assert!(
            on_disk == built,
            "{} differs from what paper_traces builds ({} vs {} bytes); \
             rerun with TIFLOW_BLESS=1 if the change is intended",
            path.display(),
            on_disk.len(),
            built.len()
        );
    }
}

/// (flags SYN, ACK, seq, ack, window, flow option) of each packet.
type Fields = (bool, bool, u32, u32, u16, Option<FlowOptionRepr>);

fn fields(trace: &Trace) -> Vec<Fields> {
    trace
        .packets
        .iter()
        .map(|p| {
            let sliced = LaxSlicedPacket::from_ip(&p.bytes).expect("IPv4");
            assert!(sliced.stop_err.is_none(), "{:?}", sliced.stop_err);
            let Some(LaxNetSlice::Ipv4(ip)) = &sliced.net else {
                panic!("not IPv4")
            };
            let header = ip.header();
            assert_eq!(
                header.to_header().calc_header_checksum(),
                header.header_checksum()
            );
            assert!(header.dont_fragment());
            let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
                panic!("not TCP")
            };
            let checksum = tcp
                .calc_checksum_ipv4(header.source(), header.destination())
                .expect("checksum");
            assert_eq!(checksum, tcp.checksum(), "TCP checksum");
            assert!(tcp.payload().is_empty());
            let option = find_flow_option(tcp.options(), DEFAULT_KIND).expect("well-formed");
            (
                tcp.syn(),
                tcp.ack(),
                tcp.sequence_number(),
                tcp.acknowledgment_number(),
                tcp.window_size(),
                option,
            )
        })
        .collect()
}

#[test]
fn trace1_has_the_papers_fields() {
    assert_eq!(
        fields(&paper_traces::trace1()),
        vec![
            (true, false, 100, 0, 65535, Some(TRACE1_SYN_OPTION)),
            (true, true, 200, 101, 65535, None),
            (false, true, 101, 201, 8326, None),
        ]
    );
}

#[test]
fn trace2_has_the_papers_fields() {
    assert_eq!(
        fields(&paper_traces::trace2()),
        vec![
            (true, false, 110, 0, 65535, Some(TRACE2_SYN_OPTION)),
            (true, true, 456, 111, 65535, Some(TRACE2_SYN_ACK_OPTION)),
            (false, true, 111, 457, 8326, Some(TRACE2_ACK_OPTION)),
        ]
    );
}

#[test]
fn trace2_follows_the_new_flow_rule() {
    // DESIGN §4: SYN {a||0, ISN_A, 0}; SYN-ACK {a||b, ISN_B, ISN_A};
    // ACK {a||b, ISN_A, ISN_B}.
    let (syn, syn_ack, ack) = (TRACE2_SYN_OPTION, TRACE2_SYN_ACK_OPTION, TRACE2_ACK_OPTION);
    assert!(syn.tifid.responder_half().is_zero());
    assert_eq!(syn_ack.tifid.initiator_half(), syn.tifid.initiator_half());
    assert!(syn_ack.tifid.is_complete());
    assert_eq!(syn_ack.tiack, syn.tiseq);
    assert_eq!(ack.tifid, syn_ack.tifid);
    assert_eq!(ack.tiseq, syn.tiseq);
    assert_eq!(ack.tiack, syn_ack.tiseq);
}

#[test]
fn syns_fill_the_option_space_exactly() {
    for trace in paper_traces::all() {
        let syn = &trace.packets[0].bytes;
        // IPv4 header 20 bytes, then TCP data offset in the high nibble of byte 12.
        assert_eq!(
            syn[20 + 12] >> 4,
            15,
            "{}: SYN header is 60 bytes",
            trace.name
        );
    }
}
