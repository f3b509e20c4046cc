//! `sctrace-confine` really puts programs under Docker's default seccomp filter: what the
//! kernel answers a confined program, call by call, for the calls sctrace's supervisor and
//! agent use — and ordinary programs (threads, forks, exec, sockets) still work.
//!
//! These tests need no root and no namespace. sctrace itself under the wrapper (its
//! container mode) is tested in `container.rs` and by the cluster tests run with
//! `SCTRACE_TEST_CONFINE=docker-default`.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use sctrace_tests::{bin, confined, run_with_timeout, Confinement, Output};

const T: Duration = Duration::from_secs(30);

/// Makes each system call once and prints `name=result`, the result being the return value
/// or minus the errno. Every call is made so that the kernel itself would answer something
/// other than EPERM/ENOSYS: those two can only come from the filter.
const PROBE: &str = r#"
import ctypes, os, socket, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return r if r >= 0 else -ctypes.get_errno()
me = os.getpid()
out = {}
out["pidfd_open"] = pidfd = sc(434, me, 0)
out["pidfd_getfd"] = sc(438, pidfd, 0, 0)                    # dup of our own fd 0
out["kcmp"] = sc(312, me, me, 0, 0, 0)                       # KCMP_FILE 0 vs 0: equal
out["process_madvise"] = sc(440, -1, 0, 0, 0, 0)             # bad pidfd: EBADF
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(8)
local, remote = iovec(ctypes.addressof(buf), 8), iovec(0x10000, 8)
out["process_vm_readv"] = sc(310, 0x7ffffff0, ctypes.addressof(local), 1, ctypes.addressof(remote), 1, 0)  # no such pid: ESRCH
out["ptrace"] = sc(101, 2, 0x7ffffff0, 0, 0)                 # PEEKDATA, no such pid: ESRCH
allow = ctypes.c_uint32(0x7fff0000)
out["seccomp"] = sc(317, 2, 0, ctypes.addressof(allow))     # GET_ACTION_AVAIL of ALLOW: 0
out["ioctl"] = sc(16, -1, 0xc0502100, 0)                     # SECCOMP_IOCTL_NOTIF_RECV, bad fd: EBADF
out["setns"] = sc(308, -1, 0)                                # bad fd: EBADF
out["unshare"] = sc(272, 0)                                  # no flags: 0
out["mount"] = sc(165, 0, 0, 0, 0, 0)                        # EFAULT
out["clone_newuser"] = r = sc(56, 0x10000000 | 17, 0, 0, 0, 0)
if r == 0:
    os._exit(0)
out["clone3"] = sc(435, 0, 0)                                # size 0: EINVAL
out["socket_vsock"] = sc(41, 40, 1, 0)                       # AF_VSOCK: EAFNOSUPPORT or an fd
out["socket_inet"] = sc(41, 2, 1, 0)
out["listns"] = sc(470, 0, 0, 0, 0)                          # EFAULT or (older kernels) ENOSYS
out["personality_query"] = sc(135, 0xffffffff)
out["personality_no_aslr"] = sc(135, 0x0040000)
t = threading.Thread(target=lambda: out.__setitem__("thread", 1)); t.start(); t.join()
child = os.fork()
if child == 0:
    os._exit(7)
out["fork"] = os.waitpid(child, 0)[1] >> 8
out["exec"] = int(subprocess.run(["sh", "-c", "exit 5"]).returncode)
a, b = socket.socketpair()
a.sendall(b"x")
out["socketpair"] = len(b.recv(1))
for k, v in out.items():
    print(f"{k}={v}")
"#;

const EPERM: i64 = -(libc::EPERM as i64);
const ENOSYS: i64 = -(libc::ENOSYS as i64);

fn probe(mut cmd: Command) -> HashMap<String, i64> {
    let out = run_with_timeout(cmd.args(["-c", PROBE]), T);
    out.assert_success();
    parse(&out)
}

