//! `target`: the pod, workload, network namespace or process whose network the app uses.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use crate::decode::{key, Decoder, KeySpec, Value};
use crate::document::NodeKind;
use crate::error::ConfigError;

/// A network namespace given by name or by path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NetnsTarget {
    /// `netns/NAME`: a namespace made with `ip netns add NAME` (`/run/netns/NAME`).
    Named(String),
    /// `netns//ABSOLUTE/PATH`: any namespace file, e.g. `/proc/1234/ns/net` or a bind mount.
    Path(PathBuf),
}

/// What the app's network is taken from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// `targetless`: an agent of its own in the cluster, with no pod to impersonate.
    Targetless,
    /// `pod/NAME[/container/CONTAINER]`.
    Pod {
        /// Pod name.
        name: String,
        /// Container; default: the one sctrace picks (the first that is not a known sidecar).
        container: Option<String>,
    },
    /// `deployment/NAME[/container/CONTAINER]` (also `deploy/…`): one of its pods.
    Deployment {
        /// Deployment name.
        name: String,
        /// Container in the chosen pod.
        container: Option<String>,
    },
    /// `statefulset/NAME[/container/CONTAINER]`: one of its pods.
    StatefulSet {
        /// StatefulSet name.
        name: String,
        /// Container in the chosen pod.
        container: Option<String>,
    },
    /// `netns/NAME` or `netns//PATH` (sctrace only): a network namespace on this machine.
    Netns(NetnsTarget),
    /// `pid/PID` (sctrace only): the network namespace of a process on this machine.
    Pid(u32),
}

/// The kinds mirrord accepts that sctrace cannot reach.
const UNSUPPORTED_KINDS: &[&str] = &[
    "rollout",
    "job",
    "cronjob",
    "service",
    "replicaset",
    "label",
    "cron_job",
    "replica_set",
    "labels",
];

const FORMS: &str = "targetless, pod/NAME[/container/C], deployment/NAME[/container/C], statefulset/NAME[/container/C], netns/NAME, netns//PATH or pid/PID";

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "targetless" {
            return Ok(Self::Targetless);
        }
        let Some((kind, rest)) = text.split_once('/') else {
            return Err(format!(
                "{text:?} is not a target; write it as {FORMS} (did you mean \"pod/{text}\"?)"
            ));
        };
        match kind {
            "pod" | "deployment" | "deploy" | "statefulset" => {
                let (name, container) = workload(text, rest)?;
                Ok(match kind {
                    "pod" => Self::Pod { name, container },
                    "statefulset" => Self::StatefulSet { name, container },
                    _ => Self::Deployment { name, container },
                })
            }
            "netns" => {
                if rest.starts_with('/') {
                    if rest.len() == 1 {
                        return Err("netns/ needs a namespace name or an absolute path".into());
                    }
                    Ok(Self::Netns(NetnsTarget::Path(PathBuf::from(rest))))
                } else if rest.is_empty() || rest.contains('/') || rest == "." || rest == ".." {
                    Err(format!(
                        "{text:?}: a namespace name cannot be empty or contain '/'; for a path write netns//ABSOLUTE/PATH"
                    ))
                } else {
                    Ok(Self::Netns(NetnsTarget::Named(rest.to_owned())))
                }
            }
            "pid" => match rest.parse::<u32>() {
                Ok(pid) if pid > 0 => Ok(Self::Pid(pid)),
                _ => Err(format!("{text:?}: expected pid/ and a process id, e.g. pid/1234")),
            },
            kind if UNSUPPORTED_KINDS.contains(&kind) => Err(format!(
                "{kind} targets are not supported by sctrace (they need the mirrord operator); use {FORMS}"
            )),
            _ => Err(format!("unknown target kind {kind:?}; write the target as {FORMS}")),
        }
    }
}

fn workload(text: &str, rest: &str) -> Result<(String, Option<String>), String> {
    let parts: Vec<&str> = rest.split('/').collect();
    let valid = |s: &str| !s.is_empty();
    match parts.as_slice() {
        [name] if valid(name) => Ok(((*name).to_owned(), None)),
        [name, "container", container] if valid(name) && valid(container) => {
            Ok(((*name).to_owned(), Some((*container).to_owned())))
        }
        _ => Err(format!(
            "{text:?} is not a valid target; write KIND/NAME or KIND/NAME/container/CONTAINER"
        )),
    }
}

