//! Incoming traffic end to end (issue: mirror and steal the target's connections): the seed
//! scenario. In the local cluster, `uwu-app` runs at 198.18.0.17:8000 with `uwu-service` and
//! the cluster's `messages-db`; a client in a third namespace (the "outside world", joined
//! to the cluster by a veth) sends it requests; the developer's `uwu-app` runs on the laptop
//! under `sctrace run` with `feature.network.incoming`. Which side answered is told by the
//! answers and the servers' own logs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sctrace_tests::{
    bin, fixture, require_root, run_with_timeout, Cluster, Netns, Output, Server, ServerSpec,
    Variant,
};

const T: Duration = Duration::from_secs(60);
const APP: &str = "198.18.0.17";

struct World {
    cluster: Cluster,
    outside: Netns,
    cluster_db: Server,
    laptop_db: Server,
    cluster_app: Server,
    _uwu: Server,
}

fn service(ns: &Netns, program: &str, name: &str, listen: &str) -> Server {
    Server::spawn_command(
        ns.command(fixture(program))
            .args(["-name", name, "-listen", listen]),
    )
}

impl World {
    fn new() -> World {
        require_root();
        let cluster = Cluster::up();
        let outside = Netns::new("outside");
        outside.veth(&cluster.cluster, "198.18.2.2/30", "198.18.2.1/30");
        let route = run_with_timeout(
            Command::new("ip").args([
                "-n",
                outside.name(),
                "route",
                "add",
                "198.18.0.0/24",
                "via",
                "198.18.2.1",
            ]),
            T,
        );
        route.assert_success();
        let uwu = service(
            &cluster.cluster,
            "uwu-service",
            "uwu-service",
            "198.18.0.10:8080",
        );
        let cluster_db = service(
            &cluster.cluster,
            "messages-db",
            "cluster-db",
            "198.18.0.11:6379",
        );
        let laptop_db = service(
            &cluster.laptop,
            "messages-db",
            "laptop-db",
            "127.0.0.20:6379",
        );
        // The app as deployed in the cluster (it logs on stderr; "ready" once it listens).
        let cluster_app = Server::spawn_command(Command::new("sh").args([
            "-c",
            &format!(
                "ip netns exec {} env LISTEN={APP}:8000 STATS= {} 2>&1 | sed -u 's/.*listening on.*/&\\nready/'",
                cluster.cluster.name(),
                fixture("uwu-app").display()
            ),
        ]));
        World {
            cluster,
            outside,
            cluster_db,
            laptop_db,
            cluster_app,
            _uwu: uwu,
        }
    }

    fn config(&self, name: &str, incoming: &str) -> PathBuf {
        let path = self.cluster.laptop.scratch_dir().join(name);
        let json = format!(
            r#"{{"target": "netns/{}", "feature": {{"network": {{"incoming": {incoming}, "outgoing": {{"filter": {{"local": ["messages-db"]}}}}}}}}}}"#,
            self.cluster.cluster.name()
        );
        std::fs::write(&path, json).unwrap();
        path
    }

    /// The developer's program under `sctrace run -c CONFIG` on the laptop.
    fn run(&self, config: &Path, program: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
        let mut cmd = self.cluster.sctrace();
        cmd.args(["run", "-q", "-c"])
            .arg(config)
            .arg("--")
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().unwrap()
    }

    /// The local uwu-app under sctrace, listening on :8000 (like the cluster's).
    fn local_app(&self, config: &Path) -> Child {
        let child = self.run(
            config,
            &fixture("uwu-app"),
            &[],
            &[("LISTEN", "0.0.0.0:8000"), ("STATS", "")],
        );
        let deadline = Instant::now() + T;
        while !self
            .cluster
            .laptop
            .run_in(|| std::net::TcpStream::connect(("127.0.0.1", 8000)).is_ok())
        {
            assert!(Instant::now() < deadline, "the local uwu-app did not start");
            thread::sleep(Duration::from_millis(50));
        }
        // The subscription is made as the app listens; give the agent its moment.
        thread::sleep(Duration::from_millis(500));
        child
    }

