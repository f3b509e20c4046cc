//! The seccomp user-notification interface: installing the filter (on the thread that then
//! starts the app, so the listener lands in sctrace's own fd table) and receiving
//! notifications and answering them.
//!
//! Kernel facts relied on (Documentation/userspace-api/seccomp_filter.rst):
//! - `SECCOMP_FILTER_FLAG_NEW_LISTENER` returns the listener fd (close-on-exec).
//! - `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` (5.19) keeps non-fatal signals from
//!   interrupting a call the supervisor has already received; older kernels answer EINVAL.
//! - `SECCOMP_IOCTL_NOTIF_RECV` needs a zeroed buffer and fails with ENOENT when the
//!   notifying task died between poll and receive.
//! - `SECCOMP_IOCTL_NOTIF_SEND` fails with ENOENT when the call was interrupted (the task
//!   got a signal or died): the answer is then simply dropped.
//! - `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (6.6) makes the kernel switch directly between the
//!   app thread and the supervisor thread, which roughly halves the round trip.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::syscall;

/// One received notification, copied out of the kernel's `struct seccomp_notif`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawNotification {
    /// The kernel's cookie for this call; answers and validity checks quote it.
    pub id: u64,
    /// The calling thread's id (a tid, not a tgid) in the supervisor's pid namespace.
    pub tid: u32,
    /// The system call number.
    pub nr: i32,
    /// The `AUDIT_ARCH_*` value of the calling ABI.
    pub arch: u32,
    /// The six raw system call arguments.
    pub args: [u64; 6],
}

/// The supervisor's end of the seccomp filter: a listener fd that yields notifications.
#[derive(Debug)]
pub struct NotifyFd(OwnedFd);

impl NotifyFd {
    /// Wraps a listener fd obtained from the child.
    pub fn new(fd: OwnedFd) -> Self {
        Self(fd)
    }

