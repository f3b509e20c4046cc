//! The DNS responder: answers the queries the app's resolver sends to the nameservers of
//! the local resolv.conf. Each query is decided on its own (the `dns` filter, and host names
//! of the outgoing filter, as mirrord does): remote queries are resolved by the agent as
//! the target would resolve them; local ones are forwarded to the nameserver the app asked.
//! Answers are remembered (for host-name filter rules) and each query is an event.

pub mod names;
pub mod resolv_conf;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sctrace_filter::{OutgoingFilter, Route};
use sctrace_protocol::{DnsTransport, SessionHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::events::{Event, EventSink};
use names::NameCache;
use wire::{Parsed, Summary};

/// Who asked: the app socket the query came from, for the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asker {
    /// Process id.
    pub pid: i32,
    /// Thread id that set up the socket.
    pub tid: i32,
    /// Command name.
    pub comm: String,
    /// The app's fd of the socket.
    pub fd: i32,
    /// The socket's family and type names.
    pub family: String,
    /// `dgram` or `stream`.
    pub sock_type: String,
}

/// How long a local nameserver gets to answer a forwarded query. The app's resolver has
/// its own timeout and retries; a query that gets no answer is simply not answered.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers DNS queries for the app.
pub struct DnsResponder {
    filter: Arc<OutgoingFilter>,
    agent: SessionHandle,
    names: Arc<NameCache>,
    events: EventSink,
}

impl DnsResponder {
    /// A responder deciding with `filter` and resolving remotely through `agent`.
    pub fn new(
        filter: Arc<OutgoingFilter>,
        agent: SessionHandle,
        names: Arc<NameCache>,
        events: EventSink,
    ) -> Self {
        Self {
            filter,
            agent,
            names,
            events,
        }
    }

    /// Answers `query` (DNS wire format), which the app sent to `server` over `transport`.
    /// `None`: no answer (the app's resolver times out and retries, as with a lost packet).
    pub async fn answer(
        &self,
        query: &[u8],
        server: SocketAddr,
        transport: DnsTransport,
        asker: &Asker,
    ) -> Option<Vec<u8>> {
        let parsed = wire::parse_query(query);
        let (route, rule) = match &parsed {
            Parsed::Query { name, .. } => {
                let decision = self.filter.decide_dns(name);
                (decision.route, Some(decision.rule.to_string()))
            }
            // Not a query sctrace understands: the app's own nameserver deals with it.
            Parsed::Other => (Route::Local, None),
        };
        let answer = match route {
            Route::Remote => match self
                .agent
                .dns_query(Bytes::copy_from_slice(query), transport)
                .await
            {
                Ok(answer) => Some(answer.to_vec()),
                Err(err) => {
                    tracing::debug!("remote DNS query failed: {err}");
                    wire::servfail(query)
                }
            },
            Route::Local => forward(query, server, transport).await,
        };
        let summary = answer.as_deref().map(wire::summarize);
        if let (Parsed::Query { name, .. }, Some(Summary { addrs, .. })) = (&parsed, &summary) {
            self.names
                .record(name, addrs.iter().copied(), route == Route::Remote);
        }
        if self.events.enabled() {
            self.events.record(dns_event(
                &parsed,
                server,
                route,
                rule,
                summary.as_ref(),
                asker,
            ));
        }
        answer
    }
}

fn dns_event(
    parsed: &Parsed,
    server: SocketAddr,
    route: Route,
    rule: Option<String>,
    summary: Option<&Summary>,
    asker: &Asker,
) -> Event {
    let (name, qtype) = match parsed {
        Parsed::Query { name, qtype } => (name.clone(), qtype.clone()),
        Parsed::Other => ("(not a query)".to_string(), String::new()),
    };
    Event {
        ts: Event::now(),
        pid: asker.pid,
        tid: asker.tid,
        comm: asker.comm.clone(),
        syscall: "dns",
        fd: asker.fd,
        family: asker.family.clone(),
        sock_type: asker.sock_type.clone(),
        addr: server.to_string(),
        decision: match route {
            Route::Local => "local",
            Route::Remote => "remote",
        },
        rule,
        result: summary
            .map(|s| s.result.clone())
            .unwrap_or_else(|| "ETIMEDOUT".into()),
        name: Some(name),
        qtype: Some(qtype),
        answers: Some(summary.map(|s| s.answers.clone()).unwrap_or_default()),
        ..Event::default()
    }
}

/// Sends `query` to the local nameserver `server` from sctrace itself (sctrace's own
/// sockets are not intercepted) and returns its answer.
async fn forward(query: &[u8], server: SocketAddr, transport: DnsTransport) -> Option<Vec<u8>> {
    let attempt = async {
        match transport {
            DnsTransport::Udp => {
                let bind: SocketAddr = if server.is_ipv4() {
                    "0.0.0.0:0".parse().ok()?
                } else {
                    "[::]:0".parse().ok()?
                };
                let sock = UdpSocket::bind(bind).await.ok()?;
                sock.connect(server).await.ok()?;
                sock.send(query).await.ok()?;
                let mut buf = vec![0u8; 65_535];
                loop {
                    let n = sock.recv(&mut buf).await.ok()?;
                    // Skip stray datagrams that don't answer this query's id.
                    if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
                        buf.truncate(n);
                        return Some(buf);
                    }
                }
            }
            DnsTransport::Tcp => {
                let mut stream = TcpStream::connect(server).await.ok()?;
                let len = u16::try_from(query.len()).ok()?;
                stream.write_all(&len.to_be_bytes()).await.ok()?;
                stream.write_all(query).await.ok()?;
                let len = stream.read_u16().await.ok()?;
                let mut buf = vec![0u8; usize::from(len)];
                stream.read_exact(&mut buf).await.ok()?;
                Some(buf)
            }
        }
    };
    tokio::time::timeout(LOCAL_TIMEOUT, attempt)
        .await
        .ok()
        .flatten()
}
