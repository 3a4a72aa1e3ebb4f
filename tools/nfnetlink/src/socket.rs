//! The `NETLINK_NETFILTER` socket: sends requests, matches the kernel's
//! acknowledgements to them by sequence number.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::sockopt::{self, Timeout};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

use crate::consts::NLMSG_ERROR;
use crate::msg::{NLMSG_HDRLEN, align};

/// How long to wait for the kernel's answer before giving up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A failure of a netfilter netlink request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be opened, written or read.
    #[error("netfilter netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused a message.
    #[error("the kernel refused {what}: {source}")]
    Refused {
        /// The message, e.g. `new chain ip tiflow_tun0 postrouting`.
        what: String,
        /// The errno it answered.
        source: io::Error,
    },
    /// The kernel did not acknowledge a message in time.
    #[error("no answer from the kernel to {0}")]
    NoAnswer(String),
}

impl Error {
    /// The errno of a refusal (e.g. `ENOENT` for a table that does not
    /// exist), if this is one.
    pub fn refusal_errno(&self) -> Option<i32> {
        match self {
            Error::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

fn socket_error(e: rustix::io::Errno) -> Error {
    Error::Socket(e.into())
}

/// A message sent that asked for an acknowledgement.
pub struct Pending {
    /// Its sequence number.
    pub seq: u32,
    /// What it does, for errors.
    pub what: String,
}

/// A `NETLINK_NETFILTER` socket in the calling thread's network namespace.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    /// Opens the socket.
    pub fn open() -> Result<Socket, Error> {
        let fd = rustix::net::socket(
            AddressFamily::NETLINK,
            SocketType::RAW,
            Some(netlink::NETFILTER),
        )
        .map_err(socket_error)?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 0)).map_err(socket_error)?;
        sockopt::set_socket_timeout(&fd, Timeout::Recv, Some(ANSWER_TIMEOUT))
            .map_err(socket_error)?;
        // Sequence numbers only need to differ within this socket; start
        // from the clock so that a stray answer to an earlier socket of the
        // same port id cannot be taken for ours.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32);
        Ok(Socket { fd, seq })
    }

    /// The next sequence number.
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `bytes` (one message or a batch) to the kernel.
    pub fn send(&self, bytes: &[u8]) -> Result<(), Error> {
        let sent = rustix::net::sendto(
            &self.fd,
            bytes,
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )
        .map_err(socket_error)?;
        if sent != bytes.len() {
            return Err(Error::Socket(io::Error::other(format!(
                "sent {sent} of {} bytes",
                bytes.len()
            ))));
        }
        Ok(())
    }

    /// Waits for the acknowledgement of every message in `pending`; the
    /// first refusal (in the order sent) is the error. Other messages the
    /// kernel sends (the answer to a get) are skipped.
    pub fn wait_acks(&self, pending: &[Pending]) -> Result<(), Error> {
        let mut answers: Vec<Option<i32>> = vec![None; pending.len()];
        let mut buf = vec![0u8; 65536];
        while answers.iter().any(Option::is_none) {
            let (n, _) = match rustix::net::recv(&self.fd, &mut buf[..], RecvFlags::empty()) {
                Ok(got) => got,
                Err(rustix::io::Errno::AGAIN) => {
                    let missing = pending
                        .iter()
                        .zip(&answers)
                        .find(|(_, a)| a.is_none())
                        .map_or_else(String::new, |(p, _)| p.what.clone());
                    return Err(Error::NoAnswer(missing));
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(socket_error(e)),
            };
            for (ty, seq, payload) in messages(&buf[..n.min(buf.len())]) {
                if ty != NLMSG_ERROR {
                    continue;
                }
                let code = payload
                    .get(..4)
                    .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                if let Some(i) = pending.iter().position(|p| p.seq == seq) {
                    answers[i] = Some(code);
                } else if code != 0 {
                    // A refusal of a message that asked for no answer (a
                    // batch delimiter: e.g. nftables missing from the
                    // kernel): nothing else will come.
                    return Err(Error::Refused {
                        what: "the batch".into(),
                        source: io::Error::from_raw_os_error(-code),
                    });
                }
            }
        }
        for (p, code) in pending.iter().zip(answers) {
            if let Some(code) = code.filter(|c| *c != 0) {
                return Err(Error::Refused {
                    what: p.what.clone(),
                    source: io::Error::from_raw_os_error(-code),
                });
            }
        }
        Ok(())
    }
}

/// The messages in one datagram: (type, sequence number, payload).
fn messages(mut data: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return None;
        }
        let ty = u16::from_ne_bytes([data[4], data[5]]);
        let seq = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
        let payload = &data[NLMSG_HDRLEN..len];
        data = &data[align(len).min(data.len())..];
        Some((ty, seq, payload))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_splits_into_its_messages() {
        let mut d = Vec::new();
        for (ty, seq, payload) in [(2u16, 5u32, &[0u8, 0, 0, 0][..]), (3, 6, &[1, 2][..])] {
            d.extend_from_slice(&(16 + payload.len() as u32).to_ne_bytes());
            d.extend_from_slice(&ty.to_ne_bytes());
            d.extend_from_slice(&0u16.to_ne_bytes());
            d.extend_from_slice(&seq.to_ne_bytes());
            d.extend_from_slice(&0u32.to_ne_bytes());
            d.extend_from_slice(payload);
            d.resize(align(d.len()), 0);
        }
        let got: Vec<_> = messages(&d).collect();
        assert_eq!(got, vec![(2, 5, &[0u8, 0, 0, 0][..]), (3, 6, &[1, 2][..])]);
    }
}
