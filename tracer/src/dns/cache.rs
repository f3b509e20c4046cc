//! The answer cache: answers kept for their TTL, as a caching resolver between the app and
//! the nameserver that answered would keep them, so that a repeated lookup costs no round
//! trip to the agent (or to the local nameserver).
//!
//! - **Keys** are the whole query as the app sent it except its id: the header's flags
//!   (RD, CD, AD, ...), the question as spelled (a resolver randomising the case of names,
//!   0x20, is answered per spelling), the EDNS record byte for byte (payload size, DO bit,
//!   options) — and the transport, so a cached answer was made for a query identical to the
//!   one it answers, truncation included — and where the query went: the agent (remote) or
//!   the local nameserver it was sent to (local).
//! - **Lifetimes** follow the answer: the smallest TTL of its records (RFC 1035 §3.2.1; a
//!   TTL with the top bit set counts as 0, RFC 2181 §8); NXDOMAIN and NODATA (also at the
//!   end of a CNAME chain) the SOA's `min(TTL, MINIMUM)` (RFC 2308 §5; none without an SOA);
//!   SERVFAIL and truncated answers at most [`SHORT`] (RFC 2308 §7.1 allows five minutes).
//!   A TTL of 0 is never cached. Lifetimes are capped ([`MAX_TTL`], [`MAX_NEGATIVE_TTL`]).
//! - **Served** answers are the bytes received with the query's id and every TTL lowered by
//!   the whole seconds they have been kept, as a caching resolver counts them down (the SOA
//!   of a negative answer never outlasting what is left of its lifetime); nothing else
//!   differs. The EDNS record's TTL field holds flags, and is left alone.
//! - **Bounded**: at most [`MAX_ENTRIES`] answers and [`MAX_BYTES`] of them (answer and
//!   key); the oldest go first. Expired entries stay until then: they tell which questions
//!   were asked (and cacheable) before, which the responder uses to refresh an A/AAAA pair
//!   together.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use sctrace_filter::Route;
use sctrace_protocol::DnsTransport;

use super::wire::{Layout, Section, TtlField, HEADER, OPT, SIG, TSIG};

/// How long a SERVFAIL or a truncated answer is kept at most.
pub const SHORT: Duration = Duration::from_secs(2);
/// Longest lifetime of a positive answer (its TTLs still count down from the target's).
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// Longest lifetime of a negative answer (NXDOMAIN, NODATA).
pub const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(300);
/// Answers kept at most.
pub const MAX_ENTRIES: usize = 4096;
/// Bytes of answers and keys (as encoded) kept at most.
pub const MAX_BYTES: usize = 4 << 20;
/// The SOA record's type.
const SOA: u16 = 6;

/// What a cached answer answers: everything in a query but its id, and where it went.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The agent (`None`), or the local nameserver the query was forwarded to.
    local_server: Option<SocketAddr>,
    tcp: bool,
    /// The query as received, without its id (the first two bytes).
    query: Vec<u8>,
    /// Offset of the question's type in `query`.
    qtype_at: usize,
    /// The question's type, for the A/AAAA sibling.
    qtype: RecordType,
}

impl Key {
    /// The key of `query` (as received, `bytes`; parsed, `message`), decided `route`, sent
    /// to `server` over `transport`; `None` for a query whose answer is not cached: not a
    /// standard query with exactly one question, or one carrying records (a signature, an
    /// update).
    pub fn of(
        message: &Message,
        bytes: &[u8],
        route: Route,
        server: SocketAddr,
        transport: DnsTransport,
    ) -> Option<Key> {
        let m = &message.metadata;
        if m.message_type != MessageType::Query
            || m.op_code != OpCode::Query
            || message.queries.len() != 1
            || !message.answers.is_empty()
            || !message.authorities.is_empty()
            || !message.additionals.is_empty()
            || message.signature.is_some()
        {
            return None;
        }
        let layout = Layout::of(bytes)?;
        // Only the EDNS record besides the question.
        if layout.ttls.iter().any(|t| t.rtype != OPT) {
            return None;
        }
        Some(Key {
            local_server: match route {
                Route::Local => Some(server),
                Route::Remote => None,
            },
            tcp: matches!(transport, DnsTransport::Tcp),
            query: bytes.get(2..)?.to_vec(),
            qtype_at: layout.qtype_at.checked_sub(2)?,
            qtype: message.queries[0].query_type,
        })
    }

