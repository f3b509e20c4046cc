//! Differential conformance (issue "Fidelity": programs under sctrace must behave exactly as
//! they would inside the target). Unmodified programs from Debian, PyPI's and npm's worlds
//! (Python, Node, Perl, curl, wget, dig, psql, redis-cli, ssh, git, nc, socat, ping, ...)
//! are each run twice:
//!
//! - **A**: directly inside the cluster namespace of a local cluster;
//! - **B**: under `sctrace run --target netns/<cluster>` in the laptop namespace,
//!
//! and what a user sees — stdout, stderr, the exit status (errnos are in the programs'
//! own messages) — is compared after normalising only what legitimately differs between
//! two runs (see [`norms`]: each says why). Servers run inside the cluster (PostgreSQL,
//! Redis, sshd, HTTP, echo) with throw-away state in the test's scratch directory.
//!
//! Each case is one entry of [`cases`]: a name, the program and its arguments, and how it
//! is driven ([`Kind`]: plainly, under a wrapper such as `timeout`, on a pseudo-terminal
//! with Ctrl-C typed, signalled as a process group, or as a server whose clients run in the
//! cluster). A case whose difference is a known, documented limitation is listed in
//! [`KNOWN`] with the reason; the test passes when every other case matches.
//!
//! Run: `cargo build --workspace --bins && scripts/build-fixtures && cargo test -p
//! sctrace-tests --test conformance` (as root). The full report (every case, both runs
//! side by side and a diff for each difference) is written to
//! `target/conformance-report.txt`. `CONFORMANCE_ONLY=dig,steal` runs only the cases whose
//! name contains one of the words; `CONFORMANCE_JOBS=N` runs N cases at once (default 2).
//! The whole suite (218 cases, each run twice) takes about 95 s on a 2-core machine: every
//! program has its own short timeouts and every run is bounded by [`RUN_TIMEOUT`].

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sctrace_tests::conformance::{
    indent, line_diff, normalise, not_ephemeral, run_bounded, Norm, Run, Running,
};
use sctrace_tests::{
    bin, fixture, require_root, run_with_timeout, workspace_root, Cluster, Server, ServerSpec,
    Variant,
};

/// Cases whose difference is a known, documented limitation (case name, or a prefix ending
/// in `*`; reason). They are still run and reported; a difference in them does not fail the
/// test. Every reason is written down in the README ("Known differences").
const KNOWN: &[(&str, &str)] = &[
    (
        "files-resolv-conf",
        "by design the program reads the laptop's own files: sctrace answers DNS queries sent \
         to the nameservers of the local /etc/resolv.conf (README, \"DNS\"), it does not show \
         the target's resolv.conf",
    ),
    (
        "dns-dig-server-line",
        "dig names the nameserver it asked, the laptop's (127.0.0.53), whose queries sctrace \
         answers (README, \"DNS\"); the other dig/host/nslookup cases normalise that line",
    ),
    (
        "files-environment",
        "the program's environment carries LOCALDOMAIN and RES_OPTIONS: the target's search \
         list and options, for its glibc or c-ares resolver (README, \"Known differences\")",
    ),
    (
        "dns-dig-*",
        "dig does not take the search list from LOCALDOMAIN: it sends a short name as it is, \
         the agent searches it with the target's list, and the answer is an alias (CNAME) of \
         the name found where the target's dig gets NXDOMAIN (README, \"Known differences\")",
    ),
    (
        "dns-host-*",
        "host does not take the search list from LOCALDOMAIN: the agent searches the short \
         name and the answer starts with an alias (CNAME) of the name found (README, \"Known \
         differences\")",
    ),
    (
        "dns-nslookup-*",
        "nslookup does not take the search list from LOCALDOMAIN: the agent searches the \
         short name and the answer starts with an alias (CNAME) of the name found (README, \
         \"Known differences\")",
    ),
    (
        "dns-node-*",
        "node's dns.resolve4/6 (c-ares queries that never search) send a short name as it is: \
         the agent searches it with the target's list and finds it where the target's node \
         gets ENOTFOUND (README, \"Known differences\")",
    ),
    (
        "dns-musl-many",
        "musl reads only /etc/resolv.conf: the agent searches the short name and the answer \
         carries an alias record, so a UDP answer truncated at 512 bytes holds a different \
         number of the 80 records (README, \"Known differences\")",
    ),
    (
        "icmp-*",
        "ICMP sockets (ping) are not relayed: they stay on this machine, whose network has no \
         route to the cluster (README, \"Known differences\")",
    ),
    (
        "socket-python-udp-refused",
        "a datagram to a closed port of the target gets no ECONNREFUSED back: the agent's \
         socket is not the app's, and the ICMP error stays in the target (README, \"Known \
         differences\")",
    ),
];

/// Whether `pattern` (a name, or a prefix ending in `*`) names case `name`.
fn names(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Why case `name` may differ, when it is a known limitation.
fn known(name: &str) -> Option<&'static str> {
    KNOWN
        .iter()
        .find(|(pattern, _)| names(pattern, name))
        .map(|(_, why)| *why)
}

/// Bound of one program run (every case sets its own, shorter, bounds inside too).
const RUN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long after a ready line a key is typed or a signal sent, as a person would: the
/// program is then waiting, not still setting up what comes after its ready line.
const REACTION: Duration = Duration::from_millis(100);
/// How long a program may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(8);

// --- the world ---------------------------------------------------------------------------

/// Addresses added to the cluster for the suite's own services (within 198.18.0.0/24 and
/// 2001:2::/64, which are local to the cluster namespace).
const CONF_DNS: &str = "198.18.0.3";
const REDIS: (&str, &str) = ("198.18.0.20", "2001:2::20");
const POSTGRES: (&str, &str) = ("198.18.0.21", "2001:2::21");
const GIT: (&str, &str) = ("198.18.0.22", "2001:2::22");
/// TTL of every answer of the suite's DNS server, so that TTLs can be compared.
const TTL: &str = "300";

/// A local cluster with real servers: HTTP (python http.server) on uwu-service, v4-only and
/// v6-only, echo (TCP/UDP 7) and http-hello (8080) on echo, PostgreSQL, Redis and sshd on
/// names of their own, and a DNS server with TTLs, a CNAME, TXT and SRV records.
struct World {
    cluster: Cluster,
    /// tests/conformance: the helper programs.
    data: PathBuf,
    /// Per-run working directories, HOME, configs.
    work: PathBuf,
    /// The compiled `gai.c`.
    gai: PathBuf,
    /// The ssh client key authorised by the cluster's sshd.
    ssh_key: PathBuf,
    /// The bare repository served over HTTP (dumb protocol) and ssh.
    repo: PathBuf,
    postgres: Option<Server>,
    _servers: Vec<Server>,
}

impl Drop for World {
    fn drop(&mut self) {
        // A fast shutdown, so that PostgreSQL removes its shared memory.
        if let Some(mut pg) = self.postgres.take() {
            pg.stop_with(Signal::SIGINT, Duration::from_secs(5));
        }
    }
}

fn sh(cmd: &mut Command) {
    run_with_timeout(cmd, Duration::from_secs(60)).assert_success();
}

