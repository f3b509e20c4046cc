//! Container mode: the app's inet sockets, owned by sctrace from birth.
//!
//! Where `pidfd_getfd` is refused (Docker's and containerd's default seccomp profiles
//! without CAP_SYS_PTRACE), sctrace can't copy a socket out of the app when a call needs
//! it. So it is there first: the filter traps `socket()` for AF_INET and AF_INET6, sctrace
//! creates the socket itself (same domain, type with SOCK_NONBLOCK, protocol), installs it
//! in the app as the call's result (`SECCOMP_IOCTL_NOTIF_ADDFD` + `SECCOMP_ADDFD_FLAG_SEND`,
//! allowed by those profiles) and keeps its own fd for the same open file description. A
//! later call on the app's fd N finds that copy again by the socket's inode:
//! `/proc/TID/fd/N` reads `socket:[INODE]`.
//!
//! A held copy keeps the socket open after the app closes its own fds: a TCP connection
//! would not send its FIN, a UDP port would stay bound, a listener would keep listening. So
//! a copy is held only while sctrace may still need it:
//!
//! ```text
//!  socket() ─▶ held ──┬─ TCP, connected (or past connecting) ────────────▶ released
//!                     ├─ TCP, connecting (SYN_SENT) ── writable ─▶ looked at again
//!                     ├─ TCP listener, port not subscribed ───────────────▶ released
//!                     └─ UDP, other types, subscribed listeners, unconnected TCP:
//!                        held while the app has it open (the sweeper) ────▶ released
//! ```
//!
//! The look happens whenever sctrace is done with a call on the socket (the [`HoldGuard`]
//! of the call's copy is dropped), so a TCP connection is released before the app's
//! `connect` returns. The sweeper runs every [`SWEEP_EVERY`]: it checks that the fd the
//! socket was installed as still links to it, else looks for it among the fds of sctrace's
//! descendants (forks, `dup2`), and releases the copy when nobody has it.
//!
//! Released TCP sockets are remembered (by inode, a bounded number): a later call on one
//! that could go to the target is left to the kernel, which answers it for a connected
//! socket (EISCONN, EALREADY) or ignores the address (sends).

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use crate::errno::Errno;
use crate::procfs::{self, FdLink};
use crate::sys::socket as sys;

use super::socket::Untaken;

/// How often the sweeper looks for sockets the app closed: also how long a closed UDP
/// socket's port, or a closed subscribed listener, can outlive the app's close.
pub const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// Released sockets remembered at most (the oldest are forgotten first).
const RELEASED_MAX: usize = 65_536;

/// `tcpi_state` values (include/net/tcp_states.h).
const TCP_SYN_SENT: u8 = 2;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;

/// Tells whether a listening socket (by inode) has its port subscribed in the target.
type SubscribedCheck = Box<dyn Fn(u64) -> bool + Send + Sync>;

/// The sockets sctrace created for the app and still holds.
pub struct OwnedSockets {
    table: Mutex<Table>,
    /// sctrace's own network namespace (its `/proc/self/ns/net` inode).
    netns: Option<u64>,
    /// Whether a listener's port is subscribed (set by a relaying session).
    subscribed: OnceLock<SubscribedCheck>,
    /// Whose fds the sweeper looks through (set when it starts).
    sweeping: OnceLock<Sweeping>,
}

/// The processes a sweep looks through: the descendants of `root`, but those in `except`.
struct Sweeping {
    root: i32,
    except: HashSet<i32>,
}

#[derive(Default)]
struct Table {
    held: HashMap<u64, Held>,
    released: HashSet<u64>,
    released_order: VecDeque<u64>,
}

/// One held copy.
struct Held {
    fd: OwnedFd,
    /// A stream socket: released once connected.
    stream: bool,
    /// Where the app has it.
    place: Place,
    /// A task waits for its connect to end.
    watched: bool,
}

/// Where the app has a held socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Being installed: not in the app's fd table yet.
    Installing,
    /// Fd `fd` of thread (or process) `tid`, where it was installed or last seen.
    At { tid: u32, fd: i32 },
}

/// A socket sctrace just created for the app: `fd` is to be installed in the app.
#[derive(Debug)]
pub struct Created {
    /// Its inode (the table's key).
    pub ino: u64,
    /// Another fd of it, for `SECCOMP_IOCTL_NOTIF_ADDFD` to install.
    pub fd: OwnedFd,
    /// Whether the app asked for SOCK_CLOEXEC (a flag of its fd, not of the socket).
    pub cloexec: bool,
}

