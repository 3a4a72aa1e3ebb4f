//! Connection cells: one smoltcp `Interface` and a one-socket `SocketSet`
//! per connection, plus a default interface with no socket.
//!
//! smoltcp finds the socket of an ingress packet by scanning its socket
//! set, and walks every socket on egress and in `poll_at`. With one socket
//! per interface those walks cover one socket: the stack steers each
//! inspected packet to its connection's interface (a boundary lane, see
//! [`crate::boundary::Lane`]) and polls only the interfaces it chooses.
//! Packets no connection takes go to the default interface, whose smoltcp
//! answers them as a host without that socket would (a RST to TCP).
//!
//! Owns the interfaces and sockets; knows nothing of flows or streams.
//! Every interface has the stack's address and gateway and its own random
//! seed (smoltcp draws TCP initial sequence numbers from it), taken from
//! the caller's generator so a seeded simulation is reproducible.

use std::net::Ipv4Addr;

use smoltcp::iface::{Config, Context, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use crate::boundary::{Boundary, DEFAULT_LANE, Lane, NO_LANE};
use crate::config::Ipv6Addressing;

/// A connection's cell: its interface and its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ConnId(u32);

impl ConnId {
    /// The boundary lane of this cell's packets.
    pub(crate) fn lane(self) -> Lane {
        self.0
    }
}

/// An interface and its sockets.
struct Cell {
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
}

/// The addresses every interface carries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Addressing {
    /// The stack's address.
    pub(crate) address: Ipv4Addr,
    /// Its prefix length.
    pub(crate) prefix_len: u8,
    /// The default gateway.
    pub(crate) gateway: Option<Ipv4Addr>,
    /// The IPv6 address, if any.
    pub(crate) ipv6: Option<Ipv6Addressing>,
}

/// Every connection's cell and the default interface.
pub(crate) struct Cells {
    /// Boxed: a free slot costs a pointer, not an interface.
    slots: Vec<Option<Box<Cell>>>,
    free: Vec<u32>,
    len: usize,
    addressing: Addressing,
    default: Interface,
    no_sockets: SocketSet<'static>,
}

/// Most cells: lane numbers at and above [`NO_LANE`] are reserved.
const MAX_CELLS: usize = NO_LANE as usize;

fn new_interface<D: Device>(
    addressing: &Addressing,
    seed: u64,
    device: &mut D,
    now: Instant,
) -> Interface {
    let mut config = Config::new(HardwareAddress::Ip);
    config.random_seed = seed;
    let mut iface = Interface::new(config, device, now);
    configure(&mut iface, addressing);
    iface
}

fn configure(iface: &mut Interface, addressing: &Addressing) {
    iface.update_ip_addrs(|addrs| {
        addrs.clear();
        if !addressing.address.is_unspecified() {
            let _ = addrs.push(IpCidr::new(
                IpAddress::Ipv4(addressing.address),
                addressing.prefix_len,
            ));
        }
        if let Some(v6) = addressing.ipv6 {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(v6.address), v6.prefix_len));
        }
    });
    let routes = iface.routes_mut();
    routes.remove_default_ipv4_route();
    routes.remove_default_ipv6_route();
    if let Some(gw) = addressing.gateway {
        let _ = routes.add_default_ipv4_route(gw);
    }
    if let Some(gw) = addressing.ipv6.and_then(|v6| v6.gateway) {
        let _ = routes.add_default_ipv6_route(gw);
    }
}

impl Cells {
    /// No cells yet; the default interface seeded with `seed`.
    pub(crate) fn new<D: Device>(
        addressing: Addressing,
        seed: u64,
        device: &mut D,
        now: Instant,
    ) -> Cells {
        let default = new_interface(&addressing, seed, device, now);
        Cells {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
            addressing,
            default,
            no_sockets: SocketSet::new(Vec::new()),
        }
    }

