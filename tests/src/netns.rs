//! Network namespaces for tests: unique names, loopback addresses, per-namespace /etc files,
//! commands run inside, and cleanup on drop.

use std::ffi::OsStr;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::process::run_with_timeout;

/// Every namespace (and cluster prefix) the harness creates starts with this, followed by
/// the creating process's pid: `sctt-<pid>-<n>-<prefix>`. `scripts/cleanup-test-netns`
/// removes those whose process is gone.
pub const NETNS_MARKER: &str = "sctt-";

/// Where namespaces' scratch directories live: `/run/sctrace-tests/<netns name>/`.
const SCRATCH_ROOT: &str = "/run/sctrace-tests";

const IP_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Panics with a clear message unless the tests run as root (network namespaces need it).
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: it creates network namespaces (run the tests as root, \
         e.g. with sudo -E cargo test)"
    );
}

/// A name no other namespace of this or another live test process has:
/// `sctt-<pid>-<n>-<prefix>`.
pub(crate) fn unique_name(prefix: &str) -> String {
    assert!(
        !prefix.is_empty()
            && prefix.len() <= 24
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "namespace prefix must be 1-24 characters of a-z, 0-9 and '-': {prefix:?}"
    );
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("{NETNS_MARKER}{}-{n}-{prefix}", std::process::id())
}

/// Runs `ip ARGS...`, panicking with its output if it fails.
pub(crate) fn ip(args: &[&str]) {
    let out = run_with_timeout(Command::new("ip").args(args), IP_TIMEOUT);
    assert!(out.status.success(), "ip {} failed:\n{out}", args.join(" "));
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// A network namespace, named uniquely, with `lo` up.
///
/// Before any command runs in it, it gets its own `/etc/netns/NAME/resolv.conf` (a
/// nameserver on 127.0.0.1, which answers nothing until a test starts one: lookups fail
/// fast and never reach the machine's resolver) and `hosts` (localhost only); replace them
/// with [`Netns::write_etc`].
///
/// Dropping it kills every process in the namespace, deletes it, its `/etc/netns/NAME`
/// directory and its scratch directory. A namespace obtained from a [`crate::Cluster`] is
/// only borrowed: the cluster's own drop removes it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    owned: bool,
}

impl Netns {
    /// Creates a namespace named `sctt-<pid>-<n>-<prefix>` (prefix: 1-24 of `a-z0-9-`).
    pub fn new(prefix: &str) -> Netns {
        let name = unique_name(prefix);
        if netns_exists(&name) {
            // Left by an earlier process with our pid, which is therefore dead.
            kill_processes_in(&name);
            ip(&["netns", "delete", &name]);
        }
        ip(&["netns", "add", &name]);
        let ns = Netns { name, owned: true };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns.write_etc(
            "resolv.conf",
            "# written by sctrace-tests: no DNS until a test sets one\nnameserver 127.0.0.1\n",
        );
        ns.write_etc(
            "hosts",
            "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
        );
        ns
    }