impl World {
    fn new() -> World {
        require_root();
        let cluster = Cluster::up();
        let data = workspace_root().join("tests/conformance");
        let scratch = cluster.cluster.scratch_dir();
        let work = scratch.join("work");
        std::fs::create_dir_all(work.join("home")).unwrap();

        // Both namespaces get the same hosts file, listing ::1 first (as many distributions
        // and container images do): what glibc's getaddrinfo("localhost") sorting needs.
        let hosts = "::1 localhost ip6-localhost ip6-loopback\n127.0.0.1 localhost\n";
        cluster.cluster.write_etc("hosts", hosts);
        cluster.laptop.write_etc("hosts", hosts);
        // Unprivileged ICMP sockets for every group, in both namespaces alike.
        for ns in [&cluster.cluster, &cluster.laptop] {
            sh(ns
                .command("sysctl")
                .args(["-q", "-w", "net.ipv4.ping_group_range=0 2147483647"]));
        }

        let mut servers = Vec::new();
        // The suite's DNS server: every cluster name plus its own, with a TTL, and the
        // cluster's resolv.conf pointing at it (same search list and ndots as a pod).
        cluster.cluster.add_addr(&format!("{CONF_DNS}/32"));
        let mut names: Vec<(String, IpAddr)> = Vec::new();
        for s in cluster.services() {
            names.extend(s.ipv4.iter().map(|a| (s.fqdn.clone(), IpAddr::from(*a))));
            names.extend(s.ipv6.iter().map(|a| (s.fqdn.clone(), IpAddr::from(*a))));
        }
        for (name, (v4, v6)) in [("redis", REDIS), ("postgres", POSTGRES), ("git", GIT)] {
            let fqdn = format!("{name}.default.svc.cluster.local");
            names.push((fqdn.clone(), v4.parse().unwrap()));
            names.push((fqdn, v6.parse().unwrap()));
        }
        let names_ref: Vec<(&str, IpAddr)> = names.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        servers.push(cluster.cluster.dnsmasq(
            CONF_DNS.parse().unwrap(),
            &names_ref,
            &[
                &format!("--local-ttl={TTL}"),
                // The same order for every query: dnsmasq rotates records by default.
                "--no-round-robin",
                "--cname=web.default.svc.cluster.local,uwu-service.default.svc.cluster.local",
                "--txt-record=info.default.svc.cluster.local,\"sctrace conformance\"",
                "--srv-host=_http._tcp.uwu-service.default.svc.cluster.local,uwu-service.default.svc.cluster.local,80",
            ],
        ));
        cluster.cluster.write_etc(
            "resolv.conf",
            &format!(
                "nameserver {CONF_DNS}\nsearch {}\noptions ndots:5\n",
                cluster.search().join(" ")
            ),
        );

        // HTTP: a directory with a file and a git repository (dumb HTTP protocol).
        let www = scratch.join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("hello.txt"), "hello from the cluster\n").unwrap();
        let repo = www.join("repo.git");
        make_repo(&scratch.join("repo-src"), &repo);
        for addr in ["198.18.0.10", "2001:2::10", "198.18.0.14", "2001:2::15"] {
            let mut cmd = cluster.cluster.command("python3");
            cmd.args([
                "-u",
                "-m",
                "http.server",
                "--bind",
                addr,
                "80",
                "--directory",
            ])
            .arg(&www);
            servers.push(Server::spawn_logged(
                &format!("http.server on {addr}"),
                cmd,
                false,
                |l| l.starts_with("Serving HTTP"),
            ));
        }
        let echo = cluster.service("echo");
        let on = |port| vec![echo.addr_v4(port), echo.addr_v6(port)];
        servers.push(cluster.cluster.spawn_server(ServerSpec::TcpEcho(on(7))));
        servers.push(cluster.cluster.spawn_server(ServerSpec::UdpEcho(on(7))));
        servers.push(
            cluster
                .cluster
                .spawn_server(ServerSpec::HttpHello(on(8080))),
        );

        // Redis, no persistence.
        let redis_dir = scratch.join("redis");
        std::fs::create_dir_all(&redis_dir).unwrap();
        let mut cmd = cluster.cluster.command("redis-server");
        cmd.args(["--port", "6379", "--bind", REDIS.0, REDIS.1])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&redis_dir);
        servers.push(Server::spawn_logged("redis-server", cmd, false, |l| {
            l.contains("Ready to accept connections")
        }));

        let postgres = Some(start_postgres(&cluster, &scratch.join("pg")));
        let (ssh_key, sshd) = start_sshd(&cluster, &scratch.join("ssh"));
        servers.push(sshd);

        let gai = work.join("gai");
        sh(Command::new("cc")
            .arg("-O1")
            .arg("-o")
            .arg(&gai)
            .arg(data.join("gai.c")));

        World {
            cluster,
            data,
            work,
            gai,
            ssh_key,
            repo,
            postgres,
            _servers: servers,
        }
    }

    fn data(&self, file: &str) -> String {
        self.data.join(file).display().to_string()
    }
}

/// A bare repository with one commit of fixed dates (the same hash on every run), prepared
/// for the dumb HTTP protocol.
fn make_repo(src: &Path, bare: &Path) {
    std::fs::create_dir_all(src).unwrap();
    std::fs::write(src.join("README"), "served from the cluster\n").unwrap();
    let git = |dir: &Path, args: &[&str]| {
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(dir)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        for (k, v) in [
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("HOME", "/nonexistent"),
            ("GIT_AUTHOR_NAME", "conformance"),
            ("GIT_AUTHOR_EMAIL", "conformance@cluster.local"),
            ("GIT_COMMITTER_NAME", "conformance"),
            ("GIT_COMMITTER_EMAIL", "conformance@cluster.local"),
            ("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z"),
            ("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z"),
        ] {
            cmd.env(k, v);
        }
        sh(&mut cmd);
    };
    git(src, &["init", "-q", "-b", "main"]);
    git(src, &["add", "README"]);
    git(src, &["commit", "-q", "-m", "first commit"]);
    let parent = bare.parent().unwrap();
    git(
        parent,
        &[
            "clone",
            "-q",
            "--bare",
            &src.display().to_string(),
            &bare.display().to_string(),
        ],
    );
    git(bare, &["update-server-info"]);
}

/// PostgreSQL with a fresh data directory, trust authentication, listening on its own
/// addresses in the cluster.
fn start_postgres(cluster: &Cluster, dir: &Path) -> Server {
    let bindir = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| d.filter_map(Result::ok).map(|e| e.path().join("bin")).max())
        .expect("PostgreSQL is not installed (scripts/install-deps installs it)");
    std::fs::create_dir_all(dir).unwrap();
    sh(Command::new("chown").args(["postgres:postgres"]).arg(dir));
    let as_postgres = |cmd: &mut Command| {
        cmd.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]);
    };
    let mut initdb = Command::new("setpriv");
    as_postgres(&mut initdb);
    initdb
        .arg(bindir.join("initdb"))
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "-D",
        ])
        .arg(dir.join("data"));
    sh(&mut initdb);
    // Clients connect over TCP from cluster addresses (initdb only trusts loopback).
    let hba = dir.join("data/pg_hba.conf");
    let mut text = std::fs::read_to_string(&hba).unwrap();
    text.push_str("host all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n");
    std::fs::write(&hba, text).unwrap();
    let mut cmd = cluster.cluster.command("setpriv");
    as_postgres(&mut cmd);
    cmd.arg(bindir.join("postgres"))
        .arg("-D")
        .arg(dir.join("data"))
        .args([
            "-c",
            &format!("listen_addresses={},{}", POSTGRES.0, POSTGRES.1),
        ])
        .args(["-c", &format!("unix_socket_directories={}", dir.display())])
        .args(["-c", "dynamic_shared_memory_type=mmap", "-c", "fsync=off"]);
    Server::spawn_logged("postgres", cmd, true, |l| {
        l.contains("ready to accept connections")
    })
}

