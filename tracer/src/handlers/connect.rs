//! `connect(fd, addr, addrlen)`.
//!
//! The call is re-issued by the supervisor on its copy of the app's socket (same open file
//! description), so the app gets exactly the kernel's outcome and sctrace sees it: `ok`,
//! `ECONNREFUSED`, `EINPROGRESS` on non-blocking sockets, and for bad arguments the same
//! errno in the same order of checks (EBADF, then EINVAL/EFAULT for the address, then
//! ENOTSOCK). Unix sockets are left to the kernel (see `AppSocket::is_unix`).
//!
//! Actions: `Fail(EBADF)`, `Continue` (Unix sockets, unreachable caller), or the performed
//! call's result — inline for non-blocking sockets, deferred otherwise.

use crate::action::{Action, Reply};
use crate::errno::Errno;
use crate::supervisor::notification::Notification;
use crate::sys::socket as sys;

use super::socket::{describe_addr, leave_to_kernel, perform, AppSocket};
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
    perform(ctx, n, sock, shown, true, move |sock| {
        use std::os::fd::AsFd;
        sys::connect(sock.fd.as_fd(), addr.bytes(), len).map(|()| 0i64)
    })
}
