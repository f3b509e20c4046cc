//! Builds the document tree from saphyr-parser's YAML events: plain scalars are typed with
//! the YAML 1.2 core schema (`true`, `12`, `null`, …), quoted scalars are strings, aliases
//! are expanded (within a node budget), and only one document per file is accepted.

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

use super::{Key, Node, NodeKind, Pos, SyntaxError, MAX_DEPTH, MAX_NODES};

pub(super) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        documents: 0,
        nodes: 0,
    };
    let mut parser = Parser::new_from_str(text);
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|error| {
            let marker = error.marker();
            SyntaxError::at(
                Pos::new(marker.line(), marker.col() + 1),
                format!("invalid YAML: {}", error.info()),
            )
        })?;
        if builder.event(event, span)? {
            break;
        }
    }
    Ok(builder
        .root
        .unwrap_or_else(|| Node::new(NodeKind::Map(Vec::new()), Pos::new(1, 1))))
}

fn pos_of(span: &Span) -> Pos {
    Pos::new(span.start.line(), span.start.col() + 1)
}

/// A collection being filled.
enum Open {
    Seq {
        node: Node,
        anchor: usize,
    },
    Map {
        node: Node,
        anchor: usize,
        /// The key read, waiting for its value.
        key: Option<Key>,
    },
}

struct Builder {
    stack: Vec<Open>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    documents: usize,
    nodes: usize,
}

impl Builder {
    /// Handles one event; returns true at the end of the stream.
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<bool, SyntaxError> {
        let pos = pos_of(&span);
        match event {
            Event::StreamEnd => return Ok(true),
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(SyntaxError::at(
                        pos,
                        "the file holds more than one YAML document; a config is one document",
                    ));
                }
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().ok_or_else(|| {
                    SyntaxError::at(pos, "invalid YAML: alias to an unknown anchor")
                })?;
                self.count(count_nodes(&node), pos)?;
                if self.stack.len() + depth_of(&node) > MAX_DEPTH {
                    return Err(SyntaxError::at(
                        pos,
                        format!("lists and objects are nested more than {MAX_DEPTH} levels deep (after expanding aliases)"),
                    ));
                }
                let node = Node { pos, ..node };
                self.push_value(node, pos)?;
            }
            Event::Scalar(value, style, anchor, tag) => {
                self.count(1, pos)?;
                let node = Node::new(scalar(value, style, tag.as_deref(), pos)?, pos);
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push_value(node, pos)?;
            }
            Event::SequenceStart(anchor, tag) => {
                check_collection_tag(tag.as_deref(), "seq", pos)?;
                self.open(
                    Open::Seq {
                        node: Node::new(NodeKind::Seq(Vec::new()), pos),
                        anchor,
                    },
                    pos,
                )?;
            }
            Event::MappingStart(anchor, tag) => {
                check_collection_tag(tag.as_deref(), "map", pos)?;
                self.open(
                    Open::Map {
                        node: Node::new(NodeKind::Map(Vec::new()), pos),
                        anchor,
                        key: None,
                    },
                    pos,
                )?;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Open::Seq { node, anchor }) | Some(Open::Map { node, anchor, .. }) => {
                        (node, anchor)
                    }
                    None => {
                        return Err(SyntaxError::at(pos, "invalid YAML: unbalanced collection"))
                    }
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                let at = node.pos;
                self.push_value(node, at)?;
            }
        }
        Ok(false)
    }

    fn count(&mut self, nodes: usize, pos: Pos) -> Result<(), SyntaxError> {
        self.nodes = self.nodes.saturating_add(nodes);
        if self.nodes > MAX_NODES {
            return Err(SyntaxError::at(
                pos,
                format!("the document has more than {MAX_NODES} values (after expanding aliases)"),
            ));
        }
        Ok(())
    }

    fn open(&mut self, open: Open, pos: Pos) -> Result<(), SyntaxError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(SyntaxError::at(
                pos,
                format!("lists and objects are nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        self.count(1, pos)?;
        if let Some(Open::Map { key: None, .. }) = self.stack.last() {
            return Err(SyntaxError::at(
                pos,
                "keys must be plain values (strings), not lists or objects",
            ));
        }
        self.stack.push(open);
        Ok(())
    }

    /// Places a finished value into the collection being built, or makes it the root.
    fn push_value(&mut self, value: Node, pos: Pos) -> Result<(), SyntaxError> {
        match self.stack.last_mut() {
            None => {
                self.root = Some(value);
                Ok(())
            }
            Some(Open::Seq { node, .. }) => {
                if let NodeKind::Seq(items) = &mut node.kind {
                    items.push(value);
                }
                Ok(())
            }
            Some(Open::Map { node, key, .. }) => match key.take() {
                Some(key) => {
                    if let NodeKind::Map(entries) = &mut node.kind {
                        entries.push((key, value));
                    }
                    Ok(())
                }
                None => {
                    let name = match value.kind {
                        NodeKind::Str(name) => name,
                        NodeKind::Null => "null".to_owned(),
                        NodeKind::Bool(b) => b.to_string(),
                        NodeKind::Int(i) => i.to_string(),
                        NodeKind::Float(f) => f.to_string(),
                        NodeKind::Seq(_) | NodeKind::Map(_) => {
                            return Err(SyntaxError::at(
                                pos,
                                "keys must be plain values (strings), not lists or objects",
                            ))
                        }
                    };
                    *key = Some(Key { name, pos });
                    Ok(())
                }
            },
        }
    }
}

fn count_nodes(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        NodeKind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(_, value)| count_nodes(value))
                .sum::<usize>()
        }
        _ => 1,
    }
}

