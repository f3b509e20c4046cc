//! The loopback sockets that stand for the nameservers of the local resolv.conf: one per
//! nameserver and address family, shared by every app socket of the session.
//!
//! A resolver (glibc, musl, Go) opens a new UDP socket for almost every lookup. Had each of
//! them a relay socket of its own, every lookup would pay for a socket, a port search on
//! loopback and a relay task (a worker woken while the app waits). Instead the app's
//! socket is connected to (or sends to) the shared socket of its nameserver; queries that
//! reach it are told apart by their source, the app socket's own address, and answered to
//! it. Datagrams from a source that is no app socket with an association (another local
//! program that found the port) are dropped: an app socket's port can't be shared with
//! another user (see `udp`'s notes on `SO_REUSEADDR`, checked here too), so a source
//! address is as good a proof as the kernel's filter on a connected socket.
//!
//! The receives on the app's socket are emulated as for every association (`handlers::
//! recv`): the shared socket's address is translated to the nameserver's.
//!
//! Answers are sent from the notification loop itself (a cached answer to a trapped send)
//! as well as from tasks. The socket is registered with the runtime for reading only: a
//! registration for writing too would have every answer sent wake a runtime worker (the
//! socket's send buffer frees again), a cross-CPU wake-up the app would wait for. An answer
//! that finds the socket's send buffer full is dropped, as a datagram on the way may be;
//! the app's resolver asks again.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::dns::DnsResponder;
use crate::sockaddr::canonical_addr;

use super::udp::UdpAssociation;

/// Largest query taken.
const MAX_QUERY: usize = 65_536;

/// The session's nameserver sockets, made on first use.
pub struct NameserverRelays {
    /// Answers the queries.
    pub dns: Arc<DnsResponder>,
    /// (nameserver in canonical form, whether the app sockets are IPv6) → its socket.
    relays: Mutex<HashMap<(SocketAddr, bool), Arc<NameserverRelay>>>,
}

/// The socket standing for one nameserver, for app sockets of one family.
pub struct NameserverRelay {
    /// The nameserver, in canonical form.
    pub nameserver: SocketAddr,
    /// The socket's own address (on loopback).
    pub local: SocketAddr,
    sock: AsyncFd<std::net::UdpSocket>,
    /// App socket address (canonical form) → its association.
    members: Mutex<HashMap<SocketAddr, Weak<UdpAssociation>>>,
}

impl NameserverRelays {
    /// No socket yet; each is made when an app socket first talks to its nameserver.
    pub fn new(dns: Arc<DnsResponder>) -> Arc<Self> {
        Arc::new(Self {
            dns,
            relays: Mutex::default(),
        })
    }

    /// The socket for `nameserver` as app sockets of family `v6` reach it, made (with its
    /// reader) on first use. Never waits; must run within the runtime.
    pub fn relay(
        self: &Arc<Self>,
        nameserver: SocketAddr,
        v6: bool,
    ) -> io::Result<Arc<NameserverRelay>> {
        let key = (canonical_addr(nameserver), v6);
        let mut relays = self
            .relays
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?;
        if let Some(relay) = relays.get(&key) {
            return Ok(Arc::clone(relay));
        }
        let bind: SocketAddr = if v6 {
            (Ipv6Addr::LOCALHOST, 0).into()
        } else {
            (Ipv4Addr::LOCALHOST, 0).into()
        };
        let sock = std::net::UdpSocket::bind(bind)?;
        sock.set_nonblocking(true)?;
        let local = sock.local_addr()?;
        let relay = Arc::new(NameserverRelay {
            nameserver: key.0,
            local,
            sock: crate::sys::socket::watch(sock, Interest::READABLE)?,
            members: Mutex::default(),
        });
        relays.insert(key, Arc::clone(&relay));
        tokio::spawn(Arc::clone(self).read(Arc::clone(&relay)));
        Ok(relay)
    }

    /// Takes the queries sent to `relay` by app sockets that don't go through a trapped
    /// call sctrace answers itself (`send`, `write`, ...), until the socket fails.
    async fn read(self: Arc<Self>, relay: Arc<NameserverRelay>) {
        let mut buf = vec![0u8; MAX_QUERY];
        loop {
            let received = relay
                .sock
                .async_io(Interest::READABLE, |sock| sock.recv_from(&mut buf))
                .await;
            let (n, from) = match received {
                Ok(received) => received,
                Err(err) if transient(&err) => continue,
                Err(err) => {
                    tracing::debug!("nameserver relay {}: {err}", relay.local);
                    break;
                }
            };
            match relay.member(from) {
                Some(assoc) if assoc.intruder_sent(relay.nameserver) => {}
                Some(assoc) => assoc.query_dns(&relay, from, buf[..n].to_vec()),
                None => tracing::debug!(
                    "nameserver relay {}: dropped a datagram from {from}, no program socket",
                    relay.local
                ),
            }
        }
        // The next app socket gets a new one.
        if let Ok(mut relays) = self.relays.lock() {
            relays.retain(|_, r| !Arc::ptr_eq(r, &relay));
        }
    }
}

/// Errors a UDP receive may report for one datagram without the socket being unusable.
fn transient(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EINTR)
    )
}

impl NameserverRelay {
    /// Admits the app socket at `app` (its association `assoc`): its queries are taken.
    pub fn join(&self, app: SocketAddr, assoc: &Arc<UdpAssociation>) {
        if let Ok(mut members) = self.members.lock() {
            members.insert(canonical_addr(app), Arc::downgrade(assoc));
        }
    }

    /// Lets the app socket at `app` go, if `assoc` is still the one there.
    pub fn leave(&self, app: SocketAddr, assoc: &UdpAssociation) {
        if let Ok(mut members) = self.members.lock() {
            let key = canonical_addr(app);
            if members
                .get(&key)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), assoc))
            {
                members.remove(&key);
            }
        }
    }

    /// The association of the app socket at `from`, if it is one.
    fn member(&self, from: SocketAddr) -> Option<Arc<UdpAssociation>> {
        self.members
            .lock()
            .ok()?
            .get(&canonical_addr(from))
            .and_then(Weak::upgrade)
    }

    /// Sends `answer` to the app socket at `to` (never waits; see the module notes).
    pub fn deliver(&self, to: SocketAddr, answer: &[u8]) {
        if let Err(err) = self.sock.get_ref().send_to(answer, to) {
            tracing::debug!("nameserver relay: an answer to {to} is lost: {err}");
        }
    }
}
