//! The local cluster of `scripts/local-cluster` as a test fixture: brought up under a unique
//! prefix, described by the script's own address table, taken down on drop.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::dnsmasq::{parse_dns_queries, DnsQuery};
use crate::locate::{bin, workspace_root};
use crate::netns::{unique_name, Netns};
use crate::process::run_with_timeout;
use crate::server::Server;
use crate::variant::Variant;

/// One name the cluster's DNS answers (from the script's `services` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Short name, e.g. `uwu-service`.
    pub name: String,
    /// Full name, e.g. `uwu-service.default.svc.cluster.local`.
    pub fqdn: String,
    /// Its A records.
    pub ipv4: Vec<Ipv4Addr>,
    /// Its AAAA records.
    pub ipv6: Vec<Ipv6Addr>,
}

impl Service {
    /// Its (first) IPv4 address; panics if it has none.
    pub fn v4(&self) -> Ipv4Addr {
        *self
            .ipv4
            .first()
            .unwrap_or_else(|| panic!("service {} has no IPv4 address", self.name))
    }

    /// Its (first) IPv6 address; panics if it has none.
    pub fn v6(&self) -> Ipv6Addr {
        *self
            .ipv6
            .first()
            .unwrap_or_else(|| panic!("service {} has no IPv6 address", self.name))
    }

    /// `v4():port`.
    pub fn addr_v4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.v4().into(), port)
    }

    /// `[v6()]:port`.
    pub fn addr_v6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.v6().into(), port)
    }
}

/// A running local cluster (`scripts/local-cluster up --name sctt-<pid>-<n>-k`): a cluster
/// namespace with services and DNS, and a laptop namespace with only loopback and its own
/// DNS. Start servers in `cluster`, run sctrace and the app in `laptop`; the agent targets
/// `cluster.path()`. Dropping it runs `local-cluster down`.
#[derive(Debug)]
pub struct Cluster {
    /// `PREFIX-cluster`: services on 198.18.0.0/24 and 2001:2::/64, dnsmasq on
    /// [`Cluster::dns_v4`] / [`Cluster::dns_v6`], pod-like resolv.conf.
    pub cluster: Netns,
    /// `PREFIX-laptop`: loopback only (no route to the cluster), dnsmasq on
    /// [`Cluster::laptop_dns`] knowing only laptop names.
    pub laptop: Netns,
    prefix: String,
    state_dir: PathBuf,
    services: Vec<Service>,
    world: HashMap<String, String>,
    /// The agent the harness started for variants where sctrace can't (see
    /// [`Cluster::sctrace`]): its address and token file.
    agent: OnceLock<(Server, String, PathBuf)>,
    /// The agent reached over TCP (see [`Cluster::agent_over_tcp`]).
    tcp_agent: OnceLock<(Server, String, PathBuf)>,
}

impl Cluster {
    /// Brings up a cluster under a fresh prefix (about a second).
    ///
    /// # Panics
    /// If the script fails (after taking down whatever it made), showing its output.
    pub fn up() -> Cluster {
        Cluster::up_with_dns_ttl(0)
    }

    /// Brings up a cluster whose DNS answers with TTL `secs` (`local-cluster --dns-ttl`;
    /// [`Cluster::up`] has 0, dnsmasq's default).
    ///
    /// # Panics
    /// As [`Cluster::up`].
    pub fn up_with_dns_ttl(secs: u32) -> Cluster {
        let prefix = unique_name("k");
        let script = workspace_root().join("scripts/local-cluster");
        let out = run_with_timeout(
            Command::new(&script).args(["up", "--name", &prefix, "--dns-ttl", &secs.to_string()]),
            Duration::from_secs(60),
        );
        if !out.status.success() {
            take_down(&prefix);
            panic!("{} up --name {prefix} failed:\n{out}", script.display());
        }
        let state_dir = Path::new("/run/sctrace-cluster").join(&prefix);
        let read = |file: &str| {
            let path = state_dir.join(file);
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        };
        let services = parse_services(&read("services")).unwrap_or_else(|e| panic!("{e}"));
        let world = parse_env(&read("world.env"));
        let netns = |key: &str| {
            Netns::borrowed(
                world
                    .get(key)
                    .unwrap_or_else(|| panic!("world.env has no {key}")),
            )
        };
        Cluster {
            cluster: netns("CLUSTER_NETNS"),
            laptop: netns("LAPTOP_NETNS"),
            prefix,
            state_dir,
            services,
            world,
            agent: OnceLock::new(),
            tcp_agent: OnceLock::new(),
        }
    }

