//! Turns the positioned document tree into typed config values: checks each object's keys
//! against what mirrord knows (unknown key: error; known but not supported by sctrace:
//! warning), checks value types, and builds every message with its file position and key
//! path.

use std::collections::{BTreeMap, HashSet};

use crate::document::{quote_truncated, Node, NodeKind, Pos};
use crate::error::{ConfigError, Origin, Warning};

/// Whether sctrace acts on a key that mirrord defines.
#[derive(Clone, Copy)]
pub(crate) enum Support {
    /// Read and acted on.
    Yes,
    /// Read and ignored: a warning carries `note` (what happens instead), unless the value
    /// asks for nothing sctrace does not already do (`harmless`).
    Ignored {
        note: &'static str,
        harmless: fn(&Node) -> bool,
    },
}

/// One key of an object in mirrord's schema.
#[derive(Clone, Copy)]
pub(crate) struct KeySpec {
    pub name: &'static str,
    pub support: Support,
}

/// A key sctrace reads.
pub(crate) const fn key(name: &'static str) -> KeySpec {
    KeySpec {
        name,
        support: Support::Yes,
    }
}

/// A key mirrord knows and sctrace ignores, always warned about when given.
pub(crate) const fn ignored(name: &'static str, note: &'static str) -> KeySpec {
    KeySpec {
        name,
        support: Support::Ignored {
            note,
            harmless: never,
        },
    }
}

/// A key mirrord knows and sctrace ignores; values for which `harmless` is true ask for what
/// sctrace does anyway and are not warned about.
pub(crate) const fn ignored_unless(
    name: &'static str,
    note: &'static str,
    harmless: fn(&Node) -> bool,
) -> KeySpec {
    KeySpec {
        name,
        support: Support::Ignored { note, harmless },
    }
}

fn never(_: &Node) -> bool {
    false
}

/// `false` (a feature switched off) is what sctrace does anyway.
pub(crate) fn is_false(node: &Node) -> bool {
    matches!(node.kind, NodeKind::Bool(false))
}

/// `true` is what sctrace does anyway.
pub(crate) fn is_true(node: &Node) -> bool {
    matches!(node.kind, NodeKind::Bool(true))
}

/// A value and the key path it was found at.
#[derive(Clone, Debug)]
pub(crate) struct Value<'n> {
    pub node: &'n Node,
    pub path: String,
}

impl<'n> Value<'n> {
    pub(crate) fn root(node: &'n Node) -> Self {
        Self {
            node,
            path: String::new(),
        }
    }

    pub(crate) fn pos(&self) -> Pos {
        self.node.pos
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self.node.kind, NodeKind::Null)
    }
}

/// Extends a key path by an object key, quoting keys that are not plain words.
pub(crate) fn child_path(parent: &str, name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (parent.is_empty(), plain) {
        (true, true) => name.to_owned(),
        (false, true) => format!("{parent}.{name}"),
        (_, false) => format!("{parent}[{name:?}]"),
    }
}

/// Extends a key path by a list index.
pub(crate) fn index_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// The supported keys of one object, taken one by one by the struct's decoder.
pub(crate) struct Fields<'n> {
    entries: Vec<(&'static str, Value<'n>)>,
}

impl<'n> Fields<'n> {
    /// The value of a supported key; `null` counts as absent, as in mirrord.
    pub(crate) fn take(&mut self, name: &str) -> Option<Value<'n>> {
        let at = self.entries.iter().position(|(key, _)| *key == name)?;
        let (_, value) = self.entries.swap_remove(at);
        (!value.is_null()).then_some(value)
    }
}

/// Decoding state: the file name for messages, warnings so far, and where each value was.
pub(crate) struct Decoder {
    name: String,
    pub warnings: Vec<Warning>,
    /// Position of every supported value read, by key path, for checks that look at several
    /// keys together.
    pub positions: BTreeMap<String, Pos>,
}

