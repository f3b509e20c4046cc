//! `connect(fd, addr, addrlen)`.
//!
//! Unix addresses are left to the kernel (see [`AddrArg::is_unix`]), except the sockets of
//! local resolver services in a relaying session, which are refused (ENOENT) so that name
//! lookups can't bypass sctrace's DNS responder. In a relaying session an inet destination
//! of a TCP or UDP socket is routed by the filter: remote, to the DNS responder, or local
//! (looked up again locally when its address came from the target's DNS); a socket of the
//! target sctrace installed in the app is the kernel's to serve. Everything else
//! is connected on this machine as the app asked: by the kernel itself when nothing needs
//! the outcome, else by re-issuing the call on the app's socket so that sctrace sees the
//! kernel's exact outcome — for the event, and in container mode, where the socket's held
//! copy must be let go once it is connected (see `trap::owned`).
//!
//! Plans: `Answer` (EBADF, or `Continue` for an unreachable caller or a connect nothing
//! needs the outcome of), `Kernel` (Unix addresses, and local connects without an event),
//! `Refuse(ENOENT)`, or work: `Connect`, `Dissolve`, `ConnectReresolved`, `ConnectRemote`,
//! `ConnectDns`, `ConnectDatagram`.

use std::os::fd::AsFd;

use sctrace_filter::Protocol;

use crate::errno::Errno;
use crate::events::Record;
use crate::plan::{Plan, Reply, Work};
use crate::relay::udp::PeerKind;
use crate::remote::Destination;
use crate::route::Routed;
use crate::sockaddr::SockAddr;
use crate::trap::socket::{AppSocket, Untaken};
use crate::trap::{AddrArg, Notification};

use super::Context;

