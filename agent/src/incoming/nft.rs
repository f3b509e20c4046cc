//! The redirect rules, kept by one `nft -i` process in the target's network namespace.
//!
//! Every table the agent makes is an nftables *owner* table (`flags owner`, Linux 5.12+): the
//! kernel ties it to the netlink socket that created it and deletes it the moment that
//! socket closes. The socket belongs to the `nft -i` child, which exits when its stdin (a
//! pipe from the agent) closes — so however the agent ends, SIGKILL included, its rules go
//! with it and the ports behave as before. No guardian process is needed, and nobody else
//! can change or delete the tables meanwhile (the kernel answers EPERM).
//!
//! Tables: `sctrace_agent_<pid>_<random>` and one `sctrace_port_<port>` per subscribed port.
//! The agent's own table marks a live agent, its listing ends every command's output (see
//! [`NftProcess::exec`]), and it keeps the connections already handed over working when
//! their port's table goes: the kernel translates a redirected connection's later packets
//! only while a NAT chain is registered in the namespace *and* something holds conntrack
//! there (both go with the last redirect rule otherwise, and the connection is reset —
//! measured on Linux 6.18). So the agent's table has a NAT chain whose one rule matches on
//! `ct state` and does nothing else. It lives, with the `nft` process, until the agent ends. A port's table name is the same for every agent, so creating it doubles
//! as a lock: a second agent stealing the same port in the same namespace is refused.
//! Tables with the `sctrace_` prefix that are not owner tables can only be leftovers (from a
//! hand-made experiment or an older build): they are swept when the process starts, and a
//! port's stale table is replaced.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{oneshot, watch, Mutex};

use crate::sys;

/// The mark on the agent's own connections to the target's servers: the `output` chain lets
/// them pass, so they are not redirected back to the agent. Chosen not to collide with the
/// marks kube-proxy (0x4000, 0x8000) and Istio (0x539) use.
pub const AGENT_MARK: u32 = 0x5c7a_ce00;

