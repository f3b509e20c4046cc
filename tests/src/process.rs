//! Running a command to completion with a deadline, capturing its output.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What a finished command did.
#[derive(Debug)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// Everything it wrote to stdout (lossy UTF-8).
    pub stdout: String,
    /// Everything it wrote to stderr (lossy UTF-8).
    pub stderr: String,
}

impl Output {
    /// Panics, showing the status and both outputs, unless the command exited with 0.
    pub fn assert_success(&self) -> &Self {
        assert!(self.status.success(), "command failed:\n{self}");
        self
    }

    /// The exit code, or `None` if a signal ended it.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` with stdin from /dev/null, capturing stdout and stderr, in a new process
/// group. On timeout it kills the whole group with SIGKILL and panics with the command and
/// whatever it had written. Also panics if the command cannot be started.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    run(cmd, None, timeout)
}

/// Like [`run_with_timeout`], with `input` written to the command's stdin (then closed).
pub fn run_with_input(cmd: &mut Command, input: &[u8], timeout: Duration) -> Output {
    run(cmd, Some(input.to_vec()), timeout)
}

fn run(cmd: &mut Command, input: Option<Vec<u8>>, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pgid = child.id();

    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A command that never reads its stdin must not wedge the test: write on a thread.
        thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }

    let (done_tx, done_rx) = mpsc::channel();
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    if let Some(pipe) = child.stdout.take() {
        collect(pipe, Arc::clone(&stdout), done_tx.clone());
    }
    if let Some(pipe) = child.stderr.take() {
        collect(pipe, Arc::clone(&stderr), done_tx);
    }

    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
    };
    // Both pipes reach EOF once every process holding them has exited; a descendant that
    // keeps them open past the deadline counts as a timeout too.
    let mut open_pipes = 2;
    while open_pipes > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
        open_pipes -= 1;
    }
    let snapshot = |buf: &Arc<Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    };
    match status {
        Some(status) if open_pipes == 0 => Output {
            status,
            stdout: snapshot(&stdout),
            stderr: snapshot(&stderr),
        },
        _ => {
            kill_group(pgid);
            let _ = child.wait();
            // Give the readers a moment to drain what the killed processes left in the pipes.
            let grace = Instant::now() + Duration::from_secs(1);
            let mut left = open_pipes;
            while left > 0
                && done_rx
                    .recv_timeout(grace.saturating_duration_since(Instant::now()))
                    .is_ok()
            {
                left -= 1;
            }
            let what = match status {
                Some(s) => format!("exited with {s}, but descendants kept its output open"),
                None => "killed its process group".to_string(),
            };
            panic!(
                "timed out after {timeout:?} ({what}): {cmd:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                snapshot(&stdout),
                snapshot(&stderr)
            );
        }
    }
}

/// Appends everything read from `pipe` to `buf`, chunk by chunk (so a timeout can still show
/// what was written), and signals `done` at EOF.
fn collect(mut pipe: impl Read + Send + 'static, buf: Arc<Mutex<Vec<u8>>>, done: mpsc::Sender<()>) {
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&chunk[..n]),
            }
        }
        let _ = done.send(());
    });
}

/// SIGKILL to a process group; it may already be gone.
pub(crate) fn kill_group(pgid: u32) {
    if let Ok(pgid) = i32::try_from(pgid) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_status_and_both_outputs() {
        let out = run_with_timeout(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        );
        assert_eq!(out.code(), Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
    }

    #[test]
    fn feeds_stdin() {
        let out = run_with_input(&mut Command::new("cat"), b"hello", Duration::from_secs(10));
        out.assert_success();
        assert_eq!(out.stdout, "hello");
    }

    #[test]
    fn a_timeout_kills_the_group_and_shows_partial_output() {
        let started = Instant::now();
        let result = std::panic::catch_unwind(|| {
            run_with_timeout(
                // The background sleep holds stdout open: the group kill must end it too.
                Command::new("sh").args(["-c", "echo partial; sleep 30 & sleep 30"]),
                Duration::from_millis(300),
            )
        });
        let message = *result.unwrap_err().downcast::<String>().unwrap();
        assert!(message.contains("timed out"), "{message}");
        assert!(message.contains("partial"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_descendant_holding_the_output_open_is_a_timeout() {
        let result = std::panic::catch_unwind(|| {
            run_with_timeout(
                Command::new("sh").args(["-c", "sleep 30 & echo started"]),
                Duration::from_millis(300),
            )
        });
        let message = *result.unwrap_err().downcast::<String>().unwrap();
        assert!(
            message.contains("descendants kept its output open"),
            "{message}"
        );
    }

    #[test]
    #[should_panic(expected = "cannot start")]
    fn a_missing_program_panics_with_its_name() {
        run_with_timeout(
            &mut Command::new("/no/such/program"),
            Duration::from_secs(1),
        );
    }
}
