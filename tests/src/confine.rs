//! Running commands under `sctrace-confine`: the seccomp filter of a Docker container
//! (Docker's default profile, Docker's default capabilities), without Docker.
//!
//! ```no_run
//! use sctrace_tests::{confined, run_with_timeout, Confinement};
//! use std::time::Duration;
//! // Docker's default profile:
//! let out = run_with_timeout(confined("python3").args(["-c", "print(1)"]), Duration::from_secs(10));
//! // `docker run --cap-add SYS_PTRACE`, with seccomp() refused on top:
//! let mut cmd = Confinement::docker_default()
//!     .with_cap("SYS_PTRACE")
//!     .deny("seccomp")
//!     .command("true");
//! run_with_timeout(&mut cmd, Duration::from_secs(10)).assert_success();
//! ```
//!
//! Inside a test namespace: `ns.command(sctrace_tests::bin("sctrace-confine"))
//! .args(Confinement::docker_default().args()).arg(program)`.

use std::ffi::OsStr;
use std::process::Command;

use crate::locate::bin;

/// Which filter `sctrace-confine` puts a command under: a profile, the capabilities that
/// unlock more of it, and calls refused on top.
#[derive(Clone, Debug)]
pub struct Confinement {
    profile: &'static str,
    with_caps: Vec<String>,
    deny: Vec<String>,
}

impl Confinement {
    /// Docker's default seccomp profile for a container with Docker's default capabilities
    /// (`docker run IMAGE`): pidfd_getfd, kcmp, process_madvise, setns, unshare, mount and
    /// namespace flags on clone are refused with EPERM; clone3 gets ENOSYS.
    pub fn docker_default() -> Confinement {
        Confinement {
            profile: "docker-default",
            with_caps: Vec::new(),
            deny: Vec::new(),
        }
    }

    /// No profile (`--security-opt seccomp=unconfined`): only the calls given to
    /// [`Confinement::deny`] are refused.
    pub fn unconfined() -> Confinement {
        Confinement {
            profile: "unconfined",
            ..Confinement::docker_default()
        }
    }

    /// The container also has capability `cap` (`SYS_PTRACE`, as `docker run --cap-add`
    /// takes it): the profile's entries for it apply.
    pub fn with_cap(mut self, cap: &str) -> Confinement {
        self.with_caps.push(cap.to_string());
        self
    }

    /// System call `syscall` (an x86_64 name or number) is refused with EPERM too.
    pub fn deny(mut self, syscall: &str) -> Confinement {
        self.deny.push(syscall.to_string());
        self
    }

    /// `sctrace-confine`'s arguments up to and including `--`: the program and its
    /// arguments follow.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["--profile".to_string(), self.profile.to_string()];
        if !self.with_caps.is_empty() {
            args.push(format!("--with-cap={}", self.with_caps.join(",")));
        }
        if !self.deny.is_empty() {
            args.push(format!("--deny={}", self.deny.join(",")));
        }
        args.push("--".to_string());
        args
    }

    /// A command running `program` under this confinement; add its arguments with `.args()`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(bin("sctrace-confine"));
        cmd.args(self.args()).arg(program);
        cmd
    }

    /// `cmd` (program, arguments, environment changes, working directory) under this
    /// confinement. Stdio settings, `env_clear` and pre-exec hooks are not carried over:
    /// set them on the result.
    pub fn wrap(&self, cmd: &Command) -> Command {
        let mut out = self.command(cmd.get_program());
        out.args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(value) => out.env(key, value),
                None => out.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            out.current_dir(dir);
        }
        out
    }
}

/// `program` under Docker's default seccomp profile: `sctrace-confine -- program`; add its
/// arguments with `.args()`.
pub fn confined(program: impl AsRef<OsStr>) -> Command {
    Confinement::docker_default().command(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_come_before_the_separator() {
        let c = Confinement::docker_default()
            .with_cap("SYS_PTRACE")
            .with_cap("NET_ADMIN")
            .deny("seccomp");
        assert_eq!(
            c.args(),
            [
                "--profile",
                "docker-default",
                "--with-cap=SYS_PTRACE,NET_ADMIN",
                "--deny=seccomp",
                "--"
            ]
        );
        assert_eq!(Confinement::unconfined().args()[1], "unconfined");
    }
}
