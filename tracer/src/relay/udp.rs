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
//! shows `peer` as its source. The nameservers sctrace answers for are the exception: their
//! relay sockets are shared by all app sockets (see [`super::nameservers`]). Each relay socket is connected to the app socket, so the
//! kernel accepts datagrams on it only from the app socket, and reports ECONNREFUSED once
//! the app socket is gone — which ends the association. An association with no traffic for
//! [`IDLE`] ends too, as a NAT's binding would.
//!
//! Like a NAT, an association takes datagrams from the target only from the peers the app
//! sent to (unless `feature.network.outgoing.udp_replies` is `"any"`), and keeps at most
//! [`MAX_PEERS`] relay sockets: anyone in the cluster who finds the agent's port could
//! otherwise make sctrace open a socket per forged source. Datagrams left out are counted in
//! `drop` events.
//!
//! An app socket with `SO_REUSEADDR` could share its port with another user's socket,
//! whose datagrams to a relay socket would look like the app's. When its association
//! starts, the option is turned off (nobody can bind the port from then on; `SO_REUSEPORT`
//! shares only with the same user), and each datagram is forwarded only while no other
//! user's socket holds the port (one bound before: a look at /proc/net/udp, ~0.1 ms, paid
//! only by those sockets).

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

use sctrace_filter::config::UdpReplies;

use crate::dns::Asker;
use crate::events::{Event, EventSink, DROP};
use crate::sockaddr::{canonical_addr, in_family};
use crate::socket_table::{self, Protocol};

use super::nameservers::{NameserverRelay, NameserverRelays};

type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// How long an association may go without traffic.
pub const IDLE: Duration = Duration::from_secs(180);
/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 65_536;
/// Relay sockets (peers) one association keeps at most.
pub const MAX_PEERS: usize = 256;
/// Peers the app sent to, remembered per association at most (the oldest are forgotten).
const MAX_SENT_TO: usize = 4096;

/// Which datagrams from the target an association takes, and where it counts the others.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Only from the peers the app sent to, or from any source.
    pub replies: UdpReplies,
    /// Where `drop` events go.
    pub events: EventSink,
}

/// The app socket an association serves.
#[derive(Debug, Clone, Copy)]
pub struct AppEnd {
    /// Its bound address (wildcard replaced by loopback).
    pub local: SocketAddr,
    /// Set when the socket lets others bind its address too.
    pub shared: Option<SharedPort>,
}

/// The identity of an app socket that shares its port (see the module notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedPort {
    /// The socket's inode.
    pub inode: u64,
    /// Its owner.
    pub uid: u32,
}

impl SharedPort {
    /// Whether another user's UDP socket holds `port` now.
    fn intruded(&self, port: u16) -> bool {
        socket_table::sockets(Protocol::Udp)
            .iter()
            .any(|e| e.local_port == port && e.inode != self.inode && e.uid != self.uid)
    }
}

/// Whom a relay socket stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// A peer in the target, reached through the agent.
    Remote,
    /// A nameserver of the local resolv.conf: sctrace's DNS responder answers.
    Dns,
}

/// A remote peer's relay socket.
struct Peer {
    remote: SocketAddr,
    sock: UdpSocket,
}

