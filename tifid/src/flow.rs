//! One transport-independent flow: its positions and its lifecycle.
//!
//! Owns [`Flow`]: the TI positions of both byte streams (`snd_una`,
//! `snd_nxt`, `rcv_nxt`, with a FIN counted as one sequence number), the
//! lifecycle (attached to a TCP connection, detached and waiting for a resume,
//! finished), and the resume checks of DESIGN §4 that compare a peer's
//! TISeq/TIAck with these positions. It holds no bytes (the stack's buffers
//! do) and never reads a clock.

use core::time::Duration;
use std::net::IpAddr;

use crate::option::Tifid;
use crate::seq::Seq48;
use crate::time::Timestamp;

/// Which end of the flow we are. Only the initiator resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We sent the first SYN.
    Initiator,
    /// We answered it.
    Responder,
}

/// Where a flow is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// A live TCP connection carries the flow.
    Attached,
    /// The TCP connection is gone; the flow waits for a resume.
    Detached {
        /// When it was detached; it fails `resume_timeout` later.
        since: Timestamp,
    },
    /// Both FINs are acknowledged (or the flow failed): nothing can resume it.
    Finished,
}

/// A snapshot of a flow's TI positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positions {
    /// Oldest byte we sent that TCP has not acknowledged.
    pub snd_una: Seq48,
    /// Next new byte we will send.
    pub snd_nxt: Seq48,
    /// Next byte we expect from the peer.
    pub rcv_nxt: Seq48,
}

/// Why a flow operation was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// An acknowledgement for bytes we never sent, or behind `snd_una`.
    #[error("acknowledgement {ack} outside [{snd_una}, {snd_nxt}]")]
    AckOutsideWindow {
        /// The rejected acknowledgement.
        ack: Seq48,
        /// Our `snd_una`.
        snd_una: Seq48,
        /// Our `snd_nxt`.
        snd_nxt: Seq48,
    },
    /// Data written or received after the FIN in that direction.
    #[error("data after FIN")]
    AfterFin,
}

/// Why a resume request does not match a flow (DESIGN §4, checks 1 to 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResumeMismatch {
    /// Check 1: the flow is finished.
    #[error("flow is finished")]
    Finished,
    /// Check 2: the peer acknowledges bytes we no longer hold or never sent.
    #[error("peer TIAck {tiack} outside [{snd_una}, {snd_nxt}]")]
    TiAckOutsideWindow {
        /// The peer's TIAck.
        tiack: Seq48,
        /// Our `snd_una`.
        snd_una: Seq48,
        /// Our `snd_nxt`.
        snd_nxt: Seq48,
    },
    /// Check 3: the peer would start sending after bytes we never received.
    #[error("peer TISeq {tiseq} ahead of our rcv_nxt {rcv_nxt}")]
    TiSeqAhead {
        /// The peer's TISeq.
        tiseq: Seq48,
        /// Our `rcv_nxt`.
        rcv_nxt: Seq48,
    },
    /// Check 3: the peer would resend more than its send buffer can hold.
    #[error("resend gap of {gap} bytes exceeds {max}")]
    GapTooLarge {
        /// Bytes between the peer's TISeq and our `rcv_nxt`.
        gap: u64,
        /// The allowed bound.
        max: u64,
    },
    /// Check 4: the request comes from another address and migration is off.
    #[error("peer address changed from {expected} to {got}")]
    AddressChanged {
        /// The flow's peer.
        expected: IpAddr,
        /// The request's source.
        got: IpAddr,
    },
}

/// One TI-flow's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    tifid: Tifid,
    role: Role,
    lifecycle: Lifecycle,
    snd_una: Seq48,
    snd_nxt: Seq48,
    rcv_nxt: Seq48,
    fin_sent: bool,
    fin_received: bool,
    peer: IpAddr,
}

impl Flow {
    /// A new attached flow: we send from `local_isn`, the peer from `peer_isn`.
    pub fn new(tifid: Tifid, role: Role, local_isn: Seq48, peer_isn: Seq48, peer: IpAddr) -> Flow {
        Flow {
            tifid,
            role,
            lifecycle: Lifecycle::Attached,
            snd_una: local_isn,
            snd_nxt: local_isn,
            rcv_nxt: peer_isn,
            fin_sent: false,
            fin_received: false,
            peer,
        }
    }

    /// The flow identifier.
    pub fn tifid(&self) -> Tifid {
        self.tifid
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Where the flow is in its life.
    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle
    }

