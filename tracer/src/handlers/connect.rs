//! `connect(fd, addr, addrlen)`.
//!
//! The call is re-issued by the supervisor on its copy of the app's socket (same open file
//! description), so the app gets exactly the kernel's outcome and sctrace sees it: `ok`,
//! `ECONNREFUSED`, `EINPROGRESS` on non-blocking sockets, and for bad arguments the same
//! errno in the same order of checks (EBADF, then EINVAL/EFAULT for the address, then
//! ENOTSOCK). Unix addresses are left to the kernel (see [`is_unix`]).
//!
//! A blocking connect is started without blocking: O_NONBLOCK is set on the shared file
//! description for the call and restored at once. A connect that returned EINPROGRESS is
//! then asked again, which is what the kernel's own blocking connect does when it wakes: a
//! loopback connection is complete by then (0, or its error), so it is answered inline.
//! Otherwise (EALREADY) the socket is awaited off the notification loop, bounded by its
//! SO_SNDTIMEO as the kernel would (EINPROGRESS when that expires), and asked once more.
//! The flag is visible to the app's other threads for those few microseconds; an app that
//! changes the flags of a socket while another thread connects it could see its change
//! undone.
//!
//! Actions: `Fail(EBADF)`, `Continue` (Unix addresses, unreachable caller), or the connect's
//! outcome — now, or deferred until the connection completes.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tokio::io::Interest;

use sctrace_filter::Protocol;

use crate::action::Action;
use crate::errno::Errno;
use crate::remote::Destination;
use crate::sockaddr::SockAddr;
use crate::supervisor::notification::{AddrArg, Notification};
use crate::sys::socket as sys;

use super::redirect;
use super::socket::{answer, describe_addr, is_unix, leave_to_kernel, AppSocket, Record};
use super::Context;

/// Handles one trapped connect.
pub fn handle(ctx: &Context, n: &Notification) -> Action {
    let len = n.arg_int(2);
    let addr = n.copy_addr(n.arg_ptr(1), len);
    let sock = match AppSocket::take(ctx, n, n.arg_int(0)) {
        Ok(sock) => sock,
        Err(action) => return action,
    };
    let mut record = Record::prepare(ctx, n, &sock, || describe_addr(&addr));
    if is_unix(&addr) {
        if let (Some(remote), AddrArg::Bytes(bytes)) = (&ctx.remote, &addr) {
            if let Some(SockAddr::UnixPath(path)) = SockAddr::parse(bytes) {
                if remote.refuses_unix_path(&path) {
                    return answer(record, Err::<i64, _>(Errno(libc::ENOENT))).into();
                }
            }
        }
        return leave_to_kernel(record);
    }
    if let Some(remote) = &ctx.remote {
        if let Some(dst) = addr
            .bytes()
            .and_then(SockAddr::parse)
            .and_then(|a| a.inet())
        {
            let sock_type = sys::sock_type(sock.fd.as_fd()).unwrap_or(0);
            let protocol = match sock_type {
                libc::SOCK_STREAM => Some(Protocol::Tcp),
                libc::SOCK_DGRAM => Some(Protocol::Udp),
                _ => None,
            };
            if let Some(protocol) = protocol {
                let routed = remote.route(protocol, dst);
                if let Some(record) = record.as_mut() {
                    record.set_route(&routed);
                }
                match (routed.to, protocol) {
                    (Destination::Local, _) => {
                        if let Some(name) = routed.reresolve {
                            return reresolve_locally(sock, name, dst, record);
                        }
                    }
                    (to, Protocol::Tcp) => {
                        return redirect::connect_tcp(
                            redirect::Call { ctx, remote, n },
                            sock,
                            dst,
                            to,
                            record,
                        )
                    }
                    (to, Protocol::Udp) => {
                        return redirect::connect_udp(
                            redirect::Call { ctx, remote, n },
                            sock,
                            dst,
                            to,
                            record,
                        )
                    }
                }
            }
        } else if addr.family() == Some(libc::AF_UNSPEC) {
            // A datagram socket dissolving its association: it no longer has a peer.
            if let Ok(cookie) = sys::cookie(sock.fd.as_fd()) {
                remote.sockets.set_udp_peer(cookie, None);
            }
        }
    }
    let flags = match sys::file_flags(sock.fd.as_fd()) {
        Ok(flags) => flags,
        Err(_) => return leave_to_kernel(record),
    };
    if flags & libc::O_NONBLOCK != 0 {
        return answer(record, connect(sock.fd.as_fd(), &addr, len)).into();
    }
    match connect_without_blocking(sock.fd.as_fd(), flags, &addr, len) {
        Err(Errno(libc::EALREADY)) => Action::Defer(Box::pin(async move {
            let result = wait_connected(sock.fd, flags, addr, len).await;
            answer(record, result)
        })),
        result => answer(record, result).into(),
    }
}

