//! The negotiation in the three-way handshake: new flow, resume, confirmation,
//! fallback (DESIGN §4).
//!
//! Owns the [`Initiator`] and [`Responder`] state machines and the decisions
//! they return: which option to attach, which [`Mode`] results, refuse with a
//! RST, or report the flow lost. Sans-IO: the caller parses segments, passes
//! the parsed option in (an `Err` from [`crate::option::find_flow_option`]
//! counts as "no option"), and carries the decision out. It never touches a
//! byte stream.

use std::net::IpAddr;

use rand::{CryptoRng, Rng};

use crate::flow::{Flow, ResumeMismatch, Role};
use crate::option::{FlowOptionRepr, Half, OPTION_LEN, OptionError, Tifid};
use crate::seq::Seq48;
use crate::table::FlowTable;
use crate::time::Timestamp;

/// What the application sees a connection as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Plain TCP for its whole life.
    Legacy,
    /// A TI-flow that survives the loss of its TCP connection.
    Resilient {
        /// The flow identifier.
        tifid: Tifid,
    },
}

/// The option as found in a segment: `Ok(None)` when absent, `Err` when malformed.
pub type ParsedOption = Result<Option<FlowOptionRepr>, OptionError>;

/// Why a connection went legacy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FallbackCause {
    /// TI is disabled locally.
    #[error("TI disabled")]
    Disabled,
    /// The peer's SYN had no flow option.
    #[error("SYN without flow option")]
    NoOptionInSyn,
    /// The peer's SYN-ACK had no flow option.
    #[error("SYN-ACK without flow option")]
    NoOptionInSynAck,
    /// The option was present but malformed.
    #[error("malformed flow option: {0}")]
    Malformed(OptionError),
    /// The SYN's option is not a valid new-flow or resume request.
    #[error("invalid flow option in SYN")]
    InvalidSyn,
    /// The SYN-ACK's option does not answer our SYN.
    #[error("SYN-ACK option does not match our SYN")]
    InvalidSynAck,
    /// The local flow table is full.
    #[error("flow table full")]
    TableFull,
    /// The segment completing the handshake carried no confirming option.
    #[error("confirmation missing")]
    ConfirmationMissing,
    /// The confirming option does not match the SYN-ACK.
    #[error("confirmation does not match")]
    ConfirmationInvalid,
    /// The confirming option did not fit in a segment we had to send.
    #[error("flow option did not fit")]
    OptionDoesNotFit,
}

/// Why a resume request is refused by the responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefuseReason {
    /// No flow has this TIFID.
    #[error("unknown flow")]
    UnknownFlow,
    /// We are the initiator of this flow: only the initiator resumes.
    #[error("resume aimed at the flow's initiator")]
    NotResponder,
    /// The positions or the address do not match the flow.
    #[error(transparent)]
    Mismatch(#[from] ResumeMismatch),
}

/// Why the initiator lost a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LostCause {
    /// The responder refused the resume with a refusal RST.
    #[error("resume refused by the peer")]
    Refused,
    /// The SYN-ACK to a resume carried no (valid) flow option.
    #[error("resume answered without flow option")]
    SynAckWithoutOption,
    /// The SYN-ACK to a resume is for another flow.
    #[error("resume answered for another flow")]
    SynAckForeign,
    /// The responder's positions fail our mirror checks.
    #[error("resume positions do not match: {0}")]
    Mismatch(ResumeMismatch),
    /// No resume succeeded within `resume_timeout`.
    #[error("resume timed out")]
    Timeout,
    /// The peer aborted the flow (an acceptable RST carrying our option
    /// with zero positions, DESIGN §4 "Abort").
    #[error("aborted by the peer")]
    PeerAborted,
}

/// The initiator's reading of a SYN-ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynAckOutcome {
    /// A new flow: create it with these values and send the confirming ACK.
    Established {
        /// The completed TIFID.
        tifid: Tifid,
        /// The peer's initial TISeq.
        peer_isn: Seq48,
    },
    /// A resume accepted by the peer: send from `peer_rcv_nxt`, expect the
    /// peer to send from `peer_snd_una`.
    Resumed {
        /// The peer's `snd_una` (its TISeq).
        peer_snd_una: Seq48,
        /// The peer's `rcv_nxt` (its TIAck).
        peer_rcv_nxt: Seq48,
    },
    /// The connection is legacy.
    FellBack(FallbackCause),
    /// The flow cannot continue.
    Lost(LostCause),
}

