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

struct Job {
    domain: Domain,
    ty: Type,
    reply: oneshot::Sender<io::Result<Socket>>,
}

/// Creates sockets inside the target's network namespace.
#[derive(Clone)]
pub struct NetnsSockets {
    jobs: std_mpsc::Sender<Job>,
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
                    let socket = Socket::new(job.domain, job.ty, None).and_then(|s| {
                        s.set_nonblocking(true)?;
                        Ok(s)
                    });
                    let _ = job.reply.send(socket);
                }
            })
            .map_err(NetnsError::Spawn)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(NetnsSockets { jobs }),
            Ok(Err(source)) => Err(NetnsError::Setns {
                path: path.to_path_buf(),
                source,
            }),
            Err(_) => Err(NetnsError::Spawn(io::Error::other(
                "the namespace thread exited before entering the namespace",
            ))),
        }
    }

    /// A new non-blocking, close-on-exec socket created inside the target namespace.
    pub async fn socket(&self, domain: Domain, ty: Type) -> io::Result<Socket> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job { domain, ty, reply })
            .map_err(|_| io::Error::other("the target namespace thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("the target namespace thread is gone"))?
    }
}