/// What sctrace should do with a held copy, by the socket's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Keep,
    Release,
    WatchConnect,
}

impl OwnedSockets {
    /// An empty table for a session in sctrace's current network namespace.
    pub fn new() -> OwnedSockets {
        OwnedSockets {
            table: Mutex::default(),
            netns: procfs::netns_of(None)
                .inspect_err(|err| tracing::debug!("cannot read sctrace's netns: {err}"))
                .ok(),
            subscribed: OnceLock::new(),
            sweeping: OnceLock::new(),
        }
    }

    /// Lets the table ask whether a listener's port is subscribed in the target (its copy
    /// is then held while the app listens, so that its accepts can be emulated).
    pub fn set_subscribed_check(&self, check: impl Fn(u64) -> bool + Send + Sync + 'static) {
        let _ = self.subscribed.set(Box::new(check));
    }

    /// Whether thread `tid` is in sctrace's network namespace. A socket sctrace created
    /// would live in sctrace's namespace, so a thread that entered another one (setns,
    /// unshare) gets its sockets from the kernel; so does one whose namespace can't be read.
    pub fn shares_netns(&self, tid: u32) -> bool {
        match (self.netns, procfs::netns_of(Some(tid))) {
            (Some(ours), Ok(theirs)) => ours == theirs,
            _ => false,
        }
    }

    /// `socket(domain, sock_type, protocol)` for the app: creates it (the kernel checks the
    /// arguments and answers as it would the app), and holds it as being installed.
    ///
    /// sctrace's own fd table can fill up before the app's does (a burst of short-lived
    /// sockets, each held until a sweep sees it closed): then it sweeps at once and tries
    /// again, so that the app gets EMFILE only when its sockets really are open.
    pub fn create(
        self: &Arc<Self>,
        domain: i32,
        sock_type: i32,
        protocol: i32,
    ) -> Result<Created, Errno> {
        match self.create_once(domain, sock_type, protocol) {
            Err(Errno(libc::EMFILE | libc::ENFILE)) => {
                self.sweep_now();
                self.create_once(domain, sock_type, protocol)
            }
            other => other,
        }
    }

    fn create_once(&self, domain: i32, sock_type: i32, protocol: i32) -> Result<Created, Errno> {
        let cloexec = sock_type & libc::SOCK_CLOEXEC != 0;
        let fd = sys::new_socket(domain, sock_type | libc::SOCK_CLOEXEC, protocol)?;
        let ino = sys::inode(fd.as_fd())?;
        let stream = sys::sock_type(fd.as_fd()) == Ok(libc::SOCK_STREAM);
        let for_app = sys::duplicate(fd.as_fd())?;
        if let Ok(mut table) = self.table.lock() {
            table.held.insert(
                ino,
                Held {
                    fd,
                    stream,
                    place: Place::Installing,
                    watched: false,
                },
            );
        }
        Ok(Created {
            ino,
            fd: for_app,
            cloexec,
        })
    }

    /// The socket `ino` was installed as fd `fd` of thread `tid` (`None`: it was not, the
    /// call having been interrupted or the app's fd table being full: it is dropped).
    pub fn installed(&self, ino: u64, tid: u32, fd: Option<i32>) {
        tracing::trace!("socket {ino} installed as fd {fd:?} of {tid}");
        let dropped = self.table.lock().ok().and_then(|mut table| match fd {
            Some(fd) => {
                if let Some(held) = table.held.get_mut(&ino) {
                    held.place = Place::At { tid, fd };
                }
                None
            }
            None => table.held.remove(&ino),
        });
        drop(dropped);
    }

    /// The socket inode of the app's fd `app_fd` (thread `tid`), read from /proc.
    pub fn identity(&self, tid: u32, app_fd: i32) -> Result<u64, Untaken> {
        match procfs::fd_link(tid, app_fd) {
            Ok(FdLink::Socket(ino)) => Ok(ino),
            Ok(FdLink::Other) => Err(Untaken::NotSocket),
            Err(err) => Err(match err.raw_os_error() {
                Some(libc::ENOENT) => Untaken::BadFd,
                _ => Untaken::Unreachable(Errno::from_io(&err)),
            }),
        }
    }

