//! The wire protocol between the tracer (`sctrace`) and `sctrace-agent`.
//!
//! One session runs over one byte stream (a Unix or TCP socket, a Kubernetes port-forward)
//! and multiplexes many streams on it: TCP connections, UDP flows and DNS exchanges. Either
//! side may open streams (the client uses odd ids, the server even ids), so the agent can
//! later hand incoming connections to sctrace over the same session.
//!
//! # Compatibility contract
//!
//! * **Frozen forever:** the frame header (`u32` payload length, `u8` type, `u8` flags,
//!   `u32` stream id, big-endian) and the three handshake frames — `Hello` (0x01), `Welcome`
//!   (0x02) and `Refused` (0x03) — with their payloads, each starting with the magic `SCTR`.
//!   Any two builds, however far apart, can therefore always complete or refuse a handshake
//!   and say why.
//! * **Negotiated:** the client's `Hello` offers a version range and the server picks the
//!   highest version both speak. If there is none, the server answers
//!   `Refused(UnsupportedVersion)` naming both ranges, and both sides report that message;
//!   nothing else is sent. A wrong token is refused the same way (`Refused(BadToken)`), and
//!   the server logs it.
//! * **Per version:** everything after the handshake — the set of frame types, their
//!   payload layouts, flags and meanings, the flow-control rules — belongs to the agreed
//!   version. A change to any of them gets a new version number; a build keeps speaking the
//!   older versions it lists in `MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION`.
//! * **Strict:** within a version, a frame with an unknown type, unknown flags, a malformed
//!   or oversized payload, or one that breaks the stream rules ends the session with an
//!   error (after a `GoAway` saying why). Nothing is silently skipped, because a peer that
//!   sends it speaks a different version than it claimed.
//! * **Errno values** on the wire are Linux's (both ends run Linux).
//!
//! # Version 1
//!
//! | frame | stream | direction | meaning |
//! |---|---|---|---|
//! | `Hello`, `Welcome`, `Refused` | 0 | handshake | see above |
//! | `Ping`/`Pong` | 0 | both | keepalive; a silent peer ends the session |
//! | `GoAway` | 0 | both | the sender closes the session, with a reason |
//! | `ConnectTcp` → `Opened`/`OpenFailed` | new | opener → peer | TCP connect; errno on failure |
//! | `OpenUdp` → `Opened`/`OpenFailed` | new | opener → peer | unconnected UDP socket |
//! | `Data`, `WindowUpdate`, `Fin`, `Reset` | stream | both | bytes, credit, half-close, abort |
//! | `Datagram` | flow | both | one datagram with its destination/source address |
//! | `DnsQuery` → `DnsAnswer`/`DnsFailed` | new | asker → peer | DNS in wire format |
//! | `EnvQuery` → `EnvVars`…/`EnvFailed` | new | tracer → agent | the target process's environment, in frames flagged `more` but the last; 1 MiB in all at most |
//!
//! Flow control: each side announces a per-stream window in the handshake; a sender never
//! has more unacknowledged `Data` bytes on a stream than the window, and the receiver grants
//! more (`WindowUpdate`) as its user consumes them. A stream whose reader stalls therefore
//! never holds up the others, and its buffered bytes are bounded by the window. UDP flows are
//! bounded by dropping datagrams, as sockets do. See [`frame`] for the byte layout.
//!
//! # Using it
//!
//! ```no_run
//! # async fn demo(io: tokio::net::UnixStream) -> Result<(), Box<dyn std::error::Error>> {
//! use sctrace_protocol::{Config, Session, Token};
//! let token = Token::new(&b"secret"[..])?;
//! let session = Session::client(io, &token, Config::default()).await?;
//! tokio::spawn(session.task.run());
//! let mut stream = session.handle.connect_tcp("198.18.0.7:80".parse()?).await?;
//! // `stream` is AsyncRead + AsyncWrite: copy it to a local socket, or use `relay`.
//! # let _ = &mut stream; Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod decode;
pub mod frame;
mod handle;
mod relay;
mod request;
mod session;
mod stream;
mod token;
mod udp;

pub use decode::{decode, decode_eof, DecodeError};
pub use frame::{
    unspecified_like, DnsFailureKind, DnsTransport, EncodeError, Frame, RefuseReason, StreamId,
};
pub use handle::{DnsQueryError, EnvQueryError, OpenError, SessionHandle};
pub use relay::{relay, RelayEnd, RelayOutcome};
pub use request::{
    ConnectTcpRequest, DnsRequest, EnvRequest, OpenUdpRequest, Request, Requests, RespondError,
};
pub use session::{
    refuse, CloseReason, Config, HandshakeError, Io, Session, SessionClosed, SessionTask,
    MAX_STREAM_WINDOW, MIN_PROTOCOL_VERSION, MIN_STREAM_WINDOW, PROTOCOL_VERSION,
};
pub use stream::Stream;
pub use token::{Token, TokenError};
pub use udp::UdpFlow;
