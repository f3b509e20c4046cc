//! The listening socket (Unix or TCP, with or without TLS, in the agent's own namespace) and
//! the agent's lifetime: accepting sessions, `--once`, `--idle-timeout`, and a clean exit on
//! SIGTERM or SIGINT that removes the Unix socket file.
//!
//! Connections that have not finished their handshake are bounded: 64 at once, 8 from one
//! peer (an IP address; a user on a Unix socket), and a connection that sends nothing within
//! 3 s is closed (a client speaks first). A peer without the token can therefore hold at
//! most a few slots, briefly, and never the whole agent.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sctrace_protocol::RefuseReason;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::cli::ListenAddr;
use crate::session::{self, Context, Served};

/// Connections allowed to be in their handshake at once; more are closed at once, so a flood
/// of idle connections cannot exhaust the agent.
const MAX_HANDSHAKES: usize = 64;
/// Of those, how many one peer may hold.
const MAX_HANDSHAKES_PER_PEER: usize = 8;
/// A connection that has sent nothing after this long is closed.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long sessions get to say goodbye when the agent shuts down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Why the agent could not listen or serve.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Something else already listens on the Unix socket path.
    #[error("{0} is in use by another listener")]
    InUse(PathBuf),
    /// The path exists and is not a socket: it is not ours to remove.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Binding failed.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Installing a signal handler failed.
    #[error("cannot install the SIGTERM/SIGINT handlers")]
    Signal(#[source] io::Error),
    /// Printing the `listening` line failed.
    #[error("cannot write the `listening` line to stdout")]
    Announce(#[source] io::Error),
}

/// The bound listener. A Unix socket file is removed when this is dropped.
pub enum Listener {
    /// On a Unix socket path.
    Unix {
        /// The listener.
        listener: UnixListener,
        /// Its path.
        path: PathBuf,
    },
    /// On TCP, with TLS when an acceptor is given.
    Tcp {
        /// The listener.
        listener: TcpListener,
        /// `--tls-cert`/`--tls-key`.
        tls: Option<TlsAcceptor>,
    },
}

impl Listener {
    /// Binds `addr` (TCP with `tls` when given). A stale Unix socket file (nothing accepts on
    /// it) is replaced.
    pub async fn bind(
        addr: &ListenAddr,
        tls: Option<TlsAcceptor>,
    ) -> Result<Listener, ListenError> {
        match addr {
            ListenAddr::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if !meta.file_type().is_socket() {
                        return Err(ListenError::NotASocket(path.clone()));
                    }
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(ListenError::InUse(path.clone()));
                    }
                    let _ = std::fs::remove_file(path);
                }
                let listener = UnixListener::bind(path).map_err(|source| ListenError::Bind {
                    addr: format!("unix:{}", path.display()),
                    source,
                })?;
                Ok(Listener::Unix {
                    listener,
                    path: path.clone(),
                })
            }
            ListenAddr::Tcp(sa) => {
                let listener = TcpListener::bind(sa)
                    .await
                    .map_err(|source| ListenError::Bind {
                        addr: format!("tcp:{sa}"),
                        source,
                    })?;
                if tls.is_none() && !sa.ip().is_loopback() {
                    tracing::warn!(
                        addr = %sa,
                        "listening on TCP without TLS: whoever can reach this port can try to connect, and whoever is on the network path can read and alter the sessions' traffic; see docs/security.md"
                    );
                }
                Ok(Listener::Tcp { listener, tls })
            }
        }
    }

    /// The address as printed in the `listening` line (with the actual TCP port).
    pub fn describe(&self) -> String {
        match self {
            Listener::Unix { path, .. } => format!("unix:{}", path.display()),
            Listener::Tcp { listener, .. } => match listener.local_addr() {
                Ok(a) => format!("tcp:{a}"),
                Err(_) => "tcp:?".to_string(),
            },
        }
    }

    async fn accept(&self) -> io::Result<(Accepted, Peer, String)> {
        match self {
            Listener::Unix { listener, path } => {
                let (s, _) = listener.accept().await?;
                // Peers of a Unix socket are told apart by user.
                let uid = s.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
                Ok((
                    Accepted::Unix(s),
                    Peer::User(uid),
                    format!("unix:{} (uid {uid})", path.display()),
                ))
            }
            Listener::Tcp { listener, tls } => {
                let (s, peer) = listener.accept().await?;
                let _ = s.set_nodelay(true);
                let accepted = match tls {
                    Some(acceptor) => Accepted::Tls(s, acceptor.clone()),
                    None => Accepted::Tcp(s),
                };
                Ok((accepted, Peer::Address(peer.ip()), format!("tcp:{peer}")))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A connection as accepted, before its first byte and its TLS handshake.
enum Accepted {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(TcpStream, TlsAcceptor),
}

/// A connection ready for the protocol's handshake.
enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// What an accepted connection turned out to be.
enum Opened {
    /// A session's.
    Session(Conn),
    /// A data connection: opened with the data magic, on plain TCP (`sctrace_protocol::data`).
    Data(TcpStream),
}

impl Accepted {
    /// Waits (at most [`FIRST_BYTE_TIMEOUT`]) for the client's first byte, then completes
    /// the TLS handshake if any (within `handshake`). `None`: the client said nothing in
    /// time, or TLS failed.
    async fn open(self, peer: &str, handshake: Duration) -> Option<Opened> {
        let mut byte = [0u8; 1];
        let first = match &self {
            Accepted::Unix(s) => tokio::time::timeout(FIRST_BYTE_TIMEOUT, peek_unix(s))
                .await
                .map(drop),
            Accepted::Tcp(s) | Accepted::Tls(s, _) => {
                tokio::time::timeout(FIRST_BYTE_TIMEOUT, s.peek(&mut byte))
                    .await
                    .map(drop)
            }
        };
        if first.is_err() {
            tracing::debug!(%peer, "closed a connection that sent nothing");
            return None;
        }
        match self {
            Accepted::Unix(s) => Some(Opened::Session(Conn::Unix(s))),
            Accepted::Tcp(s) => {
                match tokio::time::timeout(FIRST_BYTE_TIMEOUT, starts_with_data_magic(&s)).await {
                    Ok(Ok(true)) => Some(Opened::Data(s)),
                    Ok(Ok(false)) => Some(Opened::Session(Conn::Tcp(s))),
                    _ => {
                        tracing::debug!(%peer, "closed a connection that sent too little");
                        None
                    }
                }
            }
            Accepted::Tls(s, acceptor) => {
                match tokio::time::timeout(handshake, acceptor.accept(s)).await {
                    Ok(Ok(tls)) => Some(Opened::Session(Conn::Tls(Box::new(tls)))),
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, error = %e, "TLS handshake failed");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "no TLS handshake within {handshake:?}");
                        None
                    }
                }
            }
        }
    }
}

