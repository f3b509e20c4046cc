//! The TCP relay: loopback listeners that the app's redirected sockets are connected to,
//! each accepted connection joined to what sctrace arranged for it — an agent stream to the
//! remote destination, or the DNS responder for DNS over TCP.
//!
//! Only connections sctrace arranged get through. Before connecting an app socket here,
//! sctrace registers the socket's own address (it binds the socket first when it is
//! unbound); an accepted connection whose peer address is not registered is reset at once.
//! Two live connections to one listener can't share a peer address, so another local
//! process can't pose as the app's socket.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sctrace_protocol::{relay, DnsTransport, RelayEnd, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::agent_link::Handoff;
use crate::dns::{Asker, DnsResponder};

/// What an arranged connection is joined to.
pub enum Arranged {
    /// An agent stream to the remote destination.
    Remote {
        /// The stream.
        stream: Stream,
        /// Called when the relayed connection ends.
        on_end: Box<dyn FnOnce() + Send>,
    },
    /// The DNS responder: length-prefixed DNS messages (RFC 1035 4.2.2) for `server`.
    Dns {
        /// The nameserver the app connected to.
        server: SocketAddr,
        /// Who asked.
        asker: Asker,
    },
}

/// The listeners and the connections expected on them.
pub struct TcpRelay {
    v4: SocketAddr,
    v6: Option<SocketAddr>,
    expected: Arc<Mutex<HashMap<SocketAddr, Arranged>>>,
}

/// How long one DNS-over-TCP connection may sit idle.
const DNS_IDLE: Duration = Duration::from_secs(30);

impl TcpRelay {
    /// Binds the listeners (127.0.0.1, and ::1 when the machine has IPv6) and starts
    /// accepting. With `handoff` (an agent on this machine), remote connections are handed
    /// to the agent instead of relayed here.
    pub async fn start(dns: Arc<DnsResponder>, handoff: Option<Handoff>) -> io::Result<TcpRelay> {
        let expected: Arc<Mutex<HashMap<SocketAddr, Arranged>>> = Arc::default();
        let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let v4_addr = v4.local_addr()?;
        tokio::spawn(accept_loop(
            v4,
            Arc::clone(&expected),
            Arc::clone(&dns),
            handoff.clone(),
        ));
        let v6_addr = match TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).await {
            Ok(v6) => {
                let addr = v6.local_addr()?;
                tokio::spawn(accept_loop(v6, Arc::clone(&expected), dns, handoff));
                Some(addr)
            }
            Err(err) => {
                tracing::debug!("no IPv6 relay listener: {err}");
                None
            }
        };
        Ok(TcpRelay {
            v4: v4_addr,
            v6: v6_addr,
            expected,
        })
    }

    /// The listener an app socket of family `family` connects to.
    pub fn listener_for(&self, family: i32) -> Option<SocketAddr> {
        match family {
            libc::AF_INET6 => self.v6,
            _ => Some(self.v4),
        }
    }

    /// Expects a connection from `peer` (the app socket's address as the listener will see
    /// it) and joins it to `arranged`.
    pub fn expect(&self, peer: SocketAddr, arranged: Arranged) {
        if let Ok(mut map) = self.expected.lock() {
            map.insert(peer, arranged);
        }
    }

    /// Withdraws an expectation whose connect failed.
    pub fn forget(&self, peer: SocketAddr) {
        if let Ok(mut map) = self.expected.lock() {
            map.remove(&peer);
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    expected: Arc<Mutex<HashMap<SocketAddr, Arranged>>>,
    dns: Arc<DnsResponder>,
    handoff: Option<Handoff>,
) {
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("relay listener: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let arranged = expected.lock().ok().and_then(|mut map| map.remove(&peer));
        match arranged {
            Some(Arranged::Remote { stream, on_end }) => match &handoff {
                Some(handoff) => hand_over(handoff, conn, stream, on_end),
                None => {
                    tokio::spawn(relay_remote(conn, stream, on_end));
                }
            },
            Some(Arranged::Dns { server, asker }) => {
                tokio::spawn(serve_dns(conn, server, asker, Arc::clone(&dns)));
            }
            None => {
                tracing::warn!(
                    "relay: refused a connection from {peer} that sctrace did not arrange"
                );
                reset(conn);
            }
        }
    }
}

/// Closes a connection with RST.
fn reset(conn: TcpStream) {
    let _ = conn.set_zero_linger();
    drop(conn);
}

/// Gives the connection to the local agent, which splices it to the target socket of the
/// same stream; falls back to relaying here if that fails.
fn hand_over(handoff: &Handoff, conn: TcpStream, stream: Stream, on_end: Box<dyn FnOnce() + Send>) {
    let _ = conn.set_nodelay(true);
    let fd = match conn.into_std() {
        Ok(std) => std::os::fd::OwnedFd::from(std),
        Err(err) => {
            tracing::warn!("relay: cannot hand a connection over: {err}");
            on_end();
            return;
        }
    };
    match handoff.send(stream.id(), fd) {
        // The stream only carried the connect; the agent now relays the connection itself,
        // and sctrace no longer learns when it ends: its managed-socket entry stays until
        // the table's bound evicts it (see remote::sockets).
        Ok(()) => {
            drop(stream);
            drop(on_end);
        }
        Err(fd) => match TcpStream::from_std(std::net::TcpStream::from(fd)) {
            Ok(conn) => {
                tokio::spawn(relay_remote(conn, stream, on_end));
            }
            Err(err) => {
                tracing::warn!("relay: lost a connection: {err}");
                on_end();
            }
        },
    }
}

async fn relay_remote(mut conn: TcpStream, mut stream: Stream, on_end: Box<dyn FnOnce() + Send>) {
    let _ = conn.set_nodelay(true);
    let outcome = relay(&mut stream, &mut conn).await;
    match outcome.end {
        RelayEnd::Closed => drop(conn),
        // The remote side reset, or the agent is gone: the app sees a reset too.
        RelayEnd::StreamFailed(err) => {
            tracing::debug!("relay: remote side failed: {err}");
            reset(conn);
        }
        RelayEnd::LocalFailed(err) => {
            tracing::debug!("relay: app side failed: {err}");
        }
    }
    on_end();
}

async fn serve_dns(mut conn: TcpStream, server: SocketAddr, asker: Asker, dns: Arc<DnsResponder>) {
    loop {
        let len = match tokio::time::timeout(DNS_IDLE, conn.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return,
        };
        let mut query = vec![0u8; len];
        if conn.read_exact(&mut query).await.is_err() {
            return;
        }
        let Some(answer) = dns.answer(&query, server, DnsTransport::Tcp, &asker).await else {
            return;
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        if conn.write_all(&len.to_be_bytes()).await.is_err()
            || conn.write_all(&answer).await.is_err()
        {
            return;
        }
    }
}