/// The initiator's reading of a RST received in answer to its SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RstOutcome {
    /// A refusal RST echoing our TIFID: the flow is lost.
    Refused,
    /// A bare RST (a reject rule, a host not there yet): retry later.
    Transient,
}

/// The initiator side of one handshake (a new flow or a resume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initiator {
    syn: FlowOptionRepr,
    resume: bool,
    confirming: Option<FlowOptionRepr>,
}

impl Initiator {
    /// A new flow with our `half` and initial TISeq `isn`:
    /// SYN option `{half||0, isn, 0}`.
    pub fn new_flow(half: Half, isn: Seq48) -> Initiator {
        Initiator {
            syn: FlowOptionRepr {
                tifid: Tifid::from_halves(half, Half::ZERO),
                tiseq: isn,
                tiack: Seq48::ZERO,
            },
            resume: false,
            confirming: None,
        }
    }

    /// A resume of `flow`: SYN option `{tifid, snd_una, rcv_nxt}`.
    pub fn resume(flow: &Flow) -> Initiator {
        let p = flow.positions();
        Initiator {
            syn: FlowOptionRepr {
                tifid: flow.tifid(),
                tiseq: p.snd_una,
                tiack: p.rcv_nxt,
            },
            resume: true,
            confirming: None,
        }
    }

    /// The option for our SYN (and its retransmissions).
    pub fn syn_option(&self) -> FlowOptionRepr {
        self.syn
    }

    /// This handshake resumes an existing flow.
    pub fn is_resume(&self) -> bool {
        self.resume
    }

    /// Reads the SYN-ACK. For a resume, `flow` is the flow being resumed and
    /// `max_gap` the bound on what the peer may resend; both are ignored for
    /// a new flow.
    pub fn on_syn_ack(
        &mut self,
        option: ParsedOption,
        flow: Option<&Flow>,
        max_gap: u64,
    ) -> SynAckOutcome {
        let outcome = if self.resume {
            self.read_resume_syn_ack(option, flow, max_gap)
        } else {
            self.read_new_syn_ack(option)
        };
        if let SynAckOutcome::Established { tifid, peer_isn } = outcome {
            self.confirming = Some(FlowOptionRepr {
                tifid,
                tiseq: self.syn.tiseq,
                tiack: peer_isn,
            });
        }
        if let SynAckOutcome::Resumed { peer_snd_una, .. } = outcome {
            self.confirming = Some(FlowOptionRepr {
                tifid: self.syn.tifid,
                tiseq: self.syn.tiseq,
                tiack: peer_snd_una,
            });
        }
        outcome
    }

    fn read_new_syn_ack(&self, option: ParsedOption) -> SynAckOutcome {
        let repr = match option {
            Ok(Some(repr)) => repr,
            Ok(None) => return SynAckOutcome::FellBack(FallbackCause::NoOptionInSynAck),
            Err(e) => return SynAckOutcome::FellBack(FallbackCause::Malformed(e)),
        };
        let answers_us = repr.tifid.initiator_half() == self.syn.tifid.initiator_half()
            && !repr.tifid.responder_half().is_zero()
            && repr.tiack == self.syn.tiseq;
        if !answers_us {
            return SynAckOutcome::FellBack(FallbackCause::InvalidSynAck);
        }
        SynAckOutcome::Established {
            tifid: repr.tifid,
            peer_isn: repr.tiseq,
        }
    }

