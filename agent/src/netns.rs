//! The thread that lives in the target's network namespace. It enters the namespace once
//! (`setns(CLONE_NEWNET)` affects only the calling thread) and then creates sockets on
//! request; a socket keeps the namespace it was created in, so the async runtime can use it
//! from any thread while the agent's listener stays in the agent's own namespace.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;

use nix::sched::{setns, CloneFlags};
use socket2::{Domain, Socket, Type};
use tokio::sync::oneshot;

/// Why the namespace thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file could not be opened.
    #[error("cannot open the target network namespace {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `setns` failed (not root, or not a network namespace file).
    #[error("cannot enter the network namespace {path} (setns; the agent needs CAP_SYS_ADMIN)")]
    Setns {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The thread could not be spawned.
    #[error("cannot start the namespace thread")]
    Spawn(#[source] io::Error),
}

enum Job {
    /// Create one socket and send it back.
    One {
        domain: Domain,
        ty: Type,
        reply: oneshot::Sender<io::Result<Socket>>,
    },
    /// Fill the pool of sockets of this family and type up to [`POOL_HIGH`].
    Refill { domain: Domain, ty: Type },
}

/// Sockets kept ready per family and type (TCP for connects, UDP for DNS queries and UDP
/// flows): a request then takes one without waiting for the namespace thread, which saves
/// two thread switches on every connection's set-up and every DNS exchange.
const POOL_HIGH: usize = 16;
/// The pool is refilled when it holds fewer than this.
const POOL_LOW: usize = 8;

/// Ready sockets (unconnected, unbound, non-blocking: harmless while they wait).
#[derive(Default)]
struct Pool {
    tcp4: Vec<Socket>,
    tcp6: Vec<Socket>,
    udp4: Vec<Socket>,
    udp6: Vec<Socket>,
}

impl Pool {
    /// The ready sockets of this family and type, if the pool keeps such sockets.
    fn of(&mut self, domain: Domain, ty: Type) -> Option<&mut Vec<Socket>> {
        let v4 = if domain == Domain::IPV4 {
            true
        } else if domain == Domain::IPV6 {
            false
        } else {
            return None;
        };
        if ty == Type::STREAM {
            Some(if v4 { &mut self.tcp4 } else { &mut self.tcp6 })
        } else if ty == Type::DGRAM {
            Some(if v4 { &mut self.udp4 } else { &mut self.udp6 })
        } else {
            None
        }
    }
}

/// Creates sockets inside the target's network namespace.
#[derive(Clone)]
pub struct NetnsSockets {
    jobs: std_mpsc::Sender<Job>,
    pool: std::sync::Arc<std::sync::Mutex<Pool>>,
}

fn new_socket(domain: Domain, ty: Type) -> io::Result<Socket> {
    Socket::new(domain, ty, None).and_then(|s| {
        s.set_nonblocking(true)?;
        Ok(s)
    })
}

impl NetnsSockets {
    /// Starts the thread and waits until it has entered the namespace at `path`.
    pub fn enter(path: &Path) -> Result<NetnsSockets, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let (jobs, rx) = std_mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let pool: std::sync::Arc<std::sync::Mutex<Pool>> = std::sync::Arc::default();
        let filled = std::sync::Arc::clone(&pool);
        std::thread::Builder::new()
            .name("target-netns".into())
            .spawn(move || {
                let entered = setns(&file, CloneFlags::CLONE_NEWNET);
                drop(file);
                let failed = entered.is_err();
                let _ = ready_tx.send(entered);
                if failed {
                    return;
                }
                // Ends when every NetnsSockets is dropped.
                while let Ok(job) = rx.recv() {
                    match job {
                        Job::One { domain, ty, reply } => {
                            let _ = reply.send(new_socket(domain, ty));
                        }
                        Job::Refill { domain, ty } => loop {
                            let wanted = filled
                                .lock()
                                .ok()
                                .and_then(|mut p| p.of(domain, ty).map(|v| v.len() < POOL_HIGH))
                                .unwrap_or(false);
                            if !wanted {
                                break;
                            }
                            let Ok(socket) = new_socket(domain, ty) else {
                                break;
                            };
                            if let Ok(mut p) = filled.lock() {
                                if let Some(v) = p.of(domain, ty) {
                                    v.push(socket);
                                }
                            }
                        },
                    }
                }
            })
            .map_err(NetnsError::Spawn)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(NetnsSockets { jobs, pool }),
            Ok(Err(source)) => Err(NetnsError::Setns {
                path: path.to_path_buf(),
                source,
            }),
            Err(_) => Err(NetnsError::Spawn(io::Error::other(
                "the namespace thread exited before entering the namespace",
            ))),
        }
    }

    /// A new non-blocking, close-on-exec socket created inside the target namespace. Out of
    /// files, the agent's pooled pipes are closed and the socket asked for again; a lack
    /// that remains is reported (see `files`).
    pub async fn socket(&self, domain: Domain, ty: Type) -> io::Result<Socket> {
        let made = match self.socket_once(domain, ty).await {
            Err(e) if crate::files::exhausted(&e) && crate::splice::drop_spare_pipes() > 0 => {
                self.socket_once(domain, ty).await
            }
            made => made,
        };
        made.inspect_err(|e| {
            crate::files::report_if_exhausted(e, "a socket in the target could not be made");
        })
    }

    async fn socket_once(&self, domain: Domain, ty: Type) -> io::Result<Socket> {
        match self.ask(domain, ty)? {
            Ok(socket) => Ok(socket),
            Err(rx) => rx.await.map_err(|_| gone())?,
        }
    }

    /// [`NetnsSockets::socket`] for a thread that may block (the handoff channel's).
    pub fn socket_blocking(&self, domain: Domain, ty: Type) -> io::Result<Socket> {
        let made = match self.ask(domain, ty)? {
            Ok(socket) => Ok(socket),
            Err(rx) => rx.blocking_recv().map_err(|_| gone())?,
        };
        made.inspect_err(|e| {
            crate::files::report_if_exhausted(e, "a socket in the target could not be made");
        })
    }

    /// A pooled socket, or the answer to come from the namespace thread.
    fn ask(&self, domain: Domain, ty: Type) -> io::Result<Result<Socket, Pending>> {
        let (taken, low) = match self.pool.lock().ok() {
            Some(mut p) => match p.of(domain, ty) {
                Some(v) => (v.pop(), v.len() < POOL_LOW),
                None => (None, false),
            },
            None => (None, false),
        };
        if low {
            let _ = self.jobs.send(Job::Refill { domain, ty });
        }
        if let Some(socket) = taken {
            return Ok(Ok(socket));
        }
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::One { domain, ty, reply })
            .map_err(|_| gone())?;
        Ok(Err(rx))
    }
}