/// Nesting depth of a node (a scalar is 0). Every stored node respects `MAX_DEPTH`, so the
/// recursion is bounded.
fn depth_of(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Seq(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
        NodeKind::Map(entries) => 1 + entries.iter().map(|(_, v)| depth_of(v)).max().unwrap_or(0),
        _ => 0,
    }
}

fn check_collection_tag(tag: Option<&Tag>, expected: &str, pos: Pos) -> Result<(), SyntaxError> {
    match tag {
        None => Ok(()),
        Some(tag) if tag.is_yaml_core_schema() && tag.suffix == expected => Ok(()),
        Some(tag) => Err(SyntaxError::at(
            pos,
            format!("YAML tag {tag} is not supported here"),
        )),
    }
}

/// Types a scalar with the YAML 1.2 core schema (plain scalars only; quoted ones are strings).
fn scalar(
    value: Cow<'_, str>,
    style: ScalarStyle,
    tag: Option<&Tag>,
    pos: Pos,
) -> Result<NodeKind, SyntaxError> {
    if let Some(tag) = tag {
        if !tag.is_yaml_core_schema() {
            return Err(SyntaxError::at(
                pos,
                format!("YAML tag {tag} is not supported"),
            ));
        }
        let typed = match tag.suffix.as_str() {
            "str" => Some(NodeKind::Str(value.clone().into_owned())),
            "null" => plain_null(&value).then_some(NodeKind::Null),
            "bool" => plain_bool(&value).map(NodeKind::Bool),
            "int" => plain_int(&value).map(NodeKind::Int),
            "float" => plain_float(&value)
                .or_else(|| plain_int(&value).map(|i| i as f64))
                .map(NodeKind::Float),
            _ => {
                return Err(SyntaxError::at(
                    pos,
                    format!("YAML tag {tag} is not supported"),
                ))
            }
        };
        return typed.ok_or_else(|| {
            SyntaxError::at(pos, format!("{value:?} is not a valid value for tag {tag}"))
        });
    }
    if style != ScalarStyle::Plain {
        return Ok(NodeKind::Str(value.into_owned()));
    }
    if plain_null(&value) {
        return Ok(NodeKind::Null);
    }
    if let Some(b) = plain_bool(&value) {
        return Ok(NodeKind::Bool(b));
    }
    if let Some(i) = plain_int(&value) {
        return Ok(NodeKind::Int(i));
    }
    if let Some(f) = plain_float(&value) {
        return Ok(NodeKind::Float(f));
    }
    Ok(NodeKind::Str(value.into_owned()))
}

fn plain_null(value: &str) -> bool {
    matches!(value, "" | "~" | "null" | "Null" | "NULL")
}