    /// The same query for the other address type (AAAA for A, A for AAAA): byte for byte
    /// the query the app's resolver would send for it; `None` for other types.
    pub fn sibling(&self) -> Option<Key> {
        let other = match self.qtype {
            RecordType::A => RecordType::AAAA,
            RecordType::AAAA => RecordType::A,
            _ => return None,
        };
        let mut query = self.query.clone();
        query
            .get_mut(self.qtype_at..self.qtype_at + 2)?
            .copy_from_slice(&u16::from(other).to_be_bytes());
        Some(Key {
            query,
            qtype: other,
            ..self.clone()
        })
    }

    /// The query this key stands for, with id `id`.
    pub fn query(&self, id: u16) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.query.len() + 2);
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend_from_slice(&self.query);
        bytes
    }

    /// The question section, as encoded.
    fn question(&self) -> Option<&[u8]> {
        self.query.get(HEADER - 2..self.qtype_at + 4)
    }
}

/// One kept answer.
#[derive(Debug)]
struct Entry {
    /// The answer as received.
    bytes: Vec<u8>,
    /// Its TTL fields (the EDNS record's left out).
    ttls: Vec<TtlField>,
    /// Whether it is NXDOMAIN or NODATA.
    negative: bool,
    kept_at: Instant,
    lifetime: Duration,
    /// Bytes counted against [`MAX_BYTES`].
    size: usize,
    /// Tells this entry from a later one under the same key, in `order`.
    generation: u64,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.kept_at) < self.lifetime
    }

    /// The answer for a query with id `id`, at `now` (when it is live).
    fn serve(&self, id: u16, now: Instant) -> Vec<u8> {
        let kept = now.saturating_duration_since(self.kept_at).as_secs();
        let kept = u32::try_from(kept).unwrap_or(u32::MAX);
        let left = u32::try_from(self.lifetime.as_secs())
            .unwrap_or(u32::MAX)
            .saturating_sub(kept);
        let mut bytes = self.bytes.clone();
        bytes[..2].copy_from_slice(&id.to_be_bytes());
        for field in &self.ttls {
            let Some(slot) = bytes.get_mut(field.offset..field.offset + 4) else {
                continue;
            };
            let ttl = u32::from_be_bytes([slot[0], slot[1], slot[2], slot[3]]);
            let mut ttl = ttl.saturating_sub(kept);
            // The SOA carries a negative answer's TTL (RFC 2308 §5): never more than is
            // left, even when the nameserver gave it a TTL above its MINIMUM.
            if self.negative && field.rtype == SOA && field.section == Section::Authority {
                ttl = ttl.min(left);
            }
            slot.copy_from_slice(&ttl.to_be_bytes());
        }
        bytes
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
    /// The answer for `key` at `now`, for the query with id `id`.
    pub fn get(&self, key: &Key, id: u16, now: Instant) -> Lookup {
        match self.entries.get(key) {
            None => Lookup::Miss,
            Some(entry) if !entry.live(now) => Lookup::Expired,
            Some(entry) => Lookup::Hit(entry.serve(id, now)),
        }
    }

    /// Whether the answer kept for `key` has expired (a miss is not expired).
    pub fn expired(&self, key: &Key, now: Instant) -> bool {
        self.entries.get(key).is_some_and(|e| !e.live(now))
    }

    /// Keeps the answer `bytes` (as received) for `key` from `now`, if it is cacheable.
    pub fn put(&mut self, key: Key, bytes: &[u8], now: Instant) {
        let Some(entry) = Self::entry(&key, bytes, now) else {
            return;
        };
        if entry.size > MAX_BYTES {
            return;
        }
        self.remove(&key);
        while self.entries.len() >= MAX_ENTRIES || self.bytes + entry.size > MAX_BYTES {
            let Some((generation, oldest)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&oldest).map(|e| e.generation) == Some(generation) {
                self.remove(&oldest);
            }
        }
        self.generation += 1;
        self.order.push_back((self.generation, key.clone()));
        self.bytes += entry.size;
        self.entries.insert(
            key,
            Entry {
                generation: self.generation,
                ..entry
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

    /// The entry for `bytes`, if it is a cacheable answer to `key`'s question.
    fn entry(key: &Key, bytes: &[u8], now: Instant) -> Option<Entry> {
        let answer = Message::from_vec(bytes).ok()?;
        if answer.metadata.message_type != MessageType::Response
            || answer.metadata.op_code != OpCode::Query
            || answer.signature.is_some()
        {
            return None;
        }
        let layout = Layout::of(bytes)?;
        // Only answers to this very question, as spelled; never a signed one.
        if bytes.get(layout.question.clone()) != key.question()
            || layout
                .ttls
                .iter()
                .any(|t| t.rtype == TSIG || t.rtype == SIG)
        {
            return None;
        }
        let (lifetime, negative) = lifetime(&answer)?;
        let ttls: Vec<TtlField> = layout.ttls.into_iter().filter(|t| t.rtype != OPT).collect();
        Some(Entry {
            size: bytes.len() + key.query.len() + ttls.len() * std::mem::size_of::<TtlField>(),
            bytes: bytes.to_vec(),
            ttls,
            negative,
            kept_at: now,
            lifetime,
            generation: 0,
        })
    }

    fn remove(&mut self, key: &Key) {
        if let Some(old) = self.entries.remove(key) {
            self.bytes -= old.size;
        }
    }
}

/// A record's TTL as a resolver reads it: one with the top bit set is 0 (RFC 2181 §8).
fn ttl(record: &Record) -> u32 {
    if record.ttl > i32::MAX as u32 {
        0
    } else {
        record.ttl
    }
}

/// How long `answer` may be kept, if at all, and whether it is negative (NXDOMAIN, NODATA).
fn lifetime(answer: &Message) -> Option<(Duration, bool)> {
    let smallest = answer
        .answers
        .iter()
        .chain(&answer.authorities)
        .chain(&answer.additionals)
        .map(ttl)
        .min();
    let secs = |ttl: u32| Duration::from_secs(u64::from(ttl));
    let qtype = answer.queries.first()?.query_type;
    // Records of the type asked (at the end of any CNAME chain): a positive answer.
    let answered = answer
        .answers
        .iter()
        .any(|r| qtype == RecordType::ANY || r.record_type() == qtype);
    let (kept, negative) = match answer.metadata.response_code {
        ResponseCode::ServFail => (SHORT, false),
        ResponseCode::NoError if answered => (secs(smallest?).min(MAX_TTL), false),
        ResponseCode::NoError | ResponseCode::NXDomain => {
            // RFC 2308 §5: the SOA's TTL and MINIMUM bound a negative answer; without an
            // SOA it is not cached (§5, "SHOULD NOT"). A CNAME chain before it bounds it too.
            let minimum = answer.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(soa.minimum),
                _ => None,
            })?;
            let bound = smallest.map_or(minimum, |s| s.min(minimum));
            (secs(bound).min(MAX_NEGATIVE_TTL), true)
        }
        _ => return None,
    };
    let kept = if answer.metadata.truncation {
        kept.min(SHORT)
    } else {
        kept
    };
    (!kept.is_zero()).then_some((kept, negative))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Query};
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

    fn key_of(q: &Message, route: Route, server: &str, transport: DnsTransport) -> Option<Key> {
        let server = server.parse().unwrap();
        Key::of(q, &q.to_vec().unwrap(), route, server, transport)
    }

    fn key(q: &Message) -> Key {
        key_of(q, Route::Remote, "127.0.0.53:53", DnsTransport::Udp).unwrap()
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
        assert_eq!(
            ttls(&served),
            [6],
            "the SOA's TTL never outlasts the MINIMUM left"
        );
        nx.authorities = vec![soa(8, 10)];
        cache.put(key(&q), &nx.to_vec().unwrap(), t0);
        let served = hit(cache.get(&key(&q), 1, t0 + Duration::from_secs(3)));
        assert_eq!(ttls(&served), [5], "an SOA TTL below MINIMUM counts down");
        nx.authorities = vec![soa(60, 10)];
        cache.put(key(&q), &nx.to_vec().unwrap(), t0);
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
    fn a_cname_chain_ending_in_nodata_lives_by_the_soa() {
        let q = query("alias.cluster.local.", RecordType::AAAA);
        let mut nodata = response(
            &q,
            ResponseCode::NoError,
            vec![Record::from_rdata(
                name("alias.cluster.local."),
                30,
                RData::CNAME(CNAME(name("v4-only.cluster.local."))),
            )],
        );
        nodata.authorities = vec![soa(60, 5)];
        let mut cache = AnswerCache::default();
        let t0 = Instant::now();
        cache.put(key(&q), &nodata.to_vec().unwrap(), t0);
        let served = hit(cache.get(&key(&q), 1, t0 + Duration::from_secs(2)));
        assert_eq!(
            ttls(&served),
            [28, 3],
            "the CNAME counts down, the SOA by what is left"
        );
        assert_eq!(
            cache.get(&key(&q), 1, t0 + Duration::from_secs(5)),
            Lookup::Expired,
            "the negative part's MINIMUM, not the CNAME's TTL"
        );
        // The same chain without an SOA: not cached.
        nodata.authorities.clear();
        let mut cache = AnswerCache::default();
        cache.put(key(&q), &nodata.to_vec().unwrap(), t0);
        assert_eq!(cache.get(&key(&q), 1, t0), Lookup::Miss);
    }

    #[test]
    fn a_ttl_with_the_top_bit_set_counts_as_zero() {
        let q = query("odd.cluster.local.", RecordType::A);
        let odd = response(
            &q,
            ResponseCode::NoError,
            vec![a("odd.cluster.local.", 0x8000_0000, 1)],
        );
        let mut cache = AnswerCache::default();
        let t0 = Instant::now();
        cache.put(key(&q), &odd.to_vec().unwrap(), t0);
        assert_eq!(cache.get(&key(&q), 1, t0), Lookup::Miss);
    }

    #[test]
    fn answers_are_served_as_received_but_id_and_ttls_and_edns_flags_stay() {
        let mut q = query("uwu-service.default.svc.cluster.local.", RecordType::A);
        let mut edns = Edns::new();
        edns.set_dnssec_ok(true);
        edns.set_max_payload(1232);
        q.edns = Some(edns.clone());
        // Encoded by hand without name compression (hickory would compress the owner):
        // what is served is what was received, whatever the encoder upstream.
        let mut answer = response(&q, ResponseCode::NoError, vec![]);
        answer.edns = Some(edns);
        let mut bytes = answer.to_vec().unwrap();
        assert_eq!(u16::from_be_bytes([bytes[6], bytes[7]]), 0);
        let opt = bytes.split_off(bytes.len() - 11);
        bytes[7] = 1;
        for label in ["uwu-service", "default", "svc", "cluster", "local"] {
            bytes.push(label.len() as u8);
            bytes.extend_from_slice(label.as_bytes());
        }
        bytes.push(0);
        bytes.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 198, 18, 0, 10]);
        bytes.extend_from_slice(&opt);
        assert_eq!(opt[0..3], [0, 0, 41], "the OPT record");

        let mut cache = AnswerCache::default();
        let t0 = Instant::now();
        cache.put(key(&q), &bytes, t0);
        let served = hit(cache.get(&key(&q), 0xabcd, t0 + Duration::from_secs(10)));
        let mut expected = bytes.clone();
        expected[..2].copy_from_slice(&[0xab, 0xcd]);
        let ttl_at = expected.len() - 11 - 4 - 2 - 4;
        expected[ttl_at..ttl_at + 4].copy_from_slice(&20u32.to_be_bytes());
        assert_eq!(
            served, expected,
            "only the id and the A record's TTL changed"
        );
        let m = Message::from_vec(&served).unwrap();
        assert!(m.edns.unwrap().flags().dnssec_ok, "the DO bit stays");
    }

    #[test]
    fn an_answer_spelling_the_question_otherwise_is_not_kept() {
        let q = query("UwU-service.cluster.local.", RecordType::A);
        let lower = query("uwu-service.cluster.local.", RecordType::A);
        let answer = response(
            &lower,
            ResponseCode::NoError,
            vec![a("uwu-service.cluster.local.", 60, 1)],
        );
        let mut cache = AnswerCache::default();
        let t0 = Instant::now();
        cache.put(key(&q), &answer.to_vec().unwrap(), t0);
        assert_eq!(cache.get(&key(&q), 1, t0), Lookup::Miss);
        let mut right = answer.clone();
        right.queries = q.queries.clone();
        cache.put(key(&q), &right.to_vec().unwrap(), t0);
        let served = Message::from_vec(&hit(cache.get(&key(&q), 1, t0))).unwrap();
        assert_eq!(
            served.queries[0].name.to_string(),
            "UwU-service.cluster.local."
        );
    }

    #[test]
    fn keys_tell_decisions_servers_transports_spellings_and_edns_apart() {
        let q = query("uwu-service.default.svc.cluster.local.", RecordType::A);
        let ns = "127.0.0.53:53";
        let other_ns = "127.0.0.54:53";
        let remote = key_of(&q, Route::Remote, ns, DnsTransport::Udp).unwrap();
        let local = key_of(&q, Route::Local, ns, DnsTransport::Udp).unwrap();
        assert_ne!(remote, local, "per decision");
        assert_ne!(
            local,
            key_of(&q, Route::Local, other_ns, DnsTransport::Udp).unwrap()
        );
        assert_eq!(
            remote,
            key_of(&q, Route::Remote, other_ns, DnsTransport::Udp).unwrap(),
            "the agent answers the same whichever local nameserver was asked"
        );
        assert_ne!(
            remote,
            key_of(&q, Route::Remote, ns, DnsTransport::Tcp).unwrap()
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
        let mut with_do = with_edns.clone();
        if let Some(edns) = with_do.edns.as_mut() {
            edns.set_dnssec_ok(true);
        }
        assert_ne!(key(&with_edns), key(&with_do), "the DO bit");
        let mut no_rd = q.clone();
        no_rd.metadata.recursion_desired = false;
        assert_ne!(remote, key(&no_rd));
        let mut cd = q.clone();
        cd.metadata.checking_disabled = true;
        assert_ne!(remote, key(&cd), "the CD bit");

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
        assert_eq!(key_of(&two, Route::Remote, ns, DnsTransport::Udp), None);
        let mut update = q.clone();
        update.metadata.op_code = OpCode::Update;
        assert_eq!(key_of(&update, Route::Remote, ns, DnsTransport::Udp), None);
        assert_eq!(key_of(&answer, Route::Remote, ns, DnsTransport::Udp), None);
    }

    #[test]
    fn the_sibling_of_a_is_aaaa_and_back() {
        let mut q = query("Uwu-Service.default.svc.cluster.local.", RecordType::A);
        q.edns = Some(Edns::new());
        let mut q6 = query("Uwu-Service.default.svc.cluster.local.", RecordType::AAAA);
        q6.edns = Some(Edns::new());
        let sibling = key(&q).sibling().unwrap();
        assert_eq!(sibling, key(&q6));
        q6.metadata.id = 0x4242;
        assert_eq!(
            sibling.query(0x4242),
            q6.to_vec().unwrap(),
            "byte for byte the app's own AAAA query"
        );
        assert_eq!(sibling.sibling().unwrap(), key(&q));
        let txt = query("info.default.svc.cluster.local.", RecordType::TXT);
        assert_eq!(key(&txt).sibling(), None);
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
