//! The harness itself works: namespaces, the test servers and their checking clients,
//! dnsmasq, and the local cluster — before any sctrace test relies on them.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use sctrace_tests::{bin, require_root, run_with_timeout, Cluster, Netns, Output, ServerSpec};

const T: Duration = Duration::from_secs(60);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Runs a `sctrace-testsrv` client inside `ns`.
fn client(ns: &Netns, args: &[&str]) -> Output {
    run_with_timeout(ns.command(bin("sctrace-testsrv")).args(args), T)
}

#[test]
fn servers_and_clients_work_over_ipv4_and_ipv6_inside_a_namespace() {
    require_root();
    let ns = Netns::new("smoke");
    ns.add_addr("198.18.0.10/32");
    ns.add_addr("2001:2:0:5c::10/128");
    let (v4, v6) = ("198.18.0.10", "[2001:2:0:5c::10]");

    let echo = ns.spawn_server(ServerSpec::TcpEcho(vec![
        addr(&format!("{v4}:7")),
        addr(&format!("{v6}:7")),
    ]));
    let sink = ns.spawn_server(ServerSpec::TcpSink(vec![
        addr(&format!("{v4}:9")),
        addr(&format!("{v6}:9")),
    ]));
    let source = ns.spawn_server(ServerSpec::TcpSource {
        addr: addr(&format!("{v6}:19")),
        bytes: 1_000_000,
    });
    let udp = ns.spawn_server(ServerSpec::UdpEcho(vec![
        addr(&format!("{v4}:7")),
        addr(&format!("{v6}:7")),
    ]));
    let http = ns.spawn_server(ServerSpec::HttpHello(vec![addr(&format!("{v4}:80"))]));
    assert_eq!(
        sink.addrs(),
        [addr(&format!("{v4}:9")), addr(&format!("{v6}:9"))]
    );

    for target in [format!("{v4}:7"), format!("{v6}:7")] {
        client(&ns, &["tcp-echo-check", &target, "300000"]).assert_success();
        client(&ns, &["udp-ping", &target, "3"]).assert_success();
        client(&ns, &["udp-ping", &target, "3", "--connected"]).assert_success();
    }
    let out = client(
        &ns,
        &["tcp-send", &format!("{v6}:9"), "1000000", "--seed", "5"],
    );
    assert!(
        out.assert_success().stdout.starts_with("ok tcp-send"),
        "{out}"
    );
    client(&ns, &["tcp-fetch", &format!("{v6}:19"), "1000000"]).assert_success();
    client(&ns, &["tcp-many", &format!("{v4}:9"), "50", "10000"]).assert_success();

    // The logs name both ends of each connection and datagram.
    echo.wait_log(
        |l| l.starts_with("tcp accept from 198.18.0.10:") && l.ends_with(" to 198.18.0.10:7"),
        T,
    );
    echo.wait_log(
        |l| {
            l.starts_with("tcp close from [2001:2:0:5c::10]:")
                && l.ends_with("received=300000 sent=300000")
        },
        T,
    );
    udp.wait_log(
        |l| l.starts_with("udp from [2001:2:0:5c::10]:") && l.contains(" to [2001:2:0:5c::10]:7 "),
        T,
    );
    sink.wait_log(
        |l| l.contains(" to [2001:2:0:5c::10]:9 bytes=1000000 sha256="),
        T,
    );
    sink.wait_log_count(|l| l.starts_with("tcp sink from 198.18.0.10:"), 50, T);
    source.wait_log(|l| l.ends_with("sent=1000000"), T);

    // A wrong expectation is reported, not passed.
    let short = client(&ns, &["tcp-fetch", &format!("{v6}:19"), "999999"]);
    assert_eq!(short.code(), Some(1), "{short}");
    assert!(
        short
            .stderr
            .contains("received 1000000 bytes, expected 999999"),
        "{short}"
    );

    // A thread that entered the namespace talks to the servers directly.
    let reply = ns.run_in(|| {
        let mut stream = TcpStream::connect("198.18.0.10:80").unwrap();
        stream.write_all(b"GET /smoke HTTP/1.0\r\n\r\n").unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply
    });
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(
        reply.contains("\r\n\r\nhello from 198.18.0.10:80 to 198.18.0.10:"),
        "{reply}"
    );
    http.wait_log(|l| l.starts_with("http GET /smoke from 198.18.0.10:"), T);
}

#[test]
fn the_sink_serves_600_connections_open_at_once() {
    require_root();
    let ns = Netns::new("many");
    let sink = ns.spawn_server(ServerSpec::TcpSink(vec![addr("127.0.0.1:0")]));
    let target = sink.addrs()[0].to_string();
    let out = client(&ns, &["tcp-many", &target, "600", "20000"]);
    assert!(out.assert_success().stdout.contains("conns=600"), "{out}");
    sink.wait_log_count(|l| l.starts_with("tcp sink "), 600, T);
}

#[test]
fn a_namespace_is_isolated_and_fully_removed_on_drop() {
    require_root();
    let ns = Netns::new("drop");
    ns.add_addr("198.18.0.10/32");
    let _server = ns.spawn_server(ServerSpec::TcpEcho(vec![addr("198.18.0.10:7")]));
    // Another namespace has no route to it.
    let other = Netns::new("other");
    let out = client(&other, &["tcp-echo-check", "198.18.0.10:7", "10"]);
    assert!(out.stderr.contains("Network is unreachable"), "{out}");

    // A process started with command() and left running is killed by the drop too.
    let mut sleeper = ns.command("sleep").arg("600").spawn().unwrap();
    let name = ns.name().to_string();
    let scratch = ns.scratch_dir();
    assert!(!ns.pids().is_empty());
    drop(ns);
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "sleep was not killed: {status}");
    assert!(!Path::new("/run/netns").join(&name).exists());
    assert!(!Path::new("/etc/netns").join(&name).exists());
    assert!(!scratch.exists());
}

