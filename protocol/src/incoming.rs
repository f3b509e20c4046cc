//! The vocabulary of incoming traffic: how a port is subscribed (mirror or steal), which HTTP
//! requests a steal takes (the filter, as plain data, and its wire encoding), what kind of
//! connection the agent hands over, and why a subscription was refused.

use bytes::{BufMut, BytesMut};

/// How many `all_of`/`any_of` levels a filter may nest (the decoder's recursion bound).
pub const MAX_FILTER_DEPTH: usize = 8;
/// Longest pattern or method name in a filter, in bytes.
pub const MAX_FILTER_TEXT_LEN: usize = 4096;
/// Most conditions one `all_of`/`any_of` may list.
pub const MAX_FILTER_LIST_LEN: usize = 256;

/// What the agent does with the connections that reach a subscribed port of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IncomingMode {
    /// The target's own server keeps answering; sctrace receives a copy of each connection's
    /// client bytes (its answers are discarded).
    Mirror,
    /// Connections (or, with an HTTP filter, the matching requests) go to sctrace instead of
    /// the target's server, and sctrace's answers go back to the client.
    Steal,
}

impl IncomingMode {
    pub(crate) fn code(self) -> u8 {
        match self {
            IncomingMode::Mirror => 1,
            IncomingMode::Steal => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<IncomingMode> {
        match code {
            1 => Some(IncomingMode::Mirror),
            2 => Some(IncomingMode::Steal),
            _ => None,
        }
    }
}

impl std::fmt::Display for IncomingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IncomingMode::Mirror => "mirror",
            IncomingMode::Steal => "steal",
        })
    }
}

/// The address families whose clients a subscription takes (version 2). A listener that
/// takes only one family (an IPv4 socket, or an IPv6 one with `IPV6_V6ONLY`) leaves the
/// other family's clients to the target, as the kernel would never give them to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Families {
    /// IPv4 clients (and IPv4 clients of a dual-stack target socket, v4-mapped).
    pub ipv4: bool,
    /// IPv6 clients.
    pub ipv6: bool,
}

impl Families {
    /// Both families: what a dual-stack IPv6 listener takes.
    pub const BOTH: Families = Families {
        ipv4: true,
        ipv6: true,
    };
    /// IPv4 clients only.
    pub const IPV4: Families = Families {
        ipv4: true,
        ipv6: false,
    };
    /// IPv6 clients only.
    pub const IPV6: Families = Families {
        ipv4: false,
        ipv6: true,
    };

    pub(crate) fn code(self) -> u8 {
        u8::from(self.ipv4) | (u8::from(self.ipv6) << 1)
    }

    pub(crate) fn from_code(code: u8) -> Option<Families> {
        match code {
            1..=3 => Some(Families {
                ipv4: code & 1 != 0,
                ipv6: code & 2 != 0,
            }),
            _ => None,
        }
    }

    /// Both sets together.
    pub fn union(self, other: Families) -> Families {
        Families {
            ipv4: self.ipv4 || other.ipv4,
            ipv6: self.ipv6 || other.ipv6,
        }
    }
}

/// Version 4: where a steal sends the redirected clients of each family when the subscriber
/// put listening sockets of its own in the target's namespace (a local sctrace, which
/// installs them in the app in place of its listeners): their ports there. A family without
/// one goes to the agent's own listeners, as in a subscription without this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ListenerPorts {
    /// The port IPv4 clients are redirected to.
    pub ipv4: Option<u16>,
    /// The port IPv6 clients are redirected to.
    pub ipv6: Option<u16>,
}

impl ListenerPorts {
    /// Whether no family has a port.
    pub fn is_empty(&self) -> bool {
        self.ipv4.is_none() && self.ipv6.is_none()
    }

    /// On the wire: each port as a `u16`, 0 for none.
    pub(crate) fn put(&self, dst: &mut impl bytes::BufMut) {
        dst.put_u16(self.ipv4.unwrap_or(0));
        dst.put_u16(self.ipv6.unwrap_or(0));
    }

    pub(crate) fn from_wire(ipv4: u16, ipv6: u16) -> ListenerPorts {
        ListenerPorts {
            ipv4: (ipv4 != 0).then_some(ipv4),
            ipv6: (ipv6 != 0).then_some(ipv6),
        }
    }
}

