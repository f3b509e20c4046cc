//! The configuration: mirrord's schema (`mirrord.json`, or YAML/TOML), with mirrord's
//! meaning and defaults for every key sctrace acts on. The doc comments of these structs are
//! the user reference; `docs/configuration.md` collects them.

mod agent;
mod conflicts;
mod dns;
mod env_vars;
mod feature;
mod filter_list;
mod incoming;
mod outgoing;
mod target;

use std::collections::BTreeMap;

use serde::Serialize;

pub use agent::{
    AgentAddress, AgentConfig, AgentDnsConfig, AgentImage, AgentResources, AgentTls, AgentTrust,
    Toleration,
};
pub use dns::DnsConfig;
pub use env_vars::{runs_code, EnvConfig, EnvFamily, RUNS_CODE};
pub use feature::{FeatureConfig, NetworkConfig};
pub use filter_list::{FilterList, ListKind, ListedEntry};
pub use incoming::{
    ConcurrentSteal, HttpCondition, HttpFilterConfig, IncomingConfig, IncomingMode,
};
pub use outgoing::{OutgoingConfig, UdpReplies};
pub use target::{NetnsTarget, Target, TargetConfig};

pub(crate) use env_vars::split_patterns;
pub(crate) use incoming::{check_method, check_pattern};

use crate::decode::{ignored, ignored_unless, is_false, is_true, key, Decoder, KeySpec, Value};
use crate::document::{self, Format, LineIndex, NodeKind};
use crate::error::{ConfigError, Diagnostic, Origin, Warning};

/// The whole configuration, with defaults filled in.
///
/// ```json
/// {
///   "target": "deployment/uwu-app",
///   "feature": {
///     "network": {
///       "outgoing": { "filter": { "local": ["messages-db"] } }
///     }
///   }
/// }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Config {
    /// `target`: see [`TargetConfig`].
    pub target: TargetConfig,
    /// `agent`: see [`AgentConfig`].
    pub agent: AgentConfig,
    /// `feature`: see [`FeatureConfig`].
    pub feature: FeatureConfig,
    /// `kubeconfig`: path of the kubeconfig file; default: `KUBECONFIG`, then
    /// `~/.kube/config`, then the in-cluster configuration. Environment:
    /// `SCTRACE_KUBECONFIG`, `MIRRORD_KUBECONFIG`.
    pub kubeconfig: Option<String>,
    /// `kube_context`: kubeconfig context to use; default: its current context.
    /// Environment: `SCTRACE_KUBE_CONTEXT`, `MIRRORD_KUBE_CONTEXT`.
    pub kube_context: Option<String>,
    /// `accept_invalid_certificates`: accept a Kubernetes API server certificate that does
    /// not verify (e.g. self-signed); default: what the kubeconfig says. Environment:
    /// `SCTRACE_ACCEPT_INVALID_CERTIFICATES`, `MIRRORD_ACCEPT_INVALID_CERTIFICATES`.
    pub accept_invalid_certificates: Option<bool>,
    /// Where each value that was set came from, by key path (for messages about settings
    /// that conflict).
    #[serde(skip)]
    origins: Origins,
}

/// A config and the warnings found while reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Keys sctrace ignores or settings it adjusts, to show the user before the program
    /// starts.
    pub warnings: Vec<Warning>,
}

#[derive(Clone, Debug, Default)]
struct Origins {
    /// Name of the config file, when there is one.
    file: Option<String>,
    by_key: BTreeMap<String, Origin>,
}

