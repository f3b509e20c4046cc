//! Handing the agent its session token: once the agent container runs, sctrace attaches to
//! its standard input through the API server (`pods/attach`) and writes the token on one
//! line; the agent (`--token-stdin`) reads it before it listens. So the token is in no
//! object of the cluster — not in the pod spec, which anyone allowed to `get pods` reads and
//! which keeps an ephemeral container for the pod's lifetime, nor in a Secret — and it never
//! crosses the pod's network, which an ephemeral agent shares with the target's containers.
//! The container has `stdinOnce`: its standard input closes when sctrace detaches, so no
//! one can write to it later.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, AttachedProcess};
use tokio::io::AsyncWriteExt;

use super::client::ClusterInfo;
use super::error::{Call, KubeError};
use super::launch::AgentPod;

/// How long writing the token may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// The attach that carried the token. Keep it until the session is up: detaching closes the
/// agent's standard input, and must not race the token's delivery.
pub struct Attached {
    process: AttachedProcess,
}

impl Attached {
    /// Detaches (the agent's standard input closes).
    pub fn detach(self) {
        self.process.abort();
    }
}

/// Writes `token` and a newline to the agent container's standard input.
pub async fn deliver_token(
    cluster: &ClusterInfo,
    agent: &AgentPod,
    token: &str,
) -> Result<Attached, KubeError> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &agent.namespace);
    let call = || Call {
        // WebSocket attaches are GET requests; newer API servers also check create.
        verb: "get/create",
        resource: "pods/attach",
        namespace: &agent.namespace,
        doing: format!(
            "attaching to the agent container {} in pod {}/{} to hand it the session token",
            agent.container, agent.namespace, agent.pod
        ),
    };
    let params = AttachParams {
        container: Some(agent.container.clone()),
        stdin: true,
        stdout: false,
        stderr: false,
        tty: false,
        ..AttachParams::default()
    };
    let mut process = pods
        .attach(&agent.pod, &params)
        .await
        .map_err(|err| call().error(err, &cluster.url))?;
    let mut stdin = process.stdin().ok_or_else(|| KubeError::TokenDelivery {
        pod: agent.pod.clone(),
        namespace: agent.namespace.clone(),
        source: std::io::Error::other("the attach has no standard input"),
    })?;
    let mut line = Vec::with_capacity(token.len() + 1);
    line.extend_from_slice(token.as_bytes());
    line.push(b'\n');
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        stdin.write_all(&line).await?;
        stdin.flush().await
    })
    .await
    .unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out",
        ))
    });
    written.map_err(|source| KubeError::TokenDelivery {
        pod: agent.pod.clone(),
        namespace: agent.namespace.clone(),
        source,
    })?;
    Ok(Attached { process })
}
