//! Starting the app under the seccomp filter and taking the filter's listener.
//!
//! ```text
//!  parent                                   child (after fork, before exec)
//!  build BPF program
//!  spawn handoff thread ─┐                  prctl(NO_NEW_PRIVS)
//!  Command::spawn ───────┼── fork ────────▶ seccomp(SET_MODE_FILTER, NEW_LISTENER)
//!                        │◀── status pipe ─ (pid, listener fd)  or (failed step, errno)
//!   pidfd_open(pid)      │
//!   pidfd_getfd(listener)│
//!                        └── ack pipe ───▶  read go-ahead, exec PROGRAM
//!  spawn returns (exec succeeded or its errno)
//! ```

pub mod bpf;

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;
use std::thread;

use thiserror::Error;

use crate::errno::Errno;
use crate::sys::child::{install_filter_before_exec, ChildReport, ACK_GO};
use crate::sys::notify::{InstallStep, NotifyFd};
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
    /// Taking the filter's listener from the child failed.
    #[error("cannot take the seccomp listener from the child (pidfd_getfd: {source}); sctrace needs Linux 5.6 or later and permission to access its own children")]
    TakeListener {
        /// The pidfd error.
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
    /// The child/parent handshake broke.
    #[error("cannot start {program}: the child did not report its seccomp listener ({reason})")]
    Handoff {
        /// The program as given.
        program: String,
        /// What went wrong.
        reason: String,
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

/// What the handoff thread learned.
enum Handoff {
    Listener(i32, OwnedFd, OwnedFd),
    Refused(InstallStep, i32),
    Broken(String),
    TakeFailed(io::Error),
}

/// Starts `program` with `args` under `filter`, inheriting stdio, environment and the
/// process group (so the terminal's job control and signals reach it as usual).
pub fn launch(
    program: &OsStr,
    args: &[OsString],
    filter: Vec<libc::sock_filter>,
    configure: impl FnOnce(&mut Command),
) -> Result<Launched, LaunchError> {
    let shown = program.to_string_lossy().into_owned();
    let spawn_err = |source| LaunchError::Spawn {
        program: shown.clone(),
        source,
    };
    let (mut status_rx, status_tx) = io::pipe().map_err(spawn_err)?;
    let (ack_rx, mut ack_tx) = io::pipe().map_err(spawn_err)?;

    let mut cmd = Command::new(program);
    cmd.args(args);
    configure(&mut cmd);
    install_filter_before_exec(&mut cmd, filter, status_tx.as_fd(), ack_rx.as_fd());

    let handoff = thread::Builder::new()
        .name("sctrace-handoff".into())
        .spawn(move || -> Handoff {
            let mut buf = [0u8; ChildReport::SIZE];
            if let Err(err) = status_rx.read_exact(&mut buf) {
                return Handoff::Broken(format!("status pipe: {err}"));
            }
            match ChildReport::decode(&buf) {
                Some(ChildReport::Listening { pid, listener }) => {
                    let taken = pidfd::open_process(pid).and_then(|p| {
                        let fd = pidfd::get_fd(&p, listener)?;
                        Ok((p, fd))
                    });
                    match taken {
                        Ok((p, fd)) => match ack_tx.write_all(&[ACK_GO]) {
                            Ok(()) => Handoff::Listener(pid, p, fd),
                            Err(err) => Handoff::Broken(format!("ack pipe: {err}")),
                        },
                        // Dropping ack_tx without the go-ahead makes the child give up.
                        Err(err) => Handoff::TakeFailed(err),
                    }
                }
                Some(ChildReport::Failed { step, errno }) => Handoff::Refused(step, errno),
                None => Handoff::Broken("garbled status report".into()),
            }
        })
        .map_err(spawn_err)?;

    let spawned = cmd.spawn();
    // Close the parent's copies of the child's ends so the handoff thread sees EOF if the
    // child never reported (it died before installing the filter).
    drop(cmd);
    drop(status_tx);
    drop(ack_rx);
    let handoff = handoff
        .join()
        .unwrap_or_else(|_| Handoff::Broken("handoff thread panicked".into()));

    match (spawned, handoff) {
        (_, Handoff::Refused(InstallStep::NoNewPrivs, errno)) => {
            Err(LaunchError::NoNewPrivs(Errno(errno)))
        }
        (_, Handoff::Refused(InstallStep::Seccomp, errno)) => {
            Err(LaunchError::Seccomp(Errno(errno)))
        }
        (_, Handoff::TakeFailed(source)) => Err(LaunchError::TakeListener { source }),
        (Ok(child), Handoff::Listener(pid, pidfd, listener)) if child.id() as i32 == pid => {
            Ok(Launched {
                pid,
                pidfd,
                notify: NotifyFd::new(listener),
            })
        }
        (Ok(_), Handoff::Listener(..)) => Err(LaunchError::Handoff {
            program: shown,
            reason: "the reporting process is not the spawned child".into(),
        }),
        (Ok(_), Handoff::Broken(reason)) => Err(LaunchError::Handoff {
            program: shown,
            reason,
        }),
        (Err(err), _) => Err(exec_error(shown, err)),
    }
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
