//! Starting `sctrace-agent` for a local target: a network namespace file or a process's
//! namespace on this machine. The agent listens on a Unix socket in a private directory,
//! with a fresh random token, and serves exactly this session (`--once`).
//!
//! Entering another network namespace (setns) needs CAP_SYS_ADMIN, so local targets need
//! sctrace to run as root; the app itself still runs with sctrace's own credentials.

use std::collections::VecDeque;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sctrace_protocol::{Token, TokenError};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The target namespace the agent enters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespace {
    /// A namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`, a bind mount).
    Path(PathBuf),
    /// The namespace of this process.
    Pid(u32),
}

/// Why the local agent could not be started.
#[derive(Debug, Error)]
pub enum LocalAgentError {
    /// No agent binary was found.
    #[error("cannot find sctrace-agent next to sctrace ({beside}) or on PATH")]
    NotFound {
        /// Where it was looked for first.
        beside: PathBuf,
    },
    /// The target namespace does not exist.
    #[error("the target network namespace {0} does not exist")]
    NoNamespace(PathBuf),
    /// The target process does not exist.
    #[error("the target process {0} does not exist")]
    NoProcess(u32),
    /// Local targets need root.
    #[error("a local target needs root: sctrace-agent enters the target's network namespace with setns, which needs CAP_SYS_ADMIN")]
    NotRoot,
    /// Preparing the agent's directory or token failed.
    #[error("cannot prepare the agent's runtime directory {path}: {source}")]
    RuntimeDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Spawning failed.
    #[error("cannot start {agent}: {source}")]
    Spawn {
        /// The binary.
        agent: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The session token was refused (not reached: it is 64 hex digits).
    #[error("sctrace-agent did not start: {0}")]
    Token(#[source] TokenError),
    /// The agent exited or said nothing useful.
    #[error("sctrace-agent did not start: {0}")]
    NotReady(#[source] NotListening),
}

/// Why the agent did not report that it listens.
#[derive(Debug, Error)]
pub enum NotListening {
    /// Its stdout was not captured.
    #[error("no stdout")]
    NoStdout,
    /// Reading its first line failed.
    #[error("{0}")]
    Read(#[source] io::Error),
    /// It exited before saying anything.
    #[error("it exited before listening{}", last_words(.0))]
    Exited(Vec<String>),
    /// Its first line is not `listening …`.
    #[error("unexpected first line {0:?}")]
    Unexpected(String),
    /// It said nothing within this time.
    #[error("not listening after {} s", .0.as_secs())]
    Timeout(Duration),
}

/// `: LINE; LINE` of what the agent last said on stderr, or nothing.
fn last_words(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines.join("; "))
    }
}

/// The last lines the agent wrote on stderr (its log). They go to sctrace's own log at
/// debug level rather than to the terminal, and into sctrace's messages when the agent
/// fails; control characters are escaped.
#[derive(Debug, Clone, Default)]
pub struct AgentLog(Arc<Mutex<VecDeque<String>>>);

/// Lines of the agent's log kept for messages.
const LOG_TAIL: usize = 5;

impl AgentLog {
    /// Reads the agent's stderr until it closes.
    fn follow(&self, stderr: std::process::ChildStderr) {
        let tail = Arc::clone(&self.0);
        let Ok(stderr) = tokio::process::ChildStderr::from_std(stderr) else {
            return;
        };
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let line = line.escape_debug().to_string();
                tracing::debug!("agent: {line}");
                if let Ok(mut tail) = tail.lock() {
                    if tail.len() == LOG_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            }
        });
    }

