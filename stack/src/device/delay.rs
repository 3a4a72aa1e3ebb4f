//! `Delay<D>`: a real-time one-way delay line around a smoltcp [`Device`].
//!
//! Owns two FIFO queues of held packets (egress: smoltcp -> inner device,
//! ingress: inner device -> smoltcp) and a pool of reused buffers. Time comes only
//! from the timestamps smoltcp passes to `receive`/`transmit` (or to
//! [`Delay::release`]): it must never read a clock. It never drops a packet: when
//! a queue is full it pushes back (no transmit token, no more reads from the inner
//! device) instead. A direction with zero delay is a pass-through: the inner
//! device's tokens are handed out as they are, with no copy.
//!
//! Held egress packets are handed to the inner device at the first `receive`,
//! `transmit` or [`Delay::release`] call whose timestamp is at or after their
//! release time; a driver loop sleeps until [`Delay::next_release`] (and until
//! the inner device is readable).

use std::collections::VecDeque;

use smoltcp::phy::{self, Device, DeviceCapabilities};
use smoltcp::time::{Duration, Instant};

/// Default bound on the packets held per direction.
pub const DEFAULT_LIMIT: usize = 16 * 1024;

/// Spare buffers kept for reuse per direction; more are freed.
const SPARE_LIMIT: usize = 1024;

/// Packets pulled from the inner device per `receive` call, at most.
const PULL_LIMIT: usize = 1024;

/// One packet waiting in a delay line.
#[derive(Debug)]
struct Held {
    release: Instant,
    packet: Vec<u8>,
    /// smoltcp's metadata (a segment size for the device to cut to).
    meta: phy::PacketMeta,
}

/// One direction of the delay line: a FIFO of held packets and spare buffers.
#[derive(Debug)]
struct Line {
    delay: Duration,
    queue: VecDeque<Held>,
    spare: Vec<Vec<u8>>,
    limit: usize,
}

impl Line {
    fn new(delay: Duration) -> Self {
        Self {
            delay,
            queue: VecDeque::new(),
            spare: Vec::new(),
            limit: DEFAULT_LIMIT,
        }
    }

    fn is_pass_through(&self) -> bool {
        self.delay == Duration::ZERO
    }

    fn is_full(&self) -> bool {
        self.queue.len() >= self.limit
    }

    fn buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    fn recycle(spare: &mut Vec<Vec<u8>>, mut buf: Vec<u8>) {
        if spare.len() < SPARE_LIMIT {
            buf.clear();
            spare.push(buf);
        }
    }

    /// Holds `packet` until `now + delay`. Timestamps are monotonic and the delay
    /// constant, so FIFO order is release order.
    fn hold(&mut self, now: Instant, packet: Vec<u8>, meta: phy::PacketMeta) {
        self.queue.push_back(Held {
            release: now + self.delay,
            packet,
            meta,
        });
    }

    fn next_release(&self) -> Option<Instant> {
        self.queue.front().map(|h| h.release)
    }

    fn pop_due(&mut self, now: Instant) -> Option<(Vec<u8>, phy::PacketMeta)> {
        if self.queue.front()?.release <= now {
            self.queue.pop_front().map(|h| (h.packet, h.meta))
        } else {
            None
        }
    }
}

/// A one-way delay line in each direction around the device `D`.
#[derive(Debug)]
pub struct Delay<D: Device> {
    inner: D,
    egress: Line,
    ingress: Line,
}

impl<D: Device> Delay<D> {
    /// Wraps `inner`: packets smoltcp transmits reach `inner` `egress_delay`
    /// later; packets `inner` receives reach smoltcp `ingress_delay` after they
    /// were read from it. A zero delay makes that direction a pass-through.
    pub fn new(inner: D, egress_delay: Duration, ingress_delay: Duration) -> Self {
        Self {
            inner,
            egress: Line::new(egress_delay),
            ingress: Line::new(ingress_delay),
        }
    }

    /// Sets the number of packets held per direction (at least 1) before the
    /// line pushes back. Default: [`DEFAULT_LIMIT`].
    pub fn set_limit(&mut self, packets: usize) {
        self.egress.limit = packets.max(1);
        self.ingress.limit = packets.max(1);
    }

    /// The egress (smoltcp -> inner) delay.
    pub fn egress_delay(&self) -> Duration {
        self.egress.delay
    }

    /// The ingress (inner -> smoltcp) delay.
    pub fn ingress_delay(&self) -> Duration {
        self.ingress.delay
    }

    /// Packets held now: `(egress, ingress)`.
    pub fn held(&self) -> (usize, usize) {
        (self.egress.queue.len(), self.ingress.queue.len())
    }

