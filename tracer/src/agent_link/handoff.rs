//! Handing relay sockets to a local agent: for an agent sctrace started on this machine,
//! the relay end of each remote TCP connection (the socket sctrace accepted from the app)
//! is passed to the agent with SCM_RIGHTS, and the agent splices it to the target socket.
//! The bytes then go kernel to kernel, not through sctrace and the session's stream.
//!
//! The other way, the agent hands sctrace new TCP sockets of the target on request
//! ([`Handoff::ask_socket`]), which sctrace connects and installs in the app itself (see
//! `execute::direct`). The channel format is described in the agent's `handoff` module.

use std::collections::HashMap;
use std::io::{self, IoSlice};
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

/// What goes to the agent.
enum Message {
    /// The relay end of stream `id`.
    Hand(u32, OwnedFd),
    /// A socket request (the whole word).
    Ask(u32),
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
#[derive(Debug, Clone)]
pub struct Handoff {
    tx: mpsc::Sender<Message>,
    asked: Arc<Mutex<Asked>>,
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
        let reader = conn.try_clone()?;
        let answered = Arc::clone(&asked);
        thread::Builder::new()
            .name("sctrace-handoff-in".into())
            .spawn(move || read_answers(&reader, &answered))?;
        let (tx, rx) = mpsc::channel::<Message>();
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
        Ok(Handoff { tx, asked })
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
            let tag = asked.next & REQUEST_TAG;
            asked.next = asked.next.wrapping_add(1);
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
            Err(mpsc::SendError(Message::Ask(_))) => Ok(()),
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
fn read_answers(conn: &UnixStream, asked: &Mutex<Asked>) {
    loop {
        let mut bytes = [0u8; 8];
        let mut filled = 0;
        let mut fd = None;
        while filled < bytes.len() {
            match recv_with_fd(conn, &mut bytes[filled..]) {
                Ok((0, _)) => return close(asked),
                Ok((n, got)) => {
                    filled += n;
                    fd = fd.or(got);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("the agent's handoff channel failed: {e}");
                    return close(asked);
                }
            }
        }
        let tag = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
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

fn close(asked: &Mutex<Asked>) {
    if let Ok(mut asked) = asked.lock() {
        asked.closed = true;
        // Dropping the senders tells the waiting requests.
        asked.waiting.clear();
    }
}
