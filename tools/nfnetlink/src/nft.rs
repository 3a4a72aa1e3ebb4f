//! nftables over netlink: tables, base chains and rules, sent to the
//! kernel in one batch (one transaction: all of it or nothing).
//!
//! A [`Table`] is what an `nft -f` script's `table` block says; the
//! expressions of a rule are the kernel's (what `nft --debug=netlink`
//! prints), built by the helpers below ([`ip_saddr_in`], [`oifname`],
//! [`tcp_dport`], [`dnat_to`], ...), so a rule reads like its nft line.
//! Addresses of both families: [`ip_saddr_in`] and [`ip6_saddr_in`] (and
//! the `daddr` ones), [`dnat_to`] of either; an `inet` table's rule tests
//! [`meta_nfproto`] before it reads or writes an address:
//!
//! ```
//! use ti_nfnetlink::nft::*;
//! // ip saddr 10.0.1.0/24 oifname != "tun0" masquerade
//! let rule: Vec<Expr> = [
//!     ip_saddr_in("10.0.1.0".parse().unwrap(), 24),
//!     oifname(Cmp::Neq, "tun0"),
//!     vec![masquerade(false)],
//! ]
//! .concat();
//! assert_eq!(rule.len(), 6);
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::consts::*;
use crate::msg::Msg;
use crate::socket::{Error, Pending, Socket};

/// `ENOENT`: no such table.
const ENOENT: i32 = 2;

/// A table's address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `ip`: IPv4.
    Ip,
    /// `ip6`: IPv6.
    Ip6,
    /// `inet`: IPv4 and IPv6.
    Inet,
}

impl Family {
    fn proto(self) -> u8 {
        match self {
            Family::Ip => NFPROTO_IPV4,
            Family::Ip6 => NFPROTO_IPV6,
            Family::Inet => NFPROTO_INET,
        }
    }

    /// Its name in nft syntax.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Inet => "inet",
        }
    }
}

/// Where a base chain hooks into the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `prerouting`.
    Prerouting = 0,
    /// `input`.
    Input = 1,
    /// `forward`.
    Forward = 2,
    /// `output`.
    Output = 3,
    /// `postrouting`.
    Postrouting = 4,
}

/// A base chain's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    /// `filter`.
    Filter,
    /// `nat`.
    Nat,
}

impl ChainType {
    fn name(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        }
    }
}

/// Priority `srcnat` (NAT at postrouting).
pub const SRCNAT: i32 = 100;
/// Priority `dstnat` (NAT at prerouting).
pub const DSTNAT: i32 = -100;
/// Priority `filter`.
pub const FILTER: i32 = 0;

/// A verdict: a chain's policy, or the end of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
}

impl Verdict {
    fn code(self) -> u32 {
        match self {
            Verdict::Accept => NF_ACCEPT,
            Verdict::Drop => NF_DROP,
        }
    }
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `==`.
    Eq,
    /// `!=`.
    Neq,
    /// `>=` (the register's bytes against `data`'s, as big-endian
    /// numbers: for values in network order).
    Gte,
    /// `<=` (as [`Cmp::Gte`]).
    Lte,
}

/// Which header a payload expression reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    /// The network header (IPv4 or IPv6).
    Network,
    /// The transport header (TCP, UDP).
    Transport,
}

/// A meta key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    /// The input interface's name.
    IifName,
    /// The output interface's name.
    OifName,
    /// The layer-4 protocol number.
    L4Proto,
    /// The layer-3 protocol (`meta nfproto`: IPv4 or IPv6), what an
    /// `inet` table's rules test before reading an address.
    NfProto,
}

/// The first data register (`reg 1`).
pub const REG_1: u32 = NFT_REG_1;
/// The second data register (`reg 2`).
pub const REG_2: u32 = NFT_REG_2;

/// Conntrack state bits (`ct state`), as the kernel's `NF_CT_STATE_*`.
pub mod ct_state {
    /// `invalid`.
    pub const INVALID: u32 = 1;
    /// `established`.
    pub const ESTABLISHED: u32 = 2;
    /// `related`.
    pub const RELATED: u32 = 4;
    /// `new`.
    pub const NEW: u32 = 8;
}

