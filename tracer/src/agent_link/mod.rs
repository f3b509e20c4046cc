//! How sctrace reaches an agent: it starts one for a local target (a network namespace or a
//! process on this machine), starts one in the cluster for a Kubernetes target (see
//! [`kube`]), or connects to one already running at a configured address; then it opens
//! the protocol session.

pub mod data;
mod handoff;
pub mod kube;
mod local;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sctrace_filter::config::{AgentAddress, AgentTls, Config, NetnsTarget, Target};
use sctrace_protocol::{
    Config as ProtocolConfig, HandshakeError, Requests, Session, SessionHandle, Token, TokenError,
};
use thiserror::Error;
use tokio::net::{TcpStream, UnixStream};

pub use data::DataRoute;
pub use handoff::{Handoff, Offer};
pub use local::LocalAgent;
pub use tls::TlsSetupError;

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
    /// For an agent reached over plain TCP that takes data connections: where they go.
    pub data: Option<DataRoute>,
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
    /// `agent.tls` cannot be used.
    #[error(transparent)]
    TlsSetup(#[from] TlsSetupError),
    /// The TLS handshake with the agent failed (e.g. its certificate is not the trusted one).
    #[error("TLS with the agent at {address} failed: {source}")]
    Tls {
        /// Where.
        address: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The handshake failed (the agent could not prove it holds the token, or refused us:
    /// wrong token, version mismatch, not an agent).
    #[error("no session with the agent at {address}: {source}")]
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
        let (handle, requests, plain) = connect(address, &token, config.agent.tls.as_ref())
            .await
            .inspect_err(|_| progress.failed())?;
        let data = plain
            .filter(|_| data::wanted())
            .and_then(|agent| handle.data_keys().map(|keys| DataRoute::new(agent, *keys)));
        progress.done(&format!("connected to the agent at {address}"));
        return Ok(AgentLink {
            handle,
            requests: Some(requests),
            process: None,
            address: address.to_string(),
            forward: None,
            handoff: None,
            data,
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
        let (handle, requests, _) = connect(&address, agent.token(), None).await?;
        Ok::<_, LinkError>((agent, address, handle, requests))
    };
    let (agent, address, handle, requests) = started.await.inspect_err(|_| progress.failed())?;
    progress.done(&format!("agent started for {shown}"));
    // Without the channel, connections are relayed over the session: slower, but the same.
    let handoff = match Handoff::connect(agent.handoff_socket(), agent.token()) {
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
        data: None,
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
        data: None,
    }
}

fn read_token(path: &Path) -> Result<Token, LinkError> {
    let bytes = std::fs::read(path).map_err(|source| LinkError::TokenFile {
        path: path.to_owned(),
        source,
    })?;
    Token::from_file_contents(&bytes).map_err(LinkError::BadToken)
}

/// Connects to the agent at `address` (over TLS as `tls` says, for `tcp:`) and runs the
/// handshake: the agent proves it holds `token` before sctrace sends anything more. Also
/// returns the agent's address when the session runs over plain TCP.
async fn connect(
    address: &AgentAddress,
    token: &Token,
    tls: Option<&AgentTls>,
) -> Result<(SessionHandle, Requests, Option<SocketAddr>), LinkError> {
    let mut plain = None;
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
            // Checked before connecting: a config mistake is reported as such.
            let tls = tls.map(|tls| tls::connector(tls, host)).transpose()?;
            let io =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), *port)))
                    .await
                    .map_err(|_| connect_err(timed_out()))?
                    .map_err(connect_err)?;
            let _ = io.set_nodelay(true);
            match tls {
                Some((connector, name)) => {
                    let io = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, io))
                        .await
                        .map_err(|_| connect_err(timed_out()))?
                        .map_err(|source| LinkError::Tls {
                            address: shown.clone(),
                            source,
                        })?;
                    Session::client(io, token, config).await
                }
                None => {
                    if !is_loopback(host) {
                        eprintln!(
                            "sctrace: warning: the session with the agent at {shown} is not encrypted: whoever is on the network path can read and alter the program's remote traffic; serve TLS from the agent (--tls-cert) and set agent.tls (see docs/security.md)"
                        );
                    }
                    plain = io.peer_addr().ok();
                    Session::client(io, token, config).await
                }
            }
        }
    };
    let session = session.map_err(|source| LinkError::Handshake {
        address: shown.clone(),
        source,
    })?;
    tokio::spawn(session.task.run());
    Ok((session.handle, session.requests, plain))
}

