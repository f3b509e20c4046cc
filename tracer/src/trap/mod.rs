//! A trapped call as the supervisor first sees it: the notification, typed (which socket
//! call it is), and everything copied out of the app for it — pointer arguments
//! (length-capped, with the fault the kernel would report), message headers, and a copy of
//! the app's socket. This is the bottom of the pipeline: handlers read it to decide, the
//! executor reads it to carry the decision out, and it depends on neither.

pub mod msghdr;
pub mod owned;
pub mod socket;

use std::sync::Arc;

use crate::errno::Errno;
use crate::procfs;
use crate::sys::notify::NotifyFd;

use crate::sockaddr::SockAddr;
use crate::sys::memory;
use crate::sys::notify::RawNotification;

/// The socket calls the filter sends to the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syscall {
    /// connect(fd, addr, addrlen)
    Connect,
    /// bind(fd, addr, addrlen)
    Bind,
    /// listen(fd, backlog)
    Listen,
    /// accept(fd, addr, addrlen)
    Accept,
    /// accept4(fd, addr, addrlen, flags)
    Accept4,
    /// getpeername(fd, addr, addrlen)
    GetPeerName,
    /// getsockname(fd, addr, addrlen)
    GetSockName,
    /// sendto(fd, buf, len, flags, dest, addrlen), trapped only with a destination
    SendTo,
    /// recvfrom(fd, buf, len, flags, src, addrlen), trapped only with a source buffer
    RecvFrom,
    /// sendmsg(fd, msg, flags)
    SendMsg,
    /// recvmsg(fd, msg, flags)
    RecvMsg,
    /// sendmmsg(fd, msgvec, vlen, flags)
    SendMmsg,
    /// recvmmsg(fd, msgvec, vlen, flags, timeout)
    RecvMmsg,
    /// socket(domain, type, protocol), trapped only in container mode for inet domains
    Socket,
    /// epoll_create(size), trapped only in sessions that hand sockets of the target over
    EpollCreate,
    /// epoll_create1(flags), likewise
    EpollCreate1,
    /// A call the filter should not have sent (a newer filter, another ABI).
    Other(i32),
}

impl Syscall {
    /// Classifies a native system call number.
    pub fn from_nr(nr: i32) -> Self {
        match i64::from(nr) {
            libc::SYS_connect => Syscall::Connect,
            libc::SYS_bind => Syscall::Bind,
            libc::SYS_listen => Syscall::Listen,
            libc::SYS_accept => Syscall::Accept,
            libc::SYS_accept4 => Syscall::Accept4,
            libc::SYS_getpeername => Syscall::GetPeerName,
            libc::SYS_getsockname => Syscall::GetSockName,
            libc::SYS_sendto => Syscall::SendTo,
            libc::SYS_recvfrom => Syscall::RecvFrom,
            libc::SYS_sendmsg => Syscall::SendMsg,
            libc::SYS_recvmsg => Syscall::RecvMsg,
            libc::SYS_sendmmsg => Syscall::SendMmsg,
            libc::SYS_recvmmsg => Syscall::RecvMmsg,
            libc::SYS_socket => Syscall::Socket,
            #[cfg(target_arch = "x86_64")]
            libc::SYS_epoll_create => Syscall::EpollCreate,
            libc::SYS_epoll_create1 => Syscall::EpollCreate1,
            _ => Syscall::Other(nr),
        }
    }

    /// The name used in events.
    pub fn name(self) -> &'static str {
        match self {
            Syscall::Connect => "connect",
            Syscall::Bind => "bind",
            Syscall::Listen => "listen",
            Syscall::Accept => "accept",
            Syscall::Accept4 => "accept4",
            Syscall::GetPeerName => "getpeername",
            Syscall::GetSockName => "getsockname",
            Syscall::SendTo => "sendto",
            Syscall::RecvFrom => "recvfrom",
            Syscall::SendMsg => "sendmsg",
            Syscall::RecvMsg => "recvmsg",
            Syscall::SendMmsg => "sendmmsg",
            Syscall::RecvMmsg => "recvmmsg",
            Syscall::Socket => "socket",
            Syscall::EpollCreate => "epoll_create",
            Syscall::EpollCreate1 => "epoll_create1",
            Syscall::Other(_) => "other",
        }
    }
}

