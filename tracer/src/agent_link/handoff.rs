//! Handing relay sockets to a local agent: for an agent sctrace started on this machine,
//! the relay end of each remote TCP connection (the socket sctrace accepted from the app)
//! is passed to the agent with SCM_RIGHTS, and the agent splices it to the target socket.
//! The bytes then go kernel to kernel, not through sctrace and the session's stream.
//!
//! The other way, the agent hands sctrace new TCP sockets of the target on request
//! ([`Handoff::ask_socket`]), which sctrace connects and installs in the app itself (see
//! `execute::direct`), and offers it stolen connections as they are ([`Handoff::offers`]),
//! for the app to accept the client's own socket. The channel format is described in the
//! agent's `handoff` module.

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
use crate::sys::scm_rights::recv_with_fd;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use sctrace_protocol::auth::handoff_client;
use sctrace_protocol::Token;

/// How long the agent may take to answer the channel's authentication.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// The bit of a word to the agent that makes it a socket request.
const REQUEST: u32 = 1 << 31;
/// The bit of a socket request that asks for IPv6.
const REQUEST_V6: u32 = 1 << 30;
/// The bits of a socket request that tag it.
const REQUEST_TAG: u32 = REQUEST_V6 - 1;
/// Starts an offer of a stolen connection (agent → sctrace).
const OFFER: u32 = u32::MAX;
/// Starts a verdict on an offer (sctrace → agent).
const VERDICT: u32 = u32::MAX - 1;
/// Bytes of one address in an offer: family (4 or 6), 16 address bytes, port.
const ADDR_LEN: usize = 19;

/// A stolen connection the agent offers: the client's own socket (in the target).
#[derive(Debug)]
pub struct Offer {
    /// The remote client.
    pub client: SocketAddr,
    /// The target's address and port it connected to.
    pub server: SocketAddr,
    /// The client's socket.
    pub socket: OwnedFd,
    /// Where the verdict goes.
    verdict: Verdict,
}

impl Offer {
    /// The part that answers the agent, to keep once the offer's parts are taken apart.
    pub fn into_parts(self) -> (SocketAddr, SocketAddr, OwnedFd, Verdict) {
        (self.client, self.server, self.socket, self.verdict)
    }
}

/// sctrace's answer to one offer: the agent waits for it before doing anything else with
/// the connection.
#[derive(Debug)]
pub struct Verdict {
    id: u32,
    tx: mpsc::Sender<Message>,
}

