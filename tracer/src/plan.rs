//! What a handler decided to do with a trapped call, as plain data. Handlers only produce
//! a [`Plan`]; the executor (`execute`) is the only code that carries one out on the app's
//! socket, and the supervisor the only code that answers the kernel.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::dns::Asker;
use crate::errno::Errno;
use crate::events::Record;
use crate::relay::udp::{PeerKind, UdpAssociation};
use crate::sys::socket::OutgoingMessage;
use crate::trap::msghdr::RecvBuffers;
use crate::trap::owned::OwnedSockets;
use crate::trap::socket::AppSocket;
use crate::trap::{AddrArg, CallRef};

/// The final answer to one trapped call.
#[derive(Debug)]
pub enum Reply {
    /// Let the kernel run the call as the app made it.
    Continue,
    /// The call returns this non-negative value.
    Return(i64),
    /// The call fails with this errno.
    Fail(Errno),
    /// The call returns a new fd: this socket, installed in the app (an emulated accept,
    /// a socket created in container mode).
    InstallFd {
        /// The socket (sctrace's copy; the app gets its own fd for it).
        fd: OwnedFd,
        /// Whether the app's fd is close-on-exec.
        cloexec: bool,
        /// Told the app's fd number once installed (`None`: it was not).
        then: Option<OnInstalled>,
    },
    /// The app's fd `target` becomes this socket (as `dup2` would make it), then the call
    /// returns `then` (a remote connect made with a socket of the target).
    ReplaceFd {
        /// The socket (sctrace's copy).
        fd: OwnedFd,
        /// The app's fd number.
        target: i32,
        /// Whether the app's fd is close-on-exec.
        cloexec: bool,
        /// The call's outcome.
        then: Result<i64, Errno>,
    },
}

/// Told where an installed socket landed in the app: its fd number, or `None` when it was
/// not installed (the call was interrupted, the app's fd table is full).
pub struct OnInstalled(pub Box<dyn FnOnce(Option<i32>) + Send>);

impl std::fmt::Debug for OnInstalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnInstalled(..)")
    }
}

impl PartialEq for Reply {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Reply::Continue, Reply::Continue) => true,
            (Reply::Return(a), Reply::Return(b)) => a == b,
            (Reply::Fail(a), Reply::Fail(b)) => a == b,
            _ => false,
        }
    }
}

impl Reply {
    /// The reply that reproduces a call's outcome as the supervisor observed it.
    pub fn from_result<T: Into<i64>>(result: Result<T, Errno>) -> Self {
        match result {
            Ok(v) => Reply::Return(v.into()),
            Err(e) => Reply::Fail(e),
        }
    }
}

/// A handler's decision.
pub enum Plan {
    /// Answer at once; nothing to record.
    Answer(Reply),
    /// Let the kernel run the call; its events (if recorded: one per destination) have
    /// result `unknown`.
    Kernel(Vec<Record>),
    /// Fail the call with this errno, and record that.
    Refuse(Option<Record>, Errno),
    /// Create an inet socket for the app and install it (container mode, see
    /// `trap::owned`).
    CreateSocket {
        /// Where sctrace holds the sockets it creates.
        owner: Arc<OwnedSockets>,
        /// The calling thread.
        tid: u32,
        /// socket()'s domain, type (with SOCK_NONBLOCK/SOCK_CLOEXEC) and protocol.
        domain: i32,
        /// The type, with its flags.
        sock_type: i32,
        /// The protocol.
        protocol: i32,
    },
    /// Create an epoll instance for the app and install it (sessions that hand sockets of
    /// the target over count them, see `epolls`).
    CreateEpoll {
        /// Where the instance is counted once installed.
        direct: Arc<crate::remote::target_sockets::TargetSockets>,
        /// `epoll_create1`'s flags.
        flags: i32,
    },
    /// `getpeername` or `getsockname` on a socket sctrace manages: the address as it is in
    /// the target (the peer the app asked for; the socket's own address there), already in
    /// the socket's family. Needs only the socket's identity, not the socket.
    ShowAddress {
        /// The calling thread, whose memory receives the address.
        tid: u32,
        /// The address to show.
        addr: SocketAddr,
        /// The app's address buffer.
        at: u64,
        /// The app's length pointer.
        len_at: u64,
    },
    /// Carry `work` out on the app's socket, record the outcome and answer with it.
    Socket {
        /// The app's socket.
        sock: AppSocket,
        /// The event in the making, when events are recorded.
        record: Option<Record>,
        /// What to do.
        work: Work,
    },
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Plan::Answer(reply) => f.debug_tuple("Answer").field(reply).finish(),
            Plan::Kernel(records) => f.debug_tuple("Kernel").field(records).finish(),
            Plan::Refuse(record, errno) => {
                f.debug_tuple("Refuse").field(record).field(errno).finish()
            }
            Plan::CreateSocket {
                domain,
                sock_type,
                protocol,
                ..
            } => f
                .debug_struct("CreateSocket")
                .field("domain", domain)
                .field("sock_type", sock_type)
                .field("protocol", protocol)
                .finish_non_exhaustive(),
            Plan::CreateEpoll { flags, .. } => f
                .debug_struct("CreateEpoll")
                .field("flags", flags)
                .finish_non_exhaustive(),
            Plan::ShowAddress { addr, .. } => f
                .debug_struct("ShowAddress")
                .field("addr", addr)
                .finish_non_exhaustive(),
            Plan::Socket { sock, record, work } => f
                .debug_struct("Socket")
                .field("sock", sock)
                .field("record", record)
                .field("work", work)
                .finish(),
        }
    }
}