/// Where values came from does not make two configs different.
impl PartialEq for Origins {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Origins {}

const ROOT_KEYS: &[KeySpec] = &[
    key("target"),
    key("agent"),
    key("feature"),
    key("kubeconfig"),
    key("kube_context"),
    key("accept_invalid_certificates"),
    ignored_unless(
        "operator",
        "ignored: sctrace works without the mirrord operator",
        is_false,
    ),
    ignored_unless(
        "multi_cluster",
        "ignored: multi-cluster sessions need the mirrord operator",
        is_false,
    ),
    ignored_unless(
        "api",
        "ignored: sctrace has no session monitor socket; its events go where --events says",
        is_false,
    ),
    ignored(
        "profile",
        "ignored: mirrord profiles live in the mirrord operator",
    ),
    ignored(
        "sip_binaries",
        "ignored: macOS SIP does not apply; sctrace runs on Linux",
    ),
    ignored_unless(
        "skip_build_tools",
        "ignored: sctrace intercepts every process the app starts, build tools included",
        is_false,
    ),
    ignored(
        "skip_extra_build_tools",
        "ignored: sctrace intercepts every process the app starts",
    ),
    ignored(
        "skip_processes",
        "ignored: sctrace intercepts every process the app starts",
    ),
    ignored(
        "skip_sip",
        "ignored: macOS SIP does not apply; sctrace runs on Linux",
    ),
    ignored_unless("telemetry", "ignored: sctrace sends no telemetry", is_false),
    ignored(
        "internal_proxy",
        "ignored: sctrace has no internal proxy; the supervisor relays traffic itself",
    ),
    ignored("external_proxy", "ignored: sctrace has no external proxy"),
    ignored_unless(
        "use_proxy",
        "ignored: sctrace leaves HTTP_PROXY and HTTPS_PROXY as they are",
        is_true,
    ),
    ignored(
        "experimental",
        "ignored: mirrord's experimental switches have no sctrace equivalent",
    ),
    ignored(
        "startup_retry",
        "ignored: sctrace does not retry connecting to the cluster",
    ),
    ignored("ci", "ignored: sctrace has no `mirrord ci` mode"),
    ignored(
        "key",
        "ignored: sctrace does not render templates, so there is no {{ key }} to fill",
    ),
    ignored(
        "traceparent",
        "ignored: sctrace sends no traces to an operator",
    ),
    ignored("baggage", "ignored: sctrace sends no traces to an operator"),
    ignored(
        "container",
        "ignored: sctrace does not run the app in a container",
    ),
];

impl Config {
    /// Overrides the target, as the `--target` option does; `text` is a target string
    /// (`pod/NAME`, `netns/NAME`, `pid/PID`, `targetless`, …).
    pub fn set_target(&mut self, text: &str) -> Result<(), ConfigError> {
        let origin = Origin::Flag {
            name: "--target".to_owned(),
        };
        let target = text
            .parse::<Target>()
            .map_err(|message| ConfigError::invalid(origin.clone(), "", message))?;
        self.target.path = Some(target);
        self.set_origin("target.path", origin);
        Ok(())
    }

    /// Checks the settings that depend on each other (steal needs a target, `ports` and
    /// `ignore_ports` exclude each other, …) on the final config, after environment
    /// variables and `--target` are applied: no target means targetless here.
    pub fn validate(&self) -> Result<Vec<Warning>, ConfigError> {
        self.check(true)
    }

    pub(crate) fn set_origin(&mut self, key: &str, origin: Origin) {
        self.origins.by_key.insert(key.to_owned(), origin);
    }

    /// Where the value at `key` (or, failing that, its nearest parent) came from.
    pub(crate) fn origin(&self, key: &str) -> Origin {
        let mut key = key;
        loop {
            if let Some(origin) = self.origins.by_key.get(key) {
                return origin.clone();
            }
            match key.rfind(['.', '[']) {
                Some(at) => key = &key[..at],
                None => break,
            }
        }
        Origin::File {
            name: self
                .origins
                .file
                .clone()
                .unwrap_or_else(|| "config".to_owned()),
            pos: None,
        }
    }

    /// Whether `key` (or a key under it) was set by the file, the environment or a flag.
    fn was_set(&self, key: &str) -> bool {
        self.origins.by_key.contains_key(key)
    }

    fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::invalid(self.origin(key), key, message)
    }

    fn warning(&self, key: &str, message: impl Into<String>) -> Warning {
        Warning::new(self.origin(key), key, message)
    }

    /// The cross-key checks. With `target_final` false (checking a file on its own), a
    /// missing target is not yet "targetless": `--target` or the environment may add one.
    pub(crate) fn check(&self, target_final: bool) -> Result<Vec<Warning>, ConfigError> {
        let mut warnings = Vec::new();
        let network = &self.feature.network;
        let incoming = &network.incoming;
        let targetless = match &self.target.path {
            Some(Target::Targetless) => true,
            None => target_final,
            Some(_) => false,
        };
        let local_target = self.target.path.as_ref().is_some_and(Target::is_local);

        if targetless && incoming.mode == IncomingMode::Steal {
            let key = if self.was_set("feature.network.incoming.mode") {
                "feature.network.incoming.mode"
            } else {
                "feature.network.incoming"
            };
            return Err(self.error(
                key,
                "\"steal\" needs a target: without one (targetless) there is no incoming traffic to steal; set \"target\" or use \"mirror\" or \"off\"",
            ));
        }
        if self.agent.ephemeral {
            if targetless {
                return Err(self.error(
                    "agent.ephemeral",
                    "an ephemeral agent joins the target's pod, so it needs a target; set \"target\" or remove \"ephemeral\"",
                ));
            }
            if local_target {
                warnings.push(self.warning(
                    "agent.ephemeral",
                    "ignored: for a local target sctrace starts the agent on this machine",
                ));
            }
        }
        if self.agent.tls.is_some() && !matches!(self.agent.address, Some(AgentAddress::Tcp { .. }))
        {
            warnings.push(self.warning(
                "agent.tls",
                "ignored: TLS is for an agent at a tcp: agent.address (a Unix socket is protected by its file's permissions, a Kubernetes agent by the API server's port-forward)",
            ));
        }
        if self.agent.namespace.is_some() {
            if self.agent.ephemeral && !local_target {
                warnings.push(self.warning(
                    "agent.namespace",
                    "ignored: an ephemeral agent runs in its target's pod and namespace",
                ));
            } else if targetless {
                warnings.push(self.warning(
                    "agent.namespace",
                    "ignored for a targetless run: the agent runs in target.namespace",
                ));
            }
        }
        if self.target.namespace.is_some() {
            if local_target {
                warnings.push(self.warning(
                    "target.namespace",
                    "ignored: netns and pid targets have no Kubernetes namespace",
                ));
            } else if target_final && self.target.path.is_none() {
                return Err(self.error(
                    "target.namespace",
                    "a namespace is set but no target: set target.path (use \"targetless\" to run without one in this namespace), or set agent.namespace to choose where the agent runs",
                ));
            }
        }
        if incoming.ports.is_some() && !incoming.ignore_ports.is_empty() {
            return Err(self.error(
                "feature.network.incoming.ignore_ports",
                "\"ports\" and \"ignore_ports\" cannot be used together: \"ports\" already leaves every other port local",
            ));
        }
        let filter_keys = incoming.http_filter.set_keys();
        if filter_keys.len() > 1 {
            return Err(self.error(
                "feature.network.incoming.http_filter",
                format!(
                    "{} cannot be used together: combine filters with all_of or any_of",
                    filter_keys.join(" and ")
                ),
            ));
        }
        if incoming.http_filter.is_set() && incoming.mode != IncomingMode::Steal {
            warnings.push(self.warning(
                "feature.network.incoming.http_filter",
                format!(
                    "ignored: the HTTP filter only applies with \"steal\" (the mode is \"{}\")",
                    match incoming.mode {
                        IncomingMode::Mirror => "mirror",
                        IncomingMode::Steal => "steal",
                        IncomingMode::Off => "off",
                    }
                ),
            ));
        }
        for (index, (local, remote)) in incoming.port_mapping.iter().enumerate() {
            if local == remote {
                warnings.push(self.warning(
                    &format!("feature.network.incoming.port_mapping[{index}]"),
                    format!("maps port {local} to itself; a mapping is only needed when the local port differs"),
                ));
            }
        }
        let env = &self.feature.env;
        if env.include.is_some() && env.exclude.is_some() {
            return Err(self.error(
                "feature.env.exclude",
                "\"include\" and \"exclude\" cannot be used together: \"include\" already leaves out every other variable",
            ));
        }
        let dns = &network.dns;
        if !dns.enabled && dns.filter.is_some() {
            warnings.push(self.warning(
                "feature.network.dns.filter",
                "ignored: feature.network.dns is disabled, so every name is resolved locally",
            ));
        }
        if let Some(list) = &network.outgoing.filter {
            let has_names = list.entries.iter().any(|e| e.entry.name().is_some());
            if list.kind == ListKind::Remote && has_names && !dns.enabled {
                warnings.push(self.warning(
                    "feature.network.outgoing.filter.remote",
                    "host names here are resolved locally because feature.network.dns is disabled; a connection matches only if the local address equals the remote one (enable feature.network.dns)",
                ));
            }
        }
        for conflict in conflicts::dns_conflicts(network) {
            warnings.push(self.warning(&conflict.key, conflict.message));
        }
        Ok(warnings)
    }
}

