//! The app's lifetime as sctrace manages it: forwarding signals to it, reaping it and its
//! orphaned descendants, and cleaning up after the main program exits.
//!
//! The app stays in sctrace's process group, so the terminal's job control works as if it
//! ran directly: Ctrl-C, Ctrl-\ and Ctrl-Z reach it from the terminal driver. Signals the
//! kernel sent that way are therefore not forwarded again; signals sent to sctrace by
//! another process (`kill`, a service manager, a CI runner) are forwarded to the main program.
//!
//! When the main program exits, descendants it left behind get SIGTERM, then SIGKILL after
//! [`GRACE`], and sctrace exits with the main program's status (128+N if killed by signal N).

use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::thread;
use std::time::{Duration, Instant};

use signal_hook::consts::signal::{
    SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH,
};
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::SignalsInfo;
use signal_hook::low_level::siginfo::{Cause, Origin};

use crate::procfs;
use crate::sys::pidfd;
use crate::sys::process::{self, Exit};

/// How long leftover descendants get between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(2);
/// After SIGKILL, how long sctrace waits for them to disappear before giving up on them.
const KILL_WAIT: Duration = Duration::from_secs(3);
/// How often the clean-up looks again.
const POLL: Duration = Duration::from_millis(20);

/// Signals forwarded to the main program.
pub const FORWARDED: &[i32] = &[SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH];

/// The signal handlers sctrace keeps while the app runs. Installed before the app starts, so
/// no SIGCHLD or forwarded signal is missed.
pub struct Signals(SignalsInfo<WithOrigin>);

impl Signals {
    /// Installs the handlers.
    pub fn install() -> io::Result<Self> {
        let mut set = FORWARDED.to_vec();
        set.push(SIGCHLD);
        SignalsInfo::<WithOrigin>::new(set).map(Signals)
    }
}

/// Whether a signal should be passed on to the app.
fn should_forward(origin: &Origin) -> bool {
    if !FORWARDED.contains(&origin.signal) {
        return false;
    }
    // The terminal driver signals the whole foreground process group, app included.
    !matches!(origin.cause, Cause::Kernel)
}

/// Waits for the main program to exit, forwarding signals meanwhile, then cleans up its
/// leftover descendants (except the pids in `keep`, e.g. sctrace's own agent, and their own
/// descendants) and returns how the main program ended.
pub fn supervise(
    mut signals: Signals,
    main_pid: i32,
    main_pidfd: &OwnedFd,
    keep: &HashSet<i32>,
) -> Exit {
    let exit = 'wait: loop {
        for origin in signals.0.wait() {
            if origin.signal == SIGCHLD {
                continue;
            }
            if should_forward(&origin) {
                if let Err(err) = pidfd::send_signal(main_pidfd, origin.signal) {
                    tracing::debug!(
                        "cannot forward signal {} to the program: {err}",
                        origin.signal
                    );
                }
            }
        }
        // Reap after every wake-up: SIGCHLDs coalesce, so look for all exited children.
        if let Some(exit) = reap_until(main_pid) {
            break 'wait exit;
        }
    };
    clean_up(main_pid, keep);
    exit
}

/// Reaps every exited child; returns the main program's exit if it was among them.
fn reap_until(main_pid: i32) -> Option<Exit> {
    let mut main_exit = None;
    loop {
        match process::reap_any() {
            Ok(Some((pid, exit))) => {
                if pid == main_pid {
                    main_exit = Some(exit);
                }
            }
            Ok(None) => return main_exit,
            Err(err) => {
                tracing::error!("waitpid failed: {err}");
                return main_exit;
            }
        }
    }
}

/// Terminates what the main program left behind: SIGTERM, then SIGKILL after [`GRACE`].
fn clean_up(main_pid: i32, keep: &HashSet<i32>) {
    let me = process::getpid();
    let started = Instant::now();
    let mut termed = HashSet::new();
    let mut killed = false;
    loop {
        reap_until(main_pid);
        // sctrace's own processes (its agent) stay, and so do theirs: a local agent's
        // helper that holds the target's redirect rules must outlive the session's end.
        let left = procfs::descendants(me, keep);
        if left.is_empty() {
            return;
        }
        let elapsed = started.elapsed();
        if elapsed >= GRACE + KILL_WAIT {
            tracing::warn!(
                "{} leftover process(es) did not exit after SIGKILL: {left:?}",
                left.len()
            );
            return;
        }
        if elapsed >= GRACE && !killed {
            tracing::info!("sending SIGKILL to {} leftover process(es)", left.len());
            for &pid in &left {
                let _ = process::kill(pid, libc::SIGKILL);
            }
            killed = true;
        }
        // Processes that appear later (forked while terminating) get their SIGTERM too.
        for &pid in &left {
            if termed.insert(pid) && !killed {
                tracing::debug!("sending SIGTERM to leftover process {pid}");
                let _ = process::kill(pid, libc::SIGTERM);
            }
        }
        thread::sleep(POLL);
    }
}

/// The exit status a shell would report for `exit`.
pub fn shell_status(exit: Exit) -> i32 {
    match exit {
        Exit::Code(code) => code,
        Exit::Signal(sig) => 128 + sig,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_status_like_a_shell() {
        assert_eq!(shell_status(Exit::Code(0)), 0);
        assert_eq!(shell_status(Exit::Code(3)), 3);
        assert_eq!(shell_status(Exit::Signal(libc::SIGKILL)), 137);
        assert_eq!(shell_status(Exit::Signal(libc::SIGTERM)), 143);
    }
}