/// What an incoming stream (`IncomingTcp`, agent → sctrace) carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IncomingKind {
    /// A whole stolen connection: the client's bytes arrive, and what sctrace writes goes back
    /// to the client. Half-close and reset pass through as on any stream.
    Stolen,
    /// A copy of a mirrored connection's client bytes. The target's server answers the
    /// client; whatever sctrace writes on this stream is read and discarded by the agent.
    Mirrored,
    /// One HTTP request a filtered steal matched, as a connection of its own: the request in
    /// the client's HTTP version (HTTP/1.x text, or HTTP/2 with prior knowledge), then the
    /// agent reads the response written back and closes the stream after it.
    HttpRequest,
}

impl IncomingKind {
    pub(crate) fn code(self) -> u8 {
        match self {
            IncomingKind::Stolen => 1,
            IncomingKind::Mirrored => 2,
            IncomingKind::HttpRequest => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<IncomingKind> {
        match code {
            1 => Some(IncomingKind::Stolen),
            2 => Some(IncomingKind::Mirrored),
            3 => Some(IncomingKind::HttpRequest),
            _ => None,
        }
    }
}

/// Why the agent refused a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeFailureKind {
    /// Another session (of this agent or of another agent in the same network namespace)
    /// already steals or mirrors the port.
    PortInUse,
    /// The HTTP filter cannot be used (a pattern does not compile, or a filter came with
    /// mirror mode).
    BadFilter,
    /// The agent cannot redirect traffic here (no `nft` binary, a kernel without nftables
    /// owner tables, or the agent does not serve subscriptions).
    Unsupported,
    /// Anything else (the message says what).
    Failed,
    /// A code this version does not know (kept so newer peers can be reported).
    Other(u8),
}

impl SubscribeFailureKind {
    pub(crate) fn code(self) -> u8 {
        match self {
            SubscribeFailureKind::PortInUse => 1,
            SubscribeFailureKind::BadFilter => 2,
            SubscribeFailureKind::Unsupported => 3,
            SubscribeFailureKind::Failed => 4,
            SubscribeFailureKind::Other(c) => c,
        }
    }

    pub(crate) fn from_code(code: u8) -> Self {
        match code {
            1 => SubscribeFailureKind::PortInUse,
            2 => SubscribeFailureKind::BadFilter,
            3 => SubscribeFailureKind::Unsupported,
            4 => SubscribeFailureKind::Failed,
            c => SubscribeFailureKind::Other(c),
        }
    }
}

impl std::fmt::Display for SubscribeFailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubscribeFailureKind::PortInUse => f.write_str("port in use"),
            SubscribeFailureKind::BadFilter => f.write_str("bad HTTP filter"),
            SubscribeFailureKind::Unsupported => f.write_str("unsupported"),
            SubscribeFailureKind::Failed => f.write_str("failed"),
            SubscribeFailureKind::Other(c) => write!(f, "failure code {c}"),
        }
    }
}

/// Which HTTP requests a filtered steal takes; the others reach the target's server
/// unchanged. Patterns are regular expressions (the agent compiles them with fancy-regex,
/// case-insensitively, as mirrord does); this crate only carries them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HttpFilter {
    /// Some header, written `Name: value`, matches the pattern.
    Header(String),
    /// The path, or the path with its query, matches the pattern.
    Path(String),
    /// The method is this one (compared case-insensitively).
    Method(String),
    /// Every condition matches (at least one condition).
    AllOf(Vec<HttpFilter>),
    /// At least one condition matches (at least one condition).
    AnyOf(Vec<HttpFilter>),
}

/// Why a filter cannot be sent: it breaks a rule the receiving decoder enforces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A pattern or method is empty.
    #[error("an HTTP filter pattern or method is empty")]
    EmptyText,
    /// A pattern or method is longer than [`MAX_FILTER_TEXT_LEN`].
    #[error(
        "an HTTP filter pattern is {len} bytes long, above the limit of {MAX_FILTER_TEXT_LEN}"
    )]
    TextTooLong {
        /// Its length.
        len: usize,
    },
    /// An `all_of`/`any_of` lists no condition.
    #[error("an HTTP filter's all_of/any_of lists no condition")]
    EmptyList,
    /// An `all_of`/`any_of` lists more than [`MAX_FILTER_LIST_LEN`] conditions.
    #[error("an HTTP filter's all_of/any_of lists {len} conditions, above the limit of {MAX_FILTER_LIST_LEN}")]
    ListTooLong {
        /// Its length.
        len: usize,
    },
    /// `all_of`/`any_of` nest deeper than [`MAX_FILTER_DEPTH`].
    #[error("an HTTP filter nests all_of/any_of more than {MAX_FILTER_DEPTH} levels deep")]
    TooDeep,
}