    /// The peer address the flow is bound to.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    /// The TI positions.
    pub fn positions(&self) -> Positions {
        Positions {
            snd_una: self.snd_una,
            snd_nxt: self.snd_nxt,
            rcv_nxt: self.rcv_nxt,
        }
    }

    /// Bytes (and FIN) sent but not acknowledged.
    pub fn unacknowledged(&self) -> u64 {
        self.snd_nxt.bytes_since(self.snd_una).unwrap_or(0)
    }

    /// Our FIN has been queued.
    pub fn fin_sent(&self) -> bool {
        self.fin_sent
    }

    /// The peer's FIN has been received.
    pub fn fin_received(&self) -> bool {
        self.fin_received
    }

    /// The application queued `len` more bytes: `snd_nxt` advances.
    pub fn on_write(&mut self, len: u64) -> Result<(), FlowError> {
        if self.fin_sent && len > 0 {
            return Err(FlowError::AfterFin);
        }
        self.snd_nxt += len;
        Ok(())
    }

    /// The application shut down its sending side: the FIN takes one TI
    /// sequence number. Returns the FIN's position. Idempotent.
    pub fn queue_fin(&mut self) -> Seq48 {
        if !self.fin_sent {
            self.fin_sent = true;
            self.snd_nxt += 1;
        }
        self.snd_nxt - 1
    }

    /// TCP acknowledged everything before `ack`: `snd_una` moves there.
    /// Returns how many sequence numbers were newly acknowledged.
    pub fn on_acked(&mut self, ack: Seq48) -> Result<u64, FlowError> {
        if !ack.is_within(self.snd_una, self.snd_nxt) {
            return Err(FlowError::AckOutsideWindow {
                ack,
                snd_una: self.snd_una,
                snd_nxt: self.snd_nxt,
            });
        }
        let advanced = ack.bytes_since(self.snd_una).unwrap_or(0);
        self.snd_una = ack;
        Ok(advanced)
    }

    /// `len` bytes were delivered into the TI receive buffer.
    pub fn on_received(&mut self, len: u64) -> Result<(), FlowError> {
        if self.fin_received && len > 0 {
            return Err(FlowError::AfterFin);
        }
        self.rcv_nxt += len;
        Ok(())
    }

    /// The peer's FIN arrived: it takes one TI sequence number. Idempotent.
    pub fn on_fin_received(&mut self) {
        if !self.fin_received {
            self.fin_received = true;
            self.rcv_nxt += 1;
        }
    }

    /// Both FINs are sent or received and ours is acknowledged.
    pub fn is_closed(&self) -> bool {
        self.fin_sent && self.fin_received && self.snd_una == self.snd_nxt
    }

    /// The TCP connection died: wait for a resume.
    pub fn detach(&mut self, now: Timestamp) {
        if self.lifecycle == Lifecycle::Attached {
            self.lifecycle = Lifecycle::Detached { since: now };
        }
    }

    /// A new TCP connection carries the flow again.
    pub fn attach(&mut self) {
        if self.lifecycle != Lifecycle::Finished {
            self.lifecycle = Lifecycle::Attached;
        }
    }

    /// Nothing can resume the flow any more.
    pub fn finish(&mut self) {
        self.lifecycle = Lifecycle::Finished;
    }

    /// A detached flow whose `resume_timeout` has passed.
    pub fn is_expired(&self, now: Timestamp, resume_timeout: Duration) -> bool {
        matches!(self.lifecycle, Lifecycle::Detached { since } if now.saturating_since(since) >= resume_timeout)
    }

    /// The peer moved to a new address (a resume from there was accepted).
    pub fn set_peer(&mut self, peer: IpAddr) {
        self.peer = peer;
    }

    /// Checks a resume request's positions against ours (DESIGN §4 checks 1
    /// to 3; the responder adds the address check with
    /// [`Flow::check_address`]). The initiator runs the same checks on the
    /// SYN-ACK ("the mirror conditions").
    ///
    /// `peer_tiseq` is the peer's `snd_una`, `peer_tiack` its `rcv_nxt`;
    /// `max_gap` bounds how much the peer may resend.
    pub fn check_resume(
        &self,
        peer_tiseq: Seq48,
        peer_tiack: Seq48,
        max_gap: u64,
    ) -> Result<(), ResumeMismatch> {
        if self.lifecycle == Lifecycle::Finished {
            return Err(ResumeMismatch::Finished);
        }
        if !peer_tiack.is_within(self.snd_una, self.snd_nxt) {
            return Err(ResumeMismatch::TiAckOutsideWindow {
                tiack: peer_tiack,
                snd_una: self.snd_una,
                snd_nxt: self.snd_nxt,
            });
        }
        let Some(gap) = self.rcv_nxt.bytes_since(peer_tiseq) else {
            return Err(ResumeMismatch::TiSeqAhead {
                tiseq: peer_tiseq,
                rcv_nxt: self.rcv_nxt,
            });
        };
        if gap > max_gap {
            return Err(ResumeMismatch::GapTooLarge { gap, max: max_gap });
        }
        Ok(())
    }