/// The largest socket address the kernel accepts (`sizeof(struct sockaddr_storage)`).
pub const MAX_SOCKADDR: usize = 128;

/// A pointer-and-length address argument as copied from the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrArg {
    /// The bytes (`len` of them, at most [`MAX_SOCKADDR`]).
    Bytes(Vec<u8>),
    /// Length zero: the kernel reads nothing.
    Empty,
    /// A length the kernel rejects before reading (negative or over 128): EINVAL.
    BadLength,
    /// The pointer could not be read: the kernel would answer EFAULT.
    Unreadable,
}

impl AddrArg {
    /// The address family the app wrote (`sa_family`), when readable.
    pub fn family(&self) -> Option<i32> {
        match self {
            AddrArg::Bytes(b) if b.len() >= 2 => Some(i32::from(u16::from_ne_bytes([b[0], b[1]]))),
            _ => None,
        }
    }

    /// Whether it names a Unix socket. Calls with one are left to the kernel: done from the
    /// supervisor, a connect or send would carry sctrace's pid in SO_PEERCRED/SCM_CREDENTIALS,
    /// and a bind would resolve its path against sctrace's working directory and create the
    /// file with sctrace's umask.
    pub fn is_unix(&self) -> bool {
        self.family() == Some(libc::AF_UNIX)
    }

    /// The inet address it holds, if it is one.
    pub fn inet(&self) -> Option<std::net::SocketAddr> {
        self.bytes()
            .and_then(SockAddr::parse)
            .and_then(|a| a.inet())
    }

    /// How it reads in an event.
    pub fn describe(&self) -> String {
        match self {
            AddrArg::Bytes(b) => match SockAddr::parse(b) {
                Some(addr) => addr.to_string(),
                None => "(short address)".into(),
            },
            AddrArg::Empty => "(empty)".into(),
            AddrArg::BadLength => "(bad length)".into(),
            AddrArg::Unreadable => "(unreadable)".into(),
        }
    }

    /// The bytes to pass when re-issuing the call (NULL for anything unreadable).
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            AddrArg::Bytes(b) => Some(b),
            // A zero length or a rejected one is never read, so any valid pointer will do.
            AddrArg::Empty | AddrArg::BadLength => Some(&[0u8; MAX_SOCKADDR]),
            AddrArg::Unreadable => None,
        }
    }
}

/// One trapped call, received and typed.
#[derive(Debug, Clone, Copy)]
pub struct Notification {
    /// The raw notification.
    pub raw: RawNotification,
    /// Which call it is.
    pub call: Syscall,
}

impl Notification {
    /// Types a raw notification.
    pub fn new(raw: RawNotification) -> Self {
        Self {
            raw,
            call: Syscall::from_nr(raw.nr),
        }
    }

    /// The calling thread.
    pub fn tid(&self) -> u32 {
        self.raw.tid
    }

    /// Argument `i` as the kernel's `int` (fds, lengths, flags).
    pub fn arg_int(&self, i: usize) -> i32 {
        self.raw.args[i] as i32
    }

    /// Argument `i` as a pointer.
    pub fn arg_ptr(&self, i: usize) -> u64 {
        self.raw.args[i]
    }

    /// Argument `i` as the kernel's `size_t` or `unsigned int` (lengths, vector sizes).
    pub fn arg_u64(&self, i: usize) -> u64 {
        self.raw.args[i]
    }

