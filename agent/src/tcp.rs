//! Outgoing TCP for the application: connect inside the target namespace (the kernel's
//! outcome, bounded by a timeout, becomes the errno sctrace reports) and relay the bytes.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use sctrace_protocol::{ConnectTcpRequest, RelayEnd};
use socket2::{Domain, SockRef, Type};
use tokio::net::TcpStream;

use crate::errno;
use crate::netns::NetnsSockets;

/// Connects from the target namespace, giving up after `timeout`.
pub async fn connect(
    sockets: &NetnsSockets,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, i32> {
    let errno = |e: io::Error| errno::of(&e);
    let socket = sockets
        .socket(Domain::for_address(addr), Type::STREAM)
        .await
        .map_err(errno)?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(errno(e)),
        Err(_) => Err(errno::ETIMEDOUT),
    }
}

/// Serves one connect request: connects (unless sctrace cancels first), then relays until
/// both sides are done. With `handed`, the app's side of the connection comes from there
/// (by stream id), not over the stream.
pub async fn serve(
    mut request: ConnectTcpRequest,
    sockets: NetnsSockets,
    default_timeout: Duration,
    handed: Option<std::sync::Arc<crate::rendezvous::Rendezvous>>,
) {
    let addr = request.addr();
    let id = request.id();
    let timeout = request
        .timeout()
        .map_or(default_timeout, |t| t.min(default_timeout));
    let connected = tokio::select! {
        result = connect(&sockets, addr, timeout) => result,
        () = request.cancelled() => {
            tracing::debug!(id, %addr, "connect cancelled by sctrace");
            return;
        }
    };
    let mut tcp = match connected {
        Ok(tcp) => tcp,
        Err(errno) => {
            tracing::debug!(id, %addr, errno, "connect failed");
            request.reject(errno);
            return;
        }
    };
    // Bytes are relayed as they come; Nagle would only add delay on top of the app's own.
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().unwrap_or(addr);
    let mut stream = match request.accept(local) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(id, %addr, error = %e, "connected, but sctrace no longer wants it");
            return;
        }
    };
    tracing::debug!(id, %addr, %local, "connected");
    if let Some(handed) = handed {
        // The app's connection comes as a socket of its own (the relay end sctrace hands
        // over, or a data connection): splice the two.
        let Some(fd) = handed.take(id).await else {
            tracing::debug!(id, %addr, "no socket was handed over; closing");
            return;
        };
        drop(stream);
        match crate::splice::adopt(fd) {
            Ok(app) => {
                let spliced = crate::splice::relay(app, tcp).await;
                tracing::debug!(id, %addr, sent = spliced.b_to_a, received = spliced.a_to_b, error = ?spliced.error, "connection closed");
            }
            Err(e) => tracing::debug!(id, %addr, error = %e, "cannot use the handed-over socket"),
        }
        return;
    }
    let outcome = sctrace_protocol::relay(&mut stream, &mut tcp).await;
    match &outcome.end {
        RelayEnd::Closed => {}
        RelayEnd::StreamFailed(e) => {
            // The app's side was reset (or the session died): reset the target's side too.
            let _ = SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
            tracing::debug!(id, %addr, error = %e, "stream reset; resetting the connection");
        }
        RelayEnd::LocalFailed(e) => {
            tracing::debug!(id, %addr, error = %e, "connection failed; stream reset");
        }
    }
    tracing::debug!(
        id,
        %addr,
        sent = outcome.to_stream,
        received = outcome.from_stream,
        "connection closed"
    );
}
