//! `agent`: how sctrace reaches or starts `sctrace-agent`, and the Kubernetes settings of
//! the agent pod or container.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use crate::decode::{ignored, ignored_unless, is_false, is_true, key, Decoder, KeySpec, Value};
use crate::document::NodeKind;
use crate::error::ConfigError;

/// Where an already running agent listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AgentAddress {
    /// `unix:/path/to/socket`
    Unix(PathBuf),
    /// `tcp:HOST:PORT`; HOST is a name, an IPv4 address or a bracketed IPv6 address.
    Tcp {
        /// Host name or address (IPv6 without the brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
}

impl FromStr for AgentAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const FORMS: &str = "write it as unix:/PATH or tcp:HOST:PORT";
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!(
                    "{text:?}: the socket path must be absolute; {FORMS}"
                ));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        let Some(rest) = text.strip_prefix("tcp:") else {
            return Err(format!("{text:?} is not an agent address; {FORMS}"));
        };
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("{text:?}: missing ']' after the IPv6 address"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("{text:?}: {host:?} is not an IPv6 address"));
            }
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| format!("{text:?}: missing :PORT; {FORMS}"))?;
            (host, port)
        } else {
            rest.rsplit_once(':')
                .ok_or_else(|| format!("{text:?}: missing :PORT; {FORMS}"))?
        };
        if host.is_empty() || host.contains(':') && !rest.starts_with('[') {
            return Err(format!(
                "{text:?}: the host is empty or an unbracketed IPv6 address; {FORMS}"
            ));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("{text:?}: {port:?} is not a port number (1-65535)"))?;
        Ok(Self::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for AgentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

impl Serialize for AgentAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `agent.tls` (sctrace only): how sctrace checks the certificate of an agent that serves
/// TLS at a `tcp:` address (`sctrace-agent --listen tcp:… --tls-cert FILE --tls-key FILE`).
/// One of `ca_file` or `cert_file`:
///
/// ```json
/// { "agent": { "address": "tcp:agent.example:7000", "token_file": "token",
///              "tls": { "cert_file": "agent.pem" } } }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentTls {
    /// Which certificates are trusted.
    pub trust: AgentTrust,
    /// `server_name`: with `ca_file`, the name the agent's certificate must carry; default:
    /// the host of `address`.
    pub server_name: Option<String>,
}

/// Which certificates sctrace trusts for the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentTrust {
    /// `ca_file`: a PEM file of the certificate authorities that may sign the agent's
    /// certificate; the certificate must be valid now and name the agent's host.
    Ca(PathBuf),
    /// `cert_file`: a PEM file holding the agent's own certificate. Exactly that certificate
    /// is trusted (pinned), whatever name, issuer or dates it carries.
    Pinned(PathBuf),
}

/// The agent's container image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentImage {
    /// Not set: sctrace's own agent image for this version.
    #[default]
    Default,
    /// `"registry/name:tag"` as given.
    Full(String),
    /// `{"registry": …, "tag": …}`; a missing part takes the default.
    Parts {
        /// Registry and repository, e.g. `registry.example.com/sctrace-agent`.
        registry: Option<String>,
        /// Tag, e.g. `0.1.0`.
        tag: Option<String>,
    },
}

impl AgentImage {
    /// The image reference to use, filling missing parts with the given defaults.
    pub fn resolve(&self, default_registry: &str, default_tag: &str) -> String {
        match self {
            Self::Default => format!("{default_registry}:{default_tag}"),
            Self::Full(image) => image.clone(),
            Self::Parts { registry, tag } => format!(
                "{}:{}",
                registry.as_deref().unwrap_or(default_registry),
                tag.as_deref().unwrap_or(default_tag)
            ),
        }
    }
}

