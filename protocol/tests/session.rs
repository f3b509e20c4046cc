//! In-memory tests of whole sessions over `tokio::io::duplex`: handshake, streams, flow
//! control, half-close, reset, UDP, DNS, keepalive and misbehaving peers.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use sctrace_protocol::{
    CloseReason, Config, DnsFailureKind, DnsQueryError, DnsTransport, EnvQueryError, Frame,
    HandshakeError, OpenError, RefuseReason, Request, Session, Token, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

mod common;
use common::{accept_by_hand, challenge_by_hand, connect_by_hand, read_one_frame, send_frame};

fn token() -> Token {
    Token::new(&b"test-token"[..]).unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

async fn pair_with(client_cfg: Config, server_cfg: Config) -> (Session, Session) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let t = token();
    let server = tokio::spawn(async move { Session::server(b, &token(), server_cfg).await });
    let client = Session::client(a, &t, client_cfg)
        .await
        .expect("client handshake");
    let server = server.await.unwrap().expect("server handshake");
    (client, server)
}

async fn pair() -> (Session, Session) {
    pair_with(Config::default(), Config::default()).await
}

/// Serves requests like a tiny agent: TCP streams echo, UDP flows echo with the address,
/// DNS answers are the query reversed; connecting to port 1 is refused with ECONNREFUSED.
fn serve_echo(session: Session) -> sctrace_protocol::SessionHandle {
    let Session {
        handle,
        mut requests,
        task,
    } = session;
    tokio::spawn(task.run());
    tokio::spawn(async move {
        while let Some(req) = requests.next().await {
            match req {
                Request::ConnectTcp(r) => {
                    if r.addr().port() == 1 {
                        r.reject(111);
                        continue;
                    }
                    let stream = r.accept(addr("198.18.9.2:40000")).unwrap();
                    tokio::spawn(async move {
                        let (mut rd, mut wr) = tokio::io::split(stream);
                        let _ = tokio::io::copy(&mut rd, &mut wr).await;
                        let _ = wr.shutdown().await;
                        // Keep the stream until the peer has its copy of our FIN.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    });
                }
                Request::OpenUdp(r) => {
                    let flow = r.accept(addr("198.18.9.2:50000")).unwrap();
                    tokio::spawn(async move {
                        while let Ok((a, p)) = flow.recv_from().await {
                            if flow.send_to(a, &p).await.is_err() {
                                break;
                            }
                        }
                    });
                }
                Request::Dns(r) => {
                    if r.message().is_empty() {
                        r.fail(DnsFailureKind::BadQuery, "empty");
                    } else {
                        let mut v = r.message().to_vec();
                        v.reverse();
                        if r.transport() == DnsTransport::Tcp {
                            v.push(b'T');
                        }
                        r.answer(Bytes::from(v)).unwrap();
                    }
                }
                Request::Env(r) => {
                    // Enough variables to need several EnvVars frames.
                    let vars = (0..40)
                        .map(|i| {
                            (
                                Bytes::from(format!("VAR_{i}")),
                                Bytes::from(vec![b'a' + (i % 26) as u8; 4000]),
                            )
                        })
                        .collect();
                    r.answer(vars).unwrap();
                }
                _ => {}
            }
        }
    });
    handle
}

fn payload(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn handshake_agrees_on_version_and_echo_works() {
    let (client, server) = pair().await;
    assert_eq!(client.handle.version(), sctrace_protocol::PROTOCOL_VERSION);
    let _server = serve_echo(server);
    tokio::spawn(client.task.run());
    let mut s = client
        .handle
        .connect_tcp(addr("198.18.0.7:80"))
        .await
        .unwrap();
    assert_eq!(s.local_addr(), addr("198.18.9.2:40000"));
    assert_eq!(s.peer_addr(), addr("198.18.0.7:80"));
    s.write_all(b"hello").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hello");
}

#[tokio::test]
async fn different_tokens_stop_the_client_before_it_proves_anything() {
    let (a, b) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move { Session::server(b, &token(), Config::default()).await });
    let wrong = Token::new(&b"wrong-token"[..]).unwrap();
    let client = Session::client(a, &wrong, Config::default()).await;
    assert!(
        matches!(client, Err(HandshakeError::AgentNotAuthenticated)),
        "{:?}",
        client.err()
    );
    // The server saw the client leave without a proof.
    assert!(matches!(
        server.await.unwrap(),
        Err(HandshakeError::ClientRejectedProof)
    ));
}

#[tokio::test]
async fn a_client_without_the_token_is_refused() {
    let (mut a, b) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move { Session::server(b, &token(), Config::default()).await });
    // The client believes in another token: it proves with that one (skipping the check of
    // the agent's proof, which would stop it).
    let mut buf = BytesMut::new();
    let nonce = [7u8; 32];
    send_frame(
        &mut a,
        Frame::Hello {
            min_version: 2,
            max_version: 2,
            stream_window: 65536,
            token: Bytes::copy_from_slice(&nonce),
        },
    )
    .await;
    let Some(Frame::AuthChallenge { .. }) = read_one_frame(&mut a, &mut buf).await else {
        panic!("expected AuthChallenge");
    };
    send_frame(&mut a, Frame::AuthProof { proof: [0x55; 32] }).await;
    match read_one_frame(&mut a, &mut buf).await {
        Some(Frame::Refused { reason, message }) => {
            assert_eq!(reason, RefuseReason::BadToken);
            assert!(message.contains("token"), "{message}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    match server.await.unwrap() {
        Err(HandshakeError::RefusedPeer { reason, .. }) => {
            assert_eq!(reason, RefuseReason::BadToken)
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("bad proof accepted"),
    }
}

#[tokio::test]
async fn version_mismatch_is_refused_with_both_ranges() {
    let (mut a, b) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move { Session::server(b, &token(), Config::default()).await });
    send_frame(
        &mut a,
        Frame::Hello {
            min_version: 7,
            max_version: 9,
            stream_window: 65536,
            token: Bytes::from_static(b"test-token"),
        },
    )
    .await;
    let mut buf = BytesMut::new();
    match read_one_frame(&mut a, &mut buf).await {
        Some(Frame::Refused { reason, message }) => {
            assert_eq!(reason, RefuseReason::UnsupportedVersion);
            assert!(
                message.contains(&format!("2..={PROTOCOL_VERSION}")) && message.contains("7..=9"),
                "{message}"
            );
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(matches!(
        server.await.unwrap(),
        Err(HandshakeError::RefusedPeer {
            reason: RefuseReason::UnsupportedVersion,
            ..
        })
    ));
}

#[tokio::test]
async fn client_rejects_a_welcome_outside_its_range() {
    let (a, mut b) = tokio::io::duplex(1 << 16);
    let client = tokio::spawn(async move { Session::client(a, &token(), Config::default()).await });
    let mut buf = BytesMut::new();
    challenge_by_hand(&mut b, &mut buf, &token()).await;
    send_frame(
        &mut b,
        Frame::Welcome {
            version: 42,
            stream_window: 65536,
        },
    )
    .await;
    assert!(matches!(
        client.await.unwrap(),
        Err(HandshakeError::BadWelcome { .. })
    ));
}

#[tokio::test]
async fn garbage_instead_of_hello_is_refused() {
    let (mut a, b) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move { Session::server(b, &token(), Config::default()).await });
    a.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = BytesMut::new();
    assert!(matches!(
        read_one_frame(&mut a, &mut buf).await,
        Some(Frame::Refused {
            reason: RefuseReason::BadHandshake,
            ..
        })
    ));
    assert!(matches!(
        server.await.unwrap(),
        Err(HandshakeError::Decode(_))
    ));
}

#[tokio::test]
async fn silent_client_times_out_in_handshake() {
    let (_a, b) = tokio::io::duplex(1 << 16);
    let cfg = Config {
        handshake_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let r = Session::server(b, &token(), cfg).await;
    assert!(matches!(r, Err(HandshakeError::Timeout(_))));
}

#[tokio::test]
async fn connect_failure_carries_the_errno() {
    let (client, server) = pair().await;
    let _server = serve_echo(server);
    tokio::spawn(client.task.run());
    let err = client
        .handle
        .connect_tcp(addr("198.18.0.7:1"))
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::Failed { errno: 111 }), "{err}");
    assert_eq!(err.errno(), 111);
    assert!(err.to_string().contains("refused"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_keep_their_bytes() {
    let (client, server) = pair().await;
    let _server = serve_echo(server);
    tokio::spawn(client.task.run());
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let handle = client.handle.clone();
        tasks.push(tokio::spawn(async move {
            let data = payload(i, 20_000 + (i as usize) * 997);
            let s = handle.connect_tcp(addr("198.18.0.7:7")).await.unwrap();
            let (mut rd, mut wr) = tokio::io::split(s);
            let expected = data.clone();
            let writer = tokio::spawn(async move {
                wr.write_all(&data).await.unwrap();
                wr.shutdown().await.unwrap();
                wr
            });
            let mut got = Vec::new();
            rd.read_to_end(&mut got).await.unwrap();
            let _wr = writer.await.unwrap();
            assert_eq!(got.len(), expected.len());
            assert!(got == expected, "stream {i} corrupted");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_does_not_block_others() {
    let (client, server) = pair().await;
    let Session {
        handle: _server_handle,
        mut requests,
        task,
    } = server;
    tokio::spawn(task.run());
    tokio::spawn(client.task.run());
    // The server pushes 4 MiB into the first stream, whose client never reads.
    let (pushed_tx, mut pushed_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    tokio::spawn(async move {
        let mut first = true;
        while let Some(Request::ConnectTcp(r)) = requests.next().await {
            let mut s = r.accept(addr("198.18.9.2:1")).unwrap();
            if first {
                first = false;
                let pushed = pushed_tx.clone();
                tokio::spawn(async move {
                    let chunk = vec![7u8; 16 * 1024];
                    let mut total = 0;
                    for _ in 0..256 {
                        if s.write_all(&chunk).await.is_err() {
                            break;
                        }
                        total += chunk.len();
                        let _ = pushed.send(total);
                    }
                });
            } else {
                tokio::spawn(async move {
                    let (mut rd, mut wr) = tokio::io::split(s);
                    let _ = tokio::io::copy(&mut rd, &mut wr).await;
                    let _ = wr.shutdown().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                });
            }
        }
    });
    let _stalled = client
        .handle
        .connect_tcp(addr("198.18.0.7:9"))
        .await
        .unwrap();
    // The pusher runs into the stream window and stays there.
    let window = Config::default().stream_window as usize;
    let mut pushed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pushed < window {
        match tokio::time::timeout_at(deadline, pushed_rx.recv()).await {
            Ok(Some(n)) => pushed = n,
            other => panic!("pusher stopped at {pushed} bytes: {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(n) = pushed_rx.try_recv() {
        pushed = n;
    }
    assert_eq!(pushed, window, "sent past the window of an unread stream");
    // Other streams still flow, in volume.
    for i in 0..4 {
        let mut s = client
            .handle
            .connect_tcp(addr("198.18.0.7:7"))
            .await
            .unwrap();
        let data = payload(i, 1 << 20);
        let (mut rd, mut wr) = tokio::io::split(&mut s);
        let expected = data.clone();
        let (w, r) = tokio::join!(
            async move {
                wr.write_all(&data).await.unwrap();
                wr.shutdown().await.unwrap();
            },
            async move {
                let mut got = Vec::new();
                rd.read_to_end(&mut got).await.unwrap();
                got
            }
        );
        let () = w;
        assert!(r == expected);
    }
}

#[tokio::test]
async fn half_close_lets_the_other_direction_finish() {
    let (client, server) = pair().await;
    let Session {
        handle: _h,
        mut requests,
        task,
    } = server;
    tokio::spawn(task.run());
    tokio::spawn(client.task.run());
    tokio::spawn(async move {
        if let Some(Request::ConnectTcp(r)) = requests.next().await {
            let mut s = r.accept(addr("198.18.9.2:1")).unwrap();
            let mut req = Vec::new();
            s.read_to_end(&mut req).await.unwrap(); // ends at the client's FIN
            s.write_all(format!("got {} bytes", req.len()).as_bytes())
                .await
                .unwrap();
            s.shutdown().await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut s = client
        .handle
        .connect_tcp(addr("198.18.0.7:80"))
        .await
        .unwrap();
    s.write_all(&[1u8; 1000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert_eq!(resp, "got 1000 bytes");
    assert!(s.write_all(b"x").await.is_err(), "write after shutdown");
}

#[tokio::test]
async fn reset_reaches_the_peer_with_its_errno() {
    let (client, server) = pair().await;
    let Session {
        handle: _h,
        mut requests,
        task,
    } = server;
    tokio::spawn(task.run());
    tokio::spawn(client.task.run());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        // First stream: reset with ETIMEDOUT. Second: dropped without shutdown.
        if let Some(Request::ConnectTcp(r)) = requests.next().await {
            let mut s = r.accept(addr("198.18.9.2:1")).unwrap();
            s.write_all(b"partial").await.unwrap();
            s.reset(110);
        }
        if let Some(Request::ConnectTcp(r)) = requests.next().await {
            let s = r.accept(addr("198.18.9.2:2")).unwrap();
            drop(s);
        }
        let _ = done_tx.send(requests);
    });
    let mut s = client
        .handle
        .connect_tcp(addr("198.18.0.7:80"))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let err = s.read_to_end(&mut buf).await.unwrap_err();
    assert_eq!(err.raw_os_error(), Some(110));
    assert!(s.write_all(b"x").await.is_err());

    let mut s = client
        .handle
        .connect_tcp(addr("198.18.0.7:80"))
        .await
        .unwrap();
    let err = s.read_to_end(&mut buf).await.unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(104),
        "drop without shutdown resets"
    );
    let _ = done_rx.await;
}

#[tokio::test]
async fn dropping_a_pending_connect_cancels_it() {
    let (client, server) = pair().await;
    let Session {
        handle: _h,
        mut requests,
        task,
    } = server;
    tokio::spawn(task.run());
    tokio::spawn(client.task.run());
    let (cancelled_tx, cancelled_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Some(Request::ConnectTcp(mut r)) = requests.next().await {
            r.cancelled().await;
            let _ = cancelled_tx.send(r.accept(addr("198.18.9.2:1")).is_err());
        }
    });
    let r = tokio::time::timeout(
        Duration::from_millis(100),
        client.handle.connect_tcp(addr("198.18.0.7:80")),
    )
    .await;
    assert!(r.is_err(), "connect should still be pending");
    let accept_failed = tokio::time::timeout(Duration::from_secs(5), cancelled_rx)
        .await
        .expect("server saw the cancel")
        .unwrap();
    assert!(accept_failed, "accepting a cancelled request must fail");
}

#[tokio::test]
async fn udp_datagrams_keep_their_addresses() {
    let (client, server) = pair().await;
    let _server = serve_echo(server);
    tokio::spawn(client.task.run());
    let flow = client.handle.open_udp(addr("0.0.0.0:0")).await.unwrap();
    assert_eq!(flow.local_addr(), addr("198.18.9.2:50000"));
    for i in 0..10u8 {
        let dst = SocketAddr::from(([198, 18, 0, i], 5000 + u16::from(i)));
        flow.send_to(dst, &[i; 100]).await.unwrap();
        let (from, data) = flow.recv_from().await.unwrap();
        assert_eq!(from, dst);
        assert_eq!(&data[..], &[i; 100][..]);
    }
    let v6 = addr("[2001:2:0:5c::7]:53");
    flow.send_to(v6, b"six").await.unwrap();
    assert_eq!(
        flow.recv_from().await.unwrap(),
        (v6, Bytes::from_static(b"six"))
    );
    assert!(flow.send_to(v6, &vec![0u8; 70_000]).await.is_err());
}

#[tokio::test]
async fn dns_queries_pass_through_both_transports() {
    let (client, server) = pair().await;
    let _server = serve_echo(server);
    tokio::spawn(client.task.run());
    let a = client
        .handle
        .dns_query(Bytes::from_static(b"abc"), DnsTransport::Udp)
        .await
        .unwrap();
    assert_eq!(&a[..], b"cba");
    let big = Bytes::from(vec![b'x'; 60_000]);
    let a = client
        .handle
        .dns_query(big, DnsTransport::Tcp)
        .await
        .unwrap();
    assert_eq!(a.len(), 60_001);
    assert_eq!(a[60_000], b'T');
    match client
        .handle
        .dns_query(Bytes::new(), DnsTransport::Udp)
        .await
    {
        Err(DnsQueryError::Failed { kind, message }) => {
            assert_eq!(kind, DnsFailureKind::BadQuery);
            assert_eq!(message, "empty");
        }
        other => panic!("expected failure, got {other:?}"),
    }
    let too_big = Bytes::from(vec![0u8; 70_000]);
    assert!(matches!(
        client.handle.dns_query(too_big, DnsTransport::Tcp).await,
        Err(DnsQueryError::TooLarge { len: 70_000 })
    ));
}

#[tokio::test]
async fn unserved_requests_are_refused() {
    let (client, server) = pair().await;
    drop(server.requests);
    tokio::spawn(server.task.run());
    let _keep = server.handle;
    tokio::spawn(client.task.run());
    let err = client
        .handle
        .connect_tcp(addr("198.18.0.7:80"))
        .await
        .unwrap_err();
    assert_eq!(err.errno(), 95);
    assert!(matches!(
        client
            .handle
            .dns_query(Bytes::from_static(b"q"), DnsTransport::Udp)
            .await,
        Err(DnsQueryError::Failed {
            kind: DnsFailureKind::Unavailable,
            ..
        })
    ));
    assert!(matches!(
        client.handle.target_env().await,
        Err(EnvQueryError::Failed { .. })
    ));
}

#[tokio::test]
async fn keepalive_timeout_ends_a_session_with_a_silent_peer() {
    let (a, mut b) = tokio::io::duplex(1 << 16);
    let cfg = Config {
        keepalive_interval: Duration::from_millis(50),
        keepalive_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let client = tokio::spawn(async move { Session::client(a, &token(), cfg).await });
    let mut buf = BytesMut::new();
    accept_by_hand(&mut b, &mut buf, &token()).await;
    let session = client.await.unwrap().unwrap();
    let started = std::time::Instant::now();
    let run = tokio::spawn(session.task.run());
    // The fake server reads (so writes never block) but never answers.
    let sink = tokio::spawn(async move {
        let mut pings = 0;
        while let Some(f) = read_one_frame(&mut b, &mut buf).await {
            if matches!(f, Frame::Ping { .. }) {
                pings += 1;
            }
        }
        pings
    });
    let reason = tokio::time::timeout(Duration::from_secs(5), session.handle.closed())
        .await
        .expect("keepalive fired");
    assert!(
        matches!(reason, CloseReason::KeepaliveTimeout { .. }),
        "{reason}"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(matches!(
        run.await.unwrap(),
        CloseReason::KeepaliveTimeout { .. }
    ));
    assert!(sink.await.unwrap() >= 2, "pings were sent");
}

#[tokio::test]
async fn peer_answers_pings() {
    let cfg = Config {
        keepalive_interval: Duration::from_millis(20),
        keepalive_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let (client, server) = pair_with(cfg.clone(), cfg).await;
    let _server = serve_echo(server);
    tokio::spawn(client.task.run());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        client.handle.close_reason().is_none(),
        "session stays up while pings are answered"
    );
}

/// Completes a handshake as a raw client, returning the server session and the raw end.
#[tokio::test]
async fn environment_arrives_whole_over_several_frames() {
    let (client, server) = pair().await;
    let _server = serve_echo(server);
    tokio::spawn(client.task.run());
    let vars = client.handle.target_env().await.unwrap();
    assert_eq!(vars.len(), 40);
    for (i, (name, value)) in vars.iter().enumerate() {
        assert_eq!(name, format!("VAR_{i}").as_bytes());
        assert_eq!(value.len(), 4000);
        assert!(value.iter().all(|b| *b == b'a' + (i % 26) as u8));
    }
}

#[tokio::test]
async fn environment_failures_and_refusals_reach_the_asker() {
    let (client, server) = pair().await;
    let Session {
        handle,
        mut requests,
        task,
    } = server;
    tokio::spawn(task.run());
    tokio::spawn(client.task.run());
    tokio::spawn(async move {
        let _keep = handle;
        let mut n = 0;
        while let Some(req) = requests.next().await {
            if let Request::Env(r) = req {
                n += 1;
                match n {
                    1 => r.fail("the target is a network namespace: it has no process"),
                    2 => {
                        // A name the protocol cannot carry: refused as a whole.
                        let bad = vec![(Bytes::from_static(b"A=B"), Bytes::from_static(b"1"))];
                        assert!(r.answer(bad).is_err());
                    }
                    3 => r.answer(Vec::new()).unwrap(),
                    _ => drop(r),
                }
            }
        }
    });
    let err = client.handle.target_env().await.unwrap_err();
    assert!(
        matches!(&err, EnvQueryError::Failed { message } if message.contains("no process")),
        "{err}"
    );
    let err = client.handle.target_env().await.unwrap_err();
    assert!(
        matches!(&err, EnvQueryError::Failed { message } if message.contains("'='")),
        "{err}"
    );
    assert!(client.handle.target_env().await.unwrap().is_empty());
    // Dropped without an answer: refused.
    assert!(matches!(
        client.handle.target_env().await,
        Err(EnvQueryError::Failed { .. })
    ));
    client.handle.shutdown("done");
    assert!(matches!(
        client.handle.target_env().await,
        Err(EnvQueryError::SessionClosed(_))
    ));
}

#[tokio::test]
async fn an_environment_above_the_limit_ends_the_session() {
    let (server, mut a) = raw_client().await;
    let handle = server.handle.clone();
    tokio::spawn(server.task.run());
    let asked = tokio::spawn(async move { handle.target_env().await });
    let mut buf = BytesMut::new();
    let Some(Frame::EnvQuery { stream }) = read_one_frame(&mut a, &mut buf).await else {
        panic!("no EnvQuery");
    };
    // 20 frames of 60 KiB: past the 1 MiB an environment may have. The session ends on the
    // frame that crosses it, so later writes may fail.
    for _ in 0..20 {
        let vars = vec![(Bytes::from_static(b"X"), Bytes::from(vec![b'x'; 60 * 1024]))];
        let mut b = BytesMut::new();
        Frame::EnvVars {
            stream,
            vars,
            more: true,
        }
        .encode(&mut b)
        .unwrap();
        if a.write_all(&b).await.is_err() {
            break;
        }
    }
    assert!(expect_goaway(&mut a).await.contains("environment larger"));
    assert!(matches!(
        asked.await.unwrap(),
        Err(EnvQueryError::SessionClosed(_))
    ));
}

async fn raw_client() -> (Session, DuplexStream) {
    let (mut a, b) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move { Session::server(b, &token(), Config::default()).await });
    let mut buf = BytesMut::new();
    assert!(matches!(
        connect_by_hand(&mut a, &mut buf, &token()).await,
        Some(Frame::Welcome { .. })
    ));
    (server.await.unwrap().unwrap(), a)
}

async fn expect_goaway(a: &mut DuplexStream) -> String {
    let mut buf = BytesMut::new();
    while let Some(f) = read_one_frame(a, &mut buf).await {
        if let Frame::GoAway { message } = f {
            return message;
        }
    }
    panic!("no GoAway before EOF");
}

#[tokio::test]
async fn garbage_after_handshake_ends_only_that_session() {
    let (good_client, good_server) = pair().await;
    let _good = serve_echo(good_server);
    tokio::spawn(good_client.task.run());

    let (server, mut a) = raw_client().await;
    let run = tokio::spawn(server.task.run());
    a.write_all(&[0xff; 64]).await.unwrap();
    let reason = run.await.unwrap();
    assert!(matches!(reason, CloseReason::Decode(_)), "{reason}");
    assert!(expect_goaway(&mut a).await.contains("unknown frame type"));

    let mut s = good_client
        .handle
        .connect_tcp(addr("198.18.0.7:7"))
        .await
        .unwrap();
    s.write_all(b"still fine").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"still fine");
}

#[tokio::test]
async fn oversized_frame_header_ends_the_session() {
    let (server, mut a) = raw_client().await;
    let run = tokio::spawn(server.task.run());
    let mut b = BytesMut::new();
    b.put_u32(1 << 30);
    b.put_u8(0x20);
    b.put_u8(0);
    b.put_u32(1);
    a.write_all(&b).await.unwrap();
    assert!(matches!(
        run.await.unwrap(),
        CloseReason::Decode(sctrace_protocol::DecodeError::Oversized { .. })
    ));
}

#[tokio::test]
async fn flow_control_violation_ends_the_session() {
    let (server, mut a) = raw_client().await;
    let Session {
        handle: _h,
        mut requests,
        task,
    } = server;
    let run = tokio::spawn(task.run());
    send_frame(
        &mut a,
        Frame::ConnectTcp {
            stream: 1,
            addr: addr("198.18.0.7:80"),
            timeout_ms: 0,
            attach: false,
        },
    )
    .await;
    let Some(Request::ConnectTcp(r)) = requests.next().await else {
        panic!("no request")
    };
    let _s = r.accept(addr("198.18.9.2:1")).unwrap();
    // Send one 64 KiB frame more than the server's window without waiting for credit.
    for _ in 0..Config::default().stream_window / 65536 + 1 {
        send_frame(
            &mut a,
            Frame::Data {
                stream: 1,
                payload: Bytes::from(vec![0u8; 65536]),
            },
        )
        .await;
    }
    let reason = run.await.unwrap();
    assert!(
        matches!(&reason, CloseReason::Violation(d) if d.contains("credit")),
        "{reason}"
    );
}

#[tokio::test]
async fn frames_for_unknown_streams_end_the_session() {
    let (server, mut a) = raw_client().await;
    let run = tokio::spawn(server.task.run());
    send_frame(
        &mut a,
        Frame::Data {
            stream: 99,
            payload: Bytes::from_static(b"x"),
        },
    )
    .await;
    assert!(matches!(run.await.unwrap(), CloseReason::Violation(_)));
}

#[tokio::test]
async fn reused_stream_id_ends_the_session() {
    let (server, mut a) = raw_client().await;
    let Session {
        handle: _h,
        requests: _r,
        task,
    } = server;
    let run = tokio::spawn(task.run());
    for _ in 0..2 {
        send_frame(
            &mut a,
            Frame::ConnectTcp {
                stream: 3,
                addr: addr("198.18.0.7:80"),
                timeout_ms: 0,
                attach: false,
            },
        )
        .await;
    }
    assert!(matches!(run.await.unwrap(), CloseReason::Violation(d) if d.contains("reused")));
}

#[tokio::test]
async fn shutdown_reaches_the_peer_and_fails_its_streams() {
    let (client, server) = pair().await;
    let server_handle = serve_echo(server);
    tokio::spawn(client.task.run());
    let mut s = client
        .handle
        .connect_tcp(addr("198.18.0.7:7"))
        .await
        .unwrap();
    server_handle.shutdown("agent is shutting down");
    let reason = tokio::time::timeout(Duration::from_secs(2), client.handle.closed())
        .await
        .unwrap();
    match &reason {
        CloseReason::PeerShutdown { message } => assert_eq!(message, "agent is shutting down"),
        other => panic!("unexpected {other}"),
    }
    let mut buf = [0u8; 10];
    let err = s.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    assert!(err.to_string().contains("agent is shutting down"), "{err}");
    assert!(matches!(
        client.handle.connect_tcp(addr("198.18.0.7:7")).await,
        Err(OpenError::SessionClosed(_))
    ));
}

#[tokio::test]
async fn peer_disconnect_is_reported_promptly() {
    let (client, server) = pair().await;
    tokio::spawn(client.task.run());
    let mut s = {
        let Session {
            handle,
            mut requests,
            task,
        } = server;
        let run = tokio::spawn(task.run());
        let h = client.handle.clone();
        let opener = tokio::spawn(async move { h.connect_tcp(addr("198.18.0.7:7")).await });
        let Some(Request::ConnectTcp(r)) = requests.next().await else {
            panic!()
        };
        let _server_stream = r.accept(addr("198.18.9.2:1")).unwrap();
        let s = opener.await.unwrap().unwrap();
        // The agent process dies: its end of the connection goes away.
        run.abort();
        drop(handle);
        s
    };
    let started = std::time::Instant::now();
    let mut buf = [0u8; 10];
    let err = s.read(&mut buf).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    assert!(matches!(
        client.handle.closed().await,
        CloseReason::PeerClosed
    ));
}

#[tokio::test]
async fn dropping_every_handle_shuts_the_session_down() {
    let (client, server) = pair().await;
    let server_handle = serve_echo(server);
    let run = tokio::spawn(client.task.run());
    drop(client.handle);
    assert!(matches!(
        run.await.unwrap(),
        CloseReason::LocalShutdown { .. }
    ));
    assert!(matches!(
        server_handle.closed().await,
        CloseReason::PeerShutdown { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_passes_half_close_and_data_both_ways() {
    let (client, server) = pair().await;
    let Session {
        handle: _h,
        mut requests,
        task,
    } = server;
    tokio::spawn(task.run());
    tokio::spawn(client.task.run());
    // Server side: relay the stream to an in-memory "socket" whose far end echoes.
    tokio::spawn(async move {
        if let Some(Request::ConnectTcp(r)) = requests.next().await {
            let mut s = r.accept(addr("198.18.9.2:1")).unwrap();
            let (mut near, far) = tokio::io::duplex(4096);
            tokio::spawn(async move {
                let (mut rd, mut wr) = tokio::io::split(far);
                tokio::io::copy(&mut rd, &mut wr).await.unwrap();
                wr.shutdown().await.unwrap();
            });
            let outcome = sctrace_protocol::relay(&mut s, &mut near).await;
            assert!(
                matches!(outcome.end, sctrace_protocol::RelayEnd::Closed),
                "{outcome:?}"
            );
            assert_eq!(outcome.to_stream, 300_000);
            assert_eq!(outcome.from_stream, 300_000);
        }
    });
    let s = client
        .handle
        .connect_tcp(addr("198.18.0.7:7"))
        .await
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(s);
    let data = payload(5, 300_000);
    let expected = data.clone();
    let w = tokio::spawn(async move {
        wr.write_all(&data).await.unwrap();
        wr.shutdown().await.unwrap();
        wr
    });
    let mut got = Vec::new();
    rd.read_to_end(&mut got).await.unwrap();
    let _wr = w.await.unwrap();
    assert!(got == expected);
}

#[tokio::test]
async fn route_and_resolver_queries_are_answered_once() {
    let (client, server) = pair().await;
    let Session {
        handle,
        mut requests,
        task,
    } = server;
    tokio::spawn(task.run());
    tokio::spawn(client.task.run());
    tokio::spawn(async move {
        let _keep = handle;
        while let Some(req) = requests.next().await {
            match req {
                Request::Route(r) if r.addr().port() == 53 => {
                    r.answer(addr("198.18.0.9:40000")).unwrap()
                }
                Request::Route(r) if r.addr().port() == 1 => r.reject(101),
                Request::Route(r) => drop(r),
                Request::Resolver(r) => r
                    .answer("search default.svc.cluster.local\noptions ndots:5\n")
                    .unwrap(),
                _ => {}
            }
        }
    });
    assert_eq!(
        client
            .handle
            .probe_route(addr("198.18.0.2:53"))
            .await
            .unwrap(),
        addr("198.18.0.9:40000")
    );
    let err = client
        .handle
        .probe_route(addr("198.18.9.9:1"))
        .await
        .unwrap_err();
    assert_eq!(
        err.errno(),
        101,
        "ENETUNREACH, as the target's connect said"
    );
    // Dropped without an answer: refused, not left hanging.
    assert!(client
        .handle
        .probe_route(addr("198.18.0.2:2"))
        .await
        .is_err());
    assert_eq!(
        client.handle.resolver_conf().await.unwrap(),
        "search default.svc.cluster.local\noptions ndots:5\n"
    );
    // Each exchange ended with its answer: the session is still healthy.
    assert!(client.handle.close_reason().is_none());
    client.handle.shutdown("done");
    assert!(client
        .handle
        .probe_route(addr("198.18.0.2:53"))
        .await
        .is_err());
}

/// Both ends relay (the zero-copy path: reads queued as they are, written out by the task
/// that read them) over a connection so tight that most writes would block, from several
/// streams at once, with pieces below and above the size that is copied inline: every byte
/// arrives, in order, on the right stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_on_both_ends_over_a_tight_connection_keep_every_byte() {
    let (a, b) = tokio::io::duplex(8 * 1024);
    let t = token();
    let server = tokio::spawn(async move { Session::server(b, &token(), Config::default()).await });
    let client = Session::client(a, &t, Config::default()).await.unwrap();
    let server = server.await.unwrap().unwrap();
    let Session {
        handle: _server_handle,
        mut requests,
        task,
    } = server;
    tokio::spawn(task.run());
    tokio::spawn(client.task.run());
    // Server: each stream relayed to a local echo.
    tokio::spawn(async move {
        while let Some(Request::ConnectTcp(r)) = requests.next().await {
            let mut s = r.accept(addr("198.18.9.2:1")).unwrap();
            tokio::spawn(async move {
                let (mut near, far) = tokio::io::duplex(3000);
                tokio::spawn(async move {
                    let (mut rd, mut wr) = tokio::io::split(far);
                    tokio::io::copy(&mut rd, &mut wr).await.unwrap();
                    wr.shutdown().await.unwrap();
                });
                let outcome = sctrace_protocol::relay(&mut s, &mut near).await;
                assert!(matches!(outcome.end, sctrace_protocol::RelayEnd::Closed));
            });
        }
    });
    let mut tasks = Vec::new();
    for i in 0..6u32 {
        let handle = client.handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = handle.connect_tcp(addr("198.18.0.7:7")).await.unwrap();
            // The app's side: writes pieces of varied sizes, reads the echo.
            let (mut app, near) = tokio::io::duplex(100_000);
            let relayed = tokio::spawn(async move {
                let mut near = near;
                sctrace_protocol::relay(&mut s, &mut near).await
            });
            let data = payload(i, 1_500_000 + i as usize * 4099);
            let expected = data.clone();
            let (mut rd, mut wr) = tokio::io::split(&mut app);
            let write = async {
                let sizes = [1usize, 64, 2047, 2048, 2049, 9000, 65_536, 70_000];
                let mut at = 0;
                let mut k = 0;
                while at < data.len() {
                    let end = (at + sizes[k % sizes.len()]).min(data.len());
                    wr.write_all(&data[at..end]).await.unwrap();
                    at = end;
                    k += 1;
                }
                wr.shutdown().await.unwrap();
            };
            let read = async {
                let mut got = Vec::new();
                rd.read_to_end(&mut got).await.unwrap();
                got
            };
            let ((), got) = tokio::join!(write, read);
            assert_eq!(got.len(), expected.len(), "stream {i}");
            assert!(got == expected, "stream {i} corrupted");
            let outcome = relayed.await.unwrap();
            assert!(
                matches!(outcome.end, sctrace_protocol::RelayEnd::Closed),
                "{outcome:?}"
            );
            assert_eq!(outcome.to_stream, expected.len() as u64);
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("relays finish")
            .unwrap();
    }
}

/// A local side that takes vectored writes, a few bytes of several slices at a time (as a
/// socket whose buffer is almost full does).
struct Vectored<T>(T);

impl<T: AsyncRead + Unpin> AsyncRead for Vectored<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Vectored<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        // Up to 5000 bytes across the slices, handed to the inner writer in one piece.
        let mut joined = Vec::new();
        for b in bufs {
            let room = 5000 - joined.len();
            joined.extend_from_slice(&b[..b.len().min(room)]);
            if joined.len() == 5000 {
                break;
            }
        }
        std::pin::Pin::new(&mut self.0).poll_write(cx, &joined)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// relay() writes what the stream received as vectored writes of several chunks to a local
/// side that takes them partly, across chunk boundaries: every byte arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_writes_queued_chunks_vectored_and_keeps_every_byte() {
    let (client, server) = pair().await;
    let Session {
        handle: _server_handle,
        mut requests,
        task,
    } = server;
    tokio::spawn(task.run());
    tokio::spawn(client.task.run());
    let received = tokio::spawn(async move {
        let Some(Request::ConnectTcp(r)) = requests.next().await else {
            panic!("no connect");
        };
        let mut s = r.accept(addr("198.18.9.2:1")).unwrap();
        let (near, mut far) = tokio::io::duplex(7000);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut near = Vectored(near);
        let outcome = sctrace_protocol::relay(&mut s, &mut near).await;
        drop(near);
        (outcome, reader.await.unwrap())
    });
    let mut s = client
        .handle
        .connect_tcp(addr("198.18.0.7:7"))
        .await
        .unwrap();
    let data = payload(9, 3_000_000);
    // Large writes, so that several maximal Data frames wait on the stream at once.
    for piece in data.chunks(200_000) {
        s.write_all(piece).await.unwrap();
    }
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    let (outcome, got) = tokio::time::timeout(Duration::from_secs(60), received)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(outcome.end, sctrace_protocol::RelayEnd::Closed),
        "{outcome:?}"
    );
    assert_eq!(outcome.from_stream, data.len() as u64);
    assert!(got == data, "bytes lost, repeated or reordered");
}
