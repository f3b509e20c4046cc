//! Handing relay sockets to a local agent: for an agent sctrace started on this machine,
//! the relay end of each remote TCP connection (the socket sctrace accepted from the app)
//! is passed to the agent with SCM_RIGHTS, and the agent splices it to the target socket.
//! The bytes then go kernel to kernel, not through sctrace and the session's stream.
//!
//! The other way, the agent hands sctrace new TCP sockets of the target on request
//! ([`Handoff::ask_socket`]), which sctrace connects and installs in the app itself (see
//! `execute::direct`), and hands it stolen connections as they are ([`Handoff::take_offers`]),
//! for the app to accept the client's own socket; what the app can't take goes back
//! ([`GiveBack`]). The channel format is described in the agent's `handoff` module.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::errno::Errno;
use crate::sys::scm_rights::{recv_with_fd, wait_readable};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use sctrace_protocol::auth::handoff_client;
use sctrace_protocol::handoff::{
    decode_addr, encode_addr, ADDR_LEN, GIVEN_BACK, OFFER, REQUEST, REQUEST_V6, TAG_END,
};
use sctrace_protocol::Token;

/// How long the agent may take to answer the channel's authentication.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// A stolen connection the agent hands over: the client's own socket (in the target), now
/// sctrace's alone.
#[derive(Debug)]
pub struct Offer {
    /// The remote client.
    pub client: SocketAddr,
    /// The target's address and port it connected to.
    pub server: SocketAddr,
    /// The client's socket.
    pub socket: OwnedFd,
    /// The way back to the agent.
    back: GiveBack,
}

impl Offer {
    /// The offer's parts: client, server, the socket, and the way back for it.
    pub fn into_parts(self) -> (SocketAddr, SocketAddr, OwnedFd, GiveBack) {
        (self.client, self.server, self.socket, self.back)
    }
}

/// Gives a stolen connection the app can't take back to the agent, which then serves it
/// the usual way (the target's server, or the session). A connection neither taken nor
/// given back is lost: its client sees it close.
#[derive(Debug)]
pub struct GiveBack {
    client: SocketAddr,
    server: SocketAddr,
    tx: mpsc::Sender<Message>,
}

impl GiveBack {
    /// Gives `socket` back.
    pub fn give_back(self, socket: OwnedFd) {
        let _ = self
            .tx
            .send(Message::GiveBack(self.client, self.server, socket));
    }
}

/// Who takes offers: called on the thread that reads the channel, so that an offer reaches
/// the app's listener without waiting for another thread's turn.
pub type OfferTaker = Arc<dyn Fn(Offer) + Send + Sync>;

/// What goes to the agent.
#[derive(Debug)]
enum Message {
    /// The relay end of stream `id`.
    Hand(u32, OwnedFd),
    /// A socket request (the whole word).
    Ask(u32),
    /// A stolen connection given back: client, server, socket.
    GiveBack(SocketAddr, SocketAddr, OwnedFd),
}

/// A socket of the target the agent answered with, or why not.
pub type Answer = Result<OwnedFd, Errno>;

/// Socket requests waiting for the agent's answer, by tag.
#[derive(Debug, Default)]
struct Asked {
    next: u32,
    waiting: HashMap<u32, oneshot::Sender<Answer>>,
    /// The channel is closed: no answer will come.
    closed: bool,
}

/// Where handed-over sockets go; cheap to share.
#[derive(Clone)]
pub struct Handoff {
    tx: mpsc::Sender<Message>,
    asked: Arc<Mutex<Asked>>,
    offers: Offers,
}

/// Who takes offers once someone does (before that they are declined).
type Offers = Arc<Mutex<Option<OfferTaker>>>;

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff").finish_non_exhaustive()
    }
}

