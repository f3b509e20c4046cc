//! Servers running inside a namespace (`sctrace-testsrv`, dnsmasq): started, awaited until
//! ready, their output collected line by line, killed on drop.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::locate::bin;
use crate::netns::Netns;
use crate::process::kill_group;

/// How long a server may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// What `sctrace-testsrv` should serve. Every listener logs one line per connection or
/// datagram on stdout (see [`Server::log`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSpec {
    /// `tcp-echo`: echoes every byte back; when the client shuts its write side, finishes
    /// echoing, then shuts its own.
    TcpEcho(Vec<SocketAddr>),
    /// `udp-echo`: sends every datagram back to its sender, from the address it arrived on.
    UdpEcho(Vec<SocketAddr>),
    /// `tcp-sink`: reads until the client shuts its write side, then answers
    /// [`crate::payload::SinkReply`] (`"<sha256 hex> <bytes>\n"`) and closes.
    TcpSink(Vec<SocketAddr>),
    /// `tcp-source`: sends `bytes` bytes of payload [`crate::payload::SOURCE_SEED`], then
    /// closes.
    TcpSource {
        /// Where to listen.
        addr: SocketAddr,
        /// How many bytes each connection gets.
        bytes: u64,
    },
    /// `http-hello`: answers any HTTP/1 request with `200 OK` and the body
    /// `"hello from <local addr> to <peer addr>\n"`, then closes.
    HttpHello(Vec<SocketAddr>),
}

impl ServerSpec {
    /// The `sctrace-testsrv` command line for this spec.
    pub fn args(&self) -> Vec<String> {
        let with_addrs = |cmd: &str, addrs: &[SocketAddr]| {
            std::iter::once(cmd.to_string())
                .chain(addrs.iter().map(ToString::to_string))
                .collect()
        };
        match self {
            ServerSpec::TcpEcho(addrs) => with_addrs("tcp-echo", addrs),
            ServerSpec::UdpEcho(addrs) => with_addrs("udp-echo", addrs),
            ServerSpec::TcpSink(addrs) => with_addrs("tcp-sink", addrs),
            ServerSpec::HttpHello(addrs) => with_addrs("http-hello", addrs),
            ServerSpec::TcpSource { addr, bytes } => {
                vec![
                    "tcp-source".to_string(),
                    addr.to_string(),
                    bytes.to_string(),
                ]
            }
        }
    }
}

/// The lines one output stream of a server has written so far.
#[derive(Default)]
struct Lines {
    state: Mutex<LinesState>,
    grew: Condvar,
}

#[derive(Default)]
struct LinesState {
    lines: Vec<String>,
    closed: bool,
}

