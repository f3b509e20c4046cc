//! `bind(fd, addr, addrlen)` and `listen(fd, backlog)`.
//!
//! Both are re-issued on the supervisor's copy of the socket (neither blocks), so the app
//! gets the kernel's own outcome and the event records it; `listen` events carry the
//! socket's bound address. Binds to Unix addresses are left to the kernel (see
//! [`is_unix`]).
//!
//! Actions: `Fail(EBADF)`, `Continue`, or the performed call's result (inline).

use std::net::SocketAddr;
use std::os::fd::AsFd;

use sctrace_filter::Protocol;

use crate::action::Action;
use crate::sockaddr::SockAddr;
use crate::supervisor::notification::Notification;
use crate::sys::socket as sys;

use super::socket::{answer, describe_addr, is_unix, leave_to_kernel, AppSocket, Record};
use super::Context;

/// Handles one trapped bind.
pub fn handle_bind(ctx: &Context, n: &Notification) -> Action {
    let len = n.arg_int(2);
    let addr = n.copy_addr(n.arg_ptr(1), len);
    let sock = match AppSocket::take(ctx, n, n.arg_int(0)) {
        Ok(sock) => sock,
        Err(action) => return action,
    };
    let record = Record::prepare(ctx, n, &sock, || describe_addr(&addr));
    if is_unix(&addr) {
        return leave_to_kernel(record);
    }
    // `listen_ports`: the app asks for port P, which really binds the configured local port.
    let moved = ctx.remote.as_ref().and_then(|remote| {
        let asked = addr
            .bytes()
            .and_then(SockAddr::parse)
            .and_then(|a| a.inet())?;
        let port = remote.incoming.bind_port(asked.port());
        (port != asked.port()).then(|| SockAddr::encode_inet(SocketAddr::new(asked.ip(), port)))
    });
    let result = match &moved {
        Some(bytes) => sys::bind(sock.fd.as_fd(), Some(bytes), len),
        None => sys::bind(sock.fd.as_fd(), addr.bytes(), len),
    };
    if result.is_ok() && sys::sock_type(sock.fd.as_fd()) == Ok(libc::SOCK_DGRAM) {
        note_listening(ctx, &sock, Protocol::Udp);
    }
    answer(record, result.map(|()| 0i64)).into()
}

/// Subscribes the listener's port in the target (mirror or steal), as configured.
fn subscribe(ctx: &Context, sock: &AppSocket) {
    let Some(remote) = ctx.remote.as_ref().filter(|r| r.incoming.enabled()) else {
        return;
    };
    let bound = sys::local_addr(sock.fd.as_fd())
        .ok()
        .and_then(|b| SockAddr::parse(&b))
        .and_then(|a| a.inet());
    if let (Some(bound), Ok(cookie)) = (bound, sys::cookie(sock.fd.as_fd())) {
        remote.incoming.on_listen(cookie, bound);
    }
}

/// Tells the relaying session which port the app now serves (the filter keeps loopback
/// connections to it local).
fn note_listening(ctx: &Context, sock: &AppSocket, protocol: Protocol) {
    let Some(remote) = &ctx.remote else { return };
    let port = sys::local_addr(sock.fd.as_fd())
        .ok()
        .and_then(|b| SockAddr::parse(&b))
        .and_then(|a| a.inet())
        .map(|a| a.port());
    if let Some(port) = port.filter(|p| *p != 0) {
        remote.note_listening(protocol, port);
    }
}

/// Handles one trapped listen.
pub fn handle_listen(ctx: &Context, n: &Notification) -> Action {
    let backlog = n.arg_int(1);
    let sock = match AppSocket::take(ctx, n, n.arg_int(0)) {
        Ok(sock) => sock,
        Err(action) => return action,
    };
    let record = Record::prepare(ctx, n, &sock, || {
        sys::local_addr(sock.fd.as_fd())
            .ok()
            .and_then(|b| SockAddr::parse(&b))
            .map(|a| a.to_string())
            .unwrap_or_else(|| "(unbound)".into())
    });
    let result = sys::listen(sock.fd.as_fd(), backlog);
    if result.is_ok() {
        note_listening(ctx, &sock, Protocol::Tcp);
        subscribe(ctx, &sock);
    }
    answer(record, result.map(|()| 0i64)).into()
}
