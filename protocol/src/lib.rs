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
//!   nothing else is sent. A client that cannot prove it holds the token is refused the
//!   same way (`Refused(BadToken)`), and the server logs it.
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
//! # Versions
//!
//! Version 2 is version 1 (below) with additions, version 3 is version 2 with data
//! connections, and version 4 is version 3 with listener ports; builds speak 2 to 4
//! (`Welcome` gives the lower of the two sides' highest).
//! Version 1 is no longer spoken: its `Hello` carried the session token in the clear. What
//! version 2 adds is listed after the version 1 table.
//!
//! Version 3 adds one flag: `ConnectTcp` with flag `0x01` (`attach`) asks that the stream's
//! bytes go over a *data connection* of their own, not the session; and the keys both sides
//! derive at the end of the handshake for those ([`data`] describes the connection's
//! preamble and answer). An agent accepts data connections only for sessions that came over
//! plain TCP; it refuses an `attach` connect over anything else with `EOPNOTSUPP`.
//!
//! Version 4 adds one flag: `Subscribe` with flag `0x01` (`listeners`) carries, after the
//! families byte, two `u16` ports — IPv4, IPv6, 0 for none — of listening sockets the
//! subscriber (a local sctrace) made in the target's namespace: that family's clients are
//! redirected there instead of to the agent's own listeners, and never pass through the
//! agent. Only a whole-connection steal may carry it, and an agent takes it only from a
//! sctrace on its own machine (one that can have sockets of the target).
//!
//! | frame (version 2) | stream | direction | meaning |
//! |---|---|---|---|
//! | `Subscribe` | new | tracer → agent | carries the address families whose clients it takes (IPv4, IPv6, both): a steal leaves the other family's connections to the target |
//! | `RouteQuery` → `Opened`/`OpenFailed` | new | tracer → agent | where the target's kernel would send datagrams to an address from (a UDP connect there, no packet): the route's source address, or `connect`'s errno; the exchange ends with the answer |
//! | `ResolverQuery` → `ResolverConf` | new | tracer → agent | the target's resolver configuration: `search` and `options` lines made from what the agent parsed of its resolv.conf |
//! ## Authentication (version 2)
//!
//! The token never goes on the wire. Both sides prove they hold it, each over fresh random
//! nonces from both, so that nothing recorded from one exchange is accepted in another
//! ([`auth`] has the primitives; the frames are 0x07 and 0x08, stream 0):
//!
//! 1. client → server: `Hello` — versions and window as always; the field that carried the
//!    token in version 1 carries the client's 32-byte nonce `Nc`.
//! 2. server → client: `Refused` if the versions, window or nonce do not fit (as before);
//!    else `AuthChallenge { Ns, Pa }` — the server's 32-byte nonce and its proof
//!    `Pa = HMAC-SHA256(token, "sctrace/2 agent proof\0" ‖ T)`, where the transcript
//!    `T = "sctrace/2 session\0" ‖ min ‖ max ‖ window ‖ Nc ‖ Ns` (integers big-endian).
//! 3. The client checks `Pa` in constant time. If it is wrong, the client closes the
//!    connection: it has sent nothing but its `Hello`, so an impostor learns nothing it
//!    could use, and the user is told the agent could not prove itself. Otherwise
//!    client → server: `AuthProof { Pc }`, `Pc = HMAC-SHA256(token, "sctrace/2 client
//!    proof\0" ‖ T ‖ Pa)`.
//! 4. The server checks `Pc` in constant time and answers `Welcome` (the session starts) or
//!    `Refused(BadToken)`.
//!
//! Before `Welcome` each side reads only the frame types that may come next, each no larger
//! than that frame can be (`Hello` 1036 bytes, `Refused` 4101, `AuthChallenge` 64,
//! `AuthProof` 32): an unauthenticated peer cannot make the other buffer more. A client
//! whose `Hello` is answered with `Refused(BadToken)` is told that the agent predates
//! version 2 (a version 1 agent looked for the token in `Hello`).
//!
//! What this gives and what it does not: the token is never disclosed, a fake agent is
//! detected before sctrace sends it anything, and a recorded handshake (either side's) is
//! refused when replayed. The session after the handshake is not encrypted or
//! integrity-protected by the protocol: over a network someone can tamper with, carry it in
//! TLS (the agent's `--tls-cert`, sctrace's `agent.tls`) or in the Kubernetes API server's
//! port-forward. A token is a key for HMAC: sctrace's own are 32 random bytes; a token a
//! person chooses must be as hard to guess, since the exchange lets anyone who connects
//! test guesses offline.
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
//! | `Subscribe` → `Subscribed`/`SubscribeFailed` | new | tracer → agent | mirror or steal a port of the target, with an optional HTTP filter; the stream stands for the subscription |
//! | `Reset` on a subscription | subscription | both | tracer: unsubscribe; agent: the subscription ended (errno says why) |
//! | `IncomingTcp` → `Opened`/`OpenFailed` | new | agent → tracer | one incoming connection of a subscription (stolen, a mirrored copy, or one HTTP request); then a stream like any other |
//!
//! Flow control: each side announces a per-stream window in the handshake; a sender never
//! has more unacknowledged `Data` bytes on a stream than the window, and the receiver grants
//! more (`WindowUpdate`) as its user consumes them. A stream whose reader stalls therefore
//! never holds up the others, and its buffered bytes are bounded by the window. UDP flows are
//! bounded by dropping datagrams, as sockets do. See [`frame`] for the byte layout.
//!
//! # Incoming traffic
//!
//! sctrace subscribes a port of the target when the traced app listens on it
//! ([`SessionHandle::subscribe`]); the agent redirects the port's new connections to itself
//! and hands each one over as an `IncomingTcp` stream, which arrives on sctrace's side as
//! [`Request::Incoming`]. Rules:
//!
//! * **Steal, no filter:** one [`IncomingKind::Stolen`] stream per connection; sctrace
//!   relays it to the app's listener both ways.
//! * **Steal with an [`HttpFilter`]:** the agent parses HTTP/1.x and HTTP/2 prior-knowledge
//!   connections itself; each request that matches arrives as its own
//!   [`IncomingKind::HttpRequest`] stream holding that one request, in the client's HTTP
//!   version, and the agent reads the app's response from it and closes it. sctrace relays
//!   it like a stolen connection (the app sees one connection per request). Requests that do
//!   not match go to the target's server on the same client connection.
//! * **Mirror:** the target's server answers; each connection's client bytes are copied on
//!   an [`IncomingKind::Mirrored`] stream (best effort: a copy that falls too far behind is
//!   reset). What sctrace writes on it is discarded.
//! * Declining an incoming stream (`OpenFailed`) makes the agent give that connection to the
//!   target's server instead. `IncomingTcp` for a subscription that sctrace has already
//!   dropped is refused by the protocol layer itself (`ECONNREFUSED`).
//! * A port is stolen by one subscription at a time; a second is refused with
//!   [`SubscribeFailureKind::PortInUse`]. Unsubscribing (or the session ending) stops new
//!   connections at once; connections already handed over go on.
//!
//! ```no_run
//! # async fn demo(session: sctrace_protocol::Session) -> Result<(), Box<dyn std::error::Error>> {
//! use sctrace_protocol::{HttpFilter, IncomingMode, Request};
//! let sctrace_protocol::Session { handle, mut requests, task } = session;
//! tokio::spawn(task.run());
//! let filter = HttpFilter::Header("^x-user: alice$".into());
//! let subscription = handle.subscribe(80, IncomingMode::Steal, Some(filter)).await?;
//! while let Some(request) = requests.next().await {
//!     if let Request::Incoming(incoming) = request {
//!         // incoming.client(): the remote client; incoming.server(): the target's address.
//!         let app: std::net::SocketAddr = "127.0.0.1:8080".parse()?;
//!         let mut local = tokio::net::TcpStream::connect(app).await?;
//!         let mut stream = incoming.accept(app)?;
//!         tokio::spawn(async move { sctrace_protocol::relay(&mut stream, &mut local).await });
//!     }
//! }
//! drop(subscription); // unsubscribes
//! # Ok(()) }
//! ```
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

