//! One run of a program under the supervisor: check the kernel, start the app, serve its
//! calls until it exits, clean up, and report its exit status.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use sctrace_filter::config::Config;
use thiserror::Error;

use crate::agent_link::{self, AgentLink, LinkError};
use crate::env::{self, EnvError, TargetEnv};
use crate::events::{EventSink, Format, Writer};
use crate::execute::Executor;
use crate::handlers::Context;
use crate::launch::{self, LaunchError};
use crate::lifecycle::{self, Signals};
use crate::progress::{Progress, Style};
use crate::remote::Remote;
use crate::supervisor;
use crate::sys::notify;
use crate::sys::pidfd;
use crate::sys::process::{self, Exit};

/// What to run and where events go.
pub struct Session {
    /// The program and its arguments.
    pub command: Vec<OsString>,
    /// Event outputs (empty: no events).
    pub outputs: Vec<(Format, Box<dyn Write + Send>)>,
    /// The configuration, when the app's traffic is relayed through an agent; `None` for an
    /// observe-only session.
    pub relay: Option<Config>,
    /// Show no progress while a relaying session starts (`--quiet`).
    pub quiet: bool,
}

/// Why a session could not run the program.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The kernel lacks seccomp user notification.
    #[error("this kernel does not support seccomp user notification ({0}); sctrace needs Linux 5.6 or later built with CONFIG_SECCOMP_FILTER")]
    NoUserNotification(#[source] io::Error),
    /// The kernel lacks pidfd_getfd.
    #[error("this kernel lacks pidfd_getfd; sctrace needs Linux 5.6 or later")]
    NoPidfdGetfd,
    /// sctrace could not make itself the subreaper of the app's processes.
    #[error("cannot become the child subreaper (prctl: {0})")]
    Subreaper(#[source] io::Error),
    /// Installing signal handlers failed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] io::Error),
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] io::Error),
    /// The notification loop could not start.
    #[error("cannot start the notification loop: {0}")]
    Supervisor(#[source] io::Error),
    /// The agent could not be reached.
    #[error(transparent)]
    Agent(#[from] LinkError),
    /// The relay listeners could not start.
    #[error("cannot start the relay: {0}")]
    Relay(#[source] io::Error),
    /// The program could not be started.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The app's environment (`feature.env`) could not be assembled.
    #[error(transparent)]
    Env(#[from] EnvError),
}

impl SessionError {
    /// The exit status for this failure (127/126 like a shell, 125 for sctrace's own).
    pub fn exit_code(&self) -> i32 {
        match self {
            SessionError::Launch(e) => e.exit_code(),
            _ => 125,
        }
    }
}

/// How long sctrace waits, after the app is gone, for in-flight work to finish.
const DRAIN: Duration = Duration::from_secs(2);

impl Session {
    /// Runs the program to completion and returns the status sctrace should exit with.
    pub fn run(self) -> Result<i32, SessionError> {
        notify::user_notification_supported().map_err(SessionError::NoUserNotification)?;
        if !pidfd::get_fd_supported() {
            return Err(SessionError::NoPidfdGetfd);
        }
        if let Err(err) = process::raise_nofile_limit() {
            tracing::debug!("cannot raise the open-file limit: {err}");
        }
        process::become_child_subreaper().map_err(SessionError::Subreaper)?;
        let signals = Signals::install().map_err(SessionError::Signals)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sctrace-worker")
            .enable_all()
            .build()
            .map_err(SessionError::Runtime)?;

        let (events, writer) = Writer::new(self.outputs);
        let (stop_writer, writer_stopped) = tokio::sync::oneshot::channel();
        let writer_task = writer.map(|w| runtime.spawn(w.run(writer_stopped)));

        // A relaying session reaches its agent, and takes the target's environment, before
        // the app starts.
        let progress = match &self.relay {
            Some(_) => Progress::new(Style::detect(self.quiet)),
            None => Progress::quiet(),
        };
        let relay = match &self.relay {
            Some(config) => {
                Some(runtime.block_on(start_relay(config, events.clone(), &progress))?)
            }
            None => None,
        };
        let app_env: Option<TargetEnv> = match (&self.relay, &relay) {
            (Some(config), Some((_, link))) => Some(runtime.block_on(env::fetch(
                &link.handle,
                config.target.path.as_ref(),
                &config.feature.env,
            ))?),
            _ => None,
        };
        let mut keep = HashSet::new();
        if let Some((_, link)) = &relay {
            if let Some(agent) = &link.process {
                keep.insert(agent.pid());
            }
        }

        let (program, args) = self
            .command
            .split_first()
            .map(|(p, a)| (p.clone(), a.to_vec()))
            .unwrap_or_default();
        // Observe-only sessions don't need the receive side (see launch/bpf.rs).
        let traps = launch::bpf::Traps {
            receives: relay.is_some(),
        };
        let filter = launch::bpf::build(&launch::bpf::NATIVE, traps);
        let app = launch::launch(&program, &args, filter, |cmd| {
            if let Some(app_env) = &app_env {
                app_env.apply(cmd);
            }
        })?;
        progress.finish(&format!("started {}", program.to_string_lossy()));
        tracing::debug!("started {} as pid {}", program.to_string_lossy(), app.pid);

        let ctx = Arc::new(Context {
            notify: Arc::new(app.notify),
            events,
            identities: Default::default(),
            remote: relay.as_ref().map(|(remote, _)| Arc::clone(remote)),
        });
        let executor = Executor::new(ctx.remote.clone());
        let notify_loop = supervisor::start(Arc::clone(&ctx), executor, runtime.handle().clone());
        drop(ctx);
        let notify_loop = match notify_loop {
            Ok(handle) => handle,
            Err(err) => {
                // Without the loop every trapped call would block: stop the app now.
                let _ = pidfd::send_signal(&app.pidfd, libc::SIGKILL);
                return Err(SessionError::Supervisor(err));
            }
        };

        let exit = lifecycle::supervise(signals, app.pid, &app.pidfd, &keep);
        if exit == Exit::Signal(libc::SIGSYS) {
            eprintln!(
                "sctrace: the program was killed by SIGSYS; sctrace kills programs that make system calls through another ABI (32-bit i386/arm or x32), which it cannot observe"
            );
        }

        // The loop ends once no traced process is left; don't wait for stragglers forever.
        runtime.block_on(async {
            let joined = tokio::task::spawn_blocking(move || notify_loop.join());
            let _ = tokio::time::timeout(DRAIN, joined).await;
            let _ = stop_writer.send(());
            if let Some(task) = writer_task {
                let _ = tokio::time::timeout(DRAIN, task).await;
            }
        });
        if let Some((remote, link)) = relay {
            remote.mark_lost();
            link.handle.shutdown("sctrace is done: the program exited");
            // Dropping the link stops the agent sctrace started.
            drop(link);
        }
        runtime.shutdown_timeout(Duration::from_millis(100));
        Ok(lifecycle::shell_status(exit))
    }
}

/// Reaches the agent and assembles the relaying state.
async fn start_relay(
    config: &Config,
    events: EventSink,
    progress: &Progress,
) -> Result<(Arc<Remote>, AgentLink), SessionError> {
    let mut link = agent_link::open(
        config,
        std::env::var("SCTRACE_AGENT_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        progress,
    )
    .await?;
    let remote = Remote::start(config, &mut link, events)
        .await
        .map_err(SessionError::Relay)?;
    let watched = Arc::clone(&remote);
    let handle = link.handle.clone();
    let address = link.address.clone();
    tokio::spawn(async move {
        let reason = handle.closed().await;
        if watched.mark_lost() {
            eprintln!(
                "sctrace: lost the agent at {address}: {reason}; the program's remote connections fail from now on, its local traffic is unaffected"
            );
        }
    });
    tracing::debug!("relaying through the agent at {}", link.address);
    Ok((remote, link))
}
