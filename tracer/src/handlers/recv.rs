//! `recvfrom` with an address, `recvmsg`, `recvmmsg`, and `getpeername` — trapped only in
//! relaying sessions, where some of the app's sockets talk to relays on loopback while the
//! app must see the remote peers.
//!
//! - On a socket with a UDP association, sctrace receives the datagram itself (on its copy
//!   of the socket, with `MSG_DONTWAIT`; blocking sockets are awaited off the notification
//!   loop, bounded by SO_RCVTIMEO), writes the data, the translated source address, control
//!   data, lengths and flags into the app's buffers, and returns the length. Resolvers that
//!   check where a reply came from (glibc, musl, c-ares) then see the nameserver or peer
//!   they asked.
//! - `getpeername` on a redirected TCP socket or a connected UDP socket with an association
//!   returns the destination the app asked for, not the relay.
//! - Every other socket's calls run in the kernel unchanged.
//!
//! Writing into the app's memory is safe here because the call is then answered with a
//! value, never continued: the app can't observe a half-done call. A fault while writing is
//! answered with EFAULT, as the kernel would (the datagram is consumed, as with the kernel).

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use tokio::io::Interest;

use crate::action::{Action, Reply};
use crate::errno::Errno;
use crate::relay::udp::{app_form, UdpAssociation};
use crate::remote::sockets::Managed;
use crate::sockaddr::SockAddr;
use crate::supervisor::notification::Notification;
use crate::sys::memory;
use crate::sys::socket::{self as sys, ReceivedMessage};

use super::socket::AppSocket;
use super::Context;

/// Largest datagram received on the app's behalf (UDP's own limit).
const MAX_DATAGRAM: usize = 65_536;
/// Largest control buffer copied.
const MAX_CONTROL: usize = 4096;
/// The kernel's limit on iovec pieces.
const MAX_IOV: u64 = 1024;

/// Where the received message goes in the app's memory.
#[derive(Debug, Clone, Default)]
struct Destination {
    /// (address, length) of each buffer piece.
    iov: Vec<(u64, usize)>,
    /// Where the source address goes and the room there (None: not asked).
    name: Option<(u64, usize)>,
    /// Where the address length is written (`*addrlen` or `msg_namelen`).
    name_len_at: Option<u64>,
    /// Control buffer and its room.
    control: Option<(u64, usize)>,
    /// Where `msg_controllen` (u64) goes.
    control_len_at: Option<u64>,
    /// Where `msg_flags` (i32) goes.
    flags_at: Option<u64>,
    /// Where `msg_len` (u32) goes (recvmmsg).
    msg_len_at: Option<u64>,
}

impl Destination {
    fn capacity(&self) -> usize {
        self.iov
            .iter()
            .map(|(_, len)| len)
            .sum::<usize>()
            .min(MAX_DATAGRAM)
    }
}

/// The association of the app's socket, when it has one; `Err` says how to answer.
fn association(
    ctx: &Context,
    n: &Notification,
) -> Result<(AppSocket, Arc<UdpAssociation>, bool), Action> {
    let Some(remote) = &ctx.remote else {
        return Err(Reply::Continue.into());
    };
    let sock = AppSocket::take(ctx, n, n.arg_int(0))?;
    let cookie = sys::cookie(sock.fd.as_fd()).map_err(|_| Action::from(Reply::Continue))?;
    match remote.sockets.get(cookie) {
        Some(Managed::Udp { assoc, .. }) => {
            let v6 = sys::domain(sock.fd.as_fd()) == Ok(libc::AF_INET6);
            Ok((sock, assoc, v6))
        }
        _ => Err(Reply::Continue.into()),
    }
}

fn read_u64(n: &Notification, addr: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    memory::read_exact(n.tid(), addr, &mut b).ok()?;
    Some(u64::from_ne_bytes(b))
}

fn read_i32(n: &Notification, addr: u64) -> Option<i32> {
    let mut b = [0u8; 4];
    memory::read_exact(n.tid(), addr, &mut b).ok()?;
    Some(i32::from_ne_bytes(b))
}

/// Reads a `struct msghdr` at `at` into a destination. `None`: the kernel would fault.
fn msghdr_destination(n: &Notification, at: u64) -> Option<Destination> {
    let name = read_u64(n, at)?;
    let name_len = read_i32(n, at + 8)?;
    let iov = read_u64(n, at + 16)?;
    let iov_len = read_u64(n, at + 24)?;
    let control = read_u64(n, at + 32)?;
    let control_len = read_u64(n, at + 40)?;
    if iov_len > MAX_IOV || name_len < 0 {
        return None;
    }
    let raw = memory::read_vec(n.tid(), iov, iov_len as usize * 16).ok()?;
    let pieces = raw
        .chunks_exact(16)
        .map(|c| {
            let base = u64::from_ne_bytes(c[0..8].try_into().unwrap_or_default());
            let len = u64::from_ne_bytes(c[8..16].try_into().unwrap_or_default());
            (base, len as usize)
        })
        .collect();
    Some(Destination {
        iov: pieces,
        name: (name != 0).then_some((name, name_len as usize)),
        name_len_at: Some(at + 8),
        control: (control != 0 && control_len > 0)
            .then_some((control, (control_len as usize).min(MAX_CONTROL))),
        control_len_at: Some(at + 40),
        flags_at: Some(at + 48),
        msg_len_at: None,
    })
}

