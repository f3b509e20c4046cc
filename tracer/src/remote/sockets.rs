//! The app sockets sctrace manages, keyed by socket identity — the socket's inode, shared by
//! every fd of a socket (so copies, dups and forks find the same entry) and readable
//! without a copy of the socket (`/proc/PID/fd/N` shows `socket:[INODE]`), which container
//! mode needs for sockets whose copy it released (see `trap::owned`): redirected TCP
//! connections (whose `getpeername` shows the remote peer) and UDP associations (whose
//! receives show the remote peers as sources).
//!
//! Addresses are stored as the socket's `getpeername`/`getsockname` show them: in the
//! socket's own family (an IPv6 socket shows IPv4 peers v4-mapped).
//!
//! A UDP association is not told when the app closes its socket (nothing is sent to a
//! relay socket then), so a sweep looks for the associations' sockets in /proc/net/udp
//! every [`SWEEP_EVERY`] and ends those whose socket is gone — a program making many
//! lookups would otherwise leave relay sockets behind for the associations' idle time.
//!
//! Socket inodes come from a 32-bit counter (`get_next_ino`), which only wraps after
//! about four billion sockets, pipes and other anonymous files; the identity of a live
//! socket is never shared with another live one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::relay::udp::UdpAssociation;

/// One managed socket.
#[derive(Clone)]
pub enum Managed {
    /// A TCP socket connected to the relay on behalf of `peer` (an outgoing connection), or
    /// delivered by sctrace for the remote client `peer` (an incoming one).
    Tcp {
        /// The destination the app asked for, or the remote client.
        peer: SocketAddr,
        /// The connection's own address in the target (the agent's socket, or the target's
        /// address the client connected to), shown by `getsockname`.
        local: SocketAddr,
    },
    /// A datagram socket connected to port 0 of a remote address (a route probe): its
    /// address in the target (it has no peer, as the kernel's own probe socket has none).
    Probe {
        /// The target's source address for the probed address, with the socket's own port.
        local: SocketAddr,
    },
    /// A UDP socket with an association.
    Udp {
        /// Its relay state.
        assoc: Arc<UdpAssociation>,
        /// The peer the app connected it to, if it did, and the socket's own address in the
        /// target for that peer (the route's source), when known.
        connected: Option<(SocketAddr, Option<SocketAddr>)>,
    },
}

/// How long a finished TCP relay's entry is kept: the app may still ask `getpeername` on a
/// socket whose peer closed.
pub const TCP_ENTRY_GRACE: Duration = Duration::from_secs(30);

/// Socket identity → managed socket.
#[derive(Default)]
pub struct ManagedSockets {
    map: Mutex<Table>,
}

/// Entries, and the order TCP and probe entries came in (TCP connections handed to a local
/// agent and probe sockets are never seen ending, so the table is bounded: the oldest go
/// first).
#[derive(Default)]
struct Table {
    entries: HashMap<u64, Managed>,
    tcp_order: VecDeque<u64>,
}

/// How often the sweep looks for the sockets of UDP associations.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// TCP entries kept at most.
const MAX_TCP_ENTRIES: usize = 65_536;

impl ManagedSockets {
    /// The entry for `id`.
    pub fn get(&self, id: u64) -> Option<Managed> {
        self.map
            .lock()
            .ok()
            .and_then(|m| m.entries.get(&id).cloned())
    }

    /// Sets the entry for `id`.
    pub fn insert(&self, id: u64, managed: Managed) {
        let Ok(mut m) = self.map.lock() else { return };
        if matches!(managed, Managed::Tcp { .. } | Managed::Probe { .. }) {
            m.tcp_order.push_back(id);
            while m.tcp_order.len() > MAX_TCP_ENTRIES {
                if let Some(old) = m.tcp_order.pop_front() {
                    if matches!(
                        m.entries.get(&old),
                        Some(Managed::Tcp { .. } | Managed::Probe { .. })
                    ) {
                        m.entries.remove(&old);
                    }
                }
            }
        }
        m.entries.insert(id, managed);
    }

    /// Removes the entry for `id`.
    pub fn remove(&self, id: u64) {
        if let Ok(mut m) = self.map.lock() {
            m.entries.remove(&id);
        }
    }

