//! Profiles as data, and what a profile decides for one container's capabilities and kernel.
//!
//! A profile lists, for each system call, the *grants* that may let it through. A grant
//! applies to a container when it has every capability the grant `needs`, none of those
//! it is `unless`d by, and a kernel at least `since_kernel`; then it gives its verdict to a
//! call whose arguments pass all its checks. A call no grant takes gets the profile's
//! default. That is how Docker reads its own profile (moby's `setupSeccomp` drops the
//! entries whose `includes`/`excludes` don't match, libseccomp builds the filter from the
//! rest), so [`Plan`] is what a container started with those capabilities would get.

use super::caps::{Cap, CapSet};
use super::docker_default;

/// What happens to a system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It runs.
    Allow,
    /// It fails with this errno without running.
    Errno(u32),
}

/// How an argument is compared with a value: as an unsigned 64-bit number, as libseccomp
/// compares them on 64-bit architectures.
// Docker's profile uses four of libseccomp's seven comparisons today; generate.py and the
// compiler handle all of them.
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `arg == value`
    Eq,
    /// `arg != value`
    Ne,
    /// `arg < value`
    Lt,
    /// `arg <= value`
    Le,
    /// `arg > value`
    Gt,
    /// `arg >= value`
    Ge,
    /// `arg & mask == value`
    Masked(u64),
}

/// One condition on one argument of the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgCheck {
    /// Which argument, 0 to 5.
    pub index: u8,
    /// How it is compared.
    pub op: Op,
    /// With what.
    pub value: u64,
}

impl ArgCheck {
    /// Whether `args` pass this check.
    pub fn passes(&self, args: &[u64; 6]) -> bool {
        let a = args[usize::from(self.index)];
        match self.op {
            Op::Eq => a == self.value,
            Op::Ne => a != self.value,
            Op::Lt => a < self.value,
            Op::Le => a <= self.value,
            Op::Gt => a > self.value,
            Op::Ge => a >= self.value,
            Op::Masked(mask) => a & mask == self.value,
        }
    }
}

/// The start of an [`ArgCheck`] on argument `index`: `arg(0).lt(38)`.
pub const fn arg(index: u8) -> ArgRef {
    ArgRef(index)
}

/// An argument an [`ArgCheck`] is about to be made for.
pub struct ArgRef(u8);

macro_rules! compare {
    ($($name:ident => $op:ident),*) => {
        #[allow(dead_code)] // as for Op: the table uses some of them
        impl ArgRef {
            $(
                #[doc = concat!("The argument compared with `", stringify!($op), "`.")]
                pub const fn $name(self, value: u64) -> ArgCheck {
                    ArgCheck { index: self.0, op: Op::$op, value }
                }
            )*
            /// The argument's bits under `mask` must be `value`.
            pub const fn masked(self, mask: u64, value: u64) -> ArgCheck {
                ArgCheck { index: self.0, op: Op::Masked(mask), value }
            }
        }
    };
}
compare!(eq => Eq, ne => Ne, lt => Lt, le => Le, gt => Gt, ge => Ge);

/// One way a system call may be let through (or answered with an errno of the profile's
/// choosing), and for which containers.
#[derive(Clone, Copy, Debug)]
pub struct Grant {
    /// What the call gets.
    pub verdict: Verdict,
    /// All must pass.
    pub args: &'static [ArgCheck],
    /// The container must have all of these.
    pub needs: &'static [Cap],
    /// The container must have none of these.
    pub unless: &'static [Cap],
    /// The kernel must be this version or later (major, minor).
    pub since: Option<(u32, u32)>,
}

/// A grant letting the call through.
pub const fn allow() -> Grant {
    Grant {
        verdict: Verdict::Allow,
        args: &[],
        needs: &[],
        unless: &[],
        since: None,
    }
}

/// A grant answering the call with `errno`.
pub const fn errno(errno: u32) -> Grant {
    Grant {
        verdict: Verdict::Errno(errno),
        ..allow()
    }
}