impl Lines {
    fn collect(self: &Arc<Lines>, stream: impl Read + Send + 'static) {
        let lines = Arc::clone(self);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                lines.lock().lines.push(line);
                lines.grew.notify_all();
            }
            lines.lock().closed = true;
            lines.grew.notify_all();
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinesState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the stream has ended, at most `timeout`.
    fn wait_closed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !state.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            state = self
                .grew
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn snapshot(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// The first line matching `pred`, waiting for it until `timeout` or the stream's end.
    fn wait(&self, pred: &dyn Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        self.wait_count(pred, 1, timeout)
            .ok()
            .and_then(|mut lines| lines.pop())
    }

    /// The first `count` lines matching `pred`, waiting for them until `timeout` or the
    /// stream's end; `Err` with how many there were. `pred` runs under the lock.
    fn wait_count(
        &self,
        pred: &dyn Fn(&str) -> bool,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<String>, usize> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            let found: Vec<&String> = state.lines.iter().filter(|l| pred(l)).take(count).collect();
            if found.len() >= count {
                return Ok(found.into_iter().cloned().collect());
            }
            let found = found.len();
            let left = deadline.saturating_duration_since(Instant::now());
            if state.closed || left.is_zero() {
                return Err(found);
            }
            state = self
                .grew
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Which output stream carries a server's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogStream {
    Stdout,
    Stderr,
}

/// A server process in a namespace. Dropping it kills it (its whole process group).
pub struct Server {
    label: String,
    child: Child,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
    log_stream: LogStream,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("label", &self.label)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl Server {
    /// Starts `cmd` in its own process group and waits (at most 10 s) for a log line
    /// matching `ready`; panics with its output if it exits or times out first.
    pub(crate) fn start(
        label: String,
        mut cmd: Command,
        log_stream: LogStream,
        ready: &dyn Fn(&str) -> bool,
    ) -> Server {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label} ({cmd:?}): {e}"));
        let (stdout, stderr) = (Arc::new(Lines::default()), Arc::new(Lines::default()));
        if let Some(pipe) = child.stdout.take() {
            stdout.collect(pipe);
        }
        if let Some(pipe) = child.stderr.take() {
            stderr.collect(pipe);
        }
        let server = Server {
            label,
            child,
            stdout,
            stderr,
            log_stream,
        };
        if server.log_lines().wait(ready, READY_TIMEOUT).is_none() {
            // If it exited, let the readers drain what it wrote before showing it.
            server.stdout.wait_closed(Duration::from_secs(1));
            server.stderr.wait_closed(Duration::from_secs(1));
            panic!(
                "{} did not get ready within {READY_TIMEOUT:?}\n{}",
                server.label,
                server.dump()
            );
        }
        server
    }

    /// Starts any server program that prints a line `ready` on stdout once it serves (the
    /// uwu demo's services do), logging its stdout. Dropping it kills it.
    pub fn spawn_command(cmd: &mut Command) -> Server {
        let label = format!("{:?}", cmd.get_program());
        let mut owned = Command::new(cmd.get_program());
        owned.args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(value) => owned.env(key, value),
                None => owned.env_remove(key),
            };
        }
        Server::start(label, owned, LogStream::Stdout, &|l| l == "ready")
    }

    /// Starts any long-running program as a server in its own process group, logging
    /// `stderr` (else stdout), and waits (at most 10 s) for a log line matching `ready`
    /// (e.g. postgres's "ready to accept connections"). Dropping it kills its group.
    ///
    /// # Panics
    /// If it exits or is not ready in time, showing its output.
    pub fn spawn_logged(
        label: &str,
        cmd: Command,
        log_on_stderr: bool,
        ready: impl Fn(&str) -> bool,
    ) -> Server {
        let stream = if log_on_stderr {
            LogStream::Stderr
        } else {
            LogStream::Stdout
        };
        Server::start(label.to_string(), cmd, stream, &ready)
    }

    /// Sends `signal` to the server's process (not its group) and waits at most `timeout`
    /// for it to exit, for servers that must shut down cleanly (a database removing its
    /// shared memory); true if it exited. Dropping it afterwards kills what is left.
    pub fn stop_with(&mut self, signal: nix::sys::signal::Signal, timeout: Duration) -> bool {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return true,
                Ok(None) if Instant::now() >= deadline => return false,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn log_lines(&self) -> &Arc<Lines> {
        match self.log_stream {
            LogStream::Stdout => &self.stdout,
            LogStream::Stderr => &self.stderr,
        }
    }

    /// Every log line so far: for `sctrace-testsrv` its stdout, e.g.
    /// `"tcp accept from 198.18.0.1:40000 to 198.18.0.10:80"`; for dnsmasq its log
    /// (queries included).
    pub fn log(&self) -> Vec<String> {
        self.log_lines().snapshot()
    }

    /// Every line the server wrote to stderr so far (for dnsmasq, the same as its log).
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.snapshot()
    }

    /// The first log line matching `pred`, waiting up to `timeout` for it to appear. `pred`
    /// must not call back into this server (it runs while the log is locked).
    ///
    /// # Panics
    /// If none appears in time (or the server ends first), showing its output.
    pub fn wait_log(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        self.try_wait_log(pred, timeout).unwrap_or_else(|| {
            panic!(
                "{}: no matching log line within {timeout:?}\n{}",
                self.label,
                self.dump()
            )
        })
    }

