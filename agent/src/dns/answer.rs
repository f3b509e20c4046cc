//! Choosing among the answers for each search candidate, and presenting the chosen one as
//! the answer to the name the application asked (an alias of the name found).

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::CNAME;
use hickory_proto::rr::{Name, RData, Record};

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
/// question. When the search list made `candidate` out of the asked name, a positive answer
/// starts with a CNAME from the asked name to `candidate` — as a name server that knows the
/// short name as an alias would answer — followed by the target's own records, unchanged
/// (owners, CNAME chains, TTLs): the application's resolver then finds the same canonical
/// name, addresses and TTLs as the target's resolver did. The CNAME's TTL is the smallest of
/// the records it leads to. A negative answer (NXDOMAIN, NODATA) keeps its rcode and
/// authority section.
pub fn present(original: &Message, candidate: &Name, mut reply: Message) -> Message {
    reply.metadata.id = original.metadata.id;
    reply.metadata.recursion_desired = original.metadata.recursion_desired;
    reply.metadata.checking_disabled = original.metadata.checking_disabled;
    reply.queries = original.queries.clone();
    let Some(question) = original.queries.first() else {
        return reply;
    };
    let asked = &question.name;
    if asked.eq_ignore_root(candidate) || reply.answers.is_empty() {
        // Not renamed (only the question's spelling, e.g. 0x20 case, is restored), or
        // nothing to lead to.
        return reply;
    }
    let ttl = reply.answers.iter().map(|r| r.ttl).min().unwrap_or(0);
    let mut target = candidate.clone();
    target.set_fqdn(true);
    let alias = Record::from_rdata(asked.clone(), ttl, RData::CNAME(CNAME(target)));
    reply.answers.insert(0, alias);
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::RecordType;
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
    fn a_searched_name_is_an_alias_of_the_name_found() {
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
        assert_eq!(
            out.answers,
            [
                cname("uwu-service.", 30, "uwu-service.default.svc.cluster.local."),
                a(
                    "uwu-service.default.svc.cluster.local.",
                    30,
                    [198, 18, 0, 7]
                )
            ]
        );
    }

    #[test]
    fn the_targets_chains_and_ttls_are_kept() {
        let q = query("web.", RecordType::A);
        let cand = name("web.default.svc.cluster.local.");
        let records = vec![
            cname("web.default.svc.cluster.local.", 20, "lb.example."),
            cname("lb.example.", 300, "lb2.example."),
            a("lb2.example.", 60, [198, 18, 0, 1]),
            a("lb2.example.", 60, [198, 18, 0, 2]),
        ];
        let r = response(
            "web.default.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NoError,
            records.clone(),
        );
        let out = present(&q, &cand, r);
        assert_eq!(
            out.answers[0],
            cname("web.", 20, "web.default.svc.cluster.local.")
        );
        assert_eq!(out.answers[1..], records[..]);
    }

    #[test]
    fn answers_for_the_asked_name_and_negative_answers_are_unchanged() {
        let q = query("UwU-Service.Default.Svc.Cluster.Local.", RecordType::A);
        let cand = name("uwu-service.default.svc.cluster.local.");
        let records = vec![a(
            "uwu-service.default.svc.cluster.local.",
            5,
            [198, 18, 0, 7],
        )];
        let r = response(
            "uwu-service.default.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NoError,
            records.clone(),
        );
        let out = present(&q, &cand, r);
        assert_eq!(out.queries, q.queries, "the asked spelling comes back");
        assert_eq!(out.answers, records);

        let q = query("v4-only.", RecordType::AAAA);
        let cand = name("v4-only.default.svc.cluster.local.");
        let r = response(
            "v4-only.default.svc.cluster.local.",
            RecordType::AAAA,
            ResponseCode::NoError,
            vec![],
        );
        let out = present(&q, &cand, r);
        assert!(out.answers.is_empty(), "NODATA stays NODATA");
        assert_eq!(out.metadata.response_code, ResponseCode::NoError);
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
