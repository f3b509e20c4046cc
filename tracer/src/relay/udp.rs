//! UDP associations: one per app socket that talks to remote peers (or to a nameserver sctrace
//! answers for). Replies have to arrive on the app's own socket, from an address sctrace can
//! map back to the remote peer, so each peer gets a relay socket of its own on loopback:
//!
//! ```text
//!  app socket ── sendto(peer) trapped ───────────────▶ agent flow ──▶ peer (in the target)
//!  app socket ◀── from relay socket R(peer) ◀── flow ◀────────────────  peer
//!  app socket connected to R(peer): send() ──▶ R(peer) ──▶ flow ──▶ peer
//! ```
//!
//! The app's receives are then emulated (see `handlers::recv`): a datagram from R(peer)
//! shows `peer` as its source. Each relay socket is connected to the app socket, so the
//! kernel accepts datagrams on it only from the app socket, and reports ECONNREFUSED once
//! the app socket is gone — which ends the association. An association with no traffic for
//! [`IDLE`] ends too, as a NAT's binding would.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sctrace_protocol::{DnsTransport, SessionHandle, UdpFlow};
use tokio::net::UdpSocket;
use tokio::sync::OnceCell;
use tokio::task::AbortHandle;

use crate::dns::{Asker, DnsResponder};
use crate::sockaddr::in_family;

type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// How long an association may go without traffic.
pub const IDLE: Duration = Duration::from_secs(180);
/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 65_536;

/// Whom a relay socket stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// A peer in the target, reached through the agent.
    Remote,
    /// A nameserver of the local resolv.conf: sctrace's DNS responder answers.
    Dns,
}

struct Peer {
    remote: SocketAddr,
    kind: PeerKind,
    sock: UdpSocket,
}

