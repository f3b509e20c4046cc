//! Container mode's `socket()` for the inet domains: sctrace creates the socket (the kernel
//! checks the app's arguments and answers as it would the app: EAFNOSUPPORT, EINVAL,
//! EPROTONOSUPPORT...), holds a copy (`trap::owned`), and installs another fd of it in the
//! app as the call's result; an app whose fd table is full gets EMFILE from the install, as
//! from its own `socket()`.

use std::sync::Arc;

use crate::plan::{OnInstalled, Reply};
use crate::trap::owned::OwnedSockets;

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