impl Verdict {
    /// Tells the agent whether the app took the connection (else it goes the usual way).
    pub fn give(self, taken: bool) {
        let _ = self.tx.send(Message::Verdict(self.id, taken));
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
    /// A verdict on offer `id`: taken or not.
    Verdict(u32, bool),
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
        let verdicts = tx.clone();
        thread::Builder::new()
            .name("sctrace-handoff-in".into())
            .spawn(move || read_answers(&reader, &answered, &offered, &verdicts))?;
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

    /// Tells the agent whether offer `id` was taken.
    /// Asks the agent for a new TCP socket of the target (IPv6 or IPv4). `None` when the
    /// channel is gone; the receiver yields the socket, or errs if no answer will come.
    pub fn ask_socket(&self, v6: bool) -> Option<oneshot::Receiver<Answer>> {
        let (answer, rx) = oneshot::channel();
        let tag = {
            let mut asked = self.asked.lock().ok()?;
            if asked.closed {
                return None;
            }
            // Tags stay below REQUEST_TAG - 1: the words VERDICT and OFFER are not requests.
            let tag = asked.next % (REQUEST_TAG - 1);
            asked.next = (tag + 1) % (REQUEST_TAG - 1);
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
            Err(mpsc::SendError(Message::Ask(_) | Message::Verdict(..))) => Ok(()),
        }
    }
}

/// Writes one message to the agent.
fn write_message(conn: &UnixStream, message: Message) -> io::Result<()> {
    match message {
        Message::Hand(id, fd) => {
            let bytes = id.to_be_bytes();
            let fds = [fd.as_raw_fd()];
            sendmsg::<()>(
                conn.as_raw_fd(),
                &[IoSlice::new(&bytes)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )?;
            // Our copy closes here; the agent holds its own.
            Ok(())
        }
        Message::Verdict(id, taken) => {
            let mut bytes = [0u8; 8];
            bytes[..4].copy_from_slice(&VERDICT.to_be_bytes());
            bytes[4..].copy_from_slice(&((id << 1) | u32::from(taken)).to_be_bytes());
            sendmsg::<()>(
                conn.as_raw_fd(),
                &[IoSlice::new(&bytes)],
                &[],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )?;
            Ok(())
        }
        Message::Ask(word) => {
            sendmsg::<()>(
                conn.as_raw_fd(),
                &[IoSlice::new(&word.to_be_bytes())],
                &[],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )?;
            Ok(())
        }
    }
}

/// Reads the agent's answers (`u32 tag, i32 errno` + the socket when 0) and gives each to
/// its request, until the channel ends; then every request still waiting learns no answer
/// will come.
fn read_answers(
    conn: &UnixStream,
    asked: &Mutex<Asked>,
    offers: &Mutex<Option<OfferTaker>>,
    verdicts: &mpsc::Sender<Message>,
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
            let id = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
            let mut addrs = [0u8; 2 * ADDR_LEN];
            if let Err(e) = read_exact_with_fd(conn, &mut addrs, &mut fd) {
                tracing::debug!("the agent's handoff channel ended: {e}");
                return close(asked);
            }
            let offer = match (
                decode_addr(&addrs[..ADDR_LEN]),
                decode_addr(&addrs[ADDR_LEN..]),
                fd,
            ) {
                (Some(client), Some(server), Some(socket)) => Some(Offer {
                    client,
                    server,
                    socket,
                    verdict: Verdict {
                        id,
                        tx: verdicts.clone(),
                    },
                }),
                _ => None,
            };
            // Nobody takes offers (yet), or a malformed one: the agent goes the usual way.
            match (offer, offers.lock().ok().and_then(|o| o.clone())) {
                (Some(offer), Some(take)) => take(offer),
                _ => {
                    let _ = verdicts.send(Message::Verdict(id, false));
                }
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

/// An address of an offer: family byte (4 or 6), 16 address bytes, port.
fn decode_addr(bytes: &[u8]) -> Option<SocketAddr> {
    let ip: [u8; 16] = bytes.get(1..17)?.try_into().ok()?;
    let port = u16::from_be_bytes([*bytes.get(17)?, *bytes.get(18)?]);
    let ip = match bytes.first()? {
        4 => std::net::IpAddr::from([ip[0], ip[1], ip[2], ip[3]]),
        6 => std::net::IpAddr::from(ip),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
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
    fn offer_addresses_decode_and_bad_ones_are_refused() {
        let mut v4 = [0u8; ADDR_LEN];
        v4[0] = 4;
        v4[1..5].copy_from_slice(&[198, 18, 0, 17]);
        v4[17..].copy_from_slice(&8004u16.to_be_bytes());
        assert_eq!(decode_addr(&v4), Some("198.18.0.17:8004".parse().unwrap()));
        let mut v6 = [0u8; ADDR_LEN];
        v6[0] = 6;
        v6[1..17].copy_from_slice(&"2001:2::15".parse::<std::net::Ipv6Addr>().unwrap().octets());
        v6[17..].copy_from_slice(&443u16.to_be_bytes());
        assert_eq!(decode_addr(&v6), Some("[2001:2::15]:443".parse().unwrap()));
        let mut bad = v4;
        bad[0] = 5;
        assert_eq!(decode_addr(&bad), None);
        assert_eq!(decode_addr(&v4[..10]), None);
    }

    #[test]
    fn request_tags_never_collide_with_control_words() {
        let (tx, _rx) = mpsc::channel();
        let asked: Arc<Mutex<Asked>> = Arc::default();
        if let Ok(mut a) = asked.lock() {
            a.next = REQUEST_TAG - 3;
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
        assert!(tags.iter().all(|t| *t < REQUEST_TAG - 1), "{tags:?}");
    }
}
