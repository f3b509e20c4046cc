//! Starting the agent and waiting until it runs: the ephemeral container is patched into
//! the target pod (`pods/ephemeralcontainers`), or the Job is created and its pod found by
//! label. Then the agent container's status is polled: running is ready; an image that
//! cannot be pulled, a container that cannot start or one that exits is reported at once;
//! past the startup timeout the pod's events say what the cluster was doing.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use tokio::time::Instant;

use super::client::ClusterInfo;
use super::error::{Call, KubeError};
use super::resolve::TargetPod;
use super::spec::{AgentParams, AGENT_LABEL};

/// How often the agent's status is polled.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Between two looks at the agent pod, and between port-forward attempts.
    pub poll: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            poll: Duration::from_millis(500),
        }
    }
}

/// Where the agent runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPod {
    /// Its pod (the target pod for an ephemeral agent).
    pub pod: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The agent's container in that pod.
    pub container: String,
    /// How it was started.
    pub kind: AgentKind,
}

/// How the agent was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentKind {
    /// An ephemeral container in the target pod.
    Ephemeral,
    /// A Job (the pod name is known once the Job controller made it).
    Job {
        /// The Job's name.
        job: String,
    },
}

impl AgentPod {
    /// For messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            AgentKind::Ephemeral => format!(
                "ephemeral container {} in pod {}/{}",
                self.container, self.namespace, self.pod
            ),
            AgentKind::Job { job } => format!("job {}/{job}", self.namespace),
        }
    }
}

/// Creates the agent's container or Job.
pub async fn create(
    cluster: &ClusterInfo,
    params: &AgentParams,
    target: Option<&TargetPod>,
) -> Result<AgentPod, KubeError> {
    match (params.agent.ephemeral, target) {
        (true, Some(target)) => {
            let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &target.namespace);
            let patch = serde_json::json!({
                "spec": { "ephemeralContainers": [params.ephemeral_container(target)] }
            });
            pods.patch_ephemeral_containers(
                &target.name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
            .map_err(|err| {
                Call {
                    verb: "patch",
                    resource: "pods/ephemeralcontainers",
                    namespace: &target.namespace,
                    doing: format!(
                        "adding the agent container to pod {}/{}",
                        target.namespace, target.name
                    ),
                }
                .error(err, &cluster.url)
            })?;
            Ok(AgentPod {
                pod: target.name.clone(),
                namespace: target.namespace.clone(),
                container: params.name.clone(),
                kind: AgentKind::Ephemeral,
            })
        }
        (true, None) => Err(KubeError::EphemeralTargetless),
        (false, target) => {
            let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &params.namespace);
            jobs.create(&PostParams::default(), &params.job(target))
                .await
                .map_err(|err| {
                    Call {
                        verb: "create",
                        resource: "jobs",
                        namespace: &params.namespace,
                        doing: format!(
                            "creating the agent job {}/{}",
                            params.namespace, params.name
                        ),
                    }
                    .error(err, &cluster.url)
                })?;
            Ok(AgentPod {
                pod: String::new(),
                namespace: params.namespace.clone(),
                container: "sctrace-agent".to_owned(),
                kind: AgentKind::Job {
                    job: params.name.clone(),
                },
            })
        }
    }
}

/// What one look at the agent's status found.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Not there or not started yet.
    Waiting,
    /// Running.
    Running,
}

/// Polls until the agent container runs; returns the agent with its pod name known.
pub async fn wait_running(
    cluster: &ClusterInfo,
    agent: &AgentPod,
    params: &AgentParams,
    timing: &Timing,
    timeout: Duration,
) -> Result<AgentPod, KubeError> {
    let deadline = Instant::now() + timeout;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &agent.namespace);
    let mut agent = agent.clone();
    loop {
        let pod = match &agent.kind {
            AgentKind::Ephemeral => Some(pods.get(&agent.pod).await.map_err(|err| {
                Call {
                    verb: "get",
                    resource: "pods",
                    namespace: &agent.namespace,
                    doing: format!("reading pod {}/{}", agent.namespace, agent.pod),
                }
                .error(err, &cluster.url)
            })?),
            AgentKind::Job { job } => {
                let selector = format!("{AGENT_LABEL}={job}");
                let list = pods
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .map_err(|err| {
                        Call {
                            verb: "list",
                            resource: "pods",
                            namespace: &agent.namespace,
                            doing: format!("looking for the pod of job {}/{job}", agent.namespace),
                        }
                        .error(err, &cluster.url)
                    })?;
                list.items.into_iter().next()
            }
        };
        if let Some(pod) = &pod {
            agent.pod = pod.metadata.name.clone().unwrap_or_default();
            if check(pod, &agent, params)? == Seen::Running {
                return Ok(agent);
            }
        }
        if Instant::now() + timing.poll > deadline {
            let what = if agent.pod.is_empty() {
                format!("{} (no pod yet)", agent.describe())
            } else {
                format!("pod {}/{}", agent.namespace, agent.pod)
            };
            let about = if agent.pod.is_empty() {
                match &agent.kind {
                    AgentKind::Job { job } => job.clone(),
                    AgentKind::Ephemeral => agent.pod.clone(),
                }
            } else {
                agent.pod.clone()
            };
            return Err(KubeError::AgentNotReady {
                what,
                seconds: timeout.as_secs(),
                events: events(cluster, &agent.namespace, &about).await,
            });
        }
        tokio::time::sleep(timing.poll).await;
    }
}

