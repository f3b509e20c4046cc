//! `sctrace-agent`: serves sctrace sessions from inside a target network namespace.
//!
//! ```text
//!  sctrace ──session──► listener (agent's own netns)
//!                          │ requests
//!                          ▼
//!          tcp / udp / dns ──sockets from──► netns thread (setns into the target once)
//! ```
#![deny(unsafe_code)]

mod cli;
mod container;
mod data;
mod dns;
mod environ;
mod errno;
mod files;
mod handoff;
mod incoming;
mod listener;
mod netns;
mod rendezvous;
mod route;
mod session;
mod splice;
mod sys;
mod target;
mod tcp;
mod tls;
mod token;
mod udp;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::Cli;
use target::Target;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sctrace-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // Colours only for a terminal: logs often end up in files and CI output.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Raises the soft open-file limit to the hard one: each relayed connection holds sockets.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::debug!(error = %e, "cannot raise the open-file limit");
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    raise_nofile_limit();
    let token = if cli.token_stdin {
        token::from_stdin(std::io::stdin(), cli.idle_timeout.map(Duration::from_secs))?
    } else {
        token::load(
            cli.token_file.as_deref(),
            std::env::var(token::TOKEN_ENV).ok(),
        )?
    };
    // The token stays in this process: the programs it starts (nft) do not inherit it. No
    // other thread reads the environment at this point.
    std::env::remove_var(token::TOKEN_ENV);
    let tls = match (&cli.tls_cert, &cli.tls_key, &cli.listen) {
        (Some(cert), Some(key), cli::ListenAddr::Tcp(_)) => Some(tls::acceptor(cert, key)?),
        (Some(_), _, cli::ListenAddr::Unix(_)) => anyhow::bail!(
            "--tls-cert is for --listen tcp:…; a Unix socket is protected by its file's permissions"
        ),
        _ => None,
    };
    let (target, env) = match (&cli.netns, cli.pid, &cli.container_id) {
        (Some(path), _, _) => (
            Target::netns(path),
            environ::EnvSource::None {
                netns: path.clone(),
            },
        ),
        (None, Some(pid), _) => (Target::pid(pid), environ::EnvSource::pid(pid)),
        (None, None, Some(id)) => {
            let id = container::parse_id(id)?;
            let pid = container::find_pid(std::path::Path::new("/proc"), &id)?;
            tracing::info!(container = %id, pid, "found the target container's process");
            (Target::pid(pid), environ::EnvSource::pid(pid))
        }
        (None, None, None) => {
            anyhow::bail!("give the target with --netns PATH, --pid PID or --container-id ID")
        }
    };
    let sockets = netns::NetnsSockets::enter(&target.netns)?;
    tracing::info!(target = %target.description, resolv_conf = %target.resolv_conf, "entered the target network namespace");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let handoffs = cli
        .handoff_socket
        .as_ref()
        .map(|_| Arc::new(handoff::Handoffs::default()));
    let _channel = match (&cli.handoff_socket, &handoffs) {
        (Some(path), Some(handoffs)) => Some(
            handoff::listen(path, token.clone(), Arc::clone(handoffs), sockets.clone())
                .with_context(|| format!("cannot listen for handoffs on {}", path.display()))?,
        ),
        _ => None,
    };
    runtime.block_on(async move {
        let listener = listener::Listener::bind(&cli.listen, tls).await?;
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let ctx = Arc::new(session::Context {
            token,
            resolver: dns::Resolver::new(sockets.clone(), &target.resolv_conf),
            incoming: incoming::Incoming::new(
                sockets.clone(),
                target.netns.clone(),
                cli.nft.clone(),
                handoffs.clone(),
            ),
            sockets,
            env,
            connect_timeout: Duration::from_secs(cli.connect_timeout.max(1)),
            protocol: sctrace_protocol::Config::default(),
            shutdown: shutdown_rx,
            once_claimed: cli.once.then(|| AtomicBool::new(false)),
            connected: AtomicUsize::new(0),
            sessions: AtomicU64::new(0),
            data: Arc::default(),
            handoffs,
        });
        let lifetime = listener::Lifetime {
            once: cli.once,
            idle_timeout: cli.idle_timeout.map(Duration::from_secs),
        };
        listener::serve(listener, ctx, shutdown_tx, lifetime).await?;
        anyhow::Ok(())
    })?;
    // Connections still relaying after the grace period end with the process.
    runtime.shutdown_timeout(Duration::from_millis(200));
    Ok(())
}
