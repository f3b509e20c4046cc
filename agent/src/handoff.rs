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
//! And **stolen connections** (whole-connection steal, no mirror on the port) are offered to
//! sctrace as they are, for the app to accept the client's own socket:
//!
//! ```text
//!   u32 0xFFFF_FFFF + u32 offer + client + server + SCM_RIGHTS(fd)   agent → sctrace
//!   u32 0xFFFF_FFFE + u32 offer << 1 | taken                         sctrace → agent
//! ```
//!
//! (an address is a family byte, 4 or 6, 16 address bytes and the port). Taken, the agent
//! only closes its own fd; declined, or the channel ended before a verdict came, the
//! connection goes the usual way. The agent waits for the verdict however long it takes:
//! giving up early could leave the app and the agent both reading the one socket.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sctrace_protocol::Token;
use tokio::sync::oneshot;

use crate::netns::NetnsSockets;
use crate::rendezvous::Rendezvous;
use crate::sys;

/// The bit of a word from sctrace that makes it a socket request (stream ids never have it).
const REQUEST: u32 = 1 << 31;
/// The bit of a socket request that asks for IPv6.
const REQUEST_V6: u32 = 1 << 30;
/// The bits of a socket request that tag it, echoed in the answer.
const REQUEST_TAG: u32 = REQUEST_V6 - 1;
/// Starts an offer of a stolen connection (agent → sctrace); no answer tag is this.
const OFFER: u32 = u32::MAX;
/// Starts sctrace's verdict on an offer (sctrace → agent); no request word is this.
const VERDICT: u32 = u32::MAX - 1;

// The two control words are told apart from requests (top bit, a tag below REQUEST_TAG - 1)
// and stream ids (no top bit) by the reader, which checks them first.
const _: () = assert!(OFFER != VERDICT && OFFER & REQUEST != 0 && VERDICT & REQUEST != 0);
const _: () = assert!(OFFER & REQUEST_TAG == REQUEST_TAG);
const _: () = assert!(VERDICT & REQUEST_TAG == REQUEST_TAG - 1);

/// Sockets handed over, matched with the connections waiting for them by stream id; and
/// the way back to sctrace, for offers of stolen connections.
#[derive(Default)]
pub struct Handoffs {
    sockets: Arc<Rendezvous>,
    /// The channel's writing side, once sctrace is connected and proved who it is.
    outbox: Mutex<Option<UnixStream>>,
    /// Offers waiting for sctrace's verdict.
    offers: Mutex<Offers>,
}

#[derive(Default)]
struct Offers {
    next: u32,
    waiting: HashMap<u32, oneshot::Sender<bool>>,
}

impl Handoffs {
    /// The sockets handed over, by stream id.
    pub fn sockets(&self) -> Arc<Rendezvous> {
        Arc::clone(&self.sockets)
    }

    /// Offers sctrace the client socket of a stolen connection (`client` to `server`):
    /// `Some(true)` once sctrace took it (the app now holds the socket; the agent only
    /// closes its own fd), `Some(false)` or `None` (no channel, no verdict in time) when the
    /// connection should go the usual way.
    pub async fn offer(
        &self,
        socket: BorrowedFd<'_>,
        client: SocketAddr,
        server: SocketAddr,
    ) -> Option<bool> {
        let (verdict, rx) = oneshot::channel();
        let id = {
            let mut offers = self.offers.lock().ok()?;
            let id = offers.next;
            offers.next = offers.next.wrapping_add(1) & (u32::MAX >> 1);
            offers.waiting.insert(id, verdict);
            id
        };
        let mut message = Vec::with_capacity(8 + 2 * ADDR_LEN);
        message.extend_from_slice(&OFFER.to_be_bytes());
        message.extend_from_slice(&id.to_be_bytes());
        encode_addr(&mut message, client);
        encode_addr(&mut message, server);
        let sent = self.send(&message, Some(socket));
        let taken = match sent {
            // (The channel's end drops the sender: no verdict will come.)
            Ok(true) => rx.await.ok(),
            Ok(false) => None,
            Err(e) => {
                tracing::debug!(error = %e, "cannot offer a stolen connection to sctrace");
                None
            }
        };
        if let Ok(mut offers) = self.offers.lock() {
            offers.waiting.remove(&id);
        }
        taken
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

    fn verdict(&self, word: u32) {
        let waiting = self
            .offers
            .lock()
            .ok()
            .and_then(|mut offers| offers.waiting.remove(&(word >> 1)));
        if let Some(waiting) = waiting {
            let _ = waiting.send(word & 1 == 1);
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
    // Offers still waiting get no verdict now: they go the usual way.
    if let Ok(mut offers) = handoffs.offers.lock() {
        offers.waiting.clear();
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
            Some((VERDICT, fd)) => {
                drop(fd);
                match receive(conn)? {
                    Some((word, fd)) => {
                        drop(fd);
                        handoffs.verdict(word);
                    }
                    None => return Ok(()),
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

/// Bytes of one address in an offer.
const ADDR_LEN: usize = 19;

/// Appends `addr`: family byte (4 or 6), 16 address bytes (IPv4 in the first 4), port.
fn encode_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    let mut ip = [0u8; 16];
    let family = match addr.ip() {
        std::net::IpAddr::V4(v4) => {
            ip[..4].copy_from_slice(&v4.octets());
            4
        }
        std::net::IpAddr::V6(v6) => {
            ip.copy_from_slice(&v6.octets());
            6
        }
    };
    out.push(family);
    out.extend_from_slice(&ip);
    out.extend_from_slice(&addr.port().to_be_bytes());
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
    let mut filled = 0;
    let mut fd = None;
    while filled < id.len() {
        let (bytes, fds) = sys::scm_rights::recv_with_fds(conn, &mut id[filled..])?;
        for owned in fds {
            // More than one fd per message is not ours to keep: dropping closes it.
            if fd.is_none() {
                fd = Some(owned);
            }
        }
        if bytes == 0 {
            return Ok(None);
        }
        filled += bytes;
    }
    Ok(Some((u32::from_be_bytes(id), fd)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_addresses_are_family_address_and_port() {
        let mut out = Vec::new();
        encode_addr(&mut out, "198.18.0.17:8004".parse().unwrap());
        encode_addr(&mut out, "[2001:2::15]:443".parse().unwrap());
        assert_eq!(out.len(), 2 * ADDR_LEN);
        assert_eq!(out[0], 4);
        assert_eq!(&out[1..5], &[198, 18, 0, 17]);
        assert_eq!(&out[5..17], &[0; 12]);
        assert_eq!(&out[17..19], &8004u16.to_be_bytes());
        assert_eq!(out[19], 6);
        assert_eq!(&out[20..22], &[0x20, 0x01]);
        assert_eq!(&out[36..38], &443u16.to_be_bytes());
    }
}