/// One expression of a rule, as the kernel runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Loads `len` bytes at `offset` of a header into `dreg`.
    Payload {
        /// The header.
        base: PayloadBase,
        /// Byte offset in it.
        offset: u32,
        /// How many bytes.
        len: u32,
        /// Destination register.
        dreg: u32,
    },
    /// `dreg = (sreg & mask) ^ xor` (mask and xor as long as the data).
    Bitwise {
        /// Source register.
        sreg: u32,
        /// Destination register.
        dreg: u32,
        /// The mask.
        mask: Vec<u8>,
        /// The xor.
        xor: Vec<u8>,
    },
    /// Goes on only if the register compares so with `data`.
    Cmp {
        /// The register.
        sreg: u32,
        /// The comparison.
        op: Cmp,
        /// The value, in the register's byte order.
        data: Vec<u8>,
    },
    /// Loads a meta key into `dreg`.
    Meta {
        /// The key.
        key: MetaKey,
        /// Destination register.
        dreg: u32,
    },
    /// Loads the packet's conntrack state bits into `dreg`.
    CtState {
        /// Destination register.
        dreg: u32,
    },
    /// `fib daddr type`: loads the type of the route to the packet's
    /// destination address (`RTN_*`, a 32-bit number in host order) into
    /// `dreg`.
    FibDaddrType {
        /// Destination register.
        dreg: u32,
    },
    /// Loads a constant into `dreg`.
    Immediate {
        /// Destination register.
        dreg: u32,
        /// The constant.
        data: Vec<u8>,
    },
    /// Ends the rule with a verdict.
    Verdict(Verdict),
    /// Masquerade: source NAT to the output interface's address.
    Masq {
        /// Random source ports (`masquerade random`).
        random: bool,
    },
    /// Source or destination NAT to the address in `addr_reg` (and the
    /// port in `proto_reg`).
    Nat {
        /// `snat` (false) or `dnat` (true).
        dnat: bool,
        /// The address is IPv6 (`dnat ip6 to`), else IPv4.
        ipv6: bool,
        /// Register with the address.
        addr_reg: u32,
        /// Register with the port, if any.
        proto_reg: Option<u32>,
    },
    /// Redirect: destination NAT to the host's own address (of the
    /// incoming interface, or loopback for the host's own packets) and the
    /// port in `proto_reg`.
    Redir {
        /// Register with the port.
        proto_reg: u32,
    },
}

/// The IPv4 address at `offset` of the network header is in
/// `NET/PREFIX`: payload, bitwise with the prefix's mask, cmp.
fn ipv4_field_in(offset: u32, net: Ipv4Addr, prefix: u8) -> Vec<Expr> {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    let net = u32::from(net) & mask;
    let addr = Expr::Payload {
        base: PayloadBase::Network,
        offset,
        len: 4,
        dreg: REG_1,
    };
    masked_cmp(addr, &mask.to_be_bytes(), Cmp::Eq, &net.to_be_bytes())
}

/// The IPv6 address at `offset` of the network header is in
/// `NET/PREFIX`: payload (16 bytes), bitwise with the prefix's mask, cmp.
fn ipv6_field_in(offset: u32, net: Ipv6Addr, prefix: u8) -> Vec<Expr> {
    let mask = u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0);
    let net = u128::from(net) & mask;
    let addr = Expr::Payload {
        base: PayloadBase::Network,
        offset,
        len: 16,
        dreg: REG_1,
    };
    masked_cmp(addr, &mask.to_be_bytes(), Cmp::Eq, &net.to_be_bytes())
}

/// `ip saddr NET/PREFIX`: payload (the IPv4 source address, offset 12),
/// bitwise with the prefix's mask, cmp.
pub fn ip_saddr_in(net: Ipv4Addr, prefix: u8) -> Vec<Expr> {
    ipv4_field_in(12, net, prefix)
}

/// `ip daddr NET/PREFIX`: payload (the IPv4 destination address, offset
/// 16), bitwise with the prefix's mask, cmp.
pub fn ip_daddr_in(net: Ipv4Addr, prefix: u8) -> Vec<Expr> {
    ipv4_field_in(16, net, prefix)
}

/// `ip6 saddr NET/PREFIX`: payload (the IPv6 source address, offset 8,
/// 16 bytes), bitwise with the prefix's mask, cmp.
pub fn ip6_saddr_in(net: Ipv6Addr, prefix: u8) -> Vec<Expr> {
    ipv6_field_in(8, net, prefix)
}

/// `ip6 daddr NET/PREFIX`: payload (the IPv6 destination address, offset
/// 24, 16 bytes), bitwise with the prefix's mask, cmp.
pub fn ip6_daddr_in(net: Ipv6Addr, prefix: u8) -> Vec<Expr> {
    ipv6_field_in(24, net, prefix)
}

/// `meta nfproto ipv4` or `meta nfproto ipv6`: in an `inet` table, the
/// test that comes before an address of that family is read or written.
pub fn meta_nfproto(ipv6: bool) -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: MetaKey::NfProto,
            dreg: REG_1,
        },
        Expr::Cmp {
            sreg: REG_1,
            op: Cmp::Eq,
            data: vec![if ipv6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }],
        },
    ]
}