/// Looks at the agent container's status in `pod`.
fn check(pod: &Pod, agent: &AgentPod, params: &AgentParams) -> Result<Seen, KubeError> {
    let status = pod.status.as_ref();
    let statuses = match agent.kind {
        AgentKind::Ephemeral => status.and_then(|s| s.ephemeral_container_statuses.as_ref()),
        AgentKind::Job { .. } => status.and_then(|s| s.container_statuses.as_ref()),
    };
    let Some(status) = statuses
        .into_iter()
        .flatten()
        .find(|c| c.name == agent.container)
    else {
        // A Job's pod that failed before its container started (e.g. not admitted).
        if let Some(phase @ "Failed") = status.and_then(|s| s.phase.as_deref()) {
            return Err(KubeError::AgentBlocked {
                pod: agent.pod.clone(),
                namespace: agent.namespace.clone(),
                reason: phase.to_owned(),
                message: status.and_then(|s| s.message.clone()).unwrap_or_default(),
            });
        }
        return Ok(Seen::Waiting);
    };
    container_state(status, agent, params)
}

fn container_state(
    status: &ContainerStatus,
    agent: &AgentPod,
    params: &AgentParams,
) -> Result<Seen, KubeError> {
    let Some(state) = &status.state else {
        return Ok(Seen::Waiting);
    };
    if state.running.is_some() {
        return Ok(Seen::Running);
    }
    if let Some(t) = &state.terminated {
        return Err(KubeError::AgentExited {
            pod: agent.pod.clone(),
            namespace: agent.namespace.clone(),
            code: t.exit_code,
            reason: t.reason.clone().unwrap_or_default(),
            message: t.message.clone().unwrap_or_default().trim().to_owned(),
        });
    }
    if let Some(w) = &state.waiting {
        let reason = w.reason.clone().unwrap_or_default();
        let message = w.message.clone().unwrap_or_default();
        match reason.as_str() {
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
                return Err(KubeError::ImagePull {
                    image: params.image.clone(),
                    reason,
                    message,
                })
            }
            "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" => {
                return Err(KubeError::AgentBlocked {
                    pod: agent.pod.clone(),
                    namespace: agent.namespace.clone(),
                    reason,
                    message,
                })
            }
            _ => {}
        }
    }
    Ok(Seen::Waiting)
}

/// The most recent events about `name` in `namespace`, for a timeout message; what went
/// wrong reading them is said in their place.
async fn events(cluster: &ClusterInfo, namespace: &str, name: &str) -> String {
    let api: Api<Event> = Api::namespaced(cluster.client.clone(), namespace);
    let selector = format!("involvedObject.name={name}");
    match api.list(&ListParams::default().fields(&selector)).await {
        Ok(list) if list.items.is_empty() => "none".to_owned(),
        Ok(list) => {
            let mut items = list.items;
            items.sort_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0));
            let shown: Vec<String> = items
                .iter()
                .rev()
                .take(8)
                .rev()
                .map(|e| {
                    format!(
                        "{} {}: {}",
                        e.type_.as_deref().unwrap_or("Normal"),
                        e.reason.as_deref().unwrap_or("?"),
                        e.message.as_deref().unwrap_or("").trim()
                    )
                })
                .collect();
            shown.join("; ")
        }
        Err(err) => format!("(cannot list them: {err})"),
    }
}

/// Removes what sctrace created for an agent that will not be used (best effort): the Job
/// and its pod. An ephemeral container cannot be removed; its agent exits on its own
/// when no session connects.
pub async fn abandon(cluster: &ClusterInfo, agent: &AgentPod) {
    if let AgentKind::Job { job } = &agent.kind {
        let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &agent.namespace);
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        if let Err(err) = jobs.delete(job, &params).await {
            tracing::warn!(%job, error = %err, "cannot delete the agent job; Kubernetes removes it after its TTL once the agent exits");
        }
    }
}
