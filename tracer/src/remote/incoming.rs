//! The target's incoming traffic (`feature.network.incoming`): when the app listens on a
//! port, sctrace subscribes that port in the target through the agent (mirror or steal,
//! with an HTTP filter), and delivers each connection the agent hands over to the app's own
//! listening socket, connecting to it from sctrace. The app's `accept` is emulated
//! (`handlers::accept`) so it and `getpeername` show the remote client, not sctrace.
//!
//! A subscription lasts as long as the app listens: a watcher looks for the listening
//! socket once a second, and when it is gone the subscription is dropped (the agent stops
//! redirecting; connections already delivered go on).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sctrace_filter::config::{
    HttpCondition, HttpFilterConfig, IncomingConfig, IncomingMode as Mode,
};
use sctrace_protocol::{
    Families, HttpFilter, IncomingKind, IncomingMode, IncomingRequest, ListenerPorts, Request,
    Requests, SessionHandle, SubscribeError, SubscribeFailureKind, SubscriptionEnd,
};
use tokio::io::AsyncReadExt;
use tokio::sync::{oneshot, watch};

use crate::agent_link::Offer;
use crate::errno::Errno;
use crate::remote::target_listeners::{self, Placed, TargetListener};
use crate::sockaddr::SockAddr;
use crate::sockaddr::{canonical, loopback_if_wildcard};
use crate::socket_table::{self, Protocol, TCP_LISTEN};
use crate::sys::socket as sys;

/// How often a subscription's listener is looked for.
const WATCH: Duration = Duration::from_secs(1);
/// How often, and how far apart, a subscription replaced by a wider one is tried again
/// while the agent still holds the old one (about a second in all).
const REPLACE_TRIES: u32 = 50;
const REPLACE_PAUSE: Duration = Duration::from_millis(20);
/// How long after a stale subscription was ended a new one of its port may still meet it.
const RELEASED_GRACE: Duration = Duration::from_secs(2);
/// How long a delivered connection's client address is remembered for the app's accept.
const PEER_GRACE: Duration = Duration::from_secs(60);

/// What a delivered connection is, for the app's accept and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// The remote client.
    pub client: SocketAddr,
    /// The target's address and port the client connected to.
    pub server: SocketAddr,
    /// Stolen, mirrored, or one HTTP request.
    pub kind: IncomingKind,
}

/// Where a subscribed port's connections go: the app's listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppListener {
    /// Its address as bound (a wildcard address is reached through loopback).
    pub bound: SocketAddr,
    /// An IPv6 listener that takes IPv6 clients only (`IPV6_V6ONLY`).
    pub v6_only: bool,
}

impl AppListener {
    /// The clients this listener can take.
    pub fn families(&self) -> Families {
        match self.bound {
            SocketAddr::V4(_) => Families::IPV4,
            SocketAddr::V6(_) if self.v6_only => Families::IPV6,
            SocketAddr::V6(_) => Families::BOTH,
        }
    }

    /// Whether the kernel could give this listener a connection from `client`: an IPv4
    /// listener never sees an IPv6 client, an IPv6-only listener never an IPv4 one (an IPv6
    /// listener sees IPv4 clients v4-mapped).
    pub fn takes(&self, client: SocketAddr) -> bool {
        let client_v4 = canonical(client.ip()).is_ipv4();
        match self.bound {
            SocketAddr::V4(_) => client_v4,
            SocketAddr::V6(_) => !(self.v6_only && client_v4),
        }
    }
}

