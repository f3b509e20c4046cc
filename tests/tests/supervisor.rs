//! The supervisor end to end (issue: launch any program under the seccomp supervisor): every
//! fixture runs under `sctrace run`/`trace` in its own network namespace, and the events,
//! exit statuses, signals and errnos are checked against what the program does directly.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sctrace_tests::{
    bin, fixture, read_events, require_root, run_with_input, run_with_timeout, Netns, Output,
    PtySession, ServerSpec,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(120);
const V4: &str = "198.18.0.10";
const V6: &str = "2001:2:0:5c::10";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A namespace with echo servers on 198.18.0.10 and 2001:2:0:5c::10 port 7 (TCP and UDP),
/// a name for each in its hosts file, and a dnsmasq on 127.0.0.53 knowing `svc.test`.
struct World {
    ns: Netns,
    _servers: Vec<sctrace_tests::Server>,
}

impl World {
    fn new(prefix: &str) -> World {
        require_root();
        let ns = Netns::new(prefix);
        ns.add_addr(&format!("{V4}/32"));
        ns.add_addr(&format!("{V6}/128"));
        ns.write_etc(
            "hosts",
            &format!("127.0.0.1 localhost\n{V4} echo4.test\n{V6} echo6.test\n"),
        );
        ns.write_etc("resolv.conf", "nameserver 127.0.0.53\n");
        let tcp = ns.spawn_server(ServerSpec::TcpEcho(vec![
            addr(&format!("{V4}:7")),
            addr(&format!("[{V6}]:7")),
        ]));
        let udp = ns.spawn_server(ServerSpec::UdpEcho(vec![
            addr(&format!("{V4}:7")),
            addr(&format!("[{V6}]:7")),
        ]));
        let dns = ns.dnsmasq(
            "127.0.0.53".parse().unwrap(),
            &[("svc.test", V4.parse().unwrap())],
            &[],
        );
        World {
            ns,
            _servers: vec![tcp, udp, dns],
        }
    }

    fn events_path(&self, name: &str) -> PathBuf {
        self.ns.scratch_dir().join(format!("{name}.events"))
    }

    /// Runs `program args` directly in the namespace.
    fn direct(&self, program: &Path, args: &[&str]) -> Output {
        run_with_timeout(self.ns.command(program).args(args), T)
    }

    /// Runs `program args` under `sctrace run --events FILE` in the namespace.
    fn traced(&self, events: &Path, program: &Path, args: &[&str]) -> Output {
        let mut cmd = self.ns.command(bin("sctrace"));
        cmd.arg("run")
            .arg("--events")
            .arg(events)
            .arg("--")
            .arg(program)
            .args(args);
        run_with_timeout(&mut cmd, T)
    }

    /// Runs `program args` under `sctrace run` without events: then nothing needs a local
    /// connect's outcome and the kernel carries it out unseen.
    fn traced_without_events(&self, program: &Path, args: &[&str]) -> Output {
        let mut cmd = self.ns.command(bin("sctrace"));
        cmd.arg("run").arg("--").arg(program).args(args);
        run_with_timeout(&mut cmd, T)
    }
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
    v.sort();
    v
}

/// Events matching `syscall` and `addr`.
fn find<'a>(events: &'a [Value], syscall: &str, addr: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["syscall"] == syscall && e["addr"] == addr)
        .collect()
}