fn plain_bool(value: &str) -> Option<bool> {
    match value {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

fn plain_int(value: &str) -> Option<i128> {
    let digits_in = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
    if let Some(octal) = value.strip_prefix("0o") {
        return digits_in(octal, 8)
            .then(|| i128::from_str_radix(octal, 8).ok())
            .flatten();
    }
    if let Some(hex) = value.strip_prefix("0x") {
        return digits_in(hex, 16)
            .then(|| i128::from_str_radix(hex, 16).ok())
            .flatten();
    }
    let unsigned = value.strip_prefix(['-', '+']).unwrap_or(value);
    if digits_in(unsigned, 10) {
        return value.parse().ok();
    }
    None
}

fn plain_float(value: &str) -> Option<f64> {
    match value {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        _ => {}
    }
    // [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?
    let unsigned = value.strip_prefix(['-', '+']).unwrap_or(value);
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (unsigned, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let all_digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    let mantissa_ok = match fraction {
        Some(fraction) => {
            all_digits(whole) && all_digits(fraction) && !(whole.is_empty() && fraction.is_empty())
        }
        None => !whole.is_empty() && all_digits(whole),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && all_digits(e)
    });
    if mantissa_ok && exponent_ok {
        value.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(node: &Node) -> &[(Key, Node)] {
        match &node.kind {
            NodeKind::Map(entries) => entries,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn scalars_follow_the_core_schema() {
        let node = parse(
            "a: true\nb: 'true'\nc: 12\nd: 0x1f\ne: 1.5\nf: ~\ng: yes\nh: !!str 12\ni: \"x\"\nj:\n",
        )
        .unwrap();
        let kinds: Vec<_> = map(&node).iter().map(|(_, v)| v.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                NodeKind::Bool(true),
                NodeKind::Str("true".into()),
                NodeKind::Int(12),
                NodeKind::Int(31),
                NodeKind::Float(1.5),
                NodeKind::Null,
                NodeKind::Str("yes".into()),
                NodeKind::Str("12".into()),
                NodeKind::Str("x".into()),
                NodeKind::Null,
            ]
        );
    }

    #[test]
    fn positions_are_one_based() {
        let node = parse("feature:\n  network:\n    outgoing: [a, b]\n").unwrap();
        let (key, feature) = &map(&node)[0];
        assert_eq!(key.pos, Pos::new(1, 1));
        let (key, network) = &map(feature)[0];
        assert_eq!(key.pos, Pos::new(2, 3));
        let (key, outgoing) = &map(network)[0];
        assert_eq!(key.pos, Pos::new(3, 5));
        assert_eq!(outgoing.pos, Pos::new(3, 15));
        let NodeKind::Seq(items) = &outgoing.kind else {
            panic!("not a list")
        };
        assert_eq!(items[1].pos, Pos::new(3, 19));
    }

    #[test]
    fn aliases_expand_within_a_budget() {
        let node = parse("base: &b [1, 2]\ncopy: *b\n").unwrap();
        assert_eq!(map(&node)[0].1.kind, map(&node)[1].1.kind);

        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..8 {
            let prev = level - 1;
            bomb.push_str(&format!(
                "a{level}: &a{level} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let error = parse(&bomb).unwrap_err();
        assert!(
            error.message.contains("more than 200000 values"),
            "{error:?}"
        );
    }

    #[test]
    fn aliases_cannot_nest_past_the_depth_limit() {
        let mut text = String::from("a0: &a0 [1]\n");
        let inner = "[".repeat(40);
        let close = "]".repeat(40);
        for level in 1..6 {
            text.push_str(&format!(
                "a{level}: &a{level} {inner}*a{}{close}\n",
                level - 1
            ));
        }
        let error = parse(&text).unwrap_err();
        assert!(
            error.message.contains("after expanding aliases"),
            "{error:?}"
        );
    }

    #[test]
    fn errors_have_positions() {
        let error = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(error.message.starts_with("invalid YAML: "), "{error:?}");
        assert!(error.pos.is_some());

        let error = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(error.pos, Some(Pos::new(2, 1)));
        assert_eq!(
            error.message,
            "the file holds more than one YAML document; a config is one document"
        );

        let error = parse("? [a]\n: 1\n").unwrap_err();
        assert_eq!(
            error.message,
            "keys must be plain values (strings), not lists or objects"
        );
    }

    #[test]
    fn empty_document_is_an_empty_object() {
        assert_eq!(parse("").unwrap().kind, NodeKind::Map(Vec::new()));
        assert_eq!(
            parse("# only a comment\n").unwrap().kind,
            NodeKind::Map(Vec::new())
        );
    }
}
