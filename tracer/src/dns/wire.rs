//! The little sctrace needs from DNS messages, through hickory-proto: the question of a
//! query, a summary of an answer, and a SERVFAIL reply; and, walking the wire format
//! itself, where a message's question and TTL fields are ([`Layout`]), so that the answer
//! cache can serve an answer as received with only its id and TTLs rewritten.

use std::net::IpAddr;
use std::ops::Range;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RData;

/// A query's question, when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A standard query.
    Query {
        /// The name asked, without the root dot.
        name: String,
        /// The record type (`A`, `AAAA`, ...).
        qtype: String,
    },
    /// Anything else (not parseable, no question, a response).
    Other,
}

/// A query message (not a response), when `bytes` is one.
pub fn parse_query_message(bytes: &[u8]) -> Option<Message> {
    Message::from_vec(bytes)
        .ok()
        .filter(|msg| msg.metadata.message_type == MessageType::Query)
}

/// The question of a query message.
pub fn question(msg: &Message) -> Parsed {
    match msg.queries.first() {
        Some(q) => Parsed::Query {
            name: q.name.to_string().trim_end_matches('.').to_string(),
            qtype: q.query_type.to_string(),
        },
        None => Parsed::Other,
    }
}

/// What an answer said, for events and the name cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// `ok`, `NXDOMAIN`, `NODATA`, `SERVFAIL`, `REFUSED`, ...
    pub result: String,
    /// The answer records' data as text (`198.18.0.10`, `CNAME x.example.`, ...).
    pub answers: Vec<String>,
    /// The addresses among them.
    pub addrs: Vec<IpAddr>,
}

/// Summarizes an answer.
pub fn summarize(bytes: &[u8]) -> Summary {
    let Ok(msg) = Message::from_vec(bytes) else {
        return Summary {
            result: "unparsable".into(),
            answers: Vec::new(),
            addrs: Vec::new(),
        };
    };
    let mut answers = Vec::new();
    let mut addrs = Vec::new();
    for record in &msg.answers {
        match &record.data {
            RData::A(a) => {
                addrs.push(IpAddr::V4(a.0));
                answers.push(a.0.to_string());
            }
            RData::AAAA(a) => {
                addrs.push(IpAddr::V6(a.0));
                answers.push(a.0.to_string());
            }
            other => answers.push(format!("{} {}", record.record_type(), other)),
        }
    }
    let result = match msg.metadata.response_code {
        ResponseCode::NoError if msg.answers.is_empty() => "NODATA".to_string(),
        ResponseCode::NoError => "ok".to_string(),
        ResponseCode::NXDomain => "NXDOMAIN".to_string(),
        ResponseCode::ServFail => "SERVFAIL".to_string(),
        ResponseCode::Refused => "REFUSED".to_string(),
        ResponseCode::FormErr => "FORMERR".to_string(),
        other => other.to_string().to_uppercase(),
    };
    Summary {
        result,
        answers,
        addrs,
    }
}

/// A SERVFAIL reply to `query` (same id and question), for queries the agent could not
/// resolve at all; `None` if the query can't be parsed.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let mut reply = Message::error_msg(q.metadata.id, q.metadata.op_code, ResponseCode::ServFail);
    reply.metadata.recursion_desired = q.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.queries = q.queries.clone();
    reply.to_vec().ok()
}

/// Length of the DNS header (RFC 1035 §4.1.1).
pub const HEADER: usize = 12;
/// The OPT pseudo-record (RFC 6891): its TTL field holds EDNS flags, not a TTL.
pub const OPT: u16 = 41;
/// TSIG (RFC 8945): a signed message is never served again.
pub const TSIG: u16 = 250;
/// SIG, as SIG(0) signs a whole message (RFC 2931).
pub const SIG: u16 = 24;

/// The section of a message a record is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Answer.
    Answer,
    /// Authority.
    Authority,
    /// Additional.
    Additional,
}

/// One resource record's TTL field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlField {
    /// Offset of the 32-bit TTL in the message.
    pub offset: usize,
    /// The record's type.
    pub rtype: u16,
    /// The section the record is in.
    pub section: Section,
}

/// Where the parts of a DNS message are, found by walking its wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The question section (every question, as encoded).
    pub question: Range<usize>,
    /// Offset of the first question's 16-bit type.
    pub qtype_at: usize,
    /// The TTL field of every record, in order.
    pub ttls: Vec<TtlField>,
}

impl Layout {
    /// The layout of `bytes`, a message with exactly one question that ends with its last
    /// record; `None` for anything else (truncated mid-record, trailing bytes, label types
    /// other than plain and compressed).
    pub fn of(bytes: &[u8]) -> Option<Layout> {
        let count = |at: usize| Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]));
        let (qd, an, ns, ar) = (count(4)?, count(6)?, count(8)?, count(10)?);
        if qd != 1 {
            return None;
        }
        let name_end = skip_name(bytes, HEADER)?;
        let question_end = name_end.checked_add(4)?;
        if question_end > bytes.len() {
            return None;
        }
        let sections = [
            (Section::Answer, an),
            (Section::Authority, ns),
            (Section::Additional, ar),
        ];
        let mut ttls = Vec::new();
        let mut at = question_end;
        for (section, n) in sections {
            for _ in 0..n {
                let fixed = skip_name(bytes, at)?;
                let rtype = count(fixed)?;
                let rdlength = usize::from(count(fixed + 8)?);
                ttls.push(TtlField {
                    offset: fixed + 4,
                    rtype,
                    section,
                });
                at = fixed.checked_add(10 + rdlength)?;
                if at > bytes.len() {
                    return None;
                }
            }
        }
        (at == bytes.len()).then_some(Layout {
            question: HEADER..question_end,
            qtype_at: name_end,
            ttls,
        })
    }
}

