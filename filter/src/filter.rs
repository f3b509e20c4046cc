//! The outgoing traffic filter: for each connection the app makes and each name it looks
//! up, local or remote, following mirrord's rules (see `docs/configuration.md`).
//!
//! Connection order of checks, as in mirrord's layer:
//! 1. loopback or unspecified destination: local if `ignore_localhost`, or if the app itself
//!    listens on that port; otherwise on to the filter (the target's loopback);
//! 2. destination port 0: local;
//! 3. `tcp: false` / `udp: false`: local;
//! 4. the `local` or `remote` list, first matching entry in written order; no match: the
//!    other side; no list: remote.
//!
//! DNS: `dns` disabled: local. Otherwise the `dns.filter` list, with the host names of the
//! outgoing list merged in as mirrord does; no list: remote.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::{FilterList, ListKind, NetworkConfig};
use crate::decision::{Decision, Protocol, Route, RuleRef};
use crate::entry::{canonical, FilterEntry, HostPattern, Target};

/// A connection to decide on.
#[derive(Clone, Copy, Debug)]
pub struct Connection<'a> {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The destination the app asked for.
    pub addr: SocketAddr,
    /// The names this address was resolved from in this session (what the app looked up),
    /// most recent first; empty when the app used an address it did not look up.
    pub hostnames: &'a [&'a str],
    /// Whether the app itself listens on `addr`'s port with this protocol (only consulted
    /// for loopback and unspecified destinations).
    pub app_listens_on_port: bool,
}

#[derive(Clone, Debug)]
struct Rule {
    entry: FilterEntry,
    rule: RuleRef,
}

#[derive(Clone, Debug)]
struct Rules {
    kind: ListKind,
    rules: Vec<Rule>,
}

impl Rules {
    fn from_list(list: &FilterList) -> Self {
        Self {
            kind: list.kind,
            rules: list
                .entries
                .iter()
                .map(|listed| Rule {
                    entry: listed.entry.clone(),
                    rule: RuleRef::Entry {
                        text: Arc::from(listed.entry.text()),
                        key: listed.key.clone(),
                    },
                })
                .collect(),
        }
    }
}

/// Decides local or remote for connections and DNS queries. Built once per session from the
/// config; cheap to query, never fails.
#[derive(Clone, Debug)]
pub struct OutgoingFilter {
    tcp: bool,
    udp: bool,
    ignore_localhost: bool,
    outgoing: Option<Rules>,
    dns_enabled: bool,
    dns: Option<Rules>,
    search: Vec<String>,
}

impl OutgoingFilter {
    /// Builds the filter from `feature.network`.
    pub fn new(network: &NetworkConfig) -> Self {
        let outgoing = &network.outgoing;
        Self {
            tcp: outgoing.tcp,
            udp: outgoing.udp,
            ignore_localhost: outgoing.ignore_localhost,
            outgoing: outgoing.filter.as_ref().map(Rules::from_list),
            dns_enabled: network.dns.enabled,
            dns: dns_rules(network),
            search: Vec::new(),
        }
    }

    /// Search domains (e.g. the local `resolv.conf`'s `search` line) by which a name entry
    /// is also matched: with `["svc.cluster.local"]`, the entry `messages-db` matches
    /// `messages-db.svc.cluster.local`. Without them names match exactly.
    pub fn with_search_domains<I, S>(mut self, domains: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.search = domains
            .into_iter()
            .map(|domain| {
                let domain: String = domain.into();
                domain.trim_end_matches('.').to_ascii_lowercase()
            })
            .filter(|domain| !domain.is_empty())
            .collect();
        self
    }

    /// Whether names are resolved in the target at all (`feature.network.dns`).
    pub fn dns_enabled(&self) -> bool {
        self.dns_enabled
    }

