//! The target process's environment, for sctrace's `feature.env`: read from
//! `/proc/PID/environ` (the environment the process was started with; reading it needs the
//! same ptrace access as its namespaces, which the agent has as root).

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sctrace_protocol::frame::{MAX_ENV_BYTES, MAX_ENV_ENTRY_LEN};
use sctrace_protocol::EnvRequest;

/// Variables as `(name, value)` pairs.
type Vars = Vec<(Bytes, Bytes)>;

/// Where the target's environment comes from.
#[derive(Debug, Clone)]
pub enum EnvSource {
    /// A process: its `environ` file.
    Process(PathBuf),
    /// A bare network namespace: no process, no environment.
    None {
        /// The namespace, for the message.
        netns: PathBuf,
    },
}

impl EnvSource {
    /// The environment of process `pid`.
    pub fn pid(pid: u32) -> EnvSource {
        EnvSource::Process(PathBuf::from(format!("/proc/{pid}/environ")))
    }

    /// Answers one request.
    pub fn serve(&self, request: EnvRequest) {
        match self {
            EnvSource::None { netns } => request.fail(&format!(
                "the target is the network namespace {}, which has no process to take an environment from (feature.env needs a pid/PID or Kubernetes target)",
                netns.display()
            )),
            EnvSource::Process(path) => match read(path) {
                Ok((vars, skipped)) => {
                    for name in skipped {
                        tracing::warn!(%name, "leaving out a variable too large for the protocol");
                    }
                    if let Err(e) = request.answer(vars) {
                        tracing::warn!(error = %e, "cannot send the target's environment");
                    }
                }
                Err(e) => request.fail(&e.to_string()),
            },
        }
    }
}

/// The variables in `path` (NUL-separated `NAME=VALUE`), and the names of those left out for
/// being larger than one frame can carry. Entries without `=` or with an empty name (a
/// process may write anything over its environment) are dropped.
fn read(path: &Path) -> Result<(Vars, Vec<String>), ReadError> {
    let data = std::fs::read(path).map_err(|source| ReadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let (vars, skipped) = parse(&data);
    let total: usize = vars.iter().map(|(n, v)| n.len() + v.len()).sum();
    if total > MAX_ENV_BYTES {
        return Err(ReadError::TooLarge { total });
    }
    Ok((vars, skipped))
}

/// Why the target's environment cannot be sent. The message goes back to sctrace as it is.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    /// The `environ` file could not be read.
    #[error("cannot read the target's environment {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The environment is larger than the protocol carries.
    #[error("the target's environment is {total} bytes, above the {MAX_ENV_BYTES} bytes sctrace carries")]
    TooLarge {
        /// Its size in bytes.
        total: usize,
    },
}

fn parse(data: &[u8]) -> (Vars, Vec<String>) {
    let mut vars = Vec::new();
    let mut skipped = Vec::new();
    for entry in data.split(|b| *b == 0) {
        let Some(eq) = entry.iter().position(|b| *b == b'=') else {
            continue;
        };
        if eq == 0 {
            continue;
        }
        let (name, value) = (&entry[..eq], &entry[eq + 1..]);
        if name.len() + value.len() > MAX_ENV_ENTRY_LEN {
            skipped.push(String::from_utf8_lossy(name).into_owned());
            continue;
        }
        vars.push((Bytes::copy_from_slice(name), Bytes::copy_from_slice(value)));
    }
    (vars, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environ_entries() {
        let mut data = b"A=1\0B=x=y\0EMPTY=\0noequals\0=nameless\0".to_vec();
        data.extend_from_slice(b"BIG=");
        data.extend(std::iter::repeat_n(b'z', MAX_ENV_ENTRY_LEN));
        data.push(0);
        let (vars, skipped) = parse(&data);
        let shown: Vec<(&[u8], &[u8])> = vars.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        assert_eq!(
            shown,
            [(&b"A"[..], &b"1"[..]), (b"B", b"x=y"), (b"EMPTY", b""),]
        );
        assert_eq!(skipped, ["BIG"]);
        assert_eq!(parse(b"").0.len(), 0);
    }

    #[test]
    fn own_environment_is_readable() {
        let (vars, _) = read(Path::new("/proc/self/environ")).unwrap();
        let path = std::env::var("PATH").unwrap_or_default();
        assert!(vars
            .iter()
            .any(|(n, v)| &n[..] == b"PATH" && v[..] == *path.as_bytes()));
        let err = read(Path::new("/proc/0/environ")).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("cannot read the target's environment /proc/0/environ"));
    }
}
