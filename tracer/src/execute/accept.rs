//! Emulated `accept`/`accept4` on a listener whose port is subscribed in the target.
//! sctrace accepts on its copy of the listener, writes the client's address into the app's
//! buffer (the remote client's, for connections sctrace delivered; a local client keeps its
//! own), and installs the new socket in the app as the call's result
//! (`SECCOMP_IOCTL_NOTIF_ADDFD` with `SECCOMP_ADDFD_FLAG_SEND`, done by the supervisor when
//! it answers). Its `getpeername` shows the client too. A blocking accept with nothing to
//! accept waits off the notification loop, parked with `remote::incoming`: a connection
//! the local agent offers as it is answers it from the thread that received the offer
//! ([`answer_parked`]), without a placeholder connection or a runtime worker's turn.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use tokio::io::Interest;

use crate::errno::Errno;
use crate::plan::Reply;
use crate::remote::incoming::{Delivered, WaitingAccept};
use crate::remote::sockets::Managed;
use crate::remote::Remote;
use crate::sockaddr::{in_family, SockAddr};
use crate::sys::memory;
use crate::sys::socket as sys;
use crate::trap::socket::AppSocket;
use crate::trap::CallRef;

use super::direct;
use super::receive::write_sockaddr;
use super::Action;

/// Where the accepted peer's address goes in the app.
#[derive(Debug, Clone, Copy)]
struct Destination {
    tid: u32,
    at: u64,
    len_at: u64,
}

/// Accepts one connection for the app.
pub fn accept(
    remote: &Arc<Remote>,
    call: CallRef,
    tid: u32,
    sock: AppSocket,
    flags: i32,
    at: u64,
    len_at: u64,
) -> Action {
    let dest = Destination { tid, at, len_at };
    let listener_flags = match sock.file_flags() {
        Ok(f) => f,
        Err(_) => return Reply::Continue.into(),
    };
    match accept_without_blocking(sock.fd.as_fd(), listener_flags, flags) {
        Err(Errno(libc::EAGAIN)) if listener_flags & libc::O_NONBLOCK == 0 => {
            let remote = Arc::clone(remote);
            let parked = park(&remote, &sock, &call, dest, flags);
            Action::Defer(Box::pin(async move {
                let _parked = parked.as_ref().map(|p| Unpark(&remote, p));
                let watched = match sock.fd.try_clone() {
                    Ok(fd) => fd,
                    Err(err) => return Reply::Fail(Errno::from_io(&err)),
                };
                let parked = parked.as_deref();
                match wait_and_accept(&call, watched, listener_flags, flags, parked).await {
                    Ok(accepted) => deliver(&remote, sock.fd.as_fd(), dest, flags, accepted),
                    Err(err) => Reply::Fail(err),
                }
            }))
        }
        Err(err) => Reply::Fail(err).into(),
        Ok(accepted) => deliver(remote, sock.fd.as_fd(), dest, flags, accepted).into(),
    }
}

/// Makes the client's own socket what the app's accept returns: its O_NONBLOCK as the
/// accept's flags say, and the options the app set on its listener (which an accepted
/// socket inherits).
fn adopt(listener: BorrowedFd<'_>, client: OwnedFd, flags: i32) -> Result<OwnedFd, Errno> {
    adopt_with(&direct::options_to_carry(listener), client, flags)
}

/// [`adopt`] with the listener's options read before.
fn adopt_with(options: &[direct::Setting], client: OwnedFd, flags: i32) -> Result<OwnedFd, Errno> {
    let nonblocking = if flags & libc::SOCK_NONBLOCK != 0 {
        libc::O_NONBLOCK
    } else {
        0
    };
    sys::set_file_flags(client.as_fd(), libc::O_RDWR | nonblocking)?;
    direct::apply_options(options, client.as_fd());
    Ok(client)
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

/// Waits for a connection and takes it, only while the call still waits for it (one taken
/// for a call that is gone would be lost to the app) and no offered connection answered it
/// (`parked`): then the work waits on until the supervisor sees the call gone.
async fn wait_and_accept(
    call: &CallRef,
    fd: OwnedFd,
    listener_flags: i32,
    flags: i32,
    parked: Option<&WaitingAccept>,
) -> Result<(OwnedFd, Vec<u8>), Errno> {
    let watched = sys::watch(fd, Interest::READABLE).map_err(|e| Errno::from_io(&e))?;
    loop {
        let mut guard = watched.readable().await.map_err(|e| Errno::from_io(&e))?;
        if parked.is_some_and(|p| !p.claim()) {
            return std::future::pending().await;
        }
        if !call.pending() {
            return Err(Errno(libc::EINTR));
        }
        match accept_without_blocking(watched.get_ref().as_fd(), listener_flags, flags) {
            Err(Errno(libc::EAGAIN)) => {
                if let Some(parked) = parked {
                    parked.release();
                }
                guard.clear_ready()
            }
            other => return other,
        }
    }
}

/// Parks a blocking accept with `remote::incoming` so that an offered connection can
/// answer it ([`answer_parked`]); `None` when the listener's address or a copy of it can't
/// be had (the accept then only waits).
fn park(
    remote: &Arc<Remote>,
    sock: &AppSocket,
    call: &CallRef,
    dest: Destination,
    flags: i32,
) -> Option<Arc<WaitingAccept>> {
    let bound = sock.local_inet()?;
    // Read now, while the app waits anyway: not when a client waits for its answer.
    let options = direct::options_to_carry(sock.fd.as_fd());
    let (me, call) = (Arc::clone(remote), call.clone());
    let parked = WaitingAccept::new(
        bound,
        Box::new(move |client, delivered| {
            answer_parked(&me, &options, &call, dest, flags, client, delivered)
        }),
    );
    remote.incoming.park(&parked);
    Some(parked)
}

/// Forgets a parked accept when its work ends (answered, or dropped with its call).
struct Unpark<'a>(&'a Remote, &'a Arc<WaitingAccept>);

impl Drop for Unpark<'_> {
    fn drop(&mut self) {
        self.0.incoming.unpark(self.1);
    }
}

