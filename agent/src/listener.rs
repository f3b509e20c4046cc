//! The listening socket (Unix or TCP, in the agent's own namespace) and the agent's
//! lifetime: accepting sessions, `--once`, `--idle-timeout`, and a clean exit on SIGTERM or
//! SIGINT that removes the Unix socket file.

use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sctrace_protocol::RefuseReason;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::ListenAddr;
use crate::session::{self, Context, Served};

/// Connections allowed to be in their handshake at once; more are closed at once, so a flood
/// of idle connections cannot exhaust the agent.
const MAX_HANDSHAKES: usize = 64;
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
    /// On TCP.
    Tcp(TcpListener),
}

impl Listener {
    /// Binds `addr`. A stale Unix socket file (nothing accepts on it) is replaced.
    pub async fn bind(addr: &ListenAddr) -> Result<Listener, ListenError> {
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
                Ok(Listener::Tcp(listener))
            }
        }
    }

    /// The address as printed in the `listening` line (with the actual TCP port).
    pub fn describe(&self) -> String {
        match self {
            Listener::Unix { path, .. } => format!("unix:{}", path.display()),
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("tcp:{a}"),
                Err(_) => "tcp:?".to_string(),
            },
        }
    }

    async fn accept(&self) -> io::Result<(Conn, String)> {
        match self {
            Listener::Unix { listener, path } => {
                let (s, _) = listener.accept().await?;
                Ok((Conn::Unix(s), format!("unix:{}", path.display())))
            }
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Conn::Tcp(s), format!("tcp:{peer}")))
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

enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
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

    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let mut tasks: JoinSet<Served> = JoinSet::new();
    let mut idle_since = Instant::now();
    loop {
        let idle_deadline = lifetime
            .idle_timeout
            .map(|t| idle_since + t)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        tokio::select! {
            accepted = listener.accept() => {
                let (conn, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // E.g. EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let busy = lifetime.once
                    && ctx.once_claimed.as_ref().is_some_and(|c| c.load(Ordering::SeqCst));
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "too many connections in their handshake; closing this one");
                    continue;
                };
                let ctx = ctx.clone();
                tasks.spawn(async move {
                    if busy {
                        let why = "this agent serves a single session (--once) and is busy";
                        match conn {
                            Conn::Unix(s) => sctrace_protocol::refuse(s, RefuseReason::Busy, why, &ctx.protocol).await,
                            Conn::Tcp(s) => sctrace_protocol::refuse(s, RefuseReason::Busy, why, &ctx.protocol).await,
                        }
                        drop(permit);
                        return Served::NoSession;
                    }
                    match conn {
                        Conn::Unix(s) => session::serve(s, peer, ctx, permit).await,
                        Conn::Tcp(s) => session::serve(s, peer, ctx, permit).await,
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
