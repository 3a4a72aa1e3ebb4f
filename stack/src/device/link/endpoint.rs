//! One endpoint of a [`Network`]: its record in the shared state
//! ([`Endpoint`]: side, addresses, inbox) and its handle, [`LinkDevice`], a
//! smoltcp [`Device`] with [`Medium::Ip`], with its tokens.

use std::net::Ipv4Addr;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::Network;
use super::lanes::Inbox;
use super::types::{EndpointId, Fate, Side};

/// An endpoint's record in the network's state.
#[derive(Debug)]
pub(super) struct Endpoint {
    /// The side it is on.
    pub(super) side: Side,
    /// The addresses it owns.
    pub(super) addrs: Vec<Ipv4Addr>,
    /// Packets in flight to it.
    pub(super) inbox: Inbox,
}

/// An endpoint of a [`Network`]: a smoltcp [`Device`] with [`Medium::Ip`].
/// Cloning gives another handle to the same endpoint.
#[derive(Debug, Clone)]
pub struct LinkDevice {
    pub(super) net: Network,
    pub(super) id: EndpointId,
    pub(super) side: Side,
}

impl LinkDevice {
    /// This endpoint's identifier.
    pub fn id(&self) -> EndpointId {
        self.id
    }

    /// This endpoint's side.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The network this endpoint belongs to.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// This endpoint's addresses.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        self.net.addresses(self.id)
    }

    /// Replaces this endpoint's addresses (see [`Network::set_addresses`]).
    pub fn set_addresses(&self, addrs: &[Ipv4Addr]) {
        self.net.set_addresses(self.id, addrs);
    }

    /// The earliest pending delivery to this endpoint.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.net
            .state
            .borrow()
            .endpoints
            .get(self.id.0)
            .and_then(|e| e.inbox.next_arrival())
    }

    /// Sends `bytes` (an IP packet, or anything) at `now` as if this
    /// endpoint had transmitted it.
    pub fn send_raw(&self, now: Instant, bytes: &[u8]) -> Fate {
        self.net
            .state
            .borrow_mut()
            .send(self.id, now, bytes.to_vec())
    }

    /// Takes the next packet that has arrived by `now`.
    pub fn recv_raw(&self, now: Instant) -> Option<Vec<u8>> {
        self.net.state.borrow_mut().receive(self.id, now)
    }
}

impl Device for LinkDevice {
    type RxToken<'a> = LinkRxToken;
    type TxToken<'a> = LinkTxToken<'a>;

    fn receive(&mut self, timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let bytes = self.recv_raw(timestamp)?;
        Some((
            LinkRxToken { bytes },
            LinkTxToken {
                device: self,
                now: timestamp,
            },
        ))
    }

    fn transmit(&mut self, timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(LinkTxToken {
            device: self,
            now: timestamp,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.net.config().mtu;
        caps
    }
}

/// A received packet, handed to smoltcp.
#[derive(Debug)]
pub struct LinkRxToken {
    bytes: Vec<u8>,
}

impl phy::RxToken for LinkRxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.bytes)
    }
}

/// Permission to send one packet at the token's time.
#[derive(Debug)]
pub struct LinkTxToken<'a> {
    device: &'a LinkDevice,
    now: Instant,
}

impl phy::TxToken for LinkTxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut bytes = vec![0; len];
        let result = f(&mut bytes);
        self.device
            .net
            .state
            .borrow_mut()
            .send(self.device.id, self.now, bytes);
        result
    }
}
