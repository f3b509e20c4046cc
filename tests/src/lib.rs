//! Test harness for sctrace's end-to-end tests: network namespaces, real servers inside
//! them (`sctrace-testsrv`, dnsmasq), the local cluster of `scripts/local-cluster`, and
//! helpers to run the built binaries and read their events, and `sctrace-confine` to run
//! them under a container's seccomp filter ([`confined`]).
//!
//! Everything here panics with a message naming what failed: it is test code, and a
//! panic with context is the most useful failure a test can report. Namespaces and
//! processes are cleaned up by `Drop`, so a failing test leaves nothing behind (and
//! `scripts/cleanup-test-netns` removes what a killed test run left).
//!
//! ```no_run
//! use sctrace_tests::{Netns, ServerSpec};
//! sctrace_tests::require_root();
//! let ns = Netns::new("echo");
//! ns.add_addr("198.18.0.10/32");
//! let server = ns.spawn_server(ServerSpec::TcpEcho(vec!["198.18.0.10:7".parse().unwrap()]));
//! let client = sctrace_tests::bin("sctrace-testsrv");
//! let out = sctrace_tests::run_with_timeout(
//!     ns.command(client).args(["tcp-echo-check", "198.18.0.10:7", "1000"]),
//!     std::time::Duration::from_secs(10),
//! );
//! out.assert_success();
//! server.wait_log(|l| l.starts_with("tcp accept"), std::time::Duration::from_secs(5));
//! ```

mod cluster;
mod confine;
pub mod conformance;
mod dnsmasq;
mod events;
mod locate;
mod netns;
pub mod payload;
mod process;
mod pty;
mod server;
mod variant;

pub use cluster::{Cluster, Service};
pub use confine::{confined, Confinement};
pub use dnsmasq::{parse_dns_queries, DnsQuery};
pub use events::{parse_events, read_events};
pub use locate::{bin, fixture, workspace_root};
pub use netns::{require_root, Netns, NETNS_MARKER};
pub use process::{run_with_input, run_with_timeout, Output};
pub use pty::PtySession;
pub use server::{Server, ServerSpec};
pub use variant::Variant;
