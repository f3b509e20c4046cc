//! Where the target routes datagrams from: the source address its kernel gives a UDP
//! socket connected to a destination, asked of the agent (`RouteQuery`) and remembered for a
//! while. A datagram socket the app connects to a remote peer shows it in `getsockname`,
//! and its connect fails as it would in the target (ENETUNREACH, ...): glibc's `getaddrinfo`
//! sorts its answers by exactly that (RFC 6724), one such connect per answer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sctrace_protocol::{OpenError, SessionHandle};

use crate::errno::Errno;
use crate::sockaddr::canonical_addr;

/// How long an answer is reused: routes change rarely, and a lookup asks once per address.
const KEEP: Duration = Duration::from_secs(10);
/// Destinations remembered at most; the cache starts over when full.
const MAX_ENTRIES: usize = 4096;

/// One route as the agent told it, and when.
type Known = (Instant, Result<IpAddr, Errno>);

/// The target's routes, as far as the app asked.
pub struct RouteSources {
    agent: SessionHandle,
    known: Mutex<HashMap<IpAddr, Known>>,
}

impl RouteSources {
    /// Routes asked through `agent`.
    pub fn new(agent: SessionHandle) -> Self {
        Self {
            agent,
            known: Mutex::default(),
        }
    }

    /// The source address the target's kernel picks for datagrams to `dst` (IPv4 for an
    /// IPv4 or v4-mapped destination), or the errno its `connect` gives.
    pub async fn source(&self, dst: SocketAddr) -> Result<IpAddr, Errno> {
        let dst = canonical_addr(dst);
        let now = Instant::now();
        if let Some((at, known)) = self
            .known
            .lock()
            .ok()
            .and_then(|k| k.get(&dst.ip()).copied())
        {
            if now.duration_since(at) < KEEP {
                return known;
            }
        }
        let found = match self.agent.probe_route(dst).await {
            Ok(local) => Ok(local.ip()),
            Err(OpenError::Failed { errno }) => Err(Errno(errno)),
            // The agent can't say (it is gone): the connect fails as remote ones then do.
            Err(_) => return Err(Errno(libc::ECONNABORTED)),
        };
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= MAX_ENTRIES {
                known.clear();
            }
            known.insert(dst.ip(), (now, found));
        }
        found
    }
}
