//! The agent and the tunnel end to end (issue: relay outgoing TCP, UDP and DNS into a target
//! network namespace): every fixture runs under `sctrace run --target netns/...` in the
//! laptop namespace of a local cluster, where cluster addresses exist only behind the agent.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sctrace_tests::{
    bin, fixture, read_events, require_root, run_with_timeout, Cluster, Output, PtySession, Server,
    ServerSpec, Variant,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(180);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A local cluster with echo (TCP+UDP, port 7), sink (9) and source (19) servers on the
/// `echo` service's addresses.
struct World {
    cluster: Cluster,
    servers: Vec<Server>,
}

const SOURCE_BYTES: u64 = 256 * 1024 * 1024;

impl World {
    fn new() -> World {
        require_root();
        let cluster = Cluster::up();
        let echo = cluster.service("echo");
        let (v4, v6) = (echo.v4(), echo.v6());
        let on = |port: u16| {
            vec![
                SocketAddr::new(v4.into(), port),
                SocketAddr::new(v6.into(), port),
            ]
        };
        let servers = vec![
            cluster.cluster.spawn_server(ServerSpec::TcpEcho(on(7))),
            cluster.cluster.spawn_server(ServerSpec::UdpEcho(on(7))),
            cluster.cluster.spawn_server(ServerSpec::TcpSink(on(9))),
            cluster.cluster.spawn_server(ServerSpec::TcpSource {
                addr: SocketAddr::new(v4.into(), 19),
                bytes: SOURCE_BYTES,
            }),
            // Endless for a test's purposes: a transfer that is still running when the
            // agent is killed.
            cluster.cluster.spawn_server(ServerSpec::TcpSource {
                addr: SocketAddr::new(v4.into(), 20),
                bytes: 1 << 40,
            }),
        ];
        World { cluster, servers }
    }

    fn target(&self) -> String {
        format!("netns/{}", self.cluster.cluster.name())
    }

    fn scratch(&self, name: &str) -> PathBuf {
        self.cluster.laptop.scratch_dir().join(name)
    }

    /// `sctrace run --target ... [--events FILE] [-c CONFIG] -- program args` in the laptop.
    fn sctrace(
        &self,
        events: Option<&Path>,
        config: Option<&Path>,
        program: &Path,
        args: &[&str],
    ) -> Command {
        let mut cmd = self.cluster.sctrace();
        cmd.arg("run").arg("--target").arg(self.target());
        if let Some(events) = events {
            cmd.arg("--events").arg(events);
        }
        if let Some(config) = config {
            cmd.arg("-c").arg(config);
        }
        cmd.arg("--").arg(program).args(args);
        cmd
    }

    /// Runs `python3 -c script arg` under sctrace with the agent at `address` (its token in
    /// `token`) serving the target.
    fn python_by_address(&self, address: &str, token: &Path, script: &str, arg: &str) -> Output {
        let mut cmd = self.cluster.sctrace();
        cmd.env("SCTRACE_AGENT_ADDRESS", address)
            .env("SCTRACE_AGENT_TOKEN_FILE", token)
            .args(["run", "--target", &self.target(), "--"])
            .args(["python3", "-c", script, arg]);
        run_with_timeout(&mut cmd, T)
    }

    fn run(&self, events: Option<&Path>, program: &Path, args: &[&str]) -> Output {
        run_with_timeout(&mut self.sctrace(events, None, program, args), T)
    }

    fn config(&self, name: &str, json: &str) -> PathBuf {
        let path = self.scratch(name);
        std::fs::write(&path, json).unwrap();
        path
    }
}

fn lines(out: &Output) -> Vec<&str> {
    out.stdout.lines().collect()
}

fn events_of<'a>(events: &'a [Value], syscall: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["syscall"] == syscall).collect()
}

#[test]
fn every_fixture_reaches_the_cluster_only_through_the_agent() {
    let world = World::new();
    let echo6 = world.cluster.service("echo").v6();
    let v6_target = format!("tcp:[{echo6}]:7");
    let ops = [
        "tcp:echo:7",
        "udp:echo:7",
        "sendto:echo:7",
        "sendmsg:echo:7",
        "tcp:echo.default.svc.cluster.local:7",
        v6_target.as_str(),
        "tcp:echo:1",
        "tcp:blackhole:80",
        "resolve:uwu-service",
    ];
    for name in [
        "client-glibc",
        "client-musl",
        "client-rust",
        "client-go",
        "client-gocgo",
    ] {
        // Directly, the laptop reaches nothing in the cluster.
        let direct = run_with_timeout(
            world.cluster.laptop.command(fixture(name)).args([
                "--timeout-ms",
                "2000",
                "tcp:198.18.0.12:7",
            ]),
            T,
        );
        assert!(
            direct.stdout.contains("err"),
            "{name} reached the cluster without sctrace:\n{direct}"
        );

        let events = world.scratch(&format!("{name}.events"));
        let mut args = vec!["--timeout-ms", "2000"];
        args.extend(ops);
        let out = world.run(Some(&events), &fixture(name), &args);
        let got = lines(&out);
        for op in &ops[..6] {
            assert!(
                got.iter()
                    .any(|l| l.starts_with(&format!("{} ", op.replacen(':', " ", 1)))
                        && l.contains(" ok ")),
                "{name}: {op} failed:\n{out}"
            );
        }
        assert!(
            got.contains(&"tcp echo:1 err ECONNREFUSED"),
            "{name}: refused port:\n{out}"
        );
        assert!(
            got.contains(&"tcp blackhole:80 err ETIMEDOUT"),
            "{name}: black hole:\n{out}"
        );
        assert!(
            got.contains(&"resolve uwu-service ok 198.18.0.10,2001:2::10"),
            "{name}: short name:\n{out}"
        );

        let events = read_events(&events);
        let connects = events_of(&events, "connect");
        assert!(
            connects.iter().any(|e| e["decision"] == "remote"
                && e["rule"] == "default"
                && e["host"].as_str().is_some_and(|h| h.starts_with("echo"))),
            "{name}: no remote connect with its host name: {connects:?}"
        );
        // glibc asks the name searched with the target's list (it takes LOCALDOMAIN); the
        // others ask the short name, which the agent searches.
        let dns = events_of(&events, "dns");
        assert!(
            dns.iter().any(|e| e["name"].as_str().is_some_and(
                |n| n == "uwu-service" || n == "uwu-service.default.svc.cluster.local"
            ) && e["decision"] == "remote"
                && e["result"] == "ok"),
            "{name}: no DNS event for uwu-service: {dns:?}"
        );
    }
    // c-ares resolves through sctrace too, including reply-source checks.
    let out = world.run(
        None,
        &fixture("client-cares"),
        &["resolve:uwu-service", "resolve:echo"],
    );
    out.assert_success();
    assert!(
        out.stdout
            .contains("resolve uwu-service ok 198.18.0.10,2001:2::10"),
        "{out}"
    );
}

