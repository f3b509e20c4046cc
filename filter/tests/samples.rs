//! Realistic configs in each format (tests/data/), read from disk as `sctrace config check`
//! and `sctrace run` would, and `explain` on them.

use std::path::PathBuf;

use sctrace_filter::config::{
    AgentAddress, AgentImage, ConcurrentSteal, HttpCondition, IncomingMode, ListKind, NetnsTarget,
    Target,
};
use sctrace_filter::{explain, load, Loaded, OutgoingFilter, Protocol, Route};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn read(name: &str) -> Loaded {
    load(&data(name)).unwrap_or_else(|e| panic!("{e}"))
}

/// Warnings without the (machine-specific) directory part of the file name.
fn warnings(loaded: &Loaded, name: &str) -> Vec<String> {
    let prefix = format!("{}/", data("").display().to_string().trim_end_matches('/'));
    loaded
        .warnings
        .iter()
        .map(|w| w.to_string().replacen(&prefix, "", 1))
        .inspect(|w| assert!(w.starts_with(name), "{w}"))
        .collect()
}

#[test]
fn uwu_scenario_config() {
    let loaded = read("uwu-local-db.json");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let config = &loaded.config;
    assert_eq!(
        config.target.path,
        Some(Target::Deployment {
            name: "uwu-app".into(),
            container: Some("app".into())
        })
    );
    assert_eq!(config.target.namespace.as_deref(), Some("uwu"));
    assert_eq!(config.feature.network.incoming.mode, IncomingMode::Off);

    let filter = OutgoingFilter::new(&config.feature.network);
    assert_eq!(filter.decide_dns("messages-db").route, Route::Local);
    assert_eq!(filter.decide_dns("uwu-service").route, Route::Remote);
    let db = filter.decide(Protocol::Tcp, "127.0.0.1:5432".parse().unwrap(), &[]);
    assert_eq!(
        (db.route, db.rule.to_string()),
        (Route::Local, "tcp://127.0.0.1:5432".to_owned())
    );

    let shown = explain(config, "messages-db:5432", Protocol::Tcp)
        .unwrap()
        .to_string();
    assert_eq!(
        shown,
        "messages-db:5432 over tcp\n  dns:        local (rule \"messages-db\", feature.network.outgoing.filter.local[0])\n  connection: local (rule \"messages-db\", feature.network.outgoing.filter.local[0])\n  note: address and subnet entries were not checked: the address of \"messages-db\" is only known when it is resolved"
    );
    let shown = explain(config, "uwu-service:80", Protocol::Tcp)
        .unwrap()
        .to_string();
    assert_eq!(
        shown,
        "uwu-service:80 over tcp\n  dns:        remote (default)\n  connection: remote (default)\n  note: address and subnet entries were not checked: the address of \"uwu-service\" is only known when it is resolved"
    );
}

#[test]
fn full_mirrord_config() {
    let loaded = read("full-mirrord.json");
    assert_eq!(
        warnings(&loaded, "full-mirrord.json"),
        vec![
            "full-mirrord.json:3:3: skip_processes: ignored: sctrace intercepts every process the app starts",
            "full-mirrord.json:22:5: agent.metrics: ignored: the sctrace agent serves no Prometheus metrics",
            "full-mirrord.json:31:7: feature.env.mapping: ignored: sctrace does not rewrite variable values by pattern; use \"override\"",
            "full-mirrord.json:35:5: feature.fs: ignored: sctrace does not intercept file access; the app reads and writes local files",
            "full-mirrord.json:58:9: feature.network.outgoing.unix_streams: ignored: sctrace leaves connections to Unix sockets local",
            "full-mirrord.json:63:21: feature.network.dns.filter.local[0]: the port is ignored: DNS queries carry no port",
            "full-mirrord.json:67:5: feature.copy_target: ignored: sctrace uses the target as it is and makes no copy of it",
            "full-mirrord.json:70:5: feature.hostname: ignored: the app sees this machine's hostname",
            "full-mirrord.json:72:3: operator: ignored: sctrace works without the mirrord operator",
            "full-mirrord.json:74:3: sip_binaries: ignored: macOS SIP does not apply; sctrace runs on Linux",
            "full-mirrord.json:75:3: telemetry: ignored: sctrace sends no telemetry",
        ]
    );
    let config = &loaded.config;
    assert_eq!(config.agent.ttl, 30);
    assert_eq!(config.agent.startup_timeout, 360);
    assert_eq!(
        config.agent.image,
        AgentImage::Full("ghcr.io/metalbear-co/mirrord:latest".into())
    );
    assert_eq!(config.agent.image_pull_secrets, vec!["secret".to_owned()]);
    assert_eq!(
        config
            .agent
            .annotations
            .get("cats.io/inject")
            .map(String::as_str),
        Some("enabled")
    );
    assert_eq!(
        config.feature.env.include,
        Some(vec!["DATABASE_USER".to_owned(), "PUBLIC_ENV".to_owned()])
    );
    assert_eq!(config.feature.env.overrides.len(), 2);
    let incoming = &config.feature.network.incoming;
    assert_eq!(incoming.mode, IncomingMode::Steal);
    assert_eq!(incoming.port_mapping, vec![(7777, 8888)]);
    assert_eq!(
        incoming.ignore_ports.iter().copied().collect::<Vec<_>>(),
        vec![9999, 10000]
    );
    assert_eq!(config.kube_context.as_deref(), Some("my-cluster"));

    let filter = OutgoingFilter::new(&config.feature.network);
    let decide = |to: &str, names: &[&str]| {
        let d = filter.decide(Protocol::Tcp, to.parse().unwrap(), names);
        (d.route, d.rule.to_string())
    };
    assert_eq!(
        decide("1.1.1.9:1337", &[]),
        (Route::Local, "tcp://1.1.1.0/24:1337".into())
    );
    assert_eq!(
        decide("1.1.1.9:1338", &[]),
        (Route::Remote, "default".into())
    );
    assert_eq!(
        decide("1.1.5.200:80", &[]),
        (Route::Local, "1.1.5.0/24".into())
    );
    assert_eq!(
        decide("142.250.0.1:443", &["google.com"]),
        (Route::Local, "google.com".into())
    );
    assert_eq!(decide("203.0.113.5:53", &[]), (Route::Local, ":53".into()));
    assert_eq!(filter.decide_dns("google.com").route, Route::Local);
}