/// A subscribed port: the app's listeners on it (an IPv4 one and an IPv6-only one, as
/// nginx's `listen 80; listen [::]:80;` makes), and the families they take together,
/// which the subscription follows.
struct SubscribedPort {
    listeners: Vec<AppListener>,
    families: watch::Sender<Families>,
    /// Listens waiting for the subscription to be in place (see [`Incoming::on_listen`]).
    waiting: Vec<oneshot::Sender<()>>,
    /// Which subscription of the port this is (a stale one is replaced while its task ends).
    serial: u64,
    /// Tells its task to end now.
    end: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct State {
    /// Remote port → where its connections go (the app's listeners).
    subscribed: HashMap<u16, SubscribedPort>,
    /// Listener identity (socket inode) → remote port.
    listeners: HashMap<u64, u16>,
    /// sctrace's end of a delivered connection (as the app's listener sees it) → client.
    peers: HashMap<SocketAddr, Delivered>,
    /// Placeholder connection address → the client's own socket (a stolen connection the
    /// local agent offered): the app's accept of the placeholder installs this instead.
    direct: HashMap<SocketAddr, OwnedFd>,
    /// Ports the app asked to bind that `listen_ports` moved: local port → asked port.
    moved: HashMap<u16, u16>,
    /// Blocking accepts of the app parked in sctrace, oldest first.
    waiting: Vec<Arc<WaitingAccept>>,
    /// The last [`SubscribedPort::serial`] given.
    serial: u64,
    /// Target ports whose stale subscription was just ended (see
    /// [`Incoming::release_stale`]): the agent may not have let go of it yet.
    released: HashMap<u16, std::time::Instant>,
}

/// What the task keeping a port's subscription needs of its entry: the families its
/// listeners take, its serial, the signal to end, and whether it replaces a subscription
/// just ended.
type Keeping = (
    watch::Receiver<Families>,
    u64,
    Arc<tokio::sync::Notify>,
    bool,
);

impl State {
    /// A new port subscription's entry, registered for the app's listener `id` on `port`.
    fn subscribe(
        &mut self,
        id: u64,
        port: u16,
        app: AppListener,
        waiting: Vec<oneshot::Sender<()>>,
    ) -> Keeping {
        self.listeners.insert(id, port);
        self.serial += 1;
        let end = Arc::new(tokio::sync::Notify::new());
        let (families, watched) = watch::channel(app.families());
        self.subscribed.insert(
            port,
            SubscribedPort {
                listeners: vec![app],
                families,
                waiting,
                serial: self.serial,
                end: Arc::clone(&end),
            },
        );
        let replacing = self
            .released
            .remove(&port)
            .is_some_and(|at| at.elapsed() < RELEASED_GRACE);
        (watched, self.serial, end, replacing)
    }
}

/// A blocking accept the app made on a subscribed listener, parked in sctrace until a
/// connection comes. A connection the local agent offers answers it at once, on the thread
/// that received the offer: no placeholder connection, no runtime worker woken by its
/// arrival, one wake-up (the app's) instead of three.
pub struct WaitingAccept {
    /// The listener's address as bound.
    bound: SocketAddr,
    /// Set by whoever answers the call: an offer, or the parked accepts' task
    /// (`execute::parked`).
    claimed: AtomicBool,
    /// Installs the client's socket as the call's result; gives it back when it was not
    /// installed (the call went meanwhile).
    answer: Box<dyn Fn(OwnedFd, Delivered) -> Result<(), OwnedFd> + Send + Sync>,
}

impl WaitingAccept {
    /// An accept on the listener bound to `bound`, answered by `answer`.
    pub fn new(
        bound: SocketAddr,
        answer: Box<dyn Fn(OwnedFd, Delivered) -> Result<(), OwnedFd> + Send + Sync>,
    ) -> Arc<Self> {
        Arc::new(Self {
            bound,
            claimed: AtomicBool::new(false),
            answer,
        })
    }

    /// Takes the right to answer the call; false when someone else has it.
    pub fn claim(&self) -> bool {
        !self.claimed.swap(true, Ordering::AcqRel)
    }

    /// Gives the right back (the waiting work found nothing to accept after all).
    pub fn release(&self) {
        self.claimed.store(false, Ordering::Release);
    }
}

/// Incoming traffic of a relaying session.
pub struct Incoming {
    config: IncomingConfig,
    agent: SessionHandle,
    state: Mutex<State>,
    /// The app's listeners in the target (see `target_listeners`).
    pub placed: Arc<Placed>,
}

/// A listener of the app being put in the target, then kept there, by its subscription's
/// task ([`Incoming::keep_subscribed`]).
struct Placing {
    listener: TargetListener,
    /// The target's port stolen.
    port: u16,
    /// The app's `listen`, told whether its socket is replaced (once).
    told: Option<oneshot::Sender<bool>>,
    /// Once in place: serving the local clients of the app's port.
    serving: Option<tokio::task::JoinHandle<()>>,
    placed: Arc<Placed>,
}

impl Placing {
    /// The subscription is in place: tells the app's `listen` to install the listener.
    /// False when the listen no longer waits (its socket stays on this machine).
    fn in_place(&mut self) -> bool {
        let waited = self.told.take().is_none_or(|told| told.send(true).is_ok());
        if waited && self.serving.is_none() {
            self.placed.insert(&self.listener, self.port);
            self.serving = target_listeners::serve_local_clients(&self.listener);
        }
        waited
    }

    /// Whether the app still has the listener (blocking: reads /proc).
    async fn app_has(&self) -> bool {
        let (inode, pid, fd) = (self.listener.inode, self.listener.pid, self.listener.fd);
        tokio::task::spawn_blocking(move || target_listeners::app_has(inode, pid, fd))
            .await
            .unwrap_or(false)
    }
}

impl Drop for Placing {
    fn drop(&mut self) {
        if let Some(told) = self.told.take() {
            let _ = told.send(false);
        }
        if let Some(serving) = self.serving.take() {
            serving.abort();
            self.placed.remove(self.listener.port);
        }
    }
}

impl Incoming {
    /// Incoming traffic as `config` says, through `agent`.
    pub fn new(config: IncomingConfig, agent: SessionHandle) -> Arc<Incoming> {
        Arc::new(Incoming {
            config,
            agent,
            state: Mutex::default(),
            placed: Arc::default(),
        })
    }

