//! The frames of protocol version 1: their types, limits and encoding onto the wire.
//!
//! Every frame is a 10-byte header followed by a payload:
//!
//! ```text
//!  0               4      5       6               10
//!  +---------------+------+-------+---------------+----------------------+
//!  | payload len   | type | flags | stream id     | payload (len bytes)  |
//!  | u32 BE        | u8   | u8    | u32 BE        |                      |
//!  +---------------+------+-------+---------------+----------------------+
//! ```
//!
//! Control frames (handshake, keepalive, go-away) use stream id 0; every other frame names a
//! non-zero stream id. Integers are big-endian. A socket address is encoded as a family byte
//! (4 or 6) followed by the IP, the port and, for IPv6, the flow info and scope id.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use bytes::{BufMut, Bytes, BytesMut};

use crate::auth::{NONCE_LEN, PROOF_LEN};
use crate::incoming::{
    Families, FilterError, HttpFilter, IncomingKind, IncomingMode, ListenerPorts,
    SubscribeFailureKind,
};

/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 10;
/// Largest payload a frame may carry: a 64 KiB data chunk, a full DNS message or a maximal UDP
/// datagram plus its address, with room to spare.
pub const MAX_PAYLOAD_LEN: usize = 65_536 + 64;
/// Largest payload of one `Data` frame; larger writes are split.
pub const MAX_DATA_CHUNK: usize = 65_536;
/// Largest UDP datagram carried in a `Datagram` frame.
pub const MAX_DATAGRAM_LEN: usize = 65_535;
/// Largest DNS message carried in a `DnsQuery`/`DnsAnswer` frame (the TCP length prefix limit).
pub const MAX_DNS_MESSAGE_LEN: usize = 65_535;
/// Largest session token accepted in `Hello`.
pub const MAX_TOKEN_LEN: usize = 1024;
/// Largest environment one `EnvQuery` may be answered with: the names and values of all its
/// variables together, over all of its `EnvVars` frames (the requester enforces it).
pub const MAX_ENV_BYTES: usize = 1024 * 1024;
/// Largest single variable (name and value together) an `EnvVars` frame can carry.
pub const MAX_ENV_ENTRY_LEN: usize = MAX_PAYLOAD_LEN - 8;
/// Longest human-readable message (`Refused`, `GoAway`, `DnsFailed`); longer ones are cut at a
/// character boundary when encoded.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Identifies a stream, UDP flow or DNS exchange within a session. The client opens odd ids,
/// the server even ids; ids are never reused within a session; 0 is the session itself.
pub type StreamId = u32;

