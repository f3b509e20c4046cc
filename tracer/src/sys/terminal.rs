//! sctrace's controlling terminal, which it hands to the app's process group as a shell
//! hands it to a foreground job, and takes back when the app stops or exits.
//!
//! Kernel facts: the terminal driver sends SIGINT/SIGQUIT/SIGTSTP/SIGWINCH to the terminal's
//! foreground process group only; `tcsetpgrp` from a process outside the foreground group
//! raises SIGTTOU unless that signal is blocked or ignored (sctrace blocks it, see
//! [`block_background_stops`]), and so does writing to the terminal with `TOSTOP` set.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::syscall;

/// The controlling terminal of a sctrace running in its foreground.
#[derive(Debug)]
pub struct Terminal {
    fd: OwnedFd,
    own_group: i32,
}

impl Terminal {
    /// The controlling terminal, when sctrace has one and is in its foreground process
    /// group (an interactive shell's foreground job); `None` otherwise (CI, a pipe, `&`).
    pub fn foreground() -> Option<Terminal> {
        // SAFETY: the path is a NUL-terminated literal; open returns a new fd or -1.
        let raw = unsafe {
            libc::open(
                c"/dev/tty".as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOCTTY,
            )
        };
        if raw < 0 {
            return None;
        }
        // SAFETY: the kernel just returned this fd; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: getpgrp and tcgetpgrp take integers only.
        let (own_group, foreground) = unsafe { (libc::getpgrp(), libc::tcgetpgrp(raw)) };
        (foreground == own_group).then_some(Terminal { fd, own_group })
    }

    /// The terminal's fd, for the app's own `tcsetpgrp` before exec.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes process group `group` the terminal's foreground group.
    pub fn give_to(&self, group: i32) -> io::Result<()> {
        // SAFETY: tcsetpgrp takes an fd and a process group id.
        syscall!(unsafe { libc::tcsetpgrp(self.fd.as_raw_fd(), group) }).map(drop)
    }

    /// Makes sctrace's own process group the foreground group again.
    pub fn take_back(&self) -> io::Result<()> {
        self.give_to(self.own_group)
    }

    /// Whether sctrace's group is the foreground group now (after `fg`, not after `bg`).
    pub fn is_ours(&self) -> bool {
        // SAFETY: tcgetpgrp takes an fd.
        unsafe { libc::tcgetpgrp(self.fd.as_raw_fd()) == self.own_group }
    }
}

/// Blocks SIGTTOU and SIGTTIN in the calling thread and the threads it starts afterwards:
/// once the app has the terminal, sctrace is a background process, and its own messages on
/// the terminal (or its `tcsetpgrp`) must not stop it. Programs sctrace starts get an empty
/// signal mask (`Command` resets it).
pub fn block_background_stops() -> io::Result<()> {
    // SAFETY: sigset_t is plain old data; all-zero is a valid value before sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls only write it and the thread's mask.
    let ret = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTTOU);
        libc::sigaddset(&mut set, libc::SIGTTIN);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}
