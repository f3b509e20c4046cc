//! Emulated receives on sockets with a UDP association, and `getpeername`/`getsockname`
//! on sockets sctrace manages.
//!
//! sctrace receives the datagram itself, on its copy of the app's socket with
//! `MSG_DONTWAIT` (a blocking socket is awaited off the notification loop, bounded by
//! SO_RCVTIMEO), writes the data, the source address translated from the relay socket's to
//! the remote peer's, control data, lengths and flags into the app's buffers, and returns
//! the length.
//!
//! Writing into the app's memory is safe here because the call is then answered with a
//! value, never continued: the app can't observe a half-done call. A fault while writing is
//! answered with EFAULT, as the kernel would (the datagram is consumed, as with the kernel).

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use tokio::io::Interest;

use crate::errno::Errno;
use crate::plan::Reply;
use crate::relay::udp::UdpAssociation;
use crate::sockaddr::{in_family, SockAddr};
use crate::sys::memory;
use crate::sys::socket::{self as sys, ReceivedMessage};
use crate::trap::msghdr::RecvBuffers;
use crate::trap::socket::AppSocket;
use crate::trap::CallRef;

use super::Action;

/// Receives one datagram for the app.
pub fn receive(
    call: CallRef,
    tid: u32,
    sock: AppSocket,
    assoc: Arc<UdpAssociation>,
    buffers: RecvBuffers,
    flags: i32,
) -> Action {
    let v6 = assoc.app_v6();
    let (capacity, control_room) = (buffers.capacity(), buffers.control_room());
    let attempt = sys::recvmsg(
        sock.fd.as_fd(),
        capacity,
        control_room,
        flags | libc::MSG_DONTWAIT,
    );
    // Whether the call may wait matters only when nothing is there yet.
    let blocking = || match sock.file_flags() {
        Ok(f) => Some(f & libc::O_NONBLOCK == 0 && flags & libc::MSG_DONTWAIT == 0),
        Err(_) => None,
    };
    let blocking = match attempt {
        Err(Errno(libc::EAGAIN)) => match blocking() {
            Some(blocking) => blocking,
            None => return Reply::Continue.into(),
        },
        _ => false,
    };
    match attempt {
        Err(Errno(libc::EAGAIN)) if blocking => Action::Defer(Box::pin(async move {
            match wait_and_receive(&call, sock.fd, capacity, control_room, flags).await {
                Ok(msg) => deliver(tid, &assoc, v6, &buffers, msg),
                Err(err) => Reply::Fail(err),
            }
        })),
        Err(err) => Reply::Fail(err).into(),
        Ok(msg) => deliver(tid, &assoc, v6, &buffers, msg).into(),
    }
}

/// Waits until the socket is readable, bounded by SO_RCVTIMEO (then EAGAIN), and receives.
///
/// The datagram is taken only while the call still waits for it: one taken for a call
/// that is gone (its caller was interrupted or died) would be lost to the app.
async fn wait_and_receive(
    call: &CallRef,
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
            if !call.pending() {
                return Err(Errno(libc::EINTR));
            }
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
            Some(peer) => SockAddr::encode_inet(in_family(peer, v6)),
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
    buffers: &RecvBuffers,
    msg: ReceivedMessage,
) -> Reply {
    // Everything the kernel would write, gathered and copied in one system call.
    let name = buffers.name.map(|_| translate(assoc, v6, &msg.name));
    let name_len = name.as_ref().map(|n| (n.len() as u32).to_ne_bytes());
    let control_take = buffers
        .control
        .map_or(0, |(_, room)| room.min(msg.control.len()));
    let control_len = (control_take as u64).to_ne_bytes();
    let flags = msg.flags.to_ne_bytes();
    let msg_len = (msg.returned as u32).to_ne_bytes();
    const ZERO: [u8; 8] = [0; 8];
    let mut pieces: Vec<(u64, &[u8])> = Vec::with_capacity(buffers.iov.len() + 6);
    let mut rest: &[u8] = &msg.data;
    for &(base, len) in &buffers.iov {
        if rest.is_empty() {
            break;
        }
        let take = len.min(rest.len());
        pieces.push((base, &rest[..take]));
        rest = &rest[take..];
    }
    if let (Some((at, room)), Some(name)) = (buffers.name, name.as_deref()) {
        pieces.push((at, &name[..room.min(name.len())]));
        if let (Some(len_at), Some(len)) = (buffers.name_len_at, name_len.as_ref()) {
            pieces.push((len_at, len));
        }
    } else if let Some(len_at) = buffers.name_len_at.filter(|_| buffers.flags_at.is_some()) {
        // recvmsg without a name buffer: msg_namelen becomes 0.
        pieces.push((len_at, &ZERO[..4]));
    }
    if let Some(len_at) = buffers.control_len_at {
        if let Some((at, _)) = buffers.control {
            pieces.push((at, &msg.control[..control_take]));
            pieces.push((len_at, &control_len));
        } else {
            pieces.push((len_at, &ZERO));
        }
    }
    if let Some(at) = buffers.flags_at {
        pieces.push((at, &flags));
    }
    if let Some(at) = buffers.msg_len_at {
        pieces.push((at, &msg_len));
    }
    let written = memory::write_pieces(tid, &pieces);
    match written {
        Ok(()) if buffers.msg_len_at.is_some() => Reply::Return(1),
        Ok(()) => Reply::Return(msg.returned as i64),
        Err(_) => Reply::Fail(Errno(libc::EFAULT)),
    }
}

/// Writes a socket address for the app as the kernel's `move_addr_to_user` does: at most
/// `room` bytes of it at `at`, and its full length at `len_at`.
pub fn write_sockaddr(
    tid: u32,
    addr: &[u8],
    at: u64,
    room: usize,
    len_at: Option<u64>,
) -> std::io::Result<()> {
    memory::write_all(tid, at, &addr[..room.min(addr.len())])?;
    if let Some(len_at) = len_at {
        memory::write_all(tid, len_at, &(addr.len() as u32).to_ne_bytes())?;
    }
    Ok(())
}

/// Answers `getpeername`/`getsockname` on a managed socket with `addr` (already in the
/// socket's family: see `remote::sockets`).
pub fn show_address(tid: u32, addr: SocketAddr, at: u64, len_at: u64) -> Reply {
    let mut room = [0u8; 4];
    if memory::read_exact(tid, len_at, &mut room).is_err() {
        return Reply::Fail(Errno(libc::EFAULT));
    }
    let room = i32::from_ne_bytes(room);
    if room < 0 {
        return Reply::Fail(Errno(libc::EINVAL));
    }
    let bytes = SockAddr::encode_inet(addr);
    match write_sockaddr(tid, &bytes, at, room as usize, Some(len_at)) {
        Ok(()) => Reply::Return(0),
        Err(_) => Reply::Fail(Errno(libc::EFAULT)),
    }
}
