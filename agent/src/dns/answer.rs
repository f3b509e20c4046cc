//! Choosing among the answers for each search candidate, and presenting the chosen one
//! under the name the application asked (with CNAME chains flattened).

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// Longest CNAME chain followed when flattening.
const MAX_CHAIN: usize = 16;

/// Outcome of trying search candidates in order, following glibc's `res_nsearch`: a positive
/// answer ends the search; NXDOMAIN and NODATA go on to the next candidate; SERVFAIL goes
/// on but is remembered; any other error ends the search with that answer.
#[derive(Default)]
pub struct Search {
    done: Option<(Name, Message)>,
    first_nodata: Option<(Name, Message)>,
    first_servfail: Option<(Name, Message)>,
    last: Option<(Name, Message)>,
}

impl Search {
    /// Records the reply for `candidate`; returns true when the search is over.
    pub fn record(&mut self, candidate: &Name, reply: Message) -> bool {
        let entry = (candidate.clone(), reply);
        let reply = &entry.1;
        match reply.metadata.response_code {
            ResponseCode::NoError if !reply.answers.is_empty() => {
                self.done = Some(entry);
                true
            }
            ResponseCode::NoError => {
                if self.first_nodata.is_none() {
                    self.first_nodata = Some(entry);
                }
                false
            }
            ResponseCode::NXDomain => {
                self.last = Some(entry);
                false
            }
            ResponseCode::ServFail => {
                if self.first_servfail.is_none() {
                    self.first_servfail = Some(entry);
                }
                false
            }
            _ => {
                self.done = Some(entry);
                true
            }
        }
    }

    /// The answer to present: the positive or final one, else NODATA (the name exists),
    /// else SERVFAIL, else the last NXDOMAIN.
    pub fn finish(self) -> Option<(Name, Message)> {
        self.done
            .or(self.first_nodata)
            .or(self.first_servfail)
            .or(self.last)
    }
}

/// Presents `reply` (the answer for `candidate`) as the answer to `original`: same id and
/// question, records owned by `candidate` renamed to the asked name, and for ordinary types a
/// CNAME chain replaced by the records it leads to (TTL: the chain's minimum).
pub fn present(original: &Message, candidate: &Name, mut reply: Message) -> Message {
    reply.metadata.id = original.metadata.id;
    reply.metadata.recursion_desired = original.metadata.recursion_desired;
    reply.metadata.checking_disabled = original.metadata.checking_disabled;
    reply.queries = original.queries.clone();
    let Some(question) = original.queries.first() else {
        return reply;
    };
    let asked = &question.name;
    if asked.eq_ignore_root(candidate) && asked.is_fqdn() == candidate.is_fqdn() {
        // Not renamed: only the question's spelling (e.g. 0x20 case) is restored.
        return reply;
    }
    let qtype = question.query_type;
    if !matches!(qtype, RecordType::CNAME | RecordType::ANY) {
        if let Some(flat) = flatten(&reply, candidate, qtype) {
            reply.answers = flat
                .into_iter()
                .map(|mut r| {
                    r.name = asked.clone();
                    r
                })
                .collect();
            return reply;
        }
    }
    for record in &mut reply.answers {
        if record.name.eq_ignore_root(candidate) {
            record.name = asked.clone();
        }
    }
    reply
}