/// One frame, decoded. See the crate documentation for which side sends which frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client → server, first frame: versions the client speaks, its receive window per
    /// stream, and the session token. Layout frozen across versions.
    Hello {
        /// Lowest protocol version the client speaks.
        min_version: u16,
        /// Highest protocol version the client speaks.
        max_version: u16,
        /// Bytes the client lets the server send on each stream before it grants more.
        stream_window: u32,
        /// The session token.
        token: Bytes,
    },
    /// Server → client: the session is accepted in this version. Layout frozen.
    Welcome {
        /// The version both sides now speak.
        version: u16,
        /// Bytes the server lets the client send on each stream before it grants more.
        stream_window: u32,
    },
    /// Either side, during the handshake: the session is refused; the connection closes.
    /// Layout frozen.
    Refused {
        /// Why, as a code.
        reason: RefuseReason,
        /// Why, for humans.
        message: String,
    },
    /// Keepalive probe; the peer answers with `Pong` carrying the same nonce.
    Ping {
        /// Echoed back in the `Pong`.
        nonce: u64,
    },
    /// Keepalive answer.
    Pong {
        /// The nonce of the `Ping` answered.
        nonce: u64,
    },
    /// The sender is closing the session (shutting down, or it detected a protocol error);
    /// nothing follows.
    GoAway {
        /// Why, for humans.
        message: String,
    },
    /// Open a TCP connection to `addr` from the receiver's side; answered by `Opened` or
    /// `OpenFailed`. The stream then carries the connection's bytes.
    ConnectTcp {
        /// The new stream.
        stream: StreamId,
        /// Where to connect.
        addr: SocketAddr,
        /// Give up after this many milliseconds (0: the receiver's default).
        timeout_ms: u32,
        /// Version 3, flag `attach`: the bytes go over a data connection ([`crate::data`]),
        /// not the session.
        attach: bool,
    },
    /// Open a UDP flow: an unconnected UDP socket bound to `bind` on the receiver's side;
    /// answered by `Opened` or `OpenFailed`.
    OpenUdp {
        /// The new flow.
        stream: StreamId,
        /// Local address to bind (usually the unspecified address of a family, port 0).
        bind: SocketAddr,
    },
    /// The stream or flow asked for is open; `local` is the socket's own address.
    Opened {
        /// The stream opened.
        stream: StreamId,
        /// The local address of the receiver-side socket.
        local: SocketAddr,
    },
    /// The stream or flow could not be opened; `errno` is the Linux errno (e.g. 111).
    OpenFailed {
        /// The stream that failed.
        stream: StreamId,
        /// Linux errno value.
        errno: i32,
    },
    /// Bytes of a stream; counts against the receiver's window.
    Data {
        /// The stream.
        stream: StreamId,
        /// At most [`MAX_DATA_CHUNK`] bytes.
        payload: Bytes,
    },
    /// The receiver of a stream's data lets the sender send `increment` more bytes.
    WindowUpdate {
        /// The stream.
        stream: StreamId,
        /// Additional bytes allowed (non-zero).
        increment: u32,
    },
    /// The sender will send no more data on this stream (TCP FIN / `shutdown(SHUT_WR)`).
    Fin {
        /// The stream.
        stream: StreamId,
    },
    /// Abortive close of a stream or flow, or cancellation of a pending open or DNS query.
    /// `errno` is what the receiver's user should see (0: a plain reset, `ECONNRESET`).
    Reset {
        /// The stream.
        stream: StreamId,
        /// Linux errno value, or 0.
        errno: i32,
    },
    /// A UDP datagram on a flow: towards the server `addr` is the destination, towards the
    /// client it is the source.
    Datagram {
        /// The flow.
        stream: StreamId,
        /// Destination (client → server) or source (server → client).
        addr: SocketAddr,
        /// At most [`MAX_DATAGRAM_LEN`] bytes.
        payload: Bytes,
    },
    /// A DNS query in wire format, to be answered as the receiver's environment would.
    DnsQuery {
        /// The exchange.
        stream: StreamId,
        /// How the asking application sent it (decides how large the answer may be).
        transport: DnsTransport,
        /// The DNS message.
        message: Bytes,
    },
    /// The DNS response in wire format.
    DnsAnswer {
        /// The exchange.
        stream: StreamId,
        /// The DNS message.
        message: Bytes,
    },
    /// The DNS query could not be answered at all (no response to relay).
    DnsFailed {
        /// The exchange.
        stream: StreamId,
        /// Why, as a code.
        kind: DnsFailureKind,
        /// Why, for humans.
        message: String,
    },
    /// Asks for the environment variables of the receiver's target process; answered by one
    /// or more `EnvVars` frames, or by `EnvFailed`. No payload.
    EnvQuery {
        /// The exchange.
        stream: StreamId,
    },
    /// Environment variables of the target process, as `(name, value)` pairs of bytes. With
    /// `more`, further `EnvVars` frames follow on the same stream; the last one has it unset.
    EnvVars {
        /// The exchange.
        stream: StreamId,
        /// Names (non-empty, without `=` or NUL) and values (without NUL).
        vars: Vec<(Bytes, Bytes)>,
        /// More variables follow in another frame.
        more: bool,
    },
    /// The environment could not be read (e.g. the target is a namespace with no process).
    EnvFailed {
        /// The exchange.
        stream: StreamId,
        /// Why, for humans.
        message: String,
    },
    /// Subscribes a port of the receiver's target: answered by `Subscribed` or
    /// `SubscribeFailed`. The stream then stands for the subscription until either side
    /// resets it (`Reset`: unsubscribe, or the receiver ends it).
    Subscribe {
        /// The subscription.
        stream: StreamId,
        /// The target's port (not 0).
        port: u16,
        /// Mirror or steal.
        mode: IncomingMode,
        /// Whose clients are taken (version 2): the others' connections stay with the target.
        families: Families,
        /// Version 4, flag `listeners`: the ports of the subscriber's own listeners in the
        /// target that clients are redirected to (a whole-connection steal only).
        listeners: Option<ListenerPorts>,
        /// With steal: only the HTTP requests matching this are taken.
        filter: Option<HttpFilter>,
    },
    /// The subscription is in place: connections to the port now follow its mode.
    Subscribed {
        /// The subscription.
        stream: StreamId,
    },
    /// The subscription was refused; nothing changed in the target.
    SubscribeFailed {
        /// The subscription asked for.
        stream: StreamId,
        /// Why, as a code.
        kind: SubscribeFailureKind,
        /// Why, for humans.
        message: String,
    },
    /// Opens a new stream carrying one incoming connection (or a copy of it, or one HTTP
    /// request) of a subscription the receiver made; answered by `Opened` (the receiver takes
    /// it) or `OpenFailed` (it does not: the sender falls back to the target's server).
    IncomingTcp {
        /// The new stream.
        stream: StreamId,
        /// The receiver's subscription this belongs to.
        subscription: StreamId,
        /// What the stream carries.
        kind: IncomingKind,
        /// The remote client, as the target saw it.
        client: SocketAddr,
        /// The address the client connected to: the target's address and subscribed port.
        server: SocketAddr,
    },
    /// Version 2. Asks where the receiver's kernel would send datagrams to `addr` from: it
    /// connects a UDP socket of `addr`'s family there (what `connect` on a datagram socket
    /// does: a route lookup, no packet). Answered by `Opened` with the socket's own address
    /// (the route's source) or `OpenFailed` with the kernel's errno (`ENETUNREACH`, ...);
    /// either ends the exchange.
    RouteQuery {
        /// The exchange.
        stream: StreamId,
        /// The destination.
        addr: SocketAddr,
    },
    /// Version 2. Asks for the receiver's resolver configuration (its resolv.conf's search
    /// list and options), answered by `ResolverConf`.
    ResolverQuery {
        /// The exchange.
        stream: StreamId,
    },
    /// Version 2. The resolver configuration: `search` and `options` lines in resolv.conf
    /// syntax, made from what the sender understood of its file (never the file's text).
    ResolverConf {
        /// The exchange.
        stream: StreamId,
        /// `search …` and `options …` lines.
        text: String,
    },
    /// Server → client, version 2, the answer to `Hello`: the server's nonce and its proof of
    /// holding the token (see [`crate::auth`]). The client checks the proof before it sends
    /// anything else.
    AuthChallenge {
        /// The server's nonce.
        nonce: [u8; NONCE_LEN],
        /// HMAC-SHA256 keyed by the token over the transcript ([`crate::auth::Proof::Agent`]).
        proof: [u8; PROOF_LEN],
    },
    /// Client → server, version 2, after a challenge it verified: the client's proof of
    /// holding the token; answered by `Welcome` or `Refused`.
    AuthProof {
        /// HMAC-SHA256 keyed by the token over the transcript and the server's proof
        /// ([`crate::auth::Proof::Client`]).
        proof: [u8; PROOF_LEN],
    },
}

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// The session token did not match.
    BadToken,
    /// No protocol version in common.
    UnsupportedVersion,
    /// The server serves no more sessions (e.g. started with `--once` and already busy).
    Busy,
    /// The first frame was not a valid `Hello` (or `Welcome`).
    BadHandshake,
    /// A code this version does not know (kept so newer peers can be reported).
    Other(u8),
}

