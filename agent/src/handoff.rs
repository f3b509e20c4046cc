//! Socket handoff for a local agent: sctrace, on the same machine, hands over the relay end
//! of each remote TCP connection (its accepted loopback socket), and the agent splices it
//! to the target socket itself, so the bytes go kernel to kernel instead of through the
//! session's multiplexed stream.
//!
//! Enabled with `--handoff-socket PATH` (and `--once`: handoffs belong to the one session).
//! The channel is a Unix socket of its own; sctrace connects once, and both prove they hold
//! the session token without sending it (fresh nonces from both, HMAC proofs: see
//! `sctrace_protocol::auth::handoff_client`), the agent first; then sctrace sends
//!
//! ```text
//!   u32 stream id  + SCM_RIGHTS(fd)     (repeated, one per connection)
//! ```
//!
//! (big-endian). A connect request of the session then waits (bounded) for the socket of its
//! stream id instead of relaying over the stream. Only the process holding the session
//! token can hand sockets over; a failed proof closes the channel.
//!
//! The other way, sctrace asks for **sockets of the target**, which it connects and installs
//! in the app itself so that no byte is relayed (see sctrace's `execute::direct`). A word
//! with the high bit set is such a request (no fd attached):
//!
//! ```text
//!   u32  1 | v6 (1 bit) | tag (30 bits)              sctrace → agent
//!   u32 tag  + i32 errno  [+ SCM_RIGHTS(fd) if 0]     agent → sctrace
//! ```
//!
//! The socket is a new, unbound, unconnected TCP socket of the family asked for, created
//! in the target's network namespace; connecting it is sctrace's business.
//!
//! And **stolen connections** (whole-connection steal, no mirror on the port) are handed to
//! sctrace as they are, for the app to accept the client's own socket:
//!
//! ```text
//!   u32 0xFFFF_FFFF + client + server + SCM_RIGHTS(fd)   agent → sctrace
//!   u32 0xFFFF_FFFD + client + server + SCM_RIGHTS(fd)   sctrace → agent (given back)
//! ```
//!
//! (an address is a family byte, 4 or 6, 16 address bytes and the port). The agent closes
//! its own fd as soon as the socket is sent: the connection is sctrace's, and when the app
//! closes it the client sees the end at once, not when the agent gets round to it. sctrace
//! gives back what the app can't take (it stopped listening, its backlog stayed full), and
//! the agent serves that connection the usual way; nothing is said for one the app took.
//! Should sctrace go away with connections it holds, they close with it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sctrace_protocol::handoff::{
    decode_addr, encode_addr, ADDR_LEN, GIVEN_BACK, OFFER, REQUEST, REQUEST_TAG, REQUEST_V6,
};
use sctrace_protocol::Token;

use crate::netns::NetnsSockets;
use crate::rendezvous::Rendezvous;
use crate::sys;

/// Who serves the stolen connections sctrace gives back: the socket, the client and the
/// target's address it connected to.
pub type GivenBack = Box<dyn Fn(OwnedFd, SocketAddr, SocketAddr) + Send + Sync>;

/// Sockets handed over, matched with the connections waiting for them by stream id; and
/// the way to sctrace, for stolen connections.
#[derive(Default)]
pub struct Handoffs {
    sockets: Arc<Rendezvous>,
    /// The channel's writing side, once sctrace is connected and proved who it is.
    outbox: Mutex<Option<UnixStream>>,
    /// Where connections sctrace gives back go (set once, by the incoming-traffic state).
    given_back: OnceLock<GivenBack>,
}

impl Handoffs {
    /// The sockets handed over, by stream id.
    pub fn sockets(&self) -> Arc<Rendezvous> {
        Arc::clone(&self.sockets)
    }

    /// Hands sctrace the client socket of a stolen connection (`client` to `server`): true
    /// once sent, when the caller's copy should close at once (the app takes the socket, or
    /// sctrace gives it back); false when no sctrace is connected or the message could not
    /// go, and the connection should go the usual way.
    pub fn hand_over(
        &self,
        socket: BorrowedFd<'_>,
        client: SocketAddr,
        server: SocketAddr,
    ) -> bool {
        let mut message = Vec::with_capacity(4 + 2 * ADDR_LEN);
        message.extend_from_slice(&OFFER.to_be_bytes());
        encode_addr(&mut message, client);
        encode_addr(&mut message, server);
        match self.send(&message, Some(socket)) {
            Ok(sent) => sent,
            Err(e) => {
                tracing::debug!(error = %e, "cannot hand a stolen connection to sctrace");
                false
            }
        }
    }

    /// Has `serve` serve the connections sctrace gives back (once; later calls are ignored).
    pub fn on_given_back(&self, serve: GivenBack) {
        let _ = self.given_back.set(serve);
    }

