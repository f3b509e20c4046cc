//! The little sctrace needs from DNS messages, through hickory-proto: the question of a
//! query, a summary of an answer, and a SERVFAIL reply.

use std::net::IpAddr;

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
    fn servfail_keeps_id_and_question() {
        let reply = servfail(&query("x.example.")).unwrap();
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(servfail(b"junk"), None);
    }
}
