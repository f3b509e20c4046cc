//! Remote TCP connects made with a socket of the target's own (a local agent only): the
//! app's socket is replaced by one the agent created in the target's network namespace,
//! which sctrace connects there. From then on the kernel serves the app's fd as it would
//! in the target — no byte is relayed, and addresses, options and errors are the target's.
//!
//! Replacing the app's fd is safe only while nothing holds on to its old socket. An epoll
//! registration belongs to the open file, not to the fd number, so a socket an epoll
//! instance of the app's process already watches keeps the relay (event loops usually
//! register after connect returns). Also relayed: sockets already bound (to an address of
//! this machine) or bound to a device, with O_ASYNC, or with an option the target's socket
//! refuses; and everything when the agent cannot hand sockets over.
//!
//! Steps: the app socket's options that differ from a new socket's here are copied onto a
//! ready socket of the target; it is connected without blocking; a non-blocking app socket
//! then gets the kernel's own answer (EINPROGRESS, the outcome following through SO_ERROR
//! and poll as usual), a blocking one waits for the outcome as the kernel would (bounded by
//! SO_SNDTIMEO, then EINPROGRESS). A connected (or connecting) socket is installed over the
//! app's fd with the app's file flags and close-on-exec (`ADDFD` with `SETFD`, as `dup2`),
//! and the call answered. A connect that failed leaves the app's own socket in place.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, OnceLock};

use tokio::io::Interest;

use crate::errno::Errno;
use crate::events::{result_name, Record};
use crate::plan::Reply;
use crate::procfs;
use crate::remote::target_sockets::TargetSockets;
use crate::sockaddr::{in_family, SockAddr};
use crate::sys::socket as sys;
use crate::trap::owned::OwnedSockets;
use crate::trap::socket::AppSocket;

/// How an option's value is carried over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carry {
    /// As read.
    Same,
    /// Halved: the kernel doubles buffer sizes when they are set (and reports the double).
    Halved,
}

/// The options carried over when the app set them (level, name, how).
const OPTIONS: &[(i32, i32, Carry)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR, Carry::Same),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT, Carry::Same),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE, Carry::Same),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE, Carry::Same),
    (libc::SOL_SOCKET, libc::SO_PRIORITY, Carry::Same),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT, Carry::Same),
    (libc::SOL_SOCKET, libc::SO_MARK, Carry::Same),
    (libc::SOL_SOCKET, libc::SO_LINGER, Carry::Same),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO, Carry::Same),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO, Carry::Same),
    (libc::SOL_SOCKET, libc::SO_SNDBUF, Carry::Halved),
    (libc::SOL_SOCKET, libc::SO_RCVBUF, Carry::Halved),
    (libc::SOL_SOCKET, libc::SO_ZEROCOPY, Carry::Same),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY, Carry::Same),
    (libc::IPPROTO_TCP, libc::TCP_MAXSEG, Carry::Same),
    (libc::IPPROTO_TCP, libc::TCP_CORK, Carry::Same),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, Carry::Same),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, Carry::Same),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, Carry::Same),
    (libc::IPPROTO_TCP, libc::TCP_SYNCNT, Carry::Same),
    (libc::IPPROTO_TCP, libc::TCP_LINGER2, Carry::Same),
    (libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, Carry::Same),
    (libc::IPPROTO_TCP, libc::TCP_QUICKACK, Carry::Same),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, Carry::Same),
    (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, Carry::Same),
    (libc::IPPROTO_TCP, libc::TCP_FASTOPEN_CONNECT, Carry::Same),
    (libc::IPPROTO_TCP, libc::TCP_CONGESTION, Carry::Same),
];

/// More options of IPv4 sockets.
const OPTIONS_V4: &[(i32, i32, Carry)] = &[
    (libc::IPPROTO_IP, libc::IP_TOS, Carry::Same),
    (libc::IPPROTO_IP, libc::IP_TTL, Carry::Same),
    (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, Carry::Same),
    (libc::IPPROTO_IP, libc::IP_RECVERR, Carry::Same),
    (libc::IPPROTO_IP, libc::IP_FREEBIND, Carry::Same),
    (libc::IPPROTO_IP, libc::IP_TRANSPARENT, Carry::Same),
];

/// More options of IPv6 sockets.
const OPTIONS_V6: &[(i32, i32, Carry)] = &[
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, Carry::Same),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, Carry::Same),
    (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, Carry::Same),
    (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, Carry::Same),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVERR, Carry::Same),
];

fn options_of(v6: bool) -> impl Iterator<Item = &'static (i32, i32, Carry)> {
    OPTIONS
        .iter()
        .chain(if v6 { OPTIONS_V6 } else { OPTIONS_V4 })
}