    /// A namespace created by someone else (e.g. `scripts/local-cluster`); dropping it only
    /// removes its scratch directory.
    pub(crate) fn borrowed(name: &str) -> Netns {
        assert!(
            netns_exists(name),
            "network namespace {name} does not exist"
        );
        Netns {
            name: name.to_string(),
            owned: false,
        }
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`: what `sctrace-agent --netns` and `"target": "netns/..."` take.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A directory for this namespace's files (sockets, logs, configs), created on first use,
    /// removed on drop: `/run/sctrace-tests/NAME/`. Short enough for Unix socket paths.
    pub fn scratch_dir(&self) -> PathBuf {
        let dir = Path::new(SCRATCH_ROOT).join(&self.name);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        dir
    }

    /// Adds an address to `lo`: `"198.18.0.10/32"`, `"2001:2:0:5c::10/128"` (IPv6 ones get
    /// `nodad`, so they are usable at once).
    pub fn add_addr(&self, cidr: &str) {
        let mut args = vec!["-n", &self.name, "addr", "add", cidr, "dev", "lo"];
        if cidr.contains(':') {
            args.push("nodad");
        }
        ip(&args);
    }

    /// Writes `/etc/netns/NAME/FILE` (e.g. `resolv.conf`, `hosts`): `ip netns exec` mounts it
    /// over `/etc/FILE` for commands started afterwards. FILE must exist in the real `/etc`.
    pub fn write_etc(&self, file: &str, contents: &str) {
        assert!(
            !file.contains('/') && Path::new("/etc").join(file).exists(),
            "write_etc: {file:?} must be a file name that exists in /etc"
        );
        let dir = Path::new("/etc/netns").join(&self.name);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let path = dir.join(file);
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// `ip netns exec NAME PROGRAM`: add arguments, environment, then run it (e.g. with
    /// [`crate::run_with_timeout`]). The program sees this namespace's network and its
    /// `/etc/netns/NAME` files.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it creates live here
    /// (and keep living here when handed back). The thread ends with `f`.
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = self.path();
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                let file = File::open(&path)
                    .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into {}: {e}", path.display()));
                f()
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Links this namespace and `other` with a veth pair, `self_cidr` on this end and
    /// `other_cidr` on the other (e.g. `"198.18.100.1/30"`, `"198.18.100.2/30"`), both up.
    /// Returns the two interface names.
    pub fn veth(&self, other: &Netns, self_cidr: &str, other_cidr: &str) -> (String, String) {
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (here, there) = (format!("sctv{n}a"), format!("sctv{n}b"));
        ip(&[
            "link",
            "add",
            &here,
            "netns",
            &self.name,
            "type",
            "veth",
            "peer",
            "name",
            &there,
            "netns",
            &other.name,
        ]);
        for (ns, ifname, cidr) in [(self, &here, self_cidr), (other, &there, other_cidr)] {
            let mut args = vec!["-n", &ns.name, "addr", "add", cidr, "dev", ifname];
            if cidr.contains(':') {
                args.push("nodad");
            }
            ip(&args);
            ip(&["-n", &ns.name, "link", "set", ifname, "up"]);
        }
        (here, there)
    }

    /// Resolves `name` inside the namespace with `getent ahosts` (glibc, this namespace's
    /// resolv.conf and hosts): the distinct addresses, in order; empty if it does not
    /// resolve. Note glibc's AI_ADDRCONFIG: no AAAA answers where the namespace has no
    /// non-loopback IPv6 address.
    pub fn lookup(&self, name: &str) -> Vec<IpAddr> {
        let out = run_with_timeout(
            self.command("getent").args(["ahosts", name]),
            Duration::from_secs(30),
        );
        let mut addrs = Vec::new();
        for line in out.stdout.lines() {
            if let Some(Ok(addr)) = line.split_whitespace().next().map(str::parse::<IpAddr>) {
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
        }
        addrs
    }

    /// The pids of the processes in this namespace.
    pub fn pids(&self) -> Vec<u32> {
        pids_in(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(Path::new(SCRATCH_ROOT).join(&self.name));
        if !self.owned {
            return;
        }
        kill_processes_in(&self.name);
        let out = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!(
                "sctrace-tests: could not delete netns {}: {out:?}",
                self.name
            );
        }
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
    }
}

fn pids_in(name: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs every process in the namespace, waiting (at most 2 s) until none is left.
fn kill_processes_in(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids = pids_in(name);
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in pids {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_carry_the_marker_pid_and_prefix_and_never_repeat() {
        let a = unique_name("laptop");
        let b = unique_name("laptop");
        assert_ne!(a, b);
        let pid = std::process::id().to_string();
        let fields: Vec<&str> = a.splitn(4, '-').collect();
        assert_eq!(fields[0], NETNS_MARKER.trim_end_matches('-'));
        assert_eq!(fields[1], pid);
        assert!(fields[2].parse::<u32>().is_ok());
        assert_eq!(fields[3], "laptop");
    }

    #[test]
    fn unique_names_from_many_threads_are_distinct() {
        let names: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..100).map(|_| unique_name("x")).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
    }

    #[test]
    #[should_panic(expected = "namespace prefix")]
    fn a_prefix_with_a_slash_is_refused() {
        unique_name("../etc");
    }

    #[test]
    #[should_panic(expected = "namespace prefix")]
    fn an_empty_prefix_is_refused() {
        unique_name("");
    }
}
