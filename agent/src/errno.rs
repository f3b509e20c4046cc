//! The Linux errno values the agent puts on the wire itself (in `OpenFailed`, and in the
//! `Reset` that ends a subscription) where no failed system call supplied one.

use std::io;

/// `EIO`: for failures that carry no errno.
pub const EIO: i32 = nix::libc::EIO;
/// A request this session cannot serve (data connections where none are accepted).
pub const EOPNOTSUPP: i32 = nix::libc::EOPNOTSUPP;
/// `ETIMEDOUT`: what a connect that ran out of time reports, as the kernel's own would.
pub const ETIMEDOUT: i32 = nix::libc::ETIMEDOUT;

/// The errno a failed system call gave, `EIO` for a failure without one.
pub fn of(error: &io::Error) -> i32 {
    error.raw_os_error().unwrap_or(EIO)
}