impl RefuseReason {
    fn code(self) -> u8 {
        match self {
            RefuseReason::BadToken => 1,
            RefuseReason::UnsupportedVersion => 2,
            RefuseReason::Busy => 3,
            RefuseReason::BadHandshake => 4,
            RefuseReason::Other(c) => c,
        }
    }

    pub(crate) fn from_code(code: u8) -> Self {
        match code {
            1 => RefuseReason::BadToken,
            2 => RefuseReason::UnsupportedVersion,
            3 => RefuseReason::Busy,
            4 => RefuseReason::BadHandshake,
            c => RefuseReason::Other(c),
        }
    }
}

impl std::fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefuseReason::BadToken => f.write_str("bad session token"),
            RefuseReason::UnsupportedVersion => f.write_str("no common protocol version"),
            RefuseReason::Busy => f.write_str("busy"),
            RefuseReason::BadHandshake => f.write_str("bad handshake"),
            RefuseReason::Other(c) => write!(f, "refusal code {c}"),
        }
    }
}

/// How the application sent a DNS query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsTransport {
    /// Over UDP: the answer must fit the query's UDP payload size, else it comes back
    /// truncated (TC) so the application retries over TCP.
    Udp,
    /// Over TCP: the answer may be up to 65,535 bytes.
    Tcp,
}