    /// `sctrace` in the laptop namespace, run as [`Variant::from_env`] says; add `run
    /// --target netns/<cluster> ...` or a config with that target. In a variant that can't
    /// start a local agent (a container's filter, an unprivileged user), the harness starts
    /// one for the cluster (as root, once per cluster) and sctrace reaches it by address:
    /// `SCTRACE_AGENT_ADDRESS` and `SCTRACE_AGENT_TOKEN_FILE` take precedence over the
    /// target.
    pub fn sctrace(&self) -> Command {
        self.sctrace_as(&Variant::from_env())
    }

    /// `sctrace` in the laptop namespace, run as `variant` says (see [`Cluster::sctrace`]).
    pub fn sctrace_as(&self, variant: &Variant) -> Command {
        let argv = variant.argv(bin("sctrace"));
        let mut cmd = self.laptop.command(&argv[0]);
        cmd.args(&argv[1..]);
        if !variant.is_plain() {
            // As an unprivileged user (not confined), over TCP: the way to an agent in a
            // cluster, with data connections; else over a Unix socket.
            let (address, token) = if variant.agent_over_tcp() {
                self.agent_over_tcp()
            } else {
                self.agent_by_address(variant.user().is_some())
            };
            cmd.env("SCTRACE_AGENT_ADDRESS", address)
                .env("SCTRACE_AGENT_TOKEN_FILE", token);
        }
        cmd
    }

    /// The address and token file of an agent serving the cluster, started on first use.
    /// `for_others`: another user must reach it (the socket, the token file and the
    /// laptop's scratch directory, where tests write events, are opened to everyone).
    pub fn agent_by_address(&self, for_others: bool) -> (String, PathBuf) {
        let (_, address, token) = self.agent.get_or_init(|| {
            let dir = self.laptop.scratch_dir();
            let socket = dir.join("agent.sock");
            let token = dir.join("agent.token");
            let address = format!("unix:{}", socket.display());
            let agent = self.start_agent(Command::new(bin("sctrace-agent")), &address, &token);
            (agent, address, token)
        });
        if for_others {
            let dir = self.laptop.scratch_dir();
            let socket = dir.join("agent.sock");
            for (path, mode) in [
                (dir.as_path(), 0o1777),
                (socket.as_path(), 0o666),
                (token.as_path(), 0o644),
            ] {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .unwrap_or_else(|e| panic!("cannot open {} to others: {e}", path.display()));
            }
        }
        (address.clone(), token.clone())
    }

    /// The address and token file of an agent serving the cluster that listens on TCP,
    /// plain, on the laptop's loopback (`tcp:127.0.0.1:7399`), started on first use; anyone
    /// may read the token file. sctrace makes data connections to it.
    pub fn agent_over_tcp(&self) -> (String, PathBuf) {
        let (_, address, token) = self.tcp_agent.get_or_init(|| {
            let dir = self.laptop.scratch_dir();
            let token = dir.join("tcp-agent.token");
            let address = "tcp:127.0.0.1:7399".to_string();
            let agent =
                self.start_agent(self.laptop.command(bin("sctrace-agent")), &address, &token);
            for (path, mode) in [(dir.as_path(), 0o1777), (token.as_path(), 0o644)] {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .unwrap_or_else(|e| panic!("cannot open {} to others: {e}", path.display()));
            }
            (agent, address, token)
        });
        (address.clone(), token.clone())
    }

