//! ② Deciding: one module per family of trapped calls. A handler copies what it needs out
//! of the app (`trap`), checks the call is still pending, decides, and returns a [`Plan`] —
//! plain data saying what to do. It never acts on the app's socket and never answers the
//! kernel: the executor (`execute`) carries plans out, the supervisor answers.
//!
//! Without an agent (`sctrace trace`, `run` without a target) every decision is local: the
//! call is re-issued on the app's own socket (or left to the kernel) and recorded. In a
//! relaying session, connects and sends are routed by the filter ([`Remote::route`]);
//! receives and `getpeername` are emulated for the sockets sctrace manages, and accepts for
//! listeners whose port is subscribed in the target.
//!
//! In container mode (`trap::owned`) `socket()` for the inet domains is trapped too, and
//! sctrace creates those sockets for the app.

mod accept;
mod bind;
mod connect;
mod recv;
mod send;
mod socket;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use sctrace_filter::Protocol;

use crate::dns::Asker;
use crate::errno::Errno;
use crate::events::{EventSink, Record};
use crate::plan::{Plan, Reply};
use crate::procfs::IdentityCache;
use crate::remote::{Destination, Remote};
use crate::sockaddr::{family_name, sock_type_name};
use crate::sys::notify::NotifyFd;
use crate::trap::socket::{AppSocket, SocketAccess, Untaken};
use crate::trap::{AddrArg, CallRef, Notification, Syscall};

/// What handlers share: the listener (for validity checks), events, and the relaying
/// session when there is an agent.
pub struct Context {
    /// The seccomp listener, for `id_valid` checks after copying.
    pub notify: Arc<NotifyFd>,
    /// How the app's sockets are reached: copied, or held since sctrace created them.
    pub access: SocketAccess,
    /// Where events go.
    pub events: EventSink,
    /// Recently read thread identities, for events.
    pub identities: IdentityCache,
    /// The relaying session, when there is an agent.
    pub remote: Option<Arc<Remote>>,
    /// Processes already warned about as uninspectable, or about sockets sctrace does not
    /// hold.
    pub uninspectable: Mutex<HashSet<i32>>,
}

impl Context {
    /// Whether the call is still pending after its arguments were copied (TOCTOU rule).
    pub fn still_pending(&self, n: &Notification) -> bool {
        self.notify.id_valid(n.raw.id)
    }

    /// Takes sctrace's fd for the app's socket `app_fd` for call `n` (after the call's other
    /// arguments were copied; `dest` is the destination the call carries, if any). On
    /// failure, the answer to the call: EBADF as the kernel would (it checks the fd first),
    /// `Continue` when the caller is gone or the fd is no socket (the kernel answers
    /// ENOTSOCK), or what [`Context::unusable`] says.
    pub fn take_socket(
        &self,
        n: &Notification,
        app_fd: i32,
        dest: Option<&AddrArg>,
    ) -> Result<AppSocket, Reply> {
        self.access
            .take(&self.notify, n, app_fd)
            .map_err(|untaken| self.untaken(n, dest, untaken))
    }

    /// The identity of the app's socket `app_fd`, for a call that needs nothing else of it;
    /// on failure, the answer to the call, as for [`Context::take_socket`].
    pub fn socket_identity(&self, n: &Notification, app_fd: i32) -> Result<u64, Reply> {
        match self.access.identity(&self.notify, n, app_fd) {
            // A socket sctrace does not hold still has its identity.
            Err(Untaken::Unheld { ino, .. }) => Ok(ino),
            other => other.map_err(|untaken| self.untaken(n, None, untaken)),
        }
    }

    /// The answer to a call whose socket sctrace could not take, and why.
    pub fn untaken(&self, n: &Notification, dest: Option<&AddrArg>, untaken: Untaken) -> Reply {
        match untaken {
            Untaken::BadFd => Reply::Fail(Errno(libc::EBADF)),
            Untaken::Gone | Untaken::NotSocket => Reply::Continue,
            Untaken::Unreachable(err) => self.unusable(n, dest, Unusable::Uninspectable(err)),
            Untaken::Unheld {
                ino,
                released: true,
            } => {
                // A connection sctrace released: the kernel answers every call on it as it
                // would on any connected socket (EISCONN, EALREADY; a send's address is
                // ignored). Except a disconnect, after which it could connect again.
                if dest.and_then(AddrArg::family) == Some(libc::AF_UNSPEC) {
                    if let Some(owned) = self.access.owned() {
                        owned.forget_released(ino);
                    }
                }
                Reply::Continue
            }
            Untaken::Unheld {
                released: false, ..
            } => self.unusable(n, dest, Unusable::Unheld),
        }
    }

