//! The answer cache: answers kept for their TTL, as a caching resolver between the app and
//! the nameserver that answered would keep them, so that a repeated lookup costs no round
//! trip to the agent (or to the local nameserver).
//!
//! - **Keys** are the whole query except its id: the question as spelled (name, type, class),
//!   the flags that shape an answer (RD, CD, AD), the EDNS record (payload size, DO bit,
//!   options) and the transport — so a cached answer was made for a query identical to the
//!   one it answers, truncation included — and where the query went: the agent (remote) or
//!   the local nameserver it was sent to (local).
//! - **Lifetimes** follow the answer: the smallest TTL of its records (RFC 1035 §3.2.1);
//!   NXDOMAIN and NODATA the SOA's `min(TTL, MINIMUM)` (RFC 2308 §5; none without an SOA);
//!   SERVFAIL and truncated answers at most [`SHORT`] (RFC 2308 §7.1 allows five minutes).
//!   A TTL of 0 is never cached. Lifetimes are capped ([`MAX_TTL`], [`MAX_NEGATIVE_TTL`]).
//! - **Served** answers are the cached one with the query's id and every TTL lowered by the
//!   whole seconds it has been kept, as a caching resolver counts them down; nothing else
//!   differs. An answer is cached only if hickory-proto encodes it again byte for byte, so
//!   that holds for whatever record types it carries.
//! - **Bounded**: at most [`MAX_ENTRIES`] answers and [`MAX_BYTES`] of them; the oldest go
//!   first. Expired entries stay until then: they tell which questions were asked (and
//!   cacheable) before, which the responder uses to refresh an A/AAAA pair together.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;
use sctrace_filter::Route;
use sctrace_protocol::DnsTransport;

/// How long a SERVFAIL or a truncated answer is kept at most.
pub const SHORT: Duration = Duration::from_secs(2);
/// Longest lifetime of a positive answer (its TTLs still count down from the target's).
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// Longest lifetime of a negative answer (NXDOMAIN, NODATA).
pub const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(300);
/// Answers kept at most.
pub const MAX_ENTRIES: usize = 4096;
/// Bytes of answers (as encoded) kept at most.
pub const MAX_BYTES: usize = 4 << 20;

/// What a cached answer answers: everything in a query but its id, and where it went.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The agent (`None`), or the local nameserver the query was forwarded to.
    local_server: Option<SocketAddr>,
    tcp: bool,
    /// The question as encoded: name as spelled, type, class.
    question: Vec<u8>,
    /// RD, CD and AD of the query.
    flags: u8,
    /// The query's EDNS record as encoded, if it has one.
    edns: Option<Vec<u8>>,
    /// The question's type, for the A/AAAA sibling.
    qtype: RecordType,
}

impl Key {
    /// The key of `query` (a parsed query message), decided `route`, sent to `server` over
    /// `transport`; `None` for a query whose answer is not cached: not a standard query
    /// with exactly one question, or one carrying records (a signature, an update).
    pub fn of(
        query: &Message,
        route: Route,
        server: SocketAddr,
        transport: DnsTransport,
    ) -> Option<Key> {
        let m = &query.metadata;
        if m.message_type != MessageType::Query
            || m.op_code != OpCode::Query
            || query.queries.len() != 1
            || !query.answers.is_empty()
            || !query.authorities.is_empty()
            || !query.additionals.is_empty()
            || query.signature.is_some()
        {
            return None;
        }
        let q = &query.queries[0];
        let edns = match &query.edns {
            Some(edns) => Some(edns.to_bytes().ok()?),
            None => None,
        };
        Some(Key {
            local_server: match route {
                Route::Local => Some(server),
                Route::Remote => None,
            },
            tcp: matches!(transport, DnsTransport::Tcp),
            question: q.to_bytes().ok()?,
            flags: u8::from(m.recursion_desired)
                | u8::from(m.checking_disabled) << 1
                | u8::from(m.authentic_data) << 2,
            edns,
            qtype: q.query_type,
        })
    }

    /// The same query for the other address type (AAAA for A, A for AAAA), with `question`
    /// its question; `None` for other types.
    pub fn sibling(&self, question: &Query) -> Option<(Key, Query)> {
        let other = match self.qtype {
            RecordType::A => RecordType::AAAA,
            RecordType::AAAA => RecordType::A,
            _ => return None,
        };
        let mut q = question.clone();
        q.query_type = other;
        let key = Key {
            question: q.to_bytes().ok()?,
            qtype: other,
            ..self.clone()
        };
        Some((key, q))
    }
}

