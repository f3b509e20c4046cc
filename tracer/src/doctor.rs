//! `sctrace doctor`: what this machine lets sctrace do, one line per check, each tried for
//! real where it can be (a seccomp profile answers EPERM where an old kernel answers
//! ENOSYS, and only trying tells them apart), with the fix for what is missing.
//!
//! The heart of it is a self-test: sctrace starts a copy of itself (`sctrace doctor
//! --self-test-child`) under the container mode's filter, exactly as `run` starts a
//! program, and serves its two calls the way `run` would: a trapped `socket()` answered
//! by installing a socket sctrace created (`SECCOMP_IOCTL_NOTIF_ADDFD`), then a trapped
//! `connect()` whose address is read out of the child (`process_vm_readv`) and whose socket
//! is copied (`pidfd_getfd`) before the kernel runs it. Every wait is bounded: doctor never
//! hangs, whatever the machine refuses.
//!
//! Exit status: 0 when `sctrace run` can work here (in either mode), 1 otherwise.

use std::fmt::Write as _;
use std::fs;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use crate::errno::Errno;
use crate::features::{self, Mode, Probe};
use crate::launch::{self, bpf};
use crate::procfs::{self, FdLink};
use crate::sockaddr::SockAddr;
use crate::sys::memory;
use crate::sys::notify::RawNotification;
use crate::sys::pidfd;
use crate::sys::process::{self, MainState};
use crate::sys::socket as sys;

/// How long the self-test waits for each step of its child.
const STEP_WAIT: Duration = Duration::from_secs(5);

/// The address the self-test's child connects its UDP socket to (nothing is sent).
const PROBE_PEER: &str = "127.0.0.1:9";

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It works.
    Ok,
    /// It does not (the line says what it costs and how to fix it).
    No,
    /// A fact about this machine.
    Info,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    /// Ok, no, or a fact.
    pub status: Status,
    /// What was checked.
    pub name: &'static str,
    /// What was found.
    pub detail: String,
    /// How to get it, when it is missing.
    pub fix: Option<String>,
}

impl Check {
    fn new(status: Status, name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            status,
            name,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

/// The report: every check, and the mode `run` will use (`None`: it cannot run).
#[derive(Debug)]
pub struct Report {
    /// The checks, in the order printed.
    pub checks: Vec<Check>,
    /// The mode `sctrace run` uses here.
    pub mode: Option<Mode>,
}

impl Report {
    /// The report as printed: one line per check, then the mode.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            let status = match check.status {
                Status::Ok => "ok  ",
                Status::No => "no  ",
                Status::Info => "info",
            };
            let _ = write!(out, "{status} {}: {}", check.name, check.detail);
            if let Some(fix) = &check.fix {
                let _ = write!(out, "; fix: {fix}");
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "mode: {}",
            match self.mode {
                Some(Mode::Full) => "full: `sctrace run` works here as on any host",
                Some(Mode::Container) =>
                    "container: `sctrace run` works here in its container mode (README, \"Containers\", says what differs)",
                None => "none: `sctrace run` cannot work here (see the lines marked no)",
            }
        );
        out
    }

    /// 0 when `sctrace run` can work here, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.mode.is_some() {
            0
        } else {
            1
        }
    }
}

/// Runs every check.
pub fn examine() -> Report {
    let mut checks = vec![kernel(), user()];
    checks.extend(confinement());
    let notification = features::user_notification();
    let pidfd_getfd = features::pidfd_getfd();
    let test = match &notification {
        Probe::Works => self_test(),
        _ => SelfTest::default(),
    };
    checks.push(notification_check(&notification, &test));
    if notification.works() {
        checks.push(flag_check(
            "wait-killable receive (Linux 5.19)",
            test.wait_killable,
            "a signal to the program interrupts a call sctrace is answering (sctrace still ends it as the kernel would)",
        ));
        checks.push(flag_check(
            "synchronous wake-ups (Linux 6.6)",
            test.sync_wake_up,
            "each trapped call costs a little more",
        ));
        checks.push(step_check(
            "reading the program's memory (process_vm_readv)",
            &test.read_memory,
            "run the container with --cap-add=SYS_PTRACE or --security-opt seccomp=unconfined, and let sctrace start the program itself",
        ));
    }
    let copy = pidfd_getfd_check(&pidfd_getfd, &test);
    let copies = copy.status == Status::Ok;
    checks.push(copy);
    if notification.works() {
        checks.push(step_check(
            "installing sockets in the program (SECCOMP_IOCTL_NOTIF_ADDFD)",
            &test.install,
            "container mode needs Linux 5.14 (SECCOMP_ADDFD_FLAG_SEND); emulated accepts need it in every mode",
        ));
    }
    checks.push(local_targets());
    let reads = matches!(test.read_memory, Step::Works);
    let installs = matches!(test.install, Step::Works);
    let mode = match () {
        _ if !test.trapped || !reads => None,
        _ if copies => Some(Mode::Full),
        _ if installs => Some(Mode::Container),
        _ => None,
    };
    Report { checks, mode }
}

