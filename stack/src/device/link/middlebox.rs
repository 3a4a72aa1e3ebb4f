//! The programmable middlebox between side A and side B and its tables:
//! blackholes, drop rules, the stateful firewall, the NAT, the connection
//! tracker (what RST injection forges from) and option stripping.
//! [`Middlebox::inspect`] is its verdict on one packet; the byte work is
//! [`super::packet`]'s.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::time::{Duration, Instant};

use super::packet::{Rewrite, craft_rst, ipv4_dst, rewrite_tcp, segment_info};
use super::types::{
    Direction, DropReason, LinkStats, SegmentInfo, Side, TcpFlags, TrackedConnection,
};
use crate::segment::FourTuple;

/// First public port the NAT hands out; ports go up from here, never reused.
pub const NAT_FIRST_PORT: u16 = 10_000;

/// A connection's two ends, keyed by side: `a` is side A's own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Ends {
    a: SocketAddrV4,
    b: SocketAddrV4,
}

#[derive(Debug, Clone, Copy)]
struct Blackhole {
    start: Instant,
    end: Instant,
    direction: Option<Direction>,
}

struct DropRule {
    direction: Direction,
    remaining: usize,
    predicate: Box<dyn FnMut(&SegmentInfo) -> bool>,
}

#[derive(Debug)]
struct Nat {
    public: Ipv4Addr,
    by_ends: BTreeMap<Ends, u16>,
    by_port: BTreeMap<u16, Ends>,
}

impl Nat {
    fn new(public: Ipv4Addr) -> Nat {
        Nat {
            public,
            by_ends: BTreeMap::new(),
            by_port: BTreeMap::new(),
        }
    }

    /// The public port of `ends`, allocating a never-used one if needed.
    fn outbound(&mut self, ends: Ends, next_port: &mut u32) -> Option<u16> {
        if let Some(port) = self.by_ends.get(&ends) {
            return Some(*port);
        }
        let port = u16::try_from(*next_port).ok()?;
        *next_port += 1;
        self.by_ends.insert(ends, port);
        self.by_port.insert(port, ends);
        tracing::debug!(inside = %ends.a, remote = %ends.b, public_port = port, "nat: new mapping");
        Some(port)
    }

    /// The inside address behind `port`, if `remote` is who it talks to.
    fn inbound(&self, port: u16, remote: SocketAddrV4) -> Option<SocketAddrV4> {
        let ends = self.by_port.get(&port)?;
        (ends.b == remote).then_some(ends.a)
    }
}

#[derive(Debug, Clone, Copy)]
struct Conn {
    /// Side A's address and port as side B sees them.
    outside_a: SocketAddrV4,
    /// Next sequence number per sending direction ([`Direction::index`]).
    next: [Option<u32>; 2],
}

/// The middlebox: its tables, and its verdict on each packet.
pub(super) struct Middlebox {
    blackholes: Vec<Blackhole>,
    rules: Vec<DropRule>,
    strip: [BTreeSet<u8>; 2],
    firewall: Option<BTreeSet<Ends>>,
    nat: Option<Nat>,
    nat_next_port: u32,
    conns: BTreeMap<Ends, Conn>,
}

impl Middlebox {
    /// A transparent middlebox: every table empty, NAT and firewall off.
    pub(super) fn new() -> Middlebox {
        Middlebox {
            blackholes: Vec::new(),
            rules: Vec::new(),
            strip: [BTreeSet::new(), BTreeSet::new()],
            firewall: None,
            nat: None,
            nat_next_port: u32::from(NAT_FIRST_PORT),
            conns: BTreeMap::new(),
        }
    }

