//! A program on a real pseudo-terminal, driven like a user at a keyboard: `script` gives it
//! the terminal, the test types into it (Ctrl-C is `\x03`, Ctrl-Z `\x1a`) and reads what
//! the terminal shows, waiting for a line before typing the next key. Every wait is bounded.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::process::Output;

/// A running command on a pseudo-terminal.
pub struct PtySession {
    child: Child,
    stdin: ChildStdin,
    chunks: mpsc::Receiver<Vec<u8>>,
    seen: String,
    shell: String,
}

impl PtySession {
    /// Starts `shell_command` (run by `sh -c` inside `script`) on a new pseudo-terminal, in
    /// a process group of its own (so the test can clean it up), with `TERM=dumb`.
    ///
    /// # Panics
    /// If `script` can't be started.
    pub fn start(shell_command: &str) -> PtySession {
        let mut cmd = Command::new("script");
        cmd.args(["-qfec", shell_command, "/dev/null"])
            .env("TERM", "dumb")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start script for {shell_command:?}: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let (tx, chunks) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        PtySession {
            child,
            stdin,
            chunks,
            seen: String::new(),
            shell: shell_command.to_string(),
        }
    }

    /// Types `keys` on the terminal.
    ///
    /// # Panics
    /// If the terminal is gone.
    pub fn type_keys(&mut self, keys: &[u8]) {
        self.stdin
            .write_all(keys)
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("cannot type on the terminal of {:?}: {e}", self.shell));
    }

    /// Waits until the terminal has shown `text` (anywhere in its output so far).
    ///
    /// # Panics
    /// After `timeout`, showing what the terminal showed.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.seen.contains(text) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => panic!(
                    "the terminal of {:?} did not show {text:?} within {timeout:?}; it showed:\n{}",
                    self.shell, self.seen
                ),
            }
        }
    }

    /// What the terminal has shown so far.
    pub fn shown(&self) -> &str {
        &self.seen
    }

    /// Waits for the command to end and returns its status and everything it showed.
    ///
    /// # Panics
    /// After `timeout` (the session's process group is killed first).
    pub fn finish(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let status = loop {
            while let Ok(chunk) = self.chunks.try_recv() {
                self.seen.push_str(&String::from_utf8_lossy(&chunk));
            }
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    // SAFETY: kill with the process group this session started.
                    unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
                    let _ = self.child.wait();
                    panic!(
                        "{:?} did not end within {timeout:?}; the terminal showed:\n{}",
                        self.shell, self.seen
                    );
                }
            }
        };
        // The reader ends once the terminal closes.
        while let Ok(chunk) = self.chunks.recv_timeout(Duration::from_millis(200)) {
            self.seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        Output {
            status,
            stdout: std::mem::take(&mut self.seen),
            stderr: String::new(),
        }
    }
}

impl Drop for PtySession {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill with the process group this session started.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}