fn kernel() -> Check {
    let release = process::kernel_release().unwrap_or_else(|| "unknown".into());
    let arch = std::env::consts::ARCH;
    let check = Check::new(Status::Info, "kernel", format!("Linux {release} ({arch})"));
    match features::kernel_version() {
        Some(version) if version < (5, 6) => Check {
            status: Status::No,
            ..check
        }
        .fix("sctrace needs Linux 5.6 or later (5.14 for container mode)"),
        _ => check,
    }
}

/// The effective capabilities worth naming, from /proc/self/status `CapEff`.
const CAPS: &[(u32, &str)] = &[
    (12, "CAP_NET_ADMIN"),
    (13, "CAP_NET_RAW"),
    (19, "CAP_SYS_PTRACE"),
    (21, "CAP_SYS_ADMIN"),
];

const CAP_SYS_ADMIN: u32 = 21;

fn status_field(status: &str, name: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
}

fn own_status() -> String {
    fs::read_to_string("/proc/self/status").unwrap_or_default()
}

fn effective_caps() -> u64 {
    status_field(&own_status(), "CapEff:")
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .unwrap_or(0)
}

fn user() -> Check {
    let status = own_status();
    let uid = status_field(&status, "Uid:")
        .and_then(|v| v.split_whitespace().nth(1).map(String::from))
        .unwrap_or_else(|| "?".into());
    let caps = effective_caps();
    let named: Vec<&str> = CAPS
        .iter()
        .filter(|(bit, _)| caps & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect();
    let who = if uid == "0" {
        "root (uid 0)".to_string()
    } else {
        format!("uid {uid}, not root")
    };
    Check::new(
        Status::Info,
        "user",
        format!(
            "{who}; effective capabilities {}",
            if named.is_empty() {
                "include none of CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_PTRACE, CAP_SYS_ADMIN".into()
            } else {
                named.join(" ")
            }
        ),
    )
}

/// What can be seen of a container and of the filters and security modules sctrace runs
/// under.
fn confinement() -> Vec<Check> {
    let mut signs = Vec::new();
    if fs::metadata("/.dockerenv").is_ok() {
        signs.push("/.dockerenv".to_string());
    }
    if fs::metadata("/run/.containerenv").is_ok() {
        signs.push("/run/.containerenv (podman)".to_string());
    }
    if let Ok(value) = std::env::var("container") {
        signs.push(format!("container={value}"));
    }
    let cgroup = fs::read_to_string("/proc/1/cgroup").unwrap_or_default();
    for hint in [
        "docker",
        "kubepods",
        "containerd",
        "libpod",
        "lxc",
        "actions_job",
    ] {
        if cgroup.contains(hint) {
            signs.push(format!("/proc/1/cgroup names {hint}"));
            break;
        }
    }
    let container = if signs.is_empty() {
        "none visible (/.dockerenv, /run/.containerenv, /proc/1/cgroup)".to_string()
    } else {
        format!("yes: {}", signs.join(", "))
    };
    let status = own_status();
    let seccomp = match status_field(&status, "Seccomp:").as_deref() {
        Some("0") => "none".to_string(),
        Some("2") => format!(
            "{} filter(s), as a container's seccomp profile installs",
            status_field(&status, "Seccomp_filters:").unwrap_or_else(|| "some".into())
        ),
        Some("1") => "strict mode".to_string(),
        _ => "unknown".to_string(),
    };
    let nnp = status_field(&status, "NoNewPrivs:").unwrap_or_else(|| "?".into());
    let lsm = [
        "/proc/self/attr/apparmor/current",
        "/proc/self/attr/current",
    ]
    .iter()
    .find_map(|path| fs::read_to_string(path).ok())
    .map(|label| label.trim_end_matches(['\n', '\0']).trim().to_string())
    .filter(|label| !label.is_empty())
    .unwrap_or_else(|| "none visible".into());
    vec![
        Check::new(Status::Info, "container", container),
        Check::new(
            Status::Info,
            "seccomp on sctrace itself",
            format!("{seccomp}; no_new_privs {nnp}"),
        ),
        Check::new(Status::Info, "security module label", lsm),
    ]
}

/// One step of the self-test.
#[derive(Debug, Default)]
enum Step {
    /// Not reached (an earlier step failed).
    #[default]
    NotTried,
    /// It worked.
    Works,
    /// It failed with this errno.
    Failed(Errno),
    /// It did something else than expected.
    Wrong(String),
}

/// What the self-test found.
#[derive(Debug, Default)]
struct SelfTest {
    /// Why the child could not be started under the filter, if it could not.
    start_error: Option<String>,
    /// A trapped call reached sctrace.
    trapped: bool,
    wait_killable: bool,
    sync_wake_up: bool,
    read_memory: Step,
    copy: Step,
    install: Step,
    /// How the child ended (0: both calls returned what they should).
    child_exit: Option<String>,
}

/// Starts the child under the container mode's filter and serves its two calls.
fn self_test() -> SelfTest {
    let mut test = SelfTest::default();
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(err) => {
            test.start_error = Some(format!("cannot find sctrace's own executable: {err}"));
            return test;
        }
    };
    let filter = bpf::build(
        &bpf::NATIVE,
        bpf::Traps {
            receives: false,
            sockets: true,
            epolls: false,
        },
    );
    let args = ["doctor".into(), "--self-test-child".into()];
    let app = match launch::launch(exe.as_os_str(), &args, filter, None, |cmd| {
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
    }) {
        Ok(app) => app,
        Err(err) => {
            test.start_error = Some(err.to_string());
            return test;
        }
    };
    test.wait_killable = app.wait_killable;
    test.sync_wake_up = app.notify.enable_sync_wakeup();
    serve_child(&app.notify, &mut test);
    test.child_exit = Some(reap(&app));
    test
}

