//! The app's socket as the supervisor sees it (a shared copy of its fd), and the event
//! record of a call on it.

use std::os::fd::{AsFd, OwnedFd};

use crate::action::{Action, Reply};
use crate::errno::Errno;
use crate::events::{Event, EventSink};
use crate::procfs::IdentityCache;
use crate::sockaddr::{family_name, sock_type_name, SockAddr};
use crate::supervisor::notification::{AddrArg, Notification};
use crate::sys::socket as sys;

use super::Context;

/// A copy of one of the app's sockets: it shares the open file description (socket state,
/// flags, epoll interest) with the app's fd.
#[derive(Debug)]
pub struct AppSocket {
    /// The copy.
    pub fd: OwnedFd,
    /// The app's fd number.
    pub app_fd: i32,
}

impl AppSocket {
    /// Copies the app's fd `app_fd` for call `n`, after the call's other arguments were
    /// copied, and checks the call is still pending. On failure, returns how to answer:
    /// EBADF as the kernel would (it checks the fd first), or `Continue` when the caller
    /// can't be reached (it died, or is not ours to inspect).
    pub fn take(ctx: &Context, n: &Notification, app_fd: i32) -> Result<AppSocket, Action> {
        let taken = n.take_fd(app_fd);
        if !ctx.still_pending(n) {
            return Err(Reply::Continue.into());
        }
        match taken {
            Ok(fd) => Ok(AppSocket { fd, app_fd }),
            Err(Errno(libc::EBADF)) => Err(Reply::Fail(Errno(libc::EBADF)).into()),
            Err(err) => {
                tracing::debug!(
                    "{}: cannot copy fd {app_fd} of thread {}: {err}; left to the kernel",
                    n.call.name(),
                    n.tid()
                );
                Err(Reply::Continue.into())
            }
        }
    }

    /// Reads what the socket is (two getsockopt calls).
    pub fn describe(&self) -> SocketDesc {
        SocketDesc {
            app_fd: self.app_fd,
            family: sys::domain(self.fd.as_fd()).ok(),
            sock_type: sys::sock_type(self.fd.as_fd()).unwrap_or(0),
        }
    }
}

/// What one of the app's sockets is: enough to name it in an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketDesc {
    /// The app's fd number.
    pub app_fd: i32,
    /// `SO_DOMAIN`, or `None` when the fd is not a socket.
    pub family: Option<i32>,
    /// `SO_TYPE`.
    pub sock_type: i32,
}

/// Whether an address argument names a Unix socket. Calls with one are left to the kernel:
/// done from the supervisor, a connect or send would carry sctrace's pid in
/// SO_PEERCRED/SCM_CREDENTIALS, and a bind would resolve its path against sctrace's working
/// directory and create the file with sctrace's umask.
pub fn is_unix(addr: &AddrArg) -> bool {
    addr.family() == Some(libc::AF_UNIX)
}

/// How a copied address reads in an event.
pub fn describe_addr(arg: &AddrArg) -> String {
    match arg {
        AddrArg::Bytes(b) => match SockAddr::parse(b) {
            Some(addr) => addr.to_string(),
            None => "(short address)".into(),
        },
        AddrArg::Empty => "(empty)".into(),
        AddrArg::BadLength => "(bad length)".into(),
        AddrArg::Unreadable => "(unreadable)".into(),
    }
}

/// The `result` field for an outcome.
pub fn result_name<T>(result: &Result<T, Errno>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => e.name(),
    }
}

/// The result recorded when the kernel ran the call and sctrace did not see the outcome.
pub const UNKNOWN: &str = "unknown";

/// An event in the making: everything but the outcome, gathered while the caller is still
/// blocked in the call (so its identity is certain). Only built when events are recorded,
/// and only for sockets (not for calls on other kinds of fds).
#[derive(Debug)]
pub struct Record {
    sink: EventSink,
    event: Event,
}

impl Record {
    /// Prepares the record of call `n` on `sock`, if events are recorded.
    pub fn prepare(
        ctx: &Context,
        n: &Notification,
        sock: &AppSocket,
        addr: impl FnOnce() -> String,
    ) -> Option<Record> {
        if !ctx.events.enabled() {
            return None;
        }
        let desc = sock.describe();
        let family = desc.family?;
        Some(Record {
            sink: ctx.events.clone(),
            event: base_event(&ctx.identities, n, &desc, family, addr()),
        })
    }

    /// Sets where the call was carried out and why. A socket routed to the DNS responder is
    /// `local` with rule `dns`: each query it carries is decided (and recorded) on its own.
    pub fn set_route(&mut self, routed: &crate::remote::Routed) {
        use crate::remote::Destination;
        self.event.decision = match routed.to {
            Destination::Local | Destination::Dns => "local",
            Destination::Remote => "remote",
        };
        self.event.rule = match routed.to {
            Destination::Dns => Some("dns".to_string()),
            _ => routed.rule.clone(),
        };
        self.event.host = routed.host.clone();
    }

    /// Notes the local address a remotely resolved name was looked up again to.
    pub fn set_reresolved(&mut self, local: Option<std::net::SocketAddr>) {
        self.event.reresolved = Some(
            local
                .map(|a| a.to_string())
                .unwrap_or_else(|| "none".into()),
        );
    }

    /// Records the outcome.
    pub fn finish(mut self, result: String) {
        self.event.result = result;
        self.sink.record(self.event);
    }
}

fn base_event(
    identities: &IdentityCache,
    n: &Notification,
    desc: &SocketDesc,
    family: i32,
    addr: String,
) -> Event {
    let tid = n.tid() as i32;
    let (pid, comm) = match identities.get(tid) {
        Some(id) => (id.pid, id.comm),
        None => (tid, String::from("?")),
    };
    Event {
        ts: Event::now(),
        pid,
        tid,
        comm,
        syscall: n.call.name(),
        fd: desc.app_fd,
        family: family_name(family),
        sock_type: sock_type_name(desc.sock_type),
        addr,
        decision: "local",
        rule: None,
        ..Default::default()
    }
}

/// Records the outcome (if recording) and turns it into the answer.
pub fn answer<T: Into<i64>>(record: Option<Record>, result: Result<T, Errno>) -> Reply {
    if let Some(record) = record {
        record.finish(result_name(&result));
    }
    Reply::from_result(result)
}

/// Records a call that is left to the kernel (outcome unknown) and lets it run.
pub fn leave_to_kernel(record: Option<Record>) -> Action {
    if let Some(record) = record {
        record.finish(UNKNOWN.into());
    }
    Reply::Continue.into()
}
