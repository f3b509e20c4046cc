//! `feature.network.incoming`: what happens to connections that reach the target's ports
//! the app listens on (mirror them to the app, steal them, or neither).

use std::collections::BTreeSet;

use serde::Serialize;

use crate::decode::{ignored, index_path, key, Decoder, KeySpec, Value};
use crate::document::NodeKind;
use crate::error::ConfigError;

/// What to do with traffic arriving at the target on ports the app listens on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IncomingMode {
    /// `"mirror"` (default): the target keeps answering; the app gets a copy of each incoming
    /// connection's data and its replies are dropped.
    #[default]
    Mirror,
    /// `"steal"`: incoming connections (or, with an HTTP filter, matching requests) are
    /// delivered to the app instead of the target, and the app answers them.
    Steal,
    /// `"off"`: incoming traffic is left alone.
    Off,
}

impl IncomingMode {
    /// Reads `off`, `mirror`, `steal`; also `true` (steal) and `false` (off), the values
    /// mirrord's `MIRRORD_AGENT_TCP_STEAL_TRAFFIC` takes.
    pub(crate) fn from_env_text(text: &str) -> Option<Self> {
        match text {
            "true" => Some(Self::Steal),
            "false" => Some(Self::Off),
            other => Self::from_name(other),
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "mirror" => Some(Self::Mirror),
            "steal" => Some(Self::Steal),
            "off" => Some(Self::Off),
            _ => None,
        }
    }
}

/// When another session already steals the same port (mirrord calls this a port lock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConcurrentSteal {
    /// `"abort"` (default): refuse to start stealing, with a message naming the port.
    #[default]
    Abort,
    /// `"continue"`: go on without stealing that port.
    Continue,
    /// `"override"`: take the port over from the other session.
    Override,
}

impl ConcurrentSteal {
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name {
            "abort" => Some(Self::Abort),
            "continue" => Some(Self::Continue),
            "override" => Some(Self::Override),
            _ => None,
        }
    }
}

/// One condition of an `all_of` / `any_of` HTTP filter.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpCondition {
    /// `{"header": REGEX}`: a header, seen as `Name: value`, matches (case-insensitive).
    Header(String),
    /// `{"path": REGEX}`: the path, or the path with its query, matches (case-insensitive).
    Path(String),
    /// `{"method": "POST"}`: the request method is this one (case-insensitive).
    Method(String),
}

/// `feature.network.incoming.http_filter`: with `"steal"`, take only the HTTP requests that
/// match; the others reach the target's own server unchanged. Use one of `header_filter`,
/// `path_filter`, `method_filter`, `all_of`, `any_of`. Patterns are regular expressions in
/// the syntax mirrord documents (fancy-regex: look-around allowed), matched
/// case-insensitively.
///
/// ```json
/// { "header_filter": "^baggage: .*session=alice.*$" }
/// { "all_of": [ { "path": "^/api/" }, { "method": "POST" } ] }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HttpFilterConfig {
    /// `header_filter`: steal requests with a header (`Name: value`) matching this pattern.
    /// Environment: `SCTRACE_HTTP_HEADER_FILTER`, `MIRRORD_HTTP_HEADER_FILTER`.
    pub header_filter: Option<String>,
    /// `path_filter`: steal requests whose path (with or without the query) matches.
    /// Environment: `SCTRACE_HTTP_PATH_FILTER`, `MIRRORD_HTTP_PATH_FILTER`.
    pub path_filter: Option<String>,
    /// `method_filter`: steal requests with this method, e.g. `"POST"`.
    /// Environment: `SCTRACE_HTTP_METHOD_FILTER`, `MIRRORD_HTTP_METHOD_FILTER`.
    pub method_filter: Option<String>,
    /// `all_of`: steal requests that match every condition (not empty).
    pub all_of: Option<Vec<HttpCondition>>,
    /// `any_of`: steal requests that match at least one condition (not empty).
    pub any_of: Option<Vec<HttpCondition>>,
    /// `ports`: apply the filter on these ports only; other ports are stolen whole. Default:
    /// every port. Environment: `SCTRACE_HTTP_FILTER_PORTS`, `MIRRORD_HTTP_FILTER_PORTS`
    /// (`80;8080`).
    pub ports: Option<Vec<u16>>,
}

