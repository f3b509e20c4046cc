//! The command line of `sctrace-agent`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Serves sctrace sessions: connects, sends UDP and resolves names inside a target network
/// namespace on behalf of an application traced on another machine or namespace.
#[derive(Debug, Parser)]
#[command(name = "sctrace-agent", version)]
pub struct Cli {
    /// Where to listen for sctrace: `unix:PATH` or `tcp:ADDR:PORT` (port 0 picks a free port).
    /// The listener stays in the agent's own network namespace. Once listening, the agent
    /// prints `listening <addr>` on stdout.
    #[arg(long, value_name = "unix:PATH|tcp:ADDR:PORT", value_parser = parse_listen)]
    pub listen: ListenAddr,

    /// The target network namespace, as a file such as /run/netns/NAME. Such a target has
    /// no process, so it has no environment to give sctrace.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with_all = ["pid", "container_id"],
        required_unless_present_any = ["pid", "container_id"]
    )]
    pub netns: Option<PathBuf>,

    /// The target is this process: its network namespace (/proc/PID/ns/net), its
    /// resolv.conf and its environment.
    #[arg(long, value_name = "PID", conflicts_with = "container_id")]
    pub pid: Option<u32>,

    /// The target is the main process of this container (an id as in a Kubernetes pod's
    /// status, e.g. containerd://0123abcd…), found by its cgroup in /proc/*/cgroup. The agent
    /// must see the container's processes: hostPID, or an ephemeral container targeting it.
    #[arg(long, value_name = "ID")]
    pub container_id: Option<String>,

    /// File holding the session token (a trailing newline is ignored). Without it (or
    /// --token-stdin), the token comes from the environment variable SCTRACE_AGENT_TOKEN.
    /// The token is never sent on the wire: sctrace and the agent prove to each other that
    /// they hold it.
    #[arg(long, value_name = "FILE", conflicts_with = "token_stdin")]
    pub token_file: Option<PathBuf>,

    /// Read the session token from the first line of standard input before listening (how
    /// sctrace hands it to an agent in Kubernetes: through the API server's attach, so that
    /// it is in no pod spec). Gives up after --idle-timeout when set.
    #[arg(long)]
    pub token_stdin: bool,

    /// With --listen tcp:…, serve TLS 1.3 with this PEM certificate chain (the agent's own
    /// certificate first). sctrace trusts it through `agent.tls` in its config.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve exactly one session, then exit. Other clients are refused as busy meanwhile.
    #[arg(long)]
    pub once: bool,

    /// Accept the relay ends of the session's TCP connections on this Unix socket (from
    /// sctrace on the same machine) and splice them to the target kernel to kernel, instead
    /// of relaying their bytes over the session. Needs --once.
    #[arg(long, value_name = "PATH", requires = "once")]
    pub handoff_socket: Option<PathBuf>,

    /// Exit when no session has been connected for this many seconds.
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,

    /// Give up a TCP connect after this many seconds, unless the kernel gives up first
    /// (Linux's own SYN retries take about 127 s). sctrace may ask for less per connect.
    #[arg(long, value_name = "SECS", default_value_t = 75)]
    pub connect_timeout: u64,

    /// The nftables program that redirects a subscribed port's connections to the agent
    /// (incoming traffic). It runs inside the target's namespace for as long as a port is
    /// subscribed; its rules vanish with it, however the agent ends.
    #[arg(long, value_name = "PATH", default_value = "nft")]
    pub nft: PathBuf,

    /// Log level (error, warn, info, debug, trace) when RUST_LOG is not set. Logs go to
    /// stderr.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A Unix stream socket at this path.
    Unix(PathBuf),
    /// A TCP socket.
    Tcp(SocketAddr),
}

fn parse_listen(s: &str) -> Result<ListenAddr, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: needs a socket path, e.g. unix:/run/sctrace-agent.sock".into());
        }
        return Ok(ListenAddr::Unix(PathBuf::from(path)));
    }
    if let Some(addr) = s.strip_prefix("tcp:") {
        return addr.parse().map(ListenAddr::Tcp).map_err(|_| {
            format!("`{addr}` is not ADDR:PORT (e.g. tcp:127.0.0.1:0 or tcp:[::1]:7000)")
        });
    }
    Err(format!("`{s}` should start with unix: or tcp:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        assert_eq!(
            parse_listen("unix:/tmp/a.sock"),
            Ok(ListenAddr::Unix("/tmp/a.sock".into()))
        );
        assert_eq!(
            parse_listen("tcp:127.0.0.1:0"),
            Ok(ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()))
        );
        assert_eq!(
            parse_listen("tcp:[::1]:7000"),
            Ok(ListenAddr::Tcp("[::1]:7000".parse().unwrap()))
        );
        assert!(parse_listen("unix:").is_err());
        assert!(parse_listen("tcp:localhost:80").is_err());
        assert!(parse_listen("/tmp/a.sock").is_err());
    }

    #[test]
    fn target_is_required_and_exclusive() {
        let base = ["sctrace-agent", "--listen", "tcp:127.0.0.1:0"];
        assert!(Cli::try_parse_from(base).is_err());
        let both = [&base[..], &["--netns", "/run/netns/x", "--pid", "1"]].concat();
        assert!(Cli::try_parse_from(both).is_err());
        let both = [
            &base[..],
            &["--pid", "1", "--container-id", "0123456789abcdef"],
        ]
        .concat();
        assert!(Cli::try_parse_from(both).is_err());
        let id = [
            &base[..],
            &["--container-id", "containerd://0123456789abcdef"],
        ]
        .concat();
        let cli = Cli::try_parse_from(id).unwrap();
        assert_eq!(
            cli.container_id.as_deref(),
            Some("containerd://0123456789abcdef")
        );
        let ok = [&base[..], &["--pid", "1", "--once", "--idle-timeout", "30"]].concat();
        let cli = Cli::try_parse_from(ok).unwrap();
        assert_eq!(cli.pid, Some(1));
        assert!(cli.once);
        assert_eq!(cli.idle_timeout, Some(30));
        assert_eq!(cli.connect_timeout, 75);
        let tls = [&base[..], &["--pid", "1", "--tls-cert", "c.pem"]].concat();
        assert!(
            Cli::try_parse_from(tls).is_err(),
            "a certificate needs its key"
        );
        let both = [
            &base[..],
            &["--pid", "1", "--token-stdin", "--token-file", "t"],
        ]
        .concat();
        assert!(Cli::try_parse_from(both).is_err());
    }
}
