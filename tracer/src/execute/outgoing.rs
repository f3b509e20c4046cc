//! Remote decisions for `connect` and address-carrying sends, carried out: where a remote
//! connect is made.
//!
//! - **TCP connect, remote, with a local agent**: first tried with a socket of the target
//!   installed in place of the app's (`direct`); what cannot be is relayed as follows.
//! - **TCP connect, remote**: the agent connects to the destination first, so the app's
//!   connect returns the real outcome (ECONNREFUSED, ETIMEDOUT, ENETUNREACH, ...). On
//!   success the app's own socket (same fd, options, O_NONBLOCK and epoll registrations) is
//!   connected to the TCP relay, which joins it to the agent stream. The call is held until
//!   the remote outcome is known — for a non-blocking socket at most [`NONBLOCKING_HOLD`],
//!   after which it returns EINPROGRESS and the socket waits in the parking
//!   (`relay::parking`) until the agent answers.
//! - **TCP connect to a nameserver**: connected to the relay, which answers DNS over TCP.
//! - **UDP connect, remote or DNS**: the socket is connected to the relay socket standing
//!   for the peer in its UDP association; `send()`/`write()` then go there untrapped.
//! - **sendto/sendmsg to a remote peer or nameserver**: sctrace sends the datagram itself
//!   (through the agent, or to the DNS responder) and returns its length; the app's socket
//!   is bound first, as the kernel's autobind would, so replies can reach it.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use sctrace_protocol::{OpenError, Stream};

use crate::agent_link::DataRoute;
use crate::dns::Asker;
use crate::errno::Errno;
use crate::events::Record;
use crate::plan::Reply;
use crate::relay::tcp::Arranged;
use crate::relay::udp::{AppEnd, PeerKind, SharedPort, UdpAssociation};
use crate::remote::sockets::{Managed, TCP_ENTRY_GRACE};
use crate::remote::Remote;
use crate::sockaddr::{canonical_addr, in_family, loopback_if_wildcard, wildcard, SockAddr};
use crate::sys::memory;
use crate::sys::socket as sys;
use crate::trap::owned::OwnedSockets;
use crate::trap::socket::AppSocket;
use crate::trap::AddrArg;

use super::attach;
use super::direct;
use super::local::connect_without_blocking;
use super::{answer, Action};

/// How long a non-blocking connect's call waits for the remote outcome before it returns
/// EINPROGRESS (connects within a cluster usually complete well within it).
pub const NONBLOCKING_HOLD: Duration = Duration::from_millis(50);

/// The app socket's family and identity, read once per call.
struct Target {
    family: i32,
    id: u64,
}

impl Target {
    fn of(sock: &AppSocket) -> Result<Target, Errno> {
        Ok(Target {
            family: sock.family()?,
            id: sock.identity()?,
        })
    }

    fn v6(&self) -> bool {
        self.family == libc::AF_INET6
    }
}

