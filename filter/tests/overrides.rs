//! Environment variables and `--target` over the config file.

use std::collections::HashMap;

use sctrace_filter::config::{AgentImage, IncomingMode, NetnsTarget, Target};
use sctrace_filter::{apply_env, parse_str, resolve, Config, Format};

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

fn config(text: &str) -> Config {
    parse_str(text, Format::Json, "mirrord.json")
        .unwrap_or_else(|e| panic!("{e}"))
        .config
}

#[test]
fn mirrord_variables_override_the_file() {
    let mut c = config(
        r#"{"feature": {"network": {"outgoing": {"tcp": true, "udp": true}, "dns": true}}}"#,
    );
    apply_env(
        &mut c,
        env(&[
            ("MIRRORD_TCP_OUTGOING", "false"),
            ("MIRRORD_UDP_OUTGOING", "FALSE"),
            ("MIRRORD_REMOTE_DNS", "0"),
            ("MIRRORD_AGENT_TCP_STEAL_TRAFFIC", "true"),
            ("MIRRORD_IMPERSONATED_TARGET", "pod/uwu-app/container/app"),
            ("MIRRORD_TARGET_NAMESPACE", "uwu"),
            ("MIRRORD_AGENT_TTL", "30"),
            ("MIRRORD_EPHEMERAL_CONTAINER", "true"),
            ("MIRRORD_OVERRIDE_ENV_VARS_INCLUDE", "A;B_*"),
            ("MIRRORD_HTTP_FILTER_PORTS", "80;8080"),
        ]),
    )
    .unwrap();
    let network = &c.feature.network;
    assert!(!network.outgoing.tcp);
    assert!(!network.outgoing.udp);
    assert!(!network.dns.enabled);
    assert_eq!(network.incoming.mode, IncomingMode::Steal);
    assert_eq!(
        c.target.path,
        Some(Target::Pod {
            name: "uwu-app".into(),
            container: Some("app".into())
        })
    );
    assert_eq!(c.target.namespace.as_deref(), Some("uwu"));
    assert_eq!(c.agent.ttl, 30);
    assert!(c.agent.ephemeral);
    assert_eq!(
        c.feature.env.include,
        Some(vec!["A".to_owned(), "B_*".to_owned()])
    );
    assert_eq!(network.incoming.http_filter.ports, Some(vec![80, 8080]));
}

#[test]
fn sctrace_variables_win_over_mirrord_ones() {
    let mut c = Config::default();
    apply_env(
        &mut c,
        env(&[
            ("MIRRORD_TCP_OUTGOING", "false"),
            ("SCTRACE_TCP_OUTGOING", "true"),
            ("MIRRORD_IMPERSONATED_TARGET", "pod/a"),
            ("SCTRACE_TARGET", "netns/cluster"),
            ("SCTRACE_AGENT_ADDRESS", "tcp:[fd00:5c::2]:7000"),
        ]),
    )
    .unwrap();
    assert!(c.feature.network.outgoing.tcp);
    assert_eq!(
        c.target.path,
        Some(Target::Netns(NetnsTarget::Named("cluster".into())))
    );
    assert_eq!(
        c.agent.address.map(|a| a.to_string()).as_deref(),
        Some("tcp:[fd00:5c::2]:7000")
    );
}

