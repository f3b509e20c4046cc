//! Word-for-word messages for the mistakes people make in mirrord configs, in each format.

use sctrace_filter::{parse_str, ConfigError, Format, Loaded};

fn error(text: &str, format: Format) -> String {
    let name = match format {
        Format::Json => "mirrord.json",
        Format::Yaml => "mirrord.yaml",
        Format::Toml => "mirrord.toml",
    };
    match parse_str(text, format, name) {
        Ok(loaded) => panic!("parsed: {loaded:?}"),
        Err(error) => error.to_string(),
    }
}

fn json(text: &str) -> String {
    error(text, Format::Json)
}

fn loaded(text: &str, format: Format) -> Loaded {
    parse_str(text, format, "mirrord.json").unwrap_or_else(|e| panic!("{e}"))
}

fn warnings(text: &str) -> Vec<String> {
    loaded(text, Format::Json)
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn typo_in_a_key() {
    let text = r#"{
  "feature": {
    "network": {
      "outgoing": {
        "fitler": { "local": ["messages-db"] }
      }
    }
  }
}"#;
    assert_eq!(
        json(text),
        "mirrord.json:5:9: feature.network.outgoing.fitler: unknown key, did you mean \"filter\"? (known keys: tcp, udp, ignore_localhost, filter, udp_replies, unix_streams)"
    );
}

#[test]
fn unknown_key_at_the_root() {
    assert_eq!(
        json("{\"targte\": \"pod/a\"}"),
        "mirrord.json:1:2: targte: unknown key, did you mean \"target\"? (known keys: target, agent, feature, kubeconfig, kube_context, accept_invalid_certificates, operator, multi_cluster, api, profile, sip_binaries, skip_build_tools, skip_extra_build_tools, skip_processes, skip_sip, telemetry, internal_proxy, external_proxy, use_proxy, experimental, startup_retry, ci, key, traceparent, baggage, container)"
    );
    assert_eq!(
        json("{\"feature\": {\"zzz\": 1}}"),
        "mirrord.json:1:14: feature.zzz: unknown key \"zzz\" (known keys: env, network, fs, hostname, copy_target, split_queues, db_branches, magic, preview)"
    );
}

#[test]
fn wrong_types() {
    let text = "{\n  \"feature\": {\n    \"network\": {\n      \"outgoing\": { \"tcp\": \"yes\" }\n    }\n  }\n}";
    assert_eq!(
        json(text),
        "mirrord.json:4:28: feature.network.outgoing.tcp: expected true or false, found the string \"yes\""
    );
    assert_eq!(
        json("{\"feature\": {\"network\": {\"outgoing\": {\"filter\": {\"local\": [\"db\", 5432]}}}}}"),
        "mirrord.json:1:66: feature.network.outgoing.filter.local[1]: expected a filter entry string, found the number 5432"
    );
    assert_eq!(
        json("{\"feature\": {\"network\": {\"outgoing\": [\"db\"]}}}"),
        "mirrord.json:1:38: feature.network.outgoing: expected true, false or an object, found a list"
    );
    assert_eq!(
        json("{\"agent\": {\"ttl\": 70000}}"),
        "mirrord.json:1:19: agent.ttl: expected a number of seconds (0-65535), found the number 70000"
    );
    assert_eq!(
        json("{\"feature\": {\"network\": {\"incoming\": \"stael\"}}}"),
        "mirrord.json:1:38: feature.network.incoming: expected \"off\", \"mirror\" or \"steal\", found the string \"stael\""
    );
    assert_eq!(
        error("[agent]\nttl = 30.0\n", Format::Toml),
        "mirrord.toml:2:7: agent.ttl: expected a number of seconds (0-65535), found the number 30.0"
    );
    assert_eq!(
        json("[1]"),
        "mirrord.json:1:1: the config must be an object: expected an object, found a list"
    );
}

