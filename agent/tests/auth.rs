//! The real `sctrace-agent` against clients that hold no token: what it tells them (nonces
//! and proofs, never the token), TLS on its TCP listener, and the bounds on connections
//! that have not finished their handshake. Needs root, like the other agent tests.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{echo, Agent, World, ECHO, TOKEN};
use sctrace_protocol::{decode, Config, Frame, RefuseReason, Session, Token};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

fn tls_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/tls")
        .join(name)
}

async fn send<T: AsyncWrite + Unpin>(io: &mut T, frame: Frame) {
    let mut b = BytesMut::new();
    frame.encode(&mut b).unwrap();
    io.write_all(&b).await.unwrap();
}

/// Reads one frame, recording every byte received in `seen`.
async fn receive<T: AsyncRead + Unpin>(io: &mut T, seen: &mut Vec<u8>) -> Option<Frame> {
    let mut buf = BytesMut::new();
    loop {
        if let Some(frame) = decode(&mut buf).unwrap() {
            return Some(frame);
        }
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await.unwrap();
        if n == 0 {
            return None;
        }
        seen.extend_from_slice(&chunk[..n]);
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn socket(agent: &Agent) -> String {
    agent.listen.strip_prefix("unix:").unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_sctrace_gets_a_nonce_and_a_proof_never_the_token() {
    let world = World::new().await;
    let agent = Agent::start(&world, &[]);
    let mut io = UnixStream::connect(socket(&agent)).await.unwrap();
    let mut seen = Vec::new();
    send(
        &mut io,
        Frame::Hello {
            min_version: 2,
            max_version: 2,
            stream_window: 65536,
            token: Bytes::from_static(&[0x11; 32]),
        },
    )
    .await;
    let Some(Frame::AuthChallenge { .. }) = receive(&mut io, &mut seen).await else {
        panic!("expected AuthChallenge");
    };
    // A proof it cannot make: refused, and the agent logs it.
    send(&mut io, Frame::AuthProof { proof: [0x22; 32] }).await;
    match receive(&mut io, &mut seen).await {
        Some(Frame::Refused { reason, .. }) => assert_eq!(reason, RefuseReason::BadToken),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(
        !seen.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
        "the agent sent its token"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agent
        .log_text()
        .contains("did not prove that it holds the session token")
    {
        assert!(Instant::now() < deadline, "{}", agent.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_piled_up_connections_lose_their_handshake_slots() {
    let world = World::new().await;
    let agent = Agent::start(&world, &[]);
    let path = socket(&agent);
    // Eight silent connections from this user hold its share of slots...
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(UnixStream::connect(&path).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so a ninth is closed at once,
    let mut ninth = UnixStream::connect(&path).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(1), ninth.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the ninth connection was kept: {closed:?}"
    );
    // and the silent ones are closed once they have said nothing for 3 s (well before the
    // 10 s handshake timeout).
    let started = Instant::now();
    for conn in &mut silent {
        let closed = tokio::time::timeout(Duration::from_secs(6), conn.read(&mut byte)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "a silent connection was kept: {closed:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(6));
    // The agent serves a real client meanwhile and afterwards.
    let session = agent.session().await;
    let mut s = session.connect_tcp(ECHO.parse().unwrap()).await.unwrap();
    assert_eq!(echo(&mut s, b"still serving").await, b"still serving");
    assert!(
        agent
            .log_text()
            .contains("too many connections in their handshake"),
        "{}",
        agent.log_text()
    );
}

/// A TLS client trusting the test CA for `agent.test`.
fn tls_client() -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(tls_data("ca.pem")).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_with_tls_serves_sessions_inside_tls_only() {
    let world = World::new().await;
    let cert = tls_data("agent.pem");
    let key = tls_data("agent-key.pem");
    let agent = Agent::start_on(
        &world,
        "tcp:127.0.0.1:0",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        None,
    );
    let addr: SocketAddr = agent.listen.strip_prefix("tcp:").unwrap().parse().unwrap();
    let token = Token::new(TOKEN.as_bytes().to_vec()).unwrap();
    // Through TLS: a session.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("agent.test").unwrap();
    let tls = tls_client().connect(name, tcp).await.unwrap();
    let session = Session::client(tls, &token, Config::default())
        .await
        .unwrap();
    tokio::spawn(session.task.run());
    let mut s = session
        .handle
        .connect_tcp(ECHO.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(echo(&mut s, b"over tls").await, b"over tls");
    // In the clear: no session.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let plain = tokio::time::timeout(
        Duration::from_secs(15),
        Session::client(tcp, &token, Config::default()),
    )
    .await
    .expect("the agent ends a plain connection");
    assert!(plain.is_err());
}

#[test]
fn tls_needs_a_tcp_listener_and_a_matching_key() {
    let run = |listen: &str, cert: &str, key: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sctrace-agent"))
            .args(["--listen", listen, "--netns", "/proc/self/ns/net"])
            .arg("--tls-cert")
            .arg(tls_data(cert))
            .arg("--tls-key")
            .arg(tls_data(key))
            .env("SCTRACE_AGENT_TOKEN", "t")
            .output()
            .unwrap()
    };
    let out = run(
        "unix:/tmp/sctrace-tls-test.sock",
        "agent.pem",
        "agent-key.pem",
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-cert is for --listen tcp:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run("tcp:127.0.0.1:0", "agent.pem", "other-key.pem");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("are not usable together"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The agent on a TCP port of this namespace, reading its token from standard input.
fn agent_reading_stdin(extra: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sctrace-agent"));
    cmd.args([
        "--listen",
        "tcp:127.0.0.1:0",
        "--netns",
        "/proc/self/ns/net",
        "--token-stdin",
    ])
    .args(extra);
    cmd
}

#[test]
fn the_token_can_come_on_standard_input() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let mut child = agent_reading_stdin(&["--once"])
        .env_remove("SCTRACE_AGENT_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"from-stdin\n").unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening tcp:")
        .unwrap()
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let established = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let token = Token::new(&b"from-stdin"[..]).unwrap();
        Session::client(tcp, &token, Config::default())
            .await
            .is_ok()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(established);
    // Nothing on standard input within --idle-timeout: the agent gives up.
    let mut child = agent_reading_stdin(&["--idle-timeout", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _open = child.stdin.take();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("no session token on standard input within 1 s"),
        "{stderr}"
    );
}
