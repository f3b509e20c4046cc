//! The version 2 handshake against eavesdroppers, impostors and replays: the token never
//! crosses the wire, each side proves itself over fresh nonces, a recorded exchange is
//! worthless, and before authentication only handshake-sized frames are read.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use sctrace_protocol::{
    CloseReason, Config, DecodeError, Frame, HandshakeError, RefuseReason, Session, Token,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

mod common;
use common::{accept_by_hand, read_one_frame, send_frame};

const SECRET: &[u8] = b"0123456789abcdef-the-session-token-0123456789abcdef";

fn token() -> Token {
    Token::new(SECRET).unwrap()
}

/// Everything that went one way through a [`tap`].
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<Vec<u8>>>);

impl Recording {
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Copies `from` to `to`, recording the bytes, until either side closes.
fn record(mut from: DuplexStream, mut to: DuplexStream, into: Recording) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    into.0.lock().unwrap().extend_from_slice(&buf[..n]);
                    if to.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown().await;
    });
}

/// A client end and a server end joined through a recording tap: what the client sent,
/// what the server sent.
fn tap() -> (DuplexStream, DuplexStream, Recording, Recording) {
    let (client, client_tap) = tokio::io::duplex(1 << 16);
    let (server_tap, server) = tokio::io::duplex(1 << 16);
    let (c_read, c_write) = split(client_tap);
    let (s_read, s_write) = split(server_tap);
    let sent_by_client = Recording::default();
    let sent_by_server = Recording::default();
    record(c_read, s_write, sent_by_client.clone());
    record(s_read, c_write, sent_by_server.clone());
    (client, server, sent_by_client, sent_by_server)
}

/// Splits a duplex end into a read end and a write end that are themselves duplex streams.
fn split(io: DuplexStream) -> (DuplexStream, DuplexStream) {
    let (mut r, mut w) = tokio::io::split(io);
    let (read_end, mut read_feed) = tokio::io::duplex(1 << 16);
    let (mut write_feed, write_end) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut r, &mut read_feed).await;
    });
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut write_feed, &mut w).await;
        let _ = w.shutdown().await;
    });
    (read_end, write_end)
}

/// A client handshaking in a task, and the raw end it talks to.
fn client_and_its_peer() -> (
    tokio::task::JoinHandle<Result<Session, HandshakeError>>,
    DuplexStream,
) {
    let (client, peer) = tokio::io::duplex(1 << 16);
    let connecting =
        tokio::spawn(async move { Session::client(client, &token(), Config::default()).await });
    (connecting, peer)
}

/// A successful handshake and a little traffic, as seen on the wire.
async fn recorded_session() -> (Recording, Recording) {
    let (client, server, by_client, by_server) = tap();
    let serving =
        tokio::spawn(async move { Session::server(server, &token(), Config::default()).await });
    let session = Session::client(client, &token(), Config::default())
        .await
        .expect("client handshake");
    let server = serving.await.unwrap().expect("server handshake");
    tokio::spawn(session.task.run());
    tokio::spawn(server.task.run());
    session.handle.shutdown("done");
    let _ = tokio::time::timeout(Duration::from_secs(5), server.handle.closed()).await;
    (by_client, by_server)
}

#[tokio::test]
async fn the_token_never_crosses_the_wire() {
    let (by_client, by_server) = recorded_session().await;
    let (sent, answered) = (by_client.bytes(), by_server.bytes());
    assert!(
        sent.len() > 32 && answered.len() > 32,
        "a handshake happened"
    );
    // Neither the token nor any 8-byte piece of it.
    for piece in SECRET.windows(8) {
        assert!(!contains(&sent, piece), "sctrace sent part of the token");
        assert!(
            !contains(&answered, piece),
            "the agent sent part of the token"
        );
    }
}

