//! One DNS exchange with the target's nameservers, from sockets inside the target namespace:
//! UDP first (a connected socket, so only the server's own reply is accepted), TCP when the
//! reply is truncated or `use-vc` is set; nameservers in order, for the configured attempts.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::Message;
use socket2::{Domain, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dns::resolv_conf::ResolvConf;
use crate::netns::NetnsSockets;

/// Why no nameserver gave an answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Every try timed out.
    #[error("no nameserver answered ({tries} tries, {timeout:?} each)")]
    Timeout {
        /// Tries made.
        tries: usize,
        /// Time allowed per try.
        timeout: Duration,
    },
    /// Every nameserver failed otherwise (refused the connection, unreachable...).
    #[error("no nameserver reachable; last error from {server}")]
    Unreachable {
        /// The last server tried.
        server: SocketAddr,
        /// Its error.
        #[source]
        source: io::Error,
    },
}

/// Sends `query` (whose id and question identify the reply) to the nameservers of `conf`.
pub async fn exchange(
    sockets: &NetnsSockets,
    conf: &ResolvConf,
    query: &Message,
    start_at: usize,
) -> Result<Message, UpstreamError> {
    let wire = query.to_vec().map_err(|e| UpstreamError::Unreachable {
        server: SocketAddr::from(([0, 0, 0, 0], 53)),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    let servers: Vec<SocketAddr> = conf
        .nameservers
        .iter()
        .map(|ip| SocketAddr::new(*ip, 53))
        .collect();
    let mut tries = 0;
    let mut last_error: Option<(SocketAddr, io::Error)> = None;
    let mut any_timeout = false;
    for _ in 0..conf.attempts {
        for i in 0..servers.len() {
            let server = servers[(start_at + i) % servers.len()];
            tries += 1;
            let result = if conf.use_vc {
                tcp(sockets, server, &wire, query, conf.timeout).await
            } else {
                match udp(sockets, server, &wire, query, conf.timeout).await {
                    Ok(reply) if reply.metadata.truncation => {
                        // The full answer only fits over TCP; if TCP fails, the truncated
                        // reply is still an answer (as glibc returns it).
                        match tcp(sockets, server, &wire, query, conf.timeout).await {
                            Ok(full) => Ok(full),
                            Err(e) => {
                                tracing::debug!(%server, error = %e, "TCP retry of a truncated answer failed");
                                Ok(reply)
                            }
                        }
                    }
                    other => other,
                }
            };
            match result {
                Ok(reply) => return Ok(reply),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => any_timeout = true,
                Err(e) => {
                    tracing::debug!(%server, error = %e, "nameserver failed");
                    last_error = Some((server, e));
                }
            }
        }
    }
    match last_error {
        Some((server, source)) if !any_timeout => {
            Err(UpstreamError::Unreachable { server, source })
        }
        _ => Err(UpstreamError::Timeout {
            tries,
            timeout: conf.timeout,
        }),
    }
}

fn domain(ip: IpAddr) -> Domain {
    match ip {
        IpAddr::V4(_) => Domain::IPV4,
        IpAddr::V6(_) => Domain::IPV6,
    }
}

/// Whether `reply` answers `query`: same id, a response, same question.
fn answers(query: &Message, reply: &Message) -> bool {
    reply.metadata.id == query.metadata.id
        && reply.metadata.message_type == hickory_proto::op::MessageType::Response
        && (reply.queries.is_empty()
            || (reply.queries.len() == query.queries.len()
                && reply.queries.iter().zip(&query.queries).all(|(a, b)| {
                    a.query_type == b.query_type
                        && a.query_class == b.query_class
                        && a.name.eq_ignore_root(&b.name)
                })))
}

async fn udp(
    sockets: &NetnsSockets,
    server: SocketAddr,
    wire: &[u8],
    query: &Message,
    timeout: Duration,
) -> io::Result<Message> {
    let socket = sockets.socket(domain(server.ip()), Type::DGRAM).await?;
    let socket = tokio::net::UdpSocket::from_std(socket.into())?;
    socket.connect(server).await?;
    socket.send(wire).await?;
    let mut buf = vec![0u8; 65_535];
    tokio::time::timeout(timeout, async {
        loop {
            let n = socket.recv(&mut buf).await?;
            // Anything that is not the reply (late answers to earlier tries, garbage) is
            // skipped; the connected socket already filters other sources.
            if let Ok(reply) = Message::from_vec(&buf[..n]) {
                if answers(query, &reply) {
                    return Ok(reply);
                }
            }
        }
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

async fn tcp(
    sockets: &NetnsSockets,
    server: SocketAddr,
    wire: &[u8],
    query: &Message,
    timeout: Duration,
) -> io::Result<Message> {
    let len = u16::try_from(wire.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too long"))?;
    tokio::time::timeout(timeout, async {
        let socket = sockets.socket(domain(server.ip()), Type::STREAM).await?;
        let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
        let mut stream = socket.connect(server).await?;
        let mut out = Vec::with_capacity(wire.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(wire);
        stream.write_all(&out).await?;
        loop {
            let n = stream.read_u16().await? as usize;
            let mut buf = vec![0u8; n];
            stream.read_exact(&mut buf).await?;
            let reply = Message::from_vec(&buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if answers(query, &reply) {
                return Ok(reply);
            }
        }
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}