impl Handoff {
    /// Connects to the agent's handoff socket; the agent and sctrace prove to each other that
    /// they hold `token` (the agent first) without sending it.
    pub fn connect(path: &Path, token: &Token) -> io::Result<Handoff> {
        let mut conn = UnixStream::connect(path)?;
        conn.set_read_timeout(Some(AUTH_TIMEOUT))?;
        handoff_client(&mut conn, token)
            .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
        conn.set_read_timeout(None)?;
        let asked: Arc<Mutex<Asked>> = Arc::default();
        let offers: Offers = Arc::default();
        let reader = conn.try_clone()?;
        let answered = Arc::clone(&asked);
        let offered = Arc::clone(&offers);
        let (tx, rx) = mpsc::channel::<Message>();
        let back = tx.clone();
        thread::Builder::new()
            .name("sctrace-handoff-in".into())
            .spawn(move || read_answers(&reader, &answered, &offered, &back))?;
        thread::Builder::new()
            .name("sctrace-handoff".into())
            .spawn(move || {
                for message in rx {
                    if let Err(e) = write_message(&conn, message) {
                        tracing::warn!("the agent's handoff channel failed: {e}");
                        return;
                    }
                }
            })?;
        Ok(Handoff { tx, asked, offers })
    }

    /// Has `taker` take the stolen connections the agent offers from now on (once: false
    /// when someone already does).
    pub fn take_offers(&self, taker: OfferTaker) -> bool {
        let Ok(mut offers) = self.offers.lock() else {
            return false;
        };
        if offers.is_some() {
            return false;
        }
        *offers = Some(taker);
        true
    }

    /// Asks the agent for a new TCP socket of the target (IPv6 or IPv4). `None` when the
    /// channel is gone; the receiver yields the socket, or errs if no answer will come.
    pub fn ask_socket(&self, v6: bool) -> Option<oneshot::Receiver<Answer>> {
        let (answer, rx) = oneshot::channel();
        let tag = {
            let mut asked = self.asked.lock().ok()?;
            if asked.closed {
                return None;
            }
            // Tags stay below TAG_END: the words GIVEN_BACK and OFFER are not requests.
            let tag = asked.next % TAG_END;
            asked.next = (tag + 1) % TAG_END;
            asked.waiting.insert(tag, answer);
            tag
        };
        let word = REQUEST | if v6 { REQUEST_V6 } else { 0 } | tag;
        self.tx.send(Message::Ask(word)).ok()?;
        Some(rx)
    }

    /// Hands the socket of stream `id` to the agent. Returns it back if the channel is gone.
    pub fn send(&self, id: u32, fd: OwnedFd) -> Result<(), OwnedFd> {
        match self.tx.send(Message::Hand(id, fd)) {
            Ok(()) => Ok(()),
            Err(mpsc::SendError(Message::Hand(_, fd))) => Err(fd),
            // (What was sent is what comes back.)
            Err(mpsc::SendError(Message::Ask(_) | Message::GiveBack(..))) => Ok(()),
        }
    }
}

/// Writes one message to the agent.
fn write_message(conn: &UnixStream, message: Message) -> io::Result<()> {
    match message {
        // Our copy of the socket closes when this returns; the agent holds its own.
        Message::Hand(id, fd) => send(conn, &id.to_be_bytes(), Some(&fd)),
        Message::GiveBack(client, server, fd) => {
            let mut bytes = Vec::with_capacity(4 + 2 * ADDR_LEN);
            bytes.extend_from_slice(&GIVEN_BACK.to_be_bytes());
            encode_addr(&mut bytes, client);
            encode_addr(&mut bytes, server);
            send(conn, &bytes, Some(&fd))
        }
        Message::Ask(word) => send(conn, &word.to_be_bytes(), None),
    }
}

