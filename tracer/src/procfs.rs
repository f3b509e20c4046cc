//! What sctrace reads from /proc about the traced processes: which process a thread belongs
//! to, its command name, the tree of descendants left when the main program exits, and
//! what its fd table says about one fd (close-on-exec, watched by an epoll instance), and
//! (container mode) which socket an fd of theirs is and which network namespace they are in.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A thread's process id and command name, as shown in events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The thread-group id (the "pid" users know).
    pub pid: i32,
    /// The thread's command name (`comm`, at most 15 bytes).
    pub comm: String,
}

/// Reads `/proc/TID/status` for the thread's `Tgid` and `Name`.
pub fn identity(tid: i32) -> io::Result<Identity> {
    let status = fs::read_to_string(format!("/proc/{tid}/status"))?;
    let mut pid = None;
    let mut comm = None;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("Name:") {
            comm = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("Tgid:") {
            pid = v.trim().parse().ok();
        }
        if pid.is_some() && comm.is_some() {
            break;
        }
    }
    match (pid, comm) {
        (Some(pid), Some(comm)) => Ok(Identity { pid, comm }),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{tid}/status lacks Tgid or Name"),
        )),
    }
}

/// Thread identities read recently. Reading /proc costs about 10 µs on a small VM, too much
/// for every event of a busy thread; an identity is reused for [`IDENTITY_TTL`]. A thread's
/// process never changes while it lives, and a tid is not recycled within that time; a
/// thread that execs or renames itself shows its new name at most that much later.
#[derive(Debug, Default)]
pub struct IdentityCache {
    entries: Mutex<HashMap<i32, (Identity, Instant)>>,
}

/// How long a thread identity read from /proc is reused.
pub const IDENTITY_TTL: Duration = Duration::from_millis(250);
/// Entries kept at most; the cache starts over when full.
const IDENTITY_MAX: usize = 8192;

impl IdentityCache {
    /// The identity of thread `tid`, from the cache or /proc. `None` if the thread is gone.
    pub fn get(&self, tid: i32) -> Option<Identity> {
        let now = Instant::now();
        if let Ok(entries) = self.entries.lock() {
            if let Some((id, at)) = entries.get(&tid) {
                if now.duration_since(*at) < IDENTITY_TTL {
                    return Some(id.clone());
                }
            }
        }
        let id = identity(tid).ok()?;
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= IDENTITY_MAX {
                entries.clear();
            }
            entries.insert(tid, (id.clone(), now));
        }
        Some(id)
    }
}

/// Whether a signal waits for thread `tid` that its process catches and the thread does not
/// block, from `/proc/TID/status`: `Some(true)` for one sent to the thread itself (or to a
/// single-threaded process: the thread is then sure to take it), `Some(false)` for one sent
/// to a multi-threaded process (some thread takes it), `None` for none. Such a signal would
/// interrupt the thread's blocking call in the kernel; a call sctrace is answering keeps the
/// thread from taking it until answered (with WAIT_KILLABLE_RECV, only fatal signals wake it).
pub fn caught_signal_pending(tid: u32) -> io::Result<Option<bool>> {
    let status = fs::read_to_string(format!("/proc/{tid}/status"))?;
    Ok(parse_pending(&status))
}

fn parse_pending(status: &str) -> Option<bool> {
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let threads: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1);
    let wanted = mask("SigCgt:") & !mask("SigBlk:");
    if mask("SigPnd:") & wanted != 0 {
        Some(true)
    } else if mask("ShdPnd:") & wanted != 0 {
        Some(threads == 1)
    } else {
        None
    }
}

/// Whether fd `fd` of thread `tid` is close-on-exec (the `flags:` line of
/// /proc/TID/fdinfo/FD, in octal, has O_CLOEXEC).
pub fn fd_cloexec(tid: i32, fd: i32) -> io::Result<bool> {
    let info = fs::read_to_string(format!("/proc/{tid}/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| i64::from_str_radix(v.trim(), 8).ok())
        .map(|flags| flags & libc::O_CLOEXEC as i64 != 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "fdinfo lacks flags"))
}

/// The fds of thread `tid`'s fd table that are epoll instances.
pub fn epoll_fds(tid: i32) -> io::Result<Vec<i32>> {
    let mut fds = Vec::new();
    for entry in fs::read_dir(format!("/proc/{tid}/fd"))? {
        let Ok(entry) = entry else { continue };
        let is_epoll = fs::read_link(entry.path())
            .map(|target| target.as_os_str() == EPOLL_LINK)
            .unwrap_or(false);
        if let (true, Some(fd)) = (is_epoll, entry.file_name().to_str()) {
            if let Ok(fd) = fd.parse() {
                fds.push(fd);
            }
        }
    }
    Ok(fds)
}

/// What /proc/TID/fd/N links to for an epoll instance.
const EPOLL_LINK: &str = "anon_inode:[eventpoll]";

/// Whether one of the epoll instances at `fds` of thread `tid` watches the open file whose
/// inode is `inode` (each watched file is a `tfd: ... ino:HEX` line of the epoll fd's
/// fdinfo). `None` when one of the fds is no longer an epoll instance. An epoll
/// registration belongs to the open file: a socket installed over the fd later would not
/// be watched.
pub fn epolls_watch(tid: i32, fds: &[i32], inode: u64) -> Option<bool> {
    for fd in fds {
        let link = fs::read_link(format!("/proc/{tid}/fd/{fd}")).ok()?;
        if link.as_os_str() != EPOLL_LINK {
            return None;
        }
        let info = fs::read_to_string(format!("/proc/{tid}/fdinfo/{fd}")).ok()?;
        if epoll_watches(&info, inode) {
            return Some(true);
        }
    }
    Some(false)
}

/// When thread `tid` started (field 22 of /proc/TID/stat, in clock ticks since boot).
pub fn start_time(tid: i32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{tid}/stat"))?;
    stat.rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().nth(19))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable stat"))
}