fn parse(out: &Output) -> HashMap<String, i64> {
    out.stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

fn get(results: &HashMap<String, i64>, name: &str) -> i64 {
    *results
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {results:?}"))
}

#[test]
fn docker_default_refuses_pidfd_getfd_and_namespaces_and_allows_seccomp_notification() {
    let unconfined = probe(Command::new("python3"));
    let docker = probe(confined("python3"));
    let show = format!("unconfined {unconfined:?}\nconfined {docker:?}");

    // What sctrace's supervisor can't do in a container without CAP_SYS_PTRACE.
    assert!(get(&unconfined, "pidfd_getfd") >= 0, "{show}");
    assert_eq!(get(&docker, "pidfd_getfd"), EPERM, "{show}");
    assert_ne!(get(&unconfined, "kcmp"), EPERM, "{show}");
    assert_eq!(get(&docker, "kcmp"), EPERM, "{show}");
    assert_eq!(get(&docker, "process_madvise"), EPERM, "{show}");

    // What it can: the filter passes these to the kernel, which answers as usual.
    assert!(get(&docker, "pidfd_open") >= 0, "{show}");
    for name in ["process_vm_readv", "ptrace"] {
        assert_eq!(get(&docker, name), -(libc::ESRCH as i64), "{name}: {show}");
    }
    assert_eq!(get(&docker, "seccomp"), 0, "{show}");
    assert_eq!(get(&docker, "ioctl"), -(libc::EBADF as i64), "{show}");

    // Namespaces and mounts: refused without CAP_SYS_ADMIN.
    assert_eq!(get(&unconfined, "setns"), -(libc::EBADF as i64), "{show}");
    assert_eq!(get(&unconfined, "unshare"), 0, "{show}");
    for name in ["setns", "unshare", "mount", "clone_newuser"] {
        assert_eq!(get(&docker, name), EPERM, "{name}: {show}");
    }
    assert_eq!(get(&unconfined, "clone3"), -(libc::EINVAL as i64), "{show}");
    assert_eq!(get(&docker, "clone3"), ENOSYS, "{show}");
    assert_eq!(get(&docker, "listns"), ENOSYS, "{show}");
    assert_ne!(get(&unconfined, "socket_vsock"), EPERM, "{show}");
    assert_eq!(get(&docker, "socket_vsock"), EPERM, "{show}");
    assert!(get(&docker, "socket_inet") >= 0, "{show}");
    assert!(get(&docker, "personality_query") >= 0, "{show}");
    assert_eq!(get(&docker, "personality_no_aslr"), EPERM, "{show}");

    // And an ordinary program works: threads (glibc falls back from clone3 to clone),
    // fork, exec, sockets.
    for (name, want) in [("thread", 1), ("fork", 7), ("exec", 5), ("socketpair", 1)] {
        assert_eq!(get(&docker, name), want, "{name}: {show}");
    }
}

#[test]
fn with_cap_sys_ptrace_unlocks_pidfd_getfd_and_kcmp_only() {
    let docker = probe(
        Confinement::docker_default()
            .with_cap("SYS_PTRACE")
            .command("python3"),
    );
    assert!(get(&docker, "pidfd_getfd") >= 0, "{docker:?}");
    assert_ne!(get(&docker, "kcmp"), EPERM, "{docker:?}");
    assert_eq!(get(&docker, "setns"), EPERM, "{docker:?}");
    assert_eq!(get(&docker, "clone3"), ENOSYS, "{docker:?}");
}

#[test]
fn deny_refuses_more_and_unconfined_refuses_only_that() {
    let docker = probe(
        Confinement::docker_default()
            .deny("seccomp")
            .deny("pidfd_open")
            .command("python3"),
    );
    assert_eq!(get(&docker, "seccomp"), EPERM, "{docker:?}");
    assert_eq!(get(&docker, "pidfd_open"), EPERM, "{docker:?}");
    assert_eq!(get(&docker, "ioctl"), -(libc::EBADF as i64), "{docker:?}");

    let only = probe(
        Confinement::unconfined()
            .deny("pidfd_getfd")
            .command("python3"),
    );
    assert_eq!(get(&only, "pidfd_getfd"), EPERM, "{only:?}");
    assert_ne!(get(&only, "kcmp"), EPERM, "{only:?}");
    assert_eq!(get(&only, "unshare"), 0, "{only:?}");
}

#[test]
fn the_filter_reaches_every_descendant() {
    // A shell that starts python3 that starts python3: the innermost is still confined.
    let inner = "import ctypes; l = ctypes.CDLL(None, use_errno=True); \
                 print(l.syscall(308, -1, 0), ctypes.get_errno())";
    let outer =
        format!("import subprocess; subprocess.run(['python3', '-c', {inner:?}], check=True)");
    let out = run_with_timeout(
        confined("sh").args(["-c", "python3 -c \"$0\"; true", &outer]),
        T,
    );
    out.assert_success();
    assert_eq!(out.stdout.trim(), format!("-1 {}", libc::EPERM), "{out}");
}

#[test]
fn exit_statuses_pass_through_and_mistakes_say_what_is_wrong() {
    let out = run_with_timeout(confined("sh").args(["-c", "exit 7"]), T);
    assert_eq!(out.code(), Some(7), "{out}");

    let out = run_with_timeout(&mut confined("/no/such/program"), T);
    assert_eq!(out.code(), Some(127), "{out}");
    assert!(
        out.stderr
            .starts_with("sctrace-confine: can't run /no/such/program"),
        "{out}"
    );

    let mut cmd = Command::new(bin("sctrace-confine"));
    let out = run_with_timeout(cmd.args(["--deny", "no_such_call", "--", "true"]), T);
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(
        out.stderr.contains("no x86_64 system call no_such_call"),
        "{out}"
    );

    let mut cmd = Command::new(bin("sctrace-confine"));
    let out = run_with_timeout(cmd.args(["--with-cap", "PTRACE", "--", "true"]), T);
    assert_eq!(out.code(), Some(2), "{out}");
}

#[test]
fn list_and_check_say_what_each_call_gets() {
    let mut cmd = Command::new(bin("sctrace-confine"));
    let out = run_with_timeout(cmd.arg("--list"), T);
    out.assert_success();
    let line = |name: &str| {
        out.stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no {name} in\n{out}"))
            .to_string()
    };
    assert!(line("pidfd_getfd").ends_with("EPERM"), "{out}");
    assert!(line("seccomp").ends_with("allowed"), "{out}");
    assert!(
        line("clone").contains("allowed if arg0 & 0x7e020000 == 0x0"),
        "{out}"
    );
    assert!(line("clone3").ends_with("ENOSYS"), "{out}");

    let mut cmd = Command::new(bin("sctrace-confine"));
    let out = run_with_timeout(cmd.args(["--check", "clone", "0x10000011"]), T);
    assert_eq!(out.stdout.trim(), "clone(0x10000011): EPERM", "{out}");
    let mut cmd = Command::new(bin("sctrace-confine"));
    let out = run_with_timeout(
        cmd.args(["--with-cap", "SYS_PTRACE", "--check", "pidfd_getfd"]),
        T,
    );
    assert_eq!(out.stdout.trim(), "pidfd_getfd(): allowed", "{out}");
}

#[test]
fn wrap_carries_arguments_environment_and_directory_over() {
    let mut inner = Command::new("sh");
    inner
        .args(["-c", "echo \"$A|${HOME:-unset}|$(pwd)\""])
        .env("A", "1")
        .env_remove("HOME")
        .current_dir("/tmp");
    let mut wrapped = Confinement::docker_default().wrap(&inner);
    let out = run_with_timeout(&mut wrapped, T);
    out.assert_success();
    assert_eq!(out.stdout.trim(), "1|unset|/tmp", "{out}");
}