/// Decides one trapped connect.
pub fn decide(ctx: &Context, n: &Notification) -> Plan {
    if ctx.remote.is_none() && !ctx.events.enabled() && ctx.access.owned().is_none() {
        // Nothing to route, record or let go: not even the socket is needed.
        return Reply::Continue.into();
    }
    let len = n.arg_int(2);
    let addr = n.copy_addr(n.arg_ptr(1), len);
    // Routes decided before the socket is looked at, kept for when it is (TCP, UDP).
    let mut early: [Option<Routed>; 2] = [None, None];
    if let (Some(remote), Some(dst)) = (&ctx.remote, addr.inet()) {
        if !ctx.events.enabled() && ctx.access.owned().is_none() {
            for (at, protocol) in [Protocol::Tcp, Protocol::Udp].into_iter().enumerate() {
                let known = match protocol {
                    Protocol::Tcp => early[0].take(),
                    Protocol::Udp => early[1].take(),
                };
                let routed = known.unwrap_or_else(|| remote.route(protocol, dst));
                let stays = stays_here(&routed);
                early[at] = Some(routed);
                if !stays {
                    break;
                }
            }
            if early.iter().all(|r| r.as_ref().is_some_and(stays_here)) {
                // Whatever the socket, a TCP or a UDP one, the connect is the kernel's
                // (what `as_asked` below would decide after a look at it): no copy of the
                // socket is needed.
                return Reply::Continue.into();
            }
        }
    }
    let sock = match ctx.access.take(&ctx.notify, n, n.arg_int(0)) {
        Ok(sock) => Some(sock),
        // Container mode holds no Unix sockets (it creates only inet ones): their connects
        // are still checked, only without an event.
        Err(Untaken::Unheld { .. }) if addr.is_unix() => None,
        Err(untaken) => return ctx.untaken(n, Some(&addr), untaken).into(),
    };
    if addr.is_unix() {
        let record = sock
            .as_ref()
            .and_then(|s| ctx.record(n, s, || addr.describe()));
        if let (Some(remote), AddrArg::Bytes(bytes)) = (&ctx.remote, &addr) {
            if let Some(SockAddr::UnixPath(path)) = SockAddr::parse(bytes) {
                if remote.refuses_unix_path(&path) {
                    return Plan::Refuse(record, Errno(libc::ENOENT));
                }
            }
        }
        return Plan::Kernel(record.into_iter().collect());
    }
    let Some(sock) = sock else {
        return Reply::Continue.into();
    };
    let mut record = ctx.record(n, &sock, || addr.describe());
    let owned = ctx.access.owned().is_some();
    let Some(remote) = &ctx.remote else {
        return as_asked(sock, record, addr, len, owned);
    };
    if addr.family() == Some(libc::AF_UNSPEC) {
        // A datagram socket dissolving its association: it no longer has a peer.
        return Plan::Socket {
            sock,
            record,
            work: Work::Dissolve { addr, len },
        };
    }
    let Some(dst) = addr.inet() else {
        return as_asked(sock, record, addr, len, owned);
    };
    let Some(protocol) = sock.transport() else {
        if let Some(record) = record.as_mut() {
            record.set_route(&Routed::not_relayed());
        }
        return as_asked(sock, record, addr, len, owned);
    };
    let routed = remote.route(protocol, dst);
    if let Some(record) = record.as_mut() {
        record.set_route(&routed);
    }
    if routed.to == Destination::Local && routed.reresolve.is_none() {
        // Stays here as asked (what the checks below lead to as well).
        return as_asked(sock, record, addr, len, owned);
    }
    if protocol == Protocol::Tcp
        && remote
            .direct
            .as_ref()
            .is_some_and(|direct| direct.is_of_target(sock.fd.as_fd()))
    {
        // A socket of the target sctrace installed (`execute::direct`): the kernel answers
        // as in the target (EISCONN, EALREADY, a new connect after a failed one).
        return as_asked(sock, record, addr, len, owned);
    }
    if protocol == Protocol::Tcp && is_connected_or_connecting(&sock) {
        // The kernel answers EISCONN (EALREADY while a connect is in progress) without
        // touching the network, as it would in the target; routing it would have the agent
        // connect to the destination a second time.
        return as_asked(sock, record, addr, len, owned);
    }
    let work = match (routed.to, protocol) {
        (Destination::Local, _) => match routed.reresolve {
            Some(name) => Work::ConnectReresolved { name, dst },
            None => return as_asked(sock, record, addr, len, owned),
        },
        (Destination::Remote, Protocol::Tcp) => Work::ConnectRemote {
            dst,
            tid: n.tid() as i32,
            owned: ctx.access.owned().cloned(),
        },
        // Port 0: a route probe, nothing is ever sent (see ProbeRoute).
        (Destination::Remote, Protocol::Udp) if dst.port() == 0 => Work::ProbeRoute { dst },
        (Destination::Dns, Protocol::Tcp) => Work::ConnectDns {
            server: dst,
            asker: ctx.asker(n, &sock, family_of(&sock), libc::SOCK_STREAM),
        },
        (to, Protocol::Udp) => Work::ConnectDatagram {
            dst,
            peer: peer_kind(to),
            asker: ctx.asker(n, &sock, family_of(&sock), libc::SOCK_DGRAM),
        },
    };
    Plan::Socket { sock, record, work }
}

/// Whether a connection so routed stays on this machine as asked (no name to look up
/// again here).
fn stays_here(routed: &Routed) -> bool {
    routed.to == Destination::Local && routed.reresolve.is_none()
}

/// The connect as the app asked: left to the kernel when nothing needs its outcome (no
/// event, not container mode), else re-issued on its socket.
fn as_asked(sock: AppSocket, record: Option<Record>, addr: AddrArg, len: i32, owned: bool) -> Plan {
    if record.is_none() && !owned {
        return Plan::Kernel(Vec::new());
    }
    Plan::Socket {
        sock,
        record,
        work: Work::Connect { addr, len },
    }
}

/// Whether a TCP socket is past `TCP_CLOSE`: connected, connecting, or listening — a
/// socket the kernel itself refuses to connect again.
fn is_connected_or_connecting(sock: &AppSocket) -> bool {
    const TCP_CLOSE: u8 = 7;
    crate::sys::socket::tcp_state(sock.fd.as_fd()).is_ok_and(|state| state != TCP_CLOSE)
}

fn family_of(sock: &AppSocket) -> i32 {
    sock.family().unwrap_or(libc::AF_INET)
}

/// Who a UDP peer routed away from this machine is.
pub fn peer_kind(to: Destination) -> PeerKind {
    match to {
        Destination::Dns => PeerKind::Dns,
        _ => PeerKind::Remote,
    }
}
