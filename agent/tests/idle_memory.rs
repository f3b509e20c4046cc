//! Benchmark, run on demand: the agent's resident memory per idle relayed TCP connection
//! with 10,000 of them open (issue goal: at most 32 KiB each).
//!
//!   cargo test --release -p sctrace-agent --test idle_memory -- --ignored --nocapture

mod common;

use std::time::Duration;

use common::{Agent, World, ECHO};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: opens 10,000 connections; run explicitly"]
async fn agent_memory_per_idle_connection() {
    const COUNT: usize = 10_000;
    let world = World::new().await;
    let agent = Agent::start(&world, &["--log-level", "warn"]);
    let pid = agent.child.id();
    let session = agent.session().await;
    // Warm up the runtime and allocator.
    let mut warm = Vec::new();
    for _ in 0..200 {
        warm.push(session.connect_tcp(ECHO.parse().unwrap()).await.unwrap());
    }
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    let mut streams = Vec::with_capacity(COUNT);
    for _ in 0..COUNT {
        streams.push(session.connect_tcp(ECHO.parse().unwrap()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before) * 1024) as f64 / COUNT as f64;
    println!(
        "agent RSS {before} KiB -> {after} KiB with {COUNT} idle connections: {per:.0} bytes per connection"
    );
    assert!(per <= 32.0 * 1024.0, "{per:.0} bytes per idle connection");
    drop(streams);
}