    /// Another agent on plain TCP (`tcp:127.0.0.1:PORT` in the laptop, serving the cluster),
    /// allowed only `files` open files (`prlimit --nofile`); its token is written to
    /// `token`. Returns the running agent (its log is on stderr) and its address.
    pub fn agent_over_tcp_with_files(
        &self,
        port: u16,
        files: u64,
        token: &Path,
    ) -> (Server, String) {
        let address = format!("tcp:127.0.0.1:{port}");
        let mut cmd = self.laptop.command("prlimit");
        cmd.arg(format!("--nofile={files}:{files}"))
            .arg(bin("sctrace-agent"));
        (self.start_agent(cmd, &address, token), address)
    }

    /// Starts `cmd` (sctrace-agent, where it should run) for the cluster, listening on
    /// `address`, with a token written to `token`; returns once it listens.
    fn start_agent(&self, mut cmd: Command, address: &str, token: &Path) -> Server {
        std::fs::write(token, "sctrace-tests-agent-token\n")
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", token.display()));
        cmd.arg("--listen")
            .arg(address)
            .arg("--netns")
            .arg(self.cluster.path())
            .arg("--token-file")
            .arg(token);
        Server::spawn_logged("sctrace-agent", cmd, false, |l| l.starts_with("listening"))
    }

    /// The `--name` it was brought up with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `/run/sctrace-cluster/PREFIX`: the script's hosts files, DNS logs and tables.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Every name the cluster's DNS answers.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// A service by short name (`echo`) or full name (`echo.default.svc.cluster.local`).
    ///
    /// # Panics
    /// If there is no such service, listing the known ones.
    pub fn service(&self, name: &str) -> &Service {
        self.services
            .iter()
            .find(|s| s.name == name || s.fqdn == name)
            .unwrap_or_else(|| {
                let known: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
                panic!("no service {name:?} in the cluster; known: {known:?}")
            })
    }

    fn world_addr<T: std::str::FromStr>(&self, key: &str) -> T {
        self.world
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("world.env has no valid {key}: {:?}", self.world.get(key)))
    }

    /// The cluster's nameserver (in its resolv.conf): 198.18.0.2.
    pub fn dns_v4(&self) -> Ipv4Addr {
        self.world_addr("CLUSTER_DNS_V4")
    }

    /// The cluster's nameserver's IPv6 address: 2001:2::2.
    pub fn dns_v6(&self) -> Ipv6Addr {
        self.world_addr("CLUSTER_DNS_V6")
    }

    /// The cluster's search list: `default.svc.cluster.local svc.cluster.local cluster.local`.
    pub fn search(&self) -> Vec<String> {
        self.world
            .get("CLUSTER_SEARCH")
            .map(|s| s.split_whitespace().map(String::from).collect())
            .unwrap_or_default()
    }

    /// An address in the cluster that drops every packet (connects time out).
    pub fn blackhole_v4(&self) -> Ipv4Addr {
        self.world_addr("BLACKHOLE_V4")
    }

    /// The IPv6 address in the cluster that drops every packet.
    pub fn blackhole_v6(&self) -> Ipv6Addr {
        self.world_addr("BLACKHOLE_V6")
    }

    /// The laptop's nameserver (in its resolv.conf): 127.0.0.53.
    pub fn laptop_dns(&self) -> IpAddr {
        self.world_addr("LAPTOP_DNS")
    }

    /// The laptop's own IPv6 address on its loopback (so glibc's AI_ADDRCONFIG asks for AAAA).
    pub fn laptop_v6(&self) -> Ipv6Addr {
        self.world_addr("LAPTOP_V6")
    }

    fn log(&self, file: &str) -> Vec<String> {
        std::fs::read_to_string(self.state_dir.join(file))
            .map(|text| text.lines().map(String::from).collect())
            .unwrap_or_default()
    }

    /// Rewrites the cluster DNS's hosts file (`address name` lines) with `edit` and makes
    /// the server read it again (SIGHUP), as a change of a Service would.
    ///
    /// # Panics
    /// If the file or the server's pid can't be read, or the signal can't be sent.
    pub fn edit_cluster_dns(&self, edit: impl FnOnce(&str) -> String) {
        let hosts = self.state_dir.join("cluster-dns.hosts");
        let text = std::fs::read_to_string(&hosts)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", hosts.display()));
        std::fs::write(&hosts, edit(&text))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", hosts.display()));
        let pid_file = self.state_dir.join("cluster-dns.pid");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in {}", pid_file.display()));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap_or_else(|e| panic!("cannot send SIGHUP to the cluster DNS ({pid}): {e}"));
    }

    /// The cluster DNS server's log so far (every query is logged).
    pub fn cluster_dns_log(&self) -> Vec<String> {
        self.log("cluster-dns.log")
    }

    /// The laptop DNS server's log so far.
    pub fn laptop_dns_log(&self) -> Vec<String> {
        self.log("laptop-dns.log")
    }

    /// The queries the cluster's DNS has received so far.
    pub fn cluster_dns_queries(&self) -> Vec<DnsQuery> {
        parse_dns_queries(&self.cluster_dns_log())
    }

    /// The queries the laptop's DNS has received so far.
    pub fn laptop_dns_queries(&self) -> Vec<DnsQuery> {
        parse_dns_queries(&self.laptop_dns_log())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        take_down(&self.prefix);
    }
}

