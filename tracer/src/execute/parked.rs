//! Blocking accepts parked in sctrace: an accept on a subscribed listener with nothing to
//! accept yet waits here, with no task or thread of its own, for whoever has a connection
//! for it first — a stolen connection the local agent hands over (answered by
//! `remote::incoming` on the thread that received it) or a client of the listener itself.
//!
//! One epoll set holds a copy of each parked accept's listener, only while it is parked (a
//! listener the app closes stops listening), and one task of the session waits on it; the
//! same task ends the calls that went, or that a caught signal interrupts, as the
//! supervisor does for deferred work. So parking an accept wakes no thread, and answering
//! it wakes one: the app's.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::errno::Errno;
use crate::remote::incoming::{Incoming, WaitingAccept};
use crate::sys::socket as sys;
use crate::trap::{CallRef, Fate, WATCH_EVERY};

/// Accepts a client of the parked call's listener (given): the socket to install and
/// whether the app's fd is close-on-exec, or why not (EAGAIN: nothing to accept after all).
pub type AcceptLocal = Box<dyn Fn(BorrowedFd<'_>) -> Result<(OwnedFd, bool), Errno> + Send + Sync>;

/// One parked accept.
pub struct Parked {
    /// Its place among the accepts offers may answer.
    pub waiting: Arc<WaitingAccept>,
    /// The call.
    pub call: CallRef,
    /// The calling thread.
    pub tid: u32,
    /// A copy of the listener, watched for clients while the call is parked.
    pub listener: OwnedFd,
    /// Takes one of those clients for the call.
    pub local: AcceptLocal,
}

/// The parked accepts of a session.
pub struct ParkedAccepts {
    incoming: Arc<Incoming>,
    /// The epoll set of their listeners, made (with its task) at the first park.
    set: OnceLock<Arc<AsyncFd<EpollSet>>>,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    next: u64,
    parked: HashMap<u64, Parked>,
}

/// An epoll instance, as the runtime's reactor watches it (readable: some listener is).
struct EpollSet(Epoll);

impl AsRawFd for EpollSet {
    fn as_raw_fd(&self) -> RawFd {
        self.0 .0.as_raw_fd()
    }
}

impl From<EpollSet> for OwnedFd {
    fn from(set: EpollSet) -> OwnedFd {
        set.0 .0
    }
}

impl ParkedAccepts {
    /// Parked accepts of the session whose incoming traffic is `incoming`.
    pub fn new(incoming: Arc<Incoming>) -> Arc<Self> {
        Arc::new(Self {
            incoming,
            set: OnceLock::new(),
            entries: Mutex::default(),
        })
    }

    /// A key for an accept about to be parked (its answer needs it before it is parked).
    pub fn reserve(&self) -> Option<u64> {
        let mut entries = self.entries.lock().ok()?;
        entries.next += 1;
        Some(entries.next)
    }

    /// Parks `parked` under `key` (from [`ParkedAccepts::reserve`]); must be called within
    /// the runtime. False when it could not be watched: the caller then waits otherwise,
    /// and nothing was parked.
    pub fn park(self: &Arc<Self>, key: u64, parked: Parked) -> bool {
        let Some(set) = self.set() else {
            return false;
        };
        let Ok(mut entries) = self.entries.lock() else {
            return false;
        };
        let event = EpollEvent::new(EpollFlags::EPOLLIN, key);
        if let Err(err) = set.get_ref().0.add(parked.listener.as_fd(), event) {
            tracing::debug!("cannot watch a listener for a parked accept: {err}");
            return false;
        }
        self.incoming.park(&parked.waiting);
        entries.parked.insert(key, parked);
        true
    }

    /// Forgets the accept parked under `key` (answered, or its call gone).
    pub fn finish(&self, key: u64) {
        let parked = self
            .entries
            .lock()
            .ok()
            .and_then(|mut entries| entries.parked.remove(&key));
        if let Some(parked) = parked {
            self.forget(&parked);
        }
    }

    fn forget(&self, parked: &Parked) {
        self.incoming.unpark(&parked.waiting);
        if let Some(set) = self.set.get() {
            let _ = set.get_ref().0.delete(parked.listener.as_fd());
        }
    }

    /// The epoll set, made with its task the first time.
    fn set(self: &Arc<Self>) -> Option<&Arc<AsyncFd<EpollSet>>> {
        if self.set.get().is_none() {
            let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
                .map_err(|err| {
                    tracing::debug!("cannot make an epoll set for parked accepts: {err}")
                })
                .ok()?;
            let set = sys::watch(EpollSet(epoll), Interest::READABLE)
                .map_err(|err| tracing::debug!("cannot watch the parked accepts' epoll set: {err}"))
                .ok()?;
            let set = Arc::new(set);
            if self.set.set(Arc::clone(&set)).is_ok() {
                tokio::spawn(serve(Arc::downgrade(self), set));
            }
        }
        self.set.get()
    }

    /// A client came to the listener of the accept parked under `key`: it takes it, unless
    /// an offer answered the call first.
    fn client_came(&self, key: u64) {
        // Taken out while it works, so that nothing else finds it half done.
        let parked = self.entries.lock().ok().and_then(|mut entries| {
            let claimed = entries.parked.get(&key)?.waiting.claim();
            claimed.then(|| entries.parked.remove(&key)).flatten()
        });
        let Some(parked) = parked else {
            return;
        };
        if !parked.call.pending() {
            return self.forget(&parked);
        }
        let answered = match (parked.local)(parked.listener.as_fd()) {
            Ok((fd, cloexec)) => parked.call.answer_with_fd(fd.as_fd(), cloexec).map(drop),
            Err(Errno(libc::EAGAIN)) => {
                // Someone else took the client: the call waits on.
                parked.waiting.release();
                if let Ok(mut entries) = self.entries.lock() {
                    entries.parked.insert(key, parked);
                }
                return;
            }
            Err(errno) => parked.call.answer_error(errno.0),
        };
        if let Err(err) = answered {
            tracing::debug!("cannot answer a parked accept: {err}");
        }
        self.forget(&parked);
    }

    /// Ends the parked calls that went, or that a caught signal interrupts.
    fn look_at_calls(&self) {
        let calls: Vec<(u64, CallRef, u32)> = match self.entries.lock() {
            Ok(entries) => entries
                .parked
                .iter()
                .map(|(key, p)| (*key, p.call.clone(), p.tid))
                .collect(),
            Err(_) => return,
        };
        for (key, call, tid) in calls {
            let Some(fate) = call.fate(tid) else {
                continue;
            };
            let parked = self.entries.lock().ok().and_then(|mut entries| {
                let claimed = entries.parked.get(&key)?.waiting.claim();
                claimed.then(|| entries.parked.remove(&key)).flatten()
            });
            // (Not there, or not claimed: an offer is answering it, and finishes it.)
            let Some(parked) = parked else {
                continue;
            };
            if let Fate::Interrupted(errno) = fate {
                if let Err(err) = parked.call.answer_error(errno.0) {
                    tracing::debug!("cannot interrupt a parked accept: {err}");
                }
            }
            self.forget(&parked);
        }
    }
}

/// The session's task for parked accepts: clients of their listeners, and their calls'
/// fates every [`WATCH_EVERY`]. It ends with the session.
async fn serve(parked: Weak<ParkedAccepts>, set: Arc<AsyncFd<EpollSet>>) {
    let mut ticks = tokio::time::interval(WATCH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ready = set.readable() => {
                let Ok(mut guard) = ready else {
                    return;
                };
                let Some(parked) = parked.upgrade() else {
                    return;
                };
                let mut events = [EpollEvent::empty(); 16];
                match set.get_ref().0.wait(&mut events, EpollTimeout::ZERO) {
                    Ok(0) | Err(_) => guard.clear_ready(),
                    Ok(n) => {
                        for event in &events[..n] {
                            parked.client_came(event.data());
                        }
                    }
                }
            }
            _ = ticks.tick() => {
                let Some(parked) = parked.upgrade() else {
                    return;
                };
                parked.look_at_calls();
            }
        }
    }
}
