//! What this machine lets sctrace do, found by trying each feature for real (a seccomp
//! profile answers EPERM where an old kernel answers ENOSYS, and a dry call with bad
//! arguments can't tell them apart): seccomp user notification, pidfds, `pidfd_getfd`.
//! `run` checks them before anything starts; `doctor` reports them.

use std::io;

use crate::sys::{notify, pidfd};

/// The outcome of trying one feature.
#[derive(Debug)]
pub enum Probe {
    /// It works.
    Works,
    /// The kernel does not have it (ENOSYS, EINVAL).
    Missing(io::Error),
    /// The kernel has it but something refuses it: a seccomp profile (Docker's default
    /// refuses `pidfd_getfd`), a security module, a missing capability.
    Refused(io::Error),
}

impl Probe {
    fn of(result: io::Result<()>) -> Probe {
        match result {
            Ok(()) => Probe::Works,
            Err(err) => match err.raw_os_error() {
                Some(libc::ENOSYS | libc::EINVAL) => Probe::Missing(err),
                _ => Probe::Refused(err),
            },
        }
    }

    /// Whether it works.
    pub fn works(&self) -> bool {
        matches!(self, Probe::Works)
    }
}

/// seccomp with user notification (`SECCOMP_GET_NOTIF_SIZES`, Linux 5.0).
pub fn user_notification() -> Probe {
    Probe::of(notify::user_notification_supported())
}

/// `pidfd_open` and `pidfd_getfd` (Linux 5.6), tried on sctrace's own process.
pub fn pidfd_getfd() -> Probe {
    Probe::of(pidfd::probe_get_fd())
}
