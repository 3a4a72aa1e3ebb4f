//! What the builder lays out, parsed back with the stack's parser and with
//! etherparse.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use etherparse::{Icmpv4Type, NetSlice, SlicedPacket, TransportSlice};
use ti_stack::segment::{Segment, checksum_ok};
use tifid::{DEFAULT_KIND, FlowOptionRepr, Seq48, Tifid};

use super::options::{MSS_1460, mss_and_flow_option};
use super::*;

fn a() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 40_000)
}

fn b() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 80)
}

fn a6() -> SocketAddrV6 {
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 40_000, 0, 0)
}

fn b6() -> SocketAddrV6 {
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2), 80, 0, 0)
}

fn repr() -> FlowOptionRepr {
    FlowOptionRepr {
        tifid: Tifid::new(0x0a45_30be_79bf),
        tiseq: Seq48::new(0x1d),
        tiack: Seq48::new(0x1f),
    }
}

#[test]
fn a_syn_with_our_option_parses_back_with_valid_checksums() {
    let syn = Tcp::new(a(), b())
        .syn()
        .seq(0xfedc_ba98)
        .window(64_240)
        .options(&mss_and_flow_option(&repr(), DEFAULT_KIND))
        .build();
    assert_eq!(syn.len(), 20 + 20 + 24);
    assert!(checksum_ok(&syn), "smoltcp's checksums");
    assert!(checksums_ok(&syn));
    let seg = Segment::parse(&syn, DEFAULT_KIND).expect("a segment");
    assert_eq!((seg.src, seg.dst), (a().into(), b().into()));
    assert_eq!(
        (seg.seq, seg.ack_number, seg.window),
        (0xfedc_ba98, 0, 64_240)
    );
    assert!(seg.syn && !seg.ack && !seg.fin && !seg.rst);
    assert_eq!(seg.payload_len, 0);
    assert_eq!(seg.option, Ok(Some(repr())));

    let sliced = SlicedPacket::from_ip(&syn).expect("etherparse parses it");
    let Some(NetSlice::Ipv4(ip)) = sliced.net else {
        panic!("not IPv4");
    };
    let header = ip.header().to_header();
    assert_eq!(header.time_to_live, 64);
    assert!(header.dont_fragment && !header.more_fragments);
    assert_eq!(header.identification, 0);
    assert_eq!(header.calc_header_checksum(), header.header_checksum);
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
        panic!("not TCP");
    };
    assert_eq!(&tcp.options()[..4], &MSS_1460);
    let expected = tcp
        .to_header()
        .calc_checksum_ipv4(&header, tcp.payload())
        .expect("checksum");
    assert_eq!(tcp.checksum(), expected);
}

#[test]
fn flags_numbers_window_ttl_and_payload_are_as_set() {
    let p = Tcp::new(a(), b())
        .ack(7000)
        .psh()
        .seq(5000)
        .window(1024)
        .ttl(3)
        .payload(b"abc")
        .build();
    let seg = Segment::parse(&p, DEFAULT_KIND).expect("a segment");
    assert_eq!((seg.seq, seg.ack_number, seg.window), (5000, 7000, 1024));
    assert!(seg.ack && !seg.syn);
    assert_eq!(seg.payload_len, 3);
    assert_eq!(p[8], 3, "TTL");
    assert_eq!(p[33], flags::ACK | flags::PSH);
    assert_eq!(&p[40..], b"abc");
    assert!(checksum_ok(&p));
    // `flags` replaces, the named setters add.
    let p = Tcp::new(a(), b()).syn().flags(flags::RST).fin().build();
    assert_eq!(p[33], flags::RST | flags::FIN);
    let p = Tcp::new(a(), b()).flags(0xff).build();
    assert_eq!(p[33], 0xff);
    assert!(checksum_ok(&p));
}

#[test]
fn options_are_padded_to_a_word_and_limited_to_40_bytes() {
    let p = Tcp::new(a(), b()).options(&[1, 1, 3]).build();
    assert_eq!(p.len(), 44);
    assert_eq!(&p[40..44], &[1, 1, 3, 0]);
    assert_eq!(p[32] >> 4, 6);
    assert!(checksum_ok(&p));
    assert_eq!(
        Tcp::new(a(), b()).options(&[1; 41]).try_build(),
        Err(PacketError::TcpOptionsTooLong(44))
    );
    assert_eq!(Tcp::new(a(), b()).options(&[1; 40]).build().len(), 80);
}

