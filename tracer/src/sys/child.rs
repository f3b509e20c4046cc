//! What the app's process does between fork and exec: it becomes the leader of its own
//! process group and, when sctrace runs in the foreground of a terminal, takes the
//! terminal's foreground, as a shell's job does.
//!
//! Its own process group means that a signal sent to sctrace's group (`kill -INT -PGID`,
//! `timeout`, a CI runner stopping a job) reaches the app once — forwarded by sctrace — and
//! never reaches sctrace's agent; and that the terminal's signals (Ctrl-C, Ctrl-\, Ctrl-Z)
//! reach the app's group directly, not sctrace or its agent.
//!
//! Everything here runs in a forked copy of a multi-threaded process, so it makes only raw,
//! async-signal-safe system calls and never allocates.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Arranges for `cmd`'s child to lead a new process group and, with `terminal`, to make
/// that group the terminal's foreground group before it execs.
pub fn own_process_group(cmd: &mut Command, terminal: Option<RawFd>) {
    let child = move || -> io::Result<()> {
        // SAFETY: setpgid with integer arguments only.
        if unsafe { libc::setpgid(0, 0) } == -1 {
            return Err(io::Error::last_os_error());
        }
        if let Some(tty) = terminal {
            // tcsetpgrp from a process that is not (yet) in the foreground group raises
            // SIGTTOU unless it is blocked: block it for the call, as shells do.
            // SAFETY: sigset_t is plain old data; all-zero is a valid (empty) value.
            let (mut set, mut old): (libc::sigset_t, libc::sigset_t) =
                unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
            // SAFETY: `set` and `old` are valid sigset_t values for the calls' duration.
            unsafe {
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTTOU);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            }
            // SAFETY: tcsetpgrp takes an fd and a pgid; a failure (the terminal went away)
            // leaves the program in the background, which is not worth failing the start.
            unsafe {
                libc::tcsetpgrp(tty, libc::getpid());
                libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes raw system calls (setpgid, sigprocmask, tcsetpgrp,
    // getpid) and builds io::Errors from raw errnos, which does not allocate: it is
    // async-signal-safe, as required between fork and exec.
    unsafe {
        cmd.pre_exec(child);
    }
}
