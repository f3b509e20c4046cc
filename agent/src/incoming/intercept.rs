//! The listeners redirected connections arrive at: one IPv4 and one IPv6 socket inside the
//! target's namespace, on ephemeral ports the redirect rules point to. Each accepted
//! connection's original destination comes from conntrack (`SO_ORIGINAL_DST`,
//! `IP6T_SO_ORIGINAL_DST`); a connection made to the listener itself (not redirected) is
//! refused, so the listener is no back door into the agent.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, SockRef, Type};
use tokio::net::{TcpListener, TcpStream};

use super::proxy::abort;
use super::Incoming;
use crate::netns::NetnsSockets;

/// Connections waiting to be accepted per listener.
const BACKLOG: i32 = 1024;

/// The running listeners' ports (`None`: that family is unavailable in the target).
#[derive(Debug, Clone, Copy)]
pub struct Interceptor {
    /// The IPv4 listener's port.
    pub v4: Option<u16>,
    /// The IPv6 listener's port.
    pub v6: Option<u16>,
}

/// Why no listener could be opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen for redirected connections in the target namespace (IPv4: {v4}; IPv6: {v6})"
)]
pub struct InterceptError {
    v4: io::Error,
    v6: io::Error,
}

async fn listen(sockets: &NetnsSockets, addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = sockets
        .socket(Domain::for_address(addr), Type::STREAM)
        .await?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

impl Interceptor {
    /// Opens the listeners and starts accepting; connections go to `incoming`.
    pub async fn start(incoming: &Arc<Incoming>) -> Result<Interceptor, InterceptError> {
        let v4 = listen(
            &incoming.sockets,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        )
        .await;
        let v6 = listen(
            &incoming.sockets,
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        )
        .await;
        let (v4, v6) = match (v4, v6) {
            (Err(v4), Err(v6)) => return Err(InterceptError { v4, v6 }),
            pair => pair,
        };
        let mut ports = Interceptor { v4: None, v6: None };
        for (is_v6, listener) in [(false, v4), (true, v6)] {
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    let family = if is_v6 { "IPv6" } else { "IPv4" };
                    tracing::info!(error = %e, "no {family} listener in the target namespace; redirecting the other family only");
                    continue;
                }
            };
            let port = match listener.local_addr() {
                Ok(a) => a.port(),
                Err(e) => {
                    tracing::warn!(error = %e, "interception listener has no address");
                    continue;
                }
            };
            if is_v6 {
                ports.v6 = Some(port);
            } else {
                ports.v4 = Some(port);
            }
            tokio::spawn(accept_loop(listener, port, is_v6, incoming.clone()));
        }
        tracing::debug!(v4 = ?ports.v4, v6 = ?ports.v6, "listening for redirected connections in the target");
        Ok(ports)
    }
}

async fn accept_loop(listener: TcpListener, own_port: u16, v6: bool, incoming: Arc<Incoming>) {
    loop {
        let (conn, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accepting a redirected connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match original_destination(&conn, v6) {
            Ok(server) if server.port() != own_port => {
                // Handed to a local sctrace, the socket takes the app's listener's options.
                if incoming.hand_over(&conn, client, server) {
                    continue;
                }
                let _ = conn.set_nodelay(true);
                tokio::spawn(incoming.clone().handle(conn, client, server, true));
            }
            Ok(_) => {
                tracing::debug!(%client, "refused a connection made to the interception listener itself");
                abort(&conn);
            }
            Err(e) => {
                tracing::debug!(%client, error = %e, "no original destination for a connection; refused");
                abort(&conn);
            }
        }
    }
}

fn original_destination(conn: &TcpStream, v6: bool) -> io::Result<SocketAddr> {
    let socket = SockRef::from(conn);
    let addr = if v6 {
        socket.original_dst_v6()?
    } else {
        socket.original_dst_v4()?
    };
    addr.as_socket()
        .ok_or_else(|| io::Error::other("the original destination is not an IP address"))
}