    /// Another fd of the held copy of the app's fd `app_fd` (thread `tid`), its inode, and
    /// the guard that looks at the socket again when sctrace is done with this fd.
    pub fn take(
        self: &Arc<Self>,
        tid: u32,
        app_fd: i32,
    ) -> Result<(OwnedFd, u64, HoldGuard), Untaken> {
        let ino = self.identity(tid, app_fd)?;
        tracing::trace!("take fd {app_fd} of {tid}: socket {ino}");
        let table = self
            .table
            .lock()
            .map_err(|_| Untaken::Unreachable(Errno(libc::EIO)))?;
        let Some(held) = table.held.get(&ino) else {
            return Err(Untaken::Unheld {
                ino,
                released: table.released.contains(&ino),
            });
        };
        let fd = sys::duplicate(held.fd.as_fd()).map_err(Untaken::Unreachable)?;
        drop(table);
        let guard = HoldGuard {
            owner: Arc::clone(self),
            ino,
        };
        Ok((fd, ino, guard))
    }

    /// Forgets that `ino` was released: a call sctrace left to the kernel (a TCP
    /// `connect(AF_UNSPEC)`) may have made it connectable again, and connects of a socket
    /// sctrace does not hold can't be carried out to the target.
    pub fn forget_released(&self, ino: u64) {
        if let Ok(mut table) = self.table.lock() {
            table.released.remove(&ino);
        }
    }

    /// How many sockets are held (for tests and logs).
    pub fn held(&self) -> usize {
        self.table.lock().map(|t| t.held.len()).unwrap_or(0)
    }

    /// What the socket's state says about its copy.
    fn verdict(&self, ino: u64) -> Verdict {
        let state = {
            let Ok(table) = self.table.lock() else {
                return Verdict::Keep;
            };
            match table.held.get(&ino) {
                Some(held) if held.stream && !held.watched => sys::tcp_state(held.fd.as_fd()),
                _ => return Verdict::Keep,
            }
        };
        match state {
            // Not connected yet: it may still be bound, connected or listened on.
            Ok(TCP_CLOSE) | Err(_) => Verdict::Keep,
            Ok(TCP_SYN_SENT) => Verdict::WatchConnect,
            Ok(TCP_LISTEN) => match self.subscribed.get() {
                Some(subscribed) if subscribed(ino) => Verdict::Keep,
                _ => Verdict::Release,
            },
            // Connected, or closing: the kernel answers every later call by itself.
            Ok(_) => Verdict::Release,
        }
    }

    /// Looks at a held socket's state after sctrace used it, and releases the copy when
    /// nothing needs it any more.
    fn settle(self: &Arc<Self>, ino: u64) {
        match self.verdict(ino) {
            Verdict::Keep => {}
            Verdict::Release => self.release(ino, true),
            Verdict::WatchConnect => self.watch_connect(ino),
        }
    }

    /// Remembers `ino`, a TCP socket sctrace never held, as released: calls on it are the
    /// kernel's to answer (a socket of the target installed in the app, `execute::direct`).
    pub fn remember_released(&self, ino: u64) {
        if let Ok(mut table) = self.table.lock() {
            if table.released.insert(ino) {
                table.released_order.push_back(ino);
                while table.released_order.len() > RELEASED_MAX {
                    if let Some(old) = table.released_order.pop_front() {
                        table.released.remove(&old);
                    }
                }
            }
        }
    }

    /// Drops the copy of `ino`; a stream socket is remembered as released.
    fn release(&self, ino: u64, remember: bool) {
        tracing::trace!("socket {ino} released (remembered: {remember})");
        let dropped = self
            .table
            .lock()
            .ok()
            .and_then(|mut table| table.held.remove(&ino));
        if remember && dropped.as_ref().is_some_and(|held| held.stream) {
            self.remember_released(ino);
        }
        // Closed outside the lock.
        drop(dropped);
    }

    /// Waits (off the notification loop) for a connecting TCP socket's connect to end,
    /// then settles it: released once connected, kept if the connect failed (the socket
    /// can connect again). Stops waiting when the copy was released meanwhile (the app
    /// closed the socket).
    fn watch_connect(self: &Arc<Self>, ino: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let fd = {
            let Ok(mut table) = self.table.lock() else {
                return;
            };
            let Some(held) = table.held.get_mut(&ino) else {
                return;
            };
            let Ok(fd) = sys::duplicate(held.fd.as_fd()) else {
                return;
            };
            held.watched = true;
            fd
        };
        let owner = Arc::downgrade(self);
        runtime.spawn(async move {
            let connected = async {
                if let Ok(watched) = sys::watch(fd, tokio::io::Interest::WRITABLE) {
                    let _ = watched.writable().await;
                }
            };
            let dropped = async {
                loop {
                    tokio::time::sleep(SWEEP_EVERY).await;
                    match owner.upgrade() {
                        Some(owner) if owner.holds(ino) => {}
                        _ => return,
                    }
                }
            };
            tokio::select! {
                () = connected => {}
                () = dropped => return,
            }
            if let Some(owner) = owner.upgrade() {
                if let Ok(mut table) = owner.table.lock() {
                    if let Some(held) = table.held.get_mut(&ino) {
                        held.watched = false;
                    }
                }
                owner.settle(ino);
            }
        });
    }

