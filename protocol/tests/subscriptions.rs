//! In-memory tests of port subscriptions and incoming streams over `tokio::io::duplex`: the
//! tracer subscribes, the agent accepts and hands over connections, either side ends the
//! subscription, and a peer breaking the rules ends the session.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sctrace_protocol::{
    Config, Families, Frame, HttpFilter, IncomingKind, IncomingMode, ListenerPorts, OpenError,
    Request, Requests, Session, SessionHandle, SubscribeError, SubscribeFailureKind,
    SubscribeRequest, SubscriptionEnd, Token,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

mod common;
use common::{read_one_frame, send_frame};

fn token() -> Token {
    Token::new(&b"test-token"[..]).unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const CLIENT: &str = "198.18.1.2:40000";
const SERVER: &str = "198.18.1.1:80";
const APP: &str = "127.0.0.1:8080";

/// A connected tracer (client) and agent (server), both tasks running.
struct Pair {
    tracer: SessionHandle,
    tracer_requests: Requests,
    agent: SessionHandle,
    agent_requests: Requests,
}

async fn pair() -> Pair {
    let (a, b) = tokio::io::duplex(1 << 20);
    let server = tokio::spawn(async move { Session::server(b, &token(), Config::default()).await });
    let client = Session::client(a, &token(), Config::default())
        .await
        .expect("client handshake");
    let server = server.await.unwrap().expect("server handshake");
    tokio::spawn(client.task.run());
    tokio::spawn(server.task.run());
    Pair {
        tracer: client.handle,
        tracer_requests: client.requests,
        agent: server.handle,
        agent_requests: server.requests,
    }
}

async fn next_subscribe(requests: &mut Requests) -> SubscribeRequest {
    match tokio::time::timeout(Duration::from_secs(5), requests.next()).await {
        Ok(Some(Request::Subscribe(r))) => r,
        Ok(Some(_)) => panic!("expected a Subscribe request"),
        Ok(None) => panic!("session ended"),
        Err(_) => panic!("no request within 5 s"),
    }
}

async fn next_incoming(requests: &mut Requests) -> sctrace_protocol::IncomingRequest {
    match tokio::time::timeout(Duration::from_secs(5), requests.next()).await {
        Ok(Some(Request::Incoming(r))) => r,
        Ok(Some(_)) => panic!("expected an Incoming request"),
        Ok(None) => panic!("session ended"),
        Err(_) => panic!("no request within 5 s"),
    }
}

#[tokio::test]
async fn subscribe_then_a_stolen_connection_flows_both_ways() {
    let mut p = pair().await;
    let filter = HttpFilter::AnyOf(vec![
        HttpFilter::Header("^x-user: alice$".into()),
        HttpFilter::Method("POST".into()),
    ]);
    let tracer = p.tracer.clone();
    let sent = filter.clone();
    let subscribing =
        tokio::spawn(async move { tracer.subscribe(80, IncomingMode::Steal, Some(sent)).await });
    let request = next_subscribe(&mut p.agent_requests).await;
    assert_eq!(request.port(), 80);
    assert_eq!(request.mode(), IncomingMode::Steal);
    assert_eq!(request.filter(), Some(&filter));
    let agent_sub = request.accept().unwrap();
    let tracer_sub = subscribing.await.unwrap().unwrap();
    assert_eq!(tracer_sub.port(), 80);
    assert_eq!(tracer_sub.id(), agent_sub.id());

    let agent = p.agent.clone();
    let id = agent_sub.id();
    let opening = tokio::spawn(async move {
        agent
            .open_incoming(id, IncomingKind::Stolen, addr(CLIENT), addr(SERVER))
            .await
    });
    let incoming = next_incoming(&mut p.tracer_requests).await;
    assert_eq!(incoming.subscription(), tracer_sub.id());
    assert_eq!(incoming.kind(), IncomingKind::Stolen);
    assert_eq!(incoming.client(), addr(CLIENT));
    assert_eq!(incoming.server(), addr(SERVER));
    assert_eq!(incoming.port(), 80);
    let mut app_side = incoming.accept(addr(APP)).unwrap();
    assert_eq!(app_side.peer_addr(), addr(CLIENT));
    let mut agent_side = opening.await.unwrap().unwrap();
    assert_eq!(agent_side.local_addr(), addr(SERVER));
    assert_eq!(agent_side.peer_addr(), addr(CLIENT));

    agent_side
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    agent_side.shutdown().await.unwrap();
    let mut request = Vec::new();
    app_side.read_to_end(&mut request).await.unwrap();
    assert_eq!(request, b"GET / HTTP/1.1\r\n\r\n");
    app_side
        .write_all(b"HTTP/1.1 200 OK\r\n\r\n")
        .await
        .unwrap();
    app_side.shutdown().await.unwrap();
    let mut response = Vec::new();
    agent_side.read_to_end(&mut response).await.unwrap();
    assert_eq!(response, b"HTTP/1.1 200 OK\r\n\r\n");
}

#[tokio::test]
async fn unsubscribing_reaches_the_agent_and_refuses_later_connections() {
    let mut p = pair().await;
    let tracer = p.tracer.clone();
    let subscribing =
        tokio::spawn(async move { tracer.subscribe(8080, IncomingMode::Mirror, None).await });
    let mut agent_sub = next_subscribe(&mut p.agent_requests)
        .await
        .accept()
        .unwrap();
    let tracer_sub = subscribing.await.unwrap().unwrap();
    let id = agent_sub.id();
    drop(tracer_sub);
    let end = tokio::time::timeout(Duration::from_secs(5), agent_sub.ended())
        .await
        .expect("the agent learns of the unsubscribe");
    assert!(
        matches!(end, SubscriptionEnd::Ended { errno: 0 }),
        "{end:?}"
    );
    // The agent's side knows it has ended: no frame is sent at all.
    let r = p
        .agent
        .open_incoming(id, IncomingKind::Mirrored, addr(CLIENT), addr(SERVER))
        .await;
    assert!(matches!(r, Err(OpenError::Failed { errno: 111 })), "{r:?}");
    // A subscription id the tracer never made is refused the same way.
    let r = p
        .agent
        .open_incoming(99, IncomingKind::Stolen, addr(CLIENT), addr(SERVER))
        .await;
    assert!(matches!(r, Err(OpenError::Failed { errno: 111 })), "{r:?}");
}

#[tokio::test]
async fn the_agent_can_end_a_subscription_with_an_errno() {
    let mut p = pair().await;
    let tracer = p.tracer.clone();
    let subscribing =
        tokio::spawn(async move { tracer.subscribe(80, IncomingMode::Steal, None).await });
    let agent_sub = next_subscribe(&mut p.agent_requests)
        .await
        .accept()
        .unwrap();
    let mut tracer_sub = subscribing.await.unwrap().unwrap();
    agent_sub.end(32);
    let end = tokio::time::timeout(Duration::from_secs(5), tracer_sub.ended())
        .await
        .unwrap();
    assert!(
        matches!(end, SubscriptionEnd::Ended { errno: 32 }),
        "{end:?}"
    );
}

#[tokio::test]
async fn refusals_carry_the_agents_reason() {
    let mut p = pair().await;
    let tracer = p.tracer.clone();
    let subscribing =
        tokio::spawn(async move { tracer.subscribe(80, IncomingMode::Steal, None).await });
    next_subscribe(&mut p.agent_requests).await.reject(
        SubscribeFailureKind::PortInUse,
        "port 80 is already stolen by another session",
    );
    match subscribing.await.unwrap() {
        Err(e @ SubscribeError::Refused { .. }) => {
            let SubscribeError::Refused {
                port,
                kind,
                ref message,
            } = e
            else {
                unreachable!()
            };
            assert_eq!(port, 80);
            assert_eq!(kind, SubscribeFailureKind::PortInUse);
            assert_eq!(message, "port 80 is already stolen by another session");
            assert!(e.to_string().contains("port 80"), "{e}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A request the agent drops unanswered is refused as unsupported.
    let tracer = p.tracer.clone();
    let subscribing =
        tokio::spawn(async move { tracer.subscribe(81, IncomingMode::Mirror, None).await });
    drop(next_subscribe(&mut p.agent_requests).await);
    assert!(matches!(
        subscribing.await.unwrap(),
        Err(SubscribeError::Refused {
            kind: SubscribeFailureKind::Unsupported,
            ..
        })
    ));
}

#[tokio::test]
async fn a_steal_to_the_tracers_own_listeners_reaches_the_agent() {
    let mut p = pair().await;
    let ports = ListenerPorts {
        ipv4: Some(40000),
        ipv6: None,
    };
    let tracer = p.tracer.clone();
    let subscribing =
        tokio::spawn(async move { tracer.steal_to_listeners(8080, Families::BOTH, ports).await });
    let request = next_subscribe(&mut p.agent_requests).await;
    assert_eq!(request.port(), 8080);
    assert_eq!(request.mode(), IncomingMode::Steal);
    assert_eq!(request.families(), Families::BOTH);
    assert_eq!(request.listeners(), Some(ports));
    assert!(request.filter().is_none());
    let _held = request.accept().unwrap();
    assert!(subscribing.await.unwrap().is_ok());
    // A plain subscription names none.
    let tracer = p.tracer.clone();
    let plain =
        tokio::spawn(async move { tracer.subscribe(8081, IncomingMode::Steal, None).await });
    let request = next_subscribe(&mut p.agent_requests).await;
    assert_eq!(request.listeners(), None);
    let _held2 = request.accept().unwrap();
    assert!(plain.await.unwrap().is_ok());
}

#[tokio::test]
async fn invalid_subscriptions_are_refused_before_sending() {
    let p = pair().await;
    assert!(matches!(
        p.tracer.subscribe(0, IncomingMode::Steal, None).await,
        Err(SubscribeError::PortZero)
    ));
    assert!(matches!(
        p.tracer
            .subscribe(80, IncomingMode::Steal, Some(HttpFilter::AllOf(vec![])))
            .await,
        Err(SubscribeError::BadFilter(_))
    ));
    let huge = HttpFilter::AnyOf(vec![HttpFilter::Path("a".repeat(4096)); 256]);
    assert!(matches!(
        p.tracer
            .subscribe(80, IncomingMode::Steal, Some(huge))
            .await,
        Err(SubscribeError::TooLarge(_))
    ));
    // The session is still fine.
    assert!(p.tracer.close_reason().is_none());
}

#[tokio::test]
async fn the_tracer_declining_an_incoming_stream_reaches_the_agent() {
    let mut p = pair().await;
    let tracer = p.tracer.clone();
    let subscribing =
        tokio::spawn(async move { tracer.subscribe(80, IncomingMode::Steal, None).await });
    let agent_sub = next_subscribe(&mut p.agent_requests)
        .await
        .accept()
        .unwrap();
    let _tracer_sub = subscribing.await.unwrap().unwrap();
    let agent = p.agent.clone();
    let id = agent_sub.id();
    let opening = tokio::spawn(async move {
        agent
            .open_incoming(id, IncomingKind::HttpRequest, addr(CLIENT), addr(SERVER))
            .await
    });
    next_incoming(&mut p.tracer_requests).await.reject(111);
    assert!(matches!(
        opening.await.unwrap(),
        Err(OpenError::Failed { errno: 111 })
    ));
    // A tracer that serves no requests at all declines with EOPNOTSUPP.
    drop(p.tracer_requests);
    let r = p
        .agent
        .open_incoming(id, IncomingKind::Stolen, addr(CLIENT), addr(SERVER))
        .await;
    assert!(matches!(r, Err(OpenError::Failed { errno: 95 })), "{r:?}");
}

#[tokio::test]
async fn dropping_a_pending_subscribe_cancels_it() {
    let mut p = pair().await;
    let tracer = p.tracer.clone();
    let subscribing =
        tokio::spawn(async move { tracer.subscribe(80, IncomingMode::Steal, None).await });
    let mut request = next_subscribe(&mut p.agent_requests).await;
    subscribing.abort();
    tokio::time::timeout(Duration::from_secs(5), request.cancelled())
        .await
        .expect("the agent learns the subscribe was cancelled");
    assert!(request.accept().is_err());
}

#[tokio::test]
async fn the_session_ending_ends_every_subscription() {
    let mut p = pair().await;
    let tracer = p.tracer.clone();
    let subscribing =
        tokio::spawn(async move { tracer.subscribe(80, IncomingMode::Steal, None).await });
    let mut agent_sub = next_subscribe(&mut p.agent_requests)
        .await
        .accept()
        .unwrap();
    let mut tracer_sub = subscribing.await.unwrap().unwrap();
    p.tracer.shutdown("the app exited");
    let end = tokio::time::timeout(Duration::from_secs(5), agent_sub.ended())
        .await
        .unwrap();
    assert!(matches!(end, SubscriptionEnd::SessionClosed(_)), "{end:?}");
    let end = tokio::time::timeout(Duration::from_secs(5), tracer_sub.ended())
        .await
        .unwrap();
    assert!(matches!(end, SubscriptionEnd::SessionClosed(_)), "{end:?}");
}

/// A tracer session whose agent is played by hand with raw frames.
async fn raw_agent() -> (Session, DuplexStream, BytesMut) {
    let (a, mut b) = tokio::io::duplex(1 << 16);
    let client = tokio::spawn(async move { Session::client(a, &token(), Config::default()).await });
    let mut buf = BytesMut::new();
    common::accept_by_hand(&mut b, &mut buf, &token()).await;
    (client.await.unwrap().unwrap(), b, buf)
}

async fn expect_frame(io: &mut DuplexStream, buf: &mut BytesMut) -> Frame {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), read_one_frame(io, buf))
            .await
            .expect("a frame within 5 s")
        {
            Some(Frame::Ping { .. } | Frame::Pong { .. }) => continue,
            Some(f) => return f,
            None => panic!("EOF"),
        }
    }
}

#[tokio::test]
async fn an_incoming_stream_crossing_the_unsubscribe_is_refused() {
    let (session, mut agent, mut buf) = raw_agent().await;
    let Session {
        handle,
        mut requests,
        task,
    } = session;
    tokio::spawn(task.run());
    let tracer = handle.clone();
    let subscribing =
        tokio::spawn(async move { tracer.subscribe(80, IncomingMode::Steal, None).await });
    let Frame::Subscribe { stream, .. } = expect_frame(&mut agent, &mut buf).await else {
        panic!("expected Subscribe");
    };
    send_frame(&mut agent, Frame::Subscribed { stream }).await;
    let sub = subscribing.await.unwrap().unwrap();
    drop(sub);
    assert_eq!(
        expect_frame(&mut agent, &mut buf).await,
        Frame::Reset { stream, errno: 0 }
    );
    // The agent had already sent this connection when the Reset crossed it.
    send_frame(
        &mut agent,
        Frame::IncomingTcp {
            stream: 2,
            subscription: stream,
            kind: IncomingKind::Stolen,
            client: addr(CLIENT),
            server: addr(SERVER),
        },
    )
    .await;
    assert_eq!(
        expect_frame(&mut agent, &mut buf).await,
        Frame::OpenFailed {
            stream: 2,
            errno: 111
        }
    );
    // Nothing reached the tracer's user, and the session lives on.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), requests.next())
            .await
            .is_err()
    );
    assert!(handle.close_reason().is_none());
}

