//! End-to-end tests of the real `sctrace-agent` binary: started in the root namespace with a
//! target namespace whose services and DNS exist only there, driven by the protocol client.
//! Needs root (network namespaces), iproute2, iptables and dnsmasq.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{echo, Agent, World, ECHO, ECHO6};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use nix::sys::signal::Signal;
use sctrace_protocol::{CloseReason, DnsTransport, HandshakeError, OpenError, RefuseReason};
use tokio::io::AsyncWriteExt;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn dns_query(name: &str, qtype: RecordType) -> Bytes {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    Bytes::from(m.to_vec().unwrap())
}

fn parse(answer: &[u8]) -> Message {
    Message::from_vec(answer).expect("agent answered a valid DNS message")
}

fn a_records(m: &Message) -> Vec<(String, IpAddr)> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((r.name.to_ascii(), IpAddr::V4(a.0))),
            _ => None,
        })
        .collect()
}

fn cname_records(m: &Message) -> Vec<(String, String)> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::CNAME(target) => Some((r.name.to_ascii(), target.0.to_ascii())),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_inside_the_target_namespace_only() {
    let world = World::new().await;
    let agent = Agent::start(&world, &[]);
    let session = agent.session().await;
    // 198.18.0.7 exists only inside the namespace: reaching it proves the agent's sockets
    // live there.
    let mut s = session.connect_tcp(addr(ECHO)).await.unwrap();
    assert_eq!(
        s.local_addr().ip(),
        addr(ECHO).ip(),
        "source address in the target"
    );
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert!(echo(&mut s, &data).await == data);

    let mut s6 = session.connect_tcp(addr(ECHO6)).await.unwrap();
    assert_eq!(echo(&mut s6, b"over ipv6").await, b"over ipv6");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_carry_the_kernels_errno() {
    let world = World::new().await;
    let agent = Agent::start(&world, &[]);
    let session = agent.session().await;
    let errno = |r: Result<sctrace_protocol::Stream, OpenError>| match r {
        Err(OpenError::Failed { errno }) => errno,
        other => panic!("expected a failure, got {other:?}"),
    };
    assert_eq!(
        errno(session.connect_tcp(addr("198.18.0.7:1")).await),
        111,
        "ECONNREFUSED"
    );
    assert_eq!(
        errno(session.connect_tcp(addr(common::NO_ROUTE)).await),
        101,
        "ENETUNREACH"
    );
    assert_eq!(
        errno(session.connect_tcp(addr(common::UNREACHABLE_HOST)).await),
        113,
        "EHOSTUNREACH"
    );
    let started = Instant::now();
    let r = session
        .connect_tcp_timeout(addr(common::BLACKHOLE), Duration::from_secs(1))
        .await;
    assert_eq!(errno(r), 110, "ETIMEDOUT");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_and_reset_reach_the_target() {
    let mut world = World::new().await;
    let agent = Agent::start(&world, &[]);
    let session = agent.session().await;

    // Half-close: the echo server sees EOF, answers, then closes.
    let mut s = session.connect_tcp(addr(ECHO)).await.unwrap();
    assert_eq!(echo(&mut s, b"request").await, b"request");

    // Graceful close reaches the server as EOF...
    let mut s = session.connect_tcp(addr(common::OBSERVER)).await.unwrap();
    s.write_all(b"bye").await.unwrap();
    s.shutdown().await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), world.observed.recv()).await;
    assert_eq!(seen.unwrap().as_deref(), Some("eof"));
    drop(s);

    // ...and a reset as a reset (SO_LINGER 0 on the agent's socket).
    let mut s = session.connect_tcp(addr(common::OBSERVER)).await.unwrap();
    s.write_all(b"data").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.reset(0);
    let seen = tokio::time::timeout(Duration::from_secs(5), world.observed.recv()).await;
    assert_eq!(
        seen.unwrap().as_deref(),
        Some("error 104"),
        "ECONNRESET at the target"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flow_reports_the_source_address() {
    let world = World::new().await;
    let agent = Agent::start(&world, &[]);
    let session = agent.session().await;
    let flow = session.open_udp(addr("0.0.0.0:0")).await.unwrap();
    assert_ne!(flow.local_addr().port(), 0, "bound to an ephemeral port");
    for i in 0..5u8 {
        flow.send_to(addr(ECHO), &[i; 300]).await.unwrap();
        let (from, data) = tokio::time::timeout(Duration::from_secs(5), flow.recv_from())
            .await
            .expect("echo came back")
            .unwrap();
        assert_eq!(from, addr(ECHO));
        assert_eq!(&data[..], &[i; 300][..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_as_the_target_under_the_asked_name() {
    let world = World::new().await;
    let agent = Agent::start(&world, &[]);
    let session = agent.session().await;

    // The short name resolves through the target's search list, as an alias of the name
    // found (its canonical name, as the target's resolver would see it)...
    let m = parse(
        &session
            .dns_query(dns_query("uwu-service.", RecordType::A), DnsTransport::Udp)
            .await
            .unwrap(),
    );
    assert_eq!(m.metadata.id, 0x4242);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.queries[0].name.to_ascii(), "uwu-service.");
    assert_eq!(
        cname_records(&m),
        vec![(
            "uwu-service.".to_string(),
            "uwu-service.default.svc.cluster.local.".to_string()
        )]
    );
    assert_eq!(
        a_records(&m),
        vec![(
            "uwu-service.default.svc.cluster.local.".to_string(),
            "198.18.0.7".parse().unwrap()
        )]
    );

    // ...a CNAME chain of the target comes as the target's resolver sees it...
    let m = parse(
        &session
            .dns_query(dns_query("alias.", RecordType::A), DnsTransport::Udp)
            .await
            .unwrap(),
    );
    let aliases = cname_records(&m);
    assert_eq!(aliases[0].0, "alias.", "{aliases:?}");
    assert!(
        aliases.len() >= 2,
        "the target's own CNAME follows: {aliases:?}"
    );
    assert_eq!(
        a_records(&m).iter().map(|(_, ip)| *ip).collect::<Vec<_>>(),
        ["198.18.0.7".parse::<std::net::IpAddr>().unwrap()]
    );

    // ...a name that exists without the asked type is NODATA, not NXDOMAIN...
    let m = parse(
        &session
            .dns_query(
                dns_query("uwu-service.", RecordType::AAAA),
                DnsTransport::Udp,
            )
            .await
            .unwrap(),
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());

    // ...and NXDOMAIN only when every candidate fails.
    let m = parse(
        &session
            .dns_query(dns_query("nosuch.", RecordType::A), DnsTransport::Udp)
            .await
            .unwrap(),
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.queries[0].name.to_ascii(), "nosuch.");

    // A full name works too.
    let m = parse(
        &session
            .dns_query(
                dns_query("uwu-service.default.svc.cluster.local.", RecordType::A),
                DnsTransport::Udp,
            )
            .await
            .unwrap(),
    );
    assert_eq!(a_records(&m).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_dns_answers_truncate_over_udp_and_come_whole_over_tcp() {
    let world = World::new().await;
    let agent = Agent::start(&world, &[]);
    let session = agent.session().await;
    let udp = parse(
        &session
            .dns_query(dns_query("big.", RecordType::A), DnsTransport::Udp)
            .await
            .unwrap(),
    );
    assert!(udp.metadata.truncation, "60 A records do not fit 512 bytes");
    // Like a DNS server, the truncated answer keeps the whole records that fit (resolvers
    // without a TCP fallback use them).
    let partial = a_records(&udp);
    assert!(
        !partial.is_empty() && partial.len() < 60,
        "{} records",
        partial.len()
    );
    assert_eq!(udp.queries[0].name.to_ascii(), "big.");
    // Over TCP the agent itself had to use TCP upstream (dnsmasq truncates at 512 over UDP).
    let tcp = parse(
        &session
            .dns_query(dns_query("big.", RecordType::A), DnsTransport::Tcp)
            .await
            .unwrap(),
    );
    assert!(!tcp.metadata.truncation);
    let records = a_records(&tcp);
    assert_eq!(records.len(), 60);
    assert!(records
        .iter()
        .all(|(n, _)| n == "big.default.svc.cluster.local."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_another_token_stops_and_the_agent_logs_why() {
    let world = World::new().await;
    let agent = Agent::start(&world, &[]);
    match agent.session_with("not-the-token").await {
        Err(HandshakeError::AgentNotAuthenticated) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("bad token accepted"),
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agent.log_text().contains("session token differs") {
        assert!(
            Instant::now() < deadline,
            "not logged:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The agent still serves good sessions.
    let session = agent.session().await;
    let mut s = session.connect_tcp(addr(ECHO)).await.unwrap();
    assert_eq!(echo(&mut s, b"ok").await, b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_at_once() {
    let world = World::new().await;
    let agent = Agent::start(&world, &[]);
    let a = agent.session().await;
    let b = agent.session().await;
    let mut sa = a.connect_tcp(addr(ECHO)).await.unwrap();
    let mut sb = b.connect_tcp(addr(ECHO)).await.unwrap();
    let da = vec![1u8; 100_000];
    let db = vec![2u8; 100_000];
    let (ra, rb) = tokio::join!(echo(&mut sa, &da), echo(&mut sb, &db));
    assert!(ra == da && rb == db);
    drop(a);
    // Ending one session leaves the other working.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut sb = b.connect_tcp(addr(ECHO)).await.unwrap();
    assert_eq!(echo(&mut sb, b"still here").await, b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_clients_do_not_disturb_a_good_session() {
    let world = World::new().await;
    let agent = Agent::start(&world, &[]);
    let good = agent.session().await;
    let path = agent.listen.strip_prefix("unix:").unwrap().to_string();
    let mut mischief = Vec::new();
    // Garbage bytes.
    let mut g = tokio::net::UnixStream::connect(&path).await.unwrap();
    g.write_all(&[0xAB; 4096]).await.unwrap();
    mischief.push(g);
    // A header announcing a 1 GiB frame.
    let mut h = tokio::net::UnixStream::connect(&path).await.unwrap();
    h.write_all(&[0x40, 0, 0, 0, 0x01, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    mischief.push(h);
    // Slowloris: a valid header, then nothing.
    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    s.write_all(&[0, 0, 0, 20, 0x01, 0, 0, 0, 0, 0, b'S'])
        .await
        .unwrap();
    mischief.push(s);
    // A client that vanishes mid-stream.
    let vanishing = agent.session().await;
    let mut v = vanishing.connect_tcp(addr(ECHO)).await.unwrap();
    v.write_all(&[9u8; 50_000]).await.unwrap();
    drop(vanishing);

    for round in 0..3 {
        let mut st = good.connect_tcp(addr(ECHO)).await.unwrap();
        let data = vec![round as u8; 64_000];
        assert!(echo(&mut st, &data).await == data);
    }
    assert!(good.close_reason().is_none());
    drop(mischief);
    drop(v);
    let mut st = good.connect_tcp(addr(ECHO)).await.unwrap();
    assert_eq!(echo(&mut st, b"fine").await, b"fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_removes_the_socket() {
    let world = World::new().await;
    let mut agent = Agent::start(&world, &[]);
    let socket = agent.socket.clone().unwrap();
    assert!(socket.exists());
    let session = agent.session().await;
    let _s = session.connect_tcp(addr(ECHO)).await.unwrap();
    agent.signal(Signal::SIGTERM);
    let reason = tokio::time::timeout(Duration::from_secs(5), session.closed())
        .await
        .expect("session ended");
    assert!(
        matches!(&reason, CloseReason::PeerShutdown { message } if message.contains("shutting down")),
        "{reason}"
    );
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("agent exited");
    assert!(status.success(), "{status:?}\n{}", agent.log_text());
    assert!(!socket.exists(), "socket file removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_serves_one_session_then_exits() {
    let world = World::new().await;
    let mut agent = Agent::start(&world, &["--once"]);
    let first = agent.session().await;
    let mut s = first.connect_tcp(addr(ECHO)).await.unwrap();
    assert_eq!(echo(&mut s, b"one").await, b"one");
    match agent.session_with(common::TOKEN).await {
        Err(HandshakeError::RefusedByPeer { reason, .. }) => assert_eq!(reason, RefuseReason::Busy),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("a second session was served"),
    }
    drop(s);
    first.shutdown("done");
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("agent exited");
    assert!(status.success(), "{}", agent.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_exits_when_nobody_connects() {
    let world = World::new().await;
    let mut agent = Agent::start(&world, &["--idle-timeout", "1"]);
    // A session keeps it alive past the timeout...
    let session = agent.session().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "exited with a session connected"
    );
    // ...and once it ends, the agent leaves after the timeout.
    session.shutdown("bye");
    let started = Instant::now();
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("agent exited");
    assert!(status.success());
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_prints_its_actual_port() {
    let world = World::new().await;
    let agent = Agent::start_on(&world, "tcp:127.0.0.1:0", &[], None);
    let port: u16 = agent.listen.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0);
    let session = agent.session().await;
    let mut s = session.connect_tcp(addr(ECHO)).await.unwrap();
    assert_eq!(echo(&mut s, b"tcp").await, b"tcp");
}

#[test]
fn refuses_to_start_without_a_token() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sctrace-agent"))
        .args(["--listen", "tcp:127.0.0.1:0", "--pid", "1"])
        .env_remove("SCTRACE_AGENT_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no `listening` line");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("SCTRACE_AGENT_TOKEN"), "{stderr}");
}

#[test]
fn refuses_a_missing_namespace_clearly() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sctrace-agent"))
        .args([
            "--listen",
            "tcp:127.0.0.1:0",
            "--netns",
            "/run/netns/sctp-does-not-exist",
        ])
        .env("SCTRACE_AGENT_TOKEN", "t")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/run/netns/sctp-does-not-exist"),
        "{stderr}"
    );
}
