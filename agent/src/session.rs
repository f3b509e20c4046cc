//! One sctrace session: the handshake, then each request served in its own task until the
//! session ends or the agent shuts down.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sctrace_protocol::{Config, HandshakeError, Io, Request, Session, Token};
use tokio::sync::watch;

use crate::dns::Resolver;
use crate::environ::EnvSource;
use crate::incoming::SessionInfo;
use crate::listener::HandshakeSlot;
use crate::netns::NetnsSockets;

/// What every session shares.
pub struct Context {
    /// The session token.
    pub token: Token,
    /// Socket factory inside the target namespace.
    pub sockets: NetnsSockets,
    /// The target's resolver.
    pub resolver: Resolver,
    /// The target's environment.
    pub env: EnvSource,
    /// Upper bound of a TCP connect.
    pub connect_timeout: Duration,
    /// Protocol tunables.
    pub protocol: Config,
    /// Becomes true when the agent shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// With `--once`: set by the first session established; later ones are turned away.
    pub once_claimed: Option<AtomicBool>,
    /// Sessions established and not yet ended (for `--idle-timeout`).
    pub connected: AtomicUsize,
    /// Sessions established so far (numbers them in logs and refusals).
    pub sessions: AtomicU64,
    /// Incoming traffic: port subscriptions and the connections they bring.
    pub incoming: Arc<crate::incoming::Incoming>,
    /// With `--handoff-socket`: the relay ends of TCP connections, handed over by sctrace.
    pub handoffs: Option<Arc<crate::handoff::Handoffs>>,
    /// Sessions over plain TCP, which accept data connections.
    pub data: Arc<crate::data::DataSessions>,
}

/// Counts a session as connected while it lives.
struct Connected<'a>(&'a AtomicUsize);

impl<'a> Connected<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Connected(count)
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a connection ended, for the listener's bookkeeping.
pub enum Served {
    /// A session was established and has ended.
    Session,
    /// The handshake failed or was refused.
    NoSession,
}

/// Serves the connection `io` from `peer` (for logs). `handshake_slot` is held until the
/// handshake is over, which bounds the connections that can sit in it. `data_connections`:
/// the session came over plain TCP, so its streams may get data connections.
pub async fn serve<T: Io>(
    io: T,
    peer: String,
    ctx: Arc<Context>,
    handshake_slot: HandshakeSlot,
    data_connections: bool,
) -> Served {
    let handshake = Session::server(io, &ctx.token, ctx.protocol.clone()).await;
    drop(handshake_slot);
    let session = match handshake {
        Ok(session) => session,
        Err(HandshakeError::RefusedPeer { reason, detail }) => {
            tracing::warn!(%peer, %reason, "refused a session: {detail}");
            return Served::NoSession;
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "handshake failed");
            return Served::NoSession;
        }
    };
    let Session {
        handle,
        mut requests,
        task,
    } = session;
    let run = tokio::spawn(task.run());
    if let Some(claimed) = &ctx.once_claimed {
        if claimed.swap(true, Ordering::SeqCst) {
            // Two handshakes raced under --once; only the first session is served.
            handle.shutdown("this agent serves a single session (--once) and is busy");
            let _ = run.await;
            return Served::NoSession;
        }
    }
    let _connected = Connected::new(&ctx.connected);
    let registration = handle
        .data_keys()
        .filter(|_| data_connections)
        .and_then(|keys| crate::data::register(&ctx.data, *keys));
    let attachable = registration.as_ref().map(|r| &r.attachable);
    let info = SessionInfo {
        handle: handle.clone(),
        number: ctx.sessions.fetch_add(1, Ordering::SeqCst) + 1,
        peer: peer.clone(),
    };
    tracing::info!(%peer, session = info.number, version = handle.version(), "session established");
    let mut shutdown = ctx.shutdown.clone();
    loop {
        tokio::select! {
            request = requests.next() => match request {
                Some(request) => dispatch(request, &ctx, &info, attachable),
                None => break,
            },
            changed = shutdown.wait_for(|down| *down) => {
                let _ = changed;
                handle.shutdown("sctrace-agent is shutting down");
                break;
            }
        }
    }
    let reason = match run.await {
        Ok(reason) => reason.to_string(),
        Err(e) => format!("session task failed: {e}"),
    };
    tracing::info!(%peer, %reason, "session ended");
    Served::Session
}

fn dispatch(
    request: Request,
    ctx: &Arc<Context>,
    session: &SessionInfo,
    attachable: Option<&Arc<crate::data::Attachable>>,
) {
    match request {
        Request::Subscribe(r) => {
            tracing::debug!(id = r.id(), port = r.port(), mode = %r.mode(), "subscription requested");
            ctx.incoming.subscribe(r, session.clone());
        }
        Request::ConnectTcp(r) => {
            tracing::debug!(id = r.id(), addr = %r.addr(), attach = r.attach(), "connect requested");
            // Where the app's side of the connection comes from, if not over the stream.
            let handed = if r.attach() {
                let Some(attachable) = attachable else {
                    r.reject(crate::errno::EOPNOTSUPP);
                    return;
                };
                Some(attachable.sockets())
            } else {
                ctx.handoffs.as_ref().map(|h| h.sockets())
            };
            tokio::spawn(crate::tcp::serve(
                r,
                ctx.sockets.clone(),
                ctx.connect_timeout,
                handed,
            ));
        }
        Request::OpenUdp(r) => {
            tokio::spawn(crate::udp::serve(r, ctx.sockets.clone()));
        }
        Request::Dns(r) => {
            let ctx = ctx.clone();
            tokio::spawn(async move { ctx.resolver.serve(r).await });
        }
        Request::Env(r) => {
            let env = ctx.env.clone();
            // Reading /proc is blocking file I/O.
            tokio::task::spawn_blocking(move || env.serve(r));
        }
        Request::Route(r) => {
            tokio::spawn(crate::route::serve(r, ctx.sockets.clone()));
        }
        Request::Resolver(r) => {
            let ctx = ctx.clone();
            // Reading the target's resolv.conf is blocking file I/O.
            tokio::task::spawn_blocking(move || {
                let _ = r.answer(&ctx.resolver.resolver_lines());
            });
        }
        // Kinds from newer protocol versions: dropping a request refuses it.
        _ => {}
    }
}