    /// Sends one message to sctrace; `Ok(false)` when no sctrace is connected.
    fn send(&self, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<bool> {
        let outbox = self
            .outbox
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?;
        match outbox.as_ref() {
            Some(conn) => sys::scm_rights::send_with_fd(conn, bytes, fd).map(|()| true),
            None => Ok(false),
        }
    }

    fn given_back(&self, socket: OwnedFd, client: SocketAddr, server: SocketAddr) {
        match self.given_back.get() {
            Some(serve) => serve(socket, client, server),
            // Nobody serves them (no incoming traffic here): the connection closes.
            None => {
                tracing::debug!(%client, %server, "a stolen connection given back, and nobody to serve it")
            }
        }
    }

    fn deliver(&self, id: u32, fd: OwnedFd) {
        self.sockets.deliver(id, fd);
    }
}

/// The listening channel; removes its socket file when dropped.
pub struct Channel {
    path: PathBuf,
}

impl Drop for Channel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on `path` and serves one authenticated sctrace connection on a thread of its own.
pub fn listen(
    path: &Path,
    token: Token,
    handoffs: Arc<Handoffs>,
    sockets: NetnsSockets,
) -> io::Result<Channel> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("sctrace-handoff".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(conn) => match serve(conn, &token, &handoffs, &sockets) {
                        Ok(()) => return,
                        Err(e) => tracing::warn!(error = %e, "handoff channel refused or failed"),
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "handoff channel: accept failed");
                        return;
                    }
                }
            }
        })?;
    Ok(Channel {
        path: path.to_owned(),
    })
}

fn serve(
    mut conn: UnixStream,
    token: &Token,
    handoffs: &Handoffs,
    sockets: &NetnsSockets,
) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    sctrace_protocol::auth::handoff_agent(&mut conn, token)
        .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
    conn.set_read_timeout(None)?;
    tracing::debug!("handoff channel open");
    if let Ok(mut outbox) = handoffs.outbox.lock() {
        *outbox = Some(conn.try_clone()?);
    }
    let served = serve_messages(&conn, handoffs, sockets);
    if let Ok(mut outbox) = handoffs.outbox.lock() {
        *outbox = None;
    }
    served
}

fn serve_messages(
    conn: &UnixStream,
    handoffs: &Handoffs,
    sockets: &NetnsSockets,
) -> io::Result<()> {
    loop {
        match receive(conn)? {
            Some((GIVEN_BACK, mut fd)) => {
                let mut addrs = [0u8; 2 * ADDR_LEN];
                if !receive_exact(conn, &mut addrs, &mut fd)? {
                    return Ok(());
                }
                match (
                    decode_addr(&addrs[..ADDR_LEN]),
                    decode_addr(&addrs[ADDR_LEN..]),
                    fd,
                ) {
                    (Some(client), Some(server), Some(socket)) => {
                        handoffs.given_back(socket, client, server)
                    }
                    // Malformed, or the socket did not make it here: nothing to serve.
                    _ => tracing::warn!(
                        "sctrace gave back a stolen connection that could not be read"
                    ),
                }
            }
            Some((word, fd)) if word & REQUEST != 0 => {
                // A stray fd with a request is not ours to keep: dropping closes it.
                drop(fd);
                answer_request(handoffs, word, sockets)?;
            }
            Some((id, Some(fd))) => handoffs.deliver(id, fd),
            // The socket did not make it (the agent is out of fds): that connection times
            // out and closes; the channel goes on.
            Some((id, None)) => {
                tracing::warn!(id, "a handed-over socket was lost (too many open files?)")
            }
            None => return Ok(()),
        }
    }
}

/// Answers a socket request with a new TCP socket of the target, or the errno of why not.
fn answer_request(handoffs: &Handoffs, word: u32, sockets: &NetnsSockets) -> io::Result<()> {
    let domain = if word & REQUEST_V6 != 0 {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let tag = word & REQUEST_TAG;
    match sockets.socket_blocking(domain, socket2::Type::STREAM) {
        Ok(socket) => {
            let fd: OwnedFd = socket.into();
            handoffs.send(&answer(tag, 0), Some(fd.as_fd())).map(drop)
        }
        Err(err) => {
            let errno = crate::errno::of(&err);
            tracing::debug!(errno, "cannot make a socket for sctrace");
            handoffs.send(&answer(tag, errno), None).map(drop)
        }
    }
}

/// The 8 bytes answering request `tag`.
fn answer(tag: u32, errno: i32) -> [u8; 8] {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&tag.to_be_bytes());
    bytes[4..].copy_from_slice(&errno.to_be_bytes());
    bytes
}

/// Receives one (stream id, socket); `None` at end of file. The socket is `None` when the
/// kernel could not install it here (MSG_CTRUNC).
fn receive(conn: &UnixStream) -> io::Result<Option<(u32, Option<OwnedFd>)>> {
    let mut id = [0u8; 4];
    let mut fd = None;
    if !receive_exact(conn, &mut id, &mut fd)? {
        return Ok(None);
    }
    Ok(Some((u32::from_be_bytes(id), fd)))
}

/// Fills `buf`, keeping the first fd that comes with it in `fd`; false at end of file.
fn receive_exact(conn: &UnixStream, buf: &mut [u8], fd: &mut Option<OwnedFd>) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        sys::scm_rights::wait_readable(conn)?;
        let (bytes, fds) = sys::scm_rights::recv_with_fds(conn, &mut buf[filled..])?;
        for owned in fds {
            // More than one fd per message is not ours to keep: dropping closes it.
            if fd.is_none() {
                *fd = Some(owned);
            }
        }
        if bytes == 0 {
            return Ok(false);
        }
        filled += bytes;
    }
    Ok(true)
}