    /// The middlebox's verdict on a packet entering it at `now`; may rewrite
    /// it in place. In order: blackhole; drop rules (they see the segment as
    /// it entered); firewall and NAT (A->B: firewall then NAT, B->A: NAT then
    /// firewall); connection tracking; option stripping; checksum repair.
    pub(super) fn inspect(
        &mut self,
        now: Instant,
        dir: Direction,
        bytes: &mut [u8],
        stats: &mut LinkStats,
    ) -> Result<(), DropReason> {
        ipv4_dst(bytes).ok_or(DropReason::Malformed)?;
        if self.blackholed(now, dir) {
            return Err(DropReason::Blackhole);
        }
        let Some(info) = segment_info(dir, bytes) else {
            return Ok(());
        };
        if self.rule_drops(&info) {
            return Err(DropReason::Rule);
        }
        let mut rewrite = Rewrite::default();
        let (ends, outside_a) = match dir {
            Direction::AtoB => {
                let ends = Ends {
                    a: info.src,
                    b: info.dst,
                };
                if !self.firewall_admits(dir, ends, info.flags) {
                    return Err(DropReason::Firewall);
                }
                let mut outside_a = info.src;
                if let Some(nat) = self.nat.as_mut() {
                    let port = nat
                        .outbound(ends, &mut self.nat_next_port)
                        .ok_or(DropReason::NatPortsExhausted)?;
                    outside_a = SocketAddrV4::new(nat.public, port);
                    rewrite.src = Some(outside_a);
                }
                (ends, outside_a)
            }
            Direction::BtoA => {
                let mut inside = info.dst;
                if let Some(nat) = self.nat.as_ref().filter(|n| *info.dst.ip() == n.public) {
                    inside = nat
                        .inbound(info.dst.port(), info.src)
                        .ok_or(DropReason::NatNoMapping)?;
                    rewrite.dst = Some(inside);
                }
                let ends = Ends {
                    a: inside,
                    b: info.src,
                };
                if !self.firewall_admits(dir, ends, info.flags) {
                    return Err(DropReason::Firewall);
                }
                (ends, info.dst)
            }
        };
        self.track(ends, outside_a, &info);
        if rewrite.translates() {
            stats.nat_translated += 1;
        }
        let Some(kinds) = self.strip.get(dir.index()) else {
            return Ok(());
        };
        let stripped = rewrite_tcp(bytes, &rewrite, kinds);
        if stripped > 0 {
            tracing::debug!(?dir, stripped, ?kinds, "middlebox: stripped TCP options");
        }
        stats.options_stripped += u64::try_from(stripped).unwrap_or(u64::MAX);
        Ok(())
    }

    fn blackholed(&self, now: Instant, dir: Direction) -> bool {
        self.blackholes
            .iter()
            .any(|b| b.start <= now && now < b.end && b.direction.is_none_or(|d| d == dir))
    }

    /// Runs the drop rules; true if one took the segment.
    fn rule_drops(&mut self, info: &SegmentInfo) -> bool {
        let hit = self
            .rules
            .iter_mut()
            .position(|rule| rule.direction == info.direction && (rule.predicate)(info));
        let Some(index) = hit else {
            return false;
        };
        if let Some(rule) = self.rules.get_mut(index) {
            rule.remaining = rule.remaining.saturating_sub(1);
            if rule.remaining == 0 {
                self.rules.remove(index);
            }
        }
        true
    }

    fn firewall_admits(&mut self, dir: Direction, ends: Ends, flags: TcpFlags) -> bool {
        let Some(state) = &mut self.firewall else {
            return true;
        };
        if dir == Direction::AtoB && flags.syn && !flags.ack {
            state.insert(ends);
            return true;
        }
        state.contains(&ends)
    }

    fn track(&mut self, ends: Ends, outside_a: SocketAddrV4, info: &SegmentInfo) {
        let conn = self.conns.entry(ends).or_insert(Conn {
            outside_a,
            next: [None, None],
        });
        conn.outside_a = outside_a;
        if info.is_syn() {
            // A new connection attempt on this 4-tuple: forget the old one.
            conn.next = [None, None];
        }
        let end = info.seq.wrapping_add(info.seg_len());
        if let Some(next) = conn.next.get_mut(info.direction.index()) {
            *next = match *next {
                // Keep the highest end seen (wrapping compare): retransmissions
                // and reordering must not move it back.
                Some(prev) if !info.flags.syn && (end.wrapping_sub(prev) as i32) < 0 => Some(prev),
                _ => Some(end),
            };
        }
    }