/// Why a DNS query got no answer at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFailureKind {
    /// No nameserver answered in time.
    Timeout,
    /// The query could not be parsed or had no question.
    BadQuery,
    /// No nameserver could be reached (e.g. every one refused the connection).
    Unreachable,
    /// The answering side does not serve DNS queries, or is overloaded.
    Unavailable,
    /// A code this version does not know.
    Other(u8),
}

impl DnsFailureKind {
    fn code(self) -> u8 {
        match self {
            DnsFailureKind::Timeout => 1,
            DnsFailureKind::BadQuery => 2,
            DnsFailureKind::Unreachable => 3,
            DnsFailureKind::Unavailable => 4,
            DnsFailureKind::Other(c) => c,
        }
    }

    pub(crate) fn from_code(code: u8) -> Self {
        match code {
            1 => DnsFailureKind::Timeout,
            2 => DnsFailureKind::BadQuery,
            3 => DnsFailureKind::Unreachable,
            4 => DnsFailureKind::Unavailable,
            c => DnsFailureKind::Other(c),
        }
    }
}

impl std::fmt::Display for DnsFailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsFailureKind::Timeout => f.write_str("timed out"),
            DnsFailureKind::BadQuery => f.write_str("bad query"),
            DnsFailureKind::Unreachable => f.write_str("no nameserver reachable"),
            DnsFailureKind::Unavailable => f.write_str("DNS not available"),
            DnsFailureKind::Other(c) => write!(f, "failure code {c}"),
        }
    }
}

/// Frame type codes. Codes 0x01..=0x03 (the handshake) are frozen for all versions.
pub(crate) mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const REFUSED: u8 = 0x03;
    pub const PING: u8 = 0x04;
    pub const PONG: u8 = 0x05;
    pub const GO_AWAY: u8 = 0x06;
    pub const CONNECT_TCP: u8 = 0x10;
    pub const OPEN_UDP: u8 = 0x11;
    pub const OPENED: u8 = 0x12;
    pub const OPEN_FAILED: u8 = 0x13;
    pub const DATA: u8 = 0x20;
    pub const WINDOW_UPDATE: u8 = 0x21;
    pub const FIN: u8 = 0x22;
    pub const RESET: u8 = 0x23;
    pub const DATAGRAM: u8 = 0x24;
    pub const DNS_QUERY: u8 = 0x30;
    pub const DNS_ANSWER: u8 = 0x31;
    pub const DNS_FAILED: u8 = 0x32;
    pub const ENV_QUERY: u8 = 0x40;
    pub const ENV_VARS: u8 = 0x41;
    pub const ENV_FAILED: u8 = 0x42;
    pub const SUBSCRIBE: u8 = 0x50;
    pub const SUBSCRIBED: u8 = 0x51;
    pub const SUBSCRIBE_FAILED: u8 = 0x52;
    pub const INCOMING_TCP: u8 = 0x53;
    pub const ROUTE_QUERY: u8 = 0x14;
    pub const RESOLVER_QUERY: u8 = 0x43;
    pub const RESOLVER_CONF: u8 = 0x44;
    // Session-level authentication (version 2), stream 0.
    pub const AUTH_CHALLENGE: u8 = 0x07;
    pub const AUTH_PROOF: u8 = 0x08;
}