#[test]
fn ipv6_tcp_and_udp_verify_with_etherparse() {
    let p = Tcp::new(a6(), b6()).syn().seq(1).payload(b"x").build();
    assert_eq!(p[0] >> 4, 6);
    let seg = Segment::parse(&p, DEFAULT_KIND).expect("the stack parses TCP/IPv6");
    assert_eq!(
        (seg.src, seg.dst, seg.payload_len),
        (a6().into(), b6().into(), 1)
    );
    assert!(checksums_ok(&p));
    assert!(checksum_ok(&p), "the stack's checksum check agrees");
    let sliced = SlicedPacket::from_ip(&p).expect("etherparse parses it");
    let Some(NetSlice::Ipv6(ip)) = sliced.net else {
        panic!("not IPv6");
    };
    assert_eq!(ip.header().hop_limit(), 64);
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
        panic!("not TCP");
    };
    assert!(tcp.syn());
    let expected = tcp
        .to_header()
        .calc_checksum_ipv6(&ip.header().to_header(), tcp.payload())
        .expect("checksum");
    assert_eq!(tcp.checksum(), expected);

    let u = Udp::new(a6(), b6()).payload(&[1, 2, 3]).build();
    let sliced = SlicedPacket::from_ip(&u).expect("etherparse parses it");
    let (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Udp(udp))) = (sliced.net, sliced.transport)
    else {
        panic!("not UDP over IPv6");
    };
    let expected = udp
        .to_header()
        .calc_checksum_ipv6(&ip.header().to_header(), udp.payload())
        .expect("checksum");
    assert_eq!(udp.checksum(), expected);
    assert!(checksums_ok(&u));
}

#[test]
fn udp_and_icmp_echo_verify_with_etherparse() {
    let u = Udp::new(a(), b()).payload(&[9; 33]).build();
    assert_eq!(Segment::parse(&u, DEFAULT_KIND), None);
    assert!(checksums_ok(&u));
    let sliced = SlicedPacket::from_ip(&u).expect("etherparse parses it");
    let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(udp))) = (sliced.net, sliced.transport)
    else {
        panic!("not UDP over IPv4");
    };
    assert_eq!((udp.source_port(), udp.destination_port()), (40_000, 80));
    assert_eq!(udp.length(), 8 + 33);
    let expected = udp
        .to_header()
        .calc_checksum_ipv4(&ip.header().to_header(), udp.payload())
        .expect("checksum");
    assert_eq!(udp.checksum(), expected);

    let i = IcmpEcho::new(*a().ip(), *b().ip(), 7, 1)
        .payload(&[5; 56])
        .build();
    assert_eq!(Segment::parse(&i, DEFAULT_KIND), None);
    assert!(checksums_ok(&i));
    let sliced = SlicedPacket::from_ip(&i).expect("etherparse parses it");
    let Some(TransportSlice::Icmpv4(icmp)) = sliced.transport else {
        panic!("not ICMPv4");
    };
    let Icmpv4Type::EchoRequest(echo) = icmp.icmp_type() else {
        panic!("not an echo request");
    };
    assert_eq!((echo.id, echo.seq), (7, 1));
    let expected = icmp.header().icmp_type.calc_checksum(icmp.payload());
    assert_eq!(icmp.checksum(), expected);
}

#[test]
fn bad_checksums_are_bad_and_nothing_else_changes() {
    let good = Tcp::new(a(), b()).ack(1).payload(b"data").build();
    let bad = Tcp::new(a(), b())
        .ack(1)
        .payload(b"data")
        .bad_checksum()
        .build();
    assert!(!checksum_ok(&bad) && !checksums_ok(&bad));
    assert_eq!(
        Segment::parse(&bad, DEFAULT_KIND),
        Segment::parse(&good, DEFAULT_KIND)
    );
    let differ: Vec<usize> = (0..good.len()).filter(|&i| good[i] != bad[i]).collect();
    assert_eq!(differ, [36], "only the TCP checksum's first byte");

    let bad_ip = Tcp::new(a(), b()).bad_ip_checksum().build();
    assert!(!checksum_ok(&bad_ip) && !checksums_ok(&bad_ip));
    let good = Tcp::new(a(), b()).build();
    let differ: Vec<usize> = (0..good.len()).filter(|&i| good[i] != bad_ip[i]).collect();
    assert_eq!(differ, [10]);

    for p in [
        Udp::new(a(), b()).bad_checksum().build(),
        IcmpEcho::new(*a().ip(), *b().ip(), 1, 1)
            .bad_checksum()
            .build(),
        Tcp::new(a6(), b6()).bad_checksum().build(),
    ] {
        assert!(!checksums_ok(&p), "{p:02x?}");
    }
}

#[test]
fn a_wrong_data_offset_is_written_with_a_checksum_over_the_bytes_sent() {
    // 8 option bytes, data offset 6 instead of 7: smoltcp reads 4 bytes of
    // options and 4 of payload, and the checksum (over the whole segment)
    // still verifies.
    let p = Tcp::new(a(), b()).options(&[1; 8]).data_offset(6).build();
    assert_eq!(p[32] >> 4, 6);
    assert!(checksum_ok(&p));
    assert_eq!(
        Segment::parse(&p, DEFAULT_KIND).map(|s| s.payload_len),
        Some(4)
    );
    for words in [0u8, 4, 15] {
        let p = Tcp::new(a(), b()).syn().data_offset(words).build();
        assert_eq!(p[32] >> 4, words);
        assert!(checksums_ok(&p));
        assert_eq!(Segment::parse(&p, DEFAULT_KIND), None, "offset {words}");
    }
    assert_eq!(
        Tcp::new(a(), b()).data_offset(16).try_build(),
        Err(PacketError::DataOffset(16))
    );
}

