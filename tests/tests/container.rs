//! sctrace where developers and CI jobs run (issue: containers, dev containers, CI runners,
//! no root): inside a default container's seccomp filter (imitated with `sctrace-confine`:
//! `pidfd_getfd` and `setns` refused, so sctrace uses its container mode and reaches an
//! agent by address) and as an unprivileged user.
//!
//! The first three tests need no root; the others build a local cluster.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sctrace_tests::{
    bin, confined, require_root, run_with_timeout, Cluster, Confinement, Output, Server,
    ServerSpec, Variant,
};

const T: Duration = Duration::from_secs(120);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sctrace-container-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn seccomp_refused_is_one_line_naming_it_and_status_125() {
    let marker = scratch("ran-despite-seccomp");
    let out = run_with_timeout(
        Confinement::docker_default()
            .deny("seccomp")
            .command(bin("sctrace"))
            .args(["run", "--", "touch"])
            .arg(&marker),
        T,
    );
    assert_eq!(out.code(), Some(125), "{out}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].starts_with("sctrace: seccomp is refused here (")
            && lines[0].contains("sctrace doctor"),
        "{out}"
    );
    assert!(!marker.exists(), "the program ran");
}

#[test]
fn sigterm_ends_a_start_up_stuck_on_the_agent_within_two_seconds() {
    // An "agent" that accepts and never says a word: the handshake waits.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, on_accept) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept() {
            held.push(conn);
            let _ = accepted.send(());
        }
    });
    let token = scratch("silent.token");
    std::fs::write(&token, "a-token-nobody-checks\n").unwrap();
    let config = scratch("silent.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"agent": {{"address": "tcp:127.0.0.1:{port}", "token_file": "{}"}}}}"#,
            token.display()
        ),
    )
    .unwrap();
    let marker = scratch("ran-without-agent");
    for variant in [Variant::default(), Variant::confined()] {
        let argv = variant.argv(bin("sctrace"));
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .args(["run", "-q", "-c"])
            .arg(&config)
            .args(["--", "touch"])
            .arg(&marker)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        on_accept
            .recv_timeout(T)
            .expect("sctrace never reached the agent");
        std::thread::sleep(Duration::from_millis(200));
        let sent = Instant::now();
        // SAFETY: kill with the pid of the child this test started.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if sent.elapsed() > Duration::from_secs(2) {
                let _ = child.kill();
                panic!(
                    "{}: sctrace still runs 2 s after SIGTERM",
                    variant.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(143), "{}: {stderr}", variant.describe());
        assert_eq!(
            stderr.trim(),
            "sctrace: stopped by SIGTERM before the program started",
            "{}",
            variant.describe()
        );
        assert!(!marker.exists(), "the program ran");
    }
}

#[test]
fn a_burst_of_short_lived_sockets_never_fills_sctraces_fd_table() {
    // sctrace holds each UDP socket until a sweep sees it closed; with an fd limit of 256
    // (sctrace raises its own only to the hard limit), 3000 sockets made and closed in a
    // row need sweeps on demand, or the program would get EMFILE from sctrace's table.
    let script = "import socket\n\
                  for i in range(3000):\n    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()\n\
                  print('made 3000')\n";
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=256:256")
        .args(Variant::confined().argv(bin("sctrace")))
        .args(["--log-level", "info", "run", "--", "python3", "-c", script]);
    let out = run_with_timeout(&mut cmd, T);
    out.assert_success();
    assert_eq!(out.stdout, "made 3000\n", "{out}");
    assert!(out.stderr.contains("container mode"), "{out}");
}

fn doctor(cmd: &mut Command) -> (Output, Vec<String>) {
    let out = run_with_timeout(cmd.arg("doctor"), T);
    let lines = out.stdout.lines().map(String::from).collect();
    (out, lines)
}

fn line<'a>(lines: &'a [String], check: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.get(5..).is_some_and(|rest| rest.starts_with(check)))
        .unwrap_or_else(|| panic!("no {check:?} line in {lines:#?}"))
}

fn assert_ok(lines: &[String], check: &str, out: &Output) {
    assert!(line(lines, check).starts_with("ok "), "{check}: {out}");
}

