//! `sctrace-agent`: serves sctrace sessions from inside a target network namespace.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("sctrace-agent: not built yet")
}