/// One kept answer.
#[derive(Debug)]
struct Entry {
    answer: Message,
    kept_at: Instant,
    lifetime: Duration,
    size: usize,
    /// Tells this entry from a later one under the same key, in `order`.
    generation: u64,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.kept_at) < self.lifetime
    }
}

/// What the cache holds for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A live answer, ready to send (the query's id, TTLs counted down).
    Hit(Vec<u8>),
    /// An answer that expired: the question was asked and cacheable before.
    Expired,
    /// Nothing.
    Miss,
}

/// The cache itself (callers wrap it in a lock).
#[derive(Debug, Default)]
pub struct AnswerCache {
    entries: HashMap<Key, Entry>,
    /// Keys in the order they were stored, with the generation stored.
    order: VecDeque<(u64, Key)>,
    bytes: usize,
    generation: u64,
}

impl AnswerCache {
    /// The answer for `key` at `now`, encoded for the query with id `id`.
    pub fn get(&self, key: &Key, id: u16, now: Instant) -> Lookup {
        let Some(entry) = self.entries.get(key) else {
            return Lookup::Miss;
        };
        if !entry.live(now) {
            return Lookup::Expired;
        }
        let kept = now.saturating_duration_since(entry.kept_at).as_secs();
        let kept = u32::try_from(kept).unwrap_or(u32::MAX);
        let mut answer = entry.answer.clone();
        answer.metadata.id = id;
        for record in answer
            .answers
            .iter_mut()
            .chain(answer.authorities.iter_mut())
            .chain(answer.additionals.iter_mut())
        {
            record.ttl = record.ttl.saturating_sub(kept);
        }
        match answer.to_vec() {
            Ok(bytes) => Lookup::Hit(bytes),
            Err(_) => Lookup::Miss,
        }
    }

    /// Whether the answer kept for `key` has expired (a miss is not expired).
    pub fn expired(&self, key: &Key, now: Instant) -> bool {
        self.entries.get(key).is_some_and(|e| !e.live(now))
    }

