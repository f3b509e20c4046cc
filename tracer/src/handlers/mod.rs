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

mod accept;
mod bind;
mod connect;
mod recv;
mod send;

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
use crate::trap::socket::{AppSocket, Untaken};
use crate::trap::{AddrArg, CallRef, Notification, Syscall};

/// What handlers share: the listener (for validity checks), events, and the relaying
/// session when there is an agent.
pub struct Context {
    /// The seccomp listener, for `id_valid` checks after copying.
    pub notify: Arc<NotifyFd>,
    /// Where events go.
    pub events: EventSink,
    /// Recently read thread identities, for events.
    pub identities: IdentityCache,
    /// The relaying session, when there is an agent.
    pub remote: Option<Arc<Remote>>,
    /// Processes already warned about as uninspectable.
    pub uninspectable: Mutex<HashSet<i32>>,
}

impl Context {
    /// Whether the call is still pending after its arguments were copied (TOCTOU rule).
    pub fn still_pending(&self, n: &Notification) -> bool {
        self.notify.id_valid(n.raw.id)
    }

    /// Copies the app's socket `app_fd` for call `n` (after the call's other arguments were
    /// copied; `dest` is the destination the call carries, if any). On failure, the answer
    /// to the call: EBADF as the kernel would (it checks the fd first), `Continue` when the
    /// caller is gone, or what [`Context::uninspectable`] says.
    pub fn take_socket(
        &self,
        n: &Notification,
        app_fd: i32,
        dest: Option<&AddrArg>,
    ) -> Result<AppSocket, Reply> {
        AppSocket::take(&self.notify, n, app_fd).map_err(|untaken| match untaken {
            Untaken::BadFd => Reply::Fail(Errno(libc::EBADF)),
            Untaken::Gone => Reply::Continue,
            Untaken::Unreachable(err) => self.uninspectable(n, dest, err),
        })
    }

    /// The answer to a call whose process sctrace can't inspect (it made itself
    /// non-dumpable, or a security module forbids access): without its socket sctrace can't
    /// carry out a remote decision, and it must not let the traffic leave from this machine
    /// instead. A call whose destination the filter keeps local whatever the protocol (or
    /// that has none) runs in the kernel; one that could go to the target fails with EPERM
    /// (as a local firewall rule would make it), and sctrace says so once per process.
    fn uninspectable(&self, n: &Notification, dest: Option<&AddrArg>, err: Errno) -> Reply {
        let stays_local = match (&self.remote, dest) {
            (None, _) | (_, None) => true,
            (Some(_), Some(addr)) if addr.is_unix() => true,
            (Some(remote), Some(addr)) => addr.inet().is_some_and(|dst| {
                [Protocol::Tcp, Protocol::Udp]
                    .into_iter()
                    .all(|p| remote.route(p, dst).to == Destination::Local)
            }),
        };
        if stays_local {
            tracing::debug!(
                "{}: cannot copy a socket of thread {}: {err}; left to the kernel",
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
            eprintln!(
                "sctrace: process {pid} ({comm}) cannot be inspected ({err}: it made itself non-dumpable, or a security module forbids it); its connections and datagrams that may go to the target fail with EPERM"
            );
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
        Syscall::Other(_) => Reply::Continue.into(),
    }
}