/// `load & mask OP data`: a value loaded into register 1, masked,
/// compared (`mask` and `data` as long as the value).
fn masked_cmp(load: Expr, mask: &[u8], op: Cmp, data: &[u8]) -> Vec<Expr> {
    vec![
        load,
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: mask.to_vec(),
            xor: vec![0; mask.len()],
        },
        Expr::Cmp {
            sreg: REG_1,
            op,
            data: data.to_vec(),
        },
    ]
}

/// An interface name as the kernel compares it: `IFNAMSIZ` bytes,
/// NUL-padded (a longer name is cut, as the kernel would never match it).
fn ifname_bytes(name: &str) -> Vec<u8> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.truncate(IFNAMSIZ - 1);
    bytes.resize(IFNAMSIZ, 0);
    bytes
}

fn ifname_match(key: MetaKey, op: Cmp, name: &str) -> Vec<Expr> {
    vec![
        Expr::Meta { key, dreg: REG_1 },
        Expr::Cmp {
            sreg: REG_1,
            op,
            data: ifname_bytes(name),
        },
    ]
}

/// `iifname == NAME` or `iifname != NAME`.
pub fn iifname(op: Cmp, name: &str) -> Vec<Expr> {
    ifname_match(MetaKey::IifName, op, name)
}

/// `oifname == NAME` or `oifname != NAME`.
pub fn oifname(op: Cmp, name: &str) -> Vec<Expr> {
    ifname_match(MetaKey::OifName, op, name)
}

/// `meta l4proto tcp`: the layer-4 protocol is TCP (6).
pub fn l4proto_tcp() -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: MetaKey::L4Proto,
            dreg: REG_1,
        },
        Expr::Cmp {
            sreg: REG_1,
            op: Cmp::Eq,
            data: vec![6],
        },
    ]
}

/// The TCP destination port (transport header, offset 2, 2 bytes) loaded
/// into register 1, after [`l4proto_tcp`].
fn tcp_dport_load() -> Vec<Expr> {
    [
        l4proto_tcp(),
        vec![Expr::Payload {
            base: PayloadBase::Transport,
            offset: 2,
            len: 2,
            dreg: REG_1,
        }],
    ]
    .concat()
}

/// `tcp dport PORT`: the layer-4 protocol is TCP (6) and the
/// destination port (transport header, offset 2) is `port`.
pub fn tcp_dport(port: u16) -> Vec<Expr> {
    let mut exprs = tcp_dport_load();
    exprs.push(Expr::Cmp {
        sreg: REG_1,
        op: Cmp::Eq,
        data: port.to_be_bytes().to_vec(),
    });
    exprs
}

/// `tcp dport FIRST-LAST`: as [`tcp_dport`] when `first == last`, else
/// the port compared `>= first` and `<= last` (two `cmp`s, as nft sends
/// a range it matches, rather than the kernel's `range` expression). A
/// reversed range (`first > last`) matches nothing.
pub fn tcp_dport_range(first: u16, last: u16) -> Vec<Expr> {
    if first == last {
        return tcp_dport(first);
    }
    let mut exprs = tcp_dport_load();
    exprs.extend([
        Expr::Cmp {
            sreg: REG_1,
            op: Cmp::Gte,
            data: first.to_be_bytes().to_vec(),
        },
        Expr::Cmp {
            sreg: REG_1,
            op: Cmp::Lte,
            data: last.to_be_bytes().to_vec(),
        },
    ]);
    exprs
}

/// `fib daddr type local`: the packet is addressed to one of this host's
/// own addresses (the route to its destination is of type `RTN_LOCAL`,
/// compared as nft does, a 32-bit number in host order).
pub fn fib_daddr_type_local() -> Vec<Expr> {
    vec![
        Expr::FibDaddrType { dreg: REG_1 },
        Expr::Cmp {
            sreg: REG_1,
            op: Cmp::Eq,
            data: RTN_LOCAL.to_ne_bytes().to_vec(),
        },
    ]
}

/// `ct state STATES` (any of the [`ct_state`] bits in `states`).
pub fn ct_state_in(states: u32) -> Vec<Expr> {
    masked_cmp(
        Expr::CtState { dreg: REG_1 },
        &states.to_ne_bytes(),
        Cmp::Neq,
        &[0; 4],
    )
}

/// `masquerade` (`masquerade random` if `random`).
pub fn masquerade(random: bool) -> Expr {
    Expr::Masq { random }
}

/// The address's bytes, and whether it is IPv6.
fn addr_bytes(ip: IpAddr) -> (Vec<u8>, bool) {
    match ip {
        IpAddr::V4(v4) => (v4.octets().to_vec(), false),
        IpAddr::V6(v6) => (v6.octets().to_vec(), true),
    }
}