    /// Whether ports are mirrored or stolen at all.
    pub fn enabled(&self) -> bool {
        self.config.mode != Mode::Off
    }

    /// The local port to really bind when the app binds `port`, when `listen_ports` moves
    /// it.
    pub fn listen_port(&self, port: u16) -> Option<u16> {
        if !self.enabled() {
            return None;
        }
        self.config
            .listen_ports
            .iter()
            .find(|(asked, local)| *asked == port && *local != port)
            .map(|&(_, local)| local)
    }

    /// Remembers that the app's bind of port `asked` really bound `local` (`listen_ports`),
    /// so that a listener on `local` subscribes the target's port `asked`.
    pub fn note_moved(&self, local: u16, asked: u16) {
        if let Ok(mut st) = self.state.lock() {
            st.moved.insert(local, asked);
        }
    }

    /// The target's port for a listener bound to `bound`, if it is to be subscribed.
    fn remote_port(&self, bound: SocketAddr) -> Option<u16> {
        let asked = self
            .state
            .lock()
            .ok()
            .and_then(|st| st.moved.get(&bound.port()).copied());
        target_port(&self.config, bound, asked)
    }

    /// Whether the app's listener bound to `bound` may live in the target: its port's
    /// clients are stolen whole (no HTTP filter), and no other listener of the app takes
    /// them yet.
    pub fn wants_in_target(&self, bound: SocketAddr) -> bool {
        if self.config.mode != Mode::Steal {
            return false;
        }
        let Some(port) = self.remote_port(bound) else {
            return false;
        };
        http_filter(&self.config.http_filter, port).is_none()
            && self
                .state
                .lock()
                .is_ok_and(|st| !st.subscribed.contains_key(&port))
    }

    /// The app listens with the socket `id`, whose port's clients go to `listener` in the
    /// target instead (see `target_listeners`): steals the port with the agent's redirect
    /// pointing there. The receiver tells whether the subscription is in place that way
    /// (the caller then installs the listener in the app); false (or nothing) when the
    /// agent would not have it — the port is then subscribed the usual way, and the app
    /// keeps its socket. `Err` gives the listener back when the port is subscribed already.
    pub fn steal_in_target(
        self: &Arc<Self>,
        id: u64,
        app: AppListener,
        listener: TargetListener,
    ) -> Result<oneshot::Receiver<bool>, TargetListener> {
        let Some(port) = self.remote_port(app.bound) else {
            return Err(listener);
        };
        let families = {
            let Ok(mut st) = self.state.lock() else {
                return Err(listener);
            };
            if st.subscribed.contains_key(&port) {
                return Err(listener);
            }
            st.subscribe(id, port, app, Vec::new())
        };
        let (told, placed) = oneshot::channel();
        let placing = Placing {
            listener,
            port,
            told: Some(told),
            serving: None,
            placed: Arc::clone(&self.placed),
        };
        self.keep_in_task(
            port,
            IncomingMode::Steal,
            None,
            app.bound,
            families,
            Some(placing),
        );
        Ok(placed)
    }

    /// Lets go of this machine's `port` where sctrace holds it for a listener of the app in
    /// the target that the app no longer has (closed, or its process ended) but whose
    /// subscription has not noticed yet: the port's subscription ends now, and sctrace's
    /// listener there stops listening (a program binding the port again with SO_REUSEADDR,
    /// as servers do, gets it at once; otherwise once the listener is closed, moments
    /// later). True when something was let go. Reads /proc: blocking.
    pub fn release_stale(&self, port: u16) -> bool {
        let stale = self.placed.release_stale(port);
        for target_port in &stale {
            let ended = self.state.lock().ok().and_then(|mut st| {
                st.released.insert(*target_port, std::time::Instant::now());
                let ended = st.subscribed.remove(target_port)?;
                st.listeners.retain(|_, p| p != target_port);
                Some(ended)
            });
            if let Some(ended) = ended {
                ended.end.notify_one();
            }
        }
        !stale.is_empty()
    }