/// Handles `recvfrom(fd, buf, len, flags, src, addrlen)` with a source buffer.
pub fn handle_recvfrom(ctx: &Context, n: &Notification) -> Action {
    let (sock, assoc, v6) = match association(ctx, n) {
        Ok(found) => found,
        Err(action) => return action,
    };
    let addrlen_ptr = n.arg_ptr(5);
    let Some(room) = (if addrlen_ptr == 0 {
        Some(0)
    } else {
        read_i32(n, addrlen_ptr)
    }) else {
        return Reply::Continue.into();
    };
    if room < 0 {
        return Reply::Fail(Errno(libc::EINVAL)).into();
    }
    let dest = Destination {
        iov: vec![(n.arg_ptr(1), n.raw.args[2] as usize)],
        name: (addrlen_ptr != 0).then_some((n.arg_ptr(4), room as usize)),
        name_len_at: (addrlen_ptr != 0).then_some(addrlen_ptr),
        ..Destination::default()
    };
    receive(ctx, n, sock, assoc, v6, dest, n.arg_int(3))
}

/// Handles `recvmsg(fd, msg, flags)`.
pub fn handle_recvmsg(ctx: &Context, n: &Notification) -> Action {
    let (sock, assoc, v6) = match association(ctx, n) {
        Ok(found) => found,
        Err(action) => return action,
    };
    match msghdr_destination(n, n.arg_ptr(1)) {
        Some(dest) => receive(ctx, n, sock, assoc, v6, dest, n.arg_int(2)),
        None => Reply::Continue.into(),
    }
}

/// Handles `recvmmsg(fd, msgvec, vlen, flags, timeout)`: receives one message, which
/// recvmmsg may always return.
pub fn handle_recvmmsg(ctx: &Context, n: &Notification) -> Action {
    if n.raw.args[2] & 0xffff_ffff == 0 {
        return Reply::Continue.into();
    }
    let (sock, assoc, v6) = match association(ctx, n) {
        Ok(found) => found,
        Err(action) => return action,
    };
    let at = n.arg_ptr(1);
    match msghdr_destination(n, at) {
        Some(mut dest) => {
            dest.msg_len_at = Some(at + 56);
            // MSG_WAITFORONE is recvmmsg's own; the first message is awaited as usual.
            let flags = n.arg_int(3) & !libc::MSG_WAITFORONE;
            receive(ctx, n, sock, assoc, v6, dest, flags)
        }
        None => Reply::Continue.into(),
    }
}

fn receive(
    ctx: &Context,
    n: &Notification,
    sock: AppSocket,
    assoc: Arc<UdpAssociation>,
    v6: bool,
    dest: Destination,
    flags: i32,
) -> Action {
    if !ctx.still_pending(n) {
        return Reply::Continue.into();
    }
    let blocking = match sys::file_flags(sock.fd.as_fd()) {
        Ok(f) => f & libc::O_NONBLOCK == 0 && flags & libc::MSG_DONTWAIT == 0,
        Err(_) => return Reply::Continue.into(),
    };
    let control_room = dest.control.map(|(_, len)| len).unwrap_or(0);
    let attempt = sys::recvmsg(
        sock.fd.as_fd(),
        dest.capacity(),
        control_room,
        flags | libc::MSG_DONTWAIT,
    );
    let tid = n.tid();
    match attempt {
        Err(Errno(libc::EAGAIN)) if blocking => Action::Defer(Box::pin(async move {
            match wait_and_receive(sock.fd, dest.capacity(), control_room, flags).await {
                Ok(msg) => deliver(tid, &assoc, v6, &dest, msg),
                Err(err) => Reply::Fail(err),
            }
        })),
        Err(err) => Reply::Fail(err).into(),
        Ok(msg) => deliver(tid, &assoc, v6, &dest, msg).into(),
    }
}