/// `dnat to ADDR:PORT` (`dnat ip to` or `dnat ip6 to` in an `inet`
/// table, by the address's family).
pub fn dnat_to(to: impl Into<SocketAddr>) -> Vec<Expr> {
    let to = to.into();
    let (data, ipv6) = addr_bytes(to.ip());
    vec![
        Expr::Immediate { dreg: REG_1, data },
        Expr::Immediate {
            dreg: REG_2,
            data: to.port().to_be_bytes().to_vec(),
        },
        Expr::Nat {
            dnat: true,
            ipv6,
            addr_reg: REG_1,
            proto_reg: Some(REG_2),
        },
    ]
}

/// `snat to ADDR` or `dnat to ADDR` (no port: the packet's is kept).
fn nat_to_addr(dnat: bool, to: IpAddr) -> Vec<Expr> {
    let (data, ipv6) = addr_bytes(to);
    vec![
        Expr::Immediate { dreg: REG_1, data },
        Expr::Nat {
            dnat,
            ipv6,
            addr_reg: REG_1,
            proto_reg: None,
        },
    ]
}

/// `snat to ADDR`.
pub fn snat_to(to: impl Into<IpAddr>) -> Vec<Expr> {
    nat_to_addr(false, to.into())
}

/// `dnat to ADDR` without a port, so the destination port is kept (`dnat
/// ip to` or `dnat ip6 to` in an `inet` table, by the address's family).
pub fn dnat_to_addr(to: impl Into<IpAddr>) -> Vec<Expr> {
    nat_to_addr(true, to.into())
}

/// `redirect to :PORT`: the port loaded into register 1 (network order),
/// then the redirection to it (to the host's own address: loopback for
/// the host's own packets).
pub fn redirect_to(port: u16) -> Vec<Expr> {
    vec![
        Expr::Immediate {
            dreg: REG_1,
            data: port.to_be_bytes().to_vec(),
        },
        Expr::Redir { proto_reg: REG_1 },
    ]
}

/// A base chain and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Its name.
    pub name: String,
    /// Its type.
    pub kind: ChainType,
    /// Its hook.
    pub hook: Hook,
    /// Its priority ([`SRCNAT`], [`DSTNAT`], [`FILTER`], ...).
    pub priority: i32,
    /// Its policy.
    pub policy: Verdict,
    /// Its rules, in order, each a list of expressions.
    pub rules: Vec<Vec<Expr>>,
}

/// A table and its chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Its family.
    pub family: Family,
    /// Its name.
    pub name: String,
    /// Its chains.
    pub chains: Vec<Chain>,
}

fn put_data(m: &mut Msg, attr: u16, data: &[u8]) {
    m.begin(attr).put(NFTA_DATA_VALUE, data).end();
}

