//! `sctrace-confine`: runs a program under the seccomp filter a container runtime would put
//! it under, so that tests can show what sctrace does inside a Docker container on a machine
//! without Docker.
//!
//! ```text
//! sctrace-confine [--profile docker-default|unconfined] [--with-cap CAP[,CAP..]]
//!                 [--deny SYSCALL[,SYSCALL..]] [--kernel MAJOR.MINOR] -- PROGRAM [ARGS...]
//! sctrace-confine [OPTIONS] --list
//! ```
//!
//! It installs the filter on itself (setting no_new_privs, as an unprivileged filter must),
//! then execs PROGRAM, which with all its descendants stays under it. The default profile is
//! Docker's default seccomp profile for a container with Docker's default capabilities
//! (no CAP_SYS_PTRACE, no CAP_SYS_ADMIN, ...): `pidfd_getfd`, `kcmp`, `process_madvise`,
//! `setns`, `unshare`, `mount` and namespace flags on `clone` are refused with EPERM,
//! `clone3` gets ENOSYS (so that libcs fall back to `clone`), system calls newer than any the
//! profile names get ENOSYS (as runc adds), and `seccomp`, `ioctl`, `pidfd_open`, `ptrace`,
//! `process_vm_readv`/`writev` run. `--with-cap` adds what a `--cap-add` would unlock
//! (`--with-cap SYS_PTRACE`: `pidfd_getfd`, `kcmp`, `process_madvise`); `--deny` refuses more
//! calls with EPERM. Only the filter is imitated: the capabilities themselves, the user and
//! the namespaces stay as they were.
//!
//! Exit status: PROGRAM's (it replaces this process); 127 if it is not found, 126 if it can't
//! be run, 125 if the filter can't be installed, 2 for a bad command line.

mod bpf;
mod caps;
mod docker_default;
mod profile;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use clap::Parser;

use caps::CapSet;
use profile::{Plan, ProfileName, Verdict};

/// Runs PROGRAM under a container runtime's seccomp filter (Docker's default profile unless
/// told otherwise), for testing how programs behave inside containers.
#[derive(Parser, Debug)]
#[command(name = "sctrace-confine", version)]
struct Args {
    /// The profile to imitate.
    #[arg(long, value_enum, default_value = "docker-default")]
    profile: ProfileName,
    /// Capabilities the container has beyond Docker's default ones, as `--cap-add` gives:
    /// unlocks the profile's entries for them (SYS_PTRACE: pidfd_getfd, kcmp,
    /// process_madvise; SYS_ADMIN: setns, unshare, mount, clone3, ...).
    #[arg(long = "with-cap", value_name = "CAP[,CAP..]", value_delimiter = ',')]
    with_cap: Vec<String>,
    /// System calls (x86_64 names or numbers) refused with EPERM whatever the profile says.
    #[arg(long, value_name = "SYSCALL[,SYSCALL..]", value_delimiter = ',')]
    deny: Vec<String>,
    /// The kernel version the profile's "since kernel X.Y" entries are checked against
    /// (default: the running kernel's).
    #[arg(long, value_name = "MAJOR.MINOR")]
    kernel: Option<String>,
    /// Print what each system call gets under these options, and exit.
    #[arg(long, conflicts_with_all = ["program", "check"])]
    list: bool,
    /// Print what one call gets (a system call's name or number, then up to 6 arguments,
    /// decimal or 0x hex), and exit: `--check clone 0x10000011` says EPERM.
    #[arg(long, num_args = 1..=7, value_name = "SYSCALL [ARG..]", conflicts_with = "program")]
    check: Option<Vec<String>>,
    /// The program to run, and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required_unless_present_any = ["list", "check"]
    )]
    program: Vec<OsString>,
}

