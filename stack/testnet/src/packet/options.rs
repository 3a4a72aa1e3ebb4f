//! TCP option lists tests write by hand.

use tifid::FlowOptionRepr;

/// End of option list.
pub const EOL: u8 = 0;
/// No-operation.
pub const NOP: u8 = 1;
/// Maximum segment size 1460.
pub const MSS_1460: [u8; 4] = [2, 4, 0x05, 0xb4];

/// `list` padded with end-of-list bytes to a multiple of four.
pub fn padded(list: &[u8]) -> Vec<u8> {
    let mut v = list.to_vec();
    v.resize(list.len().next_multiple_of(4), EOL);
    v
}

/// Our flow option (20 bytes) with `kind`.
pub fn flow_option_bytes(repr: &FlowOptionRepr, kind: u8) -> [u8; 20] {
    repr.to_bytes(kind)
}

/// The option list of a SYN that carries a flow option: MSS 1460, then our
/// option with `kind` (24 bytes).
pub fn mss_and_flow_option(repr: &FlowOptionRepr, kind: u8) -> Vec<u8> {
    let mut list = MSS_1460.to_vec();
    list.extend_from_slice(&flow_option_bytes(repr, kind));
    list
}