fn put_expr(m: &mut Msg, expr: &Expr) {
    let name = match expr {
        Expr::Payload { .. } => "payload",
        Expr::Bitwise { .. } => "bitwise",
        Expr::Cmp { .. } => "cmp",
        Expr::Meta { .. } => "meta",
        Expr::CtState { .. } => "ct",
        Expr::FibDaddrType { .. } => "fib",
        Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
        Expr::Masq { .. } => "masq",
        Expr::Nat { .. } => "nat",
        Expr::Redir { .. } => "redir",
    };
    m.begin(NFTA_LIST_ELEM).put_str(NFTA_EXPR_NAME, name);
    m.begin(NFTA_EXPR_DATA);
    match expr {
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        } => {
            let base = match base {
                PayloadBase::Network => NFT_PAYLOAD_NETWORK_HEADER,
                PayloadBase::Transport => NFT_PAYLOAD_TRANSPORT_HEADER,
            };
            m.put_be32(NFTA_PAYLOAD_DREG, *dreg)
                .put_be32(NFTA_PAYLOAD_BASE, base)
                .put_be32(NFTA_PAYLOAD_OFFSET, *offset)
                .put_be32(NFTA_PAYLOAD_LEN, *len);
        }
        Expr::Bitwise {
            sreg,
            dreg,
            mask,
            xor,
        } => {
            let len = u32::try_from(mask.len()).unwrap_or(u32::MAX);
            m.put_be32(NFTA_BITWISE_SREG, *sreg)
                .put_be32(NFTA_BITWISE_DREG, *dreg)
                .put_be32(NFTA_BITWISE_LEN, len);
            put_data(m, NFTA_BITWISE_MASK, mask);
            put_data(m, NFTA_BITWISE_XOR, xor);
        }
        Expr::Cmp { sreg, op, data } => {
            let op = match op {
                Cmp::Eq => NFT_CMP_EQ,
                Cmp::Neq => NFT_CMP_NEQ,
                Cmp::Gte => NFT_CMP_GTE,
                Cmp::Lte => NFT_CMP_LTE,
            };
            m.put_be32(NFTA_CMP_SREG, *sreg).put_be32(NFTA_CMP_OP, op);
            put_data(m, NFTA_CMP_DATA, data);
        }
        Expr::Meta { key, dreg } => {
            let key = match key {
                MetaKey::IifName => NFT_META_IIFNAME,
                MetaKey::OifName => NFT_META_OIFNAME,
                MetaKey::L4Proto => NFT_META_L4PROTO,
                MetaKey::NfProto => NFT_META_NFPROTO,
            };
            m.put_be32(NFTA_META_KEY, key)
                .put_be32(NFTA_META_DREG, *dreg);
        }
        Expr::CtState { dreg } => {
            m.put_be32(NFTA_CT_KEY, NFT_CT_STATE)
                .put_be32(NFTA_CT_DREG, *dreg);
        }
        Expr::FibDaddrType { dreg } => {
            // In nft's order: flags, result, register.
            m.put_be32(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR)
                .put_be32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE)
                .put_be32(NFTA_FIB_DREG, *dreg);
        }
        Expr::Immediate { dreg, data } => {
            m.put_be32(NFTA_IMMEDIATE_DREG, *dreg);
            put_data(m, NFTA_IMMEDIATE_DATA, data);
        }
        Expr::Verdict(v) => {
            m.put_be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT)
                .begin(NFTA_IMMEDIATE_DATA)
                .begin(NFTA_DATA_VERDICT)
                .put_be32(NFTA_VERDICT_CODE, v.code())
                .end()
                .end();
        }
        Expr::Masq { random } => {
            if *random {
                m.put_be32(NFTA_MASQ_FLAGS, NF_NAT_RANGE_PROTO_RANDOM);
            }
        }
        Expr::Nat {
            dnat,
            ipv6,
            addr_reg,
            proto_reg,
        } => {
            let family = if *ipv6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 };
            m.put_be32(
                NFTA_NAT_TYPE,
                if *dnat { NFT_NAT_DNAT } else { NFT_NAT_SNAT },
            )
            .put_be32(NFTA_NAT_FAMILY, u32::from(family))
            .put_be32(NFTA_NAT_REG_ADDR_MIN, *addr_reg);
            if let Some(reg) = proto_reg {
                m.put_be32(NFTA_NAT_REG_PROTO_MIN, *reg)
                    .put_be32(NFTA_NAT_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
            }
        }
        Expr::Redir { proto_reg } => {
            m.put_be32(NFTA_REDIR_REG_PROTO_MIN, *proto_reg)
                .put_be32(NFTA_REDIR_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
        }
    }
    m.end().end();
}

/// One batch (transaction) of nftables messages being built.
struct Batch<'a> {
    socket: &'a mut Socket,
    bytes: Vec<u8>,
    pending: Vec<Pending>,
}

