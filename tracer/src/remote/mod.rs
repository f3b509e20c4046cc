//! A relaying session's shared state: the filter, the agent session, the relays, the DNS
//! responder, and the app sockets sctrace manages (by socket identity).
//!
//! Handlers ask it where a connection goes ([`Remote::route`]); the executor uses its
//! pieces to carry remote decisions out. It never answers the kernel itself.

pub mod incoming;
pub mod routes;
pub mod sockets;
pub mod target_listeners;
pub mod target_sockets;

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sctrace_filter::config::Config;
use sctrace_filter::{Connection, OutgoingFilter, Protocol, Route};
use sctrace_protocol::SessionHandle;

use crate::agent_link::{AgentLink, DataRoute};
use crate::dns::names::NameCache;
use crate::dns::resolv_conf::{self, TargetResolver};
use crate::dns::DnsResponder;
use crate::events::EventSink;
use crate::relay::nameservers::NameserverRelays;
use crate::relay::parking::Parking;
use crate::relay::tcp::TcpRelay;
use crate::relay::udp::Policy;
use crate::sockaddr::canonical;
use incoming::Incoming;
use routes::RouteSources;
use sockets::ManagedSockets;

pub use crate::route::{Destination, Routed};

/// Unix sockets of local resolver services that would resolve names behind the intercept:
/// connects to them fail with ENOENT (as if the service were not running), so glibc falls
/// back to the DNS servers of resolv.conf, which sctrace answers.
const RESOLVER_SOCKETS: &[&str] = &[
    "/run/systemd/resolve/io.systemd.Resolve",
    "/var/run/nscd/socket",
    "/run/nscd/socket",
];

/// The relaying session.
pub struct Remote {
    /// Local or remote decisions.
    pub filter: Arc<OutgoingFilter>,
    /// The agent.
    pub agent: SessionHandle,
    /// The TCP relay listeners.
    pub tcp: TcpRelay,
    /// Where sockets wait for a remote connect's outcome.
    pub parking: Parking,
    /// The DNS responder.
    pub dns: Arc<DnsResponder>,
    /// The sockets standing for the local nameservers, shared by UDP associations.
    pub nameserver_relays: Arc<NameserverRelays>,
    /// Names resolved in this session.
    pub names: Arc<NameCache>,
    /// The app sockets sctrace manages.
    pub sockets: Arc<ManagedSockets>,
    /// The target's incoming traffic.
    pub incoming: Arc<incoming::Incoming>,
    /// Where the target routes datagrams from (shared with the DNS responder).
    pub routes: Arc<RouteSources>,
    /// Which datagrams from the target UDP associations take.
    pub udp_policy: Policy,
    /// Sockets of the target for remote TCP connects without a relay (a local agent only).
    pub direct: Option<Arc<target_sockets::TargetSockets>>,
    /// Data connections for remote TCP connects (an agent reached over plain TCP only).
    pub data: Option<DataRoute>,
    /// The app's listeners of ports stolen whole may move into the target (with `direct`).
    pub listeners_in_target: bool,
    /// The target's resolver configuration (its search list and options), for the app's
    /// own resolver.
    pub target_resolver: TargetResolver,
    /// The nameservers of the local resolv.conf (port 53) whose queries sctrace answers.
    nameservers: Vec<IpAddr>,
    /// (protocol, port) the app listens on, for the filter's loopback rule.
    listening: Mutex<HashSet<(Protocol, u16)>>,
    /// Set once the agent session ended.
    lost: AtomicBool,
}

/// Whether remote TCP connects may use sockets of the target (`SCTRACE_DIRECT_SOCKETS=0`
/// relays them all, to compare or to work around a problem).
fn direct_sockets_wanted() -> bool {
    std::env::var_os("SCTRACE_DIRECT_SOCKETS").is_none_or(|v| v != "0")
}

/// Whether the app's listeners of ports stolen whole may move into the target
/// (`SCTRACE_TARGET_LISTENERS=0` keeps them here, to compare or to work around a problem:
/// stolen connections are then handed over one by one).
fn target_listeners_wanted() -> bool {
    std::env::var_os("SCTRACE_TARGET_LISTENERS").is_none_or(|v| v != "0")
}

/// Whether DNS answers are cached and identical queries in flight shared
/// (`SCTRACE_DNS_CACHE=0` sends each query on its own, to compare or to work around a
/// problem).
fn dns_cache_wanted() -> bool {
    std::env::var_os("SCTRACE_DNS_CACHE").is_none_or(|v| v != "0")
}