    fn read_resume_syn_ack(
        &self,
        option: ParsedOption,
        flow: Option<&Flow>,
        max_gap: u64,
    ) -> SynAckOutcome {
        let Ok(Some(repr)) = option else {
            return SynAckOutcome::Lost(LostCause::SynAckWithoutOption);
        };
        if repr.tifid != self.syn.tifid {
            return SynAckOutcome::Lost(LostCause::SynAckForeign);
        }
        let Some(flow) = flow else {
            return SynAckOutcome::Lost(LostCause::SynAckForeign);
        };
        match flow.check_resume(repr.tiseq, repr.tiack, max_gap) {
            Ok(()) => SynAckOutcome::Resumed {
                peer_snd_una: repr.tiseq,
                peer_rcv_nxt: repr.tiack,
            },
            Err(mismatch) => SynAckOutcome::Lost(LostCause::Mismatch(mismatch)),
        }
    }

    /// Reads a RST that answers our SYN.
    pub fn on_rst(&self, option: ParsedOption) -> RstOutcome {
        match option {
            Ok(Some(repr)) if self.resume && repr.tifid == self.syn.tifid => RstOutcome::Refused,
            _ => RstOutcome::Transient,
        }
    }

    /// The option to attach to every segment we send until the peer's first
    /// segment after its SYN-ACK arrives; `None` once confirmed.
    pub fn confirm_option(&self) -> Option<FlowOptionRepr> {
        self.confirming
    }

    /// A segment from the peer arrived. A non-SYN segment was sent after the
    /// SYN-ACK, so the peer has our confirmation: stop attaching it. Returns
    /// `true` when this segment ended the confirmation phase.
    pub fn on_peer_segment(&mut self, syn: bool) -> bool {
        !syn && self.confirming.take().is_some()
    }

    /// Most payload we may have in flight while confirming: one segment of
    /// MSS-20 bytes, so the option always fits. `None` once confirmed.
    pub fn first_flight_limit(&self, effective_mss: usize) -> Option<usize> {
        self.confirming
            .map(|_| effective_mss.saturating_sub(OPTION_LEN))
    }
}

/// The responder's decision on a SYN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SynDecision {
    /// Answer as plain TCP; keep no flow state.
    Legacy(FallbackCause),
    /// Answer with the SYN-ACK option of this handshake.
    Accept(Responder),
    /// A resume that must not proceed; the flow is untouched.
    Refuse {
        /// Why.
        reason: RefuseReason,
        /// The option for the refusal RST, or `None` to drop the SYN silently
        /// (the source is over its refusal limit).
        reply: Option<FlowOptionRepr>,
    },
}

/// The responder's reading of the segment that completes its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfirmOutcome {
    /// TI is on for this connection.
    Confirmed,
    /// No valid confirmation: a new flow goes legacy; a resume's connection
    /// is dropped and the flow stays detached.
    Unconfirmed(FallbackCause),
}

/// The responder side of one handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Responder {
    syn_ack: FlowOptionRepr,
    peer_tiseq: Seq48,
    peer_tiack: Seq48,
    resume: bool,
}

/// Settings the responder applies to a SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponderPolicy {
    /// Accept TI at all.
    pub enabled: bool,
}

impl Default for ResponderPolicy {
    fn default() -> ResponderPolicy {
        ResponderPolicy { enabled: true }
    }
}

impl Responder {
    /// Decides on a SYN from `source` carrying `option`.
    ///
    /// For a resume of an attached flow the caller must first have synced
    /// the flow's positions with its connection (drained what TCP
    /// acknowledged, DESIGN I1); on `Accept` it then abandons that connection.
    /// A refusal changes nothing but the per-source refusal count.
    pub fn on_syn<R: Rng + CryptoRng>(
        table: &mut FlowTable,
        policy: ResponderPolicy,
        option: ParsedOption,
        source: IpAddr,
        rng: &mut R,
        now: Timestamp,
    ) -> SynDecision {
        let repr = match option {
            Ok(Some(repr)) => repr,
            Ok(None) => return SynDecision::Legacy(FallbackCause::NoOptionInSyn),
            Err(e) => return SynDecision::Legacy(FallbackCause::Malformed(e)),
        };
        if !policy.enabled {
            return SynDecision::Legacy(FallbackCause::Disabled);
        }
        if repr.tifid.initiator_half().is_zero() {
            return SynDecision::Legacy(FallbackCause::InvalidSyn);
        }
        if repr.tifid.responder_half().is_zero() {
            return Responder::new_flow(table, repr, rng);
        }
        match Responder::check_resume(table, &repr, source) {
            Ok(()) => {
                let p = table.get(repr.tifid).map(Flow::positions);
                let Some(p) = p else {
                    return SynDecision::Refuse {
                        reason: RefuseReason::UnknownFlow,
                        reply: None,
                    };
                };
                SynDecision::Accept(Responder {
                    syn_ack: FlowOptionRepr {
                        tifid: repr.tifid,
                        tiseq: p.snd_una,
                        tiack: p.rcv_nxt,
                    },
                    peer_tiseq: repr.tiseq,
                    peer_tiack: repr.tiack,
                    resume: true,
                })
            }
            Err(reason) => {
                let answer = table.note_refusal(source, now);
                SynDecision::Refuse {
                    reason,
                    reply: answer.then_some(FlowOptionRepr {
                        tifid: repr.tifid,
                        tiseq: Seq48::ZERO,
                        tiack: Seq48::ZERO,
                    }),
                }
            }
        }
    }