/// Whether an epoll fdinfo text lists a watched file with inode `inode`.
fn epoll_watches(info: &str, inode: u64) -> bool {
    info.lines()
        .filter(|l| l.starts_with("tfd:"))
        .filter_map(|l| l.split_whitespace().find_map(|f| f.strip_prefix("ino:")))
        .filter_map(|ino| u64::from_str_radix(ino, 16).ok())
        .any(|ino| ino == inode)
}

/// The process (thread group) that thread `tid` belongs to.
pub fn thread_group_of(tid: i32) -> io::Result<i32> {
    identity(tid).map(|id| id.pid)
}

/// Parses the state letter and parent pid out of a `/proc/PID/stat` line, whose command
/// name may contain spaces and parentheses (so the fields after the *last* `)` are used).
fn state_and_parent(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// Every living process that descends from `root` (not including `root`), found by walking
/// the parent links of all processes in /proc, except the processes in `except` and their
/// own descendants. Zombies are left out: they are gone already and only wait to be reaped.
pub fn descendants(root: i32, except: &HashSet<i32>) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let mut zombies = HashSet::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((state, ppid)) = state_and_parent(&stat) {
            children.entry(ppid).or_default().push(pid);
            if state == 'Z' {
                zombies.insert(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if !except.contains(&c) && seen.insert(c) {
                if !zombies.contains(&c) {
                    out.push(c);
                }
                stack.push(c);
            }
        }
    }
    out
}

/// What an fd of a traced thread is, from its `/proc/TID/fd/N` link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdLink {
    /// A socket: `socket:[INODE]`.
    Socket(u64),
    /// Anything else (a file, a pipe, an eventfd...).
    Other,
}

/// Reads what fd `fd` of thread `tid` is. The error is the kernel's: ENOENT when the fd is
/// not open (or the thread is gone), EACCES/EPERM when the thread can't be inspected (it is
/// not dumpable, or a security module refuses), ESRCH...
pub fn fd_link(tid: u32, fd: i32) -> io::Result<FdLink> {
    let target = fs::read_link(format!("/proc/{tid}/fd/{fd}"))?;
    Ok(parse_fd_link(target.as_os_str().as_encoded_bytes()))
}

fn parse_fd_link(target: &[u8]) -> FdLink {
    target
        .strip_prefix(b"socket:[")
        .and_then(|rest| rest.strip_suffix(b"]"))
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse().ok())
        .map_or(FdLink::Other, FdLink::Socket)
}

/// The network namespace of thread `tid` (`None`: sctrace's own), as the inode of its
/// `/proc/TID/ns/net`.
pub fn netns_of(tid: Option<u32>) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let path = match tid {
        Some(tid) => format!("/proc/{tid}/ns/net"),
        None => "/proc/self/ns/net".to_string(),
    };
    Ok(fs::metadata(path)?.ino())
}

