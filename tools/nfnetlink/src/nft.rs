//! nftables over netlink: tables, base chains and rules, sent to the
//! kernel in one batch (one transaction: all of it or nothing).
//!
//! A [`Table`] is what an `nft -f` script's `table` block says; the
//! expressions of a rule are the kernel's (what `nft --debug=netlink`
//! prints), built by the helpers below ([`ip_saddr_in`], [`oifname`],
//! [`tcp_dport`], [`dnat_to`], ...), so a rule reads like its nft line.
//! Addresses of both families: [`ip_saddr_in`] and [`ip6_saddr_in`],
//! [`dnat_to`] of either; an `inet` table's rule tests [`meta_nfproto`]
//! before it reads or writes an address:
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
}

/// `ip saddr NET/PREFIX`: payload, bitwise with the prefix's mask, cmp.
pub fn ip_saddr_in(net: Ipv4Addr, prefix: u8) -> Vec<Expr> {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    let net = u32::from(net) & mask;
    let saddr = Expr::Payload {
        base: PayloadBase::Network,
        offset: 12,
        len: 4,
        dreg: REG_1,
    };
    masked_cmp(saddr, &mask.to_be_bytes(), Cmp::Eq, &net.to_be_bytes())
}

/// `ip6 saddr NET/PREFIX`: payload (the IPv6 source address, offset 8,
/// 16 bytes), bitwise with the prefix's mask, cmp.
pub fn ip6_saddr_in(net: Ipv6Addr, prefix: u8) -> Vec<Expr> {
    let mask = u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0);
    let net = u128::from(net) & mask;
    let saddr = Expr::Payload {
        base: PayloadBase::Network,
        offset: 8,
        len: 16,
        dreg: REG_1,
    };
    masked_cmp(saddr, &mask.to_be_bytes(), Cmp::Eq, &net.to_be_bytes())
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

/// `tcp dport PORT`: the layer-4 protocol is TCP (6) and the
/// destination port (transport header, offset 2) is `port`.
pub fn tcp_dport(port: u16) -> Vec<Expr> {
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
        Expr::Payload {
            base: PayloadBase::Transport,
            offset: 2,
            len: 2,
            dreg: REG_1,
        },
        Expr::Cmp {
            sreg: REG_1,
            op: Cmp::Eq,
            data: port.to_be_bytes().to_vec(),
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

/// `snat to ADDR`.
pub fn snat_to(to: impl Into<IpAddr>) -> Vec<Expr> {
    let (data, ipv6) = addr_bytes(to.into());
    vec![
        Expr::Immediate { dreg: REG_1, data },
        Expr::Nat {
            dnat: false,
            ipv6,
            addr_reg: REG_1,
            proto_reg: None,
        },
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
        Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
        Expr::Masq { .. } => "masq",
        Expr::Nat { .. } => "nat",
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
}
