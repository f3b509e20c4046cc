//! UDP flows for the application: an unconnected UDP socket in the target namespace whose
//! datagrams travel with their addresses.

use std::io;
use std::net::SocketAddr;

use sctrace_protocol::OpenUdpRequest;
use socket2::{Domain, Type};

use crate::errno;
use crate::netns::NetnsSockets;

async fn open(sockets: &NetnsSockets, bind: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let socket = sockets
        .socket(Domain::for_address(bind), Type::DGRAM)
        .await?;
    socket.bind(&bind.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// Serves one UDP flow until sctrace closes it or the session ends.
pub async fn serve(request: OpenUdpRequest, sockets: NetnsSockets) {
    let bind = request.bind();
    let id = request.id();
    let socket = match open(&sockets, bind).await {
        Ok(socket) => socket,
        Err(e) => {
            tracing::debug!(id, %bind, error = %e, "cannot open UDP socket");
            request.reject(errno::of(&e));
            return;
        }
    };
    let local = socket.local_addr().unwrap_or(bind);
    let Ok(flow) = request.accept(local) else {
        return;
    };
    tracing::debug!(id, %local, "UDP flow open");
    loop {
        tokio::select! {
            outgoing = flow.recv_from() => match outgoing {
                Ok((dst, payload)) => {
                    // Like the app's own sendto on a full or unreachable path: the datagram is
                    // lost, the flow goes on.
                    if let Err(e) = socket.send_to(&payload, dst).await {
                        tracing::debug!(id, %dst, error = %e, "UDP send failed");
                    }
                }
                Err(_) => break,
            },
            ready = socket.readable() => {
                if ready.is_err() {
                    break;
                }
                // The buffer exists only while a datagram is waiting.
                let mut buf = vec![0u8; 65_536];
                match socket.try_recv_from(&mut buf) {
                    Ok((n, src)) => {
                        if flow.send_to(src, &buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => tracing::debug!(id, error = %e, "UDP receive failed"),
                }
            }
        }
    }
    tracing::debug!(id, %local, dropped = flow.dropped(), "UDP flow closed");
}
