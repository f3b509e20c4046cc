//! `feature.env` end to end: `sctrace run --target pid/PID` starts the program with the
//! environment of process PID (read by the agent from /proc/PID/environ), filtered and
//! overridden as the config says; a bare network namespace gives none. Needs root (the
//! local agent enters the target's network namespace) and `sctrace-agent` built beside
//! `sctrace` (`cargo build --workspace --bins`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn sctrace() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sctrace"))
}

fn require_agent() {
    let agent = sctrace().with_file_name("sctrace-agent");
    assert!(
        agent.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first",
        agent.display()
    );
}

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests need root (the agent enters network namespaces)"
    );
}

/// A network namespace for one test, removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("sctrace-env-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name} failed");
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sleep` in `ns` with exactly `env` (`ip netns exec` and `env -i` exec into it, so the
/// pid is the sleep's).
fn target_process(ns: &Netns, env: &[&str]) -> Running {
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.0, "env", "-i"])
        .args(env)
        // env -i leaves no usable PATH: name sleep by its path.
        .args([sleep_path(), "60"])
        .stdin(Stdio::null())
        .spawn()
        .expect("start the target process");
    let pid = child.id();
    let running = Running(child);
    // Wait until the exec chain has reached sleep with its environment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "sleep" {
            break;
        }
        assert!(Instant::now() < deadline, "the target never became sleep");
        std::thread::sleep(Duration::from_millis(20));
    }
    running
}

fn sleep_path() -> &'static str {
    ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("sleep")
}

fn write_config(tag: &str, json: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("sctrace-env-{tag}-{}.json", std::process::id()));
    std::fs::write(&path, json).unwrap();
    path
}

fn run(config: &Path, target: &str, script: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(sctrace());
    cmd.args(["run", "--quiet", "-c"])
        .arg(config)
        .args(["--target", target, "--", "sh", "-c", script])
        .stdin(Stdio::null());
    for (name, value) in env {
        cmd.env(name, value);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sctrace");
    let done = std::sync::mpsc::channel();
    let pid = child.id();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = done.0.send(());
        out
    });
    if done.1.recv_timeout(Duration::from_secs(60)).is_err() {
        // SAFETY: kill has no memory-safety preconditions; pid is our child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    waiter.join().unwrap().expect("sctrace output")
}

#[test]
fn the_app_starts_with_the_target_process_environment() {
    require_root();
    require_agent();
    let ns = Netns::new("pid");
    let target = target_process(
        &ns,
        &[
            "TARGET_URL=http://api.shop.svc:8080",
            "TARGET_MODE=prod",
            "SHARED=from-target",
            "DROP_ME=target",
            "HOME=/root/target-home",
            "PATH=/target/bin",
            "UNLISTED=x",
        ],
    );
    let config = write_config(
        "pid",
        r#"{"feature": {"env": {
            "include": "TARGET_*;SHARED;DROP_ME;HOME",
            "override": {"OVERRIDDEN": "by-config", "TARGET_MODE": "dev"},
            "unset": ["drop_me"]
        }}}"#,
    );
    let script = r#"printf '%s|' "$TARGET_URL" "$TARGET_MODE" "$SHARED" "${DROP_ME-unset}" "$HOME" "${UNLISTED-unset}" "$LOCAL_ONLY" "$OVERRIDDEN"; printf '%s\n' "$PATH""#;
    let local_path = std::env::var("PATH").unwrap_or_default();
    let out = run(
        &config,
        &format!("pid/{}", target.0.id()),
        script,
        &[
            ("SHARED", "local"),
            ("LOCAL_ONLY", "kept"),
            ("PATH", &local_path),
        ],
    );
    let _ = std::fs::remove_file(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sctrace failed: {stderr}");
    assert_eq!(
        stdout,
        format!("http://api.shop.svc:8080|dev|from-target|unset|/root/target-home|unset|kept|by-config|{local_path}\n"),
        "stderr: {stderr}"
    );
    assert!(stderr.is_empty(), "--quiet: {stderr}");
}

#[test]
fn a_namespace_target_has_no_environment_and_says_so() {
    require_root();
    require_agent();
    let ns = Netns::new("netns");
    let config = write_config(
        "netns",
        r#"{"feature": {"env": {"include": "TARGET_*", "override": {"OVERRIDDEN": "yes"}}}}"#,
    );
    let out = run(
        &config,
        &format!("netns/{}", ns.0),
        r#"printf '%s|%s\n' "$LOCAL_ONLY" "$OVERRIDDEN""#,
        &[("LOCAL_ONLY", "kept")],
    );
    let _ = std::fs::remove_file(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sctrace failed: {stderr}");
    assert_eq!(stdout, "kept|yes\n", "stderr: {stderr}");
    assert_eq!(
        stderr,
        format!("sctrace: warning: feature.env: the target netns/{} has no process, so no variables come from it; override, unset and env_file still apply\n", ns.0)
    );
}

#[test]
fn a_hostile_target_environment_runs_nothing_here() {
    require_root();
    require_agent();
    let ns = Netns::new("hostile");
    // What a compromised target would set: a script bash runs at startup, a library every
    // program loads, options that make node, python and git run its code.
    let marker = std::env::temp_dir().join(format!("sctrace-env-ran-{}", std::process::id()));
    let evil = std::env::temp_dir().join(format!("sctrace-env-evil-{}.sh", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    std::fs::write(&evil, format!("touch {}\n", marker.display())).unwrap();
    let target = target_process(
        &ns,
        &[
            &format!("BASH_ENV={}", evil.display()),
            "LD_PRELOAD=/nonexistent/sctrace-evil.so",
            "NODE_OPTIONS=--require /nonexistent/evil.js",
            "PYTHONSTARTUP=/nonexistent/evil.py",
            "GIT_SSH_COMMAND=sh /nonexistent/evil",
            "BASH_FUNC_ls%%=() { touch /nonexistent/evil; }",
            "SAFE=kept",
        ],
    );
    let config = write_config("hostile", "{}");
    let script = r#"bash -c 'printf "%s|%s|%s|%s\n" "${LD_PRELOAD-unset}" "${NODE_OPTIONS-unset}" "${BASH_ENV-unset}" "$SAFE"'"#;
    let out = run(&config, &format!("pid/{}", target.0.id()), script, &[]);
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_file(&evil);
    let ran = marker.exists();
    let _ = std::fs::remove_file(&marker);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sctrace failed: {stderr}");
    assert!(!ran, "bash ran the target's BASH_ENV script");
    assert_eq!(stdout, "unset|unset|unset|kept\n", "stderr: {stderr}");
    // Said once, naming each variable left out.
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for name in [
        "BASH_ENV",
        "LD_PRELOAD",
        "NODE_OPTIONS",
        "PYTHONSTARTUP",
        "GIT_SSH_COMMAND",
        "BASH_FUNC_ls%%",
    ] {
        assert!(stderr.contains(name), "{name} not listed: {stderr}");
    }
    assert!(
        stderr.starts_with("sctrace: feature.env: not imported from the target"),
        "{stderr}"
    );
}
