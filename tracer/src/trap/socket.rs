//! The app's socket as the supervisor holds it: an fd of sctrace's for the app's socket,
//! which shares the open file description — socket state, file flags, epoll interest —
//! with the app. Handlers read what the socket is through it; only the executor acts on it.
//!
//! How sctrace gets that fd is chosen once per session ([`SocketAccess`]): it copies the
//! app's fd when a call needs it (`pidfd_getfd`, the full mode), or, where `pidfd_getfd` is
//! refused (container mode), it created the socket for the app and holds a copy from birth
//! (see [`super::owned`]). Handlers and the executor see the same [`AppSocket`] either way.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, OnceLock};

use crate::errno::Errno;
use crate::sockaddr::SockAddr;
use crate::sys::notify::NotifyFd;
use crate::sys::pidfd;
use crate::sys::socket as sys;

use super::owned::{HoldGuard, OwnedSockets};
use super::Notification;

/// How the supervisor reaches the app's sockets, chosen when the session starts.
#[derive(Clone)]
pub enum SocketAccess {
    /// Full mode: the app's fd is copied when a call needs it (`pidfd_getfd`).
    Copy,
    /// Container mode: sctrace created the app's inet sockets and holds copies.
    Owned(Arc<OwnedSockets>),
}

impl SocketAccess {
    /// The supervisor's fd for the app's fd `app_fd`, for call `n`, after the call's other
    /// arguments were copied; then checks the call is still pending (the TOCTOU rule: what
    /// was copied belongs to this very call).
    pub fn take(
        &self,
        notify: &NotifyFd,
        n: &Notification,
        app_fd: i32,
    ) -> Result<AppSocket, Untaken> {
        let taken = match self {
            SocketAccess::Copy => copy_fd(n.tid(), app_fd)
                .map(|fd| AppSocket::new(fd, app_fd, None, None))
                .map_err(|err| match err {
                    Errno(libc::EBADF) => Untaken::BadFd,
                    err => Untaken::Unreachable(err),
                }),
            SocketAccess::Owned(owned) => owned
                .take(n.tid(), app_fd)
                .map(|(fd, ino, guard)| AppSocket::new(fd, app_fd, Some(ino), Some(guard))),
        };
        if !notify.id_valid(n.raw.id) {
            return Err(Untaken::Gone);
        }
        taken
    }

    /// The identity (inode) of the app's socket `app_fd`, for a call that needs nothing else
    /// of it (`getpeername`): in container mode read from /proc, without a copy, so that it
    /// also works for sockets sctrace no longer holds.
    pub fn identity(
        &self,
        notify: &NotifyFd,
        n: &Notification,
        app_fd: i32,
    ) -> Result<u64, Untaken> {
        let identity = match self {
            SocketAccess::Copy => {
                return self
                    .take(notify, n, app_fd)
                    .and_then(|sock| sock.identity().map_err(|_| Untaken::NotSocket))
            }
            SocketAccess::Owned(owned) => owned.identity(n.tid(), app_fd),
        };
        if !notify.id_valid(n.raw.id) {
            return Err(Untaken::Gone);
        }
        identity
    }

    /// The owned sockets, in container mode.
    pub fn owned(&self) -> Option<&Arc<OwnedSockets>> {
        match self {
            SocketAccess::Copy => None,
            SocketAccess::Owned(owned) => Some(owned),
        }
    }
}

/// An fd of sctrace's for one of the app's sockets.
#[derive(Debug)]
pub struct AppSocket {
    /// The copy.
    pub fd: OwnedFd,
    /// The app's fd number.
    pub app_fd: i32,
    /// What never changes about a socket, read once (a handler and its executor may each
    /// ask): its inode, family, type and protocol.
    ino: OnceLock<u64>,
    family: OnceLock<i32>,
    sock_type: OnceLock<i32>,
    protocol: OnceLock<i32>,
    /// In container mode: looks at the held socket again once sctrace is done with it.
    _held: Option<HoldGuard>,
}

/// Why sctrace has no fd for the app's socket, and so how the call is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untaken {
    /// The fd is not open in the app: the kernel itself would answer EBADF (it checks the
    /// fd first).
    BadFd,
    /// The call is no longer pending (the caller was interrupted or died).
    Gone,
    /// The caller can't be reached (it died meanwhile, or is not ours to inspect).
    Unreachable(Errno),
    /// Container mode: the fd is not a socket (the kernel answers ENOTSOCK itself).
    NotSocket,
    /// Container mode: a socket sctrace does not hold. `released`: sctrace held it and let
    /// it go once it was connected; otherwise it never held it (inherited from before
    /// sctrace, accepted by the kernel, received from another process).
    Unheld {
        /// The socket's inode.
        ino: u64,
        /// Whether sctrace released it after its connect.
        released: bool,
    },
}

/// The value in `cell`, read with `read` the first time.
fn once<T: Copy>(cell: &OnceLock<T>, read: impl FnOnce() -> Result<T, Errno>) -> Result<T, Errno> {
    if let Some(v) = cell.get() {
        return Ok(*v);
    }
    let v = read()?;
    Ok(*cell.get_or_init(|| v))
}