/// A Kubernetes toleration for the agent pod (field names as in Kubernetes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Toleration {
    /// `key`: the taint key; none with `operator: Exists` tolerates every taint.
    pub key: Option<String>,
    /// `operator`: `Exists` or `Equal`.
    pub operator: Option<String>,
    /// `value`: the taint value, for `Equal`.
    pub value: Option<String>,
    /// `effect`: `NoSchedule`, `PreferNoSchedule` or `NoExecute`; none means all.
    pub effect: Option<String>,
    /// `tolerationSeconds`: for `NoExecute`, how long the pod stays after the taint appears.
    pub toleration_seconds: Option<i64>,
}

/// CPU and memory requests and limits of the agent container (Kubernetes quantities).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AgentResources {
    /// `requests`, e.g. `{"cpu": "1m", "memory": "1Mi"}`.
    pub requests: BTreeMap<String, String>,
    /// `limits`, e.g. `{"cpu": "1", "memory": "100Mi"}`.
    pub limits: BTreeMap<String, String>,
}

/// The DNS resolver settings the agent uses for the app's lookups.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AgentDnsConfig {
    /// `timeout`: seconds to wait for one answer; default: the target's `resolv.conf`.
    pub timeout: Option<u32>,
    /// `attempts`: tries per query; default: the target's `resolv.conf`.
    pub attempts: Option<u32>,
}

