//! Calls carried out on this machine as the app asked: re-issued by the supervisor on its
//! copy of the app's socket (the same open file description), so the app gets exactly the
//! kernel's outcome and sctrace sees it — including, for bad arguments, the same errno in
//! the same order of checks (an unreadable address is passed as NULL, so the kernel itself
//! answers EFAULT; a bad length is passed through, so it answers EINVAL).
//!
//! - **connect**: re-issued, even when no event needs its outcome. Leaving it to the kernel
//!   (`Continue`) was tried and measured slower (20,000 loopback connects: 1.24–1.36 s
//!   against 1.03–1.12 s re-issued, direct 0.58–0.65 s): the app's own connect then runs
//!   after the supervisor's answer, one more switch between the two. In container mode the
//!   re-issue is also how sctrace sees a held socket connected, and lets its copy go. A
//!   blocking connect is
//!   started without blocking: O_NONBLOCK is set on the shared file description for the
//!   call and restored at once. A connect that returned
//!   EINPROGRESS is then asked again, which is what the kernel's own blocking connect does
//!   when it wakes: a loopback connection is complete by then (0, or its error), so it is
//!   answered inline. Otherwise (EALREADY) the socket is awaited off the notification loop,
//!   bounded by its SO_SNDTIMEO as the kernel would (EINPROGRESS when that expires), and
//!   asked once more. The flag is visible to the app's other threads for those few
//!   microseconds; an app that changes the flags of a socket while another thread connects
//!   it could see its change undone.
//! - **re-resolved connect**: a local connection to an address that came from the target's
//!   DNS is connected to where its name resolves on this machine.
//! - **bind, listen**: never block; a bind may be moved to another port (`listen_ports`);
//!   a successful listen (or UDP bind) tells the relaying session which port the app
//!   serves, and subscribes the port in the target.
//! - **datagram sends** are re-issued with `MSG_DONTWAIT`, so the loop never blocks; if the
//!   app's socket is blocking and the send would wait, the call is left to the kernel,
//!   which blocks as the app asked.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use sctrace_filter::Protocol;
use tokio::io::Interest;

use crate::errno::Errno;
use crate::events::{Record, UNKNOWN};
use crate::plan::{MovedBind, Reply};
use crate::remote::incoming::AppListener;
use crate::remote::Remote;
use crate::sockaddr::{in_family, SockAddr};
use crate::sys::socket::{self as sys, OutgoingMessage};
use crate::trap::owned::OwnedSockets;
use crate::trap::socket::AppSocket;
use crate::trap::AddrArg;

use super::{answer, listener, Action};

/// `connect` as the app asked.
pub fn connect(sock: AppSocket, record: Option<Record>, addr: AddrArg, len: i32) -> Action {
    let flags = match sock.file_flags() {
        Ok(flags) => flags,
        Err(_) => return leave_to_kernel(record),
    };
    if flags & libc::O_NONBLOCK != 0 {
        return answer(record, reissue_connect(sock.fd.as_fd(), &addr, len)).into();
    }
    match connect_without_blocking(sock.fd.as_fd(), flags, &addr, len) {
        Err(Errno(libc::EALREADY)) => Action::Defer(Box::pin(async move {
            let result = wait_connected(sock.fd, flags, addr, len).await;
            answer(record, result)
        })),
        result => answer(record, result).into(),
    }
}

/// Connects the app socket to where `name` resolves on this machine instead of `dst`, an
/// address that came from the target's DNS (the filter sent the connection local).
pub fn connect_reresolved(
    sock: AppSocket,
    mut record: Option<Record>,
    name: String,
    dst: SocketAddr,
) -> Action {
    Action::Defer(Box::pin(async move {
        let v6 = sock.is_v6();
        let local = tokio::net::lookup_host((name.as_str(), dst.port()))
            .await
            .ok()
            .and_then(|addrs| {
                let addrs: Vec<SocketAddr> = addrs.collect();
                // Prefer the socket's own family; an IPv6 socket can reach IPv4 v4-mapped.
                let same = addrs.iter().find(|a| a.is_ipv6() == v6).copied();
                same.or_else(|| {
                    v6.then(|| addrs.first().map(|a| in_family(*a, true)))
                        .flatten()
                })
            });
        if let Some(record) = record.as_mut() {
            record.set_reresolved(local);
        }
        let bytes = SockAddr::encode_inet(local.unwrap_or(dst));
        let len = bytes.len() as i32;
        let addr = AddrArg::Bytes(bytes);
        let flags = match sock.file_flags() {
            Ok(flags) => flags,
            Err(err) => return answer(record, Err::<i64, _>(err)),
        };
        if flags & libc::O_NONBLOCK != 0 {
            return answer(record, reissue_connect(sock.fd.as_fd(), &addr, len));
        }
        let result = match connect_without_blocking(sock.fd.as_fd(), flags, &addr, len) {
            Err(Errno(libc::EALREADY)) => wait_connected(sock.fd, flags, addr, len).await,
            other => other,
        };
        answer(record, result)
    }))
}