#[test]
fn yaml_steal_with_http_filter() {
    let loaded = read("steal-header.yaml");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let config = &loaded.config;
    assert!(config.agent.ephemeral);
    assert_eq!(config.agent.tolerations.as_ref().map(Vec::len), Some(1));
    assert_eq!(
        config.feature.env.exclude,
        Some(vec!["AWS_*".to_owned(), "SECRET_TOKEN".to_owned()])
    );
    assert_eq!(config.feature.env.unset, vec!["AWS_PROFILE".to_owned()]);
    let incoming = &config.feature.network.incoming;
    assert_eq!(incoming.mode, IncomingMode::Steal);
    assert_eq!(
        incoming.http_filter.all_of,
        Some(vec![
            HttpCondition::Header("^x-session: alice$".into()),
            HttpCondition::Method("POST".into())
        ])
    );
    assert_eq!(incoming.http_filter.ports, Some(vec![80, 8080]));
    assert_eq!(incoming.listen_ports, vec![(80, 4480)]);
    assert_eq!(incoming.on_concurrent_steal, ConcurrentSteal::Abort);

    let filter = OutgoingFilter::new(&config.feature.network);
    let d = filter.decide(Protocol::Udp, "198.18.0.10:53".parse().unwrap(), &[]);
    assert_eq!(
        (d.route, d.rule.to_string()),
        (Route::Remote, "udp://198.18.0.0/15:53".into())
    );
    let d = filter.decide(Protocol::Tcp, "198.18.0.10:53".parse().unwrap(), &[]);
    assert_eq!(
        (d.route, d.rule.to_string()),
        (Route::Local, "default".into())
    );
}

#[test]
fn toml_remote_list() {
    let loaded = read("remote-list.toml");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let config = &loaded.config;
    assert_eq!(
        config.target.path,
        Some(Target::StatefulSet {
            name: "uwu-db".into(),
            container: None
        })
    );
    assert_eq!(config.agent.ttl, 5);
    let resources = config.agent.resources.as_ref().unwrap();
    assert_eq!(resources.limits.get("cpu").map(String::as_str), Some("1"));
    assert_eq!(
        config
            .agent
            .node_selector
            .get("kubernetes.io/os")
            .map(String::as_str),
        Some("linux")
    );
    let network = &config.feature.network;
    assert!(!network.outgoing.udp);
    assert_eq!(
        network.outgoing.filter.as_ref().map(|f| f.kind),
        Some(ListKind::Remote)
    );

    let filter = OutgoingFilter::new(network);
    assert_eq!(filter.decide_dns("uwu-service").route, Route::Remote);
    assert_eq!(
        filter.decide_dns("uwu-service.uwu.svc.cluster.local").route,
        Route::Remote
    );
    assert_eq!(filter.decide_dns("example.com").route, Route::Local);
    let shown = explain(config, "[fd00:5c::7]:8080", Protocol::Tcp)
        .unwrap()
        .to_string();
    assert_eq!(
        shown,
        "[fd00:5c::7]:8080 over tcp\n  connection: remote (rule \"[fd00:5c::]/64:8080\", feature.network.outgoing.filter.remote[2])"
    );
    let shown = explain(config, "198.18.0.3:53", Protocol::Udp)
        .unwrap()
        .to_string();
    assert_eq!(
        shown,
        "198.18.0.3:53 over udp\n  connection: local (udp disabled)"
    );
}

#[test]
fn local_netns_with_running_agent() {
    let loaded = read("local-netns.json");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let config = &loaded.config;
    assert_eq!(
        config.target.path,
        Some(Target::Netns(NetnsTarget::Named("sctrace-cluster".into())))
    );
    assert_eq!(
        config.agent.address,
        Some(AgentAddress::Unix("/run/sctrace/agent.sock".into()))
    );
    assert_eq!(
        config.agent.token_file.as_deref(),
        Some(std::path::Path::new("/run/sctrace/token"))
    );
    assert!(config.validate().unwrap().is_empty());

    let shown = explain(config, "127.0.0.1:5432", Protocol::Tcp)
        .unwrap()
        .to_string();
    assert_eq!(
        shown,
        "127.0.0.1:5432 over tcp\n  connection: local (ignore_localhost)"
    );
    let shown = explain(config, "198.18.0.4", Protocol::Tcp)
        .unwrap()
        .to_string();
    assert_eq!(
        shown,
        "198.18.0.4 over tcp\n  connection: remote (default)\n  note: no port given: entries limited to a port were not considered"
    );
}

#[test]
fn explain_rejects_what_is_not_a_destination() {
    let config = sctrace_filter::Config::default();
    for bad in ["", "db:http", "[fd00::1", "a b", "10.0.0.0/8", "db:70000"] {
        let error = explain(&config, bad, Protocol::Tcp).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("{bad:?} is not a destination: write HOST, HOST:PORT, ADDRESS, ADDRESS:PORT or [IPv6]:PORT")
        );
    }
    let e = explain(&config, "fd00::1", Protocol::Udp).unwrap();
    assert_eq!(
        e.to_string(),
        "fd00::1 over udp\n  connection: remote (default)"
    );
}
