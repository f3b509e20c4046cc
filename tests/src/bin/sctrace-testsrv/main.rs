//! `sctrace-testsrv`: the servers (and matching checking clients) the end-to-end tests and
//! the demo run inside network namespaces.
//!
//! Servers print `listening tcp|udp ADDR` per listener, then `ready`, then one line per
//! connection or datagram with its peer and local address. Clients print one `ok ...` line
//! and exit 0 when every byte checked out, or an error and exit 1.

mod client;
mod serve;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sctrace-testsrv",
    about = "Test servers and checking clients for sctrace's end-to-end tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve: echo TCP; when the client shuts its write side, finish echoing and shut ours.
    TcpEcho {
        #[arg(required = true)]
        addrs: Vec<SocketAddr>,
    },
    /// Serve: send every UDP datagram back to its sender.
    UdpEcho {
        #[arg(required = true)]
        addrs: Vec<SocketAddr>,
    },
    /// Serve: read until EOF, answer "<sha256 hex> <bytes>\n", close.
    TcpSink {
        #[arg(required = true)]
        addrs: Vec<SocketAddr>,
    },
    /// Serve: send BYTES bytes of the deterministic payload (seed 0), close.
    TcpSource { addr: SocketAddr, bytes: u64 },
    /// Serve: answer any HTTP/1 request with 200 and "hello from LOCAL to PEER".
    HttpHello {
        #[arg(required = true)]
        addrs: Vec<SocketAddr>,
    },
    /// Client of tcp-sink: send BYTES of payload SEED, check the sink's checksum reply.
    TcpSend {
        addr: SocketAddr,
        bytes: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        limit: Limit,
    },
    /// Client of tcp-source: receive until EOF, check BYTES bytes of payload 0 arrived.
    TcpFetch {
        addr: SocketAddr,
        bytes: u64,
        #[command(flatten)]
        limit: Limit,
    },
    /// Client of tcp-echo: send BYTES while reading them back, check every byte.
    TcpEchoCheck {
        addr: SocketAddr,
        bytes: u64,
        #[command(flatten)]
        limit: Limit,
    },
    /// Client of tcp-sink: CONNS concurrent tcp-send connections, payload seeds 1..=CONNS.
    TcpMany {
        addr: SocketAddr,
        conns: u32,
        bytes: u64,
        #[command(flatten)]
        limit: Limit,
    },
    /// Client of udp-echo: COUNT datagrams, each reply checked for content and source.
    UdpPing {
        addr: SocketAddr,
        count: u32,
        /// connect() the socket and use send/recv instead of sendto/recvfrom.
        #[arg(long)]
        connected: bool,
        #[command(flatten)]
        limit: Limit,
    },
}

#[derive(clap::Args)]
struct Limit {
    /// Give up (exit 1) after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// Lets 500+ concurrent connections (and their clients) have file descriptors.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

async fn with_limit<T>(
    limit: &Limit,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(Duration::from_secs(limit.timeout), work)
        .await
        .with_context(|| format!("timed out after {} s", limit.timeout))?
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    raise_fd_limit();
    let cli = Cli::parse();
    let summary = match cli.command {
        Cmd::TcpEcho { addrs } => return serve::run(serve::Kind::TcpEcho, &addrs).await,
        Cmd::UdpEcho { addrs } => return serve::run(serve::Kind::UdpEcho, &addrs).await,
        Cmd::TcpSink { addrs } => return serve::run(serve::Kind::TcpSink, &addrs).await,
        Cmd::TcpSource { addr, bytes } => {
            return serve::run(serve::Kind::TcpSource(bytes), &[addr]).await
        }
        Cmd::HttpHello { addrs } => return serve::run(serve::Kind::HttpHello, &addrs).await,
        Cmd::TcpSend {
            addr,
            bytes,
            seed,
            limit,
        } => with_limit(&limit, client::tcp_send(addr, bytes, seed)).await?,
        Cmd::TcpFetch { addr, bytes, limit } => {
            with_limit(&limit, client::tcp_fetch(addr, bytes)).await?
        }
        Cmd::TcpEchoCheck { addr, bytes, limit } => {
            with_limit(&limit, client::tcp_echo_check(addr, bytes)).await?
        }
        Cmd::TcpMany {
            addr,
            conns,
            bytes,
            limit,
        } => with_limit(&limit, client::tcp_many(addr, conns, bytes)).await?,
        Cmd::UdpPing {
            addr,
            count,
            connected,
            limit,
        } => with_limit(&limit, client::udp_ping(addr, count, connected)).await?,
    };
    println!("ok {summary}");
    Ok(())
}