impl HttpFilterConfig {
    /// Whether any filter is set (otherwise whole connections are stolen).
    pub fn is_set(&self) -> bool {
        self.header_filter.is_some()
            || self.path_filter.is_some()
            || self.method_filter.is_some()
            || self.all_of.is_some()
            || self.any_of.is_some()
    }

    /// The keys set, for the "one filter at a time" check.
    pub(crate) fn set_keys(&self) -> Vec<&'static str> {
        [
            ("header_filter", self.header_filter.is_some()),
            ("path_filter", self.path_filter.is_some()),
            ("method_filter", self.method_filter.is_some()),
            ("all_of", self.all_of.is_some()),
            ("any_of", self.any_of.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// Incoming traffic: `"mirror"` (default), `"steal"`, `"off"`, `true` (mirror), `false`
/// (off), or an object:
///
/// ```json
/// {
///   "feature": {
///     "network": {
///       "incoming": {
///         "mode": "steal",
///         "http_filter": { "header_filter": "^x-user: alice$" },
///         "port_mapping": [[9333, 80]],
///         "ignore_ports": [9999],
///         "listen_ports": [[80, 4480]]
///       }
///     }
///   }
/// }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IncomingConfig {
    /// `mode`: `"mirror"` (default), `"steal"` or `"off"`. Environment:
    /// `SCTRACE_INCOMING_MODE`, `MIRRORD_AGENT_TCP_STEAL_TRAFFIC` (`true` means steal).
    pub mode: IncomingMode,
    /// `http_filter`: see [`HttpFilterConfig`]. Only used with `"steal"`.
    pub http_filter: HttpFilterConfig,
    /// `port_mapping`: `[[local, remote], …]` — the app listens on `local`, the traffic comes
    /// from the target's port `remote` (e.g. `[[9333, 80]]`).
    pub port_mapping: Vec<(u16, u16)>,
    /// `ignore_localhost`: when the app listens on a loopback address only, do not subscribe
    /// that port in the target. Default `false`.
    pub ignore_localhost: bool,
    /// `ignore_ports`: ports the app listens on that stay purely local (not mirrored or
    /// stolen), e.g. health or debug ports. Cannot be combined with `ports`.
    pub ignore_ports: BTreeSet<u16>,
    /// `ports`: only these ports are mirrored or stolen; the rest stay local. Default: every
    /// port the app listens on. Cannot be combined with `ignore_ports`.
    pub ports: Option<BTreeSet<u16>>,
    /// `listen_ports`: `[[port, local_port], …]` — when the app listens on `port`, really
    /// listen on `local_port` on this machine (traffic from the target's `port` arrives there),
    /// e.g. `[[80, 4480]]` for an app that cannot bind port 80 locally.
    pub listen_ports: Vec<(u16, u16)>,
    /// `on_concurrent_steal`: `"abort"` (default), `"continue"` or `"override"`, for a port
    /// that another session already steals. Environment: `SCTRACE_ON_CONCURRENT_STEAL`,
    /// `MIRRORD_OPERATOR_ON_CONCURRENT_STEAL`.
    pub on_concurrent_steal: ConcurrentSteal,
}

impl IncomingConfig {
    /// The configuration a bare mode (`"steal"`, `true`, …) stands for.
    pub fn with_mode(mode: IncomingMode) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }
}

const KEYS: &[KeySpec] = &[
    key("mode"),
    key("http_filter"),
    key("port_mapping"),
    key("ignore_localhost"),
    key("ignore_ports"),
    key("listen_ports"),
    key("on_concurrent_steal"),
    key("ports"),
    ignored(
        "https_delivery",
        "ignored: sctrace delivers stolen TLS connections to the app as they are",
    ),
    ignored(
        "tls_delivery",
        "ignored: sctrace delivers stolen TLS connections to the app as they are",
    ),
];

const HTTP_KEYS: &[KeySpec] = &[
    key("header_filter"),
    key("path_filter"),
    key("method_filter"),
    key("body_filter"),
    key("header_filter_jq"),
    key("all_of"),
    key("any_of"),
    key("ports"),
];

const MODES: &str = "\"off\", \"mirror\" or \"steal\"";

pub(crate) fn decode(d: &mut Decoder, value: &Value<'_>) -> Result<IncomingConfig, ConfigError> {
    match &value.node.kind {
        NodeKind::Bool(true) => Ok(IncomingConfig::with_mode(IncomingMode::Mirror)),
        NodeKind::Bool(false) => Ok(IncomingConfig::with_mode(IncomingMode::Off)),
        NodeKind::Str(_) => Ok(IncomingConfig::with_mode(mode(d, value)?)),
        NodeKind::Map(_) => {
            let mut fields = d.object(value, KEYS)?;
            let mut config = IncomingConfig::default();
            if let Some(v) = fields.take("mode") {
                config.mode = mode(d, &v)?;
            }
            if let Some(v) = fields.take("http_filter") {
                config.http_filter = http_filter(d, &v)?;
            }
            if let Some(v) = fields.take("port_mapping") {
                config.port_mapping = port_pairs(d, &v, "local", "remote")?;
            }
            if let Some(v) = fields.take("ignore_localhost") {
                config.ignore_localhost = d.bool(&v)?;
            }
            if let Some(v) = fields.take("ignore_ports") {
                config.ignore_ports = port_list(d, &v)?.into_iter().collect();
            }
            if let Some(v) = fields.take("listen_ports") {
                config.listen_ports = port_pairs(d, &v, "target", "local")?;
            }
            if let Some(v) = fields.take("on_concurrent_steal") {
                let name = d
                    .string(&v)
                    .map_err(|_| d.expected(&v, "\"abort\", \"continue\" or \"override\""))?;
                config.on_concurrent_steal = ConcurrentSteal::from_name(&name)
                    .ok_or_else(|| d.expected(&v, "\"abort\", \"continue\" or \"override\""))?;
            }
            if let Some(v) = fields.take("ports") {
                config.ports = Some(port_list(d, &v)?.into_iter().collect());
            }
            Ok(config)
        }
        _ => Err(d.expected(value, &format!("{MODES}, true, false or an object"))),
    }
}

fn mode(d: &Decoder, value: &Value<'_>) -> Result<IncomingMode, ConfigError> {
    match &value.node.kind {
        NodeKind::Str(name) => {
            IncomingMode::from_name(name).ok_or_else(|| d.expected(value, MODES))
        }
        _ => Err(d.expected(value, MODES)),
    }
}

const PORT: &str = "a port number (0-65535)";

pub(crate) fn port(d: &Decoder, value: &Value<'_>) -> Result<u16, ConfigError> {
    d.int::<u16>(value, PORT)
}

fn port_list(d: &Decoder, value: &Value<'_>) -> Result<Vec<u16>, ConfigError> {
    d.list(value, "a list of port numbers")?
        .iter()
        .map(|item| port(d, item))
        .collect()
}

/// `[[a, b], …]` with no port repeated on either side.
fn port_pairs(
    d: &Decoder,
    value: &Value<'_>,
    left: &str,
    right: &str,
) -> Result<Vec<(u16, u16)>, ConfigError> {
    let what = format!("a list of [{left}, {right}] port pairs");
    let mut pairs: Vec<(u16, u16)> = Vec::new();
    for item in d.list(value, &what)? {
        let NodeKind::Seq(ports) = &item.node.kind else {
            return Err(d.expected(&item, &format!("a [{left}, {right}] port pair")));
        };
        let [a, b] = ports.as_slice() else {
            return Err(d.error(
                &item,
                format!(
                    "expected a [{left}, {right}] port pair, found a list of {}",
                    ports.len()
                ),
            ));
        };
        let a = port(
            d,
            &Value {
                node: a,
                path: index_path(&item.path, 0),
            },
        )?;
        let b = port(
            d,
            &Value {
                node: b,
                path: index_path(&item.path, 1),
            },
        )?;
        if pairs.iter().any(|(x, _)| *x == a) {
            return Err(d.error(&item, format!("{left} port {a} appears in two pairs")));
        }
        if pairs.iter().any(|(_, y)| *y == b) {
            return Err(d.error(&item, format!("{right} port {b} appears in two pairs")));
        }
        pairs.push((a, b));
    }
    Ok(pairs)
}

const UNSUPPORTED_FILTER: &str = "not supported by sctrace (it filters on headers, path and method); remove it, or use header_filter, path_filter, method_filter, all_of or any_of";

fn http_filter(d: &mut Decoder, value: &Value<'_>) -> Result<HttpFilterConfig, ConfigError> {
    match &value.node.kind {
        // mirrord accepts `true`/`false` here: both mean "no filter".
        NodeKind::Bool(_) => return Ok(HttpFilterConfig::default()),
        NodeKind::Map(_) => {}
        _ => return Err(d.expected(value, "an object")),
    }
    let mut fields = d.object(value, HTTP_KEYS)?;
    for unsupported in ["body_filter", "header_filter_jq"] {
        if let Some(v) = fields.take(unsupported) {
            return Err(d.error(&v, UNSUPPORTED_FILTER));
        }
    }
    let mut config = HttpFilterConfig::default();
    if let Some(v) = fields.take("header_filter") {
        config.header_filter = Some(pattern(d, &v)?);
    }
    if let Some(v) = fields.take("path_filter") {
        config.path_filter = Some(pattern(d, &v)?);
    }
    if let Some(v) = fields.take("method_filter") {
        config.method_filter = Some(method(d, &v)?);
    }
    if let Some(v) = fields.take("all_of") {
        config.all_of = Some(conditions(d, &v)?);
    }
    if let Some(v) = fields.take("any_of") {
        config.any_of = Some(conditions(d, &v)?);
    }
    if let Some(v) = fields.take("ports") {
        let ports = d
            .one_or_list(&v)
            .iter()
            .map(|item| port(d, item))
            .collect::<Result<Vec<_>, _>>()?;
        config.ports = Some(ports);
    }
    let set = config.set_keys();
    if set.len() > 1 {
        return Err(d.error(
            value,
            format!(
                "{} cannot be used together: combine filters with all_of or any_of",
                set.join(" and ")
            ),
        ));
    }
    Ok(config)
}

/// Checks a filter regex now, so a typo is reported before the program starts.
pub(crate) fn check_pattern(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("expected a regular expression, found \"\"".to_owned());
    }
    fancy_regex::Regex::new(text)
        .map(|_| ())
        .map_err(|e| format!("invalid regular expression: {e}"))
}

