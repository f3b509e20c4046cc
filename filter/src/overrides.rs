//! Environment variables that override the config file: mirrord's `MIRRORD_*` variables for
//! the keys sctrace supports, and `SCTRACE_*` equivalents.
//!
//! Precedence, highest first: `--target` (for the target), `SCTRACE_*`, `MIRRORD_*`, the
//! config file, the defaults. An empty variable counts as unset.

use std::path::PathBuf;

use crate::config::{
    check_method, check_pattern, split_patterns, AgentAddress, AgentImage, ConcurrentSteal, Config,
    IncomingMode, Target,
};
use crate::error::{ConfigError, Origin};

type Apply = fn(&mut Config, &str) -> Result<(), String>;

/// One overridable setting.
struct EnvVar {
    sctrace: &'static str,
    mirrord: Option<&'static str>,
    key: &'static str,
    apply: Apply,
}

const fn var(
    sctrace: &'static str,
    mirrord: &'static str,
    key: &'static str,
    apply: Apply,
) -> EnvVar {
    EnvVar {
        sctrace,
        mirrord: Some(mirrord),
        key,
        apply,
    }
}

const fn own(sctrace: &'static str, key: &'static str, apply: Apply) -> EnvVar {
    EnvVar {
        sctrace,
        mirrord: None,
        key,
        apply,
    }
}

fn boolean(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("expected true or false, found {text:?}")),
    }
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("expected {what}, found {text:?}"))
}

fn text_value(text: &str) -> Result<String, String> {
    Ok(text.to_owned())
}

fn ports(text: &str) -> Result<Vec<u16>, String> {
    split_patterns(text)
        .iter()
        .map(|port| number(port, "port numbers separated by ';' (e.g. 80;8080)"))
        .collect()
}