fn assert_event(events: &[Value], syscall: &str, addr: &str, sock_type: &str, results: &[&str]) {
    let found = find(events, syscall, addr);
    assert!(
        found
            .iter()
            .any(|e| e["sock_type"] == sock_type && results.iter().any(|r| e["result"] == *r)),
        "no {syscall} {sock_type} {addr} with result in {results:?}; events:\n{}",
        events
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn every_fixture_is_observed_with_the_right_addresses_and_results() {
    let world = World::new("obs");
    let ops = [
        format!("tcp:{V4}:7"),
        format!("udp:{V4}:7"),
        format!("sendto:{V4}:7"),
        format!("sendmsg:{V4}:7"),
        format!("tcp:[{V6}]:7"),
        format!("sendto:[{V6}]:7"),
        "tcp:echo4.test:7".to_string(),
        format!("tcp:{V4}:9"),
        format!("udp:{V4}:9"),
        "resolve:svc.test".to_string(),
    ];
    let ops: Vec<&str> = ops.iter().map(String::as_str).collect();
    for name in [
        "client-glibc",
        "client-musl",
        "client-rust",
        "client-go",
        "client-gocgo",
    ] {
        let program = fixture(name);
        let direct = world.direct(&program, &ops);
        let events_file = world.events_path(name);
        let traced = world.traced(&events_file, &program, &ops);
        assert_eq!(
            traced.code(),
            direct.code(),
            "{name}: exit status differs\n{traced}"
        );
        assert_eq!(
            sorted_lines(&traced.stdout),
            sorted_lines(&direct.stdout),
            "{name}: output differs\n{traced}"
        );
        assert!(
            traced
                .stdout
                .contains(&format!("tcp {V4}:9 err ECONNREFUSED")),
            "{name}\n{traced}"
        );
        let unrecorded = world.traced_without_events(&program, &ops);
        assert_eq!(
            (unrecorded.code(), sorted_lines(&unrecorded.stdout)),
            (direct.code(), sorted_lines(&direct.stdout)),
            "{name}: without events\n{unrecorded}"
        );

        let events = read_events(&events_file);
        for e in &events {
            for key in [
                "ts",
                "pid",
                "tid",
                "comm",
                "syscall",
                "family",
                "sock_type",
                "addr",
                "decision",
                "rule",
                "result",
            ] {
                assert!(e.get(key).is_some(), "{name}: event lacks {key}: {e}");
            }
            assert_eq!(e["decision"], "local", "{name}: {e}");
        }
        // C clients connect blocking sockets (the real outcome); Rust and Go connect
        // non-blocking ones (EINPROGRESS, then the outcome comes through SO_ERROR).
        let blocking = name == "client-glibc" || name == "client-musl";
        let (ok, refused): (&[&str], &[&str]) = if blocking {
            (&["ok"], &["ECONNREFUSED"])
        } else {
            (&["EINPROGRESS"], &["EINPROGRESS"])
        };
        assert_event(&events, "connect", &format!("{V4}:7"), "stream", ok);
        assert_event(&events, "connect", &format!("[{V6}]:7"), "stream", ok);
        assert_event(&events, "connect", &format!("{V4}:9"), "stream", refused);
        assert_event(&events, "connect", &format!("{V4}:7"), "dgram", &["ok"]);
        assert_event(&events, "connect", &format!("{V4}:9"), "dgram", &["ok"]);
        // Go sends from a dual-stack socket to a v4-mapped address.
        let v4_dest = if name.starts_with("client-go") {
            format!("[::ffff:{V4}]:7")
        } else {
            format!("{V4}:7")
        };
        assert_event(&events, "sendto", &v4_dest, "dgram", &["ok"]);
        assert_event(&events, "sendto", &format!("[{V6}]:7"), "dgram", &["ok"]);
        // std Rust has no sendmsg: its sendmsg op makes a second sendto.
        let sendmsg = if name == "client-rust" {
            "sendto"
        } else {
            "sendmsg"
        };
        assert_event(&events, sendmsg, &v4_dest, "dgram", &["ok"]);
        // musl sends its DNS queries unconnected, to the nameserver's address.
        if name == "client-musl" {
            assert_event(&events, "sendto", "127.0.0.53:53", "dgram", &["ok"]);
        }
        // Events carry the caller's identity.
        let pids: HashSet<i64> = events.iter().filter_map(|e| e["pid"].as_i64()).collect();
        assert_eq!(
            pids.len(),
            1,
            "{name}: one process made every call: {pids:?}"
        );
        assert!(events.iter().all(|e| e["comm"]
            .as_str()
            .is_some_and(|c| !c.is_empty() && c != "?")));
    }
}

#[test]
fn fifty_forks_of_fifty_threads_are_fully_observed() {
    let world = World::new("storm");
    for name in ["client-glibc", "client-go"] {
        let events_file = world.events_path(name);
        let out = world.traced(
            &events_file,
            &fixture(name),
            &["--forks", "50", "--threads", "50", &format!("tcp:{V4}:7")],
        );
        out.assert_success();
        assert_eq!(
            out.stdout.lines().filter(|l| l.ends_with(" ok 6")).count(),
            2500,
            "{name}\n{out}"
        );
        let events = read_events(&events_file);
        let connects: Vec<&Value> = find(&events, "connect", &format!("{V4}:7"))
            .into_iter()
            .filter(|e| e["sock_type"] == "stream")
            .collect();
        assert_eq!(connects.len(), 2500, "{name}: every connect is an event");
        let pids: HashSet<i64> = connects.iter().filter_map(|e| e["pid"].as_i64()).collect();
        assert_eq!(pids.len(), 50, "{name}: one pid per forked child");
        if name == "client-glibc" {
            let tids: HashSet<i64> = connects.iter().filter_map(|e| e["tid"].as_i64()).collect();
            assert_eq!(tids.len(), 2500, "{name}: one tid per thread");
        }
    }
}

#[test]
fn trace_prints_one_human_line_per_call() {
    let world = World::new("trace");
    let mut cmd = world.ns.command(bin("sctrace"));
    cmd.args(["trace", "--"])
        .arg(fixture("client-glibc"))
        .args([format!("tcp:{V4}:7"), format!("tcp:{V4}:9")]);
    let out = run_with_timeout(&mut cmd, T);
    assert_eq!(out.code(), Some(1), "{out}");
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("sctrace: "))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(&format!("connect inet/stream {V4}:7 -> local ok"))),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(&format!("connect inet/stream {V4}:9 -> local ECONNREFUSED"))),
        "{out}"
    );
    assert!(lines.iter().all(|l| l.contains("client-glibc[")), "{out}");
}