/// `agent`: how sctrace gets an agent, and how the agent pod looks in Kubernetes.
///
/// For a local target (`netns/…`, `pid/…`) sctrace starts `sctrace-agent` itself. With
/// `address`, sctrace connects to an agent that is already running and starts none (that
/// agent's own target applies). For Kubernetes targets sctrace creates the agent as mirrord
/// does: a Job pod on the target's node, or an ephemeral container in the target pod.
///
/// ```json
/// { "agent": { "address": "unix:/run/sctrace/agent.sock", "token_file": "/run/sctrace/token" } }
/// { "agent": { "namespace": "sctrace", "ttl": 30, "labels": { "team": "payments" } } }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentConfig {
    /// `address` (sctrace only): `unix:/PATH` or `tcp:HOST:PORT` of a running agent.
    /// Environment: `SCTRACE_AGENT_ADDRESS`.
    pub address: Option<AgentAddress>,
    /// `token_file` (sctrace only): file holding the session token the agent at `address`
    /// expects. Environment: `SCTRACE_AGENT_TOKEN_FILE`.
    pub token_file: Option<PathBuf>,
    /// `tls` (sctrace only): speak TLS to the agent at a `tcp:` `address`, trusting the
    /// certificate as this says ([`AgentTls`]). Without it a `tcp:` session is not
    /// encrypted.
    pub tls: Option<AgentTls>,
    /// `log_level`: the agent's log filter (`"info"`, `"debug"`, `"sctrace_agent=trace"`, …).
    /// Default `"info"`. Environment: `SCTRACE_AGENT_LOG_LEVEL`, `MIRRORD_AGENT_RUST_LOG`.
    pub log_level: String,
    /// `json_log`: the agent logs JSON lines instead of text. Default `false`.
    /// Environment: `SCTRACE_AGENT_JSON_LOG`, `MIRRORD_AGENT_JSON_LOG`.
    pub json_log: bool,
    /// `namespace`: where the agent Job runs; default: the target's namespace. Ignored for
    /// ephemeral agents. Environment: `SCTRACE_AGENT_NAMESPACE`, `MIRRORD_AGENT_NAMESPACE`.
    pub namespace: Option<String>,
    /// `image`: `"registry/name:tag"`, or `{"registry": …, "tag": …}`. Default: sctrace's agent
    /// image for this version. Environment: `SCTRACE_AGENT_IMAGE`, `MIRRORD_AGENT_IMAGE`
    /// (whole image, wins over the file), `MIRRORD_AGENT_IMAGE_REGISTRY` and
    /// `MIRRORD_AGENT_IMAGE_TAG` (fill parts the file leaves out).
    pub image: AgentImage,
    /// `image_pull_policy`: `"IfNotPresent"` (default), `"Always"` or `"Never"`.
    /// Environment: `SCTRACE_AGENT_IMAGE_PULL_POLICY`, `MIRRORD_AGENT_IMAGE_PULL_POLICY`.
    pub image_pull_policy: String,
    /// `image_pull_secrets`: `[{"name": SECRET}, …]` for a private registry.
    pub image_pull_secrets: Vec<String>,
    /// `ttl`: seconds the agent waits for its session to connect (and the Job is kept
    /// after the agent exits). Default `1`. Environment: `SCTRACE_AGENT_TTL`,
    /// `MIRRORD_AGENT_TTL`.
    pub ttl: u16,
    /// `ephemeral`: run the agent as an ephemeral container in the target pod instead of a
    /// Job pod on its node. Default `false`. Not possible targetless. Environment:
    /// `SCTRACE_AGENT_EPHEMERAL`, `MIRRORD_EPHEMERAL_CONTAINER`.
    pub ephemeral: bool,
    /// `communication_timeout`: seconds without traffic before the agent gives up on its
    /// session. Default: the agent's own. Environment: `SCTRACE_AGENT_COMMUNICATION_TIMEOUT`,
    /// `MIRRORD_AGENT_COMMUNICATION_TIMEOUT`.
    pub communication_timeout: Option<u16>,
    /// `startup_timeout`: seconds to wait for the agent to be ready. Default `60`.
    /// Environment: `SCTRACE_AGENT_STARTUP_TIMEOUT`, `MIRRORD_AGENT_STARTUP_TIMEOUT`.
    pub startup_timeout: u64,
    /// `privileged`: run the agent container privileged (some hardened nodes need it).
    /// Default `false`.
    pub privileged: bool,
    /// `disabled_capabilities`: Linux capabilities not to give the agent (it asks for
    /// `NET_ADMIN`, `SYS_PTRACE`, `SYS_ADMIN`).
    pub disabled_capabilities: Vec<String>,
    /// `tolerations`: the agent pod's tolerations; default: tolerate every taint
    /// (`[{"operator": "Exists"}]`). `[]` means none.
    pub tolerations: Option<Vec<Toleration>>,
    /// `resources`: CPU and memory requests and limits of the agent container.
    pub resources: Option<AgentResources>,
    /// `labels`: extra labels on the agent Job and pod.
    pub labels: BTreeMap<String, String>,
    /// `annotations`: extra annotations on the agent Job and pod.
    pub annotations: BTreeMap<String, String>,
    /// `node_selector`: node selector of a targetless agent's pod (a targeted agent always
    /// runs on its target's node).
    pub node_selector: BTreeMap<String, String>,
    /// `service_account`: service account of the agent pod.
    pub service_account: Option<String>,
    /// `priority_class`: priority class of the agent pod.
    pub priority_class: Option<String>,
    /// `nftables`: redirect stolen traffic with nftables (`true`) or iptables-legacy
    /// (`false`); default: detect what the target uses.
    pub nftables: Option<bool>,
    /// `clean_iptables_on_start`: remove redirect rules a previous agent left behind instead
    /// of refusing to start. Environment: `SCTRACE_AGENT_CLEAN_IPTABLES_ON_START`,
    /// `MIRRORD_AGENT_CLEAN_IPTABLES_ON_START`.
    pub clean_iptables_on_start: Option<bool>,
    /// `flush_connections`: when stealing starts, reset the target's connections that are
    /// already open so that new ones reach the app. Default `true`. Environment:
    /// `SCTRACE_AGENT_FLUSH_CONNECTIONS`, `MIRRORD_AGENT_STEALER_FLUSH_CONNECTIONS`.
    pub flush_connections: bool,
    /// `dns`: resolver timeout and attempts for the app's lookups in the target.
    pub dns: AgentDnsConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            address: None,
            token_file: None,
            tls: None,
            log_level: "info".to_owned(),
            json_log: false,
            namespace: None,
            image: AgentImage::Default,
            image_pull_policy: "IfNotPresent".to_owned(),
            image_pull_secrets: Vec::new(),
            ttl: 1,
            ephemeral: false,
            communication_timeout: None,
            startup_timeout: 60,
            privileged: false,
            disabled_capabilities: Vec::new(),
            tolerations: None,
            resources: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            node_selector: BTreeMap::new(),
            service_account: None,
            priority_class: None,
            nftables: None,
            clean_iptables_on_start: None,
            flush_connections: true,
            dns: AgentDnsConfig::default(),
        }
    }
}

