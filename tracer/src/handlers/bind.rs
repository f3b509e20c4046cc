//! `bind(fd, addr, addrlen)` and `listen(fd, backlog)`.
//!
//! Both are re-issued on the app's socket (neither blocks), so the app gets the kernel's own
//! outcome and the event records it; `listen` events carry the socket's bound address. Binds
//! to Unix addresses are left to the kernel (see [`AddrArg::is_unix`]). In a relaying session
//! `listen_ports` can move a bind to another local port, and a successful listen subscribes
//! the port in the target (the executor does both).
//!
//! Plans: `Answer` (EBADF, `Continue`), `Kernel` (Unix addresses), or work: `Bind`, `Listen`.

use crate::plan::{MovedBind, Plan, Work};
use crate::trap::{AddrArg, Notification};

use super::Context;

/// Decides one trapped bind.
pub fn decide_bind(ctx: &Context, n: &Notification) -> Plan {
    let len = n.arg_int(2);
    let addr = n.copy_addr(n.arg_ptr(1), len);
    let sock = match ctx.take_socket(n, n.arg_int(0), None) {
        Ok(sock) => sock,
        Err(reply) => return reply.into(),
    };
    let record = ctx.record(n, &sock, || addr.describe());
    if addr.is_unix() {
        return Plan::Kernel(record.into_iter().collect());
    }
    let moved = ctx
        .remote
        .as_ref()
        .and_then(|remote| moved_bind(remote, &addr));
    Plan::Socket {
        sock,
        record,
        work: Work::Bind {
            addr,
            len,
            moved,
            owned: ctx.access.owned().cloned(),
        },
    }
}

/// `listen_ports`: the app asks for port P, which really binds the configured local port.
fn moved_bind(remote: &crate::remote::Remote, addr: &AddrArg) -> Option<MovedBind> {
    let asked = addr.inet()?;
    let port = remote.incoming.listen_port(asked.port())?;
    Some(MovedBind {
        to: std::net::SocketAddr::new(asked.ip(), port),
        asked: asked.port(),
    })
}

/// Decides one trapped listen.
pub fn decide_listen(ctx: &Context, n: &Notification) -> Plan {
    let backlog = n.arg_int(1);
    let sock = match ctx.take_socket(n, n.arg_int(0), None) {
        Ok(sock) => sock,
        Err(reply) => return reply.into(),
    };
    let record = ctx.record(n, &sock, || {
        sock.local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "(unbound)".into())
    });
    Plan::Socket {
        sock,
        record,
        work: Work::Listen {
            backlog,
            tid: n.tid() as i32,
        },
    }
}