impl Target {
    /// Whether the target is on this machine (no Kubernetes involved).
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Netns(_) | Self::Pid(_))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let workload =
            |f: &mut fmt::Formatter<'_>, kind: &str, name: &str, container: &Option<String>| {
                write!(f, "{kind}/{name}")?;
                if let Some(container) = container {
                    write!(f, "/container/{container}")?;
                }
                Ok(())
            };
        match self {
            Self::Targetless => f.write_str("targetless"),
            Self::Pod { name, container } => workload(f, "pod", name, container),
            Self::Deployment { name, container } => workload(f, "deployment", name, container),
            Self::StatefulSet { name, container } => workload(f, "statefulset", name, container),
            Self::Netns(NetnsTarget::Named(name)) => write!(f, "netns/{name}"),
            Self::Netns(NetnsTarget::Path(path)) => write!(f, "netns/{}", path.display()),
            Self::Pid(pid) => write!(f, "pid/{pid}"),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `target`: what the app's network (and, with `feature.env`, environment) comes from.
///
/// A string: `"pod/NAME[/container/C]"`, `"deployment/NAME[/container/C]"`,
/// `"statefulset/NAME[/container/C]"`, `"targetless"`, or, on this machine,
/// `"netns/NAME"` (a namespace from `ip netns add`), `"netns//ABSOLUTE/PATH"` (any namespace
/// file, e.g. `"netns//proc/1234/ns/net"`), `"pid/PID"` (that process's namespace).
///
/// Or an object with `path` (the string above, or an object such as
/// `{"pod": "NAME", "container": "C"}`) and `namespace` (the Kubernetes namespace):
///
/// ```json
/// { "target": { "path": "deployment/uwu-app", "namespace": "demo" } }
/// ```
///
/// No target means targetless. Environment: `SCTRACE_TARGET`, `MIRRORD_IMPERSONATED_TARGET`,
/// `SCTRACE_TARGET_NAMESPACE`, `MIRRORD_TARGET_NAMESPACE`; the `--target` option overrides all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TargetConfig {
    /// `target.path`; `None`: targetless.
    pub path: Option<Target>,
    /// `target.namespace`: the Kubernetes namespace of the target (for targetless: where the
    /// agent runs). Default: the kubeconfig context's namespace.
    pub namespace: Option<String>,
}

const OBJECT_KEYS: &[KeySpec] = &[key("path"), key("namespace")];

const PATH_KEYS: &[KeySpec] = &[
    key("pod"),
    key("deployment"),
    key("stateful_set"),
    key("container"),
    key("netns"),
    key("pid"),
    key("rollout"),
    key("job"),
    key("cron_job"),
    key("service"),
    key("replica_set"),
    key("labels"),
];

pub(crate) fn decode(d: &mut Decoder, value: &Value<'_>) -> Result<TargetConfig, ConfigError> {
    match &value.node.kind {
        NodeKind::Str(_) => Ok(TargetConfig {
            path: Some(path(d, value)?),
            namespace: None,
        }),
        NodeKind::Map(entries)
            if entries
                .iter()
                .any(|(k, _)| k.name == "path" || k.name == "namespace") =>
        {
            let mut fields = d.object(value, OBJECT_KEYS)?;
            let path = match fields.take("path") {
                Some(v) => Some(path(d, &v)?),
                None => None,
            };
            let namespace = match fields.take("namespace") {
                Some(v) => Some(d.text(&v)?),
                None => None,
            };
            Ok(TargetConfig { path, namespace })
        }
        NodeKind::Map(_) => Ok(TargetConfig {
            path: Some(path(d, value)?),
            namespace: None,
        }),
        _ => Err(d.expected(value, "a target string such as \"pod/NAME\" or an object")),
    }
}

