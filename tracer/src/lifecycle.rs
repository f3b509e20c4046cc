//! The app's lifetime as sctrace manages it: forwarding signals to it, following its job
//! control, reaping it and its orphaned descendants, and cleaning up after the main program
//! exits.
//!
//! The app leads a process group of its own (see `sys::child`), which sctrace makes the
//! terminal's foreground group when sctrace itself is in the foreground: the terminal's
//! Ctrl-C, Ctrl-\ and Ctrl-Z reach the app's group directly, as they would without sctrace,
//! and never sctrace or its agent, which must keep working while the app handles them.
//! Every signal sctrace itself receives — from `kill`, from a CI runner or `timeout`
//! signalling sctrace's group, from a service manager — is forwarded to the main program,
//! so the program gets it exactly once. When the program stops (Ctrl-Z, reading the
//! terminal in the background), sctrace takes the terminal back and stops the same way, so
//! the shell sees its job stop; when the shell continues sctrace, sctrace gives the
//! terminal back (if it is in the foreground again) and continues the program's group.
//!
//! When the main program exits, descendants it left behind get SIGTERM, then SIGKILL after
//! [`GRACE`], and sctrace exits with the main program's status (128+N if killed by signal N).

use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::thread;
use std::time::{Duration, Instant};

use signal_hook::consts::signal::{
    SIGCHLD, SIGCONT, SIGHUP, SIGINT, SIGQUIT, SIGSTOP, SIGTERM, SIGTSTP, SIGTTIN, SIGTTOU,
    SIGUSR1, SIGUSR2, SIGWINCH,
};
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::SignalsInfo;

use crate::procfs;
use crate::sys::pidfd;
use crate::sys::process::{self, Exit, MainState};
use crate::sys::terminal::Terminal;

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
        set.extend([SIGCHLD, SIGCONT]);
        SignalsInfo::<WithOrigin>::new(set).map(Signals)
    }
}

/// The app as the lifecycle follows it.
pub struct App<'a> {
    /// The main program's pid (also its process group id).
    pub pid: i32,
    /// A pidfd on it, for signals that can't reach a recycled pid.
    pub pidfd: &'a OwnedFd,
    /// The terminal the app's group was given, when sctrace had one in the foreground.
    pub terminal: Option<&'a Terminal>,
}

impl App<'_> {
    /// The program stopped: take the terminal back and stop sctrace the same way.
    fn stopped(&self, signal: i32) {
        if let Some(terminal) = self.terminal {
            if let Err(err) = terminal.take_back() {
                tracing::debug!("cannot take the terminal back: {err}");
            }
        }
        let stop = match signal {
            SIGTSTP | SIGTTIN | SIGTTOU => signal,
            _ => SIGSTOP,
        };
        if let Err(err) = process::stop_self(stop) {
            tracing::debug!("cannot stop with the program: {err}");
        }
    }

    /// sctrace was continued: give the terminal back when in the foreground again, and
    /// continue the program's group.
    fn continued(&self) {
        if let Some(terminal) = self.terminal.filter(|t| t.is_ours()) {
            if let Err(err) = terminal.give_to(self.pid) {
                tracing::debug!("cannot give the terminal to the program: {err}");
            }
        }
        let _ = process::kill(-self.pid, SIGCONT);
    }
}

/// Waits for the main program to exit, forwarding signals and following its job control
/// meanwhile, then cleans up its leftover descendants (except the pids in `keep`, e.g.
/// sctrace's own agent, and their own descendants) and returns how the main program ended.
pub fn supervise(mut signals: Signals, app: &App<'_>, keep: &HashSet<i32>) -> Exit {
    let mut last_forwarded: Option<Forwarded> = None;
    let exit = 'wait: loop {
        for origin in signals.0.wait() {
            match origin.signal {
                SIGCHLD => {}
                SIGCONT => app.continued(),
                signal if FORWARDED.contains(&signal) => {
                    let this = Forwarded {
                        signal,
                        sender: origin.process.map(|p| p.pid),
                        at: Instant::now(),
                    };
                    if last_forwarded.is_some_and(|last| last.merges(&this)) {
                        continue;
                    }
                    last_forwarded = Some(this);
                    if let Err(err) = pidfd::send_signal(app.pidfd, signal) {
                        tracing::debug!("cannot forward signal {signal} to the program: {err}");
                    }
                }
                _ => {}
            }
        }
        // SIGCHLDs coalesce: after every wake-up, look at the main program, then reap every
        // other exited child.
        match process::poll_main(app.pid) {
            Ok(MainState::Ended(exit)) => break 'wait exit,
            Ok(MainState::Stopped(signal)) => app.stopped(signal),
            Ok(MainState::Continued | MainState::Running) => {}
            Err(err) => tracing::debug!("waitpid on the program failed: {err}"),
        }
        if let Some(exit) = reap_until(app.pid) {
            break 'wait exit;
        }
    };
    if let Some(terminal) = app.terminal {
        let _ = terminal.take_back();
    }
    clean_up(app.pid, keep);
    exit
}

/// A signal sctrace passed on to the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Forwarded {
    signal: i32,
    sender: Option<i32>,
    at: Instant,
}

/// Within this time, the same signal from the same sender is passed on once.
const MERGE_WITHIN: Duration = Duration::from_millis(50);

impl Forwarded {
    /// Whether `next` is the same signal sent again at once by the same process — as
    /// `timeout` does, to sctrace and then to its process group. Sent to the program
    /// directly, the two would arrive while the first is pending and the kernel would merge
    /// them into one (a standard signal is pending at most once); forwarded one after the
    /// other, the program could take both. So it is passed on once.
    fn merges(&self, next: &Forwarded) -> bool {
        self.signal == next.signal
            && self.sender.is_some()
            && self.sender == next.sender
            && next.at.duration_since(self.at) < MERGE_WITHIN
    }
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
    fn a_signal_sent_again_at_once_by_the_same_process_is_passed_on_once() {
        let at = Instant::now();
        let first = Forwarded {
            signal: SIGINT,
            sender: Some(42),
            at,
        };
        let again = Forwarded {
            at: at + Duration::from_millis(1),
            ..first
        };
        assert!(first.merges(&again));
        assert!(!first.merges(&Forwarded {
            sender: Some(43),
            ..again
        }));
        assert!(!first.merges(&Forwarded {
            signal: SIGTERM,
            ..again
        }));
        assert!(!first.merges(&Forwarded {
            at: at + Duration::from_millis(200),
            ..again
        }));
        assert!(!first.merges(&Forwarded {
            sender: None,
            ..first
        }));
    }

    #[test]
    fn shell_status_like_a_shell() {
        assert_eq!(shell_status(Exit::Code(0)), 0);
        assert_eq!(shell_status(Exit::Code(3)), 3);
        assert_eq!(shell_status(Exit::Signal(libc::SIGKILL)), 137);
        assert_eq!(shell_status(Exit::Signal(libc::SIGTERM)), 143);
    }
}
