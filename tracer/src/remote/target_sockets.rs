//! Sockets of the target for remote TCP connects made without a relay (`execute::direct`):
//! a local agent creates them in the target's network namespace and hands them over its
//! handoff channel. A few are kept ready per family, so that a connect does not wait for
//! the agent; each is used once.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::agent_link::Handoff;
use crate::sys::socket as sys;

/// Sockets kept ready per family.
const KEEP: usize = 4;
/// How long a connect waits for a socket when none is ready.
const WAIT: Duration = Duration::from_secs(2);

/// The ready sockets and how to get more.
#[derive(Debug)]
pub struct TargetSockets {
    handoff: Handoff,
    /// Ready sockets: IPv4, IPv6.
    ready: Mutex<[Vec<OwnedFd>; 2]>,
    /// A refill is under way: IPv4, IPv6.
    refilling: [AtomicBool; 2],
    /// The family is not to be asked for again (the agent cannot make it, or never
    /// answers): IPv4, IPv6.
    given_up: [AtomicBool; 2],
    /// The target's network namespace, as `SO_NETNS_COOKIE` names it, once a socket came.
    netns: Mutex<Option<u64>>,
    /// The app's epoll instances (a socket one of them watches is not replaced).
    pub epolls: crate::epolls::Epolls,
}

impl TargetSockets {
    /// Starts keeping sockets of both families ready.
    pub fn start(handoff: Handoff) -> Arc<TargetSockets> {
        let sockets = Arc::new(TargetSockets {
            handoff,
            ready: Mutex::default(),
            refilling: Default::default(),
            given_up: Default::default(),
            netns: Mutex::default(),
            epolls: Default::default(),
        });
        sockets.refill(false);
        sockets.refill(true);
        sockets
    }

    /// A new, unconnected TCP socket of the target, if one can be had within [`WAIT`].
    pub async fn take(self: &Arc<Self>, v6: bool) -> Option<OwnedFd> {
        let family = usize::from(v6);
        if self.given_up[family].load(Ordering::Relaxed) {
            return None;
        }
        let ready = self.ready.lock().ok().and_then(|mut r| r[family].pop());
        let socket = match ready {
            Some(socket) => Some(socket),
            None => self.ask(v6).await,
        };
        self.refill(v6);
        socket
    }

    /// Whether `fd` is a socket of the target's network namespace (such a socket in the
    /// app is one sctrace installed, and the kernel serves it as in the target).
    pub fn is_of_target(&self, fd: std::os::fd::BorrowedFd<'_>) -> bool {
        let known = self.netns.lock().ok().and_then(|n| *n);
        match (known, sys::netns_cookie(fd)) {
            (Some(target), Ok(cookie)) => target == cookie,
            _ => false,
        }
    }

    /// Asks the agent for one socket.
    async fn ask(&self, v6: bool) -> Option<OwnedFd> {
        let Some(answer) = self.handoff.ask_socket(v6) else {
            self.give_up(v6, "the handoff channel is closed");
            return None;
        };
        match tokio::time::timeout(WAIT, answer).await {
            Ok(Ok(Ok(socket))) => {
                // Without the namespace cookie (before Linux 5.14) installed sockets could
                // not be told apart later: then none is used.
                match sys::netns_cookie(socket.as_fd()) {
                    Ok(cookie) => {
                        if let Ok(mut netns) = self.netns.lock() {
                            netns.get_or_insert(cookie);
                        }
                        Some(socket)
                    }
                    Err(err) => {
                        self.give_up(v6, &format!("SO_NETNS_COOKIE: {err}"));
                        None
                    }
                }
            }
            Ok(Ok(Err(errno))) => {
                // The target has no such family: relay this family's connections. (Out of
                // resources: only this connection is relayed.)
                if errno.0 == libc::EAFNOSUPPORT {
                    self.give_up(v6, &errno.to_string());
                }
                None
            }
            Ok(Err(_)) => {
                self.give_up(v6, "the agent closed the handoff channel");
                None
            }
            Err(_) => {
                // An agent that does not know the request (another version) never answers.
                self.give_up(v6, "the agent does not answer socket requests");
                None
            }
        }
    }

    fn give_up(&self, v6: bool, why: &str) {
        if !self.given_up[usize::from(v6)].swap(true, Ordering::Relaxed) {
            tracing::debug!(
                "remote IPv{} connections are relayed: {why}",
                if v6 { 6 } else { 4 }
            );
        }
    }

    /// Tops the family's ready sockets up to [`KEEP`] in the background.
    fn refill(self: &Arc<Self>, v6: bool) {
        let family = usize::from(v6);
        if self.given_up[family].load(Ordering::Relaxed)
            || self.refilling[family].swap(true, Ordering::AcqRel)
        {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let have = me.ready.lock().map(|r| r[family].len()).unwrap_or(KEEP);
                if have >= KEEP {
                    break;
                }
                match me.ask(v6).await {
                    Some(socket) => {
                        if let Ok(mut ready) = me.ready.lock() {
                            ready[family].push(socket);
                        }
                    }
                    None => break,
                }
            }
            me.refilling[family].store(false, Ordering::Release);
        });
    }
}