    fn holds(&self, ino: u64) -> bool {
        self.table
            .lock()
            .map(|t| t.held.contains_key(&ino))
            .unwrap_or(false)
    }

    /// Starts the sweeper (on the current tokio runtime): every [`SWEEP_EVERY`], copies of
    /// sockets no descendant of process `root` has open any more (processes in `except`
    /// and their descendants aside: sctrace's own agent) are released. It ends with the
    /// table.
    pub fn start_sweeper(self: &Arc<Self>, root: i32, except: HashSet<i32>) {
        let _ = self.sweeping.set(Sweeping { root, except });
        let owner = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let Some(owner) = Weak::upgrade(&owner) else {
                    return;
                };
                // It reads /proc: blocking work, off the runtime's workers.
                let swept = tokio::task::spawn_blocking(move || owner.sweep_now()).await;
                if swept.is_err() {
                    return;
                }
            }
        });
    }

    /// One sweep through the processes [`OwnedSockets::start_sweeper`] was given (none
    /// before it started).
    pub fn sweep_now(self: &Arc<Self>) {
        self.sweep(|| match self.sweeping.get() {
            Some(sweeping) => procfs::descendants(sweeping.root, &sweeping.except),
            None => Vec::new(),
        });
    }

    /// One sweep: releases the copies nobody among `processes()` has open, notes where the
    /// others are, and settles the stream sockets (a connect may have ended).
    pub fn sweep(self: &Arc<Self>, processes: impl FnOnce() -> Vec<i32>) {
        let places: Vec<(u64, Place, bool)> = match self.table.lock() {
            Ok(table) => table
                .held
                .iter()
                .map(|(ino, held)| (*ino, held.place, held.stream))
                .collect(),
            Err(_) => return,
        };
        let mut lost = Vec::new();
        for (ino, place, stream) in &places {
            let Place::At { tid, fd } = *place else {
                continue;
            };
            if procfs::fd_link(tid, fd).ok() != Some(FdLink::Socket(*ino)) {
                lost.push(*ino);
            } else if *stream {
                self.settle(*ino);
            }
        }
        if lost.is_empty() {
            return;
        }
        let open = procfs::open_sockets(&processes());
        for ino in lost {
            match open.get(&ino) {
                Some(&(pid, fd)) => {
                    if let Ok(mut table) = self.table.lock() {
                        if let Some(held) = table.held.get_mut(&ino) {
                            held.place = Place::At { tid: pid, fd };
                        }
                    }
                }
                None => {
                    tracing::trace!("socket {ino}: closed by the app; its copy is released");
                    self.release(ino, false);
                }
            }
        }
    }
}

impl Default for OwnedSockets {
    fn default() -> Self {
        OwnedSockets::new()
    }
}

/// Held by every fd sctrace takes of a held socket; dropped when sctrace is done with it,
/// it looks at the socket's state again (see [`OwnedSockets::settle`]).
pub struct HoldGuard {
    owner: Arc<OwnedSockets>,
    ino: u64,
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        self.owner.settle(self.ino);
    }
}

