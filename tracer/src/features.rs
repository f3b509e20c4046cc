//! What this machine lets sctrace do, found by trying each feature for real (a seccomp
//! profile answers EPERM where an old kernel answers ENOSYS, and a dry call with bad
//! arguments can't tell them apart): seccomp user notification, pidfds, `pidfd_getfd`.
//! `run` checks them before anything starts and picks its [`Mode`]; `doctor` reports them.

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

/// How sctrace reaches the program's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// It copies a socket out of the program when a call needs it (`pidfd_getfd`).
    Full,
    /// `pidfd_getfd` is refused (a container's seccomp profile): sctrace creates the
    /// program's inet sockets itself and holds them (see `trap::owned`).
    Container,
}

impl Mode {
    /// The mode's name, as `doctor` and the logs say it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Container => "container",
        }
    }
}

/// The running kernel's version (major, minor), from `uname`'s release.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = crate::sys::process::kernel_release()?;
    parse_version(&release)
}

fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The oldest kernel container mode works on: `SECCOMP_ADDFD_FLAG_SEND` (5.14) installs a
/// created socket and answers `socket()` in one step.
pub const CONTAINER_MODE_KERNEL: (u32, u32) = (5, 14);

/// seccomp with user notification (`SECCOMP_GET_NOTIF_SIZES`, Linux 5.0).
pub fn user_notification() -> Probe {
    Probe::of(notify::user_notification_supported())
}

/// `pidfd_open` and `pidfd_getfd` (Linux 5.6), tried on sctrace's own process.
pub fn pidfd_getfd() -> Probe {
    Probe::of(pidfd::probe_get_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_are_read_from_releases() {
        assert_eq!(parse_version("6.18.44-fc-v1252"), Some((6, 18)));
        assert_eq!(parse_version("5.14.0-362.el9.x86_64"), Some((5, 14)));
        assert_eq!(parse_version("garbage"), None);
        assert!(kernel_version().is_some());
    }
}