/// A TCP connect routed remote.
pub fn connect_tcp(
    remote: &Arc<Remote>,
    sock: AppSocket,
    dst: SocketAddr,
    tid: i32,
    owned: Option<Arc<OwnedSockets>>,
    mut record: Option<Record>,
) -> Action {
    let described = Target::of(&sock).and_then(|t| Ok((t, sock.file_flags()?)));
    let (target, flags) = match described {
        Ok(described) => described,
        Err(err) => return answer(record, Err::<i64, _>(err)).into(),
    };
    let direct = remote.direct.as_ref().and_then(|direct| {
        direct::prepare(&sock, tid, &direct.epolls)
            .inspect_err(|why| tracing::debug!("connect to {dst} relayed: {why}"))
            .ok()
            .map(|prepared| (Arc::clone(direct), prepared))
    });
    // An agent reached over plain TCP: the app's socket itself can carry the bytes.
    let data = remote
        .data
        .as_ref()
        .filter(|_| direct.is_none())
        .and_then(|route| {
            attach::reachable(route, sock.fd.as_fd(), target.v6())
                .map(|agent| (route.clone(), agent))
        });
    let remote = Arc::clone(remote);
    let nonblocking = flags & libc::O_NONBLOCK != 0;
    Action::Defer(Box::pin(async move {
        if let Some((direct, prepared)) = direct {
            match direct::connect(&direct, prepared, &sock, dst, owned.as_deref(), record).await {
                Ok(reply) => return reply,
                Err(unused) => record = unused,
            }
        }
        if let Some(record) = record.as_mut() {
            record.set_path(if data.is_some() { "data" } else { "relay" });
        }
        // How long the app's call waits for the remote outcome: a blocking connect until
        // SO_SNDTIMEO (or the agent's own connect timeout), a non-blocking one briefly.
        let hold = if nonblocking {
            Some(NONBLOCKING_HOLD)
        } else {
            sys::send_timeout(sock.fd.as_fd()).ok().flatten()
        };
        let agent = remote.agent.clone();
        let attached = data.is_some();
        let mut opening = Box::pin(async move {
            if attached {
                agent.connect_tcp_attached(canonical_addr(dst)).await
            } else {
                agent.connect_tcp(canonical_addr(dst)).await
            }
        });
        let outcome = match hold {
            Some(limit) => tokio::time::timeout(limit, &mut opening).await.ok(),
            None => Some(opening.as_mut().await),
        };
        match outcome {
            Some(Ok(stream)) => {
                let result = match data {
                    Some((route, agent)) => {
                        attach_remote(&remote, &sock, &target, dst, stream, &route, agent).await
                    }
                    None => join_remote(&remote, &sock, &target, dst, stream, None),
                };
                answer(record, result.and_then(|()| connected_reply(nonblocking)))
            }
            // A non-blocking connect learns of a refusal (a RST) only after it returned
            // EINPROGRESS, as the kernel reports it: the socket is settled to be refused.
            // Errors found before any packet leaves (no route) come back at once.
            Some(Err(err)) if nonblocking && reported_later(open_errno(&err)) => {
                let parked = park_failure(&remote, sock.fd.as_fd(), target.v6(), &err);
                answer(record, parked.and(Err::<i64, _>(Errno(libc::EINPROGRESS))))
            }
            Some(Err(err)) => answer(record, Err::<i64, _>(open_errno(&err))),
            None => {
                // Still under way: the call returns EINPROGRESS and the socket waits in
                // the parking, to be settled when the agent answers.
                let parked = start_connect(sock.fd.as_fd(), remote.parking.black_hole(target.v6()));
                if let Err(err) = parked {
                    return answer(record, Err::<i64, _>(err));
                }
                let route = data.map(|(route, _)| route);
                tokio::spawn(async move {
                    let outcome = opening.await;
                    settle(&remote, sock, target, dst, outcome, route);
                });
                answer(record, Err::<i64, _>(Errno(libc::EINPROGRESS)))
            }
        }
    }))
}

/// A route probe (a UDP connect to port 0 of a remote address): it fails as the target's
/// connect would, or succeeds with the target's source address recorded for `getsockname`.
/// The kernel leaves a socket connected to port 0 without a peer (`getpeername`: ENOTCONN)
/// and sends nothing; here the socket is only bound, as the connect would have bound it, to
/// the wildcard address (so that it can still be connected anywhere). Answered at once when
/// the route is known (a lookup's answer asked for it), else when the agent tells it.
pub fn probe_route(
    remote: &Arc<Remote>,
    sock: AppSocket,
    dst: SocketAddr,
    record: Option<Record>,
) -> Action {
    if let Some(source) = remote.routes.cached(dst) {
        return probed(remote, &sock, source, record).into();
    }
    let remote = Arc::clone(remote);
    Action::Defer(Box::pin(async move {
        let source = remote.routes.source(dst).await;
        probed(&remote, &sock, source, record)
    }))
}

/// A route probe's outcome, given the target's route.
fn probed(
    remote: &Remote,
    sock: &AppSocket,
    source: Result<IpAddr, Errno>,
    record: Option<Record>,
) -> Reply {
    let source = match source {
        Ok(source) => source,
        Err(err) => return answer(record, Err::<i64, _>(err)),
    };
    let bound = Target::of(sock).and_then(|target| {
        Ok((
            target.id,
            target.v6(),
            ensure_bound(sock.fd.as_fd(), target.v6())?,
        ))
    });
    match bound {
        Ok((id, v6, bound)) => {
            remote.sockets.insert(
                id,
                Managed::Probe {
                    local: in_family(SocketAddr::new(source, bound.port()), v6),
                },
            );
            answer(record, Ok(0i64))
        }
        Err(err) => answer(record, Err::<i64, _>(err)),
    }
}

