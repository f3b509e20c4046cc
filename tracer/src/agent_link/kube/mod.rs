//! Kubernetes targets: sctrace finds the target pod through the API server, starts the
//! agent beside it — an ephemeral container in the pod, or a Job pod on its node — waits
//! until it runs, and reaches it through the API server's port-forward.
//!
//! ```text
//!  kubeconfig ─▶ client ─▶ resolve (pod / deployment / statefulset → pod, container, node)
//!                              │
//!                  spec (pure: the ephemeral container or the Job, field by field)
//!                              │
//!                  launch (patch pods/ephemeralcontainers | create the Job; wait until the
//!                          agent container runs; image-pull failures, exits, events)
//!                              │
//!                  attach (pods/attach → the token on the agent's standard input)
//!                              │
//!                  forward (pods/portforward WebSocket → byte stream → protocol handshake)
//! ```
//!
//! The agent gets the per-session token on its standard input, written by sctrace through
//! the API server's attach (see [`attach`]): it is in no pod spec. It then listens on
//! 127.0.0.1 in its pod for exactly one session (`--once`) that proves it holds the token,
//! and exits if no session connects in time (`--idle-timeout`); a Job is deleted by
//! Kubernetes after its TTL.

mod attach;
mod client;
mod error;
mod forward;
mod launch;
mod resolve;
pub mod spec;

use std::time::Duration;

use sctrace_filter::config::{Config, Target};
use sctrace_protocol::{Session, Token};

pub use client::ClusterInfo;
pub use error::KubeError;
pub use forward::{Forward, ForwardFailure};
pub use launch::{AgentKind, AgentPod, Timing};
pub use resolve::TargetPod;

use crate::progress::Progress;

/// A session with an agent in the cluster, and what keeps it reachable.
pub struct KubeLink {
    /// The established protocol session (its task not yet spawned).
    pub session: Session,
    /// The agent, for messages: `pod NS/NAME port N via the API server`.
    pub address: String,
    /// The port-forward carrying the session; dropping it ends the session.
    pub forward: Forward,
}

/// Whether a target is reached through Kubernetes (everything but local targets and
/// explicit agent addresses).
pub fn is_kubernetes(target: Option<&Target>) -> bool {
    !target.is_some_and(Target::is_local)
}

/// Reaches the cluster, starts the agent for the config's target and connects to it.
pub async fn open(config: &Config, progress: &Progress) -> Result<KubeLink, KubeError> {
    open_with(config, progress, &Timing::default()).await
}

/// [`open`] with explicit polling intervals (tests use short ones).
pub async fn open_with(
    config: &Config,
    progress: &Progress,
    timing: &Timing,
) -> Result<KubeLink, KubeError> {
    progress.start("reaching the cluster");
    let cluster = client::connect(config)
        .await
        .inspect_err(|_| progress.failed())?;
    progress.done(&format!(
        "cluster reached ({}, Kubernetes {})",
        cluster.url, cluster.version
    ));

    let namespace = config
        .target
        .namespace
        .clone()
        .unwrap_or_else(|| cluster.default_namespace.clone());
    let target = config.target.path.as_ref().unwrap_or(&Target::Targetless);
    let pod = match target {
        Target::Targetless => None,
        target => {
            progress.start(&format!("finding {target} in namespace {namespace}"));
            let pod = resolve::resolve(&cluster, &namespace, target)
                .await
                .inspect_err(|_| progress.failed())?;
            progress.done(&format!(
                "target: pod {}/{}, container {}, node {}",
                pod.namespace, pod.name, pod.container, pod.node
            ));
            Some(pod)
        }
    };
    if config.agent.ephemeral && pod.is_none() {
        return Err(KubeError::EphemeralTargetless);
    }

    let token_text = random_hex(32).map_err(KubeError::Random)?;
    let token = Token::new(token_text.clone().into_bytes()).map_err(KubeError::Token)?;
    let suffix = random_hex(4).map_err(KubeError::Random)?;
    let params = spec::AgentParams::new(&config.agent, &suffix, &namespace);

    progress.start("creating the agent");
    let agent = launch::create(&cluster, &params, pod.as_ref())
        .await
        .inspect_err(|_| progress.failed())?;
    progress.done(&format!("agent created: {}", agent.describe()));

    progress.start("waiting for the agent to run");
    let deadline = Duration::from_secs(config.agent.startup_timeout.max(1));
    let ready = launch::wait_running(&cluster, &agent, &params, timing, deadline).await;
    let agent = match ready {
        Ok(agent) => agent,
        Err(err) => {
            progress.failed();
            launch::abandon(&cluster, &agent).await;
            return Err(err);
        }
    };
    progress.done(&format!(
        "agent running in pod {}/{}",
        agent.namespace, agent.pod
    ));

    progress.start("connecting through the port-forward");
    let attached = match attach::deliver_token(&cluster, &agent, &token_text).await {
        Ok(attached) => attached,
        Err(err) => {
            progress.failed();
            launch::abandon(&cluster, &agent).await;
            return Err(err);
        }
    };
    let connected = forward::connect(&cluster, &agent, params.port, &token, timing, deadline).await;
    // The agent has read its token (or will never use it): its standard input can close.
    attached.detach();
    let (session, forward) = match connected {
        Ok(pair) => pair,
        Err(err) => {
            progress.failed();
            launch::abandon(&cluster, &agent).await;
            return Err(err);
        }
    };
    let address = format!(
        "pod {}/{} port {} (port-forward through the API server)",
        agent.namespace, agent.pod, params.port
    );
    progress.done("connected to the agent");
    Ok(KubeLink {
        session,
        address,
        forward,
    })
}

/// `n` random bytes from the kernel, hex-encoded.
fn random_hex(n: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
