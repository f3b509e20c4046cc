//! A fake agent for unit tests: a real session over an in-memory pipe, whose agent end
//! answers every A and AAAA question with one record, and every route query with one
//! source address, after a delay, counting what it was asked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use sctrace_protocol::{Config, Request, Session, SessionHandle, Token};

/// What the fake agent was asked.
#[derive(Debug, Default)]
pub struct Asked {
    /// A questions.
    pub a: AtomicUsize,
    /// AAAA questions.
    pub aaaa: AtomicUsize,
    /// Route queries.
    pub routes: AtomicUsize,
}

impl Asked {
    /// (A, AAAA, routes) so far.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.a.load(Ordering::SeqCst),
            self.aaaa.load(Ordering::SeqCst),
            self.routes.load(Ordering::SeqCst),
        )
    }
}

/// A session to a fake agent answering with records of TTL `ttl`, after `delay`.
pub async fn start(ttl: u32, delay: Duration) -> (SessionHandle, Arc<Asked>) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let token = || Token::new(&b"test-token"[..]).unwrap();
    let server = tokio::spawn(async move { Session::server(b, &token(), Config::default()).await });
    let client = Session::client(a, &token(), Config::default())
        .await
        .unwrap();
    let Session {
        mut requests,
        task,
        handle,
    } = server.await.unwrap().unwrap();
    tokio::spawn(task.run());
    tokio::spawn(client.task.run());
    let asked = Arc::new(Asked::default());
    let seen = Arc::clone(&asked);
    tokio::spawn(async move {
        // The agent's end lives as long as this task.
        let _handle = handle;
        while let Some(request) = requests.next().await {
            match request {
                Request::Dns(r) => {
                    let query = Message::from_vec(r.message()).unwrap();
                    let q = query.queries[0].clone();
                    let data = if q.query_type == RecordType::A {
                        seen.a.fetch_add(1, Ordering::SeqCst);
                        RData::A(A::new(198, 18, 0, 10))
                    } else {
                        seen.aaaa.fetch_add(1, Ordering::SeqCst);
                        RData::AAAA(AAAA::new(0x2001, 2, 0, 0, 0, 0, 0, 0x10))
                    };
                    let mut answer =
                        Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
                    answer.metadata.recursion_desired = query.metadata.recursion_desired;
                    answer.metadata.response_code = ResponseCode::NoError;
                    answer.add_answer(Record::from_rdata(q.name.clone(), ttl, data));
                    answer.queries = vec![q];
                    let bytes = Bytes::from(answer.to_vec().unwrap());
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = r.answer(bytes);
                    });
                }
                Request::Route(r) => {
                    seen.routes.fetch_add(1, Ordering::SeqCst);
                    let source: SocketAddr = if r.addr().is_ipv4() {
                        "198.18.0.1:0".parse().unwrap()
                    } else {
                        "[2001:2::1]:0".parse().unwrap()
                    };
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = r.answer(source);
                    });
                }
                _ => {}
            }
        }
    });
    (client.handle, asked)
}