/// sshd with its own host key, accepting one client key for root; returns the key.
fn start_sshd(cluster: &Cluster, dir: &Path) -> (PathBuf, Server) {
    std::fs::create_dir_all(dir).unwrap();
    // sshd's privilege separation directory (its Debian package creates it at boot).
    std::fs::create_dir_all("/run/sshd").unwrap();
    let keygen = |file: &str| {
        sh(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "conformance", "-f"])
            .arg(dir.join(file)));
    };
    keygen("host_key");
    keygen("client_key");
    std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress {}\nListenAddress {}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPrintMotd no\nPrintLastLog no\nLogLevel VERBOSE\n",
            GIT.0,
            GIT.1,
            d = dir.display()
        ),
    )
    .unwrap();
    let mut cmd = cluster.cluster.command("/usr/sbin/sshd");
    cmd.args(["-D", "-e", "-f"]).arg(&config);
    let server = Server::spawn_logged("sshd", cmd, true, |l| {
        l.contains(&format!("Server listening on {} port 22", GIT.1))
    });
    (dir.join("client_key"), server)
}

// --- normalisations ----------------------------------------------------------------------

/// Every normalisation of the suite. Each rewrites what differs between two runs of the
/// same program in the same place, never what sctrace could make equal.
mod norms {
    use super::*;

    /// A port the kernel picked for an unbound socket (Linux's ephemeral range,
    /// 32768-60999): two connections never get the same one. As `ADDR:PORT`, `[ADDR]:PORT`,
    /// Python's `(ADDR, PORT)`, `port PORT` and SSH_CONNECTION's `ADDR PORT`. Ports outside
    /// the range (80, 7, a server's chosen port) are kept.
    pub const EPHEMERAL_PORT: Norm = Norm {
        name: "ephemeral port",
        pattern: r"(?P<pre>[0-9a-fA-F\]]:|', |port |port=|\d )(?P<port>\d{5})\b",
        replacement: "${pre}<ephemeral>",
        keep_if: Some(not_ephemeral),
        why: "the kernel picks a new ephemeral port for every connection",
    };

    /// Durations: curl's "after N ms", ping's "time=N ms" and statistics, dig's "Query
    /// time", anything printed as milliseconds.
    pub const DURATION: Norm = Norm {
        name: "duration",
        pattern: r"\b\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)* ?(?:ms|msec)\b",
        replacement: "<N> ms",
        keep_if: None,
        why: "how long a step took varies between runs",
    };

    /// Dates and times: HTTP `Date:` headers, web server logs, wget's and socat's time
    /// stamps, dig's `;; WHEN:`.
    pub const CLOCK: Norm = Norm {
        name: "clock",
        pattern: r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),? \d{1,2} \w{3} \d{4} \d{2}:\d{2}:\d{2}(?: GMT| UTC)?|\d{2}/\w{3}/\d{4} \d{2}:\d{2}:\d{2}|\d{4}[-/]\d{2}[-/]\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)?|;; WHEN: .*)",
        replacement: "<time>",
        keep_if: None,
        why: "the wall clock moves between the two runs",
    };

    /// wget's transfer speed and duration ("(12.3 MB/s)", "in 0s", "5.33M=0s").
    pub const SPEED: Norm = Norm {
        name: "speed",
        pattern: r"\(\d+(?:\.\d+)? [KMG]?B/s\)|\bin \d+(?:\.\d+)?s\b| +\d+(?:\.\d+)?[KMG]?=\d+(?:\.\d+)?s\b",
        replacement: "<speed>",
        keep_if: None,
        why: "transfer speed and time vary between runs",
    };

    /// Process ids in log prefixes (`socat[1234]`).
    pub const PID: Norm = Norm {
        name: "pid",
        pattern: r"(?P<prog>[a-z]+)\[\d+\]",
        replacement: "${prog}[<pid>]",
        keep_if: None,
        why: "every run is a new process",
    };

    /// curl's two words for one connect timeout. Which one it prints depends on which of its
    /// own checks sees the deadline first when poll returns (the connect attempt's, or the
    /// transfer's): "Failed to connect to HOST port P after N ms: Timeout was reached" or
    /// "Connection timeout after N ms". Applied after the duration norm.
    pub const CURL_CONNECT_TIMEOUT: Norm = Norm {
        name: "curl connect timeout",
        pattern: r"Failed to connect to \S+ port \d+ after <N> ms: Timeout was reached|Connection timeout after <N> ms",
        replacement: "<connect timed out after N ms>",
        keep_if: None,
        why: "curl reports one connect timeout in two ways, by a race between its own checks",
    };

    /// dig's random query id.
    pub const DIG_ID: Norm = Norm {
        name: "dns id",
        pattern: r"\bid: \d+",
        replacement: "id: <id>",
        keep_if: None,
        why: "dig picks a random query id for every query",
    };

    /// Which nameserver dig, host and nslookup say they asked: under sctrace that is the
    /// laptop's resolv.conf nameserver whose queries sctrace answers (README, "DNS"), by
    /// design; the case `dns-dig-server-line` keeps this line and is listed in KNOWN. What
    /// the nameserver answered is still compared.
    pub const NAMESERVER: Norm = Norm {
        name: "nameserver",
        // dig's `;; SERVER: A#53(A)`, nslookup's `Server:<TAB>A` and `Address:<TAB>A#53`;
        // nslookup's answers (`Address: A`, with a space) are kept.
        pattern: r"(?m)^(?P<what>;; SERVER: |Server:\t+|Address:\t+)[0-9a-fA-F.:]+(?:#53)?(?:\(\S+\))?",
        replacement: "${what}<nameserver>",
        keep_if: None,
        why: "the program reads the laptop's resolv.conf: the nameserver it names is the laptop's",
    };

    /// Applied to every case.
    pub const GLOBAL: &[&Norm] = &[&CLOCK, &DIG_ID, &EPHEMERAL_PORT, &DURATION, &SPEED, &PID];
}

// --- cases -------------------------------------------------------------------------------

/// How a case's program is driven.
#[derive(Clone)]
enum Kind {
    /// Run to completion (stdin: the case's input or /dev/null).
    Plain,
    /// Under a wrapper such as `timeout`: A `wrapper PROGRAM`, B `wrapper sctrace run --
    /// PROGRAM` (the wrapper signals sctrace, as a CI runner would).
    Wrapped(Vec<String>),
    /// On a new pseudo-terminal: once the program prints `ready`, `input` is typed
    /// (e.g. Ctrl-C, which the terminal turns into SIGINT for the foreground group).
    Pty { ready: String, input: Vec<u8> },
    /// In its own process group: once it prints `ready`, `kill -SIG -PGID` for each signal,
    /// one second apart.
    GroupSignal { ready: String, signals: Vec<Signal> },
    /// A server: once it prints `ready`, each client command runs in the cluster (A and B
    /// alike); then, if still running, the server's group gets `stop`.
    Serve {
        ready: String,
        clients: Vec<Vec<String>>,
        stop: Option<Signal>,
    },
}

