//! End-to-end tests of incoming traffic with the real `sctrace-agent`: a "target" network
//! namespace with an HTTP server (HTTP/1.1 and h2c) and a TCP echo server, a "client"
//! namespace joined to it by a veth pair, the agent started with `--netns` on the target, and
//! sctrace's side played by a protocol client that subscribes ports and answers stolen
//! connections itself. Needs root, iproute2 and nftables.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Agent;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use nix::sched::{setns, CloneFlags};
use sctrace_protocol::{
    HttpFilter, IncomingKind, IncomingMode, Request as AgentRequest, Requests, SubscribeError,
    SubscribeFailureKind,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const TARGET: &str = "198.18.1.1";
const TARGET6: &str = "2001:2:0:5c1::1";
const CLIENT: &str = "198.18.1.2";
/// Where the test's "app" pretends to listen (only reported to the agent).
const APP: &str = "127.0.0.1:8080";
/// The target's TCP echo server (not HTTP).
const ECHO_PORT: u16 = 7;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Which namespace a test connection starts in.
#[derive(Clone, Copy)]
enum From {
    /// The client namespace, over the veth pair (the PREROUTING path).
    Client,
    /// The target namespace itself (the OUTPUT path).
    Target,
}

/// The two namespaces and the target's servers; removed on drop.
struct Net {
    target: String,
    client: String,
    dir: PathBuf,
}

impl Net {
    async fn new() -> Net {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let net = Net {
            target: format!("sctpi-t-{pid}-{n}"),
            client: format!("sctpi-c-{pid}-{n}"),
            dir: std::env::temp_dir().join(format!("sctpi-{pid}-{n}")),
        };
        std::fs::create_dir_all(&net.dir).unwrap();
        for ns in [&net.target, &net.client] {
            run(Command::new("ip").args(["netns", "add", ns]));
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        }
        // Both ends are created inside the namespaces: no name can clash with other tests.
        run(Command::new("ip").args([
            "-n",
            &net.target,
            "link",
            "add",
            "vt0",
            "type",
            "veth",
            "peer",
            "name",
            "vc0",
            "netns",
            &net.client,
        ]));
        let ip = |ns: &str, args: &[&str]| run(Command::new("ip").args(["-n", ns]).args(args));
        ip(&net.target, &["addr", "add", "198.18.1.1/30", "dev", "vt0"]);
        ip(&net.client, &["addr", "add", "198.18.1.2/30", "dev", "vc0"]);
        ip(
            &net.target,
            &[
                "-6",
                "addr",
                "add",
                "2001:2:0:5c1::1/64",
                "dev",
                "vt0",
                "nodad",
            ],
        );
        ip(
            &net.client,
            &[
                "-6",
                "addr",
                "add",
                "2001:2:0:5c1::2/64",
                "dev",
                "vc0",
                "nodad",
            ],
        );
        ip(&net.target, &["link", "set", "vt0", "up"]);
        ip(&net.client, &["link", "set", "vc0", "up"]);
        net.start_servers();
        net
    }

    fn target_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.target)
    }

    fn client_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.client)
    }

    fn start_servers(&self) {
        let (http4, http6, echo) = inside(&self.target_path(), || {
            (
                std::net::TcpListener::bind("0.0.0.0:80").unwrap(),
                {
                    let s =
                        socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)
                            .unwrap();
                    s.set_only_v6(true).unwrap();
                    s.bind(&addr("[::]:80").into()).unwrap();
                    s.listen(128).unwrap();
                    std::net::TcpListener::from(s)
                },
                std::net::TcpListener::bind("0.0.0.0:7").unwrap(),
            )
        });
        for l in [http4, http6] {
            l.set_nonblocking(true).unwrap();
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    tokio::spawn(serve_http(s, "target"));
                }
            });
        }
        echo.set_nonblocking(true).unwrap();
        let echo = tokio::net::TcpListener::from_std(echo).unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
    }

    async fn connect(&self, from: From, to: SocketAddr) -> std::io::Result<TcpStream> {
        let ns = match from {
            From::Client => self.client_path(),
            From::Target => self.target_path(),
        };
        let socket = inside(&ns, move || {
            socket2::Socket::new(
                socket2::Domain::for_address(to),
                socket2::Type::STREAM,
                None,
            )
        })?;
        socket.set_nonblocking(true)?;
        tokio::net::TcpSocket::from_std_stream(socket.into())
            .connect(to)
            .await
    }

    /// One HTTP/1.1 request on a fresh connection: the response's body.
    async fn get(
        &self,
        from: From,
        to: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> String {
        let stream = self.connect(from, to).await.expect("connect");
        let mut sender = h1(stream).await;
        request(&mut sender, "GET", path, headers, "").await
    }

    /// The target namespace's nftables ruleset.
    fn ruleset(&self) -> String {
        run(Command::new("ip").args(["netns", "exec", &self.target, "nft", "list", "ruleset"]))
    }

    /// Waits (at most `limit`) until the target's ruleset has no table whose name starts
    /// with `prefix` and its own server answers port 80 again; returns how long that took.
    async fn wait_until_clean(&self, prefix: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let ruleset = self.ruleset();
            if !ruleset.contains(prefix) {
                let answer = tokio::time::timeout(
                    Duration::from_secs(2),
                    self.get(From::Client, target80(), "/after", &[]),
                )
                .await;
                if let Ok(answer) = answer {
                    assert_eq!(answer, "target GET /after len=0");
                    return started.elapsed();
                }
            }
            assert!(
                started.elapsed() < limit,
                "rules still in place after {limit:?}:\n{ruleset}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.target, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn target80() -> SocketAddr {
    SocketAddr::new(TARGET.parse().unwrap(), 80)
}

/// Runs `f` on a thread inside the namespace at `ns` (sockets it creates stay there).
fn inside<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = std::fs::File::open(ns).unwrap();
    std::thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .unwrap()
}

/// Serves HTTP/1.1 and h2c on `io`, answering `<who> <METHOD> <path> len=<body length>`
/// with an `x-served-by: <who>` header. `Upgrade: echo` switches protocols: the server then
/// writes `<who>:` and echoes.
async fn serve_http<T>(io: T, who: &'static str)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |mut req: Request<Incoming>| async move {
        if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut io = TokioIo::new(upgraded);
                let _ = io.write_all(format!("{who}:").as_bytes()).await;
                let (mut rd, mut wr) = tokio::io::split(io);
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
            return Ok::<_, Infallible>(
                Response::builder()
                    .status(101)
                    .header("connection", "upgrade")
                    .header("upgrade", "echo")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            );
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        let len = body.map_or(0, |b| b.len());
        let text = format!("{who} {method} {path} len={len}");
        Ok::<_, Infallible>(
            Response::builder()
                .header("x-served-by", who)
                .body(Full::new(Bytes::from(text)))
                .unwrap(),
        )
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await;
}

async fn h1(stream: TcpStream) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn request(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> String {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "uwu-app");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    sender.ready().await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("a response within 10 s")
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// What the test's sctrace side saw of one incoming stream.
#[derive(Debug)]
struct Seen {
    kind: IncomingKind,
    subscription: u32,
    client: SocketAddr,
    server: SocketAddr,
    /// For mirrored streams: every byte of the copy.
    copy: Option<Vec<u8>>,
    /// With `App::Stall`: when the app started reading, and whether the copy ended in a reset.
    stalled: Option<(Instant, bool)>,
}

#[derive(Clone, Copy)]
enum App {
    /// Answers HTTP (stolen connections and requests) as "sctrace …".
    Http,
    /// Echoes stolen connections.
    Echo,
    /// Declines every incoming stream.
    Decline,
    /// Takes mirrored copies but reads nothing for a while (a stalled app).
    Stall,
}

/// Plays sctrace's side of incoming traffic: takes what the agent hands over and serves it
/// as the local app would; reports each stream.
fn serve_app(mut requests: Requests, app: App) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let AgentRequest::Incoming(r) = request else {
                continue;
            };
            let mut seen = Seen {
                kind: r.kind(),
                subscription: r.subscription(),
                client: r.client(),
                server: r.server(),
                copy: None,
                stalled: None,
            };
            if matches!(app, App::Decline) {
                r.reject(111);
                let _ = tx.send(seen);
                continue;
            }
            let mut stream = r.accept(addr(APP)).unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                match (seen.kind, app) {
                    (IncomingKind::Mirrored, App::Stall) => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        let started = Instant::now();
                        let mut copy = Vec::new();
                        let read = stream.read_to_end(&mut copy).await;
                        seen.copy = Some(copy);
                        seen.stalled = Some((started, read.is_err()));
                        let _ = tx.send(seen);
                    }
                    (IncomingKind::Mirrored, _) => {
                        let mut copy = Vec::new();
                        let _ = stream.read_to_end(&mut copy).await;
                        let _ = stream.shutdown().await;
                        seen.copy = Some(copy);
                        let _ = tx.send(seen);
                    }
                    (_, App::Echo) => {
                        let _ = tx.send(seen);
                        let (mut rd, mut wr) = tokio::io::split(stream);
                        let _ = tokio::io::copy(&mut rd, &mut wr).await;
                        let _ = wr.shutdown().await;
                        // Keep the stream until the agent has our FIN.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    _ => {
                        let _ = tx.send(seen);
                        // As sctrace does: relay the stream to the app's socket.
                        let (mut local, app) = tokio::io::duplex(64 * 1024);
                        tokio::spawn(serve_http(app, "sctrace"));
                        let _ = sctrace_protocol::relay(&mut stream, &mut local).await;
                    }
                }
            });
        }
    });
    rx
}

