//! `bind(fd, addr, addrlen)` and `listen(fd, backlog)`.
//!
//! Both are re-issued on the supervisor's copy of the socket (neither blocks), so the app
//! gets the kernel's own outcome and the event records it; `listen` events carry the
//! socket's bound address. Unix sockets are left to the kernel: a bind there creates a file
//! relative to the app's cwd with the app's umask.
//!
//! Actions: `Fail(EBADF)`, `Continue`, or the performed call's result (inline).

use std::os::fd::AsFd;

use crate::action::{Action, Reply};
use crate::errno::Errno;
use crate::sockaddr::SockAddr;
use crate::supervisor::notification::Notification;
use crate::sys::socket as sys;

use super::socket::{describe_addr, leave_to_kernel, perform, AppSocket};
use super::Context;

/// Copies the app's fd, or says how to answer when that fails.
fn take_socket(ctx: &Context, n: &Notification, app_fd: i32) -> Result<AppSocket, Action> {
    let taken = n.take_fd(app_fd);
    if !ctx.still_pending(n) {
        return Err(Reply::Continue.into());
    }
    match taken {
        Ok(fd) => Ok(AppSocket::describe(fd, app_fd)),
        Err(Errno(libc::EBADF)) => Err(Reply::Fail(Errno(libc::EBADF)).into()),
        Err(err) => {
            tracing::debug!(
                "{}: cannot copy fd {app_fd} of thread {}: {err}; left to the kernel",
                n.call.name(),
                n.tid()
            );
            Err(Reply::Continue.into())
        }
    }
}

/// Handles one trapped bind.
pub fn handle_bind(ctx: &Context, n: &Notification) -> Action {
    let app_fd = n.arg_int(0);
    let len = n.arg_int(2);
    let addr = n.copy_addr(n.arg_ptr(1), len);
    let sock = match take_socket(ctx, n, app_fd) {
        Ok(sock) => sock,
        Err(action) => return action,
    };
    let shown = describe_addr(&addr);
    if sock.is_unix() {
        return leave_to_kernel(ctx, n, &sock, shown);
    }
    perform(ctx, n, sock, shown, false, move |sock| {
        sys::bind(sock.fd.as_fd(), addr.bytes(), len).map(|()| 0i64)
    })
}

/// Handles one trapped listen.
pub fn handle_listen(ctx: &Context, n: &Notification) -> Action {
    let app_fd = n.arg_int(0);
    let backlog = n.arg_int(1);
    let sock = match take_socket(ctx, n, app_fd) {
        Ok(sock) => sock,
        Err(action) => return action,
    };
    let local = sys::local_addr(sock.fd.as_fd())
        .ok()
        .and_then(|b| SockAddr::parse(&b))
        .map(|a| a.to_string())
        .unwrap_or_else(|| "(unbound)".into());
    if sock.is_unix() {
        return leave_to_kernel(ctx, n, &sock, local);
    }
    perform(ctx, n, sock, local, false, move |sock| {
        sys::listen(sock.fd.as_fd(), backlog).map(|()| 0i64)
    })
}
