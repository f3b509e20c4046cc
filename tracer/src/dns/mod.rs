//! The DNS responder: answers the queries the app's resolver sends to the nameservers of
//! the local resolv.conf. Each query is decided on its own (the `dns` filter, and host names
//! of the outgoing filter, as mirrord does): remote queries are resolved by the agent as
//! the target would resolve them; local ones are forwarded to the nameserver the app asked.
//! Answers are kept for their TTL ([`cache`]), identical queries in flight share one
//! exchange, and an A or AAAA query whose sibling was asked before and has expired fetches
//! both at once, so the pair costs one round trip. Answers are remembered (for host-name
//! filter rules) and each query is an event.

pub mod cache;
#[cfg(test)]
pub mod fake_agent;
pub mod flights;
pub mod names;
pub mod resolv_conf;
pub mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hickory_proto::op::Message;
use sctrace_filter::{OutgoingFilter, Route};
use sctrace_protocol::{DnsTransport, SessionHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::events::{Event, EventSink};
use crate::remote::routes::RouteSources;
use cache::{AnswerCache, Key, Lookup};
use flights::Flights;
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
    names: Arc<NameCache>,
    events: EventSink,
    sources: Arc<Sources>,
    routes: Arc<RouteSources>,
}

impl DnsResponder {
    /// A responder deciding with `filter` and resolving remotely through `agent`; the
    /// target's routes to the addresses of remote answers are asked of `routes` at once.
    pub fn new(
        filter: Arc<OutgoingFilter>,
        agent: SessionHandle,
        names: Arc<NameCache>,
        routes: Arc<RouteSources>,
        events: EventSink,
    ) -> Self {
        Self {
            filter,
            names,
            events,
            routes,
            sources: Arc::new(Sources {
                agent,
                caching: true,
                cache: Mutex::default(),
                in_flight: Flights::default(),
            }),
        }
    }

    /// The same responder, without the answer cache when `caching` is false: then every
    /// query is one exchange of its own, as the app sent it (`SCTRACE_DNS_CACHE=0`).
    pub fn with_caching(mut self, caching: bool) -> Self {
        if let Some(sources) = Arc::get_mut(&mut self.sources) {
            sources.caching = caching;
        }
        self
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
        let asked = self.asked(query, server, transport);
        let answer = match asked.key.clone() {
            Some(key) => self.sources.resolve(key, query, asked.to).await,
            None => self.sources.fetch(query, asked.to).await.map(|f| f.bytes),
        };
        self.answered(asked, answer, asker)
    }

    /// The answer to `query` if the cache has it, found without waiting (the same answer,
    /// event and bookkeeping as [`DnsResponder::answer`] gives it); `None` when it must be
    /// asked for. A relay answers a repeated lookup this way on the spot, with no task.
    pub fn answer_cached(
        &self,
        query: &[u8],
        server: SocketAddr,
        transport: DnsTransport,
        asker: &Asker,
    ) -> Option<Vec<u8>> {
        let asked = self.asked(query, server, transport);
        let answer = self.sources.cached(asked.key.as_ref()?, query)?;
        self.answered(asked, Some(answer), asker)
    }

    /// What a query asks, where it goes, and its cache key (when it is cacheable).
    fn asked(&self, query: &[u8], server: SocketAddr, transport: DnsTransport) -> Asked {
        let message = wire::parse_query_message(query);
        let parsed = message.as_ref().map_or(Parsed::Other, wire::question);
        let (route, rule) = match &parsed {
            Parsed::Query { name, .. } => {
                let decision = self.filter.decide_dns(name);
                (decision.route, Some(decision.rule.to_string()))
            }
            // Not a query sctrace understands: the app's own nameserver deals with it.
            Parsed::Other => (Route::Local, None),
        };
        let key = message
            .as_ref()
            .filter(|_| self.sources.caching)
            .and_then(|m| Key::of(m, query, route, server, transport));
        Asked {
            parsed,
            rule,
            key,
            to: Upstream {
                route,
                server,
                transport,
            },
        }
    }