/// A socket the namespace thread is making.
type Pending = oneshot::Receiver<io::Result<Socket>>;

fn gone() -> io::Error {
    io::Error::other("the target namespace thread is gone")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pooled or not, every socket has the family and type asked for, also past the
    /// pool's size and after refills.
    #[tokio::test]
    async fn sockets_have_the_family_and_type_asked_for() {
        // Entering one's own namespace needs CAP_SYS_ADMIN, as the agent does.
        let sockets = match NetnsSockets::enter(Path::new("/proc/self/ns/net")) {
            Ok(s) => s,
            Err(NetnsError::Setns { .. }) if !nix::unistd::geteuid().is_root() => return,
            Err(e) => panic!("{e}"),
        };
        let kinds = [
            (Domain::IPV4, Type::STREAM),
            (Domain::IPV6, Type::DGRAM),
            (Domain::IPV4, Type::DGRAM),
            (Domain::IPV6, Type::STREAM),
            (Domain::UNIX, Type::DGRAM),
        ];
        for round in 0..3 * POOL_HIGH {
            for (domain, ty) in kinds {
                let s = sockets.socket(domain, ty).await.unwrap();
                assert_eq!(s.domain().unwrap(), domain, "round {round}");
                assert_eq!(s.r#type().unwrap(), ty, "round {round}");
                assert!(s.nonblocking().unwrap(), "round {round}");
            }
            if round % POOL_LOW == 0 {
                // Let the namespace thread refill.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }
}
