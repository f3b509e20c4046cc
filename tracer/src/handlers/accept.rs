//! `accept` and `accept4` on a listening socket whose port is mirrored or stolen from the
//! target (see `remote::incoming`). Connections sctrace delivers come from sctrace itself on
//! loopback; the app must see the remote client instead. So sctrace accepts on its copy of
//! the listener, writes the client's address into the app's buffer, and installs the new
//! socket in the app as the call's result (`SECCOMP_IOCTL_NOTIF_ADDFD` with
//! `SECCOMP_ADDFD_FLAG_SEND`). Its `getpeername` shows the client too. Connections that did not
//! come through sctrace (a local client) keep their own address.
//!
//! A blocking accept with nothing to accept waits off the notification loop. Accepts on
//! every other listener run in the kernel.
//!
//! Actions: `Continue`, `Fail(errno)`, `InstallFd` — now, or deferred until a connection comes.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use tokio::io::Interest;

use crate::action::{Action, Reply};
use crate::errno::Errno;
use crate::remote::sockets::Managed;
use crate::remote::Remote;
use crate::sockaddr::SockAddr;
use crate::supervisor::notification::{Notification, Syscall};
use crate::sys::memory;
use crate::sys::socket as sys;

use super::socket::AppSocket;
use super::Context;

/// Where the accepted peer's address goes in the app: (address buffer, length pointer).
#[derive(Debug, Clone, Copy)]
struct Destination {
    addr: u64,
    len: u64,
}

/// Handles one trapped accept or accept4.
pub fn handle(ctx: &Context, n: &Notification) -> Action {
    let Some(remote) = ctx.remote.as_ref().filter(|r| r.incoming.enabled()) else {
        return Reply::Continue.into();
    };
    let sock = match AppSocket::take(ctx, n, n.arg_int(0)) {
        Ok(sock) => sock,
        Err(action) => return action,
    };
    let subscribed = sys::cookie(sock.fd.as_fd()).is_ok_and(|c| remote.incoming.is_subscribed(c));
    if !subscribed {
        return Reply::Continue.into();
    }
    let flags = if n.call == Syscall::Accept4 {
        n.arg_int(3)
    } else {
        0
    };
    let dest = Destination {
        addr: n.arg_ptr(1),
        len: n.arg_ptr(2),
    };
    let listener_flags = match sys::file_flags(sock.fd.as_fd()) {
        Ok(f) => f,
        Err(_) => return Reply::Continue.into(),
    };
    let tid = n.tid();
    match accept_without_blocking(sock.fd.as_fd(), listener_flags, flags) {
        Err(Errno(libc::EAGAIN)) if listener_flags & libc::O_NONBLOCK == 0 => {
            let remote = Arc::clone(remote);
            Action::Defer(Box::pin(async move {
                match wait_and_accept(sock.fd, listener_flags, flags).await {
                    Ok(accepted) => deliver(&remote, tid, dest, flags, accepted),
                    Err(err) => Reply::Fail(err),
                }
            }))
        }
        Err(err) => Reply::Fail(err).into(),
        Ok(accepted) => deliver(remote, tid, dest, flags, accepted).into(),
    }
}

/// accept4 with the listener's O_NONBLOCK set for the call (restored after).
fn accept_without_blocking(
    fd: BorrowedFd<'_>,
    listener_flags: i32,
    flags: i32,
) -> Result<(OwnedFd, Vec<u8>), Errno> {
    if listener_flags & libc::O_NONBLOCK != 0 {
        return sys::accept4(fd, flags);
    }
    sys::set_file_flags(fd, listener_flags | libc::O_NONBLOCK)?;
    let accepted = sys::accept4(fd, flags);
    let _ = sys::set_file_flags(fd, listener_flags);
    accepted
}

async fn wait_and_accept(
    fd: OwnedFd,
    listener_flags: i32,
    flags: i32,
) -> Result<(OwnedFd, Vec<u8>), Errno> {
    let watched = sys::watch(fd, Interest::READABLE).map_err(|e| Errno::from_io(&e))?;
    loop {
        let mut guard = watched.readable().await.map_err(|e| Errno::from_io(&e))?;
        match accept_without_blocking(watched.get_ref().as_fd(), listener_flags, flags) {
            Err(Errno(libc::EAGAIN)) => guard.clear_ready(),
            other => return other,
        }
    }
}

/// Writes the peer's address (the remote client's, for connections sctrace delivered) and
/// makes the answer that installs the socket.
fn deliver(
    remote: &Remote,
    tid: u32,
    dest: Destination,
    flags: i32,
    (fd, peer): (OwnedFd, Vec<u8>),
) -> Reply {
    let peer_addr = SockAddr::parse(&peer).and_then(|a| a.inet());
    let delivered = peer_addr.and_then(|p| remote.incoming.delivered(p));
    let shown = match (delivered, &peer_addr) {
        (Some(d), Some(p)) => {
            SockAddr::encode_inet(crate::relay::udp::app_form(d.client, p.is_ipv6()))
        }
        _ => peer,
    };
    if let Some(d) = delivered {
        if let Ok(cookie) = sys::cookie(fd.as_fd()) {
            remote
                .sockets
                .insert(cookie, Managed::Tcp { peer: d.client });
        }
    }
    if dest.addr != 0 && dest.len != 0 {
        let mut room = [0u8; 4];
        let written = memory::read_exact(tid, dest.len, &mut room).and_then(|()| {
            let room = i32::from_ne_bytes(room).max(0) as usize;
            memory::write_all(tid, dest.addr, &shown[..room.min(shown.len())])?;
            memory::write_all(tid, dest.len, &(shown.len() as u32).to_ne_bytes())
        });
        if written.is_err() {
            return Reply::Fail(Errno(libc::EFAULT));
        }
    }
    Reply::InstallFd {
        fd,
        cloexec: flags & libc::SOCK_CLOEXEC != 0,
    }
}
