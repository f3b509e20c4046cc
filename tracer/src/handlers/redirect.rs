//! Carrying out `remote` and DNS decisions for `connect` and address-carrying sends.
//!
//! - **TCP connect, remote**: the agent connects to the destination first, so the app's
//!   connect returns the real outcome (ECONNREFUSED, ETIMEDOUT, ENETUNREACH, ...). On
//!   success the app's own socket (same fd, options, O_NONBLOCK and epoll registrations) is
//!   connected to the TCP relay, which joins it to the agent stream. The call is held until
//!   the remote outcome is known, for non-blocking sockets too; they then see the outcome
//!   at once (a completed connect, or the remote errno).
//! - **TCP connect to a nameserver**: connected to the relay, which answers DNS over TCP.
//! - **UDP connect, remote or DNS**: the socket is connected to the relay socket standing
//!   for the peer in its UDP association; `send()`/`write()` then go there untrapped.
//! - **sendto/sendmsg to a remote peer or nameserver**: sctrace sends the datagram itself
//!   (through the agent, or to the DNS responder) and returns its length; the app's socket
//!   is bound first, as the kernel's autobind would, so replies can reach it.
//!
//! Actions: always deferred (the agent is involved), answering 0 / the length, or an errno.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use sctrace_protocol::OpenError;

use crate::action::Action;
use crate::dns::Asker;
use crate::errno::Errno;
use crate::relay::tcp::{seen_as, Arranged};
use crate::relay::udp::{app_form, PeerKind, UdpAssociation};
use crate::remote::sockets::{Managed, TCP_ENTRY_GRACE};
use crate::remote::{canonical, Destination, Remote};
use crate::sockaddr::{family_name, sock_type_name, SockAddr};
use crate::supervisor::notification::{AddrArg, Notification};
use crate::sys::socket as sys;

use super::connect::connect_without_blocking;
use super::socket::{answer, AppSocket, Record};
use super::Context;

/// The trapped call being redirected, and the session carrying it out.
#[derive(Clone, Copy)]
pub struct Call<'a> {
    /// Handler context.
    pub ctx: &'a Context,
    /// The relaying session.
    pub remote: &'a Arc<Remote>,
    /// The call.
    pub n: &'a Notification,
}

/// The app socket's family and cookie, read once per call.
struct Target {
    family: i32,
    cookie: u64,
}

fn describe(sock: &AppSocket) -> Result<Target, Errno> {
    Ok(Target {
        family: sys::domain(sock.fd.as_fd())?,
        cookie: sys::cookie(sock.fd.as_fd())?,
    })
}

/// Who owns the socket, for DNS events.
fn asker(ctx: &Context, n: &Notification, sock: &AppSocket, family: i32, sock_type: i32) -> Asker {
    let tid = n.tid() as i32;
    let id = ctx.identities.get(tid);
    Asker {
        pid: id.as_ref().map(|i| i.pid).unwrap_or(tid),
        tid,
        comm: id.map(|i| i.comm).unwrap_or_else(|| "?".into()),
        fd: sock.app_fd,
        family: family_name(family),
        sock_type: sock_type_name(sock_type),
    }
}

/// Binds an unbound socket to the wildcard address of its family, as the kernel's autobind
/// does on a first send; returns the address the relay sees it from.
fn ensure_bound(fd: BorrowedFd<'_>, family: i32) -> Result<SocketAddr, Errno> {
    let local = sys::local_addr(fd)?;
    let current = SockAddr::parse(&local).and_then(|a| a.inet());
    let bound = match current {
        Some(addr) if addr.port() != 0 => addr,
        _ => {
            let any: SocketAddr = if family == libc::AF_INET6 {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            };
            let bytes = SockAddr::encode_inet(any);
            sys::bind(fd, Some(&bytes), bytes.len() as i32)?;
            SockAddr::parse(&sys::local_addr(fd)?)
                .and_then(|a| a.inet())
                .ok_or(Errno(libc::EINVAL))?
        }
    };
    Ok(seen_as(bound))
}

