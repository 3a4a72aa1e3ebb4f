//! The application conversations of the captured traces: who connects,
//! what each side writes and reads, when the transport is failed, who
//! closes.
//!
//! Owns [`Exchange`] (the bytes of each request/response round) and [`App`],
//! a non-blocking script that plays one side of an exchange on a
//! [`Stack`], one [`App::step`] per poll. The capture program
//! (`capture/capture_traces.rs`) runs these scripts on a TUN device against
//! the real kernel, and the replay tests run the very same scripts in
//! virtual time against the recorded peer, so both see the same
//! conversation. It never reads a clock and never blocks.
//!
//! The initiator connects, and per round writes the request and reads the
//! whole response; after the round named by [`Exchange::fail_after_round`]
//! it fails the transport (the flow resumes on a new connection). After the
//! last round it shuts down writing and reads until the peer's end of
//! stream. The responder accepts one connection, per round reads the whole
//! request and writes the response, then reads until end of stream and
//! closes.

use std::net::SocketAddr;

use smoltcp::phy::Device;
use smoltcp::time::Instant;
use ti_stack::{ListenerId, Stack, StreamError, StreamEvent, StreamId, StreamMode};

/// One request and its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// What the initiator writes.
    pub request: Vec<u8>,
    /// What the responder answers once it has the whole request.
    pub response: Vec<u8>,
}

/// A whole conversation between an initiator and a responder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The rounds, in order.
    pub rounds: Vec<Round>,
    /// The initiator fails its transport after reading this round's response
    /// (`fail_transport`, the paper's sysctl).
    pub fail_after_round: Option<usize>,
}

impl Exchange {
    /// Every request, concatenated: what the responder must read.
    pub fn requests(&self) -> Vec<u8> {
        self.rounds.iter().flat_map(|r| r.request.clone()).collect()
    }

    /// Every response, concatenated: what the initiator must read.
    pub fn responses(&self) -> Vec<u8> {
        self.rounds
            .iter()
            .flat_map(|r| r.response.clone())
            .collect()
    }

    /// Total request bytes of rounds `..=round`.
    fn requests_through(&self, round: usize) -> usize {
        self.rounds
            .iter()
            .take(round + 1)
            .map(|r| r.request.len())
            .sum()
    }

    /// Total response bytes of rounds `..=round`.
    fn responses_through(&self, round: usize) -> usize {
        self.rounds
            .iter()
            .take(round + 1)
            .map(|r| r.response.len())
            .sum()
    }
}

/// Which side of the exchange an [`App`] plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppRole {
    /// Connects to `remote`.
    Initiator {
        /// The responder's address and port.
        remote: SocketAddr,
    },
    /// Listens on `port` and accepts one connection.
    Responder {
        /// Our listening port.
        port: u16,
    },
}

/// Where an [`App`] is in its script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppProgress {
    /// Still playing.
    Running,
    /// Every round played and the peer's end of stream read; the stream is
    /// closed (the stack still finishes the TCP close on later polls).
    Done,
}

/// Why an [`App`] stopped before its script ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    /// The stack reported an error on the stream or listener.
    #[error("stream error: {0}")]
    Stream(#[from] StreamError),
    /// The peer ended its stream before sending everything expected.
    #[error("peer ended its stream early: {got} of {expected} bytes")]
    EarlyEof {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        expected: usize,
    },
}

/// One side of an [`Exchange`], played step by step on a [`Stack`].
#[derive(Debug)]
pub struct App {
    role: AppRole,
    exchange: Exchange,
    listener: Option<ListenerId>,
    stream: Option<StreamId>,
    round: usize,
    written: usize,
    received: Vec<u8>,
    failed_transport: bool,
    shut_down: bool,
    eof: bool,
    done: bool,
    mode: Option<StreamMode>,
    events: Vec<StreamEvent>,
}

/// Bytes read from the stack per call.
const READ_CHUNK: usize = 4096;

impl App {
    /// A script for `role` in `exchange`. Nothing happens until the first
    /// [`App::step`].
    pub fn new(role: AppRole, exchange: Exchange) -> App {
        App {
            role,
            exchange,
            listener: None,
            stream: None,
            round: 0,
            written: 0,
            received: Vec::new(),
            failed_transport: false,
            shut_down: false,
            eof: false,
            done: false,
            mode: None,
            events: Vec::new(),
        }
    }

    /// The stream, once connected or accepted.
    pub fn stream(&self) -> Option<StreamId> {
        self.stream
    }

    /// Every byte read from the peer so far.
    pub fn received(&self) -> &[u8] {
        &self.received
    }

    /// The last mode the stack reported for the stream (kept after the
    /// stream is closed and freed).
    pub fn mode(&self) -> Option<StreamMode> {
        self.mode
    }

    /// The stream's events so far.
    pub fn events(&self) -> &[StreamEvent] {
        &self.events
    }

    /// Whether the script called `fail_transport`.
    pub fn failed_transport(&self) -> bool {
        self.failed_transport
    }

