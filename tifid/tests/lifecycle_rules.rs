//! The lifecycle driver's invariants over generated input sequences, through
//! the public API only (the per-rule tests are unit tests in
//! `tifid/src/lifecycle.rs`):
//!
//! - every connection is released exactly once: each `OpenAttempt` is
//!   followed by one `DropAttempt` unless `Resumed` attaches it; `Abandon` and
//!   `ResetConnection` only name an attached connection; a final state holds
//!   no connection but a cleanly finished one;
//! - attempts start at least `min_resume_interval` apart, whatever happens;
//! - only a resilient initiator opens attempts; a legacy stream never sends
//!   our option;
//! - nothing happens in a final state, which holds no timer, and
//!   `handle_timeout(now)` leaves no timer due at `now`.

use std::time::Duration;

use proptest::prelude::*;
use tifid::flow::Role;
use tifid::handshake::LostCause;
use tifid::lifecycle::{Action, FailureCause, Input, Lifecycle, LifecycleConfig, State};
use tifid::time::Timestamp;

/// One step of a stack: an input after a delay, or the next timer.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Fire due timers on time, then feed the input `delay_ms` later.
    Input { delay_ms: u64, input: Input },
    /// Jump to the next timer and fire it.
    Timer,
    /// A busy stack: fire timers only `delay_ms` late.
    Late { delay_ms: u64 },
}

fn arb_cause() -> impl Strategy<Value = FailureCause> {
    prop_oneof![
        Just(FailureCause::Reset),
        Just(FailureCause::PeerAbandoned),
        Just(FailureCause::Explicit),
        Just(FailureCause::AddressChanged),
        Just(FailureCause::OptionDidNotFit),
        Just(FailureCause::Closed),
        Just(FailureCause::Stall),
        Just(FailureCause::SilentPath),
        Just(FailureCause::Superseded),
    ]
}

fn arb_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        6 => Just(Input::PeerAnswered),
        4 => any::<bool>().prop_map(Input::Outstanding),
        3 => Just(Input::Progress),
        4 => arb_cause().prop_map(Input::Failed),
        3 => Just(Input::AttemptFailed { refused: false }),
        3 => Just(Input::Resumed),
        1 => Just(Input::AttemptFailed { refused: true }),
        1 => Just(Input::AttemptLost(LostCause::SynAckWithoutOption)),
        1 => Just(Input::Abort),
        1 => Just(Input::PeerAborted),
        1 => Just(Input::Finished),
    ]
}

/// Mostly bursts (a resume reset right after acceptance), sometimes long
/// pauses.
fn arb_delay() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 0u64..50, 1 => 0u64..3000]
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (arb_delay(), arb_input()).prop_map(|(delay_ms, input)| Step::Input { delay_ms, input }),
        3 => Just(Step::Timer),
        1 => (0u64..10_000).prop_map(|delay_ms| Step::Late { delay_ms }),
    ]
}

/// What the stack would hold, rebuilt from the actions alone.
struct Model {
    role: Role,
    resilient: bool,
    min_interval: Duration,
    attached: bool,
    /// Make before break: the initiator's failed connection, kept.
    suspect: bool,
    attempt: bool,
    last_open: Option<Timestamp>,
    done: bool,
}

