//! ③ Carrying decisions out: the only code that acts on the app's sockets. The supervisor
//! hands each [`Plan`] a handler made to [`Executor::carry_out`], which either knows the
//! answer at once or returns work that may wait (a blocking connect, the agent), which the
//! supervisor runs on the tokio runtime and answers when done.
//!
//! - [`local`]: calls carried out on this machine as the app asked (re-issued on the app's
//!   socket, so the kernel gives its exact answer and sctrace sees it), and local
//!   connections to names looked up again locally.
//! - [`outgoing`]: remote decisions — the agent connects or sends in the target, and the
//!   app's socket is joined to the TCP relay or its UDP association.
//! - [`direct`]: remote TCP connects with a socket of the target installed in the app
//!   (a local agent), so that no byte is relayed.
//! - [`receive`]: emulated receives and `getpeername` on sockets sctrace manages.
//! - [`accept`]: emulated accepts on listeners whose port is subscribed in the target.
//! - [`create`]: container mode's `socket()`, created by sctrace and installed in the app.

mod accept;
mod attach;
mod create;
mod direct;
mod listener;
mod local;
mod outgoing;
mod parked;
mod receive;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::errno::Errno;
use crate::events::{result_name, Record, UNKNOWN};
use crate::plan::{Plan, Reply, Work};
use crate::remote::Remote;

/// Work that may wait (a blocking connect, the network) and so runs off the notification
/// loop; it yields the reply when done.
pub type Deferred = Pin<Box<dyn Future<Output = Reply> + Send + 'static>>;

/// How a plan is answered.
pub enum Action {
    /// Answer now.
    Now(Reply),
    /// Answer when this work completes; other calls are served meanwhile.
    Defer(Deferred),
    /// A blocking accept parked in sctrace (`parked`): whoever has a connection for it
    /// answers, or its watcher when the call goes; the supervisor does not.
    Parked,
}

impl From<Reply> for Action {
    fn from(reply: Reply) -> Self {
        Action::Now(reply)
    }
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Now(r) => f.debug_tuple("Now").field(r).finish(),
            Action::Defer(_) => f.write_str("Defer(..)"),
            Action::Parked => f.write_str("Parked"),
        }
    }
}

/// Carries plans out, with the relaying session when there is one.
pub struct Executor {
    remote: Option<Arc<Remote>>,
    /// The blocking accepts parked in sctrace (with a relaying session).
    parked: Option<Arc<parked::ParkedAccepts>>,
}

impl Executor {
    /// An executor for a session (`remote`: the relaying session, if any).
    pub fn new(remote: Option<Arc<Remote>>) -> Self {
        let parked = remote
            .as_ref()
            .map(|r| parked::ParkedAccepts::new(Arc::clone(&r.incoming)));
        Self { remote, parked }
    }

    /// Carries `plan` out.
    pub fn carry_out(&self, plan: Plan) -> Action {
        let (sock, record, work) = match plan {
            Plan::Answer(reply) => return reply.into(),
            Plan::Kernel(records) => {
                for record in records {
                    record.finish(UNKNOWN.into());
                }
                return Reply::Continue.into();
            }
            Plan::Refuse(record, errno) => return answer(record, Err::<i64, _>(errno)).into(),
            Plan::CreateSocket {
                owner,
                tid,
                domain,
                sock_type,
                protocol,
            } => return create::socket(owner, tid, domain, sock_type, protocol).into(),
            Plan::CreateEpoll { direct, flags } => return create::epoll(direct, flags).into(),
            Plan::ShowAddress {
                tid,
                addr,
                at,
                len_at,
            } => return receive::show_address(tid, addr, at, len_at).into(),
            Plan::Socket { sock, record, work } => (sock, record, work),
        };
        let remote = self.remote.as_ref();
        match (work, remote) {
            (Work::Connect { addr, len }, _) => local::connect(sock, record, addr, len),
            (Work::Dissolve { addr, len }, Some(remote)) => {
                if let Ok(id) = sock.identity() {
                    remote.sockets.dissolve(id);
                }
                local::connect(sock, record, addr, len)
            }
            (Work::ConnectReresolved { name, dst }, _) => {
                local::connect_reresolved(sock, record, name, dst)
            }
            (
                Work::Bind {
                    addr,
                    len,
                    moved,
                    owned,
                },
                remote,
            ) => local::bind(remote, sock, record, addr, len, moved, owned),
            (Work::Listen { backlog, tid }, remote) => {
                local::listen(remote, sock, record, backlog, tid)
            }
            (Work::Send { msg, flags }, _) => local::send(sock, record, msg, flags),
            (Work::ConnectRemote { dst, tid, owned }, Some(remote)) => {
                outgoing::connect_tcp(remote, sock, dst, tid, owned, record)
            }
            (Work::ProbeRoute { dst }, Some(remote)) => {
                outgoing::probe_route(remote, sock, dst, record)
            }
            (Work::ConnectDns { server, asker }, Some(remote)) => {
                outgoing::connect_dns(remote, sock, server, asker, record)
            }
            (Work::ConnectDatagram { dst, peer, asker }, Some(remote)) => {
                outgoing::connect_udp(remote, sock, dst, peer, asker, record)
            }
            (
                Work::SendDatagram {
                    dst,
                    peer,
                    payload,
                    asker,
                },
                Some(remote),
            ) => outgoing::send_datagram(remote, sock, dst, peer, payload, asker, record),
            (
                Work::QueryNameserver {
                    nameserver,
                    assoc,
                    queries,
                    lens_at,
                    tid,
                },
                _,
            ) => outgoing::query_nameserver(&assoc, nameserver, queries, &lens_at, tid).into(),
            (
                Work::Receive {
                    call,
                    tid,
                    assoc,
                    buffers,
                    flags,
                },
                _,
            ) => receive::receive(call, tid, sock, assoc, buffers, flags),
            (
                Work::Accept {
                    call,
                    tid,
                    flags,
                    at,
                    len_at,
                },
                Some(remote),
            ) => match &self.parked {
                Some(parked) => accept::accept(remote, parked, call, tid, sock, flags, at, len_at),
                None => Reply::Continue.into(),
            },
            (work, None) => {
                // Handlers plan remote work only in a relaying session.
                tracing::error!("{work:?} planned without a relaying session; left to the kernel");
                Reply::Continue.into()
            }
        }
    }
}

/// Records the outcome (if recording) and turns it into the answer.
pub fn answer<T: Into<i64>>(record: Option<Record>, result: Result<T, Errno>) -> Reply {
    if let Some(record) = record {
        record.finish(result_name(&result));
    }
    Reply::from_result(result)
}
