//! A session: one byte stream between sctrace and an agent, carrying many streams. Building
//! one runs the handshake; the result is a [`SessionHandle`] to open streams, [`Requests`]
//! to serve what the peer opens, and the [`SessionTask`] that moves the bytes.

mod handshake;
pub(crate) mod state;
mod task;
pub(crate) mod writer;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

pub use handshake::{refuse, HandshakeError};
pub use task::SessionTask;

use crate::decode::DecodeError;
use crate::handle::SessionHandle;
use crate::request::Requests;
use crate::text::PeerText;
use crate::token::Token;
use state::{Limits, Shared};

/// The byte streams a session runs over: a Unix or TCP socket, a port-forward stream, an
/// in-memory pipe.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// The protocol version this build speaks natively.
pub const PROTOCOL_VERSION: u16 = 4;
/// The first version with data connections ([`crate::data`]).
pub const DATA_CONNECTIONS_VERSION: u16 = 3;
/// The first version whose `Subscribe` may name the subscriber's own listeners.
pub const LISTENERS_VERSION: u16 = 4;
/// The oldest protocol version this build still speaks. Version 1 sent the session token
/// in the clear and is no longer spoken (see the crate documentation).
pub const MIN_PROTOCOL_VERSION: u16 = 2;

/// Smallest per-stream window a peer may announce (smaller would make streams crawl).
pub const MIN_STREAM_WINDOW: u32 = 4096;
/// Largest per-stream window a peer may announce.
pub const MAX_STREAM_WINDOW: u32 = 1 << 30;

/// Tunables of one side of a session.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bytes the peer may send on one stream before we grant more (announced in the
    /// handshake; clamped to `MIN_STREAM_WINDOW..=MAX_STREAM_WINDOW`). Also the bytes queued
    /// per UDP flow before datagrams are dropped. The default, 1 MiB, keeps a bulk stream
    /// from waiting on credit over a fast link (256 KiB gave about a third less throughput in
    /// `scripts/bench`); memory is only used while a reader is slower than its writer.
    pub stream_window: u32,
    /// How often to send a keepalive `Ping`.
    pub keepalive_interval: Duration,
    /// The session ends when nothing arrived from the peer for this long.
    pub keepalive_timeout: Duration,
    /// The handshake must complete within this time.
    pub handshake_timeout: Duration,
    /// Streams, flows and DNS queries the peer may have open at once; more are refused with
    /// `EAGAIN`.
    pub max_peer_streams: usize,
    /// Requests from the peer waiting for our user to pick them up; more are refused.
    pub max_pending_requests: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            stream_window: 1024 * 1024,
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(10),
            max_peer_streams: 65_536,
            max_pending_requests: 1024,
        }
    }
}

impl Config {
    fn window(&self) -> u32 {
        self.stream_window
            .clamp(MIN_STREAM_WINDOW, MAX_STREAM_WINDOW)
    }
}

/// Why a session ended, as reported by [`SessionHandle::closed`] and [`SessionTask::run`].
#[derive(Debug, Clone)]
pub enum CloseReason {
    /// The peer closed the connection.
    PeerClosed,
    /// The peer announced it is closing the session (`GoAway`).
    PeerShutdown {
        /// The peer's explanation.
        message: String,
    },
    /// This side closed the session ([`SessionHandle::shutdown`], or every handle dropped).
    LocalShutdown {
        /// Our explanation, also sent to the peer.
        message: String,
    },
    /// Nothing arrived from the peer for the keepalive timeout.
    KeepaliveTimeout {
        /// How long the peer had been silent.
        silent_for: Duration,
    },
    /// The peer sent bytes that are not a valid frame.
    Decode(DecodeError),
    /// The peer sent a valid frame that breaks the protocol's rules.
    Violation(String),
    /// Reading from or writing to the connection failed.
    Io(Arc<io::Error>),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("the peer closed the connection"),
            CloseReason::PeerShutdown { message } => {
                write!(f, "the peer closed the session: {}", PeerText(message))
            }
            CloseReason::LocalShutdown { message } => write!(f, "session closed: {message}"),
            CloseReason::KeepaliveTimeout { silent_for } => write!(
                f,
                "the peer stopped responding (nothing received for {:.1} s)",
                silent_for.as_secs_f64()
            ),
            CloseReason::Decode(e) => write!(f, "protocol error from the peer: {e}"),
            CloseReason::Violation(d) => write!(f, "protocol violation by the peer: {d}"),
            CloseReason::Io(e) => write!(f, "connection error: {e}"),
        }
    }
}

impl CloseReason {
    /// The error a stream or flow user sees once the session is gone.
    pub(crate) fn to_io_error(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            SessionClosed(self.clone()),
        )
    }
}

/// The error inside the `io::Error` (kind `ConnectionAborted`) that streams and flows return
/// once their session has ended; also returned by handle methods.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the sctrace session ended: {0}")]
pub struct SessionClosed(pub CloseReason);

/// An established session. Spawn `task.run()`, keep `handle` alive for as long as the session
/// should live (dropping its last clone shuts the session down), and serve `requests` if this
/// side answers the peer's requests (the agent does; requests not served are refused).
pub struct Session {
    /// Opens streams, flows and DNS queries; reports the session's end.
    pub handle: SessionHandle,
    /// What the peer asks this side to do.
    pub requests: Requests,
    /// Moves the bytes; must be polled (spawned) for anything to happen.
    pub task: SessionTask,
}

impl Session {
    /// Runs the client handshake over `io`: offers this build's versions, checks that the
    /// server proves it holds `token` before sending anything more, proves the same in turn,
    /// and returns the session once the server welcomes it. The token itself is never sent.
    pub async fn client<T: Io>(
        mut io: T,
        token: &Token,
        config: Config,
    ) -> Result<Session, HandshakeError> {
        let agreed = handshake::client(&mut io, token, &config).await?;
        Ok(Session::start(io, agreed, config, true))
    }

    /// Runs the server handshake over `io`: checks the client's versions, proves that it
    /// holds `token`, checks the client's proof (in constant time) and refuses the session,
    /// telling the client why, when something does not fit.
    pub async fn server<T: Io>(
        mut io: T,
        token: &Token,
        config: Config,
    ) -> Result<Session, HandshakeError> {
        let agreed = handshake::server(&mut io, token, &config).await?;
        Ok(Session::start(io, agreed, config, false))
    }

    fn start<T: Io>(io: T, agreed: handshake::Agreed, config: Config, client: bool) -> Session {
        let window = config.window();
        let limits = Limits {
            version: agreed.version,
            local_window: window,
            peer_window: agreed.peer_window,
            max_peer_streams: config.max_peer_streams.max(1),
            udp_queue_bytes: window as usize,
            data_keys: agreed.data_keys,
        };
        let io: task::BoxIo = Box::new(io);
        let (rd, wr) = tokio::io::split(io);
        let shared = Shared::new(limits, client, writer::Writer::new(wr));
        let (tx, rx) = mpsc::channel(config.max_pending_requests.max(1));
        Session {
            handle: SessionHandle::new(shared.clone()),
            requests: Requests::new(rx),
            task: SessionTask::new(
                rd,
                shared,
                agreed.leftover,
                tx,
                config.keepalive_interval,
                config.keepalive_timeout,
            ),
        }
    }
}
