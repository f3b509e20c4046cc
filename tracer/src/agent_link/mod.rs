//! How sctrace reaches an agent: it starts one for a local target (a network namespace or a
//! process on this machine) or connects to one already running at a configured address,
//! then opens the protocol session.

mod local;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sctrace_filter::config::{AgentAddress, NetnsTarget, Target};
use sctrace_protocol::{Config as ProtocolConfig, HandshakeError, Session, SessionHandle, Token};
use thiserror::Error;
use tokio::net::{TcpStream, UnixStream};

pub use local::LocalAgent;

/// An open session with an agent, and the agent process when sctrace started it.
pub struct AgentLink {
    /// The session.
    pub handle: SessionHandle,
    /// The agent process sctrace started (local targets), to stop at the end.
    pub process: Option<LocalAgent>,
    /// Where the agent listens, for messages.
    pub address: String,
}

/// Why sctrace could not reach an agent.
#[derive(Debug, Error)]
pub enum LinkError {
    /// A Kubernetes target: not reachable by this version's agent links.
    #[error("the target {0} is a Kubernetes target; sctrace can't reach the cluster in this version: use a local target (netns/NAME, pid/PID) or an agent address (agent.address)")]
    Kubernetes(String),
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
    BadToken(String),
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

/// Opens a session with the agent for `target`, or at `address` when one is configured.
pub async fn open(
    target: Option<&Target>,
    address: Option<&AgentAddress>,
    token_file: Option<&Path>,
    env_token: Option<String>,
) -> Result<AgentLink, LinkError> {
    if let Some(address) = address {
        let token = match (token_file, env_token) {
            (Some(path), _) => read_token(path)?,
            (None, Some(text)) => Token::new(text.trim().as_bytes().to_vec())
                .map_err(|e| LinkError::BadToken(e.to_string()))?,
            (None, None) => return Err(LinkError::NoToken),
        };
        let handle = connect(address, &token).await?;
        return Ok(AgentLink {
            handle,
            process: None,
            address: address.to_string(),
        });
    }
    let netns = match target {
        Some(Target::Netns(NetnsTarget::Named(name))) => {
            local::Namespace::Path(PathBuf::from("/run/netns").join(name))
        }
        Some(Target::Netns(NetnsTarget::Path(path))) => local::Namespace::Path(path.clone()),
        Some(Target::Pid(pid)) => local::Namespace::Pid(*pid),
        Some(other) => return Err(LinkError::Kubernetes(format!("{other:?}"))),
        None => return Err(LinkError::Kubernetes("targetless".into())),
    };
    let agent = LocalAgent::start(&netns).await?;
    let address = AgentAddress::Unix(agent.socket().to_path_buf());
    let handle = connect(&address, agent.token()).await?;
    Ok(AgentLink {
        handle,
        process: Some(agent),
        address: address.to_string(),
    })
}

fn read_token(path: &Path) -> Result<Token, LinkError> {
    let bytes = std::fs::read(path).map_err(|source| LinkError::TokenFile {
        path: path.to_owned(),
        source,
    })?;
    Token::from_file_contents(&bytes).map_err(|e| LinkError::BadToken(e.to_string()))
}

async fn connect(address: &AgentAddress, token: &Token) -> Result<SessionHandle, LinkError> {
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
    // Nothing is served to the agent yet: its requests are refused when `requests` drops.
    drop(session.requests);
    Ok(session.handle)
}