/// Waits at most [`STEP_WAIT`] for the child's next trapped call.
fn next_call(notify: &crate::sys::notify::NotifyFd) -> Option<RawNotification> {
    let deadline = Instant::now() + STEP_WAIT;
    while Instant::now() < deadline {
        match notify.wait_readable(deadline.saturating_duration_since(Instant::now())) {
            Ok(true) => {}
            Ok(false) | Err(_) => return None,
        }
        if let Ok(Some(raw)) = notify.recv() {
            return Some(raw);
        }
    }
    None
}

fn serve_child(notify: &crate::sys::notify::NotifyFd, test: &mut SelfTest) {
    // 1. socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0): sctrace creates it and installs it.
    let Some(call) = next_call(notify) else {
        return;
    };
    test.trapped = true;
    if i64::from(call.nr) != libc::SYS_socket {
        test.install = Step::Wrong(format!(
            "the first trapped call was {}, not socket",
            call.nr
        ));
        let _ = notify.respond(call.id, 0, 0, true);
        return;
    }
    let created = match sys::new_socket(
        call.args[0] as i32,
        call.args[1] as i32 | libc::SOCK_CLOEXEC,
        call.args[2] as i32,
    ) {
        Ok(fd) => fd,
        Err(errno) => {
            test.install = Step::Failed(errno);
            let _ = notify.respond(call.id, 0, -errno.0, false);
            return;
        }
    };
    let app_fd = match notify.install_fd_and_answer(call.id, created.as_fd(), true) {
        Ok(Some(fd)) => {
            test.install = Step::Works;
            fd
        }
        Ok(None) => {
            test.install = Step::Wrong("the child's call was gone before the install".into());
            return;
        }
        Err(err) => {
            let errno = Errno::from_io(&err);
            test.install = Step::Failed(errno);
            let _ = notify.respond(call.id, 0, -errno.0, false);
            return;
        }
    };
    // 2. connect(fd, 127.0.0.1:9): its address read out of the child, its socket copied.
    let Some(call) = next_call(notify) else {
        return;
    };
    let expected = PROBE_PEER
        .parse()
        .map(SockAddr::encode_inet)
        .unwrap_or_default();
    let mut read = vec![0u8; expected.len()];
    test.read_memory = match memory::read_exact(call.tid, call.args[1], &mut read) {
        Ok(()) if read == expected => Step::Works,
        Ok(()) => Step::Wrong("read bytes that are not the child's address".into()),
        Err(err) => Step::Failed(Errno::from_io(&err)),
    };
    test.copy = copy_step(call.tid, app_fd, &created);
    // The kernel runs the connect on the socket sctrace installed.
    let _ = notify.respond(call.id, 0, 0, true);
}

