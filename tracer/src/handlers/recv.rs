//! `recvfrom` with an address, `recvmsg`, `recvmmsg`, and `getpeername` — trapped only in
//! relaying sessions, where some of the app's sockets talk to relays on loopback while the
//! app must see the remote peers.
//!
//! - On a socket with a UDP association, the receive is emulated (the executor receives the
//!   datagram on the app's socket and writes it, with the remote peer as its source, into
//!   the app's buffers). Resolvers that check where a reply came from (glibc, musl, c-ares)
//!   then see the nameserver or peer they asked.
//! - `getpeername` on a redirected TCP socket or a connected UDP socket with an association
//!   shows the destination the app asked for, not the relay; `getsockname` on a relayed or
//!   delivered TCP connection shows its address in the target, not on loopback.
//! - Every other socket's calls run in the kernel unchanged.
//!
//! Plans: `Answer` (`Continue`, EBADF, EINVAL for a negative address length),
//! `ShowAddress`, or work: `Receive`.
//!
//! `getpeername`/`getsockname` need only the socket's identity: in container mode it is
//! read without a copy, so they also work on connections whose copy sctrace released.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::errno::Errno;
use crate::plan::{Plan, Reply, Work};
use crate::relay::udp::UdpAssociation;
use crate::remote::sockets::Managed;
use crate::remote::Remote;
use crate::trap::msghdr::RecvBuffers;
use crate::trap::socket::AppSocket;
use crate::trap::Notification;

use super::Context;

/// The app's socket and its association, when it has one; `Err` says how to answer.
fn association(ctx: &Context, n: &Notification) -> Result<(AppSocket, Arc<UdpAssociation>), Reply> {
    let Some(remote) = &ctx.remote else {
        return Err(Reply::Continue);
    };
    let sock = ctx.take_socket(n, n.arg_int(0), None)?;
    let id = sock.identity().map_err(|_| Reply::Continue)?;
    match remote.sockets.get(id) {
        Some(Managed::Udp { assoc, .. }) => Ok((sock, assoc)),
        _ => Err(Reply::Continue),
    }
}

/// The receive into `buffers`, emulated, once the call is known to be still pending
/// (its buffers were read after the socket was taken).
fn receive(
    ctx: &Context,
    n: &Notification,
    (sock, assoc): (AppSocket, Arc<UdpAssociation>),
    buffers: RecvBuffers,
    flags: i32,
) -> Plan {
    if !ctx.still_pending(n) {
        return Reply::Continue.into();
    }
    Plan::Socket {
        sock,
        record: None,
        work: Work::Receive {
            call: ctx.call_ref(n),
            tid: n.tid(),
            assoc,
            buffers,
            flags,
        },
    }
}

/// Decides `recvfrom(fd, buf, len, flags, src, addrlen)` with a source buffer.
pub fn decide_recvfrom(ctx: &Context, n: &Notification) -> Plan {
    let managed = match association(ctx, n) {
        Ok(found) => found,
        Err(reply) => return reply.into(),
    };
    let addrlen_ptr = n.arg_ptr(5);
    let room = if addrlen_ptr == 0 {
        Some(0)
    } else {
        n.read_i32(addrlen_ptr)
    };
    let Some(room) = room else {
        return Reply::Continue.into();
    };
    if room < 0 {
        return Reply::Fail(Errno(libc::EINVAL)).into();
    }
    let buffers = RecvBuffers::recvfrom(
        n.arg_ptr(1),
        n.arg_u64(2) as usize,
        n.arg_ptr(4),
        addrlen_ptr,
        room,
    );
    receive(ctx, n, managed, buffers, n.arg_int(3))
}

/// Decides `recvmsg(fd, msg, flags)`.
pub fn decide_recvmsg(ctx: &Context, n: &Notification) -> Plan {
    let managed = match association(ctx, n) {
        Ok(found) => found,
        Err(reply) => return reply.into(),
    };
    match RecvBuffers::msghdr(n, n.arg_ptr(1)) {
        Some(buffers) => receive(ctx, n, managed, buffers, n.arg_int(2)),
        None => Reply::Continue.into(),
    }
}

/// Decides `recvmmsg(fd, msgvec, vlen, flags, timeout)`: one message is received, which
/// recvmmsg may always return.
pub fn decide_recvmmsg(ctx: &Context, n: &Notification) -> Plan {
    if n.arg_u64(2) & 0xffff_ffff == 0 {
        return Reply::Continue.into();
    }
    let managed = match association(ctx, n) {
        Ok(found) => found,
        Err(reply) => return reply.into(),
    };
    match RecvBuffers::mmsghdr(n, n.arg_ptr(1)) {
        // MSG_WAITFORONE is recvmmsg's own; the first message is awaited as usual.
        Some(buffers) => receive(
            ctx,
            n,
            managed,
            buffers,
            n.arg_int(3) & !libc::MSG_WAITFORONE,
        ),
        None => Reply::Continue.into(),
    }
}

/// Decides `getpeername(fd, addr, addrlen)`.
pub fn decide_getpeername(ctx: &Context, n: &Notification) -> Plan {
    show_managed_address(ctx, n, |remote, id| remote.sockets.peer_of(id))
}

/// Decides `getsockname(fd, addr, addrlen)`. Besides the sockets sctrace manages, the
/// app's listeners in the target and the connections they accepted show the addresses the
/// app would see in the target (`remote::target_listeners`).
pub fn decide_getsockname(ctx: &Context, n: &Notification) -> Plan {
    show_managed_address(ctx, n, |remote, id| {
        let placed = &remote.incoming.placed;
        remote
            .sockets
            .local_of(id)
            .or_else(|| placed.listener_address(id))
            .or_else(|| {
                if !placed.any() {
                    return None;
                }
                let sock = ctx.take_socket(n, n.arg_int(0), None).ok()?;
                let fd = std::os::fd::AsFd::as_fd(&sock.fd);
                let of_target = remote.direct.as_ref().is_some_and(|d| d.is_of_target(fd));
                placed.accepted_address(fd, of_target)
            })
    })
}

/// The address `of` says sctrace shows for the app's socket, if any; else the kernel's.
fn show_managed_address(
    ctx: &Context,
    n: &Notification,
    of: impl FnOnce(&Remote, u64) -> Option<SocketAddr>,
) -> Plan {
    let Some(remote) = &ctx.remote else {
        return Reply::Continue.into();
    };
    let id = match ctx.socket_identity(n, n.arg_int(0)) {
        Ok(id) => id,
        Err(reply) => return reply.into(),
    };
    match of(remote, id) {
        Some(addr) => Plan::ShowAddress {
            tid: n.tid(),
            addr,
            at: n.arg_ptr(1),
            len_at: n.arg_ptr(2),
        },
        None => Reply::Continue.into(),
    }
}