#[test]
fn doctor_says_which_mode_run_uses_and_how_to_fix_what_is_missing() {
    let (out, lines) = doctor(&mut Command::new(bin("sctrace")));
    assert_eq!(out.code(), Some(0), "{out}");
    assert_ok(&lines, "seccomp user notification", &out);
    assert_ok(&lines, "copying the program's sockets", &out);
    assert_eq!(
        lines.last().unwrap(),
        "mode: full: `sctrace run` works here as on any host"
    );

    // A default Docker container: pidfd_getfd refused, the container mode instead.
    let (out, lines) = doctor(&mut confined(bin("sctrace")));
    assert_eq!(out.code(), Some(0), "{out}");
    let copy = line(&lines, "copying the program's sockets");
    assert!(copy.starts_with("no ") && copy.contains("EPERM"), "{out}");
    assert!(
        copy.contains("fix: run the container with --cap-add=SYS_PTRACE for the full mode"),
        "{out}"
    );
    assert_ok(&lines, "installing sockets in the program", &out);
    assert_ok(&lines, "reading the program's memory", &out);
    assert!(
        line(&lines, "seccomp on sctrace itself").contains("filter(s)"),
        "{out}"
    );
    let netns = line(&lines, "local netns/");
    assert!(
        netns.starts_with("no ") && netns.contains("agent.address"),
        "{out}"
    );
    assert!(
        lines.last().unwrap().starts_with("mode: container:"),
        "{out}"
    );

    // With CAP_SYS_PTRACE's part of the profile: the full mode again.
    let (out, lines) = doctor(
        &mut Confinement::docker_default()
            .with_cap("SYS_PTRACE")
            .command(bin("sctrace")),
    );
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(lines.last().unwrap().starts_with("mode: full:"), "{out}");

    // No seccomp at all: nothing works, and doctor says so (and exits 1) without hanging.
    let (out, lines) = doctor(
        &mut Confinement::docker_default()
            .deny("seccomp")
            .command(bin("sctrace")),
    );
    assert_eq!(out.code(), Some(1), "{out}");
    let notify = line(&lines, "seccomp user notification");
    assert!(
        notify.starts_with("no ") && notify.contains("fix: "),
        "{out}"
    );
    assert!(lines.last().unwrap().starts_with("mode: none:"), "{out}");
}

/// A local cluster with echo servers (TCP and UDP, port 7) on the `echo` service.
struct World {
    cluster: Cluster,
    _servers: Vec<Server>,
}

impl World {
    fn new() -> World {
        require_root();
        let cluster = Cluster::up();
        let echo = cluster.service("echo");
        let on = vec![echo.addr_v4(7), echo.addr_v6(7)];
        let servers = vec![
            cluster
                .cluster
                .spawn_server(ServerSpec::TcpEcho(on.clone())),
            cluster.cluster.spawn_server(ServerSpec::UdpEcho(on)),
        ];
        World {
            cluster,
            _servers: servers,
        }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.cluster.laptop.scratch_dir().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `sctrace run` of `python3 SCRIPT args` as `variant` says, with `config`.
    fn python(&self, variant: &Variant, config: &str, script: &str, args: &[&str]) -> Output {
        let script = self.file("script.py", script);
        let config = self.file("config.json", config);
        let mut cmd = self.cluster.sctrace_as(variant);
        cmd.args(["--log-level", "info", "run", "-q", "-c"])
            .arg(&config)
            .args([
                "--target",
                &format!("netns/{}", self.cluster.cluster.name()),
            ])
            .args(["--", "python3"])
            .arg(&script)
            .args(args);
        run_with_timeout(&mut cmd, T)
    }
}

/// What an app does with the network, printed one fact per line (nothing that differs
/// from run to run): remote TCP (blocking, non-blocking, refused, timing out), UDP, DNS
/// with route probes, FIN and port release on close, socket()'s own errors.
const APP: &str = r#"
import errno, os, resource, select, socket, sys, time
echo4, blackhole = sys.argv[1], sys.argv[2]
def err(e): return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else 'timeout' if isinstance(e, TimeoutError) else type(e).__name__

# Remote TCP, blocking: the echo answers, getpeername shows it.
s = socket.create_connection((echo4, 7), timeout=10)
s.sendall(b'hello\n'); print('tcp', s.recv(100).decode().strip(), s.getpeername()[0] == echo4)
s.close()
# Non-blocking: EINPROGRESS, then writable with SO_ERROR 0.
s = socket.socket(); s.setblocking(False)
r = s.connect_ex((echo4, 7)); print('nonblocking connect', errno.errorcode.get(r, r) if r else 'ok')
select.select([], [s], [], 10)
print('so_error', s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
s.setblocking(True); s.sendall(b'nb\n'); print('tcp', s.recv(100).decode().strip()); s.close()
# Refused and timing out, as in the target.
for host, port, timeout in [(echo4, 1, 10), (blackhole, 80, 1)]:
    try:
        socket.create_connection((host, port), timeout=timeout); print('connected?!')
    except OSError as e:
        print('connect', port, err(e))
# UDP: the reply comes from the peer the app asked.
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(10)
u.sendto(b'ping', (echo4, 7)); data, src = u.recvfrom(100); print('udp', data.decode(), src == (echo4, 7)); u.close()
# DNS through the target, both families, sorted by the target's routes (route probes).
print('dns', sorted({a[0].name for a in socket.getaddrinfo('echo', 7, type=socket.SOCK_STREAM)}))
# A closed connection's FIN reaches its peer at once.
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
c = socket.create_connection(l.getsockname()); a, _ = l.accept()
c.close(); a.settimeout(0.3)
try: print('fin', a.recv(10) == b'')
except socket.timeout: print('fin late')
# A closed UDP socket's port is free again (within the sweeper's half second).
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('127.0.0.1', 0)); port = u.getsockname()[1]; u.close()
deadline = time.monotonic() + 2
while True:
    try:
        v = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); v.bind(('127.0.0.1', port)); print('rebind ok'); break
    except OSError as e:
        v.close()
        if time.monotonic() > deadline: print('rebind', err(e)); break
        time.sleep(0.05)