/// Every variable, in the order applied. The image registry and tag come before the whole
/// image so that a whole image always wins.
const VARS: &[EnvVar] = &[
    var(
        "SCTRACE_TARGET",
        "MIRRORD_IMPERSONATED_TARGET",
        "target.path",
        |c, v| {
            c.target.path = Some(v.parse::<Target>()?);
            Ok(())
        },
    ),
    var(
        "SCTRACE_TARGET_NAMESPACE",
        "MIRRORD_TARGET_NAMESPACE",
        "target.namespace",
        |c, v| {
            c.target.namespace = Some(text_value(v)?);
            Ok(())
        },
    ),
    own("SCTRACE_AGENT_ADDRESS", "agent.address", |c, v| {
        c.agent.address = Some(v.parse::<AgentAddress>()?);
        Ok(())
    }),
    own("SCTRACE_AGENT_TOKEN_FILE", "agent.token_file", |c, v| {
        c.agent.token_file = Some(PathBuf::from(v));
        Ok(())
    }),
    var(
        "SCTRACE_AGENT_IMAGE_REGISTRY",
        "MIRRORD_AGENT_IMAGE_REGISTRY",
        "agent.image",
        |c, v| {
            c.agent.image = match std::mem::take(&mut c.agent.image) {
                AgentImage::Default => AgentImage::Parts {
                    registry: Some(v.to_owned()),
                    tag: None,
                },
                AgentImage::Parts {
                    registry: None,
                    tag,
                } => AgentImage::Parts {
                    registry: Some(v.to_owned()),
                    tag,
                },
                set => set,
            };
            Ok(())
        },
    ),
    var(
        "SCTRACE_AGENT_IMAGE_TAG",
        "MIRRORD_AGENT_IMAGE_TAG",
        "agent.image",
        |c, v| {
            c.agent.image = match std::mem::take(&mut c.agent.image) {
                AgentImage::Default => AgentImage::Parts {
                    registry: None,
                    tag: Some(v.to_owned()),
                },
                AgentImage::Parts {
                    registry,
                    tag: None,
                } => AgentImage::Parts {
                    registry,
                    tag: Some(v.to_owned()),
                },
                set => set,
            };
            Ok(())
        },
    ),
    var(
        "SCTRACE_AGENT_IMAGE",
        "MIRRORD_AGENT_IMAGE",
        "agent.image",
        |c, v| {
            c.agent.image = AgentImage::Full(v.to_owned());
            Ok(())
        },
    ),
    var(
        "SCTRACE_AGENT_IMAGE_PULL_POLICY",
        "MIRRORD_AGENT_IMAGE_PULL_POLICY",
        "agent.image_pull_policy",
        |c, v| {
            c.agent.image_pull_policy = v.to_owned();
            Ok(())
        },
    ),
    var(
        "SCTRACE_AGENT_LOG_LEVEL",
        "MIRRORD_AGENT_RUST_LOG",
        "agent.log_level",
        |c, v| {
            c.agent.log_level = v.to_owned();
            Ok(())
        },
    ),
    var(
        "SCTRACE_AGENT_JSON_LOG",
        "MIRRORD_AGENT_JSON_LOG",
        "agent.json_log",
        |c, v| {
            c.agent.json_log = boolean(v)?;
            Ok(())
        },
    ),
    var(
        "SCTRACE_AGENT_NAMESPACE",
        "MIRRORD_AGENT_NAMESPACE",
        "agent.namespace",
        |c, v| {
            c.agent.namespace = Some(v.to_owned());
            Ok(())
        },
    ),
    var(
        "SCTRACE_AGENT_TTL",
        "MIRRORD_AGENT_TTL",
        "agent.ttl",
        |c, v| {
            c.agent.ttl = number(v, "a number of seconds (0-65535)")?;
            Ok(())
        },
    ),
    var(
        "SCTRACE_AGENT_EPHEMERAL",
        "MIRRORD_EPHEMERAL_CONTAINER",
        "agent.ephemeral",
        |c, v| {
            c.agent.ephemeral = boolean(v)?;
            Ok(())
        },
    ),
    var(
        "SCTRACE_AGENT_STARTUP_TIMEOUT",
        "MIRRORD_AGENT_STARTUP_TIMEOUT",
        "agent.startup_timeout",
        |c, v| {
            c.agent.startup_timeout = number(v, "a number of seconds")?;
            Ok(())
        },
    ),
    var(
        "SCTRACE_AGENT_COMMUNICATION_TIMEOUT",
        "MIRRORD_AGENT_COMMUNICATION_TIMEOUT",
        "agent.communication_timeout",
        |c, v| {
            c.agent.communication_timeout = Some(number(v, "a number of seconds (0-65535)")?);
            Ok(())
        },
    ),
    var(
        "SCTRACE_AGENT_FLUSH_CONNECTIONS",
        "MIRRORD_AGENT_STEALER_FLUSH_CONNECTIONS",
        "agent.flush_connections",
        |c, v| {
            c.agent.flush_connections = boolean(v)?;
            Ok(())
        },
    ),
    var(
        "SCTRACE_AGENT_CLEAN_IPTABLES_ON_START",
        "MIRRORD_AGENT_CLEAN_IPTABLES_ON_START",
        "agent.clean_iptables_on_start",
        |c, v| {
            c.agent.clean_iptables_on_start = Some(boolean(v)?);
            Ok(())
        },
    ),
    var(
        "SCTRACE_TCP_OUTGOING",
        "MIRRORD_TCP_OUTGOING",
        "feature.network.outgoing.tcp",
        |c, v| {
            c.feature.network.outgoing.tcp = boolean(v)?;
            Ok(())
        },
    ),
    var(
        "SCTRACE_UDP_OUTGOING",
        "MIRRORD_UDP_OUTGOING",
        "feature.network.outgoing.udp",
        |c, v| {
            c.feature.network.outgoing.udp = boolean(v)?;
            Ok(())
        },
    ),
    var(
        "SCTRACE_REMOTE_DNS",
        "MIRRORD_REMOTE_DNS",
        "feature.network.dns.enabled",
        |c, v| {
            c.feature.network.dns.enabled = boolean(v)?;
            Ok(())
        },
    ),
    var(
        "SCTRACE_INCOMING_MODE",
        "MIRRORD_AGENT_TCP_STEAL_TRAFFIC",
        "feature.network.incoming.mode",
        |c, v| {
            c.feature.network.incoming.mode = IncomingMode::from_env_text(v).ok_or_else(|| {
                format!("expected \"off\", \"mirror\", \"steal\", true (steal) or false (off), found {v:?}")
            })?;
            Ok(())
        },
    ),
    var(
        "SCTRACE_ON_CONCURRENT_STEAL",
        "MIRRORD_OPERATOR_ON_CONCURRENT_STEAL",
        "feature.network.incoming.on_concurrent_steal",
        |c, v| {
            c.feature.network.incoming.on_concurrent_steal = ConcurrentSteal::from_name(v)
                .ok_or_else(|| {
                    format!("expected \"abort\", \"continue\" or \"override\", found {v:?}")
                })?;
            Ok(())
        },
    ),
    var(
        "SCTRACE_HTTP_HEADER_FILTER",
        "MIRRORD_HTTP_HEADER_FILTER",
        "feature.network.incoming.http_filter.header_filter",
        |c, v| {
            check_pattern(v)?;
            c.feature.network.incoming.http_filter.header_filter = Some(v.to_owned());
            Ok(())
        },
    ),
    var(
        "SCTRACE_HTTP_PATH_FILTER",
        "MIRRORD_HTTP_PATH_FILTER",
        "feature.network.incoming.http_filter.path_filter",
        |c, v| {
            check_pattern(v)?;
            c.feature.network.incoming.http_filter.path_filter = Some(v.to_owned());
            Ok(())
        },
    ),
    var(
        "SCTRACE_HTTP_METHOD_FILTER",
        "MIRRORD_HTTP_METHOD_FILTER",
        "feature.network.incoming.http_filter.method_filter",
        |c, v| {
            check_method(v)?;
            c.feature.network.incoming.http_filter.method_filter = Some(v.to_owned());
            Ok(())
        },
    ),
    var(
        "SCTRACE_HTTP_FILTER_PORTS",
        "MIRRORD_HTTP_FILTER_PORTS",
        "feature.network.incoming.http_filter.ports",
        |c, v| {
            c.feature.network.incoming.http_filter.ports = Some(ports(v)?);
            Ok(())
        },
    ),
    var(
        "SCTRACE_ENV_INCLUDE",
        "MIRRORD_OVERRIDE_ENV_VARS_INCLUDE",
        "feature.env.include",
        |c, v| {
            c.feature.env.include = Some(split_patterns(v));
            Ok(())
        },
    ),
    var(
        "SCTRACE_ENV_EXCLUDE",
        "MIRRORD_OVERRIDE_ENV_VARS_EXCLUDE",
        "feature.env.exclude",
        |c, v| {
            c.feature.env.exclude = Some(split_patterns(v));
            Ok(())
        },
    ),
    var(
        "SCTRACE_ENV_FILE",
        "MIRRORD_OVERRIDE_ENV_VARS_FILE",
        "feature.env.env_file",
        |c, v| {
            c.feature.env.env_file = Some(PathBuf::from(v));
            Ok(())
        },
    ),
    var(
        "SCTRACE_KUBECONFIG",
        "MIRRORD_KUBECONFIG",
        "kubeconfig",
        |c, v| {
            c.kubeconfig = Some(v.to_owned());
            Ok(())
        },
    ),
    var(
        "SCTRACE_KUBE_CONTEXT",
        "MIRRORD_KUBE_CONTEXT",
        "kube_context",
        |c, v| {
            c.kube_context = Some(v.to_owned());
            Ok(())
        },
    ),
    var(
        "SCTRACE_ACCEPT_INVALID_CERTIFICATES",
        "MIRRORD_ACCEPT_INVALID_CERTIFICATES",
        "accept_invalid_certificates",
        |c, v| {
            c.accept_invalid_certificates = Some(boolean(v)?);
            Ok(())
        },
    ),
];

/// The variables [`apply_env`] reads, as (sctrace name, mirrord name, key path), for
/// documentation and `--help` texts.
pub fn env_vars() -> impl Iterator<Item = (&'static str, Option<&'static str>, &'static str)> {
    VARS.iter().map(|v| (v.sctrace, v.mirrord, v.key))
}

/// Applies environment-variable overrides to `config`. `lookup` returns a variable's value
/// (pass `|name| std::env::var(name).ok()`); for each setting the `SCTRACE_*` variable wins
/// over the `MIRRORD_*` one, and both win over the file. Empty values count as unset.
pub fn apply_env(
    config: &mut Config,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let present = |name: &'static str| {
        lookup(name)
            .filter(|value| !value.is_empty())
            .map(|value| (name, value))
    };
    for var in VARS {
        let Some((name, value)) = present(var.sctrace).or_else(|| var.mirrord.and_then(present))
        else {
            continue;
        };
        let origin = Origin::Env {
            var: name.to_owned(),
        };
        (var.apply)(config, &value)
            .map_err(|message| ConfigError::invalid(origin.clone(), var.key, message))?;
        config.set_origin(var.key, origin);
    }
    Ok(())
}