/// The relay state of one app socket.
pub struct UdpAssociation {
    app_local: SocketAddr,
    app_v6: bool,
    app_shared: Option<SharedPort>,
    agent: SessionHandle,
    nameservers: Arc<NameserverRelays>,
    asker: Asker,
    policy: Policy,
    /// The remote peers the app sent to (canonical form), oldest first.
    sent_to: Mutex<std::collections::VecDeque<SocketAddr>>,
    flow: OnceCell<(Arc<UdpFlow>, bool)>,
    peers: Mutex<HashMap<SocketAddr, Arc<Peer>>>,
    by_relay: Mutex<HashMap<SocketAddr, SocketAddr>>,
    /// The nameserver relays the app socket joined.
    joined: Mutex<Vec<Arc<NameserverRelay>>>,
    tasks: Mutex<Vec<AbortHandle>>,
    last_activity: Mutex<Instant>,
    closed: AtomicBool,
    /// Whether the idle sweeper was started (see [`UdpAssociation::ensure_sweeper`]).
    sweeping: AtomicBool,
    on_close: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl UdpAssociation {
    /// An association for the app socket `app`; `on_close` runs once when it ends. It starts
    /// no task until it is used (a relay socket made, a datagram sent).
    pub fn start(
        app: AppEnd,
        agent: SessionHandle,
        nameservers: Arc<NameserverRelays>,
        asker: Asker,
        policy: Policy,
        on_close: Box<dyn FnOnce() + Send>,
    ) -> Arc<UdpAssociation> {
        Arc::new(UdpAssociation {
            app_local: app.local,
            app_v6: app.local.is_ipv6(),
            app_shared: app.shared,
            agent,
            nameservers,
            asker,
            policy,
            sent_to: Mutex::default(),
            flow: OnceCell::new(),
            peers: Mutex::default(),
            by_relay: Mutex::default(),
            joined: Mutex::default(),
            tasks: Mutex::default(),
            last_activity: Mutex::new(Instant::now()),
            closed: AtomicBool::new(false),
            sweeping: AtomicBool::new(false),
            on_close: Mutex::new(Some(on_close)),
        })
    }

    /// Starts the task that ends the association after [`IDLE`], once. Called from the
    /// association's own tasks and sends, which run on the runtime's workers: an association
    /// made by the notification loop (a UDP connect answered at once) costs it no task
    /// spawn, which would wake a worker while the app waits.
    pub fn ensure_sweeper(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
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
        self.track(sweeper.abort_handle());
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
        if let Ok(mut joined) = self.joined.lock() {
            for relay in joined.drain(..) {
                relay.leave(self.app_local, self);
            }
        }
        let on_close = self.on_close.lock().ok().and_then(|mut f| f.take());
        if let Some(f) = on_close {
            f();
        }
    }

    /// Whether the association never relayed anything: no relay socket, no agent flow, so
    /// no task of its own.
    pub fn is_unused(&self) -> bool {
        let no_peers = self.peers.lock().map(|p| p.is_empty()).unwrap_or(false);
        let no_nameserver = self.joined.lock().map(|j| j.is_empty()).unwrap_or(false);
        no_peers
            && no_nameserver
            && !self.flow.initialized()
            && !self.sweeping.load(Ordering::Acquire)
    }

    /// Whether the app socket is an IPv6 one (its addresses are shown v4-mapped).
    pub fn app_v6(&self) -> bool {
        self.app_v6
    }

    /// The remote peer a relay socket address stands for, in the app's address form.
    pub fn translate(&self, relay: SocketAddr) -> Option<SocketAddr> {
        self.by_relay
            .lock()
            .ok()
            .and_then(|m| m.get(&relay).copied())
    }

    /// The relay socket for `remote`, made on first use. Never waits (a few system calls),
    /// so that a UDP connect can be answered by the notification loop itself; must run
    /// within the runtime (the socket is registered with its reactor).
    pub fn peer(self: &Arc<Self>, remote: SocketAddr, kind: PeerKind) -> io::Result<SocketAddr> {
        if kind == PeerKind::Dns {
            return self.nameserver(remote).map(|relay| relay.local);
        }
        if let Some(peer) = self.peers.lock().ok().and_then(|m| m.get(&remote).cloned()) {
            return peer.sock.local_addr();
        }
        let bind: SocketAddr = if self.app_v6 {
            (Ipv6Addr::LOCALHOST, 0).into()
        } else {
            (Ipv4Addr::LOCALHOST, 0).into()
        };
        let sock = std::net::UdpSocket::bind(bind)?;
        sock.connect(self.app_local)?;
        sock.set_nonblocking(true)?;
        let sock = UdpSocket::from_std(sock)?;
        let local = sock.local_addr()?;
        let peer = Arc::new(Peer { remote, sock });
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
        let reader = tokio::spawn(async move {
            me.ensure_sweeper();
            me.read_from_app(peer).await
        });
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
                    if self.intruder_sent(peer.remote) {
                        continue;
                    }
                    self.touch();
                    if let Err(err) = self.send_remote(peer.remote, &buf[..n]).await {
                        tracing::debug!("udp relay: cannot send to {}: {err}", peer.remote);
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

    /// The shared relay socket of `nameserver` (in the app's address form), which this
    /// app socket joins on first use.
    fn nameserver(self: &Arc<Self>, nameserver: SocketAddr) -> io::Result<Arc<NameserverRelay>> {
        let relay = self.nameservers.relay(nameserver, self.app_v6)?;
        let mut joined = self
            .joined
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?;
        if !joined.iter().any(|r| Arc::ptr_eq(r, &relay)) {
            if self.closed.load(Ordering::SeqCst) {
                return Err(io::Error::other("association closed"));
            }
            relay.join(self.app_local, self);
            joined.push(Arc::clone(&relay));
            if let Ok(mut m) = self.by_relay.lock() {
                m.insert(relay.local, nameserver);
            }
        }
        Ok(relay)
    }

    /// Answers `query`, which the app socket (at `from`, as `relay` sees it) sent to the
    /// nameserver `relay` stands for: at once when the answer is cached (no task, whose
    /// start could wait for a worker to wake), else from a task of its own, so that
    /// queries don't wait for each other.
    pub fn query_dns(
        self: &Arc<Self>,
        relay: &Arc<NameserverRelay>,
        from: SocketAddr,
        query: Vec<u8>,
    ) {
        self.touch();
        let server = self.translate(relay.local).unwrap_or(relay.nameserver);
        let dns = &self.nameservers.dns;
        if let Some(answer) = dns.answer_cached(&query, server, DnsTransport::Udp, &self.asker) {
            relay.deliver(from, &answer);
            return;
        }
        let me = Arc::clone(self);
        let relay = Arc::clone(relay);
        let task = tokio::spawn(async move {
            let dns = &me.nameservers.dns;
            if let Some(answer) = dns
                .answer(&query, server, DnsTransport::Udp, &me.asker)
                .await
            {
                relay.deliver(from, &answer);
            }
        });
        self.track(task.abort_handle());
    }

    /// A query the app sent to `nameserver` in a call sctrace answers itself (`sendto`
    /// with the nameserver's address, `sendmmsg` on a socket connected to it): never waits.
    pub fn send_to_nameserver(
        self: &Arc<Self>,
        nameserver: SocketAddr,
        query: Vec<u8>,
    ) -> io::Result<()> {
        let relay = self.nameserver(nameserver)?;
        self.query_dns(&relay, self.app_local, query);
        Ok(())
    }

    /// A datagram the app sent with `sendto(remote)` to a remote peer (the call was
    /// answered by sctrace).
    pub async fn send_from_app(
        self: &Arc<Self>,
        remote: SocketAddr,
        data: Vec<u8>,
    ) -> io::Result<()> {
        self.ensure_sweeper();
        self.touch();
        self.send_remote(remote, &data).await
    }

    async fn send_remote(self: &Arc<Self>, remote: SocketAddr, data: &[u8]) -> io::Result<()> {
        self.note_sent_to(remote);
        let (flow, flow_v6) = self.flow().await?;
        flow.send_to(in_family(remote, flow_v6), data).await
    }

    /// Remembers that the app sent to `remote`: its replies are taken.
    fn note_sent_to(&self, remote: SocketAddr) {
        let remote = canonical_addr(remote);
        if let Ok(mut sent) = self.sent_to.lock() {
            if !sent.contains(&remote) {
                if sent.len() >= MAX_SENT_TO {
                    sent.pop_front();
                }
                sent.push_back(remote);
            }
        }
    }

    /// Why a datagram from `remote` is not delivered, if it is not: a source the app never
    /// sent to (unless any source is taken), or one more peer than an association keeps.
    fn refusal(&self, remote: SocketAddr) -> Option<&'static str> {
        let known = self
            .peers
            .lock()
            .map(|peers| peers.contains_key(&remote))
            .unwrap_or(false);
        if known {
            return None;
        }
        let sent_to = self
            .sent_to
            .lock()
            .map(|sent| sent.contains(&canonical_addr(remote)))
            .unwrap_or(false);
        if self.policy.replies == UdpReplies::Peers && !sent_to {
            return Some("not a peer the program sent to");
        }
        let full = self
            .peers
            .lock()
            .map(|peers| peers.len() >= MAX_PEERS)
            .unwrap_or(true);
        full.then_some("peer limit")
    }

    /// Whether a datagram that came from the app socket's address, for `peer`, may be
    /// another user's (see the module notes); it is then counted as dropped.
    pub(super) fn intruder_sent(&self, peer: SocketAddr) -> bool {
        let intruded = self
            .app_shared
            .is_some_and(|shared| shared.intruded(self.app_local.port()));
        if intruded {
            self.dropped(peer, "another user shares the program's port");
        }
        intruded
    }

    /// Counts a datagram from `remote` that is not delivered, in a `drop` event.
    fn dropped(&self, remote: SocketAddr, why: &'static str) {
        tracing::debug!("udp relay: dropped a datagram from {remote}: {why}");
        if !self.policy.events.enabled() {
            return;
        }
        let asker = &self.asker;
        self.policy.events.record(Event {
            ts: Event::now(),
            pid: asker.pid,
            tid: asker.tid,
            comm: asker.comm.clone(),
            syscall: DROP,
            fd: asker.fd,
            family: asker.family.clone(),
            sock_type: asker.sock_type.clone(),
            addr: remote.to_string(),
            decision: "remote",
            rule: Some(why.to_string()),
            result: "dropped".to_string(),
            ..Event::default()
        });
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
            let remote = in_family(src, self.app_v6);
            if let Some(why) = self.refusal(remote) {
                self.dropped(remote, why);
                continue;
            }
            self.touch();
            let delivered = async {
                self.peer(remote, PeerKind::Remote)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_port_is_intruded_only_by_another_users_socket() {
        let app = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = app.local_addr().unwrap().port();
        let (inode, uid) = crate::sys::socket::inode_and_owner(app.as_fd()).unwrap();
        let me = SharedPort { inode, uid };
        assert!(!me.intruded(port), "the app's own socket");
        let other_socket_same_user = SharedPort {
            inode: inode + 1,
            uid,
        };
        assert!(!other_socket_same_user.intruded(port));
        let someone_else = SharedPort {
            inode: inode + 1,
            uid: uid.wrapping_add(1),
        };
        assert!(
            someone_else.intruded(port),
            "another user's socket on the port"
        );
        drop(app);
        assert!(
            !someone_else.intruded(port),
            "nobody holds the port any more"
        );
    }
}