/// Parses and decodes, without the cross-key checks.
pub(crate) fn decode_text(text: &str, format: Format, origin: &str) -> Result<Loaded, ConfigError> {
    let root = document::parse(text, format).map_err(|error| {
        ConfigError::Syntax(Diagnostic {
            origin: Origin::File {
                name: origin.to_owned(),
                pos: error.pos,
            },
            key: String::new(),
            message: error.message,
        })
    })?;
    let mut d = Decoder::new(origin);
    if let Some(at) = text.find("{{") {
        let pos = LineIndex::new(text).pos(at);
        d.warn_at(
            pos,
            "",
            "sctrace does not render mirrord's templates: text between {{ and }} is used as written",
        );
    }
    let root_value = Value::root(&root);
    let mut config = Config::default();
    if !matches!(root.kind, NodeKind::Null) {
        let mut fields = d
            .object(&root_value, ROOT_KEYS)
            .map_err(|error| match error {
                ConfigError::Invalid(diagnostic) if diagnostic.key.is_empty() => {
                    ConfigError::Invalid(Diagnostic {
                        message: format!("the config must be an object: {}", diagnostic.message),
                        ..diagnostic
                    })
                }
                other => other,
            })?;
        if let Some(v) = fields.take("target") {
            config.target = target::decode(&mut d, &v)?;
        }
        if let Some(v) = fields.take("agent") {
            config.agent = agent::decode(&mut d, &v)?;
        }
        if let Some(v) = fields.take("feature") {
            config.feature = feature::decode(&mut d, &v)?;
        }
        if let Some(v) = fields.take("kubeconfig") {
            config.kubeconfig = Some(d.text(&v)?);
        }
        if let Some(v) = fields.take("kube_context") {
            config.kube_context = Some(d.text(&v)?);
        }
        if let Some(v) = fields.take("accept_invalid_certificates") {
            config.accept_invalid_certificates = Some(d.bool(&v)?);
        }
    }
    config.origins.file = Some(origin.to_owned());
    // Report in the order of the file, whatever order the keys were decoded in.
    d.warnings.sort_by_key(|warning| match &warning.0.origin {
        Origin::File { pos, .. } => *pos,
        _ => None,
    });
    for (key, pos) in &d.positions {
        config.origins.by_key.insert(key.clone(), d.origin(*pos));
    }
    Ok(Loaded {
        config,
        warnings: d.warnings,
    })
}