const KEYS: &[KeySpec] = &[
    key("address"),
    key("token_file"),
    key("tls"),
    key("log_level"),
    key("json_log"),
    key("namespace"),
    key("image"),
    key("image_pull_policy"),
    key("image_pull_secrets"),
    key("ttl"),
    key("ephemeral"),
    key("communication_timeout"),
    key("startup_timeout"),
    key("privileged"),
    key("disabled_capabilities"),
    key("tolerations"),
    key("resources"),
    key("labels"),
    key("annotations"),
    key("node_selector"),
    key("service_account"),
    key("priority_class"),
    key("nftables"),
    key("clean_iptables_on_start"),
    key("flush_connections"),
    key("dns"),
    ignored_unless(
        "check_out_of_pods",
        "ignored: sctrace does not check the node's pod capacity before creating the agent",
        is_false,
    ),
    ignored(
        "external_ip_fix",
        "ignored: the sctrace agent passes connections it does not steal to their original address",
    ),
    ignored(
        "metrics",
        "ignored: the sctrace agent serves no Prometheus metrics",
    ),
    ignored_unless(
        "exclude_from_mesh",
        "ignored: sctrace does not change service mesh settings for the agent",
        is_false,
    ),
    ignored_unless(
        "inject_headers",
        "ignored: sctrace does not add headers to HTTP responses",
        is_false,
    ),
    ignored(
        "override_cache_control",
        "ignored: sctrace leaves the Cache-Control header of responses as they are",
    ),
    ignored(
        "max_body_buffer_size",
        "ignored: sctrace has no HTTP body filters, so it buffers no bodies",
    ),
    ignored(
        "max_body_buffer_timeout",
        "ignored: sctrace has no HTTP body filters, so it buffers no bodies",
    ),
    ignored(
        "http_detection_timeout",
        "ignored: the sctrace agent uses its own HTTP detection timeout",
    ),
    ignored(
        "security_context",
        "ignored: the agent pod gets sctrace's default security context",
    ),
    ignored_unless(
        "disable_mesh_sidecar_injection",
        "ignored: sctrace always asks service meshes not to inject sidecars into the agent pod",
        is_true,
    ),
    ignored("jaq_time_limit", "ignored: sctrace has no jq filters"),
];

fn opt_text(d: &Decoder, v: Option<Value<'_>>) -> Result<Option<String>, ConfigError> {
    v.map(|v| d.text(&v)).transpose()
}

fn opt_bool(d: &Decoder, v: Option<Value<'_>>) -> Result<Option<bool>, ConfigError> {
    v.map(|v| d.bool(&v)).transpose()
}