fn reissue_connect(fd: BorrowedFd<'_>, addr: &AddrArg, len: i32) -> Result<i64, Errno> {
    sys::connect(fd, addr.bytes(), len).map(|()| 0)
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
    let mut result = reissue_connect(fd, addr, len);
    if result == Err(Errno(libc::EINPROGRESS)) {
        result = reissue_connect(fd, addr, len);
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

/// `bind`, moved to another port when `listen_ports` says so.
pub fn bind(
    remote: Option<&Arc<Remote>>,
    sock: AppSocket,
    record: Option<Record>,
    addr: AddrArg,
    len: i32,
    moved: Option<MovedBind>,
    owned: Option<Arc<OwnedSockets>>,
) -> Action {
    let bytes = match (&moved, &addr) {
        (Some(moved), AddrArg::Bytes(bytes)) => {
            // The app's own address bytes (flow info, scope) with the configured port.
            let mut bytes = bytes.clone();
            if let Some(port) = bytes.get_mut(2..4) {
                port.copy_from_slice(&moved.to.port().to_be_bytes());
            }
            Some(bytes)
        }
        _ => addr.bytes().map(<[u8]>::to_vec),
    };
    let mut result = sys::bind(sock.fd.as_fd(), bytes.as_deref(), len);
    if let (Err(Errno(libc::EADDRINUSE)), Some(remote)) = (&result, remote) {
        // sctrace itself may hold the port for a listener the app just closed (a server
        // restarting): one it had in the target, whose port here sctrace keeps, or in
        // container mode the copy of a subscribed listener the sweep has not released
        // yet. Let go of it, and bind again.
        let port = bytes
            .as_deref()
            .and_then(SockAddr::parse)
            .and_then(|a| a.inet())
            .map(|a| a.port())
            .filter(|port| *port != 0);
        let stale = port.is_some_and(|port| remote.incoming.release_stale(port));
        let swept = match (&owned, port) {
            (Some(owned), Some(_)) => {
                owned.sweep_now();
                true
            }
            _ => false,
        };
        if stale || swept {
            result = sys::bind(sock.fd.as_fd(), bytes.as_deref(), len);
            if stale && result == Err(Errno(libc::EADDRINUSE)) {
                let remote = Arc::clone(remote);
                return Action::Defer(Box::pin(async move {
                    // Without SO_REUSEADDR the port is free once sctrace's listener is
                    // closed, which its task does moments later.
                    let mut result = Err(Errno(libc::EADDRINUSE));
                    for _ in 0..RELEASE_TRIES {
                        tokio::time::sleep(RELEASE_PAUSE).await;
                        result = sys::bind(sock.fd.as_fd(), bytes.as_deref(), len);
                        if result != Err(Errno(libc::EADDRINUSE)) {
                            break;
                        }
                    }
                    bound(&remote, &sock, moved.as_ref(), &result);
                    answer(record, result.map(|()| 0i64))
                }));
            }
        }
    }
    if let Some(remote) = remote {
        bound(remote, &sock, moved.as_ref(), &result);
    }
    answer(record, result.map(|()| 0i64)).into()
}

/// How often, and how far apart, a bind is tried again after sctrace let go of the port.
const RELEASE_TRIES: u32 = 10;
const RELEASE_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// What follows a bind of the app's socket on this machine.
fn bound(remote: &Remote, sock: &AppSocket, moved: Option<&MovedBind>, result: &Result<(), Errno>) {
    if let (Ok(()), remote) = (result, remote) {
        if let Some(moved) = moved {
            remote.incoming.note_moved(moved.to.port(), moved.asked);
        }
        if sock.sock_type() == Ok(libc::SOCK_DGRAM) {
            note_listening(remote, sock, Protocol::Udp);
        }
    }
}

/// `listen`, then the port's subscription in the target (mirror or steal, as configured).
/// The call returns once the subscription is in place (at most [`SUBSCRIBE_WAIT`]): in the
/// target, a client connecting after the app's `listen` returned reaches the app.
pub fn listen(
    remote: Option<&Arc<Remote>>,
    sock: AppSocket,
    mut record: Option<Record>,
    backlog: i32,
    tid: i32,
) -> Action {
    let result = sys::listen(sock.fd.as_fd(), backlog);
    let mut subscribed = None;
    // A listener sctrace put in the target listening again (nginx does, to set its
    // backlog): the kernel's answer is all there is to it.
    let remote = remote.filter(|remote| {
        !remote
            .direct
            .as_ref()
            .is_some_and(|direct| direct.is_of_target(sock.fd.as_fd()))
    });
    if let (Ok(()), Some(remote)) = (&result, remote) {
        note_listening(remote, &sock, Protocol::Tcp);
        if remote.incoming.enabled() {
            if let (Some(bound), Ok(id)) = (sock.local_inet(), sock.identity()) {
                let v6_only = bound.is_ipv6() && sys::v6_only(sock.fd.as_fd()).unwrap_or(false);
                let app = AppListener { bound, v6_only };
                // A listener of the app in the target that it no longer has would keep the
                // port's subscription a moment longer: this one takes over now.
                remote.incoming.release_stale(bound.port());
                // A whole-connection steal: the listener itself may move into the target.
                if let Some(candidate) = listener::candidate(remote, &sock, tid, app) {
                    let remote = Arc::clone(remote);
                    return Action::Defer(Box::pin(async move {
                        let placed =
                            listener::place(&remote, &sock, candidate, id, backlog, &mut record)
                                .await;
                        if let Some(reply) = placed {
                            // The record says so; the reply installs the listener.
                            let _ = answer(record, Ok(0i64));
                            return reply;
                        }
                        if let Some(in_place) = remote.incoming.on_listen(id, app) {
                            let _ = tokio::time::timeout(SUBSCRIBE_WAIT, in_place).await;
                        }
                        answer(record, Ok(0i64))
                    }));
                }
                subscribed = remote.incoming.on_listen(id, app);
            }
        }
    }
    match subscribed {
        Some(in_place) => Action::Defer(Box::pin(async move {
            let _ = tokio::time::timeout(SUBSCRIBE_WAIT, in_place).await;
            answer(record, result.map(|()| 0i64))
        })),
        None => answer(record, result.map(|()| 0i64)).into(),
    }
}

/// How long a `listen` waits for its port's subscription in the target.
pub const SUBSCRIBE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Tells the relaying session which port the app now serves (the filter keeps loopback
/// connections to it local).
fn note_listening(remote: &Remote, sock: &AppSocket, protocol: Protocol) {
    let port = sock.local_inet().map(|a| a.port());
    if let Some(port) = port.filter(|p| *p != 0) {
        remote.note_listening(protocol, port);
    }
}

/// Re-issues one datagram send without blocking; falls back to the kernel when the socket
/// is blocking and the send would wait.
pub fn send(sock: AppSocket, record: Option<Record>, msg: OutgoingMessage, flags: i32) -> Action {
    let blocking = match sock.file_flags() {
        Ok(file_flags) => file_flags & libc::O_NONBLOCK == 0 && flags & libc::MSG_DONTWAIT == 0,
        Err(_) => return leave_to_kernel(record),
    };
    let result = sys::sendmsg(sock.fd.as_fd(), &msg, flags | libc::MSG_DONTWAIT);
    if blocking && result == Err(Errno(libc::EAGAIN)) {
        return leave_to_kernel(record);
    }
    answer(record, result.map(|sent| sent as i64)).into()
}

/// Records a call that is left to the kernel (outcome unknown) and lets it run.
fn leave_to_kernel(record: Option<Record>) -> Action {
    if let Some(record) = record {
        record.finish(UNKNOWN.into());
    }
    Reply::Continue.into()
}
