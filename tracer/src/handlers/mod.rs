//! One module per family of trapped calls. A handler copies what it needs out of the app,
//! checks the notification is still valid, decides, and returns an [`Action`]; it never
//! answers the kernel itself.
//!
//! Without an agent (`sctrace trace`, `run` without a target) every decision is `local`:
//! the call is carried out on the app's own socket (or left to the kernel) and recorded. In
//! a relaying session, connects and sends are routed by the filter ([`Remote::route`]) and
//! remote ones carried out by `redirect`; receives and `getpeername` are emulated for the
//! sockets sctrace manages (`recv`).

mod accept;
mod bind;
mod connect;
mod recv;
mod redirect;
mod send;
mod socket;

use std::sync::Arc;

use crate::action::{Action, Reply};
use crate::events::EventSink;
use crate::procfs::IdentityCache;
use crate::remote::Remote;
use crate::supervisor::notification::{Notification, Syscall};
use crate::sys::notify::NotifyFd;

/// What handlers share: the listener (for validity checks) and the event sink.
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
}

/// Routes a notification to its handler.
pub fn handle(ctx: &Arc<Context>, n: &Notification) -> Action {
    match n.call {
        Syscall::Connect => connect::handle(ctx, n),
        Syscall::Bind => bind::handle_bind(ctx, n),
        Syscall::Listen => bind::handle_listen(ctx, n),
        Syscall::SendTo => send::handle_sendto(ctx, n),
        Syscall::SendMsg => send::handle_sendmsg(ctx, n),
        Syscall::SendMmsg => send::handle_sendmmsg(ctx, n),
        Syscall::RecvFrom => recv::handle_recvfrom(ctx, n),
        Syscall::RecvMsg => recv::handle_recvmsg(ctx, n),
        Syscall::RecvMmsg => recv::handle_recvmmsg(ctx, n),
        Syscall::GetPeerName => recv::handle_getpeername(ctx, n),
        Syscall::Accept | Syscall::Accept4 => accept::handle(ctx, n),
        Syscall::Other(_) => Reply::Continue.into(),
    }
}