#[derive(Clone)]
struct Case {
    name: String,
    argv: Vec<String>,
    stdin: Option<Vec<u8>>,
    env: Vec<(String, String)>,
    kind: Kind,
    /// sctrace config (B only; the target is always given with --target).
    config: Option<String>,
    norms: Vec<&'static Norm>,
}

fn case<S: AsRef<str>>(name: &str, argv: &[S]) -> Case {
    Case {
        name: name.to_string(),
        argv: argv.iter().map(|a| a.as_ref().to_string()).collect(),
        stdin: None,
        env: Vec::new(),
        kind: Kind::Plain,
        config: None,
        norms: Vec::new(),
    }
}

impl Case {
    fn stdin(mut self, input: &str) -> Case {
        self.stdin = Some(input.as_bytes().to_vec());
        self
    }
    fn env(mut self, key: &str, value: &str) -> Case {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    fn kind(mut self, kind: Kind) -> Case {
        self.kind = kind;
        self
    }
    fn config(mut self, json: &str) -> Case {
        self.config = Some(json.to_string());
        self
    }
    fn norm(mut self, norm: &'static Norm) -> Case {
        self.norms.push(norm);
        self
    }
    fn serve(self, ready: &str, clients: Vec<Vec<String>>, stop: Option<Signal>) -> Case {
        self.kind(Kind::Serve {
            ready: ready.to_string(),
            clients,
            stop,
        })
    }
}

/// An argument vector from string slices.
fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

const STEAL: &str = r#"{"feature":{"network":{"incoming":{"mode":"steal"}}}}"#;

/// Every case, in report order: one line each, `case(NAME, ARGV)` plus how it is driven.
#[rustfmt::skip]
fn cases(w: &World) -> Vec<Case> {
    let mut v = Vec::new();
    let d = |file: &str| w.data(file);
    let (resolve_py, node_dns, node_http, perl_client) = (d("resolve.py"), d("node_dns.js"), d("node_http.js"), d("perl_client.pl"));
    let (connect_py, icmp_py, sigint_py, gai_py) = (d("connect.py"), d("icmp.py"), d("sigint.py"), d("gai_localhost.py"));
    let (serve_py, asyncio_py, perl_server, node_server, tcp_client) = (d("serve.py"), d("asyncio_server.py"), d("perl_server.pl"), d("node_server.js"), d("tcp_client.py"));
    let fix = |name: &str| fixture(name).display().to_string();
    let (musl, go, cares, sigecho) = (fix("client-musl"), fix("client-go"), fix("client-cares"), fix("sigecho"));
    let gai = w.gai.display().to_string();

    // DNS through every resolver, for every kind of name: short (search list), with the
    // namespace, fully qualified (4 dots: still searched first with ndots:5), absolute,
    // unknown, single-family services, a CNAME, localhost (hosts file), 80 records (TCP).
    let names = [
        ("short", "uwu-service"),
        ("namespace", "uwu-service.default"),
        ("fqdn", "uwu-service.default.svc.cluster.local"),
        ("absolute", "uwu-service.default.svc.cluster.local."),
        ("unknown", "no-such-service"),
        ("v4only", "v4-only"),
        ("v6only", "v6-only"),
        ("cname", "web"),
        ("localhost", "localhost"),
        ("many", "many"),
    ];
    let dig = ["dig", "+time=2", "+tries=1", "+nocmd", "+nostats"];
    // (resolver, argv for a name, whether its output names the nameserver it asked)
    type Resolver<'a> = (&'a str, Box<dyn Fn(&str) -> Vec<String> + 'a>, bool);
    let resolvers: Vec<Resolver> = vec![
        ("getent-ahosts", Box::new(|n| argv(&["getent", "ahosts", n])), false),
        ("getent-hosts", Box::new(|n| argv(&["getent", "hosts", n])), false),
        ("python", Box::new(|n| argv(&["python3", &resolve_py, n])), false),
        ("musl", Box::new(|n| argv(&[&musl, "--timeout-ms", "3000", &format!("resolve:{n}")])), false),
        ("go", Box::new(|n| argv(&[&go, "--timeout-ms", "3000", &format!("resolve:{n}")])), false),
        ("cares", Box::new(|n| argv(&[&cares, "--timeout-ms", "3000", &format!("resolve:{n}")])), false),
        ("node", Box::new(|n| argv(&["node", &node_dns, n])), false),
        ("dig-a", Box::new(|n| argv(&[&dig[..], &[n, "A"]].concat())), true),
        ("dig-aaaa", Box::new(|n| argv(&[&dig[..], &[n, "AAAA"]].concat())), true),
        ("dig-search", Box::new(|n| argv(&[&dig[..], &["+search", n]].concat())), true),
        ("host", Box::new(|n| argv(&["host", "-W", "2", n])), true),
        ("nslookup", Box::new(|n| argv(&["nslookup", "-timeout=2", n])), true),
    ];
    for (rname, argv, names_server) in &resolvers {
        for (nname, name) in names {
            let c = case(&format!("dns-{rname}-{nname}"), &argv(name));
            v.push(if *names_server { c.norm(&norms::NAMESERVER) } else { c });
        }
    }
    let dig_with = |args: &[&str]| argv(&[&dig[..], args].concat());
    v.push(case("dns-dig-txt", &dig_with(&["info.default.svc.cluster.local", "TXT"])).norm(&norms::NAMESERVER));
    v.push(case("dns-dig-srv", &dig_with(&["_http._tcp.uwu-service.default.svc.cluster.local", "SRV"])).norm(&norms::NAMESERVER));
    v.push(case("dns-dig-cname-type", &dig_with(&["web.default.svc.cluster.local", "CNAME"])).norm(&norms::NAMESERVER));
    v.push(case("dns-dig-tcp", &dig_with(&["+tcp", "uwu-service.default.svc.cluster.local", "A"])).norm(&norms::NAMESERVER));
    v.push(case("dns-dig-explicit-server", &dig_with(&["@198.18.0.3", "uwu-service.default.svc.cluster.local", "A"])));
    v.push(case("dns-dig-server-line", &["dig", "+time=2", "+tries=1", "uwu-service.default.svc.cluster.local"]));
    v.push(case("dns-host-srv", &["host", "-W", "2", "-t", "SRV", "_http._tcp.uwu-service"]).norm(&norms::NAMESERVER));
    v.push(case("files-resolv-conf", &["cat", "/etc/resolv.conf"]));
    v.push(case("files-environment", &["sh", "-c", "env | sort"]));

    // HTTP clients.
    let url = "http://uwu-service/hello.txt";
    let curl = |args: &[&str]| argv(&[&["curl", "-sS", "-m", "5"], args].concat());
    let wget = |args: &[&str]| argv(&[&["wget", "-T", "3", "-t", "1"], args].concat());
    v.push(case("http-curl-short", &curl(&[url])));
    v.push(case("http-curl-fqdn", &curl(&["http://uwu-service.default.svc.cluster.local/hello.txt"])));
    v.push(case("http-curl-absolute", &curl(&["http://uwu-service.default.svc.cluster.local./hello.txt"])));
    v.push(case("http-curl-v4only", &curl(&["http://v4-only/hello.txt"])));
    v.push(case("http-curl-v6only", &curl(&["http://v6-only/hello.txt"])));
    v.push(case("http-curl-ipv4-flag", &curl(&["-4", url])));
    v.push(case("http-curl-ipv6-flag", &curl(&["-6", url])));
    v.push(case("http-curl-ipv6-literal", &curl(&["http://[2001:2::10]/hello.txt"])));
    v.push(case("http-curl-headers", &curl(&["-i", url])));
    v.push(case("http-curl-verbose", &curl(&["-v", url])));
    v.push(case("http-curl-peer-seen-by-server", &curl(&["http://echo:8080/", "http://198.18.0.12:8080/", "http://[2001:2::12]:8080/"])));
    v.push(case("http-curl-refused", &curl(&["http://echo:1/"])));
    v.push(case("http-curl-unknown-host", &curl(&["http://no-such-service/"])));
    v.push(case("http-curl-connect-timeout", &["curl", "-sS", "--connect-timeout", "2", "http://blackhole/"]).norm(&norms::CURL_CONNECT_TIMEOUT));
    v.push(case("http-curl-unreachable", &curl(&["http://198.19.255.1/"])));
    v.push(case("http-wget", &wget(&["-nv", "-O", "-", url])).norm(&norms::SPEED));
    v.push(case("http-wget-headers", &wget(&["-S", "-O", "/dev/null", url])).norm(&norms::SPEED));
    v.push(case("http-wget-refused", &wget(&["-O", "-", "http://echo:1/"])));
    v.push(case("http-wget-unknown-host", &wget(&["-O", "-", "http://no-such-service/"])));
    v.push(case("http-python-urllib", &["python3", "-c", "import urllib.request as u; r = u.urlopen('http://uwu-service/hello.txt', timeout=5); print(r.status, r.headers['Content-Length'], r.read())"]));
    v.push(case("http-node", &["node", &node_http, url]));
    v.push(case("http-node-v6only", &["node", &node_http, "http://v6-only/hello.txt"]));
    v.push(case("http-node-unknown-host", &["node", &node_http, "http://no-such-service/"]));
    v.push(case("http-perl", &["perl", &perl_client, "uwu-service", "80", url]));
    v.push(case("http-perl-refused", &["perl", &perl_client, "echo", "1", "http://echo:1/"]));

    // Sockets from Python: outcomes and errnos.
    let connect = |args: &[&str]| argv(&[&["python3", &connect_py], args].concat());
    v.push(case("socket-python-ok", &connect(&["tcp:echo:7", "tcp:[2001:2::12]:7", "udp:echo:7", "sendto:echo:7", "sendto:198.18.0.12:7", "nb:echo:7"])));
    v.push(case("socket-python-refused", &connect(&["tcp:echo:1", "nb:echo:1", "tcp:[2001:2::12]:1"])));
    v.push(case("socket-python-udp-refused", &connect(&["udp:echo:1"])));
    v.push(case("socket-python-timeout", &connect(&["tcp:blackhole:80", "nb:blackhole:80"])));
    v.push(case("socket-python-unreachable", &connect(&["tcp:198.19.255.1:80", "tcp:[2001:2:ff::1]:80"])));
    v.push(case("socket-python-unknown-host", &connect(&["tcp:no-such-service:80"])));

    // nc and socat.
    v.push(case("nc-tcp", &["nc", "-N", "-w", "2", "echo", "7"]).stdin("hello nc\n"));
    v.push(case("nc-tcp-verbose", &["nc", "-zv", "-w", "2", "echo", "7"]));
    v.push(case("nc-tcp6", &["nc", "-6", "-N", "-w", "2", "echo", "7"]).stdin("hello nc6\n"));
    v.push(case("nc-udp", &["nc", "-u", "-w", "1", "echo", "7"]).stdin("hello udp\n"));
    v.push(case("nc-refused", &["nc", "-zv", "-w", "2", "echo", "1"]));
    v.push(case("nc-timeout", &["nc", "-zv", "-w", "2", "blackhole", "80"]));
    v.push(case("socat-tcp", &["socat", "-T", "2", "-", "TCP:echo:7"]).stdin("hello socat\n"));
    v.push(case("socat-tcp6", &["socat", "-T", "2", "-", "TCP6:echo:7"]).stdin("hello socat6\n"));
    v.push(case("socat-udp", &["socat", "-T", "1", "-", "UDP:echo:7"]).stdin("hello udp\n"));
    v.push(case("socat-refused", &["socat", "-", "TCP:echo:1"]));

    // Databases and caches.
    let query = "select inet_server_addr(), inet_server_port(), inet_client_addr(), current_user";
    let psql = |host: &str, port: &str| argv(&["psql", "-X", "-A", "-t", "-h", host, "-p", port, "-U", "postgres", "-c", query]);
    v.push(case("db-psql-short", &psql("postgres", "5432")).env("PGCONNECT_TIMEOUT", "3"));
    v.push(case("db-psql-fqdn", &psql("postgres.default.svc.cluster.local", "5432")).env("PGCONNECT_TIMEOUT", "3"));
    v.push(case("db-psql-ipv4", &psql(POSTGRES.0, "5432")).env("PGCONNECT_TIMEOUT", "3"));
    v.push(case("db-psql-refused", &psql("echo", "1")).env("PGCONNECT_TIMEOUT", "3"));
    v.push(case("db-psql-unknown-host", &psql("no-such-service", "5432")).env("PGCONNECT_TIMEOUT", "3"));
    v.push(case("db-psql-timeout", &psql("blackhole", "5432")).env("PGCONNECT_TIMEOUT", "2"));
    v.push(case("db-redis-ping", &["redis-cli", "-h", "redis", "PING"]));
    v.push(case("db-redis-set-get", &["sh", "-c", "redis-cli -h redis SET conformance yes && redis-cli -h redis.default.svc.cluster.local GET conformance && redis-cli -h 2001:2::20 EXISTS conformance"]));
    v.push(case("db-redis-refused", &["redis-cli", "-h", "echo", "-p", "1", "PING"]));
    v.push(case("db-redis-unknown-host", &["redis-cli", "-h", "no-such-service", "PING"]));

    // ssh and git.
    let ssh_cmd = format!(
        "ssh -F /dev/null -i {} -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=3",
        w.ssh_key.display()
    );
    let ssh = |args: &[&str]| argv(&[ssh_cmd.split(' ').collect::<Vec<_>>().as_slice(), args].concat());
    v.push(case("ssh-command", &ssh(&["root@git", "echo \"$SSH_CONNECTION\"; echo done"])));
    v.push(case("ssh-ipv4", &ssh(&["-4", "root@git.default.svc.cluster.local", "echo \"$SSH_CONNECTION\""])));
    v.push(case("ssh-ipv6", &ssh(&["-6", "root@git", "echo \"$SSH_CONNECTION\""])));
    v.push(case("ssh-refused", &ssh(&["-p", "1", "root@echo", "true"])));
    v.push(case("ssh-unknown-host", &ssh(&["root@no-such-service", "true"])));
    let ssh_repo = format!("ssh://root@git{}", w.repo.display());
    v.push(case("git-clone-http", &["sh", "-c", "git clone -q http://uwu-service/repo.git clone && git -C clone log --format='%H %s'"]).env("GIT_CONFIG_NOSYSTEM", "1"));
    v.push(case("git-ls-remote-ssh", &["git", "ls-remote", &ssh_repo]).env("GIT_SSH_COMMAND", &ssh_cmd).env("GIT_CONFIG_NOSYSTEM", "1"));
    v.push(case("git-ls-remote-unknown-host", &["git", "ls-remote", "http://no-such-service/repo.git"]).env("GIT_CONFIG_NOSYSTEM", "1"));

    // ICMP: ping as root (raw socket), and unprivileged datagram sockets.
    v.push(case("icmp-ping-v4", &["ping", "-c", "1", "-W", "2", "-n", "198.18.0.10"]));
    v.push(case("icmp-ping-name", &["ping", "-c", "1", "-W", "2", "uwu-service"]));
    v.push(case("icmp-ping-v6", &["ping", "-6", "-c", "1", "-W", "2", "-n", "2001:2::10"]));
    v.push(case("icmp-dgram-python-v4", &["python3", &icmp_py, "198.18.0.10"]));
    v.push(case("icmp-dgram-python-v6", &["python3", &icmp_py, "2001:2::10"]));

    // Servers started under sctrace (default incoming mode: mirror), and what they ask
    // getaddrinfo first. Ports from 20001 up, one per case: nothing in the cluster uses them.
    let mut next_port = 20000u16;
    let mut port = || {
        next_port += 1;
        next_port.to_string()
    };
    v.push(case("server-gai-localhost-python", &["python3", &gai_py, &port()]));
    v.push(case("server-gai-localhost-c", &[gai.as_str(), "localhost", "8080"]));
    v.push(case("server-gai-passive-c", &[gai.as_str(), "-", "8080", "passive"]));
    let stop = Some(Signal::SIGINT);
    v.push(case("server-python-http-server", &["python3", "-m", "http.server", &port()]).serve("Serving HTTP", vec![], stop));
    v.push(case("server-python-http-server-bind-v4", &["python3", "-m", "http.server", "--bind", "127.0.0.1", &port()]).serve("Serving HTTP", vec![], stop));
    v.push(case("server-python-asyncio", &["python3", &asyncio_py, "-", &port(), "0"]));
    v.push(case("server-perl-io-socket-ip", &["perl", &perl_server, &port(), "0"]));
    v.push(case("server-node-net", &["node", &node_server, &port(), "0"]));

    // Stolen ports: clients in the cluster connect to the target's port on uwu-service's
    // addresses; the app listens on it and prints what accept/getpeername/getsockname show.
    let client = |host: &str, port: &str, line: &str| argv(&["python3", &tcp_client, host, port, line]);
    let v4_and_v6 = |port: &str| vec![client("198.18.0.10", port, "v4"), client("2001:2::10", port, "v6")];
    let p = port();
    v.push(case("steal-python-dual-stack", &["python3", &serve_py, "dual", &p, "2"]).config(STEAL).serve("ready", v4_and_v6(&p), None));
    let p = port();
    v.push(case("steal-python-v4", &["python3", &serve_py, "v4", &p, "1"]).config(STEAL).serve("ready", vec![client("198.18.0.10", &p, "v4")], None));
    let p = port();
    v.push(case("steal-python-v6only", &["python3", &serve_py, "v6only", &p, "1"]).config(STEAL).serve("ready", vec![client("2001:2::10", &p, "v6")], None));
    let p = port();
    v.push(case("steal-python-asyncio", &["python3", &asyncio_py, "-", &p, "2"]).config(STEAL).serve("ready", v4_and_v6(&p), None));
    let p = port();
    v.push(case("steal-perl-io-socket-ip", &["perl", &perl_server, &p, "2"]).config(STEAL).serve("ready", v4_and_v6(&p), None));
    let p = port();
    v.push(case("steal-node-net", &["node", &node_server, &p, "2"]).config(STEAL).serve("ready", v4_and_v6(&p), None));
    let p = port();
    let fetch = |url: &str| argv(&["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code} %{remote_ip}\n", url]);
    v.push(case("steal-python-http-server", &["python3", "-m", "http.server", "--bind", "::", &p]).config(STEAL)
        .serve("Serving HTTP", vec![fetch(&format!("http://198.18.0.10:{p}/")), fetch(&format!("http://[2001:2::10]:{p}/"))], stop));
    let p = port();
    v.push(case("steal-nc-listen", &["sh", "-c", &format!("echo ready; exec nc -lvn -w 5 {p}")]).config(STEAL)
        .serve("ready", vec![argv(&["sh", "-c", &format!("sleep 0.3; echo hello | nc -N -w 2 198.18.0.10 {p}")])], None));

    // Signals: Ctrl-C on a terminal, process-group signals, timeout(1).
    let sigint: [&str; 4] = ["python3", &sigint_py, "uwu-service", url];
    let ctrl_c = Kind::Pty { ready: "ready".into(), input: b"\x03".to_vec() };
    let killpg = |signals: &[Signal]| Kind::GroupSignal { ready: "ready".into(), signals: signals.to_vec() };
    let wrapped = |wrapper: &[&str]| Kind::Wrapped(argv(wrapper));
    v.push(case("signal-pty-ctrl-c-python-handler", &sigint).kind(ctrl_c.clone()));
    v.push(case("signal-pty-ctrl-c-shell-trap", &["sh", "-c", "trap 'curl -sS -m 5 http://uwu-service/hello.txt; getent hosts uwu-service; exit 3' INT; echo ready; while :; do sleep 0.1; done"]).kind(ctrl_c.clone()));
    v.push(case("signal-pty-ctrl-c-default-action", &["sh", "-c", "echo ready; exec sleep 20"]).kind(ctrl_c));
    v.push(case("signal-killpg-int-python-handler", &sigint).kind(killpg(&[Signal::SIGINT])));
    v.push(case("signal-killpg-term-sigecho", &[&sigecho]).kind(killpg(&[Signal::SIGTERM])));
    // sigecho prints one line per signal received: SIGINT must come once, then SIGHUP ends it.
    v.push(case("signal-killpg-int-then-hup-sigecho", &[&sigecho, "--exit-on", "HUP"]).kind(killpg(&[Signal::SIGINT, Signal::SIGHUP])));
    v.push(case("signal-timeout-int-python-handler", &sigint).kind(wrapped(&["timeout", "-s", "INT", "2"])));
    v.push(case("signal-timeout-term-sigecho", &[&sigecho]).kind(wrapped(&["timeout", "2"])));
    v.push(case("signal-timeout-foreground-sigecho", &[&sigecho]).kind(wrapped(&["timeout", "--foreground", "2"])));
    v
}

// --- running -----------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Directly inside the cluster namespace.
    Direct,
    /// Under sctrace in the laptop namespace.
    Sctrace,
}

