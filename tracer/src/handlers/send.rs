//! `sendto` with a destination, `sendmsg` and `sendmmsg`.
//!
//! The filter traps `sendto` only when it carries a destination, but every `sendmsg` and
//! `sendmmsg` (their destination sits inside a struct the filter can't read). The fast path
//! is therefore: read the 8-byte `msg_name` pointer and, when it is NULL (connected
//! sockets, TCP), let the kernel run the call at once.
//!
//! Datagram sends with a destination are re-issued by the supervisor on its copy of the
//! socket, with a copy of the payload and `MSG_DONTWAIT` added so the notification loop never
//! blocks; the app gets the kernel's result and the event records it. When that would block
//! a blocking socket (send buffer full), the call is left to the kernel, which blocks as the
//! app asked. Calls sctrace does not re-issue are left to the kernel and recorded with result
//! `unknown`: Unix sockets (credentials), stream sockets (the destination is ignored or means
//! TCP Fast Open), messages with control data (`SCM_RIGHTS` can't be re-created), payloads
//! over [`MAX_PAYLOAD`], and every `sendmmsg` (the kernel writes `msg_len` back into the
//! app's vector).

use std::os::fd::AsFd;

use sctrace_filter::Protocol;

use crate::action::{Action, Reply};
use crate::errno::Errno;
use crate::remote::Destination;
use crate::sockaddr::SockAddr;
use crate::supervisor::notification::{AddrArg, Notification};
use crate::sys::memory;
use crate::sys::socket::{self as sys, OutgoingMessage};

use super::redirect;
use super::socket::{answer, describe_addr, leave_to_kernel, AppSocket, Record};
use super::Context;

/// The largest datagram payload sctrace copies to re-issue a send (UDP's own limit is 64 KiB).
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// The kernel's limit on iovec pieces (UIO_MAXIOV) and on `sendmmsg`'s vector length.
const MAX_IOV: u64 = 1024;
/// `sizeof(struct msghdr)` and `sizeof(struct mmsghdr)` on 64-bit ABIs.
const MSGHDR_SIZE: usize = 56;
const MMSGHDR_SIZE: usize = 64;

/// The fields of a `struct msghdr` sctrace uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MsgHeader {
    name: u64,
    name_len: i32,
    iov: u64,
    iov_len: u64,
    control_len: u64,
}

impl MsgHeader {
    fn parse(b: &[u8]) -> Option<Self> {
        let u64_at = |o: usize| Some(u64::from_ne_bytes(b.get(o..o + 8)?.try_into().ok()?));
        let i32_at = |o: usize| Some(i32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?));
        Some(Self {
            name: u64_at(0)?,
            name_len: i32_at(8)?,
            iov: u64_at(16)?,
            iov_len: u64_at(24)?,
            control_len: u64_at(40)?,
        })
    }
}

/// Why a payload was not copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PayloadSkip {
    TooLarge,
    Unreadable,
}

/// Copies the iovec array at `iov` (`count` pieces) and the bytes it points to.
fn copy_iov(n: &Notification, iov: u64, count: u64) -> Result<Vec<Vec<u8>>, PayloadSkip> {
    if count > MAX_IOV {
        return Err(PayloadSkip::TooLarge);
    }
    let raw =
        memory::read_vec(n.tid(), iov, count as usize * 16).map_err(|_| PayloadSkip::Unreadable)?;
    let mut total = 0usize;
    let mut pieces = Vec::with_capacity(count as usize);
    for chunk in raw.chunks_exact(16) {
        let base = u64::from_ne_bytes(
            chunk[0..8]
                .try_into()
                .map_err(|_| PayloadSkip::Unreadable)?,
        );
        let len = u64::from_ne_bytes(
            chunk[8..16]
                .try_into()
                .map_err(|_| PayloadSkip::Unreadable)?,
        );
        total = total.saturating_add(len as usize);
        if total > MAX_PAYLOAD {
            return Err(PayloadSkip::TooLarge);
        }
        pieces.push(
            memory::read_vec(n.tid(), base, len as usize).map_err(|_| PayloadSkip::Unreadable)?,
        );
    }
    Ok(pieces)
}