    /// DESIGN §4 check 4: same peer address unless migration is allowed.
    pub fn check_address(&self, from: IpAddr, allow_migration: bool) -> Result<(), ResumeMismatch> {
        if from == self.peer || allow_migration {
            Ok(())
        } else {
            Err(ResumeMismatch::AddressChanged {
                expected: self.peer,
                got: from,
            })
        }
    }

    /// After a resume handshake: the peer holds everything before
    /// `peer_rcv_nxt`, so our send restarts there. Returns the number of
    /// sequence numbers newly known to be delivered (bytes to drop from the
    /// send buffer).
    pub fn resume_from(&mut self, peer_rcv_nxt: Seq48) -> Result<u64, FlowError> {
        self.on_acked(peer_rcv_nxt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    fn flow() -> Flow {
        Flow::new(
            Tifid::new(0x0102_0304_0506),
            Role::Responder,
            Seq48::new(1000),
            Seq48::new(5000),
            PEER,
        )
    }

    #[test]
    fn write_ack_receive_move_positions() {
        let mut f = flow();
        f.on_write(100).expect("write");
        assert_eq!(f.positions().snd_nxt, Seq48::new(1100));
        assert_eq!(f.on_acked(Seq48::new(1040)), Ok(40));
        assert_eq!(f.unacknowledged(), 60);
        f.on_received(7).expect("receive");
        assert_eq!(f.positions().rcv_nxt, Seq48::new(5007));
    }

    #[test]
    fn ack_outside_window_is_rejected_and_changes_nothing() {
        let mut f = flow();
        f.on_write(10).expect("write");
        assert!(f.on_acked(Seq48::new(1011)).is_err());
        assert!(f.on_acked(Seq48::new(999)).is_err());
        assert_eq!(f.positions().snd_una, Seq48::new(1000));
    }

    #[test]
    fn fin_takes_one_sequence_number_each_way() {
        let mut f = flow();
        f.on_write(10).expect("write");
        assert_eq!(f.queue_fin(), Seq48::new(1010));
        assert_eq!(f.queue_fin(), Seq48::new(1010), "idempotent");
        assert_eq!(f.positions().snd_nxt, Seq48::new(1011));
        assert_eq!(f.on_write(1), Err(FlowError::AfterFin));
        f.on_fin_received();
        f.on_fin_received();
        assert_eq!(f.positions().rcv_nxt, Seq48::new(5001));
        assert_eq!(f.on_received(1), Err(FlowError::AfterFin));
        assert!(!f.is_closed());
        f.on_acked(Seq48::new(1011)).expect("ack FIN");
        assert!(f.is_closed());
    }

    #[test]
    fn detached_flow_expires_after_resume_timeout() {
        let mut f = flow();
        let timeout = Duration::from_secs(60);
        assert!(!f.is_expired(Timestamp::from_millis(1_000_000), timeout));
        f.detach(Timestamp::from_millis(1000));
        assert!(!f.is_expired(Timestamp::from_millis(60_999), timeout));
        assert!(f.is_expired(Timestamp::from_millis(61_000), timeout));
        f.attach();
        assert!(!f.is_expired(Timestamp::from_millis(61_000), timeout));
    }

    #[test]
    fn resume_check_accepts_positions_inside_the_window() {
        let mut f = flow();
        f.on_write(100).expect("write");
        f.on_acked(Seq48::new(1050)).expect("ack");
        f.on_received(20).expect("recv");
        for tiack in [1050, 1075, 1100] {
            assert_eq!(
                f.check_resume(Seq48::new(5010), Seq48::new(tiack), 1 << 20),
                Ok(())
            );
        }
        assert_eq!(
            f.check_resume(Seq48::new(5020), Seq48::new(1050), 0),
            Ok(())
        );
    }
}