    /// The answer to a call on a socket sctrace has no fd for: its process can't be
    /// inspected (it made itself non-dumpable, or a security module forbids access), or
    /// (container mode) sctrace did not create the socket. Without the socket sctrace can't
    /// carry out a remote decision, and it must not let the traffic leave from this machine
    /// instead. A call whose destination the filter keeps local whatever the protocol (or
    /// that has none) runs in the kernel; one that could go to the target fails with EPERM
    /// (as a local firewall rule would make it), and sctrace says so once per process.
    fn unusable(&self, n: &Notification, dest: Option<&AddrArg>, why: Unusable) -> Reply {
        let stays_local = match (&self.remote, dest) {
            (None, _) | (_, None) => true,
            (Some(remote), Some(addr)) => match addr.family() {
                Some(libc::AF_INET | libc::AF_INET6) => addr.inet().is_some_and(|dst| {
                    [Protocol::Tcp, Protocol::Udp]
                        .into_iter()
                        .all(|p| remote.route(p, dst).to == Destination::Local)
                }),
                // Unix, netlink, AF_UNSPEC...: nothing sctrace would send to the target.
                Some(_) => true,
                // Unreadable: where it goes is unknown (the memory of a process that can't
                // be inspected can't be read either). Anything else without a family is
                // refused by the kernel itself (EINVAL).
                None => !matches!(addr, AddrArg::Unreadable),
            },
        };
        if stays_local {
            tracing::debug!(
                "{}: no fd for a socket of thread {} ({why:?}); left to the kernel",
                n.call.name(),
                n.tid()
            );
            return Reply::Continue;
        }
        let tid = n.tid() as i32;
        let id = self.identities.get(tid);
        let pid = id.as_ref().map_or(tid, |i| i.pid);
        let first = self.uninspectable.lock().map(|mut seen| seen.insert(pid));
        if first.unwrap_or(false) {
            let comm = id.map(|i| i.comm).unwrap_or_else(|| "?".into());
            match why {
                Unusable::Uninspectable(err) => eprintln!(
                    "sctrace: process {pid} ({comm}) cannot be inspected ({err}: it made itself non-dumpable, or a security module forbids it); its connections and datagrams that may go to the target fail with EPERM"
                ),
                Unusable::Unheld => eprintln!(
                    "sctrace: process {pid} ({comm}) uses a socket sctrace did not create (one from before sctrace started it, or received from elsewhere), which sctrace cannot use in container mode; its connections and datagrams on such sockets that may go to the target fail with EPERM"
                ),
            }
        }
        Reply::Fail(Errno(libc::EPERM))
    }

    /// The event record of call `n` on `sock`, when events are recorded.
    pub fn record(
        &self,
        n: &Notification,
        sock: &AppSocket,
        addr: impl FnOnce() -> String,
    ) -> Option<Record> {
        Record::prepare(&self.events, &self.identities, n, sock, addr)
    }

    /// A handle on call `n`, for deferred work to check it still waits.
    pub fn call_ref(&self, n: &Notification) -> CallRef {
        CallRef::new(Arc::clone(&self.notify), n.raw.id)
    }

    /// Who owns `sock`, for the events of the DNS queries it carries.
    pub fn asker(&self, n: &Notification, sock: &AppSocket, family: i32, sock_type: i32) -> Asker {
        let tid = n.tid() as i32;
        let id = self.identities.get(tid);
        Asker {
            pid: id.as_ref().map(|i| i.pid).unwrap_or(tid),
            tid,
            comm: id.map(|i| i.comm).unwrap_or_else(|| "?".into()),
            fd: sock.app_fd,
            family: family_name(family),
            sock_type: sock_type_name(sock_type),
        }
    }
}

/// Why sctrace has no fd for a socket a call needs.
#[derive(Debug, Clone, Copy)]
enum Unusable {
    /// Its process can't be inspected.
    Uninspectable(Errno),
    /// Container mode: sctrace did not create it.
    Unheld,
}

/// Decides what to do with a notification.
pub fn decide(ctx: &Context, n: &Notification) -> Plan {
    match n.call {
        Syscall::Connect => connect::decide(ctx, n),
        Syscall::Bind => bind::decide_bind(ctx, n),
        Syscall::Listen => bind::decide_listen(ctx, n),
        Syscall::SendTo => send::decide_sendto(ctx, n),
        Syscall::SendMsg => send::decide_sendmsg(ctx, n),
        Syscall::SendMmsg => send::decide_sendmmsg(ctx, n),
        Syscall::RecvFrom => recv::decide_recvfrom(ctx, n),
        Syscall::RecvMsg => recv::decide_recvmsg(ctx, n),
        Syscall::RecvMmsg => recv::decide_recvmmsg(ctx, n),
        Syscall::GetPeerName => recv::decide_getpeername(ctx, n),
        Syscall::GetSockName => recv::decide_getsockname(ctx, n),
        Syscall::Accept | Syscall::Accept4 => accept::decide(ctx, n),
        Syscall::Socket => socket::decide(ctx, n),
        Syscall::EpollCreate => socket::decide_epoll_create(ctx, n),
        Syscall::EpollCreate1 => socket::decide_epoll_create1(ctx, n),
        Syscall::Other(_) => Reply::Continue.into(),
    }
}
