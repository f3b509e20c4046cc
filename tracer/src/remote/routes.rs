//! Where the target routes datagrams from: the source address its kernel gives a UDP
//! socket connected to a destination, asked of the agent (`RouteQuery`) and remembered for a
//! while. A datagram socket the app connects to a remote peer shows it in `getsockname`,
//! and its connect fails as it would in the target (ENETUNREACH, ...): glibc's `getaddrinfo`
//! sorts its answers by exactly that (RFC 6724), one such connect per answer — right after
//! the lookup, one after the other. So the DNS responder asks for the routes of the
//! addresses in a remote answer as soon as it has the answer ([`RouteSources::prefetch`]),
//! and the sorting connects find them known or under way: one round trip to the agent for
//! all of them, at the same time as the answer reaches the app.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sctrace_protocol::{OpenError, SessionHandle};

use crate::dns::flights::Flights;
use crate::errno::Errno;
use crate::sockaddr::{canonical, canonical_addr};

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
    asking: Flights<IpAddr, Result<IpAddr, Errno>>,
}

impl RouteSources {
    /// Routes asked through `agent`.
    pub fn new(agent: SessionHandle) -> Self {
        Self {
            agent,
            known: Mutex::default(),
            asking: Flights::default(),
        }
    }

    /// The source address the target's kernel picks for datagrams to `dst` (IPv4 for an
    /// IPv4 or v4-mapped destination), or the errno its `connect` gives.
    pub async fn source(&self, dst: SocketAddr) -> Result<IpAddr, Errno> {
        let dst = canonical_addr(dst);
        if let Some(known) = self.known(dst.ip(), Instant::now()) {
            return known;
        }
        self.ask(dst).await
    }

    /// The source address for `dst`, or the errno, when the agent told it less than
    /// [`KEEP`] ago: what [`RouteSources::source`] would give at once, without waiting.
    pub fn cached(&self, dst: SocketAddr) -> Option<Result<IpAddr, Errno>> {
        self.known(canonical(dst.ip()), Instant::now())
    }

    /// Starts asking for the route to `ip` unless it is known or being asked already.
    pub fn prefetch(self: &Arc<Self>, ip: IpAddr) {
        let ip = canonical(ip);
        if self.known(ip, Instant::now()).is_some() || self.asking.flying(&ip) {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let _ = me.ask(SocketAddr::new(ip, 0)).await;
        });
    }

    /// What the agent said about `ip` less than [`KEEP`] ago.
    fn known(&self, ip: IpAddr, now: Instant) -> Option<Result<IpAddr, Errno>> {
        let known = self.known.lock().ok()?;
        let (at, route) = known.get(&ip)?;
        (now.duration_since(*at) < KEEP).then_some(*route)
    }

    /// Asks the agent (or joins the question under way) and remembers the answer.
    async fn ask(&self, dst: SocketAddr) -> Result<IpAddr, Errno> {
        self.asking
            .join(dst.ip(), || async {
                let asked_at = Instant::now();
                let found = match self.agent.probe_route(dst).await {
                    Ok(local) => Ok(local.ip()),
                    Err(OpenError::Failed { errno }) => Err(Errno(errno)),
                    // The agent can't say (it is gone): the connect fails as remote ones
                    // then do; nothing is remembered.
                    Err(_) => return Err(Errno(libc::ECONNABORTED)),
                };
                if let Ok(mut known) = self.known.lock() {
                    if known.len() >= MAX_ENTRIES {
                        known.clear();
                    }
                    known.insert(dst.ip(), (asked_at, found));
                }
                found
            })
            .await
    }
}
