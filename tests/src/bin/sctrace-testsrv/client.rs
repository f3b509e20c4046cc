//! The checking clients: each drives one server kind and verifies every byte it gets back,
//! returning a one-line summary or an error saying what differed.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use sctrace_tests::payload::{self, SinkReply};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const BUF: usize = 64 * 1024;
const SINK_REPLY_MAX: usize = 256;

async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))
}

/// Writes `bytes` of payload `seed`, then shuts the write side; returns the SHA-256 (hex) of
/// what it wrote, computed on the way (one pass over the payload).
async fn write_payload(
    stream: &mut (impl AsyncWriteExt + Unpin),
    seed: u64,
    bytes: u64,
) -> anyhow::Result<String> {
    let mut buf = vec![0u8; BUF];
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    while offset < bytes {
        let n = (bytes - offset).min(BUF as u64) as usize;
        payload::fill(seed, offset, &mut buf[..n]);
        stream
            .write_all(&buf[..n])
            .await
            .with_context(|| format!("write at offset {offset}"))?;
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    stream.shutdown().await.context("shutdown write side")?;
    Ok(payload::hex(&hasher.finalize()))
}

/// Reads until EOF, checking the bytes against payload `seed`; returns how many arrived.
async fn read_payload(stream: &mut (impl AsyncReadExt + Unpin), seed: u64) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut offset = 0u64;
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .with_context(|| format!("read at offset {offset}"))?;
        if n == 0 {
            return Ok(offset);
        }
        if let Err(at) = payload::check(seed, offset, &buf[..n]) {
            bail!("byte {at} differs from the payload");
        }
        offset += n as u64;
    }
}

/// One tcp-sink exchange on a connected stream; `Err` says what went wrong.
async fn send_and_check(mut stream: TcpStream, bytes: u64, seed: u64) -> anyhow::Result<SinkReply> {
    let sent = SinkReply {
        sha256: write_payload(&mut stream, seed, bytes).await?,
        bytes,
    };
    let mut reply = Vec::new();
    (&mut stream)
        .take(SINK_REPLY_MAX as u64)
        .read_to_end(&mut reply)
        .await
        .context("read sink reply")?;
    let text = String::from_utf8_lossy(&reply);
    let got = SinkReply::parse(&text).with_context(|| format!("not a sink reply: {text:?}"))?;
    ensure!(
        got == sent,
        "sink received something else: got {got:?}, sent {sent:?}"
    );
    Ok(got)
}

/// `tcp-send`: one checked upload to a tcp-sink.
pub async fn tcp_send(addr: SocketAddr, bytes: u64, seed: u64) -> anyhow::Result<String> {
    let reply = send_and_check(connect(addr).await?, bytes, seed).await?;
    Ok(format!(
        "tcp-send {addr} bytes={} sha256={}",
        reply.bytes, reply.sha256
    ))
}

/// `tcp-fetch`: one checked download from a tcp-source.
pub async fn tcp_fetch(addr: SocketAddr, bytes: u64) -> anyhow::Result<String> {
    let mut stream = connect(addr).await?;
    let got = read_payload(&mut stream, payload::SOURCE_SEED).await?;
    ensure!(got == bytes, "received {got} bytes, expected {bytes}");
    Ok(format!("tcp-fetch {addr} bytes={got}"))
}

/// `tcp-echo-check`: write and read back at the same time through a tcp-echo.
pub async fn tcp_echo_check(addr: SocketAddr, bytes: u64) -> anyhow::Result<String> {
    let stream = connect(addr).await?;
    let (mut reader, mut writer) = stream.into_split();
    let seed = 2;
    let (written, read) = tokio::join!(
        write_payload(&mut writer, seed, bytes),
        read_payload(&mut reader, seed)
    );
    written?;
    let got = read?;
    ensure!(got == bytes, "echo returned {got} bytes, sent {bytes}");
    Ok(format!("tcp-echo-check {addr} bytes={got}"))
}

/// `tcp-many`: opens CONNS connections at once and only then sends on all of them, each its
/// own payload (seeds 1..=CONNS), so that they are all open together; reports every failure.
pub async fn tcp_many(addr: SocketAddr, conns: u32, bytes: u64) -> anyhow::Result<String> {
    let mut connecting = tokio::task::JoinSet::new();
    for seed in 1..=u64::from(conns) {
        connecting.spawn(async move { (seed, connect(addr).await) });
    }
    let mut failures = Vec::new();
    let mut streams = Vec::new();
    while let Some(joined) = connecting.join_next().await {
        match joined.context("connect task")? {
            (seed, Ok(stream)) => streams.push((seed, stream)),
            (seed, Err(e)) => failures.push(format!("connection {seed}: {e:#}")),
        }
    }
    report(&failures, conns)?;

    let mut exchanges = tokio::task::JoinSet::new();
    for (seed, stream) in streams {
        exchanges.spawn(async move { (seed, send_and_check(stream, bytes, seed).await) });
    }
    while let Some(joined) = exchanges.join_next().await {
        if let (seed, Err(e)) = joined.context("connection task")? {
            failures.push(format!("connection {seed}: {e:#}"));
        }
    }
    report(&failures, conns)?;
    Ok(format!(
        "tcp-many {addr} conns={conns} bytes_each={bytes} (all open at once)"
    ))
}

fn report(failures: &[String], conns: u32) -> anyhow::Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    let mut failures = failures.to_vec();
    failures.sort();
    bail!(
        "{} of {conns} connections failed:\n{}",
        failures.len(),
        failures.join("\n")
    )
}

/// `udp-ping`: datagrams to a udp-echo; each reply must match and come from `addr`.
pub async fn udp_ping(addr: SocketAddr, count: u32, connected: bool) -> anyhow::Result<String> {
    let any: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()?;
    let sock = UdpSocket::bind(any).await.context("bind")?;
    if connected {
        sock.connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
    }
    let mut buf = vec![0u8; 2048];
    for i in 0..count {
        let ping = format!("ping {i} from sctrace-testsrv");
        let mut answered = false;
        // Three tries per datagram: UDP may drop, the test must not hang on one loss.
        for _ in 0..3 {
            if connected {
                sock.send(ping.as_bytes()).await.context("send")?;
            } else {
                sock.send_to(ping.as_bytes(), addr)
                    .await
                    .with_context(|| format!("sendto {addr}"))?;
            }
            let received = if connected {
                tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
                    .await
                    .map(|r| r.map(|n| (n, addr)))
            } else {
                tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await
            };
            let Ok(received) = received else { continue };
            let (n, from) = received.context("receive")?;
            ensure!(from == addr, "reply {i} came from {from}, not {addr}");
            ensure!(
                &buf[..n] == ping.as_bytes(),
                "reply {i} differs: {:?}",
                String::from_utf8_lossy(&buf[..n])
            );
            answered = true;
            break;
        }
        ensure!(answered, "no reply to datagram {i} after 3 tries");
    }
    Ok(format!(
        "udp-ping {addr} count={count} connected={connected}"
    ))
}
