//! One entry of an outgoing or DNS filter list, in mirrord's grammar
//! `[tcp://|udp://|any://][host | a.b.c.d | [ipv6]][/prefix][:port]`, and whether a
//! connection or a name matches it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Serialize, Serializer};

/// Which transport an entry applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolMatch {
    /// No protocol written, or `any://`: TCP and UDP.
    Any,
    /// `tcp://`
    Tcp,
    /// `udp://`
    Udp,
}

/// The host part of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// No host written (`:8080`, `tcp://`): every destination.
    Any,
    /// A host name, stored lowercase without a trailing dot. Matches connections to the
    /// addresses this name was resolved to in the session; `localhost` also matches every
    /// loopback address.
    Name(String),
    /// One address (IPv4-mapped IPv6 addresses are stored as IPv4). `0.0.0.0` and `[::]`
    /// mean any address, as in mirrord.
    Addr(IpAddr),
    /// A subnet such as `10.0.0.0/8` or `[fd00::]/64` (host bits are cleared).
    Subnet(IpNet),
}

/// A parsed filter entry; displays as written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FilterEntry {
    text: String,
    protocol: ProtocolMatch,
    host: HostPattern,
    /// `None`: any port (no port written, or `:0` as mirrord reads it).
    port: Option<u16>,
}

/// Why an entry could not be read; the message is meant for the user.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EntryError(String);

fn fail<T>(message: impl Into<String>) -> Result<T, EntryError> {
    Err(EntryError(message.into()))
}

/// Longest host name (RFC 1035), without the trailing dot.
const MAX_NAME: usize = 253;
/// Longest label of a host name.
const MAX_LABEL: usize = 63;

impl FromStr for FilterEntry {
    type Err = EntryError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim().is_empty() {
            return fail("empty filter entry (write \"any://\" to match everything)");
        }
        if text.trim() != text {
            return fail("remove the spaces around the entry");
        }
        let (protocol, rest) = match text.split_once("://") {
            Some((protocol, rest)) => {
                let protocol = match protocol.to_ascii_lowercase().as_str() {
                    "tcp" => ProtocolMatch::Tcp,
                    "udp" => ProtocolMatch::Udp,
                    "any" => ProtocolMatch::Any,
                    _ => {
                        return fail(format!(
                            "unknown protocol {protocol:?} (use tcp://, udp:// or any://)"
                        ))
                    }
                };
                (protocol, rest)
            }
            None => (ProtocolMatch::Any, text),
        };
        let (host_text, rest) = split_host(rest)?;
        let (prefix, rest) = match rest.strip_prefix('/') {
            Some(after) => {
                let end = after.find(':').unwrap_or(after.len());
                let (digits, rest) = after.split_at(end);
                (Some(digits), rest)
            }
            None => (None, rest),
        };
        let port = match rest.strip_prefix(':') {
            Some(digits) => Some(parse_port(digits)?),
            None if rest.is_empty() => None,
            None => return fail(format!("unexpected {rest:?} in the entry")),
        };
        let host = match (host_text, prefix) {
            (HostText::None, None) => HostPattern::Any,
            (HostText::None, Some(_)) => {
                return fail("a subnet needs an address before the '/', e.g. 10.0.0.0/8")
            }
            (HostText::Plain(word), None) => plain_host(word)?,
            (HostText::Plain(word), Some(prefix)) => {
                let addr = match plain_host(word)? {
                    HostPattern::Addr(addr) => addr,
                    _ => {
                        return fail(format!(
                            "a subnet needs an IP address before the '/', not the name {word:?}"
                        ))
                    }
                };
                subnet(addr, prefix)?
            }
            (HostText::Bracketed(addr), None) => HostPattern::Addr(canonical(IpAddr::V6(addr))),
            (HostText::Bracketed(addr), Some(prefix)) => subnet(IpAddr::V6(addr), prefix)?,
        };
        Ok(Self {
            text: text.to_owned(),
            protocol,
            host,
            port: port.filter(|port| *port != 0),
        })
    }
}

enum HostText<'a> {
    None,
    Plain(&'a str),
    Bracketed(Ipv6Addr),
}