    /// The TCP connections seen, ordered by side A's view.
    pub(super) fn connections(&self) -> impl Iterator<Item = TrackedConnection> + '_ {
        self.conns.iter().map(|(ends, conn)| TrackedConnection {
            a_view: FourTuple::new(ends.a, ends.b),
            b_view: FourTuple::new(ends.b, conn.outside_a),
            a_next_seq: conn.next[Direction::AtoB.index()],
            b_next_seq: conn.next[Direction::BtoA.index()],
        })
    }

    /// The RSTs to send toward `toward`: one per connection seen (only the
    /// one `only` names, in either view and either orientation, if given)
    /// whose sides have sent anything.
    pub(super) fn rsts(&self, toward: Side, only: Option<FourTuple>) -> Vec<Vec<u8>> {
        self.connections()
            .filter(|c| only.is_none_or(|t| names(c, t)))
            .filter_map(|c| craft_rst(&c, toward))
            .collect()
    }

    /// Drops everything (or only `direction`) in `[now, now + duration)`;
    /// forgets blackholes that ended.
    pub(super) fn add_blackhole(
        &mut self,
        now: Instant,
        duration: Duration,
        direction: Option<Direction>,
    ) {
        self.blackholes.retain(|b| b.end > now);
        self.blackholes.push(Blackhole {
            start: now,
            end: now + duration,
            direction,
        });
    }

    /// Ends every blackhole.
    pub(super) fn clear_blackholes(&mut self) {
        self.blackholes.clear();
    }

    /// Starts or stops stripping option `kind` in `direction`.
    pub(super) fn set_strip(&mut self, direction: Direction, kind: u8, enabled: bool) {
        if let Some(kinds) = self.strip.get_mut(direction.index()) {
            if enabled {
                kinds.insert(kind);
            } else {
                kinds.remove(&kind);
            }
        }
    }

    /// Turns NAT on behind `public` with an empty table.
    pub(super) fn enable_nat(&mut self, public: Ipv4Addr) {
        self.nat = Some(Nat::new(public));
    }

    /// Turns NAT off and forgets its table.
    pub(super) fn disable_nat(&mut self) {
        self.nat = None;
    }

    /// Forgets every NAT mapping (ports are never reused); false if NAT is
    /// off.
    pub(super) fn nat_lose_state(&mut self) -> bool {
        let Some(nat) = self.nat.as_mut() else {
            return false;
        };
        nat.by_ends.clear();
        nat.by_port.clear();
        true
    }

    /// Changes the NAT's public address; false if NAT is off.
    pub(super) fn nat_set_public_addr(&mut self, addr: Ipv4Addr) -> bool {
        let Some(nat) = self.nat.as_mut() else {
            return false;
        };
        nat.public = addr;
        true
    }

    /// Turns the firewall on with no state.
    pub(super) fn enable_firewall(&mut self) {
        self.firewall = Some(BTreeSet::new());
    }

    /// Turns the firewall off.
    pub(super) fn disable_firewall(&mut self) {
        self.firewall = None;
    }

    /// Forgets every firewall state; false if the firewall is off.
    pub(super) fn firewall_lose_state(&mut self) -> bool {
        let Some(state) = self.firewall.as_mut() else {
            return false;
        };
        state.clear();
        true
    }

    /// Adds a rule dropping the next `count` segments in `direction` that
    /// `predicate` matches.
    pub(super) fn add_rule(
        &mut self,
        direction: Direction,
        count: usize,
        predicate: Box<dyn FnMut(&SegmentInfo) -> bool>,
    ) {
        self.rules.push(DropRule {
            direction,
            remaining: count,
            predicate,
        });
    }

    /// Removes every drop rule.
    pub(super) fn clear_rules(&mut self) {
        self.rules.clear();
    }
}