/// Whether sctrace re-issues a send with destination `addr` on this socket: a datagram
/// socket and not a Unix address. Reads the socket type only when the address could do.
fn reissuable(sock: &AppSocket, addr: &AddrArg) -> bool {
    matches!(addr.family(), Some(libc::AF_INET | libc::AF_INET6))
        && sys::sock_type(sock.fd.as_fd()) == Ok(libc::SOCK_DGRAM)
}

/// Re-issues one datagram send without blocking; falls back to the kernel when the socket
/// is blocking and the send would wait.
fn send_now(sock: &AppSocket, msg: OutgoingMessage, flags: i32, record: Option<Record>) -> Action {
    let blocking = match sys::file_flags(sock.fd.as_fd()) {
        Ok(file_flags) => file_flags & libc::O_NONBLOCK == 0 && flags & libc::MSG_DONTWAIT == 0,
        Err(_) => return leave_to_kernel(record),
    };
    let result = sys::sendmsg(sock.fd.as_fd(), &msg, flags | libc::MSG_DONTWAIT);
    if blocking && result == Err(Errno(libc::EAGAIN)) {
        return leave_to_kernel(record);
    }
    answer(record, result.map(|sent| sent as i64)).into()
}

/// A send carried out by sctrace instead of the kernel: given the socket, payload and
/// record, it yields the action.
type Carry<'a> = Box<dyn FnOnce(AppSocket, Vec<u8>, Option<Record>) -> Action + 'a>;

/// In a relaying session, routes a datagram to `name`: `Some` when it goes remote or to
/// the DNS responder.
fn route_remote<'a>(
    ctx: &'a Context,
    n: &'a Notification,
    _sock: &AppSocket,
    name: &[u8],
    _payload: &[u8],
    record: &mut Option<Record>,
) -> Option<Carry<'a>> {
    let remote = ctx.remote.as_ref()?;
    let dst = SockAddr::parse(name)?.inet()?;
    let routed = remote.route(Protocol::Udp, dst);
    if let Some(record) = record.as_mut() {
        record.set_route(&routed);
    }
    if routed.to == Destination::Local {
        return None;
    }
    Some(Box::new(move |sock, payload, record| {
        redirect::send_datagram(
            redirect::Call { ctx, remote, n },
            sock,
            dst,
            routed.to,
            payload,
            record,
        )
    }))
}

/// Handles `sendto(fd, buf, len, flags, dest, addrlen)` with a non-NULL `dest`.
pub fn handle_sendto(ctx: &Context, n: &Notification) -> Action {
    let (buf, len, flags) = (n.arg_ptr(1), n.raw.args[2], n.arg_int(3));
    let addr = n.copy_addr(n.arg_ptr(4), n.arg_int(5));
    let sock = match AppSocket::take(ctx, n, n.arg_int(0)) {
        Ok(sock) => sock,
        Err(action) => return action,
    };
    let payload = if reissuable(&sock, &addr) && len as usize <= MAX_PAYLOAD {
        memory::read_vec(n.tid(), buf, len as usize).ok()
    } else {
        None
    };
    // The payload was copied after the check in `take`: check again.
    if payload.is_some() && !ctx.still_pending(n) {
        return Reply::Continue.into();
    }
    let mut record = Record::prepare(ctx, n, &sock, || describe_addr(&addr));
    match (payload, addr) {
        (Some(payload), AddrArg::Bytes(name)) => {
            if let Some(action) = route_remote(ctx, n, &sock, &name, &payload, &mut record) {
                return action(sock, payload, record);
            }
            let msg = OutgoingMessage {
                name_len: name.len() as u32,
                name: Some(name),
                iov: vec![payload],
            };
            send_now(&sock, msg, flags, record)
        }
        _ => leave_to_kernel(record),
    }
}

