//! A strict JSON reader (RFC 8259: no comments, no trailing commas) that records the position
//! of every value and key. serde_json cannot report where a successfully parsed value was.

use super::{Key, Node, NodeKind, Pos, SyntaxError, MAX_DEPTH};

pub(super) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut reader = Reader {
        text,
        at: 0,
        line: 1,
        column: 1,
    };
    reader.skip_whitespace();
    if reader.peek().is_none() {
        return Err(reader.error("the file is empty; write {} for a config with all defaults"));
    }
    let node = reader.value(0)?;
    reader.skip_whitespace();
    if let Some(c) = reader.peek() {
        return Err(reader.error(format!(
            "unexpected {} after the end of the document",
            show(c)
        )));
    }
    Ok(node)
}

const UNQUOTED: &str = "expected a value, found an unquoted word (strings need double quotes)";

struct Reader<'a> {
    text: &'a str,
    /// Byte offset of the next character.
    at: usize,
    line: usize,
    column: usize,
}

fn show(c: char) -> String {
    if c.is_control() || c.is_whitespace() {
        format!("character {}", c.escape_default())
    } else {
        format!("'{c}'")
    }
}

impl Reader<'_> {
    fn peek(&self) -> Option<char> {
        self.text
            .get(self.at..)
            .and_then(|rest| rest.chars().next())
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += c.len_utf8();
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn pos(&self) -> Pos {
        Pos::new(self.line, self.column)
    }

    fn error(&self, message: impl Into<String>) -> SyntaxError {
        SyntaxError::at(self.pos(), message)
    }

    fn found(&self) -> String {
        match self.peek() {
            Some(c) => format!("found {}", show(c)),
            None => "found the end of the file".to_owned(),
        }
    }

    fn skip_whitespace(&mut self) {
        while let Some(' ' | '\t' | '\n' | '\r') = self.peek() {
            self.bump();
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, SyntaxError> {
        let pos = self.pos();
        match self.peek() {
            Some('{') => self.object(depth),
            Some('[') => self.array(depth),
            Some('"') => Ok(Node::new(NodeKind::Str(self.string()?), pos)),
            Some('-' | '0'..='9') => self.number(),
            Some('t') => self.literal("true", NodeKind::Bool(true)),
            Some('f') => self.literal("false", NodeKind::Bool(false)),
            Some('n') => self.literal("null", NodeKind::Null),
            Some(c) if c.is_alphabetic() => Err(self.error(UNQUOTED)),
            _ => Err(self.error(format!("expected a value, {}", self.found()))),
        }
    }

    fn literal(&mut self, word: &str, kind: NodeKind) -> Result<Node, SyntaxError> {
        let pos = self.pos();
        let rest = self.text.get(self.at..).unwrap_or("");
        let followed_by_word_char = rest
            .get(word.len()..)
            .and_then(|after| after.chars().next())
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        if !rest.starts_with(word) || followed_by_word_char {
            return Err(self.error(UNQUOTED));
        }
        for _ in 0..word.len() {
            self.bump();
        }
        Ok(Node::new(kind, pos))
    }

    fn enter(&self, depth: usize) -> Result<usize, SyntaxError> {
        if depth >= MAX_DEPTH {
            return Err(self.error(format!(
                "lists and objects are nested more than {MAX_DEPTH} levels deep"
            )));
        }
        Ok(depth + 1)
    }

    fn object(&mut self, depth: usize) -> Result<Node, SyntaxError> {
        let pos = self.pos();
        let depth = self.enter(depth)?;
        self.bump(); // '{'
        let mut entries = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some('}') {
            self.bump();
            return Ok(Node::new(NodeKind::Map(entries), pos));
        }
        loop {
            self.skip_whitespace();
            let key_pos = self.pos();
            if self.peek() != Some('"') {
                return Err(
                    self.error(format!("expected a key in double quotes, {}", self.found()))
                );
            }
            let name = self.string()?;
            self.skip_whitespace();
            if self.peek() != Some(':') {
                return Err(self.error(format!("expected ':' after the key, {}", self.found())));
            }
            self.bump();
            self.skip_whitespace();
            let value = self.value(depth)?;
            entries.push((Key { name, pos: key_pos }, value));
            self.skip_whitespace();
            match self.peek() {
                Some(',') => {
                    self.bump();
                    self.skip_whitespace();
                    if self.peek() == Some('}') {
                        return Err(self.error("trailing comma before '}'"));
                    }
                }
                Some('}') => {
                    self.bump();
                    return Ok(Node::new(NodeKind::Map(entries), pos));
                }
                _ => {
                    return Err(self.error(format!(
                        "expected ',' or '}}' after an object member, {}",
                        self.found()
                    )))
                }
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Node, SyntaxError> {
        let pos = self.pos();
        let depth = self.enter(depth)?;
        self.bump(); // '['
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(']') {
            self.bump();
            return Ok(Node::new(NodeKind::Seq(items), pos));
        }
        loop {
            self.skip_whitespace();
            items.push(self.value(depth)?);
            self.skip_whitespace();
            match self.peek() {
                Some(',') => {
                    self.bump();
                    self.skip_whitespace();
                    if self.peek() == Some(']') {
                        return Err(self.error("trailing comma before ']'"));
                    }
                }
                Some(']') => {
                    self.bump();
                    return Ok(Node::new(NodeKind::Seq(items), pos));
                }
                _ => {
                    return Err(self.error(format!(
                        "expected ',' or ']' after a list item, {}",
                        self.found()
                    )))
                }
            }
        }
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        let start = self.pos();
        self.bump(); // '"'
        let mut out = String::new();
        loop {
            match self.bump() {
                None => {
                    return Err(SyntaxError::at(
                        start,
                        "string is not closed: missing '\"' before the end of the file",
                    ))
                }
                Some('"') => return Ok(out),
                Some('\\') => {
                    let escape_pos = self.pos();
                    match self.bump() {
                        Some('"') => out.push('"'),
                        Some('\\') => out.push('\\'),
                        Some('/') => out.push('/'),
                        Some('b') => out.push('\u{8}'),
                        Some('f') => out.push('\u{c}'),
                        Some('n') => out.push('\n'),
                        Some('r') => out.push('\r'),
                        Some('t') => out.push('\t'),
                        Some('u') => out.push(self.unicode_escape(escape_pos)?),
                        _ => {
                            return Err(SyntaxError::at(
                                escape_pos,
                                "invalid escape in string (valid: \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)",
                            ))
                        }
                    }
                }
                Some(c) if u32::from(c) < 0x20 => {
                    return Err(SyntaxError::at(
                        self.pos(),
                        "control character inside a string (a line break needs \\n)",
                    ))
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn hex4(&mut self, escape_pos: Pos) -> Result<u32, SyntaxError> {
        let mut value = 0u32;
        for _ in 0..4 {
            let digit = self.peek().and_then(|c| c.to_digit(16)).ok_or_else(|| {
                SyntaxError::at(escape_pos, "\\u must be followed by 4 hex digits")
            })?;
            self.bump();
            value = value * 16 + digit;
        }
        Ok(value)
    }

    fn unicode_escape(&mut self, escape_pos: Pos) -> Result<char, SyntaxError> {
        let first = self.hex4(escape_pos)?;
        let code = if (0xD800..0xDC00).contains(&first) {
            let rest = self.text.get(self.at..).unwrap_or("");
            if !rest.starts_with("\\u") {
                return Err(SyntaxError::at(
                    escape_pos,
                    "unpaired UTF-16 surrogate in \\u escape",
                ));
            }
            self.bump();
            self.bump();
            let second = self.hex4(escape_pos)?;
            if !(0xDC00..0xE000).contains(&second) {
                return Err(SyntaxError::at(
                    escape_pos,
                    "unpaired UTF-16 surrogate in \\u escape",
                ));
            }
            0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
        } else {
            first
        };
        char::from_u32(code)
            .ok_or_else(|| SyntaxError::at(escape_pos, "unpaired UTF-16 surrogate in \\u escape"))
    }

    fn digits(&mut self) -> usize {
        let mut count = 0;
        while let Some('0'..='9') = self.peek() {
            self.bump();
            count += 1;
        }
        count
    }

    fn number(&mut self) -> Result<Node, SyntaxError> {
        let pos = self.pos();
        let start = self.at;
        let invalid =
            |reader: &Self| SyntaxError::at(pos, format!("invalid number, {}", reader.found()));
        if self.peek() == Some('-') {
            self.bump();
        }
        match self.peek() {
            Some('0') => {
                self.bump();
                if let Some('0'..='9') = self.peek() {
                    return Err(SyntaxError::at(pos, "numbers cannot have leading zeros"));
                }
            }
            Some('1'..='9') => {
                self.digits();
            }
            _ => return Err(invalid(self)),
        }
        let mut integral = true;
        if self.peek() == Some('.') {
            integral = false;
            self.bump();
            if self.digits() == 0 {
                return Err(invalid(self));
            }
        }
        if let Some('e' | 'E') = self.peek() {
            integral = false;
            self.bump();
            if let Some('+' | '-') = self.peek() {
                self.bump();
            }
            if self.digits() == 0 {
                return Err(invalid(self));
            }
        }
        let literal = self.text.get(start..self.at).unwrap_or("");
        if integral {
            if let Ok(value) = literal.parse::<i128>() {
                return Ok(Node::new(NodeKind::Int(value), pos));
            }
        }
        match literal.parse::<f64>() {
            Ok(value) if value.is_finite() => Ok(Node::new(NodeKind::Float(value), pos)),
            _ => Err(SyntaxError::at(pos, "number is out of range")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> (u32, u32, String) {
        let error = parse(text).expect_err(text);
        let pos = error.pos.unwrap_or_default();
        (pos.line, pos.column, error.message)
    }

    #[test]
    fn values_and_positions() {
        let node = parse(
            "{\n  \"a\": [1, -2.5e1, \"x\\u00e9\\ud83d\\ude00\"],\n  \"b\": null, \"c\": true}",
        )
        .unwrap();
        let NodeKind::Map(entries) = node.kind else {
            panic!("not a map")
        };
        assert_eq!(entries[0].0.name, "a");
        assert_eq!(entries[0].0.pos, Pos::new(2, 3));
        let NodeKind::Seq(items) = &entries[0].1.kind else {
            panic!("not a list")
        };
        assert_eq!(items[0].kind, NodeKind::Int(1));
        assert_eq!(items[1].kind, NodeKind::Float(-25.0));
        assert_eq!(items[1].pos, Pos::new(2, 12));
        assert_eq!(items[2].kind, NodeKind::Str("xé😀".to_owned()));
        assert_eq!(entries[1].1.kind, NodeKind::Null);
        assert_eq!(entries[2].1.kind, NodeKind::Bool(true));
        assert_eq!(entries[2].1.pos, Pos::new(3, 19));
    }

    #[test]
    fn syntax_errors_point_at_the_problem() {
        assert_eq!(
            err("{\"a\": 1,}"),
            (1, 9, "trailing comma before '}'".to_owned())
        );
        assert_eq!(
            err("{\n  \"a\": 1\n  \"b\": 2\n}"),
            (
                3,
                3,
                "expected ',' or '}' after an object member, found '\"'".to_owned()
            )
        );
        assert_eq!(
            err("{\"a\": tru}"),
            (
                1,
                7,
                "expected a value, found an unquoted word (strings need double quotes)".to_owned()
            )
        );
        assert_eq!(
            err("{a: 1}"),
            (
                1,
                2,
                "expected a key in double quotes, found 'a'".to_owned()
            )
        );
        assert_eq!(
            err("{\"a\": \"x"),
            (
                1,
                7,
                "string is not closed: missing '\"' before the end of the file".to_owned()
            )
        );
        assert_eq!(
            err("[01]"),
            (1, 2, "numbers cannot have leading zeros".to_owned())
        );
        assert_eq!(
            err("{} {}"),
            (
                1,
                4,
                "unexpected '{' after the end of the document".to_owned()
            )
        );
        assert_eq!(
            err("  "),
            (
                1,
                3,
                "the file is empty; write {} for a config with all defaults".to_owned()
            )
        );
        assert_eq!(
            err("// comment\n{}"),
            (1, 1, "expected a value, found '/'".to_owned())
        );
        assert_eq!(err("[1e400]"), (1, 2, "number is out of range".to_owned()));
        assert_eq!(
            err("[\"\\ud800\"]"),
            (1, 4, "unpaired UTF-16 surrogate in \\u escape".to_owned())
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert!(err(&deep).2.contains("nested more than"));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
    }
}
