//! The servers: bind every address, announce readiness, then serve each connection or
//! datagram on its own task with a fixed-size buffer (memory bounded per connection).

use std::fmt;
use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use sctrace_tests::payload::{self, SinkReply};
use sha2::{Digest, Sha256};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const BUF: usize = 16 * 1024;
const HTTP_HEAD_MAX: usize = 16 * 1024;

/// What to serve on every address.
#[derive(Clone, Copy)]
pub enum Kind {
    /// Echo TCP, half-close aware.
    TcpEcho,
    /// Echo UDP datagrams to their sender.
    UdpEcho,
    /// Hash everything until EOF, answer the checksum.
    TcpSink,
    /// Send this many payload bytes, close.
    TcpSource(u64),
    /// Answer one HTTP/1 request.
    HttpHello,
}

/// Writes one log line to stdout; a closed stdout must not stop the server.
fn log(line: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn socket(addr: SocketAddr, ty: Type, protocol: Protocol) -> anyhow::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), ty, Some(protocol)).context("socket")?;
    if addr.is_ipv6() {
        // So [::]:P and 0.0.0.0:P can be served side by side.
        sock.set_only_v6(true).context("IPV6_V6ONLY")?;
    }
    sock.set_reuse_address(true).context("SO_REUSEADDR")?;
    sock.set_nonblocking(true).context("O_NONBLOCK")?;
    sock.bind(&addr.into())
        .with_context(|| format!("bind {addr}"))?;
    Ok(sock)
}

/// Binds every address, prints `listening ...` lines and `ready`, then serves forever.
pub async fn run(kind: Kind, addrs: &[SocketAddr]) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut bound = Vec::new();
    for &addr in addrs {
        if let Kind::UdpEcho = kind {
            let sock = socket(addr, Type::DGRAM, Protocol::UDP)?;
            let sock = UdpSocket::from_std(sock.into()).context("register UDP socket")?;
            bound.push(format!("listening udp {}", sock.local_addr()?));
            tasks.spawn(udp_echo(sock));
        } else {
            let sock = socket(addr, Type::STREAM, Protocol::TCP)?;
            sock.listen(4096)
                .with_context(|| format!("listen {addr}"))?;
            let listener = TcpListener::from_std(sock.into()).context("register TCP listener")?;
            bound.push(format!("listening tcp {}", listener.local_addr()?));
            tasks.spawn(accept_loop(listener, kind));
        }
    }
    for line in bound {
        log(format_args!("{line}"));
    }
    log(format_args!("ready"));
    while let Some(result) = tasks.join_next().await {
        result.context("listener task")?;
    }
    Ok(())
}

async fn accept_loop(listener: TcpListener, kind: Kind) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(serve_connection(stream, peer, kind));
            }
            Err(e) => {
                // EMFILE and friends: say so, and try again shortly instead of spinning.
                log(format_args!("tcp accept error: {e}"));
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(mut stream: TcpStream, peer: SocketAddr, kind: Kind) {
    let local = match stream.local_addr() {
        Ok(local) => local,
        Err(e) => return log(format_args!("tcp error from {peer}: local address: {e}")),
    };
    log(format_args!("tcp accept from {peer} to {local}"));
    let result = match kind {
        Kind::TcpEcho => echo(&mut stream)
            .await
            .map(|(n, m)| format!("tcp close from {peer} to {local} received={n} sent={m}")),
        Kind::TcpSink => sink(&mut stream).await.map(|r| {
            format!(
                "tcp sink from {peer} to {local} bytes={} sha256={}",
                r.bytes, r.sha256
            )
        }),
        Kind::TcpSource(bytes) => source(&mut stream, bytes)
            .await
            .map(|n| format!("tcp source from {peer} to {local} sent={n}")),
        Kind::HttpHello => hello(&mut stream, peer, local)
            .await
            .map(|request| format!("http {request} from {peer} to {local}")),
        Kind::UdpEcho => return,
    };
    match result {
        Ok(line) => log(format_args!("{line}")),
        Err(e) => log(format_args!("tcp error from {peer} to {local}: {e:#}")),
    }
}

async fn echo(stream: &mut TcpStream) -> anyhow::Result<(u64, u64)> {
    let mut buf = vec![0u8; BUF];
    let (mut received, mut sent) = (0u64, 0u64);
    loop {
        let n = stream.read(&mut buf).await.context("read")?;
        if n == 0 {
            break;
        }
        received += n as u64;
        stream.write_all(&buf[..n]).await.context("write")?;
        sent += n as u64;
    }
    stream.shutdown().await.context("shutdown")?;
    Ok((received, sent))
}

async fn sink(stream: &mut TcpStream) -> anyhow::Result<SinkReply> {
    let mut buf = vec![0u8; BUF];
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    loop {
        let n = stream.read(&mut buf).await.context("read")?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let reply = SinkReply {
        sha256: payload::hex(&hasher.finalize()),
        bytes,
    };
    stream
        .write_all(reply.to_line().as_bytes())
        .await
        .context("write reply")?;
    stream.shutdown().await.context("shutdown")?;
    Ok(reply)
}

async fn source(stream: &mut TcpStream, bytes: u64) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut offset = 0u64;
    while offset < bytes {
        let n = (bytes - offset).min(BUF as u64) as usize;
        payload::fill(payload::SOURCE_SEED, offset, &mut buf[..n]);
        stream
            .write_all(&buf[..n])
            .await
            .with_context(|| format!("write at offset {offset}"))?;
        offset += n as u64;
    }
    stream.shutdown().await.context("shutdown")?;
    Ok(offset)
}

/// Reads one request head (bounded), answers, closes. Returns `METHOD PATH` for the log.
async fn hello(
    stream: &mut TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) -> anyhow::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        anyhow::ensure!(
            head.len() < HTTP_HEAD_MAX,
            "request head over {HTTP_HEAD_MAX} bytes"
        );
        let n = stream.read(&mut buf).await.context("read request")?;
        anyhow::ensure!(
            n > 0,
            "connection closed before the end of the request head"
        );
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let request: Vec<&str> = head
        .lines()
        .next()
        .unwrap_or_default()
        .split(' ')
        .take(2)
        .collect();
    let body = format!("hello from {local} to {peer}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(response.as_bytes())
        .await
        .context("write response")?;
    stream.shutdown().await.context("shutdown")?;
    Ok(request.join(" "))
}

async fn udp_echo(sock: UdpSocket) {
    let local = sock
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|e| format!("?({e})"));
    let mut buf = vec![0u8; 65536];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, peer)) => {
                log(format_args!("udp from {peer} to {local} {n} bytes"));
                if let Err(e) = sock.send_to(&buf[..n], peer).await {
                    log(format_args!("udp error to {peer} from {local}: {e}"));
                }
            }
            Err(e) => {
                // E.g. ECONNREFUSED from an earlier reply's ICMP error: report, keep serving.
                log(format_args!("udp error on {local}: {e}"));
            }
        }
    }
}
