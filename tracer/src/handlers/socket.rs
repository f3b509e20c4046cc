//! The app's socket as the supervisor sees it: a shared copy of the fd plus its family,
//! type and blocking mode, and the event record built from it.

use std::os::fd::{AsFd, OwnedFd};

use crate::action::{Action, Reply};
use crate::errno::Errno;
use crate::events::Event;
use crate::procfs;
use crate::sockaddr::{family_name, sock_type_name, SockAddr};
use crate::supervisor::notification::{AddrArg, Notification};
use crate::sys::socket as sys;

use super::Context;

/// A copy of one of the app's sockets, described.
#[derive(Debug)]
pub struct AppSocket {
    /// The copy (shares the open file description with the app's fd).
    pub fd: OwnedFd,
    /// What the socket is.
    pub desc: SocketDesc,
}

/// What one of the app's sockets is: enough to name it in an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketDesc {
    /// The app's fd number.
    pub app_fd: i32,
    /// `SO_DOMAIN`, or `None` when the fd is not a socket.
    pub family: Option<i32>,
    /// `SO_TYPE`.
    pub sock_type: i32,
    /// Whether O_NONBLOCK is set (then the call can't block and runs inline).
    pub nonblocking: bool,
}

impl AppSocket {
    /// Describes a copied fd.
    pub fn describe(fd: OwnedFd, app_fd: i32) -> Self {
        let family = sys::domain(fd.as_fd()).ok();
        let sock_type = sys::sock_type(fd.as_fd()).unwrap_or(0);
        let nonblocking = sys::is_nonblocking(fd.as_fd()).unwrap_or(false);
        Self {
            fd,
            desc: SocketDesc {
                app_fd,
                family,
                sock_type,
                nonblocking,
            },
        }
    }

    /// Whether this is a Unix socket. Calls on those are left to the kernel: done from the
    /// supervisor they would carry its pid in SO_PEERCRED/SCM_CREDENTIALS and resolve paths
    /// against its cwd and umask.
    pub fn is_unix(&self) -> bool {
        self.desc.family == Some(libc::AF_UNIX)
    }
}

/// How a copied address reads in an event.
pub fn describe_addr(arg: &AddrArg) -> String {
    match arg {
        AddrArg::Bytes(b) => match SockAddr::parse(b) {
            Some(addr) => addr.to_string(),
            None => "(short address)".into(),
        },
        AddrArg::Empty => "(empty)".into(),
        AddrArg::BadLength => "(bad length)".into(),
        AddrArg::Unreadable => "(unreadable)".into(),
    }
}

/// The `result` field for an outcome.
pub fn result_name<T>(result: &Result<T, Errno>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => e.name(),
    }
}

/// The result recorded when the kernel ran the call and sctrace did not see the outcome.
pub const UNKNOWN: &str = "unknown";

/// Builds an event for a call on `sock`. Reads the caller's identity from /proc, which is
/// reliable because the thread is blocked in this very call.
pub fn event(n: &Notification, sock: &SocketDesc, addr: String, result: String) -> Event {
    let tid = n.tid() as i32;
    let id = procfs::identity(tid).unwrap_or(procfs::Identity {
        pid: tid,
        comm: String::from("?"),
    });
    Event {
        ts: Event::now(),
        pid: id.pid,
        tid,
        comm: id.comm,
        syscall: n.call.name(),
        fd: sock.app_fd,
        family: family_name(sock.family.unwrap_or(libc::AF_UNSPEC)),
        sock_type: sock_type_name(sock.sock_type),
        addr,
        decision: "local",
        rule: None,
        result,
        count: None,
    }
}

/// Runs `perform` (the app's call re-issued on the socket copy) and answers with its
/// outcome, recording an event. Calls that may block (`may_block` on a blocking socket) run
/// on the blocking pool so the notification loop keeps serving other threads; the rest run
/// inline.
pub fn perform<T, F>(
    ctx: &Context,
    n: &Notification,
    sock: AppSocket,
    addr: String,
    may_block: bool,
    perform: F,
) -> Action
where
    T: Into<i64> + Send + 'static,
    F: FnOnce(&AppSocket) -> Result<T, Errno> + Send + 'static,
{
    let events = ctx.events.clone();
    let n = *n;
    let finish = move |sock: AppSocket| -> Reply {
        let result = perform(&sock);
        if events.enabled() && sock.desc.family.is_some() {
            events.record(event(&n, &sock.desc, addr, result_name(&result)));
        }
        Reply::from_result(result)
    };
    if sock.desc.nonblocking || !may_block {
        return finish(sock).into();
    }
    Action::Defer(Box::pin(blocking(move || finish(sock))))
}

/// Runs blocking work on the runtime's blocking pool. Should the work itself fail (a panic
/// in the supervisor), the call is left to the kernel rather than left hanging.
pub async fn blocking(work: impl FnOnce() -> Reply + Send + 'static) -> Reply {
    match tokio::task::spawn_blocking(work).await {
        Ok(reply) => reply,
        Err(err) => {
            tracing::error!("supervisor task failed, letting the kernel run the call: {err}");
            Reply::Continue
        }
    }
}

/// Records a call that is left to the kernel (outcome unknown) and returns `Continue`.
pub fn leave_to_kernel(ctx: &Context, n: &Notification, sock: &AppSocket, addr: String) -> Action {
    if ctx.events.enabled() && sock.desc.family.is_some() {
        ctx.events
            .record(event(n, &sock.desc, addr, UNKNOWN.into()));
    }
    Reply::Continue.into()
}