/// How long one command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why rules could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The namespace file could not be opened.
    #[error("cannot open the target network namespace {path}")]
    Netns {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The `nft` program could not be started.
    #[error("cannot run {program} (the agent needs the nftables `nft` program to redirect incoming traffic)")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel refused an owner table.
    #[error("the kernel refused an nftables owner table (incoming traffic needs Linux 5.12 or later): {output}")]
    NoOwnerTables {
        /// What nft said.
        output: String,
    },
    /// Another agent already redirects the port.
    #[error("port {port} is already mirrored or stolen by another sctrace agent in the target's network namespace (its nftables table inet {table} exists)")]
    PortTaken {
        /// The port.
        port: u16,
        /// The table.
        table: String,
    },
    /// A command failed.
    #[error("nft refused `{command}`: {output}")]
    Command {
        /// The command.
        command: String,
        /// What nft said.
        output: String,
    },
    /// The process did not answer in time.
    #[error("nft did not answer within {COMMAND_TIMEOUT:?}")]
    Timeout,
    /// The process ended (its tables are gone with it).
    #[error("the nft process ended unexpectedly")]
    Exited,
    /// Talking to the process failed.
    #[error("cannot talk to the nft process")]
    Io(#[source] io::Error),
}

/// The table of a subscribed port.
pub fn port_table(port: u16) -> String {
    format!("sctrace_port_{port}")
}

/// The commands (one line: nft applies a line as one transaction, all or nothing) that
/// create `port`'s table, redirecting new TCP connections to the target's own addresses
/// and `port` — from outside (`prerouting`) and from inside the namespace (`output`, except
/// the agent's marked connections) — to the agent's listeners on `v4`/`v6`.
pub fn redirect_commands(port: u16, v4: Option<u16>, v6: Option<u16>) -> String {
    let table = port_table(port);
    let mut cmds = vec![
        format!("create table inet {table} {{ flags owner; }}"),
        format!("add chain inet {table} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}"),
        format!("add chain inet {table} output {{ type nat hook output priority -100; policy accept; }}"),
        format!("add rule inet {table} output meta mark {AGENT_MARK:#x} return"),
    ];
    for (family, to) in [("ipv4", v4), ("ipv6", v6)] {
        let Some(to) = to else { continue };
        for chain in ["prerouting", "output"] {
            cmds.push(format!(
                "add rule inet {table} {chain} meta nfproto {family} tcp dport {port} fib daddr type local redirect to :{to}"
            ));
        }
    }
    cmds.join(" ; ")
}

/// The agent's own table: an owner table with a NAT chain and a conntrack match, which keep
/// translating redirected connections after their port's table is gone.
pub fn anchor_commands(anchor: &str) -> String {
    [
        format!("add table inet {anchor} {{ flags owner; }}"),
        format!("add chain inet {anchor} keep_nat {{ type nat hook prerouting priority dstnat; policy accept; }}"),
        format!("add rule inet {anchor} keep_nat ct state new"),
    ]
    .join(" ; ")
}

/// Keeps the redirect tables through one `nft -i` process, started on first use and kept
/// until the agent ends.
pub struct Nft {
    program: PathBuf,
    netns: PathBuf,
    anchor: String,
    state: Mutex<State>,
    /// The generation of the last nft process that died holding tables (0: none yet).
    lost_tx: watch::Sender<u64>,
}

struct State {
    process: Option<NftProcess>,
    /// Port tables the current process holds.
    tables: HashSet<u16>,
    /// Numbers the processes started, from 1.
    generation: u64,
}

impl Nft {
    /// A driver running `program` in the namespace at `netns`.
    pub fn new(program: PathBuf, netns: PathBuf) -> Nft {
        let anchor = format!("sctrace_agent_{}_{:08x}", std::process::id(), random_u32());
        let (lost_tx, _) = watch::channel(0);
        Nft {
            program,
            netns,
            anchor,
            state: Mutex::new(State {
                process: None,
                tables: HashSet::new(),
                generation: 0,
            }),
            lost_tx,
        }
    }

    /// The generation of the last process that died with tables: a subscription whose
    /// table was made in that generation has lost its rules.
    pub fn lost(&self) -> watch::Receiver<u64> {
        self.lost_tx.subscribe()
    }

    /// Makes sure `port`'s table exists (creating it if this driver does not hold it yet)
    /// and returns the generation of the process holding it. A stale (non-owner) table of
    /// that name is replaced; a live one means another agent holds the port.
    pub async fn ensure(
        &self,
        port: u16,
        v4: Option<u16>,
        v6: Option<u16>,
    ) -> Result<u64, NftError> {
        let mut st = self.state.lock().await;
        if st.process.as_mut().is_some_and(|p| p.has_exited()) {
            self.drop_process(&mut st);
        }
        if st.tables.contains(&port) {
            return Ok(st.generation);
        }
        let commands = redirect_commands(port, v4, v6);
        let table = port_table(port);
        for attempt in 0..2 {
            match self.exec(&mut st, &commands).await {
                Ok(_) => {
                    st.tables.insert(port);
                    return Ok(st.generation);
                }
                Err(NftError::Command { command, output }) => {
                    // Does the table exist? Owned by another process: the port is taken.
                    let listing = self
                        .exec(&mut st, &format!("list table inet {table}"))
                        .await
                        .ok();
                    match listing {
                        Some(lines) if is_owner_table(&lines) => {
                            return Err(NftError::PortTaken { port, table });
                        }
                        Some(_) if attempt == 0 => {
                            tracing::warn!(%table, "removing a stale redirect table (not an owner table) left in the target");
                            self.exec(&mut st, &format!("delete table inet {table}"))
                                .await?;
                        }
                        _ => return Err(NftError::Command { command, output }),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(NftError::PortTaken { port, table })
    }

    /// Deletes `port`'s table (nothing to do if its process is gone: so is the table).
    pub async fn unredirect(&self, port: u16) -> Result<(), NftError> {
        let mut st = self.state.lock().await;
        if st.process.as_mut().is_some_and(|p| p.has_exited()) {
            self.drop_process(&mut st);
        }
        if !st.tables.remove(&port) {
            return Ok(());
        }
        self.exec(&mut st, &format!("delete table inet {}", port_table(port)))
            .await
            .map(|_| ())
    }

    /// Runs `commands` on the current process, starting one if needed. A process that
    /// died or stops answering is dropped (killed), and its tables are reported lost.
    async fn exec(&self, st: &mut State, commands: &str) -> Result<Vec<String>, NftError> {
        if st.process.as_mut().is_some_and(|p| p.has_exited()) {
            self.drop_process(st);
        }
        if st.process.is_none() {
            st.generation += 1;
            st.process = Some(self.start(st.generation).await?);
        }
        let Some(process) = st.process.as_mut() else {
            return Err(NftError::Exited);
        };
        match process.exec(commands).await {
            Ok(lines) => Ok(lines),
            Err(e @ NftError::Command { .. }) => Err(e),
            Err(e) => {
                self.drop_process(st);
                Err(e)
            }
        }
    }

    fn drop_process(&self, st: &mut State) {
        st.process = None;
        if !st.tables.is_empty() {
            st.tables.clear();
            self.lost_tx.send_replace(st.generation);
        }
    }

    async fn start(&self, generation: u64) -> Result<NftProcess, NftError> {
        let mut process = NftProcess::spawn(&self.program, &self.netns, &self.anchor, {
            let lost_tx = self.lost_tx.clone();
            // Tables die with the process: tell their subscriptions at once, even while
            // nothing else talks to nft.
            move || {
                lost_tx.send_if_modified(|lost| {
                    let newer = *lost < generation;
                    if newer {
                        *lost = generation;
                    }
                    newer
                });
            }
        })?;
        let anchor = anchor_commands(&self.anchor);
        if let Err(e) = process.exec(&anchor).await {
            return Err(match e {
                NftError::Command { output, .. } => NftError::NoOwnerTables { output },
                NftError::Exited => NftError::Spawn {
                    program: self.program.clone(),
                    source: io::Error::other(
                        "nft exited at once (is it nftables' nft, and is the kernel's nf_tables available?)",
                    ),
                },
                other => other,
            });
        }
        self.sweep(&mut process).await;
        tracing::debug!(anchor = %self.anchor, generation, "nft started in the target namespace");
        Ok(process)
    }

    /// Removes `sctrace_` tables that are not owner tables: nothing alive holds them.
    async fn sweep(&self, process: &mut NftProcess) {
        let Ok(lines) = process.exec("list tables").await else {
            return;
        };
        for (family, name) in lines.iter().filter_map(|l| parse_table_line(l)) {
            if !name.starts_with("sctrace_") || name == self.anchor {
                continue;
            }
            let Ok(listing) = process.exec(&format!("list table {family} {name}")).await else {
                continue;
            };
            if is_owner_table(&listing) {
                continue;
            }
            match process.exec(&format!("delete table {family} {name}")).await {
                Ok(_) => {
                    tracing::warn!(%family, %name, "removed a stale sctrace table from the target")
                }
                Err(e) => {
                    tracing::warn!(%family, %name, error = %e, "cannot remove a stale sctrace table")
                }
            }
        }
    }
}

/// `table inet NAME` (as `list tables` prints it) → (family, name).
fn parse_table_line(line: &str) -> Option<(&str, &str)> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("table"), Some(family), Some(name), None) => Some((family, name)),
        _ => None,
    }
}

/// Whether a table listing shows `flags owner`.
fn is_owner_table(listing: &[String]) -> bool {
    listing.iter().any(|l| {
        l.trim()
            .strip_prefix("flags ")
            .is_some_and(|flags| flags.split(',').any(|f| f.trim() == "owner"))
    })
}

fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

/// One `nft -i` child: commands go to its stdin, its stdout and stderr come back on one pipe.
struct NftProcess {
    stdin: ChildStdin,
    output: BufReader<pipe::Receiver>,
    anchor: String,
    /// Completes when the child exits.
    exited: oneshot::Receiver<()>,
    /// Dropping it kills the child.
    _kill: oneshot::Sender<()>,
}

impl NftProcess {
    /// Starts `nft -i` in the namespace at `netns`; `on_exit` runs if it exits on its own
    /// (not when this handle kills it).
    fn spawn(
        program: &Path,
        netns: &Path,
        anchor: &str,
        on_exit: impl FnOnce() + Send + 'static,
    ) -> Result<NftProcess, NftError> {
        let ns = File::open(netns).map_err(|source| NftError::Netns {
            path: netns.to_path_buf(),
            source,
        })?;
        let spawn_err = |source| NftError::Spawn {
            program: program.to_path_buf(),
            source,
        };
        let (read, write): (OwnedFd, OwnedFd) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
        let write2 = write.try_clone().map_err(spawn_err)?;
        let mut cmd = Command::new(program);
        cmd.arg("-i")
            .stdin(Stdio::piped())
            .stdout(Stdio::from(write))
            .stderr(Stdio::from(write2))
            .kill_on_drop(true);
        sys::process::enter_netns_before_exec(&mut cmd, ns);
        let mut child: Child = cmd.spawn().map_err(spawn_err)?;
        // Our copies of the pipe's write end go with `cmd`, so EOF means the child is gone.
        drop(cmd);
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| spawn_err(io::Error::other("no stdin pipe")))?;
        let output = pipe::Receiver::from_owned_fd(read).map_err(spawn_err)?;
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let (exited_tx, exited_rx) = oneshot::channel();
        tokio::spawn(async move {
            tokio::select! {
                status = child.wait() => {
                    tracing::warn!(?status, "the nft process holding the redirect rules exited; its rules are gone");
                    // Marked exited before anyone is told, so that they find it so.
                    let _ = exited_tx.send(());
                    on_exit();
                }
                _ = kill_rx => {
                    let _ = child.kill().await;
                }
            }
        });
        Ok(NftProcess {
            stdin,
            output: BufReader::new(output),
            anchor: anchor.to_string(),
            exited: exited_rx,
            _kill: kill_tx,
        })
    }

    /// Whether the child has exited.
    fn has_exited(&mut self) -> bool {
        !matches!(
            self.exited.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        )
    }

    /// Runs one line of commands and returns what nft printed for it; any `Error:` line
    /// makes it a [`NftError::Command`]. nft prints nothing on success and errors go to the
    /// same pipe, so to know where the output ends each line is followed by listing the
    /// anchor table, whose `table inet <anchor> {` … `}` closes the output.
    async fn exec(&mut self, commands: &str) -> Result<Vec<String>, NftError> {
        let marker = format!("list table inet {}", self.anchor);
        let header = format!("table inet {} {{", self.anchor);
        let input = format!("{commands}\n{marker}\n");
        tokio::time::timeout(COMMAND_TIMEOUT, async {
            self.stdin
                .write_all(input.as_bytes())
                .await
                .map_err(NftError::Io)?;
            self.stdin.flush().await.map_err(NftError::Io)?;
            let mut output = Vec::new();
            let mut in_marker = false;
            let mut line = String::new();
            loop {
                line.clear();
                if self
                    .output
                    .read_line(&mut line)
                    .await
                    .map_err(NftError::Io)?
                    == 0
                {
                    return Err(NftError::Exited);
                }
                // Some builds prompt even when stdin is not a terminal.
                let text = line.trim_end_matches('\n');
                let text = text.strip_prefix("nft> ").unwrap_or(text);
                if in_marker {
                    if text == "}" {
                        break;
                    }
                    continue;
                }
                if text.starts_with(&header) {
                    in_marker = true;
                    continue;
                }
                if text.trim() == marker && output.iter().any(|l: &String| l.starts_with("Error:"))
                {
                    // The marker itself failed: the anchor table is gone, so is the state.
                    return Err(NftError::Exited);
                }
                output.push(text.to_string());
            }
            if output.iter().any(|l| l.starts_with("Error:")) {
                return Err(NftError::Command {
                    command: commands.to_string(),
                    output: output.join("\n"),
                });
            }
            Ok(output)
        })
        .await
        .map_err(|_| NftError::Timeout)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_for_both_families() {
        let cmds = redirect_commands(80, Some(41000), Some(41001));
        let lines: Vec<&str> = cmds.split(" ; ").collect();
        assert_eq!(
            lines,
            [
                "create table inet sctrace_port_80 { flags owner; }",
                "add chain inet sctrace_port_80 prerouting { type nat hook prerouting priority dstnat; policy accept; }",
                "add chain inet sctrace_port_80 output { type nat hook output priority -100; policy accept; }",
                "add rule inet sctrace_port_80 output meta mark 0x5c7ace00 return",
                "add rule inet sctrace_port_80 prerouting meta nfproto ipv4 tcp dport 80 fib daddr type local redirect to :41000",
                "add rule inet sctrace_port_80 output meta nfproto ipv4 tcp dport 80 fib daddr type local redirect to :41000",
                "add rule inet sctrace_port_80 prerouting meta nfproto ipv6 tcp dport 80 fib daddr type local redirect to :41001",
                "add rule inet sctrace_port_80 output meta nfproto ipv6 tcp dport 80 fib daddr type local redirect to :41001",
            ]
        );
        assert!(!redirect_commands(8080, Some(1), None).contains("ipv6"));
        assert_eq!(
            anchor_commands("sctrace_agent_1_2"),
            "add table inet sctrace_agent_1_2 { flags owner; } ; \
             add chain inet sctrace_agent_1_2 keep_nat { type nat hook prerouting priority dstnat; policy accept; } ; \
             add rule inet sctrace_agent_1_2 keep_nat ct state new"
        );
        assert!(!cmds.contains('\n'), "one line, one transaction");
    }

    #[test]
    fn listings() {
        assert_eq!(
            parse_table_line("table inet sctrace_port_80"),
            Some(("inet", "sctrace_port_80"))
        );
        assert_eq!(parse_table_line("table ip nat {"), None);
        assert_eq!(parse_table_line("Error: x"), None);
        let owned = ["table inet t { # progname nft", "\tflags owner", "}"].map(String::from);
        assert!(is_owner_table(&owned));
        let two = ["\tflags dormant,owner"].map(String::from);
        assert!(is_owner_table(&two));
        let plain = ["table inet t {", "\tchain c {", "\t}", "}"].map(String::from);
        assert!(!is_owner_table(&plain));
    }
}
