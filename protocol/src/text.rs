//! Text from the peer, made safe to print: the peer's messages (refusals, `GoAway`, failed
//! DNS or environment requests) end up on a terminal, and a peer must not be able to move
//! the cursor, rewrite earlier lines, change the title or hide text there.

use std::fmt;

/// Shows the peer's `text` with control characters written as escapes (`\n`, `\u{1b}`), so
/// that printing it can't drive the terminal. Unicode's bidirectional overrides are escaped
/// too: they reorder what follows on the line.
#[derive(Clone, Copy)]
pub struct PeerText<'a>(pub &'a str);

impl fmt::Display for PeerText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(needs_escape) {
            f.write_str(&rest[..at])?;
            let mut chars = rest[at..].chars();
            if let Some(c) = chars.next() {
                write!(f, "{}", c.escape_default())?;
            }
            rest = chars.as_str();
        }
        f.write_str(rest)
    }
}

impl fmt::Debug for PeerText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

/// C0 and C1 controls and DEL (`char::is_control`), and the bidirectional embeddings,
/// overrides and isolates (U+202A..U+202E, U+2066..U+2069).
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        let hostile = "refused\x1b]0;pwned\x07\r\nsctrace: all good \u{9b}2J \u{202e}evil é ✓";
        let shown = PeerText(hostile).to_string();
        assert_eq!(
            shown,
            "refused\\u{1b}]0;pwned\\u{7}\\r\\nsctrace: all good \\u{9b}2J \\u{202e}evil é ✓"
        );
        assert!(!shown.chars().any(needs_escape));
        assert_eq!(PeerText("plain text").to_string(), "plain text");
        assert_eq!(PeerText("").to_string(), "");
    }
}
