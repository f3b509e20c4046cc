//! Where the agent's session token comes from: `--token-file`, `--token-stdin` (the first
//! line of standard input), else `SCTRACE_AGENT_TOKEN`.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use sctrace_protocol::{Token, TokenError};

/// The environment variable holding the token when no file is given.
pub const TOKEN_ENV: &str = "SCTRACE_AGENT_TOKEN";

/// Why no usable token was found.
#[derive(Debug, thiserror::Error)]
pub enum TokenLoadError {
    /// The token file could not be read.
    #[error("cannot read the token file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The token file or variable holds no usable token.
    #[error("the token in {origin} is unusable")]
    Invalid {
        /// The file or variable.
        origin: String,
        /// The cause.
        #[source]
        source: TokenError,
    },
    /// Neither a file nor the variable was given.
    #[error("no session token: pass --token-file FILE or set {TOKEN_ENV}")]
    Missing,
    /// Standard input gave no token line in time.
    #[error("no session token on standard input within {} s", .0.as_secs())]
    StdinTimeout(Duration),
    /// Standard input could not be read, or ended before a whole line.
    #[error("cannot read the session token from standard input")]
    Stdin(#[source] std::io::Error),
}

/// Longest line taken from standard input as a token (tokens are at most 1024 bytes).
const MAX_STDIN_LINE: u64 = 4096;

/// Reads the token from the first line of `input`, waiting at most `limit` (forever when
/// `None`). The read runs on a thread of its own, left behind if it times out: the agent then
/// exits anyway.
pub fn from_stdin<R: Read + Send + 'static>(
    input: R,
    limit: Option<Duration>,
) -> Result<Token, TokenLoadError> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("sctrace-token".into())
        .spawn(move || {
            let mut line = Vec::new();
            let read = std::io::BufReader::new(input.take(MAX_STDIN_LINE))
                .read_until(b'\n', &mut line)
                .and_then(|_| {
                    if line.last() == Some(&b'\n') {
                        Ok(line)
                    } else {
                        Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "standard input ended before a whole line",
                        ))
                    }
                });
            let _ = tx.send(read);
        })
        .map_err(TokenLoadError::Stdin)?;
    let received = match limit {
        Some(limit) => rx
            .recv_timeout(limit)
            .map_err(|_| TokenLoadError::StdinTimeout(limit))?,
        None => rx.recv().map_err(|_| {
            TokenLoadError::Stdin(std::io::Error::other("the reading thread vanished"))
        })?,
    };
    let line = received.map_err(TokenLoadError::Stdin)?;
    Token::from_file_contents(&line).map_err(|source| TokenLoadError::Invalid {
        origin: "standard input".to_owned(),
        source,
    })
}

/// Loads the token from `file`, or from `env` (the value of `SCTRACE_AGENT_TOKEN`).
pub fn load(file: Option<&Path>, env: Option<String>) -> Result<Token, TokenLoadError> {
    if let Some(path) = file {
        let contents = std::fs::read(path).map_err(|source| TokenLoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        return Token::from_file_contents(&contents).map_err(|source| TokenLoadError::Invalid {
            origin: path.display().to_string(),
            source,
        });
    }
    match env {
        Some(value) => {
            Token::from_file_contents(value.as_bytes()).map_err(|source| TokenLoadError::Invalid {
                origin: TOKEN_ENV.to_string(),
                source,
            })
        }
        None => Err(TokenLoadError::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_wins_and_newline_is_trimmed() {
        let dir = std::env::temp_dir().join(format!("sctrace-agent-token-{}", std::process::id()));
        std::fs::write(&dir, "s3cret\n").unwrap();
        let t = load(Some(&dir), Some("other".into())).unwrap();
        assert!(t.matches(b"s3cret"));
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn stdin_gives_the_first_line() {
        let t = from_stdin(&b"from-stdin\nignored"[..], None).unwrap();
        assert!(t.matches(b"from-stdin"));
        assert!(matches!(
            from_stdin(&b"no newline"[..], None),
            Err(TokenLoadError::Stdin(_))
        ));
        assert!(matches!(
            from_stdin(&b"\n"[..], None),
            Err(TokenLoadError::Invalid { .. })
        ));
        // Nothing arrives: the limit applies.
        let (_keep_open, reader) = std::os::unix::net::UnixStream::pair().unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(
            from_stdin(reader, Some(Duration::from_millis(100))),
            Err(TokenLoadError::StdinTimeout(_))
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn env_fallback_and_errors() {
        assert!(load(None, Some("tok".into())).unwrap().matches(b"tok"));
        assert!(matches!(load(None, None), Err(TokenLoadError::Missing)));
        assert!(matches!(
            load(None, Some("\n".into())),
            Err(TokenLoadError::Invalid { .. })
        ));
        assert!(matches!(
            load(Some(Path::new("/nonexistent/token")), None),
            Err(TokenLoadError::Read { .. })
        ));
    }
}