/// Whether the first bytes of `s` are the data magic, without taking them: peeks until the
/// bytes seen differ from the magic's or there are enough of them (a peer that closes early
/// is no data connection).
async fn starts_with_data_magic(s: &TcpStream) -> io::Result<bool> {
    let magic = sctrace_protocol::data::DATA_MAGIC;
    let mut seen = [0u8; 4];
    loop {
        let n = s.peek(&mut seen).await?;
        if n == 0 || seen[..n] != magic[..n] {
            return Ok(false);
        }
        if n == magic.len() {
            return Ok(true);
        }
        // A partial magic: wait for more (readiness only comes with new bytes).
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Waits until the peer of `s` has sent a byte (or closed), without taking it. (Readiness
/// alone is not enough: tokio may report a new socket readable before anything arrived.)
async fn peek_unix(s: &UnixStream) -> io::Result<()> {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    loop {
        s.readable().await?;
        let peeked = s.try_io(tokio::io::Interest::READABLE, || {
            recv(s.as_raw_fd(), &mut [0u8; 1], MsgFlags::MSG_PEEK).map_err(io::Error::from)
        });
        match peeked {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Who a connection comes from, for the per-peer bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Peer {
    Address(IpAddr),
    User(u32),
}

/// A connection's place among those in their handshake; given back when dropped.
pub struct HandshakeSlot {
    _all: OwnedSemaphorePermit,
    _peer: PeerSlot,
}

struct PeerSlot {
    peer: Peer,
    counts: Arc<Mutex<HashMap<Peer, usize>>>,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

/// The slots of connections in their handshake: [`MAX_HANDSHAKES`] in all,
/// [`MAX_HANDSHAKES_PER_PEER`] per peer.
#[derive(Clone)]
struct HandshakeSlots {
    all: Arc<Semaphore>,
    per_peer: Arc<Mutex<HashMap<Peer, usize>>>,
}

impl HandshakeSlots {
    fn new() -> Self {
        HandshakeSlots {
            all: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
            per_peer: Arc::default(),
        }
    }

    fn take(&self, peer: Peer) -> Option<HandshakeSlot> {
        let all = self.all.clone().try_acquire_owned().ok()?;
        let mut counts = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(peer).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_PEER {
            return None;
        }
        *n += 1;
        Some(HandshakeSlot {
            _all: all,
            _peer: PeerSlot {
                peer,
                counts: self.per_peer.clone(),
            },
        })
    }
}

/// Options of the serving loop.
pub struct Lifetime {
    /// Exit after the first session ends.
    pub once: bool,
    /// Exit when no session has been connected for this long.
    pub idle_timeout: Option<Duration>,
}

/// Announces the listener, then serves until a signal, `--once` or `--idle-timeout` ends it.
pub async fn serve(
    listener: Listener,
    ctx: Arc<Context>,
    shutdown: watch::Sender<bool>,
    lifetime: Lifetime,
) -> Result<(), ListenError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(ListenError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ListenError::Signal)?;
    {
        let mut out = io::stdout().lock();
        writeln!(out, "listening {}", listener.describe()).map_err(ListenError::Announce)?;
        out.flush().map_err(ListenError::Announce)?;
    }
    tracing::info!(addr = %listener.describe(), "listening");

    let slots = HandshakeSlots::new();
    // One file held back for when the agent has no other (see the accept error below).
    let mut reserve = std::fs::File::open("/dev/null").ok();
    let mut tasks: JoinSet<Served> = JoinSet::new();
    let mut idle_since = Instant::now();
    loop {
        let idle_deadline = lifetime
            .idle_timeout
            .map(|t| idle_since + t)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        tokio::select! {
            accepted = listener.accept() => {
                let (accepted, from, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        if crate::files::exhausted(&e) && crate::splice::drop_spare_pipes() > 0 {
                            // Out of files: the pooled pipes go first.
                            continue;
                        }
                        if crate::files::report_if_exhausted(&e, "new connections to the agent are closed at once") && reserve.take().is_some() {
                            // The reserve's file, given back for a moment, lets the agent
                            // accept the waiting connection and close it: its peer learns
                            // now instead of waiting out its own timeout in the backlog.
                            if let Ok(Ok(shed)) = tokio::time::timeout(Duration::from_millis(10), listener.accept()).await {
                                drop(shed);
                            }
                            reserve = std::fs::File::open("/dev/null").ok();
                        } else {
                            if !crate::files::exhausted(&e) {
                                tracing::warn!(error = %e, "accept failed");
                            }
                            // Back off instead of spinning.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        continue;
                    }
                };
                let busy = lifetime.once
                    && ctx.once_claimed.as_ref().is_some_and(|c| c.load(Ordering::SeqCst));
                let Some(slot) = slots.take(from) else {
                    tracing::warn!(%peer, "too many connections in their handshake (from this peer or in all); closing this one");
                    continue;
                };
                let ctx = ctx.clone();
                tasks.spawn(async move {
                    let conn = match accepted.open(&peer, ctx.protocol.handshake_timeout).await {
                        Some(Opened::Session(conn)) => conn,
                        Some(Opened::Data(s)) => {
                            // Bounded by the data module from here on: a client opens several
                            // at once, and they must not take the handshake slots of sessions.
                            drop(slot);
                            match crate::data::serve(s, &ctx.data).await {
                                Ok(stream) => tracing::debug!(%peer, stream, "data connection attached"),
                                Err(e) => tracing::warn!(%peer, error = %e, "refused a data connection"),
                            }
                            return Served::NoSession;
                        }
                        None => return Served::NoSession,
                    };
                    if busy {
                        let why = "this agent serves a single session (--once) and is busy";
                        match conn {
                            Conn::Unix(s) => sctrace_protocol::refuse(s, RefuseReason::Busy, why, &ctx.protocol).await,
                            Conn::Tcp(s) => sctrace_protocol::refuse(s, RefuseReason::Busy, why, &ctx.protocol).await,
                            Conn::Tls(s) => sctrace_protocol::refuse(s, RefuseReason::Busy, why, &ctx.protocol).await,
                        }
                        drop(slot);
                        return Served::NoSession;
                    }
                    match conn {
                        Conn::Unix(s) => session::serve(s, peer, ctx, slot, false).await,
                        Conn::Tcp(s) => session::serve(s, peer, ctx, slot, true).await,
                        Conn::Tls(s) => session::serve(s, peer, ctx, slot, false).await,
                    }
                });
            }
            Some(done) = tasks.join_next() => {
                if ctx.connected.load(Ordering::SeqCst) == 0 {
                    idle_since = Instant::now();
                }
                if lifetime.once && matches!(done, Ok(Served::Session)) {
                    tracing::info!("the single session (--once) has ended; exiting");
                    break;
                }
            }
            () = tokio::time::sleep_until(idle_deadline) => {
                if ctx.connected.load(Ordering::SeqCst) == 0 {
                    tracing::info!(secs = lifetime.idle_timeout.map(|t| t.as_secs()), "no session for the idle timeout; exiting");
                    break;
                }
                idle_since = Instant::now();
            }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
        }
    }
    let _ = shutdown.send(true);
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("sessions did not finish within {SHUTDOWN_GRACE:?}; exiting anyway");
        tasks.abort_all();
    }
    Ok(())
}