    /// Tells, without waiting, whether no traced task is left: the kernel reports POLLHUP
    /// once the filter has no users (and RECV then fails with ENOENT at once).
    pub fn hung_up(&self) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call; nfds is 1.
        let ret = unsafe { libc::poll(&mut pfd, 1, 0) };
        if ret == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(pfd.revents & libc::POLLIN == 0
            && pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0)
    }

    /// Waits at most `timeout` for a notification to arrive; `Ok(false)` when none did (or
    /// no traced task is left). For callers that must never wait forever (`sctrace doctor`).
    pub fn wait_readable(&self, timeout: std::time::Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pfd` is a valid pollfd for the duration of the call; nfds is 1.
        let ret = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ret == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(pfd.revents & libc::POLLIN != 0)
    }

    /// Waits for and receives one notification. `Ok(None)` means the notifying task went
    /// away before it could be received, or no task is left at all (ENOENT; see
    /// [`NotifyFd::hung_up`]), or the wait was interrupted.
    pub fn recv(&self) -> io::Result<Option<RawNotification>> {
        // The kernel requires a zeroed buffer of its own struct size; libc's matches the
        // size encoded in the ioctl number, which is what the kernel copies.
        // SAFETY: seccomp_notif is plain old data; all-zero is a valid value.
        let mut notif: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: the ioctl writes at most size_of::<seccomp_notif>() bytes (the size is
        // part of the request number) into `notif`, which lives across the call.
        let ret = unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV,
                &mut notif as *mut libc::seccomp_notif,
            )
        };
        if ret == -1 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::EINTR) => Ok(None),
                _ => Err(err),
            };
        }
        Ok(Some(RawNotification {
            id: notif.id,
            tid: notif.pid,
            nr: notif.data.nr,
            arch: notif.data.arch,
            args: notif.data.args,
        }))
    }

    /// Tells whether notification `id` is still pending, i.e. the thread that made it is
    /// still blocked in that very call. Checked after copying the app's memory, so that
    /// what was copied is known to belong to the call (the TOCTOU rule).
    pub fn id_valid(&self, id: u64) -> bool {
        // SAFETY: the ioctl reads one u64 from the pointer, which is valid for the call.
        let ret = unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
                &id as *const u64,
            )
        };
        ret == 0
    }

    /// Answers notification `id`: either let the kernel run the call (`continue_call`), or
    /// make it return `val` (when `error` is 0) or fail with `-error` (a negative errno).
    /// An interrupted call (ENOENT) is not an error: nobody waits for the answer any more.
    pub fn respond(&self, id: u64, val: i64, error: i32, continue_call: bool) -> io::Result<()> {
        let mut resp = libc::seccomp_notif_resp {
            id,
            val,
            error,
            flags: if continue_call {
                libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32
            } else {
                0
            },
        };
        // SAFETY: the ioctl reads a seccomp_notif_resp from the pointer (its size is in
        // the request number); `resp` lives across the call.
        let ret = unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SEND,
                &mut resp as *mut libc::seccomp_notif_resp,
            )
        };
        if ret == -1 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOENT) {
                return Ok(());
            }
            return Err(err);
        }
        Ok(())
    }

    /// Installs `fd` in the calling process of notification `id` and answers the call with
    /// the new fd number, atomically (`SECCOMP_IOCTL_NOTIF_ADDFD` with
    /// `SECCOMP_ADDFD_FLAG_SEND`, Linux 5.14): how an emulated `accept` returns its socket.
    /// `Ok(None)`: the call was interrupted meanwhile (ENOENT); the fd is then not installed.
    pub fn install_fd_and_answer(
        &self,
        id: u64,
        fd: BorrowedFd<'_>,
        cloexec: bool,
    ) -> io::Result<Option<i32>> {
        const SECCOMP_ADDFD_FLAG_SEND: u32 = 1 << 1;
        self.add_fd(id, SECCOMP_ADDFD_FLAG_SEND, fd, 0, cloexec)
    }

    /// Installs `fd` in the calling process of notification `id` as fd number `target`,
    /// replacing what was there as `dup2` would (`SECCOMP_IOCTL_NOTIF_ADDFD` with
    /// `SECCOMP_ADDFD_FLAG_SETFD`, Linux 5.9); the call itself is answered separately.
    /// `Ok(false)`: the call was interrupted meanwhile (ENOENT); nothing was installed.
    pub fn replace_fd(
        &self,
        id: u64,
        fd: BorrowedFd<'_>,
        target: i32,
        cloexec: bool,
    ) -> io::Result<bool> {
        const SECCOMP_ADDFD_FLAG_SETFD: u32 = 1 << 0;
        let target =
            u32::try_from(target).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        Ok(self
            .add_fd(id, SECCOMP_ADDFD_FLAG_SETFD, fd, target, cloexec)?
            .is_some())
    }

    /// `SECCOMP_IOCTL_NOTIF_ADDFD` for notification `id`: the fd number the target got, or
    /// `None` when the call was interrupted meanwhile (ENOENT) and nothing was installed.
    fn add_fd(
        &self,
        id: u64,
        flags: u32,
        fd: BorrowedFd<'_>,
        newfd: u32,
        cloexec: bool,
    ) -> io::Result<Option<i32>> {
        let mut addfd = libc::seccomp_notif_addfd {
            id,
            flags,
            srcfd: fd.as_raw_fd() as u32,
            newfd,
            newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
        };
        // SAFETY: the ioctl reads a seccomp_notif_addfd (its size is in the request number)
        // from the pointer, which is valid for the call.
        let ret = unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ADDFD,
                &mut addfd as *mut libc::seccomp_notif_addfd,
            )
        };
        if ret == -1 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOENT) {
                return Ok(None);
            }
            return Err(err);
        }
        Ok(Some(ret))
    }

    /// Asks for synchronous wake-ups between app and supervisor (Linux 6.6+). Returns
    /// whether the kernel accepted it; older kernels just keep the normal wake-up path.
    pub fn enable_sync_wakeup(&self) -> bool {
        const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;
        // SAFETY: SET_FLAGS takes the flags by value in the third argument.
        let ret = unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS,
                SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
            )
        };
        ret == 0
    }
}

impl AsRawFd for NotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Tells whether this kernel offers seccomp user notification at all (Linux 5.0+, built
/// with CONFIG_SECCOMP_FILTER), by asking for the notification struct sizes.
pub fn user_notification_supported() -> io::Result<()> {
    // SAFETY: seccomp_notif_sizes is plain old data; all-zero is a valid value.
    let mut sizes: libc::seccomp_notif_sizes = unsafe { std::mem::zeroed() };
    // SAFETY: GET_NOTIF_SIZES writes a seccomp_notif_sizes into the pointer.
    syscall!(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_NOTIF_SIZES,
            0,
            &mut sizes as *mut libc::seccomp_notif_sizes,
        )
    })
    .map(drop)
}

/// Which step of installing the filter failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallStep {
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed.
    NoNewPrivs,
    /// `seccomp(SECCOMP_SET_MODE_FILTER)` failed.
    Seccomp,
}

/// An installed filter's listener, and whether the kernel took
/// `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` (5.19) with it.
#[derive(Debug)]
pub struct Installed {
    /// The listener (close-on-exec).
    pub listener: OwnedFd,
    /// Whether calls the supervisor received wait for their answer through non-fatal signals.
    pub wait_killable: bool,
}

/// Installs `program` as a seccomp filter on the calling thread only (no TSYNC), after
/// setting its `no_new_privs`, and returns the listener (close-on-exec), or the failing step
/// and errno. Both are per-thread attributes inherited by the processes the thread starts,
/// so the app it spawns next runs under the filter while sctrace's other threads do not.
///
/// `killable_wait: false` leaves out `WAIT_KILLABLE_RECV` even where the kernel has it, as
/// on kernels before 5.19 (the tests use it to exercise that path).
pub fn install_filter_on_this_thread(
    program: &[libc::sock_filter],
    killable_wait: bool,
) -> Result<Installed, (InstallStep, i32)> {
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes integer arguments only.
    let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if ret != 0 {
        return Err((InstallStep::NoNewPrivs, errno()));
    }
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    let base = libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
    let attempts: &[u64] = if killable_wait {
        &[base | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, base]
    } else {
        &[base]
    };
    for &flags in attempts {
        // SAFETY: `fprog` points at `program`, which outlives the call; the kernel copies
        // the program before returning.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &fprog as *const libc::sock_fprog,
            )
        };
        if ret >= 0 {
            // SAFETY: the kernel just returned this new fd; nothing else owns it.
            let listener = unsafe { OwnedFd::from_raw_fd(ret as RawFd) };
            return Ok(Installed {
                listener,
                wait_killable: flags != base,
            });
        }
        let err = errno();
        // EINVAL with the newer flag means an older kernel: try again without it.
        if !(err == libc::EINVAL && flags != base) {
            return Err((InstallStep::Seccomp, err));
        }
    }
    Err((InstallStep::Seccomp, libc::EINVAL))
}

fn errno() -> i32 {
    // SAFETY: __errno_location returns a valid thread-local pointer.
    unsafe { *libc::__errno_location() }
}
