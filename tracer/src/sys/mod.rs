//! Every unsafe system call sctrace makes lives below this module: the seccomp notify fd,
//! reading the traced app's memory, pidfds, raw socket calls and process control.
//!
//! Each function is small, takes and returns safe types, and says in a `// SAFETY:` comment
//! why its unsafe block is sound. Callers above `sys` never write `unsafe`.
#![allow(unsafe_code)]

pub mod child;
pub mod memory;
pub mod notify;
pub mod pidfd;
pub mod process;
pub mod scm_rights;
pub mod socket;
pub mod terminal;

/// Runs a libc call that returns -1 on failure and turns that into an `io::Error` from errno.
macro_rules! syscall {
    ($call:expr) => {{
        let ret = $call;
        if ret == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }};
}
pub(crate) use syscall;