    /// Runs [`Incoming::keep_subscribed`] for `port` on a task of its own, and forgets the
    /// port when it ends.
    fn keep_in_task(
        self: &Arc<Self>,
        port: u16,
        mode: IncomingMode,
        filter: Option<HttpFilter>,
        bound: SocketAddr,
        (families, serial, end, replacing): Keeping,
        placing: Option<Placing>,
    ) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let keep =
                me.keep_subscribed(port, mode, filter, bound, (families, replacing), placing);
            tokio::select! {
                () = keep => {}
                () = end.notified() => {}
            }
            if let Ok(mut st) = me.state.lock() {
                // Unless a newer subscription of the port replaced this one.
                if st.subscribed.get(&port).is_some_and(|s| s.serial == serial) {
                    st.subscribed.remove(&port);
                    st.listeners.retain(|_, p| *p != port);
                }
            }
        });
    }

    /// The app listens with the socket `id`: subscribe its port in the target (or take
    /// more clients on a port already subscribed for another of the app's listeners).
    ///
    /// Returns what the app's `listen` waits for before it returns: the subscription in
    /// place (or given up), so that, as in the target, a client connecting once the app
    /// has listened reaches it. `None` when the port is not subscribed.
    pub fn on_listen(
        self: &Arc<Self>,
        id: u64,
        listener: AppListener,
    ) -> Option<oneshot::Receiver<()>> {
        let bound = listener.bound;
        let port = self.remote_port(bound)?;
        let mode = match self.config.mode {
            Mode::Steal => IncomingMode::Steal,
            _ => IncomingMode::Mirror,
        };
        let filter = match mode {
            IncomingMode::Steal => http_filter(&self.config.http_filter, port),
            IncomingMode::Mirror => None,
        };
        let (ready, in_place) = oneshot::channel();
        let families = {
            let mut st = self.state.lock().ok()?;
            st.listeners.insert(id, port);
            if let Some(subscribed) = st.subscribed.get_mut(&port) {
                subscribed.listeners.push(listener);
                let wider = subscribed.families.borrow().union(listener.families());
                let widened = subscribed.families.send_if_modified(|families| {
                    let changed = *families != wider;
                    *families = wider;
                    changed
                });
                // Unchanged, the subscription in place already takes this listener's clients.
                if widened {
                    subscribed.waiting.push(ready);
                    return Some(in_place);
                }
                return None;
            }
            st.subscribe(id, port, listener, vec![ready])
        };
        self.keep_in_task(port, mode, filter, bound, families, None);
        Some(in_place)
    }

    /// Subscribes `port` (to `listeners` in the target, if given). Right after dropping
    /// its subscription (`replacing`, to take more families), the agent may not have let go
    /// of the old steal yet, and refuses a new one until it has — so a refusal for that
    /// reason is retried for a moment.
    async fn subscribe_once(
        &self,
        port: u16,
        mode: IncomingMode,
        families: Families,
        filter: Option<HttpFilter>,
        listeners: Option<ListenerPorts>,
        replacing: bool,
    ) -> Result<sctrace_protocol::Subscription, SubscribeError> {
        let mut tries = 0;
        loop {
            let subscribed = match listeners {
                Some(listeners) => {
                    self.agent
                        .steal_to_listeners(port, families, listeners)
                        .await
                }
                None => {
                    self.agent
                        .subscribe_families(port, mode, families, filter.clone())
                        .await
                }
            };
            match subscribed {
                Err(SubscribeError::Refused {
                    kind: SubscribeFailureKind::PortInUse,
                    ..
                }) if replacing && tries < REPLACE_TRIES => {
                    tries += 1;
                    tokio::time::sleep(REPLACE_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    /// Tells the listens waiting on `port` that its subscription is in place.
    fn in_place(&self, port: u16) {
        let waiting = self
            .state
            .lock()
            .ok()
            .and_then(|mut st| {
                st.subscribed
                    .get_mut(&port)
                    .map(|s| std::mem::take(&mut s.waiting))
            })
            .unwrap_or_default();
        for listen in waiting {
            let _ = listen.send(());
        }
    }

    /// Holds the subscription of `port` while the app listens on `bound`, for the families
    /// its listeners take; subscribes again when they take more, or when the agent ends it
    /// (its rules were lost) while the app still listens. With `placing`, the port's
    /// clients go to the app's listener in the target while the app has it. `replacing`:
    /// the port's previous subscription has just ended (the agent may still hold it).
    async fn keep_subscribed(
        &self,
        port: u16,
        mode: IncomingMode,
        filter: Option<HttpFilter>,
        bound: SocketAddr,
        (mut families, mut replacing): (watch::Receiver<Families>, bool),
        mut placing: Option<Placing>,
    ) {
        let to = loopback_if_wildcard(bound);
        loop {
            let asked = *families.borrow_and_update();
            let listeners = placing.as_ref().map(|p| p.listener.ports());
            let subscribed = self
                .subscribe_once(port, mode, asked, filter.clone(), listeners, replacing)
                .await;
            let mut subscription = match subscribed {
                Ok(subscription) => subscription,
                // The session ended (the app exited as it started): nothing to say.
                Err(SubscribeError::SessionClosed(_)) => return,
                Err(err) if placing.is_some() => {
                    tracing::debug!("port {port}: no listener in the target ({err}); the app's listener stays here");
                    placing = None;
                    continue;
                }
                Err(err) => {
                    eprintln!("sctrace: cannot {mode} port {port} of the target: {err}");
                    return;
                }
            };
            if let Some(p) = placing.as_mut() {
                if !p.in_place() {
                    // The app's listen gave up waiting: its listener stays here.
                    placing = None;
                    drop(subscription);
                    replacing = true;
                    continue;
                }
                tracing::info!(
                    "{mode}ing port {port} of the target to the app's listener there (port {})",
                    p.listener.port
                );
            } else {
                tracing::info!("{mode}ing port {port} of the target to {to} ({asked:?})");
            }
            self.in_place(port);
            let again_at_once = loop {
                tokio::select! {
                    end = subscription.ended() => {
                        match end {
                            SubscriptionEnd::Ended { errno } => eprintln!(
                                "sctrace: the agent ended the {mode} of port {port} ({}); subscribing again",
                                crate::errno::Errno(errno)
                            ),
                            // The session is gone: nothing to subscribe with.
                            SubscriptionEnd::SessionClosed(_) => return,
                        }
                        break false;
                    }
                    changed = families.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        // Another listener takes more clients: the same port, wider.
                        drop(subscription);
                        break true;
                    }
                    () = tokio::time::sleep(WATCH) => {
                        if !still_listening(bound, placing.as_ref()).await {
                            drop(subscription);
                            tracing::info!("the app stopped listening on {bound}: port {port} of the target is no longer {mode}ed");
                            return;
                        }
                    }
                }
            };
            replacing = again_at_once;
            if !again_at_once {
                tokio::time::sleep(WATCH).await;
                if !still_listening(bound, placing.as_ref()).await {
                    return;
                }
            }
        }
    }

    /// Whether `id` is a listening socket whose port is subscribed.
    pub fn is_subscribed(&self, id: u64) -> bool {
        self.state
            .lock()
            .map(|st| st.listeners.contains_key(&id))
            .unwrap_or(false)
    }

    /// The remote client behind a connection the app accepted from `peer`, when sctrace
    /// delivered it.
    pub fn delivered(&self, peer: SocketAddr) -> Option<Delivered> {
        self.state
            .lock()
            .ok()
            .and_then(|st| st.peers.get(&peer).copied())
    }

    /// Serves the agent's incoming connections until the session ends.
    pub async fn serve(self: Arc<Self>, mut requests: Requests) {
        while let Some(request) = requests.next().await {
            if let Request::Incoming(incoming) = request {
                tokio::spawn(Arc::clone(&self).deliver(incoming));
            }
            // Other requests are dropped, which refuses them.
        }
    }

    /// Connects one incoming connection to the app's listener and relays it.
    async fn deliver(self: Arc<Self>, request: IncomingRequest) {
        // The app's listener that can take this client; a client none of them could ever see
        // (IPv6 on an IPv4 listener: a subscription made before a wider one) is left to the
        // target.
        let Some(listener) = self.listener_for(request.port(), request.client()) else {
            request.reject(libc::ECONNREFUSED);
            return;
        };
        let to = loopback_if_wildcard(listener.bound);
        let delivered = Delivered {
            client: request.client(),
            server: request.server(),
            kind: request.kind(),
        };
        let (ours, mut app) = match self.place(listener, delivered, None, PLACE_WAIT).await {
            Ok(placed) => placed,
            Err(err) => {
                // The app stopped listening: the agent gives the connection to the target.
                tracing::debug!("cannot deliver a connection to {to}: {err}");
                request.reject(err.raw_os_error().unwrap_or(libc::ECONNREFUSED));
                return;
            }
        };
        let _ = app.set_nodelay(true);
        let mut stream = match request.accept(to) {
            Ok(stream) => stream,
            Err(err) => {
                tracing::debug!("incoming connection gone before delivery: {err}");
                drop(self.forget(ours));
                return;
            }
        };
        match delivered.kind {
            IncomingKind::Mirrored => {
                // The app's answers are read and dropped; the client gets the target's.
                let (mut app_rd, mut app_wr) = app.split();
                let copy_in = async {
                    while let Ok(Some(chunk)) = stream.recv_chunk().await {
                        if tokio::io::AsyncWriteExt::write_all(&mut app_wr, &chunk)
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut app_wr).await;
                };
                let drain = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = app_rd.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                };
                tokio::join!(copy_in, drain);
                // Close the copy cleanly (a dropped stream would be reset).
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            }
            _ => {
                sctrace_protocol::relay(&mut stream, &mut app).await;
            }
        }
        let me = Arc::clone(&self);
        tokio::spawn(async move {
            tokio::time::sleep(PEER_GRACE).await;
            drop(me.forget(ours));
        });
    }

    /// Forgets the connection sctrace made to the app's listener from `ours`; the client's
    /// own socket registered with it, if the app did not take it.
    fn forget(&self, ours: SocketAddr) -> Option<OwnedFd> {
        self.state.lock().ok().and_then(|mut st| {
            st.peers.remove(&ours);
            st.direct.remove(&ours)
        })
    }

    /// The client's own socket to install for the app's accept of the placeholder
    /// connection from `peer`, if the connection was offered as it is.
    pub fn take_direct(&self, peer: SocketAddr) -> Option<OwnedFd> {
        self.state.lock().ok()?.direct.remove(&peer)
    }

    /// Parks a blocking accept (see [`WaitingAccept`]) until [`Incoming::unpark`].
    pub fn park(&self, accept: &Arc<WaitingAccept>) {
        if let Ok(mut st) = self.state.lock() {
            st.waiting.push(Arc::clone(accept));
        }
    }

    /// Forgets a parked accept (answered, or its call gone).
    pub fn unpark(&self, accept: &Arc<WaitingAccept>) {
        if let Ok(mut st) = self.state.lock() {
            st.waiting.retain(|w| !Arc::ptr_eq(w, accept));
        }
    }

    /// The oldest accept parked on the listener bound to `bound`, claimed.
    fn claim_parked(&self, bound: SocketAddr) -> Option<Arc<WaitingAccept>> {
        let mut st = self.state.lock().ok()?;
        let at = st
            .waiting
            .iter()
            .position(|w| w.bound == bound && w.claim())?;
        Some(st.waiting.remove(at))
    }

    /// Takes one connection a local agent hands over as it is, on the thread that received
    /// it (no runtime worker's turn first): a blocking accept the app parked on the listener
    /// gets the client's socket at once; otherwise the listener gets a placeholder
    /// connection, started here, whose accept installs the client's socket instead
    /// (`execute::accept`) — what an app waiting in epoll needs. Given back to the agent
    /// (which serves it the usual way) when no listener of the app takes it.
    pub fn take_offer(self: &Arc<Self>, offer: Offer, runtime: &tokio::runtime::Handle) {
        let (client, server, socket, back) = offer.into_parts();
        let delivered = Delivered {
            client,
            server,
            kind: IncomingKind::Stolen,
        };
        // The accepted socket must be of the listener's family, as the kernel makes it (an
        // IPv4 client of a dual-stack listener is an IPv6 socket there): else the usual way.
        let family = sys::domain(socket.as_fd());
        let listener = self.listener_for(server.port(), client).filter(|l| {
            family
                == Ok(if l.bound.is_ipv6() {
                    libc::AF_INET6
                } else {
                    libc::AF_INET
                })
        });
        let Some(listener) = listener else {
            back.give_back(socket);
            return;
        };
        let socket = match self.claim_parked(listener.bound) {
            Some(parked) => match (parked.answer)(socket, delivered) {
                Ok(()) => return,
                // The call went meanwhile: the next accept takes it.
                Err(socket) => socket,
            },
            None => socket,
        };
        let to = loopback_if_wildcard(listener.bound);
        let (ours, placeholder, connected) = match self.start_placing(to, delivered, socket) {
            Ok(started) => started,
            Err((err, socket)) => {
                tracing::debug!("cannot offer a connection to the app's listener {to}: {err}");
                if let Some(socket) = socket {
                    back.give_back(socket);
                }
                return;
            }
        };
        let me = Arc::clone(self);
        runtime.spawn(async move {
            let placeholder = std::net::TcpStream::from(placeholder);
            let app = tokio::net::TcpStream::from_std(placeholder);
            let accepted = match app {
                // A full backlog: the placeholder gets a bounded time to connect.
                Ok(app) if !connected => {
                    let ready = tokio::time::timeout(OFFER_PLACE_WAIT, app.writable()).await;
                    let placed =
                        matches!(ready, Ok(Ok(()))) && matches!(app.take_error(), Ok(None));
                    placed.then_some(app)
                }
                Ok(app) => Some(app),
                Err(_) => None,
            };
            if let Some(mut app) = accepted {
                // The app's accept takes the client's socket and drops the placeholder, which
                // then ends here.
                let mut byte = [0u8; 1];
                let _ = tokio::time::timeout(OFFER_ACCEPT_WAIT, app.read(&mut byte)).await;
            }
            // Not taken (not placed, or never accepted): the agent serves it.
            if let Some(socket) = me.take_direct(ours) {
                back.give_back(socket);
            }
            tokio::time::sleep(PEER_GRACE).await;
            drop(me.forget(ours));
        });
    }

    /// Starts a placeholder connection to the app's listener at `to`, registered as
    /// `delivered` with the client's socket `direct` before it connects (the app may accept
    /// it before connect() returns here): its address, the socket, and whether it is
    /// connected already (else the app's backlog is full). On failure, `direct` comes back.
    fn start_placing(
        &self,
        to: SocketAddr,
        delivered: Delivered,
        direct: OwnedFd,
    ) -> Result<(SocketAddr, OwnedFd, bool), (Errno, Option<OwnedFd>)> {
        let started = (|| {
            let placeholder = sys::new_tcp_socket(to.is_ipv6())?;
            let fd = placeholder.as_fd();
            sys::set_file_flags(fd, libc::O_RDWR | libc::O_NONBLOCK)?;
            let from = SockAddr::encode_inet(SocketAddr::new(to.ip(), 0));
            sys::bind(fd, Some(&from), from.len() as i32)?;
            let ours = sys::local_addr(fd)
                .ok()
                .and_then(|bytes| SockAddr::parse(&bytes)?.inet())
                .ok_or(Errno(libc::EADDRNOTAVAIL))?;
            Ok((placeholder, ours))
        })();
        let (placeholder, ours) = match started {
            Ok(started) => started,
            Err(err) => return Err((err, Some(direct))),
        };
        match self.state.lock() {
            Ok(mut st) => {
                st.peers.insert(ours, delivered);
                st.direct.insert(ours, direct);
            }
            Err(_) => return Err((Errno(libc::EIO), Some(direct))),
        }
        let fd = placeholder.as_fd();
        let to = SockAddr::encode_inet(to);
        let connect = || sys::connect(fd, Some(&to), to.len() as i32);
        // On loopback the handshake is over when the first call returns EINPROGRESS; the
        // second says so.
        let connected = match connect() {
            Ok(()) => Ok(true),
            Err(Errno(libc::EINPROGRESS)) => match connect() {
                Ok(()) | Err(Errno(libc::EISCONN)) => Ok(true),
                Err(Errno(libc::EALREADY | libc::EINPROGRESS)) => Ok(false),
                Err(err) => Err(err),
            },
            Err(err) => Err(err),
        };
        match connected {
            Ok(connected) => Ok((ours, placeholder, connected)),
            // (Nothing accepted a connection that failed: the client's socket is still here.)
            Err(err) => Err((err, self.forget(ours))),
        }
    }

    /// The app's listener for connections from `client` to the target's `port`.
    fn listener_for(&self, port: u16, client: SocketAddr) -> Option<AppListener> {
        self.state.lock().ok().and_then(|st| {
            st.subscribed
                .get(&port)?
                .listeners
                .iter()
                .find(|l| l.takes(client))
                .copied()
        })
    }

    /// Connects a placeholder connection to the app's `listener`, registered as `delivered`
    /// (with the client's own socket to install instead, if `direct`) before it connects:
    /// the app may accept it before connect() returns here. Given up after `wait`.
    async fn place(
        &self,
        listener: AppListener,
        delivered: Delivered,
        direct: Option<OwnedFd>,
        wait: Duration,
    ) -> std::io::Result<(SocketAddr, tokio::net::TcpStream)> {
        let to = loopback_if_wildcard(listener.bound);
        let socket = if to.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(to.ip(), 0))?;
        let ours = socket.local_addr()?;
        if let Ok(mut st) = self.state.lock() {
            st.peers.insert(ours, delivered);
            if let Some(direct) = direct {
                st.direct.insert(ours, direct);
            }
        }
        let connected = tokio::time::timeout(wait, socket.connect(to))
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
        match connected {
            Ok(app) => Ok((ours, app)),
            Err(err) => {
                drop(self.forget(ours));
                Err(err)
            }
        }
    }
}

/// How long an offered connection's placeholder waits for the app's accept.
const OFFER_ACCEPT_WAIT: Duration = Duration::from_secs(60);
/// How long a delivered connection may take to connect to the app's listener.
const PLACE_WAIT: Duration = Duration::from_secs(30);
/// How long an offered connection's placeholder may take to connect to the app's listener
/// (a full backlog) before the offer is declined.
const OFFER_PLACE_WAIT: Duration = Duration::from_secs(5);

/// The target's port to subscribe for a listener bound to `bound` (`asked`: the port the
/// app asked for when `listen_ports` moved it), or `None` when the config leaves it local:
/// mode off, `ignore_localhost` for a loopback listener, `ignore_ports`, or not in `ports`.
/// `port_mapping` turns the app's port into the target's.
fn target_port(config: &IncomingConfig, bound: SocketAddr, asked: Option<u16>) -> Option<u16> {
    if config.mode == Mode::Off || (config.ignore_localhost && bound.ip().is_loopback()) {
        return None;
    }
    let asked = asked.unwrap_or(bound.port());
    if config.ignore_ports.contains(&asked)
        || config.ports.as_ref().is_some_and(|p| !p.contains(&asked))
    {
        return None;
    }
    Some(
        config
            .port_mapping
            .iter()
            .find(|(local, _)| *local == asked)
            .map_or(asked, |&(_, remote)| remote),
    )
}

/// The protocol's filter for `port`, from the config's (mirrord's) form.
fn http_filter(config: &HttpFilterConfig, port: u16) -> Option<HttpFilter> {
    if !config.is_set()
        || config
            .ports
            .as_ref()
            .is_some_and(|ports| !ports.contains(&port))
    {
        return None;
    }
    let condition = |c: &HttpCondition| match c {
        HttpCondition::Header(p) => HttpFilter::Header(p.clone()),
        HttpCondition::Path(p) => HttpFilter::Path(p.clone()),
        HttpCondition::Method(m) => HttpFilter::Method(m.clone()),
    };
    if let Some(p) = &config.header_filter {
        return Some(HttpFilter::Header(p.clone()));
    }
    if let Some(p) = &config.path_filter {
        return Some(HttpFilter::Path(p.clone()));
    }
    if let Some(m) = &config.method_filter {
        return Some(HttpFilter::Method(m.clone()));
    }
    if let Some(all) = &config.all_of {
        return Some(HttpFilter::AllOf(all.iter().map(condition).collect()));
    }
    config
        .any_of
        .as_ref()
        .map(|any| HttpFilter::AnyOf(any.iter().map(condition).collect()))
}

/// Whether the app still listens on `bound`: with its listener in the target, whether it
/// still has that socket; else whether a socket of this namespace listens on the port (the
/// app's listener here).
async fn still_listening(bound: SocketAddr, placing: Option<&Placing>) -> bool {
    match placing {
        Some(placing) => placing.app_has().await,
        None => listening(bound.port()),
    }
}

/// Whether some socket of this network namespace listens on TCP `port`.
fn listening(port: u16) -> bool {
    socket_table::sockets(Protocol::Tcp)
        .iter()
        .any(|e| e.state == TCP_LISTEN && e.local_port == port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_decides_which_ports_are_subscribed() {
        let any: SocketAddr = "0.0.0.0:8000".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let mirror = IncomingConfig::with_mode(Mode::Mirror);
        assert_eq!(target_port(&mirror, any, None), Some(8000));
        assert_eq!(
            target_port(&mirror, lo, None),
            Some(8000),
            "loopback too, by default"
        );
        assert_eq!(
            target_port(&IncomingConfig::with_mode(Mode::Off), any, None),
            None
        );

        let mut c = IncomingConfig::with_mode(Mode::Steal);
        c.ignore_localhost = true;
        assert_eq!(target_port(&c, lo, None), None);
        assert_eq!(target_port(&c, any, None), Some(8000));

        let mut c = IncomingConfig::with_mode(Mode::Steal);
        c.ignore_ports = [9000].into_iter().collect();
        assert_eq!(target_port(&c, "0.0.0.0:9000".parse().unwrap(), None), None);
        assert_eq!(target_port(&c, any, None), Some(8000));

        let mut c = IncomingConfig::with_mode(Mode::Steal);
        c.ports = Some([80].into_iter().collect());
        assert_eq!(target_port(&c, any, None), None);
        assert_eq!(
            target_port(&c, "0.0.0.0:80".parse().unwrap(), None),
            Some(80)
        );

        let mut c = IncomingConfig::with_mode(Mode::Steal);
        c.port_mapping = vec![(8000, 80)];
        assert_eq!(
            target_port(&c, any, None),
            Some(80),
            "the app's 8000 is the target's 80"
        );

        // listen_ports moved the app's bind of 80 to local 4480: the target's port is 80.
        let c = IncomingConfig::with_mode(Mode::Steal);
        assert_eq!(
            target_port(&c, "0.0.0.0:4480".parse().unwrap(), Some(80)),
            Some(80)
        );
    }

    #[test]
    fn listeners_take_the_clients_the_kernel_would_give_them() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let (v4, mapped, v6) = (
            at("198.18.0.9:5000"),
            at("[::ffff:198.18.0.9]:5000"),
            at("[2001:2::9]:5000"),
        );
        let v4_listener = AppListener {
            bound: at("0.0.0.0:80"),
            v6_only: false,
        };
        assert!(v4_listener.takes(v4) && v4_listener.takes(mapped));
        assert!(!v4_listener.takes(v6));
        let dual = AppListener {
            bound: at("[::]:80"),
            v6_only: false,
        };
        assert!(dual.takes(v4) && dual.takes(mapped) && dual.takes(v6));
        let v6_only = AppListener {
            bound: at("[::]:80"),
            v6_only: true,
        };
        assert!(!v6_only.takes(v4) && !v6_only.takes(mapped) && v6_only.takes(v6));
    }

    #[test]
    fn mirrord_filters_become_protocol_filters() {
        let config = HttpFilterConfig {
            header_filter: Some("^x-user: alice$".into()),
            ..Default::default()
        };
        assert_eq!(
            http_filter(&config, 80),
            Some(HttpFilter::Header("^x-user: alice$".into()))
        );
        let config = HttpFilterConfig {
            any_of: Some(vec![
                HttpCondition::Path("^/api".into()),
                HttpCondition::Method("POST".into()),
            ]),
            ports: Some(vec![8080]),
            ..Default::default()
        };
        assert_eq!(http_filter(&config, 80), None, "not a filtered port");
        assert_eq!(
            http_filter(&config, 8080),
            Some(HttpFilter::AnyOf(vec![
                HttpFilter::Path("^/api".into()),
                HttpFilter::Method("POST".into())
            ]))
        );
        assert_eq!(http_filter(&HttpFilterConfig::default(), 80), None);
    }
}