#[tokio::test]
async fn an_incoming_stream_for_a_subscription_never_made_ends_the_session() {
    let (session, mut agent, mut buf) = raw_agent().await;
    tokio::spawn(session.task.run());
    send_frame(
        &mut agent,
        Frame::IncomingTcp {
            stream: 2,
            subscription: 7,
            kind: IncomingKind::Stolen,
            client: addr(CLIENT),
            server: addr(SERVER),
        },
    )
    .await;
    match expect_frame(&mut agent, &mut buf).await {
        Frame::GoAway { message } => assert!(message.contains("never made"), "{message}"),
        other => panic!("expected GoAway, got {other:?}"),
    }
    let _ = session.handle;
}

#[tokio::test]
async fn data_on_a_subscription_ends_the_session() {
    let (session, mut agent, mut buf) = raw_agent().await;
    tokio::spawn(session.task.run());
    let tracer = session.handle.clone();
    let subscribing =
        tokio::spawn(async move { tracer.subscribe(80, IncomingMode::Steal, None).await });
    let Frame::Subscribe { stream, .. } = expect_frame(&mut agent, &mut buf).await else {
        panic!("expected Subscribe");
    };
    send_frame(&mut agent, Frame::Subscribed { stream }).await;
    let _sub = subscribing.await.unwrap().unwrap();
    send_frame(
        &mut agent,
        Frame::Data {
            stream,
            payload: Bytes::from_static(b"x"),
        },
    )
    .await;
    match expect_frame(&mut agent, &mut buf).await {
        Frame::GoAway { message } => {
            assert!(message.contains("not that kind of stream"), "{message}")
        }
        other => panic!("expected GoAway, got {other:?}"),
    }
}
