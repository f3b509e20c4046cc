//! The way back to the target's own server: the agent connects to the connection's original
//! destination from inside the target namespace, with the socket mark that exempts it from
//! the redirect, and relays bytes both ways.
//!
//! The target's server then sees the agent's address (the target's own address) as the
//! client, not the remote client's: preserving it would need `IP_TRANSPARENT` plus policy
//! routing in the target, which the agent does not impose on it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, SockRef, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::nft::AGENT_MARK;
use crate::netns::NetnsSockets;

/// How long connecting to the target's own server may take (it is local to the namespace).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `server` (one of the target's own addresses) without being redirected.
pub async fn connect_original(sockets: &NetnsSockets, server: SocketAddr) -> io::Result<TcpStream> {
    let socket = sockets
        .socket(Domain::for_address(server), Type::STREAM)
        .await?;
    socket.set_mark(AGENT_MARK)?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(server))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Makes closing `socket` send a reset, as a failed relay should.
pub fn abort(socket: &TcpStream) {
    let _ = SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

/// A redirected client connection, however the agent wraps it (a mirror tee, bytes already
/// read put back in front).
pub trait ClientConn: AsyncRead + AsyncWrite + Unpin + Send {
    /// The accepted socket.
    fn socket(&self) -> &TcpStream;
}

/// Relays `client` to the target's own server at `server`, as if the agent were not there:
/// half-closes pass through, and a failure on one side resets the other.
pub async fn pass_through<C: ClientConn>(
    mut client: C,
    server: SocketAddr,
    sockets: &NetnsSockets,
) {
    let mut upstream = match connect_original(sockets, server).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%server, error = %e, "cannot reach the target's own server; resetting the client");
            abort(client.socket());
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            tracing::trace!(%server, up, down, "passed a connection through");
        }
        Err(e) => {
            tracing::debug!(%server, error = %e, "passed-through connection failed; resetting both sides");
            abort(client.socket());
            abort(&upstream);
        }
    }
}