/// A TCP connect to a nameserver sctrace answers for: joined to the relay's DNS service.
pub fn connect_dns(
    remote: &Remote,
    sock: AppSocket,
    server: SocketAddr,
    asker: Asker,
    record: Option<Record>,
) -> Action {
    let result = Target::of(&sock).and_then(|target| {
        let nonblocking = sock.file_flags()? & libc::O_NONBLOCK != 0;
        join_relay(remote, &sock, &target, Arranged::Dns { server, asker })?;
        connected_reply(nonblocking)
    });
    answer(record, result).into()
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

/// Makes the app's socket the data connection of an agent stream that reached `dst`, and
/// manages it (its `getpeername` shows `dst`, its `getsockname` the target's address). On
/// failure the socket is disconnected again.
async fn attach_remote(
    remote: &Remote,
    sock: &AppSocket,
    target: &Target,
    dst: SocketAddr,
    stream: Stream,
    route: &DataRoute,
    agent: SocketAddr,
) -> Result<(), Errno> {
    let fd = sock.fd.as_fd();
    if let Err(err) = attach::attach_app_socket(fd, agent, route, stream.id()).await {
        let _ = disconnect(fd);
        return Err(err);
    }
    // The stream only carried the connect. As with a handed-over connection, sctrace does
    // not learn when this one ends: its entry stays until the table's bound evicts it.
    let local = in_family(stream.local_addr(), target.v6());
    remote.sockets.insert(
        target.id,
        Managed::Tcp {
            peer: in_family(dst, target.v6()),
            local,
        },
    );
    drop(stream);
    Ok(())
}

/// Joins the app socket to an agent stream that reached `dst`, and manages it (its
/// `getpeername` shows `dst`). With `data`, the stream's bytes go over a data connection,
/// which the relay makes.
fn join_remote(
    remote: &Remote,
    sock: &AppSocket,
    target: &Target,
    dst: SocketAddr,
    stream: Stream,
    data: Option<DataRoute>,
) -> Result<(), Errno> {
    // The managed-socket entry outlives the relay by a grace period, for `getpeername` on
    // a socket whose peer closed.
    let local = in_family(stream.local_addr(), target.v6());
    let sockets = Arc::clone(&remote.sockets);
    let id = target.id;
    let on_end = Box::new(move || {
        tokio::spawn(async move {
            tokio::time::sleep(TCP_ENTRY_GRACE).await;
            sockets.remove(id);
        });
    });
    join_relay(
        remote,
        sock,
        target,
        Arranged::Remote {
            stream,
            on_end,
            data,
        },
    )?;
    let peer = in_family(dst, target.v6());
    remote.sockets.insert(id, Managed::Tcp { peer, local });
    Ok(())
}

/// Registers the app socket with the relay and connects it there.
fn join_relay(
    remote: &Remote,
    sock: &AppSocket,
    target: &Target,
    arranged: Arranged,
) -> Result<(), Errno> {
    let listener = relay_listener(remote, target.family)?;
    let peer = ensure_bound(sock.fd.as_fd(), target.v6())?;
    let app = sock.fd.try_clone().map_err(|e| Errno::from_io(&e))?;
    remote.tcp.expect(peer, app, arranged);
    connect_to_relay(sock.fd.as_fd(), listener).inspect_err(|_| remote.tcp.forget(peer))
}

/// The TCP relay listener an app socket of `family` can connect to.
fn relay_listener(remote: &Remote, family: i32) -> Result<SocketAddr, Errno> {
    match remote.tcp.listener_for(family) {
        Some(addr) => Ok(addr),
        // No IPv6 loopback: a dual-stack socket reaches the IPv4 listener v4-mapped.
        None => remote
            .tcp
            .listener_for(libc::AF_INET)
            .map(|v4| in_family(v4, true))
            .ok_or(Errno(libc::ENETUNREACH)),
    }
}

/// Binds an unbound socket to the wildcard address of its family, as the kernel's autobind
/// does on a first send; returns the address a relay on loopback sees it from.
fn ensure_bound(fd: BorrowedFd<'_>, v6: bool) -> Result<SocketAddr, Errno> {
    let current = SockAddr::parse(&sys::local_addr(fd)?).and_then(|a| a.inet());
    let bound = match current {
        Some(addr) if addr.port() != 0 => addr,
        _ => {
            let bytes = SockAddr::encode_inet(wildcard(v6));
            sys::bind(fd, Some(&bytes), bytes.len() as i32)?;
            SockAddr::parse(&sys::local_addr(fd)?)
                .and_then(|a| a.inet())
                .ok_or(Errno(libc::EINVAL))?
        }
    };
    Ok(loopback_if_wildcard(bound))
}

/// Connects the app's socket to `to` (a loopback address of sctrace's) without blocking the
/// notification loop. A connection still completing counts as done: loopback connections
/// complete by themselves, and a non-blocking app socket learns it through SO_ERROR.
fn connect_to_relay(fd: BorrowedFd<'_>, to: SocketAddr) -> Result<(), Errno> {
    let flags = sys::file_flags(fd)?;
    let bytes = SockAddr::encode_inet(to);
    let len = bytes.len() as i32;
    match connect_without_blocking(fd, flags, &AddrArg::Bytes(bytes), len) {
        Ok(_) | Err(Errno(libc::EALREADY | libc::EINPROGRESS)) => Ok(()),
        Err(err) => Err(err),
    }
}

/// Starts connecting the app's socket to `to` (a parking place), once, without waiting: its
/// outcome — a RST from the refusing port, nothing from the black hole — must stay in the
/// socket for the app to read (SO_ERROR, poll), not be taken by sctrace asking again.
pub(super) fn start_connect(fd: BorrowedFd<'_>, to: SocketAddr) -> Result<(), Errno> {
    match connect_once(fd, to) {
        Ok(()) | Err(Errno(libc::EINPROGRESS)) => Ok(()),
        Err(err) => Err(err),
    }
}

/// One `connect` of `fd` to `to` with O_NONBLOCK set for the call (the socket's file flags
/// are restored at once).
pub(super) fn connect_once(fd: BorrowedFd<'_>, to: SocketAddr) -> Result<(), Errno> {
    let flags = sys::file_flags(fd)?;
    let bytes = SockAddr::encode_inet(to);
    sys::set_file_flags(fd, flags | libc::O_NONBLOCK)?;
    let result = sys::connect(fd, Some(&bytes), bytes.len() as i32);
    if let Err(err) = sys::set_file_flags(fd, flags) {
        tracing::warn!("cannot restore the flags of a connecting socket: {err}");
    }
    result
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
    outcome: Result<Stream, OpenError>,
    data: Option<DataRoute>,
) {
    let v6 = target.v6();
    let fd = sock.fd.as_fd();
    let settled = disconnect(fd).and_then(|()| match outcome {
        Ok(stream) => join_remote(remote, &sock, &target, dst, stream, data),
        Err(err) => park_failure(remote, fd, v6, &err),
    });
    if let Err(err) = settled {
        tracing::debug!("cannot settle a pending connect to {dst}: {err}");
    }
}

/// Whether the kernel reports a failed connect with this errno only after a non-blocking
/// connect returned EINPROGRESS (an answer from the network), rather than from connect
/// itself (no route, no local address).
fn reported_later(errno: Errno) -> bool {
    matches!(
        errno.0,
        libc::ECONNREFUSED | libc::ETIMEDOUT | libc::EHOSTUNREACH | libc::ECONNRESET
    )
}

/// Connects an unconnected app socket where it fails the way the remote connect did, for
/// the app to learn through SO_ERROR: refused at once (a bound port with no listener, whose
/// RST gives ECONNREFUSED), or otherwise timed out (the black hole, giving up after one SYN
/// retry: ETIMEDOUT).
fn park_failure(
    remote: &Remote,
    fd: BorrowedFd<'_>,
    v6: bool,
    err: &OpenError,
) -> Result<(), Errno> {
    if open_errno(err) == Errno(libc::ECONNREFUSED) {
        start_connect(fd, remote.parking.refusing(v6))
    } else {
        sys::set_syn_count(fd, 1)?;
        start_connect(fd, remote.parking.black_hole(v6))
    }
}

/// The errno an app socket reports for a failed remote open.
fn open_errno(err: &OpenError) -> Errno {
    Errno(err.errno())
}

/// For a socket with `SO_REUSEADDR`, which any local user could bind too and send to its
/// relay socket from: the option is turned off, so that nobody can from now on, and the
/// identity a relay checks datagrams against while a socket bound before is still there.
/// None for other sockets, or when the socket cannot be inspected.
fn shared_port(fd: BorrowedFd<'_>) -> Option<SharedPort> {
    if !sys::reuses_address(fd).unwrap_or(false) {
        return None;
    }
    if let Err(err) = sys::stop_reusing_address(fd) {
        tracing::debug!("cannot turn SO_REUSEADDR off on a relayed UDP socket: {err}");
    }
    let (inode, uid) = sys::inode_and_owner(fd).ok()?;
    Some(SharedPort { inode, uid })
}

/// The UDP association of the app socket, made on first use (binding the socket).
fn association(
    remote: &Arc<Remote>,
    sock: &AppSocket,
    target: &Target,
    asker: Asker,
) -> Result<Arc<UdpAssociation>, Errno> {
    if let Some(Managed::Udp { assoc, .. }) = remote.sockets.get(target.id) {
        return Ok(assoc);
    }
    let app_local = ensure_bound(sock.fd.as_fd(), target.v6())?;
    let sockets = Arc::clone(&remote.sockets);
    let id = target.id;
    let slot: Arc<std::sync::Mutex<Option<std::sync::Weak<UdpAssociation>>>> = Arc::default();
    let on_close_slot = Arc::clone(&slot);
    let assoc = UdpAssociation::start(
        AppEnd {
            local: app_local,
            shared: shared_port(sock.fd.as_fd()),
        },
        remote.agent.clone(),
        Arc::clone(&remote.nameserver_relays),
        asker,
        remote.udp_policy.clone(),
        Box::new(move || {
            let this = on_close_slot
                .lock()
                .ok()
                .and_then(|s| s.as_ref().and_then(|w| w.upgrade()));
            match this {
                Some(assoc) => sockets.remove_association(id, &assoc),
                None => sockets.remove(id),
            }
        }),
    );
    if let Ok(mut s) = slot.lock() {
        *s = Some(Arc::downgrade(&assoc));
    }
    remote.sockets.insert(
        target.id,
        Managed::Udp {
            assoc: Arc::clone(&assoc),
            connected: None,
        },
    );
    Ok(assoc)
}

/// The socket's family and identity, and its UDP association (made on first use).
fn associated(
    remote: &Arc<Remote>,
    sock: &AppSocket,
    asker: Asker,
) -> Result<(Target, Arc<UdpAssociation>), Errno> {
    let target = Target::of(sock)?;
    let assoc = association(remote, sock, &target, asker)?;
    Ok((target, assoc))
}

/// A UDP connect routed remote or to a nameserver. A remote one fails as the target's own
/// `connect` would (no route: ENETUNREACH, ...), and the socket's address in the target (the
/// route's source) is what its `getsockname` shows.
///
/// Nothing in it waits but asking the agent for a route not known yet: a connect to a
/// nameserver, or to a peer whose route is known (glibc's sorting connects right after a
/// lookup, whose answer asked for the routes), is answered at once by the notification
/// loop. The association's agent flow is opened only when the app first sends to a remote
/// peer, so a socket connected only to learn its source address never opens one.
pub fn connect_udp(
    remote: &Arc<Remote>,
    sock: AppSocket,
    dst: SocketAddr,
    peer: PeerKind,
    asker: Asker,
    record: Option<Record>,
) -> Action {
    let (target, assoc) = match associated(remote, &sock, asker) {
        Ok(s) => s,
        Err(err) => return answer(record, Err::<i64, _>(err)).into(),
    };
    let known = match peer {
        PeerKind::Remote => remote.routes.cached(dst).map(|route| route.map(Some)),
        PeerKind::Dns => Some(Ok(None)),
    };
    let connect = UdpConnect {
        sock,
        target,
        assoc,
        dst,
        peer,
    };
    if let Some(source) = known {
        return connect.finish(remote, source, record).into();
    }
    let remote = Arc::clone(remote);
    Action::Defer(Box::pin(async move {
        let source = remote.routes.source(dst).await.map(Some);
        connect.finish(&remote, source, record)
    }))
}

/// A UDP connect whose socket has its association, waiting only for the route's source.
struct UdpConnect {
    sock: AppSocket,
    target: Target,
    assoc: Arc<UdpAssociation>,
    dst: SocketAddr,
    peer: PeerKind,
}

impl UdpConnect {
    /// Connects the app's socket to the relay socket standing for the peer, given the
    /// target's source address for it (`None` for a nameserver) or the route's error.
    fn finish(
        self,
        remote: &Remote,
        source: Result<Option<IpAddr>, Errno>,
        record: Option<Record>,
    ) -> Reply {
        let UdpConnect {
            sock,
            target,
            assoc,
            dst,
            peer,
        } = self;
        let relayed = source.and_then(|source| {
            let relay = assoc
                .peer(in_family(dst, target.v6()), peer)
                .map_err(|err| Errno::from_io(&err))?;
            Ok((source, relay))
        });
        let (source, relay) = match relayed {
            Ok(relayed) => relayed,
            Err(err) => {
                // An association that never relayed anything starts no task, so nothing
                // would end it: it goes (the socket stays bound, as the kernel binds it
                // before routing).
                if assoc.is_unused() {
                    remote.sockets.remove_association(target.id, &assoc);
                }
                return answer(record, Err::<i64, _>(err));
            }
        };
        let bytes = SockAddr::encode_inet(relay);
        let result = sys::connect(sock.fd.as_fd(), Some(&bytes), bytes.len() as i32);
        if result.is_ok() {
            // The target picks the source address; the port is the app socket's own.
            let local = source.and_then(|ip| {
                let port = sock.local_inet()?.port();
                Some(in_family(SocketAddr::new(ip, port), target.v6()))
            });
            let peer = in_family(dst, target.v6());
            remote.sockets.set_udp_peer(target.id, Some((peer, local)));
        }
        answer(record, result.map(|()| 0i64))
    }
}

/// A datagram the app sends to a remote peer or a nameserver with an address.
pub fn send_datagram(
    remote: &Arc<Remote>,
    sock: AppSocket,
    dst: SocketAddr,
    peer: PeerKind,
    payload: Vec<u8>,
    asker: Asker,
    record: Option<Record>,
) -> Action {
    let (target, assoc) = match associated(remote, &sock, asker) {
        Ok(s) => s,
        Err(err) => return answer(record, Err::<i64, _>(err)).into(),
    };
    let len = payload.len() as i64;
    let dst = in_family(dst, target.v6());
    if peer == PeerKind::Dns {
        // Answered from the cache on the spot, or by a task: the app needn't wait.
        let sent = assoc.send_to_nameserver(dst, payload);
        return answer(record, sent.map(|()| len).map_err(|e| Errno::from_io(&e))).into();
    }
    Action::Defer(Box::pin(async move {
        match assoc.send_from_app(dst, payload).await {
            Ok(()) => answer(record, Ok(len)),
            Err(err) => answer(record, Err::<i64, _>(Errno::from_io(&err))),
        }
    }))
}

/// DNS queries sent with `sendmmsg` on a socket connected to `nameserver`: each goes to the
/// association (answered from the cache on the spot, else by a task) and its `msg_len` is
/// written as the kernel would; the answer is how many were sent. A fault writing a length
/// fails the call with EFAULT if no message counted yet, as the kernel does.
pub fn query_nameserver(
    assoc: &Arc<UdpAssociation>,
    nameserver: SocketAddr,
    queries: Vec<Vec<u8>>,
    lens_at: &[u64],
    tid: u32,
) -> Reply {
    let mut sent = 0i64;
    for (query, &len_at) in queries.into_iter().zip(lens_at) {
        let len = query.len() as u32;
        let outcome = memory::write_all(tid, len_at, &len.to_ne_bytes())
            .map_err(|_| Errno(libc::EFAULT))
            .and_then(|()| {
                assoc
                    .send_to_nameserver(nameserver, query)
                    .map_err(|e| Errno::from_io(&e))
            });
        match outcome {
            Ok(()) => sent += 1,
            Err(err) if sent == 0 => return Reply::Fail(err),
            Err(_) => break,
        }
    }
    Reply::Return(sent)
}