    /// The first `count` log lines matching `pred`, waiting up to `timeout` for them (e.g. one
    /// `tcp sink ...` line per connection of a 500-connection test).
    ///
    /// # Panics
    /// If fewer appear in time, saying how many did and showing the output.
    pub fn wait_log_count(
        &self,
        pred: impl Fn(&str) -> bool,
        count: usize,
        timeout: Duration,
    ) -> Vec<String> {
        self.log_lines()
            .wait_count(&pred, count, timeout)
            .unwrap_or_else(|found| {
                panic!(
                    "{}: {found} of {count} matching log lines within {timeout:?}\n{}",
                    self.label,
                    self.dump()
                )
            })
    }

    /// Like [`Server::wait_log`], but `None` instead of a panic.
    pub fn try_wait_log(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        self.log_lines().wait(&pred, timeout)
    }

    /// The addresses `sctrace-testsrv` listens on, as bound (a requested port 0 shows the
    /// port the kernel chose), from its `listening tcp|udp ADDR` lines.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.stdout
            .snapshot()
            .iter()
            .filter_map(|line| {
                let rest = line.strip_prefix("listening ")?;
                rest.split_once(' ')?.1.parse().ok()
            })
            .collect()
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server wrote, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.label,
            self.stdout.snapshot().join("\n"),
            self.label,
            self.stderr.snapshot().join("\n")
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        kill_group(self.child.id());
        let _ = self.child.wait();
    }
}

impl Netns {
    /// Starts `sctrace-testsrv` in this namespace and waits (at most 10 s) for its `ready`
    /// line.
    ///
    /// # Panics
    /// If it exits or is not ready in time (showing its output), or is not built.
    pub fn spawn_server(&self, spec: ServerSpec) -> Server {
        let args = spec.args();
        let mut cmd = self.command(bin("sctrace-testsrv"));
        cmd.args(&args);
        let label = format!("sctrace-testsrv {} in {}", args.join(" "), self.name());
        Server::start(label, cmd, LogStream::Stdout, &|line| line == "ready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_become_command_lines() {
        let a: SocketAddr = "198.18.0.10:80".parse().unwrap();
        let b: SocketAddr = "[2001:2:0:5c::10]:80".parse().unwrap();
        assert_eq!(
            ServerSpec::TcpEcho(vec![a, b]).args(),
            ["tcp-echo", "198.18.0.10:80", "[2001:2:0:5c::10]:80"]
        );
        assert_eq!(
            ServerSpec::TcpSource { addr: a, bytes: 5 }.args(),
            ["tcp-source", "198.18.0.10:80", "5"]
        );
    }

    #[test]
    fn a_server_that_is_ready_logs_and_is_killed_on_drop() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo listening tcp 127.0.0.1:9; echo ready; echo tcp accept; exec sleep 60",
        ]);
        let server = Server::start("sh".into(), cmd, LogStream::Stdout, &|l| l == "ready");
        assert_eq!(
            server.wait_log(|l| l.starts_with("tcp"), Duration::from_secs(5)),
            "tcp accept"
        );
        assert_eq!(
            server.addrs(),
            ["127.0.0.1:9".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            server.try_wait_log(|l| l == "never", Duration::from_millis(50)),
            None
        );
        let pid = nix::unistd::Pid::from_raw(server.pid() as i32);
        drop(server);
        // Reaped by the drop: the pid no longer names our child.
        assert!(nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)).is_err());
    }

    #[test]
    fn a_server_that_exits_before_ready_panics_with_its_output() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo cannot bind >&2; exit 1"]);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Server::start("failing".into(), cmd, LogStream::Stdout, &|l| l == "ready")
        }));
        let message = *result.unwrap_err().downcast::<String>().unwrap();
        assert!(message.contains("did not get ready"), "{message}");
        assert!(message.contains("cannot bind"), "{message}");
    }
}