/// The command for `argv` on `side`, with `wrapper` in front (of sctrace, for B).
fn command(w: &World, c: &Case, side: Side, wrapper: &[String]) -> Command {
    let (ns, mut argv) = match side {
        Side::Direct => (&w.cluster.cluster, Vec::new()),
        Side::Sctrace => {
            // As SCTRACE_TEST_CONFINE / SCTRACE_TEST_USER say (see sctrace_tests::Variant).
            let mut a: Vec<String> = Variant::from_env()
                .argv(bin("sctrace"))
                .into_iter()
                .map(|arg| arg.to_string_lossy().into_owned())
                .collect();
            a.extend([
                "run".into(),
                "-q".into(),
                "--target".into(),
                format!("netns/{}", w.cluster.cluster.name()),
            ]);
            if let Some(json) = &c.config {
                let path = w.work.join(format!("{}.json", c.name));
                std::fs::write(&path, json).unwrap();
                a.extend(["-c".into(), path.display().to_string()]);
            }
            a.push("--".into());
            (&w.cluster.laptop, a)
        }
    };
    argv.extend(c.argv.iter().cloned());
    let mut full: Vec<String> = wrapper.to_vec();
    full.extend(argv);
    let mut cmd = ns.command(&full[0]);
    cmd.args(&full[1..]);
    // The same directory for A and B (emptied in between): programs may print it.
    let dir = w.work.join(format!("run-{}", c.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    cmd.current_dir(&dir).env_clear();
    for (k, v) in [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", &w.work.join("home").display().to_string()),
        ("USER", "root"),
        ("LOGNAME", "root"),
        ("LANG", "C.UTF-8"),
        ("TERM", "dumb"),
        ("PYTHONUNBUFFERED", "1"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
    ] {
        cmd.env(k, v);
    }
    cmd.envs(c.env.iter().map(|(k, v)| (k, v)));
    let variant = Variant::from_env();
    if side == Side::Sctrace && !variant.is_plain() {
        let (address, token) = w.cluster.agent_by_address(variant.user().is_some());
        cmd.env("SCTRACE_AGENT_ADDRESS", address)
            .env("SCTRACE_AGENT_TOKEN_FILE", token);
    }
    cmd
}

/// Runs the case on one side: the program's run, then (servers) each client's.
fn run_side(w: &World, c: &Case, side: Side) -> Vec<(String, Run)> {
    let program = |wrapper: &[String]| command(w, c, side, wrapper);
    match &c.kind {
        Kind::Plain => vec![(
            String::new(),
            run_bounded(program(&[]), c.stdin.clone(), RUN_TIMEOUT),
        )],
        Kind::Wrapped(wrapper) => vec![(
            String::new(),
            run_bounded(program(wrapper), c.stdin.clone(), RUN_TIMEOUT),
        )],
        Kind::Pty { ready, input } => {
            let mut running = match Running::spawn_pty(program(&[])) {
                Ok(r) => r,
                Err(e) => return vec![(String::new(), Run::not_started(e))],
            };
            let mut note = String::new();
            if running.wait_line(ready, READY_TIMEOUT) {
                std::thread::sleep(REACTION);
                if let Err(e) = running.type_on_terminal(input) {
                    note = format!("(harness: {e})");
                }
            } else {
                note =
                    format!("(harness: no {ready:?} line within {READY_TIMEOUT:?}: nothing typed)");
            }
            let mut run = running.finish(RUN_TIMEOUT);
            run.stderr.push_str(&note);
            vec![(String::new(), run)]
        }
        Kind::GroupSignal { ready, signals } => {
            let running = match Running::spawn(program(&[]), c.stdin.clone()) {
                Ok(r) => r,
                Err(e) => return vec![(String::new(), Run::not_started(e))],
            };
            let mut note = String::new();
            if running.wait_line(ready, READY_TIMEOUT) {
                for (i, signal) in signals.iter().enumerate() {
                    std::thread::sleep(if i == 0 {
                        REACTION
                    } else {
                        Duration::from_secs(1)
                    });
                    running.signal_group(*signal);
                }
            } else {
                note =
                    format!("(harness: no {ready:?} line within {READY_TIMEOUT:?}: not signalled)");
            }
            let mut run = running.finish(RUN_TIMEOUT);
            run.stderr.push_str(&note);
            vec![(String::new(), run)]
        }
        Kind::Serve {
            ready,
            clients,
            stop,
        } => {
            let running = match Running::spawn(program(&[]), c.stdin.clone()) {
                Ok(r) => r,
                Err(e) => return vec![(String::new(), Run::not_started(e))],
            };
            let mut note = String::new();
            if !running.wait_output(ready, READY_TIMEOUT) {
                note = format!("(harness: no {ready:?} within {READY_TIMEOUT:?})");
            }
            let mut out = Vec::new();
            for (i, argv) in clients.iter().enumerate() {
                let mut cmd = w.cluster.cluster.command(&argv[0]);
                cmd.args(&argv[1..])
                    .env_clear()
                    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
                out.push((
                    format!("client {} in the cluster", i + 1),
                    run_bounded(cmd, None, Duration::from_secs(10)),
                ));
            }
            if let Some(signal) = stop {
                // Let the server log the last request before stopping it, as a user would.
                std::thread::sleep(Duration::from_millis(300));
                running.signal_group(*signal);
            }
            let mut run = running.finish(Duration::from_secs(12));
            run.stderr.push_str(&note);
            let mut all = vec![(String::new(), run)];
            all.extend(out);
            all
        }
    }
}

/// The cluster's own firewall table, as `scripts/local-cluster` makes it (the black hole's
/// drop rules), put back after each server case for the cases that need the black hole.
/// (It used to be named `sctrace_cluster`, which the agent took for a leftover of its own and
/// removed; it no longer is, so this only guards against a case that changes it.)
fn restore_blackhole(w: &World) {
    let rules = format!(
        "table inet local_cluster\ndelete table inet local_cluster\n\
         table inet local_cluster {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  \
         ip daddr {} drop\n  ip6 daddr {} drop\n }}\n}}\n",
        w.cluster.blackhole_v4(),
        w.cluster.blackhole_v6()
    );
    let mut cmd = w.cluster.cluster.command("nft");
    cmd.args(["-f", "-"]);
    let out = sctrace_tests::run_with_input(&mut cmd, rules.as_bytes(), Duration::from_secs(10));
    out.assert_success();
}

/// One case's outcome.
struct Outcome {
    name: String,
    known: Option<&'static str>,
    a: Vec<(String, Run)>,
    b: Vec<(String, Run)>,
    /// Per differing stream: label, A's normalised text, B's normalised text.
    diffs: Vec<(String, String, String)>,
}

fn compare(c: &Case, a: Vec<(String, Run)>, b: Vec<(String, Run)>) -> Outcome {
    let norms: Vec<&Norm> = norms::GLOBAL
        .iter()
        .copied()
        .chain(c.norms.iter().copied())
        .collect();
    let mut diffs = Vec::new();
    for ((label, ra), (_, rb)) in a.iter().zip(b.iter()) {
        let prefix = if label.is_empty() {
            String::new()
        } else {
            format!("{label}: ")
        };
        let (sa, sb) = (ra.status.shell_code(), rb.status.shell_code());
        if sa != sb {
            diffs.push((
                format!("{prefix}exit status"),
                ra.status.to_string(),
                rb.status.to_string(),
            ));
        }
        for (what, ta, tb) in [
            ("stdout", &ra.stdout, &rb.stdout),
            ("stderr", &ra.stderr, &rb.stderr),
        ] {
            let (na, nb) = (normalise(ta, &norms), normalise(tb, &norms));
            if na != nb {
                diffs.push((format!("{prefix}{what}"), na, nb));
            }
        }
    }
    Outcome {
        name: c.name.clone(),
        known: known(&c.name),
        a,
        b,
        diffs,
    }
}

/// `text` for the report: terminal line ends as plain newlines, other control bytes (a
/// terminal's escape sequences) visible as `\xNN`.
fn printable(text: &str) -> String {
    text.replace("\r\n", "\n")
        .chars()
        .map(|c| match c {
            '\n' | '\t' => c.to_string(),
            c if c.is_control() => format!("\\x{:02x}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

fn render(o: &Outcome) -> String {
    let mut s = String::new();
    let verdict = match (o.diffs.is_empty(), o.known) {
        (true, _) => "SAME",
        (false, Some(_)) => "DIFFERS (known limitation)",
        (false, None) => "DIFFERS",
    };
    let _ = writeln!(s, "=== {} — {verdict}", o.name);
    if let Some(why) = o.known {
        let _ = writeln!(s, "known limitation: {why}");
    }
    for (label, runs) in [
        ("A: directly in the cluster", &o.a),
        ("B: under sctrace from the laptop", &o.b),
    ] {
        let _ = writeln!(s, "--- {label}");
        for (part, run) in runs.iter() {
            let part = if part.is_empty() {
                "program".to_string()
            } else {
                part.clone()
            };
            let _ = writeln!(
                s,
                "  [{part}] {} ({:.2} s)",
                run.status,
                run.elapsed.as_secs_f64()
            );
            if !run.stdout.is_empty() {
                let _ = write!(
                    s,
                    "  stdout:\n{}",
                    indent(&printable(&run.stdout), "    | ")
                );
            }
            if !run.stderr.is_empty() {
                let _ = write!(
                    s,
                    "  stderr:\n{}",
                    indent(&printable(&run.stderr), "    | ")
                );
            }
        }
    }
    for (label, a, b) in &o.diffs {
        let _ = write!(
            s,
            "--- difference in {label} (normalised; - A, + B):\n{}",
            indent(&line_diff(&printable(a), &printable(b)), "    ")
        );
    }
    s
}

#[test]
fn programs_behave_under_sctrace_as_inside_the_target() {
    let started = Instant::now();
    let world = World::new();
    let setup = started.elapsed();
    let only: Vec<String> = std::env::var("CONFORMANCE_ONLY")
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let all = cases(&world);
    let mut seen = std::collections::HashSet::new();
    for c in &all {
        assert!(
            seen.insert(c.name.clone()),
            "two cases are named {}",
            c.name
        );
    }
    for (pattern, _) in KNOWN {
        assert!(
            seen.iter().any(|name| names(pattern, name)),
            "KNOWN names no case: {pattern}"
        );
    }
    let selected: Vec<Case> = all
        .into_iter()
        .filter(|c| only.is_empty() || only.iter().any(|o| c.name.contains(o.as_str())))
        .collect();
    let jobs: usize = std::env::var("CONFORMANCE_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(2)
        .max(1);
    let next = AtomicUsize::new(0);
    let lock = RwLock::new(());
    let results: Mutex<Vec<Option<Outcome>>> =
        Mutex::new((0..selected.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(c) = selected.get(i) else { break };
                // Server cases change the target's firewall (the agent's redirect rules):
                // they run alone, and the cluster's own rules are put back after them.
                let exclusive = matches!(c.kind, Kind::Serve { .. });
                let (a, b) = if exclusive {
                    let _alone = lock.write().unwrap_or_else(|e| e.into_inner());
                    let a = run_side(&world, c, Side::Direct);
                    let b = run_side(&world, c, Side::Sctrace);
                    restore_blackhole(&world);
                    (a, b)
                } else {
                    let _shared = lock.read().unwrap_or_else(|e| e.into_inner());
                    (
                        run_side(&world, c, Side::Direct),
                        run_side(&world, c, Side::Sctrace),
                    )
                };
                let outcome = compare(c, a, b);
                eprintln!(
                    "conformance: {:<48} {}",
                    c.name,
                    if outcome.diffs.is_empty() {
                        "same"
                    } else if outcome.known.is_some() {
                        "differs (known)"
                    } else {
                        "DIFFERS"
                    }
                );
                results.lock().unwrap()[i] = Some(outcome);
            });
        }
    });
    let results: Vec<Outcome> = results
        .into_inner()
        .unwrap()
        .into_iter()
        .flatten()
        .collect();

    let mut report = String::new();
    let same = results.iter().filter(|o| o.diffs.is_empty()).count();
    let known: Vec<&Outcome> = results
        .iter()
        .filter(|o| !o.diffs.is_empty() && o.known.is_some())
        .collect();
    let failed: Vec<&Outcome> = results
        .iter()
        .filter(|o| !o.diffs.is_empty() && o.known.is_none())
        .collect();
    let _ = writeln!(
        report,
        "sctrace conformance: {} cases, {same} same, {} differ ({} known limitations); setup {:.1} s, total {:.1} s\n",
        results.len(),
        results.len() - same,
        known.len(),
        setup.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    for o in &results {
        let mark = if o.diffs.is_empty() {
            "same"
        } else if o.known.is_some() {
            "differs (known)"
        } else {
            "DIFFERS"
        };
        let _ = writeln!(report, "{:<50} {mark}", o.name);
    }
    let _ = writeln!(
        report,
        "\nNormalisations applied to every case (each case may add the nameserver one):"
    );
    for n in norms::GLOBAL.iter().chain([&&norms::NAMESERVER]) {
        let _ = writeln!(report, "- {}: {}", n.name, n.why);
    }
    let _ = writeln!(report);
    for o in &results {
        report.push_str(&render(o));
        report.push('\n');
    }
    let path = workspace_root().join("target/conformance-report.txt");
    let _ = std::fs::create_dir_all(path.parent().unwrap());
    std::fs::write(&path, &report)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    eprintln!("conformance: report in {}", path.display());
    drop(world);
    if !failed.is_empty() {
        let mut msg = format!(
            "{} of {} cases behave differently under sctrace than inside the target (report: {}):\n",
            failed.len(),
            results.len(),
            path.display()
        );
        for o in &failed {
            msg.push_str(&render(o));
        }
        panic!("{msg}");
    }
}

#[test]
fn curls_two_words_for_one_connect_timeout_compare_equal() {
    let norms: Vec<&Norm> = norms::GLOBAL
        .iter()
        .copied()
        .chain([&norms::CURL_CONNECT_TIMEOUT])
        .collect();
    let attempt = normalise(
        "curl: (28) Failed to connect to blackhole port 80 after 2000 ms: Timeout was reached\n",
        &norms,
    );
    let transfer = normalise("curl: (28) Connection timeout after 2003 ms\n", &norms);
    assert_eq!(attempt, transfer);
    let refused = normalise(
        "curl: (7) Failed to connect to echo port 1 after 0 ms: Couldn't connect to server\n",
        &norms,
    );
    assert_ne!(refused, attempt, "other failures stay apart");
}
