//! `sendto` with a destination, `sendmsg` and `sendmmsg`.
//!
//! The filter traps `sendto` only when it carries a destination, but every `sendmsg` and
//! `sendmmsg` (their destination sits inside a struct the filter can't read). The fast path
//! is therefore: read the 8-byte `msg_name` pointer and, when it is NULL (connected
//! sockets, TCP), let the kernel run the call at once.
//!
//! Datagram sends with a destination are re-issued on this machine (or, in a relaying
//! session, sent through the agent or to the DNS responder when the filter says so), with a
//! copy of the payload. Calls sctrace does not re-issue are left to the kernel and recorded
//! with result `unknown`: Unix sockets (credentials), stream sockets (the destination is
//! ignored or means TCP Fast Open), messages with control data (`SCM_RIGHTS` can't be
//! re-created), payloads over [`MAX_PAYLOAD`], and every other `sendmmsg` (the kernel
//! writes `msg_len` back into the app's vector).
//!
//! The exception: `sendmmsg` of plain datagrams on a socket connected to a nameserver
//! sctrace answers for (glibc sends its A and AAAA queries so) hands the queries to the
//! socket's association, which answers cached ones on the spot, so that the answers wait
//! in the socket when the call returns instead of after a relay task's turn.
//!
//! Plans: `Answer(Continue)` (fast path, caller gone), `Answer(EBADF)`, `Kernel`, or work:
//! `Send`, `SendDatagram`, `QueryNameserver`.

use sctrace_filter::Protocol;

use crate::events::Record;
use crate::plan::{Plan, Reply, Work};
use crate::remote::sockets::Managed;
use crate::remote::Destination;
use crate::route::Routed;
use crate::sockaddr::SockAddr;
use crate::sys::memory;
use crate::sys::socket::OutgoingMessage;
use crate::trap::msghdr::{copy_iov, MsgHeader, RecvBuffers, MAX_IOV, MAX_PAYLOAD, MMSGHDR_SIZE};
use crate::trap::socket::AppSocket;
use crate::trap::{AddrArg, Notification};

use super::connect::peer_kind;
use super::Context;

/// Whether sctrace re-issues a send with destination `addr` on this socket: a datagram
/// socket and not a Unix address. Reads the socket type only when the address could do.
fn reissuable(sock: &AppSocket, addr: &AddrArg) -> bool {
    matches!(addr.family(), Some(libc::AF_INET | libc::AF_INET6))
        && sock.sock_type() == Ok(libc::SOCK_DGRAM)
}

/// The plan for a datagram whose payload was copied: through the relaying session when the
/// filter routes its destination away from this machine, else re-issued here.
fn datagram(
    ctx: &Context,
    n: &Notification,
    sock: AppSocket,
    mut record: Option<Record>,
    name: Vec<u8>,
    iov: Vec<Vec<u8>>,
    flags: i32,
) -> Plan {
    let routed = ctx.remote.as_ref().and_then(|remote| {
        let dst = SockAddr::parse(&name)?.inet()?;
        match sock.transport() {
            Some(Protocol::Udp) => Some((dst, remote.route(Protocol::Udp, dst))),
            _ => Some((dst, Routed::not_relayed())),
        }
    });
    if let Some((dst, routed)) = routed {
        if let Some(record) = record.as_mut() {
            record.set_route(&routed);
        }
        if routed.to != Destination::Local {
            let family = sock.family().unwrap_or(libc::AF_INET);
            let asker = ctx.asker(n, &sock, family, libc::SOCK_DGRAM);
            return Plan::Socket {
                sock,
                record,
                work: Work::SendDatagram {
                    dst,
                    peer: peer_kind(routed.to),
                    payload: iov.concat(),
                    asker,
                },
            };
        }
    }
    let msg = OutgoingMessage {
        name_len: name.len() as u32,
        name: Some(name),
        iov,
    };
    Plan::Socket {
        sock,
        record,
        work: Work::Send { msg, flags },
    }
}

/// Decides `sendto(fd, buf, len, flags, dest, addrlen)` with a non-NULL `dest`.
pub fn decide_sendto(ctx: &Context, n: &Notification) -> Plan {
    let (buf, len, flags) = (n.arg_ptr(1), n.arg_u64(2), n.arg_int(3));
    let addr = n.copy_addr(n.arg_ptr(4), n.arg_int(5));
    let sock = match ctx.take_socket(n, n.arg_int(0), Some(&addr)) {
        Ok(sock) => sock,
        Err(reply) => return reply.into(),
    };
    let payload = if reissuable(&sock, &addr) && len as usize <= MAX_PAYLOAD {
        memory::read_vec(n.tid(), buf, len as usize).ok()
    } else {
        None
    };
    // The payload was copied after the check in `take_socket`: check again.
    if payload.is_some() && !ctx.still_pending(n) {
        return Reply::Continue.into();
    }
    let record = ctx.record(n, &sock, || addr.describe());
    match (payload, addr) {
        (Some(payload), AddrArg::Bytes(name)) => {
            datagram(ctx, n, sock, record, name, vec![payload], flags)
        }
        _ => Plan::Kernel(record.into_iter().collect()),
    }
}

