//! Getting a packet from the middlebox to its endpoint: each direction's
//! bottleneck ([`Lane`]: rate, queue limit, tail drop), the one-way delay,
//! and each endpoint's [`Inbox`] of packets in flight ([`InFlight`]),
//! ordered by arrival.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use smoltcp::time::{Duration, Instant};

use super::types::LinkConfig;

/// A packet on its way to an endpoint.
#[derive(Debug)]
pub(super) struct InFlight {
    /// When the receiver can take it.
    pub(super) arrival: Instant,
    /// The destination address it was routed by.
    pub(super) dst: Ipv4Addr,
    /// The raw IP packet.
    pub(super) bytes: Vec<u8>,
}

/// A direction's bottleneck: when it is free, and when queued packets finish.
#[derive(Debug, Default)]
pub(super) struct Lane {
    busy_until: Option<Instant>,
    backlog: VecDeque<Instant>,
}

impl Lane {
    /// Admits a packet of `len` bytes at `now`; returns when it arrives
    /// (its serialization ends, plus the one-way delay), or `None` on tail
    /// drop.
    pub(super) fn transit(
        &mut self,
        now: Instant,
        len: usize,
        config: &LinkConfig,
    ) -> Option<Instant> {
        Some(self.admit(now, len, config)? + config.one_way_delay)
    }

    /// Admits a packet of `len` bytes at `now`; returns when its
    /// serialization ends, or `None` on tail drop.
    fn admit(&mut self, now: Instant, len: usize, config: &LinkConfig) -> Option<Instant> {
        let Some(rate) = config.rate_bytes_per_sec.filter(|r| *r > 0) else {
            return Some(now);
        };
        while self.backlog.front().is_some_and(|end| *end <= now) {
            self.backlog.pop_front();
        }
        if self.backlog.len() >= config.queue_limit {
            return None;
        }
        let start = self.busy_until.map_or(now, |busy| busy.max(now));
        let bytes = u64::try_from(len).unwrap_or(u64::MAX);
        let micros = bytes.saturating_mul(1_000_000).div_ceil(rate);
        let end = start + Duration::from_micros(micros);
        self.busy_until = Some(end);
        self.backlog.push_back(end);
        Some(end)
    }
}

/// The packets in flight to one endpoint, ordered by arrival, FIFO among
/// equal times.
#[derive(Debug, Default)]
pub(super) struct Inbox {
    packets: VecDeque<InFlight>,
}

impl Inbox {
    /// Queues `packet` behind every packet arriving no later than it.
    pub(super) fn push(&mut self, packet: InFlight) {
        let at = self
            .packets
            .iter()
            .rposition(|p| p.arrival <= packet.arrival)
            .map_or(0, |i| i + 1);
        self.packets.insert(at, packet);
    }

    /// When the next packet arrives.
    pub(super) fn next_arrival(&self) -> Option<Instant> {
        self.packets.front().map(|p| p.arrival)
    }

    /// Takes the next packet if it has arrived by `now`.
    pub(super) fn pop_arrived(&mut self, now: Instant) -> Option<InFlight> {
        if self.next_arrival()? > now {
            return None;
        }
        self.packets.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{client, data, ms, pair, server};
    use super::super::{DropReason, Fate};
    use super::*;

    fn packet(arrival: i64, tag: u8) -> InFlight {
        InFlight {
            arrival: ms(arrival),
            dst: Ipv4Addr::UNSPECIFIED,
            bytes: vec![tag],
        }
    }

    #[test]
    fn inbox_orders_by_arrival_fifo_among_equals() {
        let mut inbox = Inbox::default();
        for (arrival, tag) in [(30, 1), (10, 2), (30, 3), (20, 4), (10, 5)] {
            inbox.push(packet(arrival, tag));
        }
        assert_eq!(inbox.next_arrival(), Some(ms(10)));
        assert!(inbox.pop_arrived(ms(9)).is_none());
        let tags: Vec<u8> = std::iter::from_fn(|| inbox.pop_arrived(ms(30)))
            .flat_map(|p| p.bytes)
            .collect();
        assert_eq!(tags, [2, 5, 4, 1, 3]);
        assert_eq!(inbox.next_arrival(), None);
    }

    #[test]
    fn lane_without_rate_only_adds_the_delay() {
        let config = LinkConfig {
            queue_limit: 0,
            ..LinkConfig::default()
        };
        let mut lane = Lane::default();
        for _ in 0..3 {
            assert_eq!(lane.transit(ms(5), 1500, &config), Some(ms(15)));
        }
    }

    #[test]
    fn delivery_after_exactly_one_way_delay() {
        let (net, a, b) = pair(LinkConfig {
            one_way_delay: Duration::from_millis(25),
            ..LinkConfig::default()
        });
        let pkt = data(client(1000), server(80), 1, b"hello");
        assert_eq!(
            a.send_raw(ms(100), &pkt),
            Fate::Scheduled { arrival: ms(125) }
        );
        assert_eq!(b.next_arrival(), Some(ms(125)));
        assert_eq!(net.next_event(), Some(ms(125)));
        assert_eq!(a.next_arrival(), None);
        assert_eq!(b.recv_raw(ms(125) - Duration::from_micros(1)), None);
        assert_eq!(b.recv_raw(ms(125)), Some(pkt));
        assert_eq!(net.next_event(), None);
        let stats = net.stats();
        assert_eq!((stats.sent, stats.scheduled, stats.delivered), (1, 1, 1));
    }

    #[test]
    fn fifo_order_per_endpoint() {
        let (_net, a, b) = pair(LinkConfig::default());
        let packets: Vec<Vec<u8>> = (0..20u32)
            .map(|i| data(client(1000), server(80), i * 10, &[i as u8; 10]))
            .collect();
        for p in &packets {
            assert!(a.send_raw(ms(0), p).arrival().is_some());
        }
        let got: Vec<Vec<u8>> = (0..30).filter_map(|_| b.recv_raw(ms(1000))).collect();
        assert_eq!(got, packets);
    }

    #[test]
    fn rate_serializes_and_tail_drops() {
        // 1000 bytes/s: a 100-byte packet takes 100 ms on the wire.
        let (net, a, b) = pair(LinkConfig {
            one_way_delay: Duration::from_millis(10),
            rate_bytes_per_sec: Some(1000),
            queue_limit: 3,
            ..LinkConfig::default()
        });
        let pkt = data(client(1000), server(80), 1, &[0; 60]);
        assert_eq!(pkt.len(), 100);
        let arrivals: Vec<Fate> = (0..4).map(|_| a.send_raw(ms(0), &pkt)).collect();
        assert_eq!(
            arrivals,
            [
                Fate::Scheduled { arrival: ms(110) },
                Fate::Scheduled { arrival: ms(210) },
                Fate::Scheduled { arrival: ms(310) },
                Fate::Dropped(DropReason::QueueFull),
            ]
        );
        // Once the first has left the queue, there is room again.
        assert_eq!(a.send_raw(ms(100), &pkt).arrival(), Some(ms(410)));
        // The other direction has its own queue.
        let back = data(server(80), client(1000), 1, &[0; 60]);
        assert_eq!(b.send_raw(ms(0), &back).arrival(), Some(ms(110)));
        assert_eq!(net.stats().dropped(DropReason::QueueFull), 1);
    }
}
