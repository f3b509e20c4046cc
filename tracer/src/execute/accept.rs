//! Emulated `accept`/`accept4` on a listener whose port is subscribed in the target.
//! sctrace accepts on its copy of the listener, writes the client's address into the app's
//! buffer (the remote client's, for connections sctrace delivered; a local client keeps its
//! own), and installs the new socket in the app as the call's result
//! (`SECCOMP_IOCTL_NOTIF_ADDFD` with `SECCOMP_ADDFD_FLAG_SEND`, done by the supervisor when
//! it answers). Its `getpeername` shows the client too. A blocking accept with nothing to
//! accept waits off the notification loop, parked (`parked`, and with `remote::incoming`):
//! a connection the local agent hands over as it is answers it from the thread that
//! received it ([`answer_parked`]), without a placeholder connection or a runtime worker's
//! turn; a client of the listener itself, from the parked accepts' task.

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
use super::parked::{AcceptLocal, Parked, ParkedAccepts};
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
#[allow(clippy::too_many_arguments)]
pub fn accept(
    remote: &Arc<Remote>,
    parked: &Arc<ParkedAccepts>,
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
            if park(remote, parked, &sock, &call, dest, flags, listener_flags) {
                return Action::Parked;
            }
            let remote = Arc::clone(remote);
            Action::Defer(Box::pin(async move {
                let watched = match sock.fd.try_clone() {
                    Ok(fd) => fd,
                    Err(err) => return Reply::Fail(Errno::from_io(&err)),
                };
                match wait_and_accept(&call, watched, listener_flags, flags).await {
                    Ok(accepted) => install(
                        deliver(&remote, sock.fd.as_fd(), dest, flags, accepted),
                        flags,
                    ),
                    Err(err) => Reply::Fail(err),
                }
            }))
        }
        Err(err) => Reply::Fail(err).into(),
        Ok(accepted) => install(
            deliver(remote, sock.fd.as_fd(), dest, flags, accepted),
            flags,
        )
        .into(),
    }
}

/// The answer that installs `accepted` as the accept's result.
fn install(accepted: Result<OwnedFd, Errno>, flags: i32) -> Reply {
    match accepted {
        Ok(fd) => Reply::InstallFd {
            fd,
            cloexec: flags & libc::SOCK_CLOEXEC != 0,
            then: None,
        },
        Err(err) => Reply::Fail(err),
    }
}

/// Makes the client's own socket what the app's accept returns: its O_NONBLOCK as the
/// accept's flags say, and the options the app set on its listener (which an accepted
/// socket inherits).
fn adopt(listener: BorrowedFd<'_>, client: BorrowedFd<'_>, flags: i32) -> Result<(), Errno> {
    adopt_with(&direct::options_to_carry(listener), client, flags)
}

/// [`adopt`] with the listener's options read before.
fn adopt_with(
    options: &[direct::Setting],
    client: BorrowedFd<'_>,
    flags: i32,
) -> Result<(), Errno> {
    let nonblocking = if flags & libc::SOCK_NONBLOCK != 0 {
        libc::O_NONBLOCK
    } else {
        0
    };
    sys::set_file_flags(client, libc::O_RDWR | nonblocking)?;
    direct::apply_options(options, client);
    Ok(())
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
/// for a call that is gone would be lost to the app).
async fn wait_and_accept(
    call: &CallRef,
    fd: OwnedFd,
    listener_flags: i32,
    flags: i32,
) -> Result<(OwnedFd, Vec<u8>), Errno> {
    let watched = sys::watch(fd, Interest::READABLE).map_err(|e| Errno::from_io(&e))?;
    loop {
        let mut guard = watched.readable().await.map_err(|e| Errno::from_io(&e))?;
        if !call.pending() {
            return Err(Errno(libc::EINTR));
        }
        match accept_without_blocking(watched.get_ref().as_fd(), listener_flags, flags) {
            Err(Errno(libc::EAGAIN)) => guard.clear_ready(),
            other => return other,
        }
    }
}

/// Parks a blocking accept (see `parked`) for an offered connection or a client of the
/// listener to answer; false when it can't be (no address or copy of the listener), and
/// the accept then waits in deferred work.
fn park(
    remote: &Arc<Remote>,
    parked: &Arc<ParkedAccepts>,
    sock: &AppSocket,
    call: &CallRef,
    dest: Destination,
    flags: i32,
    listener_flags: i32,
) -> bool {
    let (Some(bound), Ok(listener), Some(key)) =
        (sock.local_inet(), sock.fd.try_clone(), parked.reserve())
    else {
        return false;
    };
    // Read now, while the app waits anyway: not when a client waits for its answer.
    let options = direct::options_to_carry(sock.fd.as_fd());
    let (me, answering, finishing) = (Arc::clone(remote), call.clone(), Arc::downgrade(parked));
    let waiting = WaitingAccept::new(
        bound,
        Box::new(move |client, delivered| {
            let answered = answer_parked(&me, &options, &answering, dest, flags, client, delivered);
            if let Some(parked) = finishing.upgrade() {
                parked.finish(key);
            }
            answered
        }),
    );
    let me = Arc::clone(remote);
    let local: AcceptLocal = Box::new(move |listener| {
        let accepted = accept_without_blocking(listener, listener_flags, flags)?;
        let fd = deliver(&me, listener, dest, flags, accepted)?;
        Ok((fd, flags & libc::SOCK_CLOEXEC != 0))
    });
    parked.park(
        key,
        Parked {
            waiting,
            call: call.clone(),
            tid: dest.tid,
            listener,
            local,
        },
    )
}

/// Answers a parked accept with an offered client socket, on the thread that received the
/// offer: the socket as the accept would make it, the client's address for the app, the
/// socket installed as the call's result. The socket comes back when the call went
/// meanwhile (nothing was installed: the next accept takes it).
fn answer_parked(
    remote: &Remote,
    options: &[direct::Setting],
    call: &CallRef,
    dest: Destination,
    flags: i32,
    client: OwnedFd,
    delivered: Delivered,
) -> Result<(), OwnedFd> {
    if !call.pending() || adopt_with(options, client.as_fd(), flags).is_err() {
        return Err(client);
    }
    let v6 = sys::domain(client.as_fd()) == Ok(libc::AF_INET6);
    let shown = SockAddr::encode_inet(in_family(delivered.client, v6));
    if write_peer(dest, &shown).is_err() {
        // As the kernel's accept with a bad address buffer: the connection is lost.
        let _ = call.answer_error(libc::EFAULT);
        return Ok(());
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
    if matches!(installed, Ok(Some(_))) {
        // The app holds its own copy now; ours closes.
        return Ok(());
    }
    if let Some(id) = id {
        remote.sockets.remove(id);
    }
    Err(client)
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
/// gives the socket to install.
fn deliver(
    remote: &Remote,
    listener: BorrowedFd<'_>,
    dest: Destination,
    flags: i32,
    (fd, peer): (OwnedFd, Vec<u8>),
) -> Result<OwnedFd, Errno> {
    let peer_addr = SockAddr::parse(&peer).and_then(|a| a.inet());
    let delivered = peer_addr.and_then(|p| remote.incoming.delivered(p));
    // A stolen connection offered as it is: the app gets the client's own socket (in the
    // target) instead of the placeholder, which closes.
    let fd = match peer_addr.and_then(|p| remote.incoming.take_direct(p)) {
        Some(client) => match adopt(listener, client.as_fd(), flags) {
            Ok(()) => client,
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
        return Err(Errno(libc::EFAULT));
    }
    Ok(fd)
}