    fn new_flow<R: Rng + CryptoRng>(
        table: &FlowTable,
        repr: FlowOptionRepr,
        rng: &mut R,
    ) -> SynDecision {
        if repr.tiack != Seq48::ZERO {
            return SynDecision::Legacy(FallbackCause::InvalidSyn);
        }
        let Some(half) = table.new_responder_half(repr.tifid.initiator_half(), rng) else {
            return SynDecision::Legacy(FallbackCause::TableFull);
        };
        SynDecision::Accept(Responder {
            syn_ack: FlowOptionRepr {
                tifid: Tifid::from_halves(repr.tifid.initiator_half(), half),
                tiseq: FlowTable::new_isn(rng),
                tiack: repr.tiseq,
            },
            peer_tiseq: repr.tiseq,
            peer_tiack: Seq48::ZERO,
            resume: false,
        })
    }

    fn check_resume(
        table: &FlowTable,
        repr: &FlowOptionRepr,
        source: IpAddr,
    ) -> Result<(), RefuseReason> {
        let flow = table.get(repr.tifid).ok_or(RefuseReason::UnknownFlow)?;
        if flow.role() != Role::Responder {
            return Err(RefuseReason::NotResponder);
        }
        let config = table.config();
        flow.check_resume(repr.tiseq, repr.tiack, config.max_resume_gap)?;
        flow.check_address(source, config.allow_migration)?;
        Ok(())
    }

    /// The flow identifier (complete).
    pub fn tifid(&self) -> Tifid {
        self.syn_ack.tifid
    }

    /// This handshake resumes an existing flow.
    pub fn is_resume(&self) -> bool {
        self.resume
    }

    /// The option for our SYN-ACK (and its retransmissions).
    pub fn syn_ack_option(&self) -> FlowOptionRepr {
        self.syn_ack
    }

    /// For a new flow: our initial TISeq and the peer's.
    pub fn isns(&self) -> (Seq48, Seq48) {
        (self.syn_ack.tiseq, self.peer_tiseq)
    }

    /// For a resume: the peer's `rcv_nxt`, where our sending restarts.
    pub fn resume_send_from(&self) -> Seq48 {
        self.peer_tiack
    }

    /// Reads the option of the first segment that completes our handshake
    /// (the third ACK, or the first data segment if that ACK was lost).
    pub fn on_handshake_ack(&self, option: ParsedOption) -> ConfirmOutcome {
        match option {
            Ok(Some(repr))
                if repr.tifid == self.syn_ack.tifid
                    && repr.tiack == self.syn_ack.tiseq
                    && repr.tiseq == self.peer_tiseq =>
            {
                ConfirmOutcome::Confirmed
            }
            Ok(Some(_)) => ConfirmOutcome::Unconfirmed(FallbackCause::ConfirmationInvalid),
            Ok(None) => ConfirmOutcome::Unconfirmed(FallbackCause::ConfirmationMissing),
            Err(e) => ConfirmOutcome::Unconfirmed(FallbackCause::Malformed(e)),
        }
    }
}
