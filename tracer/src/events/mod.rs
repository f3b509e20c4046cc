//! The event stream: one record per observed connect, bind, listen and address-carrying
//! send, written as JSON lines (`--events FILE`) and/or as human-readable lines (`trace`).
//!
//! The JSON schema is a stable interface, documented in the README. Repeated sends from one
//! socket to the same destination with the same outcome are folded: the first is written at
//! once with `"count": 1`, later ones are counted and written at most once a second as a
//! single event whose `count` says how many calls it stands for. Dropped datagrams fold the
//! same way, by socket and reason.

mod record;

pub use record::{result_name, Record, UNKNOWN};

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;

/// One observed call.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Event {
    /// Wall-clock time of the call, RFC 3339 UTC with microseconds.
    pub ts: String,
    /// Process id (thread-group id) of the caller.
    pub pid: i32,
    /// Thread id of the caller.
    pub tid: i32,
    /// Command name of the calling thread.
    pub comm: String,
    /// The system call (`connect`, `bind`, `listen`, `sendto`, `sendmsg`, `sendmmsg`), or
    /// `drop` for datagrams from the target sctrace did not deliver.
    pub syscall: &'static str,
    /// The app's fd number of the socket.
    pub fd: i32,
    /// The socket's address family (`inet`, `inet6`, `unix`, ...).
    pub family: String,
    /// The socket's type (`stream`, `dgram`, ...).
    pub sock_type: String,
    /// The destination or bound address (`198.18.0.10:80`, `[::1]:53`, `/run/x.sock`).
    pub addr: String,
    /// Where the call was carried out: `local` or `remote`.
    pub decision: &'static str,
    /// The filter rule that decided, when one did.
    pub rule: Option<String>,
    /// `ok`, the errno name (`ECONNREFUSED`), or `unknown` when the kernel ran the call
    /// itself and sctrace did not see the outcome (Unix sockets).
    pub result: String,
    /// For sends and drops: how many calls (datagrams) this event stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Remote TCP connects: how the connection carries its bytes, `direct` (the program's
    /// socket is a socket of the target) or `relay`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<&'static str>,
    /// The name the app resolved the destination from, when it did (the latest one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A local connection to an address from a remote DNS answer: the local address its
    /// name was looked up again to and connected instead (`none` when it has none here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reresolved: Option<String>,
    /// DNS events: the name asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// DNS events: the record type asked (`A`, `AAAA`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qtype: Option<String>,
    /// DNS events: the answer records (addresses, or `TYPE data` for others).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answers: Option<Vec<String>>,
}

impl Event {
    /// The current time in the events format.
    pub fn now() -> String {
        humantime::format_rfc3339_micros(SystemTime::now()).to_string()
    }

    /// Whether repeated events of this kind are folded: sends, and datagrams dropped.
    fn folds(&self) -> bool {
        self.syscall.starts_with("send") || self.syscall == DROP
    }

    /// The human-readable line `sctrace trace` prints.
    pub fn human(&self) -> String {
        let time = self.ts.get(11..26).unwrap_or(&self.ts);
        if let (Some(name), Some(qtype)) = (&self.name, &self.qtype) {
            let mut line = format!(
                "{time} {}[{}] dns {qtype} {name} via {} -> {} {}",
                self.comm, self.pid, self.addr, self.decision, self.result
            );
            if let Some(answers) = self.answers.as_ref().filter(|a| !a.is_empty()) {
                line.push_str(&format!(" [{}]", answers.join(", ")));
            }
            if let Some(rule) = &self.rule {
                line.push_str(&format!(" (rule {rule})"));
            }
            return line;
        }
        let mut line = format!(
            "{time} {}[{}] {} {}/{} {} -> {} {}",
            self.comm,
            self.pid,
            self.syscall,
            self.family,
            self.sock_type,
            self.addr,
            self.decision,
            self.result
        );
        if let Some(path) = self.path {
            line.push_str(&format!(" {path}"));
        }
        if let Some(rule) = &self.rule {
            line.push_str(&format!(" (rule {rule})"));
        }
        if let Some(count) = self.count.filter(|c| *c > 1) {
            line.push_str(&format!(" x{count}"));
        }
        line
    }
}