/// `pidfd_getfd` on the child's socket, checked to be the socket sctrace installed.
fn copy_step(tid: u32, app_fd: i32, created: &std::os::fd::OwnedFd) -> Step {
    let ours = sys::inode(created.as_fd()).ok();
    let copied = pidfd::open_thread(tid as i32).and_then(|pidfd| pidfd::get_fd(&pidfd, app_fd));
    match copied {
        Ok(copy) if sys::inode(copy.as_fd()).ok() == ours => {}
        Ok(_) => return Step::Wrong("copied another file than the installed socket".into()),
        Err(err) => return Step::Failed(Errno::from_io(&err)),
    }
    // Container mode finds the socket through /proc instead; check that too.
    match (procfs::fd_link(tid, app_fd), ours) {
        (Ok(FdLink::Socket(ino)), Some(want)) if ino == want => Step::Works,
        (Ok(_), _) => Step::Wrong("/proc shows another file than the installed socket".into()),
        (Err(err), _) => Step::Failed(Errno::from_io(&err)),
    }
}

/// Waits (bounded) for the child to exit, killing it if it does not; says how it ended.
fn reap(app: &launch::Launched) -> String {
    let deadline = Instant::now() + STEP_WAIT;
    loop {
        match process::poll_main(app.pid) {
            Ok(MainState::Ended(process::Exit::Code(0))) => return "ok".into(),
            Ok(MainState::Ended(process::Exit::Code(code))) => {
                return format!("its calls did not return what they should (exit {code})")
            }
            Ok(MainState::Ended(process::Exit::Signal(signal))) => {
                return format!("killed by signal {signal}")
            }
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(_) => {
                let _ = pidfd::send_signal(&app.pidfd, libc::SIGKILL);
                let _ = process::poll_main(app.pid);
                return "it hung and was killed".into();
            }
            Err(err) => return format!("cannot wait for it: {err}"),
        }
    }
}

/// The self-test's child: two calls the filter traps. Exit status 0 when both returned
/// what they should.
pub fn self_test_child() -> i32 {
    let Ok(fd) = sys::new_socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) else {
        return 2;
    };
    let Ok(peer) = PROBE_PEER.parse() else {
        return 3;
    };
    let bytes = SockAddr::encode_inet(peer);
    match sys::connect(fd.as_fd(), Some(&bytes), bytes.len() as i32) {
        Ok(()) if fd.as_raw_fd() >= 0 => 0,
        _ => 4,
    }
}

fn errno_text(errno: &Errno) -> String {
    let desc = std::io::Error::from_raw_os_error(errno.0).to_string();
    let desc = desc.split(" (os error").next().unwrap_or(&desc).to_string();
    format!("{} ({desc})", errno.name())
}

fn notification_check(probe: &Probe, test: &SelfTest) -> Check {
    const NAME: &str = "seccomp user notification";
    let refused_fix = "run the container with a seccomp profile that allows seccomp() (Docker's default does), or --security-opt seccomp=unconfined";
    match probe {
        Probe::Missing(err) => Check::new(
            Status::No,
            NAME,
            format!("this kernel lacks it: {}", errno_text(&Errno::from_io(err))),
        )
        .fix("sctrace needs Linux 5.6 or later built with CONFIG_SECCOMP_FILTER"),
        Probe::Refused(err) => Check::new(
            Status::No,
            NAME,
            format!("refused: {}", errno_text(&Errno::from_io(err))),
        )
        .fix(refused_fix),
        Probe::Works => match (&test.start_error, test.trapped) {
            (Some(why), _) => Check::new(Status::No, NAME, format!("the self-test could not start: {why}"))
                .fix(refused_fix),
            (None, false) => Check::new(
                Status::No,
                NAME,
                "the self-test's trapped call never reached sctrace",
            )
            .fix("sctrace may be nested inside another seccomp supervisor; run it outside"),
            (None, true) => Check::new(
                Status::Ok,
                NAME,
                format!(
                    "a program sctrace started under its filter had its socket calls answered by sctrace (child: {})",
                    test.child_exit.as_deref().unwrap_or("?")
                ),
            ),
        },
    }
}

fn flag_check(name: &'static str, accepted: bool, without: &str) -> Check {
    if accepted {
        Check::new(Status::Ok, name, "accepted")
    } else {
        Check::new(Status::Info, name, format!("not available: {without}"))
    }
}

