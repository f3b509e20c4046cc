//! `accept` and `accept4` on a listening socket whose port is mirrored or stolen from the
//! target (see `remote::incoming`). Connections sctrace delivers come from sctrace itself on
//! loopback, while the app must see the remote client: such accepts are emulated by the
//! executor. Accepts on every other listener run in the kernel.
//!
//! Plans: `Answer` (`Continue`, EBADF) or work: `Accept`.

use crate::plan::{Plan, Reply, Work};
use crate::trap::{Notification, Syscall};

use super::Context;

/// Decides one trapped accept or accept4.
pub fn decide(ctx: &Context, n: &Notification) -> Plan {
    let Some(remote) = ctx.remote.as_ref().filter(|r| r.incoming.enabled()) else {
        return Reply::Continue.into();
    };
    let sock = match ctx.take_socket(n, n.arg_int(0), None) {
        Ok(sock) => sock,
        Err(reply) => return reply.into(),
    };
    let subscribed = sock
        .identity()
        .is_ok_and(|id| remote.incoming.is_subscribed(id));
    if !subscribed {
        return Reply::Continue.into();
    }
    let flags = if n.call == Syscall::Accept4 {
        n.arg_int(3)
    } else {
        0
    };
    Plan::Socket {
        sock,
        record: None,
        work: Work::Accept {
            call: ctx.call_ref(n),
            tid: n.tid(),
            flags,
            at: n.arg_ptr(1),
            len_at: n.arg_ptr(2),
        },
    }
}