    /// The host names of the outgoing `local` list. Names a resolver finds without DNS
    /// (`/etc/hosts`) never reach sctrace's DNS responder, so the caller may resolve these
    /// locally at start to learn which addresses they stand for.
    pub fn local_names(&self) -> Vec<&str> {
        match &self.outgoing {
            Some(rules) if rules.kind == ListKind::Local => rules
                .rules
                .iter()
                .filter_map(|rule| rule.entry.name())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Decides a connection when the app does not listen on the destination port.
    pub fn decide(&self, protocol: Protocol, addr: SocketAddr, hostnames: &[&str]) -> Decision {
        self.decide_connection(&Connection {
            protocol,
            addr,
            hostnames,
            app_listens_on_port: false,
        })
    }

    /// Decides a connection.
    pub fn decide_connection(&self, connection: &Connection<'_>) -> Decision {
        let ip = canonical(connection.addr.ip());
        if ip.is_loopback() || ip.is_unspecified() {
            if self.ignore_localhost {
                return Decision::new(Route::Local, RuleRef::IgnoreLocalhost);
            }
            if connection.app_listens_on_port {
                return Decision::new(Route::Local, RuleRef::LocalListener);
            }
        }
        if connection.addr.port() == 0 {
            return Decision::new(Route::Local, RuleRef::PortZero);
        }
        self.decide_target(
            connection.protocol,
            &Target {
                protocol: Some(connection.protocol),
                ip: Some(ip),
                port: Some(connection.addr.port()),
                names: connection.hostnames,
                search: &self.search,
            },
        )
    }

    /// Decides where a route probe goes: a datagram socket connected to port 0 of `addr`
    /// (glibc sorts `getaddrinfo`'s answers by such connects, RFC 6724). Nothing is ever sent
    /// there, so the probe goes where traffic to the address would: step 1 and steps 3 and 4
    /// with no port known (entries limited to a port don't match), not step 2's `port 0`.
    pub fn decide_probe(&self, addr: IpAddr, hostnames: &[&str]) -> Decision {
        let ip = canonical(addr);
        if (ip.is_loopback() || ip.is_unspecified()) && self.ignore_localhost {
            return Decision::new(Route::Local, RuleRef::IgnoreLocalhost);
        }
        self.decide_target(
            Protocol::Udp,
            &Target {
                protocol: Some(Protocol::Udp),
                ip: Some(ip),
                port: None,
                names: hostnames,
                search: &self.search,
            },
        )
    }

    /// Steps 3 and 4, also used by `explain` when the address or the port is not known.
    pub(crate) fn decide_target(&self, protocol: Protocol, target: &Target<'_>) -> Decision {
        match protocol {
            Protocol::Tcp if !self.tcp => return Decision::new(Route::Local, RuleRef::TcpDisabled),
            Protocol::Udp if !self.udp => return Decision::new(Route::Local, RuleRef::UdpDisabled),
            _ => {}
        }
        let Some(rules) = &self.outgoing else {
            return Decision::new(Route::Remote, RuleRef::Default);
        };
        match rules.rules.iter().find(|rule| rule.entry.matches(target)) {
            Some(rule) => Decision::new(rules.kind.route(), rule.rule.clone()),
            None => Decision::new(rules.kind.route().opposite(), RuleRef::Default),
        }
    }

    /// Decides where a name the app looks up is resolved. `name` is the name as queried
    /// (letter case and a trailing dot do not matter).
    pub fn decide_dns(&self, name: &str) -> Decision {
        if !self.dns_enabled {
            return Decision::new(Route::Local, RuleRef::DnsDisabled);
        }
        let Some(rules) = &self.dns else {
            return Decision::new(Route::Remote, RuleRef::Default);
        };
        let names = [name];
        let ip = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
            .map(canonical);
        let target = Target {
            protocol: None,
            ip,
            port: None,
            names: &names,
            search: &self.search,
        };
        let matches = |entry: &FilterEntry| match entry.host() {
            // A port-only entry cannot be judged without a port; ":0" matches every name.
            HostPattern::Any => entry.port().is_none(),
            _ => entry.host_matches(&target),
        };
        match rules.rules.iter().find(|rule| matches(&rule.entry)) {
            Some(rule) => Decision::new(rules.kind.route(), rule.rule.clone()),
            None => Decision::new(rules.kind.route().opposite(), RuleRef::Default),
        }
    }
}

/// The DNS list in effect: `dns.filter`, with the outgoing list's host names merged in as
/// mirrord does, so that a name is resolved on the side its connections go to:
///
/// | outgoing list \ dns.filter | none            | `local` L     | `remote` R    |
/// |----------------------------|-----------------|---------------|---------------|
/// | `local` names N            | `local` N       | `local` L + N | `remote` R    |
/// | `remote` names N           | none (remote)   | `local` L     | `remote` R + N|
fn dns_rules(network: &NetworkConfig) -> Option<Rules> {
    if !network.dns.enabled {
        return None;
    }
    let explicit = network.dns.filter.as_ref().map(Rules::from_list);
    let Some(outgoing) = &network.outgoing.filter else {
        return explicit;
    };
    let names: Vec<Rule> = Rules::from_list(outgoing)
        .rules
        .into_iter()
        .filter(|rule| rule.entry.name().is_some())
        .collect();
    match explicit {
        None if outgoing.kind == ListKind::Local && !names.is_empty() => Some(Rules {
            kind: ListKind::Local,
            rules: names,
        }),
        None => None,
        Some(mut rules) if rules.kind == outgoing.kind => {
            rules.rules.extend(names);
            Some(rules)
        }
        Some(rules) => Some(rules),
    }
}
