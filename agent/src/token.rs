//! Where the agent's session token comes from: `--token-file`, else `SCTRACE_AGENT_TOKEN`.

use std::path::{Path, PathBuf};

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
