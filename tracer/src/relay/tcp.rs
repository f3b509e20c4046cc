//! The TCP relay: loopback listeners that the app's redirected sockets are connected to,
//! each accepted connection joined to what sctrace arranged for it — an agent stream to the
//! remote destination, or the DNS responder for DNS over TCP.
//!
//! Only connections sctrace arranged get through. Before connecting an app socket here,
//! sctrace registers the socket's own address (it binds the socket first when it is
//! unbound) with a copy of the socket; an accepted connection is joined only when its peer
//! address is registered *and* the registered socket itself is the connection's other end
//! (its own address is the peer's, its peer is this listener: two established connections
//! can't share those four addresses). Anything else is reset at once — including another
//! local user's socket that shares the app socket's address (both with SO_REUSEADDR) and
//! connects first; the expectation then stays for the app's own connection. Expectations
//! that no connection comes for expire.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sctrace_protocol::{relay, DnsTransport, RelayEnd, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::agent_link::{DataRoute, Handoff};
use crate::dns::{Asker, DnsResponder};
use crate::sockaddr::{canonical_addr, SockAddr};
use crate::sys::socket as sys;

/// What an arranged connection is joined to.
pub enum Arranged {
    /// An agent stream to the remote destination.
    Remote {
        /// The stream.
        stream: Stream,
        /// Called when the relayed connection ends.
        on_end: Box<dyn FnOnce() + Send>,
        /// The stream's bytes go over a data connection, made here.
        data: Option<DataRoute>,
    },
    /// The DNS responder: length-prefixed DNS messages (RFC 1035 4.2.2) for `server`.
    Dns {
        /// The nameserver the app connected to.
        server: SocketAddr,
        /// Who asked.
        asker: Asker,
    },
}

/// A connection sctrace expects: what it is joined to, and the app's socket that must be
/// its other end.
struct Expected {
    arranged: Arranged,
    app: OwnedFd,
    since: Instant,
}

/// Expected connections, by the app socket's address as a listener sees it.
type ExpectedMap = Arc<Mutex<HashMap<SocketAddr, Expected>>>;

/// How long an expectation waits for its connection (a loopback connect takes microseconds;
/// one that never comes was abandoned).
const EXPECT_FOR: Duration = Duration::from_secs(10);

/// The listeners and the connections expected on them.
pub struct TcpRelay {
    v4: SocketAddr,
    v6: Option<SocketAddr>,
    expected: ExpectedMap,
}

/// How long one DNS-over-TCP connection may sit idle.
const DNS_IDLE: Duration = Duration::from_secs(30);

impl TcpRelay {
    /// Binds the listeners (127.0.0.1, and ::1 when the machine has IPv6) and starts
    /// accepting. With `handoff` (an agent on this machine), remote connections are handed
    /// to the agent instead of relayed here.
    pub async fn start(dns: Arc<DnsResponder>, handoff: Option<Handoff>) -> io::Result<TcpRelay> {
        let expected: ExpectedMap = Arc::default();
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
    /// it) that is `app` (a copy of the app's socket), and joins it to `arranged`.
    pub fn expect(&self, peer: SocketAddr, app: OwnedFd, arranged: Arranged) {
        if let Ok(mut map) = self.expected.lock() {
            let now = Instant::now();
            map.retain(|_, e| now.duration_since(e.since) < EXPECT_FOR);
            map.insert(
                peer,
                Expected {
                    arranged,
                    app,
                    since: now,
                },
            );
        }
    }

    /// Withdraws an expectation whose connect failed.
    pub fn forget(&self, peer: SocketAddr) {
        if let Ok(mut map) = self.expected.lock() {
            map.remove(&peer);
        }
    }
}

/// Whether `app` (a copy of the app's socket) is the other end of a connection accepted
/// from `peer` on the listener at `listener`.
fn is_other_end(app: BorrowedFd<'_>, peer: SocketAddr, listener: SocketAddr) -> bool {
    let local = sys::local_addr(app)
        .ok()
        .and_then(|b| SockAddr::parse(&b))
        .and_then(|a| a.inet());
    let remote = sys::peer_addr(app)
        .ok()
        .and_then(|b| SockAddr::parse(&b))
        .and_then(|a| a.inet());
    let same = |a: Option<SocketAddr>, b: SocketAddr| {
        a.is_some_and(|a| canonical_addr(a) == canonical_addr(b))
    };
    same(local, peer) && same(remote, listener)
}

async fn accept_loop(
    listener: TcpListener,
    expected: ExpectedMap,
    dns: Arc<DnsResponder>,
    handoff: Option<Handoff>,
) {
    let Ok(listening_at) = listener.local_addr() else {
        return;
    };
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
        let arranged = expected.lock().ok().and_then(|mut map| {
            let entry = map.remove(&peer)?;
            if is_other_end(entry.app.as_fd(), peer, listening_at) {
                return Some(entry.arranged);
            }
            tracing::warn!(
                "relay: refused a connection from {peer}: not the app's socket registered there"
            );
            // The app's own connection may still come.
            map.insert(peer, entry);
            None
        });
        match arranged {
            Some(Arranged::Remote {
                stream,
                on_end,
                data: Some(route),
            }) => {
                tokio::spawn(relay_attached(conn, stream, route, on_end));
            }
            Some(Arranged::Remote {
                stream,
                on_end,
                data: None,
            }) => match &handoff {
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

/// Relays the connection over a data connection of sctrace's own for `stream` (a
/// non-blocking connect whose outcome came after its call returned: the app's socket was
/// connected here meanwhile).
async fn relay_attached(
    mut conn: TcpStream,
    stream: Stream,
    route: DataRoute,
    on_end: Box<dyn FnOnce() + Send>,
) {
    let _ = conn.set_nodelay(true);
    match route.open(stream.id()).await {
        Ok(mut data) => {
            drop(stream);
            if let Err(err) = tokio::io::copy_bidirectional(&mut conn, &mut data).await {
                tracing::debug!("relay: data connection failed: {err}");
                reset(conn);
            }
        }
        Err(err) => {
            tracing::warn!("relay: no data connection to the agent: {err}");
            reset(conn);
        }
    }
    on_end();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream as StdTcpStream;

    fn bound_reusable(addr: SocketAddr) -> socket2::Socket {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s
    }

    #[test]
    fn only_the_registered_socket_is_taken_for_its_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = listener.local_addr().unwrap();
        // The app's socket and an intruder's share one address (both SO_REUSEADDR).
        let app = bound_reusable("127.0.0.1:0".parse().unwrap());
        let shared: SocketAddr = app.local_addr().unwrap().as_socket().unwrap();
        let intruder = bound_reusable(shared);
        intruder.connect(&at.into()).unwrap();
        let (_first, from) = listener.accept().unwrap();
        assert_eq!(from, shared);
        let app_fd = OwnedFd::from(app.try_clone().unwrap());
        assert!(
            !is_other_end(app_fd.as_fd(), from, at),
            "the intruder connected first: it is not the app's socket"
        );
        drop(intruder);
        drop(_first);
        // (A fresh address: the intruder's connection holds the first in TIME_WAIT.)
        let app = bound_reusable("127.0.0.1:0".parse().unwrap());
        let app_fd = OwnedFd::from(app.try_clone().unwrap());
        let app = StdTcpStream::from({
            app.connect(&at.into()).unwrap();
            std::os::fd::OwnedFd::from(app)
        });
        let (_conn, from) = listener.accept().unwrap();
        assert!(is_other_end(app_fd.as_fd(), from, at));
        drop(app);
    }
}
