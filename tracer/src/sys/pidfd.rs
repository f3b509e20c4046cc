//! Process file descriptors: a stable handle on one thread or process of the traced app,
//! used to copy the app's socket fds into the supervisor (`pidfd_getfd`) and to signal it.
//!
//! Kernel facts: `pidfd_open` (5.3) refuses non-leader threads unless given `PIDFD_THREAD`
//! (6.9); `pidfd_getfd` (5.6) needs ptrace-attach rights over the target, which the
//! supervisor has as the app's parent or child subreaper with the same credentials. A pidfd
//! never refers to another process after the original one died, so a recycled tid can't
//! make us act on the wrong process.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::syscall;

/// Whether `PIDFD_THREAD` was refused once; then we stop trying it.
static THREAD_PIDFD_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Opens a pidfd for `pid` with `flags`.
fn pidfd_open(pid: i32, flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes integers and returns a new fd or -1.
    let fd = syscall!(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) })?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Opens a pidfd for the process (thread-group leader) `pid`.
pub fn open_process(pid: i32) -> io::Result<OwnedFd> {
    pidfd_open(pid, 0)
}

/// Opens a pidfd usable with `pidfd_getfd` for thread `tid`: a thread pidfd where the kernel
/// has them, else a pidfd on its process (found through /proc when `tid` is not a leader).
pub fn open_thread(tid: i32) -> io::Result<OwnedFd> {
    if !THREAD_PIDFD_UNSUPPORTED.load(Ordering::Relaxed) {
        match pidfd_open(tid, libc::PIDFD_THREAD) {
            Ok(fd) => return Ok(fd),
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                THREAD_PIDFD_UNSUPPORTED.store(true, Ordering::Relaxed);
            }
            Err(err) => return Err(err),
        }
    }
    match pidfd_open(tid, 0) {
        Ok(fd) => Ok(fd),
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
            let tgid = crate::procfs::thread_group_of(tid)?;
            pidfd_open(tgid, 0)
        }
        Err(err) => Err(err),
    }
}

/// Copies the target's file descriptor `target_fd` into this process (close-on-exec).
/// The copy shares the open file description: flags, offsets, socket state, epoll interest.
pub fn get_fd(pidfd: &OwnedFd, target_fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes integers and returns a new fd or -1.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) };
    let fd = syscall!(ret)?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` to the process behind `pidfd`.
pub fn send_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a NULL siginfo behaves like kill(2).
    syscall!(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(drop)
}

/// Tries `pidfd_open` and `pidfd_getfd` for real, on sctrace's own process (copying the
/// pidfd's own fd): the errno tells a kernel without them (ENOSYS) from a seccomp profile or
/// security module that refuses them (EPERM, EACCES), which a dry call with bad arguments
/// could not tell.
pub fn probe_get_fd() -> io::Result<()> {
    // SAFETY: getpid has no arguments and cannot fail.
    let me = open_process(unsafe { libc::getpid() })?;
    get_fd(&me, me.as_raw_fd()).map(drop)
}
