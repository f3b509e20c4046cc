//! The uwu scenario end to end (issue: the outgoing traffic filter): `uwu-app` runs on the
//! laptop under `sctrace run`; `uwu-service`, a `messages-db` and a `stats` server run in the
//! cluster, and another `messages-db` and `stats` on the laptop. The config's filter decides
//! which side each connection and datagram reaches; the servers' own logs say who got what.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sctrace_tests::{
    bin, fixture, read_events, require_root, run_with_timeout, Cluster, Server, ServerSpec,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

struct World {
    cluster: Cluster,
    uwu_service: Server,
    cluster_db: Server,
    laptop_db: Server,
    cluster_stats: Server,
    laptop_stats: Server,
}

/// Starts a demo service (a fixture binary) in a namespace, waiting for its "ready" line.
fn service(ns: &sctrace_tests::Netns, program: &str, name: &str, listen: &str) -> Server {
    Server::spawn_command(
        ns.command(fixture(program))
            .args(["-name", name, "-listen", listen]),
    )
}

impl World {
    fn new() -> World {
        require_root();
        let cluster = Cluster::up();
        let uwu = cluster.service("uwu-service");
        let db = cluster.service("messages-db");
        let stats = cluster.service("stats");
        let uwu_service = service(
            &cluster.cluster,
            "uwu-service",
            "uwu-service",
            &format!("{}:8080,[{}]:8080", uwu.v4(), uwu.v6()),
        );
        let cluster_db = service(
            &cluster.cluster,
            "messages-db",
            "cluster-db",
            &format!("{}:6379,[{}]:6379", db.v4(), db.v6()),
        );
        let laptop_db = service(
            &cluster.laptop,
            "messages-db",
            "laptop-db",
            "127.0.0.20:6379",
        );
        let cluster_stats = cluster.cluster.spawn_server(ServerSpec::UdpEcho(vec![
            SocketAddr::new(stats.v4().into(), 8125),
            SocketAddr::new(stats.v6().into(), 8125),
        ]));
        let laptop_stats =
            cluster
                .laptop
                .spawn_server(ServerSpec::UdpEcho(vec!["127.0.0.21:8125"
                    .parse()
                    .unwrap()]));
        World {
            cluster,
            uwu_service,
            cluster_db,
            laptop_db,
            cluster_stats,
            laptop_stats,
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.cluster.laptop.scratch_dir().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts uwu-app under `sctrace run -c CONFIG` on 127.0.0.1:`port` with `env`.
    fn app(&self, config: &str, port: u16, env: &[(&str, &str)]) -> App {
        let config = self.write(
            &format!("uwu-{port}.json"),
            &config.replace("CLUSTER", self.cluster.cluster.name()),
        );
        let events = self
            .cluster
            .laptop
            .scratch_dir()
            .join(format!("uwu-{port}.events"));
        let mut cmd = self.cluster.laptop.command(bin("sctrace"));
        cmd.args(["run", "-c"])
            .arg(&config)
            .arg("--events")
            .arg(&events)
            .arg("--")
            .arg(fixture("uwu-app"))
            .env("LISTEN", format!("127.0.0.1:{port}"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd.spawn().unwrap();
        let app = App {
            child,
            port,
            events,
        };
        let deadline = Instant::now() + T;
        while self
            .cluster
            .laptop
            .run_in(|| TcpStream::connect(("127.0.0.1", port)).is_err())
        {
            assert!(Instant::now() < deadline, "uwu-app did not start");
            thread::sleep(Duration::from_millis(50));
        }
        app
    }

    /// POSTs `text` to the app and returns the body of its answer.
    fn post(&self, app: &App, text: &str) -> String {
        let port = app.port;
        let text = text.to_string();
        self.cluster.laptop.run_in(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            write!(
                s,
                "POST /uwu HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            )
            .unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            assert!(answer.starts_with("HTTP/1.1 200"), "uwu-app answered:\n{answer}");
            answer.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
        })
    }
}

struct App {
    child: Child,
    port: u16,
    events: PathBuf,
}

impl App {
    /// Stops the app (SIGTERM through sctrace) and returns its events.
    fn stop(mut self) -> Vec<Value> {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        read_events(&self.events)
    }
}

fn stored(db: &Server, text: &str) -> bool {
    db.log()
        .iter()
        .any(|l| l.contains("stored #") && l.contains(text))
}

fn counted(stats: &Server, before: usize) -> bool {
    stats.log()[before..]
        .iter()
        .any(|l| l.starts_with("udp from"))
}

fn wait_stored(db: &Server, text: &str) {
    db.wait_log(|l| l.contains("stored #") && l.contains(text), T);
}

#[test]
fn the_uwu_scenario_stores_locally_what_the_filter_keeps_local() {
    let world = World::new();

    // The headline: messages-db stays local, everything else goes to the cluster.
    let (cs, ls) = (
        world.cluster_stats.log().len(),
        world.laptop_stats.log().len(),
    );
    let app = world.app(r#"{"target": "netns/CLUSTER", "feature": {"network": {"outgoing": {"filter": {"local": ["messages-db"]}}}}}"#, 8001, &[]);
    let answer = world.post(&app, "hello world, I love rolls");
    assert_eq!(answer, "hewwo wowwd, I wuv wowws uwu\nstored as #1\n");
    let events = app.stop();
    wait_stored(&world.laptop_db, "hewwo wowwd, I wuv wowws uwu");
    assert!(
        !stored(&world.cluster_db, "wowws"),
        "the cluster's messages-db got the message"
    );
    world
        .uwu_service
        .wait_log(|l| l.contains("I love rolls"), T);
    assert!(
        counted(&world.cluster_stats, cs) && !counted(&world.laptop_stats, ls),
        "stats went remote (no rule for it)"
    );
    // Events explain it: the local rule for messages-db (and its DNS), default for the rest.
    assert!(
        events.iter().any(|e| e["syscall"] == "connect"
            && e["host"] == "messages-db"
            && e["decision"] == "local"
            && e["rule"] == "messages-db"),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["syscall"] == "dns"
            && e["name"] == "messages-db"
            && e["decision"] == "local"),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["syscall"] == "connect"
            && e["host"] == "uwu-service"
            && e["decision"] == "remote"
            && e["rule"] == "default"),
        "{events:?}"
    );

    // A remote list: only uwu-service and stats go to the cluster.
    let app = world.app(r#"{"target": "netns/CLUSTER", "feature": {"network": {"outgoing": {"filter": {"remote": ["uwu-service", "stats"]}}}}}"#, 8002, &[]);
    assert!(world.post(&app, "second").starts_with("second uwu\n"));
    app.stop();
    wait_stored(&world.laptop_db, "second uwu");
    assert!(!stored(&world.cluster_db, "second uwu"));
}

#[test]
fn port_subnet_ipv6_and_udp_rules() {
    let world = World::new();

    // Port-only rule: messages-db is resolved by the cluster (198.18.0.11), but port 6379
    // stays local, so sctrace looks the name up again locally and connects there.
    let app = world.app(r#"{"target": "netns/CLUSTER", "feature": {"network": {"outgoing": {"filter": {"local": [":6379"]}}}}}"#, 8003, &[]);
    assert!(world.post(&app, "by port").starts_with("by powt uwu\n"));
    let events = app.stop();
    wait_stored(&world.laptop_db, "by powt uwu");
    assert!(!stored(&world.cluster_db, "by powt"));
    assert!(
        // (Go dials the address its RFC 6724 sort puts first: IPv6, as in the cluster, where
        // the local address shows in the v6 socket's v4-mapped form.)
        events.iter().any(|e| e["syscall"] == "connect"
            && e["rule"] == ":6379"
            && (e["reresolved"] == "127.0.0.20:6379"
                || e["reresolved"] == "[::ffff:127.0.0.20]:6379")),
        "{events:?}"
    );

    // Subnet rule: the cluster's service range goes remote, so the cluster's messages-db
    // gets this one.
    let app = world.app(r#"{"target": "netns/CLUSTER", "feature": {"network": {"outgoing": {"filter": {"remote": ["198.18.0.0/24"]}}}}}"#, 8004, &[]);
    assert!(world.post(&app, "by subnet").starts_with("by subnet uwu\n"));
    app.stop();
    wait_stored(&world.cluster_db, "by subnet uwu");
    assert!(!stored(&world.laptop_db, "by subnet"));

    // IPv6: uwu-service by its IPv6 address, remote by an IPv6 subnet rule; messages-db by
    // name stays local (not in the remote list: the subnet holds uwu-service's address only,
    // since Go dials messages-db's IPv6 address first, as it sorts them in the cluster).
    let uwu6 = world.cluster.service("uwu-service").v6();
    let service = format!("[{uwu6}]:8080");
    let app = world.app(
        r#"{"target": "netns/CLUSTER", "feature": {"network": {"outgoing": {"filter": {"remote": ["[2001:2::10]/128", "stats"]}}}}}"#,
        8005,
        &[("UWU_SERVICE", service.as_str())],
    );
    assert!(world.post(&app, "over six").starts_with("uvw six uwu\n"));
    app.stop();
    world.uwu_service.wait_log(
        |l| l.contains("over six") && l.contains("(from [2001:2::10]:"),
        T,
    );
    wait_stored(&world.laptop_db, "uvw six uwu");

    // UDP rules: stats (UDP) stays local, TCP goes remote.
    let (cs, ls) = (
        world.cluster_stats.log().len(),
        world.laptop_stats.log().len(),
    );
    let app = world.app(r#"{"target": "netns/CLUSTER", "feature": {"network": {"outgoing": {"filter": {"local": ["udp://stats"]}}}}}"#, 8006, &[]);
    assert!(world.post(&app, "udp rule").starts_with("udp wuwe uwu\n"));
    app.stop();
    wait_stored(&world.cluster_db, "udp wuwe uwu");
    let deadline = Instant::now() + T;
    while !counted(&world.laptop_stats, ls) {
        assert!(Instant::now() < deadline, "the laptop's stats got nothing");
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !counted(&world.cluster_stats, cs),
        "the cluster's stats got the datagram"
    );
}

#[test]
fn config_check_and_explain_speak_plainly() {
    require_root();
    let dir = std::env::temp_dir().join(format!("sctrace-uwu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.json");
    std::fs::write(&good, r#"{"target": "netns/x", "feature": {"network": {"outgoing": {"filter": {"local": ["messages-db", ":5432"]}}, "dns": true}, "fs": "read"}}"#).unwrap();
    let out = run_with_timeout(
        Command::new(bin("sctrace"))
            .args(["config", "check"])
            .arg(&good),
        T,
    );
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(out.stdout, format!("{}: ok\n", good.display()));
    assert!(out.stderr.starts_with("sctrace: warning: "), "{out}");
    assert!(out.stderr.contains("feature.fs"), "{out}");

    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        "{\n  \"feature\": {\"network\": {\"outgoing\": {\"fitler\": {}}}}\n}\n",
    )
    .unwrap();
    let out = run_with_timeout(
        Command::new(bin("sctrace"))
            .args(["config", "check"])
            .arg(&bad),
        T,
    );
    assert_eq!(out.code(), Some(125), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(
        out.stderr
            .starts_with(&format!("sctrace: {}:2:", bad.display())),
        "{out}"
    );
    assert!(
        out.stderr
            .contains("feature.network.outgoing.fitler: unknown key, did you mean \"filter\"?"),
        "{out}"
    );

    // The program is not started when the config is bad.
    let marker = dir.join("ran");
    let out = run_with_timeout(
        Command::new(bin("sctrace"))
            .args(["run", "-c"])
            .arg(&bad)
            .arg("--")
            .arg("touch")
            .arg(&marker),
        T,
    );
    assert_eq!(out.code(), Some(125), "{out}");
    assert!(!marker.exists());

    let explain = |dest: &str, udp: bool| {
        let mut cmd = Command::new(bin("sctrace"));
        cmd.args(["explain", "-c"]).arg(&good).arg(dest);
        if udp {
            cmd.arg("--udp");
        }
        run_with_timeout(&mut cmd, T)
    };
    let out = explain("messages-db:6379", false);
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(
        out.stdout.contains("local") && out.stdout.contains("messages-db"),
        "{out}"
    );
    let out = explain("198.18.0.10:5432", false);
    assert!(
        out.stdout.contains("local") && out.stdout.contains(":5432"),
        "{out}"
    );
    let out = explain("198.18.0.10:80", true);
    assert!(
        out.stdout.contains("remote") && out.stdout.contains("default"),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
