//! The format-neutral document tree that JSON, YAML and TOML files are read into, with the
//! line and column of every value and key, so that config errors can point at the text.

mod json;
mod toml;
mod yaml;

use std::fmt;
use std::path::Path;

/// Deepest nesting of lists and objects accepted in a config file. mirrord's schema is at
/// most 7 levels deep; the limit only keeps a hostile file from exhausting the stack.
pub(crate) const MAX_DEPTH: usize = 64;

/// Most nodes one document may expand to (YAML aliases can multiply a small file).
pub(crate) const MAX_NODES: usize = 200_000;

/// The file formats a config can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON (RFC 8259, no comments), the default: `.json` or no extension.
    Json,
    /// YAML 1.2: `.yaml` or `.yml`.
    Yaml,
    /// TOML 1.0: `.toml`.
    Toml,
}

impl Format {
    /// Picks the format from a file name's extension as mirrord does: `.json` or no extension
    /// is JSON, `.yaml`/`.yml` is YAML, `.toml` is TOML (letter case is not significant).
    /// Returns the extension that was not recognised otherwise.
    pub fn from_path(path: &Path) -> Result<Self, String> {
        let Some(extension) = path.extension() else {
            return Ok(Self::Json);
        };
        let extension = extension.to_string_lossy();
        match extension.to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "yaml" | "yml" => Ok(Self::Yaml),
            "toml" => Ok(Self::Toml),
            _ => Err(extension.into_owned()),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Json => "JSON",
            Self::Yaml => "YAML",
            Self::Toml => "TOML",
        })
    }
}

/// A place in the source text: 1-based line and column (columns count characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct Pos {
    /// Line number, starting at 1.
    pub line: u32,
    /// Column number in characters, starting at 1.
    pub column: u32,
}

impl Pos {
    pub(crate) fn new(line: usize, column: usize) -> Self {
        Self {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column).unwrap_or(u32::MAX),
        }
    }
}

/// One value of the document.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub kind: NodeKind,
    pub pos: Pos,
}

/// A key of an object, with where it was written.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Key {
    pub name: String,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum NodeKind {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

impl Node {
    pub(crate) fn new(kind: NodeKind, pos: Pos) -> Self {
        Self { kind, pos }
    }

    /// Describes the value for "expected …, found …" messages.
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Null => "null".to_owned(),
            NodeKind::Bool(value) => format!("{value}"),
            NodeKind::Int(value) => format!("the number {value}"),
            NodeKind::Float(value) => format!("the number {value:?}"),
            NodeKind::Str(value) => format!("the string {}", quote_truncated(value)),
            NodeKind::Seq(_) => "a list".to_owned(),
            NodeKind::Map(_) => "an object".to_owned(),
        }
    }
}

/// Quotes a user-written string for a message, shortening very long ones.
pub(crate) fn quote_truncated(value: &str) -> String {
    const LIMIT: usize = 60;
    let mut shown: String = value.chars().take(LIMIT).collect();
    if value.chars().nth(LIMIT).is_some() {
        shown.push('…');
    }
    format!("{shown:?}")
}

/// Why a file could not be read as a document of its format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub pos: Option<Pos>,
    pub message: String,
}

impl SyntaxError {
    pub(crate) fn at(pos: Pos, message: impl Into<String>) -> Self {
        Self {
            pos: Some(pos),
            message: message.into(),
        }
    }
}

/// Reads `text` as a document of `format`. An empty YAML or TOML document is an empty object.
pub(crate) fn parse(text: &str, format: Format) -> Result<Node, SyntaxError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match format {
        Format::Json => json::parse(text),
        Format::Yaml => yaml::parse(text),
        Format::Toml => toml::parse(text),
    }
}

/// Converts byte offsets into line/column positions.
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(at, _)| at + 1));
        Self { text, line_starts }
    }

    pub(crate) fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(line) => line,
            Err(next) => next.saturating_sub(1),
        };
        let start = self.line_starts.get(line).copied().unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map_or(0, |prefix| prefix.chars().count());
        Pos::new(line + 1, column + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_follows_the_extension() {
        assert_eq!(
            Format::from_path(Path::new("a/mirrord.json")),
            Ok(Format::Json)
        );
        assert_eq!(Format::from_path(Path::new("mirrord")), Ok(Format::Json));
        assert_eq!(Format::from_path(Path::new("m.YML")), Ok(Format::Yaml));
        assert_eq!(Format::from_path(Path::new("m.yaml")), Ok(Format::Yaml));
        assert_eq!(Format::from_path(Path::new("m.toml")), Ok(Format::Toml));
        assert_eq!(Format::from_path(Path::new("m.ini")), Err("ini".to_owned()));
    }

    #[test]
    fn line_index_counts_characters() {
        let index = LineIndex::new("ab\nçd\n\nx");
        assert_eq!(index.pos(0), Pos::new(1, 1));
        assert_eq!(index.pos(3), Pos::new(2, 1));
        assert_eq!(index.pos(5), Pos::new(2, 2));
        assert_eq!(index.pos(8), Pos::new(4, 1));
        assert_eq!(index.pos(100), Pos::new(4, 2));
    }
}
