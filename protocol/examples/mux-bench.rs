//! Measures the multiplexer alone, both ends in this process over a Unix socket pair:
//! bulk throughput on one stream and on several at once, and the memory an idle stream
//! costs (resident set growth while 10,000 idle streams, each with a relay task on the
//! serving side, are open).
//!
//!   cargo run --release -p sctrace-protocol --example mux-bench

use std::time::{Duration, Instant};

use sctrace_protocol::{Config, Request, Session, SessionHandle, Token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn pair() -> (SessionHandle, sctrace_protocol::Requests, SessionHandle) {
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    let token = Token::new(&b"bench"[..]).unwrap();
    let t2 = token.clone();
    let server = tokio::spawn(async move { Session::server(b, &t2, Config::default()).await });
    let client = Session::client(a, &token, Config::default()).await.unwrap();
    let server = server.await.unwrap().unwrap();
    tokio::spawn(client.task.run());
    tokio::spawn(server.task.run());
    (client.handle, server.requests, server.handle)
}

/// Serving side: every stream is read to the end and discarded (`sink`), or relayed to an
/// in-memory pipe whose far end stays silent (`idle`).
fn serve(mut requests: sctrace_protocol::Requests, idle: bool) {
    tokio::spawn(async move {
        while let Some(Request::ConnectTcp(r)) = requests.next().await {
            let mut s = r.accept("127.0.0.1:1".parse().unwrap()).unwrap();
            tokio::spawn(async move {
                if idle {
                    let (mut near, far) = tokio::io::duplex(1024);
                    let _ = sctrace_protocol::relay(&mut s, &mut near).await;
                    drop(far);
                } else {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                    let _ = s.shutdown().await;
                }
            });
        }
    });
}

async fn throughput(streams: usize, total: usize) -> f64 {
    let (client, requests, _server) = pair().await;
    serve(requests, false);
    let per = total / streams;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = client
                .connect_tcp("198.18.0.7:9".parse().unwrap())
                .await
                .unwrap();
            let chunk = vec![0x5au8; 256 * 1024];
            let mut sent = 0;
            while sent < per {
                s.write_all(&chunk).await.unwrap();
                sent += chunk.len();
            }
            s.shutdown().await.unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    (per * streams) as f64 / secs / (1024.0 * 1024.0)
}

async fn idle_memory(count: usize) -> (f64, f64) {
    let (client, requests, _server) = pair().await;
    serve(requests, true);
    // Warm up allocator arenas and the runtime before measuring.
    let warm: Vec<_> = futures_lite_join(&client, 100).await;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib();
    let streams = futures_lite_join(&client, count).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib();
    let per_pair = (after.saturating_sub(before) * 1024) as f64 / count as f64;
    drop(streams);
    (per_pair, (after - before) as f64 / 1024.0)
}

async fn futures_lite_join(client: &SessionHandle, count: usize) -> Vec<sctrace_protocol::Stream> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(
            client
                .connect_tcp("198.18.0.7:9".parse().unwrap())
                .await
                .unwrap(),
        );
    }
    out
}

/// The same bulk transfer straight over the socket pair, for comparison.
async fn direct(total: usize) -> f64 {
    let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = b.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    let started = Instant::now();
    let chunk = vec![0x5au8; 256 * 1024];
    let mut sent = 0;
    while sent < total {
        a.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
    drop(a);
    reader.await.unwrap();
    total as f64 / started.elapsed().as_secs_f64() / (1024.0 * 1024.0)
}

#[tokio::main]
async fn main() {
    let gib = 1usize << 30;
    println!("direct socket pair:     {:>8.0} MiB/s", direct(gib).await);
    println!(
        "one stream, 1 GiB:      {:>8.0} MiB/s",
        throughput(1, gib).await
    );
    println!(
        "8 streams, 1 GiB total: {:>8.0} MiB/s",
        throughput(8, gib).await
    );
    let (per, total) = idle_memory(10_000).await;
    println!(
        "10,000 idle streams:    {:>8.0} bytes each (client stream + server stream + relay task; {total:.1} MiB RSS growth)",
        per
    );
}
