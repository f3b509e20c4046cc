//! The differential conformance harness: runs a program as a user would, captures what a
//! user sees (stdout, stderr, exit status), normalises only what legitimately differs
//! between two runs of the same program, and compares two runs line by line.
//!
//! Unlike [`crate::run_with_timeout`], nothing here panics when a program hangs or
//! misbehaves: a timeout is an outcome ([`Status::TimedOut`]) to compare and report, since
//! a program that hangs under sctrace and not without it is exactly what the conformance
//! suite looks for.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use regex::{Captures, Regex};

use crate::process::kill_group;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// It exited with this code.
    Exit(i32),
    /// A signal killed it (`core` if it dumped core).
    Signal(i32, bool),
    /// It was still running at the deadline (its process group was then killed).
    TimedOut(Duration),
    /// It could not be started.
    NotStarted(String),
}

impl Status {
    fn from_exit(status: ExitStatus) -> Status {
        match (status.code(), status.signal()) {
            (Some(code), _) => Status::Exit(code),
            (None, Some(sig)) => Status::Signal(sig, status.core_dumped()),
            (None, None) => Status::NotStarted(format!("{status:?}")),
        }
    }

    /// What a shell's `$?` would say: the exit code, or 128+N for signal N.
    ///
    /// Normalisation: a program that ran directly and was killed by signal N is seen by
    /// `waitpid` as "killed by N"; under sctrace the same program makes sctrace exit with
    /// 128+N (README, "Exit status": like a shell, since sctrace cannot die of the
    /// program's signal). A user's shell, CI runner or script sees `$?` = 128+N either way,
    /// so that is what is compared; the report still shows both forms.
    pub fn shell_code(&self) -> String {
        match self {
            Status::Exit(code) => code.to_string(),
            Status::Signal(sig, _) => (128 + sig).to_string(),
            Status::TimedOut(_) => "timed out".to_string(),
            Status::NotStarted(why) => format!("not started: {why}"),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Exit(code) => write!(f, "exit {code}"),
            Status::Signal(sig, core) => {
                let name = Signal::try_from(*sig).map_or("?", Signal::as_str);
                let core = if *core { ", core dumped" } else { "" };
                write!(f, "killed by {name}{core} ($? = {})", 128 + sig)
            }
            Status::TimedOut(after) => write!(f, "still running after {after:?}: killed"),
            Status::NotStarted(why) => write!(f, "not started: {why}"),
        }
    }
}

/// What one program run showed.
#[derive(Debug, Clone)]
pub struct Run {
    /// How it ended.
    pub status: Status,
    /// Its stdout (for a run on a terminal: everything the terminal showed).
    pub stdout: String,
    /// Its stderr (empty for a run on a terminal).
    pub stderr: String,
    /// How long it took.
    pub elapsed: Duration,
}

impl Run {
    /// A run that never happened, with the reason as its status.
    pub fn not_started(why: impl Into<String>) -> Run {
        Run {
            status: Status::NotStarted(why.into()),
            stdout: String::new(),
            stderr: String::new(),
            elapsed: Duration::ZERO,
        }
    }
}

/// Bytes a program has written to one stream so far, and whether the stream has ended.
#[derive(Default)]
struct Stream {
    state: Mutex<(Vec<u8>, bool)>,
    grew: Condvar,
}