/// The `syscall` of an event that counts datagrams from the target that sctrace did not
/// deliver to the app (see `relay::udp`).
pub const DROP: &str = "drop";

/// Where events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// One human-readable line per event.
    Human,
}

/// A handle for recording events; cheap to clone, never blocks the caller.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: Option<mpsc::UnboundedSender<Event>>,
}

impl EventSink {
    /// A sink that records nothing (no `--events`, not `trace`).
    pub fn disabled() -> Self {
        Self { tx: None }
    }

    /// Whether anyone listens; handlers skip gathering event details when not.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Records an event.
    pub fn record(&self, event: Event) {
        if let Some(tx) = &self.tx {
            // The writer only stops at shutdown, after the app is gone.
            let _ = tx.send(event);
        }
    }
}

/// Folds repeated sends; pure state, driven by the writer.
#[derive(Debug, Default)]
struct Folder {
    pending: HashMap<FoldKey, Pending>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FoldKey {
    pid: i32,
    fd: i32,
    syscall: &'static str,
    addr: String,
    decision: &'static str,
    result: String,
}

#[derive(Debug)]
struct Pending {
    latest: Event,
    count: u64,
    last_seen: Instant,
}

/// How long a fold key with no new sends is remembered.
const FOLD_FORGET: Duration = Duration::from_secs(5);

impl Folder {
    /// Returns the event to write now, if any.
    fn offer(&mut self, mut event: Event, now: Instant) -> Option<Event> {
        if !event.folds() {
            return Some(event);
        }
        let key = FoldKey {
            pid: event.pid,
            fd: event.fd,
            syscall: event.syscall,
            // Drops fold by reason whatever their source (a flood has many); sends by
            // destination.
            addr: if event.syscall == DROP {
                event.rule.clone().unwrap_or_default()
            } else {
                event.addr.clone()
            },
            decision: event.decision,
            result: event.result.clone(),
        };
        let count = event.count.unwrap_or(1);
        match self.pending.get_mut(&key) {
            Some(p) => {
                p.count += count;
                p.latest = event;
                p.last_seen = now;
                None
            }
            None => {
                event.count = Some(count);
                self.pending.insert(
                    key,
                    Pending {
                        latest: event.clone(),
                        count: 0,
                        last_seen: now,
                    },
                );
                Some(event)
            }
        }
    }

    /// Takes the folded events that are due (all of them when `all`).
    fn flush(&mut self, now: Instant, all: bool) -> Vec<Event> {
        let mut out = Vec::new();
        self.pending.retain(|_, p| {
            if p.count > 0 {
                let mut e = p.latest.clone();
                e.count = Some(p.count);
                out.push(e);
                p.count = 0;
            }
            !all && now.duration_since(p.last_seen) < FOLD_FORGET
        });
        out.sort_by(|a, b| a.ts.cmp(&b.ts));
        out
    }
}

/// Writes events to their destinations until every sink is dropped.
pub struct Writer {
    rx: mpsc::UnboundedReceiver<Event>,
    outputs: Vec<(Format, Box<dyn Write + Send>)>,
    folder: Folder,
}

impl Writer {
    /// Creates the sink and its writer. With no outputs the sink is disabled.
    pub fn new(outputs: Vec<(Format, Box<dyn Write + Send>)>) -> (EventSink, Option<Writer>) {
        if outputs.is_empty() {
            return (EventSink::disabled(), None);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            rx,
            outputs,
            folder: Folder::default(),
        };
        (EventSink { tx: Some(tx) }, Some(writer))
    }

    fn write(&mut self, event: &Event) {
        for (format, out) in &mut self.outputs {
            let mut line = match format {
                Format::Json => serde_json::to_string(event).unwrap_or_default(),
                Format::Human => format!("sctrace: {}", event.human()),
            };
            // One write per line, so lines never interleave with the app's own output.
            line.push('\n');
            if let Err(err) = out.write_all(line.as_bytes()) {
                tracing::warn!("cannot write an event: {err}");
            }
        }
    }