impl Model {
    /// Checks one action taken at `now` and applies it.
    fn apply(&mut self, now: Timestamp, action: Action) {
        assert!(!self.done, "{action:?} in a final state");
        match action {
            Action::Abandon { cause, notify } => {
                assert!(
                    self.attached || self.suspect,
                    "abandon without a connection"
                );
                assert!(self.resilient || !notify, "legacy sent our option");
                if self.suspect {
                    // The suspect goes (the attempt that resumed, if any,
                    // is already attached: see `resumed`).
                    self.suspect = false;
                } else {
                    // A superseded connection is replaced, not just dropped.
                    self.attached = cause == FailureCause::Superseded;
                }
            }
            Action::Suspect { cause } => {
                assert!(self.resilient && self.role == Role::Initiator);
                assert!(
                    matches!(cause, FailureCause::Stall | FailureCause::SilentPath),
                    "{cause} kept"
                );
                assert!(
                    self.attached && !self.suspect,
                    "suspect without a connection"
                );
                self.attached = false;
                self.suspect = true;
            }
            Action::KeepSuspect => {
                assert!(self.suspect, "kept without a suspect");
                assert!(!self.attempt, "kept with an attempt open");
                self.suspect = false;
                self.attached = true;
            }
            Action::OpenAttempt => {
                assert!(self.resilient && self.role == Role::Initiator);
                assert!(!self.attached && !self.attempt, "attempt while connected");
                if let Some(last) = self.last_open {
                    assert!(now - last >= self.min_interval, "attempts too close");
                }
                self.last_open = Some(now);
                self.attempt = true;
            }
            Action::DropAttempt => {
                assert!(self.attempt, "drop without an attempt");
                self.attempt = false;
            }
            Action::ResetConnection { .. } => {
                assert!(self.attached || self.suspect, "reset without a connection");
                self.attached = false;
                self.suspect = false;
            }
            Action::Lose(_) => assert!(self.resilient),
            Action::Fail(_) => assert!(!self.resilient),
        }
    }

    /// The driver accepted `Resumed` in `before`: the connection attached.
    fn resumed(&mut self, before: State) {
        if matches!(before, State::Resuming { .. } | State::Detached) {
            self.attached = true;
            self.attempt = false;
        }
    }
}

fn drain(lc: &mut Lifecycle, model: &mut Model, now: Timestamp) {
    while let Some(action) = lc.poll_action() {
        model.apply(now, action);
    }
    if lc.state().is_final() {
        model.done = true;
        assert!(!model.attempt, "final with an attempt open");
        assert!(!model.suspect, "final with a suspect kept");
        assert!(
            !model.attached || lc.state() == State::Finished,
            "final with a connection attached"
        );
        assert_eq!(lc.poll_timeout(), None, "timer armed in a final state");
    }
}

fn fire(lc: &mut Lifecycle, model: &mut Model, now: Timestamp) {
    lc.handle_timeout(now);
    drain(lc, model, now);
    assert!(lc.poll_timeout().is_none_or(|t| t > now), "still due");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn every_connection_is_released_exactly_once_and_attempts_stay_rate_limited(
        initiator in any::<bool>(),
        resilient in prop::bool::weighted(0.8),
        steps in prop::collection::vec(arb_step(), 1..200),
    ) {
        let config = LifecycleConfig::default();
        let role = if initiator { Role::Initiator } else { Role::Responder };
        let mut now = Timestamp::from_millis(1000);
        let mut lc = Lifecycle::new(role, resilient, config, now);
        let mut model = Model {
            role,
            resilient,
            min_interval: config.min_resume_interval,
            attached: true,
            suspect: false,
            attempt: false,
            last_open: None,
            done: false,
        };
        for step in steps {
            match step {
                Step::Input { delay_ms, input } => {
                    let at = now + Duration::from_millis(delay_ms);
                    while let Some(due) = lc.poll_timeout().filter(|&t| t <= at) {
                        now = now.max(due);
                        fire(&mut lc, &mut model, now);
                    }
                    now = at;
                    let before = lc.state();
                    lc.handle(now, input);
                    if input == Input::Resumed && !before.is_final() && resilient {
                        model.resumed(before);
                    }
                    drain(&mut lc, &mut model, now);
                }
                Step::Timer => {
                    if let Some(due) = lc.poll_timeout() {
                        now = now.max(due);
                        fire(&mut lc, &mut model, now);
                    }
                }
                Step::Late { delay_ms } => {
                    now = now + Duration::from_millis(delay_ms);
                    fire(&mut lc, &mut model, now);
                }
            }
        }
    }
}