#[tokio::test]
async fn a_recorded_client_handshake_replayed_to_the_agent_is_refused() {
    let (by_client, _) = recorded_session().await;
    let replay = by_client.bytes();
    let (mut attacker, server) = tokio::io::duplex(1 << 16);
    let serving =
        tokio::spawn(async move { Session::server(server, &token(), Config::default()).await });
    attacker.write_all(&replay).await.unwrap();
    let mut buf = BytesMut::new();
    assert!(matches!(
        read_one_frame(&mut attacker, &mut buf).await,
        Some(Frame::AuthChallenge { .. })
    ));
    match read_one_frame(&mut attacker, &mut buf).await {
        Some(Frame::Refused { reason, .. }) => assert_eq!(reason, RefuseReason::BadToken),
        other => panic!("the replay got {other:?}"),
    }
    assert!(matches!(
        serving.await.unwrap(),
        Err(HandshakeError::RefusedPeer {
            reason: RefuseReason::BadToken,
            ..
        })
    ));
}

#[tokio::test]
async fn a_recorded_agent_handshake_replayed_to_sctrace_is_refused() {
    let (_, by_server) = recorded_session().await;
    let replay = by_server.bytes();
    let (client, impostor) = tokio::io::duplex(1 << 16);
    let (mut impostor_read, mut impostor_write) = tokio::io::split(impostor);
    let connecting =
        tokio::spawn(async move { Session::client(client, &token(), Config::default()).await });
    // The impostor answers sctrace's Hello with the recorded agent side, and records what
    // sctrace sends.
    let mut buf = BytesMut::new();
    assert!(matches!(
        read_one_frame(&mut impostor_read, &mut buf).await,
        Some(Frame::Hello { .. })
    ));
    impostor_write.write_all(&replay).await.unwrap();
    let result = connecting.await.unwrap();
    assert!(
        matches!(result, Err(HandshakeError::AgentNotAuthenticated)),
        "{:?}",
        result.err()
    );
    // sctrace sent nothing after its Hello: the connection ends there.
    let mut rest = Vec::new();
    impostor_read.read_to_end(&mut rest).await.unwrap();
    assert!(
        buf.is_empty() && rest.is_empty(),
        "sctrace sent {buf:?} {rest:?}"
    );
}

#[tokio::test]
async fn the_client_proof_is_made_only_after_the_agent_proved_itself() {
    // An impostor that cannot prove itself gets sctrace's Hello (a nonce) and nothing more.
    let (connecting, mut impostor) = client_and_its_peer();
    let mut buf = BytesMut::new();
    let Some(Frame::Hello { token: nonce, .. }) = read_one_frame(&mut impostor, &mut buf).await
    else {
        panic!("expected Hello");
    };
    assert_eq!(nonce.len(), 32);
    assert!(!contains(&nonce, &SECRET[..8]));
    send_frame(
        &mut impostor,
        Frame::AuthChallenge {
            nonce: [1; 32],
            proof: [2; 32],
        },
    )
    .await;
    assert!(matches!(
        connecting.await.unwrap(),
        Err(HandshakeError::AgentNotAuthenticated)
    ));
    assert_eq!(read_one_frame(&mut impostor, &mut buf).await, None);
}

/// Sends a bare frame header announcing `len` payload bytes of type `kind`, and nothing else.
async fn announce(io: &mut DuplexStream, kind: u8, len: u32) {
    let mut header = Vec::new();
    header.extend_from_slice(&len.to_be_bytes());
    header.push(kind);
    header.push(0);
    header.extend_from_slice(&0u32.to_be_bytes());
    io.write_all(&header).await.unwrap();
}