impl Grant {
    /// Only for calls whose arguments pass `checks`.
    pub const fn when(self, checks: &'static [ArgCheck]) -> Grant {
        Grant {
            args: checks,
            ..self
        }
    }

    /// Only for containers with all of `caps`.
    pub const fn needs(self, caps: &'static [Cap]) -> Grant {
        Grant {
            needs: caps,
            ..self
        }
    }

    /// Only for containers with none of `caps`.
    pub const fn unless(self, caps: &'static [Cap]) -> Grant {
        Grant {
            unless: caps,
            ..self
        }
    }

    /// Only on kernel `major.minor` or later.
    pub const fn since_kernel(self, major: u32, minor: u32) -> Grant {
        Grant {
            since: Some((major, minor)),
            ..self
        }
    }

    fn applies(&self, caps: CapSet, kernel: (u32, u32)) -> bool {
        self.needs.iter().all(|&c| caps.has(c))
            && !self.unless.iter().any(|&c| caps.has(c))
            && self.since.is_none_or(|since| kernel >= since)
    }
}

/// One system call of the table.
#[derive(Clone, Copy, Debug)]
pub struct Syscall {
    /// Its x86_64 number.
    pub nr: u32,
    /// Its name.
    pub name: &'static str,
    /// The ways it may be let through; none: the profile's default.
    pub grants: &'static [Grant],
}

/// A [`Syscall`] entry.
pub const fn sys(nr: u32, name: &'static str, grants: &'static [Grant]) -> Syscall {
    Syscall { nr, name, grants }
}

/// Every x86_64 system call the tables know, by number (the profile's table lists them
/// all, granted or not).
pub fn syscalls() -> &'static [Syscall] {
    docker_default::SYSCALLS
}

/// The number of the x86_64 system call `name`, or `name` itself if it is a number.
pub fn syscall_number(name: &str) -> Option<u32> {
    if let Ok(nr) = name.parse() {
        return Some(nr);
    }
    syscalls().iter().find(|s| s.name == name).map(|s| s.nr)
}

/// The name of x86_64 system call `nr`, if it has one.
pub fn syscall_name(nr: u32) -> Option<&'static str> {
    syscalls().iter().find(|s| s.nr == nr).map(|s| s.name)
}

/// Which profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProfileName {
    /// Docker's default seccomp profile (containerd's RuntimeDefault is much the same).
    DockerDefault,
    /// No profile (`docker run --security-opt seccomp=unconfined`): every call runs,
    /// except those refused with `--deny`.
    Unconfined,
}

/// A rule of the finished filter: the verdict for calls of one number whose arguments pass
/// all the checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// All must pass (none: every call of that number).
    pub checks: Vec<ArgCheck>,
    /// What the call gets.
    pub verdict: Verdict,
}

/// What a filter does, for one container: built from a profile, the container's
/// capabilities and kernel, and the calls refused on top. [`Plan::decide`] says what a call
/// gets; `bpf::compile` turns the plan into the filter the kernel runs, with the same
/// outcome for every call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Rules by system call number, ascending; for one number the first rule whose checks
    /// pass decides.
    pub rules: Vec<(u32, Vec<Rule>)>,
    /// A call of a number greater than this gets ENOSYS (none: no such limit). This is what
    /// runc adds to every profile: a program calling a system call newer than any the
    /// profile names gets "not implemented", and may fall back to an older call, instead of
    /// "not permitted".
    pub enosys_above: Option<u32>,
    /// What every other call gets.
    pub default: Verdict,
}

/// EPERM, which a refused call gets.
pub const EPERM: u32 = libc::EPERM as u32;
/// ENOSYS, which a call newer than the profile gets.
pub const ENOSYS: u32 = libc::ENOSYS as u32;