impl<'a> Batch<'a> {
    fn new(socket: &'a mut Socket) -> Batch<'a> {
        let seq = socket.next_seq();
        let begin = Msg::raw(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq,
            NFPROTO_UNSPEC,
            u16::from(NFNL_SUBSYS_NFTABLES),
        );
        Batch {
            socket,
            bytes: begin.finish(),
            pending: Vec::new(),
        }
    }

    /// Adds one message (acknowledged), its attributes written by `build`.
    fn add(
        &mut self,
        kind: u8,
        flags: u16,
        family: Family,
        what: String,
        build: impl FnOnce(&mut Msg),
    ) {
        let seq = self.socket.next_seq();
        let mut m = Msg::new(
            NFNL_SUBSYS_NFTABLES,
            kind,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            family.proto(),
            0,
        );
        build(&mut m);
        self.bytes.extend_from_slice(&m.finish());
        self.pending.push(Pending { seq, what });
    }

    /// Sends the batch and checks every acknowledgement.
    fn commit(mut self) -> Result<(), Error> {
        let seq = self.socket.next_seq();
        let end = Msg::raw(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq,
            NFPROTO_UNSPEC,
            u16::from(NFNL_SUBSYS_NFTABLES),
        );
        self.bytes.extend_from_slice(&end.finish());
        self.socket.send(&self.bytes)?;
        self.socket.wait_acks(&self.pending)
    }

    fn new_table(&mut self, family: Family, name: &str) {
        self.add(
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE,
            family,
            format!("new table {} {name}", family.name()),
            |m| {
                m.put_str(NFTA_TABLE_NAME, name)
                    .put_be32(NFTA_TABLE_FLAGS, 0);
            },
        );
    }

    fn delete_table(&mut self, family: Family, name: &str) {
        self.add(
            NFT_MSG_DELTABLE,
            0,
            family,
            format!("delete table {} {name}", family.name()),
            |m| {
                m.put_str(NFTA_TABLE_NAME, name);
            },
        );
    }

    fn new_chain(&mut self, table: &Table, chain: &Chain) {
        let what = format!(
            "new chain {} {} {}",
            table.family.name(),
            table.name,
            chain.name
        );
        self.add(NFT_MSG_NEWCHAIN, NLM_F_CREATE, table.family, what, |m| {
            m.put_str(NFTA_CHAIN_TABLE, &table.name)
                .put_str(NFTA_CHAIN_NAME, &chain.name)
                .begin(NFTA_CHAIN_HOOK)
                .put_be32(NFTA_HOOK_HOOKNUM, chain.hook as u32)
                .put(NFTA_HOOK_PRIORITY, &chain.priority.to_be_bytes())
                .end()
                .put_be32(NFTA_CHAIN_POLICY, chain.policy.code())
                .put_str(NFTA_CHAIN_TYPE, chain.kind.name());
        });
    }

    fn new_rule(&mut self, table: &Table, chain: &Chain, index: usize, exprs: &[Expr]) {
        let what = format!(
            "rule {} of chain {} {} {}",
            index + 1,
            table.family.name(),
            table.name,
            chain.name
        );
        self.add(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            table.family,
            what,
            |m| {
                m.put_str(NFTA_RULE_TABLE, &table.name)
                    .put_str(NFTA_RULE_CHAIN, &chain.name)
                    .begin(NFTA_RULE_EXPRESSIONS);
                for e in exprs {
                    put_expr(m, e);
                }
                m.end();
            },
        );
    }
}

/// Creates `table` with its chains and rules, replacing any table of the
/// same family and name, in one transaction: a new (empty) table, its
/// deletion (which therefore cannot fail), the table again, its chains,
/// its rules. Either all of it is in force afterwards or nothing changed.
pub fn replace_table(table: &Table) -> Result<(), Error> {
    let mut socket = Socket::open()?;
    let mut batch = Batch::new(&mut socket);
    batch.new_table(table.family, &table.name);
    batch.delete_table(table.family, &table.name);
    batch.new_table(table.family, &table.name);
    for chain in &table.chains {
        batch.new_chain(table, chain);
    }
    for chain in &table.chains {
        for (i, rule) in chain.rules.iter().enumerate() {
            batch.new_rule(table, chain, i, rule);
        }
    }
    batch.commit()
}

/// Deletes a table with everything in it. Returns whether there was one.
pub fn delete_table(family: Family, name: &str) -> Result<bool, Error> {
    let mut socket = Socket::open()?;
    let mut batch = Batch::new(&mut socket);
    batch.delete_table(family, name);
    match batch.commit() {
        Ok(()) => Ok(true),
        Err(e) if e.refusal_errno() == Some(ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether a table exists.
pub fn table_exists(family: Family, name: &str) -> Result<bool, Error> {
    let mut socket = Socket::open()?;
    let seq = socket.next_seq();
    let mut m = Msg::new(
        NFNL_SUBSYS_NFTABLES,
        NFT_MSG_GETTABLE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        family.proto(),
        0,
    );
    m.put_str(NFTA_TABLE_NAME, name);
    socket.send(&m.finish())?;
    let pending = [Pending {
        seq,
        what: format!("get table {} {name}", family.name()),
    }];
    match socket.wait_acks(&pending) {
        Ok(()) => Ok(true),
        Err(e) if e.refusal_errno() == Some(ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_a_mask_and_the_network() {
        let exprs = ip_saddr_in(Ipv4Addr::new(10, 0, 1, 7), 20);
        assert_eq!(
            exprs[1],
            Expr::Bitwise {
                sreg: REG_1,
                dreg: REG_1,
                mask: vec![255, 255, 240, 0],
                xor: vec![0; 4]
            }
        );
        assert_eq!(
            exprs[2],
            Expr::Cmp {
                sreg: REG_1,
                op: Cmp::Eq,
                data: vec![10, 0, 0, 0]
            }
        );
        let all = ip_saddr_in(Ipv4Addr::new(10, 0, 1, 7), 0);
        assert!(matches!(&all[1], Expr::Bitwise { mask, .. } if mask == &[0; 4]));
    }

    #[test]
    fn an_ipv6_prefix_reads_the_16_byte_source_address() {
        let exprs = ip6_saddr_in("fd00:1:2:3:4::7".parse().expect("addr"), 56);
        assert_eq!(
            exprs[0],
            Expr::Payload {
                base: PayloadBase::Network,
                offset: 8,
                len: 16,
                dreg: REG_1
            }
        );
        let mut mask = vec![0xff; 7];
        mask.resize(16, 0);
        assert!(
            matches!(&exprs[1], Expr::Bitwise { mask: m, xor, .. } if *m == mask && xor.len() == 16)
        );
        let mut net = vec![0xfd, 0, 0, 1, 0, 2, 0];
        net.resize(16, 0);
        assert!(matches!(&exprs[2], Expr::Cmp { data, .. } if *data == net));
        let dnat = dnat_to("[fd00:2::1]:22".parse::<SocketAddr>().expect("addr"));
        assert!(matches!(&dnat[0], Expr::Immediate { data, .. } if data.len() == 16));
        assert!(matches!(
            dnat[2],
            Expr::Nat {
                ipv6: true,
                dnat: true,
                ..
            }
        ));
        assert_eq!(
            meta_nfproto(true)[1],
            Expr::Cmp {
                sreg: REG_1,
                op: Cmp::Eq,
                data: vec![10]
            }
        );
    }

    #[test]
    fn interface_names_are_padded_to_ifnamsiz() {
        let exprs = oifname(Cmp::Neq, "t0");
        let Expr::Cmp { data, op, .. } = &exprs[1] else {
            panic!("cmp expected");
        };
        assert_eq!(*op, Cmp::Neq);
        assert_eq!(data.len(), 16);
        assert_eq!(&data[..3], b"t0\0");
    }

    #[test]
    fn ports_are_in_network_order() {
        let exprs = tcp_dport(2222);
        assert_eq!(
            exprs[3],
            Expr::Cmp {
                sreg: REG_1,
                op: Cmp::Eq,
                data: vec![0x08, 0xae]
            }
        );
        let dnat = dnat_to("10.0.2.1:22".parse::<SocketAddr>().expect("addr"));
        assert_eq!(
            dnat[1],
            Expr::Immediate {
                dreg: REG_2,
                data: vec![0, 22]
            }
        );
    }

    /// One netlink attribute (native-endian header, 4-byte padding),
    /// written independently of [`Msg`] to check its encoding.
    fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
        let len = u16::try_from(4 + payload.len()).expect("short");
        let mut b = [len.to_ne_bytes(), ty.to_ne_bytes()].concat();
        b.extend_from_slice(payload);
        b.resize(b.len().div_ceil(4) * 4, 0);
        b
    }

    /// A nested attribute.
    fn nest(ty: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        nla(ty | 0x8000, &parts.concat())
    }

    /// An expression as `put_expr` encodes it (the list element).
    fn encoded(expr: &Expr) -> Vec<u8> {
        let mut m = Msg::new(NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWRULE, 0, 0, 0, 0);
        put_expr(&mut m, expr);
        // After nlmsghdr (16 bytes) and nfgenmsg (4).
        m.finish()[20..].to_vec()
    }

    /// What nft sends for an expression (`nft --debug=mnl`): its name and
    /// its attributes.
    fn as_nft_sends(name: &str, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut name = name.as_bytes().to_vec();
        name.push(0);
        nest(1, &[nla(1, &name), nest(2, attrs)])
    }

    #[test]
    fn destination_prefixes_read_the_destination_address() {
        let v4 = ip_daddr_in(Ipv4Addr::new(192, 0, 2, 77), 24);
        assert_eq!(
            v4,
            vec![
                Expr::Payload {
                    base: PayloadBase::Network,
                    offset: 16,
                    len: 4,
                    dreg: REG_1
                },
                Expr::Bitwise {
                    sreg: REG_1,
                    dreg: REG_1,
                    mask: vec![255, 255, 255, 0],
                    xor: vec![0; 4]
                },
                Expr::Cmp {
                    sreg: REG_1,
                    op: Cmp::Eq,
                    data: vec![192, 0, 2, 0]
                },
            ]
        );
        // The same as the source's but for the offset.
        let mut saddr = ip_saddr_in(Ipv4Addr::new(192, 0, 2, 77), 24);
        saddr[0] = v4[0].clone();
        assert_eq!(saddr, v4);

        let v6 = ip6_daddr_in("2001:db8::5".parse().expect("addr"), 64);
        assert_eq!(
            v6[0],
            Expr::Payload {
                base: PayloadBase::Network,
                offset: 24,
                len: 16,
                dreg: REG_1
            }
        );
        let mut mask = vec![0xff; 8];
        mask.resize(16, 0);
        assert!(matches!(&v6[1], Expr::Bitwise { mask: m, .. } if *m == mask));
        let mut net = vec![0x20, 0x01, 0x0d, 0xb8];
        net.resize(16, 0);
        assert!(matches!(&v6[2], Expr::Cmp { data, op: Cmp::Eq, .. } if *data == net));
    }

    #[test]
    fn a_port_range_is_two_comparisons_and_a_single_port_one() {
        assert_eq!(tcp_dport_range(22, 22), tcp_dport(22));
        assert_eq!(&tcp_dport(22)[..2], &l4proto_tcp()[..]);
        assert_eq!(
            l4proto_tcp()[1],
            Expr::Cmp {
                sreg: REG_1,
                op: Cmp::Eq,
                data: vec![6]
            }
        );
        let range = tcp_dport_range(8000, 8100);
        assert_eq!(range.len(), 5);
        assert_eq!(&range[..3], &tcp_dport(8000)[..3]);
        assert_eq!(
            &range[3..],
            &[
                Expr::Cmp {
                    sreg: REG_1,
                    op: Cmp::Gte,
                    data: vec![0x1f, 0x40]
                },
                Expr::Cmp {
                    sreg: REG_1,
                    op: Cmp::Lte,
                    data: vec![0x1f, 0xa4]
                },
            ]
        );
        // `cmp gte reg 1 0x0000401f`, `cmp lte reg 1 0x0000a41f`.
        let sreg = nla(1, &1u32.to_be_bytes());
        let gte = as_nft_sends(
            "cmp",
            &[
                sreg.clone(),
                nla(2, &5u32.to_be_bytes()),
                nest(3, &[nla(1, &[0x1f, 0x40])]),
            ],
        );
        assert_eq!(encoded(&range[3]), gte);
        let lte = as_nft_sends(
            "cmp",
            &[
                sreg,
                nla(2, &3u32.to_be_bytes()),
                nest(3, &[nla(1, &[0x1f, 0xa4])]),
            ],
        );
        assert_eq!(encoded(&range[4]), lte);
    }

    #[test]
    fn fib_daddr_type_local_is_encoded_as_nft_sends_it() {
        let exprs = fib_daddr_type_local();
        assert_eq!(exprs[0], Expr::FibDaddrType { dreg: REG_1 });
        assert_eq!(
            exprs[1],
            Expr::Cmp {
                sreg: REG_1,
                op: Cmp::Eq,
                data: 2u32.to_ne_bytes().to_vec()
            }
        );
        // `fib daddr type => reg 1`: flags DADDR, result ADDRTYPE, dreg.
        let fib = as_nft_sends(
            "fib",
            &[
                nla(3, &2u32.to_be_bytes()),
                nla(2, &3u32.to_be_bytes()),
                nla(1, &1u32.to_be_bytes()),
            ],
        );
        assert_eq!(encoded(&exprs[0]), fib);
    }

    #[test]
    fn a_redirect_loads_its_port_and_names_it() {
        let exprs = redirect_to(1234);
        assert_eq!(
            exprs,
            vec![
                Expr::Immediate {
                    dreg: REG_1,
                    data: vec![0x04, 0xd2]
                },
                Expr::Redir { proto_reg: REG_1 },
            ]
        );
        // `redir proto_min reg 1 flags 0x2`.
        let redir = as_nft_sends(
            "redir",
            &[nla(1, &1u32.to_be_bytes()), nla(3, &2u32.to_be_bytes())],
        );
        assert_eq!(encoded(&exprs[1]), redir);
    }

    #[test]
    fn dnat_to_an_address_keeps_the_port() {
        let v4 = dnat_to_addr(Ipv4Addr::new(10, 0, 2, 1));
        assert_eq!(
            v4,
            vec![
                Expr::Immediate {
                    dreg: REG_1,
                    data: vec![10, 0, 2, 1]
                },
                Expr::Nat {
                    dnat: true,
                    ipv6: false,
                    addr_reg: REG_1,
                    proto_reg: None
                },
            ]
        );
        // `nat dnat ip addr_min reg 1`: no port register, no flags.
        let nat = as_nft_sends(
            "nat",
            &[
                nla(1, &1u32.to_be_bytes()),
                nla(2, &2u32.to_be_bytes()),
                nla(3, &1u32.to_be_bytes()),
            ],
        );
        assert_eq!(encoded(&v4[1]), nat);
        let v6 = dnat_to_addr("fd00:2::1".parse::<IpAddr>().expect("addr"));
        assert!(matches!(&v6[0], Expr::Immediate { data, .. } if data.len() == 16));
        assert!(matches!(
            v6[1],
            Expr::Nat {
                dnat: true,
                ipv6: true,
                proto_reg: None,
                ..
            }
        ));
        assert_eq!(
            snat_to(Ipv4Addr::new(10, 0, 2, 1))[1],
            Expr::Nat {
                dnat: false,
                ipv6: false,
                addr_reg: REG_1,
                proto_reg: None
            }
        );
    }
}
