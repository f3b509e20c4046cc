//! Process control for the supervisor: reaping, following the main program's stops and
//! continues, signalling, the child-subreaper role, and resource limits.

use std::io;

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

/// What became of the main program since it was last asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MainState {
    /// Nothing new.
    Running,
    /// It was stopped by this signal (job control: SIGTSTP, SIGTTIN, SIGTTOU, SIGSTOP).
    Stopped(i32),
    /// It was continued.
    Continued,
    /// It ended (and is reaped).
    Ended(Exit),
}

/// Asks, without blocking, what became of process `pid` (a child), stops and continues
/// included.
pub fn poll_main(pid: i32) -> io::Result<MainState> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is valid for writes.
    let ret = unsafe {
        libc::waitpid(
            pid,
            &mut status,
            libc::WNOHANG | libc::WUNTRACED | libc::WCONTINUED | libc::__WALL,
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(if ret == 0 {
        MainState::Running
    } else if libc::WIFSTOPPED(status) {
        MainState::Stopped(libc::WSTOPSIG(status))
    } else if libc::WIFCONTINUED(status) {
        MainState::Continued
    } else if libc::WIFSIGNALED(status) {
        MainState::Ended(Exit::Signal(libc::WTERMSIG(status)))
    } else {
        MainState::Ended(Exit::Code(libc::WEXITSTATUS(status)))
    })
}

/// Stops sctrace itself with `signal` (a job-control stop), as its stopped program did, so
/// that the shell sees its job stop.
pub fn stop_self(signal: i32) -> io::Result<()> {
    // SAFETY: kill takes integers only.
    syscall!(unsafe { libc::kill(libc::getpid(), signal) }).map(drop)
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

/// Moves the calling thread into the network namespace `ns` (a `/proc/PID/ns/net` file):
/// needs CAP_SYS_ADMIN, and a seccomp profile that allows `setns`.
pub fn enter_netns(ns: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setns takes an fd and a flag; it affects only the calling thread.
    syscall!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }).map(drop)
}

/// The kernel's release string (`uname -r`), e.g. `6.6.8-arch1`.
pub fn kernel_release() -> Option<String> {
    // SAFETY: utsname is plain old data; all-zero is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is valid for writes of a struct utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8(bytes).ok()
}

/// The calling process's id. Async-signal-safe.
pub fn getpid() -> i32 {
    // SAFETY: getpid has no arguments and cannot fail.
    unsafe { libc::getpid() }
}
