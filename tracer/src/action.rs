//! What a handler decides to do with a trapped call, as plain data. Only the supervisor's
//! responder turns it into an answer to the kernel.

use std::future::Future;
use std::pin::Pin;

use crate::errno::Errno;

/// The final answer to one trapped call.
#[derive(Debug)]
pub enum Reply {
    /// Let the kernel run the call as the app made it.
    Continue,
    /// The call returns this non-negative value.
    Return(i64),
    /// The call fails with this errno.
    Fail(Errno),
    /// The call returns a new fd: this socket, installed in the app (an emulated accept).
    InstallFd {
        /// The socket (sctrace's copy; the app gets its own fd for it).
        fd: std::os::fd::OwnedFd,
        /// Whether the app's fd is close-on-exec.
        cloexec: bool,
    },
}

impl PartialEq for Reply {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Reply::Continue, Reply::Continue) => true,
            (Reply::Return(a), Reply::Return(b)) => a == b,
            (Reply::Fail(a), Reply::Fail(b)) => a == b,
            _ => false,
        }
    }
}

impl Reply {
    /// The reply that reproduces a call's outcome as the supervisor observed it.
    pub fn from_result<T: Into<i64>>(result: Result<T, Errno>) -> Self {
        match result {
            Ok(v) => Reply::Return(v.into()),
            Err(e) => Reply::Fail(e),
        }
    }
}

/// Work that may wait (a blocking connect, the network) and so runs off the notification
/// loop; it yields the reply when done.
pub type Deferred = Pin<Box<dyn Future<Output = Reply> + Send + 'static>>;

/// A handler's decision.
pub enum Action {
    /// Answer now.
    Now(Reply),
    /// Answer when this work completes; other calls are served meanwhile.
    Defer(Deferred),
}

impl From<Reply> for Action {
    fn from(reply: Reply) -> Self {
        Action::Now(reply)
    }
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Now(r) => f.debug_tuple("Now").field(r).finish(),
            Action::Defer(_) => f.write_str("Defer(..)"),
        }
    }
}
