//! Replays of the captured stock-kernel traces (and of the paper's Trace 1
//! and Trace 2) into a fresh stack, each answer checked against the
//! protocol rules of DESIGN §4. The recorded peer's packets are rewritten to
//! the fresh stack's choices (ports, ISNs, TIFID half, TIAck; see
//! `pcap_tests::replay`), so its answers are judged by the rules, never
//! compared with the recorded ones byte for byte.
//!
//! Every failure message carries the replay's transcript as `tiflow dump`
//! prints it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use pcap_tests::exchange::App;
use pcap_tests::paper_traces::{self, TracePacket, traces_dir};
use pcap_tests::replay::{Replay, ReplayConfig, TraceError, load_trace, read_trace};
use pcap_tests::scenarios::{self, Scenario, Side};
use ti_stack::segment::Segment;
use ti_stack::{Mode, StreamEvent, StreamId, StreamMode};
use tifid::{FlowOptionRepr, Half, Seq48, Tifid};

fn trace(scenario: Scenario, side: Side) -> Vec<TracePacket> {
    let path = traces_dir().join(scenario.file_name(side));
    load_trace(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn option(seg: &Segment) -> Option<FlowOptionRepr> {
    seg.option.ok().flatten()
}

fn legacy() -> Option<StreamMode> {
    Some(StreamMode::Known(Mode::Legacy))
}

/// The stream was a TI-flow (before it closed: the app keeps the last mode
/// the stack reported). A clean-close test that passed with a legacy
/// stream would prove nothing about flow entries.
fn assert_was_resilient(app: &App, replay: &Replay) {
    assert!(
        matches!(app.mode(), Some(StreamMode::Known(Mode::Resilient { .. }))),
        "the stream was not a TI-flow: {:?}\n{}",
        app.mode(),
        replay.transcript()
    );
}

/// A replay of `scenario` as captured at `side`, our stack playing that
/// side's script; the script must finish and read exactly what the peer
/// sent.
fn replay_scenario(scenario: Scenario, side: Side, seed: u64) -> (Replay, App) {
    let mut config = ReplayConfig::new(scenario.our_addr(side));
    config.seed = seed;
    let mut replay = Replay::new(&trace(scenario, side), config);
    let mut app = App::new(scenario.app_role(side), scenario.exchange());
    let finished = match replay.run_app(&mut app) {
        Ok(finished) => finished,
        Err(e) => panic!("{e}\n{}", replay.transcript()),
    };
    assert!(
        finished,
        "the script did not finish: read {} of {} bytes\n{}",
        app.received().len(),
        app.expected().len(),
        replay.transcript()
    );
    assert_eq!(
        app.received(),
        app.expected(),
        "bytes read differ from what the peer sent\n{}",
        replay.transcript()
    );
    (replay, app)
}

/// Our answers that are TCP segments.
/// Replays with our stack listening on `port`; returns the first stream it
/// accepted.
fn run_listening(replay: &mut Replay, port: u16) -> Option<StreamId> {
    let mut listener = None;
    let mut accepted = None;
    replay.run(|stack, _| {
        let l = *listener.get_or_insert_with(|| stack.listen(port).expect("listen"));
        if accepted.is_none() {
            accepted = stack.accept(l).expect("listener exists");
        }
    });
    accepted
}

fn ours(replay: &Replay) -> Vec<Segment> {
    replay.answer_segments()
}

/// The peer's injected (rewritten) packets that are TCP segments.
fn peers(replay: &Replay) -> Vec<Segment> {
    let kind = replay.config().kind;
    replay
        .injected()
        .iter()
        .filter_map(|p| p.segment(kind))
        .collect()
}

fn is_syn(s: &Segment) -> bool {
    s.syn && !s.ack && !s.rst
}

fn is_syn_ack(s: &Segment) -> bool {
    s.syn && s.ack && !s.rst
}

/// Asserts that none of `segments` carries our option, nor a malformed one.
fn assert_no_option(segments: &[Segment], what: &str, replay: &Replay) {
    for seg in segments {
        assert_eq!(
            seg.option,
            Ok(None),
            "{what}: {seg:?} carries an option\n{}",
            replay.transcript()
        );
    }
}

// ------------------------------------------------------------------ (a)

#[test]
fn a_linux_syn_without_option_gets_syn_ack_without_option_and_legacy() {
    check_linux_client(scenarios::LINUX_CLIENT, 11);
}

#[test]
fn g_ipv6_linux_syn_without_option_gets_syn_ack_without_option_and_legacy() {
    check_linux_client(scenarios::LINUX_CLIENT_V6, 31);
}

/// Asserts every replayed segment, ours and the peer's, is of the
/// scenario's family.
fn assert_family(scenario: Scenario, replay: &Replay) {
    let t = replay.transcript();
    let all: Vec<Segment> = ours(replay).into_iter().chain(peers(replay)).collect();
    assert!(!all.is_empty(), "{t}");
    for seg in all {
        assert_eq!(
            (seg.src.is_ipv6(), seg.dst.is_ipv6()),
            (scenario.ipv6, scenario.ipv6),
            "{seg:?}\n{t}"
        );
    }
}

fn check_linux_client(scenario: Scenario, seed: u64) {
    let (replay, app) = replay_scenario(scenario, Side::Responder, seed);
    assert_family(scenario, &replay);
    let t = replay.transcript();
    let peer = peers(&replay);
    let syn = peer.first().expect("the Linux SYN was injected");
    assert!(is_syn(syn), "{t}");
    assert_eq!(syn.option, Ok(None), "a stock Linux SYN has no option\n{t}");
    let ours = ours(&replay);
    let syn_ack = ours.iter().find(|s| is_syn_ack(s)).expect("a SYN-ACK");
    assert_eq!(syn_ack.ack_number, syn.seq.wrapping_add(1), "{t}");
    assert_eq!(syn_ack.dst, syn.src, "{t}");
    assert_eq!(
        syn_ack.option,
        Ok(None),
        "no option in answer to a legacy SYN\n{t}"
    );
    assert_no_option(&ours, "our segments to a legacy client", &replay);
    assert_eq!(app.mode(), legacy(), "{t}");
    assert!(app.events().is_empty(), "{:?}", app.events());
}

// ------------------------------------------------------------------ (b)

#[test]
fn b_our_syn_offers_a_flow_and_after_a_linux_syn_ack_we_send_no_option() {
    check_linux_server(scenarios::LINUX_SERVER, 12);
}

#[test]
fn h_ipv6_our_syn_offers_a_flow_and_after_a_linux_syn_ack_we_send_no_option() {
    check_linux_server(scenarios::LINUX_SERVER_V6, 32);
}

fn check_linux_server(scenario: Scenario, seed: u64) {
    let (replay, app) = replay_scenario(scenario, Side::Initiator, seed);
    assert_family(scenario, &replay);
    let t = replay.transcript();
    let ours = ours(&replay);
    let syn = ours.first().expect("our SYN");
    assert!(is_syn(syn), "{t}");
    let offer = option(syn).expect("our SYN offers a flow");
    assert!(!offer.tifid.initiator_half().is_zero(), "{t}");
    assert!(offer.tifid.responder_half().is_zero(), "a new flow\n{t}");
    assert_eq!(offer.tiack, Seq48::ZERO, "{t}");
    let peer = peers(&replay);
    let syn_ack = peer.first().expect("the Linux SYN-ACK was injected");
    assert!(is_syn_ack(syn_ack), "{t}");
    assert_eq!(
        syn_ack.option,
        Ok(None),
        "Linux does not echo our option\n{t}"
    );
    assert_eq!(syn_ack.dst, syn.src, "rewritten to our new port\n{t}");
    assert_eq!(syn_ack.ack_number, syn.seq.wrapping_add(1), "{t}");
    assert_no_option(&ours[1..], "our segments after the SYN-ACK", &replay);
    assert!(ours.len() > 2, "ACK, data and FIN follow\n{t}");
    assert_eq!(app.mode(), legacy(), "{t}");
}

// ------------------------------------------------------------------ (c)

#[test]
fn c_option_syn_gets_syn_ack_with_flow_and_confirmed_stream_is_resilient() {
    let scenario = scenarios::TI_SETUP;
    let mut config = ReplayConfig::new(scenario.our_addr(Side::Responder));
    config.seed = 13;
    let mut replay = Replay::new(&trace(scenario, Side::Responder), config);
    let mut app = App::new(scenario.app_role(Side::Responder), scenario.exchange());
    // The flow as the stack holds it when the stream is accepted.
    let mut at_accept = None;
    let mut error = None;
    replay.run(|stack, now| {
        if let Err(e) = app.step(stack, now) {
            error.get_or_insert(e);
        }
        if at_accept.is_none()
            && let Some(Some(StreamMode::Known(Mode::Resilient { tifid }))) =
                app.stream().map(|id| stack.mode(id))
        {
            at_accept = stack.flows().get(tifid).map(|f| (tifid, f.positions()));
        }
    });
    let t = replay.transcript();
    assert_eq!(error, None, "{t}");
    assert_eq!(app.received(), app.expected(), "{t}");

    let peer = peers(&replay);
    let syn = peer.first().expect("the initiator's SYN");
    let offer = option(syn).expect("the recorded SYN offers a flow");
    assert!(offer.tifid.responder_half().is_zero(), "{t}");

    let ours = ours(&replay);
    let syn_ack = ours.iter().find(|s| is_syn_ack(s)).expect("a SYN-ACK");
    let answer = option(syn_ack).expect("our SYN-ACK takes the flow");
    assert_eq!(
        answer.tifid.initiator_half(),
        offer.tifid.initiator_half(),
        "a||b\n{t}"
    );
    assert!(
        !answer.tifid.responder_half().is_zero(),
        "b is nonzero\n{t}"
    );
    assert_eq!(answer.tiack, offer.tiseq, "TIAck = the peer's ISN\n{t}");

    let (tifid, positions) = at_accept.expect("the stream was accepted as resilient");
    assert_eq!(tifid, answer.tifid, "{t}");
    assert_eq!(positions.snd_una, answer.tiseq, "TISeq = our ISN_B\n{t}");
    assert_eq!(positions.rcv_nxt, offer.tiseq, "{t}");
    assert_eq!(
        app.mode(),
        Some(StreamMode::Known(Mode::Resilient { tifid })),
        "{t}"
    );

    // The confirming ACK, rewritten to our choices, is what confirmed it.
    let confirm = peer
        .iter()
        .find(|s| !s.syn && s.ack)
        .and_then(option)
        .expect("the recorded third ACK confirms");
    assert_eq!(confirm.tifid, answer.tifid, "{t}");
    assert_eq!(confirm.tiseq, offer.tiseq, "{t}");
    assert_eq!(confirm.tiack, answer.tiseq, "{t}");
    // The responder attaches the option to its SYN-ACK only.
    let after: Vec<Segment> = ours.iter().filter(|s| !s.syn).copied().collect();
    assert_no_option(&after, "our segments after the SYN-ACK", &replay);
}

#[test]
fn c_initiator_confirms_with_the_responders_values_until_it_answers() {
    let (replay, app) = replay_scenario(scenarios::TI_SETUP, Side::Initiator, 14);
    let t = replay.transcript();
    let ours = ours(&replay);
    let syn = ours.first().expect("our SYN");
    let offer = option(syn).expect("our SYN offers a flow");
    assert!(offer.tifid.responder_half().is_zero(), "{t}");
    let peer = peers(&replay);
    let syn_ack = peer.first().expect("the SYN-ACK");
    let answer = option(syn_ack).expect("the responder takes the flow");
    assert_eq!(
        answer.tifid.initiator_half(),
        offer.tifid.initiator_half(),
        "rewritten to our new half\n{t}"
    );
    assert_eq!(
        answer.tiack, offer.tiseq,
        "rewritten to our new TI ISN\n{t}"
    );
    assert_eq!(syn_ack.dst, syn.src, "rewritten to our new port\n{t}");
    let expected = FlowOptionRepr {
        tifid: answer.tifid,
        tiseq: offer.tiseq,
        tiack: answer.tiseq,
    };
    let third = ours.get(1).expect("our third ACK");
    assert!(!third.syn && third.ack, "{t}");
    assert_eq!(option(third), Some(expected), "the confirming option\n{t}");
    let first_data = ours
        .iter()
        .find(|s| s.payload_len > 0)
        .expect("our request");
    assert_eq!(
        option(first_data),
        Some(expected),
        "confirming until the responder's first segment after its SYN-ACK\n{t}"
    );
    // Once a segment of the responder's (other than the SYN-ACK) arrived,
    // nothing of ours carries the option.
    let confirmed_at = replay
        .injected()
        .iter()
        .filter_map(|p| p.segment(replay.config().kind).map(|s| (p.time, s)))
        .find(|(_, s)| !s.syn)
        .map(|(time, _)| time)
        .expect("a segment after the SYN-ACK");
    let later: Vec<Segment> = replay
        .answers()
        .iter()
        .filter(|p| p.time > confirmed_at)
        .filter_map(|p| p.segment(replay.config().kind))
        .collect();
    assert!(!later.is_empty(), "{t}");
    assert_no_option(&later, "after the responder's first segment", &replay);
    assert_eq!(
        app.mode(),
        Some(StreamMode::Known(Mode::Resilient {
            tifid: answer.tifid
        })),
        "{t}"
    );
}

/// The paper's Trace 2 SYN (and its confirming ACK) into our listener, the
/// addresses rewritten to ours.
#[test]
fn c_paper_trace2_syn_into_our_listener() {
    let trace = paper_traces::trace2();
    let mut config = ReplayConfig::new(scenarios::OURS);
    config.recorded_ours = Ipv4Addr::from(paper_traces::RESPONDER).into();
    config.peer_addresses = vec![(
        Ipv4Addr::from(paper_traces::INITIATOR).into(),
        scenarios::KERNEL.into(),
    )];
    config.seed = 15;
    let mut replay = Replay::new(&trace.packets, config);
    let accepted = run_listening(&mut replay, paper_traces::SSH_PORT);
    let t = replay.transcript();
    let peer = peers(&replay);
    let syn = peer.first().expect("the paper's SYN");
    assert_eq!(syn.src, SocketAddr::from((scenarios::KERNEL, 11305)), "{t}");
    assert_eq!(syn.dst, SocketAddr::from((scenarios::OURS, 22)), "{t}");
    let ours = ours(&replay);
    let syn_ack = ours.iter().find(|s| is_syn_ack(s)).expect("a SYN-ACK");
    assert_eq!(syn_ack.ack_number, 111, "{t}");
    let answer = option(syn_ack).expect("our SYN-ACK takes the flow");
    assert_eq!(answer.tifid.initiator_half(), Half::new(0x0a4530), "{t}");
    assert!(!answer.tifid.responder_half().is_zero(), "{t}");
    assert_eq!(answer.tiack, Seq48::new(0x1d), "{t}");
    // As the paper's tcpdump prints it.
    let printed = answer.to_string();
    assert!(printed.starts_with("flow-d tifid 0a4530"), "{printed}");
    assert!(printed.ends_with("tiack 00000000001d"), "{printed}");
    // The paper's third ACK, rewritten to our ISNs, confirms the flow.
    let ack = peer.get(1).expect("the paper's third ACK");
    assert_eq!(ack.ack_number, syn_ack.seq.wrapping_add(1), "{t}");
    assert_eq!(
        option(ack),
        Some(FlowOptionRepr {
            tifid: answer.tifid,
            tiseq: Seq48::new(0x1d),
            tiack: answer.tiseq,
        }),
        "{t}"
    );
    let id = accepted.expect("the connection was accepted");
    assert_eq!(
        replay.stack().mode(id),
        Some(StreamMode::Known(Mode::Resilient {
            tifid: answer.tifid
        })),
        "{t}"
    );
}

/// The paper's Trace 1 SYN into our listener: we take the flow, but the
/// paper's third ACK carries no confirmation, so the stream is legacy and
/// nothing after our SYN-ACK carries the option.
#[test]
fn paper_trace1_unconfirmed_flow_is_legacy() {
    let trace = paper_traces::trace1();
    let mut config = ReplayConfig::new(Ipv4Addr::from(paper_traces::RESPONDER));
    config.seed = 16;
    let mut replay = Replay::new(&trace.packets, config);
    let accepted = run_listening(&mut replay, paper_traces::SSH_PORT);
    let t = replay.transcript();
    let ours = ours(&replay);
    let syn_ack = ours.iter().find(|s| is_syn_ack(s)).expect("a SYN-ACK");
    let answer = option(syn_ack).expect("our SYN-ACK takes the offered flow");
    assert_eq!(answer.tifid.initiator_half(), Half::new(0x4b2209), "{t}");
    assert_eq!(answer.tiack, Seq48::new(0x1f), "{t}");
    let after: Vec<Segment> = ours.iter().filter(|s| !s.syn).copied().collect();
    assert_no_option(&after, "after an unconfirmed SYN-ACK", &replay);
    let id = accepted.expect("accepted as legacy");
    assert_eq!(replay.stack().mode(id), legacy(), "{t}");
    assert!(replay.stack().flows().is_empty(), "no flow kept\n{t}");
}

/// The paper's Trace 1 from the initiator's side: our SYN offers a flow,
/// the SYN-ACK (rewritten to our port and ISN) has none, our ACK has none.
#[test]
fn paper_trace1_as_initiator_falls_back() {
    let trace = paper_traces::trace1();
    let mut config = ReplayConfig::new(Ipv4Addr::from(paper_traces::INITIATOR));
    config.seed = 17;
    let mut replay = Replay::new(&trace.packets, config);
    let remote = SocketAddrV4::new(
        Ipv4Addr::from(paper_traces::RESPONDER),
        paper_traces::SSH_PORT,
    );
    let mut stream = None;
    replay.run(|stack, now| {
        if stream.is_none() {
            stream = Some(stack.connect(now, remote).expect("connect"));
        }
    });
    let t = replay.transcript();
    let ours = ours(&replay);
    let syn = ours.first().expect("our SYN");
    assert!(is_syn(syn) && option(syn).is_some(), "{t}");
    assert_ne!(syn.src.port(), 4874, "a fresh port of our own\n{t}");
    let peer = peers(&replay);
    let syn_ack = peer.first().expect("the paper's SYN-ACK");
    assert_eq!(syn_ack.dst, syn.src, "{t}");
    assert_eq!(syn_ack.ack_number, syn.seq.wrapping_add(1), "{t}");
    let ack = ours.get(1).expect("our third ACK");
    assert!(!ack.syn && ack.ack, "{t}");
    assert_eq!(ack.ack_number, 201, "{t}");
    assert_no_option(&ours[1..], "after a SYN-ACK without option", &replay);
    let id = stream.expect("connected");
    assert_eq!(replay.stack().mode(id), legacy(), "{t}");
}

/// DESIGN §4, Close: the flow entry is removed when both FINs are
/// acknowledged. The initiator closes first (FIN_WAIT, TIME_WAIT) and keeps
/// the entry while its connection is in TIME-WAIT (a responder whose last
/// ACK was lost can still be answered by one resume); it goes with it.
#[test]
fn c_clean_close_removes_the_initiators_flow_entry() {
    let (mut replay, app) = replay_scenario(scenarios::TI_SETUP, Side::Initiator, 25);
    assert_was_resilient(&app, &replay);
    let t = replay.transcript();
    assert_eq!(replay.stack().flows().len(), 1, "kept in TIME-WAIT\n{t}");
    let later = replay.now() + smoltcp::time::Duration::from_secs(11);
    for step in 0..3 {
        replay
            .stack_mut()
            .poll(later + smoltcp::time::Duration::from_millis(step));
    }
    let flows: Vec<_> = replay.stack().flows().iter().collect();
    assert!(flows.is_empty(), "{flows:?}\n{t}");
}

/// The same rule at the responder, which closes second (CLOSE_WAIT,
/// LAST_ACK). As on a real link, the peer's ACK of our FIN is processed in
/// the first poll after the one that sent the FIN, so the stack never sees
/// the socket in LAST_ACK between polls; it must still take the close for a
/// clean one (not "TI connection failed: closed", with the flow left
/// detached until `resume_timeout`).
#[test]
fn c_clean_close_removes_the_responders_flow_entry() {
    let (replay, app) = replay_scenario(scenarios::TI_SETUP, Side::Responder, 26);
    assert_was_resilient(&app, &replay);
    let flows: Vec<_> = replay.stack().flows().iter().collect();
    assert!(flows.is_empty(), "{flows:?}\n{}", replay.transcript());
}

// ------------------------------------------------------------------ (d)

/// Index (in the trace) of the peer's first resume SYN: a SYN to `ours`
/// carrying a complete TIFID.
fn resume_syn_index(trace: &[TracePacket], ours: IpAddr) -> usize {
    trace
        .iter()
        .position(|p| {
            Segment::parse(&p.bytes, tifid::DEFAULT_KIND).is_some_and(|s| {
                s.dst.ip() == ours
                    && is_syn(&s)
                    && option(&s).is_some_and(|o| o.tifid.is_complete())
            })
        })
        .expect("the trace holds a resume SYN")
}

#[test]
fn d_resume_syn_with_unknown_tifid_gets_rst_echoing_the_tifid() {
    check_unknown_resume(scenarios::TI_RESUME, 18);
}

#[test]
fn i_ipv6_resume_syn_with_unknown_tifid_gets_rst_echoing_the_tifid() {
    check_unknown_resume(scenarios::TI_RESUME_V6, 38);
}

fn check_unknown_resume(scenario: Scenario, seed: u64) {
    let ours_addr = scenario.our_addr(Side::Responder);
    let trace = trace(scenario, Side::Responder);
    let mut config = ReplayConfig::new(ours_addr);
    config.start = resume_syn_index(&trace, ours_addr);
    config.seed = seed;
    let mut replay = Replay::new(&trace, config);
    let accepted = run_listening(&mut replay, scenario.port);
    assert_family(scenario, &replay);
    let t = replay.transcript();
    let peer = peers(&replay);
    let syn = peer.first().expect("the resume SYN");
    let request = option(syn).expect("a resume SYN carries the option");
    assert!(request.tifid.is_complete(), "{t}");
    let ours = ours(&replay);
    let rst = ours.first().expect("an answer to the resume SYN");
    assert!(rst.rst, "refused with a RST\n{t}");
    assert_eq!((rst.src, rst.dst), (syn.dst, syn.src), "{t}");
    assert_eq!(rst.ack_number, syn.seq.wrapping_add(1), "{t}");
    assert_eq!(
        option(rst),
        Some(FlowOptionRepr {
            tifid: request.tifid,
            tiseq: Seq48::ZERO,
            tiack: Seq48::ZERO,
        }),
        "the refusal echoes the TIFID\n{t}"
    );
    assert!(
        !ours.iter().any(is_syn_ack),
        "an unknown flow is never answered with a SYN-ACK\n{t}"
    );
    assert_eq!(accepted, None, "{t}");
    assert!(replay.stack().flows().is_empty(), "{t}");
}

#[test]
fn d_full_resume_replayed_into_a_fresh_responder_is_accepted() {
    check_full_resume_responder(scenarios::TI_RESUME, 19);
}

#[test]
fn i_ipv6_full_resume_replayed_into_a_fresh_responder_is_accepted() {
    check_full_resume_responder(scenarios::TI_RESUME_V6, 39);
}

fn check_full_resume_responder(scenario: Scenario, seed: u64) {
    let (replay, app) = replay_scenario(scenario, Side::Responder, seed);
    assert_family(scenario, &replay);
    let t = replay.transcript();
    let exchange = scenario.exchange();
    let (req1, resp1) = (
        exchange.rounds[0].request.len() as u64,
        exchange.rounds[0].response.len() as u64,
    );
    let peer = peers(&replay);
    let syns: Vec<&Segment> = peer.iter().filter(|s| is_syn(s)).collect();
    assert_eq!(syns.len(), 2, "a new-flow SYN and a resume SYN\n{t}");
    let isn_a = option(syns[0]).expect("new flow").tiseq;
    let ours = ours(&replay);
    let syn_acks: Vec<&Segment> = ours.iter().filter(|s| is_syn_ack(s)).collect();
    assert_eq!(syn_acks.len(), 2, "{t}");
    let first = option(syn_acks[0]).expect("new flow taken");
    let resume = option(syns[1]).expect("resume SYN");
    assert_eq!(resume.tifid, first.tifid, "rewritten to our new half\n{t}");
    assert_eq!(resume.tiseq, isn_a + req1, "the initiator's snd_una\n{t}");
    assert_eq!(
        resume.tiack,
        first.tiseq + resp1,
        "rewritten: our rcv'd position\n{t}"
    );
    let accepted = option(syn_acks[1]).expect("the resume is accepted with the option");
    assert_eq!(
        accepted,
        FlowOptionRepr {
            tifid: first.tifid,
            tiseq: first.tiseq + resp1,
            tiack: isn_a + req1,
        },
        "SYN-ACK {{a||b, snd_una_B, rcv_nxt_B}}\n{t}"
    );
    assert!(
        app.events()
            .iter()
            .any(|e| matches!(e, StreamEvent::Resumed { .. })),
        "{:?}\n{t}",
        app.events()
    );
    assert_eq!(
        app.mode(),
        Some(StreamMode::Known(Mode::Resilient { tifid: first.tifid })),
        "{t}"
    );
}

#[test]
fn d_full_resume_replayed_from_a_fresh_initiator() {
    check_full_resume_initiator(scenarios::TI_RESUME, 20);
}

#[test]
fn i_ipv6_full_resume_replayed_from_a_fresh_initiator() {
    check_full_resume_initiator(scenarios::TI_RESUME_V6, 40);
}

fn check_full_resume_initiator(scenario: Scenario, seed: u64) {
    let (replay, app) = replay_scenario(scenario, Side::Initiator, seed);
    assert_family(scenario, &replay);
    let t = replay.transcript();
    let exchange = scenario.exchange();
    let (req1, resp1) = (
        exchange.rounds[0].request.len() as u64,
        exchange.rounds[0].response.len() as u64,
    );
    let ours = ours(&replay);
    let syns: Vec<&Segment> = ours.iter().filter(|s| is_syn(s)).collect();
    assert_eq!(syns.len(), 2, "our new-flow SYN and our resume SYN\n{t}");
    assert_ne!(syns[0].src.port(), syns[1].src.port(), "a fresh port\n{t}");
    let offer = option(syns[0]).expect("new flow");
    let peer = peers(&replay);
    let syn_acks: Vec<&Segment> = peer.iter().filter(|s| is_syn_ack(s)).collect();
    assert_eq!(syn_acks.len(), 2, "{t}");
    let taken = option(syn_acks[0]).expect("the responder took the flow");
    let tifid = taken.tifid;
    assert_eq!(tifid.initiator_half(), offer.tifid.initiator_half(), "{t}");
    assert_eq!(
        option(syns[1]),
        Some(FlowOptionRepr {
            tifid,
            tiseq: offer.tiseq + req1,
            tiack: taken.tiseq + resp1,
        }),
        "resume SYN {{a||b, snd_una_A, rcv_nxt_A}}\n{t}"
    );
    let accepted = option(syn_acks[1]).expect("the resume SYN-ACK");
    assert_eq!(accepted.tifid, tifid, "{t}");
    assert_eq!(
        accepted.tiack,
        offer.tiseq + req1,
        "rewritten to our TI space\n{t}"
    );
    assert!(app.failed_transport());
    assert!(
        app.events()
            .iter()
            .any(|e| matches!(e, StreamEvent::Resumed { .. })),
        "{:?}\n{t}",
        app.events()
    );
    assert_eq!(
        app.mode(),
        Some(StreamMode::Known(Mode::Resilient { tifid })),
        "{t}"
    );
}

// ------------------------------------------------------------- (e), (f)

#[test]
fn e_forward_strip_initiator_sends_no_option_after_fallback() {
    let (replay, app) = replay_scenario(scenarios::STRIP_FORWARD, Side::Initiator, 21);
    let t = replay.transcript();
    let ours = ours(&replay);
    let syn = ours.first().expect("our SYN");
    assert!(
        is_syn(syn) && option(syn).is_some(),
        "our SYN offers a flow\n{t}"
    );
    let peer = peers(&replay);
    let syn_ack = peer.first().expect("the SYN-ACK");
    assert!(is_syn_ack(syn_ack), "{t}");
    assert_eq!(
        syn_ack.option,
        Ok(None),
        "the responder never saw our option\n{t}"
    );
    assert_no_option(&ours[1..], "after the fallback", &replay);
    assert_eq!(app.mode(), legacy(), "{t}");
}

#[test]
fn e_forward_strip_responder_gets_nops_and_answers_legacy() {
    let (replay, app) = replay_scenario(scenarios::STRIP_FORWARD, Side::Responder, 22);
    let t = replay.transcript();
    let peer = peers(&replay);
    let syn = peer.first().expect("the SYN");
    assert!(is_syn(syn), "{t}");
    assert_eq!(syn.option, Ok(None), "TCPOPTSTRIP left NOPs\n{t}");
    let raw = &replay.injected()[0].bytes;
    let nops = raw.windows(20).any(|w| w.iter().all(|&b| b == 1));
    assert!(nops, "20 NOPs where the option was\n{t}");
    assert_no_option(&ours(&replay), "our segments", &replay);
    assert_eq!(app.mode(), legacy(), "{t}");
    assert!(replay.stack().flows().is_empty(), "{t}");
}

#[test]
fn f_return_strip_responder_sends_no_option_after_the_unconfirmed_syn_ack() {
    let (replay, app) = replay_scenario(scenarios::STRIP_RETURN, Side::Responder, 23);
    let t = replay.transcript();
    let peer = peers(&replay);
    let syn = peer.first().expect("the SYN");
    let offer = option(syn).expect("the forward path keeps the option");
    let ours = ours(&replay);
    let syn_ack = ours.first().expect("our SYN-ACK");
    assert!(is_syn_ack(syn_ack), "{t}");
    let answer = option(syn_ack).expect("we take the flow");
    assert_eq!(
        answer.tifid.initiator_half(),
        offer.tifid.initiator_half(),
        "{t}"
    );
    let third = peer.get(1).expect("the third ACK");
    assert_eq!(
        third.option,
        Ok(None),
        "the initiator fell back: no confirmation\n{t}"
    );
    assert_no_option(&ours[1..], "after the fallback", &replay);
    assert_eq!(app.mode(), legacy(), "{t}");
    assert!(replay.stack().flows().is_empty(), "no flow kept\n{t}");
}

#[test]
fn f_return_strip_initiator_sends_no_option_after_a_stripped_syn_ack() {
    let (replay, app) = replay_scenario(scenarios::STRIP_RETURN, Side::Initiator, 24);
    let t = replay.transcript();
    let ours = ours(&replay);
    let syn = ours.first().expect("our SYN");
    assert!(is_syn(syn) && option(syn).is_some(), "{t}");
    let peer = peers(&replay);
    let syn_ack = peer.first().expect("the SYN-ACK");
    assert!(is_syn_ack(syn_ack), "{t}");
    assert_eq!(syn_ack.option, Ok(None), "stripped on the return path\n{t}");
    assert_no_option(&ours[1..], "after the fallback", &replay);
    assert_eq!(app.mode(), legacy(), "{t}");
    assert!(replay.stack().flows().is_empty(), "{t}");
}

// ------------------------------------------------------------- harness

#[test]
fn every_scenario_has_its_captured_traces() {
    for scenario in scenarios::ALL {
        for &side in scenario.sides() {
            let packets = trace(scenario, side);
            assert!(packets.len() >= 8, "{}: {}", scenario.name, packets.len());
            let ours = scenario.our_addr(side);
            let mine = packets
                .iter()
                .filter_map(|p| Segment::parse(&p.bytes, tifid::DEFAULT_KIND))
                .filter(|s| s.src.ip() == ours)
                .count();
            assert!(mine > 0, "{}: nothing from {ours}", scenario.name);
        }
    }
}

#[test]
fn tifid_from_halves_matches_display() {
    // The harness rewrites halves with Tifid::from_halves; check it against
    // the printed form the tests compare with.
    let tifid = Tifid::from_halves(Half::new(0x0a4530), Half::new(0xbe79bf));
    assert_eq!(tifid, Tifid::new(0x0a45_30be_79bf));
}

#[test]
fn read_trace_rejects_bad_files_without_panicking() {
    assert!(read_trace(b"").is_err());
    assert!(read_trace(b"not a pcap file at all").is_err());
    let good = std::fs::read(traces_dir().join("ti-flow-setup.responder.pcap")).expect("trace");
    for len in 0..good.len() {
        // Truncated anywhere: an error or the packets that were whole.
        if let Ok(packets) = read_trace(&good[..len]) {
            assert!(packets.len() <= 13);
        }
    }
    let mut unknown = good.clone();
    // LINKTYPE_USER0, in the file's byte order (PcapTap writes big-endian).
    let linktype = if good.starts_with(&[0xa1, 0xb2, 0xc3, 0xd4]) {
        147u32.to_be_bytes()
    } else {
        147u32.to_le_bytes()
    };
    unknown[20..24].copy_from_slice(&linktype);
    assert!(matches!(
        read_trace(&unknown),
        Err(TraceError::LinkType(147))
    ));
}

#[test]
fn rewriter_never_panics_on_damaged_packets() {
    let scenario = scenarios::TI_RESUME;
    let trace = trace(scenario, Side::Initiator);
    // A rewriter that has learnt a connection and a flow, so every rewrite
    // path runs.
    let (replay, _) = replay_scenario(scenario, Side::Initiator, 27);
    let rewriter = replay.stack().device().rewriter().clone();
    for packet in &trace {
        for len in 0..=packet.bytes.len() {
            let mut bytes = packet.bytes[..len].to_vec();
            rewriter.rewrite(&mut bytes);
        }
        for i in 0..packet.bytes.len() {
            let mut bytes = packet.bytes.clone();
            bytes[i] ^= 0xff;
            rewriter.rewrite(&mut bytes);
        }
    }
}

#[test]
fn rewritten_packets_have_correct_checksums() {
    let (replay, _) = replay_scenario(scenarios::TI_RESUME, Side::Initiator, 28);
    for packet in replay.injected() {
        assert!(
            ti_stack::segment::checksum_ok(&packet.bytes),
            "{:?}",
            packet.segment(tifid::DEFAULT_KIND)
        );
    }
}
