//! How sctrace reaches an agent: it starts one for a local target (a network namespace or a
//! process on this machine), starts one in the cluster for a Kubernetes target (see
//! [`kube`]), or connects to one already running at a configured address; then it opens
//! the protocol session.

mod handoff;
pub mod kube;
mod local;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sctrace_filter::config::{AgentAddress, Config, NetnsTarget, Target};
use sctrace_protocol::{
    Config as ProtocolConfig, HandshakeError, Requests, Session, SessionHandle, Token, TokenError,
};
use thiserror::Error;
use tokio::net::{TcpStream, UnixStream};

pub use handoff::Handoff;
pub use local::LocalAgent;

use crate::progress::Progress;

/// An open session with an agent, and the agent process when sctrace started it.
pub struct AgentLink {
    /// The session.
    pub handle: SessionHandle,
    /// What the agent opens toward sctrace (incoming connections); taken by whoever serves
    /// them, refused when dropped.
    pub requests: Option<Requests>,
    /// The agent process sctrace started (local targets), to stop at the end.
    pub process: Option<LocalAgent>,
    /// Where the agent listens, for messages.
    pub address: String,
    /// The port-forward to an agent in the cluster, which must live as long as the session.
    pub forward: Option<kube::Forward>,
    /// For an agent sctrace started on this machine: the channel for handing it the relay
    /// ends of TCP connections (see [`handoff`]).
    pub handoff: Option<Handoff>,
}

/// Why sctrace could not reach an agent.
#[derive(Debug, Error)]
pub enum LinkError {
    /// A Kubernetes target's agent could not be started or reached.
    #[error(transparent)]
    Kube(#[from] kube::KubeError),
    /// Reading the token file failed.
    #[error("cannot read the agent token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No token for an agent given by address.
    #[error("agent.address is set but no token: set agent.token_file (or SCTRACE_AGENT_TOKEN)")]
    NoToken,
    /// The token is unusable.
    #[error("the agent token is unusable: {0}")]
    BadToken(#[source] TokenError),
    /// Starting the local agent failed.
    #[error(transparent)]
    Local(#[from] local::LocalAgentError),
    /// Connecting to the agent failed.
    #[error("cannot connect to the agent at {address}: {source}")]
    Connect {
        /// Where.
        address: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The handshake failed (wrong token, version mismatch, not an agent).
    #[error("the agent at {address} refused the session: {source}")]
    Handshake {
        /// Where.
        address: String,
        /// Why.
        #[source]
        source: HandshakeError,
    },
}

/// How long connecting to an agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Opens a session with the agent at `agent.address` when one is configured, else with an
/// agent sctrace starts for the target: locally for `netns/…` and `pid/…`, in the cluster
/// for the rest (no target: targetless). `env_token` is `SCTRACE_AGENT_TOKEN`, for an agent
/// given by address. The steps show on `progress`.
pub async fn open(
    config: &Config,
    env_token: Option<String>,
    progress: &Progress,
) -> Result<AgentLink, LinkError> {
    let target = config.target.path.as_ref();
    let token_file = config.agent.token_file.as_deref();
    if let Some(address) = config.agent.address.as_ref() {
        let token = match (token_file, env_token) {
            (Some(path), _) => read_token(path)?,
            (None, Some(text)) => {
                Token::new(text.trim().as_bytes().to_vec()).map_err(LinkError::BadToken)?
            }
            (None, None) => return Err(LinkError::NoToken),
        };
        progress.start(&format!("connecting to the agent at {address}"));
        let (handle, requests) = connect(address, &token)
            .await
            .inspect_err(|_| progress.failed())?;
        progress.done(&format!("connected to the agent at {address}"));
        return Ok(AgentLink {
            handle,
            requests: Some(requests),
            process: None,
            address: address.to_string(),
            forward: None,
            handoff: None,
        });
    }
    let netns = match target {
        Some(Target::Netns(NetnsTarget::Named(name))) => {
            local::Namespace::Path(PathBuf::from("/run/netns").join(name))
        }
        Some(Target::Netns(NetnsTarget::Path(path))) => local::Namespace::Path(path.clone()),
        Some(Target::Pid(pid)) => local::Namespace::Pid(*pid),
        _ => return open_kube(config, progress).await,
    };
    let shown = target.map_or_else(String::new, ToString::to_string);
    progress.start(&format!("starting the agent for {shown}"));
    let started = async {
        let agent = LocalAgent::start(&netns).await?;
        let address = AgentAddress::Unix(agent.socket().to_path_buf());
        let (handle, requests) = connect(&address, agent.token()).await?;
        Ok::<_, LinkError>((agent, address, handle, requests))
    };
    let (agent, address, handle, requests) = started.await.inspect_err(|_| progress.failed())?;
    progress.done(&format!("agent started for {shown}"));
    // Without the channel, connections are relayed over the session: slower, but the same.
    let handoff = match Handoff::connect(agent.handoff_socket(), agent.secret()) {
        Ok(handoff) => Some(handoff),
        Err(err) => {
            tracing::warn!(
                "cannot open the agent's handoff channel, relaying through sctrace: {err}"
            );
            None
        }
    };
    Ok(AgentLink {
        handle,
        requests: Some(requests),
        process: Some(agent),
        address: address.to_string(),
        forward: None,
        handoff,
    })
}

/// Starts an agent in the cluster and opens the session through the port-forward.
async fn open_kube(config: &Config, progress: &Progress) -> Result<AgentLink, LinkError> {
    let link = kube::open(config, progress).await?;
    Ok(serve_link(link))
}

/// Runs a Kubernetes session's task and wraps it as an [`AgentLink`].
pub fn serve_link(link: kube::KubeLink) -> AgentLink {
    let kube::KubeLink {
        session,
        address,
        forward,
    } = link;
    tokio::spawn(session.task.run());
    AgentLink {
        handle: session.handle,
        requests: Some(session.requests),
        process: None,
        address,
        forward: Some(forward),
        handoff: None,
    }
}

fn read_token(path: &Path) -> Result<Token, LinkError> {
    let bytes = std::fs::read(path).map_err(|source| LinkError::TokenFile {
        path: path.to_owned(),
        source,
    })?;
    Token::from_file_contents(&bytes).map_err(LinkError::BadToken)
}

async fn connect(
    address: &AgentAddress,
    token: &Token,
) -> Result<(SessionHandle, Requests), LinkError> {
    let shown = address.to_string();
    let connect_err = |source| LinkError::Connect {
        address: shown.clone(),
        source,
    };
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "timed out");
    let config = ProtocolConfig::default();
    let session = match address {
        AgentAddress::Unix(path) => {
            let io = tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path))
                .await
                .map_err(|_| connect_err(timed_out()))?
                .map_err(connect_err)?;
            Session::client(io, token, config).await
        }
        AgentAddress::Tcp { host, port } => {
            let io =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), *port)))
                    .await
                    .map_err(|_| connect_err(timed_out()))?
                    .map_err(connect_err)?;
            let _ = io.set_nodelay(true);
            Session::client(io, token, config).await
        }
    };
    let session = session.map_err(|source| LinkError::Handshake {
        address: shown.clone(),
        source,
    })?;
    tokio::spawn(session.task.run());
    Ok((session.handle, session.requests))
}
