//! `feature.network.outgoing`: which of the app's outgoing connections and datagrams go
//! through the target and which stay on this machine.

use serde::Serialize;

use super::filter_list::{self, FilterList, ListUse};
use crate::decode::{ignored, key, Decoder, Value};
use crate::document::NodeKind;
use crate::error::ConfigError;

/// Outgoing traffic: where the app's connections (TCP) and datagrams (UDP) are made.
///
/// By default everything the app connects to is reached from inside the target, as if the
/// app ran there. `true` is the default; `false` keeps all outgoing traffic local (like
/// `{"tcp": false, "udp": false}`). The object form tunes it:
///
/// ```json
/// {
///   "feature": {
///     "network": {
///       "outgoing": {
///         "tcp": true,
///         "udp": true,
///         "ignore_localhost": false,
///         "filter": { "local": ["messages-db", "tcp://10.0.0.0/8:5432", ":6379"] }
///       }
///     }
///   }
/// }
/// ```
///
/// Connections to the app's own listening ports on a loopback address always stay local.
/// DNS queries are governed by [`feature.network.dns`](super::DnsConfig), not by this filter
/// (except that host names in this filter also choose where those names are resolved).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutgoingConfig {
    /// `feature.network.outgoing.tcp`: send TCP connections through the target. When false,
    /// every TCP connection stays local, whatever the filter says. Default `true`.
    /// Environment: `SCTRACE_TCP_OUTGOING`, `MIRRORD_TCP_OUTGOING`.
    pub tcp: bool,
    /// `feature.network.outgoing.udp`: send UDP traffic through the target. When false,
    /// every UDP datagram stays local, whatever the filter says. Default `true`.
    /// Environment: `SCTRACE_UDP_OUTGOING`, `MIRRORD_UDP_OUTGOING`.
    pub udp: bool,
    /// `feature.network.outgoing.ignore_localhost`: keep connections to loopback addresses
    /// (`127.0.0.0/8`, `::1`) and to unspecified addresses (`0.0.0.0`, `::`) local. Default
    /// `false`: as in mirrord, `localhost` then means the target's loopback, except for ports
    /// the app itself listens on.
    pub ignore_localhost: bool,
    /// `feature.network.outgoing.filter`: a `local` or a `remote` list of entries (never
    /// both) that picks the side per destination. See the filter grammar in
    /// `docs/configuration.md`:
    ///
    /// - `local`: destinations that match stay local; all others go through the target.
    /// - `remote`: destinations that match go through the target; all others stay local.
    /// - no filter: everything goes through the target.
    ///
    /// Entries: `[tcp://|udp://|any://][host | a.b.c.d | [ipv6]][/prefix][:port]`, e.g.
    /// `"messages-db"`, `"tcp://10.0.0.0/8:5432"`, `"[fd00::1]:80"`, `":8888"`, `"udp://"`.
    pub filter: Option<FilterList>,
    /// `feature.network.outgoing.udp_replies` (sctrace's own key): which datagrams from the
    /// target reach a UDP socket of the app. `"peers"` (default): only those from addresses
    /// the socket sent to, as behind a NAT, so that nobody in the cluster can flood the
    /// app's machine through the agent; `"any"`: every source, for apps that expect
    /// datagrams from peers they never sent to (some peer-to-peer and discovery protocols).
    pub udp_replies: UdpReplies,
}

/// Which datagrams from the target reach the app's UDP sockets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UdpReplies {
    /// Only from the addresses a socket sent to.
    #[default]
    Peers,
    /// From any address.
    Any,
}

const UDP_REPLIES: &str = "\"peers\" or \"any\"";

impl Default for OutgoingConfig {
    fn default() -> Self {
        Self::enabled(true)
    }
}

impl OutgoingConfig {
    /// The configuration `"outgoing": true` or `false` stands for.
    pub fn enabled(enabled: bool) -> Self {
        Self {
            tcp: enabled,
            udp: enabled,
            ignore_localhost: false,
            filter: None,
            udp_replies: UdpReplies::Peers,
        }
    }
}

const KEYS: &[crate::decode::KeySpec] = &[
    key("tcp"),
    key("udp"),
    key("ignore_localhost"),
    key("filter"),
    key("udp_replies"),
    ignored(
        "unix_streams",
        "ignored: sctrace leaves connections to Unix sockets local",
    ),
];

pub(crate) fn decode(d: &mut Decoder, value: &Value<'_>) -> Result<OutgoingConfig, ConfigError> {
    match &value.node.kind {
        NodeKind::Bool(enabled) => Ok(OutgoingConfig::enabled(*enabled)),
        NodeKind::Map(_) => {
            let mut fields = d.object(value, KEYS)?;
            let mut config = OutgoingConfig::default();
            if let Some(v) = fields.take("tcp") {
                config.tcp = d.bool(&v)?;
            }
            if let Some(v) = fields.take("udp") {
                config.udp = d.bool(&v)?;
            }
            if let Some(v) = fields.take("ignore_localhost") {
                config.ignore_localhost = d.bool(&v)?;
            }
            if let Some(v) = fields.take("filter") {
                config.filter = Some(filter_list::decode(d, &v, ListUse::Outgoing)?);
            }
            if let Some(v) = fields.take("udp_replies") {
                config.udp_replies = match &v.node.kind {
                    NodeKind::Str(name) if name == "peers" => UdpReplies::Peers,
                    NodeKind::Str(name) if name == "any" => UdpReplies::Any,
                    _ => return Err(d.expected(&v, UDP_REPLIES)),
                };
            }
            Ok(config)
        }
        _ => Err(d.expected(value, "true, false or an object")),
    }
}