/// `target.path`: a string, or `{"pod": NAME, "container": C}` and the like.
fn path(d: &mut Decoder, value: &Value<'_>) -> Result<Target, ConfigError> {
    if let NodeKind::Str(text) = &value.node.kind {
        return text
            .parse()
            .map_err(|message: String| d.error(value, message));
    }
    if !matches!(value.node.kind, NodeKind::Map(_)) {
        return Err(d.expected(value, "a target string such as \"pod/NAME\" or an object"));
    }
    let mut fields = d.object(value, PATH_KEYS)?;
    let container = match fields.take("container") {
        Some(v) => Some(d.text(&v)?),
        None => None,
    };
    let mut found = Vec::new();
    for kind in ["pod", "deployment", "stateful_set", "netns", "pid"] {
        if let Some(v) = fields.take(kind) {
            found.push((kind, v));
        }
    }
    for kind in [
        "rollout",
        "job",
        "cron_job",
        "service",
        "replica_set",
        "labels",
    ] {
        if let Some(v) = fields.take(kind) {
            return Err(d.error(
                &v,
                format!("{kind} targets are not supported by sctrace (they need the mirrord operator); use {FORMS}"),
            ));
        }
    }
    let (kind, v) =
        match found.len() {
            1 => found.swap_remove(0),
            0 => return Err(d.error(
                value,
                "expected one of \"pod\", \"deployment\", \"stateful_set\", \"netns\" or \"pid\"",
            )),
            _ => return Err(d.error(value, "give only one target kind")),
        };
    if matches!(kind, "pid" | "netns") && container.is_some() {
        return Err(d.error(value, "\"container\" applies to Kubernetes targets only"));
    }
    let target = match kind {
        "pid" => {
            let pid = d.int::<u32>(&v, "a process id")?;
            if pid == 0 {
                return Err(d.expected(&v, "a process id"));
            }
            Target::Pid(pid)
        }
        "netns" => {
            let text = d.text(&v)?;
            format!("netns/{text}")
                .parse()
                .map_err(|message: String| d.error(&v, message))?
        }
        _ => {
            let name = d.text(&v)?;
            match kind {
                "pod" => Target::Pod { name, container },
                "deployment" => Target::Deployment { name, container },
                _ => Target::StatefulSet { name, container },
            }
        }
    };
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_strings() {
        let parse = |s: &str| s.parse::<Target>();
        assert_eq!(parse("targetless"), Ok(Target::Targetless));
        assert_eq!(
            parse("pod/uwu-app/container/app"),
            Ok(Target::Pod {
                name: "uwu-app".into(),
                container: Some("app".into())
            })
        );
        assert_eq!(
            parse("deploy/uwu"),
            Ok(Target::Deployment {
                name: "uwu".into(),
                container: None
            })
        );
        assert_eq!(
            parse("netns/cluster"),
            Ok(Target::Netns(NetnsTarget::Named("cluster".into())))
        );
        assert_eq!(
            parse("netns//proc/42/ns/net"),
            Ok(Target::Netns(NetnsTarget::Path("/proc/42/ns/net".into())))
        );
        assert_eq!(parse("pid/42"), Ok(Target::Pid(42)));
        for text in [
            "targetless",
            "pod/a/container/b",
            "statefulset/s",
            "netns/x",
            "netns//run/netns/x",
            "pid/7",
        ] {
            assert_eq!(parse(text).map(|t| t.to_string()), Ok(text.to_owned()));
        }
        assert_eq!(
            parse("uwu-app"),
            Err(format!(
                "\"uwu-app\" is not a target; write it as {FORMS} (did you mean \"pod/uwu-app\"?)"
            ))
        );
        assert_eq!(
            parse("pod/a/b"),
            Err("\"pod/a/b\" is not a valid target; write KIND/NAME or KIND/NAME/container/CONTAINER".into())
        );
        assert_eq!(
            parse("pid/0"),
            Err("\"pid/0\": expected pid/ and a process id, e.g. pid/1234".into())
        );
        assert_eq!(
            parse("rollout/r"),
            Err(format!("rollout targets are not supported by sctrace (they need the mirrord operator); use {FORMS}"))
        );
        assert!(parse("netns/a/b").is_err());
        assert!(parse("netns/").is_err());
    }
}
