//! Local/remote decisions for connections and DNS queries, checked against mirrord's rules.

use std::net::SocketAddr;

use sctrace_filter::{
    parse_str, Connection, Decision, Format, OutgoingFilter, Protocol, Route, RuleRef,
};

use Protocol::{Tcp, Udp};

fn filter(network_json: &str) -> OutgoingFilter {
    let text = format!("{{\"feature\": {{\"network\": {network_json}}}}}");
    let loaded = parse_str(&text, Format::Json, "test.json").unwrap_or_else(|e| panic!("{e}"));
    OutgoingFilter::new(&loaded.config.feature.network)
}

fn outgoing(list: &str) -> OutgoingFilter {
    filter(&format!("{{\"outgoing\": {{\"filter\": {list}}}}}"))
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// (route, rule as shown in events)
fn decide(f: &OutgoingFilter, protocol: Protocol, to: &str, names: &[&str]) -> (Route, String) {
    let d = f.decide(protocol, addr(to), names);
    (d.route, d.rule.to_string())
}

fn dns(f: &OutgoingFilter, name: &str) -> (Route, String) {
    let d = f.decide_dns(name);
    (d.route, d.rule.to_string())
}

fn local(rule: &str) -> (Route, String) {
    (Route::Local, rule.to_owned())
}

fn remote(rule: &str) -> (Route, String) {
    (Route::Remote, rule.to_owned())
}

#[test]
fn no_filter_sends_everything_remote() {
    let f = filter("{}");
    assert_eq!(decide(&f, Tcp, "198.18.0.10:80", &[]), remote("default"));
    assert_eq!(decide(&f, Udp, "[fd00:5c::1]:53", &[]), remote("default"));
    assert_eq!(dns(&f, "uwu-service"), remote("default"));
}

#[test]
fn local_list_keeps_matches_local() {
    let f = outgoing(r#"{"local": ["messages-db", "tcp://10.0.0.0/8:5432", ":6379"]}"#);
    assert_eq!(
        decide(&f, Tcp, "198.18.0.5:5432", &["messages-db"]),
        local("messages-db")
    );
    assert_eq!(
        decide(&f, Tcp, "198.18.0.6:80", &["uwu-service"]),
        remote("default")
    );
    assert_eq!(
        decide(&f, Tcp, "10.3.2.1:5432", &[]),
        local("tcp://10.0.0.0/8:5432")
    );
    assert_eq!(decide(&f, Udp, "10.3.2.1:5432", &[]), remote("default"));
    assert_eq!(decide(&f, Tcp, "10.3.2.1:5433", &[]), remote("default"));
    assert_eq!(decide(&f, Udp, "198.18.0.7:6379", &[]), local(":6379"));
    let d = f.decide(Tcp, addr("198.18.0.5:5432"), &["messages-db"]);
    assert_eq!(
        d.rule.key(),
        Some("feature.network.outgoing.filter.local[0]")
    );
    assert_eq!(
        d.to_string(),
        "local (rule \"messages-db\", feature.network.outgoing.filter.local[0])"
    );
}

#[test]
fn remote_list_sends_only_matches_remote() {
    let f = outgoing(r#"{"remote": ["uwu-service", "198.18.0.0/15"]}"#);
    assert_eq!(
        decide(&f, Tcp, "203.0.113.9:443", &["uwu-service"]),
        remote("uwu-service")
    );
    assert_eq!(
        decide(&f, Tcp, "198.19.255.255:80", &[]),
        remote("198.18.0.0/15")
    );
    assert_eq!(decide(&f, Tcp, "198.20.0.0:80", &[]), local("default"));
    assert_eq!(
        decide(&f, Tcp, "192.0.2.1:80", &["example.com"]),
        local("default")
    );
}

#[test]
fn first_matching_entry_decides() {
    let f = outgoing(r#"{"local": [":5432", "messages-db"]}"#);
    assert_eq!(
        decide(&f, Tcp, "198.18.0.5:5432", &["messages-db"]),
        local(":5432")
    );
    assert_eq!(
        decide(&f, Tcp, "198.18.0.5:80", &["messages-db"]),
        local("messages-db")
    );
}

#[test]
fn protocol_switches() {
    let f = filter(r#"{"outgoing": {"tcp": false, "filter": {"remote": [":80"]}}}"#);
    assert_eq!(decide(&f, Tcp, "198.18.0.1:80", &[]), local("tcp disabled"));
    assert_eq!(decide(&f, Udp, "198.18.0.1:80", &[]), remote(":80"));
    assert_eq!(decide(&f, Udp, "198.18.0.1:81", &[]), local("default"));

    let f = filter(r#"{"outgoing": {"udp": false}}"#);
    assert_eq!(decide(&f, Udp, "198.18.0.1:53", &[]), local("udp disabled"));
    assert_eq!(decide(&f, Tcp, "198.18.0.1:53", &[]), remote("default"));

    let f = filter(r#"{"outgoing": false}"#);
    assert_eq!(decide(&f, Tcp, "198.18.0.1:80", &[]), local("tcp disabled"));
    assert_eq!(decide(&f, Udp, "198.18.0.1:80", &[]), local("udp disabled"));

    let f = filter("false");
    assert_eq!(decide(&f, Tcp, "198.18.0.1:80", &[]), local("tcp disabled"));
    assert_eq!(dns(&f, "anything"), local("dns disabled"));
}

#[test]
fn protocol_only_and_port_only_entries() {
    let f = outgoing(r#"{"local": ["udp://"]}"#);
    assert_eq!(decide(&f, Udp, "198.18.0.1:9999", &[]), local("udp://"));
    assert_eq!(decide(&f, Tcp, "198.18.0.1:9999", &[]), remote("default"));

    let f = outgoing(r#"{"remote": ["tcp://:443", "any://:53"]}"#);
    assert_eq!(decide(&f, Tcp, "198.18.0.1:443", &[]), remote("tcp://:443"));
    assert_eq!(decide(&f, Udp, "198.18.0.1:443", &[]), local("default"));
    assert_eq!(decide(&f, Udp, "198.18.0.1:53", &[]), remote("any://:53"));

    // ":0" and "any://" match every port, as in mirrord.
    let f = outgoing(r#"{"local": [":0"]}"#);
    assert_eq!(decide(&f, Tcp, "198.18.0.1:1", &[]), local(":0"));
}

#[test]
fn subnet_edges() {
    let f = outgoing(r#"{"local": ["198.18.0.7/32", "198.18.1.0/24"]}"#);
    assert_eq!(decide(&f, Tcp, "198.18.0.7:1", &[]), local("198.18.0.7/32"));
    assert_eq!(decide(&f, Tcp, "198.18.0.8:1", &[]), remote("default"));
    assert_eq!(decide(&f, Tcp, "198.18.1.0:1", &[]), local("198.18.1.0/24"));
    assert_eq!(
        decide(&f, Tcp, "198.18.1.255:1", &[]),
        local("198.18.1.0/24")
    );
    assert_eq!(decide(&f, Tcp, "198.18.2.0:1", &[]), remote("default"));
    assert_eq!(decide(&f, Tcp, "198.18.0.255:1", &[]), remote("default"));

    let f = outgoing(r#"{"local": ["0.0.0.0/0"]}"#);
    assert_eq!(decide(&f, Tcp, "203.0.113.1:1", &[]), local("0.0.0.0/0"));
    assert_eq!(
        decide(&f, Tcp, "[::ffff:203.0.113.1]:1", &[]),
        local("0.0.0.0/0")
    );
    assert_eq!(decide(&f, Tcp, "[fd00::1]:1", &[]), remote("default"));

    let f = outgoing(r#"{"local": ["[::]/0"]}"#);
    assert_eq!(decide(&f, Tcp, "[fd00::1]:1", &[]), local("[::]/0"));
    assert_eq!(decide(&f, Tcp, "203.0.113.1:1", &[]), remote("default"));

    let f = outgoing(r#"{"local": ["[fd00:5c::1]/128", "[fd00:5d::]/64"]}"#);
    assert_eq!(
        decide(&f, Tcp, "[fd00:5c::1]:1", &[]),
        local("[fd00:5c::1]/128")
    );
    assert_eq!(decide(&f, Tcp, "[fd00:5c::2]:1", &[]), remote("default"));
    assert_eq!(
        decide(&f, Tcp, "[fd00:5d::ffff:ffff:ffff:ffff]:1", &[]),
        local("[fd00:5d::]/64")
    );
    assert_eq!(decide(&f, Tcp, "[fd00:5d:0:1::]:1", &[]), remote("default"));
}

#[test]
fn ipv4_mapped_ipv6_is_ipv4() {
    let f =
        outgoing(r#"{"local": ["198.18.0.9", "[::ffff:198.18.1.1]", "[::ffff:198.19.0.0]/112"]}"#);
    assert_eq!(
        decide(&f, Tcp, "[::ffff:198.18.0.9]:80", &[]),
        local("198.18.0.9")
    );
    assert_eq!(
        decide(&f, Tcp, "198.18.1.1:80", &[]),
        local("[::ffff:198.18.1.1]")
    );
    assert_eq!(
        decide(&f, Tcp, "198.19.0.200:80", &[]),
        local("[::ffff:198.19.0.0]/112")
    );
    assert_eq!(decide(&f, Tcp, "198.20.0.0:80", &[]), remote("default"));
}

#[test]
fn unspecified_address_entry_matches_any_address() {
    let f = outgoing(r#"{"local": ["0.0.0.0:8080"]}"#);
    assert_eq!(
        decide(&f, Tcp, "203.0.113.1:8080", &[]),
        local("0.0.0.0:8080")
    );
    assert_eq!(
        decide(&f, Tcp, "[fd00::1]:8080", &[]),
        local("0.0.0.0:8080")
    );
    assert_eq!(decide(&f, Tcp, "[fd00::1]:8081", &[]), remote("default"));
}

#[test]
fn names_ignore_case_and_trailing_dots() {
    let f = outgoing(r#"{"local": ["Messages-DB.uwu.svc.cluster.local."]}"#);
    let rule = "Messages-DB.uwu.svc.cluster.local.";
    assert_eq!(
        decide(
            &f,
            Tcp,
            "198.18.0.5:5432",
            &["messages-db.UWU.svc.cluster.local"]
        ),
        local(rule)
    );
    assert_eq!(
        decide(
            &f,
            Tcp,
            "198.18.0.5:5432",
            &["messages-db.uwu.svc.cluster.local."]
        ),
        local(rule)
    );
    // Not a substring match: a longer or shorter name is another host.
    assert_eq!(
        decide(&f, Tcp, "198.18.0.5:5432", &["messages-db"]),
        remote("default")
    );
    assert_eq!(
        decide(
            &f,
            Tcp,
            "198.18.0.5:5432",
            &["x.messages-db.uwu.svc.cluster.local"]
        ),
        remote("default")
    );
    // Any of the names the address came from may match.
    assert_eq!(
        decide(
            &f,
            Tcp,
            "198.18.0.5:5432",
            &["alias", "messages-db.uwu.svc.cluster.local"]
        ),
        local(rule)
    );
}

#[test]
fn names_complete_with_search_domains() {
    let f = outgoing(r#"{"local": ["messages-db"]}"#)
        .with_search_domains(["uwu.svc.cluster.local.", "SVC.cluster.local"]);
    assert_eq!(
        decide(&f, Tcp, "198.18.0.5:5432", &["messages-db"]),
        local("messages-db")
    );
    assert_eq!(
        decide(
            &f,
            Tcp,
            "198.18.0.5:5432",
            &["messages-db.uwu.svc.cluster.local"]
        ),
        local("messages-db")
    );
    assert_eq!(
        decide(
            &f,
            Tcp,
            "198.18.0.5:5432",
            &["messages-db.svc.cluster.local."]
        ),
        local("messages-db")
    );
    assert_eq!(
        decide(
            &f,
            Tcp,
            "198.18.0.5:5432",
            &["messages-db.other.svc.cluster.local"]
        ),
        remote("default")
    );
    assert_eq!(
        decide(&f, Tcp, "198.18.0.5:5432", &["messages-db.example.com"]),
        remote("default")
    );
    assert_eq!(
        dns(&f, "messages-db.uwu.svc.cluster.local."),
        local("messages-db")
    );
}

#[test]
fn localhost_entry_matches_loopback_addresses() {
    let f = outgoing(r#"{"local": ["tcp://localhost:1337"]}"#);
    assert_eq!(
        decide(&f, Tcp, "127.0.0.1:1337", &[]),
        local("tcp://localhost:1337")
    );
    assert_eq!(
        decide(&f, Tcp, "127.1.2.3:1337", &[]),
        local("tcp://localhost:1337")
    );
    assert_eq!(
        decide(&f, Tcp, "[::1]:1337", &[]),
        local("tcp://localhost:1337")
    );
    assert_eq!(decide(&f, Tcp, "127.0.0.1:1338", &[]), remote("default"));
}

#[test]
fn loopback_follows_mirrord() {
    // Default: loopback goes through the filter (to the target's loopback) ...
    let f = filter("{}");
    assert_eq!(decide(&f, Tcp, "127.0.0.1:5432", &[]), remote("default"));
    assert_eq!(decide(&f, Tcp, "[::1]:5432", &[]), remote("default"));
    assert_eq!(decide(&f, Tcp, "0.0.0.0:5432", &[]), remote("default"));
    // ... except ports the app itself listens on.
    let listening = |to: &str, listens: bool| {
        let d: Decision = f.decide_connection(&Connection {
            protocol: Tcp,
            addr: addr(to),
            hostnames: &[],
            app_listens_on_port: listens,
        });
        (d.route, d.rule)
    };
    assert_eq!(
        listening("127.0.0.1:8080", true),
        (Route::Local, RuleRef::LocalListener)
    );
    assert_eq!(
        listening("[::ffff:127.0.0.1]:8080", true),
        (Route::Local, RuleRef::LocalListener)
    );
    assert_eq!(
        listening("[::]:8080", true),
        (Route::Local, RuleRef::LocalListener)
    );
    // A non-loopback destination on a port the app listens on is not special.
    assert_eq!(
        listening("198.18.0.1:8080", true),
        (Route::Remote, RuleRef::Default)
    );

    let f = filter(r#"{"outgoing": {"ignore_localhost": true, "filter": {"remote": [":5432"]}}}"#);
    assert_eq!(
        decide(&f, Tcp, "127.0.0.1:5432", &[]),
        local("ignore_localhost")
    );
    assert_eq!(
        decide(&f, Udp, "[::1]:5432", &[]),
        local("ignore_localhost")
    );
    assert_eq!(
        decide(&f, Tcp, "0.0.0.0:5432", &[]),
        local("ignore_localhost")
    );
    assert_eq!(decide(&f, Tcp, "198.18.0.1:5432", &[]), remote(":5432"));
}

#[test]
fn port_zero_stays_local() {
    let f = filter("{}");
    assert_eq!(decide(&f, Udp, "198.18.0.1:0", &[]), local("port 0"));
}

#[test]
fn route_probes_go_where_traffic_to_the_address_would() {
    let probe = |f: &OutgoingFilter, ip: &str, names: &[&str]| {
        let d = f.decide_probe(ip.parse().unwrap(), names);
        (d.route, d.rule.to_string())
    };
    assert_eq!(probe(&filter("{}"), "198.18.0.1", &[]), remote("default"));
    let f = outgoing(r#"{"local": ["messages-db", "198.18.5.0/24", ":5432"]}"#);
    assert_eq!(probe(&f, "198.18.5.9", &[]), local("198.18.5.0/24"));
    assert_eq!(
        probe(&f, "198.18.0.9", &["messages-db"]),
        local("messages-db")
    );
    // An entry limited to a port says nothing about a probe, which has none.
    assert_eq!(probe(&f, "198.18.0.1", &[]), remote("default"));
    let ignore = filter(r#"{"outgoing": {"ignore_localhost": true}}"#);
    assert_eq!(probe(&ignore, "::1", &[]), local("ignore_localhost"));
    assert_eq!(probe(&filter("{}"), "::", &[]), remote("default"));
}

#[test]
fn dns_follows_outgoing_host_names() {
    // Names in a local outgoing list are resolved locally; the rest remotely.
    let f = outgoing(r#"{"local": ["messages-db", "tcp://10.0.0.0/8", ":5432"]}"#);
    assert_eq!(dns(&f, "messages-db"), local("messages-db"));
    assert_eq!(dns(&f, "MESSAGES-DB."), local("messages-db"));
    assert_eq!(dns(&f, "uwu-service"), remote("default"));
    assert_eq!(f.local_names(), vec!["messages-db"]);

    // A remote outgoing list leaves DNS all remote (mirrord adds nothing here).
    let f = outgoing(r#"{"remote": ["uwu-service"]}"#);
    assert_eq!(dns(&f, "uwu-service"), remote("default"));
    assert_eq!(dns(&f, "example.com"), remote("default"));
    assert!(f.local_names().is_empty());

    // With dns.filter on the same side, the names are added to it.
    let f = filter(
        r#"{"outgoing": {"filter": {"remote": ["uwu-service"]}}, "dns": {"filter": {"remote": ["kafka"]}}}"#,
    );
    assert_eq!(dns(&f, "kafka"), remote("kafka"));
    assert_eq!(dns(&f, "uwu-service"), remote("uwu-service"));
    assert_eq!(dns(&f, "example.com"), local("default"));

    // On opposite sides dns.filter wins (and the config warns about the overlap).
    let f = filter(
        r#"{"outgoing": {"filter": {"local": ["db"]}}, "dns": {"filter": {"remote": ["db"]}}}"#,
    );
    assert_eq!(dns(&f, "db"), remote("db"));
    assert_eq!(dns(&f, "other"), local("default"));
}

#[test]
fn dns_filter_entries() {
    let f = filter(
        r#"{"dns": {"filter": {"local": ["internal.example.com", "198.18.0.0/15", ":53", "db:5432"]}}}"#,
    );
    assert_eq!(
        dns(&f, "Internal.Example.com."),
        local("internal.example.com")
    );
    assert_eq!(dns(&f, "198.18.3.4"), local("198.18.0.0/15"));
    // Ports are unknown on the wire: port-only entries never match, name:port matches the name.
    assert_eq!(dns(&f, "anything"), remote("default"));
    assert_eq!(dns(&f, "db"), local("db:5432"));

    let f = filter(r#"{"dns": false}"#);
    assert_eq!(dns(&f, "uwu-service"), local("dns disabled"));
    assert!(!f.dns_enabled());
    let f = filter(r#"{"dns": {"enabled": false, "filter": {"remote": ["x"]}}}"#);
    assert_eq!(dns(&f, "x"), local("dns disabled"));
}