impl Plan {
    /// The plan of `profile` for a container with `caps` on kernel `kernel` (major, minor),
    /// with the system calls numbered in `deny` refused with EPERM whatever the profile says.
    pub fn new(profile: ProfileName, caps: CapSet, kernel: (u32, u32), deny: &[u32]) -> Plan {
        let refused = || Rule {
            checks: Vec::new(),
            verdict: Verdict::Errno(EPERM),
        };
        let mut rules: Vec<(u32, Vec<Rule>)> = Vec::new();
        let (default, enosys_above) = match profile {
            ProfileName::Unconfined => (Verdict::Allow, None),
            ProfileName::DockerDefault => {
                for call in docker_default::SYSCALLS {
                    let mut list = Vec::new();
                    for grant in call.grants.iter().filter(|g| g.applies(caps, kernel)) {
                        list.push(Rule {
                            checks: grant.args.to_vec(),
                            verdict: grant.verdict,
                        });
                        if grant.args.is_empty() {
                            break; // it takes every call: rules after it never decide
                        }
                    }
                    if !list.is_empty() {
                        rules.push((call.nr, list));
                    }
                }
                let newest = rules.iter().map(|(nr, _)| *nr).max();
                (Verdict::Errno(docker_default::DEFAULT_ERRNO), newest)
            }
        };
        for &nr in deny {
            match rules.iter_mut().find(|(n, _)| *n == nr) {
                Some((_, list)) => *list = vec![refused()],
                None => rules.push((nr, vec![refused()])),
            }
        }
        rules.sort_by_key(|(nr, _)| *nr);
        // A call refused by name still gets EPERM when it is newer than the profile.
        let enosys_above = enosys_above.map(|above| deny.iter().fold(above, |m, &nr| m.max(nr)));
        Plan {
            rules,
            enosys_above,
            default,
        }
    }

    /// What system call `nr` with arguments `args` gets.
    pub fn decide(&self, nr: u32, args: &[u64; 6]) -> Verdict {
        if self.enosys_above.is_some_and(|above| nr > above) {
            return Verdict::Errno(ENOSYS);
        }
        if let Ok(i) = self.rules.binary_search_by_key(&nr, |(n, _)| *n) {
            for rule in &self.rules[i].1 {
                if rule.checks.iter().all(|c| c.passes(args)) {
                    return rule.verdict;
                }
            }
        }
        self.default
    }
}

/// The running kernel's version (major, minor), as Docker reads it for `minKernel`.
pub fn running_kernel() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    parse_kernel(release.trim())
}