    /// The earliest time a held packet is due, in either direction; `None` when
    /// nothing is held. A driver loop calls [`Delay::release`] (or polls the
    /// interface) no later than this.
    pub fn next_release(&self) -> Option<Instant> {
        match (self.egress.next_release(), self.ingress.next_release()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Hands every egress packet due at `now` to the inner device, in order.
    /// Stops early, keeping the rest, if the inner device has no transmit token.
    pub fn release(&mut self, now: Instant) {
        Self::release_egress(&mut self.inner, &mut self.egress, now);
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The wrapped device, mutably. Reading or writing it directly bypasses the
    /// delay.
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    fn release_egress(inner: &mut D, egress: &mut Line, now: Instant) {
        while egress.next_release().is_some_and(|t| t <= now) {
            let Some(mut token) = inner.transmit(now) else {
                return;
            };
            let Some((packet, meta)) = egress.pop_due(now) else {
                return;
            };
            phy::TxToken::set_meta(&mut token, meta);
            phy::TxToken::consume(token, packet.len(), |buf| buf.copy_from_slice(&packet));
            Line::recycle(&mut egress.spare, packet);
        }
    }

    /// Moves packets the inner device has ready into the ingress line (bounded).
    fn pull_ingress(inner: &mut D, ingress: &mut Line, now: Instant) {
        for _ in 0..PULL_LIMIT {
            if ingress.is_full() {
                return;
            }
            let Some((rx, _tx)) = inner.receive(now) else {
                return;
            };
            let mut buf = ingress.buffer();
            let meta = phy::RxToken::meta(&rx);
            phy::RxToken::consume(rx, |packet| buf.extend_from_slice(packet));
            ingress.hold(now, buf, meta);
        }
    }
}

impl<D: Device> Device for Delay<D> {
    type RxToken<'a>
        = DelayRxToken<'a, D::RxToken<'a>>
    where
        Self: 'a;
    type TxToken<'a>
        = DelayTxToken<'a, D::TxToken<'a>>
    where
        Self: 'a;

    fn receive(&mut self, timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let Self {
            inner,
            egress,
            ingress,
        } = self;
        Self::release_egress(inner, egress, timestamp);

        if ingress.is_pass_through() {
            if egress.is_pass_through() {
                let (rx, tx) = inner.receive(timestamp)?;
                return Some((
                    DelayRxToken(RxKind::Direct(rx)),
                    DelayTxToken(TxKind::Direct(tx)),
                ));
            }
            if egress.is_full() {
                return None;
            }
            let (rx, _tx) = inner.receive(timestamp)?;
            return Some((
                DelayRxToken(RxKind::Direct(rx)),
                DelayTxToken(TxKind::Held {
                    line: egress,
                    now: timestamp,
                    meta: phy::PacketMeta::default(),
                }),
            ));
        }

        Self::pull_ingress(inner, ingress, timestamp);
        ingress.next_release().filter(|t| *t <= timestamp)?;
        let tx = if egress.is_pass_through() {
            DelayTxToken(TxKind::Direct(inner.transmit(timestamp)?))
        } else if egress.is_full() {
            return None;
        } else {
            DelayTxToken(TxKind::Held {
                line: egress,
                now: timestamp,
                meta: phy::PacketMeta::default(),
            })
        };
        let (packet, meta) = ingress.pop_due(timestamp)?;
        let rx = DelayRxToken(RxKind::Held {
            packet,
            meta,
            spare: &mut ingress.spare,
        });
        Some((rx, tx))
    }

    fn transmit(&mut self, timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if self.egress.is_pass_through() {
            return self
                .inner
                .transmit(timestamp)
                .map(|tx| DelayTxToken(TxKind::Direct(tx)));
        }
        Self::release_egress(&mut self.inner, &mut self.egress, timestamp);
        if self.egress.is_full() {
            return None;
        }
        Some(DelayTxToken(TxKind::Held {
            line: &mut self.egress,
            now: timestamp,
            meta: phy::PacketMeta::default(),
        }))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}

/// Receive token of a [`Delay`]: the inner device's own token (no ingress
/// delay) or a packet that has served its time.
#[derive(Debug)]
pub struct DelayRxToken<'a, R>(RxKind<'a, R>);

#[derive(Debug)]
enum RxKind<'a, R> {
    /// Pass-through: the inner device's token.
    Direct(R),
    /// A held packet; its buffer returns to the pool after use.
    Held {
        packet: Vec<u8>,
        meta: phy::PacketMeta,
        spare: &'a mut Vec<Vec<u8>>,
    },
}

impl<R: phy::RxToken> phy::RxToken for DelayRxToken<'_, R> {
    fn consume<T, F>(self, f: F) -> T
    where
        F: FnOnce(&[u8]) -> T,
    {
        match self.0 {
            RxKind::Direct(rx) => rx.consume(f),
            RxKind::Held { packet, spare, .. } => {
                let result = f(&packet);
                Line::recycle(spare, packet);
                result
            }
        }
    }

    fn meta(&self) -> phy::PacketMeta {
        match &self.0 {
            RxKind::Direct(rx) => rx.meta(),
            RxKind::Held { meta, .. } => *meta,
        }
    }
}

/// Transmit token of a [`Delay`]: the inner device's own token (no egress
/// delay) or a slot in the egress line.
#[derive(Debug)]
pub struct DelayTxToken<'a, T>(TxKind<'a, T>);

