//! Incoming traffic: sctrace's port subscriptions, served by redirecting the target's new
//! connections to the agent (nftables rules in the target's namespace) and handing them to
//! the subscribed sessions.
//!
//! ```text
//!  client ──► target:80 ──nft redirect──► interceptor (agent's listener in the target netns)
//!                                            │ original destination (conntrack)
//!                                            ▼ registry: who subscribed port 80?
//!   no stealer ─► proxy to target:80 (mirrors get a copy of the client's bytes)
//!   stealer    ─► the whole connection to sctrace (IncomingTcp, Stolen)
//!   stealer with an HTTP filter ─► per request: sctrace, or target:80
//! ```
//!
//! Subscribing creates the port's rules (first subscriber), unsubscribing or the session's
//! end deletes them (last subscriber). Connections already handed over are not touched by
//! either. If the rules vanish underneath (their nft process died), the port's
//! subscriptions are ended with `EIO` so sctrace knows.

mod http;
mod intercept;
mod mirror;
mod nft;
mod proxy;
mod registry;
mod steal;

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sctrace_protocol::{
    Families, IncomingMode, SessionHandle, StreamId, SubscribeFailureKind, SubscribeRequest,
    SubscriptionEnd,
};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::errno::EIO;
use crate::netns::NetnsSockets;
use http::filter::CompiledFilter;
use intercept::Interceptor;
use mirror::Tee;
use nft::{Nft, NftError};
use registry::{Registry, SubscriberKey};

/// A subscription, as connections reach it.
pub struct Subscriber {
    /// The session that subscribed.
    pub session: SessionHandle,
    /// The subscription's id in that session.
    pub subscription: StreamId,
    /// With a filtered steal: which requests to take.
    pub filter: Option<CompiledFilter>,
    phase: watch::Sender<Phase>,
}

/// Where a subscriber is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Registered, its redirect rules going in, not yet confirmed to sctrace: a connection
    /// redirected meanwhile waits for it.
    Starting,
    /// Confirmed: connections go to it.
    Alive,
    /// Ended (or never confirmed).
    Ended,
}

/// How long a connection redirected while its subscriber starts waits for it.
const START_WAIT: Duration = Duration::from_secs(2);

impl Subscriber {
    /// False once the subscription has ended: its in-flight connections go on, but new
    /// requests on them go to the target's server.
    pub fn is_alive(&self) -> bool {
        *self.phase.borrow() == Phase::Alive
    }

    /// Waits (bounded) while the subscriber is starting; then whether it is alive.
    async fn started(&self) -> bool {
        let mut phase = self.phase.subscribe();
        let settled = tokio::time::timeout(START_WAIT, phase.wait_for(|p| *p != Phase::Starting))
            .await
            .map(|seen| seen.map(|p| *p));
        matches!(settled, Ok(Ok(Phase::Alive)))
    }

    fn set(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }
}

/// A session, as its subscriptions are known.
#[derive(Clone)]
pub struct SessionInfo {
    /// Its handle (to hand connections over).
    pub handle: SessionHandle,
    /// Its number in this agent.
    pub number: u64,
    /// Where it came from, for messages.
    pub peer: String,
}

/// The agent's incoming-traffic state, shared by every session.
pub struct Incoming {
    sockets: NetnsSockets,
    /// With a local sctrace: where stolen connections are offered as they are.
    handoffs: Option<Arc<crate::handoff::Handoffs>>,
    nft: Nft,
    registry: Mutex<Registry<Subscriber>>,
    /// Serialises subscription changes (rules follow the registry) and holds the listeners
    /// once started.
    changes: tokio::sync::Mutex<Option<Interceptor>>,
}

impl Incoming {
    /// Incoming traffic in the namespace at `netns` (sockets from `sockets`), with rules
    /// kept by the nftables program `nft`; with a local sctrace, stolen connections go to it
    /// through `handoffs`, and those it gives back are served here.
    pub fn new(
        sockets: NetnsSockets,
        netns: PathBuf,
        nft: PathBuf,
        handoffs: Option<Arc<crate::handoff::Handoffs>>,
    ) -> Arc<Incoming> {
        let incoming = Arc::new(Incoming {
            sockets,
            handoffs,
            nft: Nft::new(nft, netns),
            registry: Mutex::new(Registry::default()),
            changes: tokio::sync::Mutex::new(None),
        });
        if let Some(handoffs) = &incoming.handoffs {
            // (The handoff thread is outside the runtime: the connection is served on it.)
            let weak = Arc::downgrade(&incoming);
            let runtime = tokio::runtime::Handle::current();
            handoffs.on_given_back(Box::new(move |socket, client, server| {
                let Some(incoming) = weak.upgrade() else {
                    return;
                };
                let _entered = runtime.enter();
                let conn = std::net::TcpStream::from(socket);
                let conn = conn
                    .set_nonblocking(true)
                    .and_then(|()| TcpStream::from_std(conn));
                match conn {
                    Ok(conn) => {
                        tracing::debug!(%client, %server, "sctrace gave a stolen connection back");
                        let _ = conn.set_nodelay(true);
                        runtime.spawn(incoming.handle(conn, client, server, false));
                    }
                    Err(e) => {
                        tracing::debug!(%client, %server, error = %e, "a stolen connection given back is lost")
                    }
                }
            }));
        }
        incoming
    }