#[test]
fn both_lists() {
    let text = r#"{
  "feature": {
    "network": {
      "outgoing": {
        "filter": {
          "local": ["messages-db"],
          "remote": ["uwu-service"]
        }
      }
    }
  }
}"#;
    assert_eq!(
        json(text),
        "mirrord.json:7:11: feature.network.outgoing.filter: \"local\" and \"remote\" cannot be used together: keep one list (what it does not match goes the other way)"
    );
}

#[test]
fn empty_list() {
    assert_eq!(
        json("{\"feature\": {\"network\": {\"outgoing\": {\"filter\": {\"remote\": []}}}}}"),
        "mirrord.json:1:60: feature.network.outgoing.filter.remote: the list is empty: list at least one entry, or remove \"filter\" to send all traffic remote"
    );
    assert_eq!(
        json("{\"feature\": {\"network\": {\"outgoing\": {\"filter\": {}}}}}"),
        "mirrord.json:1:49: feature.network.outgoing.filter: expected a \"local\" or \"remote\" list of entries"
    );
}

#[test]
fn bad_entries_point_at_the_entry() {
    let text = r#"{
  "feature": {
    "network": {
      "outgoing": {
        "filter": {
          "local": ["messages-db", ":5432", "10.0.0.0/33", "db:99999"]
        }
      }
    }
  }
}"#;
    assert_eq!(
        json(text),
        "mirrord.json:6:45: feature.network.outgoing.filter.local[2]: invalid filter entry \"10.0.0.0/33\": prefix length 33 is too long for an IPv4 address (at most 32)"
    );
    assert_eq!(
        json(r#"{"feature": {"network": {"outgoing": {"filter": {"local": "db:99999"}}}}}"#),
        "mirrord.json:1:59: feature.network.outgoing.filter.local: invalid filter entry \"db:99999\": port 99999 is out of range (0-65535)"
    );
    assert_eq!(
        json(r#"{"feature": {"network": {"outgoing": {"filter": {"local": ["fd00::1"]}}}}}"#),
        "mirrord.json:1:60: feature.network.outgoing.filter.local[0]: invalid filter entry \"fd00::1\": write IPv6 addresses in brackets, e.g. [fd00::1]:8080"
    );
    assert_eq!(
        json(r#"{"feature": {"network": {"outgoing": {"filter": {"local": ["smtp://mail"]}}}}}"#),
        "mirrord.json:1:60: feature.network.outgoing.filter.local[0]: invalid filter entry \"smtp://mail\": unknown protocol \"smtp\" (use tcp://, udp:// or any://)"
    );
    assert_eq!(
        json(r#"{"feature": {"network": {"dns": {"filter": {"local": ["tcp://db"]}}}}}"#),
        "mirrord.json:1:55: feature.network.dns.filter.local[0]: invalid filter entry \"tcp://db\": DNS filter entries take no protocol (tcp://, udp://)"
    );
}

#[test]
fn single_string_list_is_accepted_as_in_mirrord() {
    let config = loaded(
        r#"{"feature": {"network": {"outgoing": {"filter": {"local": "messages-db"}}}}}"#,
        Format::Json,
    )
    .config;
    let list = config.feature.network.outgoing.filter.unwrap();
    assert_eq!(list.entries.len(), 1);
    assert_eq!(
        &*list.entries[0].key,
        "feature.network.outgoing.filter.local"
    );
}

#[test]
fn json_syntax_errors() {
    assert_eq!(
        json("{\n  \"target\": \"pod/a\",\n}\n"),
        "mirrord.json:3:1: trailing comma before '}'"
    );
    assert_eq!(
        json("{\n  \"target\": pod/a\n}\n"),
        "mirrord.json:2:13: expected a value, found an unquoted word (strings need double quotes)"
    );
    assert_eq!(
        json("{\"target\": \"pod/a\", \"target\": \"pod/b\"}"),
        "mirrord.json:1:21: target: this key is given twice"
    );
}

#[test]
fn yaml_errors_have_positions() {
    let text = "feature:\n  network:\n    outgoing:\n      tcp: maybe\n";
    assert_eq!(
        error(text, Format::Yaml),
        "mirrord.yaml:4:12: feature.network.outgoing.tcp: expected true or false, found the string \"maybe\""
    );
    let text = "feature:\n  network:\n    outgoing:\n      filter:\n        local: [messages-db, 10.0.0.0/40]\n";
    assert_eq!(
        error(text, Format::Yaml),
        "mirrord.yaml:5:30: feature.network.outgoing.filter.local[1]: invalid filter entry \"10.0.0.0/40\": prefix length 40 is too long for an IPv4 address (at most 32)"
    );
    let text = "feature:\n  network:\n    outgoing: {tcp: true\n";
    let message = error(text, Format::Yaml);
    assert!(
        message.starts_with("mirrord.yaml:4:1: invalid YAML: "),
        "{message}"
    );
    let text = "target: pod/a\ntarget: pod/b\n";
    assert_eq!(
        error(text, Format::Yaml),
        "mirrord.yaml:2:1: target: this key is given twice"
    );
}

#[test]
fn toml_errors_have_positions() {
    let text = "[feature.network.outgoing]\nudp = \"no\"\n";
    assert_eq!(
        error(text, Format::Toml),
        "mirrord.toml:2:7: feature.network.outgoing.udp: expected true or false, found the string \"no\""
    );
    let text = "[feature.network.outgoing]\nfiltre = { local = [\"db\"] }\n";
    assert_eq!(
        error(text, Format::Toml),
        "mirrord.toml:2:1: feature.network.outgoing.filtre: unknown key, did you mean \"filter\"? (known keys: tcp, udp, ignore_localhost, filter, udp_replies, unix_streams)"
    );
    let text = "target = \"pod/a\"\n[agent\n";
    let message = error(text, Format::Toml);
    assert!(message.starts_with("mirrord.toml:2:"), "{message}");
    assert!(message.contains(": invalid TOML: "), "{message}");
}

#[test]
fn targets() {
    assert_eq!(
        json("{\"target\": \"uwu-app\"}"),
        "mirrord.json:1:12: target: \"uwu-app\" is not a target; write it as targetless, pod/NAME[/container/C], deployment/NAME[/container/C], statefulset/NAME[/container/C], netns/NAME, netns//PATH or pid/PID (did you mean \"pod/uwu-app\"?)"
    );
    assert_eq!(
        json("{\"target\": {\"path\": {\"rollout\": \"r\"}}}"),
        "mirrord.json:1:33: target.path.rollout: rollout targets are not supported by sctrace (they need the mirrord operator); use targetless, pod/NAME[/container/C], deployment/NAME[/container/C], statefulset/NAME[/container/C], netns/NAME, netns//PATH or pid/PID"
    );
}

#[test]
fn http_filters() {
    assert_eq!(
        json(r#"{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": {"header_filter": "^x-(", "path_filter": "/a"}}}}, "target": "pod/a"}"#),
        "mirrord.json:1:89: feature.network.incoming.http_filter.header_filter: invalid regular expression: Parsing error at position 4: Opening parenthesis without closing parenthesis"
    );
    assert_eq!(
        json(r#"{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": {"header_filter": "^x-a", "path_filter": "/a"}}}}}"#),
        "mirrord.json:1:71: feature.network.incoming.http_filter: header_filter and path_filter cannot be used together: combine filters with all_of or any_of"
    );
    assert_eq!(
        json(r#"{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": {"body_filter": {"body": "json", "query": "$.a", "matches": "x"}}}}}}"#),
        "mirrord.json:1:87: feature.network.incoming.http_filter.body_filter: not supported by sctrace (it filters on headers, path and method); remove it, or use header_filter, path_filter, method_filter, all_of or any_of"
    );
    assert_eq!(
        json(r#"{"feature": {"network": {"incoming": {"http_filter": {"any_of": []}}}}}"#),
        "mirrord.json:1:65: feature.network.incoming.http_filter.any_of: the list is empty: give at least one filter"
    );
    assert_eq!(
        json(r#"{"feature": {"network": {"incoming": {"port_mapping": [[8080, 80], [8080, 81]]}}}}"#),
        "mirrord.json:1:68: feature.network.incoming.port_mapping[1]: local port 8080 appears in two pairs"
    );
}

#[test]
fn conflicting_settings() {
    assert_eq!(
        json(r#"{"target": "targetless", "feature": {"network": {"incoming": "steal"}}}"#),
        "mirrord.json:1:62: feature.network.incoming: \"steal\" needs a target: without one (targetless) there is no incoming traffic to steal; set \"target\" or use \"mirror\" or \"off\""
    );
    assert_eq!(
        json(r#"{"feature": {"env": {"include": "A", "exclude": ["B"]}}}"#),
        "mirrord.json:1:49: feature.env.exclude: \"include\" and \"exclude\" cannot be used together: \"include\" already leaves out every other variable"
    );
    assert_eq!(
        json(r#"{"feature": {"network": {"incoming": {"ports": [80], "ignore_ports": [81]}}}}"#),
        "mirrord.json:1:70: feature.network.incoming.ignore_ports: \"ports\" and \"ignore_ports\" cannot be used together: \"ports\" already leaves every other port local"
    );
    assert_eq!(
        json(r#"{"target": "targetless", "agent": {"ephemeral": true}}"#),
        "mirrord.json:1:49: agent.ephemeral: an ephemeral agent joins the target's pod, so it needs a target; set \"target\" or remove \"ephemeral\""
    );
}

#[test]
fn unsupported_keys_warn_and_say_what_happens() {
    assert_eq!(
        warnings(r#"{"feature": {"fs": "read", "hostname": true}, "operator": true}"#),
        vec![
            "mirrord.json:1:14: feature.fs: ignored: sctrace does not intercept file access; the app reads and writes local files",
            "mirrord.json:1:28: feature.hostname: ignored: the app sees this machine's hostname",
            "mirrord.json:1:47: operator: ignored: sctrace works without the mirrord operator",
        ]
    );
    // Values that ask for what sctrace does anyway are not warned about.
    assert!(warnings(
        r#"{"feature": {"fs": "local", "hostname": false}, "operator": false, "telemetry": false}"#
    )
    .is_empty());
    assert_eq!(
        warnings("{\n  \"feature\": {\"network\": {\"outgoing\": {\"unix_streams\": \"bear.+\"}}}\n}"),
        vec!["mirrord.json:2:40: feature.network.outgoing.unix_streams: ignored: sctrace leaves connections to Unix sockets local"]
    );
}

#[test]
fn dns_filter_warnings() {
    assert_eq!(
        warnings(r#"{"feature": {"network": {"dns": {"filter": {"local": ["db:5432", ":53"]}}}}}"#),
        vec![
            "mirrord.json:1:55: feature.network.dns.filter.local[0]: the port is ignored: sctrace sees DNS queries as the resolver sends them, and they carry no port",
            "mirrord.json:1:66: feature.network.dns.filter.local[1]: this entry never matches: sctrace sees DNS queries as the resolver sends them, and they carry no port",
        ]
    );
    assert_eq!(
        warnings(r#"{"feature": {"network": {"dns": {"filter": {"remote": []}}}}}"#),
        vec!["mirrord.json:1:55: feature.network.dns.filter.remote: the list is empty: every name is resolved locally"]
    );
    assert_eq!(
        warnings(r#"{"feature": {"network": {"outgoing": {"filter": {"local": ["db"]}}, "dns": {"filter": {"remote": ["db"]}}}}}"#),
        vec!["mirrord.json:1:60: feature.network.outgoing.filter.local[0]: connections to \"db\" are made locally, but feature.network.dns.filter.remote[0] resolves it remotely: the address the app gets may not be reachable from where it connects"]
    );
    assert_eq!(
        warnings(r#"{"feature": {"network": {"dns": {"enabled": false, "filter": {"local": ["db"]}}}}}"#),
        vec!["mirrord.json:1:62: feature.network.dns.filter: ignored: feature.network.dns is disabled, so every name is resolved locally"]
    );
}

#[test]
fn templates_are_not_rendered() {
    let text = r#"{
  "target": "pod/a",
  "feature": {
    "network": {
      "incoming": {
        "mode": "steal",
        "http_filter": { "header_filter": "^baggage: .*mirrord-session={{ key }}.*$" }
      }
    }
  }
}"#;
    assert_eq!(
        warnings(text),
        vec!["mirrord.json:7:72: sctrace does not render mirrord's templates: text between {{ and }} is used as written"]
    );
}

#[test]
fn read_errors() {
    let missing = std::path::Path::new("/nonexistent/sctrace/mirrord.json");
    let error = sctrace_filter::load(missing).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }));
    assert_eq!(
        error.to_string(),
        "cannot read the config file /nonexistent/sctrace/mirrord.json: No such file or directory"
    );
    // A relative path is shown where it was looked for, with the reason.
    let error = sctrace_filter::load(std::path::Path::new("no-such-dir/mirrord.json")).unwrap_err();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(
        error.to_string(),
        format!(
            "cannot read the config file {}: No such file or directory",
            cwd.join("no-such-dir/mirrord.json").display()
        )
    );
    let dir = std::env::temp_dir().join(format!("sctrace-config-dir-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("config.json")).unwrap();
    let error = sctrace_filter::load(&dir.join("config.json")).unwrap_err();
    let text = error.to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(text.ends_with(": Is a directory"), "{text}");
    let error = sctrace_filter::load(std::path::Path::new("mirrord.ini")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "mirrord.ini: unknown config file extension \".ini\" (use .json, .yaml, .yml or .toml)"
    );
}

#[test]
fn agent_tls_takes_a_ca_or_a_pinned_certificate() {
    use sctrace_filter::config::{AgentTls, AgentTrust};
    let config = loaded(
        r#"{"agent": {"address": "tcp:agent.example:7000", "tls": {"cert_file": "/etc/agent.pem"}}}"#,
        Format::Json,
    );
    assert_eq!(
        config.config.agent.tls,
        Some(AgentTls {
            trust: AgentTrust::Pinned("/etc/agent.pem".into()),
            server_name: None
        })
    );
    let config = loaded(
        r#"{"agent": {"address": "tcp:10.0.0.5:7000", "tls": {"ca_file": "ca.pem", "server_name": "agent.example"}}}"#,
        Format::Json,
    );
    assert_eq!(
        config.config.agent.tls,
        Some(AgentTls {
            trust: AgentTrust::Ca("ca.pem".into()),
            server_name: Some("agent.example".into())
        })
    );
    assert_eq!(
        json(r#"{"agent": {"tls": {"ca_file": "a", "cert_file": "b"}}}"#),
        "mirrord.json:1:19: agent.tls: give either \"ca_file\" (the CA that signed the agent's certificate) or \"cert_file\" (the agent's own certificate), not both"
    );
    assert_eq!(
        json(r#"{"agent": {"tls": {}}}"#),
        "mirrord.json:1:19: agent.tls: missing \"ca_file\" (the CA that signed the agent's certificate) or \"cert_file\" (the agent's own certificate)"
    );
    assert_eq!(
        warnings(r#"{"agent": {"address": "unix:/run/a.sock", "tls": {"cert_file": "c.pem"}}}"#),
        vec!["mirrord.json:1:50: agent.tls: ignored: TLS is for an agent at a tcp: agent.address (a Unix socket is protected by its file's permissions, a Kubernetes agent by the API server's port-forward)"]
    );
}

#[test]
fn udp_replies_are_peers_or_any() {
    let config =
        |json: &str| sctrace_filter::parse_str(json, sctrace_filter::Format::Json, "mirrord.json");
    let loaded =
        config(r#"{"feature": {"network": {"outgoing": {"udp_replies": "any"}}}}"#).unwrap();
    assert_eq!(
        loaded.config.feature.network.outgoing.udp_replies,
        sctrace_filter::config::UdpReplies::Any
    );
    let loaded = config("{}").unwrap();
    assert_eq!(
        loaded.config.feature.network.outgoing.udp_replies,
        sctrace_filter::config::UdpReplies::Peers
    );
    let err = config(r#"{"feature": {"network": {"outgoing": {"udp_replies": "all"}}}}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"peers\" or \"any\""), "{err}");
}