    /// Records what `answer` says (names, routes to ask, the event) and hands it on.
    fn answered(&self, asked: Asked, answer: Option<Vec<u8>>, asker: &Asker) -> Option<Vec<u8>> {
        let Asked {
            parsed, rule, to, ..
        } = asked;
        let summary = answer.as_deref().map(wire::summarize);
        if let (Parsed::Query { name, .. }, Some(Summary { addrs, .. })) = (&parsed, &summary) {
            self.names
                .record(name, addrs.iter().copied(), to.route == Route::Remote);
            if to.route == Route::Remote {
                self.prefetch_routes(addrs);
            }
        }
        if self.events.enabled() {
            self.events.record(dns_event(
                &parsed,
                to.server,
                to.route,
                rule,
                summary.as_ref(),
                asker,
            ));
        }
        answer
    }
}

/// One query, read: its question, the filter's rule, its cache key, where it goes.
struct Asked {
    parsed: Parsed,
    rule: Option<String>,
    key: Option<Key>,
    to: Upstream,
}

impl DnsResponder {
    /// Asks for the target's routes to `addrs` (those whose route probes would go to the
    /// target), which glibc's `getaddrinfo` probes one by one right after the lookup.
    fn prefetch_routes(&self, addrs: &[std::net::IpAddr]) {
        for &ip in addrs {
            let names = self.names.hostnames(ip);
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            if self.filter.decide_probe(ip, &names).route == Route::Remote {
                self.routes.prefetch(ip);
            }
        }
    }
}

/// Where a query is answered: the agent (remote) or the local nameserver `server` the app
/// asked, over the app's transport.
#[derive(Debug, Clone, Copy)]
struct Upstream {
    route: Route,
    server: SocketAddr,
    transport: DnsTransport,
}

/// The answers' sources: the agent and local nameservers, the cache in front of them, and
/// the exchanges in flight.
struct Sources {
    agent: SessionHandle,
    /// Whether answers are cached and exchanges shared at all.
    caching: bool,
    cache: Mutex<AnswerCache>,
    /// Exchanges under way, and the answer each gave (under the id of the query sent).
    in_flight: Flights<Key, Option<Vec<u8>>>,
}

impl Sources {
    /// The answer to the cacheable `query` (with `key`): from the cache, else from the
    /// exchange in flight for the same key, else from a new one.
    async fn resolve(self: &Arc<Self>, key: Key, query: &[u8], to: Upstream) -> Option<Vec<u8>> {
        let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
        if let Some(answer) = self.cached(&key, query) {
            return Some(answer);
        }
        self.refresh_sibling(&key, to, Instant::now());
        let mut answer = self.join(key, query.to_vec(), to).await?;
        // Maybe another query's exchange: the same answer, under this query's id (the
        // header's first two bytes, RFC 1035 §4.1.1).
        answer.get_mut(..2)?.copy_from_slice(&id.to_be_bytes());
        Some(answer)
    }

    /// The live answer kept for `key`, under the id of `query`.
    fn cached(&self, key: &Key, query: &[u8]) -> Option<Vec<u8>> {
        let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
        match self.cache.lock().ok()?.get(key, id, Instant::now()) {
            Lookup::Hit(answer) => Some(answer),
            Lookup::Expired | Lookup::Miss => None,
        }
    }

    /// When `key` is an A (AAAA) query and its AAAA (A) sibling was asked and cached before
    /// but has expired, fetches the sibling now too: a resolver that asks for the pair one
    /// after the other then finds the second in the cache or in flight.
    fn refresh_sibling(self: &Arc<Self>, key: &Key, to: Upstream, now: Instant) {
        let Some(sibling) = key.sibling() else {
            return;
        };
        let expired = self
            .cache
            .lock()
            .is_ok_and(|cache| cache.expired(&sibling, now));
        if !expired || self.in_flight.flying(&sibling) {
            return;
        }
        // The app's query with the other type, under a random id (Message::query() draws
        // one), as a resolver would send it.
        let id = Message::query().metadata.id;
        let bytes = sibling.query(id);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.join(sibling, bytes, to).await;
        });
    }

    /// The exchange for `key`: joins the one in flight, or makes it with `query` and caches
    /// its answer.
    async fn join(self: &Arc<Self>, key: Key, query: Vec<u8>, to: Upstream) -> Option<Vec<u8>> {
        self.in_flight
            .join(key.clone(), || async {
                let fetched = self.fetch(&query, to).await;
                if let Some(f) = fetched.as_ref().filter(|f| f.from_nameserver) {
                    if let Ok(mut cache) = self.cache.lock() {
                        cache.put(key, &f.bytes, Instant::now());
                    }
                }
                fetched.map(|f| f.bytes)
            })
            .await
    }

    /// One exchange with the agent or the local nameserver, without the cache.
    async fn fetch(&self, query: &[u8], to: Upstream) -> Option<Answer> {
        match to.route {
            Route::Remote => match self
                .agent
                .dns_query(Bytes::copy_from_slice(query), to.transport)
                .await
            {
                Ok(answer) => Some(Answer {
                    bytes: answer.to_vec(),
                    from_nameserver: true,
                }),
                Err(err) => {
                    tracing::debug!("remote DNS query failed: {err}");
                    wire::servfail(query).map(|bytes| Answer {
                        bytes,
                        from_nameserver: false,
                    })
                }
            },
            Route::Local => forward(query, to.server, to.transport)
                .await
                .map(|bytes| Answer {
                    bytes,
                    from_nameserver: true,
                }),
        }
    }
}

