//! Converts the toml crate's spanned document (`DeTable`) into the document tree, turning
//! byte spans into lines and columns.

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{Key, LineIndex, Node, NodeKind, Pos, SyntaxError, MAX_DEPTH};

pub(super) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let index = LineIndex::new(text);
    let table = DeTable::parse(text).map_err(|error| SyntaxError {
        pos: error.span().map(|span| index.pos(span.start)),
        message: format!("invalid TOML: {}", error.message().trim_end()),
    })?;
    let pos = index.pos(table.span().start);
    let converter = Converter { index: &index };
    Ok(Node::new(converter.table(table.get_ref(), 0)?, pos))
}

struct Converter<'a, 'i> {
    index: &'a LineIndex<'i>,
}

impl Converter<'_, '_> {
    fn table(&self, table: &DeTable<'_>, depth: usize) -> Result<NodeKind, SyntaxError> {
        let mut entries = Vec::with_capacity(table.len());
        for (key, value) in table.iter() {
            let key = Key {
                name: key.get_ref().to_string(),
                pos: self.index.pos(key.span().start),
            };
            // Tables opened implicitly by a dotted header (`[feature.network]` opens
            // `feature`) have no text of their own: point at their key instead.
            let span = value.span();
            let pos = if span.is_empty() {
                key.pos
            } else {
                self.index.pos(span.start)
            };
            entries.push((key, self.value(value, pos, depth)?));
        }
        Ok(NodeKind::Map(entries))
    }

    fn value(
        &self,
        value: &Spanned<DeValue<'_>>,
        pos: Pos,
        depth: usize,
    ) -> Result<Node, SyntaxError> {
        if depth >= MAX_DEPTH {
            return Err(SyntaxError::at(
                pos,
                format!("lists and objects are nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        let kind = match value.get_ref() {
            DeValue::String(s) => NodeKind::Str(s.to_string()),
            DeValue::Integer(i) => match i128::from_str_radix(i.as_str(), i.radix()) {
                Ok(i) => NodeKind::Int(i),
                Err(_) => return Err(SyntaxError::at(pos, "integer is out of range")),
            },
            DeValue::Float(f) => match f.as_str().replace('_', "").parse::<f64>() {
                Ok(f) => NodeKind::Float(f),
                Err(_) => NodeKind::Str(f.as_str().to_owned()),
            },
            DeValue::Boolean(b) => NodeKind::Bool(*b),
            DeValue::Datetime(datetime) => NodeKind::Str(datetime.to_string()),
            DeValue::Array(items) => {
                let mut nodes = Vec::new();
                for item in items.iter() {
                    let item_pos = self.index.pos(item.span().start);
                    nodes.push(self.value(item, item_pos, depth + 1)?);
                }
                NodeKind::Seq(nodes)
            }
            DeValue::Table(table) => self.table(table, depth + 1)?,
        };
        Ok(Node::new(kind, pos))
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
    fn values_and_positions() {
        let node = parse(
            "target = \"pod/a\"\n\n[feature.network.outgoing]\ntcp = false\nfilter = { local = [\"db\", \":5432\"] }\n",
        )
        .unwrap();
        let (key, target) = &map(&node)[0];
        assert_eq!((key.name.as_str(), key.pos), ("target", Pos::new(1, 1)));
        assert_eq!(target.kind, NodeKind::Str("pod/a".into()));
        assert_eq!(target.pos, Pos::new(1, 10));
        let (key, feature) = &map(&node)[1];
        assert_eq!(key.name, "feature");
        let network = &map(feature)[0].1;
        let outgoing = &map(network)[0].1;
        let (key, tcp) = &map(outgoing)[0];
        assert_eq!(key.pos, Pos::new(4, 1));
        assert_eq!(
            (tcp.kind.clone(), tcp.pos),
            (NodeKind::Bool(false), Pos::new(4, 7))
        );
        let filter = &map(outgoing)[1].1;
        let local = &map(filter)[0].1;
        let NodeKind::Seq(items) = &local.kind else {
            panic!("not a list")
        };
        assert_eq!(items[1].pos, Pos::new(5, 27));
    }

    #[test]
    fn errors_have_positions() {
        let error = parse("a = 1\nb = [1,\n").unwrap_err();
        assert!(error.message.starts_with("invalid TOML: "), "{error:?}");
        assert!(error.pos.is_some_and(|p| p.line >= 2), "{error:?}");

        let error = parse("a = 1\na = 2\n").unwrap_err();
        assert!(error.message.contains("duplicate key"), "{error:?}");
        assert_eq!(error.pos, Some(Pos::new(2, 1)));
    }
}
