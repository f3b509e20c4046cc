//! Starting the app under the seccomp filter and keeping the filter's listener.
//!
//! ```text
//!  main thread                      launch thread                     app
//!  build BPF program
//!  spawn launch thread ───────────▶ prctl(NO_NEW_PRIVS)    (this thread only)
//!                                   seccomp(SET_MODE_FILTER, NEW_LISTENER)
//!                                     → listener fd, in sctrace's own fd table
//!                                   Command::spawn ─── fork ─▶ (inherits the filter and
//!                                                              no_new_privs)
//!                                                              setpgid(0, 0), tcsetpgrp
//!                                                              exec PROGRAM
//!  join ◀──── (pid, listener) ───── exits
//! ```
//!
//! `no_new_privs` and seccomp filters belong to a thread and are inherited by what it
//! starts, so installing the filter on a short-lived thread of sctrace's puts the app under
//! it while sctrace's other threads stay free — and the listener is created in sctrace's own
//! fd table. No fd has to cross between processes (`pidfd_getfd`, which container seccomp
//! profiles refuse, or SCM_RIGHTS, which the filter itself would trap), and there is no
//! handshake that could wait forever. Nothing the launch thread does after installing the
//! filter (fork, pipe, read, exit) is a call the filter traps.

pub mod bpf;

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::process::{Child, Command};
use std::thread;

use thiserror::Error;

use crate::errno::Errno;
use crate::sys::child::own_process_group;
use crate::sys::notify::{install_filter_on_this_thread, InstallStep, Installed, NotifyFd};
use crate::sys::pidfd;

/// The started app: its main process and the supervisor's end of the filter.
#[derive(Debug)]
pub struct Launched {
    /// The main process's pid.
    pub pid: i32,
    /// A pidfd on the main process.
    pub pidfd: OwnedFd,
    /// The seccomp listener.
    pub notify: NotifyFd,
    /// Whether the kernel took `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` (5.19).
    pub wait_killable: bool,
}

/// Why the app could not be started.
#[derive(Debug, Error)]
pub enum LaunchError {
    /// The program does not exist (or isn't on PATH).
    #[error("{program}: command not found")]
    NotFound {
        /// The program as given.
        program: String,
    },
    /// The program exists but can't be executed.
    #[error("{program}: cannot execute: {}", describe_exec_error(.source))]
    NotExecutable {
        /// The program as given.
        program: String,
        /// The exec error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused `no_new_privs`.
    #[error("cannot set no_new_privs for the program (prctl: {0}); sctrace needs it to install a seccomp filter without root")]
    NoNewPrivs(Errno),
    /// The kernel refused the seccomp filter.
    #[error("{}", seccomp_refusal(.0))]
    Seccomp(Errno),
    /// A pidfd on the started program could not be opened.
    #[error("cannot open a pidfd on the program (pidfd_open: {source}); sctrace needs Linux 5.3 or later")]
    Pidfd {
        /// The pidfd_open error.
        #[source]
        source: io::Error,
    },
    /// Spawning failed for another reason.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program as given.
        program: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The launch thread could not run.
    #[error("cannot start {program}: the launch thread failed")]
    Thread {
        /// The program as given.
        program: String,
    },
}

impl LaunchError {
    /// The exit status a shell would use for this failure: 127 not found, 126 not
    /// executable, 125 for sctrace's own failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::NotFound { .. } => 127,
            LaunchError::NotExecutable { .. } => 126,
            _ => 125,
        }
    }
}

fn describe_exec_error(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => "permission denied",
        Some(libc::ENOEXEC) => "not an executable format this system can run",
        Some(libc::EISDIR) => "is a directory",
        Some(libc::ETXTBSY) => "the file is open for writing",
        _ => "exec failed",
    }
}

fn seccomp_refusal(errno: &Errno) -> String {
    match errno.0 {
        libc::EINVAL | libc::ENOSYS => format!(
            "this kernel does not support seccomp user notification (seccomp: {errno}); sctrace needs Linux 5.6 or later built with CONFIG_SECCOMP_FILTER"
        ),
        libc::EPERM | libc::EACCES => format!(
            "seccomp is forbidden here (seccomp: {errno}), e.g. by a container's seccomp profile; sctrace needs permission to install a seccomp filter with a user-notification listener"
        ),
        libc::EBUSY => format!(
            "the program already runs under a seccomp notification listener (seccomp: {errno}); sctrace cannot be nested inside another supervisor that uses one"
        ),
        _ => format!("cannot install the seccomp filter (seccomp: {errno})"),
    }
}

/// Starts `program` with `args` under `filter`, inheriting stdio, environment and
/// working directory, in a process group of its own that takes over the terminal's
/// foreground when `terminal` (sctrace's controlling terminal, sctrace in its foreground)
/// is given.
pub fn launch(
    program: &OsStr,
    args: &[OsString],
    filter: Vec<libc::sock_filter>,
    terminal: Option<RawFd>,
    configure: impl FnOnce(&mut Command),
) -> Result<Launched, LaunchError> {
    let shown = program.to_string_lossy().into_owned();
    let mut cmd = Command::new(program);
    cmd.args(args);
    configure(&mut cmd);
    own_process_group(&mut cmd, terminal);

    let started = thread::Builder::new()
        .name("sctrace-launch".into())
        .spawn(move || -> Result<(Child, Installed), LaunchError> {
            let installed = install_filter_on_this_thread(&filter, killable_wait()).map_err(
                |(step, errno)| match step {
                    InstallStep::NoNewPrivs => LaunchError::NoNewPrivs(Errno(errno)),
                    InstallStep::Seccomp => LaunchError::Seccomp(Errno(errno)),
                },
            )?;
            let child = cmd
                .spawn()
                .map_err(|err| exec_error(program_name(&cmd), err))?;
            Ok((child, installed))
        })
        .map_err(|source| LaunchError::Spawn {
            program: shown.clone(),
            source,
        })?
        .join()
        .map_err(|_| LaunchError::Thread {
            program: shown.clone(),
        })?;
    let (child, installed) = started?;
    let pid = child.id() as i32;
    // The child is reaped by the lifecycle's waitpid loop, not through `Child`.
    drop(child);
    let pidfd = pidfd::open_process(pid).map_err(|source| LaunchError::Pidfd { source })?;
    Ok(Launched {
        pid,
        pidfd,
        notify: NotifyFd::new(installed.listener),
        wait_killable: installed.wait_killable,
    })
}

/// Whether to ask for `WAIT_KILLABLE_RECV` (5.19+). The environment variable
/// `SCTRACE_TEST_NO_KILLABLE_WAIT` (any value) leaves it out, so that the tests exercise
/// what older kernels do: a signal interrupts a call sctrace is still answering.
fn killable_wait() -> bool {
    std::env::var_os("SCTRACE_TEST_NO_KILLABLE_WAIT").is_none()
}

fn program_name(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

/// Maps an exec failure to what a shell would say and return.
fn exec_error(program: String, err: io::Error) -> LaunchError {
    match err.raw_os_error() {
        Some(libc::ENOENT) => LaunchError::NotFound { program },
        Some(libc::EACCES | libc::ENOEXEC | libc::EISDIR | libc::EPERM | libc::ETXTBSY) => {
            LaunchError::NotExecutable {
                program,
                source: err,
            }
        }
        _ => LaunchError::Spawn {
            program,
            source: err,
        },
    }
}