/// The relay state of one app socket.
pub struct UdpAssociation {
    app_local: SocketAddr,
    app_v6: bool,
    agent: SessionHandle,
    dns: Arc<DnsResponder>,
    asker: Asker,
    flow: OnceCell<(Arc<UdpFlow>, bool)>,
    peers: Mutex<HashMap<SocketAddr, Arc<Peer>>>,
    by_relay: Mutex<HashMap<SocketAddr, SocketAddr>>,
    tasks: Mutex<Vec<AbortHandle>>,
    last_activity: Mutex<Instant>,
    closed: AtomicBool,
    on_close: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl UdpAssociation {
    /// Starts an association for the app socket reachable at `app_local` (its bound address,
    /// wildcard replaced by loopback); `on_close` runs once when it ends.
    pub fn start(
        app_local: SocketAddr,
        agent: SessionHandle,
        dns: Arc<DnsResponder>,
        asker: Asker,
        on_close: Box<dyn FnOnce() + Send>,
    ) -> Arc<UdpAssociation> {
        let assoc = Arc::new(UdpAssociation {
            app_local,
            app_v6: app_local.is_ipv6(),
            agent,
            dns,
            asker,
            flow: OnceCell::new(),
            peers: Mutex::default(),
            by_relay: Mutex::default(),
            tasks: Mutex::default(),
            last_activity: Mutex::new(Instant::now()),
            closed: AtomicBool::new(false),
            on_close: Mutex::new(Some(on_close)),
        });
        let weak = Arc::downgrade(&assoc);
        let sweeper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(IDLE / 6).await;
                let Some(assoc) = weak.upgrade() else { return };
                let idle = assoc
                    .last_activity
                    .lock()
                    .map(|t| t.elapsed())
                    .unwrap_or_default();
                if idle >= IDLE {
                    assoc.close();
                    return;
                }
            }
        });
        assoc.track(sweeper.abort_handle());
        assoc
    }

    fn track(&self, task: AbortHandle) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(task);
        }
    }

    fn touch(&self) {
        if let Ok(mut t) = self.last_activity.lock() {
            *t = Instant::now();
        }
    }

    /// Ends the association: relay sockets close and the agent flow with them.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Ok(mut tasks) = self.tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
        if let Ok(mut peers) = self.peers.lock() {
            peers.clear();
        }
        let on_close = self.on_close.lock().ok().and_then(|mut f| f.take());
        if let Some(f) = on_close {
            f();
        }
    }

    /// The remote peer a relay socket address stands for, in the app's address form.
    pub fn translate(&self, relay: SocketAddr) -> Option<SocketAddr> {
        self.by_relay
            .lock()
            .ok()
            .and_then(|m| m.get(&relay).copied())
    }

    /// The relay socket for `remote`, made on first use.
    pub async fn peer(
        self: &Arc<Self>,
        remote: SocketAddr,
        kind: PeerKind,
    ) -> io::Result<SocketAddr> {
        if let Some(peer) = self.peers.lock().ok().and_then(|m| m.get(&remote).cloned()) {
            return peer.sock.local_addr();
        }
        let bind: SocketAddr = if self.app_v6 {
            (Ipv6Addr::LOCALHOST, 0).into()
        } else {
            (Ipv4Addr::LOCALHOST, 0).into()
        };
        let sock = UdpSocket::bind(bind).await?;
        sock.connect(self.app_local).await?;
        let local = sock.local_addr()?;
        let peer = Arc::new(Peer { remote, kind, sock });
        {
            let mut peers = self
                .peers
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?;
            if let Some(existing) = peers.get(&remote) {
                // Another task made it meanwhile.
                return existing.sock.local_addr();
            }
            peers.insert(remote, Arc::clone(&peer));
        }
        if let Ok(mut m) = self.by_relay.lock() {
            m.insert(local, remote);
        }
        let me = Arc::clone(self);
        let reader = tokio::spawn(async move { me.read_from_app(peer).await });
        self.track(reader.abort_handle());
        Ok(local)
    }

    /// Datagrams the app sends on a socket connected to a relay socket. (Boxed: the relay
    /// tasks spawn each other, which the compiler can only check through a named type.)
    fn read_from_app(self: Arc<Self>, peer: Arc<Peer>) -> BoxFuture {
        Box::pin(self.read_from_app_inner(peer))
    }

    async fn read_from_app_inner(self: Arc<Self>, peer: Arc<Peer>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            match peer.sock.recv(&mut buf).await {
                Ok(n) => {
                    self.touch();
                    let data = buf[..n].to_vec();
                    match peer.kind {
                        PeerKind::Remote => {
                            if let Err(err) = self.send_remote(peer.remote, &data).await {
                                tracing::debug!("udp relay: cannot send to {}: {err}", peer.remote);
                            }
                        }
                        PeerKind::Dns => self.spawn_dns_answer(Arc::clone(&peer), data),
                    }
                }
                Err(err) if err.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    // The app socket is gone.
                    self.close();
                    return;
                }
                Err(err) => {
                    tracing::debug!("udp relay: receive failed: {err}");
                    self.close();
                    return;
                }
            }
        }
    }

    fn spawn_dns_answer(self: &Arc<Self>, peer: Arc<Peer>, query: Vec<u8>) {
        let me = Arc::clone(self);
        let task = tokio::spawn(async move {
            if let Some(answer) = me
                .dns
                .answer(&query, peer.remote, DnsTransport::Udp, &me.asker)
                .await
            {
                if let Err(err) = peer.sock.send(&answer).await {
                    tracing::debug!("udp relay: cannot deliver a DNS answer: {err}");
                }
            }
        });
        self.track(task.abort_handle());
    }

    /// A datagram the app sent with `sendto(remote)` (the call was answered by sctrace).
    pub async fn send_from_app(
        self: &Arc<Self>,
        remote: SocketAddr,
        kind: PeerKind,
        data: Vec<u8>,
    ) -> io::Result<()> {
        self.touch();
        match kind {
            PeerKind::Remote => self.send_remote(remote, &data).await,
            PeerKind::Dns => {
                self.peer(remote, PeerKind::Dns).await?;
                let peer = self
                    .peers
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&remote).cloned())
                    .ok_or_else(|| io::Error::other("association closed"))?;
                self.spawn_dns_answer(peer, data);
                Ok(())
            }
        }
    }

    async fn send_remote(self: &Arc<Self>, remote: SocketAddr, data: &[u8]) -> io::Result<()> {
        let (flow, flow_v6) = self.flow().await?;
        flow.send_to(in_family(remote, flow_v6), data).await
    }

    /// The agent flow, opened on first use (in the app socket's family when the target has
    /// it), with its reader.
    async fn flow(self: &Arc<Self>) -> io::Result<(Arc<UdpFlow>, bool)> {
        let me = Arc::clone(self);
        let (flow, v6) = self
            .flow
            .get_or_try_init(|| async move {
                let any4: SocketAddr = (Ipv4Addr::UNSPECIFIED, 0).into();
                let any6: SocketAddr = (Ipv6Addr::UNSPECIFIED, 0).into();
                let opened = if me.app_v6 {
                    match me.agent.open_udp(any6).await {
                        Ok(flow) => Ok((flow, true)),
                        Err(_) => me.agent.open_udp(any4).await.map(|f| (f, false)),
                    }
                } else {
                    me.agent.open_udp(any4).await.map(|f| (f, false))
                };
                let (flow, v6) = opened.map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
                let flow = Arc::new(flow);
                let reader_flow = Arc::clone(&flow);
                let reader_me = Arc::clone(&me);
                let reader =
                    tokio::spawn(async move { reader_me.read_from_flow(reader_flow).await });
                me.track(reader.abort_handle());
                Ok::<_, io::Error>((flow, v6))
            })
            .await?;
        Ok((Arc::clone(flow), *v6))
    }

    /// Datagrams from remote peers: delivered to the app socket from the peer's relay socket.
    fn read_from_flow(self: Arc<Self>, flow: Arc<UdpFlow>) -> BoxFuture {
        Box::pin(self.read_from_flow_inner(flow))
    }

    async fn read_from_flow_inner(self: Arc<Self>, flow: Arc<UdpFlow>) {
        loop {
            let (src, data) = match flow.recv_from().await {
                Ok(received) => received,
                Err(err) => {
                    tracing::debug!("udp relay: agent flow ended: {err}");
                    return;
                }
            };
            self.touch();
            let remote = in_family(src, self.app_v6);
            let delivered = async {
                self.peer(remote, PeerKind::Remote).await?;
                let peer = self
                    .peers
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&remote).cloned())
                    .ok_or_else(|| io::Error::other("association closed"))?;
                peer.sock.send(&data).await
            };
            if let Err(err) = delivered.await {
                tracing::debug!("udp relay: cannot deliver a datagram from {remote}: {err}");
                if err.raw_os_error() == Some(libc::ECONNREFUSED) {
                    self.close();
                    return;
                }
            }
        }
    }
}

impl std::fmt::Debug for UdpAssociation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpAssociation")
            .field("app_local", &self.app_local)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Drop for UdpAssociation {
    fn drop(&mut self) {
        self.close();
    }
}
