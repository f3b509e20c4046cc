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
use crate::features::{self, Mode, Probe};
use crate::handlers::Context;
use crate::launch::{self, LaunchError};
use crate::lifecycle::{self, Signals};
use crate::progress::{Progress, Style};
use crate::remote::Remote;
use crate::supervisor;
use crate::sys::pidfd;
use crate::sys::process::{self, Exit};
use crate::sys::terminal::{self, Terminal};
use crate::trap::owned::OwnedSockets;
use crate::trap::socket::SocketAccess;

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
    /// seccomp itself is refused (a seccomp profile, a security module).
    #[error("seccomp is refused here ({0}), e.g. by a container's seccomp profile that forbids the seccomp system call; sctrace needs to install a seccomp filter: run it where seccomp is allowed (Docker's default profile allows it; `sctrace doctor` says what this machine allows)")]
    SeccompRefused(#[source] io::Error),
    /// The kernel lacks pidfd_getfd.
    #[error("this kernel lacks pidfd_getfd ({0}); sctrace needs Linux 5.6 or later")]
    NoPidfdGetfd(#[source] io::Error),
    /// pidfd_getfd is refused and the kernel is too old for container mode.
    #[error("pidfd_getfd is refused here ({source}), and this kernel ({}.{}) is too old for sctrace's container mode, which needs Linux {}.{}; run the container with --cap-add=SYS_PTRACE (see `sctrace doctor`)", .kernel.0, .kernel.1, features::CONTAINER_MODE_KERNEL.0, features::CONTAINER_MODE_KERNEL.1)]
    ContainerModeKernel {
        /// Why pidfd_getfd failed.
        #[source]
        source: io::Error,
        /// The running kernel's version.
        kernel: (u32, u32),
    },
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
    /// A signal ended sctrace before the program started.
    #[error("stopped by {} before the program started", signal_name(*.0))]
    Interrupted(i32),
}

impl SessionError {
    /// The exit status for this failure (127/126 like a shell, 128+N for a signal, 125 for
    /// sctrace's own).
    pub fn exit_code(&self) -> i32 {
        match self {
            SessionError::Launch(e) => e.exit_code(),
            SessionError::Interrupted(signal) => 128 + signal,
            _ => 125,
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// How long sctrace waits, after the app is gone, for in-flight work to finish.
const DRAIN: Duration = Duration::from_secs(2);

/// Checks that this machine allows what the session needs, by trying it, and picks the
/// mode: container mode where `pidfd_getfd` is refused (a container's seccomp profile).
fn check_features() -> Result<Mode, SessionError> {
    match features::user_notification() {
        Probe::Works => {}
        Probe::Missing(err) => return Err(SessionError::NoUserNotification(err)),
        Probe::Refused(err) => return Err(SessionError::SeccompRefused(err)),
    }
    match features::pidfd_getfd() {
        Probe::Works => Ok(Mode::Full),
        Probe::Missing(err) => Err(SessionError::NoPidfdGetfd(err)),
        Probe::Refused(source) => match features::kernel_version() {
            Some(kernel) if kernel < features::CONTAINER_MODE_KERNEL => {
                Err(SessionError::ContainerModeKernel { source, kernel })
            }
            _ => {
                tracing::info!(
                    "pidfd_getfd is refused here ({source}): container mode, sctrace creates the program's inet sockets itself (see README, \"Containers\")"
                );
                Ok(Mode::Container)
            }
        },
    }
}

/// A relaying session's agent link and state; dropping it ends the session quietly (its
/// end is not reported as a lost agent).
struct Relay {
    remote: Arc<Remote>,
    link: AgentLink,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.remote.mark_lost();
        self.link
            .handle
            .shutdown("sctrace is done: the program exited");
        // Dropping the link (after this) stops the agent sctrace started.
    }
}

/// What must be ready before the program starts.
struct Started {
    relay: Option<Relay>,
    env: Option<TargetEnv>,
}

impl Session {
    /// Runs the program to completion and returns the status sctrace should exit with.
    pub fn run(self) -> Result<i32, SessionError> {
        let mode = check_features()?;
        if let Err(err) = process::raise_nofile_limit() {
            tracing::debug!("cannot raise the open-file limit: {err}");
        }
        // Before any other thread exists, so that all of them inherit the mask.
        if let Err(err) = terminal::block_background_stops() {
            tracing::debug!("cannot block SIGTTOU/SIGTTIN: {err}");
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
        // the app starts. Every step is bounded, and SIGINT, SIGTERM or SIGHUP end it.
        let progress = match &self.relay {
            Some(_) => Progress::new(Style::detect(self.quiet)),
            None => Progress::quiet(),
        };
        let started = runtime.block_on(async {
            let startup = async {
                let relay = match &self.relay {
                    Some(config) => Some(start_relay(config, events.clone(), &progress).await?),
                    None => None,
                };
                let env = match (&self.relay, &relay) {
                    (Some(config), Some(relay)) => Some(
                        env::fetch(
                            &relay.link.handle,
                            config.target.path.as_ref(),
                            &config.feature.env,
                        )
                        .await?,
                    ),
                    _ => None,
                };
                Ok::<_, SessionError>(Started { relay, env })
            };
            tokio::select! {
                started = startup => started,
                signal = startup_signal() => {
                    progress.failed();
                    Err(SessionError::Interrupted(signal))
                }
            }
        })?;
        let Started {
            relay,
            env: app_env,
        } = started;
        let mut keep = HashSet::new();
        if let Some(agent) = relay.as_ref().and_then(|r| r.link.process.as_ref()) {
            keep.insert(agent.pid());
        }

        let (program, args) = self
            .command
            .split_first()
            .map(|(p, a)| (p.clone(), a.to_vec()))
            .unwrap_or_default();
        // Observe-only sessions don't need the receive side (see launch/bpf.rs).
        let traps = launch::bpf::Traps {
            receives: relay.is_some(),
            sockets: mode == Mode::Container,
            epolls: relay.as_ref().is_some_and(|r| r.remote.direct.is_some()),
        };
        let filter = launch::bpf::build(&launch::bpf::NATIVE, traps);
        let terminal = Terminal::foreground();
        let app = launch::launch(
            &program,
            &args,
            filter,
            terminal.as_ref().map(Terminal::raw_fd),
            |cmd| {
                if let Some(app_env) = &app_env {
                    app_env.apply(cmd);
                }
                if let (Some(relay), Some(config)) = (&relay, &self.relay) {
                    resolver_env(cmd, &relay.remote, config);
                }
            },
        )?;
        if let Some(terminal) = &terminal {
            // The program did this itself before exec; doing it here too closes the window
            // in which sctrace could still see itself in the foreground (as shells do).
            let _ = terminal.give_to(app.pid);
        }
        progress.finish(&format!("started {}", program.to_string_lossy()));
        tracing::debug!("started {} as pid {}", program.to_string_lossy(), app.pid);

        let access = match mode {
            Mode::Full => SocketAccess::Copy,
            Mode::Container => {
                let owned = Arc::new(OwnedSockets::new());
                if let Some(relay) = &relay {
                    let incoming = Arc::clone(&relay.remote.incoming);
                    owned.set_subscribed_check(move |id| incoming.is_subscribed(id));
                }
                let _entered = runtime.enter();
                owned.start_sweeper(process::getpid(), keep.clone());
                SocketAccess::Owned(owned)
            }
        };
        let ctx = Arc::new(Context {
            notify: Arc::new(app.notify),
            access,
            events,
            identities: Default::default(),
            remote: relay.as_ref().map(|r| Arc::clone(&r.remote)),
            uninspectable: Default::default(),
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

        let followed = lifecycle::App {
            pid: app.pid,
            pidfd: &app.pidfd,
            terminal: terminal.as_ref(),
        };
        let exit = lifecycle::supervise(signals, &followed, &keep);
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
        drop(relay);
        runtime.shutdown_timeout(Duration::from_millis(100));
        Ok(lifecycle::shell_status(exit))
    }
}

/// Gives the app's resolver the target's search list and options (see
/// [`crate::dns::resolv_conf::TargetResolver`]) when its names are resolved in the target,
/// unless the config sets these variables itself (`feature.env.override`) or unsets them.
fn resolver_env(cmd: &mut std::process::Command, remote: &Remote, config: &Config) {
    if !config.feature.network.dns.enabled {
        return;
    }
    let env = &config.feature.env;
    for (name, value) in remote.target_resolver.env_vars() {
        let chosen = env.overrides.contains_key(name)
            || env.unset.iter().any(|u| u.eq_ignore_ascii_case(name));
        if !chosen {
            cmd.env(name, value);
        }
    }
}

/// The first of SIGINT, SIGTERM, SIGHUP to arrive.
async fn startup_signal() -> i32 {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    let listen = |number: i32| {
        signal(SignalKind::from_raw(number))
            .inspect_err(|err| tracing::debug!("cannot listen for signal {number}: {err}"))
            .ok()
    };
    async fn arrival(stream: &mut Option<Signal>) {
        match stream {
            Some(stream) => {
                stream.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    let (mut int, mut term, mut hup) = (
        listen(libc::SIGINT),
        listen(libc::SIGTERM),
        listen(libc::SIGHUP),
    );
    tokio::select! {
        () = arrival(&mut int) => libc::SIGINT,
        () = arrival(&mut term) => libc::SIGTERM,
        () = arrival(&mut hup) => libc::SIGHUP,
    }
}

/// Reaches the agent and assembles the relaying state.
async fn start_relay(
    config: &Config,
    events: EventSink,
    progress: &Progress,
) -> Result<Relay, SessionError> {
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
    let agent_log = link.process.as_ref().map(|agent| agent.log().clone());
    tokio::spawn(async move {
        let reason = handle.closed().await;
        if watched.mark_lost() {
            let said = agent_log
                .map(|log| log.tail())
                .filter(|tail| !tail.is_empty())
                .map(|tail| format!(" (the agent's last words: {})", tail.join("; ")))
                .unwrap_or_default();
            eprintln!(
                "sctrace: lost the agent at {address}: {reason}{said}; the program's remote connections fail from now on, its local traffic is unaffected"
            );
        }
    });
    tracing::debug!("relaying through the agent at {}", link.address);
    Ok(Relay { remote, link })
}
