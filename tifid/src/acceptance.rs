//! TCP's acceptance tests, applied before a segment may change TI state.
//!
//! Owns the pure judgements of RFC 9293 §3.10.7 and RFC 5961 that the stack
//! runs on a segment before smoltcp sees it (the boundary reads our option
//! first, so it must also judge first): does a SYN-ACK or RST answer our SYN,
//! does the ACK completing SYN-RECEIVED acknowledge our SYN-ACK, is a RST at
//! exactly `rcv_nxt` (reset), elsewhere in the window (challenge ACK) or
//! outside it (ignored), and is a segment acceptable at all (only those count
//! as signs of life). Numbers are 32-bit TCP sequence numbers, compared
//! modulo 2^32. It never reads packets, keeps no state and never fails.

/// What a connection's receive and send sequence spaces look like now,
/// as far as the stack can tell from outside its TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqWindow {
    /// Next sequence number expected from the peer.
    pub rcv_nxt: u32,
    /// Upper bound of the receive window we may have advertised.
    pub rcv_wnd: u32,
    /// Oldest of our sequence numbers not yet acknowledged.
    pub snd_una: u32,
    /// One past the highest sequence number we may have sent.
    pub snd_max: u32,
    /// How far below `snd_una` an old (duplicate) acknowledgement may be.
    pub max_ack_lag: u32,
}

/// The verdict on a RST in a synchronized state (RFC 5961 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RstVerdict {
    /// Exactly at `rcv_nxt`: the connection is reset.
    Reset,
    /// In the window but not exact: answer with a challenge ACK, change nothing.
    ChallengeAck,
    /// Outside the window: drop silently.
    Ignore,
}

/// `a - b` modulo 2^32.
fn distance(a: u32, b: u32) -> u32 {
    a.wrapping_sub(b)
}

/// A SYN-ACK (or a RST|ACK) in SYN-SENT is acceptable only if it
/// acknowledges our SYN exactly (RFC 9293 §3.10.7.3: SND.UNA < SEG.ACK <=
/// SND.NXT, and our SYN carries no data).
pub fn answers_our_syn(our_isn: u32, ack_flag: bool, ack: u32) -> bool {
    ack_flag && ack == our_isn.wrapping_add(1)
}

/// The ACK that completes SYN-RECEIVED must acknowledge our SYN-ACK exactly.
pub fn completes_our_syn_ack(our_isn: u32, ack_flag: bool, ack: u32) -> bool {
    answers_our_syn(our_isn, ack_flag, ack)
}

/// Judges a RST received in a synchronized state.
pub fn judge_rst(seq: u32, window: &SeqWindow) -> RstVerdict {
    if seq == window.rcv_nxt {
        RstVerdict::Reset
    } else if distance(seq, window.rcv_nxt) < window.rcv_wnd.max(1) {
        RstVerdict::ChallengeAck
    } else {
        RstVerdict::Ignore
    }
}

/// The segment's sequence numbers fall in the receive window (RFC 9293
/// §3.10.7.4, the four cases), with `len` counting payload plus FIN.
pub fn in_receive_window(seq: u32, len: u32, window: &SeqWindow) -> bool {
    let start_ok = distance(seq, window.rcv_nxt) < window.rcv_wnd.max(1);
    if len == 0 {
        return start_ok;
    }
    let last = seq.wrapping_add(len - 1);
    start_ok || distance(last, window.rcv_nxt) < window.rcv_wnd.max(1)
}

/// The acknowledgement number is one a peer holding this connection could
/// send: not beyond what we sent, not older than `max_ack_lag` before
/// `snd_una`.
pub fn acceptable_ack(ack: u32, window: &SeqWindow) -> bool {
    let oldest = window.snd_una.wrapping_sub(window.max_ack_lag);
    distance(ack, oldest) <= distance(window.snd_max, oldest)
}

