//! How the end-to-end tests run sctrace: as root on the host (the default), or as it runs
//! where developers and CI jobs run, chosen by environment variables so that the same tests
//! run again that way (`scripts/test` does):
//!
//! - `SCTRACE_TEST_CONFINE=docker-default`: sctrace runs under `sctrace-confine`, the seccomp
//!   filter of a default Docker container (`pidfd_getfd` refused: sctrace's container mode;
//!   `setns` refused).
//! - `SCTRACE_TEST_USER=NAME` (e.g. `nobody`): sctrace runs as that user, with its primary
//!   group and no supplementary groups (`setpriv --reuid --regid --clear-groups`).
//!
//! Either way sctrace can't start an agent in a local namespace itself (that needs `setns`
//! and root), so for a cluster the harness starts one — as root, unconfined, as an operator
//! would — and sctrace reaches it by address (`SCTRACE_AGENT_ADDRESS`,
//! `SCTRACE_AGENT_TOKEN_FILE`): see [`crate::Cluster::sctrace`].

use std::ffi::OsString;

use crate::confine::Confinement;
use crate::locate::bin;

/// The way sctrace runs in this test process.
#[derive(Debug, Clone, Default)]
pub struct Variant {
    confine: Option<Confinement>,
    user: Option<String>,
}

impl Variant {
    /// The variant the environment asks for.
    ///
    /// # Panics
    /// On a `SCTRACE_TEST_CONFINE` value other than `docker-default`.
    pub fn from_env() -> Variant {
        let confine = match std::env::var("SCTRACE_TEST_CONFINE").ok().as_deref() {
            None | Some("") => None,
            Some("docker-default") => Some(Confinement::docker_default()),
            Some(other) => panic!("SCTRACE_TEST_CONFINE={other}: only docker-default is known"),
        };
        let user = std::env::var("SCTRACE_TEST_USER")
            .ok()
            .filter(|u| !u.is_empty());
        Variant { confine, user }
    }

    /// Under Docker's default seccomp profile, as the test's own user.
    pub fn confined() -> Variant {
        Variant {
            confine: Some(Confinement::docker_default()),
            user: None,
        }
    }

    /// As `user` (and under Docker's default seccomp profile when `confined`).
    pub fn as_user(user: &str, confined: bool) -> Variant {
        Variant {
            confine: confined.then(Confinement::docker_default),
            user: Some(user.to_string()),
        }
    }

    /// As root on the host, unconfined: sctrace can start local agents.
    pub fn is_plain(&self) -> bool {
        self.confine.is_none() && self.user.is_none()
    }

    /// Under Docker's default seccomp profile (sctrace's container mode).
    pub fn is_confined(&self) -> bool {
        self.confine.is_some()
    }

    /// Whether sctrace reaches the harness's agent over TCP (as an unprivileged user, not
    /// confined; see [`crate::Cluster::sctrace`]), and so makes data connections.
    pub fn agent_over_tcp(&self) -> bool {
        self.user.is_some() && self.confine.is_none()
    }

    /// The user sctrace runs as, if not root.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// What the tests' output says about the variant.
    pub fn describe(&self) -> String {
        match (&self.confine, &self.user) {
            (None, None) => "as root, unconfined".into(),
            (Some(_), None) => "under Docker's default seccomp profile".into(),
            (None, Some(user)) => format!("as {user}"),
            (Some(_), Some(user)) => format!("as {user}, under Docker's default seccomp profile"),
        }
    }

    /// The command line that runs `program args...` this way: `[setpriv ... --]
    /// [sctrace-confine ... --] program args...`.
    pub fn argv(&self, program: impl Into<OsString>) -> Vec<OsString> {
        let mut argv: Vec<OsString> = Vec::new();
        if let Some(user) = &self.user {
            let group = primary_group(user);
            argv.extend(
                [
                    "setpriv".to_string(),
                    format!("--reuid={user}"),
                    format!("--regid={group}"),
                    "--clear-groups".to_string(),
                    "--".to_string(),
                ]
                .map(OsString::from),
            );
        }
        if let Some(confine) = &self.confine {
            argv.push(bin("sctrace-confine").into());
            argv.extend(confine.args().into_iter().map(OsString::from));
        }
        argv.push(program.into());
        argv
    }
}

/// The primary group of `user` (from `id -gn`; `nogroup` if that fails).
fn primary_group(user: &str) -> String {
    std::process::Command::new("id")
        .args(["-gn", user])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|g| g.trim().to_string())
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| "nogroup".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_variant_runs_the_program_itself() {
        let plain = Variant::default();
        assert!(plain.is_plain());
        assert_eq!(plain.argv("sctrace"), [OsString::from("sctrace")]);
    }

    #[test]
    fn users_come_before_the_filter() {
        let v = Variant {
            confine: None,
            user: Some("nobody".into()),
        };
        let argv = v.argv("sctrace");
        assert_eq!(argv[0], "setpriv");
        assert_eq!(argv[1], "--reuid=nobody");
        assert_eq!(argv.last().unwrap(), "sctrace");
        assert!(!v.is_plain() && !v.is_confined());
    }
}