/// An answer, and whether a nameserver gave it (not made up by sctrace for a failure).
struct Answer {
    bytes: Vec<u8>,
    from_nameserver: bool,
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

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    use sctrace_filter::config::NetworkConfig;

    fn responder(agent: SessionHandle) -> DnsResponder {
        DnsResponder::new(
            Arc::new(OutgoingFilter::new(&NetworkConfig::default())),
            agent.clone(),
            Arc::default(),
            Arc::new(RouteSources::new(agent)),
            EventSink::disabled(),
        )
    }

    fn query(id: u16, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(
            Name::from_ascii("uwu-service.default.svc.cluster.local.").unwrap(),
            qtype,
        ));
        m.to_vec().unwrap()
    }

    fn asker() -> Asker {
        Asker {
            pid: 1,
            tid: 1,
            comm: "test".into(),
            fd: 3,
            family: "inet".into(),
            sock_type: "dgram".into(),
        }
    }

    async fn ask(dns: &DnsResponder, id: u16, qtype: RecordType) -> Message {
        let server = "127.0.0.53:53".parse().unwrap();
        let bytes = dns
            .answer(&query(id, qtype), server, DnsTransport::Udp, &asker())
            .await
            .expect("an answer");
        let answer = Message::from_vec(&bytes).unwrap();
        assert_eq!(answer.metadata.id, id, "answered under the asker's id");
        answer
    }

    fn asked(asked: &fake_agent::Asked) -> (usize, usize) {
        let (a, aaaa, _) = asked.counts();
        (a, aaaa)
    }

    #[tokio::test]
    async fn identical_queries_share_one_exchange_and_repeats_come_from_the_cache() {
        let (agent, counts) = fake_agent::start(30, Duration::from_millis(100)).await;
        let dns = responder(agent);
        let (one, two) = tokio::join!(ask(&dns, 1, RecordType::A), ask(&dns, 2, RecordType::A));
        assert_eq!(one.answers, two.answers);
        assert_eq!(asked(&counts), (1, 0), "one exchange for both");
        let three = ask(&dns, 3, RecordType::A).await;
        assert_eq!(three.answers, one.answers);
        assert_eq!(asked(&counts), (1, 0), "the repeat came from the cache");
        ask(&dns, 4, RecordType::AAAA).await;
        assert_eq!(
            asked(&counts),
            (1, 1),
            "AAAA, never asked before, is fetched"
        );
        assert_eq!(dns.sources.in_flight.count(), 0);
    }

    #[tokio::test]
    async fn a_cached_answer_is_found_without_waiting_and_only_then() {
        let (agent, counts) = fake_agent::start(30, Duration::ZERO).await;
        let dns = responder(agent);
        let server = "127.0.0.53:53".parse().unwrap();
        let found = dns.answer_cached(
            &query(1, RecordType::A),
            server,
            DnsTransport::Udp,
            &asker(),
        );
        assert_eq!(found, None, "never asked: it must be fetched");
        assert_eq!(asked(&counts), (0, 0), "and nothing was fetched");
        ask(&dns, 2, RecordType::A).await;
        let found = dns
            .answer_cached(
                &query(3, RecordType::A),
                server,
                DnsTransport::Udp,
                &asker(),
            )
            .expect("cached");
        let answer = Message::from_vec(&found).unwrap();
        assert_eq!(answer.metadata.id, 3, "under the asker's id");
        assert_eq!(answer.answers.len(), 1);
        assert_eq!(asked(&counts), (1, 0));
        // The answer asked for its addresses' routes; once told, they are known at once.
        let route = dns.routes.source("198.18.0.10:0".parse().unwrap()).await;
        assert_eq!(
            dns.routes.cached("198.18.0.10:80".parse().unwrap()),
            Some(route),
            "the route an answer asked for is known without waiting"
        );
        let without = responder(fake_agent::start(30, Duration::ZERO).await.0).with_caching(false);
        ask(&without, 4, RecordType::A).await;
        let found = without.answer_cached(
            &query(5, RecordType::A),
            server,
            DnsTransport::Udp,
            &asker(),
        );
        assert_eq!(found, None, "SCTRACE_DNS_CACHE=0: nothing is kept");
    }

    #[tokio::test]
    async fn without_caching_each_query_is_its_own_exchange() {
        let (agent, counts) = fake_agent::start(30, Duration::from_millis(50)).await;
        let dns = responder(agent).with_caching(false);
        let (one, two) = tokio::join!(ask(&dns, 1, RecordType::A), ask(&dns, 2, RecordType::A));
        assert_eq!(one.answers, two.answers);
        ask(&dns, 3, RecordType::A).await;
        assert_eq!(asked(&counts), (3, 0));
    }

    #[tokio::test]
    async fn transports_and_spellings_are_answered_apart_as_asked() {
        let (agent, counts) = fake_agent::start(30, Duration::ZERO).await;
        let dns = responder(agent);
        let server = "127.0.0.53:53".parse().unwrap();
        ask(&dns, 1, RecordType::A).await;
        let tcp = dns
            .answer(
                &query(2, RecordType::A),
                server,
                DnsTransport::Tcp,
                &asker(),
            )
            .await
            .expect("an answer over TCP");
        assert_eq!(Message::from_vec(&tcp).unwrap().metadata.id, 2);
        assert_eq!(
            asked(&counts),
            (2, 0),
            "TCP is not answered from UDP's answer"
        );

        let mut shouted = Message::from_vec(&query(3, RecordType::A)).unwrap();
        shouted.queries[0].name =
            Name::from_ascii("UWU-Service.default.svc.cluster.local.").unwrap();
        for id in [3, 4] {
            shouted.metadata.id = id;
            let bytes = dns
                .answer(
                    &shouted.to_vec().unwrap(),
                    server,
                    DnsTransport::Udp,
                    &asker(),
                )
                .await
                .expect("an answer");
            let answer = Message::from_vec(&bytes).unwrap();
            assert_eq!(answer.metadata.id, id);
            assert_eq!(
                answer.queries[0].name.to_string(),
                "UWU-Service.default.svc.cluster.local.",
                "the question as the app spelled it"
            );
        }
        assert_eq!(
            asked(&counts),
            (3, 0),
            "one more for the other spelling, then cached"
        );
    }

    #[tokio::test]
    async fn uncacheable_answers_are_fetched_each_time_without_the_sibling() {
        let (agent, counts) = fake_agent::start(0, Duration::ZERO).await;
        let dns = responder(agent);
        for id in 1..=3 {
            ask(&dns, id, RecordType::A).await;
        }
        assert_eq!(
            asked(&counts),
            (3, 0),
            "TTL 0: nothing kept, nothing fetched besides"
        );
    }

    #[tokio::test]
    async fn an_expired_pair_is_fetched_again_together() {
        let (agent, counts) = fake_agent::start(1, Duration::from_millis(20)).await;
        let dns = responder(agent);
        ask(&dns, 1, RecordType::A).await;
        ask(&dns, 2, RecordType::AAAA).await;
        assert_eq!(asked(&counts), (1, 1));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // A resolver asking one after the other: the A query fetches the AAAA sibling too,
        // and the AAAA query finds it in flight or cached.
        ask(&dns, 3, RecordType::A).await;
        ask(&dns, 4, RecordType::AAAA).await;
        assert_eq!(asked(&counts), (2, 2));
    }

    #[tokio::test]
    async fn the_routes_of_a_remote_answer_are_asked_at_once_and_shared() {
        let (agent, counts) = fake_agent::start(30, Duration::from_millis(50)).await;
        let dns = responder(agent);
        ask(&dns, 1, RecordType::A).await;
        // The sorting probe right after the lookup joins the route query under way.
        let source = dns.routes.source("198.18.0.10:0".parse().unwrap()).await;
        assert_eq!(source, Ok("198.18.0.1".parse().unwrap()));
        assert_eq!(
            counts.counts().2,
            1,
            "one route query, asked with the answer"
        );
        ask(&dns, 2, RecordType::A).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(counts.counts().2, 1, "known: not asked again");
    }
}