impl Decoder {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            warnings: Vec::new(),
            positions: BTreeMap::new(),
        }
    }

    pub(crate) fn origin(&self, pos: Pos) -> Origin {
        Origin::File {
            name: self.name.clone(),
            pos: Some(pos),
        }
    }

    pub(crate) fn error_at(&self, pos: Pos, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::invalid(self.origin(pos), key, message)
    }

    pub(crate) fn error(&self, value: &Value<'_>, message: impl Into<String>) -> ConfigError {
        self.error_at(value.pos(), &value.path, message)
    }

    /// "expected WHAT, found …" at the value.
    pub(crate) fn expected(&self, value: &Value<'_>, what: &str) -> ConfigError {
        self.error(
            value,
            format!("expected {what}, found {}", value.node.describe()),
        )
    }

    pub(crate) fn warn_at(&mut self, pos: Pos, key: &str, message: impl Into<String>) {
        let warning = Warning::new(self.origin(pos), key, message);
        self.warnings.push(warning);
    }

    pub(crate) fn bool(&self, value: &Value<'_>) -> Result<bool, ConfigError> {
        match value.node.kind {
            NodeKind::Bool(b) => Ok(b),
            _ => Err(self.expected(value, "true or false")),
        }
    }

    pub(crate) fn string(&self, value: &Value<'_>) -> Result<String, ConfigError> {
        match &value.node.kind {
            NodeKind::Str(s) => Ok(s.clone()),
            _ => Err(self.expected(value, "a string")),
        }
    }

    /// A string that must not be empty or blank.
    pub(crate) fn text(&self, value: &Value<'_>) -> Result<String, ConfigError> {
        let s = self.string(value)?;
        if s.trim().is_empty() {
            return Err(self.error(value, "expected a non-empty string, found \"\""));
        }
        Ok(s)
    }

    /// A whole number that fits `T`; `what` says which numbers are accepted, e.g.
    /// "a port number (0-65535)".
    pub(crate) fn int<T: TryFrom<i128>>(
        &self,
        value: &Value<'_>,
        what: &str,
    ) -> Result<T, ConfigError> {
        match value.node.kind {
            NodeKind::Int(i) => T::try_from(i).map_err(|_| self.expected(value, what)),
            _ => Err(self.expected(value, what)),
        }
    }

    /// The items of a list, with their key paths.
    pub(crate) fn list<'n>(
        &self,
        value: &Value<'n>,
        what: &str,
    ) -> Result<Vec<Value<'n>>, ConfigError> {
        match &value.node.kind {
            NodeKind::Seq(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(index, node)| Value {
                    node,
                    path: index_path(&value.path, index),
                })
                .collect()),
            _ => Err(self.expected(value, what)),
        }
    }

    /// mirrord's "one value or a list of values": a lone value is a list of one, at the
    /// key's own path.
    pub(crate) fn one_or_list<'n>(&self, value: &Value<'n>) -> Vec<Value<'n>> {
        match &value.node.kind {
            NodeKind::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(index, node)| Value {
                    node,
                    path: index_path(&value.path, index),
                })
                .collect(),
            _ => vec![value.clone()],
        }
    }

    /// Strings given as one string or a list of strings.
    pub(crate) fn strings(&self, value: &Value<'_>) -> Result<Vec<String>, ConfigError> {
        self.one_or_list(value)
            .iter()
            .map(|item| match &item.node.kind {
                NodeKind::Str(s) => Ok(s.clone()),
                _ => Err(self.expected(item, "a string or a list of strings")),
            })
            .collect()
    }

    /// An object whose keys are checked against `keys`: an unknown key is an error, a key
    /// sctrace ignores is a warning, a repeated key is an error.
    pub(crate) fn object<'n>(
        &mut self,
        value: &Value<'n>,
        keys: &[KeySpec],
    ) -> Result<Fields<'n>, ConfigError> {
        let NodeKind::Map(entries) = &value.node.kind else {
            return Err(self.expected(value, "an object"));
        };
        let mut seen = HashSet::new();
        let mut fields = Vec::new();
        for (key, node) in entries {
            let path = child_path(&value.path, &key.name);
            if !seen.insert(key.name.as_str()) {
                return Err(self.error_at(key.pos, &path, "this key is given twice"));
            }
            let Some(spec) = keys.iter().find(|spec| spec.name == key.name) else {
                return Err(self.error_at(key.pos, &path, unknown_key_message(&key.name, keys)));
            };
            match spec.support {
                Support::Yes => {
                    self.positions.insert(path.clone(), node.pos);
                    fields.push((spec.name, Value { node, path }));
                }
                Support::Ignored { note, harmless } => {
                    if !matches!(node.kind, NodeKind::Null) && !harmless(node) {
                        self.warn_at(key.pos, &path, note);
                    }
                }
            }
        }
        Ok(Fields { entries: fields })
    }

    /// An object of string values (labels, annotations, environment overrides). Numbers and
    /// booleans are taken as their text, as Kubernetes manifests often write them unquoted.
    pub(crate) fn string_map(
        &self,
        value: &Value<'_>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let NodeKind::Map(entries) = &value.node.kind else {
            return Err(self.expected(value, "an object of names to strings"));
        };
        let mut map = BTreeMap::new();
        for (key, node) in entries {
            let path = child_path(&value.path, &key.name);
            let text = match &node.kind {
                NodeKind::Str(s) => s.clone(),
                NodeKind::Int(i) => i.to_string(),
                NodeKind::Float(f) => f.to_string(),
                NodeKind::Bool(b) => b.to_string(),
                _ => {
                    return Err(self.expected(&Value { node, path }, "a string"));
                }
            };
            if map.insert(key.name.clone(), text).is_some() {
                return Err(self.error_at(key.pos, &path, "this key is given twice"));
            }
        }
        Ok(map)
    }
}

fn unknown_key_message(name: &str, keys: &[KeySpec]) -> String {
    let known: Vec<&str> = keys.iter().map(|spec| spec.name).collect();
    let suggestion = keys
        .iter()
        .map(|spec| (edit_distance(name, spec.name), spec.name))
        .filter(|(distance, candidate)| *distance <= 2 && *distance < candidate.len().max(2))
        .min_by_key(|(distance, _)| *distance);
    match suggestion {
        Some((_, candidate)) => format!(
            "unknown key, did you mean \"{candidate}\"? (known keys: {})",
            known.join(", ")
        ),
        None => format!(
            "unknown key {} (known keys: {})",
            quote_truncated(name),
            known.join(", ")
        ),
    }
}

/// Levenshtein distance, for "did you mean" suggestions (keys are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            let insertion = current[j] + 1;
            let deletion = previous[j + 1] + 1;
            current.push(substitution.min(insertion).min(deletion));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(child_path("", "feature"), "feature");
        assert_eq!(
            child_path("agent.labels", "app.kubernetes.io/name"),
            "agent.labels[\"app.kubernetes.io/name\"]"
        );
        assert_eq!(index_path("a.local", 2), "a.local[2]");
    }

    #[test]
    fn suggestions() {
        let keys = [
            key("tcp"),
            key("udp"),
            key("filter"),
            key("ignore_localhost"),
        ];
        assert_eq!(
            unknown_key_message("fitler", &keys),
            "unknown key, did you mean \"filter\"? (known keys: tcp, udp, filter, ignore_localhost)"
        );
        assert_eq!(
            unknown_key_message("x", &keys),
            "unknown key \"x\" (known keys: tcp, udp, filter, ignore_localhost)"
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