/// The TCP relay listener an app socket of `family` can connect to.
fn relay_listener(remote: &Remote, family: i32) -> Result<SocketAddr, Errno> {
    match remote.tcp.listener_for(family) {
        Some(addr) => Ok(addr),
        // No IPv6 loopback: a dual-stack socket reaches the IPv4 listener v4-mapped.
        None => remote
            .tcp
            .listener_for(libc::AF_INET)
            .map(|v4| app_form(v4, true))
            .ok_or(Errno(libc::ENETUNREACH)),
    }
}

/// Connects the app's socket to `to` (a loopback address of sctrace's) without blocking the
/// notification loop. A connection still completing counts as done: loopback connections
/// complete by themselves, and a non-blocking app socket learns it through SO_ERROR.
fn connect_to_relay(fd: BorrowedFd<'_>, to: SocketAddr) -> Result<(), Errno> {
    let flags = sys::file_flags(fd)?;
    let bytes = SockAddr::encode_inet(to);
    let addr = AddrArg::Bytes(bytes.clone());
    match connect_without_blocking(fd, flags, &addr, bytes.len() as i32) {
        Ok(_) | Err(Errno(libc::EALREADY | libc::EINPROGRESS)) => Ok(()),
        Err(err) => Err(err),
    }
}

/// What a connect that reached its destination returns: 0 for a blocking socket;
/// EINPROGRESS for a non-blocking one, as a connect to a remote host always does at first
/// (the socket is writable at once).
fn connected_reply(nonblocking: bool) -> Result<i64, Errno> {
    if nonblocking {
        Err(Errno(libc::EINPROGRESS))
    } else {
        Ok(0)
    }
}

/// A TCP connect routed remote or to a nameserver.
pub fn connect_tcp(
    Call { ctx, remote, n }: Call<'_>,
    sock: AppSocket,
    dst: SocketAddr,
    to: Destination,
    record: Option<Record>,
) -> Action {
    let target = match describe(&sock).and_then(|t| Ok((t, sys::file_flags(sock.fd.as_fd())?))) {
        Ok(t) => t,
        Err(err) => return answer(record, Err::<i64, _>(err)).into(),
    };
    let (target, flags) = target;
    let remote = Arc::clone(remote);
    if to == Destination::Dns {
        let asker = asker(ctx, n, &sock, target.family, libc::SOCK_STREAM);
        let result = join_relay(
            &remote,
            &sock,
            &target,
            Arranged::Dns { server: dst, asker },
        );
        return answer(
            record,
            result.and_then(|()| connected_reply(flags & libc::O_NONBLOCK != 0)),
        )
        .into();
    }
    let nonblocking = flags & libc::O_NONBLOCK != 0;
    Action::Defer(Box::pin(async move {
        // How long the app's call waits for the remote outcome: a blocking connect until
        // SO_SNDTIMEO (or the agent's own connect timeout), a non-blocking one briefly.
        let hold = if nonblocking {
            Some(NONBLOCKING_HOLD)
        } else {
            sys::send_timeout(sock.fd.as_fd()).ok().flatten()
        };
        let agent = remote.agent.clone();
        let mut opening = Box::pin(async move { agent.connect_tcp(canonical_addr(dst)).await });
        let outcome = match hold {
            Some(limit) => tokio::time::timeout(limit, &mut opening).await.ok(),
            None => Some(opening.as_mut().await),
        };
        match outcome {
            Some(Ok(stream)) => {
                let arranged = remote_arrangement(&remote, stream, target.cookie);
                let result = join_relay(&remote, &sock, &target, arranged);
                if result.is_ok() {
                    remote
                        .sockets
                        .insert(target.cookie, Managed::Tcp { peer: dst });
                }
                answer(record, result.and_then(|()| connected_reply(nonblocking)))
            }
            Some(Err(err)) => answer(record, Err::<i64, _>(open_errno(&err))),
            None => {
                // Still under way: the call returns EINPROGRESS and the socket waits in
                // the parking, to be settled when the agent answers.
                let v6 = target.family == libc::AF_INET6;
                let parked = connect_to_relay(sock.fd.as_fd(), remote.parking.black_hole(v6));
                if let Err(err) = parked {
                    return answer(record, Err::<i64, _>(err));
                }
                tokio::spawn(async move {
                    let outcome = opening.await;
                    settle(&remote, sock, target, dst, outcome);
                });
                answer(record, Err::<i64, _>(Errno(libc::EINPROGRESS)))
            }
        }
    }))
}

