//! `sctrace explain`: what the filter decides for one destination, without running anything.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use serde::Serialize;

use crate::config::Config;
use crate::decision::{Decision, Protocol, Route};
use crate::entry::{canonical, HostPattern, Target};
use crate::filter::OutgoingFilter;

/// The destination as understood from the command line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExplainHost {
    /// A host name, looked up by the app before it connects.
    Name(String),
    /// An address the app connects to directly.
    Addr(IpAddr),
}

/// What sctrace would do with a connection to one destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The destination as given.
    pub query: String,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The host part.
    pub host: ExplainHost,
    /// The port, when given.
    pub port: Option<u16>,
    /// For a name: where it is resolved.
    pub dns: Option<Decision>,
    /// Where the connection is made.
    pub connection: Decision,
    /// Caveats about this answer.
    pub notes: Vec<String>,
}

/// The destination could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a destination: write HOST, HOST:PORT, ADDRESS, ADDRESS:PORT or [IPv6]:PORT")]
pub struct ExplainError(pub String);

fn parse_destination(text: &str) -> Result<(ExplainHost, Option<u16>), ExplainError> {
    let bad = || ExplainError(text.to_owned());
    let port = |digits: &str| digits.parse::<u16>().map_err(|_| bad());
    if let Some(inner) = text.strip_prefix('[') {
        let (addr, after) = inner.split_once(']').ok_or_else(bad)?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| bad())?;
        let port = match after {
            "" => None,
            _ => Some(port(after.strip_prefix(':').ok_or_else(bad)?)?),
        };
        return Ok((ExplainHost::Addr(IpAddr::V6(addr)), port));
    }
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok((ExplainHost::Addr(addr), None));
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Ok((ExplainHost::Addr(socket.ip()), Some(socket.port())));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, digits)) => (host, Some(port(digits)?)),
        None => (text, None),
    };
    // Reuse the filter grammar's host-name rules.
    match host.parse::<crate::entry::FilterEntry>() {
        Ok(entry) if entry.name().is_some() && !host.contains('/') => {
            Ok((ExplainHost::Name(host.to_owned()), port))
        }
        _ => Err(bad()),
    }
}

/// Explains the decisions for `destination` (`HOST`, `HOST:PORT`, `ADDRESS[:PORT]`,
/// `[IPv6]:PORT`) over `protocol`, as the session would take them.
pub fn explain(
    config: &Config,
    destination: &str,
    protocol: Protocol,
) -> Result<Explanation, ExplainError> {
    let (host, port) = parse_destination(destination)?;
    let filter = OutgoingFilter::new(&config.feature.network);
    let list = config.feature.network.outgoing.filter.as_ref();
    let mut notes = Vec::new();
    if port.is_none() && list.is_some_and(|l| l.entries.iter().any(|e| e.entry.port().is_some())) {
        notes.push("no port given: entries limited to a port were not considered".to_owned());
    }
    let (dns, connection) = match &host {
        ExplainHost::Addr(addr) => {
            let decision = match port {
                Some(port) => filter.decide(protocol, SocketAddr::new(*addr, port), &[]),
                None => {
                    let ip = canonical(*addr);
                    let loopback = ip.is_loopback() || ip.is_unspecified();
                    if loopback && config.feature.network.outgoing.ignore_localhost {
                        filter.decide(protocol, SocketAddr::new(*addr, 1), &[])
                    } else {
                        filter.decide_target(
                            protocol,
                            &Target {
                                protocol: Some(protocol),
                                ip: Some(ip),
                                port: None,
                                names: &[],
                                search: &[],
                            },
                        )
                    }
                }
            };
            if canonical(*addr).is_loopback() && !config.feature.network.outgoing.ignore_localhost {
                notes.push(
                    "a loopback port the app itself listens on always stays local".to_owned(),
                );
            }
            (None, decision)
        }
        ExplainHost::Name(name) => {
            let dns = filter.decide_dns(name);
            let names = [name.as_str()];
            let connection = filter.decide_target(
                protocol,
                &Target {
                    protocol: Some(protocol),
                    ip: None,
                    port,
                    names: &names,
                    search: &[],
                },
            );
            if list.is_some_and(|l| {
                l.entries.iter().any(|e| {
                    matches!(
                        e.entry.host(),
                        HostPattern::Addr(_) | HostPattern::Subnet(_)
                    )
                })
            }) {
                notes.push(format!(
                    "address and subnet entries were not checked: the address of {name:?} is only known when it is resolved"
                ));
            }
            if dns.route != connection.route {
                notes.push(match dns.route {
                    Route::Local => format!(
                        "{name:?} is resolved locally but connections to it go through the target, which must reach that address"
                    ),
                    Route::Remote => format!(
                        "{name:?} is resolved in the target but connections to it are made locally: the address from the target may not be reachable from this machine"
                    ),
                });
            }
            (Some(dns), connection)
        }
    };
    Ok(Explanation {
        query: destination.to_owned(),
        protocol,
        host,
        port,
        dns,
        connection,
        notes,
    })
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} over {}", self.query, self.protocol)?;
        if let Some(dns) = &self.dns {
            writeln!(f, "  dns:        {dns}")?;
        }
        write!(f, "  connection: {}", self.connection)?;
        for note in &self.notes {
            write!(f, "\n  note: {note}")?;
        }
        Ok(())
    }
}