/// Whether `host` names this machine's loopback, where no one else is on the path.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use bytes::BytesMut;
    use sctrace_filter::config::AgentTrust;
    use sctrace_protocol::{decode, Frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const SECRET: &str = "tracer-test-token-0123456789abcdef";

    fn token() -> Token {
        Token::new(SECRET.as_bytes().to_vec()).unwrap()
    }

    fn tls_data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/tls")
            .join(name)
    }

    fn leaks_token(bytes: &[u8]) -> bool {
        SECRET
            .as_bytes()
            .windows(8)
            .any(|piece| bytes.windows(8).any(|w| w == piece))
    }

    fn tcp(port: u16) -> AgentAddress {
        AgentAddress::Tcp {
            host: "127.0.0.1".into(),
            port,
        }
    }

    /// Serves `stream` through an in-memory pipe, keeping every byte the peer sends in
    /// `seen`; returns the pipe's end to run a session on.
    fn recorded(
        stream: tokio::net::TcpStream,
        seen: Arc<Mutex<Vec<u8>>>,
    ) -> tokio::io::DuplexStream {
        let (mut from_peer, mut to_peer) = stream.into_split();
        let (near, far) = tokio::io::duplex(1 << 16);
        let (mut near_read, mut near_write) = tokio::io::split(near);
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = from_peer.read(&mut buf).await {
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
                if near_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = near_write.shutdown().await;
        });
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut near_read, &mut to_peer).await;
        });
        far
    }

    #[tokio::test]
    async fn an_impostor_agent_gets_a_greeting_and_nothing_else() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let impostor = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = BytesMut::new();
            while decode(&mut got.clone()).unwrap().is_none() {
                s.read_buf(&mut got).await.unwrap();
            }
            // It does not hold the token: its "proof" is made up.
            let mut challenge = BytesMut::new();
            Frame::AuthChallenge {
                nonce: [1; 32],
                proof: [2; 32],
            }
            .encode(&mut challenge)
            .unwrap();
            s.write_all(&challenge).await.unwrap();
            s.read_buf(&mut got).await.unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            got.extend_from_slice(&rest);
            got
        });
        let err = connect(&tcp(port), &token(), None).await.err().unwrap();
        assert!(
            matches!(
                err,
                LinkError::Handshake {
                    source: HandshakeError::AgentNotAuthenticated,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("did not prove"), "{err}");
        let mut got = impostor.await.unwrap();
        assert!(!leaks_token(&got), "the token went to the impostor");
        assert!(
            matches!(decode(&mut got).unwrap(), Some(Frame::Hello { .. })),
            "a Hello first"
        );
        assert!(got.is_empty(), "sctrace sent more than its Hello: {got:?}");
    }

    #[tokio::test]
    async fn the_agent_sees_proofs_never_the_token() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_by_agent = seen.clone();
        let agent = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            Session::server(
                recorded(s, seen_by_agent),
                &token(),
                ProtocolConfig::default(),
            )
            .await
        });
        let (handle, _requests, _) = connect(&tcp(port), &token(), None).await.unwrap();
        let server = agent.await.unwrap().unwrap();
        tokio::spawn(server.task.run());
        handle.shutdown("done");
        let _ = tokio::time::timeout(Duration::from_secs(5), server.handle.closed()).await;
        let seen = seen.lock().unwrap().clone();
        assert!(
            seen.len() > 10 + 12 + 32,
            "the Hello and the proof at least"
        );
        assert!(!leaks_token(&seen), "sctrace sent the token");
    }

    /// An agent serving TLS with `cert`/`key` for one connection: its session, or the error.
    fn tls_agent(
        listener: TcpListener,
        cert: &str,
        key: &str,
    ) -> tokio::task::JoinHandle<Result<Session, String>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = vec![CertificateDer::from_pem_file(tls_data(cert)).unwrap()];
        let key = PrivateKeyDer::from_pem_file(tls_data(key)).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let tls = acceptor.accept(s).await.map_err(|e| e.to_string())?;
            Session::server(tls, &token(), ProtocolConfig::default())
                .await
                .map_err(|e| e.to_string())
        })
    }

    async fn connect_tls(
        tls: AgentTls,
        served_cert: &str,
        served_key: &str,
    ) -> (Result<(), LinkError>, Result<Session, String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let agent = tls_agent(listener, served_cert, served_key);
        let client = connect(&tcp(port), &token(), Some(&tls)).await.map(|_| ());
        let agent = tokio::time::timeout(Duration::from_secs(10), agent)
            .await
            .unwrap()
            .unwrap();
        (client, agent)
    }

    #[tokio::test]
    async fn tls_with_a_pinned_certificate() {
        let pinned = AgentTls {
            trust: AgentTrust::Pinned(tls_data("agent.pem")),
            server_name: None,
        };
        let (client, agent) = connect_tls(pinned.clone(), "agent.pem", "agent-key.pem").await;
        assert!(client.is_ok(), "{:?}", client.err());
        assert!(agent.is_ok());
        // Another agent's certificate (same names, other key): refused in TLS, before the
        // session's own handshake.
        let (client, agent) = connect_tls(pinned, "other.pem", "other-key.pem").await;
        let err = client.err().unwrap();
        assert!(matches!(err, LinkError::Tls { .. }), "{err}");
        assert!(agent.is_err());
    }

    #[tokio::test]
    async fn tls_with_a_ca_checks_the_name() {
        let ca = |name: Option<&str>| AgentTls {
            trust: AgentTrust::Ca(tls_data("ca.pem")),
            server_name: name.map(str::to_owned),
        };
        // The certificate names 127.0.0.1 (the address's host) and agent.test.
        let (client, _) = connect_tls(ca(None), "agent.pem", "agent-key.pem").await;
        assert!(client.is_ok(), "{:?}", client.err());
        let (client, _) = connect_tls(ca(Some("agent.test")), "agent.pem", "agent-key.pem").await;
        assert!(client.is_ok(), "{:?}", client.err());
        let (client, _) =
            connect_tls(ca(Some("elsewhere.test")), "agent.pem", "agent-key.pem").await;
        assert!(matches!(client, Err(LinkError::Tls { .. })));
        // Not signed by the CA.
        let (client, _) = connect_tls(ca(None), "other.pem", "other-key.pem").await;
        assert!(matches!(client, Err(LinkError::Tls { .. })));
    }

    #[tokio::test]
    async fn tls_settings_are_checked_before_connecting() {
        let missing = AgentTls {
            trust: AgentTrust::Pinned("/nonexistent/agent.pem".into()),
            server_name: None,
        };
        let err = connect(&tcp(1), &token(), Some(&missing))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, LinkError::TlsSetup(_)), "{err}");
        assert!(
            err.to_string()
                .starts_with("agent.tls: cannot read PEM certificates from /nonexistent/agent.pem"),
            "{err}"
        );
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1") && is_loopback("::1") && is_loopback("localhost"));
        assert!(!is_loopback("10.0.0.1") && !is_loopback("agent.example"));
    }
}