/// Waits until the socket is readable, bounded by SO_RCVTIMEO (then EAGAIN), and receives.
async fn wait_and_receive(
    fd: OwnedFd,
    len: usize,
    control: usize,
    flags: i32,
) -> Result<ReceivedMessage, Errno> {
    let timeout = sys::receive_timeout(fd.as_fd()).ok().flatten();
    let watched = sys::watch(fd, Interest::READABLE).map_err(|e| Errno::from_io(&e))?;
    let wait = async {
        loop {
            let mut guard = watched.readable().await.map_err(|e| Errno::from_io(&e))?;
            match sys::recvmsg(
                watched.get_ref().as_fd(),
                len,
                control,
                flags | libc::MSG_DONTWAIT,
            ) {
                Err(Errno(libc::EAGAIN)) => guard.clear_ready(),
                other => return other,
            }
        }
    };
    match timeout {
        Some(limit) => tokio::time::timeout(limit, wait)
            .await
            .unwrap_or(Err(Errno(libc::EAGAIN))),
        None => wait.await,
    }
}

/// The source address as the app must see it.
fn translate(assoc: &UdpAssociation, v6: bool, name: &[u8]) -> Vec<u8> {
    match SockAddr::parse(name).and_then(|a| a.inet()) {
        Some(src) => match assoc.translate(src) {
            Some(peer) => SockAddr::encode_inet(app_form(peer, v6)),
            None => name.to_vec(),
        },
        None => name.to_vec(),
    }
}

/// Writes a received message into the app's buffers and makes the answer.
fn deliver(
    tid: u32,
    assoc: &UdpAssociation,
    v6: bool,
    dest: &Destination,
    msg: ReceivedMessage,
) -> Reply {
    let written = (|| -> std::io::Result<()> {
        let mut rest: &[u8] = &msg.data;
        for &(base, len) in &dest.iov {
            if rest.is_empty() {
                break;
            }
            let take = len.min(rest.len());
            memory::write_all(tid, base, &rest[..take])?;
            rest = &rest[take..];
        }
        if let Some((at, room)) = dest.name {
            let name = translate(assoc, v6, &msg.name);
            memory::write_all(tid, at, &name[..room.min(name.len())])?;
            if let Some(len_at) = dest.name_len_at {
                memory::write_all(tid, len_at, &(name.len() as u32).to_ne_bytes())?;
            }
        } else if let Some(len_at) = dest.name_len_at.filter(|_| dest.flags_at.is_some()) {
            // recvmsg without a name buffer: msg_namelen becomes 0.
            memory::write_all(tid, len_at, &0u32.to_ne_bytes())?;
        }
        if let Some(len_at) = dest.control_len_at {
            if let Some((at, room)) = dest.control {
                let take = room.min(msg.control.len());
                memory::write_all(tid, at, &msg.control[..take])?;
                memory::write_all(tid, len_at, &(take as u64).to_ne_bytes())?;
            } else {
                memory::write_all(tid, len_at, &0u64.to_ne_bytes())?;
            }
        }
        if let Some(at) = dest.flags_at {
            memory::write_all(tid, at, &msg.flags.to_ne_bytes())?;
        }
        if let Some(at) = dest.msg_len_at {
            memory::write_all(tid, at, &(msg.returned as u32).to_ne_bytes())?;
        }
        Ok(())
    })();
    match written {
        Ok(()) if dest.msg_len_at.is_some() => Reply::Return(1),
        Ok(()) => Reply::Return(msg.returned as i64),
        Err(_) => Reply::Fail(Errno(libc::EFAULT)),
    }
}

/// Handles `getpeername(fd, addr, addrlen)`.
pub fn handle_getpeername(ctx: &Context, n: &Notification) -> Action {
    let Some(remote) = &ctx.remote else {
        return Reply::Continue.into();
    };
    let sock = match AppSocket::take(ctx, n, n.arg_int(0)) {
        Ok(sock) => sock,
        Err(action) => return action,
    };
    let peer: Option<SocketAddr> = sys::cookie(sock.fd.as_fd())
        .ok()
        .and_then(|c| remote.sockets.peer_of(c));
    let Some(peer) = peer else {
        return Reply::Continue.into();
    };
    let v6 = sys::domain(sock.fd.as_fd()) == Ok(libc::AF_INET6);
    let (at, len_at) = (n.arg_ptr(1), n.arg_ptr(2));
    let Some(room) = read_i32(n, len_at) else {
        return Reply::Fail(Errno(libc::EFAULT)).into();
    };
    if room < 0 {
        return Reply::Fail(Errno(libc::EINVAL)).into();
    }
    let bytes = SockAddr::encode_inet(app_form(peer, v6));
    let written = memory::write_all(n.tid(), at, &bytes[..(room as usize).min(bytes.len())])
        .and_then(|()| memory::write_all(n.tid(), len_at, &(bytes.len() as u32).to_ne_bytes()));
    match written {
        Ok(()) => Reply::Return(0).into(),
        Err(_) => Reply::Fail(Errno(libc::EFAULT)).into(),
    }
}
