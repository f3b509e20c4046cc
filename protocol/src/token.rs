//! The session token: a shared secret the client presents and the server checks in constant
//! time.

use std::fmt;

use bytes::Bytes;

use crate::frame::MAX_TOKEN_LEN;

/// A session token. Its bytes never appear in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Bytes);

/// Why bytes cannot be a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is empty.
    #[error("the session token is empty")]
    Empty,
    /// The token is longer than the protocol carries.
    #[error("the session token is {len} bytes long, more than the limit of {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl Token {
    /// Makes a token from non-empty bytes of at most 1024 bytes.
    pub fn new(bytes: impl Into<Bytes>) -> Result<Token, TokenError> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(TokenError::Empty);
        }
        if bytes.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong {
                len: bytes.len(),
                max: MAX_TOKEN_LEN,
            });
        }
        Ok(Token(bytes))
    }

    /// Reads a token from a file's contents: trailing `\n` / `\r\n` are not part of it.
    pub fn from_file_contents(contents: &[u8]) -> Result<Token, TokenError> {
        let mut end = contents.len();
        while end > 0 && matches!(contents[end - 1], b'\n' | b'\r') {
            end -= 1;
        }
        Token::new(Bytes::copy_from_slice(&contents[..end]))
    }

    pub(crate) fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// Whether `presented` equals this token. The time taken depends only on the lengths, not
    /// on where the bytes differ, so an attacker cannot find the token byte by byte.
    pub fn matches(&self, presented: &[u8]) -> bool {
        constant_time_eq(&self.0, presented)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<{} bytes>)", self.0.len())
    }
}

/// Compares without an early exit: every byte pair is combined into `diff`, and `black_box`
/// keeps the optimiser from turning the loop back into a short-circuiting compare. Only the
/// length (not secret: tokens are generated with a fixed length) leaks through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= std::hint::black_box(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare() {
        let t = Token::new(&b"secret"[..]).unwrap();
        assert!(t.matches(b"secret"));
        assert!(!t.matches(b"secreT"));
        assert!(!t.matches(b"secret2"));
        assert!(!t.matches(b""));
    }

    #[test]
    fn limits() {
        assert_eq!(Token::new(Bytes::new()), Err(TokenError::Empty));
        assert!(matches!(
            Token::new(vec![1u8; 1025]),
            Err(TokenError::TooLong { len: 1025, .. })
        ));
        assert!(Token::new(vec![1u8; 1024]).is_ok());
    }

    #[test]
    fn file_contents_trim_newlines_only() {
        let t = Token::from_file_contents(b"abc \r\n\n").unwrap();
        assert!(t.matches(b"abc "));
        assert_eq!(Token::from_file_contents(b"\n"), Err(TokenError::Empty));
    }

    #[test]
    fn debug_hides_the_token() {
        let t = Token::new(&b"hunter2"[..]).unwrap();
        assert_eq!(format!("{t:?}"), "Token(<7 bytes>)");
    }
}
