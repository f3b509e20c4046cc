//! What can go wrong reading a config, and the warnings about keys sctrace reads but does
//! not act on. Every message names where the value came from (file, line and column, or the
//! environment variable or command-line flag) and the key path, in one stable format:
//!
//! ```text
//! mirrord.json:7:18: feature.network.outgoing.filter.local[2]: invalid filter entry "10.0.0.0/33": prefix length 33 is too long for an IPv4 address (at most 32)
//! environment variable MIRRORD_TCP_OUTGOING: expected true or false, found "yes"
//! ```

use std::fmt;
use std::io;
use std::path::PathBuf;

use serde::Serialize;

use crate::document::Pos;

/// Where a config value (or a mistake) came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// A config file, by the name it was given to sctrace, with the place in it when known.
    File {
        /// The file name as given (e.g. `mirrord.json`, `/home/me/.mirrord/mirrord.json`).
        name: String,
        /// Line and column of the value or key.
        pos: Option<Pos>,
    },
    /// An environment variable such as `MIRRORD_TCP_OUTGOING`.
    Env {
        /// The variable's name.
        var: String,
    },
    /// A command-line option such as `--target`.
    Flag {
        /// The option as written on the command line.
        name: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File {
                name,
                pos: Some(pos),
            } => write!(f, "{name}:{}:{}", pos.line, pos.column),
            Self::File { name, pos: None } => f.write_str(name),
            Self::Env { var } => write!(f, "environment variable {var}"),
            Self::Flag { name } => f.write_str(name),
        }
    }
}

/// One problem found in a config: where, which key, and what was expected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Where the offending value was written.
    pub origin: Origin,
    /// Dotted key path of the value, e.g. `feature.network.outgoing.filter.local[2]`; empty
    /// when the problem is not about one key (e.g. a syntax error).
    pub key: String,
    /// What is wrong, in words meant for the user.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: {}: {}", self.origin, self.key, self.message)
        }
    }
}

/// An I/O error in words, without the "(os error N)" suffix the user has no use for.
fn io_reason(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text,
    }
}

/// Why a config could not be used. The program must not start when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read (missing, unreadable, not UTF-8, too large).
    #[error("cannot read the config file {}: {}", path.display(), io_reason(source))]
    Read {
        /// The file, as an absolute path (the one that was tried).
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The file name has an extension that names no supported format.
    #[error(
        "{}: unknown config file extension \".{extension}\" (use .json, .yaml, .yml or .toml)",
        path.display()
    )]
    Extension {
        /// The file as given.
        path: PathBuf,
        /// The extension found, without the dot.
        extension: String,
    },
    /// The text is not valid JSON, YAML or TOML.
    #[error("{0}")]
    Syntax(Diagnostic),
    /// The text is well-formed but a value is wrong: unknown key, wrong type, bad filter
    /// entry, conflicting settings.
    #[error("{0}")]
    Invalid(Diagnostic),
}

impl ConfigError {
    /// The diagnostic carried by a syntax or validation error.
    pub fn diagnostic(&self) -> Option<&Diagnostic> {
        match self {
            Self::Syntax(diagnostic) | Self::Invalid(diagnostic) => Some(diagnostic),
            Self::Read { .. } | Self::Extension { .. } => None,
        }
    }

    pub(crate) fn invalid(
        origin: Origin,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Invalid(Diagnostic {
            origin,
            key: key.into(),
            message: message.into(),
        })
    }
}

/// Something in the config that sctrace reads but will not do as written, and what happens
/// instead. Shown to the user before the program starts; never fatal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning(pub Diagnostic);

impl Warning {
    pub(crate) fn new(origin: Origin, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self(Diagnostic {
            origin,
            key: key.into(),
            message: message.into(),
        })
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_formats() {
        let file = Origin::File {
            name: "mirrord.json".into(),
            pos: Some(Pos {
                line: 7,
                column: 18,
            }),
        };
        let error = ConfigError::invalid(
            file,
            "feature.network.outgoing.tcp",
            "expected true or false, found the string \"yes\"",
        );
        assert_eq!(
            error.to_string(),
            "mirrord.json:7:18: feature.network.outgoing.tcp: expected true or false, found the string \"yes\""
        );
        let env = Origin::Env {
            var: "MIRRORD_TCP_OUTGOING".into(),
        };
        let error = ConfigError::invalid(env, "", "expected true or false, found \"yes\"");
        assert_eq!(
            error.to_string(),
            "environment variable MIRRORD_TCP_OUTGOING: expected true or false, found \"yes\""
        );
        let error = ConfigError::Read {
            path: "/nope/mirrord.json".into(),
            source: io::Error::from_raw_os_error(libc_enoent()),
        };
        assert_eq!(
            error.to_string(),
            "cannot read the config file /nope/mirrord.json: No such file or directory"
        );
        let error = ConfigError::Read {
            path: "/etc/shadow.json".into(),
            source: io::Error::other("the file is larger than 1 MiB"),
        };
        assert_eq!(
            error.to_string(),
            "cannot read the config file /etc/shadow.json: the file is larger than 1 MiB"
        );
    }

    /// ENOENT, which is 2 on every Linux architecture.
    fn libc_enoent() -> i32 {
        2
    }
}