pub mod auth;
pub mod data;
mod decode;
pub mod frame;
mod handle;
pub mod handoff;
mod incoming;
mod relay;
mod request;
mod session;
mod stream;
mod subscription;
mod text;
mod token;
mod udp;

pub use decode::{decode, decode_eof, DecodeError};
pub use frame::{
    unspecified_like, DnsFailureKind, DnsTransport, EncodeError, Frame, RefuseReason, StreamId,
};
pub use handle::{DnsQueryError, EnvQueryError, OpenError, SessionHandle, SubscribeError};
pub use incoming::{
    Families, FilterError, HttpFilter, IncomingKind, IncomingMode, ListenerPorts,
    SubscribeFailureKind, MAX_FILTER_DEPTH, MAX_FILTER_LIST_LEN, MAX_FILTER_TEXT_LEN,
};
pub use relay::{relay, RelayEnd, RelayOutcome};
pub use request::{
    ConnectTcpRequest, DnsRequest, EnvRequest, OpenUdpRequest, Request, Requests, ResolverRequest,
    RespondError, RouteRequest,
};
pub use session::{
    refuse, CloseReason, Config, HandshakeError, Io, Session, SessionClosed, SessionTask,
    LISTENERS_VERSION, MAX_STREAM_WINDOW, MIN_PROTOCOL_VERSION, MIN_STREAM_WINDOW,
    PROTOCOL_VERSION,
};
pub use stream::Stream;
pub use subscription::{IncomingRequest, SubscribeRequest, Subscription, SubscriptionEnd};
pub use text::PeerText;
pub use token::{Token, TokenError};
pub use udp::UdpFlow;