    /// Reads a native-endian `u64` at `addr` in the app; `None` where the kernel would fault.
    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        memory::read_exact(self.tid(), addr, &mut b).ok()?;
        Some(u64::from_ne_bytes(b))
    }

    /// Reads a native-endian `i32` at `addr` in the app; `None` where the kernel would fault.
    pub fn read_i32(&self, addr: u64) -> Option<i32> {
        let mut b = [0u8; 4];
        memory::read_exact(self.tid(), addr, &mut b).ok()?;
        Some(i32::from_ne_bytes(b))
    }

    /// Copies a `(pointer, int length)` address argument the way the kernel's
    /// `move_addr_to_kernel` would read it.
    pub fn copy_addr(&self, ptr: u64, len: i32) -> AddrArg {
        if len < 0 || len as usize > MAX_SOCKADDR {
            return AddrArg::BadLength;
        }
        if len == 0 {
            return AddrArg::Empty;
        }
        match memory::read_vec(self.tid(), ptr, len as usize) {
            Ok(bytes) => AddrArg::Bytes(bytes),
            Err(_) => AddrArg::Unreadable,
        }
    }
}

/// What became of a call whose answer waits ([`CallRef::fate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It is no longer pending: the caller died, or (without WAIT_KILLABLE_RECV) a signal
    /// interrupted it and the kernel took it back.
    Gone,
    /// A signal the caller catches waits for it: the call must end as the kernel would end
    /// a blocking call, so that the handler runs (`alarm(); accept();` and the like).
    Interrupted(Errno),
}

/// How often a call whose answer waits is looked at ([`CallRef::fate`]).
pub const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// `-ERESTARTSYS` (kernel-internal, include/linux/errno.h): the kernel restarts the call
/// after a handler installed with SA_RESTART, and turns it into EINTR otherwise — exactly
/// what an interrupted blocking call does.
const ERESTARTSYS: i32 = 512;

/// A handle on one pending call, for deferred work that must check the call still waits
/// before it consumes something on the app's behalf (a datagram, a connection): a call
/// that is gone would lose it.
#[derive(Debug, Clone)]
pub struct CallRef {
    notify: Arc<NotifyFd>,
    id: u64,
}

impl CallRef {
    /// The handle on call `id` of `notify`.
    pub fn new(notify: Arc<NotifyFd>, id: u64) -> Self {
        Self { notify, id }
    }

    /// Whether the call is still waiting for its answer.
    pub fn pending(&self) -> bool {
        self.notify.id_valid(self.id)
    }

    /// Answers the call with a new fd of the app for `fd` (an accept's result): the fd
    /// number, or `None` when the call was gone and nothing was installed. Used only where
    /// another thread answers a parked accept first (see `supervisor`'s notes).
    pub fn answer_with_fd(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        cloexec: bool,
    ) -> std::io::Result<Option<i32>> {
        self.notify.install_fd_and_answer(self.id, fd, cloexec)
    }

    /// What became of the call, if anything: gone, or a signal its caller catches waits
    /// for `tid` (its thread). `None`: it still waits for its answer.
    pub fn fate(&self, tid: u32) -> Option<Fate> {
        if !self.pending() {
            return Some(Fate::Gone);
        }
        match procfs::caught_signal_pending(tid) {
            // Sent to this very thread: it takes it when the call ends, and the kernel
            // restarts or interrupts the call as the handler's flags say.
            Ok(Some(true)) => Some(Fate::Interrupted(Errno(ERESTARTSYS))),
            // Sent to its multi-threaded process: this thread may not be the one that takes
            // it, so the call ends plainly interrupted.
            Ok(Some(false)) => Some(Fate::Interrupted(Errno(libc::EINTR))),
            Ok(None) => None,
            Err(_) => Some(Fate::Gone),
        }
    }

    /// Fails the call with `errno` (see [`CallRef::answer_with_fd`]).
    pub fn answer_error(&self, errno: i32) -> std::io::Result<()> {
        self.notify.respond(self.id, 0, -errno, false)
    }
}