/// Wire tags of filter nodes.
pub(crate) mod tag {
    pub const HEADER: u8 = 1;
    pub const PATH: u8 = 2;
    pub const METHOD: u8 = 3;
    pub const ALL_OF: u8 = 4;
    pub const ANY_OF: u8 = 5;
}

impl HttpFilter {
    /// Checks the structural rules every receiver enforces: non-empty texts of at most
    /// [`MAX_FILTER_TEXT_LEN`] bytes, non-empty lists of at most [`MAX_FILTER_LIST_LEN`],
    /// nesting at most [`MAX_FILTER_DEPTH`] lists deep. Patterns are not compiled here.
    pub fn check(&self) -> Result<(), FilterError> {
        self.check_at(1)
    }

    fn check_at(&self, depth: usize) -> Result<(), FilterError> {
        match self {
            HttpFilter::Header(text) | HttpFilter::Path(text) | HttpFilter::Method(text) => {
                if text.is_empty() {
                    Err(FilterError::EmptyText)
                } else if text.len() > MAX_FILTER_TEXT_LEN {
                    Err(FilterError::TextTooLong { len: text.len() })
                } else {
                    Ok(())
                }
            }
            HttpFilter::AllOf(list) | HttpFilter::AnyOf(list) => {
                if depth > MAX_FILTER_DEPTH {
                    return Err(FilterError::TooDeep);
                }
                if list.is_empty() {
                    return Err(FilterError::EmptyList);
                }
                if list.len() > MAX_FILTER_LIST_LEN {
                    return Err(FilterError::ListTooLong { len: list.len() });
                }
                list.iter().try_for_each(|f| f.check_at(depth + 1))
            }
        }
    }

    /// Appends the wire form: a tag byte, then for a condition its text (`u16` length and
    /// UTF-8 bytes), for a list its `u16` count and members. Call [`HttpFilter::check`] first.
    pub(crate) fn put(&self, dst: &mut BytesMut) {
        match self {
            HttpFilter::Header(text) | HttpFilter::Path(text) | HttpFilter::Method(text) => {
                dst.put_u8(match self {
                    HttpFilter::Header(_) => tag::HEADER,
                    HttpFilter::Path(_) => tag::PATH,
                    _ => tag::METHOD,
                });
                // `check` bounds the length far below u16::MAX.
                dst.put_u16(text.len() as u16);
                dst.put_slice(text.as_bytes());
            }
            HttpFilter::AllOf(list) | HttpFilter::AnyOf(list) => {
                dst.put_u8(if matches!(self, HttpFilter::AllOf(_)) {
                    tag::ALL_OF
                } else {
                    tag::ANY_OF
                });
                dst.put_u16(list.len() as u16);
                for f in list {
                    f.put(dst);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_rules() {
        let header = || HttpFilter::Header("^x-user: alice$".into());
        assert_eq!(header().check(), Ok(()));
        assert_eq!(
            HttpFilter::Path(String::new()).check(),
            Err(FilterError::EmptyText)
        );
        assert_eq!(
            HttpFilter::Method("x".repeat(MAX_FILTER_TEXT_LEN + 1)).check(),
            Err(FilterError::TextTooLong {
                len: MAX_FILTER_TEXT_LEN + 1
            })
        );
        assert_eq!(
            HttpFilter::AnyOf(vec![]).check(),
            Err(FilterError::EmptyList)
        );
        assert_eq!(
            HttpFilter::AllOf(vec![header(); MAX_FILTER_LIST_LEN + 1]).check(),
            Err(FilterError::ListTooLong {
                len: MAX_FILTER_LIST_LEN + 1
            })
        );
        let mut nested = header();
        for _ in 0..MAX_FILTER_DEPTH {
            nested = HttpFilter::AllOf(vec![nested]);
        }
        assert_eq!(nested.check(), Ok(()));
        assert_eq!(
            HttpFilter::AnyOf(vec![nested]).check(),
            Err(FilterError::TooDeep)
        );
    }

    #[test]
    fn codes_round_trip() {
        for mode in [IncomingMode::Mirror, IncomingMode::Steal] {
            assert_eq!(IncomingMode::from_code(mode.code()), Some(mode));
        }
        assert_eq!(IncomingMode::from_code(0), None);
        for kind in [
            IncomingKind::Stolen,
            IncomingKind::Mirrored,
            IncomingKind::HttpRequest,
        ] {
            assert_eq!(IncomingKind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(IncomingKind::from_code(9), None);
        for c in 0..=255u8 {
            assert_eq!(SubscribeFailureKind::from_code(c).code(), c);
        }
    }
}