#[test]
fn dns_answers_as_the_target_would_for_every_resolver() {
    let world = World::new();
    for name in [
        "client-glibc",
        "client-musl",
        "client-rust",
        "client-go",
        "client-gocgo",
        "client-cares",
    ] {
        let out = world.run(
            None,
            &fixture(name),
            &[
                "resolve:uwu-service.default",
                "resolve:many",
                "resolve:no-such-service",
            ],
        );
        let got = lines(&out);
        assert!(
            got.contains(&"resolve uwu-service.default ok 198.18.0.10,2001:2::10"),
            "{name}:\n{out}"
        );
        // 40 + 40 records don't fit a UDP answer: resolvers with a TCP fallback get them all,
        // musl 1.2.3 (none) the ones that fit.
        let many = got
            .iter()
            .find(|l| l.starts_with("resolve many ok "))
            .unwrap_or_else(|| panic!("{name}: many:\n{out}"));
        let count = many.rsplit(' ').next().unwrap().split(',').count();
        assert!(
            count >= 8,
            "{name}: only {count} addresses for many:\n{out}"
        );
        assert!(
            got.iter()
                .any(|l| l.starts_with("resolve no-such-service err")),
            "{name}:\n{out}"
        );
    }
    // Other record types pass through: a TXT query sent by hand to the laptop's nameserver.
    let txt = r#"
import socket, struct
q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"\x04info\x00" + struct.pack(">HH", 16, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, ("127.0.0.53", 53))
data, src = s.recvfrom(4096)
print(src, b"sctrace local cluster" in data)
"#;
    let out = world.run(None, Path::new("python3"), &["-c", txt]);
    out.assert_success();
    assert_eq!(out.stdout.trim(), "('127.0.0.53', 53) True");
}

/// Queries to the laptop's nameserver three ways: `send` on a connected socket (the kernel
/// delivers it to sctrace's socket for that nameserver), `sendto` with the nameserver's
/// address (sctrace answers the trapped call), and from a socket that never talked to the
/// nameserver, straight to sctrace's socket, whose address the program finds in
/// /proc/net/udp (the kernel's own view of its connected socket).
const NAMESERVER_SOCKET: &str = r#"
import socket, struct
def query(qid):
    return (struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
            + b"\x0buwu-service\x07default\x00" + struct.pack(">HH", 1, 1))
def answered(data, qid):
    return data[:2] == struct.pack(">H", qid) and data[3] & 0xf == 0
own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
own.settimeout(5)
own.connect(("127.0.0.53", 53))
port = own.getsockname()[1]
relay = None
for line in open("/proc/net/udp").readlines()[1:]:
    f = line.split()
    if int(f[1].split(":")[1], 16) == port:
        ip, rport = f[2].split(":")
        relay = (socket.inet_ntoa(struct.pack("<I", int(ip, 16))), int(rport, 16))
own.send(query(1))
data, src = own.recvfrom(512)
print("send", src, answered(data, 1))
other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
other.settimeout(5)
other.sendto(query(2), ("127.0.0.53", 53))
data, src = other.recvfrom(512)
print("sendto", src, answered(data, 2))
stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
stranger.settimeout(2)
stranger.sendto(query(3), relay)
try:
    stranger.recvfrom(512)
    print("stranger answered")
except socket.timeout:
    print("stranger unanswered")
print("relay", relay[0], relay[1] != 53)
"#;

#[test]
fn the_shared_nameserver_socket_answers_only_the_programs_resolver_sockets() {
    // One loopback socket per nameserver serves every resolver socket of the session; it
    // answers a socket only after the program talked to the nameserver through it, so a
    // datagram straight to it (another local program that found its port) is dropped.
    let world = World::new();
    // Loopback stays on this machine: the stranger's datagram goes to sctrace's socket.
    let config = world.config(
        "keep-local.json",
        r#"{"feature": {"network": {"outgoing": {"ignore_localhost": true}}}}"#,
    );
    let mut cmd = world.sctrace(
        None,
        Some(&config),
        Path::new("python3"),
        &["-c", NAMESERVER_SOCKET],
    );
    let out = run_with_timeout(&mut cmd, T);
    out.assert_success();
    assert_eq!(
        lines(&out),
        [
            "send ('127.0.0.53', 53) True",
            "sendto ('127.0.0.53', 53) True",
            "stranger unanswered",
            "relay 127.0.0.1 True",
        ],
        "{out}"
    );
}

