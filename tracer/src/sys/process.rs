//! Process control for the supervisor: reaping, signalling, the child-subreaper role,
//! resource limits, and the raw pipe I/O the child uses between fork and exec.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::syscall;

/// How a reaped process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this status code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

/// Makes this process the child subreaper: orphaned descendants (double-forked daemons)
/// are re-parented to us instead of to init, so they stay traceable and reapable.
pub fn become_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    syscall!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }).map(drop)
}

/// Reaps one exited child without blocking. `Ok(None)`: none has exited (or no children).
pub fn reap_any() -> io::Result<Option<(i32, Exit)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is valid for writes.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL) };
    if pid == -1 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ECHILD) {
            return Ok(None);
        }
        return Err(err);
    }
    if pid == 0 {
        return Ok(None);
    }
    let exit = if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Code(libc::WEXITSTATUS(status))
    };
    Ok(Some((pid, exit)))
}

/// `kill(pid, signal)`; ESRCH (already gone) is not an error.
pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes integers only.
    match syscall!(unsafe { libc::kill(pid, signal) }) {
        Ok(_) => Ok(()),
        Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        Err(err) => Err(err),
    }
}

/// Raises the soft open-file limit to the hard limit: the supervisor holds pidfds and
/// socket copies for many app threads at once. Returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is valid for writes.
    syscall!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit.
        syscall!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) })?;
        return Ok(raised.rlim_cur);
    }
    Ok(lim.rlim_cur)
}

/// Writes all of `buf` to `fd`. Async-signal-safe (used in the child before exec).
pub fn write_all_raw(fd: BorrowedFd<'_>, mut buf: &[u8]) -> Result<(), i32> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for reads of its length.
        let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = last_errno();
            if err == libc::EINTR {
                continue;
            }
            return Err(err);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes from `fd`; `Ok(false)` on end of file before that.
/// Async-signal-safe (used in the child before exec).
pub fn read_exact_raw(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<bool, i32> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is valid for writes of its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len()) };
        if n < 0 {
            let err = last_errno();
            if err == libc::EINTR {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Ok(false);
        }
        filled += n as usize;
    }
    Ok(true)
}

/// The calling process's id. Async-signal-safe.
pub fn getpid() -> i32 {
    // SAFETY: getpid has no arguments and cannot fail.
    unsafe { libc::getpid() }
}

fn last_errno() -> i32 {
    // SAFETY: __errno_location returns a valid thread-local pointer.
    unsafe { *libc::__errno_location() }
}