#[test]
fn empty_variables_count_as_unset() {
    let mut c = config(r#"{"target": "pod/a"}"#);
    apply_env(
        &mut c,
        env(&[
            ("MIRRORD_IMPERSONATED_TARGET", ""),
            ("SCTRACE_TCP_OUTGOING", ""),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.target.path,
        Some(Target::Pod {
            name: "a".into(),
            container: None
        })
    );
    assert!(c.feature.network.outgoing.tcp);
}

#[test]
fn agent_image_precedence_follows_mirrord() {
    // Whole image from the environment beats everything.
    let mut c = config(r#"{"agent": {"image": {"registry": "file/agent"}}}"#);
    apply_env(
        &mut c,
        env(&[
            ("MIRRORD_AGENT_IMAGE_TAG", "t"),
            ("MIRRORD_AGENT_IMAGE", "env/agent:1"),
        ]),
    )
    .unwrap();
    assert_eq!(c.agent.image, AgentImage::Full("env/agent:1".into()));
    // Registry and tag variables only fill parts the file leaves out.
    let mut c = config(r#"{"agent": {"image": {"registry": "file/agent"}}}"#);
    apply_env(
        &mut c,
        env(&[
            ("MIRRORD_AGENT_IMAGE_TAG", "t"),
            ("MIRRORD_AGENT_IMAGE_REGISTRY", "env/agent"),
        ]),
    )
    .unwrap();
    assert_eq!(c.agent.image.resolve("d", "v"), "file/agent:t");
    let mut c = config(r#"{"agent": {"image": "file/agent:1"}}"#);
    apply_env(&mut c, env(&[("MIRRORD_AGENT_IMAGE_TAG", "t")])).unwrap();
    assert_eq!(c.agent.image.resolve("d", "v"), "file/agent:1");
}

#[test]
fn bad_values_name_the_variable() {
    let mut c = Config::default();
    let error = apply_env(&mut c, env(&[("MIRRORD_TCP_OUTGOING", "yes")])).unwrap_err();
    assert_eq!(
        error.to_string(),
        "environment variable MIRRORD_TCP_OUTGOING: feature.network.outgoing.tcp: expected true or false, found \"yes\""
    );
    let error = apply_env(&mut c, env(&[("SCTRACE_TARGET", "uwu")])).unwrap_err();
    assert!(
        error.to_string().starts_with(
            "environment variable SCTRACE_TARGET: target.path: \"uwu\" is not a target"
        ),
        "{error}"
    );
    let error = apply_env(&mut c, env(&[("MIRRORD_AGENT_TTL", "-1")])).unwrap_err();
    assert_eq!(
        error.to_string(),
        "environment variable MIRRORD_AGENT_TTL: agent.ttl: expected a number of seconds (0-65535), found \"-1\""
    );
    let error = apply_env(&mut c, env(&[("MIRRORD_HTTP_PATH_FILTER", "(")])).unwrap_err();
    assert!(error.to_string().starts_with(
        "environment variable MIRRORD_HTTP_PATH_FILTER: feature.network.incoming.http_filter.path_filter: invalid regular expression"
    ));
}

#[test]
fn conflicts_created_by_overrides_name_their_source() {
    let dir = std::env::temp_dir().join(format!("sctrace-filter-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mirrord.json");
    std::fs::write(
        &path,
        "{\n  \"feature\": {\"network\": {\"incoming\": \"steal\"}}\n}\n",
    )
    .unwrap();

    // The file alone is fine: a target may still come from the environment or --target.
    assert!(sctrace_filter::load(&path).is_ok());
    // With a target from --target it runs.
    let loaded = resolve(Some(&path), env(&[]), Some("pod/uwu-app")).unwrap();
    assert_eq!(
        loaded.config.target.path.map(|t| t.to_string()).as_deref(),
        Some("pod/uwu-app")
    );
    // Without any target, steal is refused, pointing at the file.
    let error = resolve(Some(&path), env(&[]), None).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}:2:39: feature.network.incoming: \"steal\" needs a target: without one (targetless) there is no incoming traffic to steal; set \"target\" or use \"mirror\" or \"off\"",
            path.display()
        )
    );
    // Steal from the environment and targetless from --target: the environment is named.
    let error = resolve(
        None,
        env(&[("MIRRORD_AGENT_TCP_STEAL_TRAFFIC", "steal")]),
        Some("targetless"),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "environment variable MIRRORD_AGENT_TCP_STEAL_TRAFFIC: feature.network.incoming.mode: \"steal\" needs a target: without one (targetless) there is no incoming traffic to steal; set \"target\" or use \"mirror\" or \"off\""
    );
    // A bad --target.
    let error = resolve(None, env(&[]), Some("pod/")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "--target: \"pod/\" is not a valid target; write KIND/NAME or KIND/NAME/container/CONTAINER"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_variable_is_listed() {
    let vars: Vec<_> = sctrace_filter::env_vars().collect();
    assert!(vars.contains(&(
        "SCTRACE_TCP_OUTGOING",
        Some("MIRRORD_TCP_OUTGOING"),
        "feature.network.outgoing.tcp"
    )));
    assert!(vars.iter().all(|(s, _, _)| s.starts_with("SCTRACE_")));
    assert!(vars
        .iter()
        .all(|(_, m, _)| m.is_none_or(|m| m.starts_with("MIRRORD_"))));
}