/// Splits the host off the front: `[v6]`, or a run of name/IPv4 characters.
fn split_host(rest: &str) -> Result<(HostText<'_>, &str), EntryError> {
    if let Some(inner) = rest.strip_prefix('[') {
        let Some(end) = inner.find(']') else {
            return fail("missing ']' after the IPv6 address");
        };
        let (address, after) = inner.split_at(end);
        let after = after.get(1..).unwrap_or("");
        if address.contains('%') {
            return fail("IPv6 zone indexes (%…) are not supported in filter entries");
        }
        return match address.parse::<Ipv6Addr>() {
            Ok(address) => Ok((HostText::Bracketed(address), after)),
            Err(_) => fail(format!("{address:?} is not a valid IPv6 address")),
        };
    }
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        .unwrap_or(rest.len());
    let (word, after) = rest.split_at(end);
    if let Some(bad) = after.chars().next().filter(|c| !matches!(c, '/' | ':')) {
        return fail(format!("invalid character {bad:?} in the host"));
    }
    if after
        .strip_prefix(':')
        .is_some_and(|tail| tail.contains(':'))
    {
        // "fd00::1", "::1" or "fd00::1:80": an IPv6 address written without brackets.
        return fail("write IPv6 addresses in brackets, e.g. [fd00::1]:8080");
    }
    if word.is_empty() {
        return Ok((HostText::None, after));
    }
    Ok((HostText::Plain(word), after))
}

/// A name or an IPv4 address.
fn plain_host(word: &str) -> Result<HostPattern, EntryError> {
    if let Some(ip) = written_ip(word) {
        return Ok(HostPattern::Addr(canonical(ip)));
    }
    let name = word.strip_suffix('.').unwrap_or(word);
    let last_label = name.rsplit('.').next().unwrap_or(name);
    if !last_label.is_empty() && last_label.chars().all(|c| c.is_ascii_digit()) {
        if name.contains('.') {
            return fail(format!("{word:?} is not a valid IPv4 address"));
        }
        return fail(format!(
            "{word:?} is not a host name; write \":{word}\" for a port"
        ));
    }
    if name.len() > MAX_NAME {
        return fail(format!("host name is longer than {MAX_NAME} characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return fail(format!(
                "{word:?} has an empty label (two dots in a row, or a leading dot)"
            ));
        }
        if label.len() > MAX_LABEL {
            return fail(format!(
                "{word:?} has a label longer than {MAX_LABEL} characters"
            ));
        }
    }
    Ok(HostPattern::Name(name.to_ascii_lowercase()))
}

fn written_ip(word: &str) -> Option<IpAddr> {
    word.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

fn subnet(addr: IpAddr, prefix: &str) -> Result<HostPattern, EntryError> {
    if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_digit()) {
        return fail(format!("invalid subnet prefix length {prefix:?}"));
    }
    let (max, family) = match addr {
        IpAddr::V4(_) => (32, "IPv4"),
        IpAddr::V6(_) => (128, "IPv6"),
    };
    let len: u32 = prefix.parse().unwrap_or(u32::MAX);
    if len > max {
        return fail(format!(
            "prefix length {prefix} is too long for an {family} address (at most {max})"
        ));
    }
    let len = u8::try_from(len).unwrap_or(u8::MAX);
    let net = IpNet::new(addr, len)
        .map_err(|_| EntryError(format!("invalid subnet prefix length {prefix:?}")))?;
    Ok(HostPattern::Subnet(canonical_net(net.trunc())))
}

fn parse_port(digits: &str) -> Result<u16, EntryError> {
    if digits.is_empty() {
        return fail("missing port number after ':'");
    }
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return fail(format!(
            "invalid port {digits:?} (ports are numbers, 0-65535)"
        ));
    }
    match digits.parse::<u16>() {
        Ok(port) => Ok(port),
        Err(_) => fail(format!("port {digits} is out of range (0-65535)")),
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are the IPv4 address they carry.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        IpAddr::V4(_) => ip,
    }
}

/// A subnet inside `::ffff:0:0/96` is the IPv4 subnet it maps.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if v6.prefix_len() >= 96 {
            if let Some(v4) = v6.network().to_ipv4_mapped() {
                if let Ok(mapped) = IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96) {
                    return mapped;
                }
            }
        }
    }
    net
}