#[tokio::test]
async fn before_authentication_the_agent_reads_only_handshake_sized_frames() {
    // GoAway (0x06) may carry 64 KiB in a session, Hello at most 1036 bytes: both refused at
    // the header, without waiting for (or buffering) the payload.
    for (kind, len) in [
        (0x06u8, 60_000u32),
        (0x01, 5_000),
        (0x08, 33),
        (0x20, 60_000),
    ] {
        let (mut peer, server) = tokio::io::duplex(1 << 16);
        let serving =
            tokio::spawn(async move { Session::server(server, &token(), Config::default()).await });
        announce(&mut peer, kind, len).await;
        let mut buf = BytesMut::new();
        let answer =
            tokio::time::timeout(Duration::from_secs(2), read_one_frame(&mut peer, &mut buf))
                .await
                .unwrap_or_else(|_| panic!("type {kind:#04x}: still waiting for {len} bytes"));
        assert!(
            matches!(
                answer,
                Some(Frame::Refused {
                    reason: RefuseReason::BadHandshake,
                    ..
                })
            ),
            "type {kind:#04x}: {answer:?}"
        );
        let err = serving.await.unwrap().err().unwrap();
        assert!(
            matches!(
                err,
                HandshakeError::Decode(DecodeError::Oversized { .. })
                    | HandshakeError::Unexpected { .. }
            ),
            "type {kind:#04x}: {err}"
        );
    }
}

#[tokio::test]
async fn before_authentication_sctrace_reads_only_handshake_sized_frames() {
    for (kind, len) in [(0x03u8, 60_000u32), (0x06, 100), (0x07, 65)] {
        let (connecting, mut peer) = client_and_its_peer();
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_one_frame(&mut peer, &mut buf).await,
            Some(Frame::Hello { .. })
        ));
        announce(&mut peer, kind, len).await;
        let result = tokio::time::timeout(Duration::from_secs(2), connecting)
            .await
            .unwrap_or_else(|_| panic!("type {kind:#04x}: still waiting for {len} bytes"))
            .unwrap();
        assert!(
            matches!(
                result,
                Err(HandshakeError::Decode(DecodeError::Oversized { .. })
                    | HandshakeError::Unexpected { .. })
            ),
            "type {kind:#04x}: {:?}",
            result.err()
        );
    }
}

#[tokio::test]
async fn text_from_the_agent_is_escaped_when_shown() {
    let hostile = "busy\x1b]0;owned\x07\r\nsctrace: connected\x1b[2J";
    // In a refusal.
    let shown = refusal_of_a_hello(RefuseReason::Busy, hostile)
        .await
        .to_string();
    assert!(
        shown.ends_with("busy\\u{1b}]0;owned\\u{7}\\r\\nsctrace: connected\\u{1b}[2J"),
        "{shown}"
    );
    // In a GoAway that ends the session.
    let (connecting, mut peer) = client_and_its_peer();
    let mut buf = BytesMut::new();
    accept_by_hand(&mut peer, &mut buf, &token()).await;
    let session = connecting.await.unwrap().unwrap();
    tokio::spawn(session.task.run());
    send_frame(
        &mut peer,
        Frame::GoAway {
            message: hostile.into(),
        },
    )
    .await;
    let reason = tokio::time::timeout(Duration::from_secs(5), session.handle.closed())
        .await
        .unwrap();
    assert!(matches!(reason, CloseReason::PeerShutdown { .. }));
    let shown = reason.to_string();
    assert!(
        !shown.contains('\x1b') && !shown.contains('\n'),
        "{shown:?}"
    );
}

/// What a client says when its `Hello` is answered with `Refused`.
async fn refusal_of_a_hello(reason: RefuseReason, message: &str) -> HandshakeError {
    let (connecting, mut peer) = client_and_its_peer();
    let mut buf = BytesMut::new();
    read_one_frame(&mut peer, &mut buf).await;
    let message = message.to_owned();
    send_frame(&mut peer, Frame::Refused { reason, message }).await;
    connecting.await.unwrap().err().unwrap()
}

#[tokio::test]
async fn a_version_1_agent_is_named_as_too_old() {
    // A version 1 agent looked for the token in Hello and refused the nonce it found.
    let err = refusal_of_a_hello(RefuseReason::BadToken, "bad session token").await;
    assert!(
        matches!(err, HandshakeError::PeerPredatesAuth { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("older than 2"), "{err}");
}