pub(crate) fn decode(d: &mut Decoder, value: &Value<'_>) -> Result<AgentConfig, ConfigError> {
    let mut fields = d.object(value, KEYS)?;
    let mut config = AgentConfig::default();
    if let Some(v) = fields.take("address") {
        let text = d.string(&v)?;
        config.address = Some(
            text.parse()
                .map_err(|message: String| d.error(&v, message))?,
        );
    }
    config.token_file = opt_text(d, fields.take("token_file"))?.map(PathBuf::from);
    if let Some(v) = fields.take("tls") {
        config.tls = Some(tls(d, &v)?);
    }
    if let Some(level) = opt_text(d, fields.take("log_level"))? {
        config.log_level = level;
    }
    if let Some(b) = opt_bool(d, fields.take("json_log"))? {
        config.json_log = b;
    }
    config.namespace = opt_text(d, fields.take("namespace"))?;
    if let Some(v) = fields.take("image") {
        config.image = image(d, &v)?;
    }
    if let Some(policy) = opt_text(d, fields.take("image_pull_policy"))? {
        config.image_pull_policy = policy;
    }
    if let Some(v) = fields.take("image_pull_secrets") {
        config.image_pull_secrets = pull_secrets(d, &v)?;
    }
    if let Some(v) = fields.take("ttl") {
        config.ttl = d.int(&v, "a number of seconds (0-65535)")?;
    }
    if let Some(b) = opt_bool(d, fields.take("ephemeral"))? {
        config.ephemeral = b;
    }
    if let Some(v) = fields.take("communication_timeout") {
        config.communication_timeout = Some(d.int(&v, "a number of seconds (0-65535)")?);
    }
    if let Some(v) = fields.take("startup_timeout") {
        config.startup_timeout = d.int(&v, "a number of seconds")?;
    }
    if let Some(b) = opt_bool(d, fields.take("privileged"))? {
        config.privileged = b;
    }
    if let Some(v) = fields.take("disabled_capabilities") {
        config.disabled_capabilities = d
            .list(&v, "a list of capability names")?
            .iter()
            .map(|item| d.text(item))
            .collect::<Result<_, _>>()?;
    }
    if let Some(v) = fields.take("tolerations") {
        config.tolerations = Some(
            d.list(&v, "a list of tolerations")?
                .iter()
                .map(|item| toleration(d, item))
                .collect::<Result<_, _>>()?,
        );
    }
    if let Some(v) = fields.take("resources") {
        config.resources = Some(resources(d, &v)?);
    }
    if let Some(v) = fields.take("labels") {
        config.labels = d.string_map(&v)?;
    }
    if let Some(v) = fields.take("annotations") {
        config.annotations = d.string_map(&v)?;
    }
    if let Some(v) = fields.take("node_selector") {
        config.node_selector = d.string_map(&v)?;
    }
    config.service_account = opt_text(d, fields.take("service_account"))?;
    config.priority_class = opt_text(d, fields.take("priority_class"))?;
    config.nftables = opt_bool(d, fields.take("nftables"))?;
    config.clean_iptables_on_start = opt_bool(d, fields.take("clean_iptables_on_start"))?;
    if let Some(b) = opt_bool(d, fields.take("flush_connections"))? {
        config.flush_connections = b;
    }
    if let Some(v) = fields.take("dns") {
        let mut dns = d.object(&v, &[key("timeout"), key("attempts")])?;
        if let Some(t) = dns.take("timeout") {
            config.dns.timeout = Some(d.int(&t, "a number of seconds")?);
        }
        if let Some(a) = dns.take("attempts") {
            config.dns.attempts = Some(d.int(&a, "a number of attempts")?);
        }
    }
    Ok(config)
}

fn tls(d: &mut Decoder, value: &Value<'_>) -> Result<AgentTls, ConfigError> {
    let mut fields = d.object(
        value,
        &[key("ca_file"), key("cert_file"), key("server_name")],
    )?;
    let ca = opt_text(d, fields.take("ca_file"))?;
    let pinned = opt_text(d, fields.take("cert_file"))?;
    let trust = match (ca, pinned) {
        (Some(ca), None) => AgentTrust::Ca(PathBuf::from(ca)),
        (None, Some(cert)) => AgentTrust::Pinned(PathBuf::from(cert)),
        (Some(_), Some(_)) => {
            return Err(d.error(
                value,
                "give either \"ca_file\" (the CA that signed the agent's certificate) or \"cert_file\" (the agent's own certificate), not both",
            ))
        }
        (None, None) => {
            return Err(d.error(
                value,
                "missing \"ca_file\" (the CA that signed the agent's certificate) or \"cert_file\" (the agent's own certificate)",
            ))
        }
    };
    Ok(AgentTls {
        trust,
        server_name: opt_text(d, fields.take("server_name"))?,
    })
}

fn image(d: &mut Decoder, value: &Value<'_>) -> Result<AgentImage, ConfigError> {
    match &value.node.kind {
        NodeKind::Str(_) => Ok(AgentImage::Full(d.text(value)?)),
        NodeKind::Map(_) => {
            let mut fields = d.object(value, &[key("registry"), key("tag")])?;
            Ok(AgentImage::Parts {
                registry: opt_text(d, fields.take("registry"))?,
                tag: opt_text(d, fields.take("tag"))?,
            })
        }
        _ => Err(d.expected(value, "an image name or {\"registry\": …, \"tag\": …}")),
    }
}