impl Stream {
    fn collect(self: &Arc<Stream>, mut source: impl Read + Send + 'static) {
        let stream = Arc::clone(self);
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match source.read(&mut chunk) {
                    // A pty's master reads EIO once every slave descriptor is closed.
                    Ok(0) | Err(_) => break,
                    Ok(n) => stream.lock().0.extend_from_slice(&chunk[..n]),
                }
                stream.grew.notify_all();
            }
            stream.lock().1 = true;
            stream.grew.notify_all();
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<u8>, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().0).into_owned()
    }

    /// Waits until `pred` holds for the text so far, the stream ends or `deadline`.
    fn wait(&self, pred: &dyn Fn(&str) -> bool, deadline: Instant) -> bool {
        let mut state = self.lock();
        loop {
            if pred(&String::from_utf8_lossy(&state.0)) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if state.1 || left.is_zero() {
                return false;
            }
            state = self
                .grew
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn wait_closed(&self, deadline: Instant) -> bool {
        self.wait(&|_| false, deadline);
        self.lock().1
    }
}

/// A program started in its own process group (or session, on a pty), its output being
/// collected. Dropping it kills the group.
pub struct Running {
    child: Option<Child>,
    pgid: u32,
    stdout: Arc<Stream>,
    stderr: Arc<Stream>,
    pty: Option<File>,
    started: Instant,
    finished: bool,
}

impl Running {
    /// Starts `cmd` with pipes for stdout and stderr, `stdin` written then closed (or
    /// /dev/null), in a new process group.
    pub fn spawn(mut cmd: Command, stdin: Option<Vec<u8>>) -> Result<Running, String> {
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A program that never reads its input must not block the harness.
            thread::spawn(move || {
                let _ = pipe.write_all(&input);
            });
        }
        let (stdout, stderr) = (Arc::new(Stream::default()), Arc::new(Stream::default()));
        if let Some(pipe) = child.stdout.take() {
            stdout.collect(pipe);
        }
        if let Some(pipe) = child.stderr.take() {
            stderr.collect(pipe);
        }
        Ok(Running {
            pgid: child.id(),
            child: Some(child),
            stdout,
            stderr,
            pty: None,
            started: Instant::now(),
            finished: false,
        })
    }

    /// Starts `cmd` on a new pseudo-terminal, as a terminal emulator would: a new session
    /// whose controlling terminal is the pty, stdin/stdout/stderr on it, the default line
    /// discipline (ISIG: Ctrl-C sends SIGINT to the foreground process group, which is the
    /// session leader's group).
    pub fn spawn_pty(mut cmd: Command) -> Result<Running, String> {
        let pty = nix::pty::openpty(None, None).map_err(|e| format!("openpty: {e}"))?;
        let slave: OwnedFd = pty.slave;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("dup pty: {e}"));
        cmd.stdin(Stdio::from(dup(&slave)?))
            .stdout(Stdio::from(dup(&slave)?))
            .stderr(Stdio::from(slave));
        // SAFETY: between fork and exec only async-signal-safe calls are made (setsid and
        // ioctl), on the child's own descriptors.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        // The Command holds the slave's descriptors until dropped: drop it now, so the
        // master reads EOF (EIO) once the program and its descendants have closed theirs.
        drop(cmd);
        let master = File::from(pty.master);
        let reader = master
            .try_clone()
            .map_err(|e| format!("dup pty master: {e}"))?;
        let (stdout, stderr) = (Arc::new(Stream::default()), Arc::new(Stream::default()));
        stdout.collect(reader);
        // A pty has one output stream: stderr stays empty and ended.
        stderr.lock().1 = true;
        Ok(Running {
            pgid: child.id(),
            child: Some(child),
            stdout,
            stderr,
            pty: Some(master),
            started: Instant::now(),
            finished: false,
        })
    }

    /// Waits until stdout contains a complete line (newline included: a program may write
    /// a line in two steps) equal to `line` (trailing `\r` ignored), at most `timeout`;
    /// false if it did not come (the program ended or was too slow).
    pub fn wait_line(&self, line: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.stdout.wait(
            &|text| {
                text.split_inclusive('\n')
                    .filter(|l| l.ends_with('\n'))
                    .any(|l| l.trim_end_matches(['\n', '\r']) == line)
            },
            deadline,
        )
    }

    /// Waits until stdout contains `text` anywhere, at most `timeout`.
    pub fn wait_output(&self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.stdout.wait(&|out| out.contains(text), deadline)
    }

    /// Types `bytes` on the terminal (only for [`Running::spawn_pty`]).
    pub fn type_on_terminal(&mut self, bytes: &[u8]) -> Result<(), String> {
        let pty = self.pty.as_mut().ok_or("not on a pty")?;
        pty.write_all(bytes)
            .map_err(|e| format!("write to pty: {e}"))
    }

    /// Sends `signal` to the whole process group, like `kill -SIG -PGID`.
    pub fn signal_group(&self, signal: Signal) {
        if let Ok(pgid) = i32::try_from(self.pgid) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal);
        }
    }

    /// The process group's id (the program's pid: it leads the group).
    pub fn pgid(&self) -> u32 {
        self.pgid
    }

    /// Waits for the program to exit and its output to end, at most `timeout` from now;
    /// past it, kills the group and reports [`Status::TimedOut`] with what it wrote.
    pub fn finish(mut self, timeout: Duration) -> Run {
        let deadline = Instant::now() + timeout;
        let mut status = None;
        if let Some(child) = self.child.as_mut() {
            loop {
                match child.try_wait() {
                    Ok(Some(s)) => {
                        status = Some(s);
                        break;
                    }
                    Ok(None) if Instant::now() >= deadline => break,
                    Ok(None) => thread::sleep(Duration::from_millis(5)),
                    Err(_) => break,
                }
            }
        }
        // Output ends when every process holding it has exited: a descendant keeping it
        // open past the deadline counts as still running.
        let closed = self.stdout.wait_closed(deadline) && self.stderr.wait_closed(deadline);
        let elapsed = self.started.elapsed();
        let status = match status {
            Some(s) if closed => Status::from_exit(s),
            _ => {
                kill_group(self.pgid);
                if let Some(child) = self.child.as_mut() {
                    let _ = child.wait();
                }
                let grace = Instant::now() + Duration::from_secs(1);
                self.stdout.wait_closed(grace);
                self.stderr.wait_closed(grace);
                Status::TimedOut(timeout)
            }
        };
        self.finished = true;
        Run {
            status,
            stdout: self.stdout.text(),
            stderr: self.stderr.text(),
            elapsed,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.finished {
            kill_group(self.pgid);
            if let Some(child) = self.child.as_mut() {
                let _ = child.wait();
            }
        }
    }
}

