//! Files sctrace creates for the app and installs as the call's result:
//!
//! - Container mode's `socket()` for the inet domains: sctrace creates the socket (the
//!   kernel checks the app's arguments and answers as it would the app: EAFNOSUPPORT,
//!   EINVAL, EPROTONOSUPPORT...), holds a copy (`trap::owned`), and installs another fd of
//!   it in the app.
//! - `epoll_create1` in sessions that hand sockets of the target over: the instance is
//!   counted once it is in the app's fd table (see `epolls`).
//!
//! An app whose fd table is full gets EMFILE from the install, as from its own call.

use std::sync::Arc;

use nix::sys::epoll::{Epoll, EpollCreateFlags};

use crate::errno::Errno;
use crate::plan::{OnInstalled, Reply};
use crate::remote::target_sockets::TargetSockets;
use crate::trap::owned::OwnedSockets;

/// Creates an epoll instance (`epoll_create1(flags)`; bad flags get EINVAL, as from the
/// kernel) and makes the answer that installs it.
pub fn epoll(direct: Arc<TargetSockets>, flags: i32) -> Reply {
    if flags & !libc::EPOLL_CLOEXEC != 0 {
        return Reply::Fail(Errno(libc::EINVAL));
    }
    match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
        Ok(epoll) => Reply::InstallFd {
            fd: epoll.0,
            cloexec: flags & libc::EPOLL_CLOEXEC != 0,
            then: Some(OnInstalled(Box::new(move |_| direct.epolls.made_one()))),
        },
        Err(errno) => Reply::Fail(Errno(errno as i32)),
    }
}

/// Creates the socket and makes the answer that installs it.
pub fn socket(
    owner: Arc<OwnedSockets>,
    tid: u32,
    domain: i32,
    sock_type: i32,
    protocol: i32,
) -> Reply {
    match owner.create(domain, sock_type, protocol) {
        Ok(created) => {
            let ino = created.ino;
            Reply::InstallFd {
                fd: created.fd,
                cloexec: created.cloexec,
                then: Some(OnInstalled(Box::new(move |fd| {
                    owner.installed(ino, tid, fd)
                }))),
            }
        }
        Err(errno) => Reply::Fail(errno),
    }
}
