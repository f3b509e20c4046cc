//! The outcome of the filter for one connection or DNS query: local or remote, and the rule
//! that decided, in a form events and `sctrace explain` can show.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

/// Transport of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (stream sockets).
    Tcp,
    /// UDP (datagram sockets).
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// Where a connection is made or a name is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// On this machine, as if sctrace were not there.
    Local,
    /// In the target, through the agent.
    Remote,
}

impl Route {
    /// The other side.
    pub fn opposite(self) -> Self {
        match self {
            Self::Local => Self::Remote,
            Self::Remote => Self::Local,
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Local => "local",
            Self::Remote => "remote",
        })
    }
}

/// Why a decision was taken. Displays as the `rule` field of events: the filter entry as
/// written, or one of the fixed words below.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RuleRef {
    /// A filter entry matched.
    Entry {
        /// The entry as written, e.g. `tcp://10.0.0.0/8:5432`.
        text: Arc<str>,
        /// Where it was written, e.g. `feature.network.outgoing.filter.local[0]`.
        key: Arc<str>,
    },
    /// No entry matched (or there is no filter): the list's default applied. `default`.
    Default,
    /// `feature.network.outgoing.tcp` is false, so all TCP stays local. `tcp disabled`.
    TcpDisabled,
    /// `feature.network.outgoing.udp` is false, so all UDP stays local. `udp disabled`.
    UdpDisabled,
    /// A loopback or unspecified destination with `ignore_localhost` set. `ignore_localhost`.
    IgnoreLocalhost,
    /// A loopback destination on a port the app itself listens on. `local listener`.
    LocalListener,
    /// Destination port 0, which no remote peer can have. `port 0`.
    PortZero,
    /// `feature.network.dns` is disabled: names are resolved locally. `dns disabled`.
    DnsDisabled,
}

impl RuleRef {
    /// Where the deciding entry was written, for entry rules.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Entry { key, .. } => Some(key),
            _ => None,
        }
    }
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Entry { text, .. } => text,
            Self::Default => "default",
            Self::TcpDisabled => "tcp disabled",
            Self::UdpDisabled => "udp disabled",
            Self::IgnoreLocalhost => "ignore_localhost",
            Self::LocalListener => "local listener",
            Self::PortZero => "port 0",
            Self::DnsDisabled => "dns disabled",
        })
    }
}

impl Serialize for RuleRef {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Local or remote, and the rule that said so.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Decision {
    /// Where the connection is made or the name resolved.
    pub route: Route,
    /// What decided it.
    pub rule: RuleRef,
}

impl Decision {
    pub(crate) fn new(route: Route, rule: RuleRef) -> Self {
        Self { route, rule }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            RuleRef::Entry { text, key } => write!(f, "{} (rule {text:?}, {key})", self.route),
            rule => write!(f, "{} ({rule})", self.route),
        }
    }
}