    /// Keeps `answer` (as received, `bytes`) for `key` from `now`, if it is cacheable.
    pub fn put(&mut self, key: Key, bytes: &[u8], now: Instant) {
        let Ok(answer) = Message::from_vec(bytes) else {
            return;
        };
        let Some(lifetime) = lifetime(&answer) else {
            return;
        };
        // Only answers to this very question, which encode again exactly as received.
        let answers_key = answer.metadata.message_type == MessageType::Response
            && answer.queries.len() == 1
            && answer.queries[0].to_bytes().ok().as_deref() == Some(key.question.as_slice());
        if !answers_key || answer.to_vec().ok().as_deref() != Some(bytes) {
            return;
        }
        let size = bytes.len();
        if size > MAX_BYTES {
            return;
        }
        self.remove(&key);
        while self.entries.len() >= MAX_ENTRIES || self.bytes + size > MAX_BYTES {
            let Some((generation, oldest)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&oldest).map(|e| e.generation) == Some(generation) {
                self.remove(&oldest);
            }
        }
        self.generation += 1;
        self.order.push_back((self.generation, key.clone()));
        self.bytes += size;
        self.entries.insert(
            key,
            Entry {
                answer,
                kept_at: now,
                lifetime,
                size,
                generation: self.generation,
            },
        );
        // Stale positions of replaced entries are dropped as they reach the front; keep
        // their number bounded too.
        if self.order.len() > 2 * MAX_ENTRIES {
            let entries = &self.entries;
            self.order
                .retain(|(g, k)| entries.get(k).map(|e| e.generation) == Some(*g));
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(old) = self.entries.remove(key) {
            self.bytes -= old.size;
        }
    }
}

/// How long `answer` may be kept, if at all.
fn lifetime(answer: &Message) -> Option<Duration> {
    let records = || {
        answer
            .answers
            .iter()
            .chain(&answer.authorities)
            .chain(&answer.additionals)
    };
    let secs = |ttl: u32| Duration::from_secs(u64::from(ttl));
    let smallest = |records: &mut dyn Iterator<Item = &Record>| records.map(|r| r.ttl).min();
    let kept = match answer.metadata.response_code {
        ResponseCode::ServFail => Some(SHORT),
        ResponseCode::NoError if !answer.answers.is_empty() => {
            smallest(&mut records()).map(|ttl| secs(ttl).min(MAX_TTL))
        }
        ResponseCode::NoError | ResponseCode::NXDomain => {
            // RFC 2308 §5: the SOA's TTL and MINIMUM bound a negative answer; without an
            // SOA it is not cached (§5, "SHOULD NOT"). A CNAME chain before it bounds it too.
            let soa = answer.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })?;
            let chain = smallest(&mut answer.answers.iter()).unwrap_or(u32::MAX);
            Some(secs(soa.min(chain)).min(MAX_NEGATIVE_TTL))
        }
        _ => None,
    }?;
    let kept = if answer.metadata.truncation {
        kept.min(SHORT)
    } else {
        kept
    };
    (!kept.is_zero()).then_some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Edns;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
    use hickory_proto::rr::Name;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn query(qname: &str, qtype: RecordType) -> Message {
        let mut m = Message::new(0x1111, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(name(qname), qtype));
        m
    }

    fn key(q: &Message) -> Key {
        let server = "127.0.0.53:53".parse().unwrap();
        Key::of(q, Route::Remote, server, DnsTransport::Udp).unwrap()
    }

    fn response(q: &Message, rcode: ResponseCode, answers: Vec<Record>) -> Message {
        let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.metadata.recursion_available = true;
        m.metadata.response_code = rcode;
        m.queries = q.queries.clone();
        m.answers = answers;
        m
    }

    fn a(owner: &str, ttl: u32, last: u8) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A::new(198, 18, 0, last)))
    }

    fn soa(ttl: u32, minimum: u32) -> Record {
        Record::from_rdata(
            name("cluster.local."),
            ttl,
            RData::SOA(SOA::new(
                name("ns.cluster.local."),
                name("hostmaster.cluster.local."),
                1,
                7200,
                1800,
                86400,
                minimum,
            )),
        )
    }

    fn ttls(bytes: &[u8]) -> Vec<u32> {
        let m = Message::from_vec(bytes).unwrap();
        m.answers
            .iter()
            .chain(&m.authorities)
            .map(|r| r.ttl)
            .collect()
    }

    fn hit(lookup: Lookup) -> Vec<u8> {
        match lookup {
            Lookup::Hit(bytes) => bytes,
            other => panic!("not a hit: {other:?}"),
        }
    }

    #[test]
    fn ttls_count_down_and_the_answer_expires_with_its_smallest_ttl() {
        let q = query("uwu-service.default.svc.cluster.local.", RecordType::A);
        let answer = response(
            &q,
            ResponseCode::NoError,
            vec![
                Record::from_rdata(
                    name("uwu-service.default.svc.cluster.local."),
                    30,
                    RData::CNAME(CNAME(name("lb.cluster.local."))),
                ),
                a("lb.cluster.local.", 5, 10),
            ],
        );
        let mut cache = AnswerCache::default();
        let t0 = Instant::now();
        cache.put(key(&q), &answer.to_vec().unwrap(), t0);

        let now = hit(cache.get(&key(&q), 0x2222, t0 + Duration::from_millis(300)));
        let served = Message::from_vec(&now).unwrap();
        assert_eq!(served.metadata.id, 0x2222, "the asker's id");
        assert_eq!(served.queries, q.queries);
        assert_eq!(ttls(&now), [30, 5], "less than a second: as received");

        let later = hit(cache.get(&key(&q), 0x3333, t0 + Duration::from_millis(3_900)));
        assert_eq!(ttls(&later), [27, 2], "three whole seconds later");
        let mut expected = answer.clone();
        expected.metadata.id = 0x3333;
        expected.answers[0].ttl = 27;
        expected.answers[1].ttl = 2;
        assert_eq!(later, expected.to_vec().unwrap(), "nothing else differs");

        assert_eq!(
            cache.get(&key(&q), 1, t0 + Duration::from_secs(5)),
            Lookup::Expired,
            "gone with its smallest TTL"
        );
    }

    #[test]
    fn zero_ttls_and_uncacheable_codes_are_not_kept() {
        let q = query("x.cluster.local.", RecordType::A);
        let mut cache = AnswerCache::default();
        let t0 = Instant::now();
        let zero = response(&q, ResponseCode::NoError, vec![a("x.cluster.local.", 0, 1)]);
        cache.put(key(&q), &zero.to_vec().unwrap(), t0);
        assert_eq!(cache.get(&key(&q), 1, t0), Lookup::Miss);
        let refused = response(&q, ResponseCode::Refused, vec![]);
        cache.put(key(&q), &refused.to_vec().unwrap(), t0);
        assert_eq!(cache.get(&key(&q), 1, t0), Lookup::Miss);
        cache.put(key(&q), b"not dns", t0);
        assert_eq!(cache.get(&key(&q), 1, t0), Lookup::Miss);
        // An answer to another question.
        let other = query("y.cluster.local.", RecordType::A);
        let wrong = response(
            &other,
            ResponseCode::NoError,
            vec![a("y.cluster.local.", 60, 2)],
        );
        cache.put(key(&q), &wrong.to_vec().unwrap(), t0);
        assert_eq!(cache.get(&key(&q), 1, t0), Lookup::Miss);
    }

    #[test]
    fn negative_answers_live_by_the_soa_minimum_and_only_with_an_soa() {
        let q = query("nope.cluster.local.", RecordType::A);
        let t0 = Instant::now();
        let mut cache = AnswerCache::default();
        let mut nx = response(&q, ResponseCode::NXDomain, vec![]);
        cache.put(key(&q), &nx.to_vec().unwrap(), t0);
        assert_eq!(
            cache.get(&key(&q), 1, t0),
            Lookup::Miss,
            "no SOA: not cached"
        );

        nx.authorities = vec![soa(60, 10)];
        cache.put(key(&q), &nx.to_vec().unwrap(), t0);
        let served = hit(cache.get(&key(&q), 1, t0 + Duration::from_secs(4)));
        let m = Message::from_vec(&served).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(ttls(&served), [56]);
        assert_eq!(
            cache.get(&key(&q), 1, t0 + Duration::from_secs(10)),
            Lookup::Expired,
            "the SOA MINIMUM (10) is smaller than its TTL (60)"
        );

        // NODATA: the SOA's TTL when it is the smaller; capped for huge values.
        let q6 = query("v4-only.cluster.local.", RecordType::AAAA);
        let mut nodata = response(&q6, ResponseCode::NoError, vec![]);
        nodata.authorities = vec![soa(3, 600)];
        cache.put(key(&q6), &nodata.to_vec().unwrap(), t0);
        hit(cache.get(&key(&q6), 1, t0 + Duration::from_secs(2)));
        assert_eq!(
            cache.get(&key(&q6), 1, t0 + Duration::from_secs(3)),
            Lookup::Expired
        );
        nodata.authorities = vec![soa(86_400, 86_400)];
        cache.put(key(&q6), &nodata.to_vec().unwrap(), t0);
        hit(cache.get(&key(&q6), 1, t0 + MAX_NEGATIVE_TTL - Duration::from_secs(1)));
        assert_eq!(
            cache.get(&key(&q6), 1, t0 + MAX_NEGATIVE_TTL),
            Lookup::Expired
        );
    }

    #[test]
    fn servfail_and_truncated_answers_are_kept_only_briefly() {
        let q = query("broken.cluster.local.", RecordType::A);
        let t0 = Instant::now();
        let mut cache = AnswerCache::default();
        let servfail = response(&q, ResponseCode::ServFail, vec![]);
        cache.put(key(&q), &servfail.to_vec().unwrap(), t0);
        hit(cache.get(&key(&q), 1, t0 + SHORT - Duration::from_millis(1)));
        assert_eq!(cache.get(&key(&q), 1, t0 + SHORT), Lookup::Expired);

        let many = query("many.cluster.local.", RecordType::A);
        let mut truncated = response(
            &many,
            ResponseCode::NoError,
            vec![a("many.cluster.local.", 300, 1)],
        );
        truncated.metadata.truncation = true;
        cache.put(key(&many), &truncated.to_vec().unwrap(), t0);
        hit(cache.get(&key(&many), 1, t0 + Duration::from_secs(1)));
        assert_eq!(cache.get(&key(&many), 1, t0 + SHORT), Lookup::Expired);
    }

    #[test]
    fn keys_tell_decisions_servers_transports_spellings_and_edns_apart() {
        let q = query("uwu-service.default.svc.cluster.local.", RecordType::A);
        let ns: SocketAddr = "127.0.0.53:53".parse().unwrap();
        let other_ns: SocketAddr = "127.0.0.54:53".parse().unwrap();
        let remote = Key::of(&q, Route::Remote, ns, DnsTransport::Udp).unwrap();
        let local = Key::of(&q, Route::Local, ns, DnsTransport::Udp).unwrap();
        assert_ne!(remote, local, "per decision");
        assert_ne!(
            local,
            Key::of(&q, Route::Local, other_ns, DnsTransport::Udp).unwrap()
        );
        assert_eq!(
            remote,
            Key::of(&q, Route::Remote, other_ns, DnsTransport::Udp).unwrap(),
            "the agent answers the same whichever local nameserver was asked"
        );
        assert_ne!(
            remote,
            Key::of(&q, Route::Remote, ns, DnsTransport::Tcp).unwrap()
        );

        let mut other_id = q.clone();
        other_id.metadata.id = 0x9999;
        assert_eq!(remote, key(&other_id), "the id is not part of the key");
        let spelled = query("UWU-service.default.svc.cluster.local.", RecordType::A);
        assert_ne!(
            remote,
            key(&spelled),
            "0x20 spellings are answered by their own"
        );
        let mut with_edns = q.clone();
        with_edns.edns = Some(Edns::new());
        assert_ne!(remote, key(&with_edns));
        let mut no_rd = q.clone();
        no_rd.metadata.recursion_desired = false;
        assert_ne!(remote, key(&no_rd));

        let mut cache = AnswerCache::default();
        let t0 = Instant::now();
        let answer = response(
            &q,
            ResponseCode::NoError,
            vec![a("uwu-service.default.svc.cluster.local.", 30, 10)],
        );
        cache.put(remote.clone(), &answer.to_vec().unwrap(), t0);
        hit(cache.get(&remote, 1, t0));
        assert_eq!(
            cache.get(&local, 1, t0),
            Lookup::Miss,
            "a local query is not answered from the target's answer"
        );

        // Not cacheable: two questions, an update, a response.
        let mut two = q.clone();
        two.add_query(Query::query(name("b."), RecordType::A));
        assert_eq!(Key::of(&two, Route::Remote, ns, DnsTransport::Udp), None);
        let mut update = q.clone();
        update.metadata.op_code = OpCode::Update;
        assert_eq!(Key::of(&update, Route::Remote, ns, DnsTransport::Udp), None);
        assert_eq!(Key::of(&answer, Route::Remote, ns, DnsTransport::Udp), None);
    }

    #[test]
    fn the_sibling_of_a_is_aaaa_and_back() {
        let q = query("uwu-service.default.svc.cluster.local.", RecordType::A);
        let q6 = query("uwu-service.default.svc.cluster.local.", RecordType::AAAA);
        let (sibling, question) = key(&q).sibling(&q.queries[0]).unwrap();
        assert_eq!(sibling, key(&q6));
        assert_eq!(question, q6.queries[0]);
        assert_eq!(sibling.sibling(&question).unwrap().0, key(&q));
        let txt = query("info.default.svc.cluster.local.", RecordType::TXT);
        assert_eq!(key(&txt).sibling(&txt.queries[0]), None);
    }

    #[test]
    fn the_cache_is_bounded_and_the_oldest_go_first() {
        let mut cache = AnswerCache::default();
        let t0 = Instant::now();
        let keys: Vec<Key> = (0..MAX_ENTRIES + 10)
            .map(|i| {
                let owner = format!("n{i}.cluster.local.");
                let q = query(&owner, RecordType::AAAA);
                let answer = response(
                    &q,
                    ResponseCode::NoError,
                    vec![Record::from_rdata(
                        name(&owner),
                        60,
                        RData::AAAA(AAAA::new(0x2001, 2, 0, 0, 0, 0, 0, i as u16)),
                    )],
                );
                cache.put(key(&q), &answer.to_vec().unwrap(), t0);
                key(&q)
            })
            .collect();
        assert_eq!(cache.entries.len(), MAX_ENTRIES);
        assert_eq!(cache.get(&keys[9], 1, t0), Lookup::Miss, "among the oldest");
        hit(cache.get(&keys[10], 1, t0));
        hit(cache.get(&keys[MAX_ENTRIES + 9], 1, t0));
        assert!(cache.bytes <= MAX_BYTES);

        // Storing one key again and again keeps one entry and a bounded order.
        let q = query("again.cluster.local.", RecordType::A);
        let answer = response(
            &q,
            ResponseCode::NoError,
            vec![a("again.cluster.local.", 60, 1)],
        );
        for _ in 0..3 * MAX_ENTRIES {
            cache.put(key(&q), &answer.to_vec().unwrap(), t0);
        }
        assert_eq!(cache.entries.len(), MAX_ENTRIES);
        assert!(cache.order.len() <= 2 * MAX_ENTRIES + 1);
        hit(cache.get(&key(&q), 1, t0));
    }
}