# socket()'s own errors, and EMFILE from a full fd table.
for args in [(socket.AF_INET, 99, 0), (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_UDP)]:
    try: socket.socket(*args); print('socket ok?!')
    except OSError as e: print('socket', err(e))
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
held = []
try:
    while True: held.append(os.open('/dev/null', os.O_RDONLY))
except OSError: pass
try: socket.socket(); print('socket ok?!')
except OSError as e: print('full table', err(e))
for fd in held: os.close(fd)
print('done')
"#;

#[test]
fn container_mode_behaves_as_the_full_mode() {
    let world = World::new();
    let echo4 = world.cluster.service("echo").v4().to_string();
    let blackhole = world.cluster.blackhole_v4().to_string();
    let args = [echo4.as_str(), blackhole.as_str()];
    let full = world.python(&Variant::default(), "{}", APP, &args);
    full.assert_success();
    let container = world.python(&Variant::confined(), "{}", APP, &args);
    container.assert_success();
    assert!(
        container.stderr.contains("container mode"),
        "the container mode was not chosen: {container}"
    );
    assert!(!full.stderr.contains("container mode"), "{full}");
    // Every socket of the program was sctrace's own (glibc's netlink sends included, which
    // are no destination that could go to the target).
    assert!(!container.stderr.contains("did not create"), "{container}");
    assert_eq!(
        container.stdout, full.stdout,
        "full:\n{full}\ncontainer:\n{container}"
    );
    for want in [
        "tcp hello True",
        "nonblocking connect EINPROGRESS",
        "connect 1 ECONNREFUSED",
        "connect 80 timeout",
        "udp ping True",
        "dns ['AF_INET', 'AF_INET6']",
        "fin True",
        "rebind ok",
        "socket EINVAL",
        "socket EPROTONOSUPPORT",
        "full table EMFILE",
        "done",
    ] {
        assert!(
            full.stdout.lines().any(|l| l == want),
            "no {want:?} in\n{full}"
        );
    }
}

/// Connects the inherited socket (fd in argv[1]) and a new one to argv[2]:7, and a new one
/// to the local echo (argv[3]).
const INHERITED: &str = r#"
import errno, socket, sys
def attempt(s, to):
    try:
        s.settimeout(10); s.connect(to); s.sendall(b'x\n'); return 'ok ' + s.recv(10).decode().strip()
    except OSError as e: return errno.errorcode.get(e.errno, str(e))
inherited = socket.socket(fileno=int(sys.argv[1]))
print('inherited', attempt(inherited, (sys.argv[2], 7)))
print('new', attempt(socket.socket(), (sys.argv[2], 7)))
print('inherited local', attempt(socket.socket(fileno=int(sys.argv[4])), (sys.argv[3], 7007)))
"#;