/// Flag bit of `DnsQuery`: the application asked over TCP.
pub(crate) const FLAG_DNS_TCP: u8 = 0x01;
/// Flag bit of `EnvVars`: more `EnvVars` frames follow.
pub(crate) const FLAG_ENV_MORE: u8 = 0x01;
/// Flag bit of `ConnectTcp` (version 3): the bytes go over a data connection.
pub(crate) const FLAG_ATTACH: u8 = 0x01;
/// Flag bit of `Subscribe` (version 4): the payload carries the subscriber's listener ports.
pub(crate) const FLAG_LISTENERS: u8 = 0x01;

/// Why a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The payload would exceed [`MAX_PAYLOAD_LEN`] (or the frame's own limit).
    #[error("{frame} frame payload of {len} bytes exceeds its limit of {max}")]
    TooLarge {
        /// Frame name.
        frame: &'static str,
        /// Offending length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A stream frame named stream 0, which is reserved for the session.
    #[error("{frame} frame names stream 0, which is reserved for the session")]
    StreamZero {
        /// Frame name.
        frame: &'static str,
    },
    /// A `Subscribe` frame's HTTP filter breaks the rules the decoder enforces.
    #[error("the subscription's HTTP filter cannot be sent")]
    BadFilter(#[source] FilterError),
    /// A `Subscribe` frame names port 0, or an `IncomingTcp` frame subscription 0.
    #[error("{frame} frame names port or subscription 0")]
    Zero {
        /// Frame name.
        frame: &'static str,
    },
}

impl Frame {
    /// The frame's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Welcome { .. } => "Welcome",
            Frame::Refused { .. } => "Refused",
            Frame::Ping { .. } => "Ping",
            Frame::Pong { .. } => "Pong",
            Frame::GoAway { .. } => "GoAway",
            Frame::ConnectTcp { .. } => "ConnectTcp",
            Frame::OpenUdp { .. } => "OpenUdp",
            Frame::Opened { .. } => "Opened",
            Frame::OpenFailed { .. } => "OpenFailed",
            Frame::Data { .. } => "Data",
            Frame::WindowUpdate { .. } => "WindowUpdate",
            Frame::Fin { .. } => "Fin",
            Frame::Reset { .. } => "Reset",
            Frame::Datagram { .. } => "Datagram",
            Frame::DnsQuery { .. } => "DnsQuery",
            Frame::DnsAnswer { .. } => "DnsAnswer",
            Frame::DnsFailed { .. } => "DnsFailed",
            Frame::EnvQuery { .. } => "EnvQuery",
            Frame::EnvVars { .. } => "EnvVars",
            Frame::EnvFailed { .. } => "EnvFailed",
            Frame::Subscribe { .. } => "Subscribe",
            Frame::Subscribed { .. } => "Subscribed",
            Frame::SubscribeFailed { .. } => "SubscribeFailed",
            Frame::IncomingTcp { .. } => "IncomingTcp",
            Frame::RouteQuery { .. } => "RouteQuery",
            Frame::ResolverQuery { .. } => "ResolverQuery",
            Frame::ResolverConf { .. } => "ResolverConf",
            Frame::AuthChallenge { .. } => "AuthChallenge",
            Frame::AuthProof { .. } => "AuthProof",
        }
    }

    /// The stream the frame belongs to (0 for control frames).
    pub fn stream(&self) -> StreamId {
        match self {
            Frame::Hello { .. }
            | Frame::Welcome { .. }
            | Frame::Refused { .. }
            | Frame::Ping { .. }
            | Frame::Pong { .. }
            | Frame::GoAway { .. }
            | Frame::AuthChallenge { .. }
            | Frame::AuthProof { .. } => 0,
            Frame::ConnectTcp { stream, .. }
            | Frame::OpenUdp { stream, .. }
            | Frame::Opened { stream, .. }
            | Frame::OpenFailed { stream, .. }
            | Frame::Data { stream, .. }
            | Frame::WindowUpdate { stream, .. }
            | Frame::Fin { stream }
            | Frame::Reset { stream, .. }
            | Frame::Datagram { stream, .. }
            | Frame::DnsQuery { stream, .. }
            | Frame::DnsAnswer { stream, .. }
            | Frame::DnsFailed { stream, .. }
            | Frame::EnvQuery { stream }
            | Frame::EnvVars { stream, .. }
            | Frame::EnvFailed { stream, .. }
            | Frame::Subscribe { stream, .. }
            | Frame::Subscribed { stream }
            | Frame::SubscribeFailed { stream, .. }
            | Frame::IncomingTcp { stream, .. }
            | Frame::RouteQuery { stream, .. }
            | Frame::ResolverQuery { stream }
            | Frame::ResolverConf { stream, .. } => *stream,
        }
    }

    /// Appends the encoded frame to `dst`. On error nothing is appended.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let stream = self.stream();
        if stream == 0 && !self.is_control() {
            return Err(EncodeError::StreamZero { frame: self.name() });
        }
        match self {
            Frame::Subscribe { port: 0, .. }
            | Frame::IncomingTcp {
                subscription: 0, ..
            } => {
                return Err(EncodeError::Zero { frame: self.name() });
            }
            Frame::Subscribe {
                filter: Some(filter),
                ..
            } => filter.check().map_err(EncodeError::BadFilter)?,
            _ => {}
        }
        let start = dst.len();
        // Header with a placeholder length, patched once the payload is written.
        dst.reserve(HEADER_LEN + self.payload_hint());
        dst.put_u32(0);
        dst.put_u8(self.kind());
        dst.put_u8(self.flags());
        dst.put_u32(stream);
        self.put_payload(dst);
        let len = dst.len() - start - HEADER_LEN;
        let max = self.payload_limit();
        if len > max {
            dst.truncate(start);
            return Err(EncodeError::TooLarge {
                frame: self.name(),
                len,
                max,
            });
        }
        // `len <= MAX_PAYLOAD_LEN` fits in u32.
        dst[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }

    fn is_control(&self) -> bool {
        matches!(
            self,
            Frame::Hello { .. }
                | Frame::Welcome { .. }
                | Frame::Refused { .. }
                | Frame::Ping { .. }
                | Frame::Pong { .. }
                | Frame::GoAway { .. }
                | Frame::AuthChallenge { .. }
                | Frame::AuthProof { .. }
        )
    }

    fn payload_limit(&self) -> usize {
        match self {
            Frame::Hello { .. } => 12 + MAX_TOKEN_LEN,
            Frame::Data { .. } => MAX_DATA_CHUNK,
            Frame::Datagram { .. } => MAX_DATAGRAM_LEN + ADDR_V6_LEN,
            Frame::DnsQuery { .. } | Frame::DnsAnswer { .. } => MAX_DNS_MESSAGE_LEN,
            _ => MAX_PAYLOAD_LEN,
        }
    }

    fn payload_hint(&self) -> usize {
        match self {
            Frame::Data { payload, .. } | Frame::Datagram { payload, .. } => payload.len() + 32,
            Frame::DnsQuery { message, .. } | Frame::DnsAnswer { message, .. } => message.len(),
            Frame::EnvVars { vars, .. } => vars.iter().map(|(n, v)| 8 + n.len() + v.len()).sum(),
            _ => 32,
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Frame::Hello { .. } => kind::HELLO,
            Frame::Welcome { .. } => kind::WELCOME,
            Frame::Refused { .. } => kind::REFUSED,
            Frame::Ping { .. } => kind::PING,
            Frame::Pong { .. } => kind::PONG,
            Frame::GoAway { .. } => kind::GO_AWAY,
            Frame::ConnectTcp { .. } => kind::CONNECT_TCP,
            Frame::OpenUdp { .. } => kind::OPEN_UDP,
            Frame::Opened { .. } => kind::OPENED,
            Frame::OpenFailed { .. } => kind::OPEN_FAILED,
            Frame::Data { .. } => kind::DATA,
            Frame::WindowUpdate { .. } => kind::WINDOW_UPDATE,
            Frame::Fin { .. } => kind::FIN,
            Frame::Reset { .. } => kind::RESET,
            Frame::Datagram { .. } => kind::DATAGRAM,
            Frame::DnsQuery { .. } => kind::DNS_QUERY,
            Frame::DnsAnswer { .. } => kind::DNS_ANSWER,
            Frame::DnsFailed { .. } => kind::DNS_FAILED,
            Frame::EnvQuery { .. } => kind::ENV_QUERY,
            Frame::EnvVars { .. } => kind::ENV_VARS,
            Frame::EnvFailed { .. } => kind::ENV_FAILED,
            Frame::Subscribe { .. } => kind::SUBSCRIBE,
            Frame::Subscribed { .. } => kind::SUBSCRIBED,
            Frame::SubscribeFailed { .. } => kind::SUBSCRIBE_FAILED,
            Frame::IncomingTcp { .. } => kind::INCOMING_TCP,
            Frame::RouteQuery { .. } => kind::ROUTE_QUERY,
            Frame::ResolverQuery { .. } => kind::RESOLVER_QUERY,
            Frame::ResolverConf { .. } => kind::RESOLVER_CONF,
            Frame::AuthChallenge { .. } => kind::AUTH_CHALLENGE,
            Frame::AuthProof { .. } => kind::AUTH_PROOF,
        }
    }

    fn flags(&self) -> u8 {
        match self {
            Frame::DnsQuery {
                transport: DnsTransport::Tcp,
                ..
            } => FLAG_DNS_TCP,
            Frame::EnvVars { more: true, .. } => FLAG_ENV_MORE,
            Frame::ConnectTcp { attach: true, .. } => FLAG_ATTACH,
            Frame::Subscribe {
                listeners: Some(_), ..
            } => FLAG_LISTENERS,
            _ => 0,
        }
    }

    fn put_payload(&self, dst: &mut BytesMut) {
        match self {
            Frame::Hello {
                min_version,
                max_version,
                stream_window,
                token,
            } => {
                dst.put_slice(&MAGIC);
                dst.put_u16(*min_version);
                dst.put_u16(*max_version);
                dst.put_u32(*stream_window);
                dst.put_slice(token);
            }
            Frame::Welcome {
                version,
                stream_window,
            } => {
                dst.put_slice(&MAGIC);
                dst.put_u16(*version);
                dst.put_u32(*stream_window);
            }
            Frame::Refused { reason, message } => {
                dst.put_slice(&MAGIC);
                dst.put_u8(reason.code());
                put_message(dst, message);
            }
            Frame::Ping { nonce } | Frame::Pong { nonce } => dst.put_u64(*nonce),
            Frame::GoAway { message } => put_message(dst, message),
            Frame::ConnectTcp {
                addr, timeout_ms, ..
            } => {
                put_addr(dst, addr);
                dst.put_u32(*timeout_ms);
            }
            Frame::OpenUdp { bind, .. } => put_addr(dst, bind),
            Frame::Opened { local, .. } => put_addr(dst, local),
            Frame::OpenFailed { errno, .. } | Frame::Reset { errno, .. } => dst.put_i32(*errno),
            Frame::Data { payload, .. } => dst.put_slice(payload),
            Frame::WindowUpdate { increment, .. } => dst.put_u32(*increment),
            Frame::Fin { .. } => {}
            Frame::Datagram { addr, payload, .. } => {
                put_addr(dst, addr);
                dst.put_slice(payload);
            }
            Frame::DnsQuery { message, .. } | Frame::DnsAnswer { message, .. } => {
                dst.put_slice(message)
            }
            Frame::DnsFailed { kind, message, .. } => {
                dst.put_u8(kind.code());
                put_message(dst, message);
            }
            Frame::EnvQuery { .. } => {}
            Frame::EnvVars { vars, .. } => {
                for (name, value) in vars {
                    // Lengths above u32 cannot fit the payload limit checked in `encode`.
                    dst.put_u32(name.len() as u32);
                    dst.put_slice(name);
                    dst.put_u32(value.len() as u32);
                    dst.put_slice(value);
                }
            }
            Frame::EnvFailed { message, .. } => put_message(dst, message),
            Frame::Subscribe {
                port,
                mode,
                families,
                listeners,
                filter,
                ..
            } => {
                dst.put_u16(*port);
                dst.put_u8(mode.code());
                dst.put_u8(families.code());
                if let Some(listeners) = listeners {
                    listeners.put(dst);
                }
                if let Some(filter) = filter {
                    filter.put(dst);
                }
            }
            Frame::Subscribed { .. } => {}
            Frame::SubscribeFailed { kind, message, .. } => {
                dst.put_u8(kind.code());
                put_message(dst, message);
            }
            Frame::IncomingTcp {
                subscription,
                kind,
                client,
                server,
                ..
            } => {
                dst.put_u32(*subscription);
                dst.put_u8(kind.code());
                put_addr(dst, client);
                put_addr(dst, server);
            }
            Frame::RouteQuery { addr, .. } => put_addr(dst, addr),
            Frame::ResolverQuery { .. } => {}
            Frame::ResolverConf { text, .. } => put_message(dst, text),
            Frame::AuthChallenge { nonce, proof } => {
                dst.put_slice(nonce);
                dst.put_slice(proof);
            }
            Frame::AuthProof { proof } => dst.put_slice(proof),
        }
    }
}