#[test]
fn bad_arguments_get_the_kernels_own_errno() {
    require_root();
    let ns = Netns::new("bad");
    let direct = run_with_timeout(&mut ns.command(fixture("badcalls")), T);
    let traced = run_with_timeout(
        ns.command(bin("sctrace"))
            .args(["run", "--"])
            .arg(fixture("badcalls")),
        T,
    );
    assert!(direct.stdout.lines().count() >= 15, "{direct}");
    assert_eq!(traced.stdout, direct.stdout, "{traced}");
    assert_eq!(traced.code(), direct.code());
}

fn sctrace_run(args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("sctrace"));
    cmd.args(["run", "--"]).args(args);
    run_with_timeout(&mut cmd, T)
}

#[test]
fn exit_statuses_are_the_programs_like_a_shell() {
    assert_eq!(sctrace_run(&["sh", "-c", "exit 0"]).code(), Some(0));
    assert_eq!(sctrace_run(&["sh", "-c", "exit 7"]).code(), Some(7));
    assert_eq!(
        sctrace_run(&["sh", "-c", "kill -KILL $$"]).code(),
        Some(137)
    );
    assert_eq!(
        sctrace_run(&["sh", "-c", "kill -TERM $$"]).code(),
        Some(143)
    );

    let missing = sctrace_run(&["/nonexistent/program"]);
    assert_eq!(missing.code(), Some(127), "{missing}");
    assert_eq!(
        missing.stderr,
        "sctrace: /nonexistent/program: command not found\n"
    );

    let plain = tempdir().join("not-executable");
    std::fs::write(&plain, "echo should not run\n").unwrap();
    let plain = plain.to_str().unwrap();
    let not_exec = sctrace_run(&[plain]);
    assert_eq!(not_exec.code(), Some(126), "{not_exec}");
    assert_eq!(
        not_exec.stderr,
        format!("sctrace: {plain}: cannot execute: permission denied\n")
    );

    let on_path = sctrace_run(&["no-such-program-on-path-xyz"]);
    assert_eq!(on_path.code(), Some(127), "{on_path}");
}

