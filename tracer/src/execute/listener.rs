//! `listen` on a port whose clients the app steals whole, with a local agent: the app's
//! listener moves into the target (`remote::target_listeners` says what that means for the
//! app). sctrace makes a listening socket of the target's namespace like the app's (family,
//! `IPV6_V6ONLY`, the options it set, its backlog), on a port of the target's choosing;
//! steals the port with the agent's redirect pointing to it; and, once that is in place,
//! installs it over the app's fd (`ADDFD` with `SETFD`) with the app's file flags and
//! close-on-exec, as the `listen` call's answer. The app then accepts the port's clients
//! from the kernel, as it would in the target.
//!
//! The app's listener stays where it is when it can't be replaced safely (an epoll instance
//! already watches it, O_ASYNC, bound to a device; see `execute::direct`), in container
//! mode, when the port is subscribed already (a second listener on it), when no socket of
//! the target can be had or the agent does not take listener ports: the port is then
//! stolen the usual way.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use sctrace_protocol::LISTENERS_VERSION;

use crate::errno::Errno;
use crate::events::Record;
use crate::plan::Reply;
use crate::remote::incoming::AppListener;
use crate::remote::target_listeners::{inode_of, TargetListener};
use crate::remote::target_sockets::TargetSockets;
use crate::remote::Remote;
use crate::sockaddr::SockAddr;
use crate::sys::socket as sys;
use crate::trap::socket::AppSocket;

use super::direct::{self, Prepared};

/// What a listener in the target needs, when the app's can be replaced by one.
pub struct Candidate {
    sockets: Arc<TargetSockets>,
    prepared: Prepared,
    /// The thread that listens.
    tid: i32,
    /// The app's listener.
    app: AppListener,
}

/// Whether the app's listener `sock` (fd of thread `tid`, listening on `app.bound`) can move
/// into the target, and what that takes.
pub fn candidate(
    remote: &Remote,
    sock: &AppSocket,
    tid: i32,
    app: AppListener,
) -> Option<Candidate> {
    let sockets = remote
        .direct
        .as_ref()
        .filter(|_| remote.listeners_in_target)?;
    if sock.is_held()
        || remote.agent.version() < LISTENERS_VERSION
        || !remote.incoming.wants_in_target(app.bound)
    {
        return None;
    }
    match direct::replaceable(sock, tid, &sockets.epolls) {
        Ok(prepared) => Some(Candidate {
            sockets: Arc::clone(sockets),
            prepared,
            tid,
            app,
        }),
        Err(why) => {
            tracing::debug!("the listener on {} stays here: {why}", app.bound);
            None
        }
    }
}

/// Puts the app's listener in the target: the call's answer installs it. `None`: it stays
/// here (nothing changed in the app or the target; the caller subscribes the usual way).
pub async fn place(
    remote: &Arc<Remote>,
    sock: &AppSocket,
    candidate: Candidate,
    id: u64,
    backlog: i32,
    record: &mut Option<Record>,
) -> Option<Reply> {
    let Candidate {
        sockets,
        prepared,
        tid,
        app,
    } = candidate;
    let listening = match open(&sockets, &prepared, app, backlog).await {
        Ok(listening) => listening,
        Err(why) => {
            tracing::debug!("the listener on {} stays here: {why}", app.bound);
            return None;
        }
    };
    let target = TargetListener {
        port: listening.port,
        inode: inode_of(listening.fd.as_fd())?,
        // The process, not the thread: a thread may end while its process goes on.
        pid: crate::procfs::thread_group_of(tid).unwrap_or(tid),
        fd: sock.app_fd,
        shown: app.bound,
        v6: prepared.v6,
        v6_only: app.v6_only,
        local: sock.fd.try_clone().ok()?,
        sockets,
    };
    let placed = remote.incoming.steal_in_target(id, app, target).ok()?;
    let in_place = tokio::time::timeout(super::local::SUBSCRIBE_WAIT, placed).await;
    if !matches!(in_place, Ok(Ok(true))) {
        return None;
    }
    if let Some(record) = record.as_mut() {
        record.set_path("target");
    }
    Some(Reply::ReplaceFd {
        fd: listening.fd,
        target: sock.app_fd,
        cloexec: prepared.cloexec,
        then: Ok(0),
    })
}

/// A listening socket of the target.
struct Listening {
    fd: OwnedFd,
    /// Its port in the target.
    port: u16,
}

/// Makes a listening socket of the target like the app's listener.
async fn open(
    sockets: &Arc<TargetSockets>,
    prepared: &Prepared,
    app: AppListener,
    backlog: i32,
) -> Result<Listening, String> {
    let socket = sockets
        .take(prepared.v6)
        .await
        .ok_or("no socket of the target")?;
    let fd = socket.as_fd();
    // Best effort, as an accepted socket inherits them; the family's own matter.
    direct::apply_options(&prepared.settings, fd);
    let wildcard = if prepared.v6 {
        let only = i32::from(app.v6_only).to_ne_bytes();
        sys::set_option_bytes(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &only)
            .map_err(|e| format!("IPV6_V6ONLY: {e}"))?;
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let bytes = SockAddr::encode_inet(SocketAddr::new(wildcard, 0));
    sys::bind(fd, Some(&bytes), bytes.len() as i32).map_err(|e| format!("bind: {e}"))?;
    sys::listen(fd, backlog).map_err(|e| format!("listen: {e}"))?;
    let port = sys::local_addr(fd)
        .ok()
        .and_then(|bytes| SockAddr::parse(&bytes)?.inet())
        .map(|a| a.port())
        .ok_or("no port")?;
    sys::set_file_flags(fd, prepared.flags).map_err(|e: Errno| format!("flags: {e}"))?;
    Ok(Listening { fd: socket, port })
}
