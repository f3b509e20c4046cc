//! Answers the application's DNS queries as the target would: the target's resolv.conf
//! (search list, ndots, nameservers, timeouts) applied to the name the application asked,
//! and the answer presented under that name.

mod answer;
pub mod resolv_conf;
mod upstream;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::serialize::binary::DecodeError;
use hickory_proto::ProtoError;
use sctrace_protocol::{DnsFailureKind, DnsRequest, DnsTransport};

use crate::netns::NetnsSockets;
use crate::target::ResolvConfFile;
use resolv_conf::ResolvConf;
use upstream::UpstreamError;

/// Why a query got no DNS answer at all. The message goes back to sctrace as it is.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The query is not a DNS message.
    #[error("the query is not a usable DNS message: {0}")]
    Decode(#[source] DecodeError),
    /// The query is a response.
    #[error("the query is not a usable DNS message: it is a response")]
    Response,
    /// No name to search was left (the search list gave no candidate).
    #[error("the query is not a usable DNS message: no name to search")]
    NoName,
    /// The answer could not be encoded.
    #[error("the query is not a usable DNS message: cannot encode the answer: {0}")]
    Encode(#[source] ProtoError),
    /// No nameserver answered.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl ResolveError {
    fn kind(&self) -> DnsFailureKind {
        match self {
            ResolveError::Decode(_)
            | ResolveError::Response
            | ResolveError::NoName
            | ResolveError::Encode(_) => DnsFailureKind::BadQuery,
            ResolveError::Upstream(UpstreamError::Timeout { .. }) => DnsFailureKind::Timeout,
            ResolveError::Upstream(UpstreamError::Unreachable { .. }) => {
                DnsFailureKind::Unreachable
            }
        }
    }
}

/// The target's resolver.
pub struct Resolver {
    sockets: NetnsSockets,
    conf: ConfFile,
    /// Next nameserver to start at, with `options rotate`.
    rotation: AtomicUsize,
    ids: QueryIds,
}

impl Resolver {
    /// A resolver using the target's resolv.conf `file` (re-read when it changes) and
    /// sockets in the target namespace.
    pub fn new(sockets: NetnsSockets, file: &ResolvConfFile) -> Resolver {
        Resolver {
            sockets,
            conf: ConfFile::new(file),
            rotation: AtomicUsize::new(0),
            ids: QueryIds::default(),
        }
    }

    /// The target's resolver configuration, as `search`/`options` lines.
    pub fn resolver_lines(&self) -> String {
        self.conf.current().resolver_lines()
    }

    /// Serves one query from the session.
    pub async fn serve(&self, mut request: DnsRequest) {
        let query = request.message().clone();
        let transport = request.transport();
        let result = tokio::select! {
            result = self.resolve(&query, transport) => result,
            () = request.cancelled() => return,
        };
        match result {
            Ok(answer) => {
                if let Err(e) = request.answer(answer) {
                    tracing::debug!(error = %e, "DNS answer not delivered");
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "DNS query failed");
                request.fail(e.kind(), &e.to_string());
            }
        }
    }

    /// Resolves a query in wire format, returning the response in wire format.
    pub async fn resolve(
        &self,
        wire: &[u8],
        transport: DnsTransport,
    ) -> Result<Bytes, ResolveError> {
        let original = Message::from_vec(wire).map_err(ResolveError::Decode)?;
        if original.metadata.message_type != MessageType::Query {
            return Err(ResolveError::Response);
        }
        if original.metadata.op_code != OpCode::Query || original.queries.len() != 1 {
            // Not a plain question: say so the way a server would.
            let mut reply = Message::error_msg(
                original.metadata.id,
                original.metadata.op_code,
                if original.queries.len() != 1 {
                    ResponseCode::FormErr
                } else {
                    ResponseCode::NotImp
                },
            );
            reply.queries = original.queries.clone();
            return encode(&reply, &original, transport);
        }
        let conf = self.conf.current();
        let start_at = if conf.rotate {
            self.rotation.fetch_add(1, Ordering::Relaxed) % conf.nameservers.len().max(1)
        } else {
            0
        };
        let asked = original.queries[0].name.clone();
        let candidates = conf.candidates(&asked);
        let mut outcome = answer::Search::default();
        for candidate in &candidates {
            let mut query = original.clone();
            query.metadata.id = self.ids.next();
            query.queries[0].name = candidate.clone();
            let reply = upstream::exchange(&self.sockets, &conf, &query, start_at).await?;
            tracing::debug!(
                name = %candidate,
                qtype = %original.queries[0].query_type,
                rcode = %reply.metadata.response_code,
                answers = reply.answers.len(),
                "upstream answer"
            );
            if outcome.record(candidate, reply) {
                break;
            }
        }
        let (candidate, reply) = outcome.finish().ok_or(ResolveError::NoName)?;
        let presented = answer::present(&original, &candidate, reply);
        encode(&presented, &original, transport)
    }
}

/// Encodes `reply`, truncating it when it is larger than the application's transport
/// carries (512 bytes, or the query's EDNS payload size, over UDP): TC set, and as many whole
/// answer records kept as fit, as DNS servers do — resolvers without a TCP fallback (musl
/// before 1.2.4) use those.
fn encode(
    reply: &Message,
    original: &Message,
    transport: DnsTransport,
) -> Result<Bytes, ResolveError> {
    let limit = match transport {
        DnsTransport::Tcp => 65_535,
        DnsTransport::Udp => original
            .edns
            .as_ref()
            .map_or(512, |e| usize::from(e.max_payload()).max(512)),
    };
    let bytes = reply.to_vec().map_err(ResolveError::Encode)?;
    if bytes.len() <= limit {
        return Ok(Bytes::from(bytes));
    }
    let mut partial = reply.clone();
    partial.metadata.truncation = true;
    partial.authorities.clear();
    partial.additionals.clear();
    while !partial.answers.is_empty() {
        let bytes = partial.to_vec().map_err(ResolveError::Encode)?;
        if bytes.len() <= limit {
            return Ok(Bytes::from(bytes));
        }
        partial.answers.pop();
    }
    let truncated = reply.truncate().to_vec().map_err(ResolveError::Encode)?;
    Ok(Bytes::from(truncated))
}

/// The target's resolv.conf, re-read when its modification time changes.
struct ConfFile {
    file: ResolvConfFile,
    cached: Mutex<(Option<SystemTime>, Arc<ResolvConf>)>,
}

impl ConfFile {
    fn new(file: &ResolvConfFile) -> ConfFile {
        let conf_file = ConfFile {
            file: file.clone(),
            cached: Mutex::new((None, Arc::new(ResolvConf::default()))),
        };
        let conf = conf_file.current();
        tracing::info!(
            file = %file,
            nameservers = ?conf.nameservers,
            search = ?conf.search.iter().map(|n| n.to_ascii()).collect::<Vec<_>>(),
            ndots = conf.ndots,
            "target resolver configuration"
        );
        conf_file
    }

    fn current(&self) -> Arc<ResolvConf> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        // Nothing of the file's contents is logged: the target wrote it.
        match self.file.open() {
            Ok((file, mtime)) if mtime.is_none() || cached.0 != mtime => {
                match ResolvConfFile::read(file) {
                    Ok(bytes) => {
                        let conf = ResolvConf::parse(&String::from_utf8_lossy(&bytes));
                        for skipped in &conf.skipped {
                            tracing::warn!(file = %self.file, line = skipped.line, why = skipped.why, "ignored a resolv.conf line");
                        }
                        *cached = (mtime, Arc::new(conf));
                    }
                    Err(e) => {
                        tracing::warn!(file = %self.file, error = %e, "cannot read resolv.conf; keeping the last one");
                    }
                }
            }
            Ok(_) => {}
            Err(e) if cached.0.is_none() => {
                if e.is_missing() {
                    tracing::warn!(file = %self.file, "no resolv.conf; using 127.0.0.1 as glibc would");
                } else {
                    let error = tracing_error(&e);
                    tracing::warn!(file = %self.file, %error, "unusable resolv.conf; using 127.0.0.1 as glibc would");
                }
                cached.0 = Some(SystemTime::UNIX_EPOCH);
            }
            Err(_) => {}
        }
        cached.1.clone()
    }
}

/// An error and its cause, for a log line.
fn tracing_error(e: &dyn std::error::Error) -> String {
    match e.source() {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Unpredictable query ids for upstream queries (std's randomly keyed hasher over a
/// counter), so that off-path replies are unlikely to match.
struct QueryIds {
    keys: RandomState,
    counter: AtomicU64,
}

impl Default for QueryIds {
    fn default() -> QueryIds {
        QueryIds {
            keys: RandomState::new(),
            counter: AtomicU64::new(0),
        }
    }
}

impl QueryIds {
    fn next(&self) -> u16 {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.keys.hash_one(n) as u16
    }
}