impl From<Reply> for Plan {
    fn from(reply: Reply) -> Self {
        Plan::Answer(reply)
    }
}

/// The work on one app socket, by kind of call and where it goes.
#[derive(Debug)]
pub enum Work {
    /// `connect` as the app asked, on this machine.
    Connect {
        /// The destination as the app passed it.
        addr: AddrArg,
        /// The length the app passed.
        len: i32,
    },
    /// `connect(AF_UNSPEC)` on a datagram socket with a UDP association: re-issued, and
    /// the association forgets its connected peer.
    Dissolve {
        /// The address as the app passed it.
        addr: AddrArg,
        /// The length the app passed.
        len: i32,
    },
    /// A local TCP or UDP connect to `dst`, an address that came from the target's DNS:
    /// connected where `name` resolves on this machine instead (as mirrord does).
    ConnectReresolved {
        /// The name `dst` was resolved from.
        name: String,
        /// The destination the app asked for.
        dst: SocketAddr,
    },
    /// A TCP connect carried out in the target: the agent connects first, then the app's
    /// socket is joined to that connection.
    ConnectRemote {
        /// The destination in the target.
        dst: SocketAddr,
        /// The calling thread (whose fd table a socket of the target may be installed in).
        tid: i32,
        /// Container mode: the sockets sctrace holds (a socket of the target installed in
        /// the app is remembered there as one the kernel answers for).
        owned: Option<Arc<OwnedSockets>>,
    },
    /// A TCP connect to a nameserver of the local resolv.conf: DNS over TCP, answered by
    /// sctrace's responder.
    ConnectDns {
        /// The nameserver the app asked.
        server: SocketAddr,
        /// Who asks, for DNS events.
        asker: Asker,
    },
    /// A UDP connect to port 0 of a remote address: a route probe (glibc sorts
    /// `getaddrinfo`'s answers by them, RFC 6724), answered with the target's route: its
    /// error, or success and the target's source address for `getsockname`.
    ProbeRoute {
        /// The address probed.
        dst: SocketAddr,
    },
    /// A UDP connect to a remote peer or a nameserver: the socket is connected to the relay
    /// socket standing for the peer.
    ConnectDatagram {
        /// The peer the app asked for.
        dst: SocketAddr,
        /// Who the peer is.
        peer: PeerKind,
        /// Who asks, for DNS events.
        asker: Asker,
    },
    /// `bind` on this machine, to `moved` instead of the app's address when `listen_ports`
    /// says so.
    Bind {
        /// The address as the app passed it.
        addr: AddrArg,
        /// The length the app passed.
        len: i32,
        /// Where `listen_ports` moves the bind, if it does.
        moved: Option<MovedBind>,
        /// Container mode: the sockets sctrace holds (a copy of a listener the app closed
        /// may still hold the port).
        owned: Option<Arc<OwnedSockets>>,
    },
    /// `listen`, then the port's subscription in the target.
    Listen {
        /// The backlog the app asked for.
        backlog: i32,
        /// The calling thread (whose fd table a listener of the target may be installed in).
        tid: i32,
    },
    /// A datagram send re-issued on this machine (never blocking the supervisor).
    Send {
        /// The message.
        msg: OutgoingMessage,
        /// The app's flags.
        flags: i32,
    },
    /// DNS queries a socket connected to a nameserver sent with `sendmmsg`, handed by
    /// sctrace to its association (answered from the cache on the spot) instead of the
    /// kernel: the answers are in the socket's queue when the call returns.
    QueryNameserver {
        /// The nameserver, as the socket is connected to it.
        nameserver: SocketAddr,
        /// The association.
        assoc: Arc<UdpAssociation>,
        /// Each message's payload.
        queries: Vec<Vec<u8>>,
        /// Where each message's `msg_len` goes.
        lens_at: Vec<u64>,
        /// The caller, whose memory they are in.
        tid: u32,
    },
    /// A datagram to a remote peer or a nameserver, sent by sctrace through the socket's
    /// UDP association.
    SendDatagram {
        /// The peer.
        dst: SocketAddr,
        /// Who the peer is.
        peer: PeerKind,
        /// The payload.
        payload: Vec<u8>,
        /// Who asks, for DNS events.
        asker: Asker,
    },
    /// A receive on a socket with a UDP association, emulated so that the source shows
    /// the remote peer.
    Receive {
        /// The call, checked before a datagram is taken for it.
        call: CallRef,
        /// The calling thread, whose memory receives the message.
        tid: u32,
        /// The socket's association.
        assoc: Arc<UdpAssociation>,
        /// Where the message goes in the app.
        buffers: RecvBuffers,
        /// The app's flags.
        flags: i32,
    },
    /// `accept`/`accept4` on a listener whose port is subscribed in the target: the client
    /// is shown as the remote one.
    Accept {
        /// The call, checked before a connection is taken for it.
        call: CallRef,
        /// The calling thread, whose memory receives the client's address.
        tid: u32,
        /// accept4's flags (0 for accept).
        flags: i32,
        /// The app's address buffer (0: not asked).
        at: u64,
        /// The app's length pointer (0: not asked).
        len_at: u64,
    },
}

/// A bind that `listen_ports` moves to another local port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedBind {
    /// The address really bound (the app's, with the configured local port).
    pub to: SocketAddr,
    /// The port the app asked for (the target's port to subscribe).
    pub asked: u16,
}