/// Where each socket open in processes `pids` is: socket inode → (pid, fd), one of them
/// when several hold it. Processes and fds that vanish or can't be read are skipped.
pub fn open_sockets(pids: &[i32]) -> HashMap<u64, (u32, i32)> {
    let mut found = HashMap::new();
    for &pid in pids {
        let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for entry in dir.flatten() {
            let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Ok(target) = fs::read_link(entry.path()) {
                if let FdLink::Socket(ino) = parse_fd_link(target.as_os_str().as_encoded_bytes()) {
                    found.entry(ino).or_insert((pid as u32, fd));
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod signal_tests {
    use super::*;

    const STATUS: &str = "Name:\tperl\nThreads:\t1\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000002000\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000002000\n";

    #[test]
    fn a_caught_unblocked_pending_signal_is_seen() {
        // SIGALRM (14: bit 13) sent to the process, caught, not blocked, one thread.
        assert_eq!(parse_pending(STATUS), Some(true));
        let many = STATUS.replace("Threads:\t1", "Threads:\t4");
        assert_eq!(parse_pending(&many), Some(false));
        let blocked = STATUS.replace("SigBlk:\t0000000000000000", "SigBlk:\t0000000000002000");
        assert_eq!(parse_pending(&blocked), None);
        let not_caught = STATUS.replace("SigCgt:\t0000000000002000", "SigCgt:\t0000000000000000");
        assert_eq!(parse_pending(&not_caught), None);
        let to_thread = many
            .replace("ShdPnd:\t0000000000002000", "ShdPnd:\t0000000000000000")
            .replace("SigPnd:\t0000000000000000", "SigPnd:\t0000000000002000");
        assert_eq!(parse_pending(&to_thread), Some(true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_fdinfo_names_the_watched_inodes() {
        let info = "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\n\
tfd:        5 events:       19 data:                5  pos:0 ino:2a3f sdev:8\n\
tfd:        7 events:       19 data:                7  pos:0 ino:ff sdev:8\n";
        assert!(epoll_watches(info, 0x2a3f));
        assert!(epoll_watches(info, 0xff));
        assert!(
            !epoll_watches(info, 0x1057),
            "the epoll's own inode is not watched"
        );
        assert!(!epoll_watches("garbage", 1));
    }

    fn watched_by_epoll(tid: i32, inode: u64) -> io::Result<bool> {
        Ok(epolls_watch(tid, &epoll_fds(tid)?, inode).unwrap_or(false))
    }

    #[test]
    fn start_times_are_read_and_stay() {
        let me = std::process::id() as i32;
        let first = start_time(me).unwrap();
        assert!(first > 0);
        assert_eq!(start_time(me).unwrap(), first);
        assert!(start_time(-1).is_err());
    }

    #[test]
    fn an_epoll_registration_is_found_by_inode_and_cloexec_is_read() {
        use std::os::fd::AsRawFd;
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (inode, _) =
            crate::sys::socket::inode_and_owner(std::os::fd::AsFd::as_fd(&sock)).unwrap();
        let me = std::process::id() as i32;
        assert!(!watched_by_epoll(me, inode).unwrap());
        let epoll =
            nix::sys::epoll::Epoll::new(nix::sys::epoll::EpollCreateFlags::empty()).unwrap();
        epoll
            .add(
                &sock,
                nix::sys::epoll::EpollEvent::new(nix::sys::epoll::EpollFlags::EPOLLIN, 1),
            )
            .unwrap();
        assert!(watched_by_epoll(me, inode).unwrap());
        drop(epoll);
        assert!(!watched_by_epoll(me, inode).unwrap());
        assert!(
            fd_cloexec(me, sock.as_raw_fd()).unwrap(),
            "std sockets are close-on-exec"
        );
    }

    #[test]
    fn socket_links_are_told_from_other_fds() {
        assert_eq!(parse_fd_link(b"socket:[123456]"), FdLink::Socket(123456));
        assert_eq!(parse_fd_link(b"/dev/null"), FdLink::Other);
        assert_eq!(parse_fd_link(b"pipe:[42]"), FdLink::Other);
        assert_eq!(parse_fd_link(b"socket:[12x]"), FdLink::Other);
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
        let me = std::process::id();
        let FdLink::Socket(ino) = fd_link(me, fd).unwrap() else {
            panic!("a UDP socket is not a socket link");
        };
        assert_eq!(open_sockets(&[me as i32]).get(&ino), Some(&(me, fd)));
        assert_eq!(
            fd_link(me, 1_000_000).unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
        assert_eq!(netns_of(Some(me)).unwrap(), netns_of(None).unwrap());
    }

    #[test]
    fn parent_survives_odd_command_names() {
        assert_eq!(state_and_parent("42 (a) b) S 7 42 42 0"), Some(('S', 7)));
        assert_eq!(state_and_parent("42 (sleep) Z 1 42"), Some(('Z', 1)));
        assert_eq!(state_and_parent("garbage"), None);
    }

    #[test]
    fn cached_identity_matches_proc() {
        let cache = IdentityCache::default();
        let me = std::process::id() as i32;
        assert_eq!(cache.get(me), identity(me).ok());
        assert_eq!(
            cache.get(me),
            identity(me).ok(),
            "second read comes from the cache"
        );
        assert_eq!(cache.get(i32::MAX), None, "no such thread");
    }

    #[test]
    fn own_identity() {
        let me = identity(std::process::id() as i32).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(!me.comm.is_empty());
    }

    #[test]
    fn children_are_found() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = descendants(std::process::id() as i32, &HashSet::new());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found.contains(&(child.id() as i32)));
    }

    #[test]
    fn excepted_subtrees_are_left_out() {
        // A child with a child of its own (the shell waits for its `sleep`).
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        let me = std::process::id() as i32;
        let all = descendants(me, &HashSet::new());
        let pruned = descendants(me, &HashSet::from([child.id() as i32]));
        let _ = std::process::Command::new("kill")
            .arg(grandchild.to_string())
            .status();
        child.wait().unwrap();
        assert!(all.contains(&grandchild) && all.contains(&(child.id() as i32)));
        assert!(!pruned.contains(&grandchild) && !pruned.contains(&(child.id() as i32)));
    }
}