/// True if `tuple` names `conn` in either view, in either orientation.
fn names(conn: &TrackedConnection, tuple: FourTuple) -> bool {
    [conn.a_view, conn.b_view]
        .into_iter()
        .any(|view| view == tuple || view == tuple.reversed())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use etherparse::PacketBuilder;
    use smoltcp::wire::{Ipv4Packet, TcpPacket};

    use super::super::testutil::{
        CLIENT, PUBLIC, SERVER, Seg, build, client, data, inspect, ms, pair, server,
    };
    use super::super::{Fate, LinkConfig, LinkDevice};
    use super::*;

    #[test]
    fn blackhole_drops_for_the_period_then_resumes() {
        let (net, a, b) = pair(LinkConfig::default());
        let up = data(client(1000), server(80), 1, b"up");
        let down = data(server(80), client(1000), 1, b"down");
        net.blackhole(ms(100), Duration::from_millis(50), None);
        assert!(a.send_raw(ms(99), &up).arrival().is_some());
        assert_eq!(
            a.send_raw(ms(100), &up),
            Fate::Dropped(DropReason::Blackhole)
        );
        assert_eq!(
            b.send_raw(ms(149), &down),
            Fate::Dropped(DropReason::Blackhole)
        );
        assert!(a.send_raw(ms(150), &up).arrival().is_some());
        // One direction only.
        net.blackhole(ms(200), Duration::from_millis(50), Some(Direction::BtoA));
        assert!(a.send_raw(ms(210), &up).arrival().is_some());
        assert_eq!(
            b.send_raw(ms(210), &down),
            Fate::Dropped(DropReason::Blackhole)
        );
        assert_eq!(net.stats().dropped(DropReason::Blackhole), 3);
    }

    #[test]
    fn nat_rewrites_translates_back_and_state_loss_gives_new_port() {
        let (net, a, b) = pair(LinkConfig::default());
        net.enable_nat(PUBLIC);
        a.send_raw(ms(0), &data(client(1000), server(80), 1, b"a"));
        let got = b.recv_raw(ms(100)).expect("delivered");
        let (src, dst, ok) = inspect(&got);
        assert!(ok);
        assert_eq!(src, SocketAddrV4::new(PUBLIC, NAT_FIRST_PORT));
        assert_eq!(dst, server(80));

        // Same 4-tuple, same mapping.
        a.send_raw(ms(1), &data(client(1000), server(80), 2, b"b"));
        let (src_again, _, _) = inspect(&b.recv_raw(ms(100)).expect("delivered"));
        assert_eq!(src_again, src);

        // The reply is translated back.
        b.send_raw(ms(2), &data(server(80), src, 1, b"r"));
        let (rsrc, rdst, ok) = inspect(&a.recv_raw(ms(100)).expect("delivered"));
        assert!(ok);
        assert_eq!((rsrc, rdst), (server(80), client(1000)));

        // No mapping for that port, or from another remote: dropped.
        let other = SocketAddrV4::new(PUBLIC, 4242);
        assert_eq!(
            b.send_raw(ms(3), &data(server(80), other, 1, b"?")),
            Fate::Dropped(DropReason::NatNoMapping)
        );
        assert_eq!(
            b.send_raw(ms(3), &data(server(81), src, 1, b"?")),
            Fate::Dropped(DropReason::NatNoMapping)
        );

        // State loss: the old port is dead, the next segment gets a new one.
        net.nat_lose_state();
        assert_eq!(
            b.send_raw(ms(4), &data(server(80), src, 1, b"r")),
            Fate::Dropped(DropReason::NatNoMapping)
        );
        a.send_raw(ms(5), &data(client(1000), server(80), 3, b"c"));
        let (new_src, _, _) = inspect(&b.recv_raw(ms(100)).expect("delivered"));
        assert_eq!(new_src, SocketAddrV4::new(PUBLIC, NAT_FIRST_PORT + 1));

        // Public address change keeps the port, changes the address.
        let moved = Ipv4Addr::new(10, 0, 0, 98);
        net.nat_set_public_addr(moved);
        a.send_raw(ms(6), &data(client(1000), server(80), 4, b"d"));
        let (moved_src, _, ok) = inspect(&b.recv_raw(ms(100)).expect("delivered"));
        assert!(ok);
        assert_eq!(moved_src, SocketAddrV4::new(moved, NAT_FIRST_PORT + 1));
        assert_eq!(net.stats().nat_translated, 5);
    }

    #[test]
    fn firewall_drops_mid_connection_after_state_loss() {
        let (net, a, b) = pair(LinkConfig::default());
        net.enable_firewall();
        let mid = data(client(1000), server(80), 101, b"mid");
        let reply = data(server(80), client(1000), 501, b"reply");
        // No state yet: mid-connection segments die, both ways.
        assert_eq!(a.send_raw(ms(0), &mid), Fate::Dropped(DropReason::Firewall));
        assert_eq!(
            b.send_raw(ms(0), &reply),
            Fate::Dropped(DropReason::Firewall)
        );
        // A SYN from side B creates nothing.
        let syn_from_b = build(
            server(80),
            client(1000),
            Seg {
                seq: 1,
                syn: true,
                ..Seg::default()
            },
        );
        assert_eq!(
            b.send_raw(ms(0), &syn_from_b),
            Fate::Dropped(DropReason::Firewall)
        );
        // A side-A SYN opens it.
        let syn = build(
            client(1000),
            server(80),
            Seg {
                seq: 100,
                syn: true,
                ..Seg::default()
            },
        );
        assert!(a.send_raw(ms(1), &syn).arrival().is_some());
        assert!(b.send_raw(ms(2), &reply).arrival().is_some());
        assert!(a.send_raw(ms(3), &mid).arrival().is_some());
        // State loss.
        net.firewall_lose_state();
        assert_eq!(a.send_raw(ms(4), &mid), Fate::Dropped(DropReason::Firewall));
        assert_eq!(
            b.send_raw(ms(4), &reply),
            Fate::Dropped(DropReason::Firewall)
        );
        assert!(a.send_raw(ms(5), &syn).arrival().is_some());
        assert!(a.send_raw(ms(6), &mid).arrival().is_some());
        assert_eq!(net.stats().dropped(DropReason::Firewall), 5);
        // Non-TCP crosses.
        let mut udp = Vec::new();
        PacketBuilder::ipv4(CLIENT.octets(), SERVER.octets(), 64)
            .udp(5, 6)
            .write_to_vec(&mut udp, b"udp")
            .expect("builds");
        net.firewall_lose_state();
        assert!(a.send_raw(ms(7), &udp).arrival().is_some());
    }

    /// Runs a handshake and some data through the network by hand; returns
    /// (client's next seq, server's next seq).
    fn handshake_and_data(a: &LinkDevice, b: &LinkDevice, public: SocketAddrV4) -> (u32, u32) {
        let syn = Seg {
            seq: 1000,
            syn: true,
            ..Seg::default()
        };
        a.send_raw(ms(0), &build(client(1000), server(80), syn));
        let syn_ack = Seg {
            seq: 5000,
            ack: Some(1001),
            syn: true,
            ..Seg::default()
        };
        b.send_raw(ms(1), &build(server(80), public, syn_ack));
        a.send_raw(ms(2), &data(client(1000), server(80), 1001, &[7; 300]));
        // A retransmission of older data must not move the tracker back.
        a.send_raw(ms(3), &data(client(1000), server(80), 1001, &[7; 100]));
        b.send_raw(ms(4), &data(server(80), public, 5001, &[9; 42]));
        let fin = Seg {
            seq: 5043,
            ack: Some(1301),
            fin: true,
            ..Seg::default()
        };
        b.send_raw(ms(5), &build(server(80), public, fin));
        (1301, 5044)
    }

    #[test]
    fn inject_rst_carries_the_peers_next_seq() {
        let (net, a, b) = pair(LinkConfig::default());
        let (a_next, b_next) = handshake_and_data(&a, &b, client(1000));
        for _ in 0..10 {
            a.recv_raw(ms(100));
            b.recv_raw(ms(100));
        }
        assert_eq!(
            net.connections(),
            vec![TrackedConnection {
                a_view: FourTuple::new(client(1000), server(80)),
                b_view: FourTuple::new(server(80), client(1000)),
                a_next_seq: Some(a_next),
                b_next_seq: Some(b_next),
            }]
        );
        net.set_capture(true);
        assert_eq!(net.inject_rst(ms(200), Side::A), 1);
        let rst = a.recv_raw(ms(210)).expect("rst delivered");
        let (src, dst, ok) = inspect(&rst);
        assert!(ok, "checksums verify");
        assert_eq!((src, dst), (server(80), client(1000)));
        let ip = Ipv4Packet::new_checked(&rst[..]).expect("ipv4");
        let seg = TcpPacket::new_checked(ip.payload()).expect("tcp");
        assert!(seg.rst() && seg.ack() && !seg.syn() && !seg.fin());
        assert_eq!(seg.seq_number().0 as u32, b_next);
        assert_eq!(seg.ack_number().0 as u32, a_next);
        assert_eq!(net.captured()[0].direction, Direction::BtoA);

        // Toward B, named by the tuple in the other orientation: A's next seq.
        let tuple = FourTuple::new(server(80), client(1000));
        assert_eq!(net.inject_rst_for(ms(200), Side::B, tuple), 1);
        let rst = b.recv_raw(ms(210)).expect("rst delivered");
        let (src, dst, ok) = inspect(&rst);
        assert!(ok);
        assert_eq!((src, dst), (client(1000), server(80)));
        let ip = Ipv4Packet::new_checked(&rst[..]).expect("ipv4");
        let seg = TcpPacket::new_checked(ip.payload()).expect("tcp");
        assert_eq!(seg.seq_number().0 as u32, a_next);
        assert_eq!(
            net.inject_rst_for(ms(200), Side::B, FourTuple::new(client(9), server(80))),
            0
        );
        assert_eq!(net.stats().injected, 2);
    }

    #[test]
    fn inject_rst_toward_b_uses_the_nat_view() {
        let (net, a, b) = pair(LinkConfig::default());
        net.enable_nat(PUBLIC);
        let public = SocketAddrV4::new(PUBLIC, NAT_FIRST_PORT);
        let (a_next, _) = handshake_and_data(&a, &b, public);
        assert_eq!(net.stats().dropped(DropReason::NatNoMapping), 0);
        assert_eq!(net.connections()[0].b_view.remote, public.into());
        assert_eq!(
            net.inject_rst_for(ms(10), Side::B, FourTuple::new(public, server(80))),
            1
        );
        let received: Vec<Vec<u8>> = (0..20).map_while(|_| b.recv_raw(ms(100))).collect();
        let rst = received.last().expect("rst delivered");
        let (src, dst, ok) = inspect(rst);
        assert!(ok);
        assert_eq!((src, dst), (public, server(80)));
        let ip = Ipv4Packet::new_checked(&rst[..]).expect("ipv4");
        let seg = TcpPacket::new_checked(ip.payload()).expect("tcp");
        assert!(seg.rst());
        assert_eq!(seg.seq_number().0 as u32, a_next);
    }

    #[test]
    fn inject_rst_during_handshake_acks_the_syn() {
        let (net, a, _b) = pair(LinkConfig::default());
        let syn = Seg {
            seq: 77,
            syn: true,
            ..Seg::default()
        };
        a.send_raw(ms(0), &build(client(1000), server(80), syn));
        assert_eq!(net.inject_rst(ms(1), Side::A), 1);
        let rst = a.recv_raw(ms(100)).expect("rst delivered");
        let ip = Ipv4Packet::new_checked(&rst[..]).expect("ipv4");
        let seg = TcpPacket::new_checked(ip.payload()).expect("tcp");
        assert!(seg.rst() && seg.ack());
        assert_eq!(seg.ack_number().0 as u32, 78);
        assert_eq!(net.inject_rst(ms(1), Side::B), 1);
    }

    #[test]
    fn drop_matching_drops_exactly_count() {
        let (net, a, b) = pair(LinkConfig::default());
        let seen = Rc::new(RefCell::new(Vec::new()));
        let log = Rc::clone(&seen);
        net.drop_matching(Direction::AtoB, 2, move |s: &SegmentInfo| {
            log.borrow_mut().push(s.seq);
            s.payload_len == 5
        });
        let mut fates = Vec::new();
        for i in 0..6u32 {
            let payload: &[u8] = if i % 2 == 0 { b"match" } else { b"no" };
            fates.push(a.send_raw(
                ms(i64::from(i)),
                &data(client(1000), server(80), i, payload),
            ));
        }
        let dropped: Vec<bool> = fates
            .iter()
            .map(|f| *f == Fate::Dropped(DropReason::Rule))
            .collect();
        assert_eq!(dropped, [true, false, true, false, false, false]);
        // The rule is gone once spent; it saw only segments until then.
        assert_eq!(*seen.borrow(), vec![0, 1, 2]);
        // The other direction is never matched.
        net.drop_matching(Direction::AtoB, 1, |s: &SegmentInfo| s.is_syn_ack());
        let syn_ack = Seg {
            seq: 1,
            ack: Some(1),
            syn: true,
            ..Seg::default()
        };
        assert!(
            b.send_raw(ms(10), &build(server(80), client(1000), syn_ack))
                .arrival()
                .is_some()
        );
        // A boxed predicate works too.
        net.clear_drop_rules();
        let boxed: Box<dyn FnMut(&SegmentInfo) -> bool> = Box::new(|s| s.flags.fin);
        net.drop_matching(Direction::BtoA, 1, boxed);
        let fin = Seg {
            seq: 2,
            ack: Some(1),
            fin: true,
            ..Seg::default()
        };
        let fin = build(server(80), client(1000), fin);
        assert_eq!(b.send_raw(ms(11), &fin), Fate::Dropped(DropReason::Rule));
        assert!(b.send_raw(ms(12), &fin).arrival().is_some());
        assert_eq!(net.stats().dropped(DropReason::Rule), 3);
    }
}
