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

use std::sync::Arc;

use crate::dns::Asker;
use crate::errno::Errno;
use crate::events::{EventSink, Record};
use crate::plan::{Plan, Reply};
use crate::procfs::IdentityCache;
use crate::remote::Remote;
use crate::sockaddr::{family_name, sock_type_name};
use crate::sys::notify::NotifyFd;
use crate::trap::socket::{AppSocket, Untaken};
use crate::trap::{Notification, Syscall};

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
}

impl Context {
    /// Whether the call is still pending after its arguments were copied (TOCTOU rule).
    pub fn still_pending(&self, n: &Notification) -> bool {
        self.notify.id_valid(n.raw.id)
    }

    /// Copies the app's socket `app_fd` for call `n` (after the call's other arguments were
    /// copied). On failure, the answer to the call: EBADF as the kernel would (it checks
    /// the fd first), or `Continue` when the caller is gone or can't be reached.
    pub fn take_socket(&self, n: &Notification, app_fd: i32) -> Result<AppSocket, Reply> {
        AppSocket::take(&self.notify, n, app_fd).map_err(|untaken| match untaken {
            Untaken::BadFd => Reply::Fail(Errno(libc::EBADF)),
            Untaken::Gone => Reply::Continue,
            Untaken::Unreachable(err) => {
                tracing::debug!(
                    "{}: cannot copy fd {app_fd} of thread {}: {err}; left to the kernel",
                    n.call.name(),
                    n.tid()
                );
                Reply::Continue
            }
        })
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
        Syscall::Accept | Syscall::Accept4 => accept::decide(ctx, n),
        Syscall::Other(_) => Reply::Continue.into(),
    }
}