/// Sends `bytes` with `fd`, if any, in one message.
fn send(conn: &UnixStream, bytes: &[u8], fd: Option<&OwnedFd>) -> io::Result<()> {
    let fds = fd.map(|fd| [fd.as_raw_fd()]);
    let rights = fds.as_ref().map(|fds| ControlMessage::ScmRights(fds));
    sendmsg::<()>(
        conn.as_raw_fd(),
        &[IoSlice::new(bytes)],
        rights.as_slice(),
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// Reads the agent's answers (`u32 tag, i32 errno` + the socket when 0) and gives each to
/// its request, until the channel ends; then every request still waiting learns no answer
/// will come.
fn read_answers(
    conn: &UnixStream,
    asked: &Mutex<Asked>,
    offers: &Mutex<Option<OfferTaker>>,
    back: &mpsc::Sender<Message>,
) {
    loop {
        let mut bytes = [0u8; 8];
        let mut fd = None;
        if let Err(e) = read_exact_with_fd(conn, &mut bytes, &mut fd) {
            tracing::debug!("the agent's handoff channel ended: {e}");
            return close(asked);
        }
        let tag = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if tag == OFFER {
            // The offer's addresses start in the 8 bytes read.
            let mut addrs = [0u8; 2 * ADDR_LEN];
            addrs[..4].copy_from_slice(&bytes[4..]);
            if let Err(e) = read_exact_with_fd(conn, &mut addrs[4..], &mut fd) {
                tracing::debug!("the agent's handoff channel ended: {e}");
                return close(asked);
            }
            let (Some(client), Some(server), Some(socket)) = (
                decode_addr(&addrs[..ADDR_LEN]),
                decode_addr(&addrs[ADDR_LEN..]),
                fd,
            ) else {
                tracing::warn!("the agent handed over a stolen connection that could not be read");
                continue;
            };
            let back = GiveBack {
                client,
                server,
                tx: back.clone(),
            };
            // Nobody takes offers (yet): the agent serves the connection the usual way.
            match offers.lock().ok().and_then(|o| o.clone()) {
                Some(take) => take(Offer {
                    client,
                    server,
                    socket,
                    back,
                }),
                None => back.give_back(socket),
            }
            continue;
        }
        let errno = i32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let answer = match (errno, fd) {
            (0, Some(fd)) => Ok(fd),
            // A socket that did not make it here (our fd limit) fails like our own would.
            (0, None) => Err(Errno(libc::EMFILE)),
            (errno, _) => Err(Errno(errno)),
        };
        let waiting = asked.lock().ok().and_then(|mut a| a.waiting.remove(&tag));
        if let Some(waiting) = waiting {
            // A request that gave up drops the socket, which closes it.
            let _ = waiting.send(answer);
        }
    }
}

/// Reads exactly `buf.len()` bytes; an fd that comes with them is kept in `fd` (the first).
fn read_exact_with_fd(
    conn: &UnixStream,
    buf: &mut [u8],
    fd: &mut Option<OwnedFd>,
) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        wait_readable(conn)?;
        match recv_with_fd(conn, &mut buf[filled..]) {
            Ok((0, _)) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok((n, got)) => {
                filled += n;
                if fd.is_none() {
                    *fd = got;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn close(asked: &Mutex<Asked>) {
    if let Ok(mut asked) = asked.lock() {
        asked.closed = true;
        // Dropping the senders tells the waiting requests.
        asked.waiting.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_tags_never_collide_with_control_words() {
        let (tx, _rx) = mpsc::channel();
        let asked: Arc<Mutex<Asked>> = Arc::default();
        if let Ok(mut a) = asked.lock() {
            a.next = TAG_END - 3;
        }
        let handoff = Handoff {
            tx,
            asked: Arc::clone(&asked),
            offers: Arc::default(),
        };
        for _ in 0..6 {
            let _ = handoff.ask_socket(false);
        }
        let tags: Vec<u32> = asked.lock().unwrap().waiting.keys().copied().collect();
        assert!(tags.iter().all(|t| *t < TAG_END), "{tags:?}");
        let words: Vec<u32> = tags.iter().map(|t| REQUEST | REQUEST_V6 | t).collect();
        assert!(
            !words.contains(&GIVEN_BACK) && !words.contains(&OFFER),
            "{words:?}"
        );
    }
}