    /// Removes a UDP entry, unless a newer association replaced it.
    pub fn remove_association(&self, id: u64, assoc: &Arc<UdpAssociation>) {
        if let Ok(mut m) = self.map.lock() {
            if let Some(Managed::Udp { assoc: current, .. }) = m.entries.get(&id) {
                if Arc::ptr_eq(current, assoc) {
                    m.entries.remove(&id);
                }
            }
        }
    }

    /// The peer `getpeername` should show for `id`, if sctrace manages it.
    pub fn peer_of(&self, id: u64) -> Option<SocketAddr> {
        match self.get(id)? {
            Managed::Tcp { peer, .. } => Some(peer),
            Managed::Probe { .. } => None,
            Managed::Udp { connected, .. } => connected.map(|(peer, _)| peer),
        }
    }

    /// The address `getsockname` should show for `id`, if sctrace manages it and knows
    /// the address in the target.
    pub fn local_of(&self, id: u64) -> Option<SocketAddr> {
        match self.get(id)? {
            Managed::Tcp { local, .. } | Managed::Probe { local } => Some(local),
            Managed::Udp { connected, .. } => connected.and_then(|(_, local)| local),
        }
    }

    /// Records the peer a managed UDP socket was connected to, and its own address for it in
    /// the target (or that it was disconnected).
    pub fn set_udp_peer(&self, id: u64, peer: Option<(SocketAddr, Option<SocketAddr>)>) {
        if let Ok(mut m) = self.map.lock() {
            if let Some(Managed::Udp { connected, .. }) = m.entries.get_mut(&id) {
                *connected = peer;
            }
        }
    }

    /// A datagram socket dissolved its connection (`connect(AF_UNSPEC)`): it has no peer
    /// any more (a route probe's entry goes; an association stays, unconnected).
    pub fn dissolve(&self, id: u64) {
        if let Ok(mut m) = self.map.lock() {
            match m.entries.get_mut(&id) {
                Some(Managed::Udp { connected, .. }) => *connected = None,
                Some(Managed::Probe { .. }) => {
                    m.entries.remove(&id);
                }
                _ => {}
            }
        }
    }

    /// The sockets with a UDP association.
    fn associated(&self) -> Vec<u64> {
        self.map
            .lock()
            .map(|m| {
                m.entries
                    .iter()
                    .filter(|(_, managed)| matches!(managed, Managed::Udp { .. }))
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Ends the associations of those of `ids` that are not among `present` (the sockets
    /// that exist now): their sockets were closed.
    fn end_gone(&self, ids: Vec<u64>, present: &HashSet<u64>) -> usize {
        let ended: Vec<Arc<UdpAssociation>> = match self.map.lock() {
            Ok(mut m) => ids
                .into_iter()
                .filter(|id| !present.contains(id))
                .filter_map(|id| match m.entries.remove(&id) {
                    Some(Managed::Udp { assoc, .. }) => Some(assoc),
                    Some(other) => {
                        // Replaced by another kind meanwhile: not ours to end.
                        m.entries.insert(id, other);
                        None
                    }
                    None => None,
                })
                .collect(),
            Err(_) => return 0,
        };
        // Closed outside the lock (their on_close looks the table up).
        for assoc in &ended {
            assoc.close();
        }
        ended.len()
    }

    /// Starts the sweep (on the current tokio runtime); it ends when the table is dropped.
    pub fn start_sweep(self: &Arc<Self>) {
        let table = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let Some(sockets) = table.upgrade() else {
                    return;
                };
                // Listed before the table is read: a socket bound after the reading began
                // (and so perhaps missing from it) has no association in this list yet.
                let ids = sockets.associated();
                if ids.is_empty() {
                    continue;
                }
                let read = tokio::task::spawn_blocking(|| {
                    crate::socket_table::sockets_or_error(crate::socket_table::Protocol::Udp)
                })
                .await;
                let Ok(Ok(entries)) = read else {
                    continue;
                };
                let present: HashSet<u64> = entries.iter().map(|e| e.inode).collect();
                let ended = sockets.end_gone(ids, &present);
                if ended > 0 {
                    tracing::debug!("ended {ended} UDP associations whose sockets were closed");
                }
            }
        });
    }

    /// How many sockets are managed (for tests and logs).
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.entries.len()).unwrap_or(0)
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
