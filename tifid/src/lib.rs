//! # tifid: the isolation boundary protocol, sans-IO
//!
//! The flow option of Brown et al. (ICCCN 2011) that places a TCP connection
//! inside a transport-independent flow (TI-flow): a 48-bit flow identifier
//! (TIFID) and 48-bit sequence (TISeq) and acknowledgement (TIAck) numbers,
//! exchanged only during the three-way handshake.
//!
//! This crate decides; it never acts. It has no sockets, reads no clock and
//! starts no threads: callers pass time in as [`time::Timestamp`] and carry
//! out the decisions it returns.
//!
//! - [`acceptance`]: TCP's acceptance tests, judged before TI state changes.
//! - [`option`]: the 20-byte option on the wire and TCP option lists.
//! - [`seq`]: 48-bit sequence arithmetic and the TI <-> TCP mapping.
//! - [`handshake`]: initiator and responder negotiation.
//! - [`flow`]: one flow's positions and lifecycle.
//! - [`lifecycle`]: the per-stream driver: failure detection, resume
//!   attempts and backoff, abort, loss, the legacy user timeout.
//! - [`table`]: the flow table.
//! - [`rtt`]: RTT estimation for the liveness budgets.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acceptance;
pub mod flow;
pub mod handshake;
pub mod lifecycle;
pub mod option;
pub mod rtt;
pub mod seq;
pub mod table;
pub mod time;

pub use flow::{Flow, Lifecycle, Positions, Role};
pub use handshake::{Initiator, Mode, Responder, SynDecision};
// `Lifecycle` at the crate root is `flow::Lifecycle`: the driver is
// `lifecycle::Lifecycle`.
pub use lifecycle::{FailureCause, LegacyEnd, LifecycleConfig};
pub use option::{DEFAULT_KIND, FlowOption, FlowOptionRepr, Half, Tifid};
pub use seq::Seq48;
pub use table::{FlowTable, TableConfig};
pub use time::Timestamp;