impl AppSocket {
    fn new(fd: OwnedFd, app_fd: i32, ino: Option<u64>, held: Option<HoldGuard>) -> Self {
        AppSocket {
            fd,
            app_fd,
            ino: ino.map(OnceLock::from).unwrap_or_default(),
            family: OnceLock::new(),
            sock_type: OnceLock::new(),
            protocol: OnceLock::new(),
            _held: held,
        }
    }

    /// `SO_DOMAIN`: the socket's address family (ENOTSOCK for other files).
    pub fn family(&self) -> Result<i32, Errno> {
        once(&self.family, || sys::domain(self.fd.as_fd()))
    }

    /// `SO_TYPE`: SOCK_STREAM, SOCK_DGRAM, ...
    pub fn sock_type(&self) -> Result<i32, Errno> {
        once(&self.sock_type, || sys::sock_type(self.fd.as_fd()))
    }

    /// `SO_PROTOCOL`: IPPROTO_TCP, IPPROTO_UDP, ...
    fn protocol(&self) -> Result<i32, Errno> {
        once(&self.protocol, || sys::protocol(self.fd.as_fd()))
    }

    /// The transport the filter routes this socket by: TCP for stream sockets (TCP or
    /// MPTCP), UDP for datagram sockets of protocol UDP; `None` for everything else — ICMP
    /// datagram sockets (unprivileged ping), UDP-Lite, SCTP, raw sockets — which sctrace
    /// does not relay.
    pub fn transport(&self) -> Option<sctrace_filter::Protocol> {
        match self.sock_type().ok()? {
            libc::SOCK_STREAM => match self.protocol().ok()? {
                libc::IPPROTO_TCP | libc::IPPROTO_MPTCP => Some(sctrace_filter::Protocol::Tcp),
                _ => None,
            },
            libc::SOCK_DGRAM => match self.protocol().ok()? {
                libc::IPPROTO_UDP => Some(sctrace_filter::Protocol::Udp),
                _ => None,
            },
            _ => None,
        }
    }

    /// The socket's identity, shared by every fd of it: its inode (what
    /// `/proc/PID/fd/N` shows as `socket:[INODE]`).
    pub fn identity(&self) -> Result<u64, Errno> {
        once(&self.ino, || sys::inode(self.fd.as_fd()))
    }

    /// Whether it is an IPv6 socket.
    pub fn is_v6(&self) -> bool {
        self.family() == Ok(libc::AF_INET6)
    }

    /// The file status flags of its open file description (O_NONBLOCK, ...).
    pub fn file_flags(&self) -> Result<i32, Errno> {
        sys::file_flags(self.fd.as_fd())
    }

    /// Whether sctrace holds the socket itself (container mode: it created it).
    pub fn is_held(&self) -> bool {
        self._held.is_some()
    }

    /// Its own address (`getsockname`), when it can be read.
    pub fn local_addr(&self) -> Option<SockAddr> {
        sys::local_addr(self.fd.as_fd())
            .ok()
            .and_then(|b| SockAddr::parse(&b))
    }

    /// Its own inet address, when it has one.
    pub fn local_inet(&self) -> Option<SocketAddr> {
        self.local_addr().and_then(|a| a.inet())
    }

    /// Reads what the socket is (two getsockopt calls).
    pub fn describe(&self) -> SocketDesc {
        SocketDesc {
            app_fd: self.app_fd,
            family: self.family().ok(),
            sock_type: self.sock_type().unwrap_or(0),
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

/// Copies fd `fd` of thread `tid` into the supervisor. The errno is what the kernel would
/// say about the fd (EBADF), or why we can't reach the thread (ESRCH, EPERM).
fn copy_fd(tid: u32, fd: i32) -> Result<OwnedFd, Errno> {
    PIDFDS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(pidfd) = cache.get(&tid) {
            match pidfd::get_fd(pidfd, fd) {
                // ESRCH: the cached thread died and its tid was reused; open it afresh.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                    cache.remove(&tid);
                }
                other => return other.map_err(|e| Errno::from_io(&e)),
            }
        }
        let pidfd = pidfd::open_thread(tid as i32).map_err(|e| Errno::from_io(&e))?;
        let copied = pidfd::get_fd(&pidfd, fd).map_err(|e| Errno::from_io(&e));
        if cache.len() >= PIDFD_CACHE_MAX {
            cache.clear();
        }
        cache.insert(tid, pidfd);
        copied
    })
}

/// Pidfds of recently seen threads, per supervisor thread (in practice the notification
/// loop's). A pidfd of a thread that died stays dead (ESRCH), so a recycled tid is never
/// mistaken for the thread it used to name; validity of the call itself is checked with
/// `id_valid` after copying, as always.
const PIDFD_CACHE_MAX: usize = 1024;

thread_local! {
    static PIDFDS: RefCell<HashMap<u32, OwnedFd>> = RefCell::new(HashMap::new());
}