/// The records of type `qtype` that `candidate` leads to through the answer's CNAMEs, with
/// their TTLs lowered to the chain's minimum; `None` if the chain leads nowhere.
fn flatten(
    reply: &Message,
    candidate: &Name,
    qtype: RecordType,
) -> Option<Vec<hickory_proto::rr::Record>> {
    let mut current = candidate.clone();
    let mut chain_ttl = u32::MAX;
    for _ in 0..MAX_CHAIN {
        let found: Vec<_> = reply
            .answers
            .iter()
            .filter(|r| r.name.eq_ignore_root(&current) && r.record_type() == qtype)
            .cloned()
            .collect();
        if !found.is_empty() {
            return Some(
                found
                    .into_iter()
                    .map(|mut r| {
                        r.ttl = r.ttl.min(chain_ttl);
                        r
                    })
                    .collect(),
            );
        }
        let next = reply.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if r.name.eq_ignore_root(&current) => {
                Some((r.ttl, target.0.clone()))
            }
            _ => None,
        })?;
        chain_ttl = chain_ttl.min(next.0);
        current = next.1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::{A, CNAME};
    use hickory_proto::rr::Record;
    use std::net::Ipv4Addr;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn query(qname: &str, qtype: RecordType) -> Message {
        let mut m = Message::new(4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(name(qname), qtype));
        m
    }

    fn response(
        qname: &str,
        qtype: RecordType,
        rcode: ResponseCode,
        answers: Vec<Record>,
    ) -> Message {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.metadata.response_code = rcode;
        m.add_query(Query::query(name(qname), qtype));
        m.add_answers(answers);
        m
    }

    fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A(Ipv4Addr::from(ip))))
    }

    fn cname(owner: &str, ttl: u32, target: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
    }

    #[test]
    fn renames_answers_to_the_asked_name() {
        let q = query("uwu-service.", RecordType::A);
        let cand = name("uwu-service.default.svc.cluster.local.");
        let r = response(
            "uwu-service.default.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NoError,
            vec![a(
                "uwu-service.default.svc.cluster.local.",
                30,
                [198, 18, 0, 7],
            )],
        );
        let out = present(&q, &cand, r);
        assert_eq!(out.metadata.id, 4242);
        assert_eq!(out.queries, q.queries);
        assert_eq!(out.answers.len(), 1);
        assert_eq!(out.answers[0].name, name("uwu-service."));
        assert_eq!(out.answers[0].ttl, 30);
    }

    #[test]
    fn flattens_cname_chains_with_the_smallest_ttl() {
        let q = query("web.", RecordType::A);
        let cand = name("web.default.svc.cluster.local.");
        let r = response(
            "web.default.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NoError,
            vec![
                cname("web.default.svc.cluster.local.", 20, "lb.example."),
                cname("lb.example.", 300, "lb2.example."),
                a("lb2.example.", 60, [198, 18, 0, 1]),
                a("lb2.example.", 60, [198, 18, 0, 2]),
            ],
        );
        let out = present(&q, &cand, r);
        assert_eq!(out.answers.len(), 2);
        assert!(out
            .answers
            .iter()
            .all(|r| r.name == name("web.") && r.ttl == 20));
        assert!(out.answers.iter().all(|r| r.record_type() == RecordType::A));
    }

    #[test]
    fn cname_queries_and_dead_chains_are_only_renamed() {
        let q = query("web.", RecordType::A);
        let cand = name("web.default.svc.cluster.local.");
        let r = response(
            "web.default.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NoError,
            vec![cname("web.default.svc.cluster.local.", 20, "gone.example.")],
        );
        let out = present(&q, &cand, r);
        assert_eq!(out.answers.len(), 1);
        assert_eq!(out.answers[0].name, name("web."));
        assert_eq!(out.answers[0].record_type(), RecordType::CNAME);

        let q = query("web.", RecordType::CNAME);
        let r = response(
            "web.default.svc.cluster.local.",
            RecordType::CNAME,
            ResponseCode::NoError,
            vec![cname("web.default.svc.cluster.local.", 20, "x.example.")],
        );
        let out = present(&q, &cand, r);
        assert_eq!(out.answers[0].name, name("web."));
        assert_eq!(out.answers[0].record_type(), RecordType::CNAME);
    }

    #[test]
    fn cname_loop_does_not_hang() {
        let q = query("loop.", RecordType::A);
        let cand = name("loop.svc.");
        let r = response(
            "loop.svc.",
            RecordType::A,
            ResponseCode::NoError,
            vec![
                cname("loop.svc.", 5, "b.svc."),
                cname("b.svc.", 5, "loop.svc."),
            ],
        );
        let out = present(&q, &cand, r);
        assert_eq!(out.answers.len(), 2, "kept as is, owner renamed");
    }

    #[test]
    fn search_prefers_positive_then_nodata_then_servfail_then_nxdomain() {
        let nx = |n: &str| response(n, RecordType::A, ResponseCode::NXDomain, vec![]);
        let mut s = Search::default();
        assert!(!s.record(&name("a.x."), nx("a.x.")));
        assert!(!s.record(
            &name("a.y."),
            response("a.y.", RecordType::A, ResponseCode::ServFail, vec![])
        ));
        assert!(!s.record(
            &name("a.z."),
            response("a.z.", RecordType::A, ResponseCode::NoError, vec![])
        ));
        assert!(!s.record(&name("a."), nx("a.")));
        let (n, m) = s.finish().unwrap();
        assert_eq!(n, name("a.z."));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);

        let mut s = Search::default();
        s.record(&name("a.x."), nx("a.x."));
        s.record(&name("a."), nx("a."));
        let (n, m) = s.finish().unwrap();
        assert_eq!(n, name("a."));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

        let mut s = Search::default();
        assert!(s.record(
            &name("a.x."),
            response("a.x.", RecordType::A, ResponseCode::Refused, vec![])
        ));
        assert_eq!(
            s.finish().unwrap().1.metadata.response_code,
            ResponseCode::Refused
        );

        let mut s = Search::default();
        assert!(s.record(
            &name("a.x."),
            response(
                "a.x.",
                RecordType::A,
                ResponseCode::NoError,
                vec![a("a.x.", 1, [198, 18, 0, 1])]
            )
        ));
    }
}