/// Starts the payload of the handshake frames, so that a client speaking to something else
/// (or something else speaking to the agent) is told apart from a bad token.
pub(crate) const MAGIC: [u8; 4] = *b"SCTR";

/// Encoded length of an IPv6 socket address (the longest).
pub(crate) const ADDR_V6_LEN: usize = 1 + 16 + 2 + 4 + 4;

/// Writes the header of a `Data` frame whose `len`-byte payload the caller appends next.
pub(crate) fn put_data_header(dst: &mut BytesMut, stream: StreamId, len: usize) {
    debug_assert!(len <= MAX_DATA_CHUNK && stream != 0);
    dst.put_u32(len as u32);
    dst.put_u8(kind::DATA);
    dst.put_u8(0);
    dst.put_u32(stream);
}

fn put_message(dst: &mut BytesMut, message: &str) {
    let mut end = message.len().min(MAX_MESSAGE_LEN);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    dst.put_slice(&message.as_bytes()[..end]);
}

fn put_addr(dst: &mut BytesMut, addr: &SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            dst.put_u8(4);
            dst.put_slice(&a.ip().octets());
            dst.put_u16(a.port());
        }
        SocketAddr::V6(a) => {
            dst.put_u8(6);
            dst.put_slice(&a.ip().octets());
            dst.put_u16(a.port());
            dst.put_u32(a.flowinfo());
            dst.put_u32(a.scope_id());
        }
    }
}

/// Reads a socket address from the front of `src`, returning it and the bytes consumed.
pub(crate) fn get_addr(src: &[u8]) -> Result<(SocketAddr, usize), &'static str> {
    match src.first() {
        Some(4) => {
            let b = src.get(1..7).ok_or("truncated IPv4 address")?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let port = u16::from_be_bytes([b[4], b[5]]);
            Ok((SocketAddr::V4(SocketAddrV4::new(ip, port)), 7))
        }
        Some(6) => {
            let b = src.get(1..ADDR_V6_LEN).ok_or("truncated IPv6 address")?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            let port = u16::from_be_bytes([b[16], b[17]]);
            let flowinfo = u32::from_be_bytes([b[18], b[19], b[20], b[21]]);
            let scope = u32::from_be_bytes([b[22], b[23], b[24], b[25]]);
            Ok((
                SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(octets),
                    port,
                    flowinfo,
                    scope,
                )),
                ADDR_V6_LEN,
            ))
        }
        Some(_) => Err("unknown address family"),
        None => Err("missing address"),
    }
}

/// The unspecified address of `addr`'s family, port 0: what to bind for an ephemeral port.
pub fn unspecified_like(addr: &SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}