/// Answers a parked accept with an offered client socket, on the thread that received the
/// offer: the socket as the accept would make it, the client's address for the app, the
/// socket installed as the call's result. False when the call went meanwhile (nothing was
/// installed; the caller keeps a copy of the client's socket for the next accept).
fn answer_parked(
    remote: &Remote,
    options: &[direct::Setting],
    call: &CallRef,
    dest: Destination,
    flags: i32,
    client: OwnedFd,
    delivered: Delivered,
) -> bool {
    if !call.pending() {
        return false;
    }
    let Ok(client) = adopt_with(options, client, flags) else {
        return false;
    };
    let v6 = sys::domain(client.as_fd()) == Ok(libc::AF_INET6);
    let shown = SockAddr::encode_inet(in_family(delivered.client, v6));
    if write_peer(dest, &shown).is_err() {
        // As the kernel's accept with a bad address buffer: the connection is lost.
        let _ = call.answer_error(libc::EFAULT);
        return true;
    }
    let id = sys::inode(client.as_fd()).ok();
    if let Some(id) = id {
        remote.sockets.insert(
            id,
            Managed::Tcp {
                peer: in_family(delivered.client, v6),
                local: in_family(delivered.server, v6),
            },
        );
    }
    let installed = call.answer_with_fd(client.as_fd(), flags & libc::SOCK_CLOEXEC != 0);
    let taken = matches!(installed, Ok(Some(_)));
    if !taken {
        if let Some(id) = id {
            remote.sockets.remove(id);
        }
    }
    taken
}

/// Writes the peer's address for the app's accept (nothing when it passed no buffer).
fn write_peer(dest: Destination, shown: &[u8]) -> std::io::Result<()> {
    if dest.at == 0 || dest.len_at == 0 {
        return Ok(());
    }
    let mut room = [0u8; 4];
    memory::read_exact(dest.tid, dest.len_at, &mut room)?;
    let room = i32::from_ne_bytes(room).max(0) as usize;
    write_sockaddr(dest.tid, shown, dest.at, room, Some(dest.len_at))
}

/// Writes the peer's address (the remote client's, for connections sctrace delivered) and
/// makes the answer that installs the socket.
fn deliver(
    remote: &Remote,
    listener: BorrowedFd<'_>,
    dest: Destination,
    flags: i32,
    (fd, peer): (OwnedFd, Vec<u8>),
) -> Reply {
    let peer_addr = SockAddr::parse(&peer).and_then(|a| a.inet());
    let delivered = peer_addr.and_then(|p| remote.incoming.delivered(p));
    // A stolen connection offered as it is: the app gets the client's own socket (in the
    // target) instead of the placeholder, which closes.
    let fd = match peer_addr.and_then(|p| remote.incoming.take_direct(p)) {
        Some(client) => match adopt(listener, client, flags) {
            Ok(client) => client,
            Err(err) => {
                tracing::debug!("cannot hand a stolen connection over as it is: {err}");
                fd
            }
        },
        None => fd,
    };
    let shown = match (delivered, &peer_addr) {
        (Some(d), Some(p)) => SockAddr::encode_inet(in_family(d.client, p.is_ipv6())),
        _ => peer,
    };
    if let Some(d) = delivered {
        if let Ok(id) = sys::inode(fd.as_fd()) {
            // In the accepted socket's family, as its getpeername/getsockname show them.
            let v6 = sys::domain(fd.as_fd()) == Ok(libc::AF_INET6);
            remote.sockets.insert(
                id,
                Managed::Tcp {
                    peer: in_family(d.client, v6),
                    local: in_family(d.server, v6),
                },
            );
        }
    }
    if write_peer(dest, &shown).is_err() {
        return Reply::Fail(Errno(libc::EFAULT));
    }
    Reply::InstallFd {
        fd,
        cloexec: flags & libc::SOCK_CLOEXEC != 0,
        then: None,
    }
}
