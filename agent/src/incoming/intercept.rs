//! The listeners redirected connections arrive at: an IPv4, an IPv6-only and a dual-stack
//! IPv6 socket inside the target's namespace, on ephemeral ports the redirect rules point
//! to (the dual-stack one takes IPv4 clients as v4-mapped IPv6 sockets, as an app's
//! dual-stack listener would: see `Incoming::serve_subscription`). Each accepted
//! connection's original destination comes from conntrack (`SO_ORIGINAL_DST` for IPv4 ones,
//! v4-mapped too, `IP6T_SO_ORIGINAL_DST`); a connection made to a listener itself (not
//! redirected) is refused, so the listeners are no back door into the agent.

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
    /// The IPv6-only listener's port.
    pub v6: Option<u16>,
    /// The dual-stack IPv6 listener's port (IPv4 clients arrive v4-mapped).
    pub dual: Option<u16>,
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

/// A listener on `addr` (an IPv6 one IPv6-only unless `dual`).
async fn listen(sockets: &NetnsSockets, addr: SocketAddr, dual: bool) -> io::Result<TcpListener> {
    let socket = sockets
        .socket(Domain::for_address(addr), Type::STREAM)
        .await?;
    if addr.is_ipv6() {
        socket.set_only_v6(!dual)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

impl Interceptor {
    /// Opens the listeners and starts accepting; connections go to `incoming`.
    pub async fn start(incoming: &Arc<Incoming>) -> Result<Interceptor, InterceptError> {
        let any4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0));
        let v4 = listen(&incoming.sockets, any4, false).await;
        let v6 = listen(&incoming.sockets, any6, false).await;
        let (v4, v6) = match (v4, v6) {
            (Err(v4), Err(v6)) => return Err(InterceptError { v4, v6 }),
            pair => pair,
        };
        // Only where both families are: else IPv4 clients go to the IPv4 listener.
        let dual = match (&v4, &v6) {
            (Ok(_), Ok(_)) => Some(listen(&incoming.sockets, any6, true).await),
            _ => None,
        };
        let mut ports = Interceptor {
            v4: None,
            v6: None,
            dual: None,
        };
        let started = [("IPv4", v4, &mut ports.v4), ("IPv6", v6, &mut ports.v6)]
            .into_iter()
            .chain(dual.map(|l| ("dual-stack", l, &mut ports.dual)));
        for (family, listener, port_of) in started {
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    tracing::info!(error = %e, "no {family} listener in the target namespace; redirecting to the others only");
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
            *port_of = Some(port);
            tokio::spawn(accept_loop(listener, port, incoming.clone()));
        }
        tracing::debug!(v4 = ?ports.v4, v6 = ?ports.v6, dual = ?ports.dual, "listening for redirected connections in the target");
        Ok(ports)
    }
}

async fn accept_loop(listener: TcpListener, own_port: u16, incoming: Arc<Incoming>) {
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
        match original_destination(&conn, client) {
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

/// Where the connection from `client` was going: an IPv4 client's (v4-mapped on the
/// dual-stack listener too) comes from IPv4 conntrack, an IPv6 client's from IPv6 conntrack.
fn original_destination(conn: &TcpStream, client: SocketAddr) -> io::Result<SocketAddr> {
    let socket = SockRef::from(conn);
    let ipv6_client = match client.ip() {
        std::net::IpAddr::V6(ip) => ip.to_ipv4_mapped().is_none(),
        std::net::IpAddr::V4(_) => false,
    };
    let addr = if ipv6_client {
        socket.original_dst_v6()?
    } else {
        socket.original_dst_v4()?
    };
    addr.as_socket()
        .ok_or_else(|| io::Error::other("the original destination is not an IP address"))
}
