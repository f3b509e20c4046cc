//! The `{ "local": [...] }` / `{ "remote": [...] }` lists shared by
//! `feature.network.outgoing.filter` and `feature.network.dns.filter`.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::decision::Route;
use crate::decode::{child_path, key, Decoder, Value};
use crate::document::{quote_truncated, NodeKind};
use crate::entry::{FilterEntry, ProtocolMatch};
use crate::error::ConfigError;

/// Which side a filter list names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    /// `local`: what matches stays local, everything else goes remote.
    Local,
    /// `remote`: what matches goes remote, everything else stays local.
    Remote,
}

impl ListKind {
    /// Where matching traffic goes.
    pub fn route(self) -> Route {
        match self {
            Self::Local => Route::Local,
            Self::Remote => Route::Remote,
        }
    }

    /// The key that holds the list.
    pub fn key(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Remote => "remote",
        }
    }
}

impl fmt::Display for ListKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// One entry of a list and where it was written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ListedEntry {
    /// The parsed entry.
    pub entry: FilterEntry,
    /// Its key path, e.g. `feature.network.outgoing.filter.local[2]`.
    pub key: Arc<str>,
}

impl Serialize for ListedEntry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.entry.serialize(serializer)
    }
}

/// A `local` or `remote` list of filter entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FilterList {
    /// Which side the entries name.
    pub kind: ListKind,
    /// The entries, in the order written; the first that matches decides.
    pub entries: Vec<ListedEntry>,
}

impl FilterList {
    /// Builds a list from entry texts, for configs made in code. Keys are `prefix.local[i]`.
    pub fn parse<'a>(
        kind: ListKind,
        prefix: &str,
        texts: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, crate::entry::EntryError> {
        let list_key = child_path(prefix, kind.key());
        let entries = texts
            .into_iter()
            .enumerate()
            .map(|(index, text)| {
                Ok(ListedEntry {
                    entry: text.parse()?,
                    key: format!("{list_key}[{index}]").into(),
                })
            })
            .collect::<Result<_, crate::entry::EntryError>>()?;
        Ok(Self { kind, entries })
    }
}

/// What the list is for; changes which entries are accepted and how an empty list is met.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListUse {
    Outgoing,
    Dns,
}

/// Reads `{ "local": ... }` or `{ "remote": ... }`; each may be one entry or a list.
pub(crate) fn decode(
    d: &mut Decoder,
    value: &Value<'_>,
    list_use: ListUse,
) -> Result<FilterList, ConfigError> {
    let NodeKind::Map(raw) = &value.node.kind else {
        return Err(d.expected(value, "an object with a \"local\" or \"remote\" list"));
    };
    let mut fields = d.object(value, &[key("local"), key("remote")])?;
    let local = fields.take("local");
    let remote = fields.take("remote");
    let (kind, list) = match (local, remote) {
        (Some(_), Some(_)) => {
            let second = raw
                .iter()
                .filter(|(k, _)| k.name == "local" || k.name == "remote")
                .nth(1)
                .map_or(value.pos(), |(k, _)| k.pos);
            return Err(d.error_at(
                second,
                &value.path,
                "\"local\" and \"remote\" cannot be used together: keep one list (what it does not match goes the other way)",
            ));
        }
        (Some(list), None) => (ListKind::Local, list),
        (None, Some(list)) => (ListKind::Remote, list),
        (None, None) => {
            return Err(d.error(value, "expected a \"local\" or \"remote\" list of entries"))
        }
    };
    let items = d.one_or_list(&list);
    if items.is_empty() {
        match list_use {
            ListUse::Outgoing => {
                return Err(d.error(
                    &list,
                    "the list is empty: list at least one entry, or remove \"filter\" to send all traffic remote",
                ))
            }
            ListUse::Dns => {
                let side = kind.route().opposite();
                d.warn_at(
                    list.pos(),
                    &list.path,
                    format!("the list is empty: every name is resolved {side}ly"),
                );
            }
        }
    }
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        let NodeKind::Str(text) = &item.node.kind else {
            return Err(d.expected(&item, "a filter entry string"));
        };
        let entry: FilterEntry = text.parse().map_err(|e| {
            d.error(
                &item,
                format!("invalid filter entry {}: {e}", quote_truncated(text)),
            )
        })?;
        if list_use == ListUse::Dns {
            check_dns_entry(d, &item, &entry)?;
        }
        d.positions.insert(item.path.clone(), item.pos());
        entries.push(ListedEntry {
            entry,
            key: item.path.clone().into(),
        });
    }
    Ok(FilterList { kind, entries })
}

/// DNS filter entries name what is resolved; the wire query has no protocol and no port.
fn check_dns_entry(
    d: &mut Decoder,
    item: &Value<'_>,
    entry: &FilterEntry,
) -> Result<(), ConfigError> {
    if entry.protocol() != ProtocolMatch::Any || entry.text().contains("://") {
        return Err(d.error(
            item,
            format!(
                "invalid filter entry {}: DNS filter entries take no protocol (tcp://, udp://)",
                quote_truncated(entry.text())
            ),
        ));
    }
    if entry.port().is_some() {
        let message = if entry.name().is_some() {
            "the port is ignored: sctrace sees DNS queries as the resolver sends them, and they carry no port"
        } else if matches!(entry.host(), crate::entry::HostPattern::Any) {
            "this entry never matches: sctrace sees DNS queries as the resolver sends them, and they carry no port"
        } else {
            "the port is ignored: DNS queries carry no port"
        };
        d.warn_at(item.pos(), &item.path, message);
    }
    Ok(())
}
