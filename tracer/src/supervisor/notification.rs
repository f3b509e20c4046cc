//! A received notification, typed: which socket call it is, and the helpers that copy its
//! pointer arguments out of the app (length-capped, with the fault the kernel would report).

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::OwnedFd;

use crate::errno::Errno;
use crate::sys::memory;
use crate::sys::notify::RawNotification;
use crate::sys::pidfd;

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
            libc::SYS_sendto => Syscall::SendTo,
            libc::SYS_recvfrom => Syscall::RecvFrom,
            libc::SYS_sendmsg => Syscall::SendMsg,
            libc::SYS_recvmsg => Syscall::RecvMsg,
            libc::SYS_sendmmsg => Syscall::SendMmsg,
            libc::SYS_recvmmsg => Syscall::RecvMmsg,
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
            Syscall::SendTo => "sendto",
            Syscall::RecvFrom => "recvfrom",
            Syscall::SendMsg => "sendmsg",
            Syscall::RecvMsg => "recvmsg",
            Syscall::SendMmsg => "sendmmsg",
            Syscall::RecvMmsg => "recvmmsg",
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

    /// Copies the app's fd `fd` into the supervisor. The errno is what the kernel would say
    /// about the fd (EBADF), or why we can't reach the thread (ESRCH, EPERM).
    pub fn take_fd(&self, fd: i32) -> Result<OwnedFd, Errno> {
        let tid = self.tid();
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
}

/// Pidfds of recently seen threads, per supervisor thread (in practice the notification
/// loop's). A pidfd of a thread that died stays dead (ESRCH), so a recycled tid is never
/// mistaken for the thread it used to name; validity of the call itself is checked with
/// `id_valid` after copying, as always.
const PIDFD_CACHE_MAX: usize = 1024;

thread_local! {
    static PIDFDS: RefCell<HashMap<u32, OwnedFd>> = RefCell::new(HashMap::new());
}