impl Remote {
    /// Assembles the session state around an open agent link: the filter (with the local
    /// search list), the DNS responder, the relays, and the service of the agent's incoming
    /// connections.
    pub async fn start(
        config: &Config,
        link: &mut AgentLink,
        events: EventSink,
    ) -> io::Result<Arc<Remote>> {
        let resolv_conf = std::fs::read_to_string(resolv_conf::PATH).unwrap_or_default();
        let target_resolver = TargetResolver::ask(&link.handle).await;
        // A name rule matches a name under the local search domains and under the target's
        // (which the app's resolver now searches too, see TargetResolver).
        let filter = Arc::new(
            OutgoingFilter::new(&config.feature.network).with_search_domains(
                resolv_conf::search_domains(&resolv_conf)
                    .into_iter()
                    .chain(target_resolver.search.iter().cloned()),
            ),
        );
        let names = Arc::new(NameCache::default());
        let routes = Arc::new(RouteSources::new(link.handle.clone()));
        let dns = Arc::new(
            DnsResponder::new(
                Arc::clone(&filter),
                link.handle.clone(),
                Arc::clone(&names),
                Arc::clone(&routes),
                events.clone(),
            )
            .with_caching(dns_cache_wanted()),
        );
        let tcp = TcpRelay::start(Arc::clone(&dns), link.handoff.clone()).await?;
        let parking = Parking::start()?;
        let remote = Arc::new(Remote {
            filter,
            agent: link.handle.clone(),
            tcp,
            parking,
            nameserver_relays: NameserverRelays::new(Arc::clone(&dns)),
            dns,
            names,
            sockets: Arc::default(),
            incoming: Incoming::new(config.feature.network.incoming.clone(), link.handle.clone()),
            routes,
            udp_policy: Policy {
                replies: config.feature.network.outgoing.udp_replies,
                events,
            },
            direct: link
                .handoff
                .clone()
                .filter(|_| direct_sockets_wanted())
                .map(target_sockets::TargetSockets::start),
            data: link.data.clone(),
            listeners_in_target: target_listeners_wanted(),
            target_resolver,
            nameservers: resolv_conf::nameservers(&resolv_conf),
            listening: Mutex::default(),
            lost: AtomicBool::new(false),
        });
        remote.sockets.start_sweep();
        if let Some(requests) = link.requests.take() {
            tokio::spawn(Arc::clone(&remote.incoming).serve(requests));
        }
        // A local agent offers stolen connections as they are (unless every connection is
        // to be relayed).
        if let Some(handoff) = link.handoff.as_ref().filter(|_| direct_sockets_wanted()) {
            let incoming = Arc::clone(&remote.incoming);
            let runtime = tokio::runtime::Handle::current();
            handoff.take_offers(Arc::new(move |offer| incoming.take_offer(offer, &runtime)));
        }
        Ok(remote)
    }

    /// Whether `dst` is a nameserver of the local resolv.conf whose queries sctrace answers.
    pub fn answers_for(&self, dst: SocketAddr) -> bool {
        dst.port() == 53
            && self.filter.dns_enabled()
            && self.nameservers.contains(&canonical(dst.ip()))
    }

    /// Decides where a connection (or datagram) to `dst` goes.
    pub fn route(&self, protocol: Protocol, dst: SocketAddr) -> Routed {
        let ip = canonical(dst.ip());
        if self.answers_for(dst) {
            return Routed {
                to: Destination::Dns,
                rule: None,
                host: None,
                reresolve: None,
            };
        }
        let names = self.names.hostnames(ip);
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        if protocol == Protocol::Udp && dst.port() == 0 {
            // A route probe: it goes where traffic to the address would.
            let decision = self.filter.decide_probe(ip, &name_refs);
            return Routed {
                to: match decision.route {
                    Route::Local => Destination::Local,
                    Route::Remote => Destination::Remote,
                },
                rule: Some(decision.rule.to_string()),
                host: names.into_iter().next(),
                reresolve: None,
            };
        }
        let listens = self
            .listening
            .lock()
            .map(|l| l.contains(&(protocol, dst.port())))
            .unwrap_or(false);
        let decision = self.filter.decide_connection(&Connection {
            protocol,
            addr: SocketAddr::new(ip, dst.port()),
            hostnames: &name_refs,
            app_listens_on_port: listens,
        });
        let to = match decision.route {
            Route::Local => Destination::Local,
            Route::Remote => Destination::Remote,
        };
        let reresolve = if reresolves(to, dst) {
            self.names.remote_origin(ip)
        } else {
            None
        };
        Routed {
            to,
            rule: Some(decision.rule.to_string()),
            host: names.into_iter().next(),
            reresolve,
        }
    }

    /// Whether a connect to the Unix socket `path` must fail so that name lookups can't
    /// bypass sctrace's DNS responder.
    pub fn refuses_unix_path(&self, path: &[u8]) -> bool {
        self.filter.dns_enabled() && RESOLVER_SOCKETS.iter().any(|p| p.as_bytes() == path)
    }

    /// Notes that the app listens on `port` (a successful TCP listen or UDP bind).
    pub fn note_listening(&self, protocol: Protocol, port: u16) {
        if let Ok(mut l) = self.listening.lock() {
            l.insert((protocol, port));
        }
    }

    /// Marks the agent session as lost; returns whether it was the first time.
    pub fn mark_lost(&self) -> bool {
        !self.lost.swap(true, Ordering::SeqCst)
    }
}

/// Whether a connection the filter sent local to `dst` is connected where the name it came
/// from resolves locally (when `dst` came from the target's DNS). Not for loopback
/// destinations, and not for port 0: a datagram socket connected to port 0 only asks the
/// kernel for a route and a source address (getaddrinfo sorts its answers with one such
/// probe each, RFC 6724); nothing is ever sent there, so looking the name up again would
/// only add a local lookup to every probe.
fn reresolves(to: Destination, dst: SocketAddr) -> bool {
    to == Destination::Local && dst.port() != 0 && !canonical(dst.ip()).is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_local_connections_are_reresolved() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(reresolves(Destination::Local, at("198.18.0.10:80")));
        assert!(reresolves(Destination::Local, at("[2001:2::10]:80")));
        // Route probes, loopback, and what does not stay local.
        assert!(!reresolves(Destination::Local, at("198.18.0.10:0")));
        assert!(!reresolves(Destination::Local, at("[2001:2::10]:0")));
        assert!(!reresolves(Destination::Local, at("127.0.0.20:6379")));
        assert!(!reresolves(Destination::Local, at("[::ffff:127.0.0.1]:80")));
        assert!(!reresolves(Destination::Remote, at("198.18.0.10:80")));
        assert!(!reresolves(Destination::Dns, at("198.18.0.2:53")));
    }
}
