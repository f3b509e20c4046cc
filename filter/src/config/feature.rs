//! `feature` and `feature.network`: the switches for each kind of interception.

use serde::Serialize;

use super::dns::{self, DnsConfig};
use super::env_vars::{self, EnvConfig};
use super::incoming::{self, IncomingConfig, IncomingMode};
use super::outgoing::{self, OutgoingConfig};
use crate::decode::{ignored, ignored_unless, is_false, is_true, key, Decoder, KeySpec, Value};
use crate::document::NodeKind;
use crate::error::ConfigError;

/// `feature.network`: the app's network traffic. `true` (default) or `false` (no incoming,
/// outgoing or DNS interception), or an object with `incoming`, `outgoing` and `dns`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetworkConfig {
    /// `feature.network.incoming`: see [`IncomingConfig`].
    pub incoming: IncomingConfig,
    /// `feature.network.outgoing`: see [`OutgoingConfig`].
    pub outgoing: OutgoingConfig,
    /// `feature.network.dns`: see [`DnsConfig`].
    pub dns: DnsConfig,
}

impl NetworkConfig {
    /// What `"network": false` stands for.
    pub fn disabled() -> Self {
        Self {
            incoming: IncomingConfig::with_mode(IncomingMode::Off),
            outgoing: OutgoingConfig::enabled(false),
            dns: DnsConfig {
                enabled: false,
                filter: None,
            },
        }
    }
}

/// `feature`: what sctrace intercepts. sctrace implements `network` and `env`; mirrord's
/// other features are accepted and warned about (see `docs/configuration.md`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FeatureConfig {
    /// `feature.env`: see [`EnvConfig`].
    pub env: EnvConfig,
    /// `feature.network`: see [`NetworkConfig`].
    pub network: NetworkConfig,
}

fn fs_is_local(node: &crate::document::Node) -> bool {
    match &node.kind {
        NodeKind::Bool(false) => true,
        NodeKind::Str(mode) => mode == "local",
        NodeKind::Map(entries) => entries.iter().all(|(key, value)| {
            key.name == "mode" && matches!(&value.kind, NodeKind::Str(mode) if mode == "local")
        }),
        _ => false,
    }
}

const FEATURE_KEYS: &[KeySpec] = &[
    key("env"),
    key("network"),
    ignored_unless(
        "fs",
        "ignored: sctrace does not intercept file access; the app reads and writes local files",
        fs_is_local,
    ),
    ignored_unless(
        "hostname",
        "ignored: the app sees this machine's hostname",
        is_false,
    ),
    ignored_unless(
        "copy_target",
        "ignored: sctrace uses the target as it is and makes no copy of it",
        is_false,
    ),
    ignored(
        "split_queues",
        "ignored: queue splitting needs the mirrord operator; the app reads queues as it would without sctrace",
    ),
    ignored(
        "db_branches",
        "ignored: database branching needs the mirrord operator; the app uses the databases the filter routes it to",
    ),
    ignored(
        "magic",
        "ignored: sctrace applies no preset adjustments",
    ),
    ignored(
        "preview",
        "ignored: preview environments need the mirrord operator",
    ),
];

const NETWORK_KEYS: &[KeySpec] = &[
    key("incoming"),
    key("outgoing"),
    key("dns"),
    ignored_unless(
        "ipv6",
        "ignored: IPv6 sockets work as usual (sctrace does not make them fail)",
        is_true,
    ),
];

pub(crate) fn decode(d: &mut Decoder, value: &Value<'_>) -> Result<FeatureConfig, ConfigError> {
    let mut fields = d.object(value, FEATURE_KEYS)?;
    let mut config = FeatureConfig::default();
    if let Some(v) = fields.take("env") {
        config.env = env_vars::decode(d, &v)?;
    }
    if let Some(v) = fields.take("network") {
        config.network = network(d, &v)?;
    }
    Ok(config)
}

fn network(d: &mut Decoder, value: &Value<'_>) -> Result<NetworkConfig, ConfigError> {
    match &value.node.kind {
        NodeKind::Bool(true) => Ok(NetworkConfig::default()),
        NodeKind::Bool(false) => Ok(NetworkConfig::disabled()),
        NodeKind::Map(_) => {
            let mut fields = d.object(value, NETWORK_KEYS)?;
            let mut config = NetworkConfig::default();
            if let Some(v) = fields.take("incoming") {
                config.incoming = incoming::decode(d, &v)?;
            }
            if let Some(v) = fields.take("outgoing") {
                config.outgoing = outgoing::decode(d, &v)?;
            }
            if let Some(v) = fields.take("dns") {
                config.dns = dns::decode(d, &v)?;
            }
            Ok(config)
        }
        _ => Err(d.expected(value, "true, false or an object")),
    }
}