/// `6.1.0-18-amd64` → (6, 1).
pub fn parse_kernel(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps;

    const NO_ARGS: [u64; 6] = [0; 6];
    const KERNEL: (u32, u32) = (6, 1);

    fn docker(with: &[&str], deny: &[&str]) -> Plan {
        let mut set = CapSet::docker_default();
        for name in with {
            set.add(caps::parse(name).unwrap());
        }
        let deny: Vec<u32> = deny.iter().map(|n| syscall_number(n).unwrap()).collect();
        Plan::new(ProfileName::DockerDefault, set, KERNEL, &deny)
    }

    fn verdict(plan: &Plan, name: &str, args: [u64; 6]) -> Verdict {
        plan.decide(syscall_number(name).unwrap(), &args)
    }

    fn with_arg0(value: u64) -> [u64; 6] {
        [value, 0, 0, 0, 0, 0]
    }

    const ALLOW: Verdict = Verdict::Allow;
    const REFUSED: Verdict = Verdict::Errno(EPERM);

    #[test]
    fn the_table_is_sorted_unique_and_knows_the_calls_sctrace_uses() {
        let table = syscalls();
        assert!(table.windows(2).all(|w| w[0].nr < w[1].nr));
        for (name, nr) in [
            ("socket", libc::SYS_socket),
            ("connect", libc::SYS_connect),
            ("ioctl", libc::SYS_ioctl),
            ("seccomp", libc::SYS_seccomp),
            ("pidfd_open", libc::SYS_pidfd_open),
            ("pidfd_getfd", libc::SYS_pidfd_getfd),
            ("process_vm_readv", libc::SYS_process_vm_readv),
            ("kcmp", libc::SYS_kcmp),
            ("clone3", libc::SYS_clone3),
            ("mseal", libc::SYS_mseal),
        ] {
            assert_eq!(syscall_number(name), Some(nr as u32), "{name}");
        }
        assert_eq!(syscall_name(438), Some("pidfd_getfd"));
        assert_eq!(syscall_number("438"), Some(438));
        assert_eq!(syscall_number("no_such_call"), None);
    }

    #[test]
    fn docker_refuses_what_sctrace_would_need_ptrace_rights_for() {
        let plan = docker(&[], &[]);
        for name in ["pidfd_getfd", "kcmp", "process_madvise"] {
            assert_eq!(verdict(&plan, name, NO_ARGS), REFUSED, "{name}");
        }
        // Allowed without CAP_SYS_PTRACE since Linux 4.8 (its ptrace checks are enough).
        for name in ["ptrace", "process_vm_readv", "process_vm_writev"] {
            assert_eq!(verdict(&plan, name, NO_ARGS), ALLOW, "{name}");
        }
        let old_kernel = Plan::new(
            ProfileName::DockerDefault,
            CapSet::docker_default(),
            (4, 4),
            &[],
        );
        assert_eq!(verdict(&old_kernel, "ptrace", NO_ARGS), REFUSED);
    }

    #[test]
    fn docker_allows_what_seccomp_notification_needs() {
        let plan = docker(&[], &[]);
        for name in [
            "seccomp",
            "ioctl",
            "pidfd_open",
            "pidfd_send_signal",
            "prctl",
            "connect",
            "sendmsg",
            "recvmsg",
            "wait4",
            "waitid",
            "execve",
            "fork",
            "vfork",
            "setsid",
            "setpgid",
        ] {
            assert_eq!(verdict(&plan, name, NO_ARGS), ALLOW, "{name}");
        }
    }

    #[test]
    fn docker_refuses_namespaces_and_mounts_without_sys_admin() {
        let plan = docker(&[], &[]);
        for name in [
            "setns",
            "unshare",
            "mount",
            "umount2",
            "bpf",
            "perf_event_open",
        ] {
            assert_eq!(verdict(&plan, name, NO_ARGS), REFUSED, "{name}");
        }
        let admin = docker(&["SYS_ADMIN"], &[]);
        for name in ["setns", "unshare", "mount", "umount2", "bpf", "clone3"] {
            assert_eq!(verdict(&admin, name, NO_ARGS), ALLOW, "{name}");
        }
    }

    #[test]
    fn clone_is_allowed_without_namespace_flags_and_clone3_says_not_implemented() {
        let plan = docker(&[], &[]);
        let thread_flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        assert_eq!(verdict(&plan, "clone", with_arg0(thread_flags)), ALLOW);
        assert_eq!(
            verdict(&plan, "clone", with_arg0(libc::SIGCHLD as u64)),
            ALLOW
        );
        for flag in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWCGROUP,
        ] {
            let flags = flag as u64 | libc::SIGCHLD as u64;
            assert_eq!(
                verdict(&plan, "clone", with_arg0(flags)),
                REFUSED,
                "{flag:#x}"
            );
        }
        // glibc falls back to clone when clone3 is not implemented.
        assert_eq!(verdict(&plan, "clone3", NO_ARGS), Verdict::Errno(ENOSYS));
        let admin = docker(&["SYS_ADMIN"], &[]);
        let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as u64;
        assert_eq!(verdict(&admin, "clone", with_arg0(flags)), ALLOW);
    }

    #[test]
    fn socket_families_and_personalities() {
        let plan = docker(&[], &[]);
        for family in [
            libc::AF_UNIX,
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_NETLINK,
        ] {
            assert_eq!(verdict(&plan, "socket", with_arg0(family as u64)), ALLOW);
        }
        for family in [libc::AF_ALG, libc::AF_VSOCK] {
            let got = verdict(&plan, "socket", with_arg0(family as u64));
            assert_eq!(got, REFUSED, "family {family}");
        }
        assert_eq!(verdict(&plan, "socket", with_arg0(39)), ALLOW);
        assert_eq!(verdict(&plan, "socket", with_arg0(44)), ALLOW); // AF_XDP
        assert_eq!(verdict(&plan, "personality", with_arg0(0xffff_ffff)), ALLOW);
        assert_eq!(verdict(&plan, "personality", with_arg0(0)), ALLOW);
        let no_randomize = libc::ADDR_NO_RANDOMIZE as u64;
        assert_eq!(
            verdict(&plan, "personality", with_arg0(no_randomize)),
            REFUSED
        );
        // Compared as 64-bit numbers: high bits count.
        let high = (1u64 << 32) | libc::AF_INET as u64;
        assert_eq!(verdict(&plan, "socket", with_arg0(high)), ALLOW);
        assert_eq!(verdict(&plan, "personality", with_arg0(1 << 32)), REFUSED);
    }

    #[test]
    fn sys_ptrace_unlocks_pidfd_getfd_kcmp_and_process_madvise() {
        let plan = docker(&["SYS_PTRACE"], &[]);
        for name in ["pidfd_getfd", "kcmp", "process_madvise", "ptrace"] {
            assert_eq!(verdict(&plan, name, NO_ARGS), ALLOW, "{name}");
        }
        assert_eq!(verdict(&plan, "setns", NO_ARGS), REFUSED);
    }

    #[test]
    fn calls_newer_than_the_profile_are_not_implemented_older_unknown_ones_refused() {
        let plan = docker(&[], &[]);
        let newest = plan.enosys_above.unwrap();
        assert!(newest >= syscall_number("mseal").unwrap());
        assert_eq!(plan.decide(newest + 1, &NO_ARGS), Verdict::Errno(ENOSYS));
        assert_eq!(plan.decide(1000, &NO_ARGS), Verdict::Errno(ENOSYS));
        for name in [
            "userfaultfd",
            "kexec_load",
            "swapon",
            "io_uring_setup",
            "keyctl",
        ] {
            assert_eq!(verdict(&plan, name, NO_ARGS), REFUSED, "{name}");
        }
        // Numbers no system call has, below the newest: the default.
        assert_eq!(plan.decide(400, &NO_ARGS), REFUSED);
    }

    #[test]
    fn deny_refuses_on_top_of_the_profile() {
        let plan = docker(&["SYS_PTRACE"], &["seccomp", "pidfd_getfd", "clone"]);
        for name in ["seccomp", "pidfd_getfd"] {
            assert_eq!(verdict(&plan, name, NO_ARGS), REFUSED, "{name}");
        }
        assert_eq!(
            verdict(&plan, "clone", with_arg0(libc::SIGCHLD as u64)),
            REFUSED
        );
        assert_eq!(verdict(&plan, "kcmp", NO_ARGS), ALLOW);
        // Refusing a call newer than the profile: EPERM, not ENOSYS.
        let newer = Plan::new(
            ProfileName::DockerDefault,
            CapSet::docker_default(),
            KERNEL,
            &[1000],
        );
        assert_eq!(newer.decide(1000, &NO_ARGS), REFUSED);
        assert_eq!(newer.decide(999, &NO_ARGS), REFUSED);
    }

    #[test]
    fn unconfined_allows_everything_but_what_is_denied() {
        let plan = Plan::new(
            ProfileName::Unconfined,
            CapSet::default(),
            KERNEL,
            &[syscall_number("pidfd_getfd").unwrap()],
        );
        assert_eq!(verdict(&plan, "pidfd_getfd", NO_ARGS), REFUSED);
        assert_eq!(verdict(&plan, "setns", NO_ARGS), ALLOW);
        assert_eq!(plan.decide(1000, &NO_ARGS), ALLOW);
    }

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_kernel("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(parse_kernel("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel("5.15.0-1051-azure"), Some((5, 15)));
        assert_eq!(parse_kernel("garbage"), None);
        assert!(running_kernel().is_some());
    }
}