fn pull_secrets(d: &mut Decoder, value: &Value<'_>) -> Result<Vec<String>, ConfigError> {
    let mut names = Vec::new();
    for item in d.list(value, "a list of {\"name\": SECRET} objects")? {
        let mut fields = d.object(&item, &[key("name")])?;
        let name = fields
            .take("name")
            .ok_or_else(|| d.error(&item, "missing \"name\""))?;
        names.push(d.text(&name)?);
    }
    Ok(names)
}

fn toleration(d: &mut Decoder, value: &Value<'_>) -> Result<Toleration, ConfigError> {
    let mut fields = d.object(
        value,
        &[
            key("key"),
            key("operator"),
            key("value"),
            key("effect"),
            key("tolerationSeconds"),
        ],
    )?;
    Ok(Toleration {
        key: opt_text(d, fields.take("key"))?,
        operator: opt_text(d, fields.take("operator"))?,
        value: fields.take("value").map(|v| d.string(&v)).transpose()?,
        effect: opt_text(d, fields.take("effect"))?,
        toleration_seconds: fields
            .take("tolerationSeconds")
            .map(|v| d.int(&v, "a number of seconds"))
            .transpose()?,
    })
}

fn resources(d: &mut Decoder, value: &Value<'_>) -> Result<AgentResources, ConfigError> {
    let mut fields = d.object(
        value,
        &[
            key("requests"),
            key("limits"),
            ignored(
                "claims",
                "ignored: the agent container claims no dynamic resources",
            ),
        ],
    )?;
    let mut resources = AgentResources::default();
    if let Some(v) = fields.take("requests") {
        resources.requests = d.string_map(&v)?;
    }
    if let Some(v) = fields.take("limits") {
        resources.limits = d.string_map(&v)?;
    }
    Ok(resources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            "unix:/run/a.sock".parse(),
            Ok(AgentAddress::Unix("/run/a.sock".into()))
        );
        assert_eq!(
            "tcp:agent.local:7000".parse(),
            Ok(AgentAddress::Tcp {
                host: "agent.local".into(),
                port: 7000
            })
        );
        assert_eq!(
            "tcp:[fd00::2]:7000".parse(),
            Ok(AgentAddress::Tcp {
                host: "fd00::2".into(),
                port: 7000
            })
        );
        for text in [
            "unix:/run/a.sock",
            "tcp:198.18.0.1:7000",
            "tcp:[fd00::2]:7000",
        ] {
            assert_eq!(
                text.parse::<AgentAddress>().map(|a| a.to_string()),
                Ok(text.to_owned())
            );
        }
        assert_eq!(
            "unix:relative.sock".parse::<AgentAddress>(),
            Err("\"unix:relative.sock\": the socket path must be absolute; write it as unix:/PATH or tcp:HOST:PORT".into())
        );
        assert_eq!(
            "tcp:host".parse::<AgentAddress>(),
            Err("\"tcp:host\": missing :PORT; write it as unix:/PATH or tcp:HOST:PORT".into())
        );
        assert_eq!(
            "tcp:host:0".parse::<AgentAddress>(),
            Err("\"tcp:host:0\": \"0\" is not a port number (1-65535)".into())
        );
        assert!("tcp:fd00::1:80".parse::<AgentAddress>().is_err());
        assert!("http://x".parse::<AgentAddress>().is_err());
    }

    #[test]
    fn image_defaults() {
        assert_eq!(AgentImage::Default.resolve("r/agent", "1.0"), "r/agent:1.0");
        assert_eq!(
            AgentImage::Parts {
                registry: None,
                tag: Some("dev".into())
            }
            .resolve("r/agent", "1.0"),
            "r/agent:dev"
        );
        assert_eq!(AgentImage::Full("x/y:z".into()).resolve("r", "t"), "x/y:z");
    }
}