/// Handles `sendmsg(fd, msg, flags)`.
pub fn handle_sendmsg(ctx: &Context, n: &Notification) -> Action {
    let msg_ptr = n.arg_ptr(1);
    // Fast path: no destination (or a header the kernel will fault on itself).
    let mut name_ptr = [0u8; 8];
    if memory::read_exact(n.tid(), msg_ptr, &mut name_ptr).is_err()
        || u64::from_ne_bytes(name_ptr) == 0
    {
        return Reply::Continue.into();
    }
    let Some(hdr) = memory::read_vec(n.tid(), msg_ptr, MSGHDR_SIZE)
        .ok()
        .and_then(|b| MsgHeader::parse(&b))
    else {
        return Reply::Continue.into();
    };
    let flags = n.arg_int(2);
    let addr = n.copy_addr(hdr.name, hdr.name_len);
    let sock = match AppSocket::take(ctx, n, n.arg_int(0)) {
        Ok(sock) => sock,
        Err(action) => return action,
    };
    let payload = if hdr.control_len == 0 && reissuable(&sock, &addr) {
        copy_iov(n, hdr.iov, hdr.iov_len).ok()
    } else {
        None
    };
    if payload.is_some() && !ctx.still_pending(n) {
        return Reply::Continue.into();
    }
    let mut record = Record::prepare(ctx, n, &sock, || describe_addr(&addr));
    match (payload, addr) {
        (Some(iov), AddrArg::Bytes(name)) => {
            let flat = iov.concat();
            if let Some(action) = route_remote(ctx, n, &sock, &name, &flat, &mut record) {
                return action(sock, flat, record);
            }
            let msg = OutgoingMessage {
                name_len: name.len() as u32,
                name: Some(name),
                iov,
            };
            send_now(&sock, msg, flags, record)
        }
        _ => leave_to_kernel(record),
    }
}

/// Handles `sendmmsg(fd, msgvec, vlen, flags)`: records each message that has a
/// destination and lets the kernel run the call.
pub fn handle_sendmmsg(ctx: &Context, n: &Notification) -> Action {
    let vlen = (n.raw.args[2] & 0xffff_ffff).min(MAX_IOV) as usize;
    if vlen == 0 || !ctx.events.enabled() {
        return Reply::Continue.into();
    }
    let Ok(raw) = memory::read_vec(n.tid(), n.arg_ptr(1), vlen * MMSGHDR_SIZE) else {
        return Reply::Continue.into();
    };
    let addrs: Vec<String> = raw
        .chunks_exact(MMSGHDR_SIZE)
        .filter_map(MsgHeader::parse)
        .filter(|h| h.name != 0)
        .map(|h| describe_addr(&n.copy_addr(h.name, h.name_len)))
        .collect();
    if addrs.is_empty() {
        return Reply::Continue.into();
    }
    let Ok(sock) = AppSocket::take(ctx, n, n.arg_int(0)) else {
        return Reply::Continue.into();
    };
    for addr in addrs {
        leave_to_kernel(Record::prepare(ctx, n, &sock, || addr));
    }
    Reply::Continue.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msghdr_fields_at_their_offsets() {
        let mut b = vec![0u8; MSGHDR_SIZE];
        b[0..8].copy_from_slice(&0x1000u64.to_ne_bytes());
        b[8..12].copy_from_slice(&16i32.to_ne_bytes());
        b[16..24].copy_from_slice(&0x2000u64.to_ne_bytes());
        b[24..32].copy_from_slice(&2u64.to_ne_bytes());
        b[40..48].copy_from_slice(&24u64.to_ne_bytes());
        let h = MsgHeader::parse(&b).unwrap();
        assert_eq!(
            h,
            MsgHeader {
                name: 0x1000,
                name_len: 16,
                iov: 0x2000,
                iov_len: 2,
                control_len: 24
            }
        );
        assert_eq!(
            MsgHeader::parse(&b[..40]),
            None,
            "short header is not misread"
        );
    }
}