#[test]
fn signals_sent_to_sctrace_reach_the_program() {
    let mut child = Command::new(bin("sctrace"))
        .args(["run", "--"])
        .arg(fixture("sigecho"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        use std::io::{BufRead, BufReader};
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            lines.push(line.unwrap());
        }
        lines
    });
    let pid = child.id() as i32;
    // Wait for "ready" without reading it away from the reader: give the program time.
    thread::sleep(Duration::from_millis(500));
    for sig in [
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
    ] {
        // SAFETY: kill with a pid we own and a valid signal number.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "sctrace did not exit");
        thread::sleep(Duration::from_millis(20));
    };
    let lines = reader.join().unwrap();
    assert_eq!(
        lines,
        [
            "ready",
            "got SIGUSR1",
            "got SIGUSR2",
            "got SIGHUP",
            "got SIGINT",
            "got SIGQUIT",
            "got SIGTERM"
        ]
    );
    assert_eq!(status.code(), Some(42));
}

#[test]
fn signals_sent_to_sctraces_process_group_reach_the_program_exactly_once() {
    // `kill -SIG -PGID`, as `timeout`, CI runners and service managers do: sctrace and the
    // program must not both be hit, or the program would see every signal twice.
    let mut child = Command::new(bin("sctrace"))
        .args(["run", "--"])
        .arg(fixture("sigecho"))
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        use std::io::{BufRead, BufReader};
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let pgid = child.id() as i32;
    thread::sleep(Duration::from_millis(500));
    for sig in [
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
    ] {
        // SAFETY: kill with a process group we own and a valid signal number.
        assert_eq!(unsafe { libc::kill(-pgid, sig) }, 0);
        thread::sleep(Duration::from_millis(150));
    }
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "sctrace did not exit");
        thread::sleep(Duration::from_millis(20));
    };
    let lines = reader.join().unwrap();
    assert_eq!(
        lines,
        [
            "ready",
            "got SIGUSR1",
            "got SIGUSR2",
            "got SIGHUP",
            "got SIGINT",
            "got SIGQUIT",
            "got SIGTERM"
        ]
    );
    assert_eq!(status.code(), Some(42));
}

/// A program whose SIGINT handler takes its time, then exits 7.
const SLOW_SIGINT_HANDLER: &str = r#"
import os, signal, sys, time
def on_int(sig, frame):
    print('got SIGINT', flush=True)
    time.sleep(0.5)
    print('handler done', flush=True)
    sys.exit(7)
signal.signal(signal.SIGINT, on_int)
# Unbuffered: a signal that comes at once must not find print() under way (its handler's
# own print would be a reentrant call).
os.write(1, b'ready\n')
time.sleep(60)
"#;

#[test]
fn ctrl_c_on_the_terminal_reaches_the_program_once_and_sctrace_waits_for_it() {
    let dir = tempdir();
    let script = dir.join("slow-handler.py");
    std::fs::write(&script, SLOW_SIGINT_HANDLER).unwrap();
    let mut pty = PtySession::start(&format!(
        "{} run -- python3 {}",
        bin("sctrace").display(),
        script.display()
    ));
    pty.wait_for("ready", T);
    pty.type_keys(b"\x03");
    let out = pty.finish(T);
    assert_eq!(out.stdout.matches("got SIGINT").count(), 1, "{out}");
    assert!(out.stdout.contains("handler done"), "{out}");
    assert_eq!(out.code(), Some(7), "{out}");
}

#[test]
fn ctrl_z_stops_the_job_and_fg_resumes_it() {
    let mut pty = PtySession::start("bash --norc -i");
    pty.type_keys(b"PS1='$ '\n");
    pty.type_keys(
        format!(
            "{} run -- python3 -c \"print('first' + '-line', flush=True); input(); print('second' + '-line')\"\n",
            bin("sctrace").display()
        )
        .as_bytes(),
    );
    // (The terminal echoes the typed command: wait for what only the program prints.)
    pty.wait_for("first-line", T);
    pty.type_keys(b"\x1a");
    pty.wait_for("Stopped", T);
    pty.type_keys(b"fg\n");
    // fg prints the job's command line; then the program reads the terminal again.
    pty.wait_for("run -- python3", T);
    thread::sleep(Duration::from_millis(300));
    pty.type_keys(b"\n");
    pty.wait_for("second-line", T);
    pty.type_keys(b"exit 0\n");
    let out = pty.finish(T);
    assert_eq!(out.code(), Some(0), "{out}");
}

