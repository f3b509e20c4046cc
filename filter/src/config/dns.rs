//! `feature.network.dns`: where the names the app looks up are resolved.

use serde::Serialize;

use super::filter_list::{self, FilterList, ListUse};
use crate::decode::{key, Decoder, Value};
use crate::document::NodeKind;
use crate::error::ConfigError;

/// DNS: where the app's name lookups are resolved.
///
/// By default names are resolved by the target's DNS (its `resolv.conf`, search domains and
/// `ndots`), so `messages-db` finds the cluster's service. sctrace answers the queries the
/// app's resolver sends to the nameservers of this machine's `/etc/resolv.conf`; names the
/// resolver finds without DNS (`/etc/hosts`, `localhost`) stay local.
///
/// `true` (default) or `false`, or an object:
///
/// ```json
/// {
///   "feature": {
///     "network": {
///       "dns": {
///         "enabled": true,
///         "filter": { "local": ["messages-db", "internal.example.com"] }
///       }
///     }
///   }
/// }
/// ```
///
/// Host names in [`feature.network.outgoing.filter`](super::OutgoingConfig) also steer DNS,
/// as in mirrord: a name the outgoing filter keeps local is resolved locally (so the app
/// gets the address it can reach), a name it sends remote is resolved remotely.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DnsConfig {
    /// `feature.network.dns.enabled`: resolve names in the target. When false every name is
    /// resolved locally. Default `true`. Environment: `SCTRACE_REMOTE_DNS`,
    /// `MIRRORD_REMOTE_DNS`.
    pub enabled: bool,
    /// `feature.network.dns.filter`: a `local` or a `remote` list choosing the side per name.
    /// Entries are `name`, `a.b.c.d`, `[ipv6]` or `subnet/prefix` (no protocol). Names match
    /// the queried name exactly (letter case and a trailing dot aside) or completed by a
    /// search domain. Queries on the wire carry no port, so a port in an entry is ignored.
    pub filter: Option<FilterList>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            filter: None,
        }
    }
}

pub(crate) fn decode(d: &mut Decoder, value: &Value<'_>) -> Result<DnsConfig, ConfigError> {
    match &value.node.kind {
        NodeKind::Bool(enabled) => Ok(DnsConfig {
            enabled: *enabled,
            filter: None,
        }),
        NodeKind::Map(_) => {
            let mut fields = d.object(value, &[key("enabled"), key("filter")])?;
            let mut config = DnsConfig::default();
            if let Some(v) = fields.take("enabled") {
                config.enabled = d.bool(&v)?;
            }
            if let Some(v) = fields.take("filter") {
                config.filter = Some(filter_list::decode(d, &v, ListUse::Dns)?);
            }
            Ok(config)
        }
        _ => Err(d.expected(value, "true, false or an object")),
    }
}
