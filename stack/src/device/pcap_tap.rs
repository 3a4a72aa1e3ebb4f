//! `PcapTap<D>`: the outermost device wrapper; records every packet, both
//! directions, to a pcap file (link type RAW: packets start with the IP header).
//!
//! Owns the capture writer. Timestamps are the ones smoltcp passes in (it never
//! reads a clock), so a capture of a virtual-time run shows virtual time. It must
//! never stop or alter the traffic: a write error is logged once with
//! `tracing::warn!` and capture stops, the packets still flow. The writer is
//! flushed when the tap is dropped.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use smoltcp::phy::{self, Device, DeviceCapabilities};
use smoltcp::time::Instant;

/// Longest packet prefix recorded; longer packets are truncated in the file
/// (their original length is kept).
pub const SNAPLEN: u32 = 65535;

/// The caller's writer, shared between the `PcapWriter` (which only hands its
/// writer out by value) and the tap, which needs it to flush.
#[derive(Clone)]
struct SharedWriter(Arc<Mutex<Box<dyn Write + Send>>>);

impl SharedWriter {
    fn lock(&self) -> io::Result<MutexGuard<'_, Box<dyn Write + Send>>> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("pcap writer poisoned by a panic"))
    }
}

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.lock()?.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.lock()?.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.lock()?.flush()
    }
}

/// The capture state, shared by the receive and transmit tokens.
struct Capture {
    /// `None` once capture has stopped (write error) or never started.
    writer: Option<PcapWriter<SharedWriter>>,
    /// The same writer, for flushing.
    handle: SharedWriter,
    packets: u64,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("capturing", &self.writer.is_some())
            .field("packets", &self.packets)
            .finish()
    }
}

impl Capture {
    fn new(writer: Box<dyn Write + Send>) -> Self {
        let handle = SharedWriter(Arc::new(Mutex::new(writer)));
        let header = PcapHeader {
            datalink: DataLink::RAW,
            snaplen: SNAPLEN,
            ..PcapHeader::default()
        };
        let writer = match PcapWriter::with_header(handle.clone(), header) {
            Ok(w) => Some(w),
            Err(error) => {
                tracing::warn!(%error, "pcap tap: cannot write the pcap header, capture disabled");
                None
            }
        };
        Self {
            writer,
            handle,
            packets: 0,
        }
    }

    fn record(&mut self, timestamp: Instant, packet: &[u8]) {
        let Some(writer) = self.writer.as_mut() else {
            return;
        };
        let micros = u64::try_from(timestamp.total_micros()).unwrap_or(0);
        let orig_len = u32::try_from(packet.len()).unwrap_or(u32::MAX);
        let data = &packet[..packet.len().min(SNAPLEN as usize)];
        let record = PcapPacket::new(Duration::from_micros(micros), orig_len, data);
        match writer.write_packet(&record) {
            Ok(_) => self.packets += 1,
            Err(error) => {
                tracing::warn!(%error, "pcap tap: write failed, capture stopped");
                self.writer = None;
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.writer.is_none() {
            return Ok(());
        }
        let result = self.handle.flush();
        if let Err(error) = &result {
            tracing::warn!(%error, "pcap tap: flush failed, capture stopped");
            self.writer = None;
        }
        result
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// A device wrapper that writes every packet passing through `D`, both
/// directions, to a pcap capture (link type RAW).
#[derive(Debug)]
pub struct PcapTap<D: Device> {
    inner: D,
    capture: RefCell<Capture>,
}

impl<D: Device> PcapTap<D> {
    /// Wraps `inner`, capturing into a new file at `path` (buffered). Fails only
    /// if the file cannot be created.
    pub fn create(inner: D, path: impl AsRef<Path>) -> io::Result<Self> {
        let file = File::create(path)?;
        Ok(Self::new(inner, BufWriter::new(file)))
    }

    /// Wraps `inner`, capturing into `writer` (give it a buffered writer). If the
    /// pcap header cannot be written, the error is logged and nothing is
    /// captured; the device works regardless.
    pub fn new(inner: D, writer: impl Write + Send + 'static) -> Self {
        Self {
            inner,
            capture: RefCell::new(Capture::new(Box::new(writer))),
        }
    }

    /// Packets recorded so far.
    pub fn packets(&self) -> u64 {
        self.capture.borrow().packets
    }

    /// Whether packets are still being recorded (false after a write error).
    pub fn is_capturing(&self) -> bool {
        self.capture.borrow().writer.is_some()
    }

    /// Flushes the capture writer.
    pub fn flush(&self) -> io::Result<()> {
        self.capture.borrow_mut().flush()
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The wrapped device, mutably. Packets sent or received through it directly
    /// are not captured.
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    /// Stops capturing (flushing the writer) and returns the wrapped device.
    pub fn into_inner(self) -> D {
        drop(self.capture);
        self.inner
    }
}

impl<D: Device> Device for PcapTap<D> {
    type RxToken<'a>
        = TapRxToken<'a, D::RxToken<'a>>
    where
        Self: 'a;
    type TxToken<'a>
        = TapTxToken<'a, D::TxToken<'a>>
    where
        Self: 'a;

    fn receive(&mut self, timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let capture = &self.capture;
        let (rx, tx) = self.inner.receive(timestamp)?;
        Some((
            TapRxToken {
                token: rx,
                capture,
                timestamp,
            },
            TapTxToken {
                token: tx,
                capture,
                timestamp,
            },
        ))
    }

    fn transmit(&mut self, timestamp: Instant) -> Option<Self::TxToken<'_>> {
        let capture = &self.capture;
        let token = self.inner.transmit(timestamp)?;
        Some(TapTxToken {
            token,
            capture,
            timestamp,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}

/// Receive token of a [`PcapTap`]: records the packet, then hands it on.
#[derive(Debug)]
pub struct TapRxToken<'a, R> {
    token: R,
    capture: &'a RefCell<Capture>,
    timestamp: Instant,
}

impl<R: phy::RxToken> phy::RxToken for TapRxToken<'_, R> {
    fn consume<T, F>(self, f: F) -> T
    where
        F: FnOnce(&[u8]) -> T,
    {
        let Self {
            token,
            capture,
            timestamp,
        } = self;
        token.consume(|packet| {
            capture.borrow_mut().record(timestamp, packet);
            f(packet)
        })
    }

    fn meta(&self) -> phy::PacketMeta {
        self.token.meta()
    }
}

/// Transmit token of a [`PcapTap`]: records the packet once smoltcp has built it.
#[derive(Debug)]
pub struct TapTxToken<'a, T> {
    token: T,
    capture: &'a RefCell<Capture>,
    timestamp: Instant,
}

impl<T: phy::TxToken> phy::TxToken for TapTxToken<'_, T> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let Self {
            token,
            capture,
            timestamp,
        } = self;
        token.consume(len, |packet| {
            let result = f(packet);
            capture.borrow_mut().record(timestamp, packet);
            result
        })
    }

    fn set_meta(&mut self, meta: phy::PacketMeta) {
        self.token.set_meta(meta);
    }
}