    fn registry(&self) -> MutexGuard<'_, Registry<Subscriber>> {
        // Nothing panics while holding the lock; should it ever, the map is still usable.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves a subscription request of `session` for as long as the subscription lasts.
    pub fn subscribe(self: &Arc<Self>, request: SubscribeRequest, session: SessionInfo) {
        tokio::spawn(self.clone().serve_subscription(request, session));
    }

    async fn serve_subscription(self: Arc<Self>, request: SubscribeRequest, session: SessionInfo) {
        let port = request.port();
        let mode = request.mode();
        let key = SubscriberKey {
            session: session.number,
            subscription: request.id(),
        };
        let who = format!("session {} from {}", session.number, session.peer);
        let filter = match (mode, request.filter()) {
            (_, None) => None,
            (IncomingMode::Mirror, Some(_)) => {
                request.reject(
                    SubscribeFailureKind::BadFilter,
                    "an HTTP filter applies to steal mode only (mirror copies whole connections)",
                );
                return;
            }
            (IncomingMode::Steal, Some(f)) => match CompiledFilter::compile(f) {
                Ok(f) => Some(f),
                Err(e) => {
                    let message = format!("{e}: {}", e.source);
                    request.reject(SubscribeFailureKind::BadFilter, &message);
                    return;
                }
            },
        };
        // A local sctrace's own listeners in the target, for a whole-connection steal: its
        // app accepts those clients itself. (A remote sctrace can have no socket here.)
        let listeners = request.listeners();
        if listeners.is_some()
            && (mode != IncomingMode::Steal || filter.is_some() || self.handoffs.is_none())
        {
            request.reject(
                SubscribeFailureKind::Unsupported,
                "listener ports are taken only for a whole-connection steal, from a sctrace on this machine",
            );
            return;
        }
        let listeners = listeners.unwrap_or_default();
        let mut changes = self.changes.lock().await;
        if let Err(conflict) = self.registry().check(port, mode) {
            tracing::info!(port, %mode, %who, "refused: {conflict}");
            request.reject(SubscribeFailureKind::PortInUse, &conflict.to_string());
            return;
        }
        let interceptor = match *changes {
            Some(i) => i,
            None => match Interceptor::start(&self).await {
                Ok(i) => *changes.insert(i),
                Err(e) => {
                    tracing::warn!(port, error = %e, "cannot intercept connections");
                    request.reject(SubscribeFailureKind::Failed, &e.to_string());
                    return;
                }
            },
        };
        // A steal takes only the clients the app's listener can take; the others keep meeting
        // the target's own server, untouched. (A mirror copies every connection: a copy
        // sctrace can't deliver is declined, and the client is served by the target anyway.)
        let families = match mode {
            IncomingMode::Steal => request.families(),
            IncomingMode::Mirror => Families::BOTH,
        };
        // A dual-stack listener of the app (it takes both families) accepts IPv4 clients as
        // IPv6 sockets, v4-mapped: handed to a local sctrace, they must be such sockets too,
        // so they come to the dual-stack interception listener. (An IPv4 listener and an
        // IPv6-only one on the same port also take both: their IPv4 clients then go the
        // usual way, given back by sctrace.)
        let as_mapped = families == Families::BOTH
            && mode == IncomingMode::Steal
            && filter.is_none()
            && self.handoffs.is_some();
        let v4 = match interceptor.dual {
            _ if listeners.ipv4.is_some() => listeners.ipv4,
            Some(dual) if as_mapped => Some(dual),
            _ => interceptor.v4,
        }
        .filter(|_| families.ipv4);
        let v6 = listeners.ipv6.or(interceptor.v6).filter(|_| families.ipv6);
        // Registered before its rules go in, so that no connection they redirect finds the
        // port without it; such a connection waits until the subscription is confirmed.
        let subscriber = Arc::new(Subscriber {
            session: session.handle.clone(),
            subscription: request.id(),
            filter,
            phase: watch::channel(Phase::Starting).0,
        });
        if let Err(conflict) =
            self.registry()
                .insert(port, mode, key, who.clone(), subscriber.clone())
        {
            // Not reached: `check` passed under the same `changes` lock.
            tracing::warn!(port, "{conflict}");
            request.reject(SubscribeFailureKind::PortInUse, &conflict.to_string());
            return;
        }
        let generation = match self.nft.ensure(port, v4, v6).await {
            Ok(g) => g,
            Err(e) => {
                let kind = match e {
                    NftError::PortTaken { .. } => SubscribeFailureKind::PortInUse,
                    NftError::Spawn { .. } | NftError::NoOwnerTables { .. } => {
                        SubscribeFailureKind::Unsupported
                    }
                    _ => SubscribeFailureKind::Failed,
                };
                tracing::warn!(port, %mode, %who, error = %e, "cannot redirect the port");
                subscriber.set(Phase::Ended);
                self.registry().remove(port, key);
                request.reject(kind, &e.to_string());
                return;
            }
        };
        let mut subscription = match request.accept() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(port, error = %e, "subscription cancelled before it was in place");
                subscriber.set(Phase::Ended);
                if self.registry().remove(port, key) {
                    self.remove_rules(port).await;
                }
                return;
            }
        };
        subscriber.set(Phase::Alive);
        drop(changes);
        tracing::info!(port, %mode, filtered = subscriber.filter.is_some(), to_listeners = ?listeners, %who, "subscribed");

        let mut lost = self.nft.lost();
        let end = tokio::select! {
            end = subscription.ended() => Some(end),
            _ = lost.wait_for(|dead| *dead >= generation) => None,
        };
        subscriber.set(Phase::Ended);
        match &end {
            Some(SubscriptionEnd::Ended { .. }) => {
                tracing::info!(port, %mode, %who, "unsubscribed")
            }
            Some(SubscriptionEnd::SessionClosed(reason)) => {
                tracing::info!(port, %mode, %who, %reason, "subscription ended with its session")
            }
            None => {
                tracing::warn!(port, %mode, %who, "the redirect rules were lost; ending the subscription");
                subscription.end(EIO);
            }
        }
        let _changes = self.changes.lock().await;
        if self.registry().remove(port, key) {
            self.remove_rules(port).await;
        }
    }

    async fn remove_rules(&self, port: u16) {
        match self.nft.unredirect(port).await {
            Ok(()) => tracing::debug!(port, "redirect rules removed"),
            Err(e) => tracing::warn!(port, error = %e, "cannot remove the redirect rules"),
        }
    }

    /// Hands a redirected connection from `client` to `server` to a local sctrace as it is,
    /// when a whole-connection steal with nobody mirroring takes the port: true when handed
    /// over (the caller's copy closes), false when it goes the usual way ([`Incoming::handle`]).
    /// Done on the accepting task, without a task of its own: no byte of it passes through
    /// the agent.
    pub fn hand_over(&self, conn: &TcpStream, client: SocketAddr, server: SocketAddr) -> bool {
        let Some(handoffs) = &self.handoffs else {
            return false;
        };
        let subscribers = self.registry().subscribers(server.port());
        let takes = matches!(&subscribers.stealer, Some(s) if s.filter.is_none() && s.is_alive());
        if !takes || !subscribers.mirrors.is_empty() {
            return false;
        }
        let handed = handoffs.hand_over(conn.as_fd(), client, server);
        if handed {
            tracing::debug!(%client, %server, "stolen connection handed to sctrace as it is");
        }
        handed
    }

    /// Serves one redirected connection from `client` to `server` (its original
    /// destination); `hand_over`: whether it may still go to a local sctrace as it is (not
    /// one sctrace gave back).
    async fn handle(
        self: Arc<Self>,
        conn: TcpStream,
        client: SocketAddr,
        server: SocketAddr,
        hand_over: bool,
    ) {
        let subscribers = self.registry().subscribers(server.port());
        let mut mirrors = Vec::new();
        for mirror in subscribers.mirrors {
            if mirror.started().await {
                mirrors.push(mirror);
            }
        }
        let stealer = match subscribers.stealer {
            Some(stealer) if stealer.started().await => Some(stealer),
            _ => None,
        };
        // A subscription that was starting when the connection came is in place now.
        if hand_over && stealer.is_some() && self.hand_over(&conn, client, server) {
            return;
        }
        let conn = Tee::new(conn, &mirrors, client, server);
        match stealer {
            None => proxy::pass_through(conn, server, &self.sockets).await,
            Some(stealer) if stealer.filter.is_none() => {
                steal::whole_connection(conn, stealer, client, server, &self.sockets).await
            }
            Some(stealer) => http::serve(conn, stealer, client, server, self.sockets.clone()).await,
        }
    }
}