#[test]
fn leftover_descendants_get_sigterm_then_sigkill() {
    let dir = tempdir();
    let pids = dir.join("pids");
    let script = format!(
        "sleep 1000 & echo $! >> {p}; (trap '' TERM; exec sleep 1001) & echo $! >> {p}; (sleep 1002 &) ; exit 5",
        p = pids.display()
    );
    let started = Instant::now();
    let out = sctrace_run(&["sh", "-c", &script]);
    let took = started.elapsed();
    assert_eq!(out.code(), Some(5), "{out}");
    // One of them ignores SIGTERM, so the grace period (2 s) passed before SIGKILL.
    assert!(took >= Duration::from_secs(2), "took {took:?}");
    for pid in std::fs::read_to_string(&pids).unwrap().lines() {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} survived"
        );
    }
    let survivors = Command::new("pgrep")
        .args(["-f", "^sleep 100[012]$"])
        .output()
        .unwrap();
    assert!(
        survivors.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&survivors.stdout)
    );
}

#[test]
fn double_forked_daemons_and_exec_chains_are_followed() {
    let world = World::new("daemon");
    let events_file = world.events_path("daemon");
    let client = fixture("client-musl");
    // The subshell exits at once, orphaning the client: sctrace (the subreaper) keeps it.
    let script = format!(
        "( {c} tcp:{V4}:7 > {out} & ) ; sleep 2; exec {c} udp:{V4}:7",
        c = client.display(),
        out = world.ns.scratch_dir().join("daemon.out").display()
    );
    let out = world.traced(&events_file, Path::new("/bin/sh"), &["-c", &script]);
    out.assert_success();
    let events = read_events(&events_file);
    assert_event(&events, "connect", &format!("{V4}:7"), "stream", &["ok"]);
    assert_event(&events, "connect", &format!("{V4}:7"), "dgram", &["ok"]);
}

#[test]
fn a_terminal_works_as_if_the_program_ran_directly() {
    // `script` gives sctrace a pseudo-terminal; an interactive shell runs under it.
    let sctrace = bin("sctrace");
    let mut cmd = Command::new("script");
    cmd.args([
        "-qec",
        &format!("{} run -- bash --norc -i", sctrace.display()),
        "/dev/null",
    ]);
    let out = run_with_input(
        &mut cmd,
        b"test -t 0 && test -t 1 && echo TERMINAL-OK\nexit 3\n",
        T,
    );
    assert!(out.stdout.contains("TERMINAL-OK"), "{out}");
    assert_eq!(out.code(), Some(3), "{out}");
}

#[test]
fn io_uring_setup_fails_with_enosys() {
    let code = "import ctypes; libc = ctypes.CDLL(None, use_errno=True); \
                r = libc.syscall(425, 8, ctypes.create_string_buffer(120)); \
                print(r, ctypes.get_errno())";
    let out = sctrace_run(&["python3", "-c", code]);
    out.assert_success();
    assert_eq!(out.stdout.trim(), format!("-1 {}", libc::ENOSYS));
}

#[test]
fn calls_through_the_x32_abi_kill_the_program_with_a_message() {
    // getpid through the x32 ABI: number 39 with the x32 bit set.
    let code = "import ctypes; ctypes.CDLL(None).syscall(0x40000000 + 39); print('escaped')";
    let out = sctrace_run(&["python3", "-c", code]);
    assert_eq!(out.code(), Some(128 + libc::SIGSYS), "{out}");
    assert!(!out.stdout.contains("escaped"));
    assert!(out.stderr.contains("killed by SIGSYS"), "{out}");
}

#[test]
fn nested_supervision_is_refused_in_one_sentence() {
    let sctrace = bin("sctrace");
    let out = sctrace_run(&[sctrace.to_str().unwrap(), "run", "--", "true"]);
    assert_eq!(out.code(), Some(125), "{out}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].starts_with("sctrace: "), "{out}");
    assert!(lines[0].contains("seccomp"), "{out}");
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sctrace-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