/// How long a non-blocking connect's call waits for the remote outcome before it returns
/// EINPROGRESS (connects within a cluster usually complete well within it).
pub const NONBLOCKING_HOLD: std::time::Duration = std::time::Duration::from_millis(50);

/// An agent stream arranged for the relay; its managed-socket entry outlives the relay by
/// a grace period, for `getpeername` on a socket whose peer closed.
fn remote_arrangement(remote: &Remote, stream: sctrace_protocol::Stream, cookie: u64) -> Arranged {
    let sockets = Arc::clone(&remote.sockets);
    let on_end = Box::new(move || {
        tokio::spawn(async move {
            tokio::time::sleep(TCP_ENTRY_GRACE).await;
            sockets.remove(cookie);
        });
    });
    Arranged::Remote { stream, on_end }
}

/// Registers the app socket with the relay and connects it there.
fn join_relay(
    remote: &Remote,
    sock: &AppSocket,
    target: &Target,
    arranged: Arranged,
) -> Result<(), Errno> {
    let listener = relay_listener(remote, target.family)?;
    let peer = ensure_bound(sock.fd.as_fd(), target.family)?;
    remote.tcp.expect(peer, arranged);
    connect_to_relay(sock.fd.as_fd(), listener).inspect_err(|_| remote.tcp.forget(peer))
}

/// Dissolves a parked socket's pending connect (`connect(AF_UNSPEC)`).
fn disconnect(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let mut unspec = [0u8; 16];
    unspec[..2].copy_from_slice(&(libc::AF_UNSPEC as u16).to_ne_bytes());
    sys::connect(fd, Some(&unspec), unspec.len() as i32)
}

/// Gives a parked socket the remote outcome (see `relay::parking`).
fn settle(
    remote: &Arc<Remote>,
    sock: AppSocket,
    target: Target,
    dst: SocketAddr,
    outcome: Result<sctrace_protocol::Stream, OpenError>,
) {
    let v6 = target.family == libc::AF_INET6;
    let fd = sock.fd.as_fd();
    let settled = disconnect(fd).and_then(|()| match outcome {
        Ok(stream) => {
            let arranged = remote_arrangement(remote, stream, target.cookie);
            join_relay(remote, &sock, &target, arranged)?;
            remote
                .sockets
                .insert(target.cookie, Managed::Tcp { peer: dst });
            Ok(())
        }
        Err(err) if open_errno(&err) == Errno(libc::ECONNREFUSED) => {
            connect_to_relay(fd, remote.parking.refusing(v6))
        }
        Err(_) => {
            sys::set_syn_count(fd, 1)?;
            connect_to_relay(fd, remote.parking.black_hole(v6))
        }
    });
    if let Err(err) = settled {
        tracing::debug!("cannot settle a pending connect to {dst}: {err}");
    }
}

/// The errno an app socket reports for a failed remote open.
fn open_errno(err: &OpenError) -> Errno {
    Errno(err.errno())
}

/// Destinations as the agent takes them (IPv4-mapped addresses as IPv4).
fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(addr.ip()), addr.port())
}