/// Whether `name` is `entry`, or `entry` completed by one of `search` (the resolver's search
/// domains), ignoring letter case and a trailing dot. `entry` is already normalised.
pub(crate) fn name_matches(entry: &str, name: &str, search: &[String]) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.eq_ignore_ascii_case(entry) {
        return true;
    }
    let Some(rest) = name
        .get(..entry.len())
        .filter(|head| head.eq_ignore_ascii_case(entry))
        .and_then(|_| name.get(entry.len()..))
        .and_then(|rest| rest.strip_prefix('.'))
    else {
        return false;
    };
    search
        .iter()
        .any(|domain| rest.eq_ignore_ascii_case(domain))
}

/// What is known about a destination when matching it.
pub(crate) struct Target<'a> {
    pub protocol: Option<crate::decision::Protocol>,
    /// Canonical (IPv4-mapped addresses as IPv4); `None` when only a name is known.
    pub ip: Option<IpAddr>,
    /// `None` when no port is known (DNS queries, `explain` without a port).
    pub port: Option<u16>,
    /// The names this address was resolved from, or the name being resolved.
    pub names: &'a [&'a str],
    pub search: &'a [String],
}

impl FilterEntry {
    /// The entry exactly as written in the config.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The protocol the entry applies to.
    pub fn protocol(&self) -> ProtocolMatch {
        self.protocol
    }

    /// The host part.
    pub fn host(&self) -> &HostPattern {
        &self.host
    }

    /// The port, if the entry is limited to one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The host name, for name entries.
    pub fn name(&self) -> Option<&str> {
        match &self.host {
            HostPattern::Name(name) => Some(name),
            _ => None,
        }
    }

    pub(crate) fn matches(&self, target: &Target<'_>) -> bool {
        use crate::decision::Protocol;
        let protocol_ok = match (self.protocol, target.protocol) {
            (ProtocolMatch::Any, _) | (_, None) => true,
            (ProtocolMatch::Tcp, Some(p)) => p == Protocol::Tcp,
            (ProtocolMatch::Udp, Some(p)) => p == Protocol::Udp,
        };
        let port_ok = match (self.port, target.port) {
            (None, _) => true,
            (Some(want), Some(port)) => want == port,
            (Some(_), None) => false,
        };
        protocol_ok && port_ok && self.host_matches(target)
    }

    /// The host part alone (DNS decisions ignore protocol and port).
    pub(crate) fn host_matches(&self, target: &Target<'_>) -> bool {
        match &self.host {
            HostPattern::Any => true,
            HostPattern::Addr(addr) => match target.ip {
                Some(ip) => addr.is_unspecified() || *addr == ip,
                None => false,
            },
            HostPattern::Subnet(net) => target.ip.is_some_and(|ip| net.contains(&ip)),
            HostPattern::Name(name) => {
                target
                    .names
                    .iter()
                    .any(|candidate| name_matches(name, candidate, target.search))
                    || (name == "localhost" && target.ip.is_some_and(|ip| ip.is_loopback()))
            }
        }
    }
}

