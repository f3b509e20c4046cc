//! Reaching the agent through the API server: a `pods/portforward` WebSocket to the agent's
//! port in its pod, whose byte stream carries the protocol session. A port-forward opened
//! before the agent listens is closed by the kubelet with an error, so the handshake is
//! retried until the startup deadline; a drop later is reported with the API server's reason.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Portforwarder};
use sctrace_protocol::{Config as ProtocolConfig, HandshakeError, PeerText, Session, Token};
use tokio::time::Instant;

use super::client::ClusterInfo;
use super::error::{Call, KubeError};
use super::launch::{AgentPod, Timing};

/// The port-forward that carries the session. Dropping it closes the forward.
pub struct Forward {
    forwarder: Portforwarder,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

/// Opens the port-forward to `port` of the agent's pod and completes the handshake,
/// retrying while the agent is not listening yet, until `timeout`.
pub async fn connect(
    cluster: &ClusterInfo,
    agent: &AgentPod,
    port: u16,
    token: &Token,
    timing: &Timing,
    timeout: Duration,
) -> Result<(Session, Forward), KubeError> {
    let deadline = Instant::now() + timeout;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &agent.namespace);
    let failed = |why: ForwardFailure| KubeError::PortForward {
        pod: agent.pod.clone(),
        namespace: agent.namespace.clone(),
        port,
        why,
    };
    // The failure to report: the latest, unless the deadline cut an attempt short — then
    // the one before says more (the API server's reason).
    let mut reported: Option<ForwardFailure> = None;
    loop {
        let last = match attempt(&pods, agent, port, token, deadline).await {
            Ok(connected) => return Ok(connected),
            Err(Attempt::Fatal(err)) => return Err(err),
            Err(Attempt::Retry(why)) => why,
            Err(Attempt::Api(err)) => {
                let err = Call {
                    // WebSocket port-forwards are GET requests; newer API servers also
                    // check `create`.
                    verb: "get/create",
                    resource: "pods/portforward",
                    namespace: &agent.namespace,
                    doing: format!("port-forwarding to pod {}/{}", agent.namespace, agent.pod),
                }
                .error(err, &cluster.url);
                match err {
                    KubeError::Api { source, .. } => ForwardFailure::Api(source),
                    other => return Err(other),
                }
            }
        };
        let last = match (last, reported.take()) {
            (ForwardFailure::Deadline, Some(before)) => before,
            (last, _) => last,
        };
        if Instant::now() + timing.poll > deadline {
            return Err(failed(last));
        }
        reported = Some(last);
        tokio::time::sleep(timing.poll).await;
    }
}

/// Why one attempt at the port-forward and handshake failed; the last one is reported.
#[derive(Debug, thiserror::Error)]
pub enum ForwardFailure {
    /// The API server said why on the forward's error channel.
    #[error("{}", PeerText(.0))]
    Server(String),
    /// The forwarder offered no stream for the port.
    #[error("the port-forward has no stream for the port")]
    NoStream,
    /// The forward closed without a word from the API server.
    #[error("the port-forward closed")]
    Closed,
    /// The agent closed the connection during the handshake.
    #[error("the agent closed the connection during the handshake (not listening yet?)")]
    AgentClosed,
    /// The forwarded connection failed during the handshake.
    #[error("the forwarded connection failed: {0}")]
    Io(#[source] std::io::Error),
    /// The handshake did not complete before the startup deadline.
    #[error("no handshake before the startup deadline")]
    Deadline,
    /// The API server refused the port-forward request.
    #[error("{0}")]
    Api(#[source] kube::Error),
}

enum Attempt {
    /// Try again (the agent may not listen yet).
    Retry(ForwardFailure),
    /// The API call failed; the caller decides.
    Api(kube::Error),
    /// Give up.
    Fatal(KubeError),
}

async fn attempt(
    pods: &Api<Pod>,
    agent: &AgentPod,
    port: u16,
    token: &Token,
    deadline: Instant,
) -> Result<(Session, Forward), Attempt> {
    let mut forwarder = pods
        .portforward(&agent.pod, &[port])
        .await
        .map_err(Attempt::Api)?;
    let (Some(stream), Some(errors)) = (forwarder.take_stream(port), forwarder.take_error(port))
    else {
        return Err(Attempt::Retry(ForwardFailure::NoStream));
    };
    let mut errors = Box::pin(errors);
    let handshake = Session::client(stream, token, ProtocolConfig::default());
    let outcome = tokio::select! {
        outcome = tokio::time::timeout_at(deadline, handshake) => outcome,
        message = &mut errors => {
            forwarder.abort();
            return Err(Attempt::Retry(message.map_or(ForwardFailure::Closed, ForwardFailure::Server)));
        }
    };
    match outcome {
        Ok(Ok(session)) => {
            let shown = format!("pod {}/{} port {port}", agent.namespace, agent.pod);
            // The API server reports a broken forward on the error channel; say so, since
            // the session itself only sees its stream end.
            tokio::spawn(async move {
                if let Some(message) = errors.await {
                    eprintln!(
                        "sctrace: the port-forward to the agent ({shown}) dropped: {}",
                        PeerText(&message)
                    );
                }
            });
            Ok((session, Forward { forwarder }))
        }
        Ok(Err(HandshakeError::Closed)) => Err(Attempt::Retry(
            reason(forwarder, errors, ForwardFailure::AgentClosed).await,
        )),
        Ok(Err(HandshakeError::Io(e))) => Err(Attempt::Retry(
            reason(forwarder, errors, ForwardFailure::Io(e)).await,
        )),
        Ok(Err(source)) => {
            forwarder.abort();
            Err(Attempt::Fatal(KubeError::Handshake {
                pod: agent.pod.clone(),
                namespace: agent.namespace.clone(),
                source,
            }))
        }
        Err(_) => {
            forwarder.abort();
            Err(Attempt::Retry(ForwardFailure::Deadline))
        }
    }
}

/// Why a forward closed: the API server's message on the error channel when it sends one
/// soon (it usually says why the kubelet could not connect), else `fallback`.
async fn reason(
    forwarder: Portforwarder,
    errors: std::pin::Pin<Box<impl std::future::Future<Output = Option<String>>>>,
    fallback: ForwardFailure,
) -> ForwardFailure {
    let message = tokio::time::timeout(Duration::from_millis(500), errors).await;
    forwarder.abort();
    match message {
        Ok(Some(message)) => ForwardFailure::Server(message),
        _ => fallback,
    }
}