/// Checks an HTTP method name (an RFC 9110 token).
pub(crate) fn check_method(text: &str) -> Result<(), String> {
    let token = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
    if token {
        Ok(())
    } else {
        Err(format!("{text:?} is not an HTTP method name"))
    }
}

fn pattern(d: &Decoder, value: &Value<'_>) -> Result<String, ConfigError> {
    let text = d.string(value)?;
    check_pattern(&text).map_err(|message| d.error(value, message))?;
    Ok(text)
}

fn method(d: &Decoder, value: &Value<'_>) -> Result<String, ConfigError> {
    let text = d.string(value)?;
    check_method(&text).map_err(|message| d.error(value, message))?;
    Ok(text)
}

fn conditions(d: &mut Decoder, value: &Value<'_>) -> Result<Vec<HttpCondition>, ConfigError> {
    let items = d.list(value, "a list of filters")?;
    if items.is_empty() {
        return Err(d.error(value, "the list is empty: give at least one filter"));
    }
    let mut conditions = Vec::with_capacity(items.len());
    for item in items {
        let mut fields = d.object(
            &item,
            &[
                key("header"),
                key("path"),
                key("method"),
                key("body"),
                key("query"),
                key("matches"),
            ],
        )?;
        let header = fields.take("header");
        let path = fields.take("path");
        let method_value = fields.take("method");
        if let Some(v) = fields.take("body").or_else(|| fields.take("query")) {
            return Err(d.error(&v, UNSUPPORTED_FILTER));
        }
        let condition = match (header, path, method_value) {
            (Some(v), None, None) => HttpCondition::Header(pattern(d, &v)?),
            (None, Some(v), None) => HttpCondition::Path(pattern(d, &v)?),
            (None, None, Some(v)) => HttpCondition::Method(method(d, &v)?),
            _ => {
                return Err(d.error(
                    &item,
                    "expected one of {\"header\": …}, {\"path\": …} or {\"method\": …}",
                ))
            }
        };
        conditions.push(condition);
    }
    Ok(conditions)
}