#[derive(Debug)]
enum TxKind<'a, T> {
    /// Pass-through: the inner device's token.
    Direct(T),
    /// The packet is held in the egress line; `now` is when smoltcp sent it.
    Held {
        line: &'a mut Line,
        now: Instant,
        meta: phy::PacketMeta,
    },
}

impl<T: phy::TxToken> phy::TxToken for DelayTxToken<'_, T> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        match self.0 {
            TxKind::Direct(tx) => tx.consume(len, f),
            TxKind::Held { line, now, meta } => {
                let mut buf = line.buffer();
                buf.resize(len, 0);
                let result = f(&mut buf);
                line.hold(now, buf, meta);
                result
            }
        }
    }

    fn set_meta(&mut self, meta: phy::PacketMeta) {
        match &mut self.0 {
            TxKind::Direct(tx) => tx.set_meta(meta),
            TxKind::Held { meta: held, .. } => *held = meta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phy::{RxToken as _, TxToken as _};
    use smoltcp::phy::Medium;

    /// An in-memory device: packets to receive are queued in `rx`; transmitted
    /// packets are logged with the timestamp the token was taken at.
    #[derive(Default)]
    struct Mock {
        rx: VecDeque<Vec<u8>>,
        sent: Vec<(Instant, Vec<u8>)>,
        tx_refused: bool,
    }

    struct MockRx(Vec<u8>);
    struct MockTx<'a> {
        sent: &'a mut Vec<(Instant, Vec<u8>)>,
        now: Instant,
    }

    impl phy::RxToken for MockRx {
        fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
            f(&self.0)
        }
    }

    impl phy::TxToken for MockTx<'_> {
        fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
            let mut buf = vec![0; len];
            let r = f(&mut buf);
            self.sent.push((self.now, buf));
            r
        }
    }

    impl Device for Mock {
        type RxToken<'a> = MockRx;
        type TxToken<'a> = MockTx<'a>;

        fn receive(&mut self, now: Instant) -> Option<(MockRx, MockTx<'_>)> {
            let packet = self.rx.pop_front()?;
            Some((
                MockRx(packet),
                MockTx {
                    sent: &mut self.sent,
                    now,
                },
            ))
        }

        fn transmit(&mut self, now: Instant) -> Option<MockTx<'_>> {
            if self.tx_refused {
                return None;
            }
            Some(MockTx {
                sent: &mut self.sent,
                now,
            })
        }

        fn capabilities(&self) -> DeviceCapabilities {
            let mut caps = DeviceCapabilities::default();
            caps.medium = Medium::Ip;
            caps.max_transmission_unit = 1500;
            caps
        }
    }

    fn ms(n: u64) -> Instant {
        Instant::from_micros_const(i64::try_from(n * 1000).unwrap_or(i64::MAX))
    }

    fn send(dev: &mut Delay<Mock>, now: Instant, packet: &[u8]) {
        let tx = dev.transmit(now).expect("the line has room");
        tx.consume(packet.len(), |buf| buf.copy_from_slice(packet));
    }

    fn recv(dev: &mut Delay<Mock>, now: Instant) -> Option<Vec<u8>> {
        let (rx, _tx) = dev.receive(now)?;
        Some(rx.consume(<[u8]>::to_vec))
    }

    #[test]
    fn egress_released_in_order_at_exact_time() {
        let mut dev = Delay::new(Mock::default(), Duration::from_millis(10), Duration::ZERO);
        send(&mut dev, ms(0), b"a");
        send(&mut dev, ms(3), b"b");
        assert_eq!(dev.held(), (2, 0));
        assert!(
            dev.inner().sent.is_empty(),
            "nothing leaves before its time"
        );
        assert_eq!(dev.next_release(), Some(ms(10)));

        dev.release(ms(10) - Duration::from_micros(1));
        assert!(dev.inner().sent.is_empty());

        dev.release(ms(10));
        assert_eq!(dev.inner().sent, vec![(ms(10), b"a".to_vec())]);
        assert_eq!(dev.next_release(), Some(ms(13)));

        dev.release(ms(20));
        assert_eq!(dev.inner().sent[1], (ms(20), b"b".to_vec()));
        assert_eq!(dev.next_release(), None);
        assert_eq!(dev.held(), (0, 0));
    }

    #[test]
    fn egress_released_by_receive_and_transmit_calls() {
        let mut dev = Delay::new(Mock::default(), Duration::from_millis(5), Duration::ZERO);
        send(&mut dev, ms(1), b"x");
        assert!(recv(&mut dev, ms(6)).is_none());
        assert_eq!(dev.inner().sent, vec![(ms(6), b"x".to_vec())]);

        send(&mut dev, ms(7), b"y");
        send(&mut dev, ms(12), b"z");
        assert_eq!(dev.inner().sent.len(), 2, "y went out when z was sent");
        assert_eq!(dev.inner().sent[1], (ms(12), b"y".to_vec()));
    }

    #[test]
    fn egress_waits_while_inner_refuses() {
        let mut dev = Delay::new(Mock::default(), Duration::from_millis(1), Duration::ZERO);
        send(&mut dev, ms(0), b"a");
        dev.inner_mut().tx_refused = true;
        dev.release(ms(5));
        assert_eq!(dev.held(), (1, 0), "kept, not dropped");
        dev.inner_mut().tx_refused = false;
        dev.release(ms(6));
        assert_eq!(dev.inner().sent, vec![(ms(6), b"a".to_vec())]);
    }

    #[test]
    fn ingress_held_until_exact_time_in_order() {
        let mut mock = Mock::default();
        mock.rx.extend([b"p1".to_vec(), b"p2".to_vec()]);
        let mut dev = Delay::new(mock, Duration::ZERO, Duration::from_millis(20));

        assert!(recv(&mut dev, ms(100)).is_none(), "pulled in, not yet due");
        assert_eq!(dev.held(), (0, 2));
        assert_eq!(dev.next_release(), Some(ms(120)));
        dev.inner_mut().rx.push_back(b"p3".to_vec());
        assert!(recv(&mut dev, ms(110)).is_none());

        assert!(recv(&mut dev, ms(120) - Duration::from_micros(1)).is_none());
        assert_eq!(recv(&mut dev, ms(120)).as_deref(), Some(&b"p1"[..]));
        assert_eq!(recv(&mut dev, ms(120)).as_deref(), Some(&b"p2"[..]));
        assert!(recv(&mut dev, ms(120)).is_none());
        assert_eq!(dev.next_release(), Some(ms(130)));
        assert_eq!(recv(&mut dev, ms(131)).as_deref(), Some(&b"p3"[..]));
        assert_eq!(dev.next_release(), None);
    }

    #[test]
    fn both_directions_delayed_reply_token_is_held() {
        let mut mock = Mock::default();
        mock.rx.push_back(b"ping".to_vec());
        let mut dev = Delay::new(mock, Duration::from_millis(3), Duration::from_millis(2));
        assert!(recv(&mut dev, ms(0)).is_none());
        let (rx, tx) = dev.receive(ms(2)).expect("due");
        assert_eq!(rx.consume(<[u8]>::to_vec), b"ping");
        tx.consume(4, |buf| buf.copy_from_slice(b"pong"));
        assert_eq!(dev.next_release(), Some(ms(5)));
        dev.release(ms(5));
        assert_eq!(dev.inner().sent, vec![(ms(5), b"pong".to_vec())]);
    }

    #[test]
    fn zero_delay_is_pass_through() {
        let mut mock = Mock::default();
        mock.rx.push_back(b"in".to_vec());
        let mut dev = Delay::new(mock, Duration::ZERO, Duration::ZERO);
        send(&mut dev, ms(1), b"out");
        assert_eq!(dev.inner().sent, vec![(ms(1), b"out".to_vec())]);
        assert_eq!(recv(&mut dev, ms(1)).as_deref(), Some(&b"in"[..]));
        assert_eq!(dev.held(), (0, 0));
        assert_eq!(dev.next_release(), None);
    }

    #[test]
    fn full_line_pushes_back_instead_of_dropping() {
        let mut mock = Mock::default();
        mock.rx
            .extend([b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]);
        let mut dev = Delay::new(mock, Duration::from_millis(1), Duration::from_millis(1));
        dev.set_limit(2);
        send(&mut dev, ms(0), b"a");
        send(&mut dev, ms(0), b"b");
        assert!(dev.transmit(ms(0)).is_none(), "egress full");
        assert!(recv(&mut dev, ms(0)).is_none());
        assert_eq!(dev.held(), (2, 2));
        assert_eq!(
            dev.inner().rx.len(),
            1,
            "the third stays in the inner device"
        );
        // At 1 ms both egress packets leave, and ingress drains in order.
        assert_eq!(recv(&mut dev, ms(1)).as_deref(), Some(&b"1"[..]));
        assert_eq!(dev.inner().sent.len(), 2);
        assert_eq!(recv(&mut dev, ms(1)).as_deref(), Some(&b"2"[..]));
        assert_eq!(recv(&mut dev, ms(2)).as_deref(), Some(&b"3"[..]));
    }
}