    /// What this side must read in total.
    pub fn expected(&self) -> Vec<u8> {
        match self.role {
            AppRole::Initiator { .. } => self.exchange.responses(),
            AppRole::Responder { .. } => self.exchange.requests(),
        }
    }

    /// Plays as far as the stack allows at `now`; call after each
    /// `stack.poll(now)` (and poll again so writes leave at once).
    pub fn step<D: Device>(
        &mut self,
        stack: &mut Stack<D>,
        now: Instant,
    ) -> Result<AppProgress, AppError> {
        if self.done {
            return Ok(AppProgress::Done);
        }
        let Some(id) = self.open(stack, now)? else {
            return Ok(AppProgress::Running);
        };
        if let Some(mode) = stack.mode(id) {
            self.mode = Some(mode);
        }
        while let Some(event) = stack.poll_event(id) {
            self.events.push(event);
        }
        self.read(stack, id)?;
        let rounds = self.exchange.rounds.len();
        while self.round < rounds {
            let advanced = match self.role {
                AppRole::Initiator { .. } => self.initiator_round(stack, id)?,
                AppRole::Responder { .. } => self.responder_round(stack, id)?,
            };
            if !advanced {
                break;
            }
        }
        if self.round < rounds {
            return self.check_eof();
        }
        if !self.shut_down && matches!(self.role, AppRole::Initiator { .. }) {
            stack.shutdown_write(id)?;
            self.shut_down = true;
        }
        if !self.eof {
            return Ok(AppProgress::Running);
        }
        let expected = self.expected().len();
        if self.received.len() != expected {
            return Err(AppError::EarlyEof {
                got: self.received.len(),
                expected,
            });
        }
        stack.close(now, id);
        self.done = true;
        Ok(AppProgress::Done)
    }

    /// Connects or accepts; the stream once there is one.
    fn open<D: Device>(
        &mut self,
        stack: &mut Stack<D>,
        now: Instant,
    ) -> Result<Option<StreamId>, AppError> {
        if let Some(id) = self.stream {
            return Ok(Some(id));
        }
        match self.role {
            AppRole::Initiator { remote } => {
                self.stream = Some(stack.connect(now, remote)?);
            }
            AppRole::Responder { port } => {
                let listener = match self.listener {
                    Some(l) => l,
                    None => {
                        let l = stack.listen(port)?;
                        self.listener = Some(l);
                        l
                    }
                };
                self.stream = stack.accept(listener)?;
            }
        }
        Ok(self.stream)
    }

    /// Reads everything delivered; notes the end of stream.
    fn read<D: Device>(&mut self, stack: &mut Stack<D>, id: StreamId) -> Result<(), AppError> {
        let mut buf = [0u8; READ_CHUNK];
        // Bounded: each call returns at least one byte or ends the loop.
        loop {
            match stack.read(id, &mut buf)? {
                Some(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Some(n) => self.received.extend_from_slice(&buf[..n]),
                None => return Ok(()),
            }
        }
    }

    /// Writes what is left of `data`, the stream's bytes from `offset`;
    /// true once all of it is written.
    fn write_round<D: Device>(
        &mut self,
        stack: &mut Stack<D>,
        id: StreamId,
        offset: usize,
        data: &[u8],
    ) -> Result<bool, AppError> {
        let from = self.written.saturating_sub(offset);
        if from < data.len() {
            self.written += stack.write(id, &data[from..])?;
        }
        Ok(self.written >= offset + data.len())
    }

    /// The initiator's side of the current round; true when it is over.
    fn initiator_round<D: Device>(
        &mut self,
        stack: &mut Stack<D>,
        id: StreamId,
    ) -> Result<bool, AppError> {
        let round = self.round;
        let request = self.exchange.rounds[round].request.clone();
        let offset = self.exchange.requests_through(round) - request.len();
        if !self.write_round(stack, id, offset, &request)? {
            return Ok(false);
        }
        if self.received.len() < self.exchange.responses_through(round) {
            return Ok(false);
        }
        if self.exchange.fail_after_round == Some(round) && !self.failed_transport {
            stack.fail_transport(id)?;
            self.failed_transport = true;
        }
        self.round += 1;
        Ok(true)
    }

    /// The responder's side of the current round; true when it is over.
    fn responder_round<D: Device>(
        &mut self,
        stack: &mut Stack<D>,
        id: StreamId,
    ) -> Result<bool, AppError> {
        let round = self.round;
        if self.received.len() < self.exchange.requests_through(round) {
            return Ok(false);
        }
        let response = self.exchange.rounds[round].response.clone();
        let offset = self.exchange.responses_through(round) - response.len();
        if !self.write_round(stack, id, offset, &response)? {
            return Ok(false);
        }
        self.round += 1;
        Ok(true)
    }

    /// The peer may not end its stream while a round still needs its bytes.
    fn check_eof(&self) -> Result<AppProgress, AppError> {
        if self.eof {
            return Err(AppError::EarlyEof {
                got: self.received.len(),
                expected: self.expected().len(),
            });
        }
        Ok(AppProgress::Running)
    }
}
