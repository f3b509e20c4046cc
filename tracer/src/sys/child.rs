//! What the child does between fork and exec: install the seccomp filter, report the
//! listener fd to the parent, and wait for the parent's go-ahead before exec.
//!
//! The listener is close-on-exec, so the parent must have taken its copy (`pidfd_getfd`)
//! before the child execs — hence the acknowledgement. Passing the fd with SCM_RIGHTS would
//! deadlock: `sendmsg` is itself trapped by the new filter.
//!
//! Everything here runs in a forked copy of a multi-threaded process, so it makes only raw,
//! async-signal-safe system calls and never allocates.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::notify::{install_filter_in_child, InstallStep};
use super::process::{getpid, read_exact_raw, write_all_raw};

/// What the child reports on the status pipe (three native-endian i32s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildReport {
    /// The filter is installed; the listener is fd `listener` in process `pid`.
    Listening {
        /// The child's pid.
        pid: i32,
        /// The listener's fd number in the child.
        listener: i32,
    },
    /// Installing the filter failed at `step` with `errno`.
    Failed {
        /// The failing step.
        step: InstallStep,
        /// The errno it gave.
        errno: i32,
    },
}

impl ChildReport {
    /// The encoded size.
    pub const SIZE: usize = 12;

    fn encode(self) -> [u8; Self::SIZE] {
        let (a, b, c): (i32, i32, i32) = match self {
            ChildReport::Listening { pid, listener } => (1, pid, listener),
            ChildReport::Failed { step, errno } => (2, step as i32, errno),
        };
        let mut out = [0u8; Self::SIZE];
        out[0..4].copy_from_slice(&a.to_ne_bytes());
        out[4..8].copy_from_slice(&b.to_ne_bytes());
        out[8..12].copy_from_slice(&c.to_ne_bytes());
        out
    }

    /// Decodes a report; `None` for bytes no child of ours writes.
    pub fn decode(bytes: &[u8; Self::SIZE]) -> Option<Self> {
        let word =
            |i: usize| i32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        match word(0) {
            1 => Some(ChildReport::Listening {
                pid: word(4),
                listener: word(8),
            }),
            2 => Some(ChildReport::Failed {
                step: InstallStep::from_raw(word(4))?,
                errno: word(8),
            }),
            _ => None,
        }
    }
}

/// The byte the parent writes when it holds the listener and the child may exec.
pub const ACK_GO: u8 = 1;

/// Arranges for `cmd`'s child to install `filter` before exec, report on `status`, and wait
/// for [`ACK_GO`] on `ack`. The fds must stay open in the parent until `spawn` returns.
pub fn install_filter_before_exec(
    cmd: &mut Command,
    filter: Vec<libc::sock_filter>,
    status: BorrowedFd<'_>,
    ack: BorrowedFd<'_>,
) {
    let status_fd: RawFd = status.as_raw_fd();
    let ack_fd: RawFd = ack.as_raw_fd();
    let child = move || -> io::Result<()> {
        // SAFETY: these fds are open in the parent for the whole spawn (caller contract)
        // and so in the forked child until exec closes them (they are close-on-exec).
        let status = unsafe { BorrowedFd::borrow_raw(status_fd) };
        // SAFETY: as above.
        let ack = unsafe { BorrowedFd::borrow_raw(ack_fd) };
        let report = match install_filter_in_child(&filter) {
            Ok(listener) => ChildReport::Listening {
                pid: getpid(),
                listener,
            },
            Err((step, errno)) => ChildReport::Failed { step, errno },
        };
        write_all_raw(status.as_fd(), &report.encode()).map_err(io::Error::from_raw_os_error)?;
        if let ChildReport::Failed { errno, .. } = report {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let mut go = [0u8; 1];
        match read_exact_raw(ack.as_fd(), &mut go) {
            Ok(true) if go[0] == ACK_GO => Ok(()),
            Ok(_) => Err(io::Error::from_raw_os_error(libc::ECANCELED)),
            Err(errno) => Err(io::Error::from_raw_os_error(errno)),
        }
    };
    // SAFETY: the closure only makes raw system calls (prctl, seccomp, getpid, write,
    // read) and builds io::Errors from raw errnos, which does not allocate: it is
    // async-signal-safe, as required between fork and exec.
    unsafe {
        cmd.pre_exec(child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        for r in [
            ChildReport::Listening {
                pid: 42,
                listener: 3,
            },
            ChildReport::Failed {
                step: InstallStep::Seccomp,
                errno: libc::EACCES,
            },
            ChildReport::Failed {
                step: InstallStep::NoNewPrivs,
                errno: libc::EPERM,
            },
        ] {
            assert_eq!(ChildReport::decode(&r.encode()), Some(r));
        }
        assert_eq!(ChildReport::decode(&[9; 12]), None);
    }
}
