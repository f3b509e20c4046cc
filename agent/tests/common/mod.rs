//! Test world for the agent alone: a network namespace with services on 198.18.x addresses
//! of its loopback, dnsmasq answering a cluster search domain, its own resolv.conf, and the
//! real `sctrace-agent` binary started in the root namespace. Everything is removed on drop.

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use sctrace_protocol::{Config, Requests, Session, SessionHandle, Token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const TOKEN: &str = "agent-test-token";
pub const ECHO: &str = "198.18.0.7:7";
pub const ECHO6: &str = "[2001:2:0:5c::7]:7";
/// ECHO6's address, as assigned to `lo`.
const ECHO6_NET: &str = "2001:2:0:5c::7/128";
pub const DNS_SERVER: &str = "198.18.0.53";
/// Accepts, reads until the client stops, and reports how the read ended.
pub const OBSERVER: &str = "198.18.0.7:9";
/// Dropped by the namespace's firewall: connects time out.
pub const BLACKHOLE: &str = "198.18.0.9:80";
/// Has an `unreachable` route: EHOSTUNREACH.
pub const UNREACHABLE_HOST: &str = "198.18.99.1:80";
/// No route at all: ENETUNREACH.
pub const NO_ROUTE: &str = "198.19.200.1:80";

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace with services; deleted (with its /etc/netns files) on drop.
pub struct World {
    pub name: String,
    pub dir: PathBuf,
    dnsmasq: Option<Child>,
    /// Lines the observer server saw: "eof" or "error <errno>".
    pub observed: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl World {
    /// Builds the namespace, its services and dnsmasq; waits until DNS answers.
    pub async fn new() -> World {
        let name = format!(
            "sctp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        run(Command::new("ip").args(["netns", "add", &name]));
        let (observed_tx, observed) = tokio::sync::mpsc::unbounded_channel();
        let mut world = World {
            name: name.clone(),
            dir,
            dnsmasq: None,
            observed,
        };
        let ip = |args: &[&str]| run(Command::new("ip").args(["-n", &name]).args(args));
        ip(&["link", "set", "lo", "up"]);
        for a in ["198.18.0.7/32", "198.18.0.53/32"] {
            ip(&["addr", "add", a, "dev", "lo"]);
        }
        ip(&["-6", "addr", "add", ECHO6_NET, "dev", "lo", "nodad"]);
        ip(&["route", "add", "unreachable", "198.18.99.0/24"]);
        // Routable (so not ENETUNREACH), but the firewall drops it: connects time out.
        ip(&["route", "add", "198.18.0.9/32", "dev", "lo"]);
        run(Command::new("ip").args([
            "netns",
            "exec",
            &name,
            "iptables",
            "-A",
            "OUTPUT",
            "-d",
            "198.18.0.9",
            "-j",
            "DROP",
        ]));

        let etc = Path::new("/etc/netns").join(&name);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("resolv.conf"),
            "search default.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 198.18.0.53\n\
             options ndots:5 timeout:2 attempts:2\n",
        )
        .unwrap();
        let mut hosts = String::from("198.18.0.7 uwu-service.default.svc.cluster.local\n");
        for i in 1..=60 {
            hosts.push_str(&format!("198.18.1.{i} big.default.svc.cluster.local\n"));
        }
        let hosts_file = world.dir.join("hosts");
        std::fs::write(&hosts_file, hosts).unwrap();
        let log = File::create(world.dir.join("dnsmasq.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &name, "dnsmasq", "--keep-in-foreground"])
            .args([
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
            ])
            .arg("--pid-file=")
            .args(["--listen-address", DNS_SERVER, "--bind-interfaces"])
            .arg(format!("--addn-hosts={}", hosts_file.display()))
            // Everything is local: unknown names are NXDOMAIN, nothing is forwarded.
            .arg("--local=/#/")
            .arg("--cname=alias.default.svc.cluster.local,uwu-service.default.svc.cluster.local")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dnsmasq");
        world.dnsmasq = Some(child);

        world.start_servers(observed_tx);
        world.wait_for_dns();
        world
    }

    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread inside the namespace (sockets it creates stay there).
    pub fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = File::open(self.netns_path()).unwrap();
        std::thread::spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .unwrap()
    }

    fn start_servers(&self, observed: tokio::sync::mpsc::UnboundedSender<String>) {
        let (tcp, tcp6, udp, obs) = self.inside(|| {
            (
                std::net::TcpListener::bind(ECHO).unwrap(),
                std::net::TcpListener::bind(ECHO6).unwrap(),
                std::net::UdpSocket::bind(ECHO).unwrap(),
                std::net::TcpListener::bind(OBSERVER).unwrap(),
            )
        });
        for l in [tcp, tcp6] {
            l.set_nonblocking(true).unwrap();
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let (mut r, mut w) = s.into_split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    });
                }
            });
        }
        udp.set_nonblocking(true).unwrap();
        let udp = tokio::net::UdpSocket::from_std(udp).unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                let _ = udp.send_to(&buf[..n], from).await;
            }
        });
        obs.set_nonblocking(true).unwrap();
        let obs = tokio::net::TcpListener::from_std(obs).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = obs.accept().await {
                let observed = observed.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let line = loop {
                        match s.read(&mut buf).await {
                            Ok(0) => break "eof".to_string(),
                            Ok(_) => continue,
                            Err(e) => break format!("error {}", e.raw_os_error().unwrap_or(-1)),
                        }
                    };
                    let _ = observed.send(line);
                });
            }
        });
    }

    fn wait_for_dns(&self) {
        let ok = self.inside(|| {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            // A minimal query for "x." type A.
            let q = [
                0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'x', 0, 0, 1, 0, 1,
            ];
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut buf = [0u8; 512];
            while Instant::now() < deadline {
                let _ = s.send_to(&q, (DNS_SERVER, 53));
                if s.recv(&mut buf).is_ok() {
                    return true;
                }
            }
            false
        });
        assert!(ok, "dnsmasq did not start; see {}", self.dir.display());
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `sctrace-agent`; killed on drop.
pub struct Agent {
    pub child: Child,
    pub listen: String,
    pub log: PathBuf,
    pub socket: Option<PathBuf>,
}

impl Agent {
    /// Starts the agent on a Unix socket in the world's directory, with extra arguments.
    pub fn start(world: &World, extra: &[&str]) -> Agent {
        let socket = world.dir.join(format!(
            "agent-{}.sock",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        Agent::start_on(
            world,
            &format!("unix:{}", socket.display()),
            extra,
            Some(socket),
        )
    }

    pub fn start_on(world: &World, listen: &str, extra: &[&str], socket: Option<PathBuf>) -> Agent {
        Agent::start_with(&world.netns_path(), &world.dir, listen, extra, socket)
    }

    /// Starts the agent for the namespace file `netns` on a Unix socket in `dir` (which
    /// also holds its token and log).
    pub fn start_in(netns: &Path, dir: &Path, extra: &[&str]) -> Agent {
        let socket = dir.join(format!(
            "agent-{}.sock",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let listen = format!("unix:{}", socket.display());
        Agent::start_with(netns, dir, &listen, extra, Some(socket))
    }

    fn start_with(
        netns: &Path,
        dir: &Path,
        listen: &str,
        extra: &[&str],
        socket: Option<PathBuf>,
    ) -> Agent {
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let log = dir.join(format!(
            "agent-{}.log",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let mut child = Command::new(env!("CARGO_BIN_EXE_sctrace-agent"))
            .args(["--listen", listen, "--netns"])
            .arg(netns)
            .arg("--token-file")
            .arg(&token_file)
            .args(if extra.contains(&"--log-level") {
                &[][..]
            } else {
                &["--log-level", "debug"][..]
            })
            .args(extra)
            .env_remove("RUST_LOG")
            .env_remove("SCTRACE_AGENT_TOKEN")
            .stdout(Stdio::piped())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start sctrace-agent");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("agent printed no `listening` line");
        let listen = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}; log {}", log.display()))
            .trim()
            .to_string();
        Agent {
            child,
            listen,
            log,
            socket,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Connects and completes the handshake with `token`.
    pub async fn session_with(
        &self,
        token: &str,
    ) -> Result<SessionHandle, sctrace_protocol::HandshakeError> {
        let token = Token::new(token.as_bytes().to_vec()).unwrap();
        let session = if let Some(path) = self.listen.strip_prefix("unix:") {
            let io = tokio::net::UnixStream::connect(path).await.unwrap();
            Session::client(io, &token, Config::default()).await?
        } else {
            let addr: SocketAddr = self.listen.strip_prefix("tcp:").unwrap().parse().unwrap();
            let io = tokio::net::TcpStream::connect(addr).await.unwrap();
            Session::client(io, &token, Config::default()).await?
        };
        tokio::spawn(session.task.run());
        Ok(session.handle)
    }

    pub async fn session(&self) -> SessionHandle {
        self.session_with(TOKEN).await.expect("handshake")
    }

    /// Connects, completes the handshake and returns the handle with the requests the agent
    /// sends this side (incoming connections of subscriptions).
    pub async fn session_and_requests(&self) -> (SessionHandle, Requests) {
        let token = Token::new(TOKEN.as_bytes().to_vec()).unwrap();
        let path = self
            .listen
            .strip_prefix("unix:")
            .expect("agents of these tests listen on Unix sockets");
        let io = tokio::net::UnixStream::connect(path).await.unwrap();
        let session = Session::client(io, &token, Config::default())
            .await
            .expect("handshake");
        tokio::spawn(session.task.run());
        (session.handle, session.requests)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Waits for the agent to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(s) = &self.socket {
            let _ = std::fs::remove_file(s);
        }
    }
}

/// Writes `data` on a stream, shuts it down, and returns everything read back.
pub async fn echo(stream: &mut sctrace_protocol::Stream, data: &[u8]) -> Vec<u8> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let data = data.to_vec();
    let (_, got) = tokio::join!(
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
    got
}