impl fmt::Display for FilterEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for FilterEntry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> FilterEntry {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn error(text: &str) -> String {
        match text.parse::<FilterEntry>() {
            Ok(parsed) => panic!("{text} parsed as {parsed:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn grammar() {
        let e = entry("tcp://1.2.3.0/24:7777");
        assert_eq!(e.protocol(), ProtocolMatch::Tcp);
        assert_eq!(
            e.host(),
            &HostPattern::Subnet("1.2.3.0/24".parse().unwrap())
        );
        assert_eq!(e.port(), Some(7777));

        let e = entry("UDP://[2800:3f0:4001:81e::2004]:53");
        assert_eq!(e.protocol(), ProtocolMatch::Udp);
        assert_eq!(
            e.host(),
            &HostPattern::Addr("2800:3f0:4001:81e::2004".parse().unwrap())
        );

        assert_eq!(entry("tcp://").host(), &HostPattern::Any);
        assert_eq!(entry("tcp://").port(), None);
        assert_eq!(entry(":8888").host(), &HostPattern::Any);
        assert_eq!(entry(":8888").port(), Some(8888));
        assert_eq!(entry(":0").port(), None);
        assert_eq!(entry("any://:53").protocol(), ProtocolMatch::Any);
        assert_eq!(entry("Messages-DB.").name(), Some("messages-db"));
        assert_eq!(entry("messages-db:5432").name(), Some("messages-db"));
        assert_eq!(
            entry("my_svc.ns.svc.cluster.local").name(),
            Some("my_svc.ns.svc.cluster.local")
        );
        assert_eq!(
            entry("10.1.2.3/8").host(),
            &HostPattern::Subnet("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            entry("[::ffff:1.2.3.4]").host(),
            &HostPattern::Addr("1.2.3.4".parse().unwrap())
        );
        assert_eq!(
            entry("[::ffff:10.0.0.0]/104").host(),
            &HostPattern::Subnet("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            entry("[::]/0").host(),
            &HostPattern::Subnet("::/0".parse().unwrap())
        );
        assert_eq!(
            entry("0.0.0.0/0").host(),
            &HostPattern::Subnet("0.0.0.0/0".parse().unwrap())
        );
        assert_eq!(entry("tcp://db:5432").to_string(), "tcp://db:5432");
    }

    #[test]
    fn grammar_errors_are_worded_for_the_user() {
        assert_eq!(
            error(""),
            "empty filter entry (write \"any://\" to match everything)"
        );
        assert_eq!(error(" db"), "remove the spaces around the entry");
        assert_eq!(
            error("meow://db"),
            "unknown protocol \"meow\" (use tcp://, udp:// or any://)"
        );
        assert_eq!(
            error("10.0.0.0/33"),
            "prefix length 33 is too long for an IPv4 address (at most 32)"
        );
        assert_eq!(
            error("[fd00::]/129"),
            "prefix length 129 is too long for an IPv6 address (at most 128)"
        );
        assert_eq!(error("10.0.0.0/"), "invalid subnet prefix length \"\"");
        assert_eq!(error("10.0.0.0/x"), "invalid subnet prefix length \"x\"");
        assert_eq!(
            error("db/24"),
            "a subnet needs an IP address before the '/', not the name \"db\""
        );
        assert_eq!(
            error("/24"),
            "a subnet needs an address before the '/', e.g. 10.0.0.0/8"
        );
        assert_eq!(error("db:70000"), "port 70000 is out of range (0-65535)");
        assert_eq!(
            error("db:http"),
            "invalid port \"http\" (ports are numbers, 0-65535)"
        );
        assert_eq!(error("db:"), "missing port number after ':'");
        assert_eq!(
            error("10.0.0.300"),
            "\"10.0.0.300\" is not a valid IPv4 address"
        );
        assert_eq!(
            error("8080"),
            "\"8080\" is not a host name; write \":8080\" for a port"
        );
        assert_eq!(
            error("fd00::1"),
            "write IPv6 addresses in brackets, e.g. [fd00::1]:8080"
        );
        assert_eq!(
            error("::1"),
            "write IPv6 addresses in brackets, e.g. [fd00::1]:8080"
        );
        assert_eq!(error("[fd00::1"), "missing ']' after the IPv6 address");
        assert_eq!(
            error("[fe80::1%eth0]"),
            "IPv6 zone indexes (%…) are not supported in filter entries"
        );
        assert_eq!(
            error("[1.2.3.4]"),
            "\"1.2.3.4\" is not a valid IPv6 address"
        );
        assert_eq!(
            error("a..b"),
            "\"a..b\" has an empty label (two dots in a row, or a leading dot)"
        );
        assert_eq!(error("db!"), "invalid character '!' in the host");
        assert_eq!(
            error("db:80x"),
            "invalid port \"80x\" (ports are numbers, 0-65535)"
        );
        assert_eq!(
            error(":8888udp://"),
            "unknown protocol \":8888udp\" (use tcp://, udp:// or any://)"
        );
        assert_eq!(
            error("tcp://google.com/24:7777"),
            "a subnet needs an IP address before the '/', not the name \"google.com\""
        );
        let long = format!("{}.com", "a".repeat(64));
        assert_eq!(
            error(&long),
            format!("{long:?} has a label longer than 63 characters")
        );
    }
}
