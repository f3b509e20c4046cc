//! `socket(domain, type, protocol)`, trapped only in container mode and only for AF_INET and
//! AF_INET6 (see `trap::owned`): sctrace creates the app's inet sockets itself so that it
//! holds a copy of each. A thread in another network namespace than sctrace gets its socket
//! from the kernel (a socket belongs to the namespace it is created in).
//!
//! Plans: `Answer(Continue)` (full mode, another namespace, another domain), `CreateSocket`.
//!
//! And `epoll_create`/`epoll_create1`, trapped only in sessions that hand sockets of the
//! target over: sctrace makes the instance, so that it knows of every one (see `epolls`).
//! Plans: `CreateEpoll`, `Refuse(EINVAL)` for a size below 1 (as the kernel).

use crate::plan::{Plan, Reply};
use crate::trap::Notification;

use super::Context;

/// Decides one trapped socket().
pub fn decide(ctx: &Context, n: &Notification) -> Plan {
    let Some(owned) = ctx.access.owned() else {
        return Reply::Continue.into();
    };
    let domain = n.arg_int(0);
    if !matches!(domain, libc::AF_INET | libc::AF_INET6) || !owned.shares_netns(n.tid()) {
        tracing::trace!(
            "socket({domain}, ..) of thread {}: left to the kernel",
            n.tid()
        );
        return Reply::Continue.into();
    }
    // Nothing was copied out of the app: no validity check is needed before acting (the
    // answer itself fails if the call is gone, and the socket is then dropped).
    Plan::CreateSocket {
        owner: std::sync::Arc::clone(owned),
        tid: n.tid(),
        domain,
        sock_type: n.arg_int(1),
        protocol: n.arg_int(2),
    }
}

/// Decides one trapped epoll_create(size).
pub fn decide_epoll_create(ctx: &Context, n: &Notification) -> Plan {
    if n.arg_int(0) <= 0 {
        return Plan::Refuse(None, crate::errno::Errno(libc::EINVAL));
    }
    epoll_plan(ctx, 0)
}

/// Decides one trapped epoll_create1(flags).
pub fn decide_epoll_create1(ctx: &Context, n: &Notification) -> Plan {
    epoll_plan(ctx, n.arg_int(0))
}

fn epoll_plan(ctx: &Context, flags: i32) -> Plan {
    match ctx.remote.as_ref().and_then(|r| r.direct.as_ref()) {
        Some(direct) => Plan::CreateEpoll {
            direct: std::sync::Arc::clone(direct),
            flags,
        },
        None => Reply::Continue.into(),
    }
}