/// The UDP association of the app socket, made on first use (binding the socket).
fn association(
    ctx: &Context,
    remote: &Arc<Remote>,
    n: &Notification,
    sock: &AppSocket,
    target: &Target,
) -> Result<Arc<UdpAssociation>, Errno> {
    if let Some(Managed::Udp { assoc, .. }) = remote.sockets.get(target.cookie) {
        return Ok(assoc);
    }
    let app_local = ensure_bound(sock.fd.as_fd(), target.family)?;
    let sockets = Arc::clone(&remote.sockets);
    let cookie = target.cookie;
    let slot: Arc<std::sync::Mutex<Option<std::sync::Weak<UdpAssociation>>>> = Arc::default();
    let on_close_slot = Arc::clone(&slot);
    let assoc = UdpAssociation::start(
        app_local,
        remote.agent.clone(),
        Arc::clone(&remote.dns),
        asker(ctx, n, sock, target.family, libc::SOCK_DGRAM),
        Box::new(move || {
            let this = on_close_slot
                .lock()
                .ok()
                .and_then(|s| s.as_ref().and_then(|w| w.upgrade()));
            match this {
                Some(assoc) => sockets.remove_association(cookie, &assoc),
                None => sockets.remove(cookie),
            }
        }),
    );
    if let Ok(mut s) = slot.lock() {
        *s = Some(Arc::downgrade(&assoc));
    }
    remote.sockets.insert(
        target.cookie,
        Managed::Udp {
            assoc: Arc::clone(&assoc),
            connected: None,
        },
    );
    Ok(assoc)
}

/// The socket's family and cookie, and its UDP association (made on first use).
fn associated(
    Call { ctx, remote, n }: Call<'_>,
    sock: &AppSocket,
) -> Result<(Target, Arc<UdpAssociation>), Errno> {
    let target = describe(sock)?;
    let assoc = association(ctx, remote, n, sock, &target)?;
    Ok((target, assoc))
}

fn peer_kind(to: Destination) -> PeerKind {
    match to {
        Destination::Dns => PeerKind::Dns,
        _ => PeerKind::Remote,
    }
}

/// A UDP connect routed remote or to a nameserver.
pub fn connect_udp(
    call @ Call { remote, .. }: Call<'_>,
    sock: AppSocket,
    dst: SocketAddr,
    to: Destination,
    record: Option<Record>,
) -> Action {
    let (target, assoc) = match associated(call, &sock) {
        Ok(s) => s,
        Err(err) => return answer(record, Err::<i64, _>(err)).into(),
    };
    let remote = Arc::clone(remote);
    Action::Defer(Box::pin(async move {
        let peer = app_form(dst, target.family == libc::AF_INET6);
        let relay = match assoc.peer(peer, peer_kind(to)).await {
            Ok(relay) => relay,
            Err(err) => return answer(record, Err::<i64, _>(Errno::from_io(&err))),
        };
        let bytes = SockAddr::encode_inet(relay);
        let result = sys::connect(sock.fd.as_fd(), Some(&bytes), bytes.len() as i32);
        if result.is_ok() {
            remote.sockets.set_udp_peer(target.cookie, Some(dst));
        }
        answer(record, result.map(|()| 0i64))
    }))
}

/// A datagram the app sends to a remote peer or a nameserver with an address.
pub fn send_datagram(
    call: Call<'_>,
    sock: AppSocket,
    dst: SocketAddr,
    to: Destination,
    payload: Vec<u8>,
    record: Option<Record>,
) -> Action {
    let (target, assoc) = match associated(call, &sock) {
        Ok(s) => s,
        Err(err) => return answer(record, Err::<i64, _>(err)).into(),
    };
    Action::Defer(Box::pin(async move {
        let peer = app_form(dst, target.family == libc::AF_INET6);
        let len = payload.len() as i64;
        match assoc.send_from_app(peer, peer_kind(to), payload).await {
            Ok(()) => answer(record, Ok(len)),
            Err(err) => answer(record, Err::<i64, _>(Errno::from_io(&err))),
        }
    }))
}