fn take_down(prefix: &str) {
    let script = workspace_root().join("scripts/local-cluster");
    let out = Command::new(&script)
        .args(["down", "--name", prefix])
        .output();
    if !matches!(&out, Ok(o) if o.status.success()) {
        eprintln!(
            "sctrace-tests: {} down --name {prefix} failed: {out:?}",
            script.display()
        );
    }
}

/// Parses the script's `services` table: `name<TAB>fqdn<TAB>ipv4,...<TAB>ipv6,...`, `-` for
/// none, `#` comments.
fn parse_services(text: &str) -> Result<Vec<Service>, String> {
    fn list<T: std::str::FromStr>(field: &str, line: &str) -> Result<Vec<T>, String> {
        if field == "-" {
            return Ok(Vec::new());
        }
        field
            .split(',')
            .map(|a| {
                a.parse()
                    .map_err(|_| format!("bad address {a:?} in services line {line:?}"))
            })
            .collect()
    }
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let [name, fqdn, v4, v6] = fields[..] else {
                return Err(format!("services line has not 4 fields: {line:?}"));
            };
            Ok(Service {
                name: name.to_string(),
                fqdn: fqdn.to_string(),
                ipv4: list(v4, line)?,
                ipv6: list(v6, line)?,
            })
        })
        .collect()
}

/// Parses `KEY=VALUE` lines (values optionally in double quotes).
fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_services_table() {
        let services = parse_services(
            "# name\tfqdn\tipv4\tipv6\n\
             echo\techo.default.svc.cluster.local\t198.18.0.12\t2001:2::12\n\
             v6-only\tv6-only.default.svc.cluster.local\t-\t2001:2::15\n\
             many\tmany.default.svc.cluster.local\t198.18.0.100,198.18.0.101\t-\n",
        )
        .unwrap();
        assert_eq!(services.len(), 3);
        assert_eq!(services[0].addr_v4(7), "198.18.0.12:7".parse().unwrap());
        assert_eq!(services[0].addr_v6(7), "[2001:2::12]:7".parse().unwrap());
        assert!(services[1].ipv4.is_empty());
        assert_eq!(services[2].ipv4.len(), 2);
    }

    #[test]
    fn a_bad_services_line_is_an_error_naming_it() {
        let err = parse_services("echo\tfqdn\t198.18.0.300\t-\n").unwrap_err();
        assert!(err.contains("198.18.0.300"), "{err}");
        let err = parse_services("echo\tonly-two\n").unwrap_err();
        assert!(err.contains("4 fields"), "{err}");
    }

    #[test]
    fn parses_env_lines_with_quotes() {
        let env = parse_env("A=1\nCLUSTER_SEARCH=\"a.b c.d\"\nnot a pair\n");
        assert_eq!(env["A"], "1");
        assert_eq!(env["CLUSTER_SEARCH"], "a.b c.d");
        assert_eq!(env.len(), 2);
    }
}