    /// The last lines, oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// A running agent process that sctrace started.
pub struct LocalAgent {
    child: Child,
    log: AgentLog,
    dir: PathBuf,
    socket: PathBuf,
    handoff: PathBuf,
    token: Token,
}

/// How long the agent may take to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

impl LocalAgent {
    /// Starts the agent for `netns` and waits until it listens.
    pub async fn start(netns: &Namespace) -> Result<LocalAgent, LocalAgentError> {
        match netns {
            Namespace::Path(path) if !path.exists() => {
                return Err(LocalAgentError::NoNamespace(path.clone()))
            }
            Namespace::Pid(pid) if !Path::new(&format!("/proc/{pid}")).exists() => {
                return Err(LocalAgentError::NoProcess(*pid))
            }
            _ => {}
        }
        if !running_as_root() {
            return Err(LocalAgentError::NotRoot);
        }
        let agent = find_agent()?;
        let dir = runtime_dir()?;
        let socket = dir.join("agent.sock");
        let handoff = dir.join("handoff.sock");
        let token_file = dir.join("token");
        let token_text = random_token()?;
        write_private(&token_file, token_text.as_bytes()).map_err(|source| {
            LocalAgentError::RuntimeDir {
                path: dir.clone(),
                source,
            }
        })?;
        let token = Token::new(token_text.into_bytes()).map_err(LocalAgentError::Token)?;

        let mut cmd = Command::new(&agent);
        cmd.arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--token-file")
            .arg(&token_file)
            .arg("--handoff-socket")
            .arg(&handoff)
            .args(["--once", "--log-level", "warn"])
            // Its own process group: the terminal's Ctrl-C and signals sent to sctrace's
            // group must not stop the agent while the program still needs it.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match netns {
            Namespace::Path(path) => cmd.arg("--netns").arg(path),
            Namespace::Pid(pid) => cmd.arg("--pid").arg(pid.to_string()),
        };
        let mut child = cmd.spawn().map_err(|source| LocalAgentError::Spawn {
            agent: agent.clone(),
            source,
        })?;
        let log = AgentLog::default();
        if let Some(stderr) = child.stderr.take() {
            log.follow(stderr);
        }
        let stdout = child.stdout.take();
        let ready = async {
            let stdout = stdout.ok_or(NotListening::NoStdout)?;
            let stdout =
                tokio::process::ChildStdout::from_std(stdout).map_err(NotListening::Read)?;
            let mut line = String::new();
            BufReader::new(stdout)
                .read_line(&mut line)
                .await
                .map_err(NotListening::Read)?;
            if line.starts_with("listening ") {
                Ok(())
            } else if line.is_empty() {
                // Its last words come through the log task: give it a moment to read them.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(NotListening::Exited(log.tail()))
            } else {
                Err(NotListening::Unexpected(line.trim_end().to_owned()))
            }
        };
        let started = match tokio::time::timeout(READY_TIMEOUT, ready).await {
            Ok(result) => result,
            Err(_) => Err(NotListening::Timeout(READY_TIMEOUT)),
        };
        let agent = LocalAgent {
            child,
            log,
            dir,
            socket,
            handoff,
            token,
        };
        match started {
            Ok(()) => Ok(agent),
            Err(reason) => Err(LocalAgentError::NotReady(reason)),
        }
    }

    /// The agent's log (its last lines, for messages).
    pub fn log(&self) -> &AgentLog {
        &self.log
    }

    /// The agent's Unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The agent's handoff socket.
    pub fn handoff_socket(&self) -> &Path {
        &self.handoff
    }

    /// The session token.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// The agent's pid, which the app's clean-up must leave alone.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for LocalAgent {
    /// Stops the agent (SIGTERM; it closes its session and removes its socket) and removes
    /// the runtime directory. The lifecycle's reaper collects its exit status.
    fn drop(&mut self) {
        let _ = crate::sys::process::kill(self.child.id() as i32, libc::SIGTERM);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self is owned by the process's effective uid.
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// `sctrace-agent` beside the running sctrace (an installation or a cargo target dir), else
/// on PATH.
fn find_agent() -> Result<PathBuf, LocalAgentError> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("sctrace-agent")))
        .unwrap_or_else(|| PathBuf::from("sctrace-agent"));
    if beside.is_file() {
        return Ok(beside);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("sctrace-agent"))
        .find(|candidate| candidate.is_file())
        .ok_or(LocalAgentError::NotFound { beside })
}

/// A private directory (0700) for the agent's socket and token. Its name is fresh: a
/// directory left by an earlier sctrace that was killed (and whose pid came round again)
/// must not stop this one, nor be reused.
fn runtime_dir() -> Result<PathBuf, LocalAgentError> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let mut attempt = 0;
    loop {
        let suffix = &random_token()?[..12];
        let dir = base.join(format!("sctrace-{}-{suffix}", std::process::id()));
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
            Err(source) => return Err(LocalAgentError::RuntimeDir { path: dir, source }),
        }
    }
}

fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)
}

/// 32 random bytes from the kernel, hex-encoded.
fn random_token() -> Result<String, LocalAgentError> {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| LocalAgentError::RuntimeDir {
            path: PathBuf::from("/dev/urandom"),
            source,
        })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tokens_are_fresh_and_hex() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn runtime_directories_are_fresh_and_private() {
        let a = runtime_dir().unwrap();
        let b = runtime_dir().unwrap();
        assert_ne!(a, b);
        let mode = fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::remove_dir(a).unwrap();
        fs::remove_dir(b).unwrap();
    }
}
