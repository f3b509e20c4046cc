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

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sctrace_protocol::Token;
use tokio::sync::oneshot;

use crate::sys;

/// How long a connected stream waits for its socket before giving up.
pub const WAIT: Duration = Duration::from_secs(10);

/// Sockets handed over, matched with the connections waiting for them by stream id.
#[derive(Default)]
pub struct Handoffs {
    state: Mutex<Rendezvous>,
}

#[derive(Default)]
struct Rendezvous {
    arrived: HashMap<u32, OwnedFd>,
    waiting: HashMap<u32, oneshot::Sender<OwnedFd>>,
}

impl Handoffs {
    /// Waits (at most [`WAIT`]) for the socket handed over for stream `id`.
    pub async fn take(&self, id: u32) -> Option<OwnedFd> {
        let rx = {
            let mut st = self.state.lock().ok()?;
            if let Some(fd) = st.arrived.remove(&id) {
                return Some(fd);
            }
            let (tx, rx) = oneshot::channel();
            st.waiting.insert(id, tx);
            rx
        };
        let got = tokio::time::timeout(WAIT, rx)
            .await
            .ok()
            .and_then(Result::ok);
        if got.is_none() {
            if let Ok(mut st) = self.state.lock() {
                st.waiting.remove(&id);
            }
        }
        got
    }

    fn deliver(&self, id: u32, fd: OwnedFd) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        match st.waiting.remove(&id) {
            Some(tx) => {
                // A waiter that gave up drops the socket, which closes it.
                let _ = tx.send(fd);
            }
            None => {
                st.arrived.insert(id, fd);
            }
        }
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
pub fn listen(path: &Path, token: Token, handoffs: Arc<Handoffs>) -> io::Result<Channel> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("sctrace-handoff".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(conn) => match serve(conn, &token, &handoffs) {
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

fn serve(mut conn: UnixStream, token: &Token, handoffs: &Handoffs) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    sctrace_protocol::auth::handoff_agent(&mut conn, token)
        .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
    conn.set_read_timeout(None)?;
    tracing::debug!("handoff channel open");
    loop {
        match receive(&conn)? {
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