fn connect(fd: BorrowedFd<'_>, addr: &AddrArg, len: i32) -> Result<i64, Errno> {
    sys::connect(fd, addr.bytes(), len).map(|()| 0)
}

/// Connects the app socket to where `name` resolves on this machine instead of `dst`, an
/// address that came from the target's DNS (the filter sent the connection local).
fn reresolve_locally(
    sock: AppSocket,
    name: String,
    dst: SocketAddr,
    mut record: Option<Record>,
) -> Action {
    Action::Defer(Box::pin(async move {
        let v6 = sys::domain(sock.fd.as_fd()) == Ok(libc::AF_INET6);
        let local = tokio::net::lookup_host((name.as_str(), dst.port()))
            .await
            .ok()
            .and_then(|addrs| {
                let addrs: Vec<SocketAddr> = addrs.collect();
                // Prefer the socket's own family; an IPv6 socket can reach IPv4 v4-mapped.
                let same = addrs.iter().find(|a| a.is_ipv6() == v6).copied();
                same.or_else(|| {
                    v6.then(|| addrs.first().map(|a| crate::relay::udp::app_form(*a, true)))
                        .flatten()
                })
            });
        if let Some(record) = record.as_mut() {
            record.set_reresolved(local);
        }
        let target = local.unwrap_or(dst);
        let bytes = SockAddr::encode_inet(target);
        let addr = AddrArg::Bytes(bytes.clone());
        let len = bytes.len() as i32;
        let flags = match sys::file_flags(sock.fd.as_fd()) {
            Ok(flags) => flags,
            Err(err) => return answer(record, Err::<i64, _>(err)),
        };
        if flags & libc::O_NONBLOCK != 0 {
            return answer(record, connect(sock.fd.as_fd(), &addr, len));
        }
        let result = match connect_without_blocking(sock.fd.as_fd(), flags, &addr, len) {
            Err(Errno(libc::EALREADY)) => wait_connected(sock.fd, flags, addr, len).await,
            other => other,
        };
        answer(record, result)
    }))
}

/// Connects with O_NONBLOCK set for the duration; asks again after EINPROGRESS, which
/// returns the outcome if the connection is already complete and EALREADY if not.
pub fn connect_without_blocking(
    fd: BorrowedFd<'_>,
    flags: i32,
    addr: &AddrArg,
    len: i32,
) -> Result<i64, Errno> {
    sys::set_file_flags(fd, flags | libc::O_NONBLOCK)?;
    let mut result = connect(fd, addr, len);
    if result == Err(Errno(libc::EINPROGRESS)) {
        result = connect(fd, addr, len);
    }
    if let Err(err) = sys::set_file_flags(fd, flags) {
        tracing::warn!("cannot restore the flags of a connecting socket: {err}");
    }
    result
}

/// Waits until a started connect completes, as a blocking connect would: bounded by
/// SO_SNDTIMEO (then EINPROGRESS), else until the kernel gives up (ETIMEDOUT).
async fn wait_connected(fd: OwnedFd, flags: i32, addr: AddrArg, len: i32) -> Result<i64, Errno> {
    let timeout = sys::send_timeout(fd.as_fd()).ok().flatten();
    let watched = sys::watch(fd, Interest::WRITABLE).map_err(|err| {
        tracing::error!("cannot watch a connecting socket: {err}");
        Errno::from_io(&err)
    })?;
    let wait = async {
        loop {
            let mut guard = watched
                .writable()
                .await
                .map_err(|err| Errno::from_io(&err))?;
            match connect_without_blocking(watched.get_ref().as_fd(), flags, &addr, len) {
                Err(Errno(libc::EALREADY)) => guard.clear_ready(),
                result => return result,
            }
        }
    };
    match timeout {
        Some(limit) => tokio::time::timeout(limit, wait)
            .await
            .unwrap_or(Err(Errno(libc::EINPROGRESS))),
        None => wait.await,
    }
}
