//! The target: which network namespace the agent acts in, and which resolv.conf describes
//! how that namespace resolves names.

use std::path::{Path, PathBuf};

/// A target network namespace and its resolver configuration.
#[derive(Debug, Clone)]
pub struct Target {
    /// The namespace file to `setns` into.
    pub netns: PathBuf,
    /// The resolv.conf the target's processes use.
    pub resolv_conf: PathBuf,
    /// For logs.
    pub description: String,
}

impl Target {
    /// A namespace file. For /run/netns/NAME the resolver configuration is
    /// /etc/netns/NAME/resolv.conf when it exists (as `ip netns exec` would bind-mount it),
    /// else /etc/resolv.conf.
    pub fn netns(path: &Path) -> Target {
        let named = path
            .parent()
            .filter(|dir| *dir == Path::new("/run/netns") || *dir == Path::new("/var/run/netns"))
            .and_then(|_| path.file_name())
            .map(|name| Path::new("/etc/netns").join(name).join("resolv.conf"))
            .filter(|conf| conf.exists());
        Target {
            netns: path.to_path_buf(),
            resolv_conf: named.unwrap_or_else(|| PathBuf::from("/etc/resolv.conf")),
            description: format!("netns {}", path.display()),
        }
    }

    /// A process: its network namespace, and the resolv.conf in its root filesystem.
    pub fn pid(pid: u32) -> Target {
        Target {
            netns: PathBuf::from(format!("/proc/{pid}/ns/net")),
            resolv_conf: PathBuf::from(format!("/proc/{pid}/root/etc/resolv.conf")),
            description: format!("pid {pid}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_paths() {
        let t = Target::pid(42);
        assert_eq!(t.netns, Path::new("/proc/42/ns/net"));
        assert_eq!(t.resolv_conf, Path::new("/proc/42/root/etc/resolv.conf"));
    }

    #[test]
    fn unnamed_netns_uses_etc_resolv_conf() {
        let t = Target::netns(Path::new("/tmp/some-ns-file"));
        assert_eq!(t.resolv_conf, Path::new("/etc/resolv.conf"));
        let t = Target::netns(Path::new("/run/netns/sctrace-no-such-ns-config"));
        assert_eq!(t.resolv_conf, Path::new("/etc/resolv.conf"));
    }
}