/// Runs `cmd` (stdin: `stdin` or /dev/null) to completion, at most `timeout`.
pub fn run_bounded(cmd: Command, stdin: Option<Vec<u8>>, timeout: Duration) -> Run {
    match Running::spawn(cmd, stdin) {
        Ok(running) => running.finish(timeout),
        Err(e) => Run::not_started(e),
    }
}

/// One rewrite applied to both runs' output before comparing, with the reason it is
/// legitimate (shown in the report).
pub struct Norm {
    /// Short name, shown in the report.
    pub name: &'static str,
    /// What it matches.
    pub pattern: &'static str,
    /// What replaces a match (`$name` refers to a named group), unless `keep_if` says the
    /// match is not one to normalise.
    pub replacement: &'static str,
    /// Only matches for which this returns false are replaced (e.g. a port number outside
    /// the ephemeral range is kept).
    pub keep_if: Option<fn(&Captures<'_>) -> bool>,
    /// Why two runs of the same program legitimately differ here.
    pub why: &'static str,
}

impl Norm {
    /// Applies the rewrite to `text`.
    pub fn apply(&self, text: &str) -> String {
        let re = Regex::new(self.pattern)
            .unwrap_or_else(|e| panic!("normalisation {}: bad pattern: {e}", self.name));
        re.replace_all(text, |caps: &Captures<'_>| {
            if self.keep_if.is_some_and(|keep| keep(caps)) {
                caps[0].to_string()
            } else {
                let mut out = String::new();
                caps.expand(self.replacement, &mut out);
                out
            }
        })
        .into_owned()
    }
}

/// True if the capture group `port` is NOT in Linux's default ephemeral port range
/// (`net.ipv4.ip_local_port_range` = 32768-60999, the same in every namespace of the
/// suite): such a port was chosen by a program, not by the kernel, and must be compared.
pub fn not_ephemeral(caps: &Captures<'_>) -> bool {
    caps.name("port")
        .and_then(|p| p.as_str().parse::<u32>().ok())
        .is_none_or(|p| !(32768..=60999).contains(&p))
}

/// Applies `norms` in order.
pub fn normalise(text: &str, norms: &[&Norm]) -> String {
    norms.iter().fold(text.to_string(), |t, n| n.apply(&t))
}

/// A line-by-line difference: lines only in `a` are `-`, only in `b` are `+`, common
/// lines ` ` (longest common subsequence; outputs here are short).
pub fn line_diff(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        }
    }
    out
}

/// Indents every line of `text` by `prefix`, marking an empty text.
pub fn indent(text: &str, prefix: &str) -> String {
    if text.is_empty() {
        return format!("{prefix}(empty)\n");
    }
    text.lines().map(|l| format!("{prefix}{l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORT: Norm = Norm {
        name: "port",
        pattern: r"(?P<pre>:)(?P<port>\d{4,5})\b",
        replacement: "${pre}<eph>",
        keep_if: Some(not_ephemeral),
        why: "test",
    };

    #[test]
    fn ephemeral_ports_are_replaced_and_others_kept() {
        assert_eq!(
            PORT.apply("198.18.0.10:80 198.18.0.10:45678 [::1]:8080 x:61000"),
            "198.18.0.10:80 198.18.0.10:<eph> [::1]:8080 x:61000"
        );
    }

    #[test]
    fn diff_marks_changed_lines() {
        assert_eq!(line_diff("a\nb\nc\n", "a\nx\nc\n"), "  a\n+ x\n- b\n  c\n");
        assert_eq!(line_diff("", "a\n"), "+ a\n");
    }

    #[test]
    fn a_hanging_program_times_out_with_its_output() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo partial; sleep 30"]);
        let run = run_bounded(cmd, None, Duration::from_millis(300));
        assert!(matches!(run.status, Status::TimedOut(_)), "{run:?}");
        assert_eq!(run.stdout, "partial\n");
    }

    #[test]
    fn ctrl_c_on_a_pty_interrupts_the_foreground_group() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "trap 'echo trapped; exit 7' INT; echo ready; sleep 10 & wait",
        ]);
        let mut running = Running::spawn_pty(cmd).unwrap();
        assert!(running.wait_line("ready", Duration::from_secs(5)));
        // As a person would, once the shell waits: a SIGINT that arrives while dash is still
        // starting `sleep` is only acted on when `wait` returns, after the ten seconds.
        std::thread::sleep(Duration::from_millis(200));
        running.type_on_terminal(b"\x03").unwrap();
        let run = running.finish(Duration::from_secs(5));
        assert_eq!(run.status, Status::Exit(7), "{run:?}");
        assert!(run.stdout.contains("trapped"), "{run:?}");
    }

    #[test]
    fn signal_statuses_compare_like_a_shell() {
        assert_eq!(Status::Signal(2, false).shell_code(), "130");
        assert_eq!(Status::Exit(130).shell_code(), "130");
    }
}