async fn next_seen(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("an incoming stream within 10 s")
        .expect("the app is still serving")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steal_takes_whole_connections_from_outside_and_inside() {
    let net = Net::new().await;
    let agent = Agent::start_in(&net.target_path(), &net.dir, &[]);
    let (session, requests) = agent.session_and_requests().await;
    let mut seen = serve_app(requests, App::Http);
    assert_eq!(
        net.get(From::Client, target80(), "/a", &[]).await,
        "target GET /a len=0"
    );

    let sub = session
        .subscribe(80, IncomingMode::Steal, None)
        .await
        .unwrap();
    assert!(
        net.ruleset().contains("sctrace_port_80"),
        "{}",
        net.ruleset()
    );
    let stream = net.connect(From::Client, target80()).await.unwrap();
    let client_addr = stream.local_addr().unwrap();
    assert_eq!(client_addr.ip().to_string(), CLIENT);
    let mut sender = h1(stream).await;
    assert_eq!(
        request(&mut sender, "POST", "/uwu", &[], "hello").await,
        "sctrace POST /uwu len=5"
    );
    // The same keep-alive connection stays with sctrace.
    assert_eq!(
        request(&mut sender, "GET", "/again", &[], "").await,
        "sctrace GET /again len=0"
    );
    let s = next_seen(&mut seen).await;
    assert_eq!(s.kind, IncomingKind::Stolen);
    assert_eq!(s.subscription, sub.id());
    assert_eq!(s.client, client_addr, "the remote client, not a relay");
    assert_eq!(s.server, target80(), "the original destination");

    // From inside the target's namespace (the OUTPUT chain), and over IPv6.
    assert_eq!(
        net.get(From::Target, target80(), "/inside", &[]).await,
        "sctrace GET /inside len=0"
    );
    let target6: SocketAddr = SocketAddr::new(TARGET6.parse().unwrap(), 80);
    assert_eq!(
        net.get(From::Client, target6, "/v6", &[]).await,
        "sctrace GET /v6 len=0"
    );
    let inside = next_seen(&mut seen).await;
    assert_eq!(inside.server, target80());
    let v6 = next_seen(&mut seen).await;
    assert_eq!(v6.server, target6);
    assert_eq!(
        v6.client.ip(),
        "2001:2:0:5c1::2".parse::<std::net::IpAddr>().unwrap()
    );
    // Another port is untouched.
    let mut echo = net
        .connect(
            From::Client,
            SocketAddr::new(TARGET.parse().unwrap(), ECHO_PORT),
        )
        .await
        .unwrap();
    echo.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    echo.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_the_request_while_the_target_answers() {
    let net = Net::new().await;
    let agent = Agent::start_in(&net.target_path(), &net.dir, &[]);
    let (session, requests) = agent.session_and_requests().await;
    let mut seen = serve_app(requests, App::Http);
    let _sub = session
        .subscribe(80, IncomingMode::Mirror, None)
        .await
        .unwrap();
    let mut stream = net.connect(From::Client, target80()).await.unwrap();
    let client_addr = stream.local_addr().unwrap();
    let sent = b"POST /mirrored HTTP/1.1\r\nHost: uwu-app\r\nContent-Length: 4\r\nConnection: close\r\n\r\nuwu!";
    stream.write_all(sent).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("target POST /mirrored len=4"), "{answer}");
    drop(stream);
    let s = next_seen(&mut seen).await;
    assert_eq!(s.kind, IncomingKind::Mirrored);
    assert_eq!(s.client, client_addr);
    assert_eq!(s.server, target80());
    assert_eq!(
        s.copy.as_deref(),
        Some(&sent[..]),
        "an exact copy of the client's bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_filter_splits_one_keep_alive_connection() {
    let net = Net::new().await;
    let agent = Agent::start_in(&net.target_path(), &net.dir, &[]);
    let (session, requests) = agent.session_and_requests().await;
    let mut seen = serve_app(requests, App::Http);
    let filter = HttpFilter::Header("^x-steal: yes$".into());
    let sub = session
        .subscribe(80, IncomingMode::Steal, Some(filter))
        .await
        .unwrap();
    let stream = net.connect(From::Client, target80()).await.unwrap();
    let client_addr = stream.local_addr().unwrap();
    let mut sender = h1(stream).await;
    let steal = [("X-Steal", "yes")];
    assert_eq!(
        request(&mut sender, "POST", "/1", &steal, "body-one").await,
        "sctrace POST /1 len=8"
    );
    assert_eq!(
        request(&mut sender, "POST", "/2", &[], "body-two!").await,
        "target POST /2 len=9"
    );
    assert_eq!(
        request(&mut sender, "GET", "/3", &steal, "").await,
        "sctrace GET /3 len=0"
    );
    assert_eq!(
        request(&mut sender, "GET", "/4", &[("x-steal", "no")], "").await,
        "target GET /4 len=0"
    );
    for _ in 0..2 {
        let s = next_seen(&mut seen).await;
        assert_eq!(s.kind, IncomingKind::HttpRequest);
        assert_eq!(s.subscription, sub.id());
        assert_eq!(s.client, client_addr);
        assert_eq!(s.server, target80());
    }

    // An `Upgrade: h2c` is declined: the answer stays HTTP/1.1 and the filter still applies.
    let mut raw = net.connect(From::Client, target80()).await.unwrap();
    raw.write_all(
        b"GET /up HTTP/1.1\r\nHost: uwu-app\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nx-steal: yes\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("sctrace GET /up len=0"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_apply_per_request_on_h2c() {
    let net = Net::new().await;
    let agent = Agent::start_in(&net.target_path(), &net.dir, &[]);
    let (session, requests) = agent.session_and_requests().await;
    let mut seen = serve_app(requests, App::Http);
    let filter = HttpFilter::AnyOf(vec![
        HttpFilter::Header("^x-user: alice$".into()),
        HttpFilter::AllOf(vec![
            HttpFilter::Method("DELETE".into()),
            HttpFilter::Path("^/api/".into()),
        ]),
    ]);
    let _sub = session
        .subscribe(80, IncomingMode::Steal, Some(filter))
        .await
        .unwrap();
    let stream = net.connect(From::Client, target80()).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let cases: [(&str, &str, Option<&str>, &str); 5] = [
        ("GET", "/a", Some("alice"), "sctrace GET /a len=0"),
        ("GET", "/b", Some("bob"), "target GET /b len=0"),
        ("DELETE", "/api/x", None, "sctrace DELETE /api/x len=0"),
        ("DELETE", "/other", None, "target DELETE /other len=0"),
        ("POST", "/c", None, "target POST /c len=3"),
    ];
    // All at once, multiplexed on the one HTTP/2 connection.
    let mut tasks = Vec::new();
    for (method, path, user, expect) in cases {
        let mut sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = Request::builder()
                .method(method)
                .uri(format!("http://uwu-app{path}"));
            if let Some(user) = user {
                req = req.header("x-user", user);
            }
            let body = if method == "POST" { "abc" } else { "" };
            let req = req.body(Full::new(Bytes::from(body))).unwrap();
            sender.ready().await.unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.version(), hyper::Version::HTTP_2);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(String::from_utf8_lossy(&body), expect);
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("answered within 10 s")
            .unwrap();
    }
    for _ in 0..2 {
        assert_eq!(next_seen(&mut seen).await.kind, IncomingKind::HttpRequest);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_port_passes_other_protocols_to_the_target() {
    let net = Net::new().await;
    let agent = Agent::start_in(&net.target_path(), &net.dir, &[]);
    let (session, requests) = agent.session_and_requests().await;
    let mut seen = serve_app(requests, App::Http);
    let _sub = session
        .subscribe(
            ECHO_PORT,
            IncomingMode::Steal,
            Some(HttpFilter::Path(".*".into())),
        )
        .await
        .unwrap();
    let mut s = net
        .connect(
            From::Client,
            SocketAddr::new(TARGET.parse().unwrap(), ECHO_PORT),
        )
        .await
        .unwrap();
    // A TLS ClientHello's first bytes: not HTTP.
    let hello = [0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
    s.write_all(&hello).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, hello, "the target's echo server answered");
    assert!(seen.try_recv().is_err(), "nothing went to sctrace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_returns_new_connections_to_the_target_and_keeps_old_ones() {
    let net = Net::new().await;
    let agent = Agent::start_in(&net.target_path(), &net.dir, &[]);
    let (session, requests) = agent.session_and_requests().await;
    let _seen = serve_app(requests, App::Http);
    let sub = session
        .subscribe(80, IncomingMode::Steal, None)
        .await
        .unwrap();
    let mut old = h1(net.connect(From::Client, target80()).await.unwrap()).await;
    assert_eq!(
        request(&mut old, "GET", "/before", &[], "").await,
        "sctrace GET /before len=0"
    );
    drop(sub);
    let took = net
        .wait_until_clean("sctrace_port_", Duration::from_secs(5))
        .await;
    eprintln!("rules gone and the target answering {took:?} after unsubscribing");
    // The connection stolen before goes on with sctrace.
    assert_eq!(
        request(&mut old, "GET", "/during", &[], "").await,
        "sctrace GET /during len=0"
    );
    // Subscribing again works.
    let _sub = session
        .subscribe(80, IncomingMode::Steal, None)
        .await
        .unwrap();
    assert_eq!(
        net.get(From::Client, target80(), "/again", &[]).await,
        "sctrace GET /again len=0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_ending_removes_the_rules() {
    let net = Net::new().await;
    let agent = Agent::start_in(&net.target_path(), &net.dir, &[]);
    let (session, requests) = agent.session_and_requests().await;
    let _seen = serve_app(requests, App::Http);
    let _steal = session
        .subscribe(80, IncomingMode::Steal, None)
        .await
        .unwrap();
    let _mirror = session
        .subscribe(ECHO_PORT, IncomingMode::Mirror, None)
        .await
        .unwrap();
    let ruleset = net.ruleset();
    assert!(
        ruleset.contains("sctrace_port_80") && ruleset.contains("sctrace_port_7"),
        "{ruleset}"
    );
    session.shutdown("sctrace is exiting");
    let took = net
        .wait_until_clean("sctrace_port_", Duration::from_secs(5))
        .await;
    eprintln!("rules gone {took:?} after the session ended");
    assert!(agent
        .log_text()
        .contains("subscription ended with its session"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_with_sigkill_leaves_no_rule() {
    let net = Net::new().await;
    let mut agent = Agent::start_in(&net.target_path(), &net.dir, &[]);
    let (session, requests) = agent.session_and_requests().await;
    let _seen = serve_app(requests, App::Http);
    let _sub = session
        .subscribe(80, IncomingMode::Steal, None)
        .await
        .unwrap();
    assert_eq!(
        net.get(From::Client, target80(), "/x", &[]).await,
        "sctrace GET /x len=0"
    );
    agent.child.kill().unwrap();
    let _ = agent.child.wait();
    // Everything: the port's table and the agent's own.
    let took = net
        .wait_until_clean("sctrace_", Duration::from_secs(5))
        .await;
    eprintln!("rules gone and the target answering {took:?} after SIGKILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_steal_of_a_port_is_refused() {
    let net = Net::new().await;
    let agent = Agent::start_in(&net.target_path(), &net.dir, &[]);
    let (first, requests) = agent.session_and_requests().await;
    let _seen = serve_app(requests, App::Http);
    let held = first
        .subscribe(80, IncomingMode::Steal, None)
        .await
        .unwrap();

    // Another session of the same agent.
    let (second, requests2) = agent.session_and_requests().await;
    match second.subscribe(80, IncomingMode::Steal, None).await {
        Err(SubscribeError::Refused { kind, message, .. }) => {
            assert_eq!(kind, SubscribeFailureKind::PortInUse);
            assert!(
                message.contains("port 80 is already stolen by another sctrace session (session 1"),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Mirroring alongside is fine: the stealer answers, the mirror gets a copy.
    let _mirror = second
        .subscribe(80, IncomingMode::Mirror, None)
        .await
        .unwrap();
    let mut copies = serve_app(requests2, App::Http);
    let mut raw = net.connect(From::Client, target80()).await.unwrap();
    let sent = b"GET /both HTTP/1.1\r\nHost: uwu-app\r\nConnection: close\r\n\r\n";
    raw.write_all(sent).await.unwrap();
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer).ends_with("sctrace GET /both len=0"));
    drop(raw);
    let copy = next_seen(&mut copies).await;
    assert_eq!(copy.kind, IncomingKind::Mirrored);
    assert_eq!(copy.copy.as_deref(), Some(&sent[..]));

    // Another agent in the same namespace: its rules would clash, so it refuses too.
    let other = Agent::start_in(&net.target_path(), &net.dir, &[]);
    let (third, _requests3) = other.session_and_requests().await;
    match third.subscribe(80, IncomingMode::Steal, None).await {
        Err(SubscribeError::Refused { kind, message, .. }) => {
            assert_eq!(kind, SubscribeFailureKind::PortInUse);
            assert!(
                message.contains("port 80 is already mirrored or stolen by another sctrace agent"),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Once the first agent lets the port go, the other can take it.
    drop(held);
    drop(_mirror);
    net.wait_until_clean("sctrace_port_", Duration::from_secs(5))
        .await;
    let _taken = third
        .subscribe(80, IncomingMode::Steal, None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_stolen_connections_keep_their_bytes() {
    const CONNECTIONS: usize = 128;
    const SIZE: usize = 256 * 1024;
    let net = Net::new().await;
    let agent = Agent::start_in(&net.target_path(), &net.dir, &["--log-level", "info"]);
    let (session, requests) = agent.session_and_requests().await;
    let mut seen = serve_app(requests, App::Echo);
    let _sub = session
        .subscribe(80, IncomingMode::Steal, None)
        .await
        .unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..CONNECTIONS {
        let stream = net.connect(From::Client, target80()).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let data: Vec<u8> = {
                let mut x = (i as u32).wrapping_mul(2_654_435_761) | 1;
                (0..SIZE)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        x as u8
                    })
                    .collect()
            };
            let sent = Sha256::digest(&data);
            let (mut rd, mut wr) = stream.into_split();
            let writer = tokio::spawn(async move {
                wr.write_all(&data).await.unwrap();
                wr.shutdown().await.unwrap();
            });
            let mut back = Vec::with_capacity(SIZE);
            rd.read_to_end(&mut back).await.unwrap();
            writer.await.unwrap();
            assert_eq!(back.len(), SIZE, "connection {i}");
            assert_eq!(Sha256::digest(&back), sent, "connection {i}");
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("all connections done within 120 s")
            .unwrap();
    }
    let took = started.elapsed();
    eprintln!(
        "{CONNECTIONS} stolen connections × {} KiB each way in {took:?}",
        SIZE / 1024
    );
    let mut count = 0;
    while seen.try_recv().is_ok() {
        count += 1;
    }
    assert_eq!(count, CONNECTIONS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_tables_are_swept_and_replaced() {
    let net = Net::new().await;
    // Left by something else: a non-owner table that would redirect port 80 to nowhere, and
    // a dead agent's marker.
    let stale = "table inet sctrace_port_80 {\n\
                 \tchain p {\n\
                 \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
                 \t\ttcp dport 80 redirect to :1\n\
                 \t}\n\
                 }\n\
                 table inet sctrace_agent_1_deadbeef {\n\
                 }\n";
    let file = net.dir.join("stale.nft");
    std::fs::write(&file, stale).unwrap();
    run(Command::new("ip")
        .args(["netns", "exec", &net.target, "nft", "-f"])
        .arg(&file));
    let blocked = tokio::time::timeout(
        Duration::from_secs(2),
        net.connect(From::Client, target80()),
    )
    .await;
    assert!(
        !matches!(blocked, Ok(Ok(_))),
        "the stale rule blocks port 80 before the agent runs"
    );
    let agent = Agent::start_in(&net.target_path(), &net.dir, &[]);
    let (session, requests) = agent.session_and_requests().await;
    let _seen = serve_app(requests, App::Http);
    let sub = session
        .subscribe(80, IncomingMode::Steal, None)
        .await
        .unwrap();
    assert!(!net.ruleset().contains("deadbeef"), "{}", net.ruleset());
    assert_eq!(
        net.get(From::Client, target80(), "/fresh", &[]).await,
        "sctrace GET /fresh len=0"
    );
    drop(sub);
    net.wait_until_clean("sctrace_port_", Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_filters_are_refused() {
    let net = Net::new().await;
    let agent = Agent::start_in(&net.target_path(), &net.dir, &[]);
    let (session, _requests) = agent.session_and_requests().await;
    match session
        .subscribe(
            80,
            IncomingMode::Steal,
            Some(HttpFilter::Header("x-(".into())),
        )
        .await
    {
        Err(SubscribeError::Refused { kind, message, .. }) => {
            assert_eq!(kind, SubscribeFailureKind::BadFilter);
            assert!(message.contains("\"x-(\""), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match session
        .subscribe(
            80,
            IncomingMode::Mirror,
            Some(HttpFilter::Method("GET".into())),
        )
        .await
    {
        Err(SubscribeError::Refused { kind, .. }) => {
            assert_eq!(kind, SubscribeFailureKind::BadFilter)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!net.ruleset().contains("sctrace_"), "nothing was installed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_connections_reach_the_target() {
    let net = Net::new().await;
    let agent = Agent::start_in(&net.target_path(), &net.dir, &[]);
    let (session, requests) = agent.session_and_requests().await;
    let mut seen = serve_app(requests, App::Decline);
    let _whole = session
        .subscribe(80, IncomingMode::Steal, None)
        .await
        .unwrap();
    assert_eq!(
        net.get(From::Client, target80(), "/declined", &[]).await,
        "target GET /declined len=0"
    );
    assert_eq!(next_seen(&mut seen).await.kind, IncomingKind::Stolen);
}

/// The `nft` processes the agent started.
fn nft_children(agent_pid: u32) -> Vec<i32> {
    let mut pids = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{agent_pid}/task")).unwrap();
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "nft" {
                pids.push(pid);
            }
        }
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_rules_ends_the_subscription() {
    let net = Net::new().await;
    let agent = Agent::start_in(&net.target_path(), &net.dir, &[]);
    let (session, requests) = agent.session_and_requests().await;
    let _seen = serve_app(requests, App::Http);
    let mut sub = session
        .subscribe(80, IncomingMode::Steal, None)
        .await
        .unwrap();
    let nft = nft_children(agent.child.id());
    assert_eq!(nft.len(), 1, "one nft process holds the rules");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(nft[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), sub.ended())
        .await
        .expect("sctrace learns the subscription ended");
    assert!(
        matches!(end, sctrace_protocol::SubscriptionEnd::Ended { errno: 5 }),
        "{end:?}"
    );
    net.wait_until_clean("sctrace_", Duration::from_secs(5))
        .await;
    // Subscribing again starts a new nft process.
    let _again = session
        .subscribe(80, IncomingMode::Steal, None)
        .await
        .unwrap();
    assert_eq!(
        net.get(From::Client, target80(), "/back", &[]).await,
        "sctrace GET /back len=0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_spliced_to_whichever_side_answered() {
    let net = Net::new().await;
    let agent = Agent::start_in(&net.target_path(), &net.dir, &[]);
    let (session, requests) = agent.session_and_requests().await;
    let _seen = serve_app(requests, App::Http);
    let _sub = session
        .subscribe(
            80,
            IncomingMode::Steal,
            Some(HttpFilter::Header("^x-steal: yes$".into())),
        )
        .await
        .unwrap();
    for (extra, who) in [("x-steal: yes\r\n", "sctrace"), ("", "target")] {
        let mut s = net.connect(From::Client, target80()).await.unwrap();
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: uwu-app\r\nConnection: Upgrade\r\nUpgrade: echo\r\n{extra}\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        // The 101 head, then the upgraded protocol.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s.write_all(b"echo me").await.unwrap();
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
            .await
            .expect("the upgraded connection closes")
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&rest), format!("{who}:echo me"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_mirror_never_holds_up_the_real_connection() {
    const SIZE: usize = 8 * 1024 * 1024;
    let net = Net::new().await;
    let agent = Agent::start_in(&net.target_path(), &net.dir, &[]);
    let (session, requests) = agent.session_and_requests().await;
    let mut seen = serve_app(requests, App::Stall);
    let _sub = session
        .subscribe(ECHO_PORT, IncomingMode::Mirror, None)
        .await
        .unwrap();
    let stream = net
        .connect(
            From::Client,
            SocketAddr::new(TARGET.parse().unwrap(), ECHO_PORT),
        )
        .await
        .unwrap();
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let sent = Sha256::digest(&data);
    let (mut rd, mut wr) = stream.into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        wr.write_all(&data).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(SIZE);
    tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut back))
        .await
        .expect("the echo completes")
        .unwrap();
    writer.await.unwrap();
    let echoed = Instant::now();
    assert_eq!(Sha256::digest(&back), sent);
    let copy = next_seen(&mut seen).await;
    let (app_started, reset) = copy.stalled.expect("the stalling app reports");
    assert!(
        echoed < app_started,
        "the echo finished ({:?}) before the stalled app read anything",
        echoed - started
    );
    let got = copy.copy.map_or(0, |c| c.len());
    assert!(reset, "the copy that fell behind was reset");
    assert!(got < SIZE, "the copy was cut ({got} of {SIZE} bytes)");
}
