//! The conntrack table over netlink (ctnetlink).

use crate::consts::*;
use crate::msg::Msg;
use crate::socket::{Error, Pending, Socket};

/// `AF_INET`.
const AF_INET: u8 = 2;

/// Empties the IPv4 conntrack table of the calling thread's network
/// namespace, as `conntrack -F` does: an `IPCTNL_MSG_CT_DELETE` with no
/// attributes deletes every entry.
pub fn flush() -> Result<(), Error> {
    let mut socket = Socket::open()?;
    let seq = socket.next_seq();
    let m = Msg::new(
        NFNL_SUBSYS_CTNETLINK,
        IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        AF_INET,
        0,
    );
    socket.send(&m.finish())?;
    socket.wait_acks(&[Pending {
        seq,
        what: "conntrack flush".into(),
    }])
}