    /// Cells in use.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// A new cell holding `socket`, its interface seeded with `seed`.
    /// `None` when every lane is in use.
    pub(crate) fn add<D: Device>(
        &mut self,
        socket: tcp::Socket<'static>,
        seed: u64,
        device: &mut D,
        now: Instant,
    ) -> Option<ConnId> {
        let index = match self.free.pop() {
            Some(index) => index,
            None if self.slots.len() < MAX_CELLS => {
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).ok()?
            }
            None => return None,
        };
        let iface = new_interface(&self.addressing, seed, device, now);
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(socket);
        self.slots[index as usize] = Some(Box::new(Cell {
            iface,
            sockets,
            handle,
        }));
        self.len += 1;
        Some(ConnId(index))
    }

    /// Removes a cell (its socket is dropped).
    pub(crate) fn remove(&mut self, id: ConnId) {
        if let Some(slot) = self.slots.get_mut(id.0 as usize)
            && slot.take().is_some()
        {
            self.free.push(id.0);
            self.len -= 1;
        }
    }

    /// Gives back the slot table's memory once no cell is left (lanes are
    /// numbered afresh from then on).
    pub(crate) fn shrink_to_fit(&mut self) {
        if self.len == 0 {
            self.slots = Vec::new();
            self.free = Vec::new();
        }
    }

    fn cell(&self, id: ConnId) -> Option<&Cell> {
        self.slots.get(id.0 as usize).and_then(|c| c.as_deref())
    }

    fn cell_mut(&mut self, id: ConnId) -> Option<&mut Cell> {
        self.slots
            .get_mut(id.0 as usize)
            .and_then(|c| c.as_deref_mut())
    }

    /// The cell's socket.
    ///
    /// # Panics
    /// If the cell does not exist (a bookkeeping bug: every connection the
    /// stack tracks has its cell until it is removed).
    pub(crate) fn socket(&self, id: ConnId) -> &tcp::Socket<'static> {
        let cell = self.cell(id).expect("a tracked connection has its cell");
        cell.sockets.get::<tcp::Socket>(cell.handle)
    }

    /// The cell's socket, mutably (panics as [`Cells::socket`]).
    pub(crate) fn socket_mut(&mut self, id: ConnId) -> &mut tcp::Socket<'static> {
        let cell = self
            .cell_mut(id)
            .expect("a tracked connection has its cell");
        cell.sockets.get_mut::<tcp::Socket>(cell.handle)
    }

    /// The cell's socket and its interface's context (to `connect`).
    pub(crate) fn socket_and_context(
        &mut self,
        id: ConnId,
    ) -> Option<(&mut tcp::Socket<'static>, &mut Context)> {
        let cell = self.cell_mut(id)?;
        let socket = cell.sockets.get_mut::<tcp::Socket>(cell.handle);
        Some((socket, cell.iface.context()))
    }

    /// The cell of a lane, if it is one that exists.
    pub(crate) fn conn_of_lane(&self, lane: Lane) -> Option<ConnId> {
        let id = ConnId(lane);
        (lane < NO_LANE && self.cell(id).is_some()).then_some(id)
    }

    /// Polls the interface of `lane` (a cell, or the default interface):
    /// it takes that lane's packets at the front of the boundary's queue
    /// and sends what its socket has to send. Packets of a cell that no
    /// longer exists are dropped.
    pub(crate) fn poll_lane<D: Device>(
        &mut self,
        lane: Lane,
        now: Instant,
        device: &mut Boundary<D>,
    ) -> bool {
        device.set_rx_lane(Some(lane));
        let changed = if lane == DEFAULT_LANE {
            self.default.poll(now, device, &mut self.no_sockets) != PollResult::None
        } else if let Some(cell) = self.cell_mut(ConnId(lane)) {
            cell.iface.poll(now, device, &mut cell.sockets) != PollResult::None
        } else {
            device.drop_front_lane(lane);
            false
        };
        device.set_rx_lane(Some(NO_LANE));
        changed
    }

    /// Polls one cell for egress only (timers, queued data).
    pub(crate) fn poll_cell<D: Device>(
        &mut self,
        id: ConnId,
        now: Instant,
        device: &mut Boundary<D>,
    ) -> bool {
        device.set_rx_lane(Some(NO_LANE));
        self.cell_mut(id)
            .is_some_and(|cell| cell.iface.poll(now, device, &mut cell.sockets) != PollResult::None)
    }

    /// How long until the cell's interface needs a poll (`None`: nothing
    /// scheduled).
    pub(crate) fn poll_delay(&mut self, id: ConnId, now: Instant) -> Option<Duration> {
        let cell = self.cell_mut(id)?;
        cell.iface.poll_delay(now, &cell.sockets)
    }

    /// Gives every interface a new address (the host moved).
    pub(crate) fn set_addressing(&mut self, addressing: Addressing) {
        self.addressing = addressing;
        configure(&mut self.default, &addressing);
        for cell in self.slots.iter_mut().flatten() {
            configure(&mut cell.iface, &addressing);
        }
    }
}