impl std::fmt::Debug for OwnedSockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedSockets")
            .field("held", &self.held())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for HoldGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HoldGuard").field("ino", &self.ino).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn me() -> u32 {
        std::process::id()
    }

    /// Creates a socket as container mode would, "installed" in this very process.
    fn create(owned: &Arc<OwnedSockets>, sock_type: i32) -> (u64, OwnedFd) {
        let created = owned.create(libc::AF_INET, sock_type, 0).unwrap();
        owned.installed(created.ino, me(), Some(created.fd.as_raw_fd()));
        (created.ino, created.fd)
    }

    #[test]
    fn a_udp_socket_is_held_while_the_app_has_it() {
        let owned = Arc::new(OwnedSockets::new());
        let (ino, app) = create(&owned, libc::SOCK_DGRAM);
        let (copy, taken, guard) = owned.take(me(), app.as_raw_fd()).unwrap();
        assert_eq!(taken, ino);
        assert_eq!(sys::inode(copy.as_fd()), Ok(ino));
        drop(guard);
        owned.sweep(Vec::new);
        assert_eq!(owned.held(), 1, "still open in the app");
        let fd = app.as_raw_fd();
        drop(app);
        // The app's processes (none here: this process holds the copy itself).
        owned.sweep(Vec::new);
        assert_eq!(owned.held(), 0, "closed by the app");
        assert!(matches!(
            owned.take(me(), fd),
            Err(Untaken::BadFd) | Err(Untaken::Unheld { .. })
        ));
    }

    #[test]
    fn a_socket_that_moved_to_another_fd_is_found_again() {
        let owned = Arc::new(OwnedSockets::new());
        let (ino, app) = create(&owned, libc::SOCK_DGRAM);
        let moved = sys::duplicate(app.as_fd()).unwrap();
        drop(app);
        owned.sweep(|| vec![me() as i32]);
        assert_eq!(owned.held(), 1);
        let (_, taken, _) = owned.take(me(), moved.as_raw_fd()).unwrap();
        assert_eq!(taken, ino);
    }

    #[test]
    fn a_tcp_socket_is_released_once_connected() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let owned = Arc::new(OwnedSockets::new());
        let (ino, app) = create(&owned, libc::SOCK_STREAM);
        let (copy, _, guard) = owned.take(me(), app.as_raw_fd()).unwrap();
        let to = crate::sockaddr::SockAddr::encode_inet(listener.local_addr().unwrap());
        sys::connect(copy.as_fd(), Some(&to), to.len() as i32).unwrap();
        assert_eq!(owned.held(), 1);
        drop(guard);
        assert_eq!(owned.held(), 0, "released when sctrace was done with it");
        match owned.take(me(), app.as_raw_fd()) {
            Err(Untaken::Unheld { ino: i, released }) => assert!(i == ino && released),
            other => panic!("{other:?}"),
        }
        owned.forget_released(ino);
        assert!(matches!(
            owned.take(me(), app.as_raw_fd()),
            Err(Untaken::Unheld {
                released: false,
                ..
            })
        ));
    }

    #[test]
    fn listeners_are_held_only_when_subscribed() {
        let owned = Arc::new(OwnedSockets::new());
        let (ino, app) = create(&owned, libc::SOCK_STREAM);
        let (copy, _, guard) = owned.take(me(), app.as_raw_fd()).unwrap();
        sys::listen(copy.as_fd(), 1).unwrap();
        owned.set_subscribed_check(move |i| i == ino);
        drop(guard);
        assert_eq!(owned.held(), 1, "a subscribed listener is held");
        let (_, ino2) = {
            let (other_ino, other) = create(&owned, libc::SOCK_STREAM);
            let (copy, _, guard) = owned.take(me(), other.as_raw_fd()).unwrap();
            sys::listen(copy.as_fd(), 1).unwrap();
            drop(guard);
            (other, other_ino)
        };
        assert!(!owned.holds(ino2), "an unsubscribed listener is released");
        assert!(owned.holds(ino));
    }

    #[test]
    fn bad_fds_and_other_files_are_told_apart() {
        let owned = Arc::new(OwnedSockets::new());
        assert!(matches!(owned.take(me(), 1_000_000), Err(Untaken::BadFd)));
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(matches!(
            owned.take(me(), file.as_raw_fd()),
            Err(Untaken::NotSocket)
        ));
        let foreign = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(matches!(
            owned.take(me(), foreign.as_raw_fd()),
            Err(Untaken::Unheld {
                released: false,
                ..
            })
        ));
        assert!(owned.shares_netns(me()));
    }

    #[test]
    fn a_socket_never_installed_is_dropped() {
        let owned = Arc::new(OwnedSockets::new());
        let created = owned.create(libc::AF_INET6, libc::SOCK_DGRAM, 0).unwrap();
        assert_eq!(owned.held(), 1);
        owned.installed(created.ino, me(), None);
        assert_eq!(owned.held(), 0);
        assert_eq!(
            owned.create(libc::AF_INET, 0x7777, 0).unwrap_err(),
            Errno(libc::EINVAL),
            "the kernel checks the app's arguments"
        );
    }
}