    /// Sends requests from the outside world; each is (path, extra header line, body).
    /// Requests share one keep-alive connection. Returns the answers' bodies.
    fn client(&self, requests: &[(&str, &str, &str)]) -> Vec<String> {
        self.try_client(requests)
            .unwrap_or_else(|out| panic!("the client failed:\n{out}"))
    }

    /// Like [`World::client`], giving the client's output back when it fails.
    fn try_client(&self, requests: &[(&str, &str, &str)]) -> Result<Vec<String>, Output> {
        let mut script = String::from(
            "import http.client, sys\nc = http.client.HTTPConnection('198.18.0.17', 8000, timeout=20)\n",
        );
        for (path, header, body) in requests {
            let headers = if header.is_empty() {
                "{}".to_string()
            } else {
                let (k, v) = header.split_once(": ").unwrap();
                format!("{{'{k}': '{v}'}}")
            };
            script.push_str(&format!(
                "c.request('POST', '{path}', body={body:?}, headers={headers})\nr = c.getresponse()\nprint(repr(r.read().decode()))\n"
            ));
        }
        let out = run_with_timeout(self.outside.command("python3").args(["-c", &script]), T);
        if !out.status.success() {
            return Err(out);
        }
        Ok(out
            .stdout
            .lines()
            .map(|l| l.trim_matches('\'').replace("\\n", "\n"))
            .collect())
    }
}

fn stored(db: &Server, text: &str) -> bool {
    db.log()
        .iter()
        .any(|l| l.contains("stored #") && l.contains(text))
}