/// Decides `sendmsg(fd, msg, flags)`.
pub fn decide_sendmsg(ctx: &Context, n: &Notification) -> Plan {
    let msg_ptr = n.arg_ptr(1);
    // Fast path: no destination (or a header the kernel will fault on itself).
    match n.read_u64(msg_ptr) {
        None | Some(0) => return Reply::Continue.into(),
        Some(_) => {}
    }
    let Some(hdr) = MsgHeader::read(n, msg_ptr) else {
        return Reply::Continue.into();
    };
    let flags = n.arg_int(2);
    let addr = n.copy_addr(hdr.name, hdr.name_len);
    let sock = match ctx.take_socket(n, n.arg_int(0), Some(&addr)) {
        Ok(sock) => sock,
        Err(reply) => return reply.into(),
    };
    let payload = if hdr.control_len == 0 && reissuable(&sock, &addr) {
        copy_iov(n, hdr.iov, hdr.iov_len).ok()
    } else {
        None
    };
    if payload.is_some() && !ctx.still_pending(n) {
        return Reply::Continue.into();
    }
    let record = ctx.record(n, &sock, || addr.describe());
    match (payload, addr) {
        (Some(iov), AddrArg::Bytes(name)) => datagram(ctx, n, sock, record, name, iov, flags),
        _ => Plan::Kernel(record.into_iter().collect()),
    }
}

/// Decides `sendmmsg(fd, msgvec, vlen, flags)`: DNS queries on a socket connected to a
/// nameserver sctrace answers for go to its association (glibc's resolver sends A and AAAA
/// this way); otherwise records each message that has a destination and lets the kernel
/// run the call.
pub fn decide_sendmmsg(ctx: &Context, n: &Notification) -> Plan {
    let vlen = (n.arg_u64(2) & 0xffff_ffff).min(MAX_IOV) as usize;
    // Resolvers send a query or two at once; a longer batch (QUIC, a media stream) is not
    // looked at unless events record it, so it costs the trap alone.
    let may_be_queries = ctx.remote.is_some() && vlen <= MAX_QUERIES_AT_ONCE;
    if vlen == 0 || (!may_be_queries && !ctx.events.enabled()) {
        return Reply::Continue.into();
    }
    let Ok(raw) = memory::read_vec(n.tid(), n.arg_ptr(1), vlen * MMSGHDR_SIZE) else {
        return Reply::Continue.into();
    };
    if let Some(plan) = may_be_queries
        .then(|| nameserver_queries(ctx, n, &raw))
        .flatten()
    {
        return plan;
    }
    if !ctx.events.enabled() {
        return Reply::Continue.into();
    }
    let addrs: Vec<String> = raw
        .chunks_exact(MMSGHDR_SIZE)
        .filter_map(MsgHeader::parse)
        .filter(|h| h.name != 0)
        .map(|h| n.copy_addr(h.name, h.name_len).describe())
        .collect();
    if addrs.is_empty() {
        return Reply::Continue.into();
    }
    let Ok(sock) = ctx.access.take(&ctx.notify, n, n.arg_int(0)) else {
        return Reply::Continue.into();
    };
    Plan::Kernel(
        addrs
            .into_iter()
            .filter_map(|addr| ctx.record(n, &sock, || addr))
            .collect(),
    )
}

/// The most DNS queries one `sendmmsg` is expected to carry (glibc: A and AAAA).
const MAX_QUERIES_AT_ONCE: usize = 4;

/// The plan for `sendmmsg` messages (`raw`: the app's `struct mmsghdr` vector) when they are
/// all plain datagrams without a destination on a socket connected to a nameserver sctrace
/// answers for; `None` leaves the call to the other rules.
fn nameserver_queries(ctx: &Context, n: &Notification, raw: &[u8]) -> Option<Plan> {
    let remote = ctx.remote.as_ref()?;
    let headers: Vec<MsgHeader> = raw
        .chunks_exact(MMSGHDR_SIZE)
        .map(MsgHeader::parse)
        .collect::<Option<_>>()?;
    if headers.iter().any(|h| h.name != 0 || h.control_len != 0) {
        return None;
    }
    let sock = ctx.access.take(&ctx.notify, n, n.arg_int(0)).ok()?;
    let id = sock.identity().ok()?;
    let Some(Managed::Udp {
        assoc,
        connected: Some((nameserver, _)),
    }) = remote.sockets.get(id)
    else {
        return None;
    };
    if !remote.answers_for(nameserver) {
        return None;
    }
    let queries = headers
        .iter()
        .map(|h| copy_iov(n, h.iov, h.iov_len).ok().map(|iov| iov.concat()))
        .collect::<Option<Vec<_>>>()?;
    // The messages were copied after the socket was taken: check the call again.
    if !ctx.still_pending(n) {
        return Some(Reply::Continue.into());
    }
    let vec = n.arg_ptr(1);
    Some(Plan::Socket {
        sock,
        record: None,
        work: Work::QueryNameserver {
            nameserver,
            assoc,
            lens_at: (0..queries.len())
                .map(|i| RecvBuffers::mmsg_len_at(vec, i))
                .collect(),
            queries,
            tid: n.tid(),
        },
    })
}