fn fail(status: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("sctrace-confine: {message}");
    ExitCode::from(status)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut caps = CapSet::docker_default();
    for name in &args.with_cap {
        match caps::parse(name) {
            Some(cap) => caps.add(cap),
            None => return fail(2, format_args!("--with-cap: no capability {name}")),
        }
    }
    let mut deny = Vec::new();
    for name in &args.deny {
        match profile::syscall_number(name) {
            Some(nr) => deny.push(nr),
            None => return fail(2, format_args!("--deny: no x86_64 system call {name}")),
        }
    }
    let kernel = match &args.kernel {
        Some(text) => profile::parse_kernel(text),
        None => profile::running_kernel(),
    };
    let Some(kernel) = kernel else {
        return fail(
            2,
            "can't tell the kernel version: give --kernel MAJOR.MINOR",
        );
    };
    let plan = Plan::new(args.profile, caps, kernel, &deny);

    if args.list {
        print!("{}", describe(&plan));
        return ExitCode::SUCCESS;
    }
    if let Some(call) = &args.check {
        return check(&plan, call);
    }

    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return fail(125, "only x86_64 Linux is supported");
    }
    let program = match bpf::compile(&plan) {
        Ok(program) => program,
        Err(e) => return fail(125, format_args!("can't build the filter: {e}")),
    };
    if let Err(e) = bpf::install(&program) {
        return fail(125, format_args!("can't install the seccomp filter: {e}"));
    }
    let (command, rest) = args.program.split_first().expect("clap requires a program");
    let err = Command::new(command).args(rest).exec();
    let status = match err.kind() {
        io::ErrorKind::NotFound => 127,
        _ => 126,
    };
    fail(
        status,
        format_args!("can't run {}: {err}", command.to_string_lossy()),
    )
}

/// `--check SYSCALL [ARG..]`: prints what that call gets.
fn check(plan: &Plan, call: &[String]) -> ExitCode {
    let Some(nr) = profile::syscall_number(&call[0]) else {
        return fail(
            2,
            format_args!("--check: no x86_64 system call {}", call[0]),
        );
    };
    let mut args = [0u64; 6];
    for (slot, text) in args.iter_mut().zip(&call[1..]) {
        let parsed = match text.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => text.parse(),
        };
        match parsed {
            Ok(value) => *slot = value,
            Err(_) => return fail(2, format_args!("--check: bad argument {text}")),
        }
    }
    let name = profile::syscall_name(nr).unwrap_or("?");
    let verdict = match plan.decide(nr, &args) {
        Verdict::Allow => "allowed".to_string(),
        Verdict::Errno(e) => errno_name(e),
    };
    let shown: Vec<String> = args[..call.len() - 1]
        .iter()
        .map(|a| format!("{a:#x}"))
        .collect();
    println!("{name}({}): {verdict}", shown.join(", "));
    ExitCode::SUCCESS
}

/// One line per x86_64 system call: its number, name and what it gets.
fn describe(plan: &Plan) -> String {
    let verdict = |v: Verdict| match v {
        Verdict::Allow => "allowed".to_string(),
        Verdict::Errno(e) => errno_name(e),
    };
    let mut out = String::new();
    for call in profile::syscalls() {
        let _ = write!(out, "{:>4} {:<24} ", call.nr, call.name);
        let rules = plan.rules.iter().find(|(nr, _)| *nr == call.nr);
        match (plan.enosys_above, rules) {
            (Some(above), _) if call.nr > above => out.push_str("ENOSYS (newer than the profile)"),
            (_, None) => out.push_str(&verdict(plan.default)),
            (_, Some((_, rules))) => {
                let mut conditional = false;
                for rule in rules {
                    if rule.checks.is_empty() {
                        out.push_str(&verdict(rule.verdict));
                    } else {
                        conditional = true;
                        let checks: Vec<String> = rule.checks.iter().map(describe_check).collect();
                        let _ = write!(
                            out,
                            "{} if {}; ",
                            verdict(rule.verdict),
                            checks.join(" and ")
                        );
                    }
                }
                if conditional && rules.last().is_some_and(|r| !r.checks.is_empty()) {
                    let _ = write!(out, "else {}", verdict(plan.default));
                }
            }
        }
        out.push('\n');
    }
    if let Some(above) = plan.enosys_above {
        let _ = writeln!(out, "   > {above}: ENOSYS (newer than the profile)");
    }
    out
}

fn describe_check(check: &profile::ArgCheck) -> String {
    let arg = format!("arg{}", check.index);
    let v = check.value;
    match check.op {
        profile::Op::Eq => format!("{arg} == {v:#x}"),
        profile::Op::Ne => format!("{arg} != {v:#x}"),
        profile::Op::Lt => format!("{arg} < {v:#x}"),
        profile::Op::Le => format!("{arg} <= {v:#x}"),
        profile::Op::Gt => format!("{arg} > {v:#x}"),
        profile::Op::Ge => format!("{arg} >= {v:#x}"),
        profile::Op::Masked(mask) => format!("{arg} & {mask:#x} == {v:#x}"),
    }
}

fn errno_name(errno: u32) -> String {
    match errno {
        profile::EPERM => "EPERM".to_string(),
        profile::ENOSYS => "ENOSYS".to_string(),
        other => format!("errno {other}"),
    }
}
