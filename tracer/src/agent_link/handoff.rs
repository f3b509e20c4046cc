//! Handing relay sockets to a local agent: for an agent sctrace started on this machine,
//! the relay end of each remote TCP connection (the socket sctrace accepted from the app)
//! is passed to the agent with SCM_RIGHTS, and the agent splices it to the target socket.
//! The bytes then go kernel to kernel, not through sctrace and the session's stream.
//! The channel format is described in the agent's `handoff` module.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use sctrace_protocol::auth::handoff_client;
use sctrace_protocol::Token;

/// How long the agent may take to answer the channel's authentication.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where handed-over sockets go; cheap to share.
#[derive(Debug, Clone)]
pub struct Handoff {
    tx: mpsc::Sender<(u32, OwnedFd)>,
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
        let (tx, rx) = mpsc::channel::<(u32, OwnedFd)>();
        thread::Builder::new()
            .name("sctrace-handoff".into())
            .spawn(move || {
                for (id, fd) in rx {
                    let bytes = id.to_be_bytes();
                    let fds = [fd.as_raw_fd()];
                    let sent = sendmsg::<()>(
                        conn.as_raw_fd(),
                        &[IoSlice::new(&bytes)],
                        &[ControlMessage::ScmRights(&fds)],
                        MsgFlags::empty(),
                        None,
                    );
                    // Our copy closes here; the agent holds its own.
                    drop(fd);
                    if let Err(e) = sent {
                        tracing::warn!("cannot hand a connection to the agent: {e}");
                        return;
                    }
                }
            })?;
        Ok(Handoff { tx })
    }

    /// Hands the socket of stream `id` to the agent. Returns it back if the channel is gone.
    pub fn send(&self, id: u32, fd: OwnedFd) -> Result<(), OwnedFd> {
        self.tx.send((id, fd)).map_err(|e| e.0 .1)
    }
}