#[test]
fn a_changed_record_is_seen_once_its_ttl_has_passed() {
    require_root();
    // sctrace keeps answers for their TTL: a lookup right after the record changed in the
    // cluster still gets the old address (from sctrace, the cluster's DNS is not asked),
    // and the new one comes once the TTL has run out.
    const TTL: u32 = 3;
    let cluster = Cluster::up_with_dns_ttl(TTL);
    let script = format!(
        r#"
import socket, sys, time
def addrs():
    try:
        return sorted({{ai[4][0] for ai in socket.getaddrinfo("uwu-service", 80, type=socket.SOCK_STREAM)}})
    except socket.gaierror as e:
        return ["error " + str(e)]
first = addrs(); t = time.monotonic()
print("first", ",".join(first), flush=True)
sys.stdin.readline()
print("second", ",".join(addrs()), round(time.monotonic() - t, 3), flush=True)
deadline = time.monotonic() + {TTL} + 10
while time.monotonic() < deadline:
    now = addrs()
    if now != first:
        print("changed", ",".join(now), round(time.monotonic() - t, 3), flush=True)
        break
    time.sleep(0.1)
else:
    print("unchanged", flush=True)
"#
    );
    let mut child = cluster
        .laptop
        .command(bin("sctrace"))
        .args(["run", "--target"])
        .arg(format!("netns/{}", cluster.cluster.name()))
        .args(["--", "python3", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        line.trim().to_string()
    };
    let first = line();
    assert_eq!(first, "first 198.18.0.10,2001:2::10");

    let fqdn = "uwu-service.default.svc.cluster.local";
    let reloads = |c: &Cluster| {
        c.cluster_dns_log()
            .iter()
            .filter(|l| l.contains("cluster-dns.hosts"))
            .count()
    };
    let before = reloads(&cluster);
    cluster.edit_cluster_dns(|hosts| {
        hosts.replace(
            &format!("198.18.0.10 {fqdn}"),
            &format!("198.18.0.99 {fqdn}"),
        )
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads(&cluster) == before {
        assert!(
            Instant::now() < deadline,
            "the cluster DNS did not read its hosts file again"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let asked = |c: &Cluster| {
        c.cluster_dns_queries()
            .iter()
            .filter(|q| q.name == fqdn)
            .count()
    };
    let asked_before = asked(&cluster);
    std::io::Write::write_all(&mut stdin, b"go\n").unwrap();

    let second = line();
    let mut words = second.split(' ');
    assert_eq!(words.next(), Some("second"), "{second}");
    let addrs = words.next().unwrap_or_default();
    let after: f64 = words.next().and_then(|w| w.parse().ok()).unwrap();
    // Only meaningful while the first answer is certainly still fresh.
    if after < f64::from(TTL) - 0.5 {
        assert_eq!(
            addrs, "198.18.0.10,2001:2::10",
            "{after} s after the first lookup"
        );
        assert_eq!(
            asked(&cluster),
            asked_before,
            "answered from sctrace's cache"
        );
    }

    let changed = line();
    let mut words = changed.split(' ');
    assert_eq!(words.next(), Some("changed"), "{changed}");
    assert_eq!(words.next(), Some("198.18.0.99,2001:2::10"), "{changed}");
    let at: f64 = words.next().and_then(|w| w.parse().ok()).unwrap();
    assert!(
        at > f64::from(TTL) - 1.0,
        "the new address came {at} s after the first lookup, before the TTL ({TTL} s) ran out"
    );
    assert!(child.wait().unwrap().success());
}

#[test]
fn big_transfers_and_many_connections_arrive_intact() {
    let world = World::new();
    let srv = bin("sctrace-testsrv");
    let echo = world.cluster.service("echo").v4();
    let sink = format!("{echo}:9");
    let source = format!("{echo}:19");
    // 256 MiB up (the sink checks the SHA-256), 256 MiB down (the client checks it).
    let up = world.run(None, &srv, &["tcp-send", &sink, &SOURCE_BYTES.to_string()]);
    assert!(up.status.success() && up.stdout.starts_with("ok"), "{up}");
    let down = world.run(
        None,
        &srv,
        &["tcp-fetch", &source, &SOURCE_BYTES.to_string()],
    );
    assert!(
        down.status.success() && down.stdout.starts_with("ok"),
        "{down}"
    );
    // 500 connections open at once, each with its own checksummed payload.
    let many = world.run(None, &srv, &["tcp-many", &sink, "500", "65536"]);
    assert!(
        many.status.success() && many.stdout.starts_with("ok"),
        "{many}"
    );
    // Half-close: the fixture shuts its write side, the echo server answers, then closes.
    let half = world.run(
        None,
        &fixture("client-glibc"),
        &[
            "--payload",
            "1000000",
            "--expect-echo",
            &format!("tcp:{echo}:7"),
        ],
    );
    half.assert_success();
    assert_eq!(half.stdout.trim(), format!("tcp {echo}:7 ok 1000000"));
    drop(world.servers);
}

#[test]
fn a_reset_reaches_the_other_side_at_once() {
    let world = World::new();
    let echo = world.cluster.service("echo").v4();
    // The app resets its connection (SO_LINGER 0) and lives on: the server must see the
    // reset now, not when the session ends.
    let script = format!(
        "import socket, struct, time\nt = socket.create_connection(('{echo}', 7))\nt.sendall(b'x')\nassert t.recv(1) == b'x'\nt.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\nt.close()\nprint('reset', flush=True)\ntime.sleep(6)\n"
    );
    let mut child = world
        .sctrace(None, None, Path::new("python3"), &["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    assert_eq!(line.trim(), "reset");
    let seen = world.servers[0].try_wait_log(
        |l| l.starts_with("tcp error from") && l.contains("reset"),
        Duration::from_secs(3),
    );
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        still_running,
        "the app ended too early for the test to mean anything"
    );
    assert!(seen.is_some(), "{}", world.servers[0].dump());

    // The other way: a server resets while the app waits to read; the app sees the reset.
    let server = format!(
        "import socket, struct, time\nl = socket.socket()\nl.bind(('{echo}', 8))\nl.listen()\nprint('ready', flush=True)\nc, _ = l.accept()\ntime.sleep(0.5)\nc.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\nc.close()\n"
    );
    let mut server = world
        .cluster
        .cluster
        .command("python3")
        .args(["-c", &server])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    let stdout = server.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    let client = format!(
        "import socket\ns = socket.create_connection(('{echo}', 8))\ns.settimeout(5)\ntry:\n    print('read', s.recv(10))\nexcept OSError as e:\n    print(type(e).__name__)\n"
    );
    let out = world.run(None, Path::new("python3"), &["-c", &client]);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(out.stdout.trim(), "ConnectionResetError", "{out}");
}

#[test]
fn sockets_keep_their_identity_and_peer() {
    let world = World::new();
    let echo = world.cluster.service("echo").v4();
    let script = format!(
        r#"
import errno, select, socket
# getpeername shows the destination, not the relay (TCP and connected UDP).
t = socket.create_connection(("{echo}", 7))
print("tcp peer", t.getpeername())
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(("{echo}", 7))
print("udp peer", u.getpeername())
# Registered with epoll before connect, a non-blocking socket reports the connect.
s = socket.socket()
s.setblocking(False)
ep = select.epoll()
ep.register(s.fileno(), select.EPOLLOUT)
print("connect", errno.errorcode.get(s.connect_ex(("{echo}", 7)), "ok"))
events = ep.poll(5)
print("epoll", bool(events), "SO_ERROR", s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
s.sendall(b"ping")
s.setblocking(True)
print("echo", s.recv(4))
# A refused non-blocking connect reports ECONNREFUSED through SO_ERROR.
r = socket.socket()
r.setblocking(False)
code = r.connect_ex(("{echo}", 1))
if code == errno.EINPROGRESS:
    select.select([], [r], [], 5)
    code = r.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
print("refused", errno.errorcode.get(code))
# A non-blocking connect to a black hole is in progress, not writable, and stays so.
b = socket.socket()
b.setblocking(False)
print("blackhole", errno.errorcode.get(b.connect_ex(("198.18.0.254", 80))))
print("writable", bool(select.select([], [b], [], 1)[1]))
"#
    );
    let out = world.run(None, Path::new("python3"), &["-c", &script]);
    out.assert_success();
    let want = [
        format!("tcp peer ('{echo}', 7)"),
        format!("udp peer ('{echo}', 7)"),
        "connect EINPROGRESS".to_string(),
        "epoll True SO_ERROR 0".to_string(),
        "echo b'ping'".to_string(),
        "refused ECONNREFUSED".to_string(),
        "blackhole EINPROGRESS".to_string(),
        "writable False".to_string(),
    ];
    assert_eq!(lines(&out), want, "{out}");
}

#[test]
fn the_relay_refuses_connections_it_did_not_arrange() {
    let world = World::new();
    let echo = world.cluster.service("echo").v4();
    // The app holds a relayed connection open while another process of the laptop tries
    // every port sctrace listens on.
    let script = format!(
        "import socket, time\nt = socket.create_connection(('{echo}', 7))\nprint('connected', flush=True)\ntime.sleep(4)\nt.sendall(b'x')\nprint('still', t.recv(1))\n"
    );
    let child = world
        .sctrace(None, None, Path::new("python3"), &["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_secs(2));
    let ss = run_with_timeout(world.cluster.laptop.command("ss").args(["-ltnpH"]), T);
    let ports: Vec<String> = ss
        .stdout
        .lines()
        .filter(|l| l.contains("\"sctrace\""))
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect();
    assert!(!ports.is_empty(), "no sctrace listener found:\n{ss}");
    let before = world.servers[0].log().len();
    let probe = "import socket, sys\nfor a in sys.argv[1:]:\n    h, p = a.rsplit(':', 1)\n    s = socket.create_connection((h.strip('[]'), int(p)), timeout=3)\n    s.settimeout(3)\n    try:\n        s.sendall(b'hello')\n        print(a, repr(s.recv(5)))\n    except OSError as e:\n        print(a, type(e).__name__)\n";
    let mut cmd = world.cluster.laptop.command("python3");
    cmd.args(["-c", probe]).args(&ports);
    let probed = run_with_timeout(&mut cmd, T);
    for line in probed.stdout.lines() {
        assert!(
            line.ends_with("b''")
                || line.contains("ConnectionResetError")
                || line.contains("TimeoutError"),
            "{line}\n{probed}"
        );
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("still b'x'"));
    // Nothing but the app's own connection reached the cluster.
    let accepted = world.servers[0].log()[before..]
        .iter()
        .filter(|l| l.starts_with("tcp accept"))
        .count();
    assert_eq!(accepted, 0, "{:?}", world.servers[0].log());
}

#[test]
fn a_lost_agent_fails_remote_sockets_fast_and_local_traffic_goes_on() {
    let world = World::new();
    let local = world
        .cluster
        .laptop
        .spawn_server(ServerSpec::TcpEcho(vec![addr("127.0.0.1:7007")]));
    let config = world.config(
        "keep-local.json",
        r#"{"feature": {"network": {"outgoing": {"ignore_localhost": true}}}}"#,
    );
    let echo = world.cluster.service("echo").v4();
    let srv = bin("sctrace-testsrv");
    let done = world.scratch("fetch.done");
    let script = format!(
        "{srv} tcp-fetch {echo}:20 {bytes} --timeout 60 > {out} 2>&1; date +%s.%N > {done}; {srv} tcp-echo-check 127.0.0.1:7007 100000",
        srv = srv.display(),
        bytes = 1u64 << 40,
        out = world.scratch("fetch.out").display(),
        done = done.display(),
    );
    let child = world
        .sctrace(None, Some(&config), Path::new("/bin/sh"), &["-c", &script])
        // Relayed connections: a socket of the target would live on without the agent.
        .env("SCTRACE_DIRECT_SOCKETS", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the transfer runs, then kill the agent.
    world.servers[4].wait_log(|l| l.starts_with("tcp accept"), T);
    thread::sleep(Duration::from_millis(500));
    let agents = Command::new("pgrep")
        .args([
            "-f",
            &format!("sctrace-agent.*{}", world.cluster.cluster.name()),
        ])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&agents.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(!pid.is_empty(), "no agent process found");
    let killed_at = std::time::SystemTime::now();
    assert!(Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    // The shell creates the file before `date` writes into it: wait for a whole line.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ended: f64 = loop {
        let written = std::fs::read_to_string(&done).unwrap_or_default();
        if written.ends_with('\n') {
            break written.trim().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "the remote transfer did not end");
        thread::sleep(Duration::from_millis(20));
    };
    let killed = killed_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        ended - killed < 2.0,
        "the app's remote socket failed {:.2} s after the agent died",
        ended - killed
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "local traffic failed after the agent died:\n{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("sctrace: lost the agent"), "{stderr}");
    assert!(!std::fs::read_to_string(world.scratch("fetch.out"))
        .unwrap()
        .starts_with("ok"));
    local.wait_log(|l| l.starts_with("tcp close"), T);
}

#[test]
fn an_agent_with_another_token_refuses_the_session() {
    let world = World::new();
    let good = world.config("good.token", "the-right-token\n");
    let bad = world.config("bad.token", "a-wrong-token\n");
    let socket = world.scratch("agent.sock");
    let mut agent = Command::new(bin("sctrace-agent"))
        .args(["--listen", &format!("unix:{}", socket.display()), "--netns"])
        .arg(world.cluster.cluster.path())
        .arg("--token-file")
        .arg(&good)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "agent did not start");
        thread::sleep(Duration::from_millis(20));
    }
    let config = world.config(
        "by-address.json",
        &format!(
            r#"{{"agent": {{"address": "unix:{}", "token_file": "{}"}}}}"#,
            socket.display(),
            bad.display()
        ),
    );
    let marker = world.scratch("ran");
    let mut cmd = world.cluster.laptop.command(bin("sctrace"));
    cmd.args(["run", "-c"])
        .arg(&config)
        .arg("--")
        .arg("touch")
        .arg(&marker);
    let out = run_with_timeout(&mut cmd, T);
    assert_eq!(out.code(), Some(125), "{out}");
    assert!(
        out.stderr.contains("did not prove") && out.stderr.contains("token"),
        "{out}"
    );
    assert!(!marker.exists(), "the program ran without its agent");
    // With the right token the same agent serves.
    let config = world.config(
        "by-address-ok.json",
        &format!(
            r#"{{"agent": {{"address": "unix:{}", "token_file": "{}"}}}}"#,
            socket.display(),
            good.display()
        ),
    );
    let mut cmd = world.cluster.laptop.command(bin("sctrace"));
    cmd.args(["run", "-c"])
        .arg(&config)
        .arg("--")
        .arg(fixture("client-glibc"))
        .arg("tcp:echo:7");
    let ok = run_with_timeout(&mut cmd, T);
    ok.assert_success();
    let _ = agent.kill();
    let agent_out = agent.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&agent_out.stderr)
            .to_lowercase()
            .contains("token"),
        "the agent logs the refusal"
    );
}

/// A program whose SIGINT and SIGTERM handler still talks to the cluster: it resolves `echo`
/// and exchanges a line with its echo server, then exits 7.
const HANDLER_TALKS_TO_THE_CLUSTER: &str = r#"
import os, signal, socket, sys, time
def on_int(sig, frame):
    print('got', signal.Signals(sig).name, flush=True)
    host, port = socket.getaddrinfo('echo', 7, socket.AF_INET, socket.SOCK_STREAM)[0][4][:2]
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b'still here\n')
        print('echo says', s.recv(100).decode().strip(), flush=True)
    sys.exit(7)
signal.signal(signal.SIGINT, on_int)
signal.signal(signal.SIGTERM, on_int)
# Unbuffered: a signal that comes at once must not find print() under way (its handler's
# own print would be a reentrant call).
os.write(1, b'ready\n')
time.sleep(60)
"#;

#[test]
fn ctrl_c_leaves_sctrace_and_its_agent_working_for_the_programs_handler() {
    let world = World::new();
    let script = world.scratch("handler.py");
    std::fs::write(&script, HANDLER_TALKS_TO_THE_CLUSTER).unwrap();
    let mut pty = PtySession::start(&format!(
        "ip netns exec {} {} run -q --target {} -- python3 {}",
        world.cluster.laptop.name(),
        bin("sctrace").display(),
        world.target(),
        script.display()
    ));
    pty.wait_for("ready", T);
    pty.type_keys(b"\x03");
    let out = pty.finish(T);
    assert_eq!(out.stdout.matches("got SIGINT").count(), 1, "{out}");
    assert!(out.stdout.contains("echo says still here"), "{out}");
    assert!(!out.stdout.contains("lost the agent"), "{out}");
    assert_eq!(out.code(), Some(7), "{out}");
}

#[test]
fn a_signal_to_sctraces_group_leaves_the_agent_working_for_the_programs_handler() {
    // As `timeout` and CI runners do: SIGTERM to the whole process group of sctrace.
    let world = World::new();
    let script = world.scratch("handler.py");
    std::fs::write(&script, HANDLER_TALKS_TO_THE_CLUSTER).unwrap();
    let mut cmd = world.cluster.sctrace();
    cmd.args(["run", "-q", "--target", &world.target(), "--", "python3"])
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert_eq!(first.trim(), "ready");
    // SAFETY: kill with the process group this test started.
    let sent = unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
    assert_eq!(sent, 0);
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "sctrace did not exit");
        thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(rest.matches("got SIGTERM").count(), 1, "{rest}{stderr}");
    assert!(rest.contains("echo says still here"), "{rest}{stderr}");
    assert_eq!(stderr, "", "nothing but the program's own output");
    assert_eq!(status.code(), Some(7), "{rest}{stderr}");
}

#[test]
fn icmp_datagram_sockets_stay_on_this_machine_and_say_so() {
    let world = World::new();
    // Unprivileged ping sockets, in both namespaces (the default range allows nobody).
    for ns in [&world.cluster.laptop, &world.cluster.cluster] {
        let out = run_with_timeout(
            ns.command("sysctl")
                .args(["-qw", "net.ipv4.ping_group_range=0 2147483647"]),
            T,
        );
        out.assert_success();
    }
    let echo = world.cluster.service("echo").v4();
    let script = format!(
        r#"
import errno, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
echo_request = bytes([8, 0, 0, 0, 0, 1, 0, 1]) + b"sctrace"
try:
    s.sendto(echo_request, ("{echo}", 0))
    s.settimeout(2)
    print("reply", len(s.recv(100)) > 0)
except OSError as e:
    print("error", errno.errorcode[e.errno])
"#
    );
    // In the cluster itself, the echo service answers the ping.
    let direct = run_with_timeout(
        world
            .cluster
            .cluster
            .command("python3")
            .args(["-c", &script]),
        T,
    );
    direct.assert_success();
    assert_eq!(direct.stdout.trim(), "reply True", "{direct}");
    // Under sctrace the socket is not relayed as if it were UDP: it stays local (where the
    // laptop has no route), and its event says why.
    let events = world.scratch("icmp.events");
    let out = world.run(Some(&events), Path::new("python3"), &["-c", &script]);
    out.assert_success();
    assert_eq!(out.stdout.trim(), "error ENETUNREACH", "{out}");
    let events = read_events(&events);
    let sends = events_of(&events, "sendto");
    assert_eq!(sends.len(), 1, "{events:?}");
    assert_eq!(sends[0]["decision"], "local", "{events:?}");
    assert_eq!(sends[0]["rule"], "not tcp or udp", "{events:?}");
    assert_eq!(sends[0]["result"], "ENETUNREACH", "{events:?}");
}

#[test]
fn udp_connects_route_as_in_the_target() {
    // glibc's getaddrinfo sorts its answers by connecting a datagram socket to each (port 0)
    // and reading getsockname: both must say what the target's kernel says.
    let world = World::new();
    let echo = world.cluster.service("echo");
    let script = format!(
        r#"
import errno, socket
def show(s, what):
    try:
        return what()
    except OSError as e:
        return errno.errorcode[e.errno]
for family, dst in [
    (socket.AF_INET6, "::ffff:{v4}"), (socket.AF_INET6, "{v6}"), (socket.AF_INET, "{v4}"),
    (socket.AF_INET, "198.19.255.1"), (socket.AF_INET6, "2001:2:0:ffff::1"),
]:
    # A fresh socket per connect, and one reused glibc's way (AF_UNSPEC between).
    for port in (0, 7):
        s = socket.socket(family, socket.SOCK_DGRAM)
        try:
            s.connect((dst, port))
            print(dst, port, "source", show(s, lambda: s.getsockname()[0]),
                  "peer", show(s, lambda: s.getpeername()[:2]))
        except OSError as e:
            print(dst, port, "error", errno.errorcode[e.errno])
        s.close()
    s = socket.socket(family, socket.SOCK_DGRAM)
    for port in (0, 7):
        try:
            s.connect((dst, port))
            print("reused", dst, port, "source", show(s, lambda: s.getsockname()[0]))
            s.connect(("", 0)) if False else None
        except OSError as e:
            print("reused", dst, port, "error", errno.errorcode[e.errno])
        unspec = bytes(16)
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.connect(s.fileno(), unspec, 16)
        except OSError:
            pass
    s.close()
"#,
        v4 = echo.v4(),
        v6 = echo.v6()
    );
    let direct = run_with_timeout(
        world
            .cluster
            .cluster
            .command("python3")
            .args(["-c", &script]),
        T,
    );
    direct.assert_success();
    let traced = world.run(None, Path::new("python3"), &["-c", &script]);
    traced.assert_success();
    assert_eq!(traced.stdout, direct.stdout, "{traced}\n{direct}");
    assert!(direct.stdout.contains("error ENETUNREACH"), "{direct}");
}

/// A receive interrupted by a signal while sctrace waits for its datagram, then a datagram
/// that must reach the program's next receive, not the interrupted one.
const INTERRUPTED_RECEIVE: &str = r#"
import signal, socket, sys, time
class Alarm(Exception):
    pass
def on_alarm(sig, frame):
    raise Alarm()
signal.signal(signal.SIGALRM, on_alarm)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], 7))
signal.alarm(1)
try:
    s.recvfrom(100)
    print("unexpected data")
except Alarm:
    print("interrupted")
time.sleep(0.5)
s.send(b"ping")
signal.alarm(5)
try:
    data, src = s.recvfrom(100)
    print("got", data.decode(), src[0], src[1])
except Alarm:
    print("the reply was lost")
"#;

#[test]
fn an_interrupted_receive_loses_no_datagram_with_or_without_killable_waits() {
    let world = World::new();
    let echo = world.cluster.service("echo").v4().to_string();
    for killable in [true, false] {
        let mut cmd = world.sctrace(
            None,
            None,
            Path::new("python3"),
            &["-c", INTERRUPTED_RECEIVE, &echo],
        );
        if !killable {
            // As on kernels before 5.19: the signal takes the call back from sctrace.
            cmd.env("SCTRACE_TEST_NO_KILLABLE_WAIT", "1");
        }
        let out = run_with_timeout(&mut cmd, T);
        out.assert_success();
        assert_eq!(
            out.stdout,
            format!("interrupted\ngot ping {echo} 7\n"),
            "killable waits: {killable}\n{out}"
        );
    }
}

/// A server in the cluster that answers each datagram from its own port and then from
/// `SCATTER` more sockets of its own (as a TFTP server answers from a new port, or as
/// anyone who found the agent's port could flood it from forged sources).
const SCATTER_SERVER: &str = r#"
import socket, sys, time
addr = (sys.argv[1], int(sys.argv[2]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(addr)
print("ready", flush=True)
while True:
    data, client = s.recvfrom(100)
    s.sendto(b"server", client)
    others = []  # all open at once: each from a port of its own
    for i in range(int(sys.argv[3])):
        o = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        o.bind((sys.argv[1], 0))
        o.sendto(b"other", client)
        others.append(o)
        time.sleep(0.002)
    for o in others:
        o.close()
"#;

/// Asks once and counts the distinct sources of what arrives within 3 s of quiet.
const SCATTER_CLIENT: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"hi", (sys.argv[1], int(sys.argv[2])))
s.settimeout(3)
sources = set()
try:
    while True:
        data, src = s.recvfrom(100)
        sources.add((data, src))
except socket.timeout:
    pass
print("from server", sum(1 for d, _ in sources if d == b"server"))
print("from others", sum(1 for d, _ in sources if d == b"other"))
if len(sys.argv) > 3:  # under sctrace: the supervisor's open files
    print("supervisor fds", len(os.listdir("/proc/%d/fd" % os.getppid())))
"#;

#[test]
fn udp_replies_come_from_peers_the_program_sent_to_and_peers_are_bounded() {
    const SCATTER: usize = 600;
    let world = World::new();
    let echo = world.cluster.service("echo").v4().to_string();
    let mut server_cmd = world.cluster.cluster.command("python3");
    server_cmd.args(["-c", SCATTER_SERVER, &echo, "6969", &SCATTER.to_string()]);
    let _server = Server::spawn_command(&mut server_cmd);
    let client_args = ["-c", SCATTER_CLIENT, &echo, "6969"];
    let traced_args = ["-c", SCATTER_CLIENT, &echo, "6969", "fds"];

    // In the target itself, every source gets through.
    let direct = run_with_timeout(
        world.cluster.cluster.command("python3").args(client_args),
        T,
    );
    direct.assert_success();
    assert_eq!(
        direct.stdout,
        format!("from server 1\nfrom others {SCATTER}\n"),
        "{direct}"
    );

    // By default, as through a NAT: only the peer the program sent to.
    let events = world.scratch("udp-peers.jsonl");
    let out = world.run(Some(&events), Path::new("python3"), &traced_args);
    out.assert_success();
    let (replies, fds) = out.stdout.split_once("supervisor fds ").expect("fd count");
    assert_eq!(replies, "from server 1\nfrom others 0\n", "{out}");
    let baseline: usize = fds.trim().parse().unwrap();
    let drops = read_events(&events);
    let drops = events_of(&drops, "drop");
    let dropped: u64 = drops
        .iter()
        .map(|e| {
            assert_eq!(e["rule"], "not a peer the program sent to", "{e}");
            e["count"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(dropped, SCATTER as u64, "{drops:?}");

    // "any": every source, up to the cap on relay sockets (the server is one of them).
    let config = world.config(
        "udp-any.json",
        r#"{"feature": {"network": {"outgoing": {"udp_replies": "any"}}}}"#,
    );
    let events = world.scratch("udp-any.jsonl");
    let out = run_with_timeout(
        &mut world.sctrace(
            Some(&events),
            Some(&config),
            Path::new("python3"),
            &traced_args,
        ),
        T,
    );
    out.assert_success();
    let peers = 256;
    let (replies, fds) = out.stdout.split_once("supervisor fds ").expect("fd count");
    assert_eq!(
        replies,
        format!("from server 1\nfrom others {}\n", peers - 1),
        "{out}"
    );
    // One relay socket per peer, however many sources there were.
    let fds: usize = fds.trim().parse().unwrap();
    assert!(
        fds <= baseline + peers,
        "{fds} open files, {baseline} with one peer\n{out}"
    );
    let all = read_events(&events);
    let dropped: u64 = events_of(&all, "drop")
        .iter()
        .map(|e| {
            assert_eq!(e["rule"], "peer limit", "{e}");
            e["count"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(dropped, (SCATTER + 1 - peers) as u64, "{all:?}");
}

/// A program whose datagram socket lets others bind its address (SO_REUSEADDR), talking to
/// the cluster's echo server: it shows its port and the relay socket it is connected to,
/// waits for a line on stdin, sends again and prints everything that comes back.
const SHARED_PORT_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.connect((sys.argv[1], 7))
s.send(b"ping")
print(s.recv(100).decode(), flush=True)
port = s.getsockname()[1]
relay = None
for line in open("/proc/net/udp").read().splitlines()[1:]:
    f = line.split()
    if int(f[1].split(":")[1], 16) == port and f[2] != "00000000:0000":
        relay = int(f[2].split(":")[1], 16)
print(port, relay, flush=True)
sys.stdin.readline()
s.send(b"pong")
s.settimeout(2)
try:
    while True:
        print(s.recv(100).decode(), flush=True)
except socket.timeout:
    pass
"#;

/// Another user binding the program's address and sending to its relay socket.
const INTRUDER: &str = r#"
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError as e:
    print(errno.errorcode[e.errno])
    sys.exit(0)
print("bound", flush=True)
s.sendto(b"evil", ("127.0.0.1", int(sys.argv[2])))
"#;

#[test]
fn another_user_cannot_share_a_relayed_udp_port() {
    use std::io::{BufRead, BufReader, Write};
    let world = World::new();
    let echo = world.cluster.service("echo").v4().to_string();
    let events = world.scratch("shared-port.jsonl");
    let mut app = world
        .sctrace(
            Some(&events),
            None,
            Path::new("python3"),
            &["-c", SHARED_PORT_CLIENT, &echo],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(app.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ping\n");
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let ports: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(ports.len(), 2, "{line}");
    assert_ne!(
        ports[1], "None",
        "the program socket is connected to a relay socket"
    );

    let intruder = run_with_timeout(
        // A user id of nobody's (not even of `nobody`, which sctrace may run as).
        world.cluster.laptop.command("setpriv").args([
            "--reuid=54321",
            "--regid=54321",
            "--clear-groups",
            // Debian's: a python3 earlier in root's PATH may not be readable by others.
            "/usr/bin/python3",
            "-c",
            INTRUDER,
            ports[0],
            ports[1],
        ]),
        T,
    );
    intruder.assert_success();
    // The program's SO_REUSEADDR was turned off when its datagrams started to be relayed.
    assert_eq!(
        intruder.stdout, "EADDRINUSE\n",
        "the intruder shares the port"
    );

    app.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(app.wait().unwrap().success());
    assert_eq!(rest, "pong\n", "only the program's own datagram was echoed");
    let all = read_events(&events);
    assert!(events_of(&all, "drop").is_empty(), "{all:?}");
}

/// Remote connects in every way a program makes them, for a program run in the target and
/// under sctrace to print the same.
const CONNECTS: &str = r#"
import errno, os, selectors, socket, struct, sys
echo, blackhole = sys.argv[1], sys.argv[2]
def show(label, f):
    try:
        print(label, f())
    except OSError as e:
        print(label, errno.errorcode[e.errno])
s = socket.socket()
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
inheritable = os.get_inheritable(s.fileno())
s.connect((echo, 7))
print("options", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0,
      s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
      s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
      os.get_inheritable(s.fileno()) == inheritable)
print("addresses", s.getsockname()[0], s.getpeername())
show("again", lambda: s.connect((echo, 7)))
s.sendall(b"ping")
print("echo", s.recv(4))
n = socket.socket()
n.setblocking(False)
show("nonblocking", lambda: n.connect((echo, 8)))
sel = selectors.DefaultSelector()
sel.register(n, selectors.EVENT_WRITE)
sel.select(5)
print("so_error", errno.errorcode.get(n.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
b = socket.socket()
b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 1, 0))
show("blackhole", lambda: b.connect((blackhole, 80)))
show("unreachable", lambda: socket.socket().connect(("198.19.255.1", 80)))
e = socket.socket()
e.setblocking(False)
watch = selectors.EpollSelector()
watch.register(e, selectors.EVENT_WRITE)
show("watched", lambda: e.connect((echo, 7)))
print("watched ready", len(watch.select(5)) == 1)
e.setblocking(True)
e.sendall(b"pong")
print("echo", e.recv(4))
"#;

#[test]
fn remote_connects_use_sockets_of_the_target_where_that_is_safe() {
    let world = World::new();
    let echo = world.cluster.service("echo").v4().to_string();
    let blackhole = world.cluster.service("blackhole").v4().to_string();
    let args = ["-c", CONNECTS, &echo, &blackhole];
    let direct = run_with_timeout(world.cluster.cluster.command("python3").args(args), T);
    direct.assert_success();
    assert!(direct.stdout.contains("so_error ECONNREFUSED"), "{direct}");
    assert!(direct.stdout.contains("blackhole EINPROGRESS"), "{direct}");

    let events = world.scratch("direct.jsonl");
    let traced = world.run(Some(&events), Path::new("python3"), &args);
    traced.assert_success();
    assert_eq!(traced.stdout, direct.stdout, "{traced}\n{direct}");
    let all = read_events(&events);
    // TCP connects only: where the program's environment has no HOME, glibc also asks nscd
    // for the user (local AF_UNIX connects, events too).
    let paths: Vec<(String, String)> = events_of(&all, "connect")
        .iter()
        .filter(|e| e["sock_type"] == "stream" && e["family"] != "unix")
        // Whether the second connect (EISCONN, in the output above) is an event depends on
        // the mode: in container mode the kernel answers it for a released socket.
        .filter(|e| e["result"] != "EISCONN")
        .map(|e| {
            (
                e["path"].as_str().unwrap_or("-").to_string(),
                e["result"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    let expected = if Variant::from_env().is_plain() {
        [
            ("direct", "ok"),
            ("direct", "EINPROGRESS"),
            ("direct", "EINPROGRESS"),
            ("direct", "ENETUNREACH"),
            // Registered with epoll before connect: the registration follows the old socket.
            ("relay", "EINPROGRESS"),
        ]
    } else {
        // An agent reached by address: no socket of the target can be handed over; over
        // plain TCP the app's socket becomes the stream's data connection.
        let path = if Variant::from_env().agent_over_tcp() {
            "data"
        } else {
            "relay"
        };
        [
            (path, "ok"),
            (path, "EINPROGRESS"),
            (path, "EINPROGRESS"),
            (path, "ENETUNREACH"),
            (path, "EINPROGRESS"),
        ]
    };
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(p, r)| (p.to_string(), r.to_string()))
        .collect();
    assert_eq!(paths, expected, "{all:?}");

    // The same program with every connection relayed prints the same.
    let relayed = run_with_timeout(
        world
            .sctrace(None, None, Path::new("python3"), &args)
            .env("SCTRACE_DIRECT_SOCKETS", "0"),
        T,
    );
    relayed.assert_success();
    assert_eq!(relayed.stdout, direct.stdout, "{relayed}\n{direct}");
}

/// Connects to the echo server, then connects the same socket again; and starts a
/// non-blocking connect to the black hole, then asks again while it is still in progress.
const CONNECT_TWICE: &str = r#"
import errno, socket, sys
echo, blackhole = sys.argv[1], sys.argv[2]
s = socket.create_connection((echo, 7))
try:
    s.connect((echo, 7))
    print("second connect ok")
except OSError as e:
    print("second connect", errno.errorcode[e.errno])
s.sendall(b"x")
print("echo", s.recv(1))
n = socket.socket()
n.setblocking(False)
for attempt in ("first", "again"):
    try:
        n.connect((blackhole, 80))
        print(attempt, "ok")
    except OSError as e:
        print(attempt, errno.errorcode[e.errno])
"#;

#[test]
fn a_second_connect_on_a_connected_socket_connects_nothing_in_the_target() {
    // The kernel answers EISCONN (EALREADY while in progress) without touching the network:
    // so must sctrace, on relayed sockets too, rather than have the agent connect again.
    let world = World::new();
    let echo = world.cluster.service("echo").v4().to_string();
    let blackhole = world.cluster.service("blackhole").v4().to_string();
    let args = ["-c", CONNECT_TWICE, &echo, &blackhole];
    let accepts = || {
        world.servers[0]
            .log()
            .iter()
            .filter(|l| l.contains("tcp accept"))
            .count()
    };
    let before = accepts();
    let inside = run_with_timeout(world.cluster.cluster.command("python3").args(args), T);
    inside.assert_success();
    assert_eq!(accepts(), before + 1, "{inside}");
    assert!(inside.stdout.contains("second connect EISCONN"), "{inside}");
    assert!(inside.stdout.contains("again EALREADY"), "{inside}");
    for direct in ["1", "0"] {
        let before = accepts();
        let traced = run_with_timeout(
            world
                .sctrace(None, None, Path::new("python3"), &args)
                .env("SCTRACE_DIRECT_SOCKETS", direct),
            T,
        );
        traced.assert_success();
        assert_eq!(
            traced.stdout, inside.stdout,
            "SCTRACE_DIRECT_SOCKETS={direct}: {traced}"
        );
        // (The echo server logs an accept as it happens; the program has had its answer.)
        thread::sleep(Duration::from_millis(200));
        assert_eq!(
            accepts(),
            before + 1,
            "SCTRACE_DIRECT_SOCKETS={direct}: {traced}"
        );
    }
}

/// One direct connect (the program's fd table is read), then sockets registered with epoll
/// instances made afterwards — one of them reached only through a dup of a closed fd —
/// connected without blocking: each must still be reported writable by its instance.
const EPOLL_AFTER_A_CONNECT: &str = r#"
import os, select, socket, sys
echo = sys.argv[1]
first = socket.create_connection((echo, 7))
first.close()

def connect_watched(ep):
    s = socket.socket()
    s.setblocking(False)
    ep.register(s.fileno(), select.EPOLLOUT)
    try:
        s.connect((echo, 7))
    except BlockingIOError:
        pass
    ready = [fd for fd, ev in ep.poll(5) if fd == s.fileno() and ev & select.EPOLLOUT]
    print("writable" if ready else "never writable", s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
    return s

kept = [connect_watched(select.epoll())]
made = select.epoll()
other = os.dup(made.fileno())
made.close()
kept.append(connect_watched(select.epoll.fromfd(other)))
import ctypes, fcntl
libc = ctypes.CDLL(None, use_errno=True)
for name, arg in (("epoll_create", 0), ("epoll_create1", 1), ("epoll_create", 1), ("epoll_create1", 0o2000000)):
    fd = getattr(libc, name)(arg)
    if fd < 0:
        print(name, arg, "errno", ctypes.get_errno())
    else:
        print(name, arg, "close-on-exec" if fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC else "inherited")
"#;

#[test]
fn a_socket_watched_by_an_epoll_made_after_a_connect_keeps_its_registration() {
    let world = World::new();
    let echo = world.cluster.service("echo").v4().to_string();
    let args = ["-c", EPOLL_AFTER_A_CONNECT, &echo];
    let inside = run_with_timeout(world.cluster.cluster.command("python3").args(args), T);
    inside.assert_success();
    assert!(
        inside.stdout.starts_with("writable 0\nwritable 0\n"),
        "{inside}"
    );
    let events = world.scratch("epoll-after.jsonl");
    let traced = world.run(Some(&events), Path::new("python3"), &args);
    traced.assert_success();
    assert_eq!(traced.stdout, inside.stdout, "{traced}");
    // Only the connects to the cluster (see `remote_connects_use_sockets_of_the_target…`).
    let echo_addr = format!("{echo}:7");
    let paths: Vec<String> = events_of(&read_events(&events), "connect")
        .iter()
        .filter(|e| e["sock_type"] == "stream" && e["addr"] == echo_addr.as_str())
        .map(|e| e["path"].as_str().unwrap_or("-").to_string())
        .collect();
    let expected = if Variant::from_env().is_plain() {
        ["direct", "relay", "relay"]
    } else if Variant::from_env().agent_over_tcp() {
        ["data", "data", "data"]
    } else {
        ["relay", "relay", "relay"]
    };
    assert_eq!(paths, expected, "{traced}");
}

/// Resolves a cluster name many times (each lookup: a socket to the nameserver and glibc's
/// route probes, all closed at once), then counts the supervisor's open files a little
/// later, and once more with one lookup only.
const MANY_LOOKUPS: &str = r#"
import os, socket, sys, time
for _ in range(int(sys.argv[1])):
    socket.getaddrinfo("echo", 7, type=socket.SOCK_STREAM)
time.sleep(3)
print("supervisor fds", len(os.listdir("/proc/%d/fd" % os.getppid())))
"#;

#[test]
fn closed_udp_sockets_leave_no_relay_sockets_behind() {
    // Nothing is sent to a relay socket when the app closes its own, so sctrace must look:
    // 300 lookups leave no more open files than one does once they are over.
    let world = World::new();
    let fds = |lookups: &str| -> usize {
        let out = world.run(None, Path::new("python3"), &["-c", MANY_LOOKUPS, lookups]);
        out.assert_success();
        out.stdout
            .trim()
            .strip_prefix("supervisor fds ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no fd count\n{out}"))
    };
    let one = fds("1");
    let many = fds("300");
    assert!(
        many <= one + 8,
        "{many} open files after 300 lookups, {one} after one"
    );
}

/// One connection to the echo server: a message there and back, then whether `getpeername`
/// shows the destination.
const DATA_ECHO: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], 7))
s.sendall(b"over a data connection")
got = b""
while len(got) < 22:
    got += s.recv(100)
print("echo", got.decode(), s.getpeername()[0] == sys.argv[1])
"#;

/// Many connections at once (a pool warming up), each a message there and back.
const DATA_BURST: &str = r#"
import socket, sys, threading
ok = []
def one(i):
    s = socket.create_connection((sys.argv[1], 7), timeout=20)
    s.sendall(b"%04d" % i)
    got = b""
    while len(got) < 4:
        got += s.recv(4)
    ok.append(got == b"%04d" % i)
threads = [threading.Thread(target=one, args=(i,)) for i in range(100)]
for t in threads: t.start()
for t in threads: t.join()
print("echoed", sum(ok))
"#;

/// Bytes that start as a data connection does but prove nothing.
const FORGED_PREAMBLE: &str = r#"
import os, socket
s = socket.create_connection(("127.0.0.1", 7399), timeout=15)
s.sendall(b"SCTD" + os.urandom(52))
print("answered", len(s.recv(100)))
"#;

#[test]
fn an_agent_on_tcp_takes_the_programs_own_sockets_and_nothing_forged() {
    let world = World::new();
    let echo = world.cluster.service("echo").v4().to_string();
    let (address, token) = world.cluster.agent_over_tcp();
    let traced = |variant: &Variant, name: &str| {
        let events = world.scratch(name);
        let mut cmd = world.cluster.sctrace_as(variant);
        cmd.env("SCTRACE_AGENT_ADDRESS", &address)
            .env("SCTRACE_AGENT_TOKEN_FILE", &token)
            .args(["run", "--target", &world.target(), "--events"])
            .arg(&events)
            .args(["--", "python3", "-c", DATA_ECHO, &echo]);
        let out = run_with_timeout(&mut cmd, T);
        out.assert_success();
        assert_eq!(out.stdout, "echo over a data connection True\n", "{out}");
        let paths: Vec<String> = events_of(&read_events(&events), "connect")
            .iter()
            .filter(|e| e["sock_type"] == "stream" && e["family"] != "unix")
            .map(|e| e["path"].as_str().unwrap_or("-").to_string())
            .collect();
        assert_eq!(paths, ["data"], "{}: {out}", variant.describe());
    };
    // As root, and in the container mode (sctrace's own sockets).
    traced(&Variant::default(), "data-plain.jsonl");
    // A hundred at once: none is turned away by the agent's bound on connections that have
    // not proved themselves yet.
    let burst = world.python_by_address(&address, &token, DATA_BURST, &echo);
    burst.assert_success();
    assert_eq!(burst.stdout, "echoed 100\n", "{burst}");
    traced(&Variant::confined(), "data-confined.jsonl");

    // A forged preamble: the agent closes the connection having answered nothing ...
    let forged = run_with_timeout(
        world
            .cluster
            .laptop
            .command("python3")
            .args(["-c", FORGED_PREAMBLE]),
        T,
    );
    forged.assert_success();
    assert_eq!(forged.stdout, "answered 0\n", "{forged}");
    // ... and goes on serving sessions.
    traced(&Variant::default(), "data-after.jsonl");
}

/// Connections to the echo server, each used once and then kept idle, until one fails or 200
/// are open; then all are closed and one more is tried.
const UNTIL_REFUSED: &str = r#"
import socket, sys
held, failure = [], "none"
for i in range(200):
    try:
        s = socket.create_connection((sys.argv[1], 7), timeout=30)
        s.sendall(b"x")
        if s.recv(1) != b"x":
            failure = "no echo"
            break
        held.append(s)
    except OSError as e:
        failure = type(e).__name__
        break
print("held", len(held), "then", failure)
for s in held:
    s.close()
import time; time.sleep(0.5)
s = socket.create_connection((sys.argv[1], 7), timeout=30)
s.sendall(b"y")
print("after closing", s.recv(1).decode())
"#;

#[test]
fn an_agent_out_of_files_turns_connections_away_at_once_and_says_so() {
    let world = World::new();
    let echo = world.cluster.service("echo").v4().to_string();
    let token = world.scratch("files-agent.token");
    // 96 files: after the agent's own (under 40), room for a few dozen relayed connections
    // at two files each, the pipes of idle ones being pooled.
    let (agent, address) = world.cluster.agent_over_tcp_with_files(7397, 96, &token);
    let out = world.python_by_address(&address, &token, UNTIL_REFUSED, &echo);
    out.assert_success();
    let first = out.stdout.lines().next().unwrap_or_default().to_string();
    let fields: Vec<&str> = first.split_whitespace().collect();
    let held: usize = match fields.as_slice() {
        ["held", n, "then", _] => n.parse().unwrap_or(0),
        _ => panic!("unexpected output\n{out}"),
    };
    // Not the 10 s stall of a data connection left in the agent's backlog (TimeoutError),
    // nor no limit reached at all: the agent closed the connection it had no file for
    // (ConnectionResetError), or refused the connect it could not make a socket for
    // (OSError: EMFILE).
    assert!(
        first.ends_with("then ConnectionResetError") || first.ends_with("then OSError"),
        "{out}"
    );
    // Six files per used connection (a pipe per direction held for good) left room for
    // about ten.
    assert!(
        held >= 20,
        "only {held} connections before the agent ran out\n{out}"
    );
    assert!(out.stdout.contains("after closing y"), "{out}");
    let reports = agent
        .stderr()
        .iter()
        .filter(|l| l.contains("out of file descriptors (the limit is 96)"))
        .count();
    assert_eq!(reports, 1, "{}", agent.dump());
}

/// A server in the cluster that reads a client's first line, answers it and closes.
const GREET_AND_CLOSE: &str = r#"
import socket, sys
l = socket.socket()
l.bind((sys.argv[1], 9099))
l.listen()
print("ready", flush=True)
while True:
    c, _ = l.accept()
    got = b""
    while not got.endswith(b"\n"):
        more = c.recv(100)
        if not more:
            break
        got += more
    c.sendall(b"bye\n")
    c.close()
"#;

/// Says hello, reads the answer, sends once more (the server, gone, resets the connection),
/// reads the end (EOF or the reset: the kernel gives either, depending on when the reset
/// lands), then sends again every 100 ms for up to 5 s until a send fails: in the target
/// the first of them fails with EPIPE (a relay that missed the reset lets one through).
const SEND_AFTER_CLOSE: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], 9099), timeout=20)
s.sendall(b"hello\n")
got = b""
while not got.endswith(b"\n"):
    got += s.recv(100)
s.sendall(b"more\n")
time.sleep(0.2)
try:
    print("read", "end" if s.recv(100) == b"" else "bytes")
except ConnectionResetError:
    print("read", "end")
outcome = "no send failed"
for sent in range(50):
    try:
        s.sendall(b"again\n")
    except OSError as e:
        outcome = "%s after %d more sends" % (type(e).__name__, sent)
        break
    time.sleep(0.1)
print(outcome)
"#;

#[test]
fn a_reset_after_the_servers_close_reaches_the_program_on_spliced_paths() {
    let world = World::new();
    let host = world.cluster.service("echo").v4().to_string();
    let mut server = world
        .cluster
        .cluster
        .command("python3")
        .args(["-c", GREET_AND_CLOSE, &host])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    let stdout = server.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    let expected = "read end\nBrokenPipeError after 0 more sends\n";
    // In the target itself.
    let direct = run_with_timeout(
        world
            .cluster
            .cluster
            .command("python3")
            .args(["-c", SEND_AFTER_CLOSE, &host]),
        T,
    );
    assert_eq!(direct.stdout, expected, "{direct}");
    // Through an agent on plain TCP (data connections), and relayed from a local agent.
    let (address, token) = world.cluster.agent_over_tcp();
    let by_address = world.python_by_address(&address, &token, SEND_AFTER_CLOSE, &host);
    assert_eq!(by_address.stdout, expected, "{by_address}");
    if !Variant::from_env().is_plain() {
        // The other variants reach an agent by address, some over a Unix socket, where the
        // bytes go over the session stream: a known difference there (README).
        let _ = server.kill();
        let _ = server.wait();
        return;
    }
    let relayed = run_with_timeout(
        world
            .sctrace(
                None,
                None,
                Path::new("python3"),
                &["-c", SEND_AFTER_CLOSE, &host],
            )
            .env("SCTRACE_DIRECT_SOCKETS", "0"),
        T,
    );
    assert_eq!(relayed.stdout, expected, "{relayed}");
    let _ = server.kill();
    let _ = server.wait();
}