/// A non-RST segment in a synchronized state proves the peer holds the
/// connection: its sequence numbers are in our window and its ACK is one
/// the peer could send. Only such segments count as signs of life.
pub fn is_sign_of_life(seq: u32, len: u32, ack_flag: bool, ack: u32, window: &SeqWindow) -> bool {
    ack_flag && in_receive_window(seq, len, window) && acceptable_ack(ack, window)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(rcv_nxt: u32, snd_una: u32) -> SeqWindow {
        SeqWindow {
            rcv_nxt,
            rcv_wnd: 65_536,
            snd_una,
            snd_max: snd_una.wrapping_add(1000),
            max_ack_lag: 65_536,
        }
    }

    #[test]
    fn syn_ack_must_acknowledge_our_isn() {
        assert!(answers_our_syn(1000, true, 1001));
        assert!(!answers_our_syn(1000, true, 1000));
        assert!(!answers_our_syn(1000, true, 77));
        assert!(!answers_our_syn(1000, false, 1001));
        assert!(answers_our_syn(u32::MAX, true, 0));
    }

    #[test]
    fn rst_in_syn_sent_needs_an_acceptable_ack() {
        // Same rule as the SYN-ACK: a RST without ACK, or with a wrong one, is ignored.
        assert!(!answers_our_syn(5, false, 6));
        assert!(!answers_our_syn(5, true, 7));
        assert!(answers_our_syn(5, true, 6));
    }

    #[test]
    fn ack_completing_syn_received_must_acknowledge_our_syn_ack() {
        assert!(completes_our_syn_ack(9, true, 10));
        assert!(!completes_our_syn_ack(9, true, 11));
        assert!(!completes_our_syn_ack(9, false, 10));
    }

    #[test]
    fn rst_exactly_at_rcv_nxt_resets() {
        assert_eq!(judge_rst(500, &window(500, 0)), RstVerdict::Reset);
    }

    #[test]
    fn rst_in_window_but_not_exact_gets_a_challenge_ack() {
        let w = window(500, 0);
        assert_eq!(judge_rst(501, &w), RstVerdict::ChallengeAck);
        assert_eq!(judge_rst(500 + 65_535, &w), RstVerdict::ChallengeAck);
    }

    #[test]
    fn rst_outside_the_window_is_ignored() {
        let w = window(500, 0);
        assert_eq!(judge_rst(499, &w), RstVerdict::Ignore);
        assert_eq!(judge_rst(500 + 65_536, &w), RstVerdict::Ignore);
        assert_eq!(judge_rst(0x8000_0000, &w), RstVerdict::Ignore);
    }

    #[test]
    fn window_tests_wrap_around() {
        let w = window(u32::MAX - 10, u32::MAX - 5);
        assert_eq!(judge_rst(u32::MAX - 10, &w), RstVerdict::Reset);
        assert_eq!(judge_rst(20, &w), RstVerdict::ChallengeAck);
        assert!(acceptable_ack(100, &w));
        assert!(!acceptable_ack(2000, &w));
    }

    #[test]
    fn only_in_window_segments_are_signs_of_life() {
        let w = window(500, 9000);
        // An answer to our keepalive or zero-window probe: seq = rcv_nxt,
        // ack = snd_una (nothing new acknowledged). The peer is alive.
        assert!(is_sign_of_life(500, 0, true, 9000, &w));
        // Data partly before rcv_nxt reaching into the window.
        assert!(is_sign_of_life(400, 200, true, 9000, &w));
        // A peer's keepalive (seq = rcv_nxt - 1) is not acceptable itself.
        assert!(!is_sign_of_life(499, 0, true, 9000, &w));
        // Blind forgeries: sequence number or acknowledgement far off.
        assert!(!is_sign_of_life(500 + 1_000_000, 0, true, 9000, &w));
        assert!(!is_sign_of_life(500, 0, true, 9000 + 5000, &w));
        assert!(!is_sign_of_life(
            500,
            0,
            true,
            9000u32.wrapping_sub(70_000),
            &w
        ));
        // No ACK flag: not a segment of a synchronized connection.
        assert!(!is_sign_of_life(500, 0, false, 9000, &w));
    }

    #[test]
    fn zero_window_accepts_only_the_exact_sequence_number() {
        let w = SeqWindow {
            rcv_wnd: 0,
            ..window(500, 0)
        };
        assert!(in_receive_window(500, 0, &w));
        assert!(!in_receive_window(501, 0, &w));
    }
}