    fn flush_outputs(&mut self) {
        for (_, out) in &mut self.outputs {
            let _ = out.flush();
        }
    }

    /// Runs until `stop` fires (or every sink is dropped), then writes what is queued and
    /// what is still folded.
    pub async fn run(mut self, mut stop: tokio::sync::oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.rx.recv() => match event {
                    Some(event) => {
                        if let Some(e) = self.folder.offer(event, Instant::now()) {
                            self.write(&e);
                        }
                        // Write everything already queued before flushing the file.
                        while let Ok(event) = self.rx.try_recv() {
                            if let Some(e) = self.folder.offer(event, Instant::now()) {
                                self.write(&e);
                            }
                        }
                        self.flush_outputs();
                    }
                    None => break,
                },
                _ = &mut stop => {
                    while let Ok(event) = self.rx.try_recv() {
                        if let Some(e) = self.folder.offer(event, Instant::now()) {
                            self.write(&e);
                        }
                    }
                    break;
                }
                _ = tick.tick() => {
                    for e in self.folder.flush(Instant::now(), false) {
                        self.write(&e);
                    }
                    self.flush_outputs();
                }
            }
        }
        for e in self.folder.flush(Instant::now(), true) {
            self.write(&e);
        }
        self.flush_outputs();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(addr: &str, result: &str) -> Event {
        Event {
            ts: Event::now(),
            pid: 10,
            tid: 11,
            comm: "app".into(),
            syscall: "sendto",
            fd: 3,
            family: "inet".into(),
            sock_type: "dgram".into(),
            addr: addr.into(),
            decision: "local",
            rule: None,
            result: result.into(),
            ..Default::default()
        }
    }

    #[test]
    fn repeated_sends_fold_and_totals_add_up() {
        let mut f = Folder::default();
        let t0 = Instant::now();
        let first = f
            .offer(send("127.0.0.1:53", "ok"), t0)
            .expect("first is written");
        assert_eq!(first.count, Some(1));
        for _ in 0..9 {
            assert!(f.offer(send("127.0.0.1:53", "ok"), t0).is_none());
        }
        // Another destination or outcome is a new event.
        assert!(f.offer(send("127.0.0.1:54", "ok"), t0).is_some());
        assert!(f.offer(send("127.0.0.1:53", "EAGAIN"), t0).is_some());
        let flushed = f.flush(t0, false);
        assert_eq!(flushed.len(), 1);
        assert_eq!(flushed[0].count, Some(9));
        assert!(f.flush(t0, false).is_empty(), "nothing new to write");
        // After a quiet period the key is forgotten and the next send is written at once.
        f.flush(t0 + FOLD_FORGET, false);
        assert!(f
            .offer(send("127.0.0.1:53", "ok"), t0 + FOLD_FORGET)
            .is_some());
    }

    #[test]
    fn connects_are_never_folded() {
        let mut f = Folder::default();
        let mut e = send("127.0.0.1:80", "ok");
        e.syscall = "connect";
        assert!(f.offer(e.clone(), Instant::now()).is_some());
        assert!(f.offer(e, Instant::now()).is_some());
    }

    #[test]
    fn json_has_the_documented_fields() {
        let v = serde_json::to_value(send("[::1]:53", "ok")).unwrap();
        for key in [
            "ts",
            "pid",
            "tid",
            "comm",
            "syscall",
            "fd",
            "family",
            "sock_type",
            "addr",
            "decision",
            "rule",
            "result",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["addr"], "[::1]:53");
    }

    #[test]
    fn human_line_reads_well() {
        let mut e = send("198.18.0.10:80", "ECONNREFUSED");
        e.syscall = "connect";
        e.sock_type = "stream".into();
        let line = e.human();
        assert!(
            line.ends_with("app[10] connect inet/stream 198.18.0.10:80 -> local ECONNREFUSED"),
            "{line}"
        );
    }
}