fn step_check(name: &'static str, step: &Step, fix: &str) -> Check {
    match step {
        Step::Works => Check::new(Status::Ok, name, "works"),
        Step::NotTried => Check::new(Status::No, name, "not tried: an earlier step failed"),
        Step::Failed(errno) => {
            Check::new(Status::No, name, format!("refused: {}", errno_text(errno))).fix(fix)
        }
        Step::Wrong(what) => Check::new(Status::No, name, what.clone()).fix(fix),
    }
}

fn pidfd_getfd_check(probe: &Probe, test: &SelfTest) -> Check {
    const NAME: &str = "copying the program's sockets (pidfd_getfd)";
    let fix = "run the container with --cap-add=SYS_PTRACE for the full mode (or --security-opt seccomp=unconfined); without it sctrace uses its container mode";
    match (probe, &test.copy) {
        (Probe::Missing(err), _) => Check::new(
            Status::No,
            NAME,
            format!("this kernel lacks it: {}", errno_text(&Errno::from_io(err))),
        )
        .fix("sctrace needs Linux 5.6 or later"),
        (Probe::Refused(err), _) => Check::new(
            Status::No,
            NAME,
            format!(
                "refused: {}, as Docker's and containerd's default seccomp profiles do without CAP_SYS_PTRACE",
                errno_text(&Errno::from_io(err))
            ),
        )
        .fix(fix),
        (Probe::Works, Step::Works) => Check::new(Status::Ok, NAME, "works"),
        (Probe::Works, Step::NotTried) => Check::new(Status::Ok, NAME, "works on sctrace itself"),
        (Probe::Works, Step::Failed(errno)) => Check::new(
            Status::No,
            NAME,
            format!(
                "works on sctrace itself, refused on its program: {}",
                errno_text(errno)
            ),
        )
        .fix("a security module (Yama ptrace_scope 3, SELinux, AppArmor) refuses sctrace access to its own children"),
        (Probe::Works, Step::Wrong(what)) => Check::new(Status::No, NAME, what.clone()),
    }
}

/// Whether `sctrace run` can start an agent in a local network namespace (`netns/…`,
/// `pid/…`): the agent enters it with `setns`, which needs CAP_SYS_ADMIN and a seccomp
/// profile that allows it.
fn local_targets() -> Check {
    const NAME: &str = "local netns/… and pid/… targets";
    let admin = effective_caps() & (1 << CAP_SYS_ADMIN) != 0;
    let setns = std::thread::spawn(|| {
        let own = fs::File::open("/proc/self/ns/net")?;
        process::enter_netns(own.as_fd())
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::from_raw_os_error(libc::EIO)));
    let by_address = "use an agent started where it may enter the namespace and reached by address (agent.address), or a Kubernetes target";
    match (admin, setns) {
        (true, Ok(())) => Check::new(Status::Ok, NAME, "possible: CAP_SYS_ADMIN, and setns is allowed"),
        (false, _) => Check::new(
            Status::No,
            NAME,
            "not possible: starting an agent in another network namespace needs root (CAP_SYS_ADMIN)",
        )
        .fix(format!("run sctrace as root for those targets, or {by_address}")),
        (true, Err(err)) => Check::new(
            Status::No,
            NAME,
            format!(
                "not possible: setns is refused ({}), as a container's seccomp profile does",
                errno_text(&Errno::from_io(&err))
            ),
        )
        .fix(format!("--cap-add=SYS_ADMIN with a profile that allows setns, or {by_address}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_says_the_mode_and_fixes() {
        let report = Report {
            checks: vec![
                Check::new(Status::Ok, "a", "works"),
                Check::new(Status::No, "b", "refused").fix("do this"),
            ],
            mode: Some(Mode::Container),
        };
        let text = report.render();
        assert!(text.contains("ok   a: works\n"), "{text}");
        assert!(text.contains("no   b: refused; fix: do this\n"), "{text}");
        assert!(
            text.ends_with("\"Containers\", says what differs)\n"),
            "{text}"
        );
        assert_eq!(report.exit_code(), 0);
        assert_eq!(
            Report {
                checks: Vec::new(),
                mode: None
            }
            .exit_code(),
            1
        );
    }

    #[test]
    fn status_fields_are_read() {
        let status = "Name:\tx\nSeccomp:\t2\nSeccomp_filters:\t1\nCapEff:\t0000000000200000\n";
        assert_eq!(status_field(status, "Seccomp:").as_deref(), Some("2"));
        assert_eq!(
            status_field(status, "CapEff:").as_deref(),
            Some("0000000000200000")
        );
        assert_eq!(status_field(status, "Nope:"), None);
    }
}