fn stop(child: Child) -> Output {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let out = child.wait_with_output().unwrap();
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn steal_mirror_and_an_http_filter_decide_who_answers() {
    let world = World::new();

    // Without sctrace, the cluster's app answers.
    let answers = world.client(&[("/uwu", "", "before")]);
    assert!(
        answers[0].starts_with("befowe uwu\nstored as #"),
        "{answers:?}"
    );
    assert!(stored(&world.cluster_db, "befowe uwu"));

    // steal: the local app answers, calls uwu-service through the agent and stores in the
    // laptop's messages-db; the cluster's app and database see nothing.
    let app = world.local_app(&world.config("steal.json", r#""steal""#));
    let answers = world.client(&[("/uwu", "", "stolen request")]);
    assert_eq!(answers[0], "stowen wequest uwu\nstored as #1\n");
    world
        .laptop_db
        .wait_log(|l| l.contains("stowen wequest uwu"), T);
    assert!(!stored(&world.cluster_db, "stowen"));
    assert!(!world
        .cluster_app
        .log()
        .iter()
        .any(|l| l.contains("stolen request")));
    stop(app);

    // Back to normal once the session ended.
    let answers = world.client(&[("/uwu", "", "after steal")]);
    assert!(
        answers[0].starts_with("aftew steaw uwu\nstored as #"),
        "{answers:?}"
    );
    assert!(stored(&world.cluster_db, "aftew steaw"));

    // mirror: the cluster's app answers the client; the local app gets a copy and works on
    // it too (its answer is dropped).
    let app = world.local_app(&world.config("mirror.json", r#""mirror""#));
    let answers = world.client(&[("/uwu", "", "mirrored request")]);
    world
        .cluster_db
        .wait_log(|l| l.contains("miwwowed wequest uwu"), T);
    assert!(
        answers[0].starts_with("miwwowed wequest uwu\nstored as #"),
        "{answers:?}"
    );
    world
        .laptop_db
        .wait_log(|l| l.contains("miwwowed wequest uwu"), T);
    // The session ends without the agent losing its rules or anyone complaining.
    let out = stop(app);
    let noises = [
        "rules are gone",
        "rules were lost",
        "subscribing again",
        "WARN",
    ];
    for noise in noises {
        assert!(!out.stderr.contains(noise), "{}", out.stderr);
    }

    // An HTTP filter: only requests with the header are stolen, per request on one
    // keep-alive connection.
    let app = world.local_app(&world.config(
        "filter.json",
        r#"{"mode": "steal", "http_filter": {"header_filter": "^x-sctrace: me$"}}"#,
    ));
    let answers = world.client(&[
        ("/uwu", "x-sctrace: me", "mine"),
        ("/uwu", "", "theirs"),
        ("/uwu", "x-sctrace: me", "mine again"),
    ]);
    assert_eq!(answers.len(), 3);
    world.laptop_db.wait_log(|l| l.contains("\"mine uwu\""), T);
    world
        .laptop_db
        .wait_log(|l| l.contains("mine again uwu"), T);
    world
        .cluster_db
        .wait_log(|l| l.contains("\"deiws uwu\""), T);
    assert!(!stored(&world.laptop_db, "deiws"));
    stop(app);
}

#[test]
fn the_client_address_reaches_accept_and_getpeername() {
    let world = World::new();
    let server = "import socket\ns = socket.socket(socket.AF_INET6)\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('::', 8000))\ns.listen()\nprint('listening', flush=True)\nc, a = s.accept()\nprint('accepted', a[0], c.getpeername()[0], flush=True)\nc.recv(1000)\nc.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 3\\r\\nConnection: close\\r\\n\\r\\nhi\\n')\nc.close()\n";
    let config = world.config("peer.json", r#""steal""#);
    let mut child = world.run(&config, Path::new("python3"), &["-c", server], &[]);
    thread::sleep(Duration::from_secs(2));
    let answers = world.client(&[("/", "", "x")]);
    assert_eq!(answers, ["hi\n"]);
    let out = child.wait().unwrap();
    assert!(out.success());
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(
        stdout.contains("accepted ::ffff:198.18.2.2 ::ffff:198.18.2.2"),
        "{stdout}"
    );
}

#[test]
fn many_stolen_connections_arrive_intact_and_a_closed_listener_gives_the_port_back() {
    let world = World::new();
    let srv = bin("sctrace-testsrv");
    let cluster_sink = world
        .cluster
        .cluster
        .spawn_server(ServerSpec::TcpSink(vec![format!("{APP}:9000")
            .parse::<SocketAddr>()
            .unwrap()]));
    // The developer's sink, under sctrace, steals port 9000; it stops listening after a while.
    let config = world.config("sink.json", r#""steal""#);
    let script = format!(
        "timeout 8 {} tcp-sink 0.0.0.0:9000; sleep 30",
        srv.display()
    );
    let child = world.run(&config, Path::new("/bin/sh"), &["-c", &script], &[]);
    thread::sleep(Duration::from_secs(2));
    // 200 connections at once, each with its own checksummed body.
    let many = run_with_timeout(
        world
            .outside
            .command(&srv)
            .args(["tcp-many", &format!("{APP}:9000"), "200", "65536"]),
        T,
    );
    assert!(
        many.status.success() && many.stdout.starts_with("ok"),
        "{many}"
    );
    assert!(
        cluster_sink
            .log()
            .iter()
            .all(|l| !l.starts_with("tcp sink")),
        "the cluster's sink got stolen connections"
    );
    // Once the local sink exits, the target's port is the cluster's again.
    let deadline = Instant::now() + T;
    loop {
        let one = run_with_timeout(
            world
                .outside
                .command(&srv)
                .args(["tcp-send", &format!("{APP}:9000"), "1000"]),
            T,
        );
        if one.status.success() && cluster_sink.log().iter().any(|l| l.starts_with("tcp sink")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the port did not come back to the cluster:\n{one}"
        );
        thread::sleep(Duration::from_millis(500));
    }
    stop(child);
}

#[test]
fn a_second_session_stealing_the_same_port_is_refused() {
    let world = World::new();
    let first = world.local_app(&world.config("first.json", r#""steal""#));
    // The second app listens on another local port but the same target port.
    let config = world.cluster.laptop.scratch_dir().join("second.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"target": "netns/{}", "feature": {{"network": {{"incoming": {{"mode": "steal", "port_mapping": [[8001, 8000]]}}}}}}}}"#,
            world.cluster.cluster.name()
        ),
    )
    .unwrap();
    let second = world.run(
        &config,
        &fixture("uwu-app"),
        &[],
        &[("LISTEN", "0.0.0.0:8001"), ("STATS", "")],
    );
    thread::sleep(Duration::from_secs(3));
    let second = stop(second);
    assert!(
        second
            .stderr
            .contains("sctrace: cannot steal port 8000 of the target"),
        "{second}"
    );
    // The first session still has it.
    let answers = world.client(&[("/uwu", "", "still mine")]);
    assert_eq!(answers[0], "stiww mine uwu\nstored as #1\n");
    stop(first);
}

#[test]
fn a_killed_sctrace_gives_the_port_back_and_listen_ports_moves_the_local_listener() {
    let world = World::new();
    // listen_ports: the app asks for port 8000, which really listens on 18000 locally;
    // the target's 8000 is still what is stolen.
    let config = world.config(
        "moved.json",
        r#"{"mode": "steal", "listen_ports": [[8000, 18000]]}"#,
    );
    let mut child = world.run(
        &config,
        &fixture("uwu-app"),
        &[],
        &[("LISTEN", "0.0.0.0:8000"), ("STATS", "")],
    );
    let deadline = Instant::now() + T;
    while !world
        .cluster
        .laptop
        .run_in(|| std::net::TcpStream::connect(("127.0.0.1", 18000)).is_ok())
    {
        assert!(
            Instant::now() < deadline,
            "the app did not listen on the moved port"
        );
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(500));
    let answers = world.client(&[("/uwu", "", "moved")]);
    assert_eq!(answers[0], "muvd uwu\nstored as #1\n");
    assert!(world
        .cluster
        .laptop
        .run_in(|| std::net::TcpStream::connect(("127.0.0.1", 8000)).is_err()));

    // SIGKILL: sctrace can't clean anything up, its agent's session ends, the rules go.
    assert!(Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let _ = child.wait();
    let deadline = Instant::now() + T;
    loop {
        let answers = world.try_client(&[("/uwu", "", "back home")]);
        if answers
            .as_ref()
            .is_ok_and(|a| a[0].starts_with("back home uwu\nstored as #"))
            && stored(&world.cluster_db, "back home uwu")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the target's port did not come back: {answers:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// A server that accepts `n` connections on `listen` (an IPv4 or IPv6 wildcard) and prints,
/// for each, what accept, getpeername and getsockname say.
fn address_printer(family: &str, listen: &str, port: u16, n: usize) -> String {
    format!(
        r#"
import socket
s = socket.socket(socket.{family})
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{listen}", {port}))
s.listen()
print("listening", flush=True)
for _ in range({n}):
    c, a = s.accept()
    print("accepted", a[0], c.getpeername()[0], c.getsockname()[0], c.getsockname()[1], flush=True)
    c.recv(100)
    c.close()
"#
    )
}

/// Connects from inside the cluster to `addr` and says whether the connection was made.
/// Runs a Python `script` in the cluster namespace (a client of the target's ports).
fn in_cluster(world: &World, script: &str) -> Output {
    run_with_timeout(
        world
            .cluster
            .cluster
            .command("python3")
            .args(["-c", script]),
        T,
    )
}

/// Starts a Python server `args` under sctrace with `config` and waits until it listens and
/// its port is subscribed.
fn listening(world: &World, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut app = world.run(config, Path::new("python3"), args, env);
    wait_for_line(&mut app, "listening");
    thread::sleep(Duration::from_secs(1));
    app
}

fn cluster_client(world: &World, host: &str, port: u16) -> String {
    let script = format!(
        r#"
import socket
try:
    c = socket.create_connection(("{host}", {port}), timeout=5)
    c.sendall(b"hello")
    c.close()
    print("connected")
except OSError as e:
    print("error", e.errno)
"#
    );
    in_cluster(world, &script).stdout.trim().to_string()
}

fn wait_for_line(child: &mut Child, want: &str) -> Vec<String> {
    use std::io::BufRead;
    let stdout = child.stdout.as_mut().unwrap();
    let mut reader = std::io::BufReader::new(stdout);
    let mut lines = Vec::new();
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 {
        lines.push(line.trim().to_string());
        if line.starts_with(want) {
            break;
        }
        line.clear();
    }
    lines
}

#[test]
fn ipv4_and_ipv6_clients_meet_the_listener_the_kernel_would_give_them() {
    let world = World::new();
    let config = world.config("families.json", r#"{"mode": "steal"}"#);
    let app6 = world.cluster.service("uwu-app").v6();
    // An IPv4 listener: the IPv4 client is stolen and shown as itself, with the target's
    // address as the connection's own; an IPv6 client can't reach an IPv4 listener, so it
    // meets the target (where nothing else listens on the port: refused).
    let mut v4 = world.run(
        &config,
        Path::new("python3"),
        &["-c", &address_printer("AF_INET", "0.0.0.0", 8001, 1)],
        &[],
    );
    wait_for_line(&mut v4, "listening");
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        cluster_client(&world, &format!("{app6}"), 8001),
        format!("error {}", libc::ECONNREFUSED)
    );
    assert_eq!(cluster_client(&world, APP, 8001), "connected");
    let lines = wait_for_line(&mut v4, "accepted");
    assert_eq!(
        lines.last().map(String::as_str),
        Some(format!("accepted {APP} {APP} {APP} 8001").as_str()),
        "{lines:?}"
    );
    stop(v4);
    // A dual-stack IPv6 listener: the IPv4 client appears v4-mapped, the IPv6 one as itself.
    let mut v6 = world.run(
        &config,
        Path::new("python3"),
        &["-c", &address_printer("AF_INET6", "::", 8002, 2)],
        &[],
    );
    wait_for_line(&mut v6, "listening");
    thread::sleep(Duration::from_secs(1));
    assert_eq!(cluster_client(&world, APP, 8002), "connected");
    let lines = wait_for_line(&mut v6, "accepted");
    assert_eq!(
        lines.last().map(String::as_str),
        Some(format!("accepted ::ffff:{APP} ::ffff:{APP} ::ffff:{APP} 8002").as_str()),
        "{lines:?}"
    );
    assert_eq!(
        cluster_client(&world, &format!("{app6}"), 8002),
        "connected"
    );
    let lines = wait_for_line(&mut v6, "accepted");
    assert_eq!(
        lines.last().map(String::as_str),
        Some(format!("accepted {app6} {app6} {app6} 8002").as_str()),
        "{lines:?}"
    );
    stop(v6);
}

#[test]
fn an_ipv4_and_an_ipv6_only_listener_on_one_port_each_get_their_clients() {
    // nginx's `listen 80; listen [::]:80;`: two sockets on one port, the IPv6 one IPv6-only.
    let world = World::new();
    let config = world.config("two-listeners.json", r#"{"mode": "steal"}"#);
    let app6 = world.cluster.service("uwu-app").v6();
    let server = r#"
import select, socket
v4 = socket.socket(socket.AF_INET)
v4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
v4.bind(("0.0.0.0", 8003))
v4.listen()
v6 = socket.socket(socket.AF_INET6)
v6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
v6.bind(("::", 8003))
v6.listen()
print("listening", flush=True)
for _ in range(2):
    ready, _, _ = select.select([v4, v6], [], [], 30)
    s = ready[0]
    c, a = s.accept()
    print("v4-listener" if s is v4 else "v6-listener", "accepted", a[0], flush=True)
    c.recv(100)
    c.close()
"#;
    let mut child = world.run(&config, Path::new("python3"), &["-c", server], &[]);
    wait_for_line(&mut child, "listening");
    thread::sleep(Duration::from_secs(1));
    assert_eq!(cluster_client(&world, APP, 8003), "connected");
    let lines = wait_for_line(&mut child, "v");
    assert_eq!(
        lines.last().map(String::as_str),
        Some(format!("v4-listener accepted {APP}").as_str()),
        "{lines:?}"
    );
    assert_eq!(
        cluster_client(&world, &format!("{app6}"), 8003),
        "connected"
    );
    let lines = wait_for_line(&mut child, "v");
    assert_eq!(
        lines.last().map(String::as_str),
        Some(format!("v6-listener accepted {app6}").as_str()),
        "{lines:?}"
    );
    stop(child);
}

/// The network namespace cookie of a socket made by python3 in `ns`.
fn netns_cookie(ns: &Netns) -> String {
    let out = run_with_timeout(
        ns.command("python3").args([
            "-c",
            "import socket\nprint(int.from_bytes(socket.socket().getsockopt(socket.SOL_SOCKET, 71, 8), 'little'))",
        ]),
        T,
    );
    out.assert_success();
    out.stdout.trim().to_string()
}

#[test]
fn a_stolen_connection_reaches_the_app_as_the_clients_own_socket() {
    // Whole-connection steal with nobody mirroring: the app accepts the very socket the
    // client connected to in the target (its netns cookie is the cluster's), so no byte is
    // relayed; what the program sees is what it would see there — the client's address, and
    // the target's address and port as the connection's own. Three ways: the app's listener
    // itself moved into the target (the kernel gives it the connection); the listener kept
    // here (SCTRACE_TARGET_LISTENERS=0), the agent handing each connection over; and
    // everything relayed (SCTRACE_DIRECT_SOCKETS=0), which the same program can tell by the
    // cookie. Kept here, both kinds of servers: one blocked in accept (sctrace answers the
    // parked call with the offered socket) and one waiting in select first (a placeholder
    // connection wakes it; its accept gets the client's socket); and a dual-stack IPv6
    // listener, whose IPv4 client is a v4-mapped IPv6 socket there.
    let world = World::new();
    let config = world.config("as-is.json", r#"{"mode": "steal"}"#);
    let cluster_cookie = netns_cookie(&world.cluster.cluster);
    let laptop_cookie = netns_cookie(&world.cluster.laptop);
    assert_ne!(cluster_cookie, laptop_cookie);
    let server = r#"
import select, socket, sys
if sys.argv[2] == "6":
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", 8004))
else:
    s = socket.socket(socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 8004))
s.listen()
# Again, with another backlog, as nginx does.
s.listen(64)
print("listening", flush=True)
if sys.argv[1] == "select":
    s.setblocking(False)
    select.select([s], [], [])
c, a = s.accept()
c.setblocking(True)
cookie = lambda x: int.from_bytes(x.getsockopt(socket.SOL_SOCKET, 71, 8), 'little')
peer = c.getpeername()[0]
data = b""
while not data.endswith(b"\n"):
    chunk = c.recv(100)
    if not chunk:
        break
    data += chunk
c.sendall(data.upper())
own = "%s:%d" % c.getsockname()[:2]
bound = "%s:%d" % s.getsockname()[:2]
print("accepted", a[0], peer, cookie(c), own, bound, cookie(s), data.decode().strip(), flush=True)
c.close()
"#;
    let client = format!(
        r#"
import socket
c = socket.create_connection(("{APP}", 8004), timeout=10)
c.sendall(b"hello from the cluster\n")
got = b""
while True:
    chunk = c.recv(100)
    if not chunk:
        break
    got += chunk
print(got.decode().strip())
"#
    );
    // An agent reached by address (the confined variants) has no way to hand a socket over.
    let plain = Variant::from_env().is_plain();
    let of_target = if plain {
        &cluster_cookie
    } else {
        &laptop_cookie
    };
    let here = &laptop_cookie;
    // (SCTRACE_DIRECT_SOCKETS, SCTRACE_TARGET_LISTENERS, the connection's cookie, the
    // listener's, waiting in, family)
    for (direct, listeners, cookie, listener_cookie, waits_in, family) in [
        ("1", "1", of_target, of_target, "accept", "4"),
        ("1", "1", of_target, of_target, "select", "4"),
        ("1", "1", of_target, of_target, "accept", "6"),
        ("1", "0", of_target, here, "accept", "4"),
        ("1", "0", of_target, here, "select", "4"),
        ("1", "0", of_target, here, "accept", "6"),
        ("0", "1", here, here, "accept", "4"),
    ] {
        let mut app = listening(
            &world,
            &config,
            &["-c", server, waits_in, family],
            &[
                ("SCTRACE_DIRECT_SOCKETS", direct),
                ("SCTRACE_TARGET_LISTENERS", listeners),
            ],
        );
        let (client_shown, bound) = if family == "6" {
            (format!("::ffff:{APP}"), ":::8004")
        } else {
            (APP.to_string(), "0.0.0.0:8004")
        };
        let out = in_cluster(&world, &client);
        let how = format!("SCTRACE_DIRECT_SOCKETS={direct} SCTRACE_TARGET_LISTENERS={listeners}, waiting in {waits_in}, IPv{family} listener");
        assert_eq!(out.stdout.trim(), "HELLO FROM THE CLUSTER", "{how}: {out}");
        let lines = wait_for_line(&mut app, "accepted");
        assert_eq!(
            lines.last().map(String::as_str),
            Some(format!("accepted {client_shown} {client_shown} {cookie} {client_shown}:8004 {bound} {listener_cookie} hello from the cluster").as_str()),
            "{how} (cluster {cluster_cookie}, laptop {laptop_cookie}): {lines:?}"
        );
        stop(app);
    }
}

#[test]
fn a_blocking_accept_interrupted_again_and_again_loses_no_stolen_connection() {
    // A server blocked in accept while a timer signal keeps interrupting it (Python retries
    // the call, PEP 475): sctrace parks each accept, the signal ends it, the next one is
    // parked anew, and offered connections race with all of that. Every client must get
    // its own answer, in order.
    const CLIENTS: usize = 150;
    let world = World::new();
    let config = world.config("interrupted.json", r#"{"mode": "steal"}"#);
    let server = format!(
        r#"
import signal, socket
signal.signal(signal.SIGALRM, lambda *a: None)
signal.setitimer(signal.ITIMER_REAL, 0.003, 0.003)
s = socket.socket(socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8005))
s.listen(64)
print("listening", flush=True)
for n in range({CLIENTS}):
    c, a = s.accept()
    c.sendall(b"%d\n" % n)
    c.close()
print("served", {CLIENTS}, flush=True)
"#
    );
    let client = format!(
        r#"
import socket
got = []
for n in range({CLIENTS}):
    c = socket.create_connection(("{APP}", 8005), timeout=10)
    data = b""
    while not data.endswith(b"\n"):
        chunk = c.recv(100)
        if not chunk:
            break
        data += chunk
    c.close()
    got.append(data.decode().strip())
print("in order", got == [str(n) for n in range({CLIENTS})], len(got))
"#
    );
    // The listener in the target (the kernel's accept, interrupted), and kept here (each
    // accept parked in sctrace).
    for listeners in ["1", "0"] {
        let mut app = listening(
            &world,
            &config,
            &["-c", &server],
            &[("SCTRACE_TARGET_LISTENERS", listeners)],
        );
        let out = in_cluster(&world, &client);
        assert_eq!(
            out.stdout.trim(),
            format!("in order True {CLIENTS}"),
            "SCTRACE_TARGET_LISTENERS={listeners}: {out}"
        );
        let lines = wait_for_line(&mut app, "served");
        assert_eq!(
            lines.last().map(String::as_str),
            Some(format!("served {CLIENTS}").as_str()),
            "SCTRACE_TARGET_LISTENERS={listeners}"
        );
        stop(app);
    }
}

#[test]
fn a_parked_accept_takes_local_clients_and_stolen_ones_alike() {
    // A server blocked in accept on a stolen port: its accept waits parked in sctrace,
    // where a stolen connection and a client on the laptop itself may each answer it.
    // Both kinds, in turn, each get the server's answer, and accept shows each its own
    // client: the laptop's loopback, the cluster's address; getsockname the address each
    // dialed.
    let world = World::new();
    let config = world.config("parked.json", r#"{"mode": "steal"}"#);
    let server = r#"
import socket
s = socket.socket(socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8007))
s.listen()
print("listening", flush=True)
for n in range(4):
    c, a = s.accept()
    own = "%s:%d" % c.getsockname()[:2]
    c.sendall(b"%d\n" % n)
    c.close()
    print("accepted", n, a[0], own, flush=True)
"#;
    let local = || {
        world.cluster.laptop.run_in(|| {
            use std::io::Read;
            let mut c = std::net::TcpStream::connect(("127.0.0.1", 8007))?;
            c.set_read_timeout(Some(T))?;
            let mut got = String::new();
            c.read_to_string(&mut got)?;
            Ok::<_, std::io::Error>(got.trim().to_string())
        })
    };
    let stolen = || {
        let script = format!(
            "import socket\nc = socket.create_connection(('{APP}', 8007), timeout=10)\nprint(c.makefile().read().strip())\n"
        );
        in_cluster(&world, &script).stdout.trim().to_string()
    };
    // Kept here (SCTRACE_TARGET_LISTENERS=0) as described; moved into the target, the
    // accept is the kernel's there, and a laptop client comes through the target's
    // loopback — the same addresses.
    for listeners in ["0", "1"] {
        let mut app = listening(
            &world,
            &config,
            &["-c", server],
            &[("SCTRACE_TARGET_LISTENERS", listeners)],
        );
        for n in 0..4 {
            let from_laptop = n % 2 == 0;
            let (answer, client) = if from_laptop {
                (local().unwrap(), "127.0.0.1")
            } else {
                (stolen(), APP)
            };
            assert_eq!(
                answer,
                n.to_string(),
                "SCTRACE_TARGET_LISTENERS={listeners}, client {n}"
            );
            // The connection's own address is the one the client dialed.
            assert_eq!(
                wait_for_line(&mut app, "accepted"),
                [format!("accepted {n} {client} {client}:8007")],
                "SCTRACE_TARGET_LISTENERS={listeners}"
            );
        }
        stop(app);
    }
}

#[test]
fn a_server_listening_again_at_once_gets_its_port_and_its_clients() {
    // A server that closes its listener and at once listens again on the same port — in the
    // same process, with or without SO_REUSEADDR, or a new process each time (a reloading
    // development server). While its listener is in the target, sctrace holds the port
    // here for local clients; the app's bind finds it taken, and sctrace lets go of it then
    // (and of the stale subscription), so each round binds and gets its own client.
    let world = World::new();
    let config = world.config("relisten.json", r#"{"mode": "steal"}"#);
    let server = r#"
import socket, subprocess, sys
ROUND = """
import socket, sys
s = socket.socket()
if sys.argv[1] == "reuse":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8012))
s.listen()
print("listening", sys.argv[2], flush=True)
c, a = s.accept()
c.sendall(b"round %s\\n" % sys.argv[2].encode())
# The client closes first: no TIME_WAIT here on the port (without SO_REUSEADDR one would
# refuse the next bind, in the target too).
while c.recv(100):
    pass
c.close()
s.close()
"""
for i in range(3):
    if sys.argv[2] == "process":
        subprocess.run([sys.executable, "-c", ROUND, sys.argv[1], str(i)], check=True)
    else:
        sys.argv = ["-c", sys.argv[1], str(i), sys.argv[2]]
        exec(ROUND, {})
        sys.argv = sys.argv[:2] + [sys.argv[3]]
print("served", flush=True)
"#;
    let client = format!(
        r#"
import socket, time
for n in range(3):
    deadline = time.monotonic() + 10
    while True:
        try:
            c = socket.create_connection(("{APP}", 8012), timeout=5)
            print(c.makefile().readline().strip())
            c.close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
"#
    );
    for (reuse, how) in [
        ("reuse", "inline"),
        ("plain", "inline"),
        ("plain", "process"),
    ] {
        let mut app = listening(&world, &config, &["-c", server, reuse, how], &[]);
        let out = in_cluster(&world, &client);
        assert_eq!(
            out.stdout.trim(),
            "round 0\nround 1\nround 2",
            "{reuse}, {how}: {out}"
        );
        let lines = wait_for_line(&mut app, "served");
        assert_eq!(
            lines.last().map(String::as_str),
            Some("served"),
            "{reuse}, {how}: {lines:?}"
        );
        let done = stop(app);
        assert!(
            !done.stderr.contains("Traceback"),
            "{reuse}, {how}: {}",
            done.stderr
        );
    }
}