/// The offset just past the (possibly compressed) name at `at`.
fn skip_name(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *bytes.get(at)?;
        match len & 0xC0 {
            0x00 if len == 0 => return Some(at + 1),
            0x00 => at += 1 + usize::from(len),
            // A pointer ends the name where it stands (RFC 1035 §4.1.4).
            0xC0 => return bytes.get(at + 1).map(|_| at + 2),
            // Extended label types (RFC 6891 §5): not walked.
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{OpCode, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, Record, RecordType};
    use std::str::FromStr;

    fn query(name: &str) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    fn parse_query(bytes: &[u8]) -> Parsed {
        parse_query_message(bytes).map_or(Parsed::Other, |msg| question(&msg))
    }

    #[test]
    fn questions_are_read() {
        assert_eq!(
            parse_query(&query("uwu-service.")),
            Parsed::Query {
                name: "uwu-service".into(),
                qtype: "A".into()
            }
        );
        assert_eq!(parse_query(b"garbage"), Parsed::Other);
        assert_eq!(parse_query(&[]), Parsed::Other);
    }

    #[test]
    fn answers_are_summarized() {
        let mut m = Message::response(0x1234, OpCode::Query);
        let name = Name::from_str("uwu-service.").unwrap();
        m.add_query(Query::query(name.clone(), RecordType::A));
        m.add_answer(Record::from_rdata(
            name,
            5,
            RData::A(A::new(198, 18, 0, 10)),
        ));
        let s = summarize(&m.to_vec().unwrap());
        assert_eq!(s.result, "ok");
        assert_eq!(s.answers, ["198.18.0.10"]);
        assert_eq!(s.addrs, [IpAddr::from([198, 18, 0, 10])]);
        assert_eq!(summarize(b"\x00").result, "unparsable");
    }

    #[test]
    fn the_layout_finds_the_question_and_every_ttl_field() {
        use hickory_proto::op::Edns;
        use hickory_proto::rr::rdata::CNAME;
        let mut m = Message::response(0x1234, OpCode::Query);
        let owner = Name::from_ascii("Uwu-Service.default.svc.cluster.local.").unwrap();
        let target = Name::from_str("lb.cluster.local.").unwrap();
        m.add_query(Query::query(owner.clone(), RecordType::A));
        m.add_answer(Record::from_rdata(
            owner,
            0x0102_0304,
            RData::CNAME(CNAME(target.clone())),
        ));
        m.add_answer(Record::from_rdata(
            target,
            7,
            RData::A(A::new(198, 18, 0, 10)),
        ));
        m.set_edns(Edns::new());
        let bytes = m.to_vec().unwrap();
        let layout = Layout::of(&bytes).unwrap();
        let name_len = "Uwu-Service.default.svc.cluster.local.".len() + 1;
        assert_eq!(layout.question, HEADER..HEADER + name_len + 4);
        assert_eq!(
            bytes[layout.question.start + 1..layout.question.start + 4],
            *b"Uwu",
            "the question as spelled"
        );
        assert_eq!(layout.qtype_at, HEADER + name_len);
        assert_eq!(bytes[layout.qtype_at..layout.qtype_at + 2], [0, 1]);
        let fields: Vec<(u16, Section)> =
            layout.ttls.iter().map(|t| (t.rtype, t.section)).collect();
        assert_eq!(
            fields,
            [
                (5, Section::Answer),
                (1, Section::Answer),
                (OPT, Section::Additional)
            ]
        );
        let ttl =
            |t: &TtlField| u32::from_be_bytes(bytes[t.offset..t.offset + 4].try_into().unwrap());
        assert_eq!(ttl(&layout.ttls[0]), 0x0102_0304);
        assert_eq!(ttl(&layout.ttls[1]), 7);

        // Cut short, with bytes after, or not one question: no layout.
        assert_eq!(Layout::of(&bytes[..bytes.len() - 1]), None);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Layout::of(&longer), None);
        assert_eq!(Layout::of(&bytes[..5]), None);
        let mut two = bytes.clone();
        two[5] = 2;
        assert_eq!(Layout::of(&two), None);
        // An extended label type.
        let mut extended = bytes;
        extended[HEADER] = 0x41;
        assert_eq!(Layout::of(&extended), None);
    }

    #[test]
    fn servfail_keeps_id_and_question() {
        let reply = servfail(&query("x.example.")).unwrap();
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(servfail(b"junk"), None);
    }
}
