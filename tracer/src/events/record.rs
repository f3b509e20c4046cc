//! An event in the making: everything about a trapped call but its outcome, gathered while
//! the caller is still blocked in the call (so its identity is certain), finished by the
//! executor once the outcome is known.

use std::net::SocketAddr;

use crate::errno::Errno;
use crate::procfs::IdentityCache;
use crate::route::{Destination, Routed};
use crate::sockaddr::{family_name, sock_type_name};
use crate::trap::socket::{AppSocket, SocketDesc};
use crate::trap::Notification;

use super::{Event, EventSink};

/// The `result` field for an outcome.
pub fn result_name<T>(result: &Result<T, Errno>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => e.name(),
    }
}

/// The result recorded when the kernel ran the call and sctrace did not see the outcome.
pub const UNKNOWN: &str = "unknown";

/// An event waiting for its outcome. Only built when events are recorded, and only for
/// sockets (not for calls on other kinds of fds).
#[derive(Debug)]
pub struct Record {
    sink: EventSink,
    // Boxed: a record travels inside every plan, which stays small without it.
    event: Box<Event>,
}

impl Record {
    /// Prepares the record of call `n` on `sock`, if events are recorded.
    pub fn prepare(
        sink: &EventSink,
        identities: &IdentityCache,
        n: &Notification,
        sock: &AppSocket,
        addr: impl FnOnce() -> String,
    ) -> Option<Record> {
        if !sink.enabled() {
            return None;
        }
        let desc = sock.describe();
        let family = desc.family?;
        Some(Record {
            sink: sink.clone(),
            event: Box::new(base_event(identities, n, &desc, family, addr())),
        })
    }

    /// Sets where the call was carried out and why. A socket routed to the DNS responder is
    /// `local` with rule `dns`: each query it carries is decided (and recorded) on its own.
    pub fn set_route(&mut self, routed: &Routed) {
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
    pub fn set_reresolved(&mut self, local: Option<SocketAddr>) {
        self.event.reresolved = Some(
            local
                .map(|a| a.to_string())
                .unwrap_or_else(|| "none".into()),
        );
    }

    /// Notes how a remote TCP connection carries its bytes: `direct` (the program's socket
    /// is a socket of the target) or `relay` (through sctrace's relay).
    pub fn set_path(&mut self, path: &'static str) {
        self.event.path = Some(path);
    }

    /// Records the outcome.
    pub fn finish(mut self, result: String) {
        self.event.result = result;
        self.sink.record(*self.event);
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
