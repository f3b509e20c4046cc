//! Everything that can go wrong with a Kubernetes target, each said in one sentence that
//! names the object, the namespace and, for refusals, the verb and resource.

use std::io;

use sctrace_protocol::{HandshakeError, PeerText, TokenError};
use thiserror::Error;

use super::forward::ForwardFailure;

/// Why sctrace could not reach an agent in the cluster.
#[derive(Debug, Error)]
pub enum KubeError {
    /// No usable kubeconfig or in-cluster configuration.
    #[error("cannot load the Kubernetes configuration ({origin}): {source}")]
    Config {
        /// Where it was looked for.
        origin: String,
        /// Why it failed: kube's `KubeconfigError` or `InferConfigError`.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The client could not be built from the configuration (TLS, proxy, auth plugin).
    #[error("cannot set up the Kubernetes client for {url}: {source}")]
    Client {
        /// The API server.
        url: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The API server did not answer.
    #[error("cannot reach the Kubernetes API server at {url}: {source}")]
    Unreachable {
        /// The API server.
        url: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The API server refused the credentials.
    #[error("the Kubernetes API server refused sctrace's credentials (401 Unauthorized: {}); log in again or check the kubeconfig's user", PeerText(message))]
    Unauthorized {
        /// The server's message.
        message: String,
    },
    /// RBAC denied an operation.
    #[error("forbidden: your Kubernetes user may not {verb} {resource} in namespace {namespace} ({}); docs/kubernetes.md lists the permissions sctrace needs", PeerText(message))]
    Forbidden {
        /// The verb, e.g. `get`, `create`, `patch`.
        verb: &'static str,
        /// The resource, e.g. `pods`, `pods/ephemeralcontainers`, `jobs`.
        resource: &'static str,
        /// The namespace.
        namespace: String,
        /// The server's message.
        message: String,
    },
    /// The target pod does not exist.
    #[error("pod {name} not found in namespace {namespace}; set target.namespace if it lives in another one")]
    PodNotFound {
        /// The pod.
        name: String,
        /// The namespace searched.
        namespace: String,
    },
    /// The target workload does not exist.
    #[error("{kind} {name} not found in namespace {namespace}; set target.namespace if it lives in another one")]
    WorkloadNotFound {
        /// `deployment` or `statefulset`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The namespace searched.
        namespace: String,
    },
    /// The named container is not in the pod.
    #[error("pod {namespace}/{pod} has no container {container} (its containers: {available})")]
    ContainerNotFound {
        /// The pod.
        pod: String,
        /// Its namespace.
        namespace: String,
        /// The container asked for.
        container: String,
        /// The containers it has, comma-separated.
        available: String,
    },
    /// Several containers could be the target.
    #[error("pod {namespace}/{pod} has several containers ({containers}); choose one with pod/{pod}/container/NAME")]
    ContainerAmbiguous {
        /// The pod.
        pod: String,
        /// Its namespace.
        namespace: String,
        /// The candidates, comma-separated.
        containers: String,
    },
    /// The target is not running.
    #[error("{what} is not running ({})", PeerText(state))]
    NotRunning {
        /// E.g. `pod default/web` or `container app of pod default/web`.
        what: String,
        /// Its phase or state.
        state: String,
    },
    /// A workload has no pod to target.
    #[error("{kind} {namespace}/{name} has no running pod ({})", PeerText(seen))]
    NoRunningPod {
        /// `deployment` or `statefulset`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// Its namespace.
        namespace: String,
        /// The pods seen and their phases, or "no pods".
        seen: String,
    },
    /// `agent.ephemeral` without a pod to put the container in.
    #[error("agent.ephemeral needs a target pod; a targetless agent runs as a Job (set agent.ephemeral to false)")]
    EphemeralTargetless,
    /// Random bytes for the token or names could not be read.
    #[error("cannot read random bytes for the session token: {0}")]
    Random(#[source] io::Error),
    /// The session token was refused (not reached: it is 64 hex digits). The message is
    /// `Random`'s, which this case used to be reported as.
    #[error("cannot read random bytes for the session token: {0}")]
    Token(#[source] TokenError),
    /// The agent image cannot be pulled.
    #[error("the agent image {image} cannot be pulled ({}: {}); check agent.image, your registry and agent.image_pull_secrets", PeerText(reason), PeerText(message))]
    ImagePull {
        /// The image.
        image: String,
        /// `ErrImagePull`, `ImagePullBackOff`, `InvalidImageName`, …
        reason: String,
        /// The kubelet's message.
        message: String,
    },
    /// The agent container could not start (e.g. `CreateContainerConfigError`) or was not
    /// admitted.
    #[error(
        "the agent container in pod {namespace}/{pod} cannot start ({}: {})",
        PeerText(reason),
        PeerText(message)
    )]
    AgentBlocked {
        /// The pod.
        pod: String,
        /// Its namespace.
        namespace: String,
        /// The waiting reason.
        reason: String,
        /// The kubelet's message.
        message: String,
    },
    /// The agent container exited before the session.
    #[error(
        "the agent in pod {namespace}/{pod} exited with code {code} ({}): {}",
        PeerText(reason),
        PeerText(message)
    )]
    AgentExited {
        /// The pod.
        pod: String,
        /// Its namespace.
        namespace: String,
        /// Exit code.
        code: i32,
        /// Reason, e.g. `Error`.
        reason: String,
        /// Its termination message (the end of its log).
        message: String,
    },
    /// The agent did not run in time.
    #[error(
        "the agent {what} was not running after {seconds} s (agent.startup_timeout); events: {}",
        PeerText(events)
    )]
    AgentNotReady {
        /// `pod NS/NAME` or `job NS/NAME (no pod yet)`.
        what: String,
        /// The timeout.
        seconds: u64,
        /// The pod's recent events, or "none".
        events: String,
    },
    /// The port-forward could not be opened or carried no session.
    #[error("cannot port-forward to the agent (pod {namespace}/{pod} port {port}): {why}")]
    PortForward {
        /// The agent pod.
        pod: String,
        /// Its namespace.
        namespace: String,
        /// The agent's port.
        port: u16,
        /// Why the last attempt failed.
        #[source]
        why: ForwardFailure,
    },
    /// The session token could not be written to the agent's standard input.
    #[error("cannot hand the session token to the agent in pod {namespace}/{pod} through the attach: {source}")]
    TokenDelivery {
        /// The agent pod.
        pod: String,
        /// Its namespace.
        namespace: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The agent refused the session (or could not prove it holds the token).
    #[error("no session with the agent in pod {namespace}/{pod}: {source}")]
    Handshake {
        /// The agent pod.
        pod: String,
        /// Its namespace.
        namespace: String,
        /// Why.
        #[source]
        source: HandshakeError,
    },
    /// Any other API failure.
    #[error("{doing} failed: {source}")]
    Api {
        /// What sctrace was doing, e.g. `listing the pods of deployment/web`.
        doing: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// What an API call was about, to turn its failure into a [`KubeError`].
pub(crate) struct Call<'a> {
    /// The verb, as RBAC names it.
    pub verb: &'static str,
    /// The resource, as RBAC names it.
    pub resource: &'static str,
    /// The namespace.
    pub namespace: &'a str,
    /// What sctrace was doing, for other failures.
    pub doing: String,
}

impl Call<'_> {
    /// Maps `err`: 401 and 403 to their own variants, transport failures to `Unreachable`,
    /// the rest to `Api`. (404 is the caller's to interpret.)
    pub fn error(self, err: kube::Error, url: &str) -> KubeError {
        match err {
            kube::Error::Api(status) if status.code == 403 => KubeError::Forbidden {
                verb: self.verb,
                resource: self.resource,
                namespace: self.namespace.to_owned(),
                message: status.message,
            },
            kube::Error::Api(status) if status.code == 401 => KubeError::Unauthorized {
                message: status.message,
            },
            err @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => {
                KubeError::Unreachable {
                    url: url.to_owned(),
                    source: err,
                }
            }
            source => KubeError::Api {
                doing: self.doing,
                source,
            },
        }
    }
}

/// Whether `err` is the API server's 404.
pub(crate) fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}