#[test]
fn a_socket_from_before_sctrace_cannot_go_to_the_target_in_container_mode() {
    let world = World::new();
    let _local = world
        .cluster
        .laptop
        .spawn_server(ServerSpec::TcpEcho(vec!["127.0.0.1:7007".parse().unwrap()]));
    let echo4 = world.cluster.service("echo").v4().to_string();
    let script = world.file("inherited.py", INHERITED);
    let config = world.file(
        "config.json",
        r#"{"feature": {"network": {"outgoing": {"ignore_localhost": true}}}}"#,
    );
    // A shell-like parent in the laptop opens two sockets, then execs sctrace (confined),
    // which starts the app: both sockets are from before sctrace.
    let launcher = "import os, socket, sys\n\
                    a, b = socket.socket(), socket.socket()\n\
                    a.set_inheritable(True); b.set_inheritable(True)\n\
                    args = [x.replace('{A}', str(a.fileno())).replace('{B}', str(b.fileno())) for x in sys.argv[1:]]\n\
                    os.execvp(args[0], args)\n";
    let (address, token) = world.cluster.agent_by_address(false);
    let mut cmd = world.cluster.laptop.command("python3");
    cmd.arg("-c")
        .arg(launcher)
        .args(Variant::confined().argv(bin("sctrace")))
        .args(["run", "-q", "-c"])
        .arg(&config)
        .args([
            "--target",
            &format!("netns/{}", world.cluster.cluster.name()),
        ])
        .arg("--")
        .arg("python3")
        .arg(&script)
        .args(["{A}", &echo4, "127.0.0.1", "{B}"])
        .env("SCTRACE_AGENT_ADDRESS", address)
        .env("SCTRACE_AGENT_TOKEN_FILE", token);
    let out = run_with_timeout(&mut cmd, T);
    out.assert_success();
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["inherited EPERM", "new ok x", "inherited local ok x"],
        "{out}"
    );
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("did not create"))
        .collect();
    assert_eq!(warnings.len(), 1, "{out}");
}

/// Forks a (dumpable) client, makes itself non-dumpable, then connects to argv[1]:7
/// (remote) twice and serves its client on loopback.
const NON_DUMPABLE: &str = r#"
import ctypes, errno, os, socket, sys, time
l = socket.socket(); l.bind(('127.0.0.1', 0)); port = l.getsockname()[1]
if os.fork() == 0:
    time.sleep(0.5)
    c = socket.create_connection(('127.0.0.1', port), timeout=10); c.sendall(b'hi from the child'); os._exit(0)
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(4, 0, 0, 0, 0) == 0      # PR_SET_DUMPABLE, 0
def attempt(to):
    try:
        s = socket.create_connection(to, timeout=10); s.sendall(b'x\n'); return 'ok ' + s.recv(10).decode().strip()
    except OSError as e: return errno.errorcode.get(e.errno, str(e))
print('remote', attempt((sys.argv[1], 7)))
print('remote again', attempt((sys.argv[1], 7)))
l.listen(); a, _ = l.accept(); a.settimeout(10); print('served', a.recv(100).decode())
os.wait()
"#;

#[test]
fn a_non_dumpable_program_of_an_unprivileged_user_gets_eperm_for_remote_connects() {
    let world = World::new();
    let echo4 = world.cluster.service("echo").v4().to_string();
    let config = r#"{"feature": {"network": {"outgoing": {"ignore_localhost": true}}}}"#;
    // Root has CAP_SYS_PTRACE and inspects anything: only another user shows this.
    for confined in [false, true] {
        let variant = Variant::as_user("nobody", confined);
        let out = world.python(&variant, config, NON_DUMPABLE, &[&echo4]);
        out.assert_success();
        assert_eq!(
            out.stdout.lines().collect::<Vec<_>>(),
            [
                "remote EPERM",
                "remote again EPERM",
                "served hi from the child"
            ],
            "{}: {out}",
            variant.describe()
        );
        let warnings: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("sctrace: process") && l.contains("cannot be inspected"))
            .collect();
        assert_eq!(warnings.len(), 1, "{}: {out}", variant.describe());
    }
}

/// An unprivileged user reaches the cluster through an agent by address (started by an
/// operator), and gets the same answers as root.
#[test]
fn an_unprivileged_user_relays_through_an_agent_by_address() {
    let world = World::new();
    let echo4 = world.cluster.service("echo").v4().to_string();
    let script = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], 7), timeout=10); s.sendall(b'hi\n'); print(s.recv(10).decode().strip())
print(sorted({a[4][0] for a in socket.getaddrinfo('echo', 7, socket.AF_INET)}) == [sys.argv[1]])
"#;
    for confined in [false, true] {
        let variant = Variant::as_user("nobody", confined);
        let out = world.python(&variant, "{}", script, &[&echo4]);
        out.assert_success();
        assert_eq!(out.stdout, "hi\nTrue\n", "{}: {out}", variant.describe());
    }
}
