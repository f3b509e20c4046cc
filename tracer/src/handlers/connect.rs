//! `connect(fd, addr, addrlen)`.
//!
//! The call is re-issued by the supervisor on its copy of the app's socket (same open file
//! description), so the app gets exactly the kernel's outcome and sctrace sees it: `ok`,
//! `ECONNREFUSED`, `EINPROGRESS` on non-blocking sockets, and for bad arguments the same
//! errno in the same order of checks (EBADF, then EINVAL/EFAULT for the address, then
//! ENOTSOCK). Unix sockets are left to the kernel (see `AppSocket::is_unix`).
//!
//! A blocking connect is started without blocking (O_NONBLOCK is set on the shared file
//! description for the duration of the call and restored at once): loopback connects then
//! complete inline, and others are awaited off the notification loop, bounded by the
//! socket's SO_SNDTIMEO as the kernel would (EINPROGRESS when it expires). The flag is
//! visible to the app's other threads for those few microseconds; an app that changes the
//! flags of a socket while another thread connects it could see its change undone.
//!
//! Actions: `Fail(EBADF)`, `Continue` (Unix sockets, unreachable caller), or the connect's
//! outcome — now, or deferred until the connection completes.

use std::os::fd::{AsFd, OwnedFd};

use tokio::io::Interest;

use crate::action::{Action, Reply};
use crate::errno::Errno;
use crate::supervisor::notification::Notification;
use crate::sys::socket as sys;

use super::socket::{describe_addr, event, leave_to_kernel, result_name, AppSocket, SocketDesc};
use super::Context;

/// Handles one trapped connect.
pub fn handle(ctx: &Context, n: &Notification) -> Action {
    let app_fd = n.arg_int(0);
    let len = n.arg_int(2);
    let addr = n.copy_addr(n.arg_ptr(1), len);
    let taken = n.take_fd(app_fd);
    if !ctx.still_pending(n) {
        return Reply::Continue.into();
    }
    let sock = match taken {
        Ok(fd) => AppSocket::describe(fd, app_fd),
        Err(Errno(libc::EBADF)) => return Reply::Fail(Errno(libc::EBADF)).into(),
        Err(err) => {
            tracing::debug!(
                "connect: cannot copy fd {app_fd} of thread {}: {err}; left to the kernel",
                n.tid()
            );
            return Reply::Continue.into();
        }
    };
    let shown = describe_addr(&addr);
    if sock.is_unix() {
        return leave_to_kernel(ctx, n, &sock, shown);
    }
    let finished = Finish {
        ctx_events: ctx.events.clone(),
        n: *n,
        addr: shown,
    };
    if sock.desc.nonblocking {
        let result = sys::connect(sock.fd.as_fd(), addr.bytes(), len);
        return finished.reply(&sock.desc, result).into();
    }
    let started = sys::set_nonblocking(sock.fd.as_fd(), true).and_then(|()| {
        let result = sys::connect(sock.fd.as_fd(), addr.bytes(), len);
        let _ = sys::set_nonblocking(sock.fd.as_fd(), false);
        result
    });
    match started {
        Err(Errno(libc::EINPROGRESS | libc::EALREADY)) => {
            if let Ok(true) = sys::writable_now(sock.fd.as_fd()) {
                let result = sys::take_error(sock.fd.as_fd());
                return finished.reply(&sock.desc, result).into();
            }
            let desc = sock.desc;
            Action::Defer(Box::pin(async move {
                let result = wait_connected(sock.fd).await;
                finished.reply(&desc, result)
            }))
        }
        other => finished.reply(&sock.desc, other).into(),
    }
}

/// Records the outcome and turns it into the answer.
struct Finish {
    ctx_events: crate::events::EventSink,
    n: Notification,
    addr: String,
}

impl Finish {
    fn reply(self, sock: &SocketDesc, result: Result<(), Errno>) -> Reply {
        if self.ctx_events.enabled() && sock.family.is_some() {
            self.ctx_events
                .record(event(&self.n, sock, self.addr, result_name(&result)));
        }
        Reply::from_result(result.map(|()| 0i64))
    }
}

/// Waits until a started connect completes, as a blocking connect would: bounded by
/// SO_SNDTIMEO (then EINPROGRESS), else until the kernel gives up (ETIMEDOUT).
async fn wait_connected(fd: OwnedFd) -> Result<(), Errno> {
    let timeout = sys::send_timeout(fd.as_fd()).ok().flatten();
    let watched = sys::watch(fd, Interest::WRITABLE).map_err(|err| {
        tracing::error!("cannot watch a connecting socket: {err}");
        Errno::from_io(&err)
    })?;
    let wait = async {
        let mut guard = watched
            .writable()
            .await
            .map_err(|err| Errno::from_io(&err))?;
        guard.retain_ready();
        sys::take_error(watched.get_ref().as_fd())
    };
    match timeout {
        Some(limit) => tokio::time::timeout(limit, wait)
            .await
            .unwrap_or(Err(Errno(libc::EINPROGRESS))),
        None => wait.await,
    }
}