/// One option to set on the target's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    level: i32,
    name: i32,
    value: Vec<u8>,
}

/// What a new socket of this machine has, per family (IPv4, IPv6): the values an app's
/// socket is compared with to see which options it set.
fn defaults(v6: bool) -> &'static [Option<Vec<u8>>] {
    static DEFAULTS: OnceLock<[Vec<Option<Vec<u8>>>; 2]> = OnceLock::new();
    let all = DEFAULTS.get_or_init(|| {
        let of = |v6: bool| {
            let fresh = sys::new_tcp_socket(v6).ok();
            options_of(v6)
                .map(|&(level, name, _)| {
                    fresh
                        .as_ref()
                        .and_then(|fd| sys::option_bytes(fd.as_fd(), level, name).ok())
                })
                .collect()
        };
        [of(false), of(true)]
    });
    &all[usize::from(v6)]
}

/// Why an app socket keeps the relay, or what its replacement needs.
#[derive(Debug)]
pub struct Prepared {
    /// An IPv6 socket.
    pub v6: bool,
    /// The app's file status flags (O_NONBLOCK, ...).
    pub flags: i32,
    /// The app's fd is close-on-exec.
    pub cloexec: bool,
    /// The options the app set.
    pub settings: Vec<Setting>,
}

/// Checks that the app's socket (fd `app_fd` of thread `tid`) can be replaced, and reads
/// what its replacement must have. `Err`: why it keeps the relay.
pub fn prepare(
    sock: &AppSocket,
    tid: i32,
    epolls: &crate::epolls::Epolls,
) -> Result<Prepared, &'static str> {
    let bound =
        SockAddr::parse(&sys::local_addr(sock.fd.as_fd()).map_err(|_| "unreadable address")?)
            .and_then(|a| a.inet())
            .is_some_and(|a| a.port() != 0);
    if bound {
        return Err("bound to an address of this machine");
    }
    replaceable(sock, tid, epolls)
}

/// What [`prepare`] checks but the address: a listener (bound, of course) is replaced by a
/// listener of the target (`execute::listener`).
pub fn replaceable(
    sock: &AppSocket,
    tid: i32,
    epolls: &crate::epolls::Epolls,
) -> Result<Prepared, &'static str> {
    let fd = sock.fd.as_fd();
    let v6 = match sock.family() {
        Ok(libc::AF_INET) => false,
        Ok(libc::AF_INET6) => true,
        _ => return Err("not an inet socket"),
    };
    if sys::protocol(fd) != Ok(libc::IPPROTO_TCP) {
        return Err("not plain TCP");
    }
    let device = sys::option_bytes(fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE)
        .map_err(|_| "unreadable device")?;
    if device.iter().any(|&b| b != 0) {
        return Err("bound to a device");
    }
    let flags = sys::file_flags(fd).map_err(|_| "unreadable flags")?;
    if flags & libc::O_ASYNC != 0 {
        return Err("O_ASYNC");
    }
    let cloexec = procfs::fd_cloexec(tid, sock.app_fd).map_err(|_| "unreadable fdinfo")?;
    let (inode, _) = sys::inode_and_owner(fd).map_err(|_| "unreadable inode")?;
    if epolls
        .watched(tid, inode)
        .map_err(|_| "unreadable fd table")?
    {
        return Err("watched by epoll");
    }
    Ok(Prepared {
        v6,
        flags,
        cloexec,
        settings: settings(fd, v6),
    })
}

/// The options of the app's socket that differ from a new socket's.
fn settings(fd: BorrowedFd<'_>, v6: bool) -> Vec<Setting> {
    options_of(v6)
        .zip(defaults(v6))
        .filter_map(|(&(level, name, carry), default)| {
            let value = sys::option_bytes(fd, level, name).ok()?;
            if default.as_ref() == Some(&value) {
                return None;
            }
            let value = match carry {
                Carry::Same => value,
                Carry::Halved => {
                    let bytes: [u8; 4] = value.as_slice().try_into().ok()?;
                    (i32::from_ne_bytes(bytes) / 2).to_ne_bytes().to_vec()
                }
            };
            Some(Setting { level, name, value })
        })
        .collect()
}

/// The options of `from` that differ from a new socket's, to set on another socket with
/// [`apply_options`] (best effort: an accepted socket inherits its listener's options).
pub fn options_to_carry(from: BorrowedFd<'_>) -> Vec<Setting> {
    settings(from, sys::domain(from) == Ok(libc::AF_INET6))
}