#[test]
fn ip_fields_can_be_broken_one_at_a_time() {
    let base = || Tcp::new(a(), b()).syn();
    let plain = base().build();
    let header_ok =
        |p: &[u8]| checksum::ipv4_header(&p[..20]) == u16::from_be_bytes([p[10], p[11]]);

    let v = base().ip_version(6).build();
    assert_eq!(v[0], 0x65);
    assert!(header_ok(&v));
    let ihl = base().ip_header_len(15).build();
    assert_eq!(ihl[0], 0x4f);
    assert_eq!(ihl.len(), plain.len(), "the layout is unchanged");
    let total = base().ip_total_len(u16::MAX).build();
    assert_eq!(&total[2..4], &[0xff, 0xff]);
    assert!(header_ok(&total));
    let udp = base().ip_protocol(17).build();
    assert_eq!(udp[9], 17);
    assert!(header_ok(&udp));
    assert_eq!(Segment::parse(&udp, DEFAULT_KIND), None);
    // The TCP checksum is still the TCP one.
    assert_eq!(&udp[36..38], &plain[36..38]);

    let first = base().fragment(true, 0).build();
    let later = base().fragment(false, 1480).build();
    for (p, more, offset) in [(&first, true, 0), (&later, false, 1480)] {
        let (header, _) = etherparse::Ipv4Header::from_slice(p).expect("IPv4");
        assert!(!header.dont_fragment);
        assert_eq!(header.more_fragments, more);
        assert_eq!(header.fragment_offset.byte_offset(), offset);
        assert_eq!(header.calc_header_checksum(), header.header_checksum);
        assert_eq!(Segment::parse(p, DEFAULT_KIND), None);
    }
    assert_eq!(
        base().fragment(false, 3).try_build(),
        Err(PacketError::FragmentOffset(3))
    );

    let with = base().ip_options(&[1, 1, 1]).build();
    assert_eq!(with[0], 0x46);
    assert_eq!(&with[20..24], &[1, 1, 1, 0]);
    assert!(checksum_ok(&with));
    let seg = Segment::parse(&with, DEFAULT_KIND).expect("a segment");
    assert_eq!(
        seg,
        Segment::parse(&plain, DEFAULT_KIND).expect("a segment")
    );
}

#[test]
fn what_cannot_be_laid_out_is_an_error_not_a_panic() {
    let v4: SocketAddr = a().into();
    let v6: SocketAddr = b6().into();
    assert!(matches!(
        Tcp::new(v4, v6).try_build(),
        Err(PacketError::MixedFamilies { .. })
    ));
    assert_eq!(
        Tcp::new(a6(), b6()).fragment(true, 0).try_build(),
        Err(PacketError::Ipv4Only("fragmentation"))
    );
    assert_eq!(
        Tcp::new(a6(), b6()).ip_header_len(5).try_build(),
        Err(PacketError::Ipv4Only("the header length field"))
    );
    assert_eq!(
        Tcp::new(a(), b()).ip_version(16).try_build(),
        Err(PacketError::Version(16))
    );
    assert_eq!(
        Tcp::new(a(), b()).ip_options(&[1; 41]).try_build(),
        Err(PacketError::IpOptionsTooLong(44))
    );
    assert_eq!(
        Udp::new(a(), b()).payload(&vec![0; 65_530]).try_build(),
        Err(PacketError::TooLong(8 + 65_530))
    );
    assert!(
        Udp::new(a6(), b6())
            .payload(&vec![0; 65_527])
            .try_build()
            .is_ok()
    );
}

#[test]
fn raw_ip_carries_any_bytes_behind_a_valid_header() {
    let p = RawIp::new(*a().ip(), *b().ip(), 6)
        .payload(&[0xab; 7])
        .build();
    assert_eq!(p.len(), 27);
    assert_eq!(p[9], 6);
    assert_eq!(&p[20..], &[0xab; 7]);
    let (header, _) = etherparse::Ipv4Header::from_slice(&p).expect("IPv4");
    assert_eq!(header.calc_header_checksum(), header.header_checksum);
    assert_eq!(Segment::parse(&p, DEFAULT_KIND), None, "7 bytes of TCP");
}

#[test]
fn refill_checksums_repairs_an_edited_packet_and_never_panics() {
    let mut p = Tcp::new(a(), b()).ack(1).payload(b"hello").build();
    p[44] = b'j';
    p[8] = 9;
    assert!(!checksums_ok(&p));
    refill_checksums(&mut p);
    assert!(checksum_ok(&p) && checksums_ok(&p));
    let mut u = Udp::new(a(), b()).payload(b"x").build();
    u[28] = b'y';
    refill_checksums(&mut u);
    assert!(checksums_ok(&u));
    let good = Tcp::new(a(), b()).syn().build();
    let mut spoiled = good.clone();
    spoil_checksum(&mut spoiled);
    assert_eq!(spoiled, Tcp::new(a(), b()).syn().bad_checksum().build());
    for len in 0..60 {
        let mut junk: Vec<u8> = (0..len).map(|i| (i * 37 + 0x45) as u8).collect();
        refill_checksums(&mut junk);
        spoil_checksum(&mut junk);
        let _ = checksums_ok(&junk);
    }
}
