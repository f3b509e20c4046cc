//! The epoll instances in the app's fd tables, remembered between remote connects.
//!
//! A socket of the target may replace an app socket only if no epoll instance watches it
//! (`execute::direct`): a registration belongs to the old open file and would not follow.
//! Finding the instances means reading the link of every entry of /proc/TID/fd — for a
//! program with thousands of open files, milliseconds per connect. So the list found for a
//! thread is kept, and read again only when it may be stale: when any traced process made a
//! new epoll instance since, or a listed fd is no longer one.
//!
//! sctrace knows when instances are made because, in sessions that hand sockets over, it
//! makes them: `epoll_create`/`epoll_create1` are trapped, and sctrace creates the instance
//! and installs it in the app as the call's result (`execute::create`). The count goes up
//! once the fd is in the app's table, so a list read after that includes it, and a list
//! whose reading began before is never used. (An epoll fd received from an untraced process
//! over a Unix socket is the one case this cannot see.)

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::procfs;

/// Threads remembered at most; the table starts over when full.
const MAX_THREADS: usize = 4096;

/// The remembered lists, and how many epoll instances sctrace made so far.
#[derive(Debug, Default)]
pub struct Epolls {
    made: AtomicU64,
    known: Mutex<HashMap<i32, Known>>,
}

/// The epoll fds of one thread's fd table, as found once.
#[derive(Debug, Clone)]
struct Known {
    /// How many instances sctrace had made when the reading began.
    made: u64,
    /// The thread's start time (a reused thread id is another thread).
    started: u64,
    fds: Vec<i32>,
}

impl Epolls {
    /// Counts an epoll instance that is now in an app's fd table.
    pub fn made_one(&self) {
        self.made.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether an epoll instance in the fd table of thread `tid` watches the open file
    /// whose inode is `inode`.
    pub fn watched(&self, tid: i32, inode: u64) -> io::Result<bool> {
        let made = self.made.load(Ordering::SeqCst);
        let started = procfs::start_time(tid)?;
        let known = self
            .known
            .lock()
            .ok()
            .and_then(|known| known.get(&tid).cloned())
            .filter(|k| k.made == made && k.started == started);
        if let Some(known) = known {
            // `None`: a listed fd is no longer an epoll instance; read the table again.
            if let Some(watched) = procfs::epolls_watch(tid, &known.fds, inode) {
                return Ok(watched);
            }
        }
        let fds = procfs::epoll_fds(tid)?;
        // An instance gone between the listing and now is no longer one that could watch.
        let watched = procfs::epolls_watch(tid, &fds, inode).unwrap_or(false);
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= MAX_THREADS {
                known.clear();
            }
            known.insert(tid, Known { made, started, fds });
        }
        Ok(watched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
    use std::os::fd::{AsFd, AsRawFd};

    fn this_thread() -> i32 {
        nix::unistd::gettid().as_raw()
    }

    fn inode_of(fd: std::os::fd::BorrowedFd<'_>) -> u64 {
        crate::sys::socket::inode(fd).unwrap()
    }

    #[test]
    fn a_watch_is_seen_and_a_new_instance_is_looked_for_once_counted() {
        let epolls = Epolls::default();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let first = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        epolls.made_one();
        first
            .add(a.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 1))
            .unwrap();
        let tid = this_thread();
        assert!(epolls.watched(tid, inode_of(a.as_fd())).unwrap());
        assert!(!epolls.watched(tid, inode_of(b.as_fd())).unwrap());
        // A second instance watching b: seen once it is counted.
        let second = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        second
            .add(b.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 2))
            .unwrap();
        epolls.made_one();
        assert!(epolls.watched(tid, inode_of(b.as_fd())).unwrap());
        // The first closed: its fd is no longer an instance, and the table is read again.
        let first_fd = first.0.as_raw_fd();
        drop(first);
        assert!(!epolls.watched(tid, inode_of(a.as_fd())).unwrap());
        let known = epolls.known.lock().unwrap().get(&tid).cloned().unwrap();
        assert!(!known.fds.contains(&first_fd), "{known:?}");
    }
}