/// Sets `settings` on `to`, as far as it takes them.
pub fn apply_options(settings: &[Setting], to: BorrowedFd<'_>) {
    for setting in settings {
        if let Err(err) = sys::set_option_bytes(to, setting.level, setting.name, &setting.value) {
            tracing::debug!(
                "option {}/{} not carried over: {err}",
                setting.level,
                setting.name
            );
        }
    }
}

/// Connects a socket of the target to `dst` in place of the app's socket. `None`: no
/// socket of the target could be had, or it refused an option — the caller relays instead.
pub async fn connect(
    direct: &Arc<TargetSockets>,
    prepared: Prepared,
    sock: &AppSocket,
    dst: SocketAddr,
    owned: Option<&OwnedSockets>,
    record: Option<Record>,
) -> Result<Reply, Option<Record>> {
    let Some(socket) = direct.take(prepared.v6).await else {
        return Err(record);
    };
    for setting in &prepared.settings {
        if let Err(err) =
            sys::set_option_bytes(socket.as_fd(), setting.level, setting.name, &setting.value)
        {
            tracing::debug!(
                "the target's socket refuses option {}/{}: {err}; relaying",
                setting.level,
                setting.name
            );
            return Err(record);
        }
    }
    let connected = connect_as_app(socket, &prepared, sock, in_family(dst, prepared.v6)).await;
    let (socket, then) = match connected {
        Ok((socket, Some(value))) => (Some(socket), Ok(value)),
        Ok((socket, None)) => (Some(socket), Err(Errno(libc::EINPROGRESS))),
        Err(errno) => (None, Err(errno)),
    };
    if let Some(mut record) = record {
        record.set_path("direct");
        record.finish(result_name(&then));
    }
    if let (Some(owned), Some(fd)) = (owned, &socket) {
        // Container mode: the installed socket is not one sctrace holds; the kernel answers
        // the app's later calls on it.
        if let Ok((ino, _)) = sys::inode_and_owner(fd.as_fd()) {
            owned.remember_released(ino);
        }
    }
    Ok(match socket {
        Some(fd) => Reply::ReplaceFd {
            fd,
            target: sock.app_fd,
            cloexec: prepared.cloexec,
            then,
        },
        None => Reply::from_result(then),
    })
}

/// Connects `socket` to `dst` as the app's connect would go: the socket to install and the
/// call's value (`None`: EINPROGRESS, the connection under way), or the call's error.
async fn connect_as_app(
    socket: OwnedFd,
    prepared: &Prepared,
    sock: &AppSocket,
    dst: SocketAddr,
) -> Result<(OwnedFd, Option<i64>), Errno> {
    let bytes = SockAddr::encode_inet(dst);
    sys::set_file_flags(socket.as_fd(), libc::O_RDWR | libc::O_NONBLOCK)?;
    let started = sys::connect(socket.as_fd(), Some(&bytes), bytes.len() as i32);
    let nonblocking = prepared.flags & libc::O_NONBLOCK != 0;
    let outcome = match started {
        Ok(()) => Some(0),
        Err(Errno(libc::EINPROGRESS)) if nonblocking => None,
        Err(Errno(libc::EINPROGRESS)) => {
            let timeout = sys::send_timeout(sock.fd.as_fd()).ok().flatten();
            let copy = socket.try_clone().map_err(|e| Errno::from_io(&e))?;
            let outcome = wait_connected(copy, timeout).await?;
            if outcome.is_some() {
                // Asked again, as the kernel's blocking connect does when it wakes: the
                // socket becomes connected for the app's later calls (EISCONN).
                match sys::connect(socket.as_fd(), Some(&bytes), bytes.len() as i32) {
                    Ok(()) | Err(Errno(libc::EISCONN)) => {}
                    Err(err) => return Err(err),
                }
            }
            outcome
        }
        Err(err) => return Err(err),
    };
    sys::set_file_flags(socket.as_fd(), prepared.flags)?;
    Ok((socket, outcome))
}

/// Waits for a connect under way to finish, at most `timeout`: `Some(0)` connected,
/// `None` still under way when the timeout expired (a blocking connect then returns
/// EINPROGRESS), or the error it failed with.
async fn wait_connected(
    copy: OwnedFd,
    timeout: Option<std::time::Duration>,
) -> Result<Option<i64>, Errno> {
    let watched = sys::watch(copy, Interest::WRITABLE).map_err(|e| Errno::from_io(&e))?;
    let done = async {
        let _ready = watched.writable().await.map_err(|e| Errno::from_io(&e))?;
        match sys::take_error(watched.get_ref().as_fd())? {
            0 => Ok(Some(0)),
            errno => Err(Errno(errno)),
        }
    };
    match timeout {
        Some(limit) => tokio::time::timeout(limit, done).await.unwrap_or(Ok(None)),
        None => done.await,
    }
}