#[test]
fn etc_files_and_dnsmasq_resolve_names_inside_the_namespace() {
    require_root();
    let ns = Netns::new("dns");
    ns.add_addr("198.18.0.53/32");
    ns.add_addr("2001:2:0:5c::1/128");
    let v4: IpAddr = "198.18.0.10".parse().unwrap();
    let v6: IpAddr = "2001:2:0:5c::10".parse().unwrap();
    let dns = ns.dnsmasq(
        "198.18.0.53".parse().unwrap(),
        &[("svc.test", v4), ("svc.test", v6)],
        &[],
    );
    // Before a resolv.conf is written, names do not resolve (and never leave the namespace).
    assert_eq!(ns.lookup("svc.test"), Vec::<IpAddr>::new());
    ns.write_etc("resolv.conf", "nameserver 198.18.0.53\n");
    ns.write_etc(
        "hosts",
        "127.0.0.1 localhost\n198.18.0.99 from-hosts-file\n",
    );
    let mut found = ns.lookup("svc.test");
    found.sort();
    assert_eq!(found, [v4, v6]);
    assert_eq!(
        ns.lookup("from-hosts-file"),
        ["198.18.0.99".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(ns.lookup("unknown.test"), Vec::<IpAddr>::new());

    let queries = dns.dns_queries();
    assert!(
        queries
            .iter()
            .any(|q| q.qtype == "A" && q.name == "svc.test"),
        "{queries:?}"
    );
    assert!(
        queries
            .iter()
            .any(|q| q.qtype == "AAAA" && q.name == "svc.test"),
        "{queries:?}"
    );
    assert!(
        queries.iter().any(|q| q.name == "unknown.test"),
        "{queries:?}"
    );
    assert!(
        !queries.iter().any(|q| q.name == "from-hosts-file"),
        "{queries:?}"
    );
}

#[test]
fn a_veth_pair_links_two_namespaces() {
    require_root();
    let (a, b) = (Netns::new("veth-a"), Netns::new("veth-b"));
    a.veth(&b, "198.18.200.1/30", "198.18.200.2/30");
    let _sink = b.spawn_server(ServerSpec::TcpSink(vec![addr("198.18.200.2:9")]));
    client(&a, &["tcp-send", "198.18.200.2:9", "100000"]).assert_success();
}

#[test]
fn the_local_cluster_serves_names_to_the_cluster_and_not_to_the_laptop() {
    require_root();
    let world = Cluster::up();
    let uwu = world.service("uwu-service");
    assert_eq!(uwu.fqdn, "uwu-service.default.svc.cluster.local");
    assert_eq!(world.service(&uwu.fqdn), uwu);
    assert_eq!(world.dns_v4().to_string(), "198.18.0.2");
    assert_eq!(
        world.search(),
        [
            "default.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local"
        ]
    );

    // The cluster resolves short names through its search list.
    let mut found = world.cluster.lookup("uwu-service");
    found.sort();
    assert_eq!(found, [IpAddr::from(uwu.v4()), IpAddr::from(uwu.v6())]);
    assert_eq!(
        world.cluster.lookup("messages-db.default"),
        world
            .cluster
            .lookup("messages-db.default.svc.cluster.local")
    );
    assert_eq!(world.service("many").ipv4.len(), 40);
    assert_eq!(
        world.cluster.lookup("many").len(),
        80,
        "many needs the TCP fallback"
    );
    assert!(world
        .cluster_dns_queries()
        .iter()
        .any(|q| q.name == "uwu-service.default.svc.cluster.local"));

    // The laptop knows only its own names.
    assert_eq!(world.laptop.lookup("uwu-service"), Vec::<IpAddr>::new());
    assert_eq!(
        world.laptop.lookup("uwu-service.default.svc.cluster.local"),
        Vec::<IpAddr>::new()
    );
    assert!(world
        .laptop
        .lookup("laptop.lan")
        .contains(&"127.0.0.1".parse().unwrap()));
    assert!(world
        .laptop_dns_queries()
        .iter()
        .any(|q| q.name == "uwu-service"));

    // Servers in the cluster are reachable there, and not from the laptop.
    let echo = world.service("echo");
    let _server = world
        .cluster
        .spawn_server(ServerSpec::TcpEcho(vec![echo.addr_v4(7), echo.addr_v6(7)]));
    client(
        &world.cluster,
        &["tcp-echo-check", &echo.addr_v6(7).to_string(), "1000"],
    )
    .assert_success();
    let out = client(
        &world.laptop,
        &["tcp-echo-check", &echo.addr_v4(7).to_string(), "1000"],
    );
    assert!(out.stderr.contains("Network is unreachable"), "{out}");
    // Nothing listens on an unused address of the service range: refused, not unreachable.
    let out = client(&world.cluster, &["tcp-echo-check", "198.18.0.77:7", "10"]);
    assert!(out.stderr.contains("Connection refused"), "{out}");
    // The blackhole drops everything: connects hang.
    let blackhole = SocketAddr::new(world.blackhole_v4().into(), 80);
    let out = client(
        &world.cluster,
        &["tcp-send", &blackhole.to_string(), "10", "--timeout", "1"],
    );
    assert!(out.stderr.contains("timed out"), "{out}");

    let (prefix, cluster_ns) = (world.prefix().to_string(), world.cluster.name().to_string());
    let state = world.state_dir().to_path_buf();
    drop(world);
    assert!(!Path::new("/run/netns").join(&cluster_ns).exists());
    assert!(!Path::new("/etc/netns").join(&cluster_ns).exists());
    assert!(!state.exists(), "{prefix}: state dir left behind");
}
